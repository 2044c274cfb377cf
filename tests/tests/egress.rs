//! ServiceEntry on the local mesh (docs/GATEWAY.md, "Egress"): a fake external host runs in
//! a namespace outside the mesh; registered by a ServiceEntry, mesh pods reach it by name
//! (ztunnel's DNS answers its VIP, or its own address for resolution NONE) and ztunnel
//! counts and logs the traffic as that service's. A `workloadSelector` entry makes mesh
//! pods the endpoints of an internal host, reached over HBONE.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

const APPS: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Namespace
metadata:
  name: outside
---
apiVersion: v1
kind: Pod
metadata:
  name: api
  namespace: outside
  labels: {app: api}
spec:
  containers:
  - name: api
    image: docker.io/istio/examples-bookinfo-details-v1:1.20.2
    ports: [{containerPort: 9080}]
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  containers:
  - name: web
    image: docker.io/istio/examples-bookinfo-ratings-v1:1.20.2
    ports: [{containerPort: 9080}]
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

fn ztunnel_lines(mesh: &Mesh, pattern: &[&str]) -> usize {
    ["node-1", "node-2"]
        .iter()
        .map(|n| {
            std::fs::read_to_string(mesh.home.join(format!("logs/{n}-ztunnel.log")))
                .unwrap_or_default()
                .lines()
                .filter(|l| pattern.iter().all(|p| l.contains(p)))
                .count()
        })
        .sum()
}

#[test]
fn service_entries_register_hosts_outside_and_inside_the_mesh() {
    let mesh = Mesh::tagged("s");
    let apps = mesh.write("apps.yaml", APPS);
    mesh.ok(&["up", apps.to_str().unwrap(), "--no-ingress"]);
    let api_ip = mesh.pod("api")["ip"].as_str().unwrap().to_string();
    let entries = mesh.write(
        "entries.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: api
spec:
  hosts: [api.external.test]
  ports: [{{number: 80, name: http, protocol: HTTP, targetPort: 9080}}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{{address: {api_ip}}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: legacy
spec:
  hosts: [legacy.external.test]
  addresses: [{api_ip}]
  ports: [{{number: 9080, name: tcp, protocol: TCP}}]
  location: MESH_EXTERNAL
  resolution: NONE
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata:
  name: internal
spec:
  hosts: [web.internal.test]
  ports: [{{number: 80, name: http, targetPort: 9080}}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector:
    labels: {{app: web}}
"
        ),
    );
    mesh.ok(&["apply", "-f", entries.to_str().unwrap()]);
    let get = |url: &str, expect: &str| {
        let mut last = String::new();
        let ok = eventually(15, || {
            let out = mesh.exec("curl", &["curl", "-sS", "-m", "5", url]);
            last = out.stdout + &out.stderr;
            last.contains(expect)
        });
        assert!(ok, "{url}: {last}\n{}", mesh.logs());
    };
    // STATIC: by name, on the entry's port 80, to the endpoint's 9080, in plain text.
    get("http://api.external.test/details/0", "details-v1");
    assert!(
        eventually(5, || ztunnel_lines(
            &mesh,
            &[
                "direction=outbound",
                "dst.service=\"api.external.test\"",
                "src.workload=\"curl\""
            ]
        ) > 0),
        "{}",
        mesh.logs()
    );
    // NONE: the name answers the address itself; the traffic goes where it was addressed.
    get("http://legacy.external.test:9080/details/0", "details-v1");
    assert!(
        eventually(5, || ztunnel_lines(
            &mesh,
            &["direction=outbound", "dst.service=\"legacy.external.test\""]
        ) > 0),
        "{}",
        mesh.logs()
    );
    // MESH_INTERNAL by workloadSelector: the mesh pod behind the name, over HBONE.
    get("http://web.internal.test/ratings/0", "ratings-v1");
    assert!(
        eventually(5, || ztunnel_lines(
            &mesh,
            &[
                "direction=inbound",
                "dst.workload=\"web\"",
                "src.identity=\"spiffe://cluster.local/ns/default/sa/default\""
            ]
        ) > 0),
        "{}",
        mesh.logs()
    );
    // A host nothing registers does not resolve.
    let out = mesh.exec(
        "curl",
        &["curl", "-sS", "-m", "3", "http://unknown.external.test/"],
    );
    assert!(!out.ok, "{}", out.stdout);
}
