//! The connection pool against a loopback HBONE server: stream limits, GOAWAY, idle eviction.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use hbone::{H2Config, Pool, PoolKey};
use identity::LocalCa;

struct Setup {
    pool: Pool,
    key: PoolKey,
    cert: identity::WorkloadCertificate,
    server: std::net::SocketAddr,
    connects: AtomicUsize,
}

impl Setup {
    async fn new(cfg: H2Config, shutdown: Option<tokio::sync::watch::Receiver<bool>>) -> Setup {
        let ca = LocalCa::generate("cluster.local", Duration::from_secs(3600)).unwrap();
        let server = start_server_with_shutdown(ca.issue(&id("server")).unwrap(), shutdown).await;
        let cert = ca.issue(&id("client")).unwrap();
        Setup {
            pool: Pool::new(&cfg),
            key: PoolKey {
                src_identity: id("client"),
                dst_identities: vec![id("server")],
                dst: server,
                src_ip: None,
            },
            cert,
            server,
            connects: AtomicUsize::new(0),
        }
    }

    async fn stream(&self) -> hbone::H2Stream {
        self.pool
            .connect(&self.key, &req(self.server), || {
                self.connects.fetch_add(1, Ordering::SeqCst);
                client(&self.cert, self.server, id("server"))
            })
            .await
            .unwrap()
    }
}

#[tokio::test]
async fn streams_share_a_connection_up_to_the_limit() {
    let cfg = H2Config {
        pool_max_streams: 2,
        ..H2Config::default()
    };
    let s = Setup::new(cfg, None).await;
    let a = s.stream().await;
    let b = s.stream().await;
    assert_eq!(
        s.connects.load(Ordering::SeqCst),
        1,
        "two streams fit one connection"
    );
    let c = s.stream().await;
    assert_eq!(
        s.connects.load(Ordering::SeqCst),
        2,
        "the third stream needs a new connection"
    );
    assert_eq!(s.pool.stats().streams, 3);
    drop((a, b, c));
    let d = s.stream().await;
    assert_eq!(
        s.connects.load(Ordering::SeqCst),
        2,
        "freed streams are reused"
    );
    drop(d);
}

#[tokio::test]
async fn a_connection_that_saw_goaway_is_not_reused() {
    let (tx, rx) = tokio::sync::watch::channel(false);
    let s = Setup::new(H2Config::default(), Some(rx)).await;
    let first = s.stream().await;
    tx.send(true).unwrap();
    // Give the GOAWAY time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The old connection is still open (its stream is) but going away: a new one is made.
    let _second = s.stream().await;
    assert_eq!(s.connects.load(Ordering::SeqCst), 2);
    drop(first);
}

#[tokio::test]
async fn idle_connections_are_evicted() {
    let cfg = H2Config {
        pool_idle_timeout: Duration::from_millis(200),
        ..H2Config::default()
    };
    let s = Setup::new(cfg, None).await;
    drop(s.stream().await);
    assert_eq!(s.pool.stats().connections, 1);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        s.pool.stats().connections,
        0,
        "idle connection should be released"
    );
    drop(s.stream().await);
    assert_eq!(s.connects.load(Ordering::SeqCst), 2);
}
