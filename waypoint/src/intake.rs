//! Tunnel intake: each HBONE CONNECT the waypoint accepts on 15008, checked (destination,
//! source address, TCP authorization) and handed to the HTTP server ([`crate::serve`]) or
//! the L4 path ([`crate::upstream::l4`]), with the tunnel's own metrics and access line.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use hbone::io::H2Io;
use hbone::server::Incoming;
use http::StatusCode;
use proxycore::connection::ConnectionResult;
use proxycore::socket;
use proxycore::state::State;
use proxycore::ProxyError;
use tokio::net::TcpStream;

use crate::process::Waypoint;
use crate::upstream::Destination;
use crate::{forward, metrics, plan, serve};

/// Binds 15008 and serves it until drain.
pub fn start(wp: &Arc<Waypoint>) -> anyhow::Result<()> {
    let listener = socket::listen(None, hbone::HBONE_PORT, wp.pi.cfg.ipv6)?;
    let served = wp.clone();
    tokio::spawn(proxycore::listen::accept_loop(
        wp.pi.clone(),
        listener,
        "waypoint",
        move |_, tcp, peer| serve_connection(served.clone(), tcp, peer),
    ));
    tracing::info!(port = hbone::HBONE_PORT, "waypoint listening");
    Ok(())
}

async fn serve_connection(wp: Arc<Waypoint>, tcp: TcpStream, peer: SocketAddr) {
    let pi = wp.pi.clone();
    proxycore::listen::serve_hbone(pi, tcp, peer, move |_, inc| handle_stream(wp.clone(), inc))
        .await
}

/// The destination a CONNECT `authority` names. `local` is the address the tunnel arrived
/// on: the waypoint itself is never a destination (forwarding to it would loop without end),
/// and neither is port 0 or the HBONE port (docs/HARDENING.md, finding 1).
fn destination(state: &State, authority: &str, local: IpAddr) -> Result<Destination, ProxyError> {
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| ProxyError::BadAuthority(authority.to_string()))?;
    let addr = socket::canonical(addr);
    if addr.port() == 0 {
        return Err(ProxyError::BadAuthority(authority.to_string()));
    }
    if addr.port() == hbone::HBONE_PORT {
        return Err(ProxyError::OwnPort(addr.port()));
    }
    if let Some(svc) = state.service_by_vip(addr.ip()) {
        return Ok(Destination::Service {
            svc,
            port: addr.port(),
        });
    }
    if let Some(w) = state.workload_by_ip(addr.ip()) {
        if w.addresses.contains(&local) {
            return Err(ProxyError::SelfDestination(addr));
        }
        return Ok(Destination::Workload {
            w,
            port: addr.port(),
        });
    }
    Err(ProxyError::UnknownService(
        authority.to_string(),
        addr.port(),
    ))
}

async fn handle_stream(wp: Arc<Waypoint>, inc: Incoming) {
    let pi = &wp.pi;
    if !inc.is_connect() {
        return inc.reject(StatusCode::BAD_REQUEST);
    }
    let authority = inc.authority().unwrap_or_default().to_string();
    let source = inc.peer_identity.clone();
    let client = inc.peer_addr;
    let local = socket::canonical(inc.local_addr).ip();
    let dst = match destination(&pi.state, &authority, local) {
        Ok(d) => d,
        Err(e) => {
            tracing::event!(target: "access", tracing::Level::INFO, %authority, src.identity = %source, error = %e, "waypoint refused the tunnel");
            return inc.reject(e.status());
        }
    };
    let source_ip = source_address(&pi.state, inc.header("forwarded"), &source, client.ip());
    let destination_ip = authority
        .parse::<SocketAddr>()
        .map_or(client.ip(), |a| socket::canonical(a).ip());
    let source_name = source.to_string();
    let principal = source_name
        .strip_prefix("spiffe://")
        .unwrap_or(&source_name)
        .to_string();
    if !dst.is_http() {
        // TCP: judged once, before the tunnel is answered (HTTP fields cannot match here).
        if let Err(details) = authorize_tcp(&wp, &dst, &principal, source_ip, destination_ip) {
            tracing::event!(target: "access", tracing::Level::INFO, src.identity = %source, destination = %dst.name(),
                response_flags = "-", details = %details, "tcp connection denied");
            return inc.reject(StatusCode::FORBIDDEN);
        }
    }
    let stream = match inc.accept(&[]) {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "tunnel closed before it was answered"),
    };
    // The tunnel's own record: `istio_tcp_*` with reporter "waypoint", advancing while it
    // is open, and one access line at its end with the bytes that crossed.
    let mut facts = metrics::tunnel_facts(pi, (&source_name, source_ip), &dst, client);
    facts.dst_hbone_addr = Some(authority);
    let mut record = ConnectionResult::new(pi.metrics.clone(), facts);
    let labels = record.labels();
    if dst.is_http() {
        let ctx = Arc::new(forward::Context {
            wp: wp.clone(),
            dst_name: dst.name(),
            target: forward::Target::Mesh(dst),
            source: source_name,
            principal,
            source_namespace: source.namespace.to_string(),
            client,
            source_ip,
            destination_ip,
            tables: Default::default(),
            recorder: metrics::Recorder::with_base(labels),
            bytes: record.bytes(),
            ids: proxycore::listen::current_ids(),
            span: tracing::Span::current(),
        });
        // Boxed once per tunnel: the request path inside is large.
        record.reporting(Box::pin(serve::serve(ctx, stream))).await;
    } else {
        let backend = plan::tcp_backend(&wp, &dst);
        crate::upstream::l4(&wp, backend, H2Io::new(stream), client, &mut record).await;
    }
}

/// The client's address for policy and metrics: the `for=` of the tunnel's `forwarded` header
/// only when the workload owning that address has the identity the peer proved with its
/// certificate (the peer's ztunnel speaks for that pod); otherwise the peer's own address. A
/// forged `for=` thus never buys a caller another address (docs/HARDENING.md, finding 3).
fn source_address(
    state: &State,
    forwarded: Option<&str>,
    peer: &identity::Identity,
    peer_ip: IpAddr,
) -> IpAddr {
    let Some(claimed) = forwarded.and_then(hbone::headers::forwarded_for) else {
        return peer_ip;
    };
    if claimed == peer_ip {
        return peer_ip;
    }
    match state.workload_by_ip(claimed) {
        Some(w) if w.identity() == *peer => claimed,
        _ => {
            tracing::debug!(%claimed, %peer, %peer_ip, "forwarded for= not owned by the peer's identity; ignored");
            peer_ip
        }
    }
}

/// The AuthorizationPolicies' answer for a TCP connection; `Err` has the denial's details.
fn authorize_tcp(
    wp: &Waypoint,
    dst: &Destination,
    principal: &str,
    source_ip: std::net::IpAddr,
    destination_ip: std::net::IpAddr,
) -> Result<(), String> {
    let hostname = match dst {
        Destination::Service { svc, .. } => svc.hostname.as_str(),
        Destination::Workload { .. } => "",
    };
    let pi = &wp.pi;
    let policies = wp
        .config
        .authorization(&pi.state, (&pi.local_ns, &pi.local_name), hostname);
    if policies.is_empty() {
        return Ok(());
    }
    let port = match dst {
        Destination::Service { port, .. } | Destination::Workload { port, .. } => *port,
    };
    let verdict = l7::authz::evaluate(
        &policies,
        &l7::authz::Attributes {
            principal: Some(principal),
            source_ip,
            destination_ip,
            destination_port: port,
            http: None,
        },
    );
    plan::log_verdict(&verdict, Some(principal), "tcp");
    if verdict.decision.allowed() {
        Ok(())
    } else {
        Err(verdict.decision.details())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwarded_is_trusted_only_for_the_peers_own_workload() {
        let state = proxycore::state::State::default();
        let w = |name: &str, ip: &str, sa: &str| -> proxycore::state::Workload {
            serde_json::from_value(serde_json::json!({
                "uid": name, "name": name, "namespace": "default", "addresses": [ip],
                "trustDomain": "cluster.local", "serviceAccount": sa,
            }))
            .unwrap()
        };
        state.apply(proxycore::state::Update {
            workloads: vec![w("a", "10.0.0.7", "sleep"), w("b", "10.0.0.8", "admin")],
            ..Default::default()
        });
        let sleep = identity::Identity::new("cluster.local", "default", "sleep");
        let peer: std::net::IpAddr = "10.0.0.99".parse().unwrap();
        let src = |fwd: Option<&str>| super::source_address(&state, fwd, &sleep, peer);
        // The peer's identity owns 10.0.0.7: its ztunnel may speak for that address.
        assert_eq!(
            src(Some("for=\"10.0.0.7:4000\"")),
            "10.0.0.7".parse::<std::net::IpAddr>().unwrap()
        );
        // 10.0.0.8 belongs to another identity, 10.0.0.50 to nobody: the peer's own address.
        assert_eq!(src(Some("for=\"10.0.0.8:4000\"")), peer);
        assert_eq!(src(Some("for=10.0.0.50")), peer);
        assert_eq!(src(Some("for=garbage")), peer);
        assert_eq!(src(None), peer);
    }
}
