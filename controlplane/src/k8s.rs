//! The subset of Kubernetes resources the control plane reads, from the multi-document YAML
//! files one would `kubectl apply`. Fields the translation does not use are ignored; fields it
//! uses are typed, so a bad value is reported with the file, the resource and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub uid: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub owner_references: Vec<OwnerReference>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnerReference {
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Namespace {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Pod {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PodSpec,
    #[serde(default)]
    pub status: PodStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    #[serde(default)]
    pub service_account_name: Option<String>,
    #[serde(default)]
    pub node_name: Option<String>,
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub containers: Vec<Container>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub ports: Vec<ContainerPort>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    #[serde(default)]
    pub name: Option<String>,
    pub container_port: u16,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodStatus {
    #[serde(default)]
    pub phase: Option<String>,
    #[serde(default, rename = "podIP")]
    pub pod_ip: Option<String>,
    #[serde(default, rename = "podIPs")]
    pub pod_ips: Vec<PodIp>,
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PodIp {
    pub ip: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Condition {
    #[serde(rename = "type")]
    pub kind: String,
    pub status: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Service {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    pub cluster_ips: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServicePort>,
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    #[serde(default)]
    pub name: Option<String>,
    pub port: u16,
    #[serde(default)]
    pub target_port: Option<IntOrString>,
    #[serde(default)]
    pub app_protocol: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(u16),
    String(String),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ServiceAccount {
    pub metadata: ObjectMeta,
}

#[derive(Debug, Clone, Default, Deserialize)]
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

/// `security.istio.io/v1` AuthorizationPolicy.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub target_ref: Option<serde_yaml::Value>,
    #[serde(default)]
    pub target_refs: Vec<serde_yaml::Value>,
    #[serde(default)]
    pub action: Option<PolicyAction>,
    #[serde(default)]
    pub provider: Option<serde_yaml::Value>,
    #[serde(default)]
    pub rules: Vec<PolicyRule>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum PolicyAction {
    Allow,
    Deny,
    Audit,
    Custom,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct PolicyRule {
    #[serde(default)]
    pub from: Vec<RuleFrom>,
    #[serde(default)]
    pub to: Vec<RuleTo>,
    #[serde(default)]
    pub when: Vec<RuleCondition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuleFrom {
    #[serde(default)]
    pub source: Source,
}

/// A rule's source. Fields this version does not know are kept (`other`) so the translation
/// can treat them as conditions it cannot check, which fails closed, rather than drop them.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    #[serde(default)]
    pub principals: Vec<String>,
    #[serde(default)]
    pub not_principals: Vec<String>,
    #[serde(default)]
    pub namespaces: Vec<String>,
    #[serde(default)]
    pub not_namespaces: Vec<String>,
    #[serde(default)]
    pub service_accounts: Vec<String>,
    #[serde(default)]
    pub not_service_accounts: Vec<String>,
    #[serde(default)]
    pub ip_blocks: Vec<String>,
    #[serde(default)]
    pub not_ip_blocks: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RuleTo {
    #[serde(default)]
    pub operation: Operation,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    #[serde(default)]
    pub ports: Vec<String>,
    #[serde(default)]
    pub not_ports: Vec<String>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleCondition {
    pub key: String,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub not_values: Vec<String>,
}

/// `security.istio.io/v1` PeerAuthentication.
#[derive(Debug, Clone, Deserialize)]
pub struct PeerAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: PeerAuthenticationSpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PeerAuthenticationSpec {
    #[serde(default)]
    pub selector: Option<WorkloadSelector>,
    #[serde(default)]
    pub mtls: Option<Mtls>,
    #[serde(default)]
    pub port_level_mtls: BTreeMap<u16, Mtls>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct Mtls {
    #[serde(default)]
    pub mode: MtlsMode,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum MtlsMode {
    #[default]
    Unset,
    Disable,
    Permissive,
    Strict,
}

/// A Gateway API `Gateway` (gateway.networking.k8s.io). Class `istio-waypoint` makes it a
/// waypoint (istio-wire.md §7.1).
#[derive(Debug, Clone, Deserialize)]
pub struct Gateway {
    pub metadata: ObjectMeta,
    pub spec: GatewaySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<GatewayListener>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct GatewayListener {
    pub name: String,
    pub port: u16,
    pub protocol: String,
}

/// The class of waypoint Gateways.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

impl Gateway {
    pub fn is_waypoint(&self) -> bool {
        self.spec.gateway_class_name == WAYPOINT_CLASS
    }

    pub fn namespace(&self) -> &str {
        self.metadata.namespace.as_deref().unwrap_or("default")
    }

    /// A waypoint needs its `mesh` listener: port 15008, protocol HBONE.
    pub fn validate(&self) -> Result<(), String> {
        if self.is_waypoint()
            && !self
                .spec
                .listeners
                .iter()
                .any(|l| l.port == 15008 && l.protocol == "HBONE")
        {
            return Err(
                "spec.listeners: a waypoint needs a listener with port 15008 and protocol HBONE"
                    .into(),
            );
        }
        if self.is_waypoint() && self.metadata.name == "none" {
            return Err(
                "metadata.name: \"none\" is reserved (istio.io/use-waypoint: none opts out)".into(),
            );
        }
        Ok(())
    }
}

/// A Gateway API `HTTPRoute`; the spec is l7's, validated at load.
#[derive(Debug, Clone, Deserialize)]
pub struct HttpRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::httproute::HttpRouteSpec,
}

/// An Istio `VirtualService`; the spec is l7's, validated at load.
#[derive(Debug, Clone, Deserialize)]
pub struct VirtualService {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::istio::VirtualServiceSpec,
}

/// An Istio `DestinationRule`; the spec is l7's, validated at load.
#[derive(Debug, Clone, Deserialize)]
pub struct DestinationRule {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::istio::DestinationRuleSpec,
}

/// Every resource read from the files, by kind.
#[derive(Debug, Clone, Default)]
pub struct Resources {
    pub namespaces: Vec<Namespace>,
    pub pods: Vec<Pod>,
    pub services: Vec<Service>,
    pub service_accounts: Vec<ServiceAccount>,
    pub authorization_policies: Vec<AuthorizationPolicy>,
    pub peer_authentications: Vec<PeerAuthentication>,
    pub gateways: Vec<Gateway>,
    pub http_routes: Vec<HttpRoute>,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// Kinds read but not (yet) translated, with their count, for `keelson status`.
    pub ignored: BTreeMap<String, usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{file}: {source}")]
    Io {
        file: String,
        source: std::io::Error,
    },
    #[error("{file}: document {doc}: {reason}")]
    Document {
        file: String,
        doc: usize,
        reason: String,
    },
    #[error("{file}: {kind} {name}: {reason}")]
    Resource {
        file: String,
        kind: String,
        name: String,
        reason: String,
    },
}

impl Resources {
    /// Adds everything `other` holds.
    pub fn extend(&mut self, other: Resources) {
        self.namespaces.extend(other.namespaces);
        self.pods.extend(other.pods);
        self.services.extend(other.services);
        self.service_accounts.extend(other.service_accounts);
        self.authorization_policies
            .extend(other.authorization_policies);
        self.peer_authentications.extend(other.peer_authentications);
        self.gateways.extend(other.gateways);
        self.http_routes.extend(other.http_routes);
        self.virtual_services.extend(other.virtual_services);
        self.destination_rules.extend(other.destination_rules);
        for (k, n) in other.ignored {
            *self.ignored.entry(k).or_default() += n;
        }
    }

    /// Adds every document of one YAML file. A bad document fails with its file, kind, name
    /// and the serde path of the bad field; the caller decides whether to keep the rest.
    pub fn add_file(&mut self, path: &Path) -> Result<(), LoadError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
            file: file.clone(),
            source,
        })?;
        self.add_text(&file, &text)
    }

    pub fn add_text(&mut self, file: &str, text: &str) -> Result<(), LoadError> {
        for (doc, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let value = serde_yaml::Value::deserialize(de).map_err(|e| LoadError::Document {
                file: file.to_string(),
                doc: doc + 1,
                reason: e.to_string(),
            })?;
            if value.is_null() {
                continue;
            }
            let kind = value
                .get("kind")
                .and_then(|k| k.as_str())
                .unwrap_or("")
                .to_string();
            let name = value
                .get("metadata")
                .and_then(|m| m.get("name"))
                .and_then(|n| n.as_str())
                .unwrap_or("<unnamed>")
                .to_string();
            let bad = |reason: String| LoadError::Resource {
                file: file.to_string(),
                kind: kind.clone(),
                name: name.clone(),
                reason,
            };
            match kind.as_str() {
                "Namespace" => self.namespaces.push(typed(value).map_err(bad)?),
                "Pod" => self.pods.push(typed(value).map_err(bad)?),
                "Service" => self.services.push(typed(value).map_err(bad)?),
                "ServiceAccount" => self.service_accounts.push(typed(value).map_err(bad)?),
                "AuthorizationPolicy" => {
                    let p: AuthorizationPolicy = typed(value).map_err(bad)?;
                    p.validate().map_err(bad)?;
                    self.authorization_policies.push(p)
                }
                "PeerAuthentication" => self.peer_authentications.push(typed(value).map_err(bad)?),
                "Gateway"
                    if value
                        .get("apiVersion")
                        .and_then(|v| v.as_str())
                        .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/")) =>
                {
                    let g: Gateway = typed(value).map_err(bad)?;
                    g.validate().map_err(bad)?;
                    self.gateways.push(g)
                }
                "HTTPRoute"
                    if value
                        .get("apiVersion")
                        .and_then(|v| v.as_str())
                        .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/")) =>
                {
                    let r: HttpRoute = typed(value).map_err(bad)?;
                    r.spec.validate().map_err(bad)?;
                    self.http_routes.push(r)
                }
                "VirtualService" if is_istio_networking(&value) => {
                    let r: VirtualService = typed(value).map_err(bad)?;
                    r.spec.validate().map_err(bad)?;
                    self.virtual_services.push(r)
                }
                "DestinationRule" if is_istio_networking(&value) => {
                    let r: DestinationRule = typed(value).map_err(bad)?;
                    r.spec.validate().map_err(bad)?;
                    self.destination_rules.push(r)
                }
                "" => return Err(bad("no kind".into())),
                other => *self.ignored.entry(other.to_string()).or_default() += 1,
            }
        }
        Ok(())
    }
}

fn is_istio_networking(v: &serde_yaml::Value) -> bool {
    v.get("apiVersion")
        .and_then(|v| v.as_str())
        .is_some_and(|v| v.starts_with("networking.istio.io/"))
}

/// Deserializes one resource; the error names the path of the bad field (`spec.ports[0].port`).
fn typed<T: serde::de::DeserializeOwned>(v: serde_yaml::Value) -> Result<T, String> {
    serde_path_to_error::deserialize(v).map_err(|e| format!("{}: {}", e.path(), e.inner()))
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
}

/// An IP or CIDR from `ipBlocks` or a `source.ip`/`destination.ip` condition.
pub fn parse_cidr(s: &str) -> Result<(std::net::IpAddr, u8), String> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip
        .parse()
        .map_err(|_| format!("invalid IP or CIDR {s:?}"))?;
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

/// `when` keys whose values are IPs, and whose values are ports.
pub const IP_KEYS: &[&str] = &["source.ip", "destination.ip"];
pub const PORT_KEYS: &[&str] = &["destination.port"];

type ValueCheck = fn(&str) -> Result<(), String>;

impl AuthorizationPolicy {
    /// Checks the values the translation parses, so a bad one is reported with its field path
    /// when the file is read, not silently dropped later.
    pub fn validate(&self) -> Result<(), String> {
        let s = &self.spec;
        if s.selector.is_some() && (s.target_ref.is_some() || !s.target_refs.is_empty()) {
            return Err("spec: selector and targetRef(s) are mutually exclusive".into());
        }
        for (i, r) in s.rules.iter().enumerate() {
            for (j, f) in r.from.iter().enumerate() {
                let src = &f.source;
                for (field, list) in [
                    ("ipBlocks", &src.ip_blocks),
                    ("notIpBlocks", &src.not_ip_blocks),
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
            }
            for (j, c) in r.when.iter().enumerate() {
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
