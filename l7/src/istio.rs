//! Istio `VirtualService` and `DestinationRule` (networking.istio.io/v1), the fields the
//! waypoint applies, with validation that names the failing field (docs/WIRE.md §8).
//!
//! Unknown fields are refused (a typo would otherwise silently change routing); fields of
//! the API that a waypoint does not apply are accepted where Istio's waypoints ignore them
//! too, and refused with a reason where ignoring them would change what traffic does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRule>,
    #[serde(default)]
    pub tcp: Vec<TcpRule>,
    #[serde(default)]
    pub tls: Vec<serde_json::Value>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub delegate: Option<Delegate>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<Retries>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// `delegate` (VS-12): the VirtualService whose rules stand in for this rule.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Delegate {
    pub name: String,
    /// Default: the root VirtualService's namespace.
    #[serde(default)]
    pub namespace: Option<String>,
}

/// Exactly one of the three, or none of them (a presence test, for headers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: Option<DirectBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectBody {
    #[serde(default)]
    pub string: Option<String>,
    /// Base64.
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[serde(default)]
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated: plain origins, `*` for any.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOps>,
    #[serde(default)]
    pub response: Option<HeaderOps>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRule {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Match {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<TrafficPolicy>,
}

/// A DestinationRule's (or a subset's) traffic policy: its sections, and per port sections
/// that replace them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicy {
    #[serde(flatten)]
    pub sections: Sections,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub port_level_settings: Vec<PortTrafficPolicy>,
}

/// `portLevelSettings[]`: sections for one port, each replacing the policy's own (DR-06).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortTrafficPolicy {
    #[serde(default)]
    pub port: Option<PortSelector>,
    #[serde(flatten)]
    pub sections: Sections,
}

/// The sections of a traffic policy, at its top or for a port. `outlierDetection`,
/// `connectionPool`, `loadBalancer` and `tls` are applied (each in part, as their types
/// say); the others are accepted and kept, not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sections {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// `tls` (DR-47..49): how the proxy speaks TLS to endpoints outside the mesh. Towards mesh
/// endpoints it changes nothing: the HBONE tunnel is mutual TLS already.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// `DISABLE`, `SIMPLE`, `MUTUAL` or `ISTIO_MUTUAL`.
    #[serde(default)]
    pub mode: Option<String>,
    /// PEM files, read by the proxy.
    #[serde(default)]
    pub client_certificate: Option<String>,
    #[serde(default)]
    pub private_key: Option<String>,
    #[serde(default)]
    pub ca_certificates: Option<String>,
    #[serde(default)]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    #[serde(default)]
    pub sni: Option<String>,
    #[serde(default)]
    pub insecure_skip_verify: Option<bool>,
    #[serde(default)]
    pub ca_crl: Option<String>,
}

impl ClientTls {
    /// Whether the proxy originates TLS (`SIMPLE`, `MUTUAL`).
    pub fn originates(&self) -> bool {
        matches!(self.mode.as_deref(), Some("SIMPLE" | "MUTUAL"))
    }
}

impl Sections {
    /// Whether a section the waypoint applies is set.
    pub fn applied(&self) -> bool {
        self.outlier_detection.is_some()
            || self.connection_pool.is_some()
            || self.load_balancer.is_some()
            || self.tls.is_some()
    }
}

/// `loadBalancer` (DR-09 … DR-22): `simple` or `consistentHash`, and `localityLbSetting`
/// (`crate::locality`); warm-up is accepted, not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    #[serde(default)]
    pub simple: Option<String>,
    #[serde(default)]
    pub consistent_hash: Option<ConsistentHash>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality_lb_setting: Option<crate::locality::LocalityLbSetting>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConsistentHash {
    #[serde(default)]
    pub http_header_name: Option<String>,
    #[serde(default)]
    pub http_cookie: Option<HashCookie>,
    #[serde(default)]
    pub use_source_ip: Option<bool>,
    #[serde(default)]
    pub http_query_parameter_name: Option<String>,
    /// Accepted, not applied: `ringHash`, `maglev`, `minimumRingSize` (the pick is by
    /// rendezvous hashing, which moves as few keys when endpoints change).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HashCookie {
    pub name: String,
    /// With a `ttl`, a request without the cookie gets one made (DR-14): `Set-Cookie` on its
    /// response, valid for `ttl` (`0s`: for the browser session), for `path`.
    #[serde(default)]
    pub ttl: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
    /// Accepted, not applied: `attributes`.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A hash cookie the waypoint makes for a request without one (DR-14).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieGen {
    /// `Max-Age`; zero for a session cookie (none).
    pub ttl: std::time::Duration,
    pub path: Option<String>,
}

/// How endpoints are picked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted random (also `PASSTHROUGH`, which has no original address at a waypoint).
    Random,
    /// In turn.
    RoundRobin,
    /// The fewer requests in flight of two picked at random (`LEAST_CONN` too).
    LeastRequest,
    /// The same key, the same endpoint; no key: random.
    Hash(HashOn),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    Header(http::HeaderName),
    /// The cookie's name, and how to make one when a request has none (`None`: never).
    Cookie(String, Option<CookieGen>),
    SourceIp,
    Query(String),
}

impl LoadBalancer {
    pub fn balance(&self) -> Balance {
        if let Some(h) = &self.consistent_hash {
            if let Some(name) = h
                .http_header_name
                .as_deref()
                .and_then(|n| http::HeaderName::from_bytes(n.as_bytes()).ok())
            {
                return Balance::Hash(HashOn::Header(name));
            }
            if let Some(c) = &h.http_cookie {
                // Validated: a ttl that does not parse never gets here.
                let generate = c
                    .ttl
                    .as_deref()
                    .and_then(|t| parse_duration(t).ok())
                    .map(|ttl| CookieGen {
                        ttl,
                        path: c.path.clone(),
                    });
                return Balance::Hash(HashOn::Cookie(c.name.clone(), generate));
            }
            if h.use_source_ip == Some(true) {
                return Balance::Hash(HashOn::SourceIp);
            }
            if let Some(q) = &h.http_query_parameter_name {
                return Balance::Hash(HashOn::Query(q.clone()));
            }
        }
        match self.simple.as_deref() {
            Some("ROUND_ROBIN") => Balance::RoundRobin,
            Some("LEAST_REQUEST" | "LEAST_CONN") => Balance::LeastRequest,
            _ => Balance::Random,
        }
    }
}

/// `connectionPool` (DR-25 … DR-38): the circuit breakers of [`ConnectionPool::effective`]
/// are applied; the other fields are accepted, not applied.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConnectionPool {
    #[serde(default)]
    pub tcp: Option<TcpSettings>,
    #[serde(default)]
    pub http: Option<HttpSettings>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpSettings {
    #[serde(default)]
    pub max_connections: Option<i32>,
    /// Accepted, not applied: `connectTimeout`, `tcpKeepalive`, `maxConnectionDuration`,
    /// `idleTimeout`.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpSettings {
    #[serde(default)]
    pub http1_max_pending_requests: Option<i32>,
    #[serde(default)]
    pub http2_max_requests: Option<i32>,
    #[serde(default)]
    pub max_requests_per_connection: Option<i32>,
    /// Accepted, not applied: `maxRetries`, `idleTimeout`, `h2UpgradePolicy`,
    /// `useClientProtocol`, `maxConcurrentStreams`, `http2KeepAlive`.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// A [`ConnectionPool`]'s circuit breakers with their defaults (unset or 0: no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Upstream connections of the cluster: with HTTP/1.1, one per request in flight.
    pub max_connections: u32,
    /// Requests waiting for a connection (or a request slot) before the next overflows.
    pub max_pending: u32,
    /// Requests in flight to the cluster, HTTP/1.1 and HTTP/2 alike.
    pub max_requests: u32,
    /// Requests per upstream connection; 0: unlimited, 1: none kept.
    pub max_requests_per_connection: u32,
}

impl ConnectionPool {
    pub fn effective(&self) -> Limits {
        let limit = |v: Option<i32>| match v {
            Some(n) if n > 0 => n as u32,
            _ => u32::MAX,
        };
        let http = self.http.clone().unwrap_or_default();
        Limits {
            max_connections: limit(self.tcp.as_ref().and_then(|t| t.max_connections)),
            max_pending: limit(http.http1_max_pending_requests),
            max_requests: limit(http.http2_max_requests),
            max_requests_per_connection: http
                .max_requests_per_connection
                .map_or(0, |n| n.max(0) as u32),
        }
    }
}

impl Limits {
    /// Whether any breaker is set.
    pub fn any(&self) -> bool {
        *self
            != Limits {
                max_connections: u32::MAX,
                max_pending: u32::MAX,
                max_requests: u32::MAX,
                max_requests_per_connection: 0,
            }
    }
}

/// `outlierDetection` (DR-39 … DR-44); unset fields take the defaults of
/// [`OutlierDetection::effective`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    #[serde(default, rename = "consecutive5xxErrors")]
    pub consecutive_5xx_errors: Option<u32>,
    #[serde(default)]
    pub consecutive_gateway_errors: Option<u32>,
    #[serde(default)]
    pub interval: Option<String>,
    #[serde(default)]
    pub base_ejection_time: Option<String>,
    #[serde(default)]
    pub max_ejection_percent: Option<i32>,
    #[serde(default)]
    pub min_health_percent: Option<i32>,
    /// Accepted, not applied: `splitExternalLocalOriginErrors`,
    /// `consecutiveLocalOriginFailures`, the deprecated `consecutiveErrors`.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// An [`OutlierDetection`] with its defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ejection {
    /// Consecutive 5xx answers (including locally generated 503s for connect failures)
    /// that eject an endpoint; 0: off.
    pub consecutive_5xx: u32,
    /// Consecutive 502, 503 or 504 answers that eject; 0: off.
    pub consecutive_gateway: u32,
    /// How often ejections are reviewed: an ejected endpoint comes back at the first review
    /// after its ejection time.
    pub interval: Duration,
    /// Ejection time = this × how many times the endpoint was ejected.
    pub base_ejection_time: Duration,
    /// At most this % of a service's endpoints ejected at once (at least one).
    pub max_ejection_percent: u32,
    /// Below this % of endpoints healthy, ejections are ignored (0: never).
    pub min_health_percent: u32,
}

impl OutlierDetection {
    /// With the defaults of docs/WIRE.md §8, DR-39 … DR-44: 5 consecutive 5xx, gateway errors
    /// off, 10 s interval, 30 s base ejection time, 10 %, no panic threshold.
    pub fn effective(&self) -> Ejection {
        let duration = |d: &Option<String>, default: u64| {
            d.as_deref()
                .and_then(|d| parse_duration(d).ok())
                .unwrap_or(Duration::from_secs(default))
        };
        let percent = |p: Option<i32>, default: u32| p.map_or(default, |p| p.clamp(0, 100) as u32);
        Ejection {
            consecutive_5xx: self.consecutive_5xx_errors.unwrap_or(5),
            consecutive_gateway: self.consecutive_gateway_errors.unwrap_or(0),
            interval: duration(&self.interval, 10),
            base_ejection_time: duration(&self.base_ejection_time, 30),
            max_ejection_percent: percent(self.max_ejection_percent, 10),
            min_health_percent: percent(self.min_health_percent, 0),
        }
    }
}

impl TrafficPolicy {
    /// The `outlierDetection` section for `port`: the port's entry when it sets one (DR-06),
    /// else the policy's own. `None`: this policy does not set it.
    pub fn outlier_detection_for(&self, port: u16) -> Option<&OutlierDetection> {
        self.section_for(port, |s| s.outlier_detection.as_ref())
    }

    /// The `loadBalancer` section for `port`, chosen the same way.
    pub fn load_balancer_for(&self, port: u16) -> Option<&LoadBalancer> {
        self.section_for(port, |s| s.load_balancer.as_ref())
    }

    /// The `connectionPool` section for `port`, chosen the same way.
    pub fn connection_pool_for(&self, port: u16) -> Option<&ConnectionPool> {
        self.section_for(port, |s| s.connection_pool.as_ref())
    }

    /// The `tls` section for `port`, chosen the same way.
    pub fn tls_for(&self, port: u16) -> Option<&ClientTls> {
        self.section_for(port, |s| s.tls.as_ref())
    }

    fn section_for<T>(&self, port: u16, get: impl Fn(&Sections) -> Option<&T>) -> Option<&T> {
        self.port_level_settings
            .iter()
            .find(|p| p.port.as_ref().is_some_and(|s| s.number == port))
            .and_then(|p| get(&p.sections))
            .or_else(|| get(&self.sections))
    }

    /// Whether a section the waypoint applies is set, at the top or for a port.
    pub fn applied(&self) -> bool {
        self.sections.applied()
            || self
                .port_level_settings
                .iter()
                .any(|p| p.sections.applied())
    }
}

/// A protobuf-JSON or Go-style duration: `3s`, `0.5s`, `100ms`, `1m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 3s, 0.5s, 100ms)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .count();
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let units = [
            ("ms", 1e-3),
            ("us", 1e-6),
            ("ns", 1e-9),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ];
        let (unit, scale) = units
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The gRPC status code of a status name (`UNAVAILABLE` → 14).
pub fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

pub mod delegate;
mod validate;
pub use validate::dns_name;
pub use validate::RETRY_ON;

/// An address or CIDR (`10.0.0.0/8`, `10.1.2.3`), as (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Whether `ip` lies in `net/len`.
pub fn cidr_contains(net: std::net::IpAddr, len: u8, ip: std::net::IpAddr) -> bool {
    match (net, ip) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Standard base64 (with or without padding).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
