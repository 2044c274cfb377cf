//! Load L5 of docs/HARDENING.md in small: the control plane serves `KEELSON_SCALE_WORKLOADS`
//! workloads (5,000 in CI; the plan's 50,000 by hand) and 1% of them are replaced every
//! 500 ms, while a pod opens a connection every 50 ms. No connection fails, every ztunnel
//! ends with exactly the workloads that exist, and the sync times and memory are printed.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keelson_tests::*;

fn scale() -> usize {
    std::env::var("KEELSON_SCALE_WORKLOADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000)
}

/// The workloads a ztunnel knows of, and whether `name` is one.
fn known(tb: &Testbed, pod: &str, name: &str) -> (usize, bool) {
    let d = tb.config_dump(pod).unwrap();
    let ws = d["workloads"].as_array().cloned().unwrap_or_default();
    let has = ws.iter().any(|w| w["name"] == name);
    (ws.len(), has)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traffic_is_untouched_by_thousands_of_workloads_churning() {
    let n = scale();
    let tb = Testbed::start(Options {
        source: Source::ControlPlane,
        ..Options::default()
    })
    .unwrap();
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    let base = known(&tb, "client", "client").0;

    let started = Instant::now();
    tb.write_resources("scale.yaml", &synthetic_pods(n, 0))
        .unwrap();
    let synced = eventually(Duration::from_secs(120), || async {
        known(&tb, "client", "w0").0 == base + n
    })
    .await;
    assert!(
        synced.is_some(),
        "{} workloads known",
        known(&tb, "client", "w0").0
    );
    eprintln!(
        "{n} workloads reached the ztunnels in {:?}",
        started.elapsed()
    );

    let traffic = Traffic::start(tb.pod("client").path(), to, Duration::from_millis(50), 1);

    let rounds = 20;
    for g in 1..=rounds {
        tb.write_resources("scale.yaml", &synthetic_pods(n, g))
            .unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let last = {
        let churn = (n / 100).max(1);
        format!("w{}-g{rounds}", (rounds - 1) % 100 * churn)
    };
    let settled = Instant::now();
    let caught_up = eventually(Duration::from_secs(60), || async {
        ["client", "server"].iter().all(|pod| {
            let (count, has) = known(&tb, pod, &last);
            count == base + n && has
        })
    })
    .await;
    let (made, errors) = traffic.stop().await;
    let failed = errors.len();
    eprintln!(
        "{rounds} rounds of 1% churn: ztunnels caught up {:?} after the last; {made} \
         connections, {failed} failed; ztunnel RSS {} MiB",
        settled.elapsed(),
        rss_kib(tb.ztunnel_pid("client")) / 1024
    );
    assert!(caught_up.is_some(), "{:?}", known(&tb, "client", &last));
    assert!(errors.is_empty(), "{errors:?}");
    assert!(made > 100, "{made}");
}

/// The latencies (connect, 100 B there and back) of `n` sequential connections from
/// `pod` to `to`, sorted; panics on a failed or stuck one.
async fn latencies(tb: &Testbed, pod: &str, to: std::net::SocketAddr, n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let started = Instant::now();
        let s = connect_from(tb, pod, to).unwrap();
        let back =
            tokio::time::timeout(Duration::from_secs(5), roundtrip(s, payload(i as u64, 100)))
                .await
                .unwrap_or_else(|_| panic!("connection {i} from {pod} stuck"))
                .unwrap();
        assert_eq!(back, payload(i as u64, 100));
        out.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    out.sort();
    out
}

/// Load L6: a noisy neighbour. Three pods share one node's ztunnel; one of them pushes bulk
/// data as fast as it can over 8 connections while another makes small requests. The
/// quiet pod's requests all complete, and its p50/p99 with and without the noise are
/// printed (docs/HARDENING.md records them; no test asserts a speed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_neighbour_does_not_starve_a_quiet_pod() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("quiet"),
            PodSpec::meshed("noisy"),
            PodSpec::meshed("server").serving_echo(8080),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    // The sink and the noise run on a runtime of their own, so the quiet pod's client (on
    // the test's runtime) competes with them only as the pods' processes would, for CPU.
    let noise_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let sink = {
        let addr = std::net::SocketAddr::new(tb.ip("server"), 9000);
        let listener = tb.pod("server").tcp_listen(addr).unwrap();
        noise_rt.spawn(async move {
            let l = tokio::net::TcpListener::from_std(listener).unwrap();
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut s, &mut tokio::io::sink()).await;
                });
            }
        });
        addr
    };
    let quiet_alone = latencies(&tb, "quiet", to, 200).await;

    let pct = |v: &[Duration], p: usize| v[(v.len() * p / 100).min(v.len() - 1)];
    eprintln!(
        "quiet pod alone: p50 {:?} p99 {:?}",
        pct(&quiet_alone, 50),
        pct(&quiet_alone, 99)
    );
    // Flat out (the node's two cores saturated), then paced at ~100 MB/s (256 KiB per
    // connection every 20 ms).
    for (what, pace) in [
        ("flat out", None),
        ("paced", Some(Duration::from_millis(20))),
    ] {
        let stop = Arc::new(AtomicBool::new(false));
        let moved = Arc::new(AtomicUsize::new(0));
        let mut noise = Vec::new();
        for _ in 0..8 {
            let s = tb.pod("noisy").tcp_connect(sink).unwrap();
            let (stop, moved) = (stop.clone(), moved.clone());
            noise.push(noise_rt.spawn(async move {
                use tokio::io::AsyncWriteExt;
                let mut s = tokio::net::TcpStream::from_std(s).unwrap();
                let chunk = vec![7u8; 256 * 1024];
                let mut tick = pace.map(tokio::time::interval);
                while !stop.load(Ordering::Relaxed) {
                    if let Some(t) = tick.as_mut() {
                        t.tick().await;
                    }
                    if s.write_all(&chunk).await.is_err() {
                        return;
                    }
                    moved.fetch_add(chunk.len(), Ordering::Relaxed);
                }
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let noisy_started = Instant::now();
        let quiet_noisy = latencies(&tb, "quiet", to, 200).await;
        let noisy_secs = noisy_started.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        for t in noise {
            let _ = t.await;
        }
        eprintln!(
            "beside a neighbour {what} ({:.0} MB/s): p50 {:?} p99 {:?} (p99 x{:.1})",
            moved.load(Ordering::Relaxed) as f64 / 1e6 / noisy_secs,
            pct(&quiet_noisy, 50),
            pct(&quiet_noisy, 99),
            pct(&quiet_noisy, 99).as_secs_f64() / pct(&quiet_alone, 99).as_secs_f64()
        );
    }
    noise_rt.shutdown_background();
}
