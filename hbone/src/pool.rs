//! The HBONE connection pool (docs/WIRE.md §1.6): keyed by (source identity, expected
//! destination identities, destination address, source IP); streams are multiplexed on a
//! connection up to min(POOL_MAX_STREAMS_PER_CONNECTION, the peer's limit), then another
//! connection is opened; a connection that saw GOAWAY or an I/O error is never reused; idle
//! connections are closed after POOL_UNUSED_RELEASE_TIMEOUT.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use identity::Identity;
use tokio::time::Instant;

use crate::client::{ConnectRequest, Connection};
use crate::config::H2Config;
use crate::error::HboneError;
use crate::stream::H2Stream;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct PoolKey {
    pub src_identity: Identity,
    pub dst_identities: Vec<Identity>,
    pub dst: SocketAddr,
    pub src_ip: Option<IpAddr>,
}

struct Usage {
    active: AtomicUsize,
    idle_since: Mutex<Instant>,
}

struct Slot {
    conn: Connection,
    usage: Arc<Usage>,
}

/// Decrements the stream count of its connection when the stream ends.
struct StreamGuard(Arc<Usage>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if self.0.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.0.idle_since.lock().unwrap() = Instant::now();
        }
    }
}

#[derive(Default)]
struct Inner {
    conns: Mutex<HashMap<PoolKey, Vec<Slot>>>,
    /// One connection attempt at a time per key, so a burst of streams shares new connections.
    connecting: Mutex<HashMap<PoolKey, Arc<tokio::sync::Mutex<()>>>>,
}

/// Pool statistics, for `/config_dump` and tests.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct PoolStats {
    pub keys: usize,
    pub connections: usize,
    pub streams: usize,
}

#[derive(Clone)]
pub struct Pool {
    inner: Arc<Inner>,
    max_streams: usize,
    idle_timeout: Duration,
}

impl Pool {
    /// A pool using `cfg`'s stream limit and idle timeout; spawns its idle sweeper.
    pub fn new(cfg: &H2Config) -> Self {
        let pool = Pool {
            inner: Arc::default(),
            max_streams: cfg.pool_max_streams.max(1) as usize,
            idle_timeout: cfg.pool_idle_timeout,
        };
        tokio::spawn(sweep(
            Arc::downgrade(&pool.inner),
            pool.idle_timeout,
            (pool.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(30)),
        ));
        pool
    }

    /// Opens a CONNECT stream for `key`, on a pooled connection when one has room, else on a
    /// new one made by `connect`.
    ///
    /// A new connection whose first stream fails in a way another connection may fix (the
    /// peer allows no streams, refused it, or sent GOAWAY at once) is replaced once
    /// (docs/HARDENING.md, F3).
    pub async fn connect<C, Fut>(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
        mut connect: C,
    ) -> Result<H2Stream, HboneError>
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        match self.connect_once(key, req, &mut connect).await {
            Err(e) if e.is_retryable_on_new_connection() => {
                tracing::debug!(error = %e, "new HBONE connection unusable; trying another");
                self.connect_once(key, req, &mut connect).await
            }
            r => r,
        }
    }

    async fn connect_once<C, Fut>(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
        connect: &mut C,
    ) -> Result<H2Stream, HboneError>
    where
        C: FnMut() -> Fut,
        Fut: Future<Output = Result<Connection, HboneError>>,
    {
        if let Some(r) = self.try_pooled(key, req).await {
            return r;
        }
        let lock = self
            .inner
            .connecting
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .clone();
        let guard = lock.lock().await;
        if let Some(r) = self.try_pooled(key, req).await {
            return r;
        }
        let conn = connect().await?;
        let usage = Arc::new(Usage {
            active: AtomicUsize::new(1),
            idle_since: Mutex::new(Instant::now()),
        });
        self.inner
            .conns
            .lock()
            .unwrap()
            .entry(key.clone())
            .or_default()
            .push(Slot {
                conn: conn.clone(),
                usage: usage.clone(),
            });
        drop(guard);
        self.inner.connecting.lock().unwrap().remove(key);
        let sg = StreamGuard(usage);
        let mut stream = conn.connect(req).await.inspect_err(|e| {
            if e.is_retryable_on_new_connection() {
                conn.mark_closed();
            }
        })?;
        stream._guard = Some(Box::new(sg));
        Ok(stream)
    }

    /// Tries the pooled connections of `key`; `None` when none has room (or all failed in a way
    /// a new connection may fix).
    async fn try_pooled(
        &self,
        key: &PoolKey,
        req: &ConnectRequest,
    ) -> Option<Result<H2Stream, HboneError>> {
        loop {
            let (conn, usage) = self.checkout(key)?;
            let guard = StreamGuard(usage);
            match conn.connect(req).await {
                Ok(mut stream) => {
                    stream._guard = Some(Box::new(guard));
                    return Some(Ok(stream));
                }
                Err(e) if e.is_retryable_on_new_connection() => {
                    tracing::debug!(peer = %conn.peer, error = %e, "pooled connection unusable");
                    conn.mark_closed();
                }
                Err(e) => return Some(Err(e)),
            }
        }
    }

    fn checkout(&self, key: &PoolKey) -> Option<(Connection, Arc<Usage>)> {
        let mut conns = self.inner.conns.lock().unwrap();
        let slots = conns.get_mut(key)?;
        slots.retain(|s| !s.conn.is_closed());
        for s in slots.iter() {
            // A peer that allows no streams now gets none (F3).
            let limit = self.max_streams.min(s.conn.peer_max_streams());
            let active = s.usage.active.load(Ordering::Acquire);
            if active < limit {
                s.usage.active.fetch_add(1, Ordering::AcqRel);
                return Some((s.conn.clone(), s.usage.clone()));
            }
        }
        None
    }

    pub fn stats(&self) -> PoolStats {
        let conns = self.inner.conns.lock().unwrap();
        let mut st = PoolStats {
            keys: conns.len(),
            ..Default::default()
        };
        for slots in conns.values() {
            for s in slots.iter().filter(|s| !s.conn.is_closed()) {
                st.connections += 1;
                st.streams += s.usage.active.load(Ordering::Relaxed);
            }
        }
        st
    }
}

async fn sweep(inner: Weak<Inner>, idle_timeout: Duration, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(inner) = inner.upgrade() else { return };
        let mut conns = inner.conns.lock().unwrap();
        conns.retain(|_, slots| {
            slots.retain(|s| {
                let idle = s.usage.active.load(Ordering::Acquire) == 0
                    && s.usage.idle_since.lock().unwrap().elapsed() >= idle_timeout;
                !(s.conn.is_closed() || idle)
            });
            !slots.is_empty()
        });
    }
}
