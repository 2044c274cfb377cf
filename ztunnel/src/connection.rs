//! The record of one proxied connection: counts it opened in metrics when created, and when
//! dropped (however the connection ended, even by a forced drain) adds its bytes, counts it
//! closed, and emits exactly one access-log event (istio-wire.md §6.2).

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

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

pub struct ConnectionResult {
    metrics: Arc<Metrics>,
    labels: TrafficLabels,
    reporter: ReporterLabel,
    direction: Direction,
    src: SocketAddr,
    peers: Peers,
    start: Instant,
    /// Client→server and server→client bytes.
    client_to_server: u64,
    server_to_client: u64,
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
            client_to_server: 0,
            server_to_client: 0,
            error: None,
            established: true,
        }
    }

    /// Adds bytes moved (client→server, server→client).
    pub fn add_bytes(&mut self, client_to_server: u64, server_to_client: u64) {
        self.client_to_server += client_to_server;
        self.server_to_client += server_to_client;
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

impl Drop for ConnectionResult {
    fn drop(&mut self) {
        let m = &self.metrics;
        if !self.established {
            m.failed.get_or_create(&self.labels).inc();
        }
        m.closed.get_or_create(&self.labels).inc();
        m.received_bytes
            .get_or_create(&self.labels)
            .inc_by(self.client_to_server);
        m.sent_bytes
            .get_or_create(&self.labels)
            .inc_by(self.server_to_client);
        m.sockets_open.get_or_create(&self.reporter).dec();
        let duration = format!("{}ms", self.start.elapsed().as_millis());
        // For the source reporter, bytes_sent is client→server; for the destination reporter,
        // what the destination sent back (server→client).
        let (sent, recv) = match self.labels.reporter {
            "source" => (self.client_to_server, self.server_to_client),
            _ => (self.server_to_client, self.client_to_server),
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
