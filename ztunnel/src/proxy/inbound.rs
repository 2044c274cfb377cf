//! Inbound HBONE (15008): terminates mTLS as the local workload, checks each CONNECT
//! (docs/WIRE.md §1.5) and connects it to the app.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::server::Incoming;
use tokio::net::{TcpListener, TcpStream};

use proxycore::connection::{ConnectionFacts, ConnectionResult, Direction};
use proxycore::metrics::Reporter;
use proxycore::socket;
use proxycore::state::State;
use proxycore::{ProxyError, ProxyInputs};

pub async fn serve(pi: Arc<ProxyInputs>, listener: TcpListener) {
    proxycore::listen::accept_loop(pi, listener, "inbound", serve_connection).await
}

async fn serve_connection(pi: Arc<ProxyInputs>, tcp: TcpStream, peer: SocketAddr) {
    proxycore::listen::serve_hbone(pi, tcp, peer, handle_stream).await
}

/// Where an accepted CONNECT goes: the app's address and the service it was addressed to.
struct Target {
    addr: SocketAddr,
    service: Option<String>,
}

fn check(pi: &ProxyInputs, inc: &Incoming) -> Result<Target, ProxyError> {
    if !inc.is_connect() {
        return Err(ProxyError::NotConnect(inc.request.method().to_string()));
    }
    let authority = inc.authority().unwrap_or("").to_string();
    let local = pi.local_workload()?;
    let local_ip = inc.local_addr.ip();
    let (addr, service) = match authority.parse::<SocketAddr>() {
        Ok(a) => {
            let a = socket::canonical(a);
            if a.port() == 0 {
                return Err(ProxyError::BadAuthority(authority));
            }
            if a.ip() != local_ip {
                return Err(ProxyError::IpMismatch {
                    authority: a.ip(),
                    local: local_ip,
                });
            }
            (a, None)
        }
        Err(_) => {
            let (host, port) = hbone::headers::split_host_port(&authority)
                .ok_or_else(|| ProxyError::BadAuthority(authority.clone()))?;
            let svc = pi
                .state
                .service_by_host(host, &local.namespace)
                .ok_or_else(|| ProxyError::UnknownService(host.to_string(), port))?;
            let target = State::target_port(&svc, &local, port)
                .ok_or_else(|| ProxyError::UnknownService(host.to_string(), port))?;
            (
                SocketAddr::new(local_ip, target),
                Some(svc.hostname.clone()),
            )
        }
    };
    if pi.cfg.ports.is_own(addr.port(), pi.cfg.socks5) {
        return Err(ProxyError::OwnPort(addr.port()));
    }
    pi.authorize(
        &local,
        &proxycore::rbac::Conn {
            src_identity: Some(inc.peer_identity.clone()),
            src_ip: inc.peer_addr.ip(),
            dst_ip: addr.ip(),
            dst_port: addr.port(),
        },
    )?;
    Ok(Target { addr, service })
}

async fn handle_stream(pi: Arc<ProxyInputs>, inc: Incoming) {
    let peer_ip: IpAddr = inc.peer_addr.ip();
    let local = pi.local_workload().ok();
    let mut facts = ConnectionFacts::new(
        Reporter::Destination,
        Direction::Inbound,
        &pi.cfg.cluster_id,
        inc.peer_addr,
    );
    facts.src_workload = pi.state.workload_by_ip(peer_ip);
    facts.src_identity = Some(inc.peer_identity.to_string());
    facts.dst_hbone_addr = inc.authority().map(str::to_string);
    facts.dst_identity = local.as_ref().map(|w| w.identity().to_string());
    facts.dst_workload = local.clone();
    facts.mtls = true;

    let inc_identity = inc.peer_identity.clone();
    let target = match check(&pi, &inc) {
        Ok(t) => t,
        Err(e) => {
            let mut r = ConnectionResult::new(pi.metrics.clone(), facts);
            r.fail_early(e.response_flag(), &e);
            inc.reject(e.status());
            return;
        }
    };
    facts.dst_addr = Some(target.addr);
    facts.trace_id = inc
        .header("traceparent")
        .and_then(hbone::trace::sampled_trace_id)
        .map(str::to_string);
    let svc_host = target.service.or_else(|| {
        inc.header("forwarded")
            .and_then(hbone::headers::forwarded_host)
            .map(str::to_string)
    });
    let svc = match (&svc_host, &local) {
        (Some(h), Some(l)) => pi.state.service_by_host(h, &l.namespace),
        (None, Some(l)) => pi.state.service_for_inbound(l, target.addr.port()),
        _ => None,
    };
    facts.dst_service = svc;
    let mut result = ConnectionResult::new(pi.metrics.clone(), facts);
    let src = pi.cfg.orig_src.then_some(peer_ip);
    let mut inc = inc;
    let connected = tokio::select! {
        r = pi.connect(target.addr, src) => r,
        reason = inc.reset() => {
            // Gone before it was answered (a reset flood does this): stop dialling the app.
            return result.fail_early("CONNECT", format!("stream reset by the client ({reason:?}) before it was answered"));
        }
    };
    let mut app = match connected {
        Ok(t) => t,
        Err(e) => {
            let e = ProxyError::Connect(target.addr, e);
            result.fail_early(e.response_flag(), &e);
            inc.reject(e.status());
            return;
        }
    };
    let baggage = super::outbound::baggage(local.as_deref(), &pi.cfg.cluster_id);
    let stream = match inc.accept(&[("baggage", baggage)]) {
        Ok(s) => s,
        Err(e) => return result.fail_early("CONNECT", e),
    };
    // Bytes: the tunnel carries client→server, the app socket server→client. A policy change
    // that now denies the connection closes it.
    let conn = proxycore::rbac::Conn {
        src_identity: Some(inc_identity),
        src_ip: peer_ip,
        dst_ip: target.addr.ip(),
        dst_port: target.addr.port(),
    };
    let bytes = result.bytes();
    let denied = {
        // Inbound, the tunnel carries client→server and the app socket server→client.
        let copy = hbone::copy_counted(
            &mut app,
            stream,
            &bytes.server_to_client,
            &bytes.client_to_server,
        );
        tokio::pin!(copy);
        let mut changes = pi.state.subscribe();
        let mut tick = proxycore::connection::report_ticker();
        loop {
            tokio::select! {
                r = &mut copy => {
                    if let Err((_, e)) = r {
                        result.fail("CONNECT", e);
                    }
                    break false;
                }
                _ = tick.tick() => result.report(),
                Ok(()) = changes.changed() => {
                    // The workload is looked up again: its selector policies may have changed.
                    let now = pi.local_workload().ok().or_else(|| local.clone());
                    if let Some(Err(e)) = now.as_ref().map(|l| pi.authorize(l, &conn)) {
                        tracing::info!(src = %peer_ip, dst = %target.addr, error = %e, "closing a connection the new policy denies");
                        result.fail(e.response_flag(), e);
                        break true;
                    }
                }
            }
        }
    };
    // Dropping the stream resets it towards the client; the app gets a reset too.
    if denied {
        hbone::stream::reset_tcp(&app);
    }
    drop(app);
}
