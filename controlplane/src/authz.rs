//! AuthorizationPolicy and PeerAuthentication → `istio.security.Authorization`, the L4 policies
//! ztunnel enforces (docs/WIRE.md §3.6–§3.7, docs/WIRE.md §8).
//!
//! * Scope: a selector makes a WORKLOAD_SELECTOR policy, listed by name in the selected
//!   workloads' `authorization_policies`; no selector makes a NAMESPACE policy, or GLOBAL in
//!   the root namespace. Policies with `targetRef(s)` belong to waypoints and are not sent;
//!   AUDIT and CUSTOM are not ztunnel's either.
//! * A rule is (any `from`) AND (any `to`) AND (every `when`): one clause per part.
//! * Conditions ztunnel cannot check (HTTP methods, paths, request principals, unknown keys)
//!   fail closed: an ALLOW rule holding one is dropped, a DENY rule loses only that part.
//! * STRICT mTLS becomes a DENY of peers without an identity: mesh-wide it is the GLOBAL
//!   `<root>/istio_converted_static_strict`; when namespace or workload PeerAuthentications
//!   exist, each workload gets the policy of the PeerAuthentication that decides its mode.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use xds::security as pb;

use resources::MeshSettings;
use resources::{
    parse_cidr, parse_port, AuthorizationPolicy, MtlsMode, Operation, Pattern, PeerAuthentication,
    Pod, PolicyAction, PolicyRule, Resources, Source,
};

pub const STATIC_STRICT: &str = "istio_converted_static_strict";
pub const DRY_RUN_ANNOTATION: &str = "istio.io/dry-run";

/// A named Authorization resource, as it goes into a delta response.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedAuthorization {
    pub name: String,
    pub authorization: pb::Authorization,
}

/// What the translation produced: the policies, and for each pod (`ns/name`) the names of the
/// selector-scoped ones that apply to it.
#[derive(Debug, Default)]
pub struct Translated {
    pub policies: Vec<NamedAuthorization>,
    pub selected: BTreeMap<String, Vec<String>>,
    /// Policies not sent to ztunnel and why (waypoint-attached, AUDIT, CUSTOM).
    pub skipped: Vec<String>,
}

fn ns_of(meta_ns: &Option<String>) -> &str {
    meta_ns.as_deref().unwrap_or("default")
}

fn pod_key(p: &Pod) -> String {
    format!("{}/{}", ns_of(&p.metadata.namespace), p.metadata.name)
}

fn string_match(s: &str) -> pb::StringMatch {
    use pb::string_match::MatchType;
    let m = match Pattern::parse(s) {
        Pattern::Presence => MatchType::Presence(()),
        Pattern::Prefix(p) => MatchType::Prefix(p),
        Pattern::Suffix(p) => MatchType::Suffix(p),
        Pattern::Exact(p) => MatchType::Exact(p),
    };
    pb::StringMatch {
        match_type: Some(m),
    }
}

fn strings(v: &[String]) -> Vec<pb::StringMatch> {
    v.iter().map(|s| string_match(s)).collect()
}

fn address(s: &str) -> Option<pb::Address> {
    let (ip, len) = parse_cidr(s).ok()?;
    Some(pb::Address {
        address: match ip {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        },
        length: u32::from(len),
    })
}

fn addresses(v: &[String]) -> Vec<pb::Address> {
    v.iter().filter_map(|s| address(s)).collect()
}

fn ports(v: &[String]) -> Vec<u32> {
    v.iter()
        .filter_map(|s| parse_port(s).ok())
        .map(u32::from)
        .collect()
}

fn service_accounts(v: &[String], policy_ns: &str) -> Vec<pb::ServiceAccountMatch> {
    v.iter()
        .map(|s| {
            let (ns, sa) = s.split_once('/').unwrap_or((policy_ns, s));
            pb::ServiceAccountMatch {
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            }
        })
        .collect()
}

/// A source entry as a match; the flag says whether it held something ztunnel cannot check.
fn source_match(s: &Source, policy_ns: &str) -> (pb::Match, bool) {
    let m = pb::Match {
        principals: strings(&s.principals),
        not_principals: strings(&s.not_principals),
        namespaces: strings(&s.namespaces),
        not_namespaces: strings(&s.not_namespaces),
        service_accounts: service_accounts(&s.service_accounts, policy_ns),
        not_service_accounts: service_accounts(&s.not_service_accounts, policy_ns),
        source_ips: addresses(&s.ip_blocks),
        not_source_ips: addresses(&s.not_ip_blocks),
        ..Default::default()
    };
    (m, s.beyond_l4())
}

fn operation_match(o: &Operation) -> (pb::Match, bool) {
    let m = pb::Match {
        destination_ports: ports(&o.ports),
        not_destination_ports: ports(&o.not_ports),
        ..Default::default()
    };
    (m, o.beyond_l4())
}

/// A `when` condition as a match, or `None` when ztunnel cannot check its key.
fn condition_match(key: &str, values: &[String], not_values: &[String]) -> Option<pb::Match> {
    let mut m = pb::Match::default();
    match key {
        "source.ip" => {
            m.source_ips = addresses(values);
            m.not_source_ips = addresses(not_values);
        }
        "destination.ip" => {
            m.destination_ips = addresses(values);
            m.not_destination_ips = addresses(not_values);
        }
        "destination.port" => {
            m.destination_ports = ports(values);
            m.not_destination_ports = ports(not_values);
        }
        "source.namespace" => {
            m.namespaces = strings(values);
            m.not_namespaces = strings(not_values);
        }
        "source.principal" => {
            m.principals = strings(values);
            m.not_principals = strings(not_values);
        }
        _ => return None,
    }
    Some(m)
}

/// One rule, or `None` when it must be dropped (an ALLOW rule with a condition ztunnel
/// cannot check: dropping it only narrows what is allowed).
fn rule(r: &PolicyRule, policy_ns: &str, action: PolicyAction) -> Option<pb::Rule> {
    let mut l7 = false;
    let mut clauses = Vec::new();
    if !r.from.is_empty() {
        let matches = r
            .from
            .iter()
            .map(|f| {
                let (m, unsupported) = source_match(&f.source, policy_ns);
                l7 |= unsupported;
                m
            })
            .collect();
        clauses.push(pb::Clause { matches });
    }
    if !r.to.is_empty() {
        let matches =
            r.to.iter()
                .map(|t| {
                    let (m, unsupported) = operation_match(&t.operation);
                    l7 |= unsupported;
                    m
                })
                .collect();
        clauses.push(pb::Clause { matches });
    }
    for c in &r.when {
        match condition_match(&c.key, &c.values, &c.not_values) {
            Some(m) => clauses.push(pb::Clause { matches: vec![m] }),
            None => l7 = true,
        }
    }
    if l7 && action == PolicyAction::Allow {
        return None;
    }
    Some(pb::Rule { clauses })
}

/// The Authorization for one AuthorizationPolicy, or why it is not ztunnel's.
pub fn authorization(
    p: &AuthorizationPolicy,
    mesh: &MeshSettings,
) -> Result<pb::Authorization, &'static str> {
    let ns = ns_of(&p.metadata.namespace);
    if p.spec.target_ref.is_some() || !p.spec.target_refs.is_empty() {
        return Err("targetRef: enforced by a waypoint");
    }
    let action = p.spec.action.unwrap_or(PolicyAction::Allow);
    let pb_action = match action {
        PolicyAction::Allow => pb::Action::Allow,
        PolicyAction::Deny => pb::Action::Deny,
        PolicyAction::Audit => return Err("action AUDIT is not enforced by ztunnel"),
        PolicyAction::Custom => return Err("action CUSTOM is enforced by a waypoint"),
    };
    let scope = if p.spec.selector.is_some() {
        pb::Scope::WorkloadSelector
    } else if ns == mesh.root_namespace {
        pb::Scope::Global
    } else {
        pb::Scope::Namespace
    };
    Ok(pb::Authorization {
        name: p.metadata.name.clone(),
        namespace: ns.to_string(),
        scope: scope as i32,
        action: pb_action as i32,
        rules: p
            .spec
            .rules
            .iter()
            .filter_map(|r| rule(r, ns, action))
            .collect(),
        dry_run: p
            .metadata
            .annotations
            .get(DRY_RUN_ANNOTATION)
            .is_some_and(|v| v == "true"),
        extensions: vec![],
    })
}

/// Where a policy of `ns` attaches by the target `t` (docs/WIRE.md §8): a GatewayClass
/// `istio-waypoint` from the root namespace, every waypoint (AP-40); a Gateway, the pods
/// of that Gateway in `ns`; a Service, the requests addressed to it. Into (every waypoint,
/// waypoint uids, service hostnames).
fn attach(
    t: &l7::authz::TargetRef,
    ns: &str,
    res: &Resources,
    mesh: &MeshSettings,
    (all, uids, hosts): (&mut bool, &mut Vec<String>, &mut Vec<String>),
) {
    match t.kind.as_str() {
        "GatewayClass" => *all |= t.name == "istio-waypoint" && ns == mesh.root_namespace,
        "Gateway" => uids.extend(
            res.pods
                .iter()
                .filter(|pod| ns_of(&pod.metadata.namespace) == ns)
                .filter(|pod| {
                    pod.metadata.labels.get(resources::labels::GATEWAY_NAME) == Some(&t.name)
                })
                .map(|pod| format!("{}//Pod/{ns}/{}", mesh.cluster_id, pod.metadata.name)),
        ),
        "Service" => hosts.push(format!("{}.{ns}.svc.{}", t.name, mesh.domain_suffix)),
        _ => {}
    }
}

/// The WDS uids of the pods that serve ingress gateways.
fn ingress_gateway_pods(res: &Resources, mesh: &MeshSettings) -> BTreeSet<String> {
    crate::ingress::translate(res, mesh)
        .gateways
        .into_iter()
        .flat_map(|g| g.proxy_uids)
        .collect()
}

/// The ingress gateway pods (of `gateways`) a policy of `ns` with `selector` selects: the
/// gateway is their proxy, so it enforces the policy (docs/GATEWAY.md).
fn selected_gateway_pods(
    res: &Resources,
    mesh: &MeshSettings,
    ns: &str,
    selector: &resources::WorkloadSelector,
    gateways: &BTreeSet<String>,
) -> Vec<String> {
    res.pods
        .iter()
        .filter(|p| selects(ns, selector, p, mesh))
        .map(|p| {
            format!(
                "{}//Pod/{}/{}",
                mesh.cluster_id,
                ns_of(&p.metadata.namespace),
                p.metadata.name
            )
        })
        .filter(|uid| gateways.contains(uid))
        .collect()
}

/// Whether a policy or PeerAuthentication in `policy_ns` with `selector` selects `pod`: same
/// namespace (or the root namespace, which selects across the mesh) and matching labels.
fn selects(
    policy_ns: &str,
    selector: &resources::WorkloadSelector,
    pod: &Pod,
    mesh: &MeshSettings,
) -> bool {
    (policy_ns == mesh.root_namespace || policy_ns == ns_of(&pod.metadata.namespace))
        && selector.matches(&pod.metadata.labels)
}

/// The deny policy for STRICT mTLS: peers without an identity are refused, on every port
/// except `permissive`, or only on `strict` ports when those are given.
fn strict_policy(
    name: &str,
    ns: &str,
    scope: pb::Scope,
    strict_ports: Vec<u32>,
    permissive_ports: Vec<u32>,
) -> pb::Authorization {
    let m = pb::Match {
        not_principals: vec![string_match("*")],
        destination_ports: strict_ports,
        not_destination_ports: permissive_ports,
        ..Default::default()
    };
    pb::Authorization {
        name: name.to_string(),
        namespace: ns.to_string(),
        scope: scope as i32,
        action: pb::Action::Deny as i32,
        rules: vec![pb::Rule {
            clauses: vec![pb::Clause { matches: vec![m] }],
        }],
        dry_run: false,
        extensions: vec![],
    }
}

fn mode_of(pa: &PeerAuthentication) -> MtlsMode {
    pa.spec.mtls.as_ref().map(|m| m.mode).unwrap_or_default()
}

/// Oldest first would be Kubernetes' rule; without timestamps, the name decides, stably.
fn by_name(mut v: Vec<&PeerAuthentication>) -> Option<&PeerAuthentication> {
    v.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    v.into_iter().next()
}

/// PeerAuthentications → STRICT deny policies.
fn peer_authentications(res: &Resources, mesh: &MeshSettings, out: &mut Translated) {
    let is_mesh = |pa: &&PeerAuthentication| {
        ns_of(&pa.metadata.namespace) == mesh.root_namespace && pa.spec.selector.is_none()
    };
    let mesh_pa = by_name(res.peer_authentications.iter().filter(is_mesh).collect());
    let narrower: Vec<&PeerAuthentication> = res
        .peer_authentications
        .iter()
        .filter(|pa| !is_mesh(pa))
        .collect();
    let mesh_mode = mesh_pa.map(mode_of).unwrap_or_default();
    if narrower.is_empty() {
        if mesh_mode == MtlsMode::Strict {
            out.policies.push(NamedAuthorization {
                name: format!("{}/{STATIC_STRICT}", mesh.root_namespace),
                authorization: strict_policy(
                    STATIC_STRICT,
                    &mesh.root_namespace,
                    pb::Scope::Global,
                    vec![],
                    vec![],
                ),
            });
        }
        return;
    }
    // Per workload: the most specific PeerAuthentication with a mode decides; port-level
    // settings come from the workload's own one.
    let mut emitted: BTreeMap<String, pb::Authorization> = BTreeMap::new();
    for pod in &res.pods {
        let pod_ns = ns_of(&pod.metadata.namespace);
        let workload_pa = by_name(
            narrower
                .iter()
                .copied()
                .filter(|pa| {
                    pa.spec
                        .selector
                        .as_ref()
                        .is_some_and(|s| selects(ns_of(&pa.metadata.namespace), s, pod, mesh))
                })
                .collect(),
        );
        let ns_pa = by_name(
            narrower
                .iter()
                .copied()
                .filter(|pa| pa.spec.selector.is_none() && ns_of(&pa.metadata.namespace) == pod_ns)
                .collect(),
        );
        let chain = [workload_pa, ns_pa, mesh_pa];
        let Some((decider, mode)) = chain
            .iter()
            .flatten()
            .map(|pa| (*pa, mode_of(pa)))
            .find(|(_, m)| *m != MtlsMode::Unset)
        else {
            continue;
        };
        let port_modes: BTreeMap<u16, MtlsMode> = workload_pa
            .map(|pa| {
                pa.spec
                    .port_level_mtls
                    .iter()
                    .map(|(p, m)| (*p, m.mode))
                    .filter(|(_, m)| *m != MtlsMode::Unset)
                    .collect()
            })
            .unwrap_or_default();
        let (strict, permissive): (Vec<u32>, Vec<u32>) = (
            port_modes
                .iter()
                .filter(|(_, m)| **m == MtlsMode::Strict)
                .map(|(p, _)| u32::from(*p))
                .collect(),
            port_modes
                .iter()
                .filter(|(_, m)| **m != MtlsMode::Strict)
                .map(|(p, _)| u32::from(*p))
                .collect(),
        );
        let decider = if !port_modes.is_empty() {
            workload_pa.unwrap_or(decider)
        } else {
            decider
        };
        let policy = if mode == MtlsMode::Strict {
            strict_policy("", "", pb::Scope::WorkloadSelector, vec![], permissive)
        } else if !strict.is_empty() {
            strict_policy("", "", pb::Scope::WorkloadSelector, strict, vec![])
        } else {
            continue;
        };
        let dns = ns_of(&decider.metadata.namespace);
        let name = if mesh_pa.is_some_and(|m| std::ptr::eq(m, decider)) {
            STATIC_STRICT.to_string()
        } else {
            format!("converted_peer_authentication_{}", decider.metadata.name)
        };
        let key = format!("{dns}/{name}");
        emitted
            .entry(key.clone())
            .or_insert_with(|| pb::Authorization {
                name: name.clone(),
                namespace: dns.to_string(),
                ..policy
            });
        out.selected.entry(pod_key(pod)).or_default().push(key);
    }
    out.policies.extend(
        emitted
            .into_iter()
            .map(|(name, authorization)| NamedAuthorization {
                name,
                authorization,
            }),
    );
}

/// Every Authorization for `res`, sorted by name, and the selector membership of each pod.
pub fn translate(res: &Resources, mesh: &MeshSettings) -> Translated {
    let mut out = Translated::default();
    for p in &res.authorization_policies {
        let ns = ns_of(&p.metadata.namespace);
        let key = format!("{ns}/{}", p.metadata.name);
        match authorization(p, mesh) {
            Ok(a) => {
                if let Some(sel) = &p.spec.selector {
                    for pod in res.pods.iter().filter(|pod| selects(ns, sel, pod, mesh)) {
                        out.selected
                            .entry(pod_key(pod))
                            .or_default()
                            .push(key.clone());
                    }
                }
                out.policies.push(NamedAuthorization {
                    name: key,
                    authorization: a,
                });
            }
            Err(why) => out.skipped.push(format!("{key}: {why}")),
        }
    }
    peer_authentications(res, mesh, &mut out);
    out.policies.sort_by(|a, b| a.name.cmp(&b.name));
    for names in out.selected.values_mut() {
        names.sort();
        names.dedup();
    }
    out
}

#[cfg(test)]
mod tests;

/// The policies waypoints enforce: those with `targetRef(s)` (AP-02, AP-33), with what they
/// attach to resolved. A Gateway reference names the pods of that waypoint Gateway in the
/// policy's namespace; a GatewayClass `istio-waypoint` reference from the root namespace
/// attaches to every waypoint (AP-40); a Service reference to the requests addressed to that
/// Service in the policy's namespace. ServiceEntry references attach to nothing here (no
/// ServiceEntry support yet).
pub fn waypoint_policies(
    res: &Resources,
    mesh: &MeshSettings,
) -> Vec<xds::l7::AuthorizationPolicy> {
    let mut out = Vec::new();
    let gateways = ingress_gateway_pods(res, mesh);
    for p in &res.authorization_policies {
        let ns = ns_of(&p.metadata.namespace);
        let at_gateways = p.spec.selector.as_ref().map_or_else(Vec::new, |sel| {
            selected_gateway_pods(res, mesh, ns, sel, &gateways)
        });
        if p.spec.targets().next().is_none() && at_gateways.is_empty() {
            continue;
        }
        let mut wp = xds::l7::AuthorizationPolicy {
            namespace: ns.to_string(),
            name: p.metadata.name.clone(),
            spec_json: serde_json::to_string(&p.spec).unwrap_or_default(),
            dry_run: p
                .metadata
                .annotations
                .get(DRY_RUN_ANNOTATION)
                .is_some_and(|v| v == "true"),
            waypoint_uids: at_gateways,
            ..Default::default()
        };
        for t in p.spec.targets() {
            attach(
                t,
                ns,
                res,
                mesh,
                (
                    &mut wp.all_waypoints,
                    &mut wp.waypoint_uids,
                    &mut wp.service_hostnames,
                ),
            );
        }
        out.push(wp);
    }
    out
}

/// RequestAuthentications for waypoints (docs/WIRE.md §8): each with its JWKS resolved (a
/// `file://` `jwksUri` read here; an `http(s)` one is left for the waypoints, which fetch it
/// through the mesh) and its attachments as for
/// AuthorizationPolicy; without targetRefs it applies to the requests to its namespace's
/// services (every waypoint's from the root namespace). Selector ones are for sidecars and
/// are not sent.
pub fn request_authentications(
    res: &Resources,
    mesh: &MeshSettings,
) -> Vec<xds::l7::RequestAuthentication> {
    let mut out = Vec::new();
    let gateways = ingress_gateway_pods(res, mesh);
    for r in &res.request_authentications {
        let ns = ns_of(&r.metadata.namespace);
        let at_gateways = r
            .spec
            .selector
            .as_ref()
            .map(|sel| selected_gateway_pods(res, mesh, ns, sel, &gateways));
        if at_gateways.as_ref().is_some_and(Vec::is_empty) {
            continue;
        }
        let mut spec = r.spec.clone();
        for rule in &mut spec.jwt_rules {
            if rule.jwks.is_some() {
                continue;
            }
            if let Some(path) = rule
                .jwks_uri
                .as_deref()
                .and_then(|u| u.strip_prefix("file://"))
            {
                match std::fs::read_to_string(path) {
                    Ok(j) => rule.jwks = Some(j),
                    Err(e) => {
                        tracing::warn!(policy = %format!("{ns}/{}", r.metadata.name), %path, error = %e, "cannot read the JWKS")
                    }
                }
            }
        }
        let mut ra = xds::l7::RequestAuthentication {
            namespace: ns.to_string(),
            name: r.metadata.name.clone(),
            spec_json: serde_json::to_string(&spec).unwrap_or_default(),
            ..Default::default()
        };
        let mut targeted = at_gateways.is_some();
        ra.waypoint_uids = at_gateways.unwrap_or_default();
        for t in r.spec.targets() {
            targeted = true;
            attach(
                t,
                ns,
                res,
                mesh,
                (
                    &mut ra.all_waypoints,
                    &mut ra.waypoint_uids,
                    &mut ra.service_hostnames,
                ),
            );
        }
        if !targeted {
            if ns == mesh.root_namespace {
                ra.all_waypoints = true;
            } else {
                ra.namespace_wide = true;
            }
        }
        out.push(ra);
    }
    out
}
