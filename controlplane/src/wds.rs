//! Kubernetes resources → WDS `Address` resources, computed the way istiod computes them for
//! ztunnel (docs/WIRE.md §3.4, §7.1): one Workload per pod with an IP, keyed by
//! `<cluster>//Pod/<ns>/<name>`, with its service membership map; one Service per Kubernetes
//! Service, keyed by `<ns>/<hostname>`.

use std::collections::BTreeMap;
use std::net::IpAddr;

use xds::workload as pb;

use resources::labels::{
    GATEWAY_NAME, TUNNEL_LABEL, USE_WAYPOINT, USE_WAYPOINT_NAMESPACE, WAYPOINT_FOR,
};
use resources::{is_ambient, IntOrString, MeshSettings, Pod, Resources, Service};

/// What a waypoint is asked for by: a Service (service-addressed traffic) or a Pod
/// (workload-addressed traffic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaypointUse {
    Service,
    Workload,
}

/// The waypoint of a Service or Pod (docs/WIRE.md §7.1): its `istio.io/use-waypoint` label,
/// else its namespace's (`none` opts out); the named Gateway must exist, be of class
/// `istio-waypoint`, and be for that kind of traffic (`istio.io/waypoint-for`: `service` by
/// default, `workload`, `all`, `none`). A waypoint's own pods and Service have none.
pub fn waypoint(
    meta: &resources::ObjectMeta,
    use_: WaypointUse,
    res: &Resources,
    mesh: &MeshSettings,
) -> Option<pb::GatewayAddress> {
    if meta.labels.contains_key(GATEWAY_NAME) {
        return None;
    }
    let own_ns = namespace_of(&meta.namespace);
    let (name, wp_ns) = match meta.labels.get(USE_WAYPOINT) {
        Some(name) => (name, meta.labels.get(USE_WAYPOINT_NAMESPACE)),
        None => {
            let ns = res.namespaces.iter().find(|n| n.metadata.name == own_ns)?;
            (
                ns.metadata.labels.get(USE_WAYPOINT)?,
                ns.metadata.labels.get(USE_WAYPOINT_NAMESPACE),
            )
        }
    };
    if name == "none" {
        return None;
    }
    let wp_ns = wp_ns.map(String::as_str).unwrap_or(own_ns);
    let gw = res
        .gateways
        .iter()
        .find(|g| g.is_waypoint() && g.metadata.name == *name && g.namespace() == wp_ns)?;
    let for_ = gw
        .metadata
        .labels
        .get(WAYPOINT_FOR)
        .map(String::as_str)
        .unwrap_or("service");
    let applies = matches!(
        (for_, use_),
        ("all", _) | ("service", WaypointUse::Service) | ("workload", WaypointUse::Workload)
    );
    applies.then(|| pb::GatewayAddress {
        destination: Some(pb::gateway_address::Destination::Hostname(
            pb::NamespacedHostname {
                namespace: wp_ns.to_string(),
                hostname: format!("{name}.{wp_ns}.svc.{}", mesh.domain_suffix),
            },
        )),
        hbone_mtls_port: u32::from(hbone_port()),
    })
}

fn hbone_port() -> u16 {
    15008
}

/// A named WDS resource, as it goes into a delta response.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedAddress {
    pub name: String,
    pub address: pb::Address,
}

fn namespace_of(meta_ns: &Option<String>) -> &str {
    meta_ns.as_deref().unwrap_or("default")
}

pub fn hostname(svc: &Service, mesh: &MeshSettings) -> String {
    format!(
        "{}.{}.svc.{}",
        svc.metadata.name,
        namespace_of(&svc.metadata.namespace),
        mesh.domain_suffix
    )
}

fn is_ready(pod: &Pod) -> bool {
    let running = pod.status.phase.as_deref().is_none_or(|p| p == "Running");
    let ready = pod.status.conditions.iter().find(|c| c.kind == "Ready");
    running && ready.is_none_or(|c| c.status == "True")
}

/// The workload a pod belongs to and its kind, from its owner: a ReplicaSet named
/// `<deployment>-<hash>` means a Deployment.
fn workload_name_and_type(pod: &Pod) -> (String, pb::WorkloadType) {
    match pod.metadata.owner_references.first() {
        Some(o) if o.kind == "ReplicaSet" => {
            let name = o
                .name
                .rsplit_once('-')
                .map(|(d, _)| d.to_string())
                .unwrap_or_else(|| o.name.clone());
            (name, pb::WorkloadType::Deployment)
        }
        Some(o) if o.kind == "Job" => (o.name.clone(), pb::WorkloadType::Job),
        Some(o) if o.kind == "CronJob" => (o.name.clone(), pb::WorkloadType::Cronjob),
        Some(o) => (o.name.clone(), pb::WorkloadType::Pod),
        None => (pod.metadata.name.clone(), pb::WorkloadType::Pod),
    }
}

fn canonical(pod: &Pod, workload_name: &str) -> (String, String) {
    let l = &pod.metadata.labels;
    let name = [
        "service.istio.io/canonical-name",
        "app.kubernetes.io/name",
        "app",
    ]
    .iter()
    .find_map(|k| l.get(*k))
    .cloned()
    .unwrap_or_else(|| workload_name.to_string());
    let rev = [
        "service.istio.io/canonical-revision",
        "app.kubernetes.io/version",
        "version",
    ]
    .iter()
    .find_map(|k| l.get(*k))
    .cloned()
    .unwrap_or_else(|| "latest".to_string());
    (name, rev)
}

/// The workloads of each subset of a DestinationRule: the endpoints of its host's service
/// whose labels include the subset's (DR-04: empty labels select every endpoint).
pub fn subset_members(
    dr: &resources::DestinationRule,
    res: &Resources,
    mesh: &MeshSettings,
) -> Vec<xds::l7::SubsetMembers> {
    let ns = namespace_of(&dr.metadata.namespace);
    let host = l7::vsroute::fqdn(&dr.spec.host, ns);
    let svc = res.services.iter().find(|s| hostname(s, mesh) == host);
    dr.spec
        .subsets
        .iter()
        .map(|subset| xds::l7::SubsetMembers {
            name: subset.name.clone(),
            workload_uids: svc
                .map(|svc| {
                    res.pods
                        .iter()
                        .filter(|p| selects(svc, p))
                        .filter(|p| {
                            subset
                                .labels
                                .iter()
                                .all(|(k, v)| p.metadata.labels.get(k) == Some(v))
                        })
                        .map(|p| {
                            format!(
                                "{}//Pod/{}/{}",
                                mesh.cluster_id,
                                namespace_of(&p.metadata.namespace),
                                p.metadata.name
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

pub(crate) fn selects(svc: &Service, pod: &Pod) -> bool {
    namespace_of(&svc.metadata.namespace) == namespace_of(&pod.metadata.namespace)
        && !svc.spec.selector.is_empty()
        && svc
            .spec
            .selector
            .iter()
            .all(|(k, v)| pod.metadata.labels.get(k) == Some(v))
}

/// This pod's target port for a service port: numeric, named (looked up in the pod's container
/// ports), or the service port itself when unset.
fn pod_target_port(pod: &Pod, port: &resources::ServicePort) -> Option<u16> {
    match &port.target_port {
        None => Some(port.port),
        Some(IntOrString::Int(p)) => Some(*p),
        Some(IntOrString::String(name)) => pod
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.ports)
            .find(|cp| cp.name.as_deref() == Some(name.as_str()))
            .map(|cp| cp.container_port),
    }
}

fn app_protocol(port: &resources::ServicePort) -> pb::AppProtocol {
    let proto = port
        .app_protocol
        .as_deref()
        .or(port.name.as_deref())
        .unwrap_or("");
    let prefix = proto.split('-').next().unwrap_or("").to_ascii_lowercase();
    match prefix.as_str() {
        "http" => pb::AppProtocol::Http11,
        "http2" | "h2c" => pb::AppProtocol::Http2,
        "grpc" => pb::AppProtocol::Grpc,
        "tcp" => pb::AppProtocol::Tcp,
        "tls" | "https" => pb::AppProtocol::Tls,
        _ => pb::AppProtocol::Unknown,
    }
}

fn ips(list: impl IntoIterator<Item = String>) -> Vec<IpAddr> {
    list.into_iter().filter_map(|s| s.parse().ok()).collect()
}

fn ip_bytes(ip: IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

/// The Workload for a pod with an IP; `policies` are the selector-scoped Authorization names
/// that select it.
pub fn workload(
    pod: &Pod,
    res: &Resources,
    mesh: &MeshSettings,
    policies: &[String],
) -> Option<NamedAddress> {
    let m = &pod.metadata;
    let ns_name = namespace_of(&m.namespace);
    let mut addrs = ips(pod.status.pod_ips.iter().map(|p| p.ip.clone()));
    if addrs.is_empty() {
        addrs = ips(pod.status.pod_ip.clone());
    }
    if addrs.is_empty() || pod.spec.host_network {
        return None;
    }
    let ns = res.namespaces.iter().find(|n| n.metadata.name == ns_name);
    let native = m.labels.get(TUNNEL_LABEL).map(String::as_str) == Some("http");
    let hbone = native || is_ambient(pod, ns);
    let (workload_name, workload_type) = workload_name_and_type(pod);
    let (canonical_name, canonical_revision) = canonical(pod, &workload_name);
    let mut services = BTreeMap::new();
    for svc in res.services.iter().filter(|s| selects(s, pod)) {
        let ports: Vec<pb::Port> = svc
            .spec
            .ports
            .iter()
            .filter_map(|p| {
                pod_target_port(pod, p).map(|t| pb::Port {
                    service_port: u32::from(p.port),
                    target_port: u32::from(t),
                    app_protocol: app_protocol(p) as i32,
                })
            })
            .collect();
        services.insert(
            format!("{}/{}", ns_name, hostname(svc, mesh)),
            pb::PortList { ports },
        );
    }
    // ServiceEntries that select the pod (MESH_INTERNAL by workloadSelector).
    for e in res.service_entries.iter().filter(|e| {
        namespace_of(&e.metadata.namespace) == ns_name
            && e.spec.workload_selector.as_ref().is_some_and(|sel| {
                !sel.labels.is_empty() && sel.labels.iter().all(|(k, v)| m.labels.get(k) == Some(v))
            })
    }) {
        for host in &e.spec.hosts {
            services.insert(
                format!("{ns_name}/{host}"),
                pb::PortList {
                    ports: entry_ports(&e.spec, None),
                },
            );
        }
    }
    let uid = format!("{}//Pod/{}/{}", mesh.cluster_id, ns_name, m.name);
    let w = pb::Workload {
        uid: uid.clone(),
        name: m.name.clone(),
        namespace: ns_name.to_string(),
        addresses: addrs.into_iter().map(ip_bytes).collect(),
        tunnel_protocol: if hbone {
            pb::TunnelProtocol::Hbone
        } else {
            pb::TunnelProtocol::None
        } as i32,
        trust_domain: mesh.trust_domain.clone(),
        service_account: pod
            .spec
            .service_account_name
            .clone()
            .unwrap_or_else(|| "default".into()),
        node: pod.spec.node_name.clone().unwrap_or_default(),
        locality: locality(pod, res),
        canonical_name,
        canonical_revision,
        workload_type: workload_type as i32,
        workload_name,
        native_tunnel: native,
        services: services.into_iter().collect(),
        authorization_policies: policies.to_vec(),
        status: if is_ready(pod) {
            pb::WorkloadStatus::Healthy
        } else {
            pb::WorkloadStatus::Unhealthy
        } as i32,
        cluster_id: mesh.cluster_id.clone(),
        waypoint: waypoint(&pod.metadata, WaypointUse::Workload, res, mesh),
        ..Default::default()
    };
    Some(NamedAddress {
        name: uid,
        address: pb::Address {
            r#type: Some(pb::address::Type::Workload(w)),
        },
    })
}

pub fn service(svc: &Service, res: &Resources, mesh: &MeshSettings) -> NamedAddress {
    let ns = namespace_of(&svc.metadata.namespace).to_string();
    let host = hostname(svc, mesh);
    let mut vips: Vec<String> = svc.spec.cluster_ips.clone();
    if vips.is_empty() {
        vips.extend(svc.spec.cluster_ip.clone());
    }
    let s = pb::Service {
        name: svc.metadata.name.clone(),
        namespace: ns.clone(),
        hostname: host.clone(),
        // Headless services ("None") have no VIP.
        addresses: ips(vips)
            .into_iter()
            .map(|ip| pb::NetworkAddress {
                network: String::new(),
                address: ip_bytes(ip),
                length: None,
            })
            .collect(),
        ports: svc
            .spec
            .ports
            .iter()
            .map(|p| pb::Port {
                service_port: u32::from(p.port),
                target_port: match &p.target_port {
                    None => u32::from(p.port),
                    Some(IntOrString::Int(t)) => u32::from(*t),
                    // Named: resolved per endpoint through Workload.services.
                    Some(IntOrString::String(_)) => 0,
                },
                app_protocol: app_protocol(p) as i32,
            })
            .collect(),
        waypoint: waypoint(&svc.metadata, WaypointUse::Service, res, mesh),
        ..Default::default()
    };
    NamedAddress {
        name: format!("{ns}/{host}"),
        address: pb::Address {
            r#type: Some(pb::address::Type::Service(s)),
        },
    }
}

/// A ServiceEntry's ports for one endpoint: the endpoint's own port for a port's name,
/// else the port's `targetPort`, else its number.
fn entry_ports(
    spec: &resources::ServiceEntrySpec,
    endpoint: Option<&resources::WorkloadEntrySpec>,
) -> Vec<pb::Port> {
    spec.ports
        .iter()
        .map(|p| {
            let own = endpoint.and_then(|e| p.name.as_ref().and_then(|n| e.ports.get(n)));
            pb::Port {
                service_port: u32::from(p.number),
                target_port: u32::from(own.copied().or(p.target_port).unwrap_or(p.number)),
                app_protocol: match p
                    .protocol
                    .as_deref()
                    .unwrap_or("")
                    .to_ascii_uppercase()
                    .as_str()
                {
                    "HTTP" => pb::AppProtocol::Http11,
                    "HTTP2" => pb::AppProtocol::Http2,
                    "GRPC" => pb::AppProtocol::Grpc,
                    "TCP" => pb::AppProtocol::Tcp,
                    "TLS" | "HTTPS" => pb::AppProtocol::Tls,
                    _ => pb::AppProtocol::Unknown,
                } as i32,
            }
        })
        .collect()
}

/// The range ServiceEntry hosts without addresses get a VIP from (as Istio's automatic
/// allocation): 240.240.0.0/16.
const AUTO_VIP_BASE: u32 = 0xf0f0_0000;

/// ServiceEntries (docs/GATEWAY.md, "Egress"): each host a WDS Service (its `addresses`, or
/// a VIP of 240.240.0.0/16 chosen from a hash of `namespace/host`, so DNS answers for it and
/// ztunnel captures it), and each endpoint a Workload outside the mesh (no tunnel) that is a
/// member of every host: the `endpoints` of STATIC and DNS (by IP, or by name as a Workload
/// `hostname` the proxies resolve), the hosts themselves for DNS without endpoints, the
/// `addresses` of NONE (the traffic goes where it was addressed). A `workloadSelector` makes the selected pods
/// members instead (`workload`). An entry labelled `istio.io/use-waypoint` (or in a
/// namespace so labelled) is reached through that waypoint, as a Service is.
pub fn service_entries(res: &Resources, mesh: &MeshSettings) -> Vec<NamedAddress> {
    let mut out = Vec::new();
    let mut taken: std::collections::BTreeSet<u32> = std::collections::BTreeSet::new();
    let mut entries: Vec<&resources::ServiceEntry> = res.service_entries.iter().collect();
    entries.sort_by_key(|e| (namespace_of(&e.metadata.namespace), &e.metadata.name));
    for e in entries {
        let ns = namespace_of(&e.metadata.namespace).to_string();
        let spec = &e.spec;
        let singles: Vec<IpAddr> = spec
            .addresses
            .iter()
            .filter(|a| !a.contains('/'))
            .filter_map(|a| a.parse().ok())
            .collect();
        for host in &spec.hosts {
            let vips = if singles.is_empty() {
                let h = format!("{ns}/{host}")
                    .bytes()
                    .fold(0x811c_9dc5_u32, |h, b| {
                        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
                    });
                let mut n = (h % 65_533) + 1;
                while !taken.insert(n) {
                    n = n % 65_533 + 1;
                }
                vec![IpAddr::V4(std::net::Ipv4Addr::from(AUTO_VIP_BASE + n))]
            } else {
                singles.clone()
            };
            let svc = pb::Service {
                name: e.metadata.name.clone(),
                namespace: ns.clone(),
                hostname: host.clone(),
                addresses: vips
                    .into_iter()
                    .map(|ip| pb::NetworkAddress {
                        network: String::new(),
                        address: ip_bytes(ip),
                        length: None,
                    })
                    .collect(),
                ports: entry_ports(spec, None),
                waypoint: waypoint(&e.metadata, WaypointUse::Service, res, mesh),
                ..Default::default()
            };
            out.push(NamedAddress {
                name: format!("{ns}/{host}"),
                address: pb::Address {
                    r#type: Some(pb::address::Type::Service(svc)),
                },
            });
        }
        // Each endpoint by address, or by name for DNS resolution: the proxies resolve it
        // when they connect (WDS `hostname`). A DNS entry without endpoints has its hosts
        // resolved that way.
        let dns = matches!(spec.resolution(), "DNS" | "DNS_ROUND_ROBIN");
        let endpoints: Vec<(EntryEndpoint, Option<&resources::WorkloadEntrySpec>)> =
            match spec.resolution() {
                "NONE" => singles
                    .iter()
                    .map(|ip| (EntryEndpoint::Ip(*ip), None))
                    .collect(),
                _ if dns && spec.endpoints.is_empty() => spec
                    .hosts
                    .iter()
                    .map(|h| (EntryEndpoint::Name(h.clone()), None))
                    .collect(),
                _ => spec
                    .endpoints
                    .iter()
                    .filter_map(|ep| {
                        let a = ep.address.as_deref()?;
                        let at = match a.parse() {
                            Ok(ip) => EntryEndpoint::Ip(ip),
                            Err(_) => EntryEndpoint::Name(a.to_string()),
                        };
                        Some((at, Some(ep)))
                    })
                    .collect(),
            };
        for (at, ep) in endpoints {
            let key = match &at {
                EntryEndpoint::Ip(ip) => ip.to_string(),
                EntryEndpoint::Name(n) => n.clone(),
            };
            let uid = format!(
                "{}/networking.istio.io/ServiceEntry/{ns}/{}/{key}",
                mesh.cluster_id, e.metadata.name
            );
            // A host resolved by name serves only itself.
            let own_host = match (&at, ep) {
                (EntryEndpoint::Name(n), None) => Some(n.as_str()),
                _ => None,
            };
            let services = spec
                .hosts
                .iter()
                .filter(|h| own_host.is_none_or(|o| o == h.as_str()))
                .map(|h| {
                    (
                        format!("{ns}/{h}"),
                        pb::PortList {
                            ports: entry_ports(spec, ep),
                        },
                    )
                })
                .collect();
            let w = pb::Workload {
                uid: uid.clone(),
                name: e.metadata.name.clone(),
                namespace: ns.clone(),
                addresses: match &at {
                    EntryEndpoint::Ip(ip) => vec![ip_bytes(*ip)],
                    EntryEndpoint::Name(_) => Vec::new(),
                },
                hostname: match &at {
                    EntryEndpoint::Ip(_) => String::new(),
                    EntryEndpoint::Name(n) => n.clone(),
                },
                tunnel_protocol: pb::TunnelProtocol::None as i32,
                trust_domain: mesh.trust_domain.clone(),
                service_account: ep
                    .and_then(|ep| ep.service_account.clone())
                    .unwrap_or_else(|| "default".into()),
                canonical_name: e.metadata.name.clone(),
                canonical_revision: "latest".into(),
                workload_name: e.metadata.name.clone(),
                services,
                status: pb::WorkloadStatus::Healthy as i32,
                cluster_id: mesh.cluster_id.clone(),
                ..Default::default()
            };
            out.push(NamedAddress {
                name: uid,
                address: pb::Address {
                    r#type: Some(pb::address::Type::Workload(w)),
                },
            });
        }
    }
    out
}

/// A ServiceEntry endpoint: an address, or a name the proxies resolve.
enum EntryEndpoint {
    Ip(IpAddr),
    Name(String),
}

/// Every Address resource for `res`, sorted by name.
pub fn addresses(res: &Resources, mesh: &MeshSettings) -> Vec<NamedAddress> {
    let selected = crate::authz::translate(res, mesh).selected;
    let mut out: Vec<NamedAddress> = res
        .pods
        .iter()
        .filter_map(|p| {
            let key = format!(
                "{}/{}",
                namespace_of(&p.metadata.namespace),
                p.metadata.name
            );
            let policies = selected.get(&key).map(Vec::as_slice).unwrap_or_default();
            workload(p, res, mesh, policies)
        })
        .collect();
    out.extend(res.services.iter().map(|s| service(s, res, mesh)));
    out.extend(service_entries(res, mesh));
    out.sort_by(|a, b| a.name.cmp(&b.name));
    // A host both a Service and a ServiceEntry name: the first (by name) is kept.
    out.dedup_by(|a, b| a.name == b.name);
    out
}

/// A pod's locality (docs/WIRE.md §3.4): its `istio-locality` label
/// (`region.zone.subzone`, as a label value cannot hold `/`), else its node's
/// `topology.kubernetes.io/region`, `topology.kubernetes.io/zone` and
/// `topology.istio.io/subzone` labels. `None` when neither says anything.
pub fn locality(pod: &resources::Pod, res: &Resources) -> Option<pb::Locality> {
    if let Some(l) = pod.metadata.labels.get("istio-locality") {
        let mut parts = l.splitn(3, '.').map(str::to_string);
        return Some(pb::Locality {
            region: parts.next().unwrap_or_default(),
            zone: parts.next().unwrap_or_default(),
            subzone: parts.next().unwrap_or_default(),
        });
    }
    let node = pod.spec.node_name.as_deref()?;
    let labels = &res
        .nodes
        .iter()
        .find(|n| n.metadata.name == node)?
        .metadata
        .labels;
    let get = |k: &str| labels.get(k).cloned().unwrap_or_default();
    let l = pb::Locality {
        region: get("topology.kubernetes.io/region"),
        zone: get("topology.kubernetes.io/zone"),
        subzone: get("topology.istio.io/subzone"),
    };
    (l != pb::Locality::default()).then_some(l)
}

#[cfg(test)]
mod tests;
