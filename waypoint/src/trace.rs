//! Distributed tracing at the waypoint and the ingress gateway (docs/OBSERVABILITY.md).
//!
//! Each request gets a server span, and each upstream try a client span, its child. The
//! trace context comes in as W3C `traceparent`/`tracestate`, else B3 (single `b3`, else
//! `x-b3-*`), and goes out in both forms with the try's span as parent, so the app and the
//! services it calls stay in one trace. A request without a context starts a trace, sampled
//! at the percentage its namespace's Telemetry (or the mesh config) sets; one with a
//! sampling decision keeps it. Sampled spans are sent over OTLP/gRPC to the configured
//! collector in batches, by one task; when the queue is full, spans are dropped and
//! counted, never waited for.
//!
//! With no tracing provider configured nothing here runs: the headers pass untouched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::mpsc;
use xds::otlp::{
    any_value, span, status, AnyValue, ExportTraceServiceRequest, InstrumentationScope, KeyValue,
    Resource, ResourceSpans, ScopeSpans, Span, Status,
};

use crate::process::Waypoint;
use hbone::trace::{
    hex, nonzero_random, parent, B3, B3_FLAGS, B3_PARENT, B3_SAMPLED, B3_SPAN, B3_TRACE,
    TRACEPARENT, TRACESTATE,
};

/// Spans waiting to be sent; past this they are dropped.
const QUEUE: usize = 8192;
/// Spans per export call.
const BATCH: usize = 512;
/// How long a span may wait for its batch to fill.
const LINGER: Duration = Duration::from_secs(1);
const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);

/// Writes the context a callee continues: `span` as its parent, W3C and B3 both.
pub fn inject(
    headers: &mut HeaderMap,
    trace_id: &[u8; 16],
    span: &[u8; 8],
    parent: Option<&[u8; 8]>,
    sampled: bool,
    state: Option<&HeaderValue>,
) {
    let (t, s) = (hex(trace_id), hex(span));
    let flag = if sampled { "01" } else { "00" };
    let value = |s: String| HeaderValue::from_str(&s).expect("hex digits and dashes");
    headers.insert(TRACEPARENT, value(format!("00-{t}-{s}-{flag}")));
    match state {
        Some(st) => {
            headers.insert(TRACESTATE, st.clone());
        }
        None => {
            headers.remove(TRACESTATE);
        }
    }
    let one = if sampled { "1" } else { "0" };
    headers.insert(B3_TRACE, value(t.clone()));
    headers.insert(B3_SPAN, value(s.clone()));
    match parent {
        Some(p) => {
            headers.insert(B3_PARENT, value(hex(p)));
        }
        None => {
            headers.remove(B3_PARENT);
        }
    }
    headers.insert(B3_SAMPLED, HeaderValue::from_static(one));
    headers.remove(B3_FLAGS);
    // The single form only where the caller used it, so one form is not sent twice.
    if headers.contains_key(B3) {
        headers.insert(B3, value(format!("{t}-{s}-{one}")));
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn attr(key: &str, v: impl AttrValue) -> KeyValue {
    KeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(v.value()),
        }),
    }
}

/// What an attribute can hold.
trait AttrValue {
    fn value(self) -> any_value::Value;
}

impl AttrValue for String {
    fn value(self) -> any_value::Value {
        any_value::Value::StringValue(self)
    }
}

impl AttrValue for &str {
    fn value(self) -> any_value::Value {
        any_value::Value::StringValue(self.to_string())
    }
}

impl AttrValue for i64 {
    fn value(self) -> any_value::Value {
        any_value::Value::IntValue(self)
    }
}

/// One request's trace: its server span, and the context its tries continue.
pub struct RequestTrace {
    trace_id: [u8; 16],
    span_id: [u8; 8],
    parent: Option<[u8; 8]>,
    pub sampled: bool,
    state: Option<HeaderValue>,
    start: u64,
}

/// One try's client span.
pub struct ClientSpan {
    span_id: [u8; 8],
    start: u64,
}

impl RequestTrace {
    /// The request's trace, when tracing is configured for this proxy: continues the
    /// caller's context or starts one, sampled at `sampling` percent unless the caller
    /// decided.
    pub fn begin(headers: &HeaderMap, sampling: f64) -> RequestTrace {
        let p = parent(headers);
        let sampled = match p.as_ref().and_then(|p| p.sampled) {
            Some(decided) => decided,
            None => rand::random::<f64>() * 100.0 < sampling,
        };
        let trace_id = p.as_ref().map_or_else(nonzero_random::<16>, |p| p.trace_id);
        RequestTrace {
            trace_id,
            span_id: nonzero_random::<8>(),
            parent: p.as_ref().and_then(|p| p.span_id),
            sampled,
            state: p.and_then(|p| p.state),
            start: now_nanos(),
        }
    }

    /// A try's span, its context written into the request that goes upstream.
    pub fn try_span(&self, headers: &mut HeaderMap) -> ClientSpan {
        let span_id = nonzero_random::<8>();
        inject(
            headers,
            &self.trace_id,
            &span_id,
            Some(&self.span_id),
            self.sampled,
            self.state.as_ref(),
        );
        ClientSpan {
            span_id,
            start: now_nanos(),
        }
    }

    fn span(
        &self,
        (id, parent): ([u8; 8], Option<[u8; 8]>),
        name: String,
        kind: span::SpanKind,
        start: u64,
        status: u16,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let error = status >= 500 || status == 0;
        Span {
            trace_id: self.trace_id.to_vec(),
            span_id: id.to_vec(),
            trace_state: self
                .state
                .as_ref()
                .and_then(|s| s.to_str().ok())
                .unwrap_or_default()
                .to_string(),
            parent_span_id: parent.map(|p| p.to_vec()).unwrap_or_default(),
            name,
            kind: kind as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: now_nanos(),
            attributes,
            status: Some(Status {
                message: String::new(),
                code: if error {
                    status::StatusCode::Error
                } else {
                    status::StatusCode::Unset
                } as i32,
            }),
            flags: 0,
        }
    }

    /// Ends a try's span: `status` 0 when no response came.
    pub fn end_try(
        &self,
        tracer: &Tracer,
        c: ClientSpan,
        cluster: &str,
        upstream: Option<&str>,
        status: u16,
    ) {
        if !self.sampled {
            return;
        }
        let mut attributes = vec![
            attr("upstream_cluster", cluster),
            attr("http.status_code", i64::from(status)),
        ];
        if let Some(u) = upstream {
            attributes.push(attr("upstream.workload", u));
        }
        let span = self.span(
            (c.span_id, Some(self.span_id)),
            format!("router {cluster} egress"),
            span::SpanKind::Client,
            c.start,
            status,
            attributes,
        );
        tracer.send(span);
    }

    /// Ends the request's span.
    pub fn end(self, tracer: &Tracer, name: String, mut attributes: Vec<KeyValue>, status: u16) {
        if !self.sampled {
            return;
        }
        attributes.push(attr("http.status_code", i64::from(status)));
        let span = self.span(
            (self.span_id, self.parent),
            name,
            span::SpanKind::Server,
            self.start,
            status,
            attributes,
        );
        tracer.send(span);
    }
}

/// The server span's attributes.
pub fn request_attributes(
    method: &str,
    url: String,
    request_id: Option<&HeaderValue>,
    flags: &str,
    namespace: &str,
) -> Vec<KeyValue> {
    let mut a = vec![
        attr("http.method", method),
        attr("http.url", url),
        attr("response_flags", flags),
        attr("istio.namespace", namespace),
        attr("component", "proxy"),
    ];
    if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
        a.push(attr("guid:x-request-id", id));
    }
    a
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

/// The span queue and its counters.
pub struct Tracer {
    tx: mpsc::Sender<Span>,
    rx: Mutex<Option<mpsc::Receiver<Span>>>,
    exported: Counter,
    dropped: Family<ReasonLabel, Counter>,
}

impl Default for Tracer {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        Tracer {
            tx,
            rx: Mutex::new(Some(rx)),
            exported: Counter::default(),
            dropped: Family::default(),
        }
    }
}

impl Tracer {
    pub fn register(&self, registry: &mut Registry) {
        let k = registry.sub_registry_with_prefix("keelson");
        k.register(
            "trace_spans_exported",
            "Spans the collector accepted",
            self.exported.clone(),
        );
        k.register(
            "trace_spans_dropped",
            "Spans not sent: the queue was full (queue_full), the export failed (export_failed) or no collector could be resolved (no_collector)",
            self.dropped.clone(),
        );
    }

    fn send(&self, span: Span) {
        if self.tx.try_send(span).is_err() {
            self.dropped
                .get_or_create(&ReasonLabel {
                    reason: "queue_full",
                })
                .inc();
        }
    }
}

/// Starts the exporter: batches of spans to the collector of the proxy's tracing settings.
pub fn start(wp: &Arc<Waypoint>) {
    let Some(mut rx) = wp.tracer.rx.lock().unwrap().take() else {
        return;
    };
    let wp = wp.clone();
    tokio::spawn(async move {
        let mut channels: HashMap<std::net::SocketAddr, tonic::transport::Channel> = HashMap::new();
        let mut batch = Vec::with_capacity(BATCH);
        loop {
            let Some(first) = rx.recv().await else { return };
            batch.push(first);
            let deadline = tokio::time::Instant::now() + LINGER;
            while batch.len() < BATCH {
                match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(s)) => batch.push(s),
                    Ok(None) | Err(_) => break,
                }
            }
            let n = batch.len() as u64;
            let spans = std::mem::take(&mut batch);
            let drop_all = |reason: &'static str| {
                wp.tracer
                    .dropped
                    .get_or_create(&ReasonLabel { reason })
                    .inc_by(n);
            };
            let Some(settings) = wp.config.tracing(&wp.pi.state, &wp.pi.local_ns) else {
                drop_all("no_collector");
                continue;
            };
            let addr = match collector(&wp, &settings).await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(collector = %settings.service, error = %e, "tracing: no address for the collector; spans dropped");
                    drop_all("no_collector");
                    continue;
                }
            };
            let channel = channels
                .entry(addr)
                .or_insert_with(|| {
                    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                        .expect("an address is a valid URI")
                        .connect_timeout(Duration::from_secs(5))
                        .connect_lazy()
                })
                .clone();
            let req = ExportTraceServiceRequest {
                resource_spans: vec![ResourceSpans {
                    resource: Some(Resource {
                        attributes: resource_attributes(&wp),
                    }),
                    scope_spans: vec![ScopeSpans {
                        scope: Some(InstrumentationScope {
                            name: "keelson".into(),
                            version: env!("CARGO_PKG_VERSION").into(),
                        }),
                        spans,
                        schema_url: String::new(),
                    }],
                    schema_url: String::new(),
                }],
            };
            let mut client = xds::otlp::trace_service_client::TraceServiceClient::new(channel);
            match tokio::time::timeout(EXPORT_TIMEOUT, client.export(req)).await {
                Ok(Ok(_)) => {
                    wp.tracer.exported.inc_by(n);
                }
                Ok(Err(e)) => {
                    tracing::warn!(%addr, error = %e, "tracing: export failed; spans dropped");
                    channels.remove(&addr);
                    drop_all("export_failed");
                }
                Err(_) => {
                    tracing::warn!(%addr, "tracing: export timed out; spans dropped");
                    channels.remove(&addr);
                    drop_all("export_failed");
                }
            }
        }
    });
}

/// `service.name` is `<canonical service>.<namespace>`, as Istio's proxies report it.
fn resource_attributes(wp: &Waypoint) -> Vec<KeyValue> {
    let pi = &wp.pi;
    let own = pi.state.workload_by_name(&pi.local_ns, &pi.local_name);
    let canonical = own
        .as_ref()
        .map(|w| w.canonical_name.clone())
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| pi.local_name.clone());
    vec![
        attr("service.name", format!("{canonical}.{}", pi.local_ns)),
        attr("k8s.pod.name", pi.local_name.as_str()),
        attr("k8s.namespace.name", pi.local_ns.as_str()),
        attr("istio.cluster_id", pi.cfg.cluster_id.as_str()),
    ]
}

/// The collector's address: a service of the mesh (one of its endpoints, directly), an IP,
/// or a name the system resolver knows.
async fn collector(wp: &Waypoint, t: &xds::l7::Tracing) -> std::io::Result<std::net::SocketAddr> {
    let port = t.port as u16;
    if let Ok(ip) = t.service.parse::<std::net::IpAddr>() {
        return Ok(std::net::SocketAddr::new(ip, port));
    }
    let state = &wp.pi.state;
    if let Some(svc) = state.service_by_host(&t.service, &wp.pi.local_ns) {
        if let Some(ep) = state.pick_endpoint_in(&svc, port, |w| !w.addresses.is_empty()) {
            return Ok(std::net::SocketAddr::new(ep.workload.addresses[0], ep.port));
        }
    }
    tokio::net::lookup_host((t.service.as_str(), port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "resolves to nothing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    const T: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const S: &str = "00f067aa0ba902b7";

    #[test]
    fn w3c_wins_and_keeps_its_state() {
        let h = headers(&[
            ("traceparent", &format!("00-{T}-{S}-01")),
            ("tracestate", "congo=t61rcWkgMzE"),
            ("x-b3-traceid", "0000000000000000000000000000000a"),
        ]);
        let p = parent(&h).unwrap();
        assert_eq!(hex(&p.trace_id), T);
        assert_eq!(hex(&p.span_id.unwrap()), S);
        assert_eq!(p.sampled, Some(true));
        assert_eq!(p.state.unwrap(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn malformed_w3c_falls_back_to_b3() {
        for bad in [
            format!("ff-{T}-{S}-01"),
            format!("00-{}-{S}-01", "0".repeat(32)),
            format!("00-{T}-{}-01", "0".repeat(16)),
            format!("00-{T}-{S}"),
            "00-zz".to_string(),
        ] {
            let h = headers(&[("traceparent", &bad), ("b3", &format!("{T}-{S}-0"))]);
            let p = parent(&h).unwrap();
            assert_eq!(p.sampled, Some(false), "{bad}");
        }
    }

    #[test]
    fn b3_single_and_multi_with_64_bit_ids() {
        let p = parent(&headers(&[("b3", &format!("a3ce929d0e0e4736-{S}-d"))])).unwrap();
        assert_eq!(hex(&p.trace_id), "0000000000000000a3ce929d0e0e4736");
        assert_eq!(p.sampled, Some(true));
        let p = parent(&headers(&[
            ("x-b3-traceid", T),
            ("x-b3-spanid", S),
            ("x-b3-sampled", "0"),
        ]))
        .unwrap();
        assert_eq!(p.sampled, Some(false));
        let p = parent(&headers(&[("x-b3-traceid", T), ("x-b3-flags", "1")])).unwrap();
        assert_eq!((p.span_id, p.sampled), (None, Some(true)));
        assert!(parent(&headers(&[("x-b3-spanid", S)])).is_none());
    }

    #[test]
    fn a_try_continues_the_trace_in_both_forms() {
        let mut h = headers(&[("traceparent", &format!("00-{T}-{S}-01")), ("b3", "1")]);
        let r = RequestTrace::begin(&h, 0.0);
        assert!(r.sampled, "the caller's decision stands");
        assert_eq!(r.parent.map(|p| hex(&p)).as_deref(), Some(S));
        let c = r.try_span(&mut h);
        let child = hex(&c.span_id);
        assert_eq!(h["traceparent"], format!("00-{T}-{child}-01"));
        assert_eq!(h["x-b3-traceid"], T);
        assert_eq!(h["x-b3-spanid"], child.as_str());
        assert_eq!(h["x-b3-parentspanid"], hex(&r.span_id).as_str());
        assert_eq!(h["x-b3-sampled"], "1");
        assert_eq!(h["b3"], format!("{T}-{child}-1"));
        let again = parent(&h).unwrap();
        assert_eq!(again.span_id, Some(c.span_id));
    }

    #[test]
    fn a_new_trace_is_sampled_at_the_percentage() {
        let h = HeaderMap::new();
        assert!((0..200).all(|_| RequestTrace::begin(&h, 100.0).sampled));
        assert!((0..200).all(|_| !RequestTrace::begin(&h, 0.0).sampled));
        let mut out = HeaderMap::new();
        let r = RequestTrace::begin(&h, 0.0);
        r.try_span(&mut out);
        assert!(out["traceparent"].to_str().unwrap().ends_with("-00"));
        assert!(!out.contains_key("b3"));
    }
}
