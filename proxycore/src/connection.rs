//! The record of one proxied connection: counts it opened in metrics when created, and when
//! dropped (however the connection ended, even by a forced drain) adds its bytes, counts it
//! closed, and emits exactly one access-log event (docs/WIRE.md §6.2).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::metrics::{Metrics, ReporterLabel, TrafficLabels};

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

/// Fields of the access-log line that are known once the destination is resolved.
#[derive(Debug, Default, Clone)]
pub struct Peers {
    pub src_workload: Option<String>,
    pub src_namespace: Option<String>,
    pub src_identity: Option<String>,
    pub dst_addr: Option<SocketAddr>,
    pub dst_hbone_addr: Option<String>,
    pub dst_service: Option<String>,
    pub dst_workload: Option<String>,
    pub dst_namespace: Option<String>,
    pub dst_identity: Option<String>,
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
    labels: TrafficLabels,
    reporter: ReporterLabel,
    direction: Direction,
    src: SocketAddr,
    peers: Peers,
    start: Instant,
    bytes: Arc<Moved>,
    /// What the byte counters already hold of `bytes`: (client→server, server→client).
    reported: (u64, u64),
    error: Option<String>,
    established: bool,
}

impl ConnectionResult {
    pub fn new(
        metrics: Arc<Metrics>,
        direction: Direction,
        src: SocketAddr,
        labels: TrafficLabels,
        peers: Peers,
    ) -> Self {
        let reporter = ReporterLabel {
            reporter: labels.reporter,
        };
        metrics.opened.get_or_create(&labels).inc();
        metrics.sockets_open.get_or_create(&reporter).inc();
        tracing::event!(target: "access", tracing::Level::DEBUG, src.addr = %src, direction = %direction,
            dst.addr = ?peers.dst_addr, dst.hbone_addr = ?peers.dst_hbone_addr, "connection opened");
        ConnectionResult {
            metrics,
            labels,
            reporter,
            direction,
            src,
            peers,
            start: Instant::now(),
            bytes: Arc::default(),
            reported: (0, 0),
            error: None,
            established: true,
        }
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
        let m = &self.metrics;
        if now.0 > self.reported.0 {
            m.received_bytes
                .get_or_create(&self.labels)
                .inc_by(now.0 - self.reported.0);
        }
        if now.1 > self.reported.1 {
            m.sent_bytes
                .get_or_create(&self.labels)
                .inc_by(now.1 - self.reported.1);
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
        if self.labels.response_flags == "-" {
            self.labels.response_flags = flag;
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
        let m = &self.metrics;
        if !self.established {
            m.failed.get_or_create(&self.labels).inc();
        }
        m.closed.get_or_create(&self.labels).inc();
        self.report();
        let m = &self.metrics;
        m.sockets_open.get_or_create(&self.reporter).dec();
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        // For the source reporter, bytes_sent is client→server; for the destination reporter,
        // what the destination sent back (server→client).
        let (sent, recv) = match self.labels.reporter {
            "source" => self.reported,
            _ => (self.reported.1, self.reported.0),
        };
        let p = &self.peers;
        macro_rules! event {
            ($lvl:ident, $msg:literal $(, $k:ident = $v:expr)*) => {
                tracing::event!(target: "access", tracing::Level::$lvl,
                    src.addr = %self.src,
                    src.workload = p.src_workload.as_deref(),
                    src.namespace = p.src_namespace.as_deref(),
                    src.identity = p.src_identity.as_deref(),
                    dst.addr = p.dst_addr.map(tracing::field::display),
                    dst.hbone_addr = p.dst_hbone_addr.as_deref(),
                    dst.service = p.dst_service.as_deref(),
                    dst.workload = p.dst_workload.as_deref(),
                    dst.namespace = p.dst_namespace.as_deref(),
                    dst.identity = p.dst_identity.as_deref(),
                    direction = %self.direction,
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
                let flag = self.labels.response_flags;
                event!(WARN, "connection failed", error = e, response_flags = flag)
            }
            Some(e) => {
                let e = e.as_str();
                let flag = self.labels.response_flags;
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
