//! The HBONE server side: TLS (client certificate required) + HTTP/2 on an accepted socket,
//! handing each CONNECT stream to the caller's handler, which answers it (docs/WIRE.md §1.5).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use h2::server::SendResponse;
use h2::RecvStream;
use http::{Method, Request, Response, StatusCode};
use identity::Identity;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use crate::admission::Handshakes;
use crate::config::H2Config;
use crate::error::HboneError;
use crate::guard::{Budget, FrameGuard};
use crate::keepalive;
use crate::stream::H2Stream;
use crate::tls;

/// How long a connection over its frame budget has to take its GOAWAY before it is dropped.
const GOAWAY_GRACE: Duration = Duration::from_secs(1);

/// One CONNECT request received on the server, waiting for an answer.
pub struct Incoming {
    pub request: Request<RecvStream>,
    pub peer_identity: Identity,
    pub peer_addr: SocketAddr,
    pub local_addr: SocketAddr,
    respond: SendResponse<Bytes>,
}

impl Incoming {
    pub fn is_connect(&self) -> bool {
        self.request.method() == Method::CONNECT
    }

    /// The raw `:authority`, if any.
    pub fn authority(&self) -> Option<&str> {
        self.request.uri().authority().map(|a| a.as_str())
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.request
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
    }

    /// Completes when the peer resets the stream before it is answered: the handler stops
    /// what it was doing for it (no upstream dial for a stream already gone).
    pub async fn reset(&mut self) -> h2::Reason {
        std::future::poll_fn(|cx| self.respond.poll_reset(cx))
            .await
            .unwrap_or(h2::Reason::CANCEL)
    }

    /// Answers with an error status and ends the stream.
    pub fn reject(mut self, status: StatusCode) {
        let resp = Response::builder()
            .status(status)
            .body(())
            .unwrap_or_default();
        let _ = self.respond.send_response(resp, true);
    }

    /// Answers 200 (with `extra` headers) and returns the tunnel stream.
    pub fn accept(mut self, extra: &[(&str, String)]) -> Result<H2Stream, HboneError> {
        let mut b = Response::builder().status(StatusCode::OK);
        for (k, v) in extra {
            b = b.header(*k, v.as_str());
        }
        let resp = b
            .body(())
            .map_err(|e| HboneError::BadRequest(e.to_string()))?;
        let send = self.respond.send_response(resp, false)?;
        Ok(H2Stream::new(send, self.request.into_body()))
    }
}

/// Serves one accepted connection until the peer closes it, keepalive fails, or `shutdown`
/// completes (then GOAWAY is sent and open streams are allowed to finish). The handshakes
/// are admitted by `admission` (and shed by it under a flood); the peer's frames are held to
/// the budgets of `h2cfg.frames`, and a peer over budget gets GOAWAY ENHANCE_YOUR_CALM.
#[allow(clippy::too_many_arguments)]
pub async fn serve<IO, H, F>(
    io: IO,
    peer_addr: SocketAddr,
    local_addr: SocketAddr,
    tls_config: Arc<rustls::ServerConfig>,
    h2cfg: &H2Config,
    admission: &Arc<Handshakes>,
    shutdown: impl Future<Output = ()>,
    handler: H,
) -> Result<(), HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(Incoming) -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let budget = Budget::new(&h2cfg.frames);
    let handshakes = async {
        let io = tokio::io::BufReader::with_capacity(crate::TLS_READ_BUFFER, io);
        let mut tls_stream = TlsAcceptor::from(tls_config)
            .accept(io)
            .await
            .map_err(HboneError::Tls)?;
        tls_stream
            .get_mut()
            .1
            .set_buffer_limit(Some(crate::TLS_WRITE_BUFFER));
        let peer_identity = tls::peer_identity(tls_stream.get_ref().1.peer_certificates())
            .ok_or(HboneError::NoPeerIdentity)?;
        let conn = h2cfg
            .server_builder()
            .handshake::<_, Bytes>(FrameGuard::server(tls_stream, budget.clone()))
            .await
            .map_err(HboneError::H2Handshake)?;
        Ok::<_, HboneError>((peer_identity, conn))
    };
    let mut ticket = admission.admit(peer_addr.ip());
    let (peer_identity, mut conn) = tokio::select! {
        r = tokio::time::timeout(admission.limits.timeout, handshakes) => match r {
            Ok(r) => r?,
            Err(_) => {
                admission.timed_out();
                return Err(HboneError::HandshakeTimeout);
            }
        },
        why = ticket.shed() => return Err(HboneError::HandshakeShed(why.as_str())),
    };
    drop(ticket);

    let ping = conn.ping_pong();
    let keepalive = keepalive::run(ping, h2cfg.keepalive_interval, h2cfg.keepalive_timeout);
    tokio::pin!(keepalive, shutdown);
    let mut draining = false;
    loop {
        tokio::select! {
            next = conn.accept() => match next {
                Some(Ok((request, respond))) => {
                    let incoming = Incoming {
                        request,
                        peer_identity: peer_identity.clone(),
                        peer_addr,
                        local_addr,
                        respond,
                    };
                    tokio::spawn(handler(incoming));
                }
                Some(Err(e)) => return Err(e.into()),
                None => return Ok(()),
            },
            () = &mut shutdown, if !draining => {
                draining = true;
                conn.graceful_shutdown();
            }
            () = &mut keepalive => {
                tracing::warn!(%peer_addr, "HBONE client did not answer PING; closing");
                conn.abrupt_shutdown(h2::Reason::NO_ERROR);
                return Ok(());
            }
            flood = budget.exceeded() => {
                conn.abrupt_shutdown(h2::Reason::ENHANCE_YOUR_CALM);
                // Let the GOAWAY go out, briefly; the streams already handed on end with
                // the connection.
                let _ = tokio::time::timeout(GOAWAY_GRACE, async {
                    while let Some(Ok(_)) = conn.accept().await {}
                })
                .await;
                return Err(HboneError::Flood(flood.as_str()));
            }
        }
    }
}
