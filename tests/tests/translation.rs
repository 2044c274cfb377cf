//! Kubernetes YAML → control-plane WDS translation → ztunnel's strict conversion → ztunnel's
//! store: a service VIP resolves to the right pod and target port.

use controlplane::wds::addresses;
use proxycore::state::wds::{convert_address, Converted};
use proxycore::state::{State, Update};
use resources::MeshSettings;
use resources::Resources;

const YAML: &str = r#"
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.3.3
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: web}]
---
kind: Pod
metadata: {name: cart-0, namespace: shop, labels: {app: cart}}
spec:
  serviceAccountName: cart
  containers: [{name: cart, ports: [{name: web, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.10.0.7}
"#;

#[test]
fn a_vip_from_kubernetes_yaml_resolves_in_ztunnel() {
    let mut res = Resources::default();
    res.add_text("shop.yaml", YAML).unwrap();
    let mut update = Update::default();
    for a in addresses(&res, &MeshSettings::default()) {
        match convert_address(&a.name, a.address).unwrap() {
            Converted::Workload(w) => update.workloads.push(*w),
            Converted::Service(s) => update.services.push(*s),
        }
    }
    let state = State::default();
    state.apply(update);
    let svc = state.service_by_vip("10.96.3.3".parse().unwrap()).unwrap();
    let ep = state.pick_endpoint(&svc, 80).unwrap();
    assert_eq!(ep.workload.name, "cart-0");
    assert_eq!(ep.port, 8080, "named targetPort resolved per endpoint");
    assert_eq!(
        ep.workload.identity().to_string(),
        "spiffe://cluster.local/ns/shop/sa/cart"
    );
    assert_eq!(
        ep.workload.tunnel_protocol,
        proxycore::state::TunnelProtocol::Hbone
    );
}
