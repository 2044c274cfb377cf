//! The small HTTP servers: admin on localhost:15000 (`/config_dump`, `/quitquitquit`),
//! Prometheus on 15020 (`/metrics`, `/stats/prometheus`) and readiness on 15021
//! (`/healthz/ready`).

use std::convert::Infallible;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::ProxyInputs;

pub type Body = Full<Bytes>;

pub fn reply(status: StatusCode, content_type: &str, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", content_type)
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

/// Serves HTTP/1.1 on `listener` with `handler` until `stop` resolves.
pub async fn serve<H, F>(listener: TcpListener, stop: impl Future<Output = ()>, handler: H)
where
    H: Fn(Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = Response<Body>> + Send + 'static,
{
    tokio::pin!(stop);
    loop {
        let (tcp, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => return,
        };
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// Readiness: the tasks still pending before the proxy may receive traffic.
#[derive(Clone, Default)]
pub struct Readiness {
    pending: Arc<Mutex<Vec<&'static str>>>,
    draining: Arc<AtomicBool>,
}

impl Readiness {
    pub fn register(&self, task: &'static str) {
        self.pending.lock().unwrap().push(task);
    }

    pub fn done(&self, task: &'static str) {
        self.pending.lock().unwrap().retain(|t| *t != task);
    }

    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn response(&self, req: &Request<Incoming>) -> Response<Body> {
        if req.method() != Method::GET {
            return reply(
                StatusCode::METHOD_NOT_ALLOWED,
                "text/plain",
                "method not allowed\n",
            );
        }
        if req.uri().path() != "/healthz/ready" {
            return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
        }
        let pending = self.pending.lock().unwrap().clone();
        if self.draining.load(Ordering::Relaxed) {
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                "not ready, draining\n",
            )
        } else if pending.is_empty() {
            reply(StatusCode::OK, "text/plain", "ready\n")
        } else {
            reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                "text/plain",
                format!("not ready, pending: {{{}}}\n", pending.join(", ")),
            )
        }
    }
}

/// `/metrics`: always OpenMetrics text; the content type follows the Accept header.
pub fn metrics_response(registry: &Registry, req: &Request<Incoming>) -> Response<Body> {
    if !matches!(req.uri().path(), "/metrics" | "/stats/prometheus") {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found\n");
    }
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, registry) {
        return reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "text/plain",
            e.to_string(),
        );
    }
    let wants_om = req
        .headers()
        .get("accept")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let ct = if wants_om {
        "application/openmetrics-text;charset=utf-8;version=1.0.0"
    } else {
        "text/plain; charset=utf-8"
    };
    reply(StatusCode::OK, ct, text)
}

/// jemalloc's view of the heap, in bytes: what the program holds (`allocated`), the pages
/// that holds (`active`), what the allocator keeps mapped and touched (`resident`). A process
/// not on jemalloc (tests) reports zeros.
fn allocator_stats() -> serde_json::Value {
    use tikv_jemalloc_ctl::{epoch, stats};
    let _ = epoch::advance();
    serde_json::json!({
        "allocated": stats::allocated::read().unwrap_or(0),
        "active": stats::active::read().unwrap_or(0),
        "resident": stats::resident::read().unwrap_or(0),
        "metadata": stats::metadata::read().unwrap_or(0),
        "mapped": stats::mapped::read().unwrap_or(0),
        "retained": stats::retained::read().unwrap_or(0),
    })
}

/// The admin's `/config_dump` (docs/OBSERVABILITY.md): upstream ztunnel's top-level keys,
/// and in each workload, service and certificate the fields `istioctl ztunnel-config`
/// reads beside Keelson's own; then Keelson's extras (pool, open connections).
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct ConfigDump<'a> {
    workloads: Vec<serde_json::Value>,
    services: Vec<serde_json::Value>,
    /// Upstream lists services not yet confirmed by a workload; Keelson has none.
    staged_services: serde_json::Map<String, serde_json::Value>,
    policies: &'a [Arc<crate::rbac::Policy>],
    certificates: Vec<identity::store::CertSummary>,
    static_config: serde_json::Map<String, serde_json::Value>,
    config: &'a crate::config::Config,
    version: &'static str,
    pool: hbone::pool::PoolStats,
    open_connections: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    workload_state: Option<serde_json::Value>,
}

/// Upstream's `GatewayAddress` rendering: `destination` is `namespace/hostname` or
/// `network/ip`.
fn gateway_view(w: &crate::state::Waypoint) -> serde_json::Value {
    let destination = match w.address {
        Some(ip) => format!("/{ip}"),
        None => format!("{}/{}", w.namespace, w.hostname),
    };
    serde_json::json!({ "destination": destination, "hboneMtlsPort": w.port })
}

/// A workload with upstream's `workloadIps`, `protocol` and `waypoint` shape.
fn workload_view(w: &crate::state::Workload) -> serde_json::Value {
    let mut v = serde_json::to_value(w).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "workloadIps".into(),
            w.addresses.iter().map(|a| a.to_string()).collect(),
        );
        let protocol = match w.tunnel_protocol {
            crate::state::TunnelProtocol::Hbone => "HBONE",
            crate::state::TunnelProtocol::None => "TCP",
        };
        o.insert("protocol".into(), protocol.into());
        if let Some(wp) = &w.waypoint {
            o.insert("waypoint".into(), gateway_view(wp));
        }
    }
    v
}

/// A service with upstream's `vips` (`network/ip`), `waypoint` and `endpoints` (by
/// workload uid).
fn service_view(
    s: &crate::state::Service,
    workloads: &[Arc<crate::state::Workload>],
) -> serde_json::Value {
    let mut v = serde_json::to_value(s).unwrap_or_default();
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "vips".into(),
            s.addresses.iter().map(|a| format!("/{a}")).collect(),
        );
        if let Some(wp) = &s.waypoint {
            o.insert("waypoint".into(), gateway_view(wp));
        }
        let key = s.key();
        let endpoints: serde_json::Map<String, serde_json::Value> = workloads
            .iter()
            .filter_map(|w| {
                let ports = w.services.get(key)?;
                Some((
                    w.uid.clone(),
                    serde_json::json!({
                        "workloadUid": w.uid,
                        "service": key,
                        "port": ports,
                    }),
                ))
            })
            .collect();
        o.insert("endpoints".into(), endpoints.into());
    }
    v
}

/// `pods`: shared mode's in-pod workloads (`workloadState`).
pub fn admin_response(
    pi: &ProxyInputs,
    pods: Option<serde_json::Value>,
    req: &Request<Incoming>,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/config_dump") => {
            let state = pi.state.dump();
            let dump = ConfigDump {
                workloads: state.workloads.iter().map(|w| workload_view(w)).collect(),
                services: state
                    .services
                    .iter()
                    .map(|s| service_view(s, &state.workloads))
                    .collect(),
                staged_services: serde_json::Map::new(),
                policies: &state.policies,
                certificates: pi.certs.summaries(),
                static_config: serde_json::Map::new(),
                config: pi.cfg.as_ref(),
                version: env!("CARGO_PKG_VERSION"),
                pool: pi.pool.stats(),
                open_connections: pi.drain.open(),
                workload_state: pods,
            };
            match serde_json::to_string_pretty(&dump) {
                Ok(body) => reply(StatusCode::OK, "application/json", body),
                Err(e) => reply(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain",
                    format!("config dump: {e}\n"),
                ),
            }
        }
        (&Method::GET, "/debug/memory") => {
            let body = serde_json::to_string_pretty(&allocator_stats()).unwrap_or_default();
            reply(StatusCode::OK, "application/json", body)
        }
        (&Method::POST, "/quitquitquit") => {
            pi.drain.begin();
            reply(StatusCode::OK, "text/plain", "draining\n")
        }
        (_, "/quitquitquit") => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "use POST\n"),
        (&Method::GET, "/") => reply(
            StatusCode::OK,
            "text/html",
            "<html><body><a href=\"/config_dump\">config_dump</a> · <a href=\"/debug/memory\">debug/memory</a> · POST /quitquitquit</body></html>",
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}
