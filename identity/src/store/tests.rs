use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;

/// A provider around the local CA that counts fetches and can be switched off.
struct Flaky {
    ca: LocalCa,
    ttl: Duration,
    calls: AtomicUsize,
    down: AtomicBool,
}

impl CertProvider for Flaky {
    fn fetch<'a>(&'a self, id: &'a Identity) -> FetchFuture<'a> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.down.load(Ordering::SeqCst) {
                return Err(CertError::Provider("CA unavailable".into()));
            }
            self.ca.issue_for(id, self.ttl)
        })
    }
}

fn flaky(ttl: Duration) -> Arc<Flaky> {
    Arc::new(Flaky {
        ca: LocalCa::generate("cluster.local", ttl).unwrap(),
        ttl,
        calls: AtomicUsize::new(0),
        down: AtomicBool::new(false),
    })
}

#[tokio::test(start_paused = true)]
async fn fetches_once_and_renews_at_half_life() {
    let p = flaky(Duration::from_secs(3600));
    let store = CertStore::new(p.clone());
    let id = Identity::new("", "default", "web");
    let first = store.get(&id).await.unwrap();
    let again = store.get(&id).await.unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    // Half-life of a 1 h certificate backdated 60 s is ~29 min from now.
    tokio::time::sleep(Duration::from_secs(25 * 60)).await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    tokio::time::sleep(Duration::from_secs(6 * 60)).await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn keeps_a_valid_certificate_while_the_ca_is_down() {
    let p = flaky(Duration::from_secs(3600));
    let store = CertStore::new(p.clone());
    let id = Identity::new("", "default", "web");
    let first = store.get(&id).await.unwrap();
    p.down.store(true, Ordering::SeqCst);
    // Past the half-life the renewals fail and back off; the old certificate is still served.
    tokio::time::sleep(Duration::from_secs(40 * 60)).await;
    let calls = p.calls.load(Ordering::SeqCst);
    assert!(
        calls > 2,
        "renewal should have been retried, saw {calls} calls"
    );
    assert!(
        calls < 40,
        "backoff should space retries, saw {calls} calls"
    );
    let still = store.get(&id).await.unwrap();
    assert!(Arc::ptr_eq(&first, &still));
    p.down.store(false, Ordering::SeqCst);
    tokio::time::sleep(MAX_BACKOFF + Duration::from_secs(30)).await;
    let renewed = store.get(&id).await.unwrap();
    assert!(!Arc::ptr_eq(&first, &renewed));
}

#[tokio::test(start_paused = true)]
async fn first_fetch_failure_is_reported_not_hung() {
    let p = flaky(Duration::from_secs(3600));
    p.down.store(true, Ordering::SeqCst);
    let store = CertStore::new(p.clone());
    let err = store.get(&Identity::new("", "a", "b")).await.unwrap_err();
    assert!(err.to_string().contains("CA unavailable"), "{err}");
}

#[test]
fn backoff_grows_with_jitter_and_caps() {
    let d1 = backoff(1);
    assert!(d1 >= Duration::from_millis(800) && d1 <= Duration::from_millis(1200));
    assert!(backoff(30) <= MAX_BACKOFF);
    assert!(backoff(30) >= MAX_BACKOFF.mul_f64(0.8));
}

#[tokio::test(start_paused = true)]
async fn a_caller_after_a_failed_fetch_gets_a_new_attempt_not_the_old_error() {
    let p = flaky(Duration::from_secs(3600));
    p.down.store(true, Ordering::SeqCst);
    let store = CertStore::new(p.clone());
    let id = Identity::new("", "default", "web");
    // The prefetch fails (the CA does not know the pod yet) and backs off.
    store.prefetch(&id);
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(p.calls.load(Ordering::SeqCst), 1);
    // The CA learns the pod; a connection asks: it gets a certificate from a fresh attempt,
    // without waiting out the backoff.
    p.down.store(false, Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    store.get(&id).await.unwrap();
    assert_eq!(p.calls.load(Ordering::SeqCst), 2);
    assert!(
        started.elapsed() < INITIAL_BACKOFF,
        "{:?}",
        started.elapsed()
    );
    // While the CA stays down, a caller gets the error of a fresh attempt.
    let other = Identity::new("", "default", "db");
    p.down.store(true, Ordering::SeqCst);
    store.prefetch(&other);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let calls = p.calls.load(Ordering::SeqCst);
    assert!(store.get(&other).await.is_err());
    assert_eq!(p.calls.load(Ordering::SeqCst), calls + 1);
}

#[tokio::test]
async fn a_summary_lists_the_chain_then_the_roots_as_pem() {
    let p = flaky(Duration::from_secs(3600));
    let store = CertStore::new(p.clone());
    let id = Identity::new("", "default", "web");
    let cert = store.get(&id).await.unwrap();
    let s = store.summaries().pop().unwrap();
    assert_eq!(s.cert_chain.len(), cert.chain.len() + cert.roots.len());
    let leaf = &s.cert_chain[0];
    let parsed: Vec<_> = rustls_pemfile::certs(&mut leaf.pem.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(parsed, vec![cert.chain[0].clone()]);
    assert!(leaf.expiration_time > leaf.valid_from, "{leaf:?}");
    assert!(leaf.valid_from.ends_with('Z'), "{leaf:?}");
}
