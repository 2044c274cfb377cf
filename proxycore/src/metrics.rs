//! Istio's TCP metrics (docs/WIRE.md §6.1) with typed labels. The registry is created in
//! `app` and passed in; nothing here is global.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::state::Workload;

pub const UNKNOWN: &str = "unknown";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reporter {
    Source,
    Destination,
    /// A waypoint: both ends of its tunnels are other proxies.
    Waypoint,
}

/// The common traffic labels, in Istio's order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TrafficLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub source_version: String,
    pub source_cluster: String,
    pub destination_service: String,
    pub destination_service_namespace: String,
    pub destination_service_name: String,
    pub destination_workload: String,
    pub destination_canonical_service: String,
    pub destination_canonical_revision: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    pub destination_version: String,
    pub destination_cluster: String,
    pub request_protocol: &'static str,
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

fn or_unknown(s: &str) -> String {
    if s.is_empty() {
        UNKNOWN.to_string()
    } else {
        s.to_string()
    }
}

impl TrafficLabels {
    pub fn new(reporter: Reporter) -> Self {
        let u = || UNKNOWN.to_string();
        TrafficLabels {
            reporter: match reporter {
                Reporter::Source => "source",
                Reporter::Destination => "destination",
                Reporter::Waypoint => "waypoint",
            },
            source_workload: u(),
            source_canonical_service: u(),
            source_canonical_revision: u(),
            source_workload_namespace: u(),
            source_principal: u(),
            source_app: u(),
            source_version: u(),
            source_cluster: u(),
            destination_service: u(),
            destination_service_namespace: u(),
            destination_service_name: u(),
            destination_workload: u(),
            destination_canonical_service: u(),
            destination_canonical_revision: u(),
            destination_workload_namespace: u(),
            destination_principal: u(),
            destination_app: u(),
            destination_version: u(),
            destination_cluster: u(),
            request_protocol: "tcp",
            response_flags: "-",
            connection_security_policy: UNKNOWN,
        }
    }

    pub fn with_source(mut self, w: Option<&Workload>, cluster: &str) -> Self {
        if let Some(w) = w {
            self.source_workload = or_unknown(&w.workload_name);
            self.source_canonical_service = or_unknown(&w.canonical_name);
            self.source_canonical_revision = or_unknown(&w.canonical_revision);
            self.source_workload_namespace = or_unknown(&w.namespace);
            self.source_app = or_unknown(&w.canonical_name);
            self.source_version = or_unknown(&w.canonical_revision);
            self.source_cluster = or_unknown(if w.cluster_id.is_empty() {
                cluster
            } else {
                &w.cluster_id
            });
        }
        self
    }

    pub fn with_destination(mut self, w: Option<&Workload>, cluster: &str) -> Self {
        if let Some(w) = w {
            self.destination_workload = or_unknown(&w.workload_name);
            self.destination_canonical_service = or_unknown(&w.canonical_name);
            self.destination_canonical_revision = or_unknown(&w.canonical_revision);
            self.destination_workload_namespace = or_unknown(&w.namespace);
            self.destination_app = or_unknown(&w.canonical_name);
            self.destination_version = or_unknown(&w.canonical_revision);
            self.destination_cluster = or_unknown(if w.cluster_id.is_empty() {
                cluster
            } else {
                &w.cluster_id
            });
        }
        self
    }

    pub fn with_service(mut self, hostname: &str, namespace: &str, name: &str) -> Self {
        self.destination_service = or_unknown(hostname);
        self.destination_service_namespace = or_unknown(namespace);
        self.destination_service_name = or_unknown(name);
        self
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReporterLabel {
    pub reporter: &'static str,
}

pub struct Metrics {
    pub opened: Family<TrafficLabels, Counter>,
    pub closed: Family<TrafficLabels, Counter>,
    pub failed: Family<TrafficLabels, Counter>,
    /// Client→server bytes, for both reporters.
    pub received_bytes: Family<TrafficLabels, Counter>,
    /// Server→client bytes.
    pub sent_bytes: Family<TrafficLabels, Counter>,
    pub sockets_open: Family<ReporterLabel, Gauge>,
    pub xds: XdsMetrics,
    /// Inbound HBONE handshakes ended early: `per_source`, `overall` (shed to admit newer
    /// ones) or `timeout`.
    pub handshakes_shed: Family<ReasonLabel, Counter>,
    /// Inbound HBONE connections closed with GOAWAY ENHANCE_YOUR_CALM, by the frame budget
    /// the peer exhausted (`rst_stream`, `ping`, `settings`, `empty_frames`).
    pub flood_closed: Family<ReasonLabel, Counter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabel {
    /// ConnectionError, Error, Reconnect or Complete.
    pub reason: &'static str,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct UrlLabel {
    pub url: String,
}

/// The xDS client's metrics (docs/WIRE.md §6.1).
#[derive(Clone, Default)]
pub struct XdsMetrics {
    pub connection_terminations: Family<ReasonLabel, Counter>,
    pub messages: Family<UrlLabel, Counter>,
    pub message_bytes: Family<UrlLabel, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            opened: Family::default(),
            closed: Family::default(),
            failed: Family::default(),
            received_bytes: Family::default(),
            sent_bytes: Family::default(),
            sockets_open: Family::default(),
            xds: XdsMetrics::default(),
            handshakes_shed: Family::default(),
            flood_closed: Family::default(),
        };
        let k = registry.sub_registry_with_prefix("keelson");
        k.register(
            "hbone_handshakes_shed",
            "Inbound HBONE connections ended in their handshake to bound the handshakes in progress, or for taking too long",
            m.handshakes_shed.clone(),
        );
        k.register(
            "hbone_flood_closed",
            "Inbound HBONE connections closed with GOAWAY ENHANCE_YOUR_CALM for exceeding a frame budget",
            m.flood_closed.clone(),
        );
        k.register(
            "log_write_failures",
            "Log writes that failed (a full disk, a closed pipe); their lines are lost",
            crate::logbuf::WRITE_FAILURES.clone(),
        );
        let r = registry.sub_registry_with_prefix("istio");
        r.register(
            "tcp_connections_opened",
            "The total number of TCP connections opened",
            m.opened.clone(),
        );
        r.register(
            "tcp_connections_closed",
            "The total number of TCP connections closed",
            m.closed.clone(),
        );
        r.register(
            "tcp_connections_failed",
            "The total number of TCP connections that failed to establish",
            m.failed.clone(),
        );
        r.register(
            "tcp_received_bytes",
            "The size of total bytes received during request in case of a TCP connection",
            m.received_bytes.clone(),
        );
        r.register(
            "tcp_sent_bytes",
            "The size of total bytes sent during response in case of a TCP connection",
            m.sent_bytes.clone(),
        );
        r.register(
            "tcp_sockets_open",
            "The number of open TCP sockets",
            m.sockets_open.clone(),
        );
        r.register(
            "xds_connection_terminations",
            "The total number of completed connections to xds server",
            m.xds.connection_terminations.clone(),
        );
        r.register(
            "xds_message",
            "Total number of messages received",
            m.xds.messages.clone(),
        );
        r.register(
            "xds_message_bytes",
            "Total number of bytes received",
            m.xds.message_bytes.clone(),
        );
        m
    }
}

/// `istio_build{component=...,tag=...} 1`: `ztunnel` for ztunnel, `proxy` for the
/// waypoint and the gateway (as Istio's Envoy proxies report it).
pub fn register_build(registry: &mut Registry, component: &'static str) {
    #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
    struct Build {
        component: &'static str,
        tag: &'static str,
    }
    let f: Family<Build, Gauge> = Family::default();
    f.get_or_create(&Build {
        component,
        tag: env!("CARGO_PKG_VERSION"),
    })
    .set(1);
    registry.register("istio_build", "Istio component build info", f);
}

/// `istio_agent_cert_expiry_seconds{resource_name=<identity>}`: the seconds left before
/// each held certificate expires (negative once expired), read from the store at each
/// scrape.
pub struct CertExpiry(pub identity::CertStore);

impl std::fmt::Debug for CertExpiry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertExpiry")
    }
}

impl prometheus_client::collector::Collector for CertExpiry {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        #[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
        struct Resource {
            resource_name: String,
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()) as f64;
        let mut family = encoder.encode_descriptor(
            "istio_agent_cert_expiry_seconds",
            "The time remaining, in seconds, before the certificate chain will expire; negative once expired",
            None,
            prometheus_client::metrics::MetricType::Gauge,
        )?;
        for c in self.0.summaries() {
            let Some(after) = c.not_after else { continue };
            let labels = Resource {
                resource_name: c.identity,
            };
            prometheus_client::metrics::gauge::ConstGauge::new(after as f64 - now)
                .encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}
