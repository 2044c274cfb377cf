//! Client pod → ztunnel → HBONE → ztunnel → server pod, through the real binaries in network
//! namespaces.

use std::net::SocketAddr;

use keelson_tests::*;

fn vip() -> SocketAddr {
    SocketAddr::new(testbed::SERVICE_VIP.into(), testbed::SERVICE_PORT)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_intact_both_ways_from_1_byte_to_100_mb() {
    let tb = Testbed::start(Options::default()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    for (i, len) in [1usize, 1000, 65_536, 1_048_576, 100 * 1_048_576]
        .into_iter()
        .enumerate()
    {
        let data = payload(i as u64, len);
        let s = connect_from(&tb, "client", vip()).unwrap();
        let back = roundtrip(s, data.clone()).await.unwrap();
        let mut a = Checksum::new();
        a.update(&data);
        let mut b = Checksum::new();
        b.update(&back);
        assert_eq!(
            a.finish(),
            b.finish(),
            "payload of {len} bytes came back different"
        );
    }
    // Both ztunnels counted the traffic as mutual TLS.
    let m = tb.metrics("client").unwrap();
    let sent = metric_value(
        &m,
        "istio_tcp_received_bytes_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "mutual_tls"),
        ],
    )
    .unwrap();
    assert!(
        sent >= (100 * 1_048_576) as f64,
        "client→server bytes counted: {sent}"
    );
    let m = tb.metrics("server").unwrap();
    let opened = metric_value(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
        ],
    )
    .unwrap();
    assert_eq!(opened, 5.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_and_server_reset_cross_the_tunnel() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tb = Testbed::start(Options::default()).unwrap();
    let server = tb.ip("server");
    // Port 7000: reads to EOF, then answers with the byte count (needs the client's half-close).
    let l = tokio::net::TcpListener::from_std(
        tb.pod("server")
            .tcp_listen(SocketAddr::new(server, 7000))
            .unwrap(),
    )
    .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(format!("got {}", all.len()).as_bytes())
                    .await
                    .unwrap();
            });
        }
    });
    // Port 7001: reads 5 bytes, then resets the connection.
    let l = tokio::net::TcpListener::from_std(
        tb.pod("server")
            .tcp_listen(SocketAddr::new(server, 7001))
            .unwrap(),
    )
    .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            socket2::SockRef::from(&s)
                .set_linger(Some(std::time::Duration::ZERO))
                .unwrap();
            drop(s);
        }
    });

    let mut c = connect_from(&tb, "client", SocketAddr::new(server, 7000)).unwrap();
    c.write_all(&[7u8; 12345]).await.unwrap();
    c.shutdown().await.unwrap();
    let mut answer = String::new();
    c.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 12345");

    // Port 7003: the server half-closes first ("hello" + FIN), then reads the client's data.
    let l = tokio::net::TcpListener::from_std(
        tb.pod("server")
            .tcp_listen(SocketAddr::new(server, 7003))
            .unwrap(),
    )
    .unwrap();
    let (got_tx, got_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        s.write_all(b"hello").await.unwrap();
        s.shutdown().await.unwrap();
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        let _ = got_tx.send(rest);
    });
    let mut c = connect_from(&tb, "client", SocketAddr::new(server, 7003)).unwrap();
    let mut greeting = Vec::new();
    c.read_to_end(&mut greeting).await.unwrap();
    assert_eq!(greeting, b"hello", "server's data and FIN arrive");
    c.write_all(b"still sending after the server's FIN")
        .await
        .unwrap();
    c.shutdown().await.unwrap();
    let got = tokio::time::timeout(std::time::Duration::from_secs(5), got_rx)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"still sending after the server's FIN");

    let mut c = connect_from(&tb, "client", SocketAddr::new(server, 7001)).unwrap();
    c.write_all(b"hello").await.unwrap();
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(std::time::Duration::from_secs(5), c.read(&mut buf))
        .await
        .expect("reset must arrive");
    match r {
        Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}"),
        Ok(n) => panic!("expected a reset, got a clean read of {n} bytes"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_presenting_the_wrong_identity_is_rejected() {
    let mut server = PodSpec::meshed("server").serving_echo(8080);
    server.claims_service_account = Some("imposter".into());
    let tb = Testbed::start(Options {
        pods: vec![PodSpec::meshed("client"), server],
        ..Options::default()
    })
    .unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let s = connect_from(&tb, "client", vip()).unwrap();
    let back = roundtrip(s, b"secret".to_vec()).await.unwrap_or_default();
    assert!(back.is_empty(), "data must not flow to an impostor");
    let m = tb.metrics("client").unwrap();
    let failed = metric_value(
        &m,
        "istio_tcp_connections_failed_total",
        &[("response_flags", "TLS_FAILURE")],
    );
    assert_eq!(failed, Some(1.0), "{m}");
    assert!(
        tb.log("client").contains("unexpected identity"),
        "the reason is logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socks5_garbage_is_closed_cleanly_and_connect_works() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tb = Testbed::start(Options::default()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let socks: SocketAddr = "127.0.0.1:15080".parse().unwrap();
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        &[5, 0],
        &[5, 1, 0, 5, 9, 0, 1],
        &[5, 1, 0, 5, 1, 0, 3, 0, 0, 80],
        &[5, 1, 0, 5, 1, 0, 7],
    ] {
        let mut s = connect_from(&tb, "client", socks).unwrap();
        s.write_all(garbage).await.unwrap();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(std::time::Duration::from_secs(12), s.read_to_end(&mut rest))
            .await;
        let r = r.unwrap_or_else(|_| panic!("{garbage:?}: connection left hanging"));
        assert!(r.is_ok(), "{garbage:?}: expected a clean close, got {r:?}");
    }
    // A domain CONNECT to the service goes through the mesh.
    let mut s = connect_from(&tb, "client", socks).unwrap();
    let host = testbed::SERVICE_HOST.as_bytes();
    let mut req = vec![5, 1, 0, 5, 1, 0, 3, host.len() as u8];
    req.extend_from_slice(host);
    req.extend_from_slice(&testbed::SERVICE_PORT.to_be_bytes());
    s.write_all(&req).await.unwrap();
    let mut reply = [0u8; 12];
    s.read_exact(&mut reply).await.unwrap();
    assert_eq!(&reply[..2], &[5, 0], "method selection");
    assert_eq!(reply[3], 0, "CONNECT succeeded");
    let back = roundtrip(s, b"via socks".to_vec()).await.unwrap();
    assert_eq!(back, b"via socks");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_none_tunnel_and_passthrough_paths() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        ..Options::default()
    })
    .unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let outsider = spawn_echo(&tb, "outsider", 9090).unwrap();
    // Outside the mesh → meshed server: arrives on the server's 15006 as plaintext.
    let s = connect_from(&tb, "outsider", SocketAddr::new(tb.ip("server"), 8080)).unwrap();
    assert_eq!(
        roundtrip(s, b"plain in".to_vec()).await.unwrap(),
        b"plain in"
    );
    let m = tb.metrics("server").unwrap();
    assert_eq!(
        metric_value(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "unknown")
            ]
        ),
        Some(1.0),
        "{m}"
    );
    // Meshed client → workload with tunnel protocol NONE: plain TCP from the client's ztunnel.
    let s = connect_from(&tb, "client", outsider).unwrap();
    assert_eq!(roundtrip(s, b"to none".to_vec()).await.unwrap(), b"to none");
    // Meshed client → an address nobody knows: passed through untouched.
    tb.pod("outsider")
        .ip(&["addr", "add", "10.10.0.100/24", "dev", "eth0"])
        .unwrap();
    let unknown = spawn_unknown_echo(&tb);
    let s = connect_from(&tb, "client", unknown).unwrap();
    assert_eq!(
        roundtrip(s, b"passthrough".to_vec()).await.unwrap(),
        b"passthrough"
    );
    let m = tb.metrics("client").unwrap();
    let plain = metric_value(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "source"),
            ("connection_security_policy", "unknown"),
        ],
    );
    assert_eq!(plain, Some(2.0), "{m}");
}

fn spawn_unknown_echo(tb: &Testbed) -> SocketAddr {
    let addr: SocketAddr = "10.10.0.100:9191".parse().unwrap();
    let l =
        tokio::net::TcpListener::from_std(tb.pod("outsider").tcp_listen(addr).unwrap()).unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = tokio::io::AsyncWriteExt::shutdown(&mut w).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_connections_share_pooled_tunnels() {
    netns::raise_fd_limit();
    let tb = Testbed::start(Options::default()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    // Open all 1,000 first, echo on each, and keep every one open until all have echoed:
    // only then are 1,000 tunnel streams surely live at once (the kernel completes a handshake
    // before ztunnel accepts it, so early connections could otherwise finish first).
    let conns: Vec<_> = (0..1000)
        .map(|_| connect_from(&tb, "client", vip()).unwrap())
        .collect();
    let (release, released) = tokio::sync::watch::channel(false);
    let (echoed_tx, mut echoed) = tokio::sync::mpsc::channel(1000);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(i, mut s)| {
            let mut released = released.clone();
            let echoed_tx = echoed_tx.clone();
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let data = payload(i as u64, 1024 + i);
                s.write_all(&data).await.unwrap();
                let mut back = vec![0; data.len()];
                s.read_exact(&mut back).await.unwrap();
                echoed_tx.send(()).await.unwrap();
                released.wait_for(|r| *r).await.unwrap();
                // Then the half-close crosses too, and the echo ends.
                s.shutdown().await.unwrap();
                let mut rest = Vec::new();
                s.read_to_end(&mut rest).await.unwrap();
                back == data && rest.is_empty()
            })
        })
        .collect();
    drop(echoed_tx);
    for _ in 0..1000 {
        echoed.recv().await.expect("every connection echoes");
    }
    let pool = tb.config_dump("client").unwrap()["pool"].clone();
    release.send(true).unwrap();
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert_eq!(ok, 1000);
    assert_eq!(pool["streams"].as_u64(), Some(1000), "{pool}");
    let conns = pool["connections"].as_u64().unwrap();
    assert!(
        (10..=20).contains(&conns),
        "1,000 live streams at 100 per connection should need 10 pooled connections, saw {pool}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_app_sees_the_client_source_ip() {
    use tokio::io::AsyncWriteExt;
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        ..Options::default()
    })
    .unwrap();
    // Port 7002 answers with the peer address it sees.
    let l = tokio::net::TcpListener::from_std(
        tb.pod("server")
            .tcp_listen(SocketAddr::new(tb.ip("server"), 7002))
            .unwrap(),
    )
    .unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
        }
    });
    for from in ["client", "outsider"] {
        let s = connect_from(&tb, from, SocketAddr::new(tb.ip("server"), 7002)).unwrap();
        let seen = String::from_utf8(roundtrip(s, Vec::new()).await.unwrap()).unwrap();
        assert_eq!(
            seen,
            tb.ip(from).to_string(),
            "source IP seen by the app for a connection from {from}"
        );
    }
}
