//! Attacks on ztunnel's HBONE server (15008) from a pod outside the mesh, as in
//! docs/HARDENING.md: a handshake flood without certificates, and HTTP/2 floods (paced Rapid
//! Reset, PING, SETTINGS) from a client with a valid certificate. Each checks that the
//! attacker is cut off with the right signal and metric, and that a well-behaved client is
//! served throughout.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use identity::Identity;
use keelson_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn options() -> Options {
    Options {
        pods: vec![
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        ..Options::default()
    }
}

fn server_id() -> Identity {
    Identity::new("cluster.local", "default", "server")
}

fn client_tls(tb: &Testbed) -> std::sync::Arc<rustls::ClientConfig> {
    let cert = testbed_ca(tb)
        .issue(&Identity::new("cluster.local", "default", "outsider"))
        .unwrap();
    hbone::tls::client_config(&cert, vec![server_id()]).unwrap()
}

/// A CONNECT through a fresh, well-behaved connection echoes.
async fn healthy_echo(tb: &Testbed) -> bool {
    let server = tb.ip("server");
    let Ok(conn) = hbone_from(tb, "outsider", server, client_tls(tb)).await else {
        return false;
    };
    let req = hbone::ConnectRequest::new(
        SocketAddr::new(server, 8080).to_string(),
        "10.10.0.3:1".parse().unwrap(),
        None,
    );
    let Ok(mut s) = conn.connect(&req).await else {
        return false;
    };
    let sent = payload(7, 10_000);
    if s.send.send_data(sent.clone().into(), true).is_err() {
        return false;
    }
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = s.recv.data().await {
        let _ = s.recv.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    got == sent
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

fn counter(tb: &Testbed, name: &str, label: (&str, &str)) -> f64 {
    let m = tb.metrics("server").unwrap();
    metric_value(&m, name, &[label]).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_is_shed_oldest_first_and_others_are_served() {
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let pid = tb.ztunnel_pid("server");
    assert!(healthy_echo(&tb).await);
    let baseline = open_fds(pid);

    // 600 plain TCP connections that never send a byte: each waits in the TLS handshake.
    let to = SocketAddr::new(tb.ip("server"), hbone::HBONE_PORT);
    let mut held = Vec::new();
    for _ in 0..600 {
        held.push(connect_from(&tb, "outsider", to).unwrap());
    }
    // The default per-source bound (256) holds: the oldest were shed to admit the newest.
    let settled = eventually(Duration::from_secs(10), || async {
        counter(
            &tb,
            "keelson_hbone_handshakes_shed_total",
            ("reason", "per_source"),
        ) >= 344.0
    })
    .await
    .is_some();
    assert!(
        settled,
        "sheds: {}",
        tb.metrics("server").unwrap_or_default()
    );
    let during = open_fds(pid);
    eprintln!("ztunnel fds: baseline {baseline}, during the flood {during}");
    assert!(
        during < baseline + 256 + 20,
        "ztunnel holds {during} fds under the flood (baseline {baseline})"
    );
    // The shed connections were closed by ztunnel: the first one reads EOF (or a reset).
    let mut first = held.remove(0);
    let mut b = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), first.read(&mut b)).await;
    assert!(
        matches!(r, Ok(Ok(0)) | Ok(Err(_))),
        "the oldest handshake was closed: {r:?}"
    );
    // A real client, meanwhile, is served.
    assert!(
        healthy_echo(&tb).await,
        "a client with a certificate is served under the flood"
    );
    drop(held);
    drop(first);
    let back = eventually(Duration::from_secs(10), || async {
        open_fds(pid) <= baseline + 5
    })
    .await
    .is_some();
    assert!(
        back,
        "fds back to baseline: {} vs {baseline}",
        open_fds(pid)
    );
    // Logged, but not a line per connection: 600 sheds leave at most a window's share.
    let log = tb.log("server");
    assert!(log.contains("handshake shed"));
    let lines = log.matches("HBONE connection failed").count();
    assert!(lines <= 12, "{lines} lines for 600 failed handshakes");
}

/// A TLS connection speaking raw HTTP/2 frames: what an attacker's client does.
struct Raw {
    tls: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
}

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut f = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A HEADERS frame of a CONNECT to `authority`, HPACK literal fields without indexing.
fn connect_headers(stream: u32, authority: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [(":method", "CONNECT"), (":authority", authority)] {
        block.push(0x00);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    frame(0x1, 0x4, stream, &block)
}

impl Raw {
    async fn open(tb: &Testbed) -> Raw {
        let to = SocketAddr::new(tb.ip("server"), hbone::HBONE_PORT);
        let tcp = connect_from(tb, "outsider", to).unwrap();
        let tls = tokio_rustls::TlsConnector::from(client_tls(tb))
            .connect(hbone::tls::placeholder_server_name(), tcp)
            .await
            .unwrap();
        let mut raw = Raw { tls };
        raw.send(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
        raw.send(&frame(0x4, 0, 0, &[])).await.unwrap();
        raw
    }

    async fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.tls.write_all(bytes).await?;
        self.tls.flush().await
    }

    /// Reads frames until a GOAWAY, the end, or `within`; the GOAWAY's error code.
    async fn goaway(&mut self, within: Duration) -> Option<u32> {
        let deadline = Instant::now() + within;
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 16384];
        loop {
            while buf.len() >= 9 {
                let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
                if buf.len() < 9 + len {
                    break;
                }
                if buf[3] == 0x7 {
                    let p = &buf[9..9 + len];
                    return Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]]));
                }
                buf.drain(..9 + len);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            match tokio::time::timeout(left, self.tls.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }
}

const ENHANCE_YOUR_CALM: u32 = 0xb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_floods_get_goaway_enhance_your_calm() {
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let authority = format!("{}:8080", tb.ip("server"));

    // Rapid Reset, paced as an attacker paces it to slip under a queue limit: 50 CONNECTs,
    // a pause, their 50 resets, again and again.
    let mut raw = Raw::open(&tb).await;
    let mut stream = 1u32;
    let started = Instant::now();
    let mut pairs = 0;
    'flood: while started.elapsed() < Duration::from_secs(10) {
        let first = stream;
        let mut heads = Vec::new();
        for _ in 0..50 {
            heads.extend(connect_headers(stream, &authority));
            stream += 2;
        }
        if raw.send(&heads).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let mut resets = Vec::new();
        for s in (first..stream).step_by(2) {
            resets.extend(frame(0x3, 0, s, &0x8u32.to_be_bytes()));
            pairs += 1;
        }
        if raw.send(&resets).await.is_err() {
            break 'flood;
        }
        if pairs >= 5_000 {
            break;
        }
    }
    let code = raw.goaway(Duration::from_secs(5)).await;
    eprintln!("cut off after {pairs} HEADERS+RST pairs");
    assert_eq!(
        code,
        Some(ENHANCE_YOUR_CALM),
        "after {pairs} HEADERS+RST pairs"
    );
    assert!(pairs < 5_000, "cut off after {pairs} pairs");
    assert!(
        counter(
            &tb,
            "keelson_hbone_flood_closed_total",
            ("reason", "rst_stream")
        ) >= 1.0
    );

    // PING and SETTINGS floods.
    for (kind, payload, reason) in [(0x6u8, vec![0u8; 8], "ping"), (0x4u8, vec![], "settings")] {
        let mut raw = Raw::open(&tb).await;
        let burst: Vec<u8> = (0..500).flat_map(|_| frame(kind, 0, 0, &payload)).collect();
        let _ = raw.send(&burst).await;
        assert_eq!(
            raw.goaway(Duration::from_secs(5)).await,
            Some(ENHANCE_YOUR_CALM),
            "{reason} flood"
        );
        assert!(counter(&tb, "keelson_hbone_flood_closed_total", ("reason", reason)) >= 1.0);
    }

    // A well-behaved client is served after all that.
    assert!(healthy_echo(&tb).await);
    let log = tb.log("server");
    assert!(log.contains("ENHANCE_YOUR_CALM"), "the closes are logged");
}

/// After a burst of 1,000 connections each moving 256 KiB, ztunnel gives the memory back:
/// measured here, 12 MiB at rest, 68 MiB during, 17 MiB 20 s later (70 MiB for good before
/// jemalloc purged in the background).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_comes_back_after_a_burst() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
        ],
        ..Options::default()
    })
    .unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let pid = tb.ztunnel_pid("server");
    let to = SocketAddr::new(tb.ip("server"), 8080);
    let s = connect_from(&tb, "client", to).unwrap();
    roundtrip(s, vec![1; 1000]).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let baseline = rss_kib(pid);
    let data = std::sync::Arc::new(payload(9, 256 * 1024));
    let mut tasks = Vec::new();
    for _ in 0..1000 {
        let mut c = connect_from(&tb, "client", to).unwrap();
        let data = data.clone();
        tasks.push(tokio::spawn(async move {
            c.write_all(&data).await?;
            let mut back = vec![0u8; data.len()];
            c.read_exact(&mut back).await?;
            assert!(back == *data, "echo corrupted");
            Ok::<_, std::io::Error>(c)
        }));
    }
    let mut held = Vec::new();
    let mut failed = Vec::new();
    for t in tasks {
        match t.await.unwrap() {
            Ok(c) => held.push(c),
            Err(e) => failed.push(e.to_string()),
        }
    }
    // Seen once under full CPU load (a fuzzer and three other testbeds): one connection of
    // the 1,000 reset during its echo. Probable cause: the echo listener's backlog was 128,
    // and a dial whose SYN is dropped four times outlasts ztunnel's 10 s connect timeout
    // (ztunnel then rightly resets the client); test listeners now have a backlog of 4,096
    // (docs/HARDENING.md, load L2).
    assert!(
        failed.len() <= 2,
        "{} connections failed: {failed:?}",
        failed.len()
    );
    let peak = rss_kib(pid);
    drop(held);
    let back = eventually(Duration::from_secs(40), || async {
        rss_kib(pid) <= baseline + (peak - baseline) / 4
    })
    .await;
    eprintln!(
        "ztunnel RSS: baseline {baseline} KiB, with 1,000 connections {peak} KiB, then {} KiB after {back:?}",
        rss_kib(pid)
    );
    assert!(
        back.is_some(),
        "RSS stayed at {} KiB (baseline {baseline}, peak {peak})",
        rss_kib(pid)
    );
}

/// An HPACK string (no Huffman): its length as a 7-bit-prefix integer, then the bytes.
fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    let mut n = s.len();
    if n < 127 {
        out.push(n as u8);
    } else {
        out.push(127);
        n -= 127;
        while n >= 128 {
            out.push((n % 128) as u8 | 0x80);
            n /= 128;
        }
        out.push(n as u8);
    }
    out.extend_from_slice(s);
}

/// HEADERS (+ CONTINUATION) frames of a request with the given fields, each a literal
/// without indexing, in frames of at most 16 KiB.
fn request_frames(stream: u32, fields: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        hpack_string(&mut block, name);
        hpack_string(&mut block, value);
    }
    let chunks: Vec<&[u8]> = block.chunks(16 * 1024).collect();
    let mut out = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let end_headers = if i + 1 == chunks.len() { 0x4 } else { 0 };
        let kind = if i == 0 { 0x1 } else { 0x9 };
        out.extend(frame(kind, end_headers, stream, c));
    }
    out
}

/// What the server did with each stream: answered 200, answered otherwise, or reset (with
/// the code); and the GOAWAY code if one came. Reads for `within`.
async fn outcomes(
    raw: &mut Raw,
    within: Duration,
) -> (std::collections::BTreeMap<u32, String>, Option<u32>) {
    let (seen, goaway, _) = outcomes_and_end(raw, within).await;
    (seen, goaway)
}

/// As [`outcomes`], and whether the server closed the connection (before `within`).
async fn outcomes_and_end(
    raw: &mut Raw,
    within: Duration,
) -> (std::collections::BTreeMap<u32, String>, Option<u32>, bool) {
    let deadline = Instant::now() + within;
    let mut seen = std::collections::BTreeMap::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16384];
    let mut goaway = None;
    loop {
        while buf.len() >= 9 {
            let len = (buf[0] as usize) << 16 | (buf[1] as usize) << 8 | buf[2] as usize;
            if buf.len() < 9 + len {
                break;
            }
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let p = &buf[9..9 + len];
            match buf[3] {
                // An indexed :status 200 is 0x88 (RFC 7541 static table).
                0x1 => {
                    seen.entry(stream).or_insert_with(|| {
                        if p.first() == Some(&0x88) {
                            "200"
                        } else {
                            "answered"
                        }
                        .to_string()
                    });
                }
                0x3 => {
                    let code = u32::from_be_bytes([p[0], p[1], p[2], p[3]]);
                    seen.insert(stream, format!("reset {code}"));
                }
                0x7 => goaway = Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
                _ => {}
            }
            buf.drain(..9 + len);
        }
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            return (seen, goaway, false);
        };
        match tokio::time::timeout(left, raw.tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => buf.extend_from_slice(&chunk[..n]),
            Ok(_) => return (seen, goaway, true),
            Err(_) => return (seen, goaway, false),
        }
    }
}

/// Malformed requests are refused stream by stream and the connection goes on; streams past
/// the concurrency limit are refused (docs/HARDENING.md, bad input 1, 19, 22, 27).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_excess_streams_are_refused_one_by_one() {
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let authority = format!("{}:8080", tb.ip("server"));
    let a = authority.as_bytes();
    let big = vec![b'a'; 70 * 1024];
    // Each on a connection of its own: a missing :authority (400), CR LF in a value and an
    // upper-case name (malformed: h2 ends that connection with GOAWAY PROTOCOL_ERROR), a
    // 70 KiB header (over the 64 KiB header list: the stream is reset).
    let connect = (&b":method"[..], &b"CONNECT"[..]);
    for (name, fields) in [
        ("no :authority", vec![connect]),
        (
            "CR LF in a value",
            vec![connect, (b":authority", a), (b"x-evil", b"a\r\nb: c")],
        ),
        (
            "an upper-case name",
            vec![connect, (b":authority", a), (b"X-Upper", b"1")],
        ),
        (
            "a 70 KiB header",
            vec![connect, (b":authority", a), (b"x-big", &big[..])],
        ),
    ] {
        let mut raw = Raw::open(&tb).await;
        raw.send(&request_frames(1, &fields)).await.unwrap();
        let (seen, goaway) = outcomes(&mut raw, Duration::from_secs(2)).await;
        let o = seen.get(&1).map(String::as_str);
        assert!(
            o != Some("200") && (o.is_some() || goaway.is_some()),
            "{name}: {seen:?}, goaway {goaway:?}"
        );
    }
    // A good request on a connection that also carried an oversized one is still served.
    let mut raw = Raw::open(&tb).await;
    let mut out = request_frames(1, &[connect, (b":authority", a), (b"x-big", &big[..])]);
    out.extend(request_frames(3, &[connect, (b":authority", a)]));
    raw.send(&out).await.unwrap();
    let (seen, goaway) = outcomes(&mut raw, Duration::from_secs(3)).await;
    assert_eq!(seen.get(&3).map(String::as_str), Some("200"), "{seen:?}");
    assert_eq!(goaway, None, "the connection lives on");

    // 250 tunnels held open at once: past the advertised 200, streams are refused.
    let mut raw = Raw::open(&tb).await;
    let mut out = Vec::new();
    for i in 0..250u32 {
        out.extend(request_frames(
            1 + 2 * i,
            &[(b":method", b"CONNECT"), (b":authority", a)],
        ));
    }
    raw.send(&out).await.unwrap();
    let (seen, goaway) = outcomes(&mut raw, Duration::from_secs(5)).await;
    let ok = seen.values().filter(|o| *o == "200").count();
    let refused = seen.values().filter(|o| *o == "reset 7").count();
    eprintln!("250 streams: {ok} answered 200, {refused} refused, goaway {goaway:?}");
    assert!(ok <= 200 && refused >= 50, "{seen:?}");
    assert!(healthy_echo(&tb).await);
}

const PROTOCOL_ERROR: u32 = 0x1;
const FRAME_SIZE_ERROR: u32 = 0x6;

/// The TLS records of a ClientHello from a client with a certificate.
fn client_hello(tb: &Testbed) -> Vec<u8> {
    let mut conn =
        rustls::ClientConnection::new(client_tls(tb), hbone::tls::placeholder_server_name())
            .unwrap();
    let mut out = Vec::new();
    while conn.wants_write() {
        conn.write_tls(&mut out).unwrap();
    }
    out
}

/// The handshake bytes of TLS records, re-cut into records of one byte each.
fn one_byte_records(records: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let mut rest = records;
    while rest.len() >= 5 {
        let len = (rest[3] as usize) << 8 | rest[4] as usize;
        for b in &rest[5..5 + len] {
            out.extend_from_slice(&[rest[0], 3, 1, 0, 1, *b]);
        }
        rest = &rest[5 + len..];
    }
    out
}

/// Sends `bytes` raw on a new TCP connection to the server's 15008 from the outsider pod;
/// what the server did within 5 s: the first byte of its answer (a record type) or `None`
/// if it closed without a word, or a panic if it neither answered nor closed.
async fn raw_tls_answer(tb: &Testbed, bytes: &[u8], wait_for_close: bool) -> Option<u8> {
    let to = SocketAddr::new(tb.ip("server"), hbone::HBONE_PORT);
    let mut s = connect_from(tb, "outsider", to).unwrap();
    s.write_all(bytes).await.unwrap();
    let mut first = None;
    let mut buf = vec![0u8; 16384];
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => {
                first.get_or_insert(buf[0]);
                if !wait_for_close {
                    return first;
                }
            }
            Ok(_) => return first,
            Err(_) => panic!("the server neither answered nor closed within 5 s ({first:?})"),
        }
    }
}

/// TLS and HTTP/2 framing abuse (docs/HARDENING.md, bad input 17, 18, 20, 25, 26): each
/// ends with the right signal within seconds, and a well-behaved client is served after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_framing_abuse_ends_cleanly() {
    let tb = Testbed::start(options()).unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let authority = format!("{}:8080", tb.ip("server"));
    let a = authority.as_bytes();
    let connect = (&b":method"[..], &b"CONNECT"[..]);

    // 17: a ClientHello in 1-byte records is reassembled and answered with a ServerHello
    // (handshake record, 22); one followed by close_notify is closed.
    let hello = client_hello(&tb);
    assert_eq!(
        raw_tls_answer(&tb, &one_byte_records(&hello), false).await,
        Some(22),
        "1-byte records"
    );
    let mut closing = hello.clone();
    closing.extend_from_slice(&[21, 3, 3, 0, 2, 1, 0]);
    raw_tls_answer(&tb, &closing, true).await;

    // 18: TLS 1.2 is refused: an alert (21), never a handshake.
    let tls12 = tls_without_client_cert_speaking(&[&rustls::version::TLS12]);
    let mut conn =
        rustls::ClientConnection::new(tls12, hbone::tls::placeholder_server_name()).unwrap();
    let mut hello12 = Vec::new();
    conn.write_tls(&mut hello12).unwrap();
    assert_eq!(
        raw_tls_answer(&tb, &hello12, true).await,
        Some(21),
        "TLS 1.2"
    );

    // 20: CONTINUATION flood: HEADERS without END_HEADERS, then CONTINUATION frames without
    // end. The connection is closed once the header list passes its limit.
    let mut raw = Raw::open(&tb).await;
    let mut flood = frame(0x1, 0, 1, &[0x00, 1, b'x', 1, b'y']);
    let piece: Vec<u8> = (0..1000).flat_map(|_| [0x00, 1, b'x', 1, b'y']).collect();
    for _ in 0..200 {
        flood.extend(frame(0x9, 0, 1, &piece));
    }
    let _ = raw.send(&flood).await;
    let (seen, goaway, closed) = outcomes_and_end(&mut raw, Duration::from_secs(5)).await;
    assert!(
        closed || goaway.is_some(),
        "CONTINUATION flood: {seen:?}, goaway {goaway:?}, closed {closed}"
    );
    eprintln!("CONTINUATION flood: goaway {goaway:?}, closed {closed}");

    // 25: a client stream with an even id, stream ids going down, an oversize frame: each
    // ends its connection with GOAWAY (PROTOCOL_ERROR, FRAME_SIZE_ERROR).
    let even = request_frames(2, &[connect, (b":authority", a)]);
    let mut down = request_frames(5, &[connect, (b":authority", a)]);
    down.extend(request_frames(3, &[connect, (b":authority", a)]));
    let mut oversize = request_frames(1, &[connect, (b":authority", a)]);
    // A DATA frame announcing 2 MiB: over the 1 MiB SETTINGS_MAX_FRAME_SIZE.
    oversize.extend_from_slice(&[0x20, 0, 0, 0x0, 0, 0, 0, 0, 1]);
    oversize.extend_from_slice(&[0u8; 1024]);
    for (what, bytes, code) in [
        ("an even stream id", even, PROTOCOL_ERROR),
        ("stream ids going down", down, PROTOCOL_ERROR),
        ("a 2 MiB frame", oversize, FRAME_SIZE_ERROR),
    ] {
        let mut raw = Raw::open(&tb).await;
        let _ = raw.send(&bytes).await;
        let (seen, goaway, _) = outcomes_and_end(&mut raw, Duration::from_secs(5)).await;
        assert_eq!(goaway, Some(code), "{what}: {seen:?}");
    }

    // 26: HPACK bomb: one 4 KiB header put in the dynamic table, then referenced 1,000 times
    // by its index (1 byte each): 4 MB decoded from 5 KB. Refused (over the 64 KiB header
    // list), never served.
    let mut block = Vec::new();
    for (name, value) in [(&b":method"[..], &b"CONNECT"[..]), (b":authority", a)] {
        block.push(0x00);
        hpack_string(&mut block, name);
        hpack_string(&mut block, value);
    }
    block.push(0x40); // literal with incremental indexing, new name: dynamic index 62
    hpack_string(&mut block, b"x-bomb");
    hpack_string(&mut block, &[b'b'; 4000]);
    block.extend(std::iter::repeat_n(0x80 | 62, 1000));
    let mut raw = Raw::open(&tb).await;
    let _ = raw.send(&frame(0x1, 0x4, 1, &block)).await;
    let (seen, goaway, closed) = outcomes_and_end(&mut raw, Duration::from_secs(5)).await;
    let o = seen.get(&1).map(String::as_str);
    assert!(
        o != Some("200") && (o.is_some() || goaway.is_some() || closed),
        "HPACK bomb: {seen:?}, goaway {goaway:?}, closed {closed}"
    );
    eprintln!("HPACK bomb: {seen:?}, goaway {goaway:?}, closed {closed}");

    assert!(healthy_echo(&tb).await);
}
