//! Wiring: load the state and the CA, bind every listener, run until SIGTERM, then drain.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use identity::{CertProvider, CertStore, LocalCa};
use prometheus_client::registry::Registry;
use tokio::signal::unix::{signal, SignalKind};

use crate::admin::{self, Readiness};
use crate::ca_client::CaClient;
use crate::config::{Config, ProxyMode};
use crate::drain::Drain;
use crate::grpc;
use crate::metrics::{self, Metrics};
use crate::proxy::{self, socket, ProxyInputs};
use crate::state::{LocalConfig, State};
use crate::xds_client::XdsClient;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Serves the listeners of one workload (dedicated mode) in place of ztunnel's own: how the
/// waypoint runs on ztunnel's state, certificates, pool, admin and drain.
pub type Listeners = Box<dyn FnOnce(&Arc<ProxyInputs>, &Readiness) -> anyhow::Result<()> + Send>;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    run_with(cfg, None, Vec::new(), |_| {}).await
}

/// [`run`], with `listeners` serving the dedicated workload instead of ztunnel's proxies,
/// `extra` xDS types subscribed to after WDS and authorization, and `more_metrics`
/// registered beside ztunnel's.
pub async fn run_with(
    cfg: Config,
    listeners: Option<Listeners>,
    extra: Vec<crate::xds_client::ExtraType>,
    more_metrics: fn(&mut Registry),
) -> anyhow::Result<()> {
    let cfg = Arc::new(cfg);
    tracing::info!(config = %serde_json::to_string(cfg.as_ref()).unwrap_or_default(), "starting ztunnel");

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let dns_metrics = crate::dns::DnsMetrics::register(&mut registry);
    metrics::register_build(&mut registry);
    more_metrics(&mut registry);
    let registry = Arc::new(registry);

    let readiness = Readiness::default();
    readiness.register("certificate");
    readiness.register("proxy");

    let state = match (&cfg.local_xds_path, &cfg.xds) {
        (Some(path), _) => {
            let state = State::from_config(LocalConfig::load(path)?);
            tokio::spawn(watch_local_config(path.clone(), state.clone()));
            state
        }
        (None, Some(_)) => {
            let state = State::default();
            let mut client = XdsClient::new(
                cfg.clone(),
                state.clone(),
                readiness.clone(),
                metrics.xds.clone(),
            );
            for e in extra {
                client = client.with_extra_type(e);
            }
            tokio::spawn(client.run());
            state
        }
        (None, None) => anyhow::bail!("no workload source configured"),
    };
    let provider: Arc<dyn CertProvider> = match (&cfg.local_ca_dir, &cfg.ca) {
        (Some(ca_dir), _) => {
            let read = |name: &str| {
                let p = ca_dir.join(name);
                std::fs::read_to_string(&p)
                    .with_context(|| format!("reading local CA file {}", p.display()))
            };
            Arc::new(LocalCa::from_pem(
                &read(identity::ca::ROOT_CERT_FILE)?,
                &read(identity::ca::ROOT_KEY_FILE)?,
                cfg.secret_ttl,
            )?)
        }
        (None, Some(target)) => {
            let auth = grpc::Auth::new(&cfg.auth_token, &cfg.cluster_id, &target.headers)?;
            CaClient::new(
                target,
                cfg.packet_mark,
                auth,
                cfg.secret_ttl,
                cfg.proxy_mode == ProxyMode::Shared,
            )?
        }
        (None, None) => anyhow::bail!("no certificate source configured"),
    };
    let certs = CertStore::new(provider);
    let drain = Drain::new();
    let upstreams = if cfg.dns_proxy {
        std::fs::read_to_string(&cfg.resolv_conf)
            .map(|t| crate::dns::nameservers(&t))
            .unwrap_or_else(|e| {
                tracing::warn!(path = %cfg.resolv_conf.display(), error = %e, "no upstream resolvers; unknown names get SERVFAIL");
                Vec::new()
            })
    } else {
        Vec::new()
    };

    let ports = cfg.ports;
    let bind = |ip: Option<IpAddr>, port: u16, what: &str| {
        socket::listen(ip, port, cfg.ipv6)
            .with_context(|| format!("binding the {what} listener on port {port}"))
    };
    let mut workload_state = None;
    let pi = match cfg.proxy_mode {
        ProxyMode::Dedicated => {
            let pi = ProxyInputs::new(cfg.clone(), state, certs, metrics, drain.clone());
            match listeners {
                Some(serve) => {
                    serve(&pi, &readiness)?;
                    wait_for_certificate(&pi, &readiness);
                }
                None => serve_dedicated(&pi, &readiness, dns_metrics, upstreams)?,
            }
            pi
        }
        ProxyMode::Shared => {
            let shared = crate::inpod::Shared {
                cfg: cfg.clone(),
                state,
                certs,
                pool: hbone::Pool::new(&cfg.h2),
                handshakes: hbone::Handshakes::new(cfg.handshakes),
                metrics,
                dns_metrics,
                upstreams,
                drain: drain.clone(),
            };
            // The node-level inputs behind the admin endpoints; pods get their own.
            let node = crate::config::ProxyWorkloadInfo {
                namespace: cfg
                    .pod_namespace
                    .clone()
                    .unwrap_or_else(|| "istio-system".into()),
                name: cfg.pod_name.clone().unwrap_or_else(|| "ztunnel".into()),
                service_account: "ztunnel".into(),
            };
            let pi = ProxyInputs::for_pod(
                cfg.clone(),
                shared.state.clone(),
                shared.certs.clone(),
                shared.pool.clone(),
                shared.handshakes.clone(),
                shared.metrics.clone(),
                drain.clone(),
                node,
                None,
            );
            let manager = crate::inpod::WorkloadManager::new(shared, readiness.clone());
            workload_state = Some(manager.view.clone());
            tokio::spawn(crate::inpod::run(cfg.inpod_uds.clone(), manager));
            readiness.done("certificate");
            readiness.done("proxy");
            pi
        }
    };
    let admin_l = bind(Some(LOCALHOST), ports.admin, "admin")?;
    let metrics_l = bind(None, ports.metrics, "metrics")?;
    let ready_l = bind(None, ports.readiness, "readiness")?;
    let never = std::future::pending::<()>;
    {
        let pi = pi.clone();
        tokio::spawn(admin::serve(admin_l, never(), move |req| {
            let pi = pi.clone();
            let pods = workload_state.as_ref().map(|v| v.lock().unwrap().clone());
            async move { admin::admin_response(&pi, pods, &req) }
        }));
    }
    {
        let registry = registry.clone();
        tokio::spawn(admin::serve(metrics_l, never(), move |req| {
            let registry = registry.clone();
            async move { admin::metrics_response(&registry, &req) }
        }));
    }
    {
        let r = readiness.clone();
        tokio::spawn(admin::serve(ready_l, never(), move |req| {
            let r = r.clone();
            async move { r.response(&req) }
        }));
    }
    tracing::info!(
        outbound = %SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), ports.outbound),
        "ztunnel listening"
    );

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: draining"),
        _ = int.recv() => tracing::info!("SIGINT: draining"),
        () = drain.started() => tracing::info!("/quitquitquit: draining"),
    }
    readiness.set_draining();
    let open = drain.open();
    let forced = drain.drain(cfg.drain_deadline).await;
    tracing::info!(
        open_at_start = open,
        forced_closed = forced,
        "drain complete; exiting"
    );
    Ok(())
}

/// Dedicated mode: the listeners of the one workload, in the current namespace, and readiness
/// once its certificate is held (traffic before that would only fail the handshake).
fn serve_dedicated(
    pi: &Arc<ProxyInputs>,
    readiness: &Readiness,
    dns_metrics: crate::dns::DnsMetrics,
    upstreams: Vec<SocketAddr>,
) -> anyhow::Result<()> {
    proxy::start(pi, dns_metrics, upstreams).map_err(anyhow::Error::msg)?;
    readiness.done("proxy");
    wait_for_certificate(pi, readiness);
    Ok(())
}

/// Readiness once the workload's certificate is held.
fn wait_for_certificate(pi: &Arc<ProxyInputs>, readiness: &Readiness) {
    let pi = pi.clone();
    let r = readiness.clone();
    tokio::spawn(async move {
        loop {
            match pi.certs.get(&pi.local_identity()).await {
                Ok(_) => return r.done("certificate"),
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the workload certificate");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    });
}

/// How often the local config file is checked for changes.
const LOCAL_CONFIG_POLL: std::time::Duration = std::time::Duration::from_secs(1);

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
