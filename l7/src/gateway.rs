//! Ingress gateways (docs/GATEWAY.md): the three ways users describe one, and the one
//! resolved form the control plane sends a gateway proxy.
//!
//! - a Gateway API `Gateway` of class `istio` (its listeners; `HTTPRoute`s attach to it by
//!   `parentRefs`), read by the resource model with [`Listener`];
//! - an Istio `Gateway` (networking.istio.io, [`IstioGatewaySpec`]: a pod selector and
//!   servers; `VirtualService`s bind to it by `gateways:`);
//! - a Kubernetes `Ingress` of class `istio` ([`IngressSpec`]), which the control plane turns
//!   into a gateway and one VirtualService ([`IngressSpec::virtual_service`]).
//!
//! Each becomes an [`IngressGateway`]: listeners with their hostnames, certificates (PEM
//! from the referenced Secrets) and which namespaces' routes they admit, and the uids of the
//! proxy pods that serve it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::istio::{
    Destination, HttpMatch, HttpRule, PortSelector, RouteDestination, StringMatch,
    VirtualServiceSpec,
};

/// The Gateway API class Istio serves as an ingress gateway.
pub const GATEWAY_CLASS: &str = "istio";
/// The Ingress class Istio serves.
pub const INGRESS_CLASS: &str = "istio";
/// The labels of the default ingress gateway pods: Istio Gateways select them, and they
/// serve every Ingress of class `istio`.
pub const INGRESS_LABELS: [(&str, &str); 2] =
    [("istio", "ingressgateway"), ("app", "istio-ingressgateway")];

// ---- The resolved form ----

/// Where a gateway came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum GatewayKind {
    /// gateway.networking.k8s.io `Gateway`: HTTPRoutes attach by `parentRefs`.
    GatewayApi,
    /// networking.istio.io `Gateway`: VirtualServices bind by `gateways:`.
    Istio,
    /// networking.k8s.io `Ingress`: its own VirtualService, made by the control plane.
    Ingress,
}

/// One ingress gateway, resolved by the control plane.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressGateway {
    pub namespace: String,
    pub name: String,
    pub kind: GatewayKind,
    /// WDS uids of the pods that serve it.
    pub proxy_uids: Vec<String>,
    pub listeners: Vec<ResolvedListener>,
}

impl IngressGateway {
    /// The name VirtualServices bind with: `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    Http,
    /// TLS terminated at the gateway, HTTP inside.
    Https,
}

/// A listener (Gateway API) or server (Istio) of a gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedListener {
    /// The listener's name (a route's `sectionName`), or the server's port name.
    pub name: String,
    pub port: u16,
    pub protocol: Protocol,
    /// The hostnames it answers for; empty: any. Istio's `namespace/host` form keeps the
    /// namespace in [`HostFilter::namespace`].
    pub hosts: Vec<HostFilter>,
    /// For HTTPS: the certificates to present (the first whose hosts match the SNI name).
    pub certificates: Vec<Certificate>,
    /// Istio `tls.httpsRedirect`: answer every plain request with a 301 to `https`.
    pub https_redirect: bool,
    /// Gateway API `allowedRoutes.namespaces`: `None` any, else these namespaces.
    pub route_namespaces: Option<Vec<String>>,
}

/// A hostname a listener answers for, and (Istio) the namespaces whose VirtualServices may
/// bind for it (`None`: any, the `*/` form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostFilter {
    pub namespace: Option<String>,
    pub host: String,
}

/// A server certificate: the chain and key (PEM) from a `kubernetes.io/tls` Secret.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Certificate {
    /// `namespace/name` of the Secret.
    pub secret: String,
    pub chain_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for Certificate {
    /// Never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificate")
            .field("secret", &self.secret)
            .finish_non_exhaustive()
    }
}

/// How well `pattern` matches `host` (both without a port, compared case-insensitively):
/// `None` no match; otherwise smaller is better: 0 exact, then wildcards by how much of the
/// name they fix (longer suffix first), then `*` (any). A wildcard `*.example.com` covers
/// `a.example.com` and `a.b.example.com`, never `example.com` (Gateway API hostnames; Istio
/// server hosts the same).
pub fn host_rank(pattern: &str, host: &str) -> Option<usize> {
    let (p, h) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    if p.is_empty() || p == "*" {
        return Some(usize::MAX);
    }
    if let Some(suffix) = p.strip_prefix('*') {
        return (h.len() > suffix.len() && h.ends_with(suffix))
            .then(|| usize::MAX / 2 - suffix.len());
    }
    (p == h).then_some(0)
}

/// The host a request names: Host or `:authority` without its port, lower case.
pub fn request_host(authority: &str) -> String {
    let host = match authority.rsplit_once(':') {
        // An IPv6 literal's colons are inside brackets.
        Some((h, port)) if !h.ends_with(']') || authority.starts_with('[') => {
            if port.bytes().all(|b| b.is_ascii_digit()) {
                h
            } else {
                authority
            }
        }
        _ => authority,
    };
    host.trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase()
}

/// Whether two hostname patterns have a name in common (route hostnames against a
/// listener's; GW: a route attaches to a listener only then).
pub fn hosts_intersect(a: &str, b: &str) -> bool {
    let any = |x: &str| x.is_empty() || x == "*";
    if any(a) || any(b) {
        return true;
    }
    match (a.strip_prefix('*'), b.strip_prefix('*')) {
        (None, None) => a.eq_ignore_ascii_case(b),
        (Some(_), None) => host_rank(a, b).is_some(),
        (None, Some(_)) => host_rank(b, a).is_some(),
        (Some(sa), Some(sb)) => {
            let (sa, sb) = (sa.to_ascii_lowercase(), sb.to_ascii_lowercase());
            sa.ends_with(&sb) || sb.ends_with(&sa)
        }
    }
}

// ---- Gateway API listeners ----

/// A Gateway API listener (gateway.networking.k8s.io/v1 `Gateway.spec.listeners[]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Listener {
    pub name: String,
    #[serde(default)]
    pub hostname: Option<String>,
    pub port: u16,
    pub protocol: String,
    #[serde(default)]
    pub tls: Option<ListenerTls>,
    #[serde(default)]
    pub allowed_routes: Option<AllowedRoutes>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// `Terminate` (the default) or `Passthrough`.
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<SecretRef>,
    #[serde(default)]
    pub options: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecretRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AllowedRoutes {
    #[serde(default)]
    pub namespaces: Option<RouteNamespaces>,
    #[serde(default)]
    pub kinds: Vec<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RouteNamespaces {
    /// `Same` (the default), `All` or `Selector`.
    #[serde(default)]
    pub from: Option<String>,
    #[serde(default)]
    pub selector: Option<LabelSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl Listener {
    /// Checks a listener of a Gateway of class `istio`; the error names the field (`at`).
    pub fn validate(&self, at: &str) -> Result<(), String> {
        match self.protocol.as_str() {
            "HTTP" => {}
            "HTTPS" => {
                let tls = self
                    .tls
                    .as_ref()
                    .ok_or_else(|| format!("{at}.tls: required for HTTPS"))?;
                match tls.mode.as_deref() {
                    None | Some("Terminate") => {}
                    Some(m) => {
                        return Err(format!(
                            "{at}.tls.mode: {m} is not supported (Terminate only)"
                        ))
                    }
                }
                if tls.certificate_refs.is_empty() {
                    return Err(format!("{at}.tls.certificateRefs: required for Terminate"));
                }
            }
            p => {
                return Err(format!(
                    "{at}.protocol: {p} is not supported by the ingress gateway (HTTP or HTTPS)"
                ))
            }
        }
        if self.port == 0 {
            return Err(format!("{at}.port: must be 1-65535"));
        }
        if let Some(h) = &self.hostname {
            check_hostname(h).map_err(|e| format!("{at}.hostname: {e}"))?;
        }
        if let Some(ns) = self
            .allowed_routes
            .as_ref()
            .and_then(|a| a.namespaces.as_ref())
        {
            match ns.from.as_deref() {
                None | Some("Same" | "All") => {}
                Some("Selector") if ns.selector.is_some() => {}
                Some("Selector") => {
                    return Err(format!(
                        "{at}.allowedRoutes.namespaces.selector: required for Selector"
                    ))
                }
                Some(f) => {
                    return Err(format!(
                        "{at}.allowedRoutes.namespaces.from: {f} is not Same, All or Selector"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// A hostname or a `*.`-wildcard of one (Gateway API `Hostname`, Istio server hosts).
pub fn check_hostname(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if h == "*" {
        return Ok(());
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!("{h:?} is not a hostname or a *. wildcard of one"))
    }
}

// ---- Istio Gateway ----

/// An Istio `Gateway` (networking.istio.io/v1) spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IstioGatewaySpec {
    /// The gateway pods it configures (by label); empty selects none.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    #[serde(default)]
    pub servers: Vec<Server>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Server {
    pub port: ServerPort,
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub bind: Option<String>,
    #[serde(default)]
    pub default_endpoint: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerPort {
    pub number: u16,
    pub protocol: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    #[serde(default)]
    pub https_redirect: bool,
    /// `SIMPLE` here (terminate with `credentialName`).
    #[serde(default)]
    pub mode: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub server_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub min_protocol_version: Option<String>,
    #[serde(default)]
    pub max_protocol_version: Option<String>,
    #[serde(default)]
    pub cipher_suites: Vec<String>,
}

impl IstioGatewaySpec {
    pub fn validate(&self) -> Result<(), String> {
        for (i, s) in self.servers.iter().enumerate() {
            let at = format!("spec.servers[{i}]");
            if s.port.number == 0 {
                return Err(format!("{at}.port.number: must be 1-65535"));
            }
            if s.hosts.is_empty() {
                return Err(format!("{at}.hosts: at least one host is required"));
            }
            for (hi, h) in s.hosts.iter().enumerate() {
                let (ns, host) = split_server_host(h);
                if ns.is_some_and(str::is_empty) {
                    return Err(format!("{at}.hosts[{hi}]: empty namespace in {h:?}"));
                }
                check_hostname(host).map_err(|e| format!("{at}.hosts[{hi}]: {e}"))?;
            }
            let protocol = s.port.protocol.to_ascii_uppercase();
            match (protocol.as_str(), &s.tls) {
                ("HTTP" | "HTTP2" | "GRPC", None) => {}
                ("HTTP" | "HTTP2" | "GRPC", Some(t)) if t.https_redirect && t.mode.is_none() => {}
                ("HTTP" | "HTTP2" | "GRPC", Some(_)) => {
                    return Err(format!(
                        "{at}.tls: a plain {} server takes only httpsRedirect",
                        s.port.protocol
                    ))
                }
                ("HTTPS", Some(t)) => {
                    match t.mode.as_deref() {
                        None | Some("SIMPLE") => {}
                        Some(m) => {
                            return Err(format!(
                                "{at}.tls.mode: {m} is not supported (SIMPLE only)"
                            ))
                        }
                    }
                    if t.credential_name.is_none() {
                        return Err(format!(
                            "{at}.tls.credentialName: required (certificates come from a Secret)"
                        ));
                    }
                }
                ("HTTPS", None) => return Err(format!("{at}.tls: required for HTTPS")),
                (p, _) => {
                    return Err(format!(
                        "{at}.port.protocol: {p} is not supported by the ingress gateway (HTTP, HTTP2, GRPC or HTTPS)"
                    ))
                }
            }
        }
        Ok(())
    }
}

/// An Istio server host, `[namespace/]host`: `*/` and no namespace mean any (`.` is the
/// Gateway's own namespace, resolved by the caller).
pub fn split_server_host(h: &str) -> (Option<&str>, &str) {
    match h.split_once('/') {
        Some(("*", host)) => (None, host),
        Some((ns, host)) => (Some(ns), host),
        None => (None, h),
    }
}

/// Whether VirtualService `gateways` entry `g` (written in namespace `vs_ns`) names the
/// gateway `key` (`namespace/name`).
pub fn binds(g: &str, vs_ns: &str, key: &str) -> bool {
    if g.contains('/') {
        g == key
    } else {
        format!("{vs_ns}/{g}") == key
    }
}

// ---- Kubernetes Ingress ----

/// A `networking.k8s.io/v1` `Ingress` spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressSpec {
    #[serde(default)]
    pub ingress_class_name: Option<String>,
    #[serde(default)]
    pub default_backend: Option<IngressBackend>,
    #[serde(default)]
    pub tls: Vec<IngressTls>,
    #[serde(default)]
    pub rules: Vec<IngressRule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressTls {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub secret_name: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressRule {
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default)]
    pub http: Option<IngressHttp>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressHttp {
    #[serde(default)]
    pub paths: Vec<IngressPath>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressPath {
    #[serde(default)]
    pub path: Option<String>,
    pub path_type: String,
    pub backend: IngressBackend,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressBackend {
    #[serde(default)]
    pub service: Option<IngressServiceBackend>,
    #[serde(default)]
    pub resource: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IngressServiceBackend {
    pub name: String,
    pub port: ServiceBackendPort,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceBackendPort {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub number: Option<u16>,
}

/// The suffix of the gateway an Ingress becomes (`<ingress name>.ingress`), so it never
/// shares a name with an Istio Gateway of the namespace that has no dot in it.
pub const INGRESS_GATEWAY_SUFFIX: &str = ".ingress";

impl IngressSpec {
    /// Whether Istio serves it: class `istio` (by `ingressClassName`, or the older
    /// annotation `kubernetes.io/ingress.class`).
    pub fn is_istio(&self, annotations: &BTreeMap<String, String>) -> bool {
        match &self.ingress_class_name {
            Some(c) => c == INGRESS_CLASS,
            None => annotations
                .get("kubernetes.io/ingress.class")
                .is_some_and(|c| c == INGRESS_CLASS),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        let check_backend = |b: &IngressBackend, at: &str| -> Result<(), String> {
            match &b.service {
                None if b.resource.is_some() => Err(format!(
                    "{at}.resource: resource backends are not supported (a service only)"
                )),
                None => Err(format!("{at}.service: required")),
                Some(s) if s.port.number.is_none() && s.port.name.is_none() => {
                    Err(format!("{at}.service.port: a number or a name is required"))
                }
                Some(_) => Ok(()),
            }
        };
        if let Some(b) = &self.default_backend {
            check_backend(b, "spec.defaultBackend")?;
        }
        for (ri, r) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{ri}]");
            if let Some(h) = &r.host {
                check_hostname(h).map_err(|e| format!("{at}.host: {e}"))?;
            }
            for (pi, p) in r.http.iter().flat_map(|h| h.paths.iter()).enumerate() {
                let at = format!("{at}.http.paths[{pi}]");
                match p.path_type.as_str() {
                    "Exact" | "Prefix" | "ImplementationSpecific" => {}
                    t => {
                        return Err(format!(
                            "{at}.pathType: {t} is not Exact, Prefix or ImplementationSpecific"
                        ))
                    }
                }
                if let Some(path) = &p.path {
                    if !path.starts_with('/') {
                        return Err(format!("{at}.path: must start with /"));
                    }
                }
                check_backend(&p.backend, &format!("{at}.backend"))?;
            }
        }
        Ok(())
    }

    /// The hosts the Ingress answers for (`*` when a rule has none).
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .rules
            .iter()
            .map(|r| r.host.clone().unwrap_or_else(|| "*".into()))
            .collect();
        if hosts.is_empty() {
            hosts.push("*".into());
        }
        hosts.sort();
        hosts.dedup();
        hosts
    }

    /// The VirtualService that routes as the Ingress does, bound to its gateway
    /// (`gateway`, `namespace/name`), in the Ingress's namespace. Per host, Exact paths
    /// first, then prefixes longest first (the Kubernetes Ingress rule: the longest
    /// matching path wins, Exact over Prefix on a tie). `Prefix` matches whole path
    /// segments; `ImplementationSpecific` is a plain string prefix, or a regular
    /// expression when the path ends in `.*` (as Istio reads it). `port_of` resolves a
    /// named service port to its number.
    pub fn virtual_service(
        &self,
        gateway: &str,
        port_of: &dyn Fn(&str, &str) -> Option<u16>,
    ) -> VirtualServiceSpec {
        let destination = |b: &IngressBackend| -> Option<RouteDestination> {
            let s = b.service.as_ref()?;
            let number = match (s.port.number, &s.port.name) {
                (Some(n), _) => n,
                (None, Some(name)) => port_of(&s.name, name)?,
                (None, None) => return None,
            };
            Some(RouteDestination {
                destination: Destination {
                    host: s.name.clone(),
                    subset: None,
                    port: Some(PortSelector { number }),
                },
                ..RouteDestination::default()
            })
        };
        let mut http = Vec::new();
        for rule in &self.rules {
            let authority = rule.host.as_ref().map(|h| match h.strip_prefix('*') {
                Some(suffix) => StringMatch {
                    regex: Some(format!("[^:]+{}(:[0-9]+)?", regex_escape(suffix))),
                    ..StringMatch::default()
                },
                None => StringMatch {
                    regex: Some(format!("{}(:[0-9]+)?", regex_escape(h))),
                    ..StringMatch::default()
                },
            });
            let mut paths: Vec<&IngressPath> =
                rule.http.iter().flat_map(|h| h.paths.iter()).collect();
            // Exact first, then the longest path; stable for equal ones.
            paths.sort_by_key(|p| {
                (
                    p.path_type != "Exact",
                    std::cmp::Reverse(p.path.as_deref().unwrap_or("/").len()),
                )
            });
            for p in paths {
                let Some(dest) = destination(&p.backend) else {
                    continue;
                };
                let path = p.path.as_deref().unwrap_or("/");
                let uris: Vec<StringMatch> = match p.path_type.as_str() {
                    "Exact" => vec![exact(path)],
                    "Prefix" if path.trim_end_matches('/').is_empty() => vec![prefix("/")],
                    "Prefix" => {
                        let p = path.trim_end_matches('/');
                        vec![exact(p), prefix(&format!("{p}/"))]
                    }
                    _ if path.ends_with(".*") => vec![StringMatch {
                        regex: Some(path.to_string()),
                        ..StringMatch::default()
                    }],
                    _ => vec![prefix(path)],
                };
                http.push(HttpRule {
                    matches: uris
                        .into_iter()
                        .map(|uri| HttpMatch {
                            uri: Some(uri),
                            authority: authority.clone(),
                            ..HttpMatch::default()
                        })
                        .collect(),
                    route: vec![dest],
                    ..HttpRule::default()
                });
            }
        }
        if let Some(dest) = self.default_backend.as_ref().and_then(destination) {
            http.push(HttpRule {
                route: vec![dest],
                ..HttpRule::default()
            });
        }
        VirtualServiceSpec {
            hosts: vec!["*".into()],
            gateways: vec![gateway.to_string()],
            http,
            ..VirtualServiceSpec::default()
        }
    }
}

fn exact(p: &str) -> StringMatch {
    StringMatch {
        exact: Some(p.to_string()),
        ..StringMatch::default()
    }
}

fn prefix(p: &str) -> StringMatch {
    StringMatch {
        prefix: Some(p.to_string()),
        ..StringMatch::default()
    }
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$#&-~".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_ranks_prefer_exact_then_longer_wildcards() {
        assert_eq!(host_rank("bookinfo.com", "BookInfo.com"), Some(0));
        assert_eq!(host_rank("bookinfo.com", "a.bookinfo.com"), None);
        let long = host_rank("*.a.example.com", "x.a.example.com").unwrap();
        let short = host_rank("*.example.com", "x.a.example.com").unwrap();
        assert!(0 < long && long < short && short < host_rank("*", "x").unwrap());
        assert_eq!(host_rank("*.example.com", "example.com"), None);
        assert!(hosts_intersect("*.example.com", "foo.example.com"));
        assert!(hosts_intersect("*.example.com", "*.a.example.com"));
        assert!(!hosts_intersect("foo.example.com", "bar.example.com"));
        assert!(hosts_intersect("", "bar.example.com"));
        assert_eq!(request_host("Example.com:8080"), "example.com");
        assert_eq!(request_host("[::1]:80"), "::1");
        assert_eq!(request_host("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn istio_gateway_servers_are_checked() {
        let spec: IstioGatewaySpec = serde_yaml::from_str(
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 443, name: https, protocol: HTTPS}\n  hosts: ['*']\n  tls: {mode: PASSTHROUGH}\n",
        )
        .unwrap();
        let e = spec.validate().unwrap_err();
        assert!(e.contains("spec.servers[0].tls.mode"), "{e}");
        let spec: IstioGatewaySpec = serde_yaml::from_str(
            "selector: {istio: ingressgateway}\nservers:\n- port: {number: 80, name: http, protocol: HTTP}\n  hosts: ['bookinfo/*.example.com', '*']\n  tls: {httpsRedirect: true}\n",
        )
        .unwrap();
        spec.validate().unwrap();
        assert_eq!(
            split_server_host("bookinfo/*.example.com"),
            (Some("bookinfo"), "*.example.com")
        );
        assert!(binds(
            "bookinfo-gateway",
            "default",
            "default/bookinfo-gateway"
        ));
        assert!(binds(
            "default/bookinfo-gateway",
            "other",
            "default/bookinfo-gateway"
        ));
        assert!(!binds(
            "bookinfo-gateway",
            "other",
            "default/bookinfo-gateway"
        ));
    }

    #[test]
    fn an_ingress_becomes_a_virtual_service_in_kubernetes_order() {
        let spec: IngressSpec = serde_yaml::from_str(
            "ingressClassName: istio
rules:
- host: bookinfo.example.com
  http:
    paths:
    - {path: /static, pathType: Prefix, backend: {service: {name: productpage, port: {number: 9080}}}}
    - {path: /productpage, pathType: Exact, backend: {service: {name: productpage, port: {name: http}}}}
    - {path: /api/v1/products, pathType: Prefix, backend: {service: {name: productpage, port: {number: 9080}}}}
defaultBackend: {service: {name: fallback, port: {number: 80}}}
",
        )
        .unwrap();
        spec.validate().unwrap();
        assert!(spec.is_istio(&BTreeMap::new()));
        let vs = spec.virtual_service("default/bi.ingress", &|svc, name| {
            (svc == "productpage" && name == "http").then_some(9080)
        });
        assert_eq!(vs.gateways, ["default/bi.ingress"]);
        let firsts: Vec<String> = vs
            .http
            .iter()
            .map(|r| {
                r.matches
                    .first()
                    .and_then(|m| m.uri.as_ref())
                    .map(|u| format!("{:?}{:?}", u.exact, u.prefix))
                    .unwrap_or_default()
            })
            .collect();
        assert_eq!(
            firsts,
            [
                "Some(\"/productpage\")None",
                "Some(\"/api/v1/products\")None",
                "Some(\"/static\")None",
                ""
            ]
        );
        // Prefix is by segment: /static and /static/..., not /staticx.
        assert_eq!(
            vs.http[2].matches[1]
                .uri
                .as_ref()
                .unwrap()
                .prefix
                .as_deref(),
            Some("/static/")
        );
        assert_eq!(vs.http[3].route[0].destination.host, "fallback");
        vs.validate().unwrap();
        let bad: IngressSpec = serde_yaml::from_str(
            "rules: [{http: {paths: [{path: /x, pathType: Regex, backend: {service: {name: a, port: {number: 1}}}}]}}]",
        )
        .unwrap();
        assert!(bad.validate().unwrap_err().contains("pathType"));
    }
}
