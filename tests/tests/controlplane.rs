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
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::meshed("spare").serving_echo(8080),
        ],
        source: Source::ControlPlane,
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
    assert_eq!(spread(&tb, 10).await, [Some("spare".to_string())].into());

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
}
