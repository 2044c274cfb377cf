//! The runtime both proxies start from, built explicitly:
//!
//! ```text
//! let mut rt = Runtime::builder("waypoint", cfg).subscribe(routes).build()?;
//! register_my_metrics(rt.registry());
//! ... bind the proxy's own listeners on rt.inputs(...) ...
//! rt.serve(admin_handler).await   // admin, metrics, readiness; then SIGTERM and drain
//! ```
//!
//! It loads the workload store (a local file, or the xDS client with the proxy's extra
//! subscriptions), the certificate source (a local CA directory, or the CA client), and owns
//! the readiness tasks, the metrics registry and the drain.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use http::Request;
use hyper::body::Incoming;
use identity::{CertProvider, CertStore, LocalCa};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, Readiness};
use crate::ca_client::CaClient;
use crate::config::{Config, ProxyMode};
use crate::drain::Drain;
use crate::grpc;
use crate::metrics::{self, Metrics};
use crate::socket;
use crate::state::{LocalConfig, State};
use crate::xds_client::{Subscription, XdsClient};
use crate::ProxyInputs;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// How often the local config file is checked for changes.
const LOCAL_CONFIG_POLL: Duration = Duration::from_secs(1);

/// What [`Runtime::builder`] collects before anything starts.
pub struct Builder {
    name: &'static str,
    cfg: Config,
    subscriptions: Vec<Arc<dyn Subscription>>,
}

impl Builder {
    /// Also subscribes to `sub`'s xDS type (with an xDS source; a local file has none).
    pub fn subscribe(mut self, sub: Arc<dyn Subscription>) -> Self {
        self.subscriptions.push(sub);
        self
    }

    /// Loads the store and the certificate source and starts the xDS client. Fails on a
    /// config that names neither source, or a local file or CA that does not load.
    pub fn build(self) -> anyhow::Result<Runtime> {
        let cfg = Arc::new(self.cfg);
        tracing::info!(config = %serde_json::to_string(cfg.as_ref()).unwrap_or_default(), "starting {}", self.name);
        let mut registry = Registry::default();
        let metrics = Arc::new(Metrics::new(&mut registry));
        let component = if self.name == "ztunnel" {
            "ztunnel"
        } else {
            "proxy"
        };
        metrics::register_build(&mut registry, component);
        let readiness = Readiness::default();
        readiness.register("certificate");
        readiness.register("proxy");
        let state = load_state(&cfg, &readiness, &metrics, self.subscriptions)?;
        let certs = CertStore::new(certificate_source(&cfg)?);
        registry.register_collector(Box::new(metrics::CertExpiry(certs.clone())));
        Ok(Runtime {
            name: self.name,
            cfg,
            state,
            certs,
            metrics,
            readiness,
            drain: Drain::new(),
            registry,
        })
    }
}

/// The shared parts of a running proxy process.
pub struct Runtime {
    name: &'static str,
    pub cfg: Arc<Config>,
    pub state: State,
    pub certs: CertStore,
    pub metrics: Arc<Metrics>,
    pub readiness: Readiness,
    pub drain: Drain,
    registry: Registry,
}

impl Runtime {
    /// A runtime named `name` in its logs, configured by `cfg`.
    pub fn builder(name: &'static str, cfg: Config) -> Builder {
        Builder {
            name,
            cfg,
            subscriptions: Vec::new(),
        }
    }

    /// The registry, for the proxy's own metrics; served on the metrics port by [`serve`].
    ///
    /// [`serve`]: Runtime::serve
    pub fn registry(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// The inputs of the one workload a dedicated proxy serves (`PROXY_WORKLOAD_INFO`).
    pub fn dedicated_inputs(&self) -> Arc<ProxyInputs> {
        ProxyInputs::new(
            self.cfg.clone(),
            self.state.clone(),
            self.certs.clone(),
            self.metrics.clone(),
            self.drain.clone(),
        )
    }

    /// Marks the proxy ready once `pi`'s workload certificate is held (traffic before that
    /// would only fail the handshake).
    pub fn ready_with_certificate(&self, pi: &Arc<ProxyInputs>) {
        let pi = pi.clone();
        let r = self.readiness.clone();
        tokio::spawn(async move {
            loop {
                match pi.certs.get(&pi.local_identity()).await {
                    Ok(_) => return r.done("certificate"),
                    Err(e) => {
                        tracing::warn!(error = %e, "waiting for the workload certificate");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        });
    }

    /// Serves admin (localhost, with `admin`), metrics and readiness, then runs until
    /// SIGTERM, SIGINT or `/quitquitquit`, and drains.
    pub async fn serve<H>(self, admin: H) -> anyhow::Result<()>
    where
        H: Fn(&Request<Incoming>) -> http::Response<admin::Body> + Send + Sync + 'static,
    {
        let ports = self.cfg.ports;
        let bind = |ip: Option<IpAddr>, port: u16, what: &str| {
            socket::listen(ip, port, self.cfg.ipv6)
                .with_context(|| format!("binding the {what} listener on port {port}"))
        };
        let admin_l = bind(Some(LOCALHOST), ports.admin, "admin")?;
        let metrics_l = bind(None, ports.metrics, "metrics")?;
        let ready_l = bind(None, ports.readiness, "readiness")?;
        let never = std::future::pending::<()>;
        let admin = Arc::new(admin);
        tokio::spawn(admin::serve(admin_l, never(), move |req| {
            let admin = admin.clone();
            async move { admin(&req) }
        }));
        let registry = Arc::new(self.registry);
        tokio::spawn(admin::serve(metrics_l, never(), move |req| {
            let registry = registry.clone();
            async move { admin::metrics_response(&registry, &req) }
        }));
        let r = self.readiness.clone();
        tokio::spawn(admin::serve(ready_l, never(), move |req| {
            let r = r.clone();
            async move { r.response(&req) }
        }));

        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: draining"),
            _ = int.recv() => tracing::info!("SIGINT: draining"),
            () = self.drain.started() => tracing::info!("/quitquitquit: draining"),
        }
        self.readiness.set_draining();
        let open = self.drain.open();
        let forced = self.drain.drain(self.cfg.drain_deadline).await;
        tracing::info!(
            open_at_start = open,
            forced_closed = forced,
            "{}: drain complete; exiting",
            self.name
        );
        Ok(())
    }
}

/// The workload store: from `LOCAL_XDS_PATH` (reloaded when it changes), or from the xDS
/// client, which also serves `subscriptions`.
fn load_state(
    cfg: &Arc<Config>,
    readiness: &Readiness,
    metrics: &Metrics,
    subscriptions: Vec<Arc<dyn Subscription>>,
) -> anyhow::Result<State> {
    match (&cfg.local_xds_path, &cfg.xds) {
        (Some(path), _) => {
            let state = State::from_config(LocalConfig::load(path)?);
            tokio::spawn(watch_local_config(path.clone(), state.clone()));
            Ok(state)
        }
        (None, Some(_)) => {
            let state = State::default();
            let mut client = XdsClient::new(
                cfg.clone(),
                state.clone(),
                readiness.clone(),
                metrics.xds.clone(),
            );
            for s in subscriptions {
                client = client.subscribe(s);
            }
            tokio::spawn(client.run());
            Ok(state)
        }
        (None, None) => anyhow::bail!("no workload source configured"),
    }
}

/// Where certificates come from: a local CA directory (`KEELSON_LOCAL_CA_DIR`) or the CA.
fn certificate_source(cfg: &Config) -> anyhow::Result<Arc<dyn CertProvider>> {
    match (&cfg.local_ca_dir, &cfg.ca) {
        (Some(ca_dir), _) => {
            let read = |name: &str| {
                let p = ca_dir.join(name);
                std::fs::read_to_string(&p)
                    .with_context(|| format!("reading local CA file {}", p.display()))
            };
            Ok(Arc::new(LocalCa::from_pem(
                &read(identity::ca::ROOT_CERT_FILE)?,
                &read(identity::ca::ROOT_KEY_FILE)?,
                cfg.secret_ttl,
            )?))
        }
        (None, Some(target)) => {
            let auth = grpc::Auth::new(&cfg.auth_token, &cfg.cluster_id, &target.headers)?;
            Ok(CaClient::new(
                target,
                cfg.packet_mark,
                auth,
                cfg.secret_ttl,
                cfg.proxy_mode == ProxyMode::Shared,
            )?)
        }
        (None, None) => anyhow::bail!("no certificate source configured"),
    }
}

/// Reloads `LOCAL_XDS_PATH` when it changes. A file that fails to load is reported and the last
/// good state is kept.
async fn watch_local_config(path: std::path::PathBuf, state: State) {
    let stamp = |p: &std::path::Path| {
        std::fs::metadata(p)
            .ok()
            .map(|m| (m.modified().ok(), m.len()))
    };
    let mut last = stamp(&path);
    loop {
        tokio::time::sleep(LOCAL_CONFIG_POLL).await;
        let now = stamp(&path);
        if now == last {
            continue;
        }
        last = now;
        match LocalConfig::load(&path) {
            Ok(cfg) => {
                state.replace(cfg);
                tracing::info!(path = %path.display(), "local config reloaded");
            }
            Err(e) => {
                tracing::error!(error = %e, "local config not reloaded; keeping the last good state")
            }
        }
    }
}

/// Has jemalloc return freed memory to the system from a background thread, once its decay
/// time (10 s) has passed, instead of only when the allocator is next busy: a proxy's RSS
/// comes back down after a burst of connections or a flood (docs/HARDENING.md, finding 6g).
pub fn return_freed_memory() {
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc background purging is not available");
    }
}
