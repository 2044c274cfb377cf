//! Pods that go away under traffic, on the local mesh (docs/HARDENING.md, faults F8 and F13):
//! a deleted pod's connections are torn down and leave nothing behind in ztunnel, and a new
//! pod given a deleted pod's address is reached as itself, never through a stale pooled
//! connection to the old one.

use std::time::Duration;

use keelson_tests::mesh::{eventually_sync as eventually, Mesh};

/// One pod on node-2 running a bundled app (`image`) as service account `sa`.
fn deployment(name: &str, sa: &str, image: &str) -> String {
    format!(
        "apiVersion: apps/v1
kind: Deployment
metadata:
  name: {name}
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {{app: {name}}}
  template:
    metadata:
      labels: {{app: {name}}}
    spec:
      nodeName: node-2
      serviceAccountName: {sa}
      containers:
      - name: app
        image: docker.io/istio/examples-bookinfo-{image}:1.20.2
        ports:
        - containerPort: 9080
"
    )
}

fn ztunnel_fds(mesh: &Mesh, node: &str) -> usize {
    let pid = mesh.state()["procs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == format!("ztunnel/{node}"))
        .and_then(|p| p["pid"].as_i64())
        .unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn metrics(mesh: &Mesh, node: &str) -> String {
    netns::http_get_at(
        &mesh.node_netns(node),
        "127.0.0.1:15020".parse().unwrap(),
        "/metrics",
    )
    .unwrap()
    .1
}

/// F13: pod `ip-a` (service account `ip-a`) is deleted and `ip-b` (another account, another
/// app) gets its address. The client, which had just used an HBONE connection to that
/// address, reaches `ip-b` at the first try, and the mTLS peer is `ip-b`'s identity.
#[test]
fn a_reused_pod_address_reaches_the_new_pod_at_the_first_try() {
    let mesh = Mesh::tagged("r");
    mesh.ok(&["up"]);
    let a = mesh.write("ip-a.yaml", &deployment("ip-a", "ip-a", "details-v1"));
    mesh.ok(&["apply", "-f", a.to_str().unwrap()]);
    let ip = mesh.pod("ip-a-0")["ip"].as_str().unwrap().to_string();
    let url = format!("http://{ip}:9080/who");
    mesh.curl("curl", &url, "details");
    mesh.curl("curl", &url, "details");

    mesh.ok(&["delete", "-f", a.to_str().unwrap()]);
    let b = mesh.write("ip-b.yaml", &deployment("ip-b", "ip-b", "ratings-v1"));
    mesh.ok(&["apply", "-f", b.to_str().unwrap()]);
    assert_eq!(
        mesh.pod("ip-b-0")["ip"].as_str().unwrap(),
        ip,
        "the mesh hands the freed address to the next pod"
    );
    // The first request after the switch, no retry: the new pod answers.
    let out = mesh.exec("curl", &["curl", "-sS", "-m", "10", &url]);
    assert!(
        out.ok && out.stdout.contains("ratings"),
        "{}{}\n{}",
        out.stdout,
        out.stderr,
        mesh.logs()
    );
    // And it was reached over mTLS as itself.
    let m = metrics(&mesh, "node-2");
    let as_b = keelson_tests::metric_value(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/ip-b",
            ),
        ],
    );
    assert!(as_b.unwrap_or(0.0) >= 1.0, "{m}");
}

/// F8: a pod with 20 connections open (held by the pod's app) is deleted and its network
/// namespace removed. The peer side sees every connection end, and the node's ztunnel
/// gives back what it held for them (descriptors back to where they were before).
#[test]
fn a_deleted_pod_leaves_nothing_behind_in_ztunnel() {
    let mesh = Mesh::tagged("d");
    mesh.ok(&["up"]);
    let spec = mesh.write("held.yaml", &deployment("held", "held", "details-v1"));
    mesh.ok(&["apply", "-f", spec.to_str().unwrap()]);
    let client_node = mesh.pod("curl-0")["node"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_secs(1));
    let fds_before = ztunnel_fds(&mesh, "node-2");
    let client_fds_before = ztunnel_fds(&mesh, &client_node);

    // 20 slow downloads from the held pod, each kept open by a curl in the curl pod.
    let ip = mesh.pod("held-0")["ip"].as_str().unwrap().to_string();
    let curls: Vec<std::process::Child> = (0..20)
        .map(|_| {
            mesh.command(&["exec", "curl", "--", "curl", "-sS", "-m", "60"])
                .arg(format!("http://{ip}:9080/delay/30000"))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let opened = eventually(15, || ztunnel_fds(&mesh, "node-2") >= fds_before + 20);
    assert!(
        opened,
        "fds {} (before {fds_before})",
        ztunnel_fds(&mesh, "node-2")
    );

    mesh.ok(&["delete", "-f", spec.to_str().unwrap()]);
    let mut curls = curls;
    let ended = eventually(20, || {
        curls.iter_mut().all(|c| c.try_wait().unwrap().is_some())
    });
    for c in &mut curls {
        let _ = c.kill();
        let _ = c.wait();
    }
    assert!(ended, "the client's connections did not end with the pod");
    let back = eventually(20, || {
        ztunnel_fds(&mesh, "node-2") <= fds_before + 2
            && ztunnel_fds(&mesh, &client_node) <= client_fds_before + 2
    });
    assert!(
        back,
        "ztunnel fds: node-2 {} (before {fds_before}), {client_node} {} (before {client_fds_before})",
        ztunnel_fds(&mesh, "node-2"),
        ztunnel_fds(&mesh, &client_node)
    );
    assert!(mesh.netns_left().iter().all(|n| !n.contains("held")));
}

/// L4 in small: 100 pods on one node, then 50 deletions and re-creations at up to 10 a
/// second through the CNI plugin and node agent. ztunnel ends with exactly the pods that
/// exist, a re-created pod is served, and its descriptors come back after every pod is
/// gone. Prints the CNI ADD latencies (what the plan's "ZDS latency" measures). Each
/// enrolment costs the CA one certificate (load L7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_pods_come_and_go_and_ztunnel_follows() {
    use keelson_tests::*;
    use std::time::Instant;
    netns::raise_fd_limit();
    let names: Vec<String> = (0..100).map(|i| format!("p{i}")).collect();
    let mut pods: Vec<PodSpec> = names.iter().map(|n| PodSpec::meshed(n)).collect();
    pods[0] = PodSpec::meshed("p0").serving_echo(8080);
    let tb = Testbed::start(Options {
        pods,
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    let node = testbed::SHARED_NODE_POD;
    let enrolled = || -> usize {
        tb.config_dump(node).unwrap()["workloadState"]
            .as_array()
            .map_or(0, Vec::len)
    };
    assert_eq!(enrolled(), 100);
    let pid = tb.ztunnel_pid(node);
    let fds_full = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();

    let (mut adds, mut dels) = (Vec::new(), Vec::new());
    for round in 0..50usize {
        let name = &names[1 + round % 99];
        let started = Instant::now();
        tb.cni("DEL", name).unwrap();
        dels.push(started.elapsed());
        let added = Instant::now();
        tb.cni("ADD", name).unwrap();
        adds.push(added.elapsed());
        let pause = Duration::from_millis(100).saturating_sub(started.elapsed());
        tokio::time::sleep(pause).await;
    }
    assert_eq!(enrolled(), 100);
    for (what, v) in [("ADD", &mut adds), ("DEL", &mut dels)] {
        v.sort();
        eprintln!(
            "CNI {what} (plugin process, agent, rules, ZDS to ztunnel and its ack): p50 {:?}, \
             p99 {:?}",
            v[v.len() / 2],
            v[v.len() * 99 / 100]
        );
    }
    // L7: 100 service accounts prefetched, then each of the 50 re-created pods fetched
    // again: one certificate per enrolment (the node's ztunnel asks at most 8 at a time,
    // proxycore::ca_client::MAX_CONCURRENT), none refused, no retry storm.
    let m = tb.control_plane_metrics().unwrap();
    let issued =
        metric_value(&m, "citadel_server_success_cert_issuance_count_total", &[]).unwrap_or(0.0);
    let refused = metric_value(&m, "citadel_server_csr_refused_count_total", &[]).unwrap_or(0.0);
    eprintln!("certificates issued: {issued}, refused: {refused}");
    assert!(
        (150.0..=152.0).contains(&issued),
        "{issued} certificates for 150 enrolments"
    );
    assert_eq!(refused, 0.0);
    // A re-created pod is captured and served.
    let to = spawn_echo(&tb, "p0", 8080).unwrap();
    let s = connect_from(&tb, "p7", to).unwrap();
    assert_eq!(roundtrip(s, b"back".to_vec()).await.unwrap(), b"back");

    // Every pod deleted: ztunnel lets go of them all.
    for name in &names {
        tb.cni("DEL", name).unwrap();
    }
    assert_eq!(enrolled(), 0);
    let fds_empty = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    eprintln!("ztunnel fds: {fds_full} with 100 pods, {fds_empty} with none");
    assert!(
        fds_empty + 300 <= fds_full,
        "{fds_empty} fds left (100 pods: {fds_full})"
    );
}
