//! The listeners' loop: accept, one task per connection tracked by the drain; and the HBONE
//! server every proxy terminates tunnels with.
//!
//! Every accepted connection runs in a tracing span `conn{id=N}` and every HBONE stream in a
//! `stream{id=M}` inside it (a waypoint adds `request{id=R}` at DEBUG), so the log lines of one
//! connection, tunnel or request can be grepped together. Ids are unique in the process.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hbone::server::Incoming;
use tokio::net::{TcpListener, TcpStream};
use tracing::Instrument;

use crate::socket;
use crate::ProxyInputs;

/// A new process-unique id for a connection, stream or request.
pub fn next_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// The ids of the connection (and HBONE stream) the current task serves.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ids {
    pub conn: u64,
    pub stream: Option<u64>,
}

tokio::task_local! {
    static IDS: Ids;
}

/// The ids of the connection the current task serves; zeros outside one.
pub fn current_ids() -> Ids {
    IDS.try_with(|i| *i).unwrap_or_default()
}

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
                let id = next_id();
                let ids = Ids {
                    conn: id,
                    stream: None,
                };
                let served = handle(pi.clone(), tcp, socket::canonical(peer));
                pi.drain.spawn(
                    IDS.scope(ids, served)
                        .instrument(tracing::info_span!("conn", id)),
                );
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
        move |inc: Incoming| {
            let id = next_id();
            let ids = Ids {
                conn: current_ids().conn,
                stream: Some(id),
            };
            IDS.scope(ids, handle(pi.clone(), inc))
                .instrument(tracing::info_span!("stream", id))
        }
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
