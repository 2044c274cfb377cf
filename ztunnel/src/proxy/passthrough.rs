//! Inbound plaintext (15006): non-HBONE traffic to the pod, redirected here; passed to the
//! original destination with no identity (`connection_security_policy=unknown`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};

use proxycore::connection::{ConnectionFacts, ConnectionResult, Direction};
use proxycore::metrics::Reporter;
use proxycore::socket;
use proxycore::{ProxyError, ProxyInputs};

pub async fn serve(pi: Arc<ProxyInputs>, listener: TcpListener) {
    proxycore::listen::accept_loop(pi, listener, "inbound plaintext", handle).await
}

async fn handle(pi: Arc<ProxyInputs>, mut downstream: TcpStream, src: SocketAddr) {
    let Ok(orig) = socket::original_dst(&downstream) else {
        return;
    };
    let local = pi.local_workload().ok();
    let mut facts = ConnectionFacts::new(
        Reporter::Destination,
        Direction::Inbound,
        &pi.cfg.cluster_id,
        src,
    );
    facts.src_workload = pi.state.workload_by_ip(src.ip());
    facts.dst_addr = Some(orig);
    facts.dst_service = local
        .as_ref()
        .and_then(|l| pi.state.service_for_inbound(l, orig.port()));
    facts.dst_workload = local.clone();
    let mut result = ConnectionResult::new(pi.metrics.clone(), facts);
    if pi.cfg.ports.is_own(orig.port(), pi.cfg.socks5) {
        let e = ProxyError::OwnPort(orig.port());
        return result.fail_early(e.response_flag(), e);
    }
    if let Some(l) = &local {
        let conn = proxycore::rbac::Conn {
            src_identity: None,
            src_ip: src.ip(),
            dst_ip: orig.ip(),
            dst_port: orig.port(),
        };
        if let Err(e) = pi.authorize(l, &conn) {
            // Closing the socket is the only answer plaintext can get.
            return result.fail_early(e.response_flag(), e);
        }
    }
    let srcip = pi.cfg.orig_src.then_some(src.ip());
    let mut app = match pi.connect(orig, srcip).await {
        Ok(t) => t,
        Err(e) => {
            let e = ProxyError::Connect(orig, e);
            return result.fail_early(e.response_flag(), e);
        }
    };
    let conn = proxycore::rbac::Conn {
        src_identity: None,
        src_ip: src.ip(),
        dst_ip: orig.ip(),
        dst_port: orig.port(),
    };
    let bytes = result.bytes();
    let denied = {
        let mut changes = pi.state.subscribe();
        let copy = socket::copy_plain(
            &mut downstream,
            &mut app,
            &bytes.client_to_server,
            &bytes.server_to_client,
        );
        tokio::pin!(copy);
        let mut tick = proxycore::connection::report_ticker();
        loop {
            tokio::select! {
                r = &mut copy => {
                    if let Err(e) = r {
                        result.fail("CONNECT", e);
                    }
                    break false;
                }
                _ = tick.tick() => result.report(),
                Ok(()) = changes.changed() => {
                    // The workload is looked up again: its selector policies may have changed.
                    let now = pi.local_workload().ok().or_else(|| local.clone());
                    if let Some(Err(e)) = now.as_ref().map(|l| pi.authorize(l, &conn)) {
                        tracing::info!(%src, dst = %orig, error = %e, "closing a connection the new policy denies");
                        result.fail(e.response_flag(), e);
                        break true;
                    }
                }
            }
        }
    };
    if denied {
        hbone::stream::reset_tcp(&downstream);
        hbone::stream::reset_tcp(&app);
    }
}
