//! Circuit breakers (DestinationRule `connectionPool`, docs/WIRE.md §8, DR-25, DR-30, DR-31):
//! per service, port and subset, at most `min(maxConnections, http2MaxRequests)` requests
//! in flight (with HTTP/1.1 each holds an upstream connection of its own; HTTP/2 is counted
//! by `http2MaxRequests` only), and at most `http1MaxPendingRequests` waiting for one. A
//! request beyond both is not sent: 503 with `x-envoy-overloaded: true` (flag `UO`).
//!
//! A request holds its slot until its response body is dropped: read to the end and sent
//! on, or abandoned.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Frame, SizeHint};
use l7::istio::Limits;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::body::Body;

struct Cluster {
    slots: Arc<Semaphore>,
    waiting: AtomicU32,
}

#[derive(Default)]
pub struct Breakers {
    /// By cluster key and the limits it was made with (new limits: a new cluster).
    clusters: Mutex<HashMap<(String, u32, u32), Arc<Cluster>>>,
}

/// A request's slot in its cluster.
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl Breakers {
    /// Each cluster's circuit breaker: requests in flight of the most allowed, and those
    /// waiting (`waypoint-config clusters`).
    pub fn describe(&self) -> Vec<(String, serde_json::Value)> {
        let clusters = self.clusters.lock().unwrap();
        clusters
            .iter()
            .map(|((key, in_flight, pending), c)| {
                let free = c.slots.available_permits() as u32;
                (
                    key.clone(),
                    serde_json::json!({
                        "maxInFlight": in_flight,
                        "inFlight": in_flight.saturating_sub(free),
                        "maxPending": pending,
                        "pending": c.waiting.load(Ordering::Acquire),
                    }),
                )
            })
            .collect()
    }

    /// A slot for a request to `key`, waiting for one while fewer than the pending limit
    /// wait; `None`: overflow.
    pub async fn admit(&self, key: &str, limits: &Limits, http2: bool) -> Option<Slot> {
        let in_flight = if http2 {
            limits.max_requests
        } else {
            limits.max_requests.min(limits.max_connections)
        };
        let cluster = {
            let mut clusters = self.clusters.lock().unwrap();
            clusters
                .entry((key.to_string(), in_flight, limits.max_pending))
                .or_insert_with(|| {
                    Arc::new(Cluster {
                        slots: Arc::new(Semaphore::new(
                            (in_flight as usize).min(Semaphore::MAX_PERMITS),
                        )),
                        waiting: AtomicU32::new(0),
                    })
                })
                .clone()
        };
        if let Ok(p) = cluster.slots.clone().try_acquire_owned() {
            return Some(Slot(p));
        }
        // Counted as waiting until it has a slot or gives up (its request was cancelled).
        let before = cluster.waiting.fetch_add(1, Ordering::AcqRel);
        struct Waiting<'a>(&'a AtomicU32);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        let _waiting = Waiting(&cluster.waiting);
        if before >= limits.max_pending {
            return None;
        }
        cluster.slots.clone().acquire_owned().await.ok().map(Slot)
    }
}

/// A response body that holds something (its request's [`Slot`], its count of requests in
/// flight) until it is dropped.
pub struct Held {
    body: Body,
    _held: Box<dyn Send + Sync>,
}

impl Held {
    pub fn wrap(body: Body, held: Box<dyn Send + Sync>) -> Body {
        http_body_util::BodyExt::boxed(Held { body, _held: held })
    }
}

impl hyper::body::Body for Held {
    type Data = Bytes;
    type Error = crate::h1::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(connections: u32, pending: u32) -> Limits {
        Limits {
            max_connections: connections,
            max_pending: pending,
            max_requests: u32::MAX,
            max_requests_per_connection: 0,
        }
    }

    #[tokio::test]
    async fn one_in_flight_one_waiting_the_rest_overflow() {
        let b = Breakers::default();
        let l = limits(1, 1);
        let first = b.admit("c", &l, false).await.expect("a slot");
        // The second waits; the third overflows meanwhile.
        let waiting = b.admit("c", &l, false);
        tokio::pin!(waiting);
        assert!(
            futures_poll(&mut waiting).is_none(),
            "the second should wait"
        );
        assert!(
            b.admit("c", &l, false).await.is_none(),
            "the third overflows"
        );
        drop(first);
        assert!(waiting.await.is_some(), "the second gets the freed slot");
        // HTTP/2 is limited by http2MaxRequests only.
        assert!(b.admit("c", &l, true).await.is_some());
    }

    /// Polls once: `Some` if ready.
    fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> Option<F::Output> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match Pin::new(f).poll(&mut cx) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }
}
