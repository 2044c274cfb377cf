//! Bytes in ztunnel's access log and `istio_tcp_*_bytes_total` are what crossed, whatever
//! way a connection ends: a clean close, a reset by the server or by the client, a policy
//! that now denies it, ztunnel's own shutdown; on HBONE and on plain TCP; and the counters
//! of a long-lived connection advance while it is open.
//!
//! Each case is a transfer of a known size to a server the test runs in the `server` pod
//! (or the `outsider` pod, outside the mesh), on a port of its own so that its access-log
//! lines can be told apart.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use keelson_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const MB: usize = 1_000_000;

fn options() -> Options {
    Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        env: vec![("TERMINATION_GRACE_PERIOD_SECONDS".into(), "1".into())],
        ..Options::default()
    }
}

/// One accepted connection on `port` in `pod`, handed to `serve`.
fn serve_once<F, Fut>(tb: &Testbed, pod: &str, port: u16, serve: F)
where
    F: FnOnce(TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let addr = SocketAddr::new(tb.ip(pod), port);
    let l = TcpListener::from_std(tb.pod(pod).tcp_listen(addr).unwrap()).unwrap();
    tokio::spawn(async move {
        if let Ok((s, _)) = l.accept().await {
            serve(s).await;
        }
    });
}

async fn read_n(s: &mut TcpStream, n: usize) -> usize {
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < n {
        match s.read(&mut buf[..(n - got).min(64 * 1024)]).await {
            Ok(0) | Err(_) => break,
            Ok(k) => got += k,
        }
    }
    got
}

/// Reads until EOF or an error; the bytes read.
async fn drain(s: &mut TcpStream) -> usize {
    read_n(s, usize::MAX).await
}

/// Reads 1 MB, answers `len` bytes, then resets: an app that aborts mid-transfer.
async fn read_answer_reset(mut s: TcpStream, seed: u64, len: usize) {
    read_n(&mut s, MB).await;
    let _ = s.write_all(&payload(seed, len)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    reset(s);
}

/// Echoes until the client ends or the connection fails.
async fn echo(mut s: TcpStream) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
}

/// Closes with RST (SO_LINGER 0), as an app that aborts does.
fn reset(s: TcpStream) {
    hbone::stream::reset_tcp(&s);
    drop(s);
}

/// `bytes_sent`/`bytes_recv` of the `connection complete` line of `pod`'s ztunnel whose
/// addresses name `target`.
fn logged(tb: &Testbed, pod: &str, target: SocketAddr) -> Option<(u64, u64)> {
    let log = plain(&tb.log(pod));
    let line = log.lines().find(|l| {
        l.contains("connection complete")
            && (l.contains(&format!("={target} ")) || l.contains(&format!("=\"{target}\"")))
    })?;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))?
            .parse()
            .ok()
    };
    Some((field("bytes_sent")?, field("bytes_recv")?))
}

/// Sums a counter over the series of one reporter.
fn counter(tb: &Testbed, pod: &str, name: &str, reporter: &str) -> u64 {
    let m = tb.metrics(pod).unwrap_or_default();
    m.lines()
        .filter(|l| l.starts_with(name) && l.contains(&format!("reporter=\"{reporter}\"")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The byte counters of a pod's ztunnel for a reporter: (client→server, server→client).
fn counters(tb: &Testbed, pod: &str, reporter: &str) -> (u64, u64) {
    (
        counter(tb, pod, "istio_tcp_received_bytes_total", reporter),
        counter(tb, pod, "istio_tcp_sent_bytes_total", reporter),
    )
}

/// Waits for the access line of `target` in `pod`'s log (they are written in batches).
async fn wait_logged(tb: &Testbed, pod: &str, target: SocketAddr) -> (u64, u64) {
    let found = eventually(Duration::from_secs(10), || async {
        logged(tb, pod, target).is_some()
    })
    .await;
    assert!(
        found.is_some(),
        "no access line for {target}:\n{}",
        plain(&tb.log(pod))
    );
    logged(tb, pod, target).unwrap()
}

/// Checks both ztunnels' lines for a connection to `target`: exact client→server bytes
/// `up`, and server→client between `down_min` and `down_max`.
async fn check_lines(tb: &Testbed, target: SocketAddr, up: u64, down: (u64, u64)) {
    let (sent, recv) = wait_logged(tb, "client", target).await;
    assert_eq!(sent, up, "client ztunnel bytes_sent for {target}");
    assert!(
        (down.0..=down.1).contains(&recv),
        "client ztunnel bytes_recv {recv} for {target}, expected {down:?}"
    );
    let (sent, recv) = wait_logged(tb, "server", target).await;
    assert_eq!(recv, up, "server ztunnel bytes_recv for {target}");
    assert!(
        (down.0..=down.1).contains(&sent),
        "server ztunnel bytes_sent {sent} for {target}, expected {down:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_are_counted_however_a_connection_ends() {
    let mut tb = Testbed::start(options()).unwrap();
    let server: IpAddr = tb.ip("server");
    let at = |port| SocketAddr::new(server, port);

    // 1. Clean: the client sends 1 MB and half-closes; the server answers 200 KB and closes.
    serve_once(&tb, "server", 9101, |mut s| async move {
        drain(&mut s).await;
        let _ = s.write_all(&payload(2, 200_000)).await;
    });
    let src0 = counters(&tb, "client", "source");
    let dst0 = counters(&tb, "server", "destination");
    let mut c = connect_from(&tb, "client", at(9101)).unwrap();
    c.write_all(&payload(1, MB)).await.unwrap();
    c.shutdown().await.unwrap();
    assert_eq!(drain(&mut c).await, 200_000);
    drop(c);
    check_lines(&tb, at(9101), MB as u64, (200_000, 200_000)).await;
    let exact = eventually(Duration::from_secs(5), || async {
        let s = counters(&tb, "client", "source");
        let d = counters(&tb, "server", "destination");
        (s.0 - src0.0, s.1 - src0.1) == (MB as u64, 200_000)
            && (d.0 - dst0.0, d.1 - dst0.1) == (MB as u64, 200_000)
    })
    .await;
    assert!(
        exact.is_some(),
        "counters: {:?}",
        counters(&tb, "server", "destination")
    );

    // 2. The server resets after reading 1 MB and writing 300 KB (this was logged as 0/0).
    serve_once(&tb, "server", 9102, |s| read_answer_reset(s, 3, 300_000));
    let mut c = connect_from(&tb, "client", at(9102)).unwrap();
    c.write_all(&payload(1, MB)).await.unwrap();
    let got = drain(&mut c).await as u64;
    drop(c);
    check_lines(&tb, at(9102), MB as u64, (got, 300_000)).await;

    // 3. The client resets after the server has read its 1 MB and answered 2 bytes.
    serve_once(&tb, "server", 9103, |mut s| async move {
        read_n(&mut s, MB).await;
        let _ = s.write_all(b"ok").await;
        drain(&mut s).await;
    });
    let mut c = connect_from(&tb, "client", at(9103)).unwrap();
    c.write_all(&payload(1, MB)).await.unwrap();
    assert_eq!(read_n(&mut c, 2).await, 2);
    reset(c);
    check_lines(&tb, at(9103), MB as u64, (2, 2)).await;

    // 4. Long-lived: the counters advance while the connection is open; then a policy that
    //    denies it closes it, and the line has what crossed before.
    serve_once(&tb, "server", 9104, echo);
    let dst0 = counters(&tb, "server", "destination");
    let mut c = connect_from(&tb, "client", at(9104)).unwrap();
    c.write_all(&payload(4, 100_000)).await.unwrap();
    assert_eq!(read_n(&mut c, 100_000).await, 100_000);
    let advanced = eventually(Duration::from_secs(8), || async {
        let d = counters(&tb, "server", "destination");
        d.0 - dst0.0 >= 100_000 && d.1 - dst0.1 >= 100_000
    })
    .await;
    assert!(
        advanced.is_some(),
        "the counters of an open connection did not advance"
    );
    tb.set_policies(Some(
        "policies:\n  - {name: deny-9104, namespace: default, scope: Namespace, action: Deny, rules: [[[{destinationPorts: [9104]}]]]}\n".into(),
    ))
    .unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), drain(&mut c)).await;
    assert!(closed.is_ok(), "the policy did not close the connection");
    drop(c);
    let (sent, recv) = wait_logged(&tb, "server", at(9104)).await;
    assert_eq!((sent, recv), (100_000, 100_000));
    tb.set_policies(None).unwrap();

    // 5. Plain TCP both ways: from the outsider to the server (inbound plaintext), and from
    //    the client to the outsider (outbound passthrough); the servers reset.
    serve_once(&tb, "server", 9106, |s| read_answer_reset(s, 5, 50_000));
    let mut c = connect_from(&tb, "outsider", at(9106)).unwrap();
    c.write_all(&payload(1, MB)).await.unwrap();
    let got = drain(&mut c).await as u64;
    drop(c);
    let (sent, recv) = wait_logged(&tb, "server", at(9106)).await;
    assert_eq!(recv, MB as u64, "inbound plaintext bytes_recv");
    assert!(
        (got..=50_000).contains(&sent),
        "inbound plaintext bytes_sent {sent}, client got {got}"
    );

    let outsider = SocketAddr::new(tb.ip("outsider"), 9107);
    serve_once(&tb, "outsider", 9107, |s| read_answer_reset(s, 6, 70_000));
    let mut c = connect_from(&tb, "client", outsider).unwrap();
    c.write_all(&payload(1, MB)).await.unwrap();
    let got = drain(&mut c).await as u64;
    drop(c);
    let (sent, recv) = wait_logged(&tb, "client", outsider).await;
    assert_eq!(sent, MB as u64, "outbound passthrough bytes_sent");
    assert!(
        (got..=70_000).contains(&recv),
        "outbound passthrough bytes_recv {recv}, client got {got}"
    );

    // 6. ztunnel's own shutdown: the server's ztunnel drains (1 s here), then closes what is
    //    left open; its line still has what crossed.
    serve_once(&tb, "server", 9105, echo);
    let mut c = connect_from(&tb, "client", at(9105)).unwrap();
    c.write_all(&payload(7, 150_000)).await.unwrap();
    assert_eq!(read_n(&mut c, 150_000).await, 150_000);
    let z = tb.ztunnel("server");
    z.signal(nix::sys::signal::Signal::SIGTERM).unwrap();
    assert!(
        z.wait_timeout(Duration::from_secs(10)).is_some(),
        "ztunnel did not stop"
    );
    let (sent, recv) = logged(&tb, "server", at(9105)).expect("the drained connection's line");
    assert_eq!((sent, recv), (150_000, 150_000));
    drop(c);
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: bytes-http}
spec: {selector: {app: details}, ports: [{port: 9080, name: http}]}
---
apiVersion: v1
kind: Service
metadata: {name: bytes-tcp}
spec: {selector: {app: details}, ports: [{port: 9080, name: tcp}]}
"#;

/// bytes_sent/bytes_recv of the `connection complete` line in `log` for `authority`.
fn line_bytes(log: &str, authority: &str) -> Option<(u64, u64)> {
    let log = plain(log);
    let line = log.lines().find(|l| {
        l.contains("connection complete") && l.contains(&format!("dst.hbone_addr=\"{authority}\""))
    })?;
    let field = |k: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|f| f.strip_prefix(&format!("{k}=")))?
            .parse()
            .ok()
    };
    Some((field("bytes_sent")?, field("bytes_recv")?))
}

/// Through a waypoint, on its HTTP path and its L4 path: the waypoint's line for the tunnel
/// has the bytes the client's ztunnel sent and received on it, and its `istio_tcp_*`
/// counters (reporter "waypoint") have them too. Each line carries the ids of its
/// connection, stream and request, so one tunnel's lines are found together.
#[test]
fn a_waypoint_counts_the_bytes_of_its_tunnels() {
    use keelson_tests::mesh::{eventually_sync, Mesh, WAYPOINT};
    let mesh = Mesh::tagged("b");
    mesh.ok(&["up"]);
    let wp = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", wp.to_str().unwrap()]);
    let svc = mesh.write("bytes.yaml", SERVICES);
    mesh.ok(&["apply", "-f", svc.to_str().unwrap()]);
    // A request the app reads whole before it answers (a 60 KB header; a body it may answer
    // before reading, closing on the rest, would make the count depend on timing), so every
    // byte the client's ztunnel sent crosses the waypoint.
    let pad = format!("x-pad: {}", "x".repeat(60_000));
    let node = mesh.pod("curl-0")["node"].as_str().unwrap().to_string();
    let node_log = || {
        std::fs::read_to_string(mesh.home.join(format!("logs/{node}-ztunnel.log")))
            .unwrap_or_default()
    };
    for name in ["bytes-http", "bytes-tcp"] {
        let url = format!("http://{name}:9080/details/0");
        assert!(
            eventually_sync(20, || mesh.curl_i(&["-H", &pad, &url]).0 == 200),
            "{name}: {}",
            mesh.waypoint_log()
        );
    }
    for name in ["bytes-http", "bytes-tcp"] {
        let vip = mesh.state()["services"][format!("default/{name}")]
            .as_str()
            .unwrap()
            .to_string();
        let authority = format!("{vip}:9080");
        let both = eventually_sync(10, || {
            line_bytes(&node_log(), &authority).is_some()
                && line_bytes(&mesh.waypoint_log(), &authority).is_some()
        });
        assert!(
            both,
            "{name}: no lines\n{}\n{}",
            node_log(),
            mesh.waypoint_log()
        );
        // The first connection of each (the one that answered 200 is the last; all of
        // them carried the same request, so every pair of lines agrees).
        let (client_sent, client_recv) = line_bytes(&node_log(), &authority).unwrap();
        let (wp_sent, wp_recv) = line_bytes(&mesh.waypoint_log(), &authority).unwrap();
        eprintln!("{name}: client ({client_sent}, {client_recv}), waypoint ({wp_sent}, {wp_recv})");
        assert!(client_sent > 60_000, "{name}: {client_sent}");
        assert_eq!(
            (wp_recv, wp_sent),
            (client_sent, client_recv),
            "{name}: waypoint line against the client's ztunnel line"
        );
    }
    let ip = mesh.pod("waypoint-0")["ip"].as_str().unwrap().to_string();
    let metrics = mesh.curl("curl", &format!("http://{ip}:15020/metrics"), "istio_tcp");
    let received: f64 = metrics
        .lines()
        .filter(|l| {
            l.starts_with("istio_tcp_received_bytes_total")
                && l.contains("reporter=\"waypoint\"")
                && l.contains("source_principal=\"spiffe://cluster.local/ns/default/sa/curl\"")
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert!(received >= 120_000.0, "{metrics}");
    // One tunnel's lines share its span ids: every request line of the HTTP service has
    // the `conn{id=..}:stream{id=..}` of a tunnel line (which then has the bytes), and a
    // `request{id=..}` of its own; ztunnel's lines carry their connection's id too.
    let log = plain(&mesh.waypoint_log());
    let span_of = |l: &str| -> Option<String> {
        let (_, rest) = l.split_once(" INFO ")?;
        let (spans, _) = rest.split_once(": access: ")?;
        Some(spans.to_string())
    };
    let requests: Vec<String> = log
        .lines()
        .filter(|l| l.contains("access: request") && l.contains("destination=bytes-http."))
        .filter_map(span_of)
        .collect();
    assert!(!requests.is_empty(), "{log}");
    for spans in &requests {
        let (tunnel, request) = spans.rsplit_once(':').unwrap();
        assert!(
            tunnel.starts_with("conn{id=") && tunnel.contains(":stream{id="),
            "{spans}"
        );
        assert!(request.starts_with("request{id="), "{spans}");
        assert!(
            log.lines().any(|l| l.contains("connection complete")
                && span_of(l).as_deref() == Some(tunnel)),
            "no tunnel line in {tunnel}:\n{log}"
        );
    }
    let node = plain(&node_log());
    let outbound = node
        .lines()
        .find(|l| l.contains("connection complete") && l.contains("direction=outbound"))
        .unwrap();
    assert!(
        span_of(outbound).is_some_and(|s| s.starts_with("conn{id=")),
        "{outbound}"
    );
}
