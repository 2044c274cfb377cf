//! SIGTERM drains: listeners stop, open connections may finish until the deadline
//! (TERMINATION_GRACE_PERIOD_SECONDS), then whatever is left is closed and ztunnel exits.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keelson_tests::*;
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn vip() -> SocketAddr {
    SocketAddr::new(testbed::SERVICE_VIP.into(), testbed::SERVICE_PORT)
}

fn with_grace(secs: &str) -> Options {
    Options {
        env: vec![("TERMINATION_GRACE_PERIOD_SECONDS".into(), secs.into())],
        ..Options::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_flight_transfer_completes_during_drain() {
    let mut tb = Testbed::start(with_grace("10")).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let s = connect_from(&tb, "client", vip()).unwrap();
    let (mut r, mut w) = s.into_split();
    let data = payload(42, 8 * 1024 * 1024);
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        // 8 MiB in 16 slow chunks: about 1.6 s, so the drain starts mid-transfer.
        for chunk in sent.chunks(512 * 1024) {
            w.write_all(chunk).await.unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        w.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut back = Vec::new();
        r.read_to_end(&mut back).await.map(|_| back)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Drain both ends of the tunnel while the transfer runs.
    tb.ztunnel("server").signal(Signal::SIGTERM).unwrap();
    tb.ztunnel("client").signal(Signal::SIGTERM).unwrap();
    writer.await.unwrap();
    let back = reader
        .await
        .unwrap()
        .expect("transfer must not be cut by a graceful drain");
    assert!(
        back == data,
        "bytes changed during drain ({} of {} came back)",
        back.len(),
        data.len()
    );
    let done = Instant::now();
    for pod in ["client", "server"] {
        let status = tb
            .ztunnel(pod)
            .wait_timeout(Duration::from_secs(5))
            .unwrap_or_else(|| panic!("{pod} ztunnel still running"));
        assert!(status.success(), "{pod} ztunnel exit {status}");
    }
    assert!(
        done.elapsed() < Duration::from_secs(5),
        "drain should end when the last connection does"
    );
    assert!(tb.log("server").contains("drain complete"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_outliving_the_deadline_are_closed() {
    let mut tb = Testbed::start(with_grace("1")).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let mut s = connect_from(&tb, "client", vip()).unwrap();
    s.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).await.unwrap();
    let start = Instant::now();
    tb.ztunnel("client").signal(Signal::SIGTERM).unwrap();
    // The idle connection stays open through the grace period, then is closed.
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "connection not closed after the drain deadline"
    );
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(900),
        "closed before the deadline ({took:?})"
    );
    let status = tb
        .ztunnel("client")
        .wait_timeout(Duration::from_secs(5))
        .expect("ztunnel exits after the deadline");
    assert!(status.success());
    // No new connections are accepted once draining: nothing listens on 15001 any more.
    assert!(
        connect_from(&tb, "client", vip()).is_err() || {
            let s = connect_from(&tb, "client", vip()).unwrap();
            roundtrip(s, b"late".to_vec())
                .await
                .unwrap_or_default()
                .is_empty()
        }
    );
}
