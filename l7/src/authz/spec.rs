//! The `AuthorizationPolicy` spec as written (security.istio.io/v1) and its validation, each
//! error naming the field; shared with the control plane.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::*;

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
pub(super) fn has_values(other: &BTreeMap<String, serde_json::Value>) -> bool {
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
pub(super) const STRING_KEYS: &[&str] = &[
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
pub(super) fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
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

pub(super) type ValueCheck = fn(&str) -> Result<(), String>;

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
