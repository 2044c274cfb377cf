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
