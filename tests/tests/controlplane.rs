//! ztunnel fed by `keelson controlplane` over real gRPC and TLS: workloads, services and
//! policies from Kubernetes YAML, pushed as they change; certificates from its CA.

use std::net::SocketAddr;
use std::time::Duration;

use keelson_tests::testbed::{SERVICE_PORT, SERVICE_VIP};
use keelson_tests::*;

fn vip() -> SocketAddr {
    SocketAddr::new(SERVICE_VIP.into(), SERVICE_PORT)
}

fn dump_has(tb: &Testbed, pod: &str, pred: impl Fn(&serde_json::Value) -> bool) -> bool {
    tb.config_dump(pod).map(|d| pred(&d)).unwrap_or(false)
}

fn in_service(d: &serde_json::Value, workload: &str) -> bool {
    d["workloads"].as_array().is_some_and(|ws| {
        ws.iter().any(|w| {
            w["name"] == workload && w["services"].as_object().is_some_and(|s| !s.is_empty())
        })
    })
}

fn has_workload(d: &serde_json::Value, workload: &str) -> bool {
    d["workloads"]
        .as_array()
        .is_some_and(|ws| ws.iter().any(|w| w["name"] == workload))
}

fn has_policy(d: &serde_json::Value, name: &str) -> bool {
    d["policies"]
        .as_array()
        .is_some_and(|ps| ps.iter().any(|p| p["name"] == name))
}

/// The backends `n` connections to the VIP reached (`None` for a denied one).
fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

async fn spread(tb: &Testbed, n: usize) -> std::collections::BTreeSet<Option<String>> {
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..n {
        seen.insert(greeting(tb, "client", vip()).await);
    }
    seen
}

const PROPAGATION: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_changes_reach_ztunnel_and_move_traffic() {
    resource_changes(Source::ControlPlane).await;
}

/// The same, with the control plane reading the API server (the in-process double): pods,
/// services and policies in, WDS to real ztunnels out, their tokens checked by TokenReview. Then a `410 Gone` makes every
/// watcher list again, which pushes nothing new, and a resource that fails validation is
/// reported as an Event while the rest keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resource_changes_from_the_api_server_reach_ztunnel() {
    let tb = resource_changes(Source::Kubernetes).await;
    let api = tb.apiserver.as_ref().unwrap();
    // The ztunnels' tokens were vouched for by the API server (TokenReview, audience
    // istio-ca), bound to their node.
    let reviews: Vec<_> = api
        .writes()
        .into_iter()
        .filter(|w| w.path == "/apis/authentication.k8s.io/v1/tokenreviews")
        .collect();
    assert!(!reviews.is_empty());
    assert!(reviews
        .iter()
        .all(|w| w.body["spec"]["audiences"][0] == "istio-ca"));
    let updates = || tb.control_plane_log().matches("snapshot updated").count();
    let (pods_listed, before) = (api.lists("pods"), updates());
    api.expire();
    let relisted = eventually(Duration::from_secs(10), || async {
        resources::kinds::READ
            .iter()
            .all(|k| api.lists(k.plural) >= 2)
    })
    .await;
    assert!(
        relisted.is_some(),
        "not every watcher listed again after 410"
    );
    assert!(api.lists("pods") > pods_listed);
    tokio::time::sleep(PROPAGATION).await;
    assert_eq!(
        updates(),
        before,
        "a relist of unchanged objects pushed a snapshot"
    );
    assert_eq!(spread(&tb, 3).await, [Some("server".to_string())].into());

    tb.write_resources(
        "bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: default}\nspec:\n  action: ALLOW\n  rules: [{to: [{operation: {ports: [\"http\"]}}]}]\n",
    )
    .unwrap();
    let reported = eventually(Duration::from_secs(5), || async {
        api.writes().iter().any(|w| {
            w.path == "/api/v1/namespaces/default/events"
                && w.body["involvedObject"]["name"] == "bad"
                && w.body["reason"] == "InvalidResource"
                && w.body["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("ports"))
        })
    })
    .await;
    assert!(
        reported.is_some(),
        "no Event for the bad policy: {:?}",
        api.writes()
    );
    assert!(tb.control_plane_log().contains("resource rejected"));
    assert_eq!(spread(&tb, 3).await, [Some("server".to_string())].into());

    waypoint_controller(&tb).await;
    ca_kept_in_a_secret(tb).await;
}

/// The CA is stored in the Secret `keelson-ca` at the first start; a control plane that
/// starts again without its files restores the same root from it, and traffic goes on.
async fn ca_kept_in_a_secret(mut tb: Testbed) {
    let api = tb.apiserver.as_ref().unwrap();
    let created: Vec<_> = api
        .writes()
        .into_iter()
        .filter(|w| w.method == "POST" && w.path == "/api/v1/namespaces/istio-system/secrets")
        .collect();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].body["metadata"]["name"], "keelson-ca");
    let root = tb.cp_state_dir().join("root-cert.pem");
    let before = std::fs::read_to_string(&root).unwrap();
    tb.kill_control_plane();
    for f in ["root-cert.pem", "root-key.pem"] {
        std::fs::remove_file(tb.cp_state_dir().join(f)).unwrap();
    }
    tb.restart_control_plane().unwrap();
    let back = eventually(Duration::from_secs(10), || async {
        std::fs::read_to_string(&root).is_ok_and(|r| r == before)
    })
    .await;
    assert!(back.is_some(), "{}", tb.control_plane_log());
    assert!(tb
        .control_plane_log()
        .contains("CA restored from its Secret"));
    let api = tb.apiserver.as_ref().unwrap();
    assert_eq!(
        api.writes()
            .iter()
            .filter(|w| w.method == "POST" && w.path.ends_with("/secrets"))
            .count(),
        1,
        "not created twice"
    );
    // A new certificate from the restored CA still chains to the root the peers trust.
    tokio::time::sleep(PROPAGATION).await;
    assert_eq!(spread(&tb, 3).await, [Some("server".to_string())].into());
}

const WAYPOINT_AND_ROUTES: &str = r#"apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: default, annotations: {keelson.io/waypoint-replicas: "2"}}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: to-nowhere, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{backendRefs: [{name: nowhere, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-echo, namespace: default}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules: [{matches: [{method: {service: keelson.test.Echo}}], backendRefs: [{name: echo, port: 80}]}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: edge, namespace: default}
spec:
  selector: {istio: ingressgateway}
  servers: [{port: {number: 80, name: http, protocol: HTTP}, hosts: ["*"]}]
"#;

/// The waypoint controller against the API server: a waypoint Gateway gets its
/// ServiceAccount, Deployment and Service (owned by the Gateway, applied once) and a
/// programmed status; each HTTPRoute parent gets Accepted and ResolvedRefs.
async fn waypoint_controller(tb: &Testbed) {
    let api = tb.apiserver.as_ref().unwrap();
    tb.write_resources("waypoint.yaml", WAYPOINT_AND_ROUTES)
        .unwrap();
    let patch = |path: &str| {
        api.writes()
            .into_iter()
            .filter(|w| w.method == "PATCH" && w.path == path)
            .collect::<Vec<_>>()
    };
    const BASE: &str = "/apis/gateway.networking.k8s.io/v1/namespaces/default";
    let all_written = eventually(Duration::from_secs(5), || async {
        !patch(&format!("{BASE}/httproutes/to-nowhere/status")).is_empty()
            && !patch(&format!("{BASE}/gateways/waypoint/status")).is_empty()
    })
    .await;
    assert!(all_written.is_some(), "{:#?}", api.writes());
    let deployment = patch("/apis/apps/v1/namespaces/default/deployments/waypoint");
    assert_eq!(deployment.len(), 1, "applied once");
    let d = &deployment[0].body;
    assert_eq!(d["spec"]["replicas"], 2);
    assert_eq!(d["metadata"]["ownerReferences"][0]["kind"], "Gateway");
    assert_eq!(
        d["metadata"]["ownerReferences"][0]["uid"],
        "uid-gateways-default-waypoint"
    );
    let pod = &d["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "waypoint");
    assert_eq!(pod["securityContext"]["fsGroup"], 65532);
    assert_eq!(pod["containers"][0]["image"], "keelson/waypoint:test");
    // The mesh's roots, for proxies to mount: in the control plane's namespace and the
    // waypoint's.
    for ns in ["istio-system", "default"] {
        let maps = patch(&format!(
            "/api/v1/namespaces/{ns}/configmaps/keelson-ca-root-cert"
        ));
        let pem = maps[0].body["data"]["root-cert.pem"].as_str().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
    }
    let service = patch("/api/v1/namespaces/default/services/waypoint");
    assert_eq!(service[0].body["spec"]["ports"][0]["port"], 15008);
    assert_eq!(
        patch("/api/v1/namespaces/default/serviceaccounts/waypoint").len(),
        1
    );
    let status = &patch(&format!("{BASE}/gateways/waypoint/status"))[0].body["status"];
    let programmed = status["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap();
    assert_eq!(programmed["status"], "True");
    assert_eq!(
        status["addresses"][0]["value"],
        "waypoint.default.svc.cluster.local"
    );
    let resolved = |route: &str| {
        let w = patch(&format!("{BASE}/httproutes/{route}/status"));
        let parent = &w.last().unwrap().body["status"]["parents"][0];
        assert_eq!(parent["parentRef"]["name"], "echo");
        parent["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["type"] == "ResolvedRefs")
            .unwrap()["status"]
            .clone()
    };
    assert_eq!(resolved("to-echo"), "True");
    assert_eq!(resolved("to-nowhere"), "False");
    // A GRPCRoute's status as its HTTPRoute's; an Istio Gateway's conditions (no pod
    // serves this one).
    let grpc = eventually(Duration::from_secs(5), || async {
        patch(&format!("{BASE}/grpcroutes/grpc-echo/status"))
            .last()
            .is_some_and(|w| {
                w.body["kind"] == "GRPCRoute"
                    && w.body["status"]["parents"][0]["conditions"]
                        .as_array()
                        .is_some_and(|c| {
                            c.iter()
                                .any(|c| c["type"] == "Accepted" && c["status"] == "True")
                        })
            })
    })
    .await;
    assert!(grpc.is_some(), "{:#?}", api.writes());
    let edge = patch("/apis/networking.istio.io/v1/namespaces/default/gateways/edge/status");
    let programmed = edge.last().unwrap().body["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "Programmed")
        .unwrap()
        .clone();
    assert_eq!(programmed["reason"], "NoResources", "{programmed}");
    // Another change elsewhere writes nothing again for the waypoint.
    tb.remove_resources("bad.yaml").unwrap();
    tokio::time::sleep(PROPAGATION).await;
    assert_eq!(
        patch("/apis/apps/v1/namespaces/default/deployments/waypoint").len(),
        1
    );
}

/// Pods leave and join the service, a policy comes and goes, a service is added: each
/// reaches the ztunnels within [`PROPAGATION`] and moves traffic.
async fn resource_changes(source: Source) -> Testbed {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::meshed("spare").serving_echo(8080),
        ],
        source,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    spawn_greeter(&tb, "spare", 8080).unwrap();

    // Both endpoints serve the VIP, over HBONE with certificates from the control plane's CA.
    let seen = spread(&tb, 30).await;
    assert!(
        seen.contains(&Some("server".into())) && seen.contains(&Some("spare".into())),
        "{seen:?}"
    );

    // A pod leaves the service (its label changes): within a second no traffic goes there.
    let mesh = |server_labels: &[(&str, &str)], with_spare: bool| {
        let mut docs = vec![tb
            .k8s_yaml()
            .split("---\n")
            .take(2)
            .collect::<Vec<_>>()
            .join("---\n")];
        docs.push(tb.pod_yaml("client", &[]));
        docs.push(tb.pod_yaml("server", server_labels));
        if with_spare {
            docs.push(tb.pod_yaml("spare", &[]));
        }
        docs.join("---\n")
    };
    tb.write_resources("mesh.yaml", &mesh(&[("app", "other")], true))
        .unwrap();
    let took = eventually(PROPAGATION, || async {
        !dump_has(&tb, "client", |d| in_service(d, "server"))
    })
    .await;
    assert!(
        took.is_some(),
        "label change not seen by ztunnel within {PROPAGATION:?}"
    );
    let seen = spread(&tb, 10).await;
    assert_eq!(
        seen,
        [Some("spare".to_string())].into(),
        "client ztunnel:\n{}",
        tail(&plain(&tb.log("client")), 40)
    );

    // The other pod is deleted and the first rejoins.
    tb.write_resources("mesh.yaml", &mesh(&[], false)).unwrap();
    let took = eventually(PROPAGATION, || async {
        dump_has(&tb, "client", |d| {
            !has_workload(d, "spare") && in_service(d, "server")
        })
    })
    .await;
    assert!(
        took.is_some(),
        "pod removal not seen within {PROPAGATION:?}"
    );
    assert_eq!(spread(&tb, 10).await, [Some("server".to_string())].into());

    // A policy is added: the server's ztunnel denies; removed: traffic flows again.
    tb.write_resources(
        "policy.yaml",
        r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  selector: {matchLabels: {pod: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
"#,
    )
    .unwrap();
    let took = eventually(PROPAGATION, || async {
        dump_has(&tb, "server", |d| has_policy(d, "deny-client"))
    })
    .await;
    assert!(took.is_some(), "policy not seen within {PROPAGATION:?}");
    assert_eq!(spread(&tb, 3).await, [None].into());
    tb.remove_resources("policy.yaml").unwrap();
    let took = eventually(PROPAGATION, || async {
        dump_has(&tb, "server", |d| !has_policy(d, "deny-client"))
    })
    .await;
    assert!(
        took.is_some(),
        "policy removal not seen within {PROPAGATION:?}"
    );
    assert_eq!(spread(&tb, 3).await, [Some("server".to_string())].into());

    // A new service: its VIP works as soon as ztunnel has it.
    tb.write_resources(
        "svc2.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: echo2, namespace: default}\nspec:\n  clusterIP: 10.96.0.11\n  selector: {pod: server}\n  ports: [{port: 81, targetPort: 8080}]\n",
    )
    .unwrap();
    let vip2: SocketAddr = "10.96.0.11:81".parse().unwrap();
    let took = eventually(PROPAGATION, || async {
        dump_has(&tb, "client", |d| {
            d["services"]
                .as_array()
                .is_some_and(|s| s.iter().any(|s| s["name"] == "echo2"))
        })
    })
    .await;
    assert!(
        took.is_some(),
        "new service not seen within {PROPAGATION:?}"
    );
    assert_eq!(
        greeting(&tb, "client", vip2).await.as_deref(),
        Some("server")
    );
    tb
}

/// Sends `msg` on an open connection and reads the echo.
async fn echo_once(s: &mut tokio::net::TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::other("echo timed out"))??;
    Ok(back)
}

const DENY_CLIENT: &str = r#"apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-client, namespace: default}
spec:
  selector: {matchLabels: {pod: server}}
  action: DENY
  rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/client]}}]}]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_restart_keeps_traffic_and_resyncs() {
    let mut tb = Testbed::start(Options {
        source: Source::ControlPlane,
        ..Options::default()
    })
    .unwrap();
    let server = SocketAddr::new(tb.ip("server"), 8080);
    spawn_echo(&tb, "server", 8080).unwrap();
    let mut open = connect_from(&tb, "client", server).unwrap();
    assert_eq!(echo_once(&mut open, b"before").await.unwrap(), b"before");

    // The control plane dies: the open connection and new ones keep working on the last
    // known state and the held certificates.
    tb.kill_control_plane();
    assert_eq!(echo_once(&mut open, b"during").await.unwrap(), b"during");
    let s = connect_from(&tb, "client", server).unwrap();
    assert_eq!(roundtrip(s, b"new".to_vec()).await.unwrap(), b"new");

    // A change made while it is away arrives once it is back.
    tb.write_resources("policy.yaml", DENY_CLIENT).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(echo_once(&mut open, b"still").await.unwrap(), b"still");
    tb.restart_control_plane().unwrap();
    let took = eventually(Duration::from_secs(20), || async {
        dump_has(&tb, "server", |d| has_policy(d, "deny-client"))
    })
    .await;
    assert!(
        took.is_some(),
        "no resync after the restart:\n{}",
        tb.control_plane_log()
    );
    // The policy now denies: new connections, and the open one is closed by the re-check.
    let s = connect_from(&tb, "client", server).unwrap();
    assert!(roundtrip(s, b"x".to_vec())
        .await
        .unwrap_or_default()
        .is_empty());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while echo_once(&mut open, b"?").await.is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "the open connection survived a denying policy"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The reconnect announced what the client held, so unchanged addresses were not resent:
    // of the three (two pods, one service) only the server's workload, which now names the
    // policy, came again. (The client may reconnect a little after the server did.)
    let resynced = || {
        let log = plain(&tb.log("client"));
        let after = log
            .rsplit("xds stream open")
            .next()
            .unwrap_or_default()
            .to_string();
        after.contains("type_url=type.googleapis.com/istio.workload.Address added=1 removed=0")
    };
    let took = eventually(Duration::from_secs(20), || async { resynced() }).await;
    assert!(took.is_some(), "{}", plain(&tb.log("client")));

    // The lost stream and the messages are counted.
    let m = tb.metrics("client").unwrap();
    let terminations: f64 = ["Error", "ConnectionError"]
        .iter()
        .filter_map(|r| {
            metric_value(
                &m,
                "istio_xds_connection_terminations_total",
                &[("reason", r)],
            )
        })
        .sum();
    assert!(terminations >= 1.0, "{m}");
    let messages = metric_value(
        &m,
        "istio_xds_message_total",
        &[("url", "type.googleapis.com/istio.workload.Address")],
    )
    .unwrap_or(0.0);
    assert!(messages >= 2.0, "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_rotate_under_an_open_connection() {
    let tb = Testbed::start(Options {
        source: Source::ControlPlane,
        env: vec![("SECRET_TTL".into(), "4s".into())],
        ..Options::default()
    })
    .unwrap();
    let server = SocketAddr::new(tb.ip("server"), 8080);
    spawn_echo(&tb, "server", 8080).unwrap();
    let not_after = |pod: &str| {
        tb.config_dump(pod).unwrap()["certificates"][0]["not_after"]
            .as_u64()
            .unwrap_or(0)
    };
    let first = not_after("client");
    let mut open = connect_from(&tb, "client", server).unwrap();
    // Traffic for 7 s: at least two rotations of both ztunnels' certificates.
    let start = std::time::Instant::now();
    let mut i = 0u64;
    while start.elapsed() < Duration::from_secs(7) {
        let msg = format!("message {i}");
        assert_eq!(
            echo_once(&mut open, msg.as_bytes()).await.unwrap(),
            msg.as_bytes()
        );
        i += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        not_after("client") >= first + 2,
        "client certificate not rotated"
    );
    // New connections use the new certificates.
    let s = connect_from(&tb, "client", server).unwrap();
    assert_eq!(roundtrip(s, b"fresh".to_vec()).await.unwrap(), b"fresh");
    let issued = plain(&tb.log("client"))
        .matches("certificate received from the CA")
        .count();
    assert!(issued >= 3, "only {issued} certificates issued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ca_outage_keeps_traffic_until_expiry() {
    let mut tb = Testbed::start(Options {
        source: Source::ControlPlane,
        env: vec![
            ("SECRET_TTL".into(), "6s".into()),
            // No pooled connection outlives the test's pauses: each check handshakes anew.
            ("POOL_UNUSED_RELEASE_TIMEOUT".into(), "200ms".into()),
        ],
        ..Options::default()
    })
    .unwrap();
    let server = SocketAddr::new(tb.ip("server"), 8080);
    spawn_echo(&tb, "server", 8080).unwrap();
    let expiry = tb.config_dump("client").unwrap()["certificates"][0]["not_after"]
        .as_u64()
        .unwrap();
    tb.kill_control_plane();
    let s = connect_from(&tb, "client", server).unwrap();
    assert_eq!(roundtrip(s, b"valid".to_vec()).await.unwrap(), b"valid");
    // Past expiry, with the CA still away, the client cannot prove its identity.
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    while now() <= expiry + 1 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = connect_from(&tb, "client", server).unwrap();
    assert!(roundtrip(s, b"expired".to_vec())
        .await
        .unwrap_or_default()
        .is_empty());
    // The CA returns: certificates are fetched again and traffic resumes.
    tb.restart_control_plane().unwrap();
    let back = eventually(Duration::from_secs(30), || async {
        match connect_from(&tb, "client", server) {
            Ok(s) => roundtrip(s, b"back".to_vec()).await.unwrap_or_default() == b"back",
            Err(_) => false,
        }
    })
    .await;
    assert!(
        back.is_some(),
        "traffic did not resume:\n{}",
        plain(&tb.log("client"))
    );
}

#[test]
fn the_ca_refuses_impersonation_beyond_the_callers_node() {
    use identity::Identity;
    use proxycore::ca_client::CaClient;
    use proxycore::config::GrpcTarget;

    let tb = Testbed::start(Options {
        source: Source::ControlPlane,
        ..Options::default()
    })
    .unwrap();
    let target = GrpcTarget {
        address: format!("https://{}", tb.cp_addr()),
        root_ca: tb.cp_state_dir().join("root-cert.pem"),
        alt_hostname: None,
        headers: vec![],
    };
    let state = tb.cp_state_dir();
    let node_token = state.join("node-tokens").join("node-client");
    let unbound_token = state.join("token");
    let workload_token = controlplane::token::TokenAuthority::load_or_create(&state)
        .unwrap()
        .mint("default", "client", Some("node-client"));
    let forged = controlplane::token::TokenAuthority::from_secret(b"not the key").mint(
        "istio-system",
        "ztunnel",
        Some("node-client"),
    );
    let id = |sa: &str| Identity::new("cluster.local", "default", sa);
    // (case, token, impersonate, identity asked for, expected error text)
    type Case = (
        &'static str,
        String,
        bool,
        Identity,
        Result<(), &'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "own node",
            node_token.display().to_string(),
            true,
            id("client"),
            Ok(()),
        ),
        (
            "other node",
            node_token.display().to_string(),
            true,
            id("server"),
            Err("no pod with identity"),
        ),
        (
            "unbound token",
            unbound_token.display().to_string(),
            true,
            id("client"),
            Err("not bound to a node"),
        ),
        (
            "not a node account",
            workload_token.clone(),
            true,
            id("client"),
            Err("may not request"),
        ),
        ("forged", forged, true, id("client"), Err("signature")),
        ("own identity", workload_token, false, id("client"), Ok(())),
    ];
    let results = tb
        .cp_ns()
        .run(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let mut out = Vec::new();
                for (what, token, impersonate, id, want) in cases {
                    let auth = proxycore::grpc::Auth::new(&token, "Kubernetes", &[]).unwrap();
                    let ca =
                        CaClient::new(&target, None, auth, Duration::from_secs(600), impersonate)
                            .unwrap();
                    let got = identity::CertProvider::fetch(ca.as_ref(), &id).await;
                    out.push((
                        what,
                        want,
                        got.map(|c| c.identity.clone()).map_err(|e| e.to_string()),
                        id,
                    ));
                }
                out
            })
        })
        .unwrap();
    for (what, want, got, id) in results {
        match (want, got) {
            (Ok(()), Ok(got)) => assert_eq!(got, id, "{what}"),
            (Err(msg), Err(e)) => {
                assert!(e.contains(msg), "{what}: {e}");
                assert!(e.contains("Unauthenticated"), "{what}: {e}");
            }
            (want, got) => panic!("{what}: wanted {want:?}, got {got:?}"),
        }
    }
    // Counted on the control plane's monitoring port.
    let m = tb.control_plane_metrics().unwrap();
    let count = |name: &str| metric_value(&m, name, &[]).unwrap_or(0.0);
    assert!(
        count("citadel_server_csr_refused_count_total") >= 3.0,
        "{m}"
    );
    assert!(
        count("citadel_server_authentication_failure_count_total") >= 1.0,
        "{m}"
    );
    assert!(
        count("citadel_server_success_cert_issuance_count_total") >= 2.0,
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_file_is_rejected_and_everything_else_kept() {
    let tb = Testbed::start(Options {
        source: Source::ControlPlane,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    // ztunnel introduced itself as upstream does: node id, cluster id, node name.
    let cp = plain(&tb.control_plane_log());
    assert!(
        cp.contains("node=ztunnel~10.10.0.2~client.default~default.svc.cluster.local cluster_id=Kubernetes node_name=node-client"),
        "{cp}"
    );

    // A policy file, then a broken edit of it, and a broken new file.
    tb.write_resources("policy.yaml", DENY_CLIENT).unwrap();
    let took = eventually(PROPAGATION, || async {
        dump_has(&tb, "server", |d| has_policy(d, "deny-client"))
    })
    .await;
    assert!(took.is_some());
    tb.write_resources(
        "policy.yaml",
        &DENY_CLIENT.replace(
            "principals: [cluster.local/ns/default/sa/client]",
            "ipBlocks: [10.0.0.300]",
        ),
    )
    .unwrap();
    tb.write_resources(
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: bad, namespace: default}\nspec:\n  ports: [{port: seventy}]\n",
    )
    .unwrap();
    let reported = eventually(Duration::from_secs(2), || async {
        let log = plain(&tb.control_plane_log());
        log.contains("broken.yaml: Service bad: spec.ports[0].port")
            && log.contains(
                "policy.yaml: AuthorizationPolicy deny-client: spec.rules[0].from[0].source.ipBlocks[0]",
            )
    })
    .await;
    assert!(reported.is_some(), "{}", plain(&tb.control_plane_log()));
    let m = tb.control_plane_metrics().unwrap();
    assert_eq!(
        metric_value(&m, "keelson_resource_file_errors_total", &[]),
        Some(2.0),
        "{m}"
    );
    // The last good content of both stays: the policy still denies, the service still works.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(dump_has(&tb, "server", |d| has_policy(d, "deny-client")));
    assert_eq!(greeting(&tb, "client", vip()).await, None);

    // A good change elsewhere still goes through, and only what changed is pushed: one
    // workload (the server, whose labels change).
    tb.remove_resources("policy.yaml").unwrap();
    tb.write_resources(
        "mesh.yaml",
        &tb.k8s_yaml()
            .replace("pod: server", "pod: server, tier: backend"),
    )
    .unwrap();
    let took = eventually(PROPAGATION, || async {
        dump_has(&tb, "server", |d| !has_policy(d, "deny-client"))
    })
    .await;
    assert!(took.is_some());
    assert_eq!(
        greeting(&tb, "client", vip()).await.as_deref(),
        Some("server")
    );
    let last_address_push = || {
        plain(&tb.log("client"))
            .lines()
            .rev()
            .find(|l| l.contains("xds response applied") && l.contains("istio.workload.Address"))
            .map(String::from)
            .unwrap_or_default()
    };
    let took = eventually(Duration::from_secs(2), || async {
        last_address_push().contains("added=1 removed=0")
    })
    .await;
    assert!(took.is_some(), "{}", last_address_push());
}

/// Shared mode on the API server: the node agent reads each pod the runtime adds (and its
/// namespace) from the API server, enrols the meshed ones, and traffic goes through the
/// node's ztunnel with mTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_node_agent_enrols_pods_read_from_the_api_server() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        source: Source::Kubernetes,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    let node = keelson_tests::testbed::SHARED_NODE_POD;
    let d = tb.config_dump(node).unwrap();
    let mut pods: Vec<&str> = d["workloadState"]
        .as_array()
        .map(|w| w.iter().filter_map(|p| p["name"].as_str()).collect())
        .unwrap_or_default();
    pods.sort();
    assert_eq!(
        pods,
        ["client", "server"],
        "the outsider is not enrolled: {d}"
    );
    assert_eq!(
        greeting(&tb, "client", vip()).await.as_deref(),
        Some("server")
    );
    let api = tb.apiserver.as_ref().unwrap();
    let gets = |path: &str| api.reads().iter().filter(|p| *p == path).count();
    assert!(gets("/api/v1/namespaces/default/pods/client") >= 1);
    assert!(gets("/api/v1/namespaces/default") >= 1);
}
