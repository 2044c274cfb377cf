//! Shared (in-pod) mode: one ztunnel for the node, handed each pod's network namespace over
//! ZDS by the node agent, listening and connecting inside the pods; identities from the
//! control plane's CA by impersonation.

use std::net::SocketAddr;
use std::time::Duration;

use keelson_tests::testbed::{SERVICE_PORT, SERVICE_VIP, SHARED_NODE_POD};
use keelson_tests::*;

fn identities(d: &serde_json::Value) -> Vec<String> {
    d["certificates"]
        .as_array()
        .map(|c| {
            c.iter()
                .filter(|c| c["state"] == "available")
                .filter_map(|c| c["identity"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn pods(d: &serde_json::Value) -> Vec<String> {
    d["workloadState"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter_map(|p| p["name"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_ztunnel_serves_every_pod_from_inside_its_namespace() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    let vip = SocketAddr::new(SERVICE_VIP.into(), SERVICE_PORT);
    let server = SocketAddr::new(tb.ip("server"), 8080);

    // Both pods are enrolled, with a certificate each, issued to the node's ztunnel by
    // impersonation.
    let d = tb.config_dump(SHARED_NODE_POD).unwrap();
    assert_eq!(pods(&d), vec!["client", "server"], "{d}");
    // The admin shows the allocator's view of the heap.
    let (status, body) = tb
        .http_get(
            SHARED_NODE_POD,
            "127.0.0.1:15000".parse().unwrap(),
            "/debug/memory",
        )
        .unwrap();
    let mem: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(
        status == 200 && mem["allocated"].as_u64() > Some(0) && mem["resident"].as_u64() > Some(0),
        "{body}"
    );
    let took = eventually(Duration::from_secs(5), || async {
        let ids = identities(&tb.config_dump(SHARED_NODE_POD).unwrap());
        ids.contains(&"spiffe://cluster.local/ns/default/sa/client".to_string())
            && ids.contains(&"spiffe://cluster.local/ns/default/sa/server".to_string())
    })
    .await;
    assert!(
        took.is_some(),
        "{}",
        tb.config_dump(SHARED_NODE_POD).unwrap()
    );

    // Client → service VIP: captured in the client pod, HBONE to the server pod's 15008 (in
    // its namespace), mTLS with both pods' identities.
    assert_eq!(
        greeting(&tb, "client", vip).await.as_deref(),
        Some("server")
    );
    let m = tb.metrics(SHARED_NODE_POD).unwrap();
    let mtls = metric_value(
        &m,
        "istio_tcp_connections_opened_total",
        &[
            ("reporter", "destination"),
            ("connection_security_policy", "mutual_tls"),
            (
                "source_principal",
                "spiffe://cluster.local/ns/default/sa/client",
            ),
            (
                "destination_principal",
                "spiffe://cluster.local/ns/default/sa/server",
            ),
        ],
    );
    assert_eq!(mtls, Some(1.0), "{m}");
    // The HBONE connection left from the client pod's own address (made in its namespace),
    // not from the node's.
    // (The record is written when the server side closes, which may trail the client.)
    let inbound_record = || {
        plain(&tb.log(SHARED_NODE_POD))
            .lines()
            .find(|l| l.contains("direction=inbound") && l.contains("src.identity"))
            .map(String::from)
    };
    let logged = eventually(Duration::from_secs(5), || async {
        inbound_record().is_some()
    })
    .await;
    assert!(logged.is_some(), "no inbound HBONE access record");
    let inbound = inbound_record().unwrap();
    assert!(inbound.contains("src.addr=10.10.0.2:"), "{inbound}");

    // A pod outside the mesh reaches the server in plaintext, through 15006 in its namespace.
    assert_eq!(
        greeting(&tb, "outsider", server).await.as_deref(),
        Some("server")
    );

    // CNI ADD again (a runtime retry) changes nothing.
    let rules = |pod: &str| {
        let all = tb.pod(pod).exec("iptables-save", &[]).unwrap();
        // Without the timestamped comment lines.
        all.lines()
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let before = rules("client");
    tb.cni("ADD", "client").unwrap();
    assert_eq!(rules("client"), before);
    assert_eq!(
        pods(&tb.config_dump(SHARED_NODE_POD).unwrap()),
        vec!["client", "server"]
    );
    // The pod outside the mesh was not touched.
    assert!(!rules("outsider").contains("KEELSON"));

    // The server pod is deleted (CNI DEL): its proxies and certificate go, the client's stay.
    tb.cni("DEL", "server").unwrap();
    let took = eventually(Duration::from_secs(5), || async {
        let d = tb.config_dump(SHARED_NODE_POD).unwrap();
        pods(&d) == vec!["client"]
            && !identities(&d).contains(&"spiffe://cluster.local/ns/default/sa/server".to_string())
    })
    .await;
    assert!(
        took.is_some(),
        "{}",
        tb.config_dump(SHARED_NODE_POD).unwrap()
    );
    // Its in-pod rules are gone with it.
    assert!(!rules("server").contains("KEELSON"), "{}", rules("server"));

    // And created again (a pod created after ztunnel started): captured again.
    tb.cni("ADD", "server").unwrap();
    assert_eq!(
        greeting(&tb, "outsider", server).await.as_deref(),
        Some("server")
    );
    assert_eq!(
        greeting(&tb, "client", vip).await.as_deref(),
        Some("server")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_cannot_start_unmeshed_when_ztunnel_is_down() {
    let mut tb = Testbed::start(Options {
        pods: vec![PodSpec::meshed("client"), PodSpec::meshed("late")],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    tb.cni("DEL", "late").unwrap();
    tb.ztunnel(SHARED_NODE_POD).stop(Duration::from_secs(5));
    let err = tb.cni("ADD", "late").unwrap_err().to_string();
    // The runtime gets the spec's error object: code 100, the pod, and why.
    assert!(err.contains("\"code\":100"), "{err}");
    assert!(
        err.contains("default/late") && err.contains("ztunnel"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_ztunnel_gets_the_snapshot_and_resumes() {
    let mut tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    let vip = SocketAddr::new(SERVICE_VIP.into(), SERVICE_PORT);
    assert_eq!(
        greeting(&tb, "client", vip).await.as_deref(),
        Some("server")
    );
    tb.restart_shared_ztunnel().unwrap();
    // The new process was handed both pods by the node agent (no CNI call in between).
    assert_eq!(
        pods(&tb.config_dump(SHARED_NODE_POD).unwrap()),
        vec!["client", "server"]
    );
    assert_eq!(
        greeting(&tb, "client", vip).await.as_deref(),
        Some("server")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_probes_are_not_captured() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    let server = SocketAddr::new(tb.ip("server"), 8080);
    // STRICT mTLS: plaintext to the server is refused by its ztunnel...
    tb.write_resources(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: STRICT}}\n",
    )
    .unwrap();
    let took = eventually(Duration::from_secs(5), || async {
        tb.config_dump(SHARED_NODE_POD)
            .map(|d| {
                d["policies"]
                    .to_string()
                    .contains("istio_converted_static_strict")
            })
            .unwrap_or(false)
    })
    .await;
    assert!(took.is_some());
    assert_eq!(greeting(&tb, "outsider", server).await, None);
    // ...but a node probe (SNATed to 169.254.7.127) goes straight to the app.
    let node = tb.pod(SHARED_NODE_POD);
    node.ip(&["addr", "add", "169.254.7.127/32", "dev", "eth0"])
        .unwrap();
    let reply = node
        .run(move || -> std::io::Result<String> {
            use std::io::Read;
            let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
            s.bind(&SocketAddr::from(([169, 254, 7, 127], 0)).into())?;
            s.connect_timeout(&server.into(), Duration::from_secs(5))?;
            let mut s: std::net::TcpStream = s.into();
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            Ok(out)
        })
        .unwrap()
        .unwrap();
    assert_eq!(reply, "server");
}

/// One request over a new connection from inside `ns` (blocking): the echo came back.
fn echo_once(ns: &std::path::Path, to: SocketAddr, n: usize) -> Result<(), String> {
    use std::io::{Read, Write};
    let mut s = netns::run_at(ns, move || {
        std::net::TcpStream::connect_timeout(&to, Duration::from_secs(5))
    })
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let msg = format!("request {n}\n");
    s.write_all(msg.as_bytes())
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).map_err(|e| format!("read: {e}"))?;
    if back != msg.as_bytes() {
        return Err(format!("wrong echo {:?}", String::from_utf8_lossy(&back)));
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_ztunnel_takes_over_before_the_old_one_drains() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let mut tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        ..Options::default()
    })
    .unwrap();
    spawn_echo(&tb, "server", 8080).unwrap();
    let server = SocketAddr::new(tb.ip("server"), 8080);
    let client_ns = tb.pod("client").path();

    // New connections, one after another, for the whole hand-off.
    let stop = Arc::new(AtomicBool::new(false));
    let looping = {
        let (stop, ns) = (stop.clone(), client_ns.clone());
        std::thread::spawn(move || {
            let (mut ok, mut failed) = (0usize, Vec::new());
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5000 {
                n += 1;
                match echo_once(&ns, server, n) {
                    Ok(()) => ok += 1,
                    Err(e) => failed.push(format!("request {n}: {e}")),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (ok, failed)
        })
    };
    // A connection established before the hand-off.
    let mut long = netns::run_at(&client_ns, move || {
        std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5))
    })
    .unwrap()
    .unwrap();
    long.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 6];
    long.write_all(b"before").unwrap();
    long.read_exact(&mut buf).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let (mut old, next_log) = tb.hand_off_shared_ztunnel().unwrap();
    // The old ztunnel drains: the established connection still works...
    std::thread::sleep(Duration::from_millis(700));
    assert!(
        old.try_wait().is_none(),
        "the old ztunnel quit with a connection open"
    );
    long.write_all(b"during").unwrap();
    long.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"during");
    // ...and once it is closed the old ztunnel is done.
    drop(long);
    assert!(
        old.wait_timeout(Duration::from_secs(15)).is_some(),
        "the old ztunnel did not finish draining"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::Relaxed);
    let (ok, failed) = looping.join().unwrap();
    assert!(
        failed.is_empty(),
        "{} of {} connections failed during the hand-off: {:?}\nold:\n{}\nnew:\n{}",
        failed.len(),
        ok + failed.len(),
        &failed[..failed.len().min(5)],
        plain(&tb.log(SHARED_NODE_POD)),
        plain(&std::fs::read_to_string(&next_log).unwrap_or_default())
    );
    assert!(ok > 20, "only {ok} connections were made");
    // The new process serves the traffic now.
    let next = std::fs::read_to_string(&next_log).unwrap();
    assert!(next.contains("connection complete"), "{next}");
}

/// What each redirection flavour must do the same way: outbound through the VIP with mTLS,
/// inbound plaintext from outside the mesh through 15006, DNS through 15053; ADD again
/// changes nothing in the client pod, DEL leaves no trace of the flavour there.
async fn captures_the_same_way(
    redirect: cni_plugin::redirect::Redirect,
    check_rules: impl Fn(&str),
) {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
            PodSpec::plain("outsider"),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        redirect,
        ..Options::default()
    })
    .unwrap();
    spawn_greeter(&tb, "server", 8080).unwrap();
    let client_rules = client_state(&tb);
    check_rules(&client_rules);
    // A pod outside the mesh is left alone: no rules, no routes, no program.
    let outsider = redirection_state(&tb.pod("outsider").path());
    assert!(
        !cni_plugin::redirect::installed(&tb.pod("outsider").path())
            && !outsider.contains("lookup 100")
            && state_section(&outsider, "pins").is_empty(),
        "{outsider}"
    );
    let vip = SocketAddr::new(SERVICE_VIP.into(), SERVICE_PORT);
    let g = greeting(&tb, "client", vip).await;
    assert_eq!(g.as_deref(), Some("server"));
    let m = tb.metrics(SHARED_NODE_POD).unwrap();
    assert_eq!(
        metric_value(
            &m,
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "mutual_tls"),
            ],
        ),
        Some(1.0),
        "{m}"
    );
    let server = SocketAddr::new(tb.ip("server"), 8080);
    assert_eq!(
        greeting(&tb, "outsider", server).await.as_deref(),
        Some("server")
    );
    assert_eq!(
        metric_value(
            &tb.metrics(SHARED_NODE_POD).unwrap(),
            "istio_tcp_connections_opened_total",
            &[
                ("reporter", "destination"),
                ("connection_security_policy", "unknown"),
            ],
        ),
        Some(1.0),
    );
    tb.pod("client")
        .set_resolv_conf("nameserver 10.96.0.10\n")
        .unwrap();
    let resolved = tb.pod("client").exec(
        "python3",
        &[
            "-c",
            "import socket; print(socket.gethostbyname('echo.default.svc.cluster.local'))",
        ],
    );
    assert_eq!(
        resolved.as_ref().map(|s| s.trim()).ok(),
        Some(SERVICE_VIP.to_string().as_str()),
        "{resolved:?}"
    );
    // ADD again changes nothing; DEL removes everything.
    tb.cni("ADD", "client").unwrap();
    assert_eq!(client_state(&tb), client_rules);
    tb.cni("DEL", "client").unwrap();
    let after = client_state(&tb);
    assert!(
        !after.contains("keelson") && !after.contains("lookup 100"),
        "{after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nftables_flavour_captures_the_same_way() {
    captures_the_same_way(cni_plugin::redirect::Redirect::Nftables, |rules| {
        assert!(
            rules.contains("table inet keelson-ambient-nat")
                && rules.contains("redirect to :15001"),
            "{rules}"
        );
    })
    .await;
}

/// What the redirection flavour put in the client pod.
fn client_state(tb: &Testbed) -> String {
    redirection_state(&tb.pod("client").path())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ebpf_flavour_captures_the_same_way_without_netfilter() {
    captures_the_same_way(cni_plugin::redirect::Redirect::Ebpf, |state| {
        // Not one netfilter rule in the pod: no iptables chain, no nft table.
        assert!(!state_section(state, "iptables").contains("-A "), "{state}");
        assert!(state_section(state, "nft").is_empty(), "{state}");
        assert!(
            state_section(state, "rules").contains("iif lo ipproto tcp lookup 100"),
            "{state}"
        );
        assert!(
            state_section(state, "table 100").contains("local default dev lo"),
            "{state}"
        );
        assert_eq!(
            state_section(state, "pins"),
            "counters link listeners pod_addrs"
        );
    })
    .await;
}

/// IPv6 through the eBPF flavour: pods with a v6 address get v6 routes and their v6 address
/// in the program's map; outbound v6 TCP goes through the client's ztunnel (passed through,
/// the address is not in the mesh), and arrives at the server pod's ztunnel on 15006.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ebpf_flavour_captures_ipv6_too() {
    let tb = Testbed::start(Options {
        pods: vec![
            PodSpec::meshed("client"),
            PodSpec::meshed("server").serving_echo(8080),
        ],
        source: Source::ControlPlane,
        shared_ztunnel: true,
        redirect: cni_plugin::redirect::Redirect::Ebpf,
        ..Options::default()
    })
    .unwrap();
    for (pod, addr) in [("client", "fd00:10::2/64"), ("server", "fd00:10::3/64")] {
        let ns = tb.pod(pod);
        ns.ip(&["-6", "addr", "add", addr, "dev", "eth0", "nodad"])
            .unwrap();
        // Enrolled again, so that the flavour sees the new address.
        tb.cni("DEL", pod).unwrap();
        tb.cni("ADD", pod).unwrap();
        let state = redirection_state(&ns.path());
        assert!(
            state_section(&state, "rules").contains("to fd00:10::"),
            "{state}"
        );
    }
    let server = SocketAddr::from(("fd00:10::3".parse::<std::net::Ipv6Addr>().unwrap(), 8080));
    let l =
        tokio::net::TcpListener::from_std(tb.pod("server").tcp_listen(server).unwrap()).unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = l.accept().await {
            let _ = s.write_all(b"server over v6").await;
        }
    });
    let counters = |pod: &str| {
        let c = ebpf::cookie_at(&tb.pod(pod).path()).unwrap();
        ebpf::counters(&ebpf::pin_root(), c).unwrap()
    };
    let (client_before, server_before) = (counters("client"), counters("server"));
    assert_eq!(
        greeting(&tb, "client", server).await.as_deref(),
        Some("server over v6")
    );
    assert_eq!(counters("client").outbound, client_before.outbound + 1);
    assert_eq!(counters("server").inbound, server_before.inbound + 1);
}

/// A node agent asked for eBPF redirection without the privileges for it stops at start,
/// saying what is missing, before it takes any pod.
#[test]
fn an_agent_that_cannot_load_the_ebpf_program_says_why_at_start() {
    let dir = std::env::temp_dir().join(format!("keelson-noebpf-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bin = netns::find_binary("keelson-cni").unwrap();
    // Root, but with every capability dropped from the bounding set: no CAP_BPF, no
    // CAP_SYS_ADMIN, as in a container not granted them.
    let out = std::process::Command::new("setpriv")
        .args(["--bounding-set=-all", "--inh-caps=-all", "--"])
        .arg(&bin)
        .args(["agent", "--redirect", "ebpf", "--socket"])
        .arg(dir.join("cni.sock"))
        .arg("--zds-socket")
        .arg(dir.join("ztunnel.sock"))
        .arg("--resources")
        .arg(&dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // It stopped before binding its socket, so no runtime could reach it.
    let bound = dir.join("cni.sock").exists();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("eBPF redirection is not available"),
        "{stderr}"
    );
    assert!(
        stderr.contains("CAP_"),
        "the missing capability is named: {stderr}"
    );
    assert!(!bound, "the agent bound its socket before failing");
}
