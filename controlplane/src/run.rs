//! `keelson controlplane`: read Kubernetes resources from a directory of YAML (watched) or
//! from the API server (`--kubernetes`), and serve what they describe over delta ADS and the
//! CA on one TLS port. Both sources build the same resource model; the translation is one.

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
    /// The directory of YAML (the file source); unused with `kubernetes`.
    pub resources: PathBuf,
    /// Read resources from the API server instead of `resources`.
    pub kubernetes: Option<crate::kube_source::KubeOptions>,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    /// Extra DNS names or IPs for the serving certificate.
    pub sans: Vec<String>,
    pub mesh: MeshSettings,
    /// Plain-HTTP `/metrics`; `None` to not serve it.
    pub monitoring: Option<SocketAddr>,
    /// How often the file source checks its directory ([`POLL`] unless asked otherwise).
    pub poll: Duration,
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

/// The file of computed statuses (`keelson status` shows it).
pub const STATUS_FILE: &str = "status.json";

/// Writes the statuses of the model's gateways and routes (the file source has no API to
/// write them to), atomically.
fn write_status(state_dir: &Path, res: &resources::Resources) {
    let all = crate::waypoints::all_statuses(res);
    let text = serde_json::to_string_pretty(&all).unwrap_or_default();
    let tmp = state_dir.join(format!("{STATUS_FILE}.tmp"));
    if let Err(e) =
        std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, state_dir.join(STATUS_FILE)))
    {
        tracing::warn!(error = %e, "cannot write the status file");
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
    if let Some(k) = &opts.kubernetes {
        // The CA lives in a Secret: every replica and restart signs with the same root.
        let client = crate::kube_source::client(k).await?;
        let ns = k.namespace.as_deref().unwrap_or("istio-system");
        crate::kube_source::sync_ca_secret(&client, ns, &opts.state_dir, || {
            load_state(&opts.state_dir, &opts.mesh).map(|_| ())
        })
        .await
        .context("the CA Secret")?;
    }
    let (ca, tokens) = load_state(&opts.state_dir, &opts.mesh)?;
    let tokens = Arc::new(tokens);
    let counters = Arc::new(Counters::default());
    if let Ok(root) = identity::cert::LeafInfo::parse(ca.root_der()) {
        let secs = root
            .not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        counters
            .root_expiry
            .store(secs, std::sync::atomic::Ordering::Relaxed);
    }
    let mut controller = None;
    let mut reviewer = None;
    let mut models = match &opts.kubernetes {
        Some(k) => {
            let client = crate::kube_source::client(k).await?;
            reviewer = Some(Arc::new(crate::review::TokenReviewer::new(client.clone())));
            controller = k.waypoints.clone().map(|mut w| {
                w.roots_pem = ca.bundle_pem();
                Arc::new(crate::waypoints::Controller::new(client.clone(), w))
            });
            crate::kube_source::KubeSource::start(client)
                .await?
                .resources
        }
        None => watch_dir(&opts.resources, opts.poll, counters.clone()),
    };
    let first = models.borrow_and_update().clone();
    let reconcile = move |model: Arc<resources::Resources>| {
        if let Some(c) = controller.clone() {
            tokio::spawn(async move { c.reconcile(&model).await });
        }
    };
    reconcile(first.clone());
    let snap = Snapshot::build(&first, &opts.mesh);
    if opts.kubernetes.is_none() {
        write_node_tokens(&opts.state_dir, &tokens, &snap);
        write_status(&opts.state_dir, &first);
    }
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
        source = %opts.kubernetes.as_ref().map_or(opts.resources.display().to_string(), |_| "kubernetes".into()),
        "control plane serving");

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
        reviewer,
    });
    let mesh = opts.mesh.clone();
    let state_dir = opts.state_dir.clone();
    let files = opts.kubernetes.is_none();
    tokio::spawn(async move {
        while models.changed().await.is_ok() {
            let model = models.borrow_and_update().clone();
            reconcile(model.clone());
            let snap = Snapshot::build(&model, &mesh);
            if files {
                write_node_tokens(&state_dir, &tokens, &snap);
                write_status(&state_dir, &model);
            }
            // An unchanged snapshot (a relist that found nothing new) pushes nothing.
            let mut changed = Vec::new();
            tx.send_if_modified(|cur| {
                changed = snap.changed_since(cur);
                if changed.is_empty() {
                    return false;
                }
                *cur = Arc::new(snap);
                true
            });
            if !changed.is_empty() {
                let s = tx.borrow();
                tracing::info!(
                    addresses = s.count(xds::type_url::ADDRESS),
                    authorizations = s.count(xds::type_url::AUTHORIZATION),
                    changed = %changed.join(" "),
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

/// The file source: the directory scanned every `poll`, its merged model sent on change.
fn watch_dir(
    dir: &Path,
    poll: Duration,
    counters: Arc<Counters>,
) -> watch::Receiver<Arc<resources::Resources>> {
    let mut dir = ResourceDir::new(dir);
    dir.scan();
    let count = move |dir: &ResourceDir| {
        counters
            .resource_file_errors
            .store(dir.errors, std::sync::atomic::Ordering::Relaxed)
    };
    count(&dir);
    let (tx, rx) = watch::channel(Arc::new(dir.merged()));
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(poll).await;
            let changed = dir.scan();
            count(&dir);
            if changed && tx.send(Arc::new(dir.merged())).is_err() {
                return;
            }
        }
    });
    rx
}
