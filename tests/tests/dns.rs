//! ztunnel's DNS proxy, reached the way an app reaches it: port 53 anywhere, redirected to
//! 15053 inside the pod. Service names (full, short, namespaced) are answered from what
//! ztunnel knows; other names go to the upstream resolver; bad packets get FORMERR.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use keelson_tests::*;
use ztunnel::dns::{parse_query, response, RCODE_NOERROR, TYPE_A, TYPE_AAAA};

fn query(id: u16, name: &str, qtype: u16) -> Vec<u8> {
    let mut b = id.to_be_bytes().to_vec();
    b.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        b.push(label.len() as u8);
        b.extend_from_slice(label.as_bytes());
    }
    b.extend_from_slice(&[0, 0, qtype as u8, 0, 1]);
    b
}

/// (rcode, addresses) of a response.
fn decode(resp: &[u8], question_len: usize) -> (u8, Vec<IpAddr>) {
    let rcode = resp[3] & 0x0F;
    let count = u16::from_be_bytes([resp[6], resp[7]]) as usize;
    let mut ips = Vec::new();
    let mut pos = question_len;
    for _ in 0..count {
        let len = u16::from_be_bytes([resp[pos + 10], resp[pos + 11]]) as usize;
        let data = &resp[pos + 12..pos + 12 + len];
        ips.push(match len {
            4 => IpAddr::from(<[u8; 4]>::try_from(data).unwrap()),
            _ => IpAddr::from(<[u8; 16]>::try_from(data).unwrap()),
        });
        pos += 12 + len;
    }
    (rcode, ips)
}

fn ask_udp(tb: &Testbed, pod: &str, msg: Vec<u8>) -> Vec<u8> {
    tb.pod(pod)
        .run(move || {
            let s = UdpSocket::bind("0.0.0.0:0").unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            // Any address on port 53: the pod's rules send it to ztunnel.
            s.send_to(&msg, "10.10.0.200:53").unwrap();
            let mut buf = [0u8; 1500];
            let n = s.recv(&mut buf).unwrap();
            buf[..n].to_vec()
        })
        .unwrap()
}

fn ask_tcp(tb: &Testbed, pod: &str, msg: Vec<u8>) -> Vec<u8> {
    use std::io::{Read, Write};
    tb.pod(pod)
        .run(move || {
            let mut s = std::net::TcpStream::connect_timeout(
                &"10.10.0.200:53".parse().unwrap(),
                Duration::from_secs(5),
            )
            .unwrap();
            s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
            let mut framed = (msg.len() as u16).to_be_bytes().to_vec();
            framed.extend_from_slice(&msg);
            s.write_all(&framed).unwrap();
            let mut len = [0u8; 2];
            s.read_exact(&mut len).unwrap();
            let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
            s.read_exact(&mut buf).unwrap();
            buf
        })
        .unwrap()
}

/// A stand-in upstream resolver in `pod` on port 53: every A question gets 192.0.2.1.
fn spawn_upstream(tb: &Testbed, pod: &str) {
    let addr = SocketAddr::new(tb.ip(pod), 53);
    let s = tb
        .pod(pod)
        .run(move || UdpSocket::bind(addr).unwrap())
        .unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = s.recv_from(&mut buf) {
            let raw = &buf[..n];
            if let Ok(q) = parse_query(raw) {
                let r = response(
                    raw,
                    &q,
                    RCODE_NOERROR,
                    &["192.0.2.1".parse().unwrap()],
                    true,
                );
                let _ = s.send_to(&r, from);
            }
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dns_proxy_answers_services_and_forwards_the_rest() {
    let dir = std::env::temp_dir().join(format!("keelson-dns-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let resolv = dir.join("resolv.conf");
    // The upstream resolver lives in the "resolver" pod (10.10.0.4).
    std::fs::write(&resolv, "nameserver 10.10.0.4\n").unwrap();
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("resolver"),
        ],
        env: vec![("KEELSON_RESOLV_CONF".into(), resolv.display().to_string())],
        ..Options::default()
    })
    .unwrap();
    assert_eq!(tb.ip("resolver").to_string(), "10.10.0.4");
    spawn_upstream(&tb, "resolver");
    let vip: IpAddr = testbed::SERVICE_VIP.into();

    for (i, name) in [
        "echo.default.svc.cluster.local",
        "echo",
        "echo.default",
        "echo.default.svc",
        "ECHO.Default.svc.cluster.local",
    ]
    .iter()
    .enumerate()
    {
        let q = query(i as u16, name, TYPE_A);
        let n = q.len();
        assert_eq!(
            decode(&ask_udp(&tb, "client", q), n),
            (0, vec![vip]),
            "{name}"
        );
    }
    // A known name without IPv6: NOERROR, no answer (not forwarded, not NXDOMAIN).
    let q = query(10, "echo", TYPE_AAAA);
    let n = q.len();
    assert_eq!(decode(&ask_udp(&tb, "client", q), n), (0, vec![]));
    // Over TCP too.
    let q = query(11, "echo", TYPE_A);
    let n = q.len();
    assert_eq!(decode(&ask_tcp(&tb, "client", q), n), (0, vec![vip]));
    // Anything else is the upstream's.
    let q = query(12, "example.com", TYPE_A);
    let n = q.len();
    assert_eq!(
        decode(&ask_udp(&tb, "client", q), n),
        (0, vec!["192.0.2.1".parse::<IpAddr>().unwrap()])
    );
    // A malformed query gets FORMERR with the same id.
    let mut bad = query(13, "echo", TYPE_A);
    bad[5] = 3; // QDCOUNT 3
    let r = ask_udp(&tb, "client", bad);
    assert_eq!((&r[0..2], r[3] & 0x0F), (&[0u8, 13][..], 1));

    // An unmodified client resolves the short name through the pod's resolv.conf and
    // connects to the service by name.
    tb.pod("client")
        .set_resolv_conf("nameserver 10.10.0.200\nsearch default.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n")
        .unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let out = tb
        .pod("client")
        .command("python3")
        .args([
            "-c",
            "import socket; s = socket.create_connection(('echo', 80), timeout=5); s.sendall(b'by name'); s.shutdown(socket.SHUT_WR); print(socket.gethostbyname('echo'), s.recv(100).decode())",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "10.96.0.10 by name"
    );

    let m = tb.metrics("client").unwrap();
    let udp_a = metric_value(
        &m,
        "istio_dns_requests_total",
        &[("request_query_type", "a"), ("request_protocol", "udp")],
    )
    .unwrap_or(0.0);
    assert!(udp_a >= 6.0, "{m}");
    assert_eq!(
        metric_value(
            &m,
            "istio_dns_upstream_requests_total",
            &[("request_query_type", "a")]
        ),
        Some(1.0)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
