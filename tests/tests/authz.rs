//! L4 AuthorizationPolicy enforced by the real ztunnel: 401 on HBONE, a closed socket for
//! plaintext, the policy named in the access log, DENY in the metrics.

use std::net::SocketAddr;

use identity::Identity;
use keelson_tests::*;

const POLICIES: &str = r#"policies:
  - name: allow-client-8080
    namespace: default
    scope: Namespace
    action: Allow
    rules: [[[{principals: [{exact: cluster.local/ns/default/sa/client}], destinationPorts: [8080, 9090]}]]]
  - name: deny-9090
    namespace: default
    scope: Namespace
    action: Deny
    rules: [[[{destinationPorts: [9090]}]]]
  - name: audit-everything
    namespace: default
    scope: Global
    action: Deny
    dryRun: true
    rules: [[[{}]]]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_allow_and_deny_real_connections() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        policies_yaml: Some(POLICIES.into()),
        ..Options::default()
    })
    .unwrap();
    let server = tb.ip("server");
    spawn_echo(&tb, "server", 8080).unwrap();
    spawn_echo(&tb, "server", 9090).unwrap();

    // Allowed: the client's identity on port 8080 (the dry-run DENY-all does not enforce).
    let s = connect_from(&tb, "client", SocketAddr::new(server, 8080)).unwrap();
    assert_eq!(roundtrip(s, b"allowed".to_vec()).await.unwrap(), b"allowed");

    // Denied by the DENY policy, although an ALLOW also matches.
    let s = connect_from(&tb, "client", SocketAddr::new(server, 9090)).unwrap();
    assert!(roundtrip(s, b"denied".to_vec())
        .await
        .unwrap_or_default()
        .is_empty());

    // Plaintext from outside the mesh has no principal: no ALLOW matches, socket closed.
    let s = connect_from(&tb, "outsider", SocketAddr::new(server, 8080)).unwrap();
    assert!(roundtrip(s, b"plaintext".to_vec())
        .await
        .unwrap_or_default()
        .is_empty());

    // Another identity over HBONE gets 401.
    let ca = testbed_ca(&tb);
    let other = ca
        .issue(&Identity::new("cluster.local", "default", "other"))
        .unwrap();
    let tls = hbone::tls::client_config(
        &other,
        vec![Identity::new("cluster.local", "default", "server")],
    )
    .unwrap();
    let conn = hbone_from(&tb, "outsider", server, tls).await.unwrap();
    let req = hbone::ConnectRequest::new(
        format!("{server}:8080"),
        "10.10.0.4:1".parse().unwrap(),
        None,
    );
    match conn.connect(&req).await {
        Err(hbone::HboneError::Status(s)) => assert_eq!(s.as_u16(), 401),
        other => panic!("expected 401, got {:?}", other.map(|_| "a stream")),
    }

    let log = tb.log("server");
    assert!(
        log.contains("denied by policy default/deny-9090"),
        "policy named in the access log"
    );
    assert!(
        log.contains("no ALLOW policy matched"),
        "the default deny is explained"
    );
    assert!(
        log.contains("dry-run policy"),
        "dry-run decisions are logged"
    );
    let m = tb.metrics("server").unwrap();
    let denied = metric_value(
        &m,
        "istio_tcp_connections_failed_total",
        &[("response_flags", "DENY")],
    )
    .unwrap_or(0.0);
    assert_eq!(denied, 3.0, "{m}");
    let m = tb.metrics("client").unwrap();
    assert_eq!(
        metric_value(
            &m,
            "istio_tcp_connections_failed_total",
            &[("response_flags", "DENY")]
        ),
        Some(1.0),
        "client sees the 401 as DENY"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_closes_connections_it_now_denies() {
    use std::time::{Duration, Instant};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tb = Testbed::start(Options::default()).unwrap();
    let server = tb.ip("server");
    spawn_echo(&tb, "server", 8080).unwrap();
    let mut open = connect_from(&tb, "client", SocketAddr::new(server, 8080)).unwrap();
    open.write_all(b"before").await.unwrap();
    let mut buf = [0u8; 6];
    open.read_exact(&mut buf).await.unwrap();

    // A broken file is reported and changes nothing.
    tb.write_yaml(
        &tb.pod_spec("server"),
        "workloads: [this is not a workload]\n",
    )
    .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    open.write_all(b"still!").await.unwrap();
    open.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"still!");
    assert!(tb.log("server").contains("keeping the last good state"));

    // Now deny port 8080: the open connection is closed.
    let start = Instant::now();
    tb.set_policies(Some(
        "policies:\n  - {name: deny-8080, namespace: default, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [8080]}]]]}\n".into(),
    ))
    .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), open.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "connection still open 5 s after the policy change"
    );
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "closed after {:?}",
        start.elapsed()
    );
    assert!(tb
        .log("server")
        .contains("closing a connection the new policy denies"));
    // And new connections are refused.
    let s = connect_from(&tb, "client", SocketAddr::new(server, 8080)).unwrap();
    assert!(roundtrip(s, b"after".to_vec())
        .await
        .unwrap_or_default()
        .is_empty());
}
