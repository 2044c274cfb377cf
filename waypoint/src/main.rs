//! `waypoint`: configured like ztunnel, from the environment (`PROXY_WORKLOAD_INFO` names the
//! waypoint's own pod and service account, `XDS_ADDRESS`, `CA_ADDRESS`, `AUTH_TOKEN`, ...).

use std::process::ExitCode;

use proxycore::config::{Config, ProcessEnv, ProxyMode, Source, PROXY_MODE};
use tracing_subscriber::EnvFilter;

#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The process environment, where `PROXY_MODE` defaults to `dedicated`: a waypoint serves
/// one workload, itself.
struct WaypointEnv;

impl Source for WaypointEnv {
    fn get(&self, key: &str) -> Option<String> {
        ProcessEnv
            .get(key)
            .or_else(|| (key == PROXY_MODE).then(|| "dedicated".to_string()))
    }
    fn prefixed(&self, prefix: &str) -> Vec<(String, String)> {
        ProcessEnv.prefixed(prefix)
    }
}

fn main() -> ExitCode {
    // `waypoint gateway`: the ingress gateway (docs/GATEWAY.md), the same engine behind
    // plain ports.
    let mut ingress = false;
    if let Some(a) = std::env::args().nth(1) {
        match a.as_str() {
            "version" | "--version" => {
                println!("keelson-waypoint {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            "gateway" => ingress = true,
            other => {
                eprintln!(
                    "waypoint: unknown argument {other:?} (`gateway` runs the ingress gateway)"
                );
                return ExitCode::from(2);
            }
        }
    }
    let mut cfg = match Config::from_source(&WaypointEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("waypoint: {e}");
            return ExitCode::from(2);
        }
    };
    // One workload (the waypoint itself), no capture, no DNS proxy.
    cfg.proxy_mode = ProxyMode::Dedicated;
    cfg.dns_proxy = false;
    // One thread unless set: fewer cross-thread wake-ups per request. Measured with
    // `keelson bench l7`: 0.187 against 0.225 CPU s per 1,000 requests, and +0.34 against
    // +1.16 ms at p50 (docs/BENCHMARKS.md). More threads for more than ~5,000 requests/s.
    if std::env::var_os(proxycore::config::ZTUNNEL_WORKER_THREADS).is_none() {
        cfg.worker_threads = 1;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // A line per request: written in batches (proxycore::logbuf).
        .with_writer(proxycore::logbuf::Batched)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // LOG_FORMAT=json, as ztunnel honours it (the access lines too: accesslog.rs).
    if cfg.json_logs {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
    proxycore::logbuf::flush_on_panic();
    proxycore::runtime::return_freed_memory();
    // One worker: the current-thread scheduler, whose wake-ups need no cross-thread
    // synchronisation.
    let built = if cfg.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(cfg.worker_threads)
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("waypoint: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let run = async {
        if ingress {
            waypoint::ingress::run(cfg).await
        } else {
            waypoint::run(cfg).await
        }
    };
    let code = match rt.block_on(run) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "waypoint failed");
            ExitCode::FAILURE
        }
    };
    proxycore::logbuf::flush();
    code
}
