use super::*;

const YAML: &str = r#"
workloads:
  - uid: c1//Pod/default/a
    name: a
    namespace: default
    addresses: [10.0.0.2]
    tunnelProtocol: HBONE
    serviceAccount: sa-a
    capacity: 3
    services:
      default/echo.default.svc.cluster.local: {80: 8080}
  - uid: c1//Pod/default/b
    name: b
    namespace: default
    addresses: [10.0.0.3]
    services:
      default/echo.default.svc.cluster.local: {80: 9090}
  - uid: c1//Pod/default/sick
    name: sick
    namespace: default
    addresses: [10.0.0.4]
    status: Unhealthy
    services:
      default/echo.default.svc.cluster.local: {80: 8080}
services:
  - name: echo
    namespace: default
    hostname: echo.default.svc.cluster.local
    addresses: [10.96.0.10]
    ports: {80: 0}
"#;

fn state() -> State {
    State::from_config(serde_yaml::from_str(YAML).unwrap())
}

#[test]
fn resolves_vip_to_healthy_endpoints_by_capacity() {
    let s = state();
    let svc = s.service_by_vip("10.96.0.10".parse().unwrap()).unwrap();
    let mut counts = HashMap::new();
    for _ in 0..4000 {
        let e = s.pick_endpoint(&svc, 80).unwrap();
        *counts.entry((e.workload.name.clone(), e.port)).or_insert(0) += 1;
    }
    assert!(
        !counts.keys().any(|(n, _)| n == "sick"),
        "unhealthy endpoint picked"
    );
    let a = counts[&("a".to_string(), 8080)];
    let b = counts[&("b".to_string(), 9090)];
    // capacity 3 vs 1: expect ~3000 vs ~1000.
    assert!((2700..3300).contains(&a), "a={a} b={b}");
    assert!(s.pick_endpoint(&svc, 81).is_none());
}

#[test]
fn identities_default_like_wds() {
    let s = state();
    let b = s.workload_by_ip("10.0.0.3".parse().unwrap()).unwrap();
    assert_eq!(
        b.identity().to_string(),
        "spiffe://cluster.local/ns/default/sa/default"
    );
    assert_eq!(b.tunnel_protocol, TunnelProtocol::None);
}

#[test]
fn rejects_unknown_fields_and_bad_values() {
    let bad = "workloads:\n  - uid: x\n    name: x\n    namespace: d\n    tunnelProtocol: LEGACY_ISTIO_MTLS\n";
    assert!(serde_yaml::from_str::<LocalConfig>(bad).is_err());
    let typo = "workloads:\n  - uid: x\n    name: x\n    namespace: d\n    adresses: [1.2.3.4]\n";
    let e = serde_yaml::from_str::<LocalConfig>(typo)
        .unwrap_err()
        .to_string();
    assert!(e.contains("adresses"), "{e}");
}

#[test]
fn delta_updates_add_replace_and_remove() {
    let s = state();
    let vip: IpAddr = "10.96.0.10".parse().unwrap();
    let svc = s.service_by_vip(vip).unwrap();
    // Remove one endpoint and the unhealthy one; add a new one.
    let mut newcomer = (*s.workload_by_ip("10.0.0.3".parse().unwrap()).unwrap()).clone();
    newcomer.uid = "c1//Pod/default/c".into();
    newcomer.name = "c".into();
    newcomer.addresses = vec!["10.0.0.9".parse().unwrap()];
    s.apply(Update {
        workloads: vec![newcomer],
        services: vec![],
        removed: vec![
            "c1//Pod/default/a".into(),
            "c1//Pod/default/sick".into(),
            "no-such".into(),
        ],
        ..Update::default()
    });
    assert!(s.workload_by_ip("10.0.0.2".parse().unwrap()).is_none());
    let names: std::collections::HashSet<String> = (0..50)
        .map(|_| s.pick_endpoint(&svc, 80).unwrap().workload.name.clone())
        .collect();
    assert_eq!(names, ["b".to_string(), "c".to_string()].into());
    // Removing the service by its resource name.
    s.apply(Update {
        removed: vec![svc.key().to_string()],
        ..Default::default()
    });
    assert!(s.service_by_vip(vip).is_none());
}

#[test]
fn policies_apply_by_scope() {
    let yaml = r#"
workloads:
  - {uid: w1, name: a, namespace: shop, authorizationPolicies: [shop/by-selector, shop/missing]}
  - {uid: w2, name: b, namespace: shop}
  - {uid: w3, name: c, namespace: ops}
policies:
  - {name: mesh-wide, namespace: istio-system, scope: Global, action: Deny}
  - {name: shop-ns, namespace: shop, scope: Namespace, action: Allow}
  - {name: by-selector, namespace: shop, scope: WorkloadSelector, action: Allow}
"#;
    let s = State::from_config(serde_yaml::from_str(yaml).unwrap());
    let names = |uid: &str| {
        let w = s
            .workload_by_name(
                if uid == "w3" { "ops" } else { "shop" },
                match uid {
                    "w1" => "a",
                    "w2" => "b",
                    _ => "c",
                },
            )
            .unwrap();
        let mut v: Vec<String> = s.policies_for(&w).iter().map(|p| p.key()).collect();
        v.sort();
        v
    };
    assert_eq!(
        names("w1"),
        vec!["istio-system/mesh-wide", "shop/by-selector", "shop/shop-ns"]
    );
    assert_eq!(
        names("w2"),
        vec!["istio-system/mesh-wide", "shop/shop-ns"],
        "selector policies only where named"
    );
    assert_eq!(
        names("w3"),
        vec!["istio-system/mesh-wide"],
        "namespace policies stay in their namespace"
    );
}

/// Config dumps taken while deltas are applied, from two threads: the two used to take the
/// store's two locks in opposite orders and could deadlock (a hung ztunnel that stopped
/// reading xDS). Bounded: fails after 20 s instead of hanging.
#[test]
fn dumps_and_updates_concurrently_do_not_deadlock() {
    let s = state();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let writer = {
        let (s, done) = (s.clone(), done_tx.clone());
        std::thread::spawn(move || {
            for i in 0..20_000 {
                let mut w = s.workload_by_name("default", "a").unwrap().as_ref().clone();
                w.capacity = Some(1 + i % 5);
                s.apply(Update {
                    workloads: vec![w],
                    ..Update::default()
                });
            }
            let _ = done.send(());
        })
    };
    let reader = {
        let (s, done) = (s.clone(), done_tx);
        std::thread::spawn(move || {
            for _ in 0..20_000 {
                assert_eq!(s.dump().workloads.len(), 3);
            }
            let _ = done.send(());
        })
    };
    for _ in 0..2 {
        done_rx
            .recv_timeout(std::time::Duration::from_secs(20))
            .expect("apply and dump deadlocked");
    }
    writer.join().unwrap();
    reader.join().unwrap();
}
