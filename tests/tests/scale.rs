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

/// `n` ambient pods of namespace `scale` on 20 nodes; in generation `g`, 1% of them
/// (a different 1% each time) carry a new name, so each generation removes and adds that
/// many workloads.
fn workloads(n: usize, g: usize) -> String {
    let churn = (n / 100).max(1);
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scale\n  labels: {istio.io/dataplane-mode: ambient}\n",
    );
    for i in 0..n {
        let replaced = g > 0 && (i / churn) % 100 == (g - 1) % 100;
        let name = if replaced {
            format!("w{i}-g{g}")
        } else {
            format!("w{i}")
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: scale\n  \
             labels: {{app: a{app}}}\nspec:\n  serviceAccountName: sa{sa}\n  nodeName: n{node}\n  \
             containers:\n  - name: main\nstatus:\n  phase: Running\n  podIP: 10.20.{hi}.{lo}\n",
            app = i % 100,
            sa = i % 50,
            node = i % 20,
            hi = i / 250,
            lo = i % 250 + 1,
        ));
    }
    out
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
    tb.write_resources("scale.yaml", &workloads(n, 0)).unwrap();
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

    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let client = tb.pod("client").path();
    let traffic = {
        let (stop, made, failed) = (stop.clone(), made.clone(), failed.clone());
        tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let c = client.clone();
                let s = netns::run_at(&c, move || std::net::TcpStream::connect(to)).unwrap();
                let r = match s {
                    Ok(s) => {
                        s.set_nonblocking(true).unwrap();
                        let s = tokio::net::TcpStream::from_std(s).unwrap();
                        tokio::time::timeout(Duration::from_secs(5), roundtrip(s, b"n".to_vec()))
                            .await
                            .map_err(|_| "timed out".to_string())
                            .and_then(|r| r.map_err(|e| e.to_string()))
                    }
                    Err(e) => Err(e.to_string()),
                };
                made.fetch_add(1, Ordering::SeqCst);
                if r.as_deref() != Ok(b"n") {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{r:?}"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            errors
        })
    };

    let rounds = 20;
    for g in 1..=rounds {
        tb.write_resources("scale.yaml", &workloads(n, g)).unwrap();
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
    stop.store(true, Ordering::SeqCst);
    let errors = traffic.await.unwrap();
    let (made, failed) = (made.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!(
        "{rounds} rounds of 1% churn: ztunnels caught up {:?} after the last; {made} \
         connections, {failed} failed; ztunnel RSS {} MiB",
        settled.elapsed(),
        rss_kib(tb.ztunnel_pid("client")) / 1024
    );
    assert!(caught_up.is_some(), "{:?}", known(&tb, "client", &last));
    assert_eq!(failed, 0, "{errors:?}");
    assert!(made > 100, "{made}");
}
