//! Enrolment of running pods on the local mesh: labelling a namespace (or a pod)
//! `istio.io/dataplane-mode=ambient` after its pods started enrols them where they run;
//! removing the label, or `istio.io/dataplane-mode=none` on a pod, hands them back; a
//! restarted node agent keeps both lists and goes on reconciling.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

const LATE: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: late
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: late
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
        ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: late
spec:
  selector: {app: web}
  ports: [{name: http, port: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: curl
  labels: {app: curl}
spec:
  containers:
  - name: curl
    image: curlimages/curl
    command: [sleep, infinity]
";

/// Whether the pod is enrolled, as `keelson status` says it (its rules are in place).
fn in_mesh(mesh: &Mesh, pod: &str) -> bool {
    let status = mesh.ok(&["status"]);
    let line = status
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(pod))
        .unwrap_or_else(|| panic!("no {pod} in {status}"));
    line.split_whitespace().nth(4) == Some("yes")
}

fn both(mesh: &Mesh, want: bool) -> bool {
    eventually(15, || {
        ["web-0", "web-1"].iter().all(|p| in_mesh(mesh, p) == want)
    })
}

/// `url` answers from the curl pod, once the callers' ztunnels have the change (the
/// control plane's WDS update and the node agent's rules land independently; the request
/// waits for both, as a client's retry would).
fn answers(mesh: &Mesh, url: &str) {
    let ok = eventually(10, || {
        let out = mesh.exec("curl", &["curl", "-sS", "-m", "3", url]);
        out.ok && out.stdout.contains("details-v1")
    });
    assert!(ok, "{url} does not answer\n{}", mesh.logs());
}

/// A request from the enrolled curl pod to web arrives over HBONE (the destination's
/// ztunnel logs it inbound with the caller's identity) only when web is enrolled.
fn inbound_hbone_lines(mesh: &Mesh) -> usize {
    ["node-1", "node-2"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(mesh.home.join(format!("logs/{n}-ztunnel.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| {
                    l.contains("direction=inbound")
                        && l.contains("dst.workload=\"web-")
                        && l.contains(
                            "src.identity=\"spiffe://cluster.local/ns/default/sa/default\"",
                        )
                })
                .count()
        })
        .sum()
}

#[test]
fn labels_enrol_and_hand_back_running_pods() {
    let mesh = Mesh::tagged("e");
    let file = mesh.write("late.yaml", LATE);
    mesh.ok(&["up", file.to_str().unwrap(), "--no-ingress"]);
    assert!(!in_mesh(&mesh, "web-0") && !in_mesh(&mesh, "web-1"));
    assert!(in_mesh(&mesh, "curl"));

    // The namespace label enrols both running pods, no restart: their pids stay.
    let pid = mesh.pod("web-0")["procs"][0]["pid"].clone();
    mesh.ok(&[
        "label",
        "namespace",
        "late",
        "istio.io/dataplane-mode=ambient",
    ]);
    assert!(both(&mesh, true), "{}", mesh.ok(&["status"]));
    assert_eq!(mesh.pod("web-0")["procs"][0]["pid"], pid);
    let before = inbound_hbone_lines(&mesh);
    answers(&mesh, "http://web.late:9080/details/0");
    assert!(
        eventually(10, || inbound_hbone_lines(&mesh) > before),
        "no inbound HBONE connection to web\n{}",
        mesh.logs()
    );

    // A pod opting out by its own label is handed back; its sibling stays.
    mesh.ok(&[
        "label",
        "-n",
        "late",
        "pod",
        "web-0",
        "istio.io/dataplane-mode=none",
    ]);
    assert!(
        eventually(15, || !in_mesh(&mesh, "web-0") && in_mesh(&mesh, "web-1")),
        "{}",
        mesh.ok(&["status"])
    );
    // Still reachable, now in plain text (the caller's ztunnel sends it as such).
    mesh.curl(
        "curl",
        &format!(
            "http://{}:9080/details/0",
            mesh.pod("web-0")["ip"].as_str().unwrap()
        ),
        "details-v1",
    );

    // A restarted node agent keeps what it enrolled and what it only saw.
    let node = mesh.pod("web-0")["node"].as_str().unwrap().to_string();
    mesh.ok(&["restart", &format!("cni-agent/{node}")]);
    std::thread::sleep(std::time::Duration::from_secs(1));
    assert!(!in_mesh(&mesh, "web-0") && in_mesh(&mesh, "web-1"));
    mesh.ok(&[
        "label",
        "-n",
        "late",
        "pod",
        "web-0",
        "istio.io/dataplane-mode-",
    ]);
    assert!(both(&mesh, true), "{}", mesh.ok(&["status"]));

    // Removing the namespace label hands both back.
    mesh.ok(&["label", "namespace", "late", "istio.io/dataplane-mode-"]);
    assert!(both(&mesh, false), "{}", mesh.ok(&["status"]));
    answers(&mesh, "http://web.late:9080/details/0");
}
