//! The waypoint (istio-wire.md §7): terminates HBONE from ztunnels on 15008 as its own
//! identity, takes the CONNECT `:authority` (the original `VIP:port` or `podIP:port`) as the
//! destination, and:
//!
//! - for a service port whose protocol is HTTP (`http`, `http2`, `grpc`), serves HTTP/1.1 and
//!   HTTP/2 (prior knowledge) inside the tunnel, picks an endpoint per request and forwards
//!   it over a new HBONE tunnel to the endpoint's ztunnel (`:authority` podIP:targetPort),
//!   presenting the waypoint's identity;
//! - for any other port, forwards the bytes (L4) the same way.
//!
//! It runs on ztunnel's machinery (`ztunnel::app::run_with`): state and certificates from the
//! control plane, the HBONE pool, admin, readiness, metrics and drain.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use hbone::client::ConnectRequest;
use hbone::io::H2Io;
use hbone::pool::PoolKey;
use hbone::server::Incoming;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;
use ztunnel::admin::Readiness;
use ztunnel::proxy::{socket, ProxyError, ProxyInputs};
use ztunnel::state::{Service, State, Workload};

type Body = BoxBody<Bytes, hyper::Error>;

/// Binds 15008 and serves it until drain; readiness also waits for the certificate.
pub fn start(pi: &Arc<ProxyInputs>, readiness: &Readiness) -> anyhow::Result<()> {
    let listener = socket::listen(None, hbone::HBONE_PORT, pi.cfg.ipv6)?;
    tokio::spawn(ztunnel::proxy::accept_loop(
        pi.clone(),
        listener,
        "waypoint",
        serve_connection,
    ));
    readiness.done("proxy");
    tracing::info!(port = hbone::HBONE_PORT, "waypoint listening");
    Ok(())
}

/// Runs a waypoint: what the `waypoint` binary does. Besides WDS it subscribes to
/// Keelson's HTTPRoute type; a route that does not decode or validate is NACKed by name.
pub async fn run(cfg: ztunnel::config::Config) -> anyhow::Result<()> {
    let start: ztunnel::app::Listeners = Box::new(start);
    let routes = ztunnel::xds_client::ExtraType {
        type_url: xds::type_url::HTTP_ROUTE,
        ready: "xds http routes",
        validate: Arc::new(|b: &[u8]| decode_route(b).map(|_| ())),
    };
    ztunnel::app::run_with(cfg, Some(start), vec![routes]).await
}

/// The process-wide route cache.
fn routes() -> Arc<Routes> {
    static ROUTES: std::sync::OnceLock<Arc<Routes>> = std::sync::OnceLock::new();
    ROUTES.get_or_init(Arc::default).clone()
}

async fn serve_connection(pi: Arc<ProxyInputs>, tcp: TcpStream, peer: SocketAddr) {
    ztunnel::proxy::inbound::serve_hbone(pi, tcp, peer, handle_stream).await
}

/// What a tunnel was opened for: a service port, or a workload's port.
#[derive(Clone)]
enum Destination {
    Service { svc: Arc<Service>, port: u16 },
    Workload { w: Arc<Workload>, port: u16 },
}

impl Destination {
    fn name(&self) -> String {
        match self {
            Destination::Service { svc, port } => format!("{}:{port}", svc.hostname),
            Destination::Workload { w, port } => format!("{}/{}:{port}", w.namespace, w.name),
        }
    }

    fn is_http(&self) -> bool {
        match self {
            Destination::Service { svc, port } => matches!(
                svc.app_protocols.get(port).map(String::as_str),
                Some("http" | "http2" | "grpc")
            ),
            Destination::Workload { .. } => false,
        }
    }
}

fn destination(state: &State, authority: &str) -> Result<Destination, ProxyError> {
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| ProxyError::BadAuthority(authority.to_string()))?;
    let addr = socket::canonical(addr);
    if let Some(svc) = state.service_by_vip(addr.ip()) {
        return Ok(Destination::Service {
            svc,
            port: addr.port(),
        });
    }
    if let Some(w) = state.workload_by_ip(addr.ip()) {
        return Ok(Destination::Workload {
            w,
            port: addr.port(),
        });
    }
    Err(ProxyError::UnknownService(
        authority.to_string(),
        addr.port(),
    ))
}

async fn handle_stream(pi: Arc<ProxyInputs>, inc: Incoming) {
    if !inc.is_connect() {
        return inc.reject(StatusCode::BAD_REQUEST);
    }
    let authority = inc.authority().unwrap_or_default().to_string();
    let source = inc.peer_identity.clone();
    let client = inc.peer_addr;
    let dst = match destination(&pi.state, &authority) {
        Ok(d) => d,
        Err(e) => {
            tracing::event!(target: "access", tracing::Level::INFO, %authority, src.identity = %source, error = %e, "waypoint refused the tunnel");
            return inc.reject(e.status());
        }
    };
    let stream = match inc.accept(&[]) {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "tunnel closed before it was answered"),
    };
    let io = TokioIo::new(H2Io::new(stream));
    if dst.is_http() {
        let ctx = Arc::new(Context {
            pi: pi.clone(),
            dst,
            source: source.to_string(),
            source_namespace: source.namespace.to_string(),
            client,
            routes: routes(),
        });
        let svc = hyper::service::service_fn(move |req| {
            let ctx = ctx.clone();
            async move { Ok::<_, std::convert::Infallible>(ctx.forward(req).await) }
        });
        let result = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(io, svc)
            .await;
        if let Err(e) = result {
            tracing::debug!(%authority, error = %e, "HTTP connection in the tunnel ended");
        }
    } else {
        l4(&pi, &dst, io.into_inner(), client, &source.to_string()).await;
    }
}

/// Per tunnel: what the requests inside it are for and who sent them.
struct Context {
    pi: Arc<ProxyInputs>,
    dst: Destination,
    source: String,
    /// The client's namespace (from its identity), for consumer routes.
    source_namespace: String,
    client: SocketAddr,
    routes: Arc<Routes>,
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(
            Full::new(Bytes::from(format!("{msg}\n")))
                .map_err(|never| match never {})
                .boxed(),
        )
        .unwrap()
}

/// An endpoint of the destination and a tunnel to it, as the waypoint.
async fn tunnel_to(
    pi: &ProxyInputs,
    dst: &Destination,
    client: SocketAddr,
) -> Result<(hbone::stream::H2Stream, Arc<Workload>), (StatusCode, String, &'static str)> {
    let (w, target, host) = match dst {
        Destination::Service { svc, port } => {
            let ep = pi.state.pick_endpoint(svc, *port).ok_or((
                StatusCode::SERVICE_UNAVAILABLE,
                format!("no healthy upstream for {}:{port}", svc.hostname),
                "UH",
            ))?;
            (ep.workload, ep.port, Some(svc.hostname.clone()))
        }
        Destination::Workload { w, port } => (w.clone(), *port, None),
    };
    let ip = *w.addresses.first().ok_or((
        StatusCode::SERVICE_UNAVAILABLE,
        format!("workload {} has no address", w.name),
        "UH",
    ))?;
    let key = PoolKey {
        src_identity: pi.local_identity(),
        dst_identities: vec![w.identity()],
        dst: SocketAddr::new(ip, hbone::HBONE_PORT),
        src_ip: None,
    };
    let req = ConnectRequest::new(
        SocketAddr::new(ip, target).to_string(),
        client,
        host.as_deref(),
    );
    let stream = pi.hbone(&key, &req).await.map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error: {e}"),
            "UF",
        )
    })?;
    Ok((stream, w))
}

impl Context {
    async fn forward(&self, mut req: Request<hyper::body::Incoming>) -> Response<Body> {
        let started = Instant::now();
        let method = req.method().clone();
        let full_path = req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_else(|| "/".into());
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_string)
            .or_else(|| req.uri().authority().map(|a| a.to_string()))
            .unwrap_or_default();
        let plan = self.plan(&mut req, &host);
        let route_name = plan.route.clone().unwrap_or_else(|| "-".into());
        let (resp, upstream, flag) = match plan.action {
            Action::Respond(resp, flag) => (resp, None, flag),
            Action::Forward(dst, host) => {
                let attempt = async {
                    match tunnel_to(&self.pi, &dst, self.client).await {
                        Err((status, msg, flag)) => (text(status, &msg), None, flag),
                        Ok((stream, w)) => {
                            // To the endpoint in HTTP/1.1, origin-form, with a Host header.
                            let path = req
                                .uri()
                                .path_and_query()
                                .map(|p| p.to_string())
                                .unwrap_or_else(|| "/".into());
                            *req.version_mut() = http::Version::HTTP_11;
                            *req.uri_mut() = path.parse().unwrap_or_default();
                            if let Ok(v) = http::HeaderValue::from_str(&host) {
                                req.headers_mut().insert(http::header::HOST, v);
                            }
                            match send(stream, req).await {
                            Ok(r) => (r, Some(w), "-"),
                            Err(e) => (
                                text(
                                    StatusCode::SERVICE_UNAVAILABLE,
                                    &format!(
                                        "upstream connect error or disconnect/reset before headers: {e}"
                                    ),
                                ),
                                Some(w),
                                "UC",
                            ),
                        }
                        }
                    }
                };
                match plan.timeout {
                    None => attempt.await,
                    Some(limit) => match tokio::time::timeout(limit, attempt).await {
                        Ok(r) => r,
                        // The route's timeout: 504 (l7-semantics.md ERR-07).
                        Err(_) => (
                            text(StatusCode::GATEWAY_TIMEOUT, "upstream request timeout"),
                            None,
                            "UT",
                        ),
                    },
                }
            }
        };
        let mut resp = resp;
        for m in &plan.response_headers {
            l7::table::modify_headers(resp.headers_mut(), m);
        }
        tracing::event!(target: "access", tracing::Level::INFO,
            src.identity = %self.source,
            destination = %self.dst.name(),
            %method, path = %full_path, authority = %host,
            route = %route_name,
            upstream = upstream.as_ref().map(|w| w.name.as_str()).unwrap_or("-"),
            status = resp.status().as_u16(),
            response_flags = flag,
            duration_ms = started.elapsed().as_millis() as u64,
            "request");
        resp
    }

    /// What to do with a request: the HTTPRoutes attached to the service port it was
    /// addressed to decide (l7-semantics.md §3, §5); without any, it goes to that service.
    fn plan(&self, req: &mut Request<hyper::body::Incoming>, host: &str) -> Plan {
        let Destination::Service { svc, port } = &self.dst else {
            return Plan::forward(self.dst.clone(), host);
        };
        let frontend = l7::table::Frontend {
            namespace: &svc.namespace,
            name: &svc.name,
            port: *port,
            port_name: None,
            client_namespace: &self.source_namespace,
        };
        let table = self.routes.table(&self.pi.state, &frontend);
        let Some(table) = table.as_ref() else {
            return Plan::forward(self.dst.clone(), host);
        };
        let path = req.uri().path().to_string();
        let query = req.uri().query().map(str::to_string);
        let selected = table.select(&l7::table::RequestView {
            method: req.method().as_str(),
            path: &path,
            query: query.as_deref(),
            headers: req.headers(),
        });
        let Some(sel) = selected else {
            return Plan::respond(text(StatusCode::NOT_FOUND, "no matching route"), "NR", None);
        };
        let route_name = format!("{}/{}", sel.route.namespace, sel.route.name);
        let rule = sel.rule();
        let mut plan = Plan::respond(
            text(StatusCode::INTERNAL_SERVER_ERROR, "no valid backend"),
            "NR",
            Some(route_name.clone()),
        );
        let mut host = host.to_string();
        let mut new_path = path.clone();
        if let Some(r) = self.apply_filters(
            &rule.filters,
            req,
            &mut host,
            &mut new_path,
            &sel,
            &mut plan,
            *port,
        ) {
            return r;
        }
        let Some(backend) = l7::table::pick_backend(rule) else {
            return plan; // no backend, or all weights 0: 500
        };
        if let Some(r) = self.apply_filters(
            &backend.filters,
            req,
            &mut host,
            &mut new_path,
            &sel,
            &mut plan,
            *port,
        ) {
            return r;
        }
        let backend_ns = backend
            .namespace
            .clone()
            .unwrap_or_else(|| sel.route.namespace.clone());
        let backend_host = format!("{}.{backend_ns}.svc.cluster.local", backend.name);
        let backend_svc = backend
            .is_service()
            .then(|| self.pi.state.service_by_host(&backend_host, &backend_ns))
            .flatten();
        let Some(backend_svc) = backend_svc else {
            return plan; // invalid backend: its share gets 500
        };
        if new_path != path {
            let pq = match &query {
                Some(q) => format!("{new_path}?{q}"),
                None => new_path,
            };
            if let Ok(uri) = pq.parse() {
                *req.uri_mut() = uri;
            }
        }
        plan.action = Action::Forward(
            Destination::Service {
                svc: backend_svc,
                port: backend.port.unwrap_or(*port),
            },
            host,
        );
        plan.timeout = rule_timeout(rule);
        plan
    }

    /// Applies `filters` to the request; a redirect answers at once (returned).
    #[allow(clippy::too_many_arguments)]
    fn apply_filters(
        &self,
        filters: &[l7::httproute::Filter],
        req: &mut Request<hyper::body::Incoming>,
        host: &mut String,
        path: &mut String,
        sel: &l7::table::Selected,
        plan: &mut Plan,
        port: u16,
    ) -> Option<Plan> {
        use l7::httproute::FilterType as F;
        for f in filters {
            match f.kind {
                F::RequestHeaderModifier => {
                    if let Some(m) = &f.request_header_modifier {
                        l7::table::modify_headers(req.headers_mut(), m);
                    }
                }
                F::ResponseHeaderModifier => {
                    if let Some(m) = &f.response_header_modifier {
                        plan.response_headers.push(m.clone());
                    }
                }
                F::RequestRedirect => {
                    let r = f.request_redirect.as_ref()?;
                    let (status, location) = l7::table::redirect(
                        r,
                        host,
                        port,
                        path,
                        req.uri().query(),
                        sel.matched_prefix.as_deref(),
                    );
                    let mut resp = text(
                        StatusCode::from_u16(status).unwrap_or(StatusCode::FOUND),
                        "redirect",
                    );
                    if let Ok(v) = http::HeaderValue::from_str(&location) {
                        resp.headers_mut().insert(http::header::LOCATION, v);
                    }
                    let mut out = Plan::respond(resp, "-", plan.route.clone());
                    out.response_headers = plan.response_headers.clone();
                    return Some(out);
                }
                F::URLRewrite => {
                    if let Some(rw) = &f.url_rewrite {
                        if let Some(h) = &rw.hostname {
                            *host = h.clone();
                        }
                        if let Some(m) = &rw.path {
                            *path = l7::table::modify_path(path, m, sel.matched_prefix.as_deref());
                        }
                    }
                }
                // Validated away at the control plane, or not applied yet (mirror).
                _ => {}
            }
        }
        None
    }
}

/// The shorter of `timeouts.request` and `timeouts.backendRequest`; `0s` disables one.
fn rule_timeout(rule: &l7::httproute::Rule) -> Option<std::time::Duration> {
    let t = rule.timeouts.as_ref()?;
    [&t.request, &t.backend_request]
        .into_iter()
        .flatten()
        .filter_map(|d| l7::httproute::parse_duration(d).ok())
        .filter(|d| !d.is_zero())
        .min()
}

enum Action {
    Respond(Response<Body>, &'static str),
    /// To this destination, with this Host.
    Forward(Destination, String),
}

struct Plan {
    action: Action,
    route: Option<String>,
    response_headers: Vec<l7::httproute::HeaderModifier>,
    /// Until the response headers: the rule's `timeouts.request`, or `backendRequest`
    /// (per try; with no retries it bounds the whole request, as Istio maps it).
    timeout: Option<std::time::Duration>,
}

impl Plan {
    fn forward(dst: Destination, host: &str) -> Plan {
        Plan {
            action: Action::Forward(dst, host.to_string()),
            route: None,
            response_headers: Vec::new(),
            timeout: None,
        }
    }

    fn respond(resp: Response<Body>, flag: &'static str, route: Option<String>) -> Plan {
        Plan {
            action: Action::Respond(resp, flag),
            route,
            response_headers: Vec::new(),
            timeout: None,
        }
    }
}

/// The HTTPRoutes from the control plane, decoded once per state change, and the route
/// table of each frontend (service, port, client namespace), built (regexes compiled,
/// precedence sorted) once per state change instead of per request.
#[derive(Default)]
pub struct Routes {
    cached: std::sync::Mutex<RouteCache>,
}

type FrontendKey = (String, String, u16, String);

#[derive(Default)]
struct RouteCache {
    /// The state version the rest was built from; `None` before the first build.
    version: Option<u64>,
    routes: Vec<Arc<l7::table::Route>>,
    tables: std::collections::HashMap<FrontendKey, Arc<Option<l7::table::RouteTable>>>,
}

impl Routes {
    /// The table for `frontend`; `None` inside when no route attaches to it.
    fn table(
        &self,
        state: &State,
        frontend: &l7::table::Frontend<'_>,
    ) -> Arc<Option<l7::table::RouteTable>> {
        let version = state.version();
        let mut c = self.cached.lock().unwrap();
        if c.version != Some(version) {
            let routes = state
                .extras(xds::type_url::HTTP_ROUTE)
                .values()
                .filter_map(|b| decode_route(b).ok())
                .map(Arc::new)
                .collect();
            *c = RouteCache {
                version: Some(version),
                routes,
                tables: Default::default(),
            };
        }
        let key = (
            frontend.namespace.to_string(),
            frontend.name.to_string(),
            frontend.port,
            frontend.client_namespace.to_string(),
        );
        if let Some(t) = c.tables.get(&key) {
            return t.clone();
        }
        let t = Arc::new(l7::table::RouteTable::build(&c.routes, frontend));
        c.tables.insert(key, t.clone());
        t
    }
}

/// An HTTPRoute resource from the control plane, checked.
pub fn decode_route(bytes: &[u8]) -> Result<l7::table::Route, String> {
    use prost::Message;
    let r = xds::l7::HttpRoute::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let spec: l7::httproute::HttpRouteSpec =
        serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    spec.validate()?;
    Ok(l7::table::Route {
        namespace: r.namespace,
        name: r.name,
        created: r.created,
        spec,
    })
}

async fn send(
    stream: hbone::stream::H2Stream,
    req: Request<hyper::body::Incoming>,
) -> Result<Response<Body>, hyper::Error> {
    let io = TokioIo::new(H2Io::new(stream));
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    let resp = sender.send_request(req).await?;
    Ok(resp.map(|b| b.boxed()))
}

/// L4: the tunnel's bytes to an endpoint, both ways.
async fn l4(pi: &ProxyInputs, dst: &Destination, down: H2Io, client: SocketAddr, source: &str) {
    let started = Instant::now();
    match tunnel_to(pi, dst, client).await {
        Err((_, msg, flag)) => {
            tracing::event!(target: "access", tracing::Level::INFO, src.identity = %source, destination = %dst.name(),
                response_flags = flag, error = %msg, "tcp connection failed");
        }
        Ok((up, w)) => {
            let mut down = down;
            let mut up = H2Io::new(up);
            let r = tokio::io::copy_bidirectional(&mut down, &mut up).await;
            let (sent, received) = r.unwrap_or_default();
            tracing::event!(target: "access", tracing::Level::INFO, src.identity = %source, destination = %dst.name(),
                upstream = %w.name, bytes_sent = sent, bytes_recv = received,
                duration_ms = started.elapsed().as_millis() as u64, "tcp connection complete");
        }
    }
}
