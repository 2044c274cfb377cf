//! Faults of the fault plan in docs/HARDENING.md, through the real binaries: a peer ztunnel
//! killed mid-transfer (F2), a peer that goes silent (F2, found by the PING keepalive), packet
//! loss on the path (F16), and a log sink that is full. Each checks that the apps see a clean
//! end (never a hang), that no stale pooled connection is reused afterwards, and that healthy
//! transfers keep every byte.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use keelson_tests::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// PINGs every second, a connection dropped after 2 s without an answer.
fn fast_keepalive() -> Vec<(String, String)> {
    vec![
        ("HBONE_KEEPALIVE_INTERVAL".into(), "1s".into()),
        ("HBONE_KEEPALIVE_TIMEOUT".into(), "2s".into()),
    ]
}

fn start(env: Vec<(String, String)>) -> Testbed {
    Testbed::start(Options {
        env,
        ..Options::default()
    })
    .unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A connection from client to the server's echo that is known to work: 10 KB went there
/// and back. Left open.
async fn open_echo(tb: &Testbed, to: SocketAddr) -> tokio::net::TcpStream {
    let mut s = connect_from(tb, "client", to).unwrap();
    let sent = payload(1, 10_000);
    s.write_all(&sent).await.unwrap();
    let mut back = vec![0; sent.len()];
    s.read_exact(&mut back).await.unwrap();
    assert_eq!(back, sent);
    s
}

/// Keeps writing to `s` and reading its echo until the connection ends; how long after
/// `from` it ended. Fails if it is still open after `limit`.
async fn ends_within(mut s: tokio::net::TcpStream, from: Instant, limit: Duration) -> Duration {
    let chunk = payload(2, 16 * 1024);
    let mut buf = vec![0u8; 64 * 1024];
    let (mut r, mut w) = s.split();
    let ended = tokio::time::timeout(limit, async {
        loop {
            tokio::select! {
                res = w.write_all(&chunk) => if res.is_err() { return },
                res = r.read(&mut buf) => match res {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                },
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        ended.is_ok(),
        "the app's connection was still open {limit:?} after the fault"
    );
    from.elapsed()
}

/// One new connection, first try, 100 KB both ways intact.
async fn fresh_roundtrip(tb: &Testbed, to: SocketAddr) -> Result<(), String> {
    let s = connect_from(tb, "client", to).map_err(|e| e.to_string())?;
    let sent = payload(3, 100_000);
    match tokio::time::timeout(Duration::from_secs(5), roundtrip(s, sent.clone())).await {
        Ok(Ok(back)) if back == sent => Ok(()),
        Ok(Ok(back)) => Err(format!("{} of {} bytes came back", back.len(), sent.len())),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("no answer within 5 s (a stale pooled connection?)".into()),
    }
}

/// F2: the server's ztunnel is SIGKILLed while a transfer runs. The kernel closes its
/// sockets, the client's ztunnel sees its HBONE connection end and resets the app's
/// connection at once; once a new ztunnel serves the pod, the first new connection works
/// (the dead one left the pool).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_ztunnel_ends_its_streams_and_is_not_reused() {
    let mut tb = start(fast_keepalive());
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    let client_pid = tb.ztunnel_pid("client");
    let s = open_echo(&tb, to).await;
    let fds_before = open_fds(client_pid);

    let killed = Instant::now();
    tb.ztunnel("server")
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    let took = ends_within(s, killed, Duration::from_secs(5)).await;
    eprintln!("the app's connection ended {took:?} after the peer was killed");

    tb.respawn_ztunnel("server").unwrap();
    fresh_roundtrip(&tb, to).await.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || async {
            open_fds(client_pid) <= fds_before + 2
        })
        .await
        .is_some(),
        "client ztunnel fds {} (before the kill: {fds_before})",
        open_fds(client_pid)
    );
}

fn iptables(tb: &Testbed, pod: &str, args: &[&str]) {
    tb.pod(pod).exec("iptables", args).unwrap();
}

/// The server's 15008 traffic, both ways, dropped in its pod (`op` = -I to add, -D to
/// remove).
fn blackhole(tb: &Testbed, op: &str) {
    let port = hbone::HBONE_PORT.to_string();
    iptables(
        tb,
        "server",
        &[op, "INPUT", "-p", "tcp", "--dport", &port, "-j", "DROP"],
    );
    iptables(
        tb,
        "server",
        &[op, "OUTPUT", "-p", "tcp", "--sport", &port, "-j", "DROP"],
    );
}

/// F2, the silent kind: the peer stops answering without closing anything (a node gone, a
/// partition). Only the PING keepalive can find it: the client's ztunnel drops the HBONE
/// connection after interval + timeout, resets the app's connection, logs why, and a new
/// connection once the path is back gets a new HBONE connection instead of the dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_peer_is_found_by_keepalive_and_not_reused() {
    let tb = start(fast_keepalive());
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    let s = open_echo(&tb, to).await;

    blackhole(&tb, "-I");
    let cut = Instant::now();
    let took = ends_within(s, cut, Duration::from_secs(15)).await;
    eprintln!("the app's connection ended {took:?} after the peer went silent");
    blackhole(&tb, "-D");

    fresh_roundtrip(&tb, to).await.unwrap();
    assert!(
        tb.log("client").contains("did not answer PING"),
        "the client's ztunnel says why it dropped the connection"
    );
}

/// F16: 5% of the server pod's packets dropped each way (the kernel here has no netem, so
/// loss is made with iptables' `statistic` match; delay and reordering are not emulated).
/// Eight concurrent 2 MB echoes all arrive intact, and none hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_packet_loss_intact() {
    let tb = start(Vec::new());
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    let lossy = |op: &str| {
        for chain in ["INPUT", "OUTPUT"] {
            iptables(
                &tb,
                "server",
                &[
                    op,
                    chain,
                    "-p",
                    "tcp",
                    "-m",
                    "statistic",
                    "--mode",
                    "random",
                    "--probability",
                    "0.05",
                    "-j",
                    "DROP",
                ],
            );
        }
    };
    lossy("-I");
    let mut tasks = Vec::new();
    for seed in 0..8u64 {
        let s = connect_from(&tb, "client", to).unwrap();
        tasks.push(tokio::spawn(async move {
            let sent = payload(100 + seed, 2_000_000);
            let back = tokio::time::timeout(Duration::from_secs(90), roundtrip(s, sent.clone()))
                .await
                .map_err(|_| format!("echo {seed} stuck"))?
                .map_err(|e| format!("echo {seed}: {e}"))?;
            let (a, b) = (Checksum::sum(&sent), Checksum::sum(&back));
            if a != b {
                return Err(format!("echo {seed}: {b:?} came back for {a:?}"));
            }
            Ok(())
        }));
    }
    let mut failures = Vec::new();
    for t in tasks {
        if let Err(e) = t.await.unwrap() {
            failures.push(e);
        }
    }
    let counts = tb
        .pod("server")
        .exec("iptables", &["-L", "INPUT", "-v", "-n", "-x"])
        .unwrap();
    lossy("-D");
    assert!(failures.is_empty(), "{failures:?}");
    // The rule did drop packets: its first column counts them.
    let dropped: u64 = counts
        .lines()
        .find(|l| l.contains("statistic"))
        .and_then(|l| l.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    eprintln!("{dropped} inbound packets dropped");
    assert!(dropped > 50, "{counts}");
}

/// A full disk for logs: ztunnel's stdout is /dev/full, so every log write fails (ENOSPC).
/// Traffic still flows, ztunnel keeps running, its metrics still count the connections and
/// the lost writes (before the fix: the log library's own error report panicked ztunnel at
/// its first line).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_log_disk_does_not_stop_traffic() {
    let tb = Testbed::start(Options {
        log_sink: Some("/dev/full".into()),
        ..Options::default()
    })
    .unwrap();
    let to = spawn_echo(&tb, "server", 8080).unwrap();
    for i in 0..50 {
        fresh_roundtrip(&tb, to)
            .await
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
    }
    let m = tb.metrics("server").unwrap();
    let opened = metric_value(&m, "istio_tcp_connections_opened_total", &[]).unwrap_or(0.0);
    assert!(opened >= 50.0, "{opened} connections counted");
    let lost = metric_value(&m, "keelson_log_write_failures_total", &[]).unwrap_or(0.0);
    assert!(lost >= 1.0, "{lost} failed log writes counted");
}

/// A ztunnel binary that runs the server pod's ztunnel with its clock shifted by `skew`
/// (libfaketime; the monotonic clock, which timers use, stays true). The library is
/// preloaded into the ztunnel itself, under the script's pid: the `faketime` command runs
/// its program as a child, which outlived the testbed when the test stopped the wrapper.
fn skewed_ztunnel(skew: &str) -> std::path::PathBuf {
    let real = netns::find_binary("ztunnel").unwrap();
    let script = std::env::temp_dir().join(format!(
        "keelson-skew-{}-{}.sh",
        std::process::id(),
        skew.trim_start_matches('-')
    ));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nif [ \"$POD_NAME\" = server ]; then\n  \
             lib=$(ls /usr/lib/*/faketime/libfaketime.so.1 | head -n 1)\n  \
             FAKETIME='{skew}' FAKETIME_DONT_FAKE_MONOTONIC=1 LD_PRELOAD=\"$lib\" exec {real} \"$@\"\nfi\nexec {real} \"$@\"\n",
            real = real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}

/// Clock skew between nodes: certificates are valid from 60 s before they are issued
/// (identity's CA backdates them), so a server whose clock is 45 s behind still accepts its
/// clients; at 5 minutes behind, a client's certificate is not valid yet for it: the
/// connection is refused and the server's log says why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clock_skew_is_tolerated_within_the_backdate_and_explained_beyond() {
    for (skew, tolerated) in [("-45s", true), ("-5m", false)] {
        let script = skewed_ztunnel(skew);
        let tb = Testbed::start(Options {
            ztunnel_bin: Some(script.clone()),
            ..Options::default()
        })
        .unwrap();
        let _ = std::fs::remove_file(&script);
        let to = spawn_echo(&tb, "server", 8080).unwrap();
        let r = fresh_roundtrip(&tb, to).await;
        if tolerated {
            r.unwrap_or_else(|e| panic!("skew {skew}: {e}"));
        } else {
            assert!(r.is_err(), "skew {skew}: served");
            let said = eventually(Duration::from_secs(5), || async {
                plain(&tb.log("server")).contains("NotValidYet")
                    || plain(&tb.log("server")).contains("not valid yet")
            })
            .await;
            assert!(said.is_some(), "skew {skew}:\n{}", tb.log("server"));
            let log = plain(&tb.log("server"));
            let line = log.lines().find(|l| l.contains("alid")).unwrap_or_default();
            eprintln!("skew {skew}: {line}");
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum PeerQuirk {
    /// GOAWAY (graceful) right after the first stream of each connection.
    GoAwayAfterOneStream,
    /// SETTINGS_MAX_CONCURRENT_STREAMS = 0 on the first connection.
    NoStreamsOnTheFirstConnection,
}

/// A stand-in for the server's ztunnel (killed first) on its 15008: TLS with the server's
/// identity, HTTP/2 that answers each CONNECT with 200 and echoes the stream, with `quirk`.
/// Counts the connections it accepted.
fn spawn_quirky_peer(
    tb: &mut Testbed,
    quirk: PeerQuirk,
) -> std::sync::Arc<std::sync::atomic::AtomicUsize> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    tb.ztunnel("server")
        .signal(nix::sys::signal::Signal::SIGKILL)
        .unwrap();
    tb.ztunnel("server").wait_timeout(Duration::from_secs(5));
    let cert = testbed_ca(tb)
        .issue(&identity::Identity::new(
            "cluster.local",
            "default",
            "server",
        ))
        .unwrap();
    let tls = tokio_rustls::TlsAcceptor::from(hbone::tls::server_config(&cert).unwrap());
    let addr = SocketAddr::new(tb.ip("server"), hbone::HBONE_PORT);
    let l = tokio::net::TcpListener::from_std(tb.pod("server").tcp_listen(addr).unwrap()).unwrap();
    let accepted = std::sync::Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            let n = count.fetch_add(1, Ordering::SeqCst);
            let tls = tls.clone();
            tokio::spawn(async move {
                let Ok(tls) = tls.accept(tcp).await else {
                    return;
                };
                let mut b = h2::server::Builder::new();
                if quirk == PeerQuirk::NoStreamsOnTheFirstConnection && n == 0 {
                    b.max_concurrent_streams(0);
                }
                let Ok(mut conn) = b.handshake::<_, bytes::Bytes>(tls).await else {
                    return;
                };
                while let Some(Ok((req, mut respond))) = conn.accept().await {
                    let ok = http::Response::builder().status(200).body(()).unwrap();
                    let Ok(mut send) = respond.send_response(ok, false) else {
                        continue;
                    };
                    let mut body = req.into_body();
                    tokio::spawn(async move {
                        while let Some(Ok(chunk)) = body.data().await {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            send.reserve_capacity(chunk.len());
                            if send.send_data(chunk, false).is_err() {
                                return;
                            }
                        }
                        let _ = send.send_data(bytes::Bytes::new(), true);
                    });
                    if quirk == PeerQuirk::GoAwayAfterOneStream {
                        conn.graceful_shutdown();
                    }
                }
            });
        }
    });
    accepted
}

/// F3: a peer that sends GOAWAY after each stream, and one that allows no streams on its
/// first connection (SETTINGS_MAX_CONCURRENT_STREAMS = 0). Neither connection is used
/// again: each app connection is served, on a new HBONE connection, with no hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_sends_goaway_or_allows_no_streams_is_not_reused() {
    use std::sync::atomic::Ordering;
    for quirk in [
        PeerQuirk::GoAwayAfterOneStream,
        PeerQuirk::NoStreamsOnTheFirstConnection,
    ] {
        let mut tb = start(Vec::new());
        let accepted = spawn_quirky_peer(&mut tb, quirk);
        let to = SocketAddr::new(tb.ip("server"), 8080);
        let mut served = 0;
        for i in 0..3 {
            let started = Instant::now();
            let r = fresh_roundtrip(&tb, to).await;
            eprintln!(
                "{quirk:?}: connection {i}: {r:?} in {:?}",
                started.elapsed()
            );
            if r.is_ok() {
                served += 1;
            }
        }
        let conns = accepted.load(Ordering::SeqCst);
        eprintln!("{quirk:?}: {served} of 3 served over {conns} HBONE connections");
        match quirk {
            PeerQuirk::GoAwayAfterOneStream => {
                assert_eq!(served, 3);
                assert_eq!(conns, 3, "one connection per stream after each GOAWAY");
            }
            PeerQuirk::NoStreamsOnTheFirstConnection => {
                assert_eq!(served, 3);
                assert_eq!(
                    conns, 2,
                    "the first connection, unusable, was replaced once"
                );
            }
        }
    }
}
