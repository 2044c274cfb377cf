//! One immutable view of everything the control plane serves: every resource by type URL and
//! name with its version, and where each service account runs (for the CA's node check).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use prost::Message;
use prost_types::Any;

use resources::MeshSettings;
use resources::Resources;

/// A resource as it goes on the wire, with its version: the first 8 bytes of the SHA-256 of
/// its encoding, in hex. It only changes when the bytes do, and survives restarts, so a
/// reconnecting ztunnel's `initial_resource_versions` spare it the unchanged ones.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub resource: Any,
    /// The service accounts (`namespace/name`) whose proxies may receive it; `None`: every
    /// proxy. An ingress gateway (with its TLS keys) goes only to its own pods' accounts.
    pub readers: Option<BTreeSet<String>>,
}

impl Versioned {
    pub fn new(type_url: &str, value: Vec<u8>) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, &value);
        let version = digest.as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        Versioned {
            version,
            resource: Any {
                type_url: type_url.to_string(),
                value,
            },
            readers: None,
        }
    }

    /// Whether the proxy of service account `caller` (`namespace/name`) may receive it.
    pub fn readable_by(&self, caller: &str) -> bool {
        self.readers.as_ref().is_none_or(|r| r.contains(caller))
    }
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub resources: BTreeMap<String, BTreeMap<String, Arc<Versioned>>>,
    /// (node, namespace, service account) of every pod with a node.
    pub placements: BTreeSet<(String, String, String)>,
}

impl Snapshot {
    /// The `type/name` of every resource added, removed or changed from `old` to `self`.
    pub fn changed_since(&self, old: &Snapshot) -> Vec<String> {
        let mut out = Vec::new();
        let empty = BTreeMap::new();
        let types: BTreeSet<&String> = self.resources.keys().chain(old.resources.keys()).collect();
        for t in types {
            let (new, was) = (
                self.resources.get(t).unwrap_or(&empty),
                old.resources.get(t).unwrap_or(&empty),
            );
            let names: BTreeSet<&String> = new.keys().chain(was.keys()).collect();
            let short = t.rsplit('.').next().unwrap_or(t);
            for n in names {
                if new.get(n) != was.get(n) {
                    out.push(format!("{short}/{n}"));
                }
            }
        }
        out
    }

    pub fn build(res: &Resources, mesh: &MeshSettings) -> Snapshot {
        let mut s = Snapshot::default();
        for a in crate::wds::addresses(res, mesh) {
            s.insert(xds::type_url::ADDRESS, &a.name, a.address.encode_to_vec());
        }
        for p in crate::authz::translate(res, mesh).policies {
            s.insert(
                xds::type_url::AUTHORIZATION,
                &p.name,
                p.authorization.encode_to_vec(),
            );
        }
        // HTTPRoutes for waypoints and gateways, in file order (the creation-order
        // tie-break); GRPCRoutes as the HTTPRoutes they are equivalent to, after them.
        let grpc: Vec<resources::HttpRoute> = res
            .grpc_routes
            .iter()
            .map(resources::GrpcRoute::as_http)
            .collect();
        let all = res
            .http_routes
            .iter()
            .map(|r| (r, ""))
            .chain(grpc.iter().map(|r| (r, ".grpc")));
        for (i, (r, suffix)) in all.enumerate() {
            let ns = r.metadata.namespace.as_deref().unwrap_or("default");
            let route = xds::l7::HttpRoute {
                namespace: ns.to_string(),
                name: r.metadata.name.clone(),
                created: i as u64,
                spec_json: serde_json::to_string(&r.spec).unwrap_or_default(),
            };
            s.insert(
                xds::type_url::HTTP_ROUTE,
                &format!("{ns}/{}{suffix}", r.metadata.name),
                route.encode_to_vec(),
            );
        }
        let ingress = crate::ingress::translate(res, mesh);
        let made = ingress
            .virtual_services
            .iter()
            .map(|(ns, name, spec)| (ns.as_str(), name.as_str(), spec));
        // Delegating rules are replaced by the delegates' rules here; delegates (no hosts)
        // are not sent on their own (docs/WIRE.md §8).
        let resolved = delegated_virtual_services(res);
        let written = resolved
            .iter()
            .map(|(ns, name, spec)| (ns.as_str(), name.as_str(), spec));
        for (i, (ns, name, spec)) in written.chain(made).enumerate() {
            let vs = xds::l7::VirtualService {
                namespace: ns.to_string(),
                name: name.to_string(),
                created: i as u64,
                spec_json: serde_json::to_string(spec).unwrap_or_default(),
            };
            s.insert(
                xds::type_url::VIRTUAL_SERVICE,
                &format!("{ns}/{name}"),
                vs.encode_to_vec(),
            );
        }
        for (i, g) in ingress.gateways.iter().enumerate() {
            let kind = match g.kind {
                l7::gateway::GatewayKind::GatewayApi => "gateway",
                l7::gateway::GatewayKind::Istio => "istio",
                l7::gateway::GatewayKind::Ingress => "ingress",
            };
            let msg = xds::l7::IngressGateway {
                namespace: g.namespace.clone(),
                name: g.name.clone(),
                created: i as u64,
                spec_json: serde_json::to_string(g).unwrap_or_default(),
            };
            let readers: BTreeSet<String> = res
                .pods
                .iter()
                .filter(|p| {
                    let ns = p.metadata.namespace.as_deref().unwrap_or("default");
                    let uid = format!("{}//Pod/{ns}/{}", mesh.cluster_id, p.metadata.name);
                    g.proxy_uids.contains(&uid)
                })
                .map(|p| {
                    format!(
                        "{}/{}",
                        p.metadata.namespace.as_deref().unwrap_or("default"),
                        p.spec.service_account_name.as_deref().unwrap_or("default")
                    )
                })
                .collect();
            let mut v = Versioned::new(xds::type_url::INGRESS_GATEWAY, msg.encode_to_vec());
            v.readers = Some(readers);
            s.resources
                .entry(xds::type_url::INGRESS_GATEWAY.to_string())
                .or_default()
                .insert(format!("{kind}/{}/{}", g.namespace, g.name), Arc::new(v));
        }
        for (i, d) in res.destination_rules.iter().enumerate() {
            let ns = d.metadata.namespace.as_deref().unwrap_or("default");
            let dr = xds::l7::DestinationRule {
                namespace: ns.to_string(),
                name: d.metadata.name.clone(),
                created: i as u64,
                spec_json: serde_json::to_string(&d.spec).unwrap_or_default(),
                subsets: crate::wds::subset_members(d, res, mesh),
            };
            s.insert(
                xds::type_url::DESTINATION_RULE,
                &format!("{ns}/{}", d.metadata.name),
                dr.encode_to_vec(),
            );
        }
        for p in crate::authz::waypoint_policies(res, mesh) {
            s.insert(
                xds::type_url::WAYPOINT_POLICY,
                &format!("{}/{}", p.namespace, p.name),
                p.encode_to_vec(),
            );
        }
        for r in crate::authz::request_authentications(res, mesh) {
            s.insert(
                xds::type_url::REQUEST_AUTHENTICATION,
                &format!("{}/{}", r.namespace, r.name),
                r.encode_to_vec(),
            );
        }
        for t in tracing(res, mesh) {
            // Resource names are never empty: "mesh", or "namespace/<ns>".
            let name = if t.namespace.is_empty() {
                "mesh".to_string()
            } else {
                format!("namespace/{}", t.namespace)
            };
            s.insert(xds::type_url::TRACING, &name, t.encode_to_vec());
        }
        for t in [
            xds::type_url::TRACING,
            xds::type_url::REQUEST_AUTHENTICATION,
            xds::type_url::INGRESS_GATEWAY,
            xds::type_url::WAYPOINT_POLICY,
            xds::type_url::HTTP_ROUTE,
            xds::type_url::VIRTUAL_SERVICE,
            xds::type_url::DESTINATION_RULE,
        ] {
            s.resources.entry(t.to_string()).or_default();
        }
        s.resources
            .entry(xds::type_url::ADDRESS.to_string())
            .or_default();
        s.resources
            .entry(xds::type_url::AUTHORIZATION.to_string())
            .or_default();
        for pod in &res.pods {
            if let Some(node) = &pod.spec.node_name {
                s.placements.insert((
                    node.clone(),
                    pod.metadata
                        .namespace
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    pod.spec
                        .service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                ));
            }
        }
        s
    }

    /// Adds (or replaces) one resource, encoded.
    pub fn insert(&mut self, type_url: &str, name: &str, value: Vec<u8>) {
        self.resources
            .entry(type_url.to_string())
            .or_default()
            .insert(name.to_string(), Arc::new(Versioned::new(type_url, value)));
    }

    pub fn count(&self, type_url: &str) -> usize {
        self.resources.get(type_url).map_or(0, BTreeMap::len)
    }

    /// Whether a pod with this namespace and service account runs on `node`.
    pub fn runs_on(&self, node: &str, namespace: &str, service_account: &str) -> bool {
        self.placements.contains(&(
            node.to_string(),
            namespace.to_string(),
            service_account.to_string(),
        ))
    }
}

/// The written VirtualServices with hosts, each with its delegating rules replaced by the
/// rules of the delegates they name; what is dropped on the way is logged.
pub fn delegated_virtual_services(
    res: &Resources,
) -> Vec<(String, String, l7::istio::VirtualServiceSpec)> {
    let ns_of = |v: &resources::VirtualService| {
        v.metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into())
    };
    let by_name: BTreeMap<(String, String), (l7::istio::VirtualServiceSpec, Vec<String>)> = res
        .virtual_services
        .iter()
        .map(|v| {
            (
                (ns_of(v), v.metadata.name.clone()),
                (v.spec.clone(), v.spec.export_to.clone()),
            )
        })
        .collect();
    res.virtual_services
        .iter()
        .filter(|v| !v.spec.hosts.is_empty())
        .map(|v| {
            let ns = ns_of(v);
            let name = v.metadata.name.clone();
            if v.spec.http.iter().all(|r| r.delegate.is_none()) {
                return (ns, name, v.spec.clone());
            }
            let (spec, notes) = l7::istio::delegate::resolve(&v.spec, &ns, |dns, dname| {
                by_name.get(&(dns.to_string(), dname.to_string()))
            });
            for n in notes {
                tracing::warn!(virtual_service = %format!("{ns}/{name}"), "{n}");
            }
            (ns, name, spec)
        })
        .collect()
}

/// The mesh config: the `mesh` key of the `istio` ConfigMap in the root namespace (checked
/// when read, so a bad one never gets here).
pub fn mesh_config(res: &Resources, mesh: &MeshSettings) -> l7::telemetry::MeshConfig {
    res.mesh_configs
        .iter()
        .find(|c| c.metadata.namespace.as_deref() == Some(mesh.root_namespace.as_str()))
        .and_then(|c| c.data.get("mesh"))
        .and_then(|text| l7::telemetry::parse_mesh_config(text).ok())
        .unwrap_or_default()
}

/// Tracing per namespace, for waypoints and gateways (docs/OBSERVABILITY.md).
pub fn tracing(res: &Resources, mesh: &MeshSettings) -> Vec<xds::l7::Tracing> {
    let config = mesh_config(res, mesh);
    let telemetries: Vec<l7::telemetry::Telemetry<'_>> = res
        .telemetries
        .iter()
        .map(|t| l7::telemetry::Telemetry {
            namespace: t.metadata.namespace.as_deref().unwrap_or("default"),
            name: &t.metadata.name,
            spec: &t.spec,
        })
        .collect();
    l7::telemetry::resolve(&config, &telemetries, &mesh.root_namespace)
        .into_iter()
        .map(|t| xds::l7::Tracing {
            namespace: t.namespace,
            provider: t.provider,
            service: t.service,
            port: t.port.into(),
            sampling: t.sampling,
            disabled: t.disabled,
            source: t.source,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A workload in two services encodes to the same bytes every time: rebuilding an
    /// unchanged model pushes nothing (its `services` map was a HashMap, in random order).
    #[test]
    fn the_same_model_builds_the_same_snapshot() {
        let mut res = Resources::default();
        res.add_text(
            "t",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: default, labels: {app: a}}\nspec: {nodeName: n}\nstatus: {phase: Running, podIP: 10.0.0.9}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s1, namespace: default}\nspec: {clusterIP: 10.96.0.1, selector: {app: a}, ports: [{port: 80}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s2, namespace: default}\nspec: {clusterIP: 10.96.0.2, selector: {app: a}, ports: [{port: 81}]}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {name: s3, namespace: default}\nspec: {clusterIP: 10.96.0.3, selector: {app: a}, ports: [{port: 82}]}\n",
        )
        .unwrap();
        let mesh = MeshSettings::default();
        let first = Snapshot::build(&res, &mesh);
        for _ in 0..10 {
            let again = Snapshot::build(&res, &mesh);
            assert_eq!(again.changed_since(&first), Vec::<String>::new());
        }
    }
}
