//! Log lines limited per reason: what an unauthenticated peer can make the proxy write
//! (a failed handshake, a flood) must not let it fill the disk (docs/HARDENING.md,
//! finding 6h). Each reason may write [`PER_WINDOW`] lines per [`WINDOW`]; the first line
//! written after some were held back says how many were (`suppressed=N`).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(10);
pub const PER_WINDOW: u32 = 10;

#[derive(Debug)]
struct Reason {
    since: Instant,
    written: u32,
    suppressed: u64,
}

/// The lines written and held back, per reason.
#[derive(Debug, Default)]
pub struct RateLog {
    reasons: Mutex<HashMap<&'static str, Reason>>,
}

impl RateLog {
    /// Whether a line for `reason` may be written now: `Some(n)` with the number of lines
    /// held back since the last one written, `None` to hold this one back too.
    pub fn allow(&self, reason: &'static str, now: Instant) -> Option<u64> {
        let mut reasons = self.reasons.lock().unwrap();
        let r = reasons.entry(reason).or_insert(Reason {
            since: now,
            written: 0,
            suppressed: 0,
        });
        if now.duration_since(r.since) >= WINDOW {
            r.since = now;
            r.written = 0;
        }
        if r.written < PER_WINDOW {
            r.written += 1;
            Some(std::mem::take(&mut r.suppressed))
        } else {
            r.suppressed += 1;
            None
        }
    }
}

/// The process's limiter (logging is process-wide, as the subscriber is).
pub fn allow(reason: &'static str) -> Option<u64> {
    static LOG: std::sync::OnceLock<RateLog> = std::sync::OnceLock::new();
    LOG.get_or_init(RateLog::default)
        .allow(reason, Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reason_writes_its_share_then_counts_what_it_held_back() {
        let log = RateLog::default();
        let t0 = Instant::now();
        for _ in 0..PER_WINDOW {
            assert_eq!(log.allow("tls", t0), Some(0));
        }
        assert_eq!(log.allow("tls", t0), None);
        assert_eq!(log.allow("tls", t0), None);
        // Another reason has its own share.
        assert_eq!(log.allow("flood", t0), Some(0));
        // The next window: the first line says how many were held back.
        assert_eq!(log.allow("tls", t0 + WINDOW), Some(2));
        assert_eq!(log.allow("tls", t0 + WINDOW), Some(0));
    }
}
