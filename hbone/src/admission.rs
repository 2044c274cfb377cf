//! A bound on connections still in their TLS/HTTP/2 handshake, overall and per source IP
//! (docs/HARDENING.md, finding 2). Anyone who can reach 15008 can open connections
//! without a certificate; each holds a descriptor and a task until its handshake ends. Past a
//! limit the *oldest* handshake (of that source, or overall) is shed to admit the new one: a
//! real client completes its handshake in milliseconds, so the connections that stay long in
//! the handshake, and get shed, are the slow or idle ones an attacker holds open.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

/// Handshake limits; each is overridable by the ztunnel environment variable in its comment.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct HandshakeLimits {
    /// `HBONE_HANDSHAKE_TIMEOUT`: time allowed for the TLS and HTTP/2 handshakes, 10 s.
    pub timeout: Duration,
    /// `HBONE_MAX_HANDSHAKES`: connections in handshake at once, over all listeners, 1024.
    pub max_total: usize,
    /// `HBONE_MAX_HANDSHAKES_PER_IP`: connections in handshake at once from one source IP, 256:
    /// a pod dialling many pods of one node at once (one handshake per destination pod, as
    /// the pool dials one at a time per key) stays well under it.
    pub max_per_ip: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(10),
            max_total: 1024,
            max_per_ip: 256,
        }
    }
}

/// Why a handshake was ended before it completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Its source had `max_per_ip` newer handshakes waiting.
    PerSource,
    /// `max_total` newer handshakes were waiting.
    Overall,
}

impl Shed {
    pub fn as_str(self) -> &'static str {
        match self {
            Shed::PerSource => "per_source",
            Shed::Overall => "overall",
        }
    }
}

/// The handshakes in progress, shared by every HBONE listener of a process.
#[derive(Debug)]
pub struct Handshakes {
    pub limits: HandshakeLimits,
    inner: Mutex<Inner>,
    shed_per_source: AtomicU64,
    shed_overall: AtomicU64,
    timed_out: AtomicU64,
}

#[derive(Debug, Default)]
struct Inner {
    next_id: u64,
    /// By admission order: the first entry is the oldest.
    live: BTreeMap<u64, Entry>,
    per_ip: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Entry {
    ip: IpAddr,
    shed: oneshot::Sender<Shed>,
}

impl Inner {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let e = self.live.remove(&id)?;
        if let Some(n) = self.per_ip.get_mut(&e.ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&e.ip);
            }
        }
        Some(e)
    }
}

/// Counters of what [`Handshakes`] has done, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandshakeStats {
    pub in_progress: usize,
    pub shed_per_source: u64,
    pub shed_overall: u64,
    pub timed_out: u64,
}

impl Handshakes {
    pub fn new(limits: HandshakeLimits) -> Arc<Handshakes> {
        Arc::new(Handshakes {
            limits,
            inner: Mutex::default(),
            shed_per_source: AtomicU64::new(0),
            shed_overall: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
        })
    }

    /// Admits a new handshake from `ip`, shedding the oldest one of the same source when
    /// that source is at its limit, else the oldest overall when the process is at its.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Ticket {
        let (tx, rx) = oneshot::channel();
        let mut inner = self.inner.lock().unwrap();
        if inner.per_ip.get(&ip).copied().unwrap_or(0) >= self.limits.max_per_ip.max(1) {
            let oldest = inner
                .live
                .iter()
                .find(|(_, e)| e.ip == ip)
                .map(|(id, _)| *id);
            if let Some(e) = oldest.and_then(|id| inner.remove(id)) {
                let _ = e.shed.send(Shed::PerSource);
                self.shed_per_source.fetch_add(1, Ordering::Relaxed);
            }
        }
        if inner.live.len() >= self.limits.max_total.max(1) {
            let oldest = inner.live.keys().next().copied();
            if let Some(e) = oldest.and_then(|id| inner.remove(id)) {
                let _ = e.shed.send(Shed::Overall);
                self.shed_overall.fetch_add(1, Ordering::Relaxed);
            }
        }
        let id = inner.next_id;
        inner.next_id += 1;
        inner.live.insert(id, Entry { ip, shed: tx });
        *inner.per_ip.entry(ip).or_default() += 1;
        Ticket {
            id,
            owner: self.clone(),
            shed: rx,
        }
    }

    /// Counts a handshake that ran out of time.
    pub fn timed_out(&self) {
        self.timed_out.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stats(&self) -> HandshakeStats {
        HandshakeStats {
            in_progress: self.inner.lock().unwrap().live.len(),
            shed_per_source: self.shed_per_source.load(Ordering::Relaxed),
            shed_overall: self.shed_overall.load(Ordering::Relaxed),
            timed_out: self.timed_out.load(Ordering::Relaxed),
        }
    }
}

/// One admitted handshake; leaves the count when dropped.
#[derive(Debug)]
pub struct Ticket {
    id: u64,
    owner: Arc<Handshakes>,
    shed: oneshot::Receiver<Shed>,
}

impl Ticket {
    /// Completes when this handshake is shed to make room for newer ones.
    pub async fn shed(&mut self) -> Shed {
        // The sender is only dropped when the entry is removed, which happens on shedding
        // (after a send) or in our own Drop: an error here cannot be seen while we live.
        (&mut self.shed).await.unwrap_or(Shed::Overall)
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        self.owner.inner.lock().unwrap().remove(self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(total: usize, per_ip: usize) -> HandshakeLimits {
        HandshakeLimits {
            max_total: total,
            max_per_ip: per_ip,
            ..HandshakeLimits::default()
        }
    }

    #[tokio::test]
    async fn the_oldest_of_a_source_is_shed_first() {
        let h = Handshakes::new(limits(100, 2));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let mut a1 = h.admit(a);
        let _b1 = h.admit(b);
        let mut a2 = h.admit(a);
        let _a3 = h.admit(a);
        assert_eq!(a1.shed().await, Shed::PerSource);
        assert!(futures::FutureExt::now_or_never(a2.shed()).is_none());
        let s = h.stats();
        assert_eq!(
            (s.in_progress, s.shed_per_source, s.shed_overall),
            (3, 1, 0)
        );
    }

    #[tokio::test]
    async fn the_oldest_overall_is_shed_at_the_total_limit() {
        let h = Handshakes::new(limits(3, 10));
        let ips: Vec<IpAddr> = (1..=4)
            .map(|i| format!("10.0.0.{i}").parse().unwrap())
            .collect();
        let mut t: Vec<Ticket> = ips.iter().map(|ip| h.admit(*ip)).collect();
        assert_eq!(t[0].shed().await, Shed::Overall);
        drop(t.remove(0));
        assert_eq!(h.stats().in_progress, 3);
        // A finished handshake leaves room.
        drop(t.pop());
        let _t = h.admit(ips[0]);
        assert_eq!(h.stats().shed_overall, 1);
        assert_eq!(h.stats().in_progress, 3);
    }
}
