//! Sustained load (docs/HARDENING.md, load L1, L2 and L8 in short): 1,000 long-lived
//! connections trading checked messages, then connection churn, each for
//! `KEELSON_SOAK_SECS` (60 in CI; set it to 1800 or more for a soak by hand). Every byte is
//! checked, and both ztunnels' memory must plateau: no growth from the first half of a phase
//! to the second, descriptors back to where they were after.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// 20 workers, one connection each per period: 300 connections a second. One client address
/// to one server port has ~28,000 ephemeral ports, each held 60 s in TIME_WAIT after a close:
/// above ~470 connections a second a client runs out of them (`EADDRNOTAVAIL`), proxy or not
/// (docs/HARDENING.md, load L2).
const CHURN_PERIOD: Duration = Duration::from_micros(1_000_000 / 15);

fn soak_secs() -> u64 {
    std::env::var("KEELSON_SOAK_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// RSS of both ztunnels (KiB) every 2 s until `until`.
async fn sample_rss(pids: [u32; 2], until: Instant) -> Vec<[u64; 2]> {
    let mut samples = Vec::new();
    while Instant::now() < until {
        samples.push(pids.map(rss_kib));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    samples
}

/// Whether memory plateaued: the second half's peak within 10% + 4 MiB of the first
/// half's, for each ztunnel.
fn plateaued(samples: &[[u64; 2]]) -> bool {
    let half = samples.len() / 2;
    (0..2).all(|z| {
        let first = samples[..half].iter().map(|s| s[z]).max().unwrap_or(0);
        let second = samples[half..].iter().map(|s| s[z]).max().unwrap_or(0);
        second <= first + first / 10 + 4096
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_plateaus_under_sustained_load_and_churn() {
    netns::raise_fd_limit();
    let secs = soak_secs();
    let tb = Testbed::start(Options {
        // Idle pooled HBONE connections go 5 s after their last stream, so descriptors can
        // be checked after the load (the default keeps them 5 min).
        env: vec![("POOL_UNUSED_RELEASE_TIMEOUT".into(), "5s".into())],
        ..Options::default()
    })
    .unwrap();
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    let pids = [tb.ztunnel_pid("client"), tb.ztunnel_pid("server")];
    let fds_before = pids.map(open_fds);
    let rss_before = pids.map(rss_kib);
    let failures = Arc::new(AtomicU64::new(0));
    let messages = Arc::new(AtomicU64::new(0));

    // L1: 1,000 connections held for the whole phase, each sending 1 KB every 2 s and
    // checking the echo.
    let until = Instant::now() + Duration::from_secs(secs);
    let mut held = Vec::new();
    for i in 0..1000u64 {
        let s = connect_from(&tb, "client", to).unwrap();
        let (failures, messages) = (failures.clone(), messages.clone());
        held.push(tokio::spawn(async move {
            let mut s = s;
            let mut round = 0u64;
            // Spread the connections over the 2 s period.
            tokio::time::sleep(Duration::from_millis(i * 2)).await;
            while Instant::now() < until {
                let sent = payload(i << 20 | round, 1024);
                let mut back = vec![0u8; sent.len()];
                let ok = async {
                    s.write_all(&sent).await?;
                    s.read_exact(&mut back).await?;
                    Ok::<_, std::io::Error>(())
                };
                match tokio::time::timeout(Duration::from_secs(10), ok).await {
                    Ok(Ok(())) if back == sent => {
                        messages.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                }
                round += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            let _ = s.shutdown().await;
        }));
    }
    let held_samples = sample_rss(pids, until).await;
    for h in held {
        h.await.unwrap();
    }
    let held_msgs = messages.swap(0, Ordering::Relaxed);

    // L2: churn, 20 workers each opening, echoing 4 KB through and closing a connection
    // every CHURN_PERIOD.
    let until = Instant::now() + Duration::from_secs(secs);
    let client = tb.pod("client").path();
    let errors = Arc::new(std::sync::Mutex::new(std::collections::BTreeMap::new()));
    let mut workers = Vec::new();
    for w in 0..20u64 {
        let (failures, messages, client, errors) = (
            failures.clone(),
            messages.clone(),
            client.clone(),
            errors.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut tick = tokio::time::interval(CHURN_PERIOD);
            while Instant::now() < until {
                tick.tick().await;
                let sent = payload(w << 32 | n, 4096);
                let r = echo_from(&client, to, sent, Duration::from_secs(10)).await;
                match r {
                    Ok(()) => {
                        messages.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(what) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        let mut seen = errors.lock().unwrap();
                        *seen.entry(what).or_insert(0u64) += 1;
                    }
                }
                n += 1;
            }
        }));
    }
    let churn_samples = sample_rss(pids, until).await;
    for w in workers {
        w.await.unwrap();
    }
    let churned = messages.load(Ordering::Relaxed);

    let settled = eventually(Duration::from_secs(20), || async {
        pids.map(open_fds)
            .iter()
            .zip(fds_before)
            .all(|(now, before)| *now <= before + 4)
    })
    .await
    .is_some();
    let rss_after = pids.map(rss_kib);
    let show = |s: &[[u64; 2]]| {
        s.iter()
            .map(|[c, z]| format!("{}/{}", c / 1024, z / 1024))
            .collect::<Vec<_>>()
            .join(" ")
    };
    eprintln!(
        "{secs} s each: {held_msgs} messages on 1,000 held connections, {churned} churned \
         connections, {} failures\nRSS MiB client/server ztunnel: before {}/{}, held: {}\n\
         churn: {}\nafter: {}/{}",
        failures.load(Ordering::Relaxed),
        rss_before[0] / 1024,
        rss_before[1] / 1024,
        show(&held_samples),
        show(&churn_samples),
        rss_after[0] / 1024,
        rss_after[1] / 1024,
    );
    assert_eq!(
        failures.load(Ordering::Relaxed),
        0,
        "churn failures by kind: {:?}",
        errors.lock().unwrap()
    );
    assert!(held_msgs >= 1000 * (secs / 3), "{held_msgs} messages");
    assert!(
        plateaued(&held_samples),
        "memory grew while connections were held"
    );
    assert!(plateaued(&churn_samples), "memory grew under churn");
    assert!(
        settled,
        "fds {:?}, before {fds_before:?}",
        pids.map(open_fds)
    );
}
