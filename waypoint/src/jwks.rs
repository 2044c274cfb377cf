//! JWKS fetched from inside the mesh (docs/WIRE.md §8): a RequestAuthentication's `jwksUri`
//! with an `http://` (or `https://`) URL is fetched by the waypoint itself, as a request of
//! its own to that service through the mesh (HBONE to a mesh endpoint, with the waypoint's
//! identity; TLS for `https` to an endpoint outside the mesh). Until a JWKS is fetched the
//! rule has no keys, so its tokens fail (nothing is let through unverified). Fetched again
//! every 20 minutes (keys rotate), and every 5 seconds while a fetch fails.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use http::Request;
use http_body_util::BodyExt;

use crate::body::full;
use crate::process::Waypoint;
use crate::upstream::{pick, Backend, Destination};

const REFRESH: Duration = Duration::from_secs(20 * 60);
const RETRY: Duration = Duration::from_secs(5);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest JWKS read.
const MAX_BODY: usize = 1 << 20;

/// The JWKS fetched by URL, and the URLs wanted.
#[derive(Default)]
pub struct RemoteJwks {
    bodies: RwLock<HashMap<String, String>>,
    wanted: Mutex<BTreeSet<String>>,
    /// Bumped whenever a body changes: what was built from them is rebuilt.
    generation: AtomicU64,
    wake: tokio::sync::Notify,
}

impl RemoteJwks {
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// The JWKS at `uri` when it has been fetched; otherwise it is asked for.
    pub fn get(&self, uri: &str) -> Option<String> {
        if let Some(b) = self.bodies.read().unwrap().get(uri) {
            return Some(b.clone());
        }
        if self.wanted.lock().unwrap().insert(uri.to_string()) {
            self.wake.notify_one();
        }
        None
    }

    fn store(&self, uri: &str, body: String) {
        let mut bodies = self.bodies.write().unwrap();
        if bodies.get(uri) != Some(&body) {
            bodies.insert(uri.to_string(), body);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Fetches the wanted JWKS for as long as the process runs.
pub fn start(wp: &Arc<Waypoint>) {
    let wp = wp.clone();
    tokio::spawn(async move {
        let remote = wp.config.remote_jwks.clone();
        loop {
            let wanted: Vec<String> = remote.wanted.lock().unwrap().iter().cloned().collect();
            let mut failed = false;
            for uri in wanted {
                match tokio::time::timeout(FETCH_TIMEOUT, fetch(&wp, &uri)).await {
                    Ok(Ok(body)) => {
                        tracing::info!(%uri, "JWKS fetched");
                        remote.store(&uri, body);
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(%uri, error = %e, "cannot fetch the JWKS");
                        failed = true;
                    }
                    Err(_) => {
                        tracing::warn!(%uri, "cannot fetch the JWKS: timed out");
                        failed = true;
                    }
                }
            }
            let wait = if failed { RETRY } else { REFRESH };
            tokio::select! {
                _ = remote.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    });
}

/// One GET of `uri` through the mesh; the body when it is a JWKS.
async fn fetch(wp: &Waypoint, uri: &str) -> Result<String, String> {
    let url: http::Uri = uri.parse().map_err(|e| format!("{e}"))?;
    let https = url.scheme_str() == Some("https");
    let host = url.host().ok_or_else(|| "no host".to_string())?;
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let pi = &wp.pi;
    let svc = pi
        .state
        .service_by_host(host, &pi.local_ns)
        .ok_or_else(|| format!("no service {host} is known"))?;
    let backend = Backend::of(Destination::Service { svc, port });
    let picked = pick(wp, &backend, &[], &[], None, None).map_err(|e| e.to_string())?;
    let req = Request::get(url.path_and_query().map_or("/", |p| p.as_str()))
        .header(
            http::header::HOST,
            url.authority().map_or(host, |a| a.as_str()),
        )
        .header(http::header::ACCEPT, "application/json")
        .body(full(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let tls = https.then(|| l7::istio::ClientTls {
        mode: Some("SIMPLE".into()),
        ..Default::default()
    });
    let own = pi
        .state
        .workload_by_name(&pi.local_ns, &pi.local_name)
        .and_then(|w| w.addresses.first().copied())
        .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED.into());
    let resp = crate::forward::fetch(wp, &picked, SocketAddr::new(own, 0), req, tls.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let mut body = resp.into_body();
    let mut read = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {e}"))?;
        if let Some(data) = frame.data_ref() {
            read.extend_from_slice(data);
            if read.len() > MAX_BODY {
                return Err(format!("the body is over {MAX_BODY} bytes"));
            }
        }
    }
    let text = String::from_utf8(read).map_err(|_| "not UTF-8".to_string())?;
    l7::jwt::Jwks::parse(&text).map_err(|e| format!("not a JWKS: {e}"))?;
    Ok(text)
}
