//! Istio's request metrics, as its Envoy waypoints report them (`reporter="waypoint"`):
//! `istio_requests_total`, `istio_request_duration_milliseconds`, `istio_request_bytes` and
//! `istio_response_bytes` (head and body), with ztunnel's traffic
//! labels (docs/WIRE.md §6.1) plus `response_code` and `grpc_response_status`. Dashboards
//! and Kiali read these.
//!
//! A request's labels are built once per tunnel and outcome: each tunnel keeps the metric
//! handles of the outcomes it has seen ([`Recorder`]), so a request on a kept tunnel only
//! bumps a counter and a histogram.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use proxycore::connection::{ConnectionFacts, Direction};
use proxycore::metrics::{Reporter, TrafficLabels};
use proxycore::state::Workload;
use proxycore::ProxyInputs;

use crate::upstream::Destination;

/// Istio's default buckets for request durations, in milliseconds.
const BUCKETS_MS: [f64; 19] = [
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// Buckets for request and response sizes, in bytes: 1 to 10^9 by tens.
const BUCKETS_BYTES: [f64; 10] = [1.0, 10.0, 100.0, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RequestLabels {
    pub response_code: u16,
    /// The gRPC status of a response that carries one in its head; else empty.
    pub grpc_response_status: String,
    /// Last: the derive encodes a flattened set only at the end.
    #[prometheus(flatten)]
    pub traffic: TrafficLabels,
}

type Durations = Family<RequestLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct HttpMetrics {
    pub requests: Family<RequestLabels, Counter>,
    pub duration: Durations,
    pub request_bytes: Durations,
    pub response_bytes: Durations,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        HttpMetrics {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(BUCKETS_MS.iter().copied())),
            request_bytes: Family::new_with_constructor(|| {
                Histogram::new(BUCKETS_BYTES.iter().copied())
            }),
            response_bytes: Family::new_with_constructor(|| {
                Histogram::new(BUCKETS_BYTES.iter().copied())
            }),
        }
    }
}

impl HttpMetrics {
    /// Adds the request metrics to the waypoint's registry (served on 15020).
    pub fn register(&self, registry: &mut Registry) {
        let r = registry.sub_registry_with_prefix("istio");
        r.register(
            "requests",
            "Total number of requests",
            self.requests.clone(),
        );
        r.register(
            "request_duration_milliseconds",
            "Duration of requests in milliseconds",
            self.duration.clone(),
        );
        r.register(
            "request_bytes",
            "Request sizes in bytes, head and body",
            self.request_bytes.clone(),
        );
        r.register(
            "response_bytes",
            "Response sizes in bytes, head and body",
            self.response_bytes.clone(),
        );
    }
}

/// One request's outcome, as the labels tell it apart.
pub struct Outcome<'a> {
    /// The service routed to, when it is not the connection's (an ingress gateway's).
    pub service: Option<&'a Arc<proxycore::state::Service>>,
    pub upstream: Option<&'a Arc<Workload>>,
    pub status: u16,
    pub flags: &'static str,
    pub grpc: bool,
    pub grpc_status: Option<&'a [u8]>,
    /// The request's size, head and body.
    pub request_bytes: u64,
}

/// A tunnel's metric handles, by outcome; the labels common to its requests are the
/// tunnel's own ([`Recorder::with_base`]).
pub struct Recorder {
    base: TrafficLabels,
    seen: Mutex<Vec<Seen>>,
}

impl Recorder {
    /// A recorder whose base labels are the tunnel's, already built for its own record.
    pub fn with_base(base: TrafficLabels) -> Recorder {
        Recorder {
            base,
            seen: Mutex::default(),
        }
    }
}

struct Seen {
    service: Option<Arc<proxycore::state::Service>>,
    upstream: Option<Arc<Workload>>,
    status: u16,
    flags: &'static str,
    grpc: bool,
    grpc_status: Vec<u8>,
    requests: Counter,
    duration: Histogram,
    request_bytes: Histogram,
    response_bytes: Histogram,
}

impl Recorder {
    /// The labels of one outcome.
    pub fn labels(&self, cluster: &str, o: &Outcome<'_>) -> RequestLabels {
        let mut traffic = self
            .base
            .clone()
            .with_destination(o.upstream.map(|w| &**w), cluster);
        if let Some(svc) = o.service {
            traffic = traffic.with_service(&svc.hostname, &svc.namespace, &svc.name);
        }
        if let Some(w) = o.upstream {
            traffic.destination_principal = w.identity().to_string();
        }
        traffic.request_protocol = if o.grpc { "grpc" } else { "http" };
        traffic.response_flags = o.flags;
        RequestLabels {
            traffic,
            response_code: o.status,
            grpc_response_status: String::from_utf8_lossy(o.grpc_status.unwrap_or_default())
                .into_owned(),
        }
    }
}

/// A gRPC response whose status comes in its trailers: its request is counted when the
/// body ends (or is dropped), with `grpc_response_status` from the trailers (empty when
/// the stream ended without them).
pub struct GrpcEnd {
    body: crate::body::Body,
    metrics: HttpMetrics,
    labels: RequestLabels,
    started: std::time::Instant,
    request_bytes: u64,
    response_bytes: u64,
    status: Option<String>,
}

impl GrpcEnd {
    pub fn wrap(
        body: crate::body::Body,
        metrics: &HttpMetrics,
        labels: RequestLabels,
        started: std::time::Instant,
        request_bytes: u64,
        head: u64,
    ) -> crate::body::Body {
        http_body_util::BodyExt::boxed(GrpcEnd {
            body,
            metrics: metrics.clone(),
            labels,
            started,
            request_bytes,
            response_bytes: head,
            status: None,
        })
    }
}

impl Drop for GrpcEnd {
    fn drop(&mut self) {
        let mut labels = self.labels.clone();
        labels.grpc_response_status = self.status.take().unwrap_or_default();
        let m = &self.metrics;
        m.requests.get_or_create(&labels).inc();
        m.duration
            .get_or_create(&labels)
            .observe(self.started.elapsed().as_secs_f64() * 1000.0);
        m.request_bytes
            .get_or_create(&labels)
            .observe(self.request_bytes as f64);
        m.response_bytes
            .get_or_create(&labels)
            .observe(self.response_bytes as f64);
    }
}

impl hyper::body::Body for GrpcEnd {
    type Data = bytes::Bytes;
    type Error = crate::h1::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        let me = self.get_mut();
        let polled = std::pin::Pin::new(&mut me.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                me.response_bytes += data.len() as u64;
            } else if let Some(t) = frame.trailers_ref() {
                me.response_bytes += head_bytes(t);
                if let Some(v) = t.get("grpc-status").and_then(|v| v.to_str().ok()) {
                    me.status = Some(v.to_string());
                }
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// Outcomes a tunnel keeps handles for; past that it starts over.
const KEPT: usize = 16;

impl Recorder {
    /// Counts the request; returns the handle its response's size goes to, once known.
    pub fn record(
        &self,
        m: &HttpMetrics,
        cluster: &str,
        o: &Outcome<'_>,
        took: Duration,
    ) -> Histogram {
        let ms = took.as_secs_f64() * 1000.0;
        let grpc_status = o.grpc_status.unwrap_or_default();
        let mut seen = self.seen.lock().unwrap();
        let same = |s: &&Seen| {
            s.status == o.status
                && s.flags == o.flags
                && s.grpc == o.grpc
                && s.grpc_status == grpc_status
                && match (&s.upstream, o.upstream) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                }
                && match (&s.service, o.service) {
                    (None, None) => true,
                    (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                    _ => false,
                }
        };
        if let Some(s) = seen.iter().find(same) {
            s.requests.inc();
            s.duration.observe(ms);
            s.request_bytes.observe(o.request_bytes as f64);
            return s.response_bytes.clone();
        }
        let labels = self.labels(cluster, o);
        let requests = m.requests.get_or_create(&labels).clone();
        let duration = m.duration.get_or_create(&labels).clone();
        let request_bytes = m.request_bytes.get_or_create(&labels).clone();
        let response_bytes = m.response_bytes.get_or_create(&labels).clone();
        requests.inc();
        duration.observe(ms);
        request_bytes.observe(o.request_bytes as f64);
        if seen.len() >= KEPT {
            seen.clear();
        }
        seen.push(Seen {
            service: o.service.cloned(),
            upstream: o.upstream.cloned(),
            status: o.status,
            flags: o.flags,
            grpc: o.grpc,
            grpc_status: grpc_status.to_vec(),
            requests,
            duration,
            request_bytes,
            response_bytes: response_bytes.clone(),
        });
        response_bytes
    }
}

/// The size of a head's fields as HTTP/1.1 writes them (`name: value\r\n`); the request
/// or status line is not counted.
pub fn head_bytes(headers: &http::HeaderMap) -> u64 {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().len() + v.len() + 4) as u64)
        .sum()
}

/// The facts every request of a tunnel shares: the client workload (by its address) and
/// principal, the service addressed, mutual TLS. Also those of the tunnel's own
/// `istio_tcp_*` series and access line.
pub(crate) fn tunnel_facts(
    pi: &ProxyInputs,
    (principal, source_ip): (&str, std::net::IpAddr),
    dst: &Destination,
    client: std::net::SocketAddr,
) -> ConnectionFacts {
    let mut f = ConnectionFacts::new(
        Reporter::Waypoint,
        Direction::Inbound,
        &pi.cfg.cluster_id,
        client,
    );
    f.src_workload = pi.state.workload_by_ip(source_ip);
    f.src_identity = Some(principal.to_string());
    f.mtls = true;
    if let Destination::Service { svc, .. } = dst {
        f.dst_service = Some(svc.clone());
    }
    f
}
