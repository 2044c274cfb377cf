//! The listeners' loop: accept, one task per connection tracked by the drain; and the HBONE
//! server every proxy terminates tunnels with.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hbone::server::Incoming;
use tokio::net::{TcpListener, TcpStream};

use crate::socket;
use crate::ProxyInputs;

/// Accepts on `listener` until draining starts; each connection runs `handle` as a task the
/// drain tracks. Accept errors (EMFILE and friends) are logged and never end the loop
/// (RUSTSEC-2024-0376).
pub async fn accept_loop<F, Fut>(
    pi: Arc<ProxyInputs>,
    listener: TcpListener,
    what: &'static str,
    handle: F,
) where
    F: Fn(Arc<ProxyInputs>, TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let stop = pi.drain.started();
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            () = &mut stop => return,
        };
        match accepted {
            Ok((tcp, peer)) => {
                socket::set_accepted_options(&tcp);
                pi.drain
                    .spawn(handle(pi.clone(), tcp, socket::canonical(peer)));
            }
            Err(e) => {
                tracing::warn!(listener = what, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Serves one accepted HBONE connection as the local identity until drain, each CONNECT
/// stream handed to `handle` (ztunnel's inbound, or the waypoint's).
pub async fn serve_hbone<F, Fut>(pi: Arc<ProxyInputs>, tcp: TcpStream, peer: SocketAddr, handle: F)
where
    F: Fn(Arc<ProxyInputs>, Incoming) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let local = match tcp.local_addr() {
        Ok(a) => socket::canonical(a),
        Err(_) => return,
    };
    let tls = match pi.server_tls().await {
        Ok(t) => t,
        Err(e) => return tracing::warn!(%peer, error = %e, "no certificate to serve HBONE with"),
    };
    let stop = pi.drain.started();
    let handler = {
        let pi = pi.clone();
        move |inc: Incoming| handle(pi.clone(), inc)
    };
    let served = hbone::server::serve(
        tcp,
        peer,
        local,
        tls,
        &pi.cfg.h2,
        &pi.handshakes,
        stop,
        handler,
    )
    .await;
    let Err(e) = served else { return };
    let reason = |r: &'static str| crate::metrics::ReasonLabel { reason: r };
    match &e {
        hbone::HboneError::HandshakeShed(why) => {
            pi.metrics.handshakes_shed.get_or_create(&reason(why)).inc();
        }
        hbone::HboneError::HandshakeTimeout => {
            pi.metrics
                .handshakes_shed
                .get_or_create(&reason("timeout"))
                .inc();
        }
        hbone::HboneError::Flood(frame) => {
            pi.metrics.flood_closed.get_or_create(&reason(frame)).inc();
        }
        _ => {}
    }
    // An unauthenticated peer can make these at will: limited per kind of failure.
    let flag = e.response_flag();
    if let Some(suppressed) = crate::ratelog::allow(flag) {
        tracing::info!(%peer, error = %e, response_flags = flag, suppressed, "HBONE connection failed");
    }
}
