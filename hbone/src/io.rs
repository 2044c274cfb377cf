//! A CONNECT stream as a byte stream (`AsyncRead` + `AsyncWrite`), for protocols spoken
//! inside the tunnel by a library that wants an IO object (the waypoint's HTTP server and
//! client). Flow control: received data is released as it is read; writes wait for send
//! capacity. Shutdown sends END_STREAM.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::stream::H2Stream;

pub struct H2Io {
    /// `None` once dropped.
    stream: Option<H2Stream>,
    /// Received but not yet read.
    pending: Bytes,
    /// The peer ended its side (END_STREAM).
    eof: bool,
    /// This side was shut down (END_STREAM sent).
    shutdown: bool,
}

/// How long a shut-down stream is kept after it is dropped, waiting for the peer's
/// END_STREAM, so that the data queued before it is still delivered.
const LINGER: std::time::Duration = std::time::Duration::from_secs(10);

impl H2Io {
    pub fn new(stream: H2Stream) -> Self {
        H2Io {
            stream: Some(stream),
            pending: Bytes::new(),
            eof: false,
            shutdown: false,
        }
    }

    /// A stream of which `read` bytes were already received: they are read first.
    pub fn with_pending(stream: H2Stream, read: Bytes) -> Self {
        H2Io {
            stream: Some(stream),
            pending: read,
            eof: false,
            shutdown: false,
        }
    }

    fn stream(&mut self) -> &mut H2Stream {
        self.stream.as_mut().expect("used after drop")
    }
}

impl Drop for H2Io {
    /// A stream dropped while one side is open would be reset, and a reset discards data
    /// h2 has queued but not yet written (a response written just before a close). So: when
    /// the peer has ended, end ours too (both closed, nothing reset); when we ended ours,
    /// keep the stream until the peer ends (bounded); only an abandoned stream is reset.
    fn drop(&mut self) {
        let Some(stream) = self.stream.take() else {
            return;
        };
        if self.eof || self.shutdown {
            end(stream, self.eof);
        }
    }
}

/// Ends a stream that is done with without resetting it: END_STREAM is sent (if it was
/// not already), and unless the peer has ended its side (`peer_ended`) the stream is kept,
/// its data drained, until the peer does (bounded by [`LINGER`]), so that what was queued
/// before is still delivered.
pub fn end(mut stream: H2Stream, peer_ended: bool) {
    let _ = stream.send.send_data(Bytes::new(), true);
    if peer_ended {
        return;
    }
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = tokio::time::timeout(LINGER, async {
                while let Some(Ok(chunk)) = stream.recv.data().await {
                    let _ = stream.recv.flow_control().release_capacity(chunk.len());
                }
            })
            .await;
        });
    }
}

fn h2_to_io(e: h2::Error) -> io::Error {
    if e.is_io() {
        return e.into_io().unwrap_or_else(|| io::ErrorKind::Other.into());
    }
    io::Error::new(io::ErrorKind::ConnectionReset, e)
}

impl AsyncRead for H2Io {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        while this.pending.is_empty() && !this.eof {
            let recv = &mut this.stream().recv;
            match ready!(recv.poll_data(cx)) {
                Some(Ok(chunk)) => {
                    let _ = recv.flow_control().release_capacity(chunk.len());
                    this.pending = chunk;
                }
                Some(Err(e)) if e.reason() == Some(h2::Reason::NO_ERROR) => this.eof = true,
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => this.eof = true,
            }
        }
        let n = this.pending.len().min(buf.remaining());
        buf.put_slice(&this.pending[..n]);
        this.pending.advance(n);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for H2Io {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let send = &mut self.get_mut().stream().send;
        send.reserve_capacity(buf.len());
        loop {
            match ready!(send.poll_capacity(cx)) {
                Some(Ok(0)) => continue,
                Some(Ok(cap)) => {
                    let n = cap.min(buf.len());
                    send.send_data(Bytes::copy_from_slice(&buf[..n]), false)
                        .map_err(h2_to_io)?;
                    return Poll::Ready(Ok(n));
                }
                Some(Err(e)) => return Poll::Ready(Err(h2_to_io(e))),
                None => return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into())),
            }
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.shutdown {
            this.shutdown = true;
            // Already ended or reset: nothing more to say.
            let _ = this.stream().send.send_data(Bytes::new(), true);
        }
        Poll::Ready(Ok(()))
    }
}

/// An I/O object whose writes are counted as the inner object takes them.
pub struct CountWrites<'a, T> {
    inner: &'a mut T,
    written: &'a crate::stream::Counter,
}

impl<T: AsyncRead + Unpin> AsyncRead for CountWrites<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CountWrites<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let n = ready!(Pin::new(&mut *self.inner).poll_write(cx, buf))?;
        self.written.add(n);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.inner).poll_shutdown(cx)
    }
}

/// Copies both ways between `a` and `b` with half-close (tokio's `copy_bidirectional`),
/// counting what was written to `b` in `a_to_b` and to `a` in `b_to_a` as it is written, so
/// the counts hold however the copy ends.
pub async fn copy_counted<A, B>(
    a: &mut A,
    b: &mut B,
    a_to_b: &crate::stream::Counter,
    b_to_a: &crate::stream::Counter,
) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let mut a = CountWrites {
        inner: a,
        written: b_to_a,
    };
    let mut b = CountWrites {
        inner: b,
        written: a_to_b,
    };
    tokio::io::copy_bidirectional(&mut a, &mut b).await
}
