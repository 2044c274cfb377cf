//! `keelson ui` (docs/OBSERVABILITY.md): a live service graph of the local mesh, what
//! Kiali shows Istio users. A small HTTP server (127.0.0.1 by default) serves one page
//! (`ui.html`) and its data:
//!
//! - `/api/graph`: workloads and services as nodes; as edges, the requests waypoints and
//!   gateways carried (source workload → service: rate, error rate, p99) and the
//!   connections ztunnels carried (source → destination workload: rate, mTLS, denials).
//!   Rates come from the proxies' own metrics, scraped every [`SCRAPE_EVERY`] and
//!   differenced over the last [`WINDOW`].
//! - `/api/node?id=ID`: a node's policies and routes, from ztunnel's and the waypoint's
//!   admin ports.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use serde_json::{json, Value};

use super::inspect::sample;
use super::{MeshState, Paths};

const PAGE: &str = include_str!("ui.html");
pub const DEFAULT_LISTEN: &str = "127.0.0.1:20001";
const SCRAPE_EVERY: Duration = Duration::from_secs(2);
/// Rates are over this much of the past.
const WINDOW: Duration = Duration::from_secs(30);

/// One scrape of every proxy: counters and histogram buckets summed by edge.
#[derive(Default, Clone)]
struct Scrape {
    /// (source, service) → requests, 5xx, denied (403 with a policy flag or DENY).
    http: BTreeMap<(String, String), [f64; 3]>,
    /// (source, service, le) → cumulative count under `le`.
    buckets: BTreeMap<(String, String, String), f64>,
    /// (source, destination) → connections opened, failed/denied, mTLS seen.
    tcp: BTreeMap<(String, String), [f64; 3]>,
}

struct Shared {
    paths: Paths,
    history: Mutex<VecDeque<(Instant, Scrape)>>,
}

fn workload_id(ns: &str, name: &str) -> String {
    format!("workload:{ns}/{name}")
}

fn get(netns: &str, addr: &str, path: &str) -> Option<String> {
    super::inspect::get(netns, addr, path).ok()
}

/// Every proxy's metrics text: the ztunnels' and those of waypoints and gateways.
fn scrape_all(state: &MeshState) -> Scrape {
    let mut texts = Vec::new();
    for n in &state.nodes {
        if let Some(t) = get(&n.netns, "127.0.0.1:15020", "/metrics") {
            texts.push(t);
        }
    }
    for p in &state.pods {
        if p.runs_proxy(true) {
            if let Some(t) = get(&p.netns, "127.0.0.1:15020", "/metrics") {
                texts.push(t);
            }
        }
    }
    let mut s = Scrape::default();
    for text in &texts {
        for line in text.lines() {
            let Some((name, l, v)) = sample(line) else {
                continue;
            };
            let label = |k: &str| l.get(k).copied().unwrap_or("unknown");
            let src = workload_id(label("source_workload_namespace"), label("source_workload"));
            match name {
                // A waypoint reports `waypoint`, an ingress gateway (the client of the
                // services it routes to) `source`; ztunnel has no request metrics.
                "istio_requests_total" if matches!(label("reporter"), "waypoint" | "source") => {
                    let svc = format!("service:{}", label("destination_service"));
                    let dst = workload_id(
                        label("destination_workload_namespace"),
                        label("destination_workload"),
                    );
                    // The client to the service, and the service to the workload that
                    // answered (the split the routes made).
                    let mut edges = vec![(src, svc.clone())];
                    if label("destination_workload") != "unknown" {
                        edges.push((svc, dst));
                    }
                    for edge in edges {
                        let e = s.http.entry(edge).or_default();
                        e[0] += v;
                        if label("response_code").starts_with('5') {
                            e[1] += v;
                        }
                        if label("response_code") == "403" {
                            e[2] += v;
                        }
                    }
                }
                "istio_request_duration_milliseconds_bucket"
                    if matches!(label("reporter"), "waypoint" | "source") =>
                {
                    let svc = format!("service:{}", label("destination_service"));
                    *s.buckets
                        .entry((src, svc, label("le").to_string()))
                        .or_default() += v;
                }
                "istio_tcp_connections_opened_total" | "istio_tcp_connections_failed_total"
                    if label("reporter") == "destination" =>
                {
                    let dst = workload_id(
                        label("destination_workload_namespace"),
                        label("destination_workload"),
                    );
                    let e = s.tcp.entry((src, dst)).or_default();
                    if name == "istio_tcp_connections_opened_total" {
                        e[0] += v;
                        if label("connection_security_policy") == "mutual_tls" {
                            e[2] += v;
                        }
                    }
                    if name == "istio_tcp_connections_failed_total"
                        || label("response_flags") == "DENY"
                    {
                        e[1] += v;
                    }
                }
                _ => {}
            }
        }
    }
    s
}

/// The 99th percentile of the requests counted between two scrapes of cumulative buckets.
fn p99(old: &Scrape, new: &Scrape, edge: &(String, String)) -> Option<f64> {
    let mut buckets: Vec<(f64, f64)> = new
        .buckets
        .iter()
        .filter(|((s, d, _), _)| (s, d) == (&edge.0, &edge.1))
        .map(|((s, d, le), v)| {
            let before = old
                .buckets
                .get(&(s.clone(), d.clone(), le.clone()))
                .copied()
                .unwrap_or(0.0);
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap_or(f64::INFINITY)
            };
            (le, v - before)
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let want = total * 0.99;
    buckets
        .iter()
        .find(|(_, n)| *n >= want)
        .map(|(le, _)| if le.is_finite() { *le } else { f64::NAN })
}

fn graph(shared: &Shared) -> Value {
    let history = shared.history.lock().unwrap();
    let (Some((t_old, old)), Some((t_new, new))) = (history.front(), history.back()) else {
        return json!({ "nodes": [], "edges": [] });
    };
    let secs = (*t_new - *t_old).as_secs_f64().max(1.0);
    let mut nodes: BTreeMap<String, Value> = BTreeMap::new();
    let add_node = |id: &str, nodes: &mut BTreeMap<String, Value>| {
        if nodes.contains_key(id) {
            return;
        }
        let (kind, rest) = id.split_once(':').unwrap_or(("workload", id));
        // A workload is `ns/name`; a service its hostname, `name.ns.svc...`.
        let (ns, name) = rest
            .split_once('/')
            .unwrap_or_else(|| (rest.split('.').nth(1).unwrap_or(""), rest));
        let (kind, label) = match kind {
            "service" => (
                "service",
                name.split('.').next().unwrap_or(name).to_string(),
            ),
            _ if name.starts_with("waypoint") => ("waypoint", name.to_string()),
            _ if name.contains("ingressgateway") || name.ends_with("-istio") => {
                ("gateway", name.to_string())
            }
            _ => ("workload", name.to_string()),
        };
        nodes.insert(
            id.to_string(),
            json!({ "id": id, "kind": kind, "namespace": ns, "name": label }),
        );
    };
    let mut edges = Vec::new();
    for (edge, n) in &new.http {
        let o = old.http.get(edge).copied().unwrap_or_default();
        let (req, err, denied) = (n[0] - o[0], n[1] - o[1], n[2] - o[2]);
        if n[0] <= 0.0 {
            continue;
        }
        add_node(&edge.0, &mut nodes);
        add_node(&edge.1, &mut nodes);
        edges.push(json!({
            "from": edge.0, "to": edge.1, "protocol": "http",
            "rps": req / secs,
            "errorRate": if req > 0.0 { err / req } else { 0.0 },
            "p99ms": p99(old, new, edge).filter(|v| v.is_finite()),
            "denied": denied > 0.0,
            "mtls": true,
            "total": n[0],
        }));
    }
    for (edge, n) in &new.tcp {
        let o = old.tcp.get(edge).copied().unwrap_or_default();
        if n[0] + n[1] <= 0.0 {
            continue;
        }
        add_node(&edge.0, &mut nodes);
        add_node(&edge.1, &mut nodes);
        edges.push(json!({
            "from": edge.0, "to": edge.1, "protocol": "tcp",
            "cps": (n[0] - o[0]) / secs,
            "denied": n[1] - o[1] > 0.0,
            "mtls": n[2] > 0.0,
            "total": n[0],
        }));
    }
    json!({
        "nodes": nodes.into_values().collect::<Vec<_>>(),
        "edges": edges,
        "windowSeconds": secs,
    })
}

/// A node's policies (ztunnel's view of its namespace) and, for a service, the waypoint's
/// routes for it.
fn node_details(shared: &Shared, id: &str) -> Value {
    let Ok(state) = MeshState::load(&shared.paths) else {
        return json!({ "error": "no local mesh" });
    };
    let (_, rest) = id.split_once(':').unwrap_or(("", id));
    let (ns, name) = rest
        .split_once('/')
        .unwrap_or_else(|| (rest.split('.').nth(1).unwrap_or(""), rest));
    let dump = state
        .nodes
        .first()
        .and_then(|n| get(&n.netns, "127.0.0.1:15000", "/config_dump"))
        .and_then(|b| serde_json::from_str::<Value>(&b).ok())
        .unwrap_or_default();
    let mut policies: Vec<Value> = dump["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["namespace"] == ns || p["scope"] == "Global")
        .map(|p| json!({ "name": format!("{}/{}", p["namespace"].as_str().unwrap_or(""), p["name"].as_str().unwrap_or("")), "action": p["action"], "scope": p["scope"] }))
        .collect();
    let mut routes = Vec::new();
    if id.starts_with("service:") {
        for p in &state.pods {
            if !p.runs_proxy(false) {
                continue;
            }
            let r = get(&p.netns, "127.0.0.1:15000", "/waypoint/routes")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .unwrap_or_default();
            for svc in r["services"].as_array().into_iter().flatten() {
                if svc["service"] == rest {
                    routes.push(json!({ "waypoint": format!("{}/{}", p.namespace, p.name), "ports": svc["ports"] }));
                    // L7 policies, enforced by the waypoint.
                    for pol in svc["policies"].as_array().into_iter().flatten() {
                        policies.push(json!({ "name": pol["name"], "action": pol["action"], "scope": format!("waypoint {}/{}", p.namespace, p.name) }));
                    }
                }
            }
        }
    }
    json!({ "id": id, "namespace": ns, "name": name, "policies": policies, "routes": routes })
}

fn respond(status: StatusCode, ctype: &str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", ctype)
        .header("cache-control", "no-store")
        .body(Full::new(body.into()))
        .unwrap_or_default()
}

fn handle(shared: &Shared, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/" | "/index.html" => respond(StatusCode::OK, "text/html; charset=utf-8", PAGE),
        "/api/graph" => respond(
            StatusCode::OK,
            "application/json",
            graph(shared).to_string(),
        ),
        "/api/node" => {
            let id = req
                .uri()
                .query()
                .and_then(|q| q.split('&').find_map(|kv| kv.strip_prefix("id=")))
                .map(percent_decode)
                .unwrap_or_default();
            respond(
                StatusCode::OK,
                "application/json",
                node_details(shared, &id).to_string(),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// `%XX` escapes of a query value.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the page on `listen` until killed, scraping the mesh meanwhile.
pub fn serve(paths: Paths, listen: SocketAddr) -> Result<()> {
    MeshState::load(&paths).context("no local mesh (keelson up first)")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let shared = Arc::new(Shared {
            paths,
            history: Mutex::default(),
        });
        let scraper = shared.clone();
        tokio::spawn(async move {
            loop {
                let s = scraper.clone();
                let scrape = tokio::task::spawn_blocking(move || {
                    MeshState::load(&s.paths)
                        .map(|state| scrape_all(&state))
                        .ok()
                })
                .await
                .ok()
                .flatten();
                if let Some(scrape) = scrape {
                    let now = Instant::now();
                    let mut h = scraper.history.lock().unwrap();
                    h.push_back((now, scrape));
                    while h.len() > 2 && h.front().is_some_and(|(t, _)| now - *t > WINDOW) {
                        h.pop_front();
                    }
                }
                tokio::time::sleep(SCRAPE_EVERY).await;
            }
        });
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("binding {listen}"))?;
        println!("keelson ui: http://{listen}/");
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let shared = shared.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let shared = shared.clone();
                    async move {
                        let resp = tokio::task::spawn_blocking(move || handle(&shared, &req))
                            .await
                            .unwrap_or_else(|_| {
                                respond(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", "failed\n")
                            });
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                    .await;
            });
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_decoded() {
        assert_eq!(percent_decode("service%3Aa.b%2Fc"), "service:a.b/c");
        assert_eq!(percent_decode("a+b%2"), "a b%2");
    }

    #[test]
    fn p99_reads_the_bucket_deltas() {
        let edge = ("a".to_string(), "b".to_string());
        let mut old = Scrape::default();
        let mut new = Scrape::default();
        for (le, o, n) in [("5", 10.0, 10.0), ("50", 10.0, 60.0), ("+Inf", 10.0, 110.0)] {
            old.buckets
                .insert((edge.0.clone(), edge.1.clone(), le.into()), o);
            new.buckets
                .insert((edge.0.clone(), edge.1.clone(), le.into()), n);
        }
        assert_eq!(p99(&old, &new, &edge).map(|v| v.is_nan()), Some(true));
        new.buckets
            .insert((edge.0.clone(), edge.1.clone(), "+Inf".into()), 60.0);
        assert_eq!(p99(&old, &new, &edge), Some(50.0));
    }
}
