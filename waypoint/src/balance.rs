//! Endpoint picking by DestinationRule `loadBalancer` (docs/WIRE.md §8, DR-09 … DR-16), among
//! the endpoints left after subsets, tried ones and ejections. Without one the pick is
//! weighted random (ztunnel's own). Endpoint weights are not used by these:
//!
//! - `ROUND_ROBIN`: in turn, per service, port and subset;
//! - `LEAST_REQUEST` (`LEAST_CONN`): of two endpoints drawn at random, the one with fewer
//!   requests in flight from this waypoint;
//! - `consistentHash`: the endpoint with the highest hash of (key, endpoint) (rendezvous
//!   hashing: the same key keeps its endpoint, and when endpoints come or go only the keys
//!   of those move). The key is a header's value, a cookie's, the client's IP (the original
//!   client, from HBONE) or a query parameter's; a request without one is picked at random,
//!   except that a cookie policy with a `ttl` makes the missing cookie ([`new_cookie`]).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use l7::istio::{Balance, HashOn};
use proxycore::state::Endpoint;
use rand::Rng;

/// The hash of a request's key, if it has one.
pub fn key(on: &HashOn, headers: &http::HeaderMap, uri: &http::Uri, client: IpAddr) -> Option<u64> {
    let mut h = std::hash::DefaultHasher::new();
    match on {
        HashOn::Header(name) => headers.get(name)?.as_bytes().hash(&mut h),
        HashOn::Cookie(name, _) => {
            return headers
                .get_all(http::header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .find_map(|c| {
                    let (k, v) = c.trim().split_once('=')?;
                    (k == name).then_some(v)
                })
                .map(cookie_hash)
        }
        HashOn::SourceIp => client.hash(&mut h),
        HashOn::Query(name) => uri
            .query()?
            .split('&')
            .find_map(|p| {
                let (k, v) = p.split_once('=').unwrap_or((p, ""));
                (k == name).then_some(v)
            })?
            .hash(&mut h),
    }
    Some(h.finish())
}

fn cookie_hash(value: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    value.hash(&mut h);
    h.finish()
}

/// For a request without the hash cookie, when the policy says to make one (a `ttl`,
/// DR-14): a new random value's hash, to pick with, and the `Set-Cookie` that makes the
/// client's next requests carry it, so they hash to the same endpoint.
pub fn new_cookie(on: &HashOn) -> Option<(u64, http::HeaderValue)> {
    let HashOn::Cookie(name, Some(generate)) = on else {
        return None;
    };
    let value = format!("{:016x}", rand::thread_rng().gen::<u64>());
    let mut set = format!("{name}={value}");
    if !generate.ttl.is_zero() {
        set.push_str(&format!("; Max-Age={}", generate.ttl.as_secs().max(1)));
    }
    if let Some(p) = &generate.path {
        set.push_str(&format!("; Path={p}"));
    }
    set.push_str("; HttpOnly");
    // The name and path are validated tokens; the value is hex.
    let header = http::HeaderValue::from_str(&set).ok()?;
    Some((cookie_hash(&value), header))
}

/// The load balancers' state: requests in flight per endpoint uid (for `LEAST_REQUEST`)
/// and round-robin positions per cluster.
#[derive(Default)]
pub struct Balancer {
    in_flight: Arc<Mutex<HashMap<String, u32>>>,
    turns: Mutex<HashMap<String, usize>>,
}

/// A request in flight to an endpoint, counted until dropped.
pub struct Counted(Arc<Mutex<HashMap<String, u32>>>, String);

impl Balancer {
    /// Counts a request to `uid` until the returned guard is dropped.
    pub fn count(&self, uid: &str) -> Counted {
        *self
            .in_flight
            .lock()
            .unwrap()
            .entry(uid.to_string())
            .or_default() += 1;
        Counted(self.in_flight.clone(), uid.to_string())
    }

    /// One of `eps` (not empty) for `cluster` by `balance`; `hash`: the request's key.
    pub fn choose(
        &self,
        balance: &Balance,
        cluster: &str,
        mut eps: Vec<Endpoint>,
        hash: Option<u64>,
    ) -> Endpoint {
        let n = eps.len();
        let i = match (balance, hash) {
            (Balance::RoundRobin, _) => {
                let mut t = self.turns.lock().unwrap();
                let at = t.entry(cluster.to_string()).or_default();
                let i = *at % n;
                *at = at.wrapping_add(1);
                i
            }
            (Balance::LeastRequest, _) if n > 1 => {
                let mut rng = rand::thread_rng();
                let a = rng.gen_range(0..n);
                let b = (a + rng.gen_range(1..n)) % n;
                let counts = self.in_flight.lock().unwrap();
                let load = |i: usize| counts.get(&eps[i].workload.uid).copied().unwrap_or(0);
                if load(b) < load(a) {
                    b
                } else {
                    a
                }
            }
            (Balance::Hash(_), Some(key)) => (0..n)
                .max_by_key(|&i| {
                    let mut h = std::hash::DefaultHasher::new();
                    (key, &eps[i].workload.uid).hash(&mut h);
                    h.finish()
                })
                .unwrap_or(0),
            _ => rand::thread_rng().gen_range(0..n),
        };
        eps.swap_remove(i)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        let mut counts = self.0.lock().unwrap();
        if let Some(n) = counts.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.1);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_from_header_cookie_query_and_source() {
        let req = http::Request::get("/p?a=1&user=u7&b")
            .header("x-user", "u1")
            .header("cookie", "theme=dark; user=u2")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let k = |on: HashOn| key(&on, &parts.headers, &parts.uri, ip);
        let header = k(HashOn::Header(http::HeaderName::from_static("x-user")));
        assert!(header.is_some());
        assert_eq!(
            header,
            k(HashOn::Header(http::HeaderName::from_static("x-user")))
        );
        assert!(k(HashOn::Cookie("user".into(), None)).is_some());
        assert_ne!(k(HashOn::Cookie("user".into(), None)), header);
        assert!(k(HashOn::Query("user".into())).is_some());
        assert!(k(HashOn::SourceIp).is_some());
        // No key: no hash (the pick is then random).
        assert_eq!(
            k(HashOn::Header(http::HeaderName::from_static("x-none"))),
            None
        );
        assert_eq!(k(HashOn::Cookie("none".into(), None)), None);
        assert_eq!(k(HashOn::Query("none".into())), None);
    }
}
