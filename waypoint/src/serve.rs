//! HTTP/1.1 from clients, served by the tunnel's own task straight from the HBONE stream:
//! the request head is parsed from the stream's DATA, the request (with its whole body) is
//! handled, and the response goes back as DATA, head and body in one frame when the body is
//! there. No server connection machinery and no byte-stream adapter in between.
//!
//! That covers what clients nearly always send: HTTP/1.1 requests without a body or with a
//! `content-length` one of at most [`REPLAY_LIMIT`], pipelined or not. Anything else hands
//! the connection, from that request on, to hyper's server ([`hand_over`]): HTTP/2 with
//! prior knowledge, HTTP/1.0, `Upgrade` (WebSocket), `CONNECT`, `Expect: 100-continue`,
//! chunked or larger bodies, and heads that do not parse or are too large (hyper answers
//! those with 400 or 431).

use std::sync::Arc;
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use hbone::io::H2Io;
use hbone::stream::H2Stream;
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Body as _;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;
use tracing::Instrument;

use crate::body::Body;
use crate::forward::{Context, ReqBody, REPLAY_LIMIT};
use crate::h1::{has_token, join, Conn, Spans, MAX_HEADERS};
use hbone::Counter;
use proxycore::connection::Moved;

/// A request head larger than this goes to hyper's server, which refuses it past its own
/// limit.
const MAX_HEAD: usize = 64 * 1024;
/// Response data gathered before it is sent (when more of the body is ready at once).
const SEND_AT: usize = 64 * 1024;

/// Serves the HTTP/1.1 inside one tunnel until the client ends it. A request head must
/// arrive whole within the header timeout of its first byte (else 408 and the tunnel ends:
/// slowloris), and the tunnel may idle between requests, or a body pause, for at most the
/// idle timeout (docs/HARDENING.md, finding 5).
pub async fn serve(ctx: Arc<Context>, stream: H2Stream) {
    let (header_timeout, idle_timeout) = (
        ctx.wp.pi.cfg.http_header_timeout,
        ctx.wp.pi.cfg.http_idle_timeout,
    );
    let moved = ctx.bytes.clone();
    let mut conn = Conn::new(stream);
    loop {
        let mut head_deadline = (!conn.buf.is_empty()).then(|| Instant::now() + header_timeout);
        let (parts, length, close) = loop {
            match request(&mut conn.buf) {
                Parsed::Request {
                    parts,
                    length,
                    close,
                } => break (parts, length, close),
                Parsed::Partial if conn.buf.len() <= MAX_HEAD => {}
                // Boxed: hyper's connection is large, and this path is the rare one.
                Parsed::Partial | Parsed::Other => return Box::pin(hand_over(ctx, conn)).await,
            }
            let limit = head_deadline.unwrap_or_else(|| Instant::now() + idle_timeout);
            match tokio::time::timeout_at(limit, fill(&mut conn, &moved)).await {
                Ok(Ok(true)) => {
                    head_deadline.get_or_insert_with(|| Instant::now() + header_timeout);
                }
                // The client ended the tunnel between requests (or in a head, which then
                // has no answer, as with hyper).
                Ok(Ok(false)) => return hbone::io::end(conn.stream, true),
                Ok(Err(e)) => return tracing::debug!(error = %e, "tunnel from the client failed"),
                Err(_) if head_deadline.is_some() => return header_timed_out(&ctx, conn).await,
                Err(_) => {
                    tracing::debug!(destination = %ctx.dst_name, "tunnel idle past the idle timeout; closing");
                    return hbone::io::end(conn.stream, false);
                }
            }
        };
        while conn.buf.len() < length {
            match tokio::time::timeout(idle_timeout, fill(&mut conn, &moved)).await {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => return hbone::io::end(conn.stream, true),
                Ok(Err(e)) => return tracing::debug!(error = %e, "tunnel from the client failed"),
                Err(_) => {
                    tracing::info!(destination = %ctx.dst_name, "request body idle past the idle timeout; tunnel reset");
                    return;
                }
            }
        }
        let body = conn.buf.split_to(length);
        let head_request = parts.method == Method::HEAD;
        let resp = ctx
            .handle(Request::from_parts(parts, ReqBody::Held(body)))
            .await;
        match respond(
            &mut conn.stream,
            resp,
            head_request,
            close,
            &moved.server_to_client,
        )
        .await
        {
            Ok(()) if !close => {}
            Ok(()) => {
                let ended = conn.stream.recv.is_end_stream();
                return hbone::io::end(conn.stream, ended);
            }
            Err(e) => return tracing::debug!(error = %e, "response to the client failed"),
        }
    }
}

/// Reads one more DATA frame from the client, counting its bytes.
async fn fill(conn: &mut Conn, moved: &Moved) -> Result<bool, crate::h1::Error> {
    let before = conn.buf.len();
    let more = conn.fill().await?;
    moved.client_to_server.add(conn.buf.len() - before);
    Ok(more)
}

/// What the front of the buffer holds.
// Returned once per request and never stored: boxing the head would cost an allocation.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    /// A request this module serves: its head, the length of its body (the next bytes,
    /// not yet consumed), and whether the client asked to close after it.
    Request {
        parts: http::request::Parts,
        length: usize,
        close: bool,
    },
    /// Not a whole head yet.
    Partial,
    /// Something for hyper's server.
    Other,
}

/// [`request`] on arbitrary bytes, repeatedly as pipelined requests are (fuzzing).
pub(crate) fn parse_for_fuzzing(bytes: &[u8]) {
    let mut buf = Bytes::copy_from_slice(bytes);
    while let Parsed::Request { length, .. } = request(&mut buf) {
        if length > buf.len() {
            break;
        }
        let _ = buf.split_to(length);
    }
}

/// Parses a request head at the front of `buf`; consumes it only when it is one this module
/// serves.
fn request(buf: &mut Bytes) -> Parsed {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut r = httparse::Request::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    if r.version != Some(1) {
        return Parsed::Other;
    }
    let Ok(method) = Method::from_bytes(r.method.unwrap_or_default().as_bytes()) else {
        return Parsed::Other;
    };
    if method == Method::CONNECT {
        return Parsed::Other;
    }
    let mut length: Option<u64> = None;
    for f in r.headers.iter() {
        let name = f.name;
        if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::Other;
        }
        if name.eq_ignore_ascii_case("content-length") {
            let n = std::str::from_utf8(f.value)
                .ok()
                .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|v| v.parse::<u64>().ok());
            match (n, length) {
                (Some(n), None) if n <= REPLAY_LIMIT => length = Some(n),
                // Repeated, malformed or large: hyper's (400, or a streamed body).
                _ => return Parsed::Other,
            }
        }
    }
    let path = r.path.unwrap_or_default().as_bytes();
    let base = buf.as_ptr() as usize;
    let path_at = path.as_ptr() as usize - base;
    let path_len = path.len();
    let spans = Spans::of(buf, r.headers);
    let head = buf.split_to(n);
    let (Ok(uri), Ok(headers)) = (
        http::Uri::from_maybe_shared(head.slice(path_at..path_at + path_len)),
        spans.headers(&head),
    ) else {
        // Not for what httparse accepts, but if it is: the head goes back, for hyper's
        // answer.
        *buf = join(&head, buf);
        return Parsed::Other;
    };
    let close = has_token(&headers, "close");
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    parts.headers = headers;
    Parsed::Request {
        parts,
        length: length.unwrap_or(0) as usize,
        close,
    }
}

/// The rest of the connection (`conn`'s buffer first) to hyper's server.
async fn hand_over(ctx: Arc<Context>, conn: Conn) {
    let cfg = ctx.wp.pi.cfg.clone();
    // HTTP/2 inside the tunnel: the same frame budgets as the HBONE connection itself.
    let budget = hbone::guard::Budget::new(&cfg.h2.frames);
    let http2 =
        PREFACE.starts_with(&conn.buf[..conn.buf.len().min(PREFACE.len())]) && !conn.buf.is_empty();
    // What the client sent before the hand-over was counted as it came.
    let io = CountedIo {
        inner: H2Io::with_pending(conn.stream, conn.buf.clone()),
        skip: conn.buf.len(),
        bytes: ctx.bytes.clone(),
    };
    let io: Box<dyn Tunnel> = if http2 {
        Box::new(hbone::guard::FrameGuard::server(io, budget.clone()))
    } else {
        Box::new(io)
    };
    serve_with_hyper(ctx, io, budget).await
}

/// Serves HTTP/1.1 and HTTP/2 (prior knowledge, or by ALPN) on `io` with hyper's server,
/// each request through [`Context::handle`], until the client ends the connection or
/// floods it past `budget` (the HTTP/2 frame budgets, counted by a `FrameGuard` around
/// `io` when there is one).
pub(crate) async fn serve_with_hyper(
    ctx: Arc<Context>,
    io: Box<dyn Tunnel>,
    budget: Arc<hbone::guard::Budget>,
) {
    let cfg = ctx.wp.pi.cfg.clone();
    let dst = ctx.dst_name.clone();
    let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
        let ctx = ctx.clone();
        async move {
            let req = req.map(|b| ReqBody::Stream(b.map_err(Into::into).boxed()));
            // hyper runs each HTTP/2 stream in a task of its own: back in the tunnel's span.
            let span = ctx.span.clone();
            Ok::<_, std::convert::Infallible>(ctx.handle(req).instrument(span).await)
        }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.http_header_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.h2.server_max_streams)
        .max_pending_accept_reset_streams(hbone::config::MAX_PENDING_ACCEPT_RESETS)
        .max_local_error_reset_streams(hbone::config::MAX_LOCAL_ERROR_RESETS);
    let served = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::select! {
        result = served => {
            if let Err(e) = result {
                tracing::debug!(error = %e, "HTTP connection ended");
            }
        }
        flood = budget.exceeded() => {
            // Dropping the connection resets it.
            tracing::info!(destination = %dst, frames = flood.as_str(), "HTTP/2 client over its frame budget; connection reset");
        }
    }
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// A connection as hyper reads and writes it, its bytes counted both ways.
pub(crate) struct CountedIo<T = H2Io> {
    pub inner: T,
    /// Bytes at the start of the read side already counted.
    pub skip: usize,
    pub bytes: Arc<Moved>,
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for CountedIo<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        let skipped = n.min(self.skip);
        self.skip -= skipped;
        self.bytes.client_to_server.add(n - skipped);
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for CountedIo<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = std::pin::Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.bytes.server_to_client.add(n);
        }
        r
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What hyper serves: the tunnel, with or without a frame guard.
pub(crate) trait Tunnel:
    tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin
{
}
impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin> Tunnel for T {}

/// A request head still incomplete at the header timeout: 408, then the tunnel ends.
async fn header_timed_out(ctx: &Context, mut conn: Conn) {
    tracing::info!(destination = %ctx.dst_name, received = conn.buf.len(), "request head not complete within the header timeout; 408");
    let resp = crate::body::text(StatusCode::REQUEST_TIMEOUT, "request header timeout");
    let _ = respond(
        &mut conn.stream,
        resp,
        false,
        true,
        &ctx.bytes.server_to_client,
    )
    .await;
    hbone::io::end(conn.stream, false);
}

/// Why a response could not be written whole.
#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("the client's tunnel went: {0}")]
    Stream(#[from] h2::Error),
    #[error("the client's tunnel closed")]
    Closed,
    #[error("the response body failed: {0}")]
    Body(crate::h1::BoxError),
    #[error("the response body was {0} bytes, not the {1} its content-length said")]
    Length(u64, u64),
}

/// How the response body is delimited.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
}

/// Writes `resp`: `content-length` when the body's size is known, else chunked; `date` when
/// missing, as hyper's server does; `connection: close` when this is the last one. A body
/// that fails or does not match its length resets the stream, so that the client sees an
/// abort, not a short answer.
async fn respond(
    stream: &mut H2Stream,
    resp: Response<Body>,
    head_request: bool,
    close: bool,
    moved: &Counter,
) -> Result<(), WriteError> {
    let (mut parts, mut body) = resp.into_parts();
    let status = parts.status;
    let framing = if head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Framing::None
    } else if let Some(n) = body.size_hint().exact() {
        // Usually the endpoint's own, already right.
        let given = parts.headers.get(CONTENT_LENGTH);
        if given.and_then(|v| v.to_str().ok()?.parse::<u64>().ok()) != Some(n) {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(n));
        }
        Framing::Length(n)
    } else if let Some(n) = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
    {
        Framing::Length(n)
    } else {
        parts.headers.remove(CONTENT_LENGTH);
        parts
            .headers
            .insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        Framing::Chunked
    };
    if close {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("close"));
    }
    if !parts.headers.contains_key(DATE) {
        parts.headers.insert(DATE, date());
    }
    // The head, and the body when it is small and already here, in one buffer.
    let head_size: usize = 64
        + parts
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>();
    let body_size = match framing {
        Framing::Length(n) if n <= SEND_AT as u64 => n as usize,
        _ => 0,
    };
    let mut out = BytesMut::with_capacity(head_size + body_size);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if framing == Framing::None {
        let n = out.len();
        stream.send.send_data(out.freeze(), false)?;
        moved.add(n);
        return Ok(());
    }
    let result = write_body(stream, &mut body, out, framing, moved).await;
    if result.is_err() {
        stream.send.send_reset(h2::Reason::INTERNAL_ERROR);
    }
    result
}

/// The body after the head in `out`: what is ready at once goes in the same DATA frame as
/// the head; after that, data goes as it comes, paced by the stream's flow control.
async fn write_body(
    stream: &mut H2Stream,
    body: &mut Body,
    mut out: BytesMut,
    framing: Framing,
    moved: &Counter,
) -> Result<(), WriteError> {
    let mut sent: u64 = 0;
    // Whether anything was sent yet: the first send is not paced (it is what the handler
    // already holds, bounded), later ones are.
    let mut paced = false;
    loop {
        let now = {
            let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
            std::pin::Pin::new(&mut *body).poll_frame(&mut cx)
        };
        let frame = match now {
            Poll::Ready(f) => f,
            Poll::Pending => {
                if !out.is_empty() {
                    send(stream, out.split().freeze(), paced, moved).await?;
                }
                paced = true;
                body.frame().await
            }
        };
        let data = match frame {
            None => break,
            Some(Err(e)) => return Err(WriteError::Body(e)),
            // Trailers are dropped: an HTTP/1.1 client did not ask for them.
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        if framing == Framing::Chunked {
            use std::fmt::Write as _;
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(&data);
            out.extend_from_slice(b"\r\n");
        } else {
            out.extend_from_slice(&data);
        }
        if out.len() >= SEND_AT {
            send(stream, out.split().freeze(), paced, moved).await?;
            paced = true;
        }
    }
    match framing {
        Framing::Length(n) if n != sent => return Err(WriteError::Length(sent, n)),
        Framing::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        _ => {}
    }
    if !out.is_empty() {
        send(stream, out.freeze(), paced, moved).await?;
    }
    Ok(())
}

/// Sends `data`; when `paced`, only as the client's flow-control window allows, so that a
/// slow client holds back the body rather than have it buffered here.
async fn send(
    stream: &mut H2Stream,
    mut data: Bytes,
    paced: bool,
    moved: &Counter,
) -> Result<(), WriteError> {
    if !paced {
        let n = data.len();
        stream.send.send_data(data, false)?;
        moved.add(n);
        return Ok(());
    }
    while !data.is_empty() {
        stream.send.reserve_capacity(data.len());
        let cap = match std::future::poll_fn(|cx| stream.send.poll_capacity(cx)).await {
            Some(c) => c?,
            None => return Err(WriteError::Closed),
        };
        if cap > 0 {
            let n = cap.min(data.len());
            stream.send.send_data(data.split_to(n), false)?;
            moved.add(n);
        }
    }
    Ok(())
}

/// The `date` value for now, made once a second.
fn date() -> HeaderValue {
    thread_local! {
        static DATE: std::cell::RefCell<(u64, HeaderValue)> =
            const { std::cell::RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, value)| {
        if *at != secs {
            *at = secs;
            if let Ok(v) = HeaderValue::from_str(&httpdate::fmt_http_date(now)) {
                *value = v;
            }
        }
        value.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::{request, Parsed};
    use bytes::Bytes;

    fn parse(text: &str) -> (Parsed, Bytes) {
        let mut buf = Bytes::copy_from_slice(text.as_bytes());
        (request(&mut buf), buf)
    }

    #[test]
    fn served_here_or_handed_over() {
        let (p, rest) = parse("POST /a?b=1 HTTP/1.1\r\nhost: s\r\ncontent-length: 3\r\n\r\nabcGET");
        let Parsed::Request {
            parts,
            length,
            close,
        } = p
        else {
            panic!("not served here")
        };
        assert_eq!(
            (parts.method.as_str(), parts.uri.to_string()),
            ("POST", "/a?b=1".into())
        );
        assert_eq!(parts.headers["host"], "s");
        assert_eq!((length, close), (3, false));
        assert_eq!(&rest[..], b"abcGET", "the body and what follows stay");
        let (p, _) = parse("GET / HTTP/1.1\r\nconnection: keep-alive, close\r\n\r\n");
        assert!(matches!(
            p,
            Parsed::Request {
                length: 0,
                close: true,
                ..
            }
        ));
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nhost:").0,
            Parsed::Partial
        ));
        for other in [
            "GET / HTTP/1.0\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET / HTTP/1.1\r\nupgrade: websocket\r\nconnection: upgrade\r\n\r\n",
            "POST / HTTP/1.1\r\nexpect: 100-continue\r\ncontent-length: 1\r\n\r\n",
            "CONNECT a:1 HTTP/1.1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 1\r\ncontent-length: 1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: +1\r\n\r\n",
            "POST / HTTP/1.1\r\ncontent-length: 65537\r\n\r\n",
            "GET / HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            let (p, rest) = parse(other);
            assert!(matches!(p, Parsed::Other), "{other:?}");
            assert_eq!(&rest[..], other.as_bytes(), "{other:?} was consumed");
        }
    }
}
