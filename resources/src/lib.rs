//! The subset of Kubernetes resources the control plane reads, from the multi-document YAML
//! files one would `kubectl apply`. Fields the translation does not use are ignored; fields it
//! uses are typed, so a bad value is reported with the file, the resource and the field.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

mod dir;
pub mod kinds;
pub mod labels;
mod mesh;

pub use dir::ResourceDir;
pub use labels::is_ambient;
pub use mesh::MeshSettings;

pub use l7::authz::{
    parse_cidr, parse_port, AuthorizationPolicySpec, Operation, Pattern, PolicyAction, PolicyRule,
    RuleCondition, RuleFrom, RuleTo, Source, TargetRef, WorkloadSelector, IP_KEYS, PORT_KEYS,
};

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

/// A node: its labels give the locality of the pods on it
/// (`topology.kubernetes.io/region`, `topology.kubernetes.io/zone`,
/// `topology.istio.io/subzone`).
#[derive(Debug, Clone, Deserialize)]
pub struct Node {
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
    #[serde(default)]
    pub status: ServiceStatus,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    #[serde(default)]
    pub load_balancer: LoadBalancerStatus,
}

/// A LoadBalancer Service's external addresses (a gateway's address in its status).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerStatus {
    #[serde(default)]
    pub ingress: Vec<LoadBalancerIngress>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LoadBalancerIngress {
    #[serde(default)]
    pub ip: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
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

/// `security.istio.io/v1` AuthorizationPolicy.
#[derive(Debug, Clone, Deserialize)]
pub struct AuthorizationPolicy {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: AuthorizationPolicySpec,
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
/// waypoint (docs/WIRE.md §7.1).
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
    pub listeners: Vec<l7::gateway::Listener>,
}

/// The class of waypoint Gateways.
pub const WAYPOINT_CLASS: &str = "istio-waypoint";

impl Gateway {
    pub fn is_waypoint(&self) -> bool {
        self.spec.gateway_class_name == WAYPOINT_CLASS
    }

    /// An ingress gateway: class `istio` (docs/GATEWAY.md).
    pub fn is_ingress(&self) -> bool {
        self.spec.gateway_class_name == l7::gateway::GATEWAY_CLASS
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
        if self.is_ingress() {
            let mut names = std::collections::BTreeSet::new();
            for (i, l) in self.spec.listeners.iter().enumerate() {
                l.validate(&format!("spec.listeners[{i}]"))?;
                if !names.insert(&l.name) {
                    return Err(format!(
                        "spec.listeners[{i}].name: {:?} is used twice",
                        l.name
                    ));
                }
            }
        }
        if self.is_waypoint() && self.metadata.name == "none" {
            return Err(
                "metadata.name: \"none\" is reserved (istio.io/use-waypoint: none opts out)".into(),
            );
        }
        Ok(())
    }
}

/// An Istio `Gateway` (networking.istio.io): servers on the pods its selector picks.
#[derive(Debug, Clone, Deserialize)]
pub struct IstioGateway {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::gateway::IstioGatewaySpec,
}

/// A Kubernetes `Ingress` (networking.k8s.io/v1).
#[derive(Debug, Clone, Deserialize)]
pub struct Ingress {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::gateway::IngressSpec,
}

/// A `Secret`: what gateways read from one is a `kubernetes.io/tls` pair (`tls.crt`,
/// `tls.key`, base64 in `data` or plain in `stringData`).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    pub metadata: ObjectMeta,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secret {
    /// Never the data.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("metadata", &self.metadata)
            .field("type", &self.kind)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// One entry, decoded: `stringData` first, then base64 `data`.
    pub fn value(&self, key: &str) -> Option<String> {
        if let Some(v) = self.string_data.get(key) {
            return Some(v.clone());
        }
        let bytes = l7::istio::base64_decode(self.data.get(key)?)?;
        String::from_utf8(bytes).ok()
    }

    /// The certificate chain and key of a TLS Secret; `Err` says what is missing.
    pub fn tls_pair(&self) -> Result<(String, String), String> {
        let chain = self
            .value("tls.crt")
            .filter(|v| v.contains("-----BEGIN"))
            .ok_or("no PEM tls.crt")?;
        let key = self
            .value("tls.key")
            .filter(|v| v.contains("-----BEGIN"))
            .ok_or("no PEM tls.key")?;
        Ok((chain, key))
    }
}

/// An Istio `ServiceEntry` (networking.istio.io): hosts outside (or inside) the mesh
/// registered as services (docs/GATEWAY.md, "Egress").
#[derive(Debug, Clone, Deserialize)]
pub struct ServiceEntry {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: ServiceEntrySpec,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntrySpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub ports: Vec<ServiceEntryPort>,
    /// `MESH_EXTERNAL` (the default) or `MESH_INTERNAL`.
    #[serde(default)]
    pub location: Option<String>,
    /// `NONE` (the default), `STATIC`, `DNS` or `DNS_ROUND_ROBIN`.
    #[serde(default)]
    pub resolution: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<WorkloadEntrySpec>,
    #[serde(default)]
    pub workload_selector: Option<LabelSelectorMap>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServiceEntryPort {
    pub number: u16,
    #[serde(default)]
    pub protocol: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub target_port: Option<u16>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkloadEntrySpec {
    #[serde(default)]
    pub address: Option<String>,
    /// Port name → the endpoint's port.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub network: Option<String>,
    #[serde(default)]
    pub locality: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub service_account: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct LabelSelectorMap {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl ServiceEntrySpec {
    pub fn resolution(&self) -> &str {
        self.resolution.as_deref().unwrap_or("NONE")
    }

    /// Checks what the translation relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Err("spec.hosts: at least one host is required".into());
        }
        for (i, h) in self.hosts.iter().enumerate() {
            l7::gateway::check_hostname(h).map_err(|e| format!("spec.hosts[{i}]: {e}"))?;
        }
        for (i, a) in self.addresses.iter().enumerate() {
            let ip = a.split_once('/').map_or(a.as_str(), |(ip, _)| ip);
            if ip.parse::<std::net::IpAddr>().is_err() {
                return Err(format!("spec.addresses[{i}]: {a:?} is not an IP or CIDR"));
            }
        }
        if self.ports.is_empty() {
            return Err("spec.ports: at least one port is required".into());
        }
        match self.resolution() {
            "NONE" | "STATIC" | "DNS" | "DNS_ROUND_ROBIN" => {}
            r => {
                return Err(format!(
                    "spec.resolution: {r} is not NONE, STATIC, DNS or DNS_ROUND_ROBIN"
                ))
            }
        }
        match self.location.as_deref() {
            None | Some("MESH_EXTERNAL" | "MESH_INTERNAL") => {}
            Some(l) => {
                return Err(format!(
                    "spec.location: {l} is not MESH_EXTERNAL or MESH_INTERNAL"
                ))
            }
        }
        if self.workload_selector.is_some() && !self.endpoints.is_empty() {
            return Err("spec.workloadSelector: not with spec.endpoints".into());
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            let Some(a) = &e.address else {
                return Err(format!("spec.endpoints[{i}].address: required"));
            };
            let dns = matches!(self.resolution(), "DNS" | "DNS_ROUND_ROBIN");
            if a.parse::<std::net::IpAddr>().is_err() && !(dns && l7::istio::dns_name(a)) {
                return Err(format!(
                    "spec.endpoints[{i}].address: {a:?} is not an IP{}",
                    if dns {
                        " or a DNS name"
                    } else {
                        " (names only with resolution DNS)"
                    }
                ));
            }
            for name in e.ports.keys() {
                if !self.ports.iter().any(|p| p.name.as_deref() == Some(name)) {
                    return Err(format!(
                        "spec.endpoints[{i}].ports: {name:?} names no port of spec.ports"
                    ));
                }
            }
        }
        if self.resolution() == "NONE"
            && self.addresses.iter().all(|a| a.contains('/'))
            && self.workload_selector.is_none()
        {
            return Err(
                "spec.addresses: resolution NONE needs at least one single address (the traffic goes to it as addressed)"
                    .into(),
            );
        }
        if self.resolution() == "STATIC"
            && self.endpoints.is_empty()
            && self.workload_selector.is_none()
        {
            return Err(
                "spec.endpoints: resolution STATIC needs endpoints or a workloadSelector".into(),
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

/// An Istio `RequestAuthentication` (security.istio.io); the spec is l7's.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestAuthentication {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::authn::RequestAuthenticationSpec,
}

/// A Gateway API `GRPCRoute`; served as the HTTPRoute it is equivalent to (`l7::grpcroute`).
#[derive(Debug, Clone, Deserialize)]
pub struct GrpcRoute {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::grpcroute::GrpcRouteSpec,
}

impl GrpcRoute {
    /// The HTTPRoute it is served as (same name and namespace).
    pub fn as_http(&self) -> HttpRoute {
        HttpRoute {
            metadata: self.metadata.clone(),
            spec: self.spec.to_http(),
        }
    }
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

/// A ConfigMap: only Istio's mesh config (`istio` in the root namespace, key `mesh`) is kept.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigMap {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
}

/// An Istio `Telemetry` (telemetry.istio.io); its tracing part is read
/// (docs/OBSERVABILITY.md).
#[derive(Debug, Clone, Deserialize)]
pub struct Telemetry {
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: l7::telemetry::TelemetrySpec,
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
    pub nodes: Vec<Node>,
    pub gateways: Vec<Gateway>,
    pub istio_gateways: Vec<IstioGateway>,
    pub ingresses: Vec<Ingress>,
    pub secrets: Vec<Secret>,
    pub service_entries: Vec<ServiceEntry>,
    pub http_routes: Vec<HttpRoute>,
    pub grpc_routes: Vec<GrpcRoute>,
    pub request_authentications: Vec<RequestAuthentication>,
    pub virtual_services: Vec<VirtualService>,
    pub destination_rules: Vec<DestinationRule>,
    /// ConfigMaps named `istio` (Istio's mesh config).
    pub mesh_configs: Vec<ConfigMap>,
    pub telemetries: Vec<Telemetry>,
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
        self.nodes.extend(other.nodes);
        self.pods.extend(other.pods);
        self.services.extend(other.services);
        self.service_accounts.extend(other.service_accounts);
        self.authorization_policies
            .extend(other.authorization_policies);
        self.peer_authentications.extend(other.peer_authentications);
        self.gateways.extend(other.gateways);
        self.istio_gateways.extend(other.istio_gateways);
        self.ingresses.extend(other.ingresses);
        self.secrets.extend(other.secrets);
        self.service_entries.extend(other.service_entries);
        self.http_routes.extend(other.http_routes);
        self.grpc_routes.extend(other.grpc_routes);
        self.request_authentications
            .extend(other.request_authentications);
        self.virtual_services.extend(other.virtual_services);
        self.destination_rules.extend(other.destination_rules);
        self.mesh_configs.extend(other.mesh_configs);
        self.telemetries.extend(other.telemetries);
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
            self.add_value(file, value)?;
        }
        Ok(())
    }

    /// Adds one resource, from a file (`origin` is its name) or the API server (`origin`
    /// names the source). The same checks either way.
    pub fn add_value(&mut self, origin: &str, value: serde_yaml::Value) -> Result<(), LoadError> {
        let file = origin;
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
            "Node" => self.nodes.push(typed(value).map_err(bad)?),
            "Pod" => self.pods.push(typed(value).map_err(bad)?),
            "Service" => self.services.push(typed(value).map_err(bad)?),
            "ServiceAccount" => self.service_accounts.push(typed(value).map_err(bad)?),
            "AuthorizationPolicy" => {
                let p: AuthorizationPolicy = typed(value).map_err(bad)?;
                p.validate().map_err(bad)?;
                self.authorization_policies.push(p)
            }
            "RequestAuthentication" => {
                let r: RequestAuthentication = typed(value).map_err(bad)?;
                r.spec.validate().map_err(bad)?;
                self.request_authentications.push(r)
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
            "Gateway" if is_istio_networking(&value) => {
                let g: IstioGateway = typed(value).map_err(bad)?;
                g.spec.validate().map_err(bad)?;
                self.istio_gateways.push(g)
            }
            "Ingress"
                if value
                    .get("apiVersion")
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.starts_with("networking.k8s.io/")) =>
            {
                let i: Ingress = typed(value).map_err(bad)?;
                i.spec.validate().map_err(bad)?;
                self.ingresses.push(i)
            }
            "Secret" => self.secrets.push(typed(value).map_err(bad)?),
            "ServiceEntry" if is_istio_networking(&value) => {
                let e: ServiceEntry = typed(value).map_err(bad)?;
                e.spec.validate().map_err(bad)?;
                self.service_entries.push(e)
            }
            "GRPCRoute"
                if value
                    .get("apiVersion")
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.starts_with("gateway.networking.k8s.io/")) =>
            {
                let r: GrpcRoute = typed(value).map_err(bad)?;
                r.spec.validate().map_err(bad)?;
                self.grpc_routes.push(r)
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
            // Only Istio's mesh config is of use; other ConfigMaps are read and dropped.
            "ConfigMap" if name != "istio" => {}
            "ConfigMap" => {
                let c: ConfigMap = typed(value).map_err(bad)?;
                if let Some(text) = c.data.get("mesh") {
                    l7::telemetry::parse_mesh_config(text).map_err(bad)?;
                }
                self.mesh_configs.push(c)
            }
            "Telemetry"
                if value
                    .get("apiVersion")
                    .and_then(|v| v.as_str())
                    .is_some_and(|v| v.starts_with("telemetry.istio.io/")) =>
            {
                let t: Telemetry = typed(value).map_err(bad)?;
                t.spec.validate().map_err(bad)?;
                self.telemetries.push(t)
            }
            "" => return Err(bad("no kind".into())),
            other => *self.ignored.entry(other.to_string()).or_default() += 1,
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

impl AuthorizationPolicy {
    /// Checks the values the enforcers parse, so a bad one is reported with its field path
    /// when the file is read, not silently dropped later.
    pub fn validate(&self) -> Result<(), String> {
        self.spec.validate()
    }
}
