//! Istio `AuthorizationPolicy` (security.istio.io/v1): the spec, shared with the control
//! plane (which turns selector and namespace policies into ztunnel's L4 policies), and its
//! evaluation at a waypoint (docs/WIRE.md §8): the policies attached by `targetRefs`,
//! judged CUSTOM, then DENY, then ALLOW (AP-07), on every source, operation and condition
//! field.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

impl WorkloadSelector {
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<PolicyAction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Provider>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
}

/// What a `targetRefs` entry names (AP-02).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRef {
    #[serde(default)]
    pub group: String,
    pub kind: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    #[serde(default)]
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PolicyRule {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<RuleFrom>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<RuleTo>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub when: Vec<RuleCondition>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

/// A rule's source. Fields this version does not know are kept (`other`) so that both
/// enforcers can treat them as conditions they cannot check, which fails closed.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_request_principals: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_service_accounts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_remote_ip_blocks: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trust_domains: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_trust_domains: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Source {
    /// Whether it sets a field ztunnel cannot check (request principals, remote IPs, trust
    /// domains, or one this version does not know).
    pub fn beyond_l4(&self) -> bool {
        !(self.request_principals.is_empty()
            && self.not_request_principals.is_empty()
            && self.remote_ip_blocks.is_empty()
            && self.not_remote_ip_blocks.is_empty()
            && self.trust_domains.is_empty()
            && self.not_trust_domains.is_empty())
            || has_values(&self.other)
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_hosts: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_ports: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

impl Operation {
    /// Whether it sets an HTTP field (hosts, methods, paths) or one this version does not
    /// know: ztunnel cannot check those.
    pub fn beyond_l4(&self) -> bool {
        !(self.hosts.is_empty()
            && self.not_hosts.is_empty()
            && self.methods.is_empty()
            && self.not_methods.is_empty()
            && self.paths.is_empty()
            && self.not_paths.is_empty())
            || has_values(&self.other)
    }
}

/// Whether any of the fields kept aside holds a value (an empty list constrains nothing).
fn has_values(other: &BTreeMap<String, serde_json::Value>) -> bool {
    other.values().any(|v| match v {
        serde_json::Value::Null => false,
        serde_json::Value::Array(a) => !a.is_empty(),
        _ => true,
    })
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCondition {
    pub key: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_values: Vec<String>,
}

/// `when` keys whose values are IPs, and whose values are ports.
pub const IP_KEYS: &[&str] = &["source.ip", "remote.ip", "destination.ip"];
pub const PORT_KEYS: &[&str] = &["destination.port"];
/// The other `when` keys (AP-22..31); `request.headers[...]` and `request.auth.claims[...]`
/// take a name in brackets.
const STRING_KEYS: &[&str] = &[
    "source.namespace",
    "source.principal",
    "source.serviceAccount",
    "source.trustDomain",
    "request.auth.principal",
    "request.auth.audiences",
    "request.auth.presenter",
    "connection.sni",
];

/// Whether `key` is a `when` key Istio defines; the Envoy-specific `experimental.*` keys
/// are not taken.
pub fn known_key(key: &str) -> bool {
    IP_KEYS.contains(&key)
        || PORT_KEYS.contains(&key)
        || STRING_KEYS.contains(&key)
        || bracketed(key, "request.headers").is_some_and(|n| !n.is_empty())
        || bracketed(key, "request.auth.claims").is_some_and(|n| !n.is_empty())
}

/// `name` of `prefix[name]`.
fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
}

/// A principal, namespace or similar pattern: `*` (present), `prefix*`, `*suffix` or exact.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pattern {
    Presence,
    Prefix(String),
    Suffix(String),
    Exact(String),
}

impl Pattern {
    pub fn parse(s: &str) -> Pattern {
        if s == "*" {
            Pattern::Presence
        } else if let Some(p) = s.strip_suffix('*') {
            Pattern::Prefix(p.to_string())
        } else if let Some(p) = s.strip_prefix('*') {
            Pattern::Suffix(p.to_string())
        } else {
            Pattern::Exact(s.to_string())
        }
    }

    pub fn matches(&self, v: &str) -> bool {
        match self {
            Pattern::Presence => true,
            Pattern::Prefix(p) => v.starts_with(p.as_str()),
            Pattern::Suffix(s) => v.ends_with(s.as_str()),
            Pattern::Exact(e) => v == e,
        }
    }
}

/// An IP or CIDR from `ipBlocks` or a `source.ip`/`destination.ip` condition.
pub fn parse_cidr(s: &str) -> Result<(IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid IP address in {s:?}"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max)
            .ok_or_else(|| format!("invalid prefix length in {s:?}"))?,
    };
    Ok((ip, len))
}

pub fn parse_port(s: &str) -> Result<u16, String> {
    s.parse::<u16>()
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| format!("invalid port {s:?}"))
}

type ValueCheck = fn(&str) -> Result<(), String>;

impl AuthorizationPolicySpec {
    /// Whether it is attached to waypoints (`targetRef(s)`) rather than to workloads.
    pub fn targets(&self) -> impl Iterator<Item = &TargetRef> {
        self.target_ref.iter().chain(&self.target_refs)
    }

    /// Checks what the enforcers parse, so a bad value is reported with its field path when
    /// the resource is read, not silently dropped later.
    pub fn validate(&self) -> Result<(), String> {
        let s = self;
        let targeted = s.targets().next().is_some();
        if s.selector.is_some() && targeted {
            return Err("spec: selector and targetRef(s) are mutually exclusive".into());
        }
        if s.target_ref.is_some() && !s.target_refs.is_empty() {
            return Err("spec: targetRef and targetRefs are mutually exclusive".into());
        }
        if s.target_refs.len() > 16 {
            return Err("spec.targetRefs: at most 16".into());
        }
        for (i, t) in s.targets().enumerate() {
            let field = if s.target_ref.is_some() {
                "spec.targetRef".to_string()
            } else {
                format!("spec.targetRefs[{i}]")
            };
            let group = match t.kind.as_str() {
                "Gateway" | "GatewayClass" => "gateway.networking.k8s.io",
                "Service" => "",
                "ServiceEntry" => "networking.istio.io",
                other => {
                    return Err(format!(
                    "{field}.kind: {other:?} is not Gateway, GatewayClass, Service or ServiceEntry"
                ))
                }
            };
            let core = t.kind == "Service" && t.group == "core";
            if t.group != group && !core {
                return Err(format!(
                    "{field}.group: {:?} is not {group:?} for kind {}",
                    t.group, t.kind
                ));
            }
            if t.name.is_empty() {
                return Err(format!("{field}.name: empty"));
            }
        }
        match (s.action, &s.provider) {
            (Some(PolicyAction::Custom), None) => {
                return Err("spec.provider: action CUSTOM needs a provider".into())
            }
            (Some(PolicyAction::Custom), Some(p)) if p.name.is_empty() => {
                return Err("spec.provider.name: empty".into())
            }
            (a, Some(_)) if a != Some(PolicyAction::Custom) => {
                return Err("spec.provider: only for action CUSTOM".into())
            }
            _ => {}
        }
        for (i, r) in s.rules.iter().enumerate() {
            for (j, f) in r.from.iter().enumerate() {
                let src = &f.source;
                for (field, list) in [
                    ("ipBlocks", &src.ip_blocks),
                    ("notIpBlocks", &src.not_ip_blocks),
                    ("remoteIpBlocks", &src.remote_ip_blocks),
                    ("notRemoteIpBlocks", &src.not_remote_ip_blocks),
                ] {
                    for (k, v) in list.iter().enumerate() {
                        parse_cidr(v).map_err(|e| {
                            format!("spec.rules[{i}].from[{j}].source.{field}[{k}]: {e}")
                        })?;
                    }
                }
                for (field, list) in [
                    ("serviceAccounts", &src.service_accounts),
                    ("notServiceAccounts", &src.not_service_accounts),
                ] {
                    for (k, v) in list.iter().enumerate() {
                        if v.is_empty() || v.contains('*') || v.split('/').count() > 2 {
                            return Err(format!(
                                "spec.rules[{i}].from[{j}].source.{field}[{k}]: invalid service account {v:?} (want \"sa\" or \"ns/sa\", no wildcards)"
                            ));
                        }
                    }
                }
            }
            for (j, t) in r.to.iter().enumerate() {
                let op = &t.operation;
                for (field, list) in [("ports", &op.ports), ("notPorts", &op.not_ports)] {
                    for (k, v) in list.iter().enumerate() {
                        parse_port(v).map_err(|e| {
                            format!("spec.rules[{i}].to[{j}].operation.{field}[{k}]: {e}")
                        })?;
                    }
                }
                for (field, list) in [("paths", &op.paths), ("notPaths", &op.not_paths)] {
                    for (k, v) in list.iter().enumerate() {
                        PathPattern::parse(v).map_err(|e| {
                            format!("spec.rules[{i}].to[{j}].operation.{field}[{k}]: {e}")
                        })?;
                    }
                }
            }
            for (j, c) in r.when.iter().enumerate() {
                if !known_key(&c.key) {
                    return Err(format!(
                        "spec.rules[{i}].when[{j}].key: unknown attribute {:?}",
                        c.key
                    ));
                }
                if c.values.is_empty() && c.not_values.is_empty() {
                    return Err(format!(
                        "spec.rules[{i}].when[{j}]: values or notValues must be set"
                    ));
                }
                let check: Option<ValueCheck> = if IP_KEYS.contains(&c.key.as_str()) {
                    Some(|v| parse_cidr(v).map(|_| ()))
                } else if PORT_KEYS.contains(&c.key.as_str()) {
                    Some(|v| parse_port(v).map(|_| ()))
                } else {
                    None
                };
                if let Some(check) = check {
                    for (field, list) in [("values", &c.values), ("notValues", &c.not_values)] {
                        for (k, v) in list.iter().enumerate() {
                            check(v).map_err(|e| {
                                format!("spec.rules[{i}].when[{j}].{field}[{k}]: {e}")
                            })?;
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

// ---- Evaluation at a waypoint ----

/// A `paths` entry (AP-21): the `*` forms of [`Pattern`], or a template whose segments may
/// be `{*}` (one segment) or, last, `{**}` (any number of segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Plain(Pattern),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.contains('{') {
            return Ok(PathPattern::Plain(Pattern::parse(s)));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("template {s:?} does not start with /"));
        };
        let segments: Vec<Segment> = rest
            .split('/')
            .map(|seg| match seg {
                "{*}" => Ok(Segment::One),
                "{**}" => Ok(Segment::Rest),
                s if s.contains(['{', '}', '*']) => {
                    Err(format!("{s:?}: a segment is {{*}}, {{**}} or literal text"))
                }
                s => Ok(Segment::Literal(s.to_string())),
            })
            .collect::<Result<_, _>>()?;
        if segments[..segments.len() - 1].contains(&Segment::Rest) {
            return Err(format!("template {s:?}: {{**}} must be the last segment"));
        }
        Ok(PathPattern::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segments {
                    match seg {
                        Segment::Rest => return true,
                        Segment::One => {
                            if parts.next().is_none_or(str::is_empty) {
                                return false;
                            }
                        }
                        Segment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// What a request or connection is judged on.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The peer's identity as `<trust domain>/ns/<ns>/sa/<sa>`; `None` without one.
    pub principal: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None` for a TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

#[derive(Debug, Clone)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    /// Normalized ([`normalize_path`]), without the query.
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
}

impl Attributes<'_> {
    fn peer(&self) -> Option<(&str, &str, &str)> {
        let p = self.principal?;
        let (td, rest) = p.split_once("/ns/")?;
        let (ns, sa) = rest.split_once("/sa/")?;
        Some((td, ns, sa))
    }
}

/// Values and excluded values of one attribute. An empty `any` constrains nothing; an
/// attribute that is absent matches no `any` and is excluded by no `none` (AP-11:
/// `notPrincipals` matches peers without an identity).
#[derive(Debug, Clone, Default)]
struct Field<P> {
    any: Vec<P>,
    none: Vec<P>,
}

impl<P> Field<P> {
    fn of<T, E>(any: &[T], none: &[T], f: impl Fn(&T) -> Result<P, E>) -> Field<P> {
        Field {
            any: any.iter().filter_map(|v| f(v).ok()).collect(),
            none: none.iter().filter_map(|v| f(v).ok()).collect(),
        }
    }

    fn set(&self) -> bool {
        !(self.any.is_empty() && self.none.is_empty())
    }

    fn check<V: Copy>(&self, v: Option<V>, hit: impl Fn(&P, V) -> bool) -> bool {
        (self.any.is_empty() || v.is_some_and(|v| self.any.iter().any(|p| hit(p, v))))
            && !v.is_some_and(|v| self.none.iter().any(|p| hit(p, v)))
    }
}

fn patterns(any: &[String], none: &[String]) -> Field<Pattern> {
    Field::of(any, none, |s| Ok::<_, ()>(Pattern::parse(s)))
}

fn lower_patterns(any: &[String], none: &[String]) -> Field<Pattern> {
    Field::of(any, none, |s| {
        Ok::<_, ()>(Pattern::parse(&s.to_ascii_lowercase()))
    })
}

fn cidrs(any: &[String], none: &[String]) -> Field<(IpAddr, u8)> {
    Field::of(any, none, |s| parse_cidr(s))
}

fn ports(any: &[String], none: &[String]) -> Field<u16> {
    Field::of(any, none, |s| parse_port(s))
}

fn in_cidr((net, len): &(IpAddr, u8), ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(*n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            u128::from(*n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// One checkable condition of a rule.
#[derive(Debug, Clone)]
enum Check {
    Principal(Field<Pattern>),
    Namespace(Field<Pattern>),
    TrustDomain(Field<Pattern>),
    /// (namespace, service account).
    ServiceAccount(Field<(String, String)>),
    SourceIp(Field<(IpAddr, u8)>),
    DestinationIp(Field<(IpAddr, u8)>),
    DestinationPort(Field<u16>),
    /// Never present here: no request authentication, no SNI inside the tunnel.
    Absent(Field<Pattern>, bool),
    Host(Field<Pattern>),
    Method(Field<Pattern>),
    Path(Field<PathPattern>),
    Header(http::HeaderName, Field<Pattern>),
}

impl Check {
    /// Whether the condition holds. An HTTP condition on a TCP connection holds in a DENY
    /// policy and fails in any other: the rule then denies more and allows less (as ztunnel
    /// does with such rules, AP-36/37).
    fn holds(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let peer = a.peer();
        let by_pattern = |p: &Pattern, v: &str| p.matches(v);
        match self {
            Check::Principal(f) => f.check(a.principal, by_pattern),
            Check::Namespace(f) => f.check(peer.map(|p| p.1), by_pattern),
            Check::TrustDomain(f) => f.check(peer.map(|p| p.0), by_pattern),
            Check::ServiceAccount(f) => f.check(peer.map(|p| (p.1, p.2)), |(n, s), (pn, ps)| {
                n == pn && s == ps
            }),
            Check::SourceIp(f) => f.check(Some(a.source_ip), in_cidr),
            Check::DestinationIp(f) => f.check(Some(a.destination_ip), in_cidr),
            Check::DestinationPort(f) => f.check(Some(a.destination_port), |p, v| *p == v),
            Check::Absent(f, l7) => {
                if *l7 && a.http.is_none() {
                    deny
                } else {
                    f.check(None::<&str>, by_pattern)
                }
            }
            // HTTP conditions: on a TCP connection they hold only in a DENY policy.
            Check::Host(f) => a.http.as_ref().map_or(deny, |h| {
                f.check(Some(h.host.to_ascii_lowercase().as_str()), by_pattern)
            }),
            Check::Method(f) => a
                .http
                .as_ref()
                .map_or(deny, |h| f.check(Some(h.method), by_pattern)),
            Check::Header(name, f) => a.http.as_ref().map_or(deny, |h| {
                f.check(header_value(h.headers, name).as_deref(), by_pattern)
            }),
            Check::Path(f) => a
                .http
                .as_ref()
                .map_or(deny, |h| f.check(Some(h.path), |p, v| p.matches(v))),
        }
    }
}

/// A header's value; several values are judged as one, comma-joined, as Envoy does.
fn header_value<'a>(headers: &'a http::HeaderMap, name: &http::HeaderName) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => Some(Cow::Owned(
            [first, second]
                .into_iter()
                .chain(values)
                .collect::<Vec<_>>()
                .join(","),
        )),
    }
}

/// A rule: (any `from`) AND (any `to`) AND (every `when`) (AP-09). Each `from` and `to`
/// entry is the AND of its fields.
#[derive(Debug, Clone, Default)]
struct Rule {
    from: Vec<Vec<Check>>,
    to: Vec<Vec<Check>>,
    when: Vec<Check>,
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let all = |checks: &Vec<Check>| checks.iter().all(|c| c.holds(a, deny));
        (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && all(&self.when)
    }
}

fn push<P>(out: &mut Vec<Check>, f: Field<P>, make: fn(Field<P>) -> Check) {
    if f.set() {
        out.push(make(f));
    }
}

fn source_checks(s: &Source, policy_ns: &str) -> Vec<Check> {
    let mut out = Vec::new();
    push(
        &mut out,
        patterns(&s.principals, &s.not_principals),
        Check::Principal,
    );
    push(
        &mut out,
        patterns(&s.namespaces, &s.not_namespaces),
        Check::Namespace,
    );
    push(
        &mut out,
        patterns(&s.trust_domains, &s.not_trust_domains),
        Check::TrustDomain,
    );
    let sa = |v: &String| {
        let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
        Ok::<_, ()>((ns.to_string(), sa.to_string()))
    };
    push(
        &mut out,
        Field::of(&s.service_accounts, &s.not_service_accounts, sa),
        Check::ServiceAccount,
    );
    push(
        &mut out,
        cidrs(&s.ip_blocks, &s.not_ip_blocks),
        Check::SourceIp,
    );
    // No trusted proxies: the remote address is the connection's source (AP-16).
    push(
        &mut out,
        cidrs(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
        Check::SourceIp,
    );
    let principals = patterns(&s.request_principals, &s.not_request_principals);
    if principals.set() {
        out.push(Check::Absent(principals, true));
    }
    if has_values(&s.other) {
        // A field this version does not know: it never holds.
        out.push(Check::Absent(
            Field {
                any: vec![Pattern::Presence],
                none: vec![],
            },
            false,
        ));
    }
    out
}

fn operation_checks(o: &Operation) -> Vec<Check> {
    let mut out = Vec::new();
    push(
        &mut out,
        lower_patterns(&o.hosts, &o.not_hosts),
        Check::Host,
    );
    push(
        &mut out,
        ports(&o.ports, &o.not_ports),
        Check::DestinationPort,
    );
    push(
        &mut out,
        patterns(&o.methods, &o.not_methods),
        Check::Method,
    );
    push(
        &mut out,
        Field::of(&o.paths, &o.not_paths, |s| PathPattern::parse(s)),
        Check::Path,
    );
    if has_values(&o.other) {
        out.push(Check::Absent(
            Field {
                any: vec![Pattern::Presence],
                none: vec![],
            },
            false,
        ));
    }
    out
}

fn condition_check(c: &RuleCondition) -> Check {
    let (v, n) = (&c.values, &c.not_values);
    match c.key.as_str() {
        "source.ip" | "remote.ip" => Check::SourceIp(cidrs(v, n)),
        "destination.ip" => Check::DestinationIp(cidrs(v, n)),
        "destination.port" => Check::DestinationPort(ports(v, n)),
        "source.namespace" => Check::Namespace(patterns(v, n)),
        "source.principal" => Check::Principal(patterns(v, n)),
        "source.trustDomain" => Check::TrustDomain(patterns(v, n)),
        "source.serviceAccount" => Check::ServiceAccount(Field::of(v, n, |s: &String| {
            s.split_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or(())
        })),
        key => match bracketed(key, "request.headers")
            .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
        {
            Some(name) => Check::Header(name, patterns(v, n)),
            // request.auth.* and connection.sni: never present at this waypoint.
            None => Check::Absent(patterns(v, n), key.starts_with("request.")),
        },
    }
}

/// A policy ready to judge requests.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace.name`, as Envoy names the matched policy.
    pub id: String,
    pub action: PolicyAction,
    pub dry_run: bool,
    /// CUSTOM: the provider named.
    pub provider: Option<String>,
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(
        namespace: &str,
        name: &str,
        spec: &AuthorizationPolicySpec,
        dry_run: bool,
    ) -> Policy {
        Policy {
            id: format!("{namespace}.{name}"),
            action: spec.action.unwrap_or(PolicyAction::Allow),
            dry_run,
            provider: spec.provider.as_ref().map(|p| p.name.clone()),
            rules: spec
                .rules
                .iter()
                .map(|r| Rule {
                    from: r
                        .from
                        .iter()
                        .map(|f| source_checks(&f.source, namespace))
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| operation_checks(&t.operation))
                        .collect(),
                    when: r.when.iter().map(condition_check).collect(),
                })
                .collect(),
        }
    }

    /// Whether any rule matches; a policy without rules matches nothing (AP-03, AP-04).
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let deny = self.action != PolicyAction::Allow;
        self.rules.iter().any(|r| r.matches(a, deny))
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by the ALLOW policy named, or `None` when no ALLOW policy applies.
    Allow(Option<String>),
    /// Denied by the policy named (`None`: ALLOW policies apply and none matched).
    Deny(Option<String>),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Envoy's response code details for a denial: `rbac_access_denied_matched_policy[..]`.
    pub fn details(&self) -> String {
        match self {
            Decision::Allow(_) => "-".into(),
            Decision::Deny(p) => format!(
                "rbac_access_denied_matched_policy[{}]",
                p.as_deref().unwrap_or("none")
            ),
        }
    }
}

/// A request's decision, and what the dry-run and AUDIT policies make of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// What the `istio.io/dry-run` policies alone would decide, when there are any.
    pub shadow: Option<Decision>,
    /// The AUDIT policies that match.
    pub audited: Vec<String>,
}

/// CUSTOM (a provider this waypoint cannot reach: a matching CUSTOM policy denies), then
/// DENY, then ALLOW: allowed when no ALLOW policy applies or one matches (AP-07).
fn decide<'a>(policies: impl Iterator<Item = &'a Policy> + Clone, a: &Attributes<'_>) -> Decision {
    let acting = |action: PolicyAction| policies.clone().filter(move |p| p.action == action);
    if let Some(p) = acting(PolicyAction::Custom).find(|p| p.matches(a)) {
        return Decision::Deny(Some(p.id.clone()));
    }
    if let Some(p) = acting(PolicyAction::Deny).find(|p| p.matches(a)) {
        return Decision::Deny(Some(p.id.clone()));
    }
    let mut allows = acting(PolicyAction::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow(None);
    }
    match allows.find(|p| p.matches(a)) {
        Some(p) => Decision::Allow(Some(p.id.clone())),
        None => Decision::Deny(None),
    }
}

/// Judges `a` by the policies that apply to it.
pub fn evaluate(policies: &[std::sync::Arc<Policy>], a: &Attributes<'_>) -> Verdict {
    let enforced = policies.iter().map(|p| &**p).filter(|p| !p.dry_run);
    let dry = policies.iter().map(|p| &**p).filter(|p| p.dry_run);
    Verdict {
        decision: decide(enforced, a),
        shadow: (dry.clone().next().is_some()).then(|| decide(dry, a)),
        audited: policies
            .iter()
            .filter(|p| p.action == PolicyAction::Audit && p.matches(a))
            .map(|p| p.id.clone())
            .collect(),
    }
}

/// The path as matched and forwarded (docs/WIRE.md §8, AP-21, mesh `pathNormalization`
/// BASE): `\` as `/`, percent-encoded unreserved characters decoded, other escapes in upper
/// case, and `.` and `..` segments removed (RFC 3986 §5.2.4). `path` has no query.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let needs = path.contains(['%', '\\']) || path.split('/').any(|s| s == "." || s == "..");
    if !needs || !path.starts_with(['/', '\\']) {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => decoded.push('/'),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                let c = hex(b[i + 1]) * 16 + hex(b[i + 2]);
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(char::from(c));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b[i + 1].to_ascii_uppercase()));
                    decoded.push(char::from(b[i + 2].to_ascii_uppercase()));
                }
                i += 3;
                continue;
            }
            _ => {
                // The whole character: a lenient client may send raw UTF-8.
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                decoded.push(ch);
                i += ch.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (k, seg) in segments.iter().enumerate() {
        let last = k + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}

#[cfg(test)]
mod tests;
