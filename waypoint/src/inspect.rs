//! The waypoint's own admin views (docs/OBSERVABILITY.md), read by `keelson
//! waypoint-config`:
//!
//! - `/waypoint/routes`: per service this waypoint serves, the HTTPRoute or VirtualService
//!   rules in the order requests are matched against them;
//! - `/waypoint/clusters`: per service port and DestinationRule subset, the endpoints with
//!   their outlier detection state, the DestinationRule policies in force and the circuit
//!   breaker's counts.

use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use proxycore::admin::{reply, Body};
use proxycore::state::Service;

use crate::process::Waypoint;

/// Answers the waypoint's own admin paths; `None` for the shared ones.
pub fn admin(wp: &Waypoint, req: &Request<Incoming>) -> Option<Response<Body>> {
    let body = match req.uri().path() {
        "/waypoint/routes" => routes(wp),
        "/waypoint/clusters" => clusters(wp),
        _ => return None,
    };
    Some(reply(
        StatusCode::OK,
        "application/json",
        serde_json::to_string_pretty(&body).unwrap_or_default(),
    ))
}

/// The services whose traffic this waypoint takes: those naming its own service (or one
/// of its addresses) as their waypoint.
fn served(wp: &Waypoint) -> Vec<Arc<Service>> {
    let pi = &wp.pi;
    let Some(own) = pi.state.workload_by_name(&pi.local_ns, &pi.local_name) else {
        return Vec::new();
    };
    let dump = pi.state.dump();
    let mut out: Vec<Arc<Service>> = dump
        .services
        .iter()
        .filter(|s| {
            s.waypoint.as_ref().is_some_and(|w| {
                own.services
                    .contains_key(&format!("{}/{}", w.namespace, w.hostname))
                    || w.address.is_some_and(|a| own.addresses.contains(&a))
            })
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    out
}

fn routes(wp: &Waypoint) -> serde_json::Value {
    let pi = &wp.pi;
    let waypoint_ns = pi.cfg.pod_namespace.as_deref().unwrap_or(&pi.local_ns);
    let own_uid = pi
        .state
        .workload_by_name(&pi.local_ns, &pi.local_name)
        .map(|w| w.uid.clone())
        .unwrap_or_default();
    let policies = wp.config.store.read(|r| {
        r.policies
            .values()
            .cloned()
            .collect::<Vec<Arc<crate::config::WaypointPolicy>>>()
    });
    let services: Vec<serde_json::Value> = served(wp)
        .iter()
        .map(|svc| {
            // The AuthorizationPolicies enforced here for it: on the service, on this
            // waypoint, or on every waypoint.
            let applied: Vec<serde_json::Value> = policies
                .iter()
                .filter(|p| {
                    p.all_waypoints
                        || p.waypoint_uids.contains(&own_uid)
                        || p.service_hostnames.contains(&svc.hostname)
                })
                .map(|p| {
                    serde_json::json!({
                        "name": p.policy.id,
                        "action": format!("{:?}", p.policy.action),
                        "dryRun": p.policy.dry_run,
                    })
                })
                .collect();
            let mut ports = serde_json::Map::new();
            for port in svc.ports.keys() {
                let frontend = l7::table::Frontend {
                    namespace: &svc.namespace,
                    name: &svc.name,
                    port: *port,
                    port_name: None,
                    client_namespace: &svc.namespace,
                };
                let table = wp.config.route_table(&pi.state, &frontend);
                let (kind, rules) = match table.as_ref() {
                    Some(t) => ("HTTPRoute", t.describe()),
                    None => {
                        let vs = wp.config.vs_table(
                            &pi.state,
                            &l7::vsroute::Frontend {
                                service_namespace: &svc.namespace,
                                hostname: &svc.hostname,
                                waypoint_namespace: waypoint_ns,
                            },
                        );
                        match vs.as_ref() {
                            Some(t) => ("VirtualService", t.describe()),
                            None => ("default", Vec::new()),
                        }
                    }
                };
                ports.insert(
                    port.to_string(),
                    serde_json::json!({
                        "protocol": svc.app_protocols.get(port).map_or("tcp", String::as_str),
                        "routing": kind,
                        "rules": rules,
                    }),
                );
            }
            serde_json::json!({
                "service": svc.hostname,
                "namespace": svc.namespace,
                "ports": ports,
                "policies": applied,
            })
        })
        .collect();
    serde_json::json!({ "services": services })
}

fn clusters(wp: &Waypoint) -> serde_json::Value {
    let pi = &wp.pi;
    let now = Instant::now();
    let dump = pi.state.dump();
    let breakers = wp.breakers.describe();
    let drs = wp.config.store.read(|r| {
        r.destination_rules
            .values()
            .cloned()
            .collect::<Vec<Arc<l7::vsroute::DestinationRule>>>()
    });
    let waypoint_ns = pi.cfg.pod_namespace.clone().unwrap_or_default();
    let mut out = Vec::new();
    for svc in served(wp) {
        let key = svc.key();
        let members: Vec<_> = dump
            .workloads
            .iter()
            .filter_map(|w| Some((w, w.services.get(key)?)))
            .collect();
        // The service's subsets: of the DestinationRules naming it.
        let short = format!("{}.{}", svc.name, svc.namespace);
        let mut subsets: Vec<(Option<String>, Option<Arc<l7::vsroute::SubsetMembers>>)> =
            vec![(None, None)];
        for d in &drs {
            let host = d.spec.host.as_str();
            if host == svc.hostname
                || host == short
                || (host == svc.name && d.namespace == svc.namespace)
            {
                for (name, m) in &d.subsets {
                    // The first rule naming a subset defines it (as endpoint picking does).
                    if !subsets.iter().any(|(n, _)| n.as_deref() == Some(name)) {
                        subsets.push((Some(name.clone()), Some(m.clone())));
                    }
                }
            }
        }
        for port in svc.ports.keys() {
            for (subset, m) in &subsets {
                let cluster = crate::outlier::key(&svc.hostname, *port, subset.as_deref());
                let outliers = wp.outliers.describe(&cluster, now);
                let endpoints: Vec<serde_json::Value> = members
                    .iter()
                    .filter(|(w, _)| m.as_ref().is_none_or(|m| m.uids.contains(&w.uid)))
                    .map(|(w, ports)| {
                        serde_json::json!({
                            "workload": format!("{}/{}", w.namespace, w.name),
                            "uid": w.uid,
                            "address": w.addresses.first().map(|a| a.to_string()),
                            "port": ports.get(port).copied().unwrap_or(*port),
                            "health": w.status,
                            "outlier": outliers.get(&w.uid),
                        })
                    })
                    .collect();
                let namespaces = [svc.namespace.as_str(), waypoint_ns.as_str(), "istio-system"];
                let p = wp.config.policies(
                    &pi.state,
                    &svc.hostname,
                    namespaces,
                    *port,
                    subset.as_deref(),
                );
                let breaker: Vec<&serde_json::Value> = breakers
                    .iter()
                    .filter(|(k, _)| *k == cluster)
                    .map(|(_, v)| v)
                    .collect();
                out.push(serde_json::json!({
                    "cluster": cluster,
                    "service": svc.hostname,
                    "port": port,
                    "subset": subset,
                    "endpoints": endpoints,
                    "outlierDetection": p.ejection.map(|e| format!("{e:?}")),
                    "connectionPool": p.limits.map(|l| format!("{l:?}")),
                    "loadBalancer": p.balance.map(|b| format!("{b:?}")),
                    "circuitBreaker": breaker,
                }));
            }
        }
    }
    serde_json::json!({ "clusters": out })
}
