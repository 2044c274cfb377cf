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

/// Runs a waypoint: what the `waypoint` binary does.
pub async fn run(cfg: ztunnel::config::Config) -> anyhow::Result<()> {
    let start: ztunnel::app::Listeners = Box::new(start);
    ztunnel::app::run_with(cfg, Some(start)).await
}

async fn serve_connection(pi: Arc<ProxyInputs>, tcp: TcpStream, peer: SocketAddr) {
    let local = match tcp.local_addr() {
        Ok(a) => socket::canonical(a),
        Err(_) => return,
    };
    let tls = match pi.server_tls().await {
        Ok(t) => t,
        Err(e) => return tracing::warn!(%peer, error = %e, "no certificate to serve HBONE with"),
    };
    let stop = pi.drain.started();
    let handler = {
        let pi = pi.clone();
        move |inc: Incoming| handle_stream(pi.clone(), inc)
    };
    if let Err(e) = hbone::server::serve(tcp, peer, local, tls, &pi.cfg.h2, stop, handler).await {
        tracing::info!(%peer, error = %e, "HBONE connection failed");
    }
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
            client,
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
    client: SocketAddr,
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
        let path = req
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
        let (resp, upstream, flag) = match tunnel_to(&self.pi, &self.dst, self.client).await {
            Err((status, msg, flag)) => (text(status, &msg), None, flag),
            Ok((stream, w)) => {
                // To the endpoint in HTTP/1.1, origin-form, with a Host header.
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
        };
        tracing::event!(target: "access", tracing::Level::INFO,
            src.identity = %self.source,
            destination = %self.dst.name(),
            %method, %path, authority = %host,
            upstream = upstream.as_ref().map(|w| w.name.as_str()).unwrap_or("-"),
            status = resp.status().as_u16(),
            response_flags = flag,
            duration_ms = started.elapsed().as_millis() as u64,
            "request");
        resp
    }
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
