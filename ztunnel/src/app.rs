//! Wiring: the shared runtime (proxycore), then ztunnel's own listeners: one workload's
//! (dedicated mode) or every enrolled pod's (shared mode, through the node agent's ZDS).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use proxycore::config::{Config, ProxyMode, ProxyWorkloadInfo};
use proxycore::runtime::Runtime;
use proxycore::ProxyInputs;

use crate::dns::DnsMetrics;

pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let mut rt = Runtime::builder("ztunnel", cfg).build()?;
    let dns_metrics = DnsMetrics::register(rt.registry());
    let cfg = rt.cfg.clone();
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
    let (pi, pods) = match cfg.proxy_mode {
        ProxyMode::Dedicated => {
            let pi = rt.dedicated_inputs();
            crate::proxy::start(&pi, dns_metrics, upstreams).map_err(anyhow::Error::msg)?;
            rt.readiness.done("proxy");
            rt.ready_with_certificate(&pi);
            (pi, None)
        }
        ProxyMode::Shared => {
            let (pi, pods) = serve_shared(&rt, dns_metrics, upstreams);
            (pi, Some(pods))
        }
    };
    tracing::info!(
        outbound = %SocketAddr::new(IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED), cfg.ports.outbound),
        "ztunnel listening"
    );
    rt.serve(move |req| {
        let pods = pods
            .as_ref()
            .map(|v| serde_json::to_value(v.lock().unwrap().clone()).unwrap_or_default());
        proxycore::admin::admin_response(&pi, pods, req)
    })
    .await
}

/// Shared mode: the node agent hands over pods (ZDS) and each gets its proxies inside its
/// own namespace. Returns the node-level inputs behind the admin endpoints and the view of
/// the enrolled pods.
fn serve_shared(
    rt: &Runtime,
    dns_metrics: DnsMetrics,
    upstreams: Vec<SocketAddr>,
) -> (Arc<ProxyInputs>, crate::inpod::PodsView) {
    let cfg = rt.cfg.clone();
    let shared = crate::inpod::Shared {
        cfg: cfg.clone(),
        state: rt.state.clone(),
        certs: rt.certs.clone(),
        pool: hbone::Pool::new(&cfg.h2),
        handshakes: hbone::Handshakes::new(cfg.handshakes),
        metrics: rt.metrics.clone(),
        dns_metrics,
        upstreams,
        drain: rt.drain.clone(),
    };
    let node = ProxyWorkloadInfo {
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
        rt.drain.clone(),
        node,
        None,
    );
    let manager = crate::inpod::WorkloadManager::new(shared, rt.readiness.clone());
    let pods = manager.view.clone();
    tokio::spawn(crate::inpod::run(cfg.inpod_uds.clone(), manager));
    rt.readiness.done("certificate");
    rt.readiness.done("proxy");
    (pi, pods)
}
