//! The demo applications bundled in the `keelson` binary: a bookinfo-like set of HTTP/1.1
//! services on one port each. Every answer names the service and version that produced it
//! (`reviews-v2`), so routing is observable from a client:
//!
//! - `details` (`/details/<id>`), `ratings` (`/ratings/<id>`): leaves.
//! - `reviews` (`/reviews/<id>`): v1 answers alone, v2 and v3 call `ratings`.
//! - `productpage` (`/productpage`): calls `details` and `reviews`; an HTML page with
//!   sign-in, the JSON API and a health check (`bookinfo.rs`).
//!
//! Calls go to `http://<service>:9080` by name (the pod's resolver, hence ztunnel's DNS
//! proxy) and forward the headers routing rules look at (`end-user`, `cookie`,
//! `user-agent`, `x-request-id`, trace context). Every app also serves the test endpoints
//! `/status/<code>` (answers that code), `/delay/<ms>` (answers after that long), `/headers`
//! (echoes the request headers), `/echo` (answers with the request body, at most 1 MiB),
//! `/bytes/<n>` (n bytes, for benchmarks), `/upgrade` (an
//! HTTP/1.1 Upgrade that echoes bytes) and `/requests` (how many requests it has served).
//! With `TLS_CERT` and `TLS_KEY` (PEM files) an app serves HTTPS instead, and with
//! `TLS_CLIENT_CA` asks clients for a certificate that CA signed.
//! `collector` is not bookinfo either: an OTLP/gRPC trace receiver that logs each span
//! (`apps/collector.rs`).
//! `raw` is not bookinfo: a hand-written HTTP/1.1 server whose answers hyper's server would
//! never produce (chunk extensions and trailers, close-delimited bodies, conflicting
//! lengths), for testing the waypoint's upstream client.

use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use tokio::net::{TcpListener, TcpStream};

mod bookinfo;
pub mod collector;
pub mod fortio;
mod weather;

/// The bundled apps.
pub const APPS: &[&str] = &[
    "productpage",
    "details",
    "reviews",
    "ratings",
    "frontend",
    "advertisement",
    "forecast",
    "recommendation",
    "httpbin",
    "echo",
    "raw",
    "collector",
];

/// The weather demo's apps (`apps/weather.rs`).
const WEATHER: &[&str] = &["frontend", "advertisement", "forecast", "recommendation"];

/// Headers an app passes on to the services it calls.
const PROPAGATED: &[&str] = &[
    "end-user",
    "cookie",
    "user-agent",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
];

#[derive(Debug, Clone)]
pub struct AppOptions {
    pub name: String,
    pub version: String,
    pub port: u16,
    /// Port of the services this one calls.
    pub upstream_port: u16,
}

struct App {
    opts: AppOptions,
    served: AtomicU64,
    /// Faults from the environment, on the app's own pages (not the test endpoints):
    /// `DELAY_MS` before every answer, `FAIL_PERCENT` of the answers a 500.
    delay: Duration,
    fail_percent: f64,
}

impl App {
    fn id(&self) -> String {
        format!("{}-{}", self.opts.name, self.opts.version)
    }
}

/// Runs the app until killed.
pub fn run(opts: AppOptions) -> Result<()> {
    if !APPS.contains(&opts.name.as_str()) {
        bail!("unknown app {:?}; bundled: {}", opts.name, APPS.join(", "));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    if opts.name == "raw" {
        return rt.block_on(raw::serve(opts.port));
    }
    if opts.name == "collector" {
        return rt.block_on(collector::serve(opts.port));
    }
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<f64>().ok());
    rt.block_on(serve(Arc::new(App {
        opts,
        served: AtomicU64::new(0),
        delay: Duration::from_millis(env("DELAY_MS").unwrap_or(0.0).clamp(0.0, 60_000.0) as u64),
        fail_percent: env("FAIL_PERCENT").unwrap_or(0.0).clamp(0.0, 100.0),
    })))
}

async fn serve(app: Arc<App>) -> Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", app.opts.port))
        .await
        .with_context(|| format!("binding port {}", app.opts.port))?;
    let tls = tls_acceptor()?;
    eprintln!(
        "{} listening on :{}{}",
        app.id(),
        app.opts.port,
        if tls.is_some() { " (TLS)" } else { "" }
    );
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                eprintln!("accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let app = app.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                let app = app.clone();
                async move {
                    if req.uri().path().starts_with(GRPC_ECHO) {
                        app.served.fetch_add(1, Ordering::Relaxed);
                        return Ok::<_, Infallible>(grpc_echo(&app, req).await);
                    }
                    Ok(handle(&app, req).await.map(|b| b.boxed()))
                }
            });
            // HTTP/1.1, and HTTP/2 with prior knowledge (h2c), on the same port; over TLS
            // when the app has a certificate (ALPN h2 or http/1.1).
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            match tls {
                None => {
                    let _ = builder
                        .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                }
                Some(tls) => match tls.accept(tcp).await {
                    Ok(s) => {
                        let _ = builder
                            .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(s), svc)
                            .await;
                    }
                    Err(e) => eprintln!("TLS handshake: {e}"),
                },
            }
        });
    }
}

/// TLS for the app when `TLS_CERT` and `TLS_KEY` name PEM files (an HTTPS server standing
/// for a host outside the mesh); `TLS_CLIENT_CA` too: clients must present a certificate
/// that CA signed.
fn tls_acceptor() -> Result<Option<tokio_rustls::TlsAcceptor>> {
    let (Ok(cert), Ok(key)) = (std::env::var("TLS_CERT"), std::env::var("TLS_KEY")) else {
        return Ok(None);
    };
    let read = |path: &str| std::fs::read(path).with_context(|| format!("reading {path}"));
    let chain = rustls_pemfile::certs(&mut read(&cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("certificates in {cert}"))?;
    let key = rustls_pemfile::private_key(&mut read(&key)?.as_slice())
        .with_context(|| format!("key in {key}"))?
        .with_context(|| format!("no key in {key}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    let builder = match std::env::var("TLS_CLIENT_CA") {
        Ok(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in rustls_pemfile::certs(&mut read(&ca)?.as_slice()) {
                roots.add(c?)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()?;
            builder.with_client_cert_verifier(verifier)
        }
        Err(_) => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// The gRPC test service: `/keelson.test.Echo/Echo` answers the request's message with
/// `grpc-status: 0` in trailers; `/keelson.test.Echo/Fail` is a trailers-only
/// `grpc-status: 14` (UNAVAILABLE).
const GRPC_ECHO: &str = "/keelson.test.Echo/";

type AppBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

async fn grpc_echo(app: &App, req: Request<Incoming>) -> Response<AppBody> {
    let fail = req.uri().path().ends_with("/Fail");
    let version = format!("{:?}", req.version());
    let message = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let builder = Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/grpc")
        .header("x-keelson-app", app.id())
        .header("x-keelson-protocol", version);
    if fail {
        return builder
            .header("grpc-status", "14")
            .header("grpc-message", "unavailable on purpose")
            .body(Full::new(Bytes::new()).boxed())
            .unwrap();
    }
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = vec![
        Ok::<_, Infallible>(hyper::body::Frame::data(message)),
        Ok(hyper::body::Frame::trailers(trailers)),
    ];
    builder
        .body(http_body_util::StreamBody::new(futures::stream::iter(frames)).boxed())
        .unwrap()
}

fn reply(status: StatusCode, app: &App, body: String) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-keelson-app", app.id())
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

async fn handle(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    app.served.fetch_add(1, Ordering::Relaxed);
    match tool(app, req).await {
        Ok(resp) => resp,
        Err(req) => {
            if !app.delay.is_zero() {
                tokio::time::sleep(app.delay).await;
            }
            if app.fail_percent > 0.0 && rand::random::<f64>() * 100.0 < app.fail_percent {
                return reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    app,
                    format!(
                        "{{\"service\":\"{}\",\"error\":\"failed on purpose (FAIL_PERCENT)\"}}\n",
                        app.id()
                    ),
                );
            }
            page(app, req).await
        }
    }
}

/// The endpoints every app has for tests and benchmarks; `Err`: none, the request back.
async fn tool(
    app: &App,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Request<Incoming>> {
    let id = app.id();
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let resp = match segments.as_slice() {
        ["requests"] => {
            let n = app.served.load(Ordering::Relaxed) - 1;
            reply(StatusCode::OK, app, format!("{n}\n"))
        }
        ["status", code] => {
            let status = code
                .parse::<u16>()
                .ok()
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::BAD_REQUEST);
            reply(status, app, format!("{{\"service\":\"{id}\"}}\n"))
        }
        ["upgrade"] if req.headers().contains_key(hyper::header::UPGRADE) => upgrade(req),
        ["bytes", n] => {
            // `n` bytes (at most 1 MiB), for benchmarks; a request body is read and dropped.
            let n = n.parse::<usize>().unwrap_or(0).min(1 << 20);
            let _ = req.into_body().collect().await;
            Response::builder()
                .status(StatusCode::OK)
                .header("content-type", "application/octet-stream")
                .body(Full::new(Bytes::from(vec![b'x'; n])))
                .unwrap()
        }
        ["echo"] => echo(app, req).await,
        ["delay", n] => {
            // httpbin's is in seconds, the others' in milliseconds.
            let scale = if app.opts.name == "httpbin" { 1000 } else { 1 };
            let ms = n
                .parse::<u64>()
                .unwrap_or(0)
                .saturating_mul(scale)
                .min(60_000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            reply(StatusCode::OK, app, format!("{{\"service\":\"{id}\"}}\n"))
        }
        ["headers"] => headers(app, &req),
        _ => return Err(req),
    };
    Ok(resp)
}

/// 101, then every byte echoed back on the upgraded connection.
fn upgrade(mut req: Request<Incoming>) -> Response<Full<Bytes>> {
    let proto = req.headers()[hyper::header::UPGRADE].clone();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        if let Ok(up) = on.await {
            let (mut r, mut w) = tokio::io::split(hyper_util::rt::TokioIo::new(up));
            let _ = tokio::io::copy(&mut r, &mut w).await;
        }
    });
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(hyper::header::CONNECTION, "upgrade")
        .header(hyper::header::UPGRADE, proto)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// The request body back (at most 1 MiB, else 413).
async fn echo(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    match http_body_util::Limited::new(req.into_body(), 1 << 20)
        .collect()
        .await
    {
        Ok(b) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/octet-stream")
            .body(Full::new(b.to_bytes()))
            .unwrap(),
        Err(e) => reply(StatusCode::PAYLOAD_TOO_LARGE, app, format!("{e}\n")),
    }
}

/// The request as the app saw it: path, HTTP version and headers, as JSON.
fn headers(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(String::from_utf8_lossy(v.as_bytes()).into()),
            )
        })
        .collect();
    let body = serde_json::json!({"service": app.id(), "path": req.uri().path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        "version": format!("{:?}", req.version()), "headers": headers});
    reply(StatusCode::OK, app, format!("{body}\n"))
}

/// The app's own page: bookinfo's JSON for its name, calling the services behind it with
/// the tracing headers passed on.
async fn page(app: &App, req: Request<Incoming>) -> Response<Full<Bytes>> {
    let id = app.id();
    let path = req.uri().path().to_string();
    let forward: Vec<(String, String)> = PROPAGATED
        .iter()
        .filter_map(|h| {
            req.headers()
                .get(*h)
                .and_then(|v| v.to_str().ok())
                .map(|v| (h.to_string(), v.to_string()))
        })
        .collect();
    let body = match app.opts.name.as_str() {
        "details" => serde_json::json!({
            "service": id, "id": 0, "title": "The Comedy of Errors",
            "author": "William Shakespeare", "year": 1595, "pages": 200,
            "type": "paperback", "publisher": "Keelson Books", "language": "English",
            "ISBN-10": "1234567890", "ISBN-13": "123-1234567890",
        }),
        "ratings" => serde_json::json!({
            "service": id, "id": 0, "ratings": {"Reviewer1": 5, "Reviewer2": 4},
        }),
        "reviews" => {
            let mut body = serde_json::json!({
                "service": id, "id": 0,
                "reviews": [
                    {"reviewer": "Reviewer1", "text": "An extremely entertaining play by Shakespeare."},
                    {"reviewer": "Reviewer2", "text": "Absolutely fun and entertaining."},
                ],
            });
            if app.opts.version != "v1" {
                let color = if app.opts.version == "v2" {
                    "black"
                } else {
                    "red"
                };
                body["color"] = color.into();
                body["ratings"] = call(app, "ratings", "/ratings/0", &forward).await;
            }
            body
        }
        "productpage" => return bookinfo::serve(app, req).await,
        name if WEATHER.contains(&name) => return weather::serve(app, req).await,
        "httpbin" => return httpbin(app, &req),
        _ => serde_json::json!({"service": id, "path": path}),
    };
    reply(StatusCode::OK, app, format!("{body}\n"))
}

/// `httpbin`, the paths the Istio tasks use: `/get`, `/anything[/...]`, `/ip`,
/// `/user-agent` (and the test endpoints: `/status/<code>`, `/delay/<seconds>`,
/// `/headers`).
fn httpbin(app: &App, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into()))
        .collect();
    let args: serde_json::Map<String, serde_json::Value> = req
        .uri()
        .query()
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.into()))
        .collect();
    let path = req.uri().path();
    let body = match path {
        "/ip" => serde_json::json!({"origin": "unknown"}),
        "/user-agent" => serde_json::json!({"user-agent": headers.get("user-agent")}),
        "/get" => {
            serde_json::json!({"args": args, "headers": headers, "url": req.uri().to_string(), "service": app.id()})
        }
        p if p == "/anything" || p.starts_with("/anything/") => serde_json::json!({
            "args": args, "headers": headers, "method": req.method().as_str(),
            "url": req.uri().to_string(), "service": app.id(),
        }),
        _ => {
            return reply(
                StatusCode::NOT_FOUND,
                app,
                "{\"error\":\"not found\"}\n".into(),
            )
        }
    };
    reply(StatusCode::OK, app, format!("{body:#}\n"))
}

/// GET `http://<service>:<port><path>`; the JSON answer, or an error object naming what
/// failed (the page still renders, as bookinfo's does).
async fn call(
    app: &App,
    service: &str,
    path: &str,
    forward: &[(String, String)],
) -> serde_json::Value {
    call_with(app, service, path, forward, Duration::from_secs(10)).await
}

/// [`call`] with its own time limit.
async fn call_with(
    app: &App,
    service: &str,
    path: &str,
    forward: &[(String, String)],
    limit: Duration,
) -> serde_json::Value {
    match tokio::time::timeout(limit, get(service, app.opts.upstream_port, path, forward)).await {
        Ok(Ok((200, body))) => serde_json::from_slice(&body)
            .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned().into()),
        Ok(Ok((status, _))) => {
            serde_json::json!({"error": format!("{service} answered {status}")})
        }
        Ok(Err(e)) => serde_json::json!({"error": format!("{service} unavailable: {e:#}")}),
        Err(_) => serde_json::json!({"error": format!("{service} timed out")}),
    }
}

async fn get(
    host: &str,
    port: u16,
    path: &str,
    forward: &[(String, String)],
) -> Result<(u16, Bytes)> {
    let tcp = TcpStream::connect((host, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp)).await?;
    tokio::spawn(conn);
    let mut req = Request::get(path).header("host", format!("{host}:{port}"));
    for (k, v) in forward {
        req = req.header(k, v);
    }
    let resp = sender
        .send_request(req.body(Full::new(Bytes::new()))?)
        .await?;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await?.to_bytes();
    Ok((status, body))
}

/// `raw`: an HTTP/1.1 server written by hand, for what hyper's server never sends: the
/// framings and faults a proxy's HTTP/1.1 client must cope with. By path (request bodies
/// with `content-length` are read and dropped):
///
/// - `/conn`: 200, `content-length`, the body is this connection's number (counted from 1),
///   so a client can see whether its requests share a connection;
/// - `/chunked`: 200, chunked in three writes, with a chunk extension and a trailer;
/// - `/close`: 200 without a length: the body ends when the connection closes;
/// - `/nocontent`: 204;
/// - `/continue`: 100 Continue, then 200;
/// - `/conflict`: 200 with two different `content-length`s (malformed), then close;
/// - `/fail`: 503 (an endpoint that always fails, for outlier detection);
/// - `/headers`: 200, the body is the request's head as received; the answer names
///   `x-hop` in `connection: close, x-hop` and carries `x-hop` and `keep-alive`, fields
///   for this connection only, then the connection closes;
/// - any `HEAD`: 200 with `content-length: 10` and no body.
mod raw {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::Duration;

    use anyhow::{Context, Result};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    pub async fn serve(port: u16) -> Result<()> {
        let listener = TcpListener::bind(("0.0.0.0", port))
            .await
            .with_context(|| format!("binding port {port}"))?;
        eprintln!("raw listening on :{port}");
        static CONNS: AtomicU64 = AtomicU64::new(0);
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let n = CONNS.fetch_add(1, Ordering::Relaxed) + 1;
            tokio::spawn(async move {
                if let Err(e) = connection(tcp, n).await {
                    eprintln!("connection {n}: {e}");
                }
            });
        }
    }

    async fn connection(mut tcp: TcpStream, conn: u64) -> std::io::Result<()> {
        let _ = tcp.set_nodelay(true);
        let mut buf = Vec::new();
        while let Some(head) = read_request(&mut tcp, &mut buf).await? {
            if !answer(&mut tcp, conn, &head).await? {
                return tcp.shutdown().await;
            }
        }
        Ok(())
    }

    /// One request head, then its body by content-length (dropped); `None` at the end of
    /// the connection or past 64 KiB of head.
    async fn read_request(
        tcp: &mut TcpStream,
        buf: &mut Vec<u8>,
    ) -> std::io::Result<Option<String>> {
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 64 * 1024 {
                return Ok(None);
            }
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        let length: usize = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        while buf.len() < end + length {
            let mut chunk = [0u8; 4096];
            let n = tcp.read(&mut chunk).await?;
            if n == 0 {
                return Ok(None);
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        buf.drain(..end + length);
        Ok(Some(head))
    }

    /// Answers the request with `head`; `false`: the connection is to be closed.
    async fn answer(tcp: &mut TcpStream, conn: u64, head: &str) -> std::io::Result<bool> {
        let mut line = head.split_whitespace();
        let (method, path) = (line.next().unwrap_or(""), line.next().unwrap_or(""));
        if method == "HEAD" {
            tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n")
                .await?;
            return Ok(true);
        }
        match path {
            "/conn" => {
                let body = format!("{conn}\n");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                tcp.write_all(resp.as_bytes()).await?;
            }
            "/chunked" => {
                let parts: [&[u8]; 3] = [
                    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n",
                    b"7\r\n, chunk\r\n",
                    b"3\r\ned\n\r\n0\r\nx-trailer: t\r\n\r\n",
                ];
                for p in parts {
                    tcp.write_all(p).await?;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            "/close" => {
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil close\n")
                    .await?;
                return Ok(false);
            }
            "/nocontent" => tcp.write_all(b"HTTP/1.1 204 No Content\r\n\r\n").await?,
            "/fail" => {
                tcp.write_all(
                    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 5\r\n\r\nfail\n",
                )
                .await?
            }
            "/continue" => {
                tcp.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                tokio::time::sleep(Duration::from_millis(20)).await;
                tcp.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\ncontinued")
                    .await?;
            }
            "/conflict" => {
                tcp.write_all(
                    b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ncontent-length: 4\r\n\r\nabcd",
                )
                .await?;
                return Ok(false);
            }
            "/headers" => {
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nconnection: close, x-hop\r\nx-hop: secret\r\n\
                     keep-alive: timeout=5\r\ncontent-length: {}\r\n\r\n{head}",
                    head.len()
                );
                tcp.write_all(resp.as_bytes()).await?;
                return Ok(false);
            }
            _ => {
                tcp.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
                    .await?
            }
        }
        Ok(true)
    }
}
