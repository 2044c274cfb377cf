//! Carrying out a plan: the fault delay, then (within the route timeout) tries to upstream
//! endpoints with the retry policy, copies to mirrors that never hold up the answer, and
//! the response changes and access log line.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7::retry::Outcome;
use proxycore::state::Workload;
use proxycore::ProxyInputs;
use tracing::Instrument;

use crate::body::{full, Body};
use crate::breaker::Held;
use crate::error::Failure;
use crate::h1;
use crate::plan::{Action, Facts, Plan};
use crate::process::Waypoint;
use crate::upstream::{open_tunnel, pick, Backend, Destination, Picked};
use l7::istio::Ejection;

/// Bodies up to this size are held so a request can be retried or mirrored; larger (or
/// unsized) ones stream through, with one try and no mirror.
pub(crate) const REPLAY_LIMIT: u64 = 64 * 1024;
/// A mirrored request gets at most this long.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(30);

/// Per tunnel: what the requests inside it are for and who sent them.
pub struct Context {
    pub wp: Arc<Waypoint>,
    pub target: Target,
    /// The destination's name, for the access log (the listener's at an ingress gateway).
    pub dst_name: String,
    pub source: String,
    /// `source` without `spiffe://`, as policies name principals.
    pub principal: String,
    /// The client's namespace (from its identity), for consumer routes.
    pub source_namespace: String,
    pub client: SocketAddr,
    /// The client's own address (the tunnel's `forwarded` header), and the one it addressed.
    pub source_ip: std::net::IpAddr,
    pub destination_ip: std::net::IpAddr,
    pub tables: crate::plan::Tables,
    /// The tunnel's request metric handles.
    pub recorder: crate::metrics::Recorder,
    /// The tunnel's bytes, counted as they cross (its `istio_tcp_*` series and access line).
    pub bytes: Arc<proxycore::connection::Moved>,
    /// The tunnel's connection and stream ids, and its span: each request's span is a child.
    pub ids: proxycore::listen::Ids,
    pub span: tracing::Span,
}

/// What a connection's requests were addressed to.
pub enum Target {
    /// A waypoint's tunnel: the destination its CONNECT named.
    Mesh(Destination),
    /// An ingress gateway's connection: the port it came in on and whether over TLS; the
    /// gateway's own workload uid picks the listeners it serves.
    Ingress { port: u16, tls: bool, uid: String },
}

/// A request body: held (replayable) or streaming (one use).
pub enum ReqBody {
    Held(Bytes),
    Stream(Body),
}

/// What the forwarding came to: the response and its access-log facts.
struct Answer {
    resp: Response<Body>,
    upstream: Option<Arc<Workload>>,
    flag: &'static str,
    tries: u32,
}

impl Answer {
    /// The answer to a request that failed with `f`.
    fn failed(f: &Failure, upstream: Option<Arc<Workload>>, tries: u32) -> Answer {
        Answer {
            resp: f.response(),
            upstream,
            flag: f.flag(),
            tries,
        }
    }
}

/// One try: the endpoint's response or why there was none, and the endpoint picked.
struct Try {
    result: Result<Response<Body>, Failure>,
    upstream: Option<Arc<Workload>>,
}

impl Try {
    fn failed(f: Failure, upstream: Option<Arc<Workload>>) -> Try {
        Try {
            result: Err(f),
            upstream,
        }
    }

    /// What the retry policy sees.
    fn outcome(&self) -> Outcome {
        match &self.result {
            Ok(r) => Outcome::Response {
                status: r.status().as_u16(),
                grpc: r
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse().ok()),
            },
            Err(f) => f.outcome(),
        }
    }
}

impl Context {
    /// Answers one request, in a span `request{id=R}` inside the tunnel's. The span is at
    /// DEBUG: one per request at INFO cost ~7% of the waypoint's CPU (docs/BENCHMARKS.md),
    /// and the access line carries the id at any level.
    pub async fn handle(&self, req: Request<ReqBody>) -> Response<Body> {
        let id = proxycore::listen::next_id();
        let span = tracing::debug_span!(parent: &self.span, "request", id);
        if span.is_disabled() {
            self.handle_request(req, id).await
        } else {
            self.handle_request(req, id).instrument(span).await
        }
    }

    async fn handle_request(&self, mut req: Request<ReqBody>, id: u64) -> Response<Body> {
        let started = Instant::now();
        // The request's id, kept when the client sent one, else made here, so the app and
        // the calls it makes share one (docs/WIRE.md §8).
        if !req.headers().contains_key(X_REQUEST_ID) {
            req.headers_mut().insert(X_REQUEST_ID, request_id());
        }
        // The request's trace, when this proxy reports spans (docs/OBSERVABILITY.md).
        let trace = self
            .wp
            .config
            .tracing(&self.wp.pi.state, &self.wp.pi.local_ns)
            .map(|t| crate::trace::RequestTrace::begin(req.headers(), t.sampling));
        let request_id = trace
            .as_ref()
            .filter(|t| t.sampled)
            .and_then(|_| req.headers().get(X_REQUEST_ID).cloned());
        // Head and body; a streaming body by its declared length (docs/OBSERVABILITY.md).
        let request_bytes = crate::metrics::head_bytes(req.headers())
            + match req.body() {
                ReqBody::Held(b) => b.len() as u64,
                ReqBody::Stream(b) => hyper::body::Body::size_hint(b).lower(),
            };
        let method = req.method().clone();
        // Both shared with the request's own buffers (no copies): the request may be
        // rewritten, the access log shows it as it came.
        let path_and_query = req.uri().path_and_query().cloned();
        let full_path = path_and_query.as_ref().map_or("/", |p| p.as_str());
        let host_header = req.headers().get(http::header::HOST).cloned();
        let authority = req.uri().authority().cloned();
        let grpc = req
            .headers()
            .get(http::header::CONTENT_TYPE)
            .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
        let host = host_header
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .or(authority.as_ref().map(|a| a.as_str()))
            .unwrap_or_default();
        let facts = Facts {
            wp: &self.wp,
            source_namespace: &self.source_namespace,
            tables: Some(&self.tables),
            principal: (!self.principal.is_empty()).then_some(self.principal.as_str()),
            source_ip: self.source_ip,
            destination_ip: self.destination_ip,
        };
        let plan = match &self.target {
            Target::Mesh(dst) => crate::plan::plan(&facts, dst, &mut req, host),
            Target::Ingress { port, tls, uid } => {
                let ports = self.wp.config.ingress_ports(&self.wp.pi.state, uid);
                crate::plan::ingress(&facts, &ports, *port, *tls, &mut req, host)
            }
        };
        // At an ingress gateway the service is the route's, not the connection's.
        let service = match (&self.target, &plan.action) {
            (
                Target::Ingress { .. },
                Action::Forward(Backend {
                    dst: Destination::Service { svc, .. },
                    ..
                }),
            ) => Some(svc.clone()),
            _ => None,
        };
        let mut delayed = false;
        if let Some(d) = plan.delay {
            tokio::time::sleep(d).await;
            delayed = true;
        }
        let Plan {
            action,
            route,
            host: up_host,
            response_ops,
            timeout,
            retry,
            mirrors,
            details,
            ..
        } = plan;
        let mut out = match action {
            Action::Respond(resp, flag) => Answer {
                resp,
                upstream: None,
                flag,
                tries: 0,
            },
            Action::Forward(backend) => {
                let work = self.forward(req, backend, &up_host, &retry, mirrors, trace.as_ref());
                match timeout {
                    None => work.await,
                    Some(limit) => match tokio::time::timeout(limit, work).await {
                        Ok(r) => r,
                        // The route's timeout, retries included: 504 (ERR-07).
                        Err(_) => Answer::failed(&Failure::Timeout, None, 0),
                    },
                }
            }
        };
        for op in &response_ops {
            op.apply(out.resp.headers_mut());
        }
        let flag = match (delayed, out.flag) {
            (false, f) => f,
            (true, "-") => "DI",
            (true, "FI") => "DI,FI",
            (true, f) => f,
        };
        crate::accesslog::request(
            &crate::accesslog::Request {
                source: &self.source,
                destination: &self.dst_name,
                method: method.as_str(),
                path: full_path,
                authority: host,
                route: route.as_deref().unwrap_or("-"),
                upstream: out.upstream.as_ref().map_or("-", |w| w.name.as_str()),
                status: out.resp.status().as_u16(),
                flags: flag,
                attempts: out.tries,
                duration_ms: started.elapsed().as_millis() as u64,
                details: details.as_deref(),
                spans: &[
                    ("conn", self.ids.conn),
                    ("stream", self.ids.stream.unwrap_or_default()),
                    ("request", id),
                ],
            },
            self.wp.pi.cfg.json_logs,
        );
        if let Some(t) = trace {
            let url = format!("{host}{full_path}");
            let name = format!("{host}/*");
            let attributes = crate::trace::request_attributes(
                method.as_str(),
                url,
                request_id.as_ref(),
                flag,
                &self.wp.pi.local_ns,
            );
            t.end(
                &self.wp.tracer,
                name,
                attributes,
                out.resp.status().as_u16(),
            );
        }
        let outcome = crate::metrics::Outcome {
            service: service.as_ref(),
            upstream: out.upstream.as_ref(),
            status: out.resp.status().as_u16(),
            flags: flag,
            grpc,
            grpc_status: out.resp.headers().get("grpc-status").map(|v| v.as_bytes()),
            request_bytes,
        };
        // gRPC's status is in the trailers unless the head has it: the request is counted
        // when they arrive.
        if grpc
            && outcome.grpc_status.is_none()
            && !hyper::body::Body::is_end_stream(out.resp.body())
        {
            let labels = self.recorder.labels(&self.wp.pi.cfg.cluster_id, &outcome);
            let head = crate::metrics::head_bytes(out.resp.headers());
            let m = &self.wp.metrics;
            return out.resp.map(|b| {
                crate::metrics::GrpcEnd::wrap(b, m, labels, started, request_bytes, head)
            });
        }
        let response_bytes = self.recorder.record(
            &self.wp.metrics,
            &self.wp.pi.cfg.cluster_id,
            &outcome,
            started.elapsed(),
        );
        let head = crate::metrics::head_bytes(out.resp.headers());
        match hyper::body::Body::size_hint(out.resp.body()).exact() {
            Some(n) => {
                response_bytes.observe((head + n) as f64);
                out.resp
            }
            None => out
                .resp
                .map(|b| crate::body::Counted::wrap(b, head, response_bytes)),
        }
    }

    /// Tries `backend` until a try's outcome is not to be retried, or the retries run out;
    /// the last outcome is the answer (ERR-10).
    async fn forward(
        &self,
        req: Request<ReqBody>,
        backend: Backend,
        host: &str,
        retry: &l7::retry::RetryPolicy,
        mirrors: Vec<Backend>,
        trace: Option<&crate::trace::RequestTrace>,
    ) -> Answer {
        let (mut parts, body) = req.into_parts();
        let on_down = upstream_form(&mut parts, &backend, host);
        let replayable = match &body {
            ReqBody::Held(_) => true,
            ReqBody::Stream(b) => {
                hyper::body::Body::is_end_stream(b)
                    || hyper::body::Body::size_hint(b)
                        .exact()
                        .is_some_and(|n| n <= REPLAY_LIMIT)
            }
        };
        let mut body = match body {
            ReqBody::Stream(body) if replayable => match body.collect().await {
                Ok(b) => ReqBody::Held(b.to_bytes()),
                Err(e) => return Answer::failed(&Failure::RequestBody(e.to_string()), None, 0),
            },
            body => body,
        };
        match &body {
            ReqBody::Held(b) => {
                for m in mirrors {
                    self.mirror(&parts, b.clone(), m, host);
                }
            }
            ReqBody::Stream(_) if !mirrors.is_empty() => {
                tracing::debug!("request body too large to mirror");
            }
            ReqBody::Stream(_) => {}
        }
        let mut tried: Vec<String> = Vec::new();
        let mut n = 0;
        loop {
            n += 1;
            let span = trace.map(|t| t.try_span(&mut parts.headers));
            let req = match std::mem::replace(&mut body, ReqBody::Held(Bytes::new())) {
                ReqBody::Held(b) => {
                    body = ReqBody::Held(b.clone());
                    Upstream::Whole(&parts, b)
                }
                // One use: its try is the only one.
                ReqBody::Stream(s) => Upstream::Built(rebuild(&parts, s)),
            };
            let streaming_used = n == 1 && !replayable;
            let one = self
                .try_once(&backend, req, retry.per_try_timeout, &tried)
                .await;
            if let (Some(t), Some(span)) = (trace, span) {
                let status = match &one.result {
                    Ok(r) => r.status().as_u16(),
                    Err(f) => f.status().as_u16(),
                };
                let upstream = one.upstream.as_ref().map(|w| w.name.as_str());
                t.end_try(&self.wp.tracer, span, &backend.dst.name(), upstream, status);
            }
            let retriable = one.result.as_ref().err().is_none_or(Failure::retriable);
            if streaming_used || !retriable || !retry.again(n, one.outcome()) {
                return match one.result {
                    Ok(mut resp) => {
                        if let Some(down) = on_down {
                            if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
                                join_upgrade(down, &mut resp);
                            }
                        }
                        Answer {
                            resp,
                            upstream: one.upstream,
                            flag: "-",
                            tries: n,
                        }
                    }
                    Err(f) => Answer::failed(&f, one.upstream, n),
                };
            }
            if let Some(w) = &one.upstream {
                tried.push(w.uid.clone());
            }
            tokio::time::sleep(retry.wait(n)).await;
        }
    }

    /// One try: an endpoint, a connection to it, the request; the outcome for the retry
    /// policy.
    async fn try_once(
        &self,
        backend: &Backend,
        req: Upstream<'_>,
        per_try: Option<Duration>,
        tried: &[String],
    ) -> Try {
        let attempt = async {
            let cluster = self.cluster(backend);
            let outlier = cluster
                .as_ref()
                .and_then(|c| c.outlier(&self.wp.pi, backend));
            let ejected = match &outlier {
                Some((policy, key, total)) => {
                    let out = self.wp.outliers.ejected(key, Instant::now());
                    if crate::outlier::panic(policy, *total, out.len()) {
                        Vec::new()
                    } else {
                        out
                    }
                }
                None => Vec::new(),
            };
            let mut set_cookie = None;
            let lb = cluster.as_ref().and_then(|c| {
                let balance = c.policies.balance.as_ref()?;
                let hash = match balance {
                    l7::istio::Balance::Hash(on) => {
                        let (headers, uri) = req.head();
                        crate::balance::key(on, headers, uri, self.client.ip()).or_else(|| {
                            let (hash, header) = crate::balance::new_cookie(on)?;
                            set_cookie = Some(header);
                            Some(hash)
                        })
                    }
                    _ => None,
                };
                Some((balance, c.key.as_str(), hash))
            });
            // With outlier detection and no setting, the mesh default: failover by locality
            // (DR-19).
            let locality = cluster.as_ref().and_then(|c| {
                let outlier = c.policies.ejection.is_some();
                match c.policies.locality.as_deref() {
                    Some(s) => Some((s, outlier)),
                    None if outlier => Some((&DEFAULT_LOCALITY, true)),
                    None => None,
                }
            });
            let picked = match pick(&self.wp, backend, tried, &ejected, lb, locality) {
                Ok(p) => p,
                Err(f) => return Try::failed(f, None),
            };
            let limits = cluster
                .as_ref()
                .and_then(|c| Some((c.policies.limits?, &c.key)));
            let slot = match limits {
                Some((limits, key)) => {
                    match self.wp.breakers.admit(key, &limits, req.is_http2()).await {
                        Some(slot) => Some(slot),
                        None => return Try::failed(Failure::Overflow, None),
                    }
                }
                None => None,
            };
            let per_conn = limits.map_or(0, |(l, _)| l.max_requests_per_connection);
            let counted = lb
                .filter(|(b, ..)| **b == l7::istio::Balance::LeastRequest)
                .map(|_| self.wp.balancer.count(&picked.w.uid));
            let tls = cluster.as_ref().and_then(|c| c.policies.tls.as_deref());
            let result = exchange(&self.wp, &picked, self.client, req, per_conn, tls).await;
            if let Some((policy, key, total)) = &outlier {
                // A failed connection or a reset counts as the 503 it is answered with.
                let status = result.as_ref().map_or(503, |r| r.status().as_u16());
                if self.wp.outliers.record(
                    key,
                    &picked.w.uid,
                    status,
                    policy,
                    *total,
                    Instant::now(),
                ) {
                    tracing::info!(cluster = %key, endpoint = %picked.w.name,
                        "outlier detection ejected an endpoint");
                }
            }
            let result = result.map(|mut r| {
                let upgraded = r.status() == StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_by_hop(r.headers_mut(), upgraded);
                if let Some(c) = set_cookie {
                    r.headers_mut().append(http::header::SET_COOKIE, c);
                }
                if slot.is_some() || counted.is_some() {
                    r = r.map(|b| Held::wrap(b, Box::new((slot, counted))));
                }
                r
            });
            Try {
                result,
                upstream: Some(picked.w),
            }
        };
        match per_try {
            None => attempt.await,
            Some(limit) => match tokio::time::timeout(limit, attempt).await {
                Ok(r) => r,
                Err(_) => Try::failed(Failure::Timeout, None),
            },
        }
    }

    /// The DestinationRule policies for `backend`'s cluster (service, port, subset);
    /// `None` when none applies.
    fn cluster(&self, backend: &Backend) -> Option<Cluster> {
        let Destination::Service { svc, port } = &backend.dst else {
            return None;
        };
        let subset = backend.subset.as_deref().map(|s| s.name.as_str());
        let namespaces = [
            svc.namespace.as_str(),
            self.wp.pi.cfg.pod_namespace.as_deref().unwrap_or(""),
            "istio-system",
        ];
        let policies =
            self.wp
                .config
                .policies(&self.wp.pi.state, &svc.hostname, namespaces, *port, subset);
        if policies.ejection.is_none()
            && policies.limits.is_none()
            && policies.balance.is_none()
            && policies.tls.is_none()
            && policies.locality.is_none()
        {
            return None;
        }
        Some(Cluster {
            key: crate::outlier::key(&svc.hostname, *port, subset),
            policies,
        })
    }

    /// A copy of the request to `to`, Host suffixed `-shadow` (VS-19); fire and forget.
    fn mirror(&self, parts: &http::request::Parts, body: Bytes, to: Backend, host: &str) {
        let mut parts = clone_parts(parts);
        if let Ok(v) = http::HeaderValue::from_str(&shadow_host(host)) {
            parts.headers.insert(http::header::HOST, v);
        }
        let (wp, client) = (self.wp.clone(), self.client);
        tokio::spawn(async move {
            let copy = async {
                let picked = pick(&wp, &to, &[], &[], None, None)?;
                let resp =
                    exchange(&wp, &picked, client, Upstream::Whole(&parts, body), 0, None).await?;
                let status = resp.status();
                let _ = resp.into_body().collect().await;
                Ok::<_, Failure>((picked.w, status))
            };
            match tokio::time::timeout(MIRROR_TIMEOUT, copy).await {
                Ok(Ok((w, status))) => tracing::debug!(upstream = %w.name, %status, "mirrored"),
                Ok(Err(e)) => tracing::debug!(error = %e, "mirror failed"),
                Err(_) => tracing::debug!("mirror timed out"),
            }
        });
    }
}

/// Locality load balancing as the mesh has it by default: enabled, no settings.
static DEFAULT_LOCALITY: l7::locality::LocalityLbSetting = l7::locality::LocalityLbSetting {
    enabled: None,
    distribute: Vec::new(),
    failover: Vec::new(),
    failover_priority: Vec::new(),
};

/// A cluster's key (what ejections and breakers count within) and policies.
struct Cluster {
    key: crate::outlier::Key,
    policies: crate::config::Policies,
}

impl Cluster {
    /// The outlier detection, with the key and how many endpoints the cluster has.
    fn outlier(&self, pi: &ProxyInputs, backend: &Backend) -> Option<(Ejection, &String, usize)> {
        let ejection = self.policies.ejection?;
        let Destination::Service { svc, port } = &backend.dst else {
            return None;
        };
        let total = pi.state.count_endpoints_in(svc, *port, |w| {
            backend
                .subset
                .as_ref()
                .is_none_or(|s| s.uids.contains(&w.uid))
        });
        Some((ejection, &self.key, total))
    }
}

/// A request of the waypoint's own (a JWKS fetch, `crate::jwks`) to `p`, as requests are
/// sent.
pub(crate) async fn fetch(
    wp: &Waypoint,
    p: &Picked,
    client: SocketAddr,
    req: Request<Body>,
    tls: Option<&l7::istio::ClientTls>,
) -> Result<Response<Body>, Failure> {
    exchange(wp, p, client, Upstream::Built(req), 0, tls).await
}

const X_REQUEST_ID: http::HeaderName = http::HeaderName::from_static("x-request-id");

/// A new `x-request-id`: a random UUID (version 4, RFC 9562 §5.4).
fn request_id() -> http::HeaderValue {
    let mut b: [u8; 16] = rand::random();
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = |r: std::ops::Range<usize>| b[r].iter().map(|x| format!("{x:02x}")).collect::<String>();
    let id = format!(
        "{}-{}-{}-{}-{}",
        h(0..4),
        h(4..6),
        h(6..8),
        h(8..10),
        h(10..16)
    );
    http::HeaderValue::from_str(&id).expect("hex digits and dashes")
}

/// A request as it goes to an endpoint.
enum Upstream<'a> {
    /// Its head and whole body: spoken by [`h1`] on a kept or new connection (HTTP/1.1), or
    /// built into a request for hyper's HTTP/2 client.
    Whole(&'a http::request::Parts, Bytes),
    /// A request with a streaming body, for hyper's clients.
    Built(Request<Body>),
}

impl Upstream<'_> {
    fn head(&self) -> (&http::HeaderMap, &http::Uri) {
        match self {
            Upstream::Whole(parts, _) => (&parts.headers, &parts.uri),
            Upstream::Built(req) => (req.headers(), req.uri()),
        }
    }

    fn is_http2(&self) -> bool {
        match self {
            Upstream::Whole(parts, _) => parts.version == http::Version::HTTP_2,
            Upstream::Built(req) => req.version() == http::Version::HTTP_2,
        }
    }
}

/// The request to `p`. HTTP/1.1 with a whole body (nearly all requests) goes on a kept
/// connection when one is ready, else on a new one that is kept afterwards ([`h1`]). HTTP/2
/// goes on the connection shared per endpoint and client. A streaming body or an Upgrade
/// gets hyper's HTTP/1.1 client on a connection of its own, not kept. A kept connection
/// serves at most `per_conn` requests (0: no limit; DR-32).
async fn exchange(
    wp: &Waypoint,
    p: &Picked,
    client: SocketAddr,
    req: Upstream<'_>,
    per_conn: u32,
    tls: Option<&l7::istio::ClientTls>,
) -> Result<Response<Body>, Failure> {
    if p.w.tunnel_protocol == proxycore::state::TunnelProtocol::None {
        let req = match req {
            Upstream::Whole(parts, body) => rebuild(parts, full(body)),
            Upstream::Built(req) => req,
        };
        return crate::origin::exchange(&wp.pi, p, req, tls).await;
    }
    let ip = p.w.addresses.first().copied();
    let key: h1::Key = (
        SocketAddr::new(ip.unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into()), p.port),
        client.ip(),
    );
    let req = match req {
        Upstream::Whole(parts, body)
            if parts.version != http::Version::HTTP_2
                && !parts.headers.contains_key(http::header::UPGRADE) =>
        {
            let conn = match wp.kept.take(&key) {
                Some(c) => c,
                None => h1::Conn::new(open_tunnel(&wp.pi, p, client).await?),
            };
            return h1::send(&wp.kept, conn, key, parts, &body, per_conn)
                .await
                .map_err(|e| Failure::Reset(e.into()));
        }
        Upstream::Whole(parts, body) => rebuild(parts, full(body)),
        Upstream::Built(req) => req,
    };
    if req.version() == http::Version::HTTP_2 {
        return exchange_h2(wp, p, client, key, req).await;
    }
    let stream = open_tunnel(&wp.pi, p, client).await?;
    let io = TokioIo::new(hbone::io::H2Io::new(stream));
    let (mut s, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| Failure::Reset(e.into()))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| Failure::Reset(e.into()))?;
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

/// Puts the request in the form it goes to the endpoint in: HTTP/2 when the client spoke it
/// or the port is declared `http2`/`grpc` (gRPC needs trailers), with `:authority` carrying
/// the host and the connection-specific headers HTTP/2 forbids dropped; else HTTP/1.1,
/// origin-form, with a Host header. An HTTP/1.1 Upgrade (WebSocket and others) stays
/// HTTP/1.1: the client's side of the upgrade is returned, to be joined to the endpoint's
/// once it answers 101.
fn upstream_form(
    parts: &mut http::request::Parts,
    backend: &Backend,
    host: &str,
) -> Option<hyper::upgrade::OnUpgrade> {
    let upgrade = parts.version == http::Version::HTTP_11
        && parts.headers.contains_key(http::header::UPGRADE);
    if !upgrade && (parts.version == http::Version::HTTP_2 || speaks_h2(&backend.dst)) {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.version = http::Version::HTTP_2;
        parts.uri = format!("http://{host}{path}")
            .parse()
            .unwrap_or_else(|_| path.parse().unwrap_or_default());
        parts.headers.remove(http::header::HOST);
        strip_hop_by_hop(&mut parts.headers, false);
        return None;
    }
    parts.version = http::Version::HTTP_11;
    strip_hop_by_hop(&mut parts.headers, upgrade);
    // Origin form; a request in origin form already is (nearly all) is left as it is.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        parts.uri = path.parse().unwrap_or_default();
    }
    if parts
        .headers
        .get(http::header::HOST)
        .is_none_or(|h| h != host)
    {
        if let Ok(v) = http::HeaderValue::from_str(host) {
            parts.headers.insert(http::header::HOST, v);
        }
    }
    upgrade
        .then(|| parts.extensions.remove::<hyper::upgrade::OnUpgrade>())
        .flatten()
}

/// Removes the headers that concern one connection only (RFC 9110 §7.6.1): `connection` and
/// the fields it names, `keep-alive`, `proxy-connection`, `transfer-encoding` (the body is
/// framed again on the next hop), `upgrade`, and `te` unless it is `trailers` (gRPC). The
/// client's `connection: close` ends the client's connection, not the endpoint's. For an
/// Upgrade (`upgrade` true: the request, or a 101) `connection: upgrade` and `upgrade` stay.
pub(crate) fn strip_hop_by_hop(headers: &mut http::HeaderMap, upgrade: bool) {
    use http::header::{CONNECTION, TE, TRANSFER_ENCODING, UPGRADE};
    let mut named: Vec<http::HeaderName> = Vec::new();
    for v in headers.get_all(CONNECTION) {
        for token in v.to_str().unwrap_or_default().split(',') {
            let token = token.trim();
            if upgrade && token.eq_ignore_ascii_case("upgrade") {
                continue;
            }
            if let Ok(name) = http::HeaderName::from_bytes(token.as_bytes()) {
                named.push(name);
            }
        }
    }
    for name in named {
        headers.remove(name);
    }
    if upgrade {
        headers.insert(CONNECTION, http::HeaderValue::from_static("upgrade"));
    } else {
        headers.remove(CONNECTION);
        headers.remove(UPGRADE);
    }
    headers.remove("keep-alive");
    headers.remove("proxy-connection");
    headers.remove(TRANSFER_ENCODING);
    if headers.get(TE).is_some_and(|v| v != "trailers") {
        headers.remove(TE);
    }
}

/// After a 101, the bytes of the two upgraded connections, both ways, until either ends.
fn join_upgrade(down: hyper::upgrade::OnUpgrade, resp: &mut Response<Body>) {
    let Some(up) = resp.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return;
    };
    tokio::spawn(async move {
        match tokio::try_join!(down, up) {
            Ok((down, up)) => {
                let (mut down, mut up) = (TokioIo::new(down), TokioIo::new(up));
                let r = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                tracing::debug!(result = ?r, "upgraded connection ended");
            }
            Err(e) => tracing::debug!(error = %e, "upgrade failed"),
        }
    });
}

/// Whether the destination port is declared HTTP/2 (`http2`, `grpc`).
fn speaks_h2(dst: &Destination) -> bool {
    match dst {
        Destination::Service { svc, port } => matches!(
            svc.app_protocols.get(port).map(String::as_str),
            Some("http2" | "grpc")
        ),
        Destination::Workload { .. } => false,
    }
}

/// HTTP/2 connections to endpoints, one per endpoint and client, shared by concurrent
/// requests.
#[derive(Default)]
pub struct H2Upstreams {
    conns: std::sync::Mutex<HashMap<h1::Key, H2Sender>>,
}

type H2Sender = hyper::client::conn::http2::SendRequest<Body>;

/// The request over HTTP/2 to `p`: on the shared connection, opened when there is none.
async fn exchange_h2(
    wp: &Waypoint,
    p: &Picked,
    client: SocketAddr,
    key: h1::Key,
    req: Request<Body>,
) -> Result<Response<Body>, Failure> {
    let shared = {
        let mut conns = wp.h2.conns.lock().unwrap();
        match conns.get(&key) {
            Some(s) if !s.is_closed() => Some(s.clone()),
            Some(_) => {
                conns.remove(&key);
                None
            }
            None => None,
        }
    };
    let mut s = match shared {
        Some(s) => s,
        None => {
            let stream = open_tunnel(&wp.pi, p, client).await?;
            let io = TokioIo::new(hbone::io::H2Io::new(stream));
            let (s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(|e| Failure::Reset(e.into()))?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            let mut conns = wp.h2.conns.lock().unwrap();
            // Connections that closed since (endpoints that went away) go now.
            conns.retain(|_, s| !s.is_closed());
            conns.insert(key, s.clone());
            s
        }
    };
    s.ready().await.map_err(|e| Failure::Reset(e.into()))?;
    let resp = s
        .send_request(req)
        .await
        .map_err(|e| Failure::Reset(e.into()))?;
    Ok(resp.map(|b| b.map_err(Into::into).boxed()))
}

/// `host[:port]` → `host-shadow[:port]`.
fn shadow_host(host: &str) -> String {
    match host.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => format!("{h}-shadow:{p}"),
        _ => format!("{host}-shadow"),
    }
}

fn rebuild(parts: &http::request::Parts, body: Body) -> Request<Body> {
    Request::from_parts(clone_parts(parts), body)
}

/// The head of a request without its extensions (`Parts` is not `Clone`).
fn clone_parts(parts: &http::request::Parts) -> http::request::Parts {
    let (mut p, ()) = Request::new(()).into_parts();
    p.method = parts.method.clone();
    p.uri = parts.uri.clone();
    p.version = parts.version;
    p.headers = parts.headers.clone();
    p
}

#[cfg(test)]
mod tests {
    use super::strip_hop_by_hop;

    #[test]
    fn request_ids_are_version_4_uuids() {
        let a = super::request_id();
        let a = a.to_str().unwrap();
        assert_eq!(a.len(), 36);
        assert_eq!(a.as_bytes()[14], b'4');
        assert!(matches!(a.as_bytes()[19], b'8' | b'9' | b'a' | b'b'), "{a}");
        assert_eq!(a.matches('-').count(), 4);
        assert_ne!(a, super::request_id().to_str().unwrap());
    }
    use http::{HeaderMap, HeaderValue};

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn hop_by_hop_fields_go_and_an_upgrade_keeps_its_own() {
        let given = [
            ("connection", "keep-alive, Upgrade, x-a"),
            ("connection", "x-b"),
            ("upgrade", "websocket"),
            ("x-a", "1"),
            ("x-b", "2"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("x-c", "3"),
        ];
        let mut h = headers(&given);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, headers(&[("x-c", "3")]));
        let mut h = headers(&given);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(
            h,
            headers(&[
                ("connection", "upgrade"),
                ("upgrade", "websocket"),
                ("x-c", "3")
            ])
        );
        let mut h = headers(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h, headers(&[("te", "trailers")]));
    }
}
