use super::*;

const YAML: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: bookinfo
  labels:
    istio.io/dataplane-mode: ambient
---
apiVersion: v1
kind: Service
metadata:
  name: reviews
  namespace: bookinfo
spec:
  clusterIP: 10.96.0.20
  selector:
    app: reviews
  ports:
  - name: http
    port: 9080
    targetPort: http-alt
  - name: tcp-admin
    port: 9000
    targetPort: 9001
---
apiVersion: v1
kind: Service
metadata:
  name: headless
  namespace: bookinfo
spec:
  clusterIP: None
  selector:
    app: reviews
  ports:
  - port: 80
---
apiVersion: v1
kind: Pod
metadata:
  name: reviews-v2-5d8f7b-abcde
  namespace: bookinfo
  labels:
    app: reviews
    version: v2
  ownerReferences:
  - kind: ReplicaSet
    name: reviews-v2-5d8f7b
spec:
  serviceAccountName: bookinfo-reviews
  nodeName: node-b
  containers:
  - name: reviews
    ports:
    - name: http-alt
      containerPort: 9081
status:
  phase: Running
  podIP: 10.10.1.5
  conditions:
  - type: Ready
    status: "True"
---
apiVersion: v1
kind: Pod
metadata:
  name: opted-out
  namespace: bookinfo
  labels:
    app: reviews
    istio.io/dataplane-mode: none
status:
  phase: Pending
  podIPs:
  - ip: 10.10.1.6
---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: ignored-for-now
"#;

fn load() -> Resources {
    let mut r = Resources::default();
    r.add_text("bookinfo.yaml", YAML).unwrap();
    r
}

fn workload_named<'a>(all: &'a [NamedAddress], pod: &str) -> &'a pb::Workload {
    all.iter()
        .find_map(|a| match &a.address.r#type {
            Some(pb::address::Type::Workload(w)) if w.name == pod => Some(w),
            _ => None,
        })
        .unwrap()
}

#[test]
fn pods_become_workloads_like_istiod() {
    let all = addresses(&load(), &MeshSettings::default());
    let w = workload_named(&all, "reviews-v2-5d8f7b-abcde");
    assert_eq!(w.uid, "Kubernetes//Pod/bookinfo/reviews-v2-5d8f7b-abcde");
    assert_eq!(w.addresses, vec![vec![10, 10, 1, 5]]);
    assert_eq!(
        w.tunnel_protocol(),
        pb::TunnelProtocol::Hbone,
        "namespace is ambient"
    );
    assert_eq!(w.service_account, "bookinfo-reviews");
    assert_eq!(w.node, "node-b");
    assert_eq!(
        (w.workload_name.as_str(), w.workload_type()),
        ("reviews-v2", pb::WorkloadType::Deployment)
    );
    assert_eq!(
        (w.canonical_name.as_str(), w.canonical_revision.as_str()),
        ("reviews", "v2")
    );
    assert_eq!(w.status(), pb::WorkloadStatus::Healthy);
    // Named target port resolved through the container port; numeric kept.
    let ports = &w.services["bookinfo/reviews.bookinfo.svc.cluster.local"].ports;
    assert_eq!(
        ports
            .iter()
            .map(|p| (p.service_port, p.target_port))
            .collect::<Vec<_>>(),
        vec![(9080, 9081), (9000, 9001)]
    );
    assert_eq!(ports[0].app_protocol(), pb::AppProtocol::Http11);
    assert!(w
        .services
        .contains_key("bookinfo/headless.bookinfo.svc.cluster.local"));

    let out = workload_named(&all, "opted-out");
    assert_eq!(
        out.tunnel_protocol(),
        pb::TunnelProtocol::None,
        "dataplane-mode=none opts out"
    );
    assert_eq!(out.status(), pb::WorkloadStatus::Unhealthy, "not running");
    assert_eq!(
        (out.workload_name.as_str(), out.workload_type()),
        ("opted-out", pb::WorkloadType::Pod)
    );
}

#[test]
fn services_become_services() {
    let all = addresses(&load(), &MeshSettings::default());
    let svc = |name: &str| {
        all.iter()
            .find_map(|a| match &a.address.r#type {
                Some(pb::address::Type::Service(s)) if s.name == name => {
                    Some((a.name.clone(), s.clone()))
                }
                _ => None,
            })
            .unwrap()
    };
    let (key, reviews) = svc("reviews");
    assert_eq!(key, "bookinfo/reviews.bookinfo.svc.cluster.local");
    assert_eq!(reviews.addresses[0].address, vec![10, 96, 0, 20]);
    let ports: Vec<(u32, u32)> = reviews
        .ports
        .iter()
        .map(|p| (p.service_port, p.target_port))
        .collect();
    assert_eq!(
        ports,
        vec![(9080, 0), (9000, 9001)],
        "named target port is 0 on the service"
    );
    let (_, headless) = svc("headless");
    assert!(headless.addresses.is_empty());
}

#[test]
fn unknown_kinds_are_counted_and_bad_fields_named() {
    let r = load();
    assert_eq!(r.ignored.get("Deployment"), Some(&1));
    let mut r = Resources::default();
    let e = r
        .add_text(
            "bad.yaml",
            "kind: Service\nmetadata:\n  name: web\nspec:\n  ports:\n  - port: 99999\n",
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("bad.yaml") && e.contains("Service web") && e.contains("spec.ports[0].port"),
        "{e}"
    );
}

#[test]
fn translated_addresses_convert_in_ztunnel_terms() {
    // Every generated Address must encode and decode cleanly (the wire is the contract).
    use prost::Message;
    for a in addresses(&load(), &MeshSettings::default()) {
        let bytes = a.address.encode_to_vec();
        assert_eq!(pb::Address::decode(bytes.as_slice()).unwrap(), a.address);
    }
}

const WAYPOINTS: &str = r#"
apiVersion: v1
kind: Namespace
metadata:
  name: shop
  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: shop-waypoint}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: shop-waypoint
  namespace: shop
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: both
  namespace: shop
  labels: {istio.io/waypoint-for: all}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec: {clusterIP: 10.96.1.1, selector: {app: cart}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: shop, labels: {istio.io/use-waypoint: none}}
spec: {clusterIP: 10.96.1.2, selector: {app: legacy}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: shop, labels: {istio.io/use-waypoint: both}}
spec: {clusterIP: 10.96.1.3, selector: {app: other}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: shop-waypoint, namespace: shop, labels: {gateway.networking.k8s.io/gateway-name: shop-waypoint}}
spec: {clusterIP: 10.96.1.4, selector: {gateway.networking.k8s.io/gateway-name: shop-waypoint}, ports: [{port: 15008}]}
---
apiVersion: v1
kind: Service
metadata: {name: ghost, namespace: shop, labels: {istio.io/use-waypoint: missing}}
spec: {clusterIP: 10.96.1.5, selector: {app: ghost}, ports: [{port: 80}]}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-0, namespace: shop, labels: {app: cart}}
spec: {nodeName: n1}
status: {podIP: 10.244.1.9, conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Pod
metadata: {name: other-0, namespace: shop, labels: {app: other, istio.io/use-waypoint: both}}
spec: {nodeName: n1}
status: {podIP: 10.244.1.10, conditions: [{type: Ready, status: "True"}]}
"#;

#[test]
fn waypoints_are_chosen_by_label_and_kind_of_traffic() {
    let mut r = Resources::default();
    r.add_text("shop.yaml", WAYPOINTS).unwrap();
    let mesh = MeshSettings::default();
    let all = addresses(&r, &mesh);
    let svc = |name: &str| {
        all.iter()
            .find_map(|a| match &a.address.r#type {
                Some(pb::address::Type::Service(s)) if s.name == name => Some(s.clone()),
                _ => None,
            })
            .unwrap()
    };
    let host = |w: &Option<pb::GatewayAddress>| match w.as_ref().and_then(|w| w.destination.clone())
    {
        Some(pb::gateway_address::Destination::Hostname(h)) => {
            assert_eq!(w.as_ref().unwrap().hbone_mtls_port, 15008);
            Some(format!("{}/{}", h.namespace, h.hostname))
        }
        _ => None,
    };
    // The namespace label gives every service the waypoint (for services by default)...
    assert_eq!(
        host(&svc("cart").waypoint).as_deref(),
        Some("shop/shop-waypoint.shop.svc.cluster.local")
    );
    // ...but not its workloads; `none` opts out; a service label picks another; the
    // waypoint's own service has none; a missing Gateway gives none.
    assert_eq!(host(&workload_named(&all, "cart-0").waypoint), None);
    assert_eq!(host(&svc("legacy").waypoint), None);
    assert_eq!(
        host(&svc("other").waypoint).as_deref(),
        Some("shop/both.shop.svc.cluster.local")
    );
    assert_eq!(host(&svc("shop-waypoint").waypoint), None);
    assert_eq!(host(&svc("ghost").waypoint), None);
    // A waypoint for `all` serves pod-addressed traffic too.
    assert_eq!(
        host(&workload_named(&all, "other-0").waypoint).as_deref(),
        Some("shop/both.shop.svc.cluster.local")
    );
    // A waypoint Gateway without its HBONE listener is refused, named.
    let e = Resources::default()
        .add_text(
            "gw.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: w}\nspec: {gatewayClassName: istio-waypoint, listeners: [{name: http, port: 80, protocol: HTTP}]}\n",
        )
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("gw.yaml") && e.contains("Gateway w") && e.contains("15008"),
        "{e}"
    );
}

#[test]
fn service_entries_become_services_and_outside_workloads() {
    let mut res = Resources::default();
    res.add_text(
        "se.yaml",
        "apiVersion: v1
kind: Pod
metadata: {name: web-0, namespace: default, labels: {app: web}}
spec: {nodeName: n}
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api, namespace: default}
spec:
  hosts: [api.external.test]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 192.0.2.10}, {address: 192.0.2.11, ports: {http: 8080}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy, namespace: default}
spec:
  hosts: [legacy.external.test]
  addresses: [192.0.2.20]
  ports: [{number: 5432, name: tcp, protocol: TCP}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: internal, namespace: default}
spec:
  hosts: [web.internal.test]
  ports: [{number: 80, name: http, targetPort: 9080}]
  location: MESH_INTERNAL
  resolution: STATIC
  workloadSelector: {labels: {app: web}}
",
    )
    .unwrap();
    let mesh = MeshSettings::default();
    let all = addresses(&res, &mesh);
    let svc = |host: &str| {
        all.iter()
            .find_map(|a| match &a.address.r#type {
                Some(pb::address::Type::Service(s)) if s.hostname == host => Some(s.clone()),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no service {host}"))
    };
    let api = svc("api.external.test");
    // No addresses: one VIP from 240.240.0.0/16.
    assert_eq!(api.addresses.len(), 1);
    assert_eq!(&api.addresses[0].address[..2], &[240, 240]);
    assert_eq!(api.ports[0].target_port, 9080);
    assert_eq!(
        svc("legacy.external.test").addresses[0].address,
        vec![192, 0, 2, 20]
    );
    let outside = entry_workloads(&all);
    // Two STATIC endpoints (one with its own port), and NONE's address itself.
    assert_eq!(outside.len(), 3, "{outside:?}");
    let ep11 = outside
        .iter()
        .find(|w| w.addresses[0] == vec![192, 0, 2, 11])
        .unwrap();
    assert_eq!(ep11.tunnel_protocol, pb::TunnelProtocol::None as i32);
    assert_eq!(
        ep11.services["default/api.external.test"].ports[0].target_port,
        8080
    );
    // The selected pod is a member of the internal host.
    let web = workload_named(&all, "web-0");
    assert!(web.services.contains_key("default/web.internal.test"));
    // A bad one is refused, naming the field.
    let e = Resources::default()
        .add_text(
            "bad.yaml",
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: b}\nspec: {hosts: [x.test], ports: [{number: 80}], resolution: STATIC, endpoints: [{address: db.example.com}]}\n",
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("spec.endpoints[0].address"), "{e}");
    assert!(e.contains("names only with resolution DNS"), "{e}");
}

#[test]
fn dns_service_entries_become_workloads_known_by_name() {
    let mut res = Resources::default();
    res.add_text(
        "dns.yaml",
        "apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: by-name, namespace: default}
spec:
  hosts: [api.external.test]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: DNS
  endpoints: [{address: api-1.example.com}, {address: 192.0.2.7}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: hosts-only, namespace: default}
spec:
  hosts: [a.example.org, b.example.org]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
",
    )
    .unwrap();
    let all = addresses(&res, &MeshSettings::default());
    let outside = entry_workloads(&all);
    assert_eq!(outside.len(), 4, "{outside:?}");
    let named = |h: &str| outside.iter().find(|w| w.hostname == h).unwrap();
    let api1 = named("api-1.example.com");
    assert!(api1.addresses.is_empty());
    assert!(api1.services.contains_key("default/api.external.test"));
    // Without endpoints each host is resolved itself, and serves only itself.
    let a = named("a.example.org");
    assert_eq!(
        a.services.keys().collect::<Vec<_>>(),
        ["default/a.example.org"]
    );
    assert!(outside
        .iter()
        .any(|w| w.addresses.first() == Some(&vec![192, 0, 2, 7]) && w.hostname.is_empty()));
}

/// The Workloads made from ServiceEntries.
fn entry_workloads(all: &[NamedAddress]) -> Vec<&pb::Workload> {
    all.iter()
        .filter_map(|a| match &a.address.r#type {
            Some(pb::address::Type::Workload(w)) if w.uid.contains("ServiceEntry") => Some(w),
            _ => None,
        })
        .collect()
}
