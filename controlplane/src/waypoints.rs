//! The waypoint controller (Kubernetes source only), as istiod's deployment controller: for
//! each Gateway of class `istio-waypoint`, a ServiceAccount (the waypoint's identity), a
//! Deployment running the waypoint and a Service on 15008, all owned by the Gateway (the
//! API server deletes them with it); then the Gateway's status: `Accepted` and `Programmed`
//! with its address, so `kubectl get gateway` shows `PROGRAMMED True`. The mesh's root
//! certificate is published as a ConfigMap in the control plane's namespace and in each
//! waypoint's, for proxies to mount. HTTPRoutes get a
//! status entry per parent: `Accepted`, and `ResolvedRefs` from whether their backends
//! exist. Writes are server-side apply, made only when what is wanted changed.

use std::collections::HashMap;
use std::sync::Mutex;

use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::Client;
use resources::{Gateway, HttpRoute, Resources};
use serde_json::{json, Value};

/// The field manager of every write.
pub const MANAGER: &str = "keelson-controlplane";
/// The controller name in HTTPRoute status, as Istio's.
pub const CONTROLLER: &str = "istio.io/gateway-controller";
/// Annotation on a Gateway: how many waypoint replicas.
pub const REPLICAS_ANNOTATION: &str = "keelson.io/waypoint-replicas";

/// Where the waypoints find the control plane, and what they run.
#[derive(Debug, Clone)]
pub struct WaypointSettings {
    pub image: String,
    /// `host:port` of xDS and the CA.
    pub control_plane: String,
    pub root_cert_config_map: String,
    /// The control plane's own namespace: the root certificate is published there (for
    /// the ztunnels) and in every namespace with a waypoint.
    pub namespace: String,
    /// The roots proxies trust the control plane and each other with (PEM), set at start.
    pub roots_pem: String,
}

pub struct Controller {
    client: Client,
    settings: WaypointSettings,
    /// What was last applied, by object path: nothing is written twice.
    applied: Mutex<HashMap<String, Value>>,
    /// One reconcile at a time (each model change starts one).
    running: tokio::sync::Mutex<()>,
}

impl Controller {
    pub fn new(client: Client, settings: WaypointSettings) -> Controller {
        Controller {
            client,
            settings,
            applied: Mutex::default(),
            running: tokio::sync::Mutex::new(()),
        }
    }

    /// Brings every waypoint's objects and status, and every HTTPRoute's status, to what
    /// `res` asks for. Failures are logged; the next change retries.
    pub async fn reconcile(&self, res: &Resources) {
        let _one = self.running.lock().await;
        let mut namespaces = std::collections::BTreeSet::from([self.settings.namespace.clone()]);
        namespaces.extend(
            res.gateways
                .iter()
                .filter(|g| g.is_waypoint())
                .map(|g| g.namespace().to_string()),
        );
        for ns in namespaces {
            let map = root_cert_config_map(&self.settings, &ns);
            self.apply(
                &resource("", "v1", "ConfigMap", "configmaps"),
                &ns,
                map,
                false,
            )
            .await;
        }
        for g in res.gateways.iter().filter(|g| g.is_waypoint()) {
            for (ar, obj) in waypoint_objects(g, &self.settings) {
                self.apply(&ar, g.namespace(), obj, false).await;
            }
            self.apply(&gateway_resource(), g.namespace(), gateway_status(g), true)
                .await;
        }
        for g in res.gateways.iter().filter(|g| g.is_ingress()) {
            for (ar, obj) in ingress_gateway_objects(g, &self.settings) {
                self.apply(&ar, g.namespace(), obj, false).await;
            }
            let status = crate::ingress::gateway_status(res, g);
            self.apply(&gateway_resource(), g.namespace(), status, true)
                .await;
        }
        for r in &res.http_routes {
            let ns = r.metadata.namespace.as_deref().unwrap_or("default");
            self.apply(&route_resource(), ns, route_status(r, res), true)
                .await;
        }
        let grpc = resource(GATEWAY_API_GROUP, "v1", "GRPCRoute", "grpcroutes");
        for r in &res.grpc_routes {
            let ns = r.metadata.namespace.as_deref().unwrap_or("default");
            self.apply(&grpc, ns, grpc_route_status(r, res), true).await;
        }
        // The Istio Gateways' conditions, and the load balancer address of Ingresses of
        // class istio (their status has nothing else).
        let istio_gw = resource("networking.istio.io", "v1", "Gateway", "gateways");
        let ingress = resource("networking.k8s.io", "v1", "Ingress", "ingresses");
        for mut v in crate::ingress::other_statuses(res) {
            let ns = v["metadata"]["namespace"]
                .as_str()
                .unwrap_or("default")
                .to_string();
            match v["kind"].as_str() {
                Some("Gateway") => self.apply(&istio_gw, &ns, v, true).await,
                Some("Ingress") => {
                    let lb = v["status"]["loadBalancer"].take();
                    if lb["ingress"].as_array().is_some_and(|a| !a.is_empty()) {
                        v["status"] = json!({"loadBalancer": lb});
                        self.apply(&ingress, &ns, v, true).await;
                    }
                }
                _ => {}
            }
        }
    }

    async fn apply(&self, ar: &ApiResource, ns: &str, obj: Value, status: bool) {
        let name = obj["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let key = format!("{}/{ns}/{name}/{status}", ar.plural);
        if self.applied.lock().unwrap().get(&key) == Some(&obj) {
            return;
        }
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), ns, ar);
        let params = PatchParams::apply(MANAGER).force();
        let done = if status {
            api.patch_status(&name, &params, &Patch::Apply(&obj)).await
        } else {
            api.patch(&name, &params, &Patch::Apply(&obj)).await
        };
        match done {
            Ok(_) => {
                tracing::info!(kind = %ar.kind, namespace = %ns, %name, status, "applied");
                self.applied.lock().unwrap().insert(key, obj);
            }
            Err(e) => {
                tracing::warn!(kind = %ar.kind, namespace = %ns, %name, error = %e, "cannot apply")
            }
        }
    }
}

fn resource(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

fn gateway_resource() -> ApiResource {
    resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
}

const GATEWAY_API_GROUP: &str = "gateway.networking.k8s.io";

fn route_resource() -> ApiResource {
    resource(GATEWAY_API_GROUP, "v1", "HTTPRoute", "httproutes")
}

/// The ConfigMap proxies mount the mesh's roots from (`root-cert.pem`), as istiod publishes
/// `istio-ca-root-cert`.
pub fn root_cert_config_map(s: &WaypointSettings, ns: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": s.root_cert_config_map, "namespace": ns,
                     "labels": {"app.kubernetes.io/managed-by": MANAGER}},
        "data": {"root-cert.pem": s.roots_pem},
    })
}

/// The label that ties a waypoint's pods and Service to its Gateway.
const GATEWAY_LABEL: &str = "gateway.networking.k8s.io/gateway-name";

/// The ServiceAccount, Deployment and Service of one waypoint Gateway.
pub fn waypoint_objects(g: &Gateway, s: &WaypointSettings) -> Vec<(ApiResource, Value)> {
    let (name, ns) = (g.metadata.name.as_str(), g.namespace());
    let owner = json!([{
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway", "name": name,
        "uid": g.metadata.uid.clone().unwrap_or_default(), "controller": true,
    }]);
    let meta = |kind: &str| {
        json!({"name": name, "namespace": ns, "ownerReferences": owner,
               "labels": {GATEWAY_LABEL: name, "app.kubernetes.io/managed-by": MANAGER},
               "annotations": {"keelson.io/kind": kind}})
    };
    let replicas: i64 = g
        .metadata
        .annotations
        .get(REPLICAS_ANNOTATION)
        .and_then(|r| r.parse().ok())
        .unwrap_or(1);
    let field =
        |n: &str, path: &str| json!({"name": n, "valueFrom": {"fieldRef": {"fieldPath": path}}});
    let env = json!([
        field("POD_NAME", "metadata.name"),
        field("POD_NAMESPACE", "metadata.namespace"),
        field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
        {"name": "PROXY_WORKLOAD_INFO", "value": "$(POD_NAMESPACE)/$(POD_NAME)/$(SERVICE_ACCOUNT)"},
        {"name": "XDS_ADDRESS", "value": s.control_plane},
        {"name": "CA_ADDRESS", "value": s.control_plane},
    ]);
    let deployment = json!({
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta("waypoint"),
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {GATEWAY_LABEL: name}},
            "template": {
                "metadata": {"labels": {GATEWAY_LABEL: name, "istio.io/dataplane-mode": "none"}},
                "spec": {
                    "serviceAccountName": name,
                    // The image's user, stated so the kubelet gives it the projected token
                    // (owned by the pod's user and group, not root's 0600).
                    "securityContext": {"runAsUser": 65532, "runAsGroup": 65532,
                                        "fsGroup": 65532, "runAsNonRoot": true},
                    "terminationGracePeriodSeconds": 30,
                    "containers": [{
                        "name": "waypoint", "image": s.image, "env": env,
                        "ports": [
                            {"name": "mesh", "containerPort": 15008, "protocol": "TCP"},
                            {"name": "http-monitoring", "containerPort": 15020, "protocol": "TCP"},
                        ],
                        "readinessProbe": {"httpGet": {"path": "/healthz/ready", "port": 15021}},
                        "volumeMounts": [
                            {"name": "istio-token", "mountPath": "/var/run/secrets/tokens"},
                            {"name": "root-cert", "mountPath": "/var/run/secrets/istio"},
                        ],
                    }],
                    "volumes": [
                        {"name": "istio-token", "projected": {"sources": [{"serviceAccountToken":
                            {"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}}]}},
                        {"name": "root-cert", "configMap": {"name": s.root_cert_config_map}},
                    ],
                },
            },
        },
    });
    let service = json!({
        "apiVersion": "v1", "kind": "Service", "metadata": meta("waypoint"),
        "spec": {
            "selector": {GATEWAY_LABEL: name},
            "ports": [{"name": "mesh", "port": 15008, "targetPort": 15008, "protocol": "TCP"}],
        },
    });
    let account =
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta("waypoint")});
    vec![
        (
            resource("", "v1", "ServiceAccount", "serviceaccounts"),
            account,
        ),
        (
            resource("apps", "v1", "Deployment", "deployments"),
            deployment,
        ),
        (resource("", "v1", "Service", "services"), service),
    ]
}

/// What a Gateway of class `istio` deploys (docs/GATEWAY.md), as istiod's deployment
/// controller does: the waypoint's objects, named `<name>-istio`, running `waypoint gateway`
/// and with a LoadBalancer Service on the listeners' ports.
pub fn ingress_gateway_objects(g: &Gateway, s: &WaypointSettings) -> Vec<(ApiResource, Value)> {
    let name = crate::ingress::gateway_service(&g.metadata.name);
    let mut objects = waypoint_objects(g, s);
    let mut ports: Vec<u16> = g.spec.listeners.iter().map(|l| l.port).collect();
    ports.sort_unstable();
    ports.dedup();
    for (ar, obj) in &mut objects {
        obj["metadata"]["name"] = name.clone().into();
        obj["metadata"]["annotations"]["keelson.io/kind"] = "ingress-gateway".into();
        match ar.kind.as_str() {
            "Deployment" => {
                let spec = &mut obj["spec"]["template"]["spec"];
                spec["serviceAccountName"] = name.clone().into();
                let c = &mut spec["containers"][0];
                c["name"] = "istio-proxy".into();
                c["args"] = json!(["gateway"]);
                let mut container_ports = vec![
                    json!({"name": "http-monitoring", "containerPort": 15020, "protocol": "TCP"}),
                ];
                container_ports.extend(ports.iter().map(
                    |p| json!({"name": format!("port-{p}"), "containerPort": p, "protocol": "TCP"}),
                ));
                c["ports"] = Value::Array(container_ports);
                // Listening on ports below 1024 as its image's user.
                c["securityContext"] = json!({"capabilities": {"add": ["NET_BIND_SERVICE"]}});
            }
            "Service" => {
                obj["spec"]["type"] = "LoadBalancer".into();
                obj["spec"]["ports"] = Value::Array(
                    ports
                        .iter()
                        .map(|p| json!({"name": format!("port-{p}"), "port": p, "targetPort": p, "protocol": "TCP"}))
                        .collect(),
                );
            }
            _ => {}
        }
    }
    objects
}

/// The default ingress gateway's name, and its ServiceAccount's.
pub const DEFAULT_INGRESS: &str = "istio-ingressgateway";
pub const DEFAULT_INGRESS_ACCOUNT: &str = "istio-ingressgateway-service-account";

/// The mesh's default ingress gateway, as Istio's default profile installs it
/// (docs/GATEWAY.md): `istio-ingressgateway` in `namespace`, labelled `istio:
/// ingressgateway` and `app: istio-ingressgateway` (what Istio Gateways select and what
/// serves Ingresses of class `istio`), running `waypoint gateway` as
/// `istio-ingressgateway-service-account`, behind a LoadBalancer Service mapping 80 to
/// 8080 and 443 to 8443 (the ports Gateway servers name), with the status port 15021.
pub fn default_ingress_gateway_objects(
    s: &WaypointSettings,
    namespace: &str,
    replicas: i64,
) -> Vec<(ApiResource, Value)> {
    let g = Gateway {
        metadata: resources::ObjectMeta {
            name: DEFAULT_INGRESS.into(),
            namespace: Some(namespace.into()),
            ..Default::default()
        },
        spec: Default::default(),
    };
    let labels: serde_json::Map<String, Value> = l7::gateway::INGRESS_LABELS
        .iter()
        .map(|(k, v)| (k.to_string(), Value::from(*v)))
        .collect();
    let mut objects = waypoint_objects(&g, s);
    for (ar, obj) in &mut objects {
        let meta = &mut obj["metadata"];
        if let Some(m) = meta.as_object_mut() {
            m.remove("ownerReferences");
        }
        meta["annotations"]["keelson.io/kind"] = "ingress-gateway".into();
        meta["labels"] = Value::Object(labels.clone());
        meta["labels"]["app.kubernetes.io/managed-by"] = "keelson-install".into();
        match ar.kind.as_str() {
            "ServiceAccount" => meta["name"] = DEFAULT_INGRESS_ACCOUNT.into(),
            "Deployment" => {
                obj["spec"]["replicas"] = replicas.into();
                obj["spec"]["selector"] = json!({"matchLabels": labels});
                let template = &mut obj["spec"]["template"];
                template["metadata"]["labels"] = Value::Object(labels.clone());
                template["metadata"]["labels"]["istio.io/dataplane-mode"] = "none".into();
                let spec = &mut template["spec"];
                spec["serviceAccountName"] = DEFAULT_INGRESS_ACCOUNT.into();
                let c = &mut spec["containers"][0];
                c["name"] = "istio-proxy".into();
                c["args"] = json!(["gateway"]);
                c["ports"] = json!([
                    {"name": "http2", "containerPort": 8080, "protocol": "TCP"},
                    {"name": "https", "containerPort": 8443, "protocol": "TCP"},
                    {"name": "http-monitoring", "containerPort": 15020, "protocol": "TCP"},
                    {"name": "status-port", "containerPort": 15021, "protocol": "TCP"},
                ]);
            }
            "Service" => {
                obj["spec"] = json!({
                    "type": "LoadBalancer",
                    "selector": labels,
                    "ports": [
                        {"name": "status-port", "port": 15021, "targetPort": 15021, "protocol": "TCP"},
                        {"name": "http2", "port": 80, "targetPort": 8080, "protocol": "TCP"},
                        {"name": "https", "port": 443, "targetPort": 8443, "protocol": "TCP"},
                    ],
                });
            }
            _ => {}
        }
    }
    objects
}

fn condition(kind: &str, ok: bool, reason: &str, message: &str, generation: Option<i64>) -> Value {
    json!({
        "type": kind, "status": if ok { "True" } else { "False" }, "reason": reason,
        "message": message, "observedGeneration": generation.unwrap_or(0),
        // Fixed, so an unchanged status is not re-applied; the API server keeps the time
        // of the first apply when the status does not change.
        "lastTransitionTime": "1970-01-01T00:00:00Z",
    })
}

/// Every status the control plane computes, as the objects' `status` would be written:
/// waypoint and ingress Gateways, HTTPRoutes, Istio Gateways and Ingresses. The file source
/// writes it to `status.json` in its state directory, where `keelson status` reads it.
pub fn all_statuses(res: &Resources) -> Vec<Value> {
    let mut out: Vec<Value> = res
        .gateways
        .iter()
        .map(|g| {
            if g.is_ingress() {
                crate::ingress::gateway_status(res, g)
            } else {
                gateway_status(g)
            }
        })
        .collect();
    out.extend(crate::ingress::other_statuses(res));
    out.extend(res.http_routes.iter().map(|r| route_status(r, res)));
    out.extend(res.grpc_routes.iter().map(|g| grpc_route_status(g, res)));
    out
}

/// A GRPCRoute's status: as the HTTPRoute it is served as (`l7/src/grpcroute.rs`).
pub fn grpc_route_status(r: &resources::GrpcRoute, res: &Resources) -> Value {
    let mut v = route_status(&r.as_http(), res);
    v["kind"] = "GRPCRoute".into();
    v
}

/// The Gateway's status once its objects are applied.
pub fn gateway_status(g: &Gateway) -> Value {
    let (name, ns) = (g.metadata.name.as_str(), g.namespace());
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
        "metadata": {"name": name, "namespace": ns},
        "status": {
            "addresses": [{"type": "Hostname", "value": format!("{name}.{ns}.svc.cluster.local")}],
            "conditions": [
                condition("Accepted", true, "Accepted", "Resource accepted", None),
                condition("Programmed", true, "Programmed", "Resource programmed, assigned to service(s)", None),
            ],
        },
    })
}

/// An HTTPRoute's status: each parent accepted; refs resolved when every backend Service
/// exists.
pub fn route_status(r: &HttpRoute, res: &Resources) -> Value {
    let ns = r.metadata.namespace.as_deref().unwrap_or("default");
    let missing: Vec<String> = r
        .spec
        .rules
        .iter()
        .flat_map(|rule| rule.backend_refs.iter())
        .filter(|b| b.kind.as_deref().unwrap_or("Service") == "Service")
        .filter(|b| {
            let bns = b.namespace.as_deref().unwrap_or(ns);
            !res.services.iter().any(|s| {
                s.metadata.name == b.name
                    && s.metadata.namespace.as_deref().unwrap_or("default") == bns
            })
        })
        .map(|b| b.name.clone())
        .collect();
    let resolved = if missing.is_empty() {
        condition(
            "ResolvedRefs",
            true,
            "ResolvedRefs",
            "All references resolved",
            None,
        )
    } else {
        condition(
            "ResolvedRefs",
            false,
            "BackendNotFound",
            &format!("backend(s) not found: {}", missing.join(", ")),
            None,
        )
    };
    let parents: Vec<Value> = r
        .spec
        .parent_refs
        .iter()
        .map(|p| {
            let accepted = crate::ingress::route_parent_accepted(res, r, p).unwrap_or_else(|| {
                condition("Accepted", true, "Accepted", "Route was valid", None)
            });
            json!({
                "parentRef": p,
                "controllerName": CONTROLLER,
                "conditions": [accepted, resolved.clone()],
            })
        })
        .collect();
    json!({
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
        "metadata": {"name": r.metadata.name, "namespace": ns},
        "status": {"parents": parents},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gateway_of_class_istio_deploys_its_own_ingress_gateway() {
        let mut res = Resources::default();
        res.add_text(
            "gw.yaml",
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: web, namespace: shop, uid: u1}\nspec:\n  gatewayClassName: istio\n  listeners:\n  - {name: http, port: 80, protocol: HTTP}\n  - {name: alt, port: 8080, protocol: HTTP}\n",
        )
        .unwrap();
        let settings = WaypointSettings {
            image: "keelson/waypoint:dev".into(),
            control_plane: "keelson.istio-system.svc:15012".into(),
            root_cert_config_map: "keelson-ca-root-cert".into(),
            namespace: "istio-system".into(),
            roots_pem: String::new(),
        };
        let objects = ingress_gateway_objects(&res.gateways[0], &settings);
        let by_kind = |k: &str| &objects.iter().find(|(ar, _)| ar.kind == k).unwrap().1;
        let d = by_kind("Deployment");
        assert_eq!(d["metadata"]["name"], "web-istio");
        assert_eq!(
            d["spec"]["template"]["spec"]["containers"][0]["args"][0],
            "gateway"
        );
        assert_eq!(
            d["spec"]["template"]["metadata"]["labels"][GATEWAY_LABEL],
            "web"
        );
        let svc = by_kind("Service");
        assert_eq!(svc["spec"]["type"], "LoadBalancer");
        assert_eq!(svc["spec"]["ports"].as_array().unwrap().len(), 2);
        assert_eq!(by_kind("ServiceAccount")["metadata"]["name"], "web-istio");
        assert_eq!(d["metadata"]["ownerReferences"][0]["uid"], "u1");
    }
}
