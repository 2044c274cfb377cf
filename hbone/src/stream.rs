//! One CONNECT stream and the copy between it and a TCP socket (docs/WIRE.md §1.3):
//! a TCP FIN becomes END_STREAM and back; a TCP reset becomes RST_STREAM(CONNECT_ERROR), and a
//! RST_STREAM other than NO_ERROR/CANCEL becomes a TCP reset (SO_LINGER 0), so neither side
//! mistakes an abort for a clean end.

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use std::task::{Context, Poll, Waker};

use futures::future::{poll_fn, FutureExt};
use h2::{Reason, RecvStream, SendStream};
use tokio::io::AsyncReadExt;
use tokio::net::tcp::ReadHalf;
use tokio::net::TcpStream;

/// First read size; doubles while reads fill the buffer, up to [`MAX_READ`]. Idle connections
/// hold no buffer at all: one is allocated only once the socket is readable.
const MIN_READ: usize = 16 * 1024;
const MAX_READ: usize = 256 * 1024;

/// A CONNECT stream: the two halves of an HTTP/2 stream, plus whatever must live as long as it
/// (for example the pool's count of streams on its connection).
pub struct H2Stream {
    pub send: SendStream<Bytes>,
    pub recv: RecvStream,
    pub(crate) _guard: Option<Box<dyn Send + Sync>>,
}

impl H2Stream {
    pub fn new(send: SendStream<Bytes>, recv: RecvStream) -> Self {
        H2Stream {
            send,
            recv,
            _guard: None,
        }
    }
}

/// Bytes moved by a copy, and how it ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CopyStats {
    /// From the TCP socket into the tunnel.
    pub tcp_to_tunnel: u64,
    /// From the tunnel out to the TCP socket.
    pub tunnel_to_tcp: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("TCP side reset or failed: {0}")]
    Tcp(io::Error),
    #[error("tunnel reset by peer: {0}")]
    TunnelReset(h2::Error),
    #[error("tunnel failed: {0}")]
    Tunnel(h2::Error),
}

enum Outcome {
    Done,
    Failed(CopyError),
}

/// Bytes that crossed a copy, counted as they cross, so that they are known however the copy
/// ends: cleanly, by a reset of either side, or by being dropped (drain, policy close). A
/// reader may look while the copy runs (metrics of long-lived connections).
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: usize) {
        self.0.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Copies both ways until both directions have ended, propagating half-closes and resets.
pub async fn copy_bidirectional(
    tcp: &mut TcpStream,
    stream: H2Stream,
) -> Result<CopyStats, (CopyStats, CopyError)> {
    let (up, down) = (Counter::default(), Counter::default());
    copy_counted(tcp, stream, &up, &down).await
}

/// [`copy_bidirectional`], counting the bytes handed to the tunnel in `tcp_to_tunnel` and
/// those written to the socket in `tunnel_to_tcp` as they go.
pub async fn copy_counted(
    tcp: &mut TcpStream,
    stream: H2Stream,
    tcp_to_tunnel: &Counter,
    tunnel_to_tcp: &Counter,
) -> Result<CopyStats, (CopyStats, CopyError)> {
    let H2Stream {
        mut send,
        mut recv,
        _guard,
    } = stream;
    let (up0, down0) = (tcp_to_tunnel.get(), tunnel_to_tcp.get());
    let mut failure = None;
    let (rd, wr) = tcp.split();
    let tcp: &TcpStream = wr.as_ref();
    {
        let up = tcp_to_h2(rd, &mut send, tcp_to_tunnel);
        let down = h2_to_tcp(&mut recv, tcp, tunnel_to_tcp);
        tokio::pin!(up, down);
        let (mut up_done, mut down_done) = (false, false);
        while !(up_done && down_done) && failure.is_none() {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if let Outcome::Failed(e) = r { failure = Some(e); }
                }
                r = &mut down, if !down_done => {
                    down_done = true;
                    if let Outcome::Failed(e) = r { failure = Some(e); }
                }
            }
        }
    }
    let stats = CopyStats {
        tcp_to_tunnel: tcp_to_tunnel.get() - up0,
        tunnel_to_tcp: tunnel_to_tcp.get() - down0,
    };
    match failure {
        None => Ok(stats),
        Some(e) => {
            match &e {
                // The app or the peer's app went away abruptly: tell the other side the same way.
                CopyError::Tcp(_) => send.send_reset(Reason::CONNECT_ERROR),
                CopyError::TunnelReset(_) | CopyError::Tunnel(_) => reset_tcp(tcp),
            }
            Err((stats, e))
        }
    }
}

/// Makes the kernel send RST instead of FIN when the socket is closed; the caller closes it
/// (drops it) right after. No shutdown here: that would send a FIN first.
pub fn reset_tcp(tcp: &TcpStream) {
    let _ = socket2::SockRef::from(tcp).set_linger(Some(Duration::ZERO));
}

async fn tcp_to_h2(mut rd: ReadHalf<'_>, send: &mut SendStream<Bytes>, moved: &Counter) -> Outcome {
    let mut size = MIN_READ;
    // Reused across reads: `split` hands the filled part to h2 and keeps the rest of the
    // allocation, which `reserve` reclaims once h2 has written the earlier data.
    let mut buf = BytesMut::new();
    loop {
        // Wait for data, but notice a reset of the stream by the peer meanwhile (it may come
        // after the peer's END_STREAM, when nothing reads the receive half any more).
        tokio::select! {
            r = rd.as_ref().readable() => if let Err(e) = r {
                return Outcome::Failed(CopyError::Tcp(e));
            },
            r = poll_fn(|cx| send.poll_reset(cx)) => {
                let e = match r { Ok(reason) => h2::Error::from(reason), Err(e) => e };
                return Outcome::Failed(CopyError::TunnelReset(e));
            }
        }
        buf.reserve(size);
        // Read through `AsyncRead`, which takes a short read as proof the socket is drained
        // and clears its readiness: the next wait costs no empty read (one system call per
        // request saved, docs/BENCHMARKS.md).
        let n = match rd.read_buf(&mut buf).now_or_never() {
            Some(Ok(0)) => {
                return match send.send_data(Bytes::new(), true) {
                    Ok(()) => Outcome::Done,
                    Err(e) => Outcome::Failed(classify(e)),
                }
            }
            Some(Ok(n)) => n,
            None => {
                // Readiness left over from the last read: nothing came. Unless a bulk
                // transfer is under way, wait without the buffer, or every idle connection
                // would keep its 16 KiB reservation (docs/BENCHMARKS.md, idle memory).
                if size == MIN_READ {
                    buf = BytesMut::new();
                }
                continue;
            }
            Some(Err(e)) => return Outcome::Failed(CopyError::Tcp(e)),
        };
        let filled = n >= size;
        if let Err(e) = send_all(send, buf.split().freeze(), moved).await {
            return Outcome::Failed(e);
        }
        if filled {
            // Bulk transfer: keep the buffer and read more at a time.
            size = (size * 2).min(MAX_READ);
        } else {
            // Request/response or idle: hold no buffer between reads.
            buf = BytesMut::new();
            size = MIN_READ;
        }
    }
}

/// Hands `data` to h2 as the stream's capacity allows, counting each piece in `moved`.
async fn send_all(
    send: &mut SendStream<Bytes>,
    mut data: Bytes,
    moved: &Counter,
) -> Result<(), CopyError> {
    while !data.is_empty() {
        // h2 wakes the task it holds for this stream (ours, left by `poll_reset`) when
        // `reserve_capacity` assigns capacity at once. A task woken while it runs is queued
        // again as if it yielded, and tokio then wakes an idle worker thread to share work
        // that is not there: two futex calls and a thread switch per request. Leave h2 a
        // no-op waker instead; `poll_capacity` below registers ours if it has to wait.
        match send.poll_reset(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(Ok(reason)) => return Err(CopyError::TunnelReset(reason.into())),
            Poll::Ready(Err(e)) => return Err(classify(e)),
            Poll::Pending => {}
        }
        send.reserve_capacity(data.len());
        let cap = match poll_fn(|cx| send.poll_capacity(cx)).await {
            Some(Ok(cap)) => cap,
            Some(Err(e)) => return Err(classify(e)),
            None => return Err(CopyError::Tunnel(h2::Error::from(Reason::STREAM_CLOSED))),
        };
        if cap == 0 {
            continue;
        }
        let chunk = data.split_to(cap.min(data.len()));
        let n = chunk.len();
        send.send_data(chunk, false).map_err(classify)?;
        moved.add(n);
    }
    Ok(())
}

async fn h2_to_tcp(recv: &mut RecvStream, tcp: &TcpStream, moved: &Counter) -> Outcome {
    loop {
        match recv.data().await {
            Some(Ok(chunk)) => {
                let len = chunk.len();
                if let Err(e) = write_all(tcp, &chunk, moved).await {
                    return Outcome::Failed(CopyError::Tcp(e));
                }
                let _ = recv.flow_control().release_capacity(len);
            }
            Some(Err(e)) if is_clean_end(&e) => break,
            Some(Err(e)) => return Outcome::Failed(classify(e)),
            None => break,
        }
    }
    // END_STREAM (or a NO_ERROR/CANCEL reset): half-close towards the app.
    match socket2::SockRef::from(tcp).shutdown(Shutdown::Write) {
        Ok(()) => Outcome::Done,
        Err(e) if e.kind() == io::ErrorKind::NotConnected => Outcome::Done,
        Err(e) => Outcome::Failed(CopyError::Tcp(e)),
    }
}

/// Writes `buf` whole, counting in `moved` what the kernel took as it takes it.
async fn write_all(tcp: &TcpStream, mut buf: &[u8], moved: &Counter) -> io::Result<()> {
    while !buf.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(buf) {
            Ok(n) => {
                moved.add(n);
                buf = &buf[n..];
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A received RST_STREAM with NO_ERROR or CANCEL counts as a clean end of stream.
fn is_clean_end(e: &h2::Error) -> bool {
    e.is_remote() && matches!(e.reason(), Some(Reason::NO_ERROR) | Some(Reason::CANCEL))
}

fn classify(e: h2::Error) -> CopyError {
    if e.is_reset() && e.is_remote() {
        CopyError::TunnelReset(e)
    } else {
        CopyError::Tunnel(e)
    }
}
