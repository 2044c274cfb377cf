//! L4 authorization (docs/WIRE.md §3.6–§3.7): the policy model, strict conversion from
//! `istio.security.Authorization`, and evaluation. Pure: data in, decision out.
//!
//! A policy's rules are OR-ed; a rule's clauses are AND-ed; a clause's matches are OR-ed.
//! Within a match, each kind that is present must match (values of one kind OR-ed) and no
//! `not_*` value may match. Order: any matching DENY denies; with no ALLOW policy the
//! connection is allowed; else some ALLOW must match. Dry-run policies are only reported.

use std::net::IpAddr;

use identity::Identity;
use xds::security as pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Scope {
    Global,
    Namespace,
    WorkloadSelector,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Action {
    Allow,
    Deny,
}

/// Written as a map with one key, as in the proto: `{exact: x}`, `{prefix: x}`, `{suffix: x}`,
/// `{presence: {}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", try_from = "StringMatchRepr")]
pub enum StringMatch {
    Exact(String),
    Prefix(String),
    Suffix(String),
    /// Any non-empty value.
    Presence,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StringMatchRepr {
    exact: Option<String>,
    prefix: Option<String>,
    suffix: Option<String>,
    presence: Option<serde::de::IgnoredAny>,
}

impl TryFrom<StringMatchRepr> for StringMatch {
    type Error = &'static str;

    fn try_from(r: StringMatchRepr) -> Result<Self, Self::Error> {
        match (r.exact, r.prefix, r.suffix, r.presence) {
            (Some(s), None, None, None) => Ok(StringMatch::Exact(s)),
            (None, Some(s), None, None) => Ok(StringMatch::Prefix(s)),
            (None, None, Some(s), None) => Ok(StringMatch::Suffix(s)),
            (None, None, None, Some(_)) => Ok(StringMatch::Presence),
            _ => Err("a string match needs exactly one of exact, prefix, suffix, presence"),
        }
    }
}

impl StringMatch {
    fn matches(&self, v: &str) -> bool {
        match self {
            StringMatch::Exact(s) => v == s,
            StringMatch::Prefix(s) => v.starts_with(s.as_str()),
            StringMatch::Suffix(s) => v.ends_with(s.as_str()),
            StringMatch::Presence => !v.is_empty(),
        }
    }
}

/// An address prefix; written `10.0.0.0/16` (a bare address means a single host).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(try_from = "String")]
pub struct Cidr {
    pub addr: IpAddr,
    pub len: u8,
}

impl TryFrom<String> for Cidr {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((&s, ""));
        let addr: IpAddr = a.parse().map_err(|e| format!("{s:?}: {e}"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let len = if l.is_empty() {
            max
        } else {
            l.parse().map_err(|_| format!("{s:?}: bad prefix length"))?
        };
        if len > max {
            return Err(format!("{s:?}: prefix length above {max}"));
        }
        Ok(Cidr { addr, len })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr.to_canonical(), ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) if self.len <= 32 => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) if self.len <= 128 => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Match {
    pub namespaces: Vec<StringMatch>,
    pub not_namespaces: Vec<StringMatch>,
    pub service_accounts: Vec<(String, String)>,
    pub not_service_accounts: Vec<(String, String)>,
    pub principals: Vec<StringMatch>,
    pub not_principals: Vec<StringMatch>,
    pub source_ips: Vec<Cidr>,
    pub not_source_ips: Vec<Cidr>,
    pub destination_ips: Vec<Cidr>,
    pub not_destination_ips: Vec<Cidr>,
    pub destination_ports: Vec<u16>,
    pub not_destination_ports: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Policy {
    pub name: String,
    pub namespace: String,
    pub scope: Scope,
    pub action: Action,
    /// rules (OR) → clauses (AND) → matches (OR).
    #[serde(default)]
    pub rules: Vec<Vec<Vec<Match>>>,
    #[serde(default)]
    pub dry_run: bool,
}

impl Policy {
    /// `namespace/name`, the resource name and the name workloads refer to.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What is known of a connection when it is checked.
#[derive(Debug, Clone)]
pub struct Conn {
    /// The mTLS peer identity; `None` for plaintext.
    pub src_identity: Option<Identity>,
    pub src_ip: IpAddr,
    pub dst_ip: IpAddr,
    /// The resolved target port (not 15008, not the service port).
    pub dst_port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// Denied; the policy responsible, if one matched (else no ALLOW policy matched).
    Deny(Option<String>),
}

/// A `kind` matches when it is empty or any of its values matches.
fn any_or_empty<T>(values: &[T], f: impl Fn(&T) -> bool) -> bool {
    values.is_empty() || values.iter().any(f)
}

fn none<T>(values: &[T], f: impl Fn(&T) -> bool) -> bool {
    !values.iter().any(f)
}

impl Match {
    fn matches(&self, c: &Conn) -> bool {
        let id = c.src_identity.as_ref();
        // Identity-based kinds: no identity matches no positive value, and no negative one.
        let principal = id.map(Identity::principal);
        let pr = |m: &StringMatch| principal.as_deref().is_some_and(|p| m.matches(p));
        let ns = |m: &StringMatch| id.is_some_and(|i| m.matches(&i.namespace));
        let sa = |(n, s): &(String, String)| {
            id.is_some_and(|i| &i.namespace == n && &i.service_account == s)
        };
        any_or_empty(&self.principals, pr)
            && none(&self.not_principals, pr)
            && any_or_empty(&self.namespaces, ns)
            && none(&self.not_namespaces, ns)
            && any_or_empty(&self.service_accounts, sa)
            && none(&self.not_service_accounts, sa)
            && any_or_empty(&self.source_ips, |n| n.contains(c.src_ip))
            && none(&self.not_source_ips, |n| n.contains(c.src_ip))
            && any_or_empty(&self.destination_ips, |n| n.contains(c.dst_ip))
            && none(&self.not_destination_ips, |n| n.contains(c.dst_ip))
            && any_or_empty(&self.destination_ports, |p| *p == c.dst_port)
            && none(&self.not_destination_ports, |p| *p == c.dst_port)
    }
}

impl Policy {
    /// Whether any rule matches. A policy with no rules never matches.
    pub fn matches(&self, c: &Conn) -> bool {
        self.rules.iter().any(|clauses| {
            clauses
                .iter()
                .all(|matches| matches.iter().any(|m| m.matches(c)))
        })
    }
}

/// Evaluates the policies that apply to the destination (the caller selects them by scope).
pub fn evaluate<'a>(policies: impl IntoIterator<Item = &'a Policy>, c: &Conn) -> Decision {
    let mut allows = Vec::new();
    for p in policies {
        if p.dry_run {
            tracing::info!(policy = %p.key(), would_match = p.matches(c), action = ?p.action, "dry-run policy");
            continue;
        }
        match p.action {
            Action::Deny if p.matches(c) => return Decision::Deny(Some(p.key())),
            Action::Deny => {}
            Action::Allow => allows.push(p),
        }
    }
    if allows.is_empty() || allows.iter().any(|p| p.matches(c)) {
        Decision::Allow
    } else {
        Decision::Deny(None)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("authorization {policy}: {field}: {reason}")]
pub struct PolicyError {
    pub policy: String,
    pub field: String,
    pub reason: String,
}

/// Strict conversion: an unknown enum, a bad address or prefix, or a port out of range fails
/// this policy only.
pub fn convert(a: pb::Authorization) -> Result<Policy, PolicyError> {
    let key = format!("{}/{}", a.namespace, a.name);
    let err = |field: &str, reason: String| PolicyError {
        policy: key.clone(),
        field: field.into(),
        reason,
    };
    let scope = match pb::Scope::try_from(a.scope)
        .map_err(|_| err("scope", format!("unknown value {}", a.scope)))?
    {
        pb::Scope::Global => Scope::Global,
        pb::Scope::Namespace => Scope::Namespace,
        pb::Scope::WorkloadSelector => Scope::WorkloadSelector,
    };
    let action = match pb::Action::try_from(a.action)
        .map_err(|_| err("action", format!("unknown value {}", a.action)))?
    {
        pb::Action::Allow => Action::Allow,
        pb::Action::Deny => Action::Deny,
    };
    let strings = |field: &str, v: &[pb::StringMatch]| -> Result<Vec<StringMatch>, PolicyError> {
        v.iter()
            .map(|m| match &m.match_type {
                Some(pb::string_match::MatchType::Exact(s)) => Ok(StringMatch::Exact(s.clone())),
                Some(pb::string_match::MatchType::Prefix(s)) => Ok(StringMatch::Prefix(s.clone())),
                Some(pb::string_match::MatchType::Suffix(s)) => Ok(StringMatch::Suffix(s.clone())),
                Some(pb::string_match::MatchType::Presence(_)) => Ok(StringMatch::Presence),
                None => Err(err(field, "empty string match".into())),
            })
            .collect()
    };
    let cidrs = |field: &str, v: &[pb::Address]| -> Result<Vec<Cidr>, PolicyError> {
        v.iter()
            .map(|a| {
                let addr = match a.address.len() {
                    4 => IpAddr::from(
                        <[u8; 4]>::try_from(a.address.as_slice()).expect("length checked"),
                    ),
                    16 => IpAddr::from(
                        <[u8; 16]>::try_from(a.address.as_slice()).expect("length checked"),
                    ),
                    n => return Err(err(field, format!("{n}-byte address"))),
                };
                let max = if addr.is_ipv4() { 32 } else { 128 };
                let len = u8::try_from(a.length)
                    .ok()
                    .filter(|l| *l <= max)
                    .ok_or_else(|| err(field, format!("prefix length {}", a.length)))?;
                Ok(Cidr { addr, len })
            })
            .collect()
    };
    let ports = |field: &str, v: &[u32]| -> Result<Vec<u16>, PolicyError> {
        v.iter()
            .map(|p| u16::try_from(*p).map_err(|_| err(field, format!("port {p}"))))
            .collect()
    };
    let sas = |v: &[pb::ServiceAccountMatch]| {
        v.iter()
            .map(|s| (s.namespace.clone(), s.service_account.clone()))
            .collect()
    };
    let mut rules = Vec::new();
    for r in &a.rules {
        let mut clauses = Vec::new();
        for c in &r.clauses {
            let mut matches = Vec::new();
            for m in &c.matches {
                matches.push(Match {
                    namespaces: strings("namespaces", &m.namespaces)?,
                    not_namespaces: strings("not_namespaces", &m.not_namespaces)?,
                    service_accounts: sas(&m.service_accounts),
                    not_service_accounts: sas(&m.not_service_accounts),
                    principals: strings("principals", &m.principals)?,
                    not_principals: strings("not_principals", &m.not_principals)?,
                    source_ips: cidrs("source_ips", &m.source_ips)?,
                    not_source_ips: cidrs("not_source_ips", &m.not_source_ips)?,
                    destination_ips: cidrs("destination_ips", &m.destination_ips)?,
                    not_destination_ips: cidrs("not_destination_ips", &m.not_destination_ips)?,
                    destination_ports: ports("destination_ports", &m.destination_ports)?,
                    not_destination_ports: ports(
                        "not_destination_ports",
                        &m.not_destination_ports,
                    )?,
                });
            }
            clauses.push(matches);
        }
        rules.push(clauses);
    }
    Ok(Policy {
        name: a.name,
        namespace: a.namespace,
        scope,
        action,
        rules,
        dry_run: a.dry_run,
    })
}

#[cfg(test)]
mod tests;
