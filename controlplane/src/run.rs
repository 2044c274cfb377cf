//! `keelson controlplane`: read a directory of Kubernetes YAML, keep watching it, and serve
//! what it describes over delta ADS and the CA on one TLS port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use identity::LocalCa;
use tokio::sync::watch;

use crate::k8s::Resources;
use crate::server::{self, Counters, Shared};
use crate::snapshot::Snapshot;
use crate::token::{TokenAuthority, TOKEN_FILE};
use crate::wds::MeshSettings;

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

/// The last good parse of every file in the directory.
#[derive(Default)]
pub struct ResourceDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, (Option<(SystemTime, u64)>, Resources)>,
    /// Files rejected so far.
    pub errors: u64,
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

impl ResourceDir {
    pub fn new(dir: &Path) -> Self {
        ResourceDir {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            errors: 0,
        }
    }

    /// Re-reads files that changed and forgets files that are gone. A file that fails to parse
    /// is reported (file, resource, field) and its last good content is kept. Returns whether
    /// anything changed.
    pub fn scan(&mut self) -> bool {
        let mut paths = Vec::new();
        yaml_files(&self.dir, &mut paths);
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        if self.files.len() != before {
            changed = true;
            tracing::info!("resource file(s) removed");
        }
        for p in paths {
            let stamp = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())));
            if self.files.get(&p).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            let mut res = Resources::default();
            match res.add_file(&p) {
                Ok(()) => {
                    tracing::info!(file = %p.display(), "resources loaded");
                    self.files.insert(p, (stamp, res));
                    changed = true;
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::error!(error = %e, "resource file rejected; keeping its last good content");
                    // Remember the stamp so the same bad content is reported once.
                    let last = self.files.remove(&p).map(|(_, r)| r).unwrap_or_default();
                    self.files.insert(p, (stamp, last));
                }
            }
        }
        changed
    }

    pub fn merged(&self) -> Resources {
        let mut all = Resources::default();
        for (_, r) in self.files.values() {
            all.extend(r.clone());
        }
        all
    }
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
