//! HTTP/1.1 to endpoints, spoken by the request's own task straight on the HBONE stream: the
//! request head and its (held) body go out as one DATA frame, the response head is parsed
//! from the stream's DATA, and the response body is read from it as the client takes it. No
//! client connection task, no byte-stream adapter in between (docs/BENCHMARKS.md: those were
//! about a tenth of the waypoint's user-space time).
//!
//! A connection whose response was read to the end, framed by `content-length` or chunked
//! encoding and without `connection: close`, goes back to [`Kept`] for the next request from
//! the same client to the same endpoint.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use hbone::stream::H2Stream;
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response, StatusCode, Version};
use hyper::body::{Frame, SizeHint};

use crate::body::Body;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response head larger than this is refused (hyper's default read buffer limit is
/// about 400 KiB; Envoy's header limit is 60 KiB).
const MAX_HEAD: usize = 64 * 1024;
/// At most this many response header fields (hyper's default).
pub(crate) const MAX_HEADERS: usize = 100;

/// Idle connections are kept this long.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// At most this many kept per key.
const IDLE_PER_KEY: usize = 64;

/// (endpoint address and target port, client IP): the client's address travels in the
/// tunnel's `Forwarded` header, so connections are not shared between clients.
pub type Key = (std::net::SocketAddr, std::net::IpAddr);

/// Why an exchange failed after the connection was there.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("upstream stream failed: {0}")]
    Stream(#[from] h2::Error),
    #[error("upstream closed the connection before the response was complete")]
    Closed,
    #[error("malformed upstream response: {0}")]
    Malformed(String),
}

/// An HTTP/1.1 connection inside one HBONE stream.
pub struct Conn {
    pub(crate) stream: H2Stream,
    /// Received and not yet consumed.
    pub(crate) buf: Bytes,
    /// Requests sent on it.
    sent: u32,
}

impl Conn {
    pub fn new(stream: H2Stream) -> Conn {
        Conn {
            stream,
            buf: Bytes::new(),
            sent: 0,
        }
    }

    /// Whether a kept connection can take another request: nothing arrived on it since its
    /// last response (no end, reset or stray bytes).
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        if !self.buf.is_empty() || self.stream.recv.is_end_stream() {
            return false;
        }
        if self.stream.send.poll_reset(&mut cx).is_ready() {
            return false;
        }
        self.stream.recv.poll_data(&mut cx).is_pending()
    }

    /// Reads one more DATA frame into the buffer; `Ok(false)` at the stream's end.
    pub(crate) async fn fill(&mut self) -> Result<bool, Error> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    /// Reads one more DATA frame into the buffer; `Ok(false)` at the stream's end.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<Result<bool, Error>> {
        match ready!(self.stream.recv.poll_data(cx)) {
            Some(Ok(chunk)) => {
                let _ = self
                    .stream
                    .recv
                    .flow_control()
                    .release_capacity(chunk.len());
                // Nearly always one frame holds what is parsed next: kept as it came
                // (no copy); joined only when a head or a chunk line spans frames.
                self.buf = if self.buf.is_empty() {
                    chunk
                } else {
                    join(&self.buf, &chunk)
                };
                Poll::Ready(Ok(true))
            }
            Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => Poll::Ready(Ok(false)),
            Some(Err(e)) => Poll::Ready(Err(Error::Stream(e))),
            None => Poll::Ready(Ok(false)),
        }
    }
}

/// `a` then `b`, in one buffer of exactly their size.
pub(crate) fn join(a: &[u8], b: &[u8]) -> Bytes {
    let mut m = BytesMut::with_capacity(a.len() + b.len());
    m.extend_from_slice(a);
    m.extend_from_slice(b);
    m.freeze()
}

/// Kept connections, by [`Key`].
#[derive(Default)]
pub struct Kept {
    idle: Mutex<Idle<Conn>>,
}

impl Kept {
    /// The most recently returned connection that can still be used.
    pub fn take(&self, key: &Key) -> Option<Conn> {
        self.idle
            .lock()
            .unwrap()
            .take(key, Instant::now(), Conn::usable)
    }

    fn put(&self, key: Key, c: Conn) {
        self.idle.lock().unwrap().put(key, c, Instant::now());
    }
}

/// Idle things by key, newest last, each kept [`IDLE_TIMEOUT`], at most [`IDLE_PER_KEY`] per
/// key. Expired ones go when their key is used, and all of them once per [`IDLE_TIMEOUT`]
/// (so that keys of endpoints that went away do not pile up, nor their HBONE streams).
struct Idle<T> {
    by_key: HashMap<Key, Vec<(Instant, T)>>,
    swept: Option<Instant>,
}

impl<T> Default for Idle<T> {
    fn default() -> Self {
        Idle {
            by_key: HashMap::new(),
            swept: None,
        }
    }
}

impl<T> Idle<T> {
    fn take(
        &mut self,
        key: &Key,
        now: Instant,
        mut usable: impl FnMut(&mut T) -> bool,
    ) -> Option<T> {
        let list = self.by_key.get_mut(key)?;
        let mut found = None;
        while let Some((since, mut t)) = list.pop() {
            if now.duration_since(since) < IDLE_TIMEOUT && usable(&mut t) {
                found = Some(t);
                break;
            }
        }
        if list.is_empty() {
            self.by_key.remove(key);
        }
        found
    }

    fn put(&mut self, key: Key, t: T, now: Instant) {
        if self
            .swept
            .is_none_or(|at| now.duration_since(at) >= IDLE_TIMEOUT)
        {
            self.swept = Some(now);
            self.by_key.retain(|_, list| {
                list.retain(|(since, _)| now.duration_since(*since) < IDLE_TIMEOUT);
                !list.is_empty()
            });
        }
        let list = self.by_key.entry(key).or_default();
        list.retain(|(since, _)| now.duration_since(*since) < IDLE_TIMEOUT);
        if list.len() < IDLE_PER_KEY {
            list.push((now, t));
        }
    }
}

/// Methods whose requests carry `content-length: 0` when empty, as hyper's client does.
fn body_expected(m: &Method) -> bool {
    !matches!(
        *m,
        Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
    )
}

/// The request as bytes: the head in origin form with the headers as given (but
/// `content-length`, set from the body, and `transfer-encoding`, dropped since the body is
/// whole), then the body.
fn encode(parts: &http::request::Parts, body: &[u8]) -> Bytes {
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let framed = |name: &HeaderName| name == CONTENT_LENGTH || name == TRANSFER_ENCODING;
    let had_length = parts.headers.keys().any(framed);
    let with_length = had_length || !body.is_empty() || body_expected(&parts.method);
    // Exactly the size needed: a buffer with room to spare would cost another allocation
    // when frozen.
    let size = parts.method.as_str().len()
        + path.len()
        + 12
        + parts
            .headers
            .iter()
            .filter(|(k, _)| !framed(k))
            .map(|(k, v)| k.as_str().len() + v.len() + 4)
            .sum::<usize>()
        + if with_length {
            18 + digits(body.len())
        } else {
            0
        }
        + 2
        + body.len();
    let mut out = BytesMut::with_capacity(size);
    out.put_slice(parts.method.as_str().as_bytes());
    out.put_u8(b' ');
    out.put_slice(path.as_bytes());
    out.put_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if framed(name) {
            continue;
        }
        out.put_slice(name.as_str().as_bytes());
        out.put_slice(b": ");
        out.put_slice(value.as_bytes());
        out.put_slice(b"\r\n");
    }
    if with_length {
        let _ = write!(out, "content-length: {}\r\n", body.len());
    }
    out.put_slice(b"\r\n");
    out.put_slice(body);
    debug_assert_eq!(out.len(), size);
    out.freeze()
}

/// How the response body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked(Chunk),
    /// Until the upstream closes: the connection is not kept.
    Close,
    Done,
}

/// Where the chunked decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunk {
    /// Expecting a chunk-size line.
    Size,
    /// In a chunk's data, this much left.
    Data(u64),
    /// Expecting the CRLF after a chunk's data.
    DataEnd,
    /// After the last chunk: trailer lines until an empty one.
    Trailers,
}

/// Sends the request on `conn` and reads the response head. The response body reads from
/// `conn`, which goes back to [`Kept`] under `key` once the body has been read to the end
/// (when the response allows keeping it).
pub async fn send(
    kept: &Arc<Kept>,
    mut conn: Conn,
    key: Key,
    parts: &http::request::Parts,
    body: &Bytes,
    per_conn: u32,
) -> Result<Response<Body>, Error> {
    conn.stream.send.send_data(encode(parts, body), false)?;
    conn.sent += 1;
    let spent = per_conn > 0 && conn.sent >= per_conn;
    let (head, framing, keep) = loop {
        if let Some(h) = parse_head(&mut conn.buf, parts.method == Method::HEAD)? {
            break h;
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Error::Malformed("response head too large".into()));
        }
        if !conn.fill().await? {
            return Err(Error::Closed);
        }
    };
    let mut b = UpBody {
        conn: Some(conn),
        framing,
        back: (keep && !spent).then(|| (kept.clone(), key)),
        ready: None,
    };
    b.take_buffered();
    Ok(head.map(|()| http_body_util::BodyExt::boxed(b)))
}

/// Whether a `connection` header lists `token`.
pub(crate) fn has_token(headers: &HeaderMap, token: &str) -> bool {
    headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A final response head from the front of `buf` (informational ones are skipped), its body
/// framing and whether the connection may be kept; `None` while incomplete.
fn parse_head(
    buf: &mut Bytes,
    head_request: bool,
) -> Result<Option<(Response<()>, Framing, bool)>, Error> {
    loop {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut r = httparse::Response::new(&mut fields);
        let n = match r.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(Error::Malformed(e.to_string())),
        };
        let code = r.code.unwrap_or(0);
        let status = StatusCode::from_u16(code)
            .map_err(|_| Error::Malformed(format!("status code {code}")))?;
        if status.is_informational() {
            if status == StatusCode::SWITCHING_PROTOCOLS {
                return Err(Error::Malformed("101 to a request without Upgrade".into()));
            }
            buf.advance(n);
            continue;
        }
        let version = if r.version == Some(0) {
            Version::HTTP_10
        } else {
            Version::HTTP_11
        };
        let spans = Spans::of(buf, r.headers);
        let head = buf.split_to(n);
        let mut headers = spans.headers(&head).map_err(Error::Malformed)?;
        let (framing, mut keep) = framing(&mut headers, status, head_request)?;
        keep &= version == Version::HTTP_11 && !has_token(&headers, "close");
        let mut resp = Response::new(());
        *resp.status_mut() = status;
        *resp.version_mut() = version;
        *resp.headers_mut() = headers;
        return Ok(Some((resp, framing, keep)));
    }
}

/// Where each field of a parsed head is in its buffer, so that the values can share the
/// buffer once the parser lets go of it (no copy per value).
pub(crate) struct Spans {
    at: [((usize, usize), (usize, usize)); MAX_HEADERS],
    count: usize,
}

impl Spans {
    /// `fields` as parsed from `buf`.
    pub(crate) fn of(buf: &[u8], fields: &[httparse::Header<'_>]) -> Spans {
        let base = buf.as_ptr() as usize;
        let at = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
        let mut spans = Spans {
            at: [((0, 0), (0, 0)); MAX_HEADERS],
            count: fields.len().min(MAX_HEADERS),
        };
        for (span, f) in spans.at.iter_mut().zip(fields) {
            *span = (at(f.name.as_bytes()), at(f.value));
        }
        spans
    }

    /// The fields, their values sharing `head` (the bytes that were parsed).
    pub(crate) fn headers(&self, head: &Bytes) -> Result<HeaderMap, String> {
        // Room for a few more (`host`, `date`, `content-length`), added on the way.
        let mut headers = HeaderMap::with_capacity(self.count + 3);
        for &((ns, nl), (vs, vl)) in &self.at[..self.count] {
            let name = HeaderName::from_bytes(&head[ns..ns + nl]).map_err(|_| {
                format!(
                    "header name {:?}",
                    String::from_utf8_lossy(&head[ns..ns + nl])
                )
            })?;
            let value = HeaderValue::from_maybe_shared(head.slice(vs..vs + vl))
                .map_err(|_| format!("value of header {name}"))?;
            headers.append(name, value);
        }
        Ok(headers)
    }
}

/// How many decimal digits `n` takes.
fn digits(mut n: usize) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

/// The body framing of a response (RFC 9112 §6.3), and whether it allows keeping the
/// connection.
fn framing(
    headers: &mut HeaderMap,
    status: StatusCode,
    head_request: bool,
) -> Result<(Framing, bool), Error> {
    if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED {
        return Ok((Framing::Done, true));
    }
    if headers.contains_key(TRANSFER_ENCODING) {
        let chunked_last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        if !chunked_last {
            return Ok((Framing::Close, false));
        }
        // Transfer-Encoding overrides Content-Length, which must not be passed on; such a
        // message may be an attempt at smuggling, so the connection is not kept.
        let both = headers.remove(CONTENT_LENGTH).is_some();
        return Ok((Framing::Chunked(Chunk::Size), !both));
    }
    let mut length = None;
    for v in headers.get_all(CONTENT_LENGTH) {
        for part in v.to_str().unwrap_or("x").split(',') {
            let n: u64 = part
                .trim()
                .parse()
                .map_err(|_| Error::Malformed("content-length".into()))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Malformed("conflicting content-length".into()));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => (Framing::Done, true),
        Some(n) => (Framing::Length(n), true),
        None => (Framing::Close, false),
    })
}

/// A response body read from its connection.
struct UpBody {
    /// `None` once given back or dropped.
    conn: Option<Conn>,
    framing: Framing,
    /// Where the connection goes when the body is done; `None`: it is not kept.
    back: Option<(Arc<Kept>, Key)>,
    /// Data already taken from the buffer, handed out next.
    ready: Option<Bytes>,
}

impl UpBody {
    /// Takes what the buffer holds of a `content-length` body, so that a body that came with
    /// its head gives its connection back at once.
    fn take_buffered(&mut self) {
        if let (Framing::Length(n), Some(c)) = (self.framing, self.conn.as_mut()) {
            if !c.buf.is_empty() {
                let k = (c.buf.len() as u64).min(n) as usize;
                self.ready = Some(c.buf.split_to(k));
                self.framing = if k as u64 == n {
                    Framing::Done
                } else {
                    Framing::Length(n - k as u64)
                };
            }
        }
        if self.framing == Framing::Done {
            self.finish();
        }
    }

    /// The body is complete: the connection goes back when it may and nothing extra came.
    fn finish(&mut self) {
        self.framing = Framing::Done;
        // Both taken whatever comes of it: a connection not given back is dropped here.
        if let (Some((kept, key)), Some(c)) = (self.back.take(), self.conn.take()) {
            if c.buf.is_empty() {
                kept.put(key, c);
            }
        }
    }
}

/// The next piece of a chunked body from `buf`, `None` when more must be read; `framing`
/// becomes [`Framing::Done`] after the last chunk and the trailers (which are dropped, as
/// hyper's HTTP/1 client does).
fn decode_chunked(framing: &mut Framing, buf: &mut Bytes) -> Result<Option<Bytes>, Error> {
    loop {
        let Framing::Chunked(state) = *framing else {
            return Ok(None);
        };
        match state {
            Chunk::Size => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                let size = line.split(|b| *b == b';').next().unwrap_or_default();
                let size = std::str::from_utf8(size)
                    .ok()
                    .and_then(|s| u64::from_str_radix(s.trim(), 16).ok())
                    .ok_or_else(|| Error::Malformed("chunk size".into()))?;
                *framing = Framing::Chunked(if size == 0 {
                    Chunk::Trailers
                } else {
                    Chunk::Data(size)
                });
            }
            Chunk::Data(n) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let k = (buf.len() as u64).min(n) as usize;
                let data = buf.split_to(k);
                *framing = Framing::Chunked(if k as u64 == n {
                    Chunk::DataEnd
                } else {
                    Chunk::Data(n - k as u64)
                });
                return Ok(Some(data));
            }
            Chunk::DataEnd => {
                if buf.len() < 2 {
                    return Ok(None);
                }
                if &buf[..2] != b"\r\n" {
                    return Err(Error::Malformed("chunk data end".into()));
                }
                buf.advance(2);
                *framing = Framing::Chunked(Chunk::Size);
            }
            Chunk::Trailers => {
                let Some(line) = take_line(buf)? else {
                    return Ok(None);
                };
                if line.is_empty() {
                    *framing = Framing::Done;
                    return Ok(None);
                }
            }
        }
    }
}

/// One CRLF-terminated line from the front of `buf`, without the CRLF.
fn take_line(buf: &mut Bytes) -> Result<Option<Bytes>, Error> {
    match buf.iter().position(|b| *b == b'\n') {
        Some(i) => {
            let mut line = buf.split_to(i + 1);
            line.truncate(i);
            if line.last() == Some(&b'\r') {
                line.truncate(i - 1);
            }
            Ok(Some(line))
        }
        None if buf.len() > 4096 => Err(Error::Malformed("chunk line too long".into())),
        None => Ok(None),
    }
}

impl hyper::body::Body for UpBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if let Some(data) = this.ready.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            match this.framing {
                Framing::Done => return Poll::Ready(None),
                Framing::Length(n) => {
                    let Some(c) = this.conn.as_mut() else {
                        return Poll::Ready(Some(Err(Error::Closed.into())));
                    };
                    if !c.buf.is_empty() {
                        let k = (c.buf.len() as u64).min(n) as usize;
                        let data = c.buf.split_to(k);
                        if k as u64 == n {
                            this.finish();
                        } else {
                            this.framing = Framing::Length(n - k as u64);
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                Framing::Close => {
                    let Some(c) = this.conn.as_mut() else {
                        return Poll::Ready(None);
                    };
                    if !c.buf.is_empty() {
                        return Poll::Ready(Some(Ok(Frame::data(std::mem::take(&mut c.buf)))));
                    }
                }
                Framing::Chunked(_) => {
                    let Some(c) = this.conn.as_mut() else {
                        return Poll::Ready(Some(Err(Error::Closed.into())));
                    };
                    match decode_chunked(&mut this.framing, &mut c.buf) {
                        Ok(Some(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                        Ok(None) if this.framing == Framing::Done => {
                            this.finish();
                            return Poll::Ready(None);
                        }
                        Ok(None) => {}
                        Err(e) => return Poll::Ready(Some(Err(e.into()))),
                    }
                }
            }
            let Some(c) = this.conn.as_mut() else {
                return Poll::Ready(Some(Err(Error::Closed.into())));
            };
            match ready!(c.poll_fill(cx)) {
                Ok(true) => {}
                Ok(false) if this.framing == Framing::Close => {
                    this.framing = Framing::Done;
                    this.conn = None;
                    return Poll::Ready(None);
                }
                Ok(false) => return Poll::Ready(Some(Err(Error::Closed.into()))),
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ready.is_none() && self.framing == Framing::Done
    }

    fn size_hint(&self) -> SizeHint {
        let ready = self.ready.as_ref().map_or(0, |b| b.len() as u64);
        match self.framing {
            Framing::Done => SizeHint::with_exact(ready),
            Framing::Length(n) => SizeHint::with_exact(ready + n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
