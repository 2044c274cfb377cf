//! The xDS client against a control plane this test runs itself (the Keelson server library,
//! fed resources no Keelson translation would produce): per-resource NACKs while the valid
//! neighbours of the same response apply.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use controlplane::server::{Counters, Shared};
use controlplane::snapshot::Snapshot;
use keelson_tests::*;
use prost::Message;
use resources::MeshSettings;
use resources::Resources;
use xds::workload as pb;

fn workload(name: &str, ip: [u8; 4], tunnel_protocol: i32) -> Vec<u8> {
    pb::Address {
        r#type: Some(pb::address::Type::Workload(pb::Workload {
            uid: format!("Kubernetes//Pod/default/{name}"),
            name: name.into(),
            namespace: "default".into(),
            addresses: vec![ip.to_vec()],
            tunnel_protocol,
            service_account: name.into(),
            ..Default::default()
        })),
    }
    .encode_to_vec()
}

fn has_workload(d: &serde_json::Value, name: &str) -> bool {
    d["workloads"]
        .as_array()
        .is_some_and(|ws| ws.iter().any(|w| w["name"] == name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_resource_is_nacked_while_its_neighbours_apply() {
    let mut tb = Testbed::start(Options {
        source: Source::ExternalControlPlane,
        ..Options::default()
    })
    .unwrap();
    let mesh = MeshSettings::default();
    let mut res = Resources::default();
    res.add_text("mesh.yaml", &tb.k8s_yaml()).unwrap();
    let mut snap = Snapshot::build(&res, &mesh);
    // An enum value from a future version: that resource, and only it, fails.
    snap.insert(
        xds::type_url::ADDRESS,
        "Kubernetes//Pod/default/future",
        workload("future", [10, 10, 0, 90], 7),
    );
    snap.insert(
        xds::type_url::ADDRESS,
        "Kubernetes//Pod/default/fine",
        workload("fine", [10, 10, 0, 91], 1),
    );
    let bad_policy = xds::security::Authorization {
        name: "odd".into(),
        namespace: "default".into(),
        action: 9,
        ..Default::default()
    };
    snap.insert(
        xds::type_url::AUTHORIZATION,
        "default/odd",
        bad_policy.encode_to_vec(),
    );
    // The sender stays alive for the whole test: dropping it ends every stream.
    let (_tx, rx) = tokio::sync::watch::channel(Arc::new(snap));
    let (ca, tokens) = controlplane::run::load_state(&tb.cp_state_dir(), &mesh).unwrap();
    let tls = controlplane::run::serving_tls(&ca, tb.cp_addr(), &[]).unwrap();
    let counters = Arc::new(Counters::default());
    let shared = Arc::new(Shared {
        snapshot: rx,
        ca: Arc::new(ca),
        tokens: Arc::new(tokens),
        trust_domain: mesh.trust_domain.clone(),
        trusted_node_accounts: vec![],
        counters: counters.clone(),
        reviewer: None,
    });
    // The server runs on its own runtime, as a control plane process would: the test's
    // blocking calls (config dumps, readiness polls) must not stall its connections.
    let std_listener = tb.cp_ns().tcp_listen(tb.cp_addr()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            let _ = controlplane::server::serve(listener, tls, shared, async {
                let _ = stop_rx.await;
            })
            .await;
        });
    });

    // Both ztunnels become ready: the valid resources of each response applied.
    tb.wait_ready("client", Duration::from_secs(20)).unwrap();
    tb.wait_ready("server", Duration::from_secs(20)).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let s = connect_from(&tb, "client", SocketAddr::new(tb.ip("server"), 8080)).unwrap();
    assert_eq!(roundtrip(s, b"ok".to_vec()).await.unwrap(), b"ok");
    let d = tb.config_dump("client").unwrap();
    assert!(
        has_workload(&d, "fine") && !has_workload(&d, "future"),
        "{d}"
    );
    assert!(d["policies"].as_array().unwrap().is_empty());
    // Two NACKs per ztunnel (Address and Authorization), each naming what failed.
    let nacked = eventually(Duration::from_secs(2), || async {
        counters.nacks.load(Ordering::Relaxed) >= 4
    })
    .await;
    assert!(nacked.is_some(), "{counters:?}");
    let log = plain(&tb.log("client"));
    let nack = log
        .lines()
        .find(|l| l.contains("NACK") && l.contains("istio.workload.Address"))
        .expect("an Address NACK is logged");
    assert!(
        nack.contains("Kubernetes//Pod/default/future") && nack.contains("unknown enum value 7"),
        "{nack}"
    );
    assert!(!nack.contains("default/fine"), "{nack}");
    assert!(log.contains("default/odd"), "the policy NACK names it");

    drop(stop_tx);
    drop(tb);
    let _ = server.join();
}
