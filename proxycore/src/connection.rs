//! The record of one proxied connection: counts it opened in metrics when created, and when
//! dropped (however the connection ended, even by a forced drain) adds its bytes, counts it
//! closed, and emits exactly one access-log event (docs/WIRE.md §6.2).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;

use crate::metrics::{Metrics, Reporter, ReporterLabel, TrafficLabels};
use crate::state::{Service, Workload};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Outbound,
    Inbound,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Outbound => "outbound",
            Direction::Inbound => "inbound",
        })
    }
}

/// What is known of one connection, filled in as it is learned (accepted, resolved,
/// connected). Its metric labels ([`ConnectionFacts::labels`]) and its access-log fields
/// both come from here, so the two never disagree.
#[derive(Debug, Clone)]
pub struct ConnectionFacts {
    pub reporter: Reporter,
    pub direction: Direction,
    /// This proxy's cluster, for workloads that name none.
    pub cluster: String,
    /// The client's address as this proxy sees it.
    pub src: SocketAddr,
    pub src_workload: Option<Arc<Workload>>,
    /// The client's identity, when it proved one (mTLS) or is the local workload.
    pub src_identity: Option<String>,
    /// Where the connection goes: the app, the endpoint's HBONE port, or the original
    /// destination for passthrough.
    pub dst_addr: Option<SocketAddr>,
    /// The CONNECT authority, for a tunnelled connection.
    pub dst_hbone_addr: Option<String>,
    pub dst_service: Option<Arc<Service>>,
    pub dst_workload: Option<Arc<Workload>>,
    pub dst_identity: Option<String>,
    /// Carried over mutual TLS (HBONE).
    pub mtls: bool,
    /// The trace of the client's request, when its context was seen and sampled (the
    /// CONNECT's `traceparent`; docs/OBSERVABILITY.md).
    pub trace_id: Option<String>,
}

impl ConnectionFacts {
    pub fn new(reporter: Reporter, direction: Direction, cluster: &str, src: SocketAddr) -> Self {
        ConnectionFacts {
            reporter,
            direction,
            cluster: cluster.to_string(),
            src,
            src_workload: None,
            src_identity: None,
            dst_addr: None,
            dst_hbone_addr: None,
            dst_service: None,
            dst_workload: None,
            dst_identity: None,
            mtls: false,
            trace_id: None,
        }
    }

    /// Istio's traffic labels for these facts (docs/WIRE.md §6.1).
    pub fn labels(&self) -> TrafficLabels {
        let cluster = &self.cluster;
        let mut l = TrafficLabels::new(self.reporter)
            .with_source(self.src_workload.as_deref(), cluster)
            .with_destination(self.dst_workload.as_deref(), cluster);
        if let Some(s) = &self.dst_service {
            l = l.with_service(&s.hostname, &s.namespace, &s.name);
        }
        if let Some(id) = &self.src_identity {
            l.source_principal = id.clone();
        }
        if let Some(id) = &self.dst_identity {
            l.destination_principal = id.clone();
        }
        if self.mtls {
            l.connection_security_policy = "mutual_tls";
        }
        l
    }
}

/// How often the byte counters of an open connection are brought up to date: a long-lived
/// connection's traffic shows in `istio_tcp_*_bytes_total` while it lasts, not only at its end.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(5);

/// The bytes a connection moved, counted by the copy as they cross: metrics and access logs
/// show what crossed, whatever way the connection ended (docs/HARDENING.md, "Byte counts").
#[derive(Debug, Default)]
pub struct Moved {
    pub client_to_server: hbone::Counter,
    pub server_to_client: hbone::Counter,
}

pub struct ConnectionResult {
    metrics: Arc<Metrics>,
    /// The byte counters of this connection's labels, looked up once: an open connection
    /// keeps two pointers, not its label set (eighteen strings, most of an idle
    /// connection's memory, docs/BENCHMARKS.md), and a report hashes nothing.
    received_bytes: Counter,
    sent_bytes: Counter,
    /// `-` until a failure sets it; the labels are then made again from the facts.
    response_flags: &'static str,
    reporter: ReporterLabel,
    facts: ConnectionFacts,
    start: Instant,
    bytes: Arc<Moved>,
    /// What the byte counters already hold of `bytes`: (client→server, server→client).
    reported: (u64, u64),
    error: Option<String>,
    established: bool,
}

impl ConnectionResult {
    /// Counts the connection opened, with the labels of `facts`.
    pub fn new(metrics: Arc<Metrics>, facts: ConnectionFacts) -> Self {
        let labels = facts.labels();
        let reporter = ReporterLabel {
            reporter: labels.reporter,
        };
        metrics.opened.get_or_create(&labels).inc();
        let received_bytes = metrics.received_bytes.get_or_create(&labels).clone();
        let sent_bytes = metrics.sent_bytes.get_or_create(&labels).clone();
        metrics.sockets_open.get_or_create(&reporter).inc();
        tracing::event!(target: "access", tracing::Level::DEBUG, src.addr = %facts.src, direction = %facts.direction,
            dst.addr = ?facts.dst_addr, dst.hbone_addr = ?facts.dst_hbone_addr, "connection opened");
        ConnectionResult {
            metrics,
            received_bytes,
            sent_bytes,
            response_flags: labels.response_flags,
            reporter,
            facts,
            start: Instant::now(),
            bytes: Arc::default(),
            reported: (0, 0),
            error: None,
            established: true,
        }
    }

    /// The labels the connection is counted with.
    pub fn labels(&self) -> TrafficLabels {
        let mut l = self.facts.labels();
        l.response_flags = self.response_flags;
        l
    }

    /// The counters the copy of this connection counts its bytes in.
    pub fn bytes(&self) -> Arc<Moved> {
        self.bytes.clone()
    }

    /// Adds what moved since the last report to the byte counters.
    pub fn report(&mut self) {
        let now = (
            self.bytes.client_to_server.get(),
            self.bytes.server_to_client.get(),
        );
        if now.0 > self.reported.0 {
            self.received_bytes.inc_by(now.0 - self.reported.0);
        }
        if now.1 > self.reported.1 {
            self.sent_bytes.inc_by(now.1 - self.reported.1);
        }
        self.reported = now;
    }

    /// Runs `copy` to its end, reporting the bytes every [`REPORT_INTERVAL`] meanwhile.
    pub async fn reporting<T>(&mut self, copy: impl std::future::Future<Output = T>) -> T {
        tokio::pin!(copy);
        let mut tick = report_ticker();
        loop {
            tokio::select! {
                r = &mut copy => return r,
                _ = tick.tick() => self.report(),
            }
        }
    }

    /// Records an error that ended (or prevented) the connection.
    pub fn fail(&mut self, flag: &'static str, error: impl fmt::Display) {
        if self.response_flags == "-" {
            // From now on the bytes count under the labels with the flag.
            self.response_flags = flag;
            let labels = self.labels();
            self.received_bytes = self.metrics.received_bytes.get_or_create(&labels).clone();
            self.sent_bytes = self.metrics.sent_bytes.get_or_create(&labels).clone();
        }
        self.error = Some(error.to_string());
    }

    /// Records that the connection never got to carry data (counted in `failed`).
    pub fn fail_early(&mut self, flag: &'static str, error: impl fmt::Display) {
        self.established = false;
        self.fail(flag, error);
    }
}

/// A ticker for [`ConnectionResult::report`], first due one interval from now.
pub fn report_ticker() -> tokio::time::Interval {
    let mut t = tokio::time::interval_at(
        tokio::time::Instant::now() + REPORT_INTERVAL,
        REPORT_INTERVAL,
    );
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

impl Drop for ConnectionResult {
    fn drop(&mut self) {
        let labels = self.labels();
        let m = &self.metrics;
        if !self.established {
            m.failed.get_or_create(&labels).inc();
        }
        m.closed.get_or_create(&labels).inc();
        self.report();
        let m = &self.metrics;
        m.sockets_open.get_or_create(&self.reporter).dec();
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        // For the source reporter, bytes_sent is client→server; for the destination reporter,
        // what the destination sent back (server→client).
        let (sent, recv) = match labels.reporter {
            "source" => self.reported,
            _ => (self.reported.1, self.reported.0),
        };
        let p = &self.facts;
        macro_rules! event {
            ($lvl:ident, $msg:literal $(, $k:ident = $v:expr)*) => {
                tracing::event!(target: "access", tracing::Level::$lvl,
                    src.addr = %p.src,
                    src.workload = p.src_workload.as_ref().map(|w| w.name.as_str()),
                    src.namespace = p.src_workload.as_ref().map(|w| w.namespace.as_str()),
                    src.identity = p.src_identity.as_deref(),
                    dst.addr = p.dst_addr.map(tracing::field::display),
                    dst.hbone_addr = p.dst_hbone_addr.as_deref(),
                    dst.service = p.dst_service.as_ref().map(|s| s.hostname.as_str()),
                    dst.workload = p.dst_workload.as_ref().map(|w| w.name.as_str()),
                    dst.namespace = p.dst_workload.as_ref().map(|w| w.namespace.as_str()),
                    dst.identity = p.dst_identity.as_deref(),
                    direction = %p.direction,
                    trace_id = p.trace_id.as_deref(),
                    bytes_sent = sent,
                    bytes_recv = recv,
                    duration = %duration
                    $(, $k = $v)*,
                    $msg)
            };
        }
        match &self.error {
            None => event!(INFO, "connection complete"),
            Some(e) if !self.established => {
                let e = e.as_str();
                let flag = self.response_flags;
                event!(WARN, "connection failed", error = e, response_flags = flag)
            }
            Some(e) => {
                let e = e.as_str();
                let flag = self.response_flags;
                event!(
                    ERROR,
                    "connection complete",
                    error = e,
                    response_flags = flag
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(name: &str, ns: &str) -> Arc<Workload> {
        Arc::new(
            serde_json::from_value(serde_json::json!({
                "uid": name, "name": name, "namespace": ns, "addresses": ["10.0.0.7"],
                "workloadName": name, "canonicalName": "app", "canonicalRevision": "v1",
                "trustDomain": "cluster.local", "serviceAccount": "sa",
            }))
            .unwrap(),
        )
    }

    #[test]
    fn labels_come_from_the_facts() {
        let src: SocketAddr = "10.0.0.7:4000".parse().unwrap();
        let mut f = ConnectionFacts::new(Reporter::Destination, Direction::Inbound, "c1", src);
        let bare = f.labels();
        assert_eq!(bare.reporter, "destination");
        assert_eq!(bare.source_workload, "unknown");
        assert_eq!(bare.connection_security_policy, "unknown");
        f.src_workload = Some(workload("client", "a"));
        f.dst_workload = Some(workload("server", "b"));
        f.src_identity = Some("spiffe://cluster.local/ns/a/sa/sa".into());
        f.mtls = true;
        let l = f.labels();
        assert_eq!(l.source_workload, "client");
        assert_eq!(l.source_workload_namespace, "a");
        assert_eq!(l.source_cluster, "c1");
        assert_eq!(l.destination_workload, "server");
        assert_eq!(l.source_principal, "spiffe://cluster.local/ns/a/sa/sa");
        assert_eq!(l.destination_principal, "unknown");
        assert_eq!(l.connection_security_policy, "mutual_tls");
        let w = ConnectionFacts::new(Reporter::Waypoint, Direction::Inbound, "c1", src);
        assert_eq!(w.labels().reporter, "waypoint");
    }
}
