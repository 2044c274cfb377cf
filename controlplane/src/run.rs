//! `keelson controlplane`: read a directory of Kubernetes YAML, keep watching it, and serve
//! what it describes over delta ADS and the CA on one TLS port.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use identity::LocalCa;
use tokio::sync::watch;

use crate::server::{self, Counters, Shared};
use crate::snapshot::Snapshot;
use crate::token::{TokenAuthority, TOKEN_FILE};
use resources::{MeshSettings, ResourceDir};

pub const DEFAULT_PORT: u16 = 15012;
pub const DEFAULT_MONITORING_PORT: u16 = 15014;
/// How often the resource directory is checked for changes.
pub const POLL: Duration = Duration::from_millis(200);
/// The service account ztunnels run as; its tokens may ask for other identities.
pub const ZTUNNEL_ACCOUNT: &str = "istio-system/ztunnel";
/// Where node-bound ztunnel tokens are written, one file per node.
pub const NODE_TOKENS_DIR: &str = "node-tokens";

#[derive(Debug, Clone)]
pub struct Options {
    pub resources: PathBuf,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra DNS names or IPs for the serving certificate.
    pub sans: Vec<String>,
    pub mesh: MeshSettings,
    /// Plain-HTTP `/metrics`; `None` to not serve it.
    pub monitoring: Option<SocketAddr>,
}

/// Writes a node-bound ztunnel token for every node that runs pods.
fn write_node_tokens(state_dir: &Path, tokens: &TokenAuthority, snap: &Snapshot) {
    let dir = state_dir.join(NODE_TOKENS_DIR);
    let _ = std::fs::create_dir_all(&dir);
    let (ns, sa) = ZTUNNEL_ACCOUNT.split_once('/').unwrap_or_default();
    let nodes: std::collections::BTreeSet<&String> =
        snap.placements.iter().map(|(n, _, _)| n).collect();
    for node in nodes {
        let path = dir.join(node);
        if !path.exists() {
            let _ = identity::ca::write_private(&path, &tokens.mint(ns, sa, Some(node)));
        }
    }
}

/// The CA and the token key of a state directory, created on first use; the root certificate
/// and a ztunnel token (`token`) are written for clients.
pub fn load_state(
    state_dir: &Path,
    mesh: &MeshSettings,
) -> anyhow::Result<(LocalCa, TokenAuthority)> {
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("creating {}", state_dir.display()))?;
    let ca = LocalCa::load_or_create(state_dir, &mesh.trust_domain, server::DEFAULT_CERT_TTL)
        .context("loading or creating the root CA")?;
    if ca.roots().len() > 1 {
        tracing::info!(
            roots = ca.roots().len(),
            "trusting more than the signing root (root rotation)"
        );
    }
    let tokens = TokenAuthority::load_or_create(state_dir)?;
    let (ns, sa) = ZTUNNEL_ACCOUNT.split_once('/').unwrap_or_default();
    identity::ca::write_private(&state_dir.join(TOKEN_FILE), &tokens.mint(ns, sa, None))?;
    Ok((ca, tokens))
}

/// TLS for the server: a certificate from `ca` for the usual istiod names, `listen`'s IP when
/// it is specific, and `sans`.
pub fn serving_tls(
    ca: &LocalCa,
    listen: SocketAddr,
    sans: &[String],
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let mut names = vec![
        "istiod.istio-system.svc".to_string(),
        "istiod.istio-system.svc.cluster.local".to_string(),
        "localhost".to_string(),
        "127.0.0.1".to_string(),
    ];
    if !listen.ip().is_unspecified() {
        names.push(listen.ip().to_string());
    }
    names.extend(sans.iter().cloned());
    let (chain, key) = ca.issue_serving(&names, Duration::from_secs(365 * 24 * 3600))?;
    server::tls_config(chain, key)
}

pub async fn run(opts: Options) -> anyhow::Result<()> {
    let (ca, tokens) = load_state(&opts.state_dir, &opts.mesh)?;
    let tokens = Arc::new(tokens);
    let mut dir = ResourceDir::new(&opts.resources);
    dir.scan();
    let snap = Snapshot::build(&dir.merged(), &opts.mesh);
    write_node_tokens(&opts.state_dir, &tokens, &snap);
    tracing::info!(
        addresses = snap.count(xds::type_url::ADDRESS),
        authorizations = snap.count(xds::type_url::AUTHORIZATION),
        "initial snapshot"
    );
    let (tx, rx) = watch::channel(Arc::new(snap));
    let tls = serving_tls(&ca, opts.listen, &opts.sans)?;
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("binding {}", opts.listen))?;
    tracing::info!(listen = %opts.listen, state_dir = %opts.state_dir.display(),
        resources = %opts.resources.display(), "control plane serving");

    let counters = Arc::new(Counters::default());
    counters
        .resource_file_errors
        .store(dir.errors, std::sync::atomic::Ordering::Relaxed);
    if let Some(addr) = opts.monitoring {
        let l = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the monitoring port {addr}"))?;
        tokio::spawn(server::serve_monitoring(l, counters.clone()));
    }
    let shared = Arc::new(Shared {
        snapshot: rx,
        ca: Arc::new(ca),
        tokens: tokens.clone(),
        trust_domain: opts.mesh.trust_domain.clone(),
        trusted_node_accounts: vec![ZTUNNEL_ACCOUNT.to_string()],
        counters: counters.clone(),
    });
    let mesh = opts.mesh.clone();
    let state_dir = opts.state_dir.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(POLL).await;
            let changed = dir.scan();
            counters
                .resource_file_errors
                .store(dir.errors, std::sync::atomic::Ordering::Relaxed);
            if !changed {
                continue;
            }
            let snap = Snapshot::build(&dir.merged(), &mesh);
            write_node_tokens(&state_dir, &tokens, &snap);
            let changed = tx.send_if_modified(|cur| {
                if **cur == snap {
                    return false;
                }
                *cur = Arc::new(snap);
                true
            });
            if changed {
                let s = tx.borrow();
                tracing::info!(
                    addresses = s.count(xds::type_url::ADDRESS),
                    authorizations = s.count(xds::type_url::AUTHORIZATION),
                    "snapshot updated"
                );
            }
        }
    });
    let shutdown = async {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("control plane stopping");
    };
    server::serve(listener, tls, shared, shutdown).await
}
