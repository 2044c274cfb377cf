//! The HBONE client: TLS + HTTP/2 handshake to a peer's 15008, and CONNECT requests on it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsConnector;

use crate::config::H2Config;
use crate::error::HboneError;
use crate::keepalive;
use crate::stream::H2Stream;
use crate::tls;

/// The CONNECT request of one proxied connection (docs/WIRE.md §1.4).
#[derive(Debug, Clone)]
pub struct ConnectRequest {
    /// `ip:port` of the final destination (or `host:port`).
    pub authority: String,
    /// `baggage` describing the source workload; may be empty.
    pub baggage: String,
    /// `forwarded: for="<client addr>"[;host=<service>]`.
    pub forwarded: String,
    /// W3C `traceparent`.
    pub traceparent: String,
}

impl ConnectRequest {
    pub fn new(authority: String, client: SocketAddr, service_host: Option<&str>) -> Self {
        ConnectRequest {
            authority,
            baggage: String::new(),
            forwarded: crate::headers::forwarded(client, service_host),
            traceparent: crate::headers::random_traceparent(),
        }
    }

    fn to_http(&self) -> Result<Request<()>, HboneError> {
        Request::builder()
            .method(Method::CONNECT)
            .uri(self.authority.as_str())
            .header("baggage", &self.baggage)
            .header("forwarded", &self.forwarded)
            .header("traceparent", &self.traceparent)
            .body(())
            .map_err(|e| HboneError::BadRequest(e.to_string()))
    }
}

/// An established HBONE connection: cloneable request handle plus liveness flag.
#[derive(Clone)]
pub struct Connection {
    pub(crate) sender: h2::client::SendRequest<Bytes>,
    closed: Arc<AtomicBool>,
    pub peer: SocketAddr,
}

impl Connection {
    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    pub(crate) fn mark_closed(&self) {
        self.closed.store(true, Ordering::Relaxed);
    }

    /// The raw HTTP/2 handle, for tests that need to send something other than CONNECT.
    pub fn raw_sender(&self) -> h2::client::SendRequest<Bytes> {
        self.sender.clone()
    }

    /// Streams the peer currently allows on this connection.
    pub fn peer_max_streams(&self) -> usize {
        self.sender.current_max_send_streams()
    }

    /// Sends CONNECT and waits for the answer; any status other than 200 is an error.
    pub async fn connect(&self, req: &ConnectRequest) -> Result<H2Stream, HboneError> {
        // Waiting for a stream slot would wait for ever on a peer that allows none: this
        // connection is no use for new streams (docs/HARDENING.md, F3).
        if self.peer_max_streams() == 0 {
            self.mark_closed();
            return Err(HboneError::NoStreams);
        }
        let mut sender = self
            .sender
            .clone()
            .ready()
            .await
            .inspect_err(|_| self.mark_closed())?;
        let (response, send) = sender
            .send_request(req.to_http()?, false)
            .inspect_err(|e| {
                if e.is_go_away() || e.is_io() {
                    self.mark_closed()
                }
            })?;
        let response = response.await?;
        if response.status() != StatusCode::OK {
            return Err(HboneError::Status(response.status()));
        }
        Ok(H2Stream::new(send, response.into_body()))
    }
}

/// Runs the TLS and HTTP/2 handshakes over `io` and spawns the connection driver (with PING
/// keepalive). The returned connection is marked closed when the driver ends.
pub async fn handshake<IO>(
    io: IO,
    peer: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
    h2cfg: &H2Config,
) -> Result<Connection, HboneError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = tokio::io::BufReader::with_capacity(crate::TLS_READ_BUFFER, io);
    let mut tls_stream = TlsConnector::from(tls)
        .connect(tls::placeholder_server_name(), io)
        .await
        .map_err(HboneError::Tls)?;
    tls_stream
        .get_mut()
        .1
        .set_buffer_limit(Some(crate::TLS_WRITE_BUFFER));
    let (sender, mut conn) = h2cfg
        .client_builder()
        .handshake::<_, Bytes>(tls_stream)
        .await
        .map_err(HboneError::H2Handshake)?;
    let closed = Arc::new(AtomicBool::new(false));
    let ping = conn.ping_pong();
    let (interval, timeout) = (h2cfg.keepalive_interval, h2cfg.keepalive_timeout);
    let flag = closed.clone();
    tokio::spawn(async move {
        tokio::select! {
            r = &mut conn => if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "HBONE connection ended with error");
            },
            () = keepalive::run(ping, interval, timeout) => {
                tracing::warn!(%peer, "HBONE peer did not answer PING; dropping connection");
            }
        }
        flag.store(true, Ordering::Relaxed);
    });
    Ok(Connection {
        sender,
        closed,
        peer,
    })
}
