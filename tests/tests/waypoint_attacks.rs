//! Attacks on a waypoint from a client holding a valid mesh certificate (a compromised
//! workload), as in docs/HARDENING.md: a tunnel to the waypoint itself (a forwarding loop), a
//! forged `forwarded` header against a source-IP policy, and a slowloris request head.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use identity::Identity;
use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};
use keelson_tests::rss_kib;

const POLICY: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: byip}
spec: {selector: {app: details}, ports: [{port: 9080, name: http}]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: byip-allow}
spec:
  targetRefs: [{kind: Service, group: "", name: byip}]
  rules:
  - from: [{source: {ipBlocks: [CURL_IP/32]}}]
"#;

/// An HBONE connection from node-1's namespace to `to`:15008, as `default/<sa>` with a
/// certificate from the mesh's CA, expecting the waypoint's identity.
async fn hbone_as(mesh: &Mesh, sa: &str, to: IpAddr) -> hbone::Connection {
    let ca = identity::LocalCa::load_or_create(
        &mesh.home.join("controlplane"),
        identity::DEFAULT_TRUST_DOMAIN,
        identity::ca::DEFAULT_CERT_TTL,
    )
    .unwrap();
    let cert = ca
        .issue(&Identity::new("cluster.local", "default", sa))
        .unwrap();
    let waypoint = Identity::new("cluster.local", "default", "waypoint");
    let tls = hbone::tls::client_config(&cert, vec![waypoint]).unwrap();
    let addr = SocketAddr::new(to, hbone::HBONE_PORT);
    let tcp = netns::run_at(&mesh.node_netns("node-1"), move || {
        let s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        s.set_nonblocking(true)?;
        Ok::<_, std::io::Error>(s)
    })
    .unwrap()
    .unwrap();
    let tcp = tokio::net::TcpStream::from_std(tcp).unwrap();
    hbone::client::handshake(tcp, addr, tls, &hbone::H2Config::default())
        .await
        .unwrap()
}

/// The status of a CONNECT to `authority` claiming to be from `claimed` (`forwarded`).
async fn connect_status(conn: &hbone::Connection, authority: &str, claimed: SocketAddr) -> u16 {
    let req = hbone::ConnectRequest::new(authority.to_string(), claimed, None);
    match conn.connect(&req).await {
        Ok(_) => 200,
        Err(hbone::HboneError::Status(s)) => s.as_u16(),
        Err(e) => panic!("CONNECT {authority}: {e}"),
    }
}

/// Sends `head` in the tunnel and reads the HTTP status line's code.
async fn request(stream: &mut hbone::H2Stream, head: &str) -> u16 {
    stream
        .send
        .send_data(bytes::Bytes::from(head.to_string()), false)
        .unwrap();
    read_status(stream, Duration::from_secs(10)).await
}

async fn read_status(stream: &mut hbone::H2Stream, within: Duration) -> u16 {
    let mut got = Vec::new();
    let read = async {
        while let Some(Ok(chunk)) = stream.recv.data().await {
            let _ = stream.recv.flow_control().release_capacity(chunk.len());
            got.extend_from_slice(&chunk);
            if got.windows(2).any(|w| w == b"\r\n") {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    let text = String::from_utf8_lossy(&got);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn waypoint_pid(mesh: &Mesh) -> u32 {
    let pod = mesh.pod("waypoint-0");
    pod["procs"][0]["pid"]
        .as_u64()
        .unwrap_or_else(|| panic!("no waypoint process in {pod}")) as u32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waypoint_refuses_loops_forged_sources_and_slow_heads() {
    let mesh = Mesh::tagged("x");
    mesh.ok(&["up"]);
    let file = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", file.to_str().unwrap()]);
    let curl_ip = mesh.pod("curl-0")["ip"].as_str().unwrap().to_string();
    let policy = mesh.write("byip.yaml", &POLICY.replace("CURL_IP", &curl_ip));
    mesh.ok(&["apply", "-f", policy.to_str().unwrap()]);
    let waypoint: IpAddr = mesh.pod("waypoint-0")["ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let byip = mesh.state()["services"]["default/byip"]
        .as_str()
        .unwrap()
        .to_string();
    // The curl pod, whose address the policy allows, is served through the waypoint.
    assert!(
        eventually(20, || mesh.curl_i(&["http://byip:9080/details/0"]).0 == 200),
        "{}",
        mesh.waypoint_log()
    );

    let conn = hbone_as(&mesh, "intruder", waypoint).await;
    let me: SocketAddr = "10.244.1.1:40000".parse().unwrap();

    // 1. A tunnel to the waypoint itself, on an app port or on its own HBONE port: 400, and
    //    the waypoint does not forward to itself (before: it did, without end).
    let pid = waypoint_pid(&mesh);
    let before = rss_kib(pid);
    assert_eq!(
        connect_status(&conn, &format!("{waypoint}:9080"), me).await,
        400
    );
    // The HBONE port is never a destination (503, as ztunnel answers for its own ports).
    assert_eq!(
        connect_status(&conn, &format!("{waypoint}:15008"), me).await,
        503
    );
    assert_eq!(connect_status(&conn, &format!("{byip}:0"), me).await, 400);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    assert!(
        after < before + 10 * 1024,
        "waypoint RSS {before} KiB -> {after} KiB"
    );
    let log = mesh.waypoint_log();
    assert!(
        log.contains("is this proxy itself") && log.lines().count() < 500,
        "{}",
        &log[log.len().saturating_sub(3000)..]
    );

    // 2. A forged `forwarded: for=<curl's address>` buys nothing: the intruder's identity
    //    does not own that address, so the policy sees the intruder's own and denies.
    let claimed: SocketAddr = format!("{curl_ip}:41000").parse().unwrap();
    let req = hbone::ConnectRequest::new(format!("{byip}:9080"), claimed, None);
    let mut s = conn.connect(&req).await.unwrap();
    let code = request(
        &mut s,
        "GET /details/0 HTTP/1.1\r\nhost: byip:9080\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        code, 403,
        "a forged forwarded header must not pass an ipBlocks policy"
    );

    // 3. Slowloris: a request head trickled a byte a second gets 408 at the header timeout
    //    (10 s by default), and the tunnel ends.
    let req = hbone::ConnectRequest::new(format!("{byip}:9080"), me, None);
    let mut s = conn.connect(&req).await.unwrap();
    let started = std::time::Instant::now();
    let head =
        b"GET /details/0 HTTP/1.1\r\nhost: byip:9080\r\nx-slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut code = 0;
    for b in head {
        if s.send
            .send_data(bytes::Bytes::copy_from_slice(&[*b]), false)
            .is_err()
        {
            break;
        }
        code = read_status(&mut s, Duration::from_secs(1)).await;
        if code != 0 {
            break;
        }
    }
    let took = started.elapsed();
    assert_eq!(code, 408, "after {took:?}");
    assert!(
        took >= Duration::from_secs(9) && took < Duration::from_secs(20),
        "{took:?}"
    );

    // The waypoint still serves.
    assert_eq!(mesh.curl_i(&["http://byip:9080/details/0"]).0, 200);
}
