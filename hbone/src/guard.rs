//! Per-connection budgets on the HTTP/2 frames a peer sends that cost the server work but
//! carry no request of their own: RST_STREAM (Rapid Reset, CVE-2023-44487, also paced),
//! PING and SETTINGS (CVE-2019-9512/9515) and empty DATA/HEADERS/CONTINUATION frames
//! (CVE-2019-9518). See docs/HARDENING.md, finding 4.
//!
//! [`FrameGuard`] reads the frame headers (RFC 9113 §4.1) as the bytes go by towards the
//! HTTP/2 library, without copying or buffering them. Each kind of frame draws on a token
//! bucket: a burst, then a sustained rate. A peer that empties one has its input stopped
//! (nothing more is read) and [`Budget::exceeded`] completes, so that the connection's owner
//! can answer GOAWAY ENHANCE_YOUR_CALM and close. A paced attacker cannot stay under the
//! budget and keep doing damage: whatever its pacing, it gets at most the sustained rate.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const FLAG_ACK: u8 = 0x1;
const FLAG_END_STREAM: u8 = 0x1;

/// A burst and a sustained rate per second.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Rate {
    pub burst: u32,
    pub per_sec: u32,
}

/// The budgets of one connection.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct FrameLimits {
    pub resets: Rate,
    pub pings: Rate,
    pub settings: Rate,
    pub empty: Rate,
}

impl Default for FrameLimits {
    fn default() -> Self {
        FrameLimits {
            // A pooled client resets a stream when its TCP side fails; hundreds a second on
            // one connection is an attack, not a pool.
            resets: Rate {
                burst: 1000,
                per_sec: 200,
            },
            pings: Rate {
                burst: 100,
                per_sec: 10,
            },
            settings: Rate {
                burst: 100,
                per_sec: 10,
            },
            empty: Rate {
                burst: 1000,
                per_sec: 100,
            },
        }
    }
}

/// Which budget a peer exhausted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flood {
    Resets,
    Pings,
    Settings,
    EmptyFrames,
}

impl Flood {
    pub fn as_str(self) -> &'static str {
        match self {
            Flood::Resets => "rst_stream",
            Flood::Pings => "ping",
            Flood::Settings => "settings",
            Flood::EmptyFrames => "empty_frames",
        }
    }
}

#[derive(Debug)]
struct Bucket {
    rate: Rate,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn new(rate: Rate, now: Instant) -> Bucket {
        Bucket {
            rate,
            tokens: f64::from(rate.burst),
            at: now,
        }
    }

    /// Takes one token; false when there is none.
    fn take(&mut self, now: Instant) -> bool {
        let refill = now.duration_since(self.at).as_secs_f64() * f64::from(self.rate.per_sec);
        self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The budget state of one connection, shared by its [`FrameGuard`] and its owner.
#[derive(Debug)]
pub struct Budget {
    buckets: Mutex<[Bucket; 4]>,
    exceeded: Mutex<Option<Flood>>,
    notify: Notify,
}

impl Budget {
    pub fn new(limits: &FrameLimits) -> Arc<Budget> {
        let now = Instant::now();
        Arc::new(Budget {
            buckets: Mutex::new([
                Bucket::new(limits.resets, now),
                Bucket::new(limits.pings, now),
                Bucket::new(limits.settings, now),
                Bucket::new(limits.empty, now),
            ]),
            exceeded: Mutex::new(None),
            notify: Notify::new(),
        })
    }

    /// Completes once a budget is exhausted, with which.
    pub async fn exceeded(&self) -> Flood {
        loop {
            let notified = self.notify.notified();
            if let Some(f) = *self.exceeded.lock().unwrap() {
                return f;
            }
            notified.await;
        }
    }

    pub fn flood(&self) -> Option<Flood> {
        *self.exceeded.lock().unwrap()
    }

    /// Charges one frame; false once the connection is over budget.
    fn charge(&self, kind: Flood) -> bool {
        if self.flood().is_some() {
            return false;
        }
        let i = match kind {
            Flood::Resets => 0,
            Flood::Pings => 1,
            Flood::Settings => 2,
            Flood::EmptyFrames => 3,
        };
        if self.buckets.lock().unwrap()[i].take(Instant::now()) {
            return true;
        }
        *self.exceeded.lock().unwrap() = Some(kind);
        self.notify.notify_waiters();
        false
    }
}

/// Where the reader is in the peer's byte stream.
#[derive(Debug)]
enum At {
    /// The client connection preface still to skip (server side).
    Preface(usize),
    /// Collecting a frame header: the bytes so far.
    Header([u8; FRAME_HEADER_LEN], usize),
    /// Inside a frame's payload: the bytes left.
    Payload(usize),
}

/// An I/O object whose read side is checked against a [`Budget`].
#[derive(Debug)]
pub struct FrameGuard<IO> {
    io: IO,
    at: At,
    budget: Arc<Budget>,
}

impl<IO> FrameGuard<IO> {
    /// Guards the server side of a connection: the peer's bytes start with the preface.
    pub fn server(io: IO, budget: Arc<Budget>) -> FrameGuard<IO> {
        FrameGuard {
            io,
            at: At::Preface(PREFACE_LEN),
            budget,
        }
    }

    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Follows the frames in `bytes`; false when one is over budget.
    fn observe(&mut self, mut bytes: &[u8]) -> bool {
        while !bytes.is_empty() {
            match &mut self.at {
                At::Preface(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.at = At::Header([0; FRAME_HEADER_LEN], 0);
                    }
                }
                At::Payload(left) => {
                    let n = (*left).min(bytes.len());
                    *left -= n;
                    bytes = &bytes[n..];
                    if *left == 0 {
                        self.at = At::Header([0; FRAME_HEADER_LEN], 0);
                    }
                }
                At::Header(h, filled) => {
                    let n = (FRAME_HEADER_LEN - *filled).min(bytes.len());
                    h[*filled..*filled + n].copy_from_slice(&bytes[..n]);
                    *filled += n;
                    bytes = &bytes[n..];
                    if *filled < FRAME_HEADER_LEN {
                        continue;
                    }
                    let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                    let (kind, flags) = (h[3], h[4]);
                    let charge = match kind {
                        RST_STREAM => Some(Flood::Resets),
                        PING if flags & FLAG_ACK == 0 => Some(Flood::Pings),
                        SETTINGS if flags & FLAG_ACK == 0 => Some(Flood::Settings),
                        DATA if len == 0 && flags & FLAG_END_STREAM == 0 => {
                            Some(Flood::EmptyFrames)
                        }
                        HEADERS | CONTINUATION if len == 0 => Some(Flood::EmptyFrames),
                        _ => None,
                    };
                    if let Some(kind) = charge {
                        if !self.budget.charge(kind) {
                            return false;
                        }
                    }
                    self.at = if len == 0 {
                        At::Header([0; FRAME_HEADER_LEN], 0)
                    } else {
                        At::Payload(len)
                    };
                }
            }
        }
        true
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for FrameGuard<IO> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        // Over budget: no more input. The owner closes the connection with GOAWAY.
        if self.budget.flood().is_some() {
            return Poll::Pending;
        }
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if !this.observe(&buf.filled()[before..]) {
                // What was read is still handed on: the frames before the one over budget
                // are the peer's, and the owner is closing anyway.
                return Poll::Ready(Ok(()));
            }
        }
        r
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for FrameGuard<IO> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let n = payload.len();
        let mut f = vec![
            (n >> 16) as u8,
            (n >> 8) as u8,
            n as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    fn guard(limits: FrameLimits) -> FrameGuard<()> {
        FrameGuard::server((), Budget::new(&limits))
    }

    fn tight() -> FrameLimits {
        let r = Rate {
            burst: 3,
            per_sec: 0,
        };
        FrameLimits {
            resets: r,
            pings: r,
            settings: r,
            empty: r,
        }
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        let mut g = guard(tight());
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(SETTINGS, 0, &[0; 6]));
        bytes.extend(frame(DATA, 0, &[7; 40_000]));
        bytes.extend(frame(PING, FLAG_ACK, &[0; 8]));
        bytes.extend(frame(RST_STREAM, 0, &[0, 0, 0, 8]));
        for chunk in bytes.chunks(5) {
            assert!(g.observe(chunk));
        }
        assert!(matches!(g.at, At::Header(_, 0)));
        assert_eq!(g.budget.flood(), None);
    }

    #[test]
    fn each_budget_stops_its_flood() {
        for (kind, flags, payload, flood) in [
            (RST_STREAM, 0, vec![0u8; 4], Flood::Resets),
            (PING, 0, vec![0; 8], Flood::Pings),
            (SETTINGS, 0, vec![], Flood::Settings),
            (DATA, 0, vec![], Flood::EmptyFrames),
            (CONTINUATION, 0, vec![], Flood::EmptyFrames),
        ] {
            let mut g = guard(tight());
            assert!(g.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
            for _ in 0..3 {
                assert!(g.observe(&frame(kind, flags, &payload)));
            }
            assert!(!g.observe(&frame(kind, flags, &payload)));
            assert_eq!(g.budget.flood(), Some(flood));
        }
        // ACKs and frames with content are free.
        let mut g = guard(tight());
        assert!(g.observe(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"));
        for _ in 0..10 {
            assert!(g.observe(&frame(PING, FLAG_ACK, &[0; 8])));
            assert!(g.observe(&frame(SETTINGS, FLAG_ACK, &[])));
            assert!(g.observe(&frame(DATA, FLAG_END_STREAM, &[])));
            assert!(g.observe(&frame(DATA, 0, b"x")));
        }
    }

    #[test]
    fn the_bucket_refills_at_its_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(
            Rate {
                burst: 2,
                per_sec: 10,
            },
            t0,
        );
        assert!(b.take(t0) && b.take(t0) && !b.take(t0));
        assert!(b.take(t0 + std::time::Duration::from_millis(110)));
        assert!(!b.take(t0 + std::time::Duration::from_millis(120)));
    }
}
