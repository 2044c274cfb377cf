//! Outlier detection (DestinationRule `outlierDetection`, docs/WIRE.md §8, DR-39 … DR-44):
//! endpoints that answer with too many consecutive errors are ejected, left out of endpoint
//! picking, for the base ejection time × how many times they were ejected, counted in whole
//! review intervals. At most `maxEjectionPercent` of the endpoints are out at once, but
//! always at least one may be. Below `minHealthPercent` of endpoints healthy, ejections are
//! ignored; with the default 0, a service whose endpoints are all ejected answers 503
//! `no healthy upstream`.
//!
//! State is kept per service, port and subset (each an Envoy cluster of its own), per
//! endpoint uid.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use l7::istio::Ejection;

/// `hostname|port|subset`: what ejections are counted within.
pub type Key = String;

pub fn key(hostname: &str, port: u16, subset: Option<&str>) -> Key {
    format!("{hostname}|{port}|{}", subset.unwrap_or_default())
}

#[derive(Default)]
struct Endpoint {
    consecutive_5xx: u32,
    consecutive_gateway: u32,
    /// How many times it was ejected.
    ejections: u32,
    /// Out until then.
    ejected_until: Option<Instant>,
}

impl Endpoint {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|t| now < t)
    }
}

#[derive(Default)]
pub struct Outliers {
    clusters: Mutex<HashMap<Key, HashMap<String, Endpoint>>>,
}

impl Outliers {
    /// What is remembered of each endpoint of `key` (`waypoint-config clusters`): by uid,
    /// its consecutive errors, times ejected and how long it stays out.
    pub fn describe(&self, key: &Key, now: Instant) -> HashMap<String, serde_json::Value> {
        let clusters = self.clusters.lock().unwrap();
        clusters.get(key).map_or_else(HashMap::new, |eps| {
            eps.iter()
                .map(|(uid, e)| {
                    let out_ms = e
                        .ejected_until
                        .filter(|_| e.ejected(now))
                        .map(|t| (t - now).as_millis() as u64);
                    (
                        uid.clone(),
                        serde_json::json!({
                            "consecutive5xx": e.consecutive_5xx,
                            "consecutiveGatewayErrors": e.consecutive_gateway,
                            "ejections": e.ejections,
                            "ejectedForMs": out_ms,
                        }),
                    )
                })
                .collect()
        })
    }

    /// The uids ejected now in `key`.
    pub fn ejected(&self, key: &Key, now: Instant) -> Vec<String> {
        let clusters = self.clusters.lock().unwrap();
        clusters.get(key).map_or_else(Vec::new, |eps| {
            eps.iter()
                .filter(|(_, e)| e.ejected(now))
                .map(|(uid, _)| uid.clone())
                .collect()
        })
    }

    /// An answer of `status` from `uid` (a locally generated one for a failed connection
    /// counts too); `total` endpoints in `key`. Returns whether this ejected `uid`.
    pub fn record(
        &self,
        key: &Key,
        uid: &str,
        status: u16,
        policy: &Ejection,
        total: usize,
        now: Instant,
    ) -> bool {
        let mut clusters = self.clusters.lock().unwrap();
        let eps = clusters.entry(key.clone()).or_default();
        if !eps.contains_key(uid) {
            eps.insert(uid.to_string(), Endpoint::default());
        }
        let out_now = eps.values().filter(|e| e.ejected(now)).count();
        let Some(ep) = eps.get_mut(uid) else {
            return false;
        };
        if (500..600).contains(&status) {
            ep.consecutive_5xx += 1;
        } else {
            ep.consecutive_5xx = 0;
        }
        if matches!(status, 502..=504) {
            ep.consecutive_gateway += 1;
        } else {
            ep.consecutive_gateway = 0;
        }
        if ep.consecutive_5xx == 0 && ep.consecutive_gateway == 0 && ep.ejections == 0 {
            // Nothing to remember: endpoints that come and go leave nothing behind.
            eps.remove(uid);
            if eps.is_empty() {
                clusters.remove(key);
            }
            return false;
        }
        let over = |n: u32, limit: u32| limit > 0 && n >= limit;
        if ep.ejected(now)
            || !(over(ep.consecutive_5xx, policy.consecutive_5xx)
                || over(ep.consecutive_gateway, policy.consecutive_gateway))
        {
            return false;
        }
        // Envoy always lets one endpoint be ejected, whatever the percentage (DR-43).
        let allowed = (total * policy.max_ejection_percent as usize / 100).max(1);
        if out_now >= allowed {
            return false;
        }
        ep.ejections += 1;
        ep.consecutive_5xx = 0;
        ep.consecutive_gateway = 0;
        ep.ejected_until = Some(now + ejection_time(policy, ep.ejections));
        true
    }
}

/// Base ejection time × `times`, rounded up to whole review intervals (an endpoint comes
/// back at the first review after its time is up).
fn ejection_time(policy: &Ejection, times: u32) -> Duration {
    let wanted = policy.base_ejection_time.saturating_mul(times);
    let interval = policy.interval.max(Duration::from_millis(1));
    let reviews = wanted.as_nanos().div_ceil(interval.as_nanos());
    interval.saturating_mul(u32::try_from(reviews).unwrap_or(u32::MAX))
}

/// Whether ejections are to be ignored: fewer than `minHealthPercent` of `total` endpoints
/// are left (panic mode, DR-44; never with the default 0).
pub fn panic(policy: &Ejection, total: usize, ejected: usize) -> bool {
    let healthy = total.saturating_sub(ejected);
    healthy * 100 < policy.min_health_percent as usize * total
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Ejection {
        Ejection {
            consecutive_5xx: 3,
            consecutive_gateway: 0,
            interval: Duration::from_secs(1),
            base_ejection_time: Duration::from_millis(2500),
            max_ejection_percent: 50,
            min_health_percent: 0,
        }
    }

    #[test]
    fn consecutive_errors_eject_for_a_growing_time_within_the_limit() {
        let (o, p, k, t0) = (
            Outliers::default(),
            policy(),
            key("s", 80, None),
            Instant::now(),
        );
        // A success in between starts the count again.
        for status in [500, 503, 200, 500, 502] {
            assert!(!o.record(&k, "a", status, &p, 4, t0));
        }
        assert!(o.record(&k, "a", 504, &p, 4, t0));
        assert_eq!(o.ejected(&k, t0), ["a"]);
        // 2.5 s in whole 1 s reviews: back after 3 s.
        assert_eq!(o.ejected(&k, t0 + Duration::from_millis(2900)), ["a"]);
        assert!(o.ejected(&k, t0 + Duration::from_secs(3)).is_empty());
        // 50 % of 4: a second endpoint may go, a third may not.
        for _ in 0..3 {
            o.record(&k, "b", 500, &p, 4, t0);
            o.record(&k, "c", 500, &p, 4, t0);
        }
        let mut out = o.ejected(&k, t0);
        out.sort();
        assert_eq!(out, ["a", "b"]);
        // Ejected twice: 5 s.
        let t1 = t0 + Duration::from_secs(10);
        for _ in 0..3 {
            o.record(&k, "a", 500, &p, 4, t1);
        }
        assert!(o
            .ejected(&k, t1 + Duration::from_millis(4900))
            .contains(&"a".into()));
        assert!(!o
            .ejected(&k, t1 + Duration::from_secs(5))
            .contains(&"a".into()));
    }

    #[test]
    fn gateway_errors_one_endpoint_always_and_panic() {
        let p = Ejection {
            consecutive_5xx: 0,
            consecutive_gateway: 2,
            max_ejection_percent: 0,
            min_health_percent: 50,
            ..policy()
        };
        let (o, k, t0) = (
            Outliers::default(),
            key("s", 80, Some("v1")),
            Instant::now(),
        );
        assert!(!o.record(&k, "a", 500, &p, 3, t0));
        assert!(!o.record(&k, "a", 500, &p, 3, t0));
        assert!(!o.record(&k, "a", 503, &p, 3, t0));
        // 0 % still lets one go.
        assert!(o.record(&k, "a", 503, &p, 3, t0));
        o.record(&k, "b", 502, &p, 3, t0);
        assert!(!o.record(&k, "b", 502, &p, 3, t0));
        // Healthy endpoints leave nothing behind.
        let other = key("t", 80, None);
        o.record(&other, "c", 500, &p, 3, t0);
        o.record(&other, "c", 200, &p, 3, t0);
        assert!(!o.clusters.lock().unwrap().contains_key(&other));
        assert!(!panic(&p, 3, 1));
        assert!(panic(&p, 3, 2));
        assert!(!panic(&policy(), 3, 3));
    }
}
