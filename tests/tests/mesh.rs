//! The local mesh through the `keelson` command, as a user drives it: `keelson up` with the
//! bundled bookinfo on two nodes, unmodified clients (curl, Python) in pods, a capture on the
//! link between the nodes, a pod outside the mesh, a pod added later and deleted, node probes
//! under STRICT mTLS, a bad file, `keelson up` over a crashed mesh, and `keelson down`
//! leaving nothing behind.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use keelson_tests::mesh::{eventually_sync as eventually, prefix, Mesh};

/// The packets of a capture file, as tcpdump prints them, and its raw bytes.
fn read_capture(file: &Path) -> (String, Vec<u8>) {
    let text = netns::run("tcpdump", &["-nn", "-r", file.to_str().unwrap()]).unwrap();
    (text, std::fs::read(file).unwrap())
}

#[test]
fn the_local_mesh_runs_bookinfo_with_mtls_between_nodes() {
    let mesh = Mesh::new();
    let up = mesh.ok(&["up", "--nodes", "2"]);
    assert!(up.contains("local mesh ready: 8 pods on 2 nodes"), "{up}");
    assert!(up.contains("exec curl-0 -- curl"), "{up}");
    let status = mesh.ok(&["status"]);
    // Each pod says how it is redirected (the suite's flavour, KEELSON_TEST_REDIRECT).
    let flavour = format!(" {} ", keelson_tests::testbed::redirect_under_test().name());
    for pod in ["productpage-v1-0", "reviews-v2-0", "ratings-v1-0", "curl-0"] {
        let line = status.lines().find(|l| l.contains(pod)).unwrap_or_default();
        assert!(
            line.contains(" yes ") && line.contains(&flavour) && line.contains("Running"),
            "{status}"
        );
    }
    assert!(
        status.contains("default/productpage") && status.contains("10.96.0."),
        "{status}"
    );
    // Bookinfo spreads over the nodes, so its calls cross between them.
    let (curl, productpage) = (mesh.pod("curl-0"), mesh.pod("productpage-v1-0"));
    assert_ne!(curl["node"], productpage["node"]);

    // The inter-node link is captured while unmodified clients call services by name.
    let capture = mesh.write("capture.pcap", "");
    let node = curl["node"]
        .as_str()
        .unwrap()
        .trim_start_matches("node-")
        .to_string();
    let mut tcpdump = Command::new("ip")
        .args([
            "netns",
            "exec",
            &format!("{}-fabric", prefix()),
            "tcpdump",
            "-U",
            "-s",
            "0",
        ])
        .args(["-i", &format!("n{node}"), "-w", capture.to_str().unwrap()])
        .args(["tcp and net 10.244.0.0/16"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));

    // curl: productpage (other node) calls details and reviews, reviews v2/v3 call ratings.
    let out = mesh.exec(
        "curl",
        &[
            "curl",
            "-sS",
            "-m",
            "10",
            "http://productpage:9080/productpage",
        ],
    );
    assert!(out.ok, "{}{}\n{}", out.stdout, out.stderr, mesh.logs());
    // The page names every service version that answered.
    let page = &out.stdout;
    assert!(
        page.contains("<title>Simple Bookstore App</title>")
            && page.contains("productpage-v1 details-v1 reviews-v"),
        "{page}"
    );
    // Python's resolver and HTTP client, to the service on the other node.
    let py = "import urllib.request; print(urllib.request.urlopen('http://productpage.default.svc.cluster.local:9080/headers', timeout=10).read().decode())";
    let out = mesh.exec("curl", &["python3", "-c", py]);
    assert!(
        out.ok && out.stdout.contains("productpage-v1"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    std::thread::sleep(Duration::from_millis(500));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(tcpdump.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    );
    let _ = tcpdump.wait();
    let (packets, raw) = read_capture(&capture);
    let _ = std::fs::remove_file(&capture);
    assert!(!packets.is_empty(), "nothing captured between the nodes");
    for line in packets.lines() {
        assert!(
            line.contains(".15008 >") || line.contains(".15008:"),
            "a packet between pods of different nodes that is not HBONE:\n{line}"
        );
    }
    for plain in [
        &b"Shakespeare"[..],
        b"productpage-v1",
        b"GET /",
        b"Reviewer1",
    ] {
        assert!(
            !raw.windows(plain.len()).any(|w| w == plain),
            "plaintext {:?} on the wire",
            String::from_utf8_lossy(plain)
        );
    }

    // With eBPF redirection, status shows each pod's program and what it captured.
    if flavour == " ebpf " {
        let status = mesh.ok(&["status"]);
        let line = status
            .lines()
            .find(|l| l.starts_with("default/curl-0 "))
            .unwrap_or_default();
        let outbound: u64 = line
            .split_whitespace()
            .find_map(|w| w.strip_prefix("outbound=")?.parse().ok())
            .unwrap_or(0);
        assert!(outbound >= 2 && line.contains("dns="), "{status}");
    }

    // ztunnel's access log names both identities.
    let log = std::fs::read_to_string(mesh.home.join("logs/node-1-ztunnel.log")).unwrap();
    assert!(
        log.contains("src.identity=\"spiffe://cluster.local/ns/default/sa/curl\"")
            || log.contains("sa/bookinfo-"),
        "{log}"
    );

    // A pod outside the mesh talks plaintext to a mesh pod, which takes it through 15006.
    let outside = mesh.write(
        "outside.yaml",
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: outside\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: plain\n  namespace: outside\nspec:\n  containers:\n  - name: sleep\n    image: curlimages/curl\n    command: [\"/bin/sleep\", \"infinity\"]\n",
    );
    mesh.ok(&["apply", "-f", outside.to_str().unwrap()]);
    let reviews_ip = mesh.pod("reviews-v1-0")["ip"].as_str().unwrap().to_string();
    let out = mesh.run(&[
        "exec",
        "-n",
        "outside",
        "plain",
        "--",
        "curl",
        "-sS",
        "-m",
        "10",
        &format!("http://{reviews_ip}:9080/reviews/0"),
    ]);
    assert!(
        out.ok && out.stdout.contains("reviews-v1"),
        "{}{}",
        out.stdout,
        out.stderr
    );
    let status = mesh.ok(&["status"]);
    let line = status.lines().find(|l| l.contains("plain")).unwrap();
    assert!(line.contains(" no "), "{line}");

    // A pod created now, after the ztunnels started, is captured...
    let late = mesh.write(
        "late.yaml",
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: late\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: late\n  labels: {app: late}\nspec:\n  serviceAccountName: late\n  nodeName: node-2\n  containers:\n  - name: sleep\n    image: curlimages/curl\n    command: [\"/bin/sleep\", \"infinity\"]\n",
    );
    mesh.ok(&["apply", "-f", late.to_str().unwrap()]);
    mesh.curl("late", "http://details:9080/details/0", "details-v1");
    let late_identity = "spiffe://cluster.local/ns/default/sa/late";
    let dump = mesh.config_dump("node-2");
    assert!(dump.to_string().contains(late_identity), "{dump}");
    // ...and deleting it removes its listeners and its certificate from that ztunnel.
    mesh.ok(&["delete", "-f", late.to_str().unwrap()]);
    assert!(
        eventually(5, || !mesh
            .config_dump("node-2")
            .to_string()
            .contains(late_identity)),
        "{}",
        mesh.config_dump("node-2")
    );
    assert!(!mesh.state().to_string().contains("\"late\""));

    // Under STRICT mTLS, the node's probes (SNATed by the host rule) still reach the app,
    // while the plaintext pod outside is refused.
    let strict = mesh.write(
        "strict.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata:\n  name: default\n  namespace: default\nspec:\n  mtls:\n    mode: STRICT\n",
    );
    mesh.ok(&["apply", "-f", strict.to_str().unwrap()]);
    let reviews_node = mesh.pod("reviews-v1-0")["node"]
        .as_str()
        .unwrap()
        .to_string();
    let target: std::net::SocketAddr = format!("{reviews_ip}:9080").parse().unwrap();
    assert!(
        eventually(5, || {
            !mesh
                .run(&[
                    "exec",
                    "-n",
                    "outside",
                    "plain",
                    "--",
                    "curl",
                    "-sS",
                    "-m",
                    "3",
                    &format!("http://{reviews_ip}:9080/reviews/0"),
                ])
                .ok
        }),
        "plaintext still accepted under STRICT"
    );
    let probe = netns::http_get_at(&mesh.node_netns(&reviews_node), target, "/headers");
    assert!(
        matches!(&probe, Ok((200, body)) if body.contains("reviews-v1")),
        "{probe:?}"
    );
    mesh.curl("curl", "http://reviews:9080/reviews/0", "reviews-v");

    // Bad input: a clear error naming the file and the field, and nothing else changes.
    let bad = mesh.write(
        "bad.yaml",
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: broken\nspec:\n  rules:\n  - from:\n    - source:\n        ipBlocks: [\"10.0.0.0/99\"]\n",
    );
    let out = mesh.run(&["apply", "-f", bad.to_str().unwrap()]);
    assert!(
        !out.ok && out.stderr.contains("bad.yaml") && out.stderr.contains("ipBlocks"),
        "{}",
        out.stderr
    );
    let out = mesh.exec("nosuchpod", &["true"]);
    assert!(
        !out.ok && out.stderr.contains("no pod or deployment \"nosuchpod\""),
        "{}",
        out.stderr
    );
    mesh.curl("curl", "http://ratings:9080/ratings/0", "ratings-v1");

    // A crash (the state lost, everything still running): `keelson up` clears the leftovers.
    let pids: Vec<i64> = mesh.state()["procs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    std::fs::remove_file(mesh.home.join("mesh.json")).unwrap();
    let up = mesh.ok(&["up"]);
    assert!(up.contains("cleaning up a previous local mesh"), "{up}");
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {pid} survived: {stat}"
        );
    }
    mesh.curl(
        "curl",
        "http://productpage:9080/productpage",
        "productpage-v1",
    );

    // Down: no namespace, resolv.conf, process or state left.
    let pids: Vec<i64> = mesh.state()["procs"]
        .as_array()
        .unwrap()
        .iter()
        .chain(
            mesh.state()["pods"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|p| p["procs"].as_array().unwrap().iter()),
        )
        .map(|p| p["pid"].as_i64().unwrap())
        .collect();
    mesh.ok(&["down"]);
    assert!(mesh.netns_left().is_empty(), "{:?}", mesh.netns_left());
    assert!(!mesh.home.exists());
    let etc_left: Vec<String> = std::fs::read_dir("/etc/netns")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix()))
                .collect()
        })
        .unwrap_or_default();
    assert!(etc_left.is_empty(), "{etc_left:?}");
    for pid in &pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        assert!(
            stat.is_empty() || stat.contains(") Z "),
            "process {pid} survived: {stat}"
        );
    }
    for f in [outside, late, strict, bad] {
        let _ = std::fs::remove_file(f);
    }
    let _ = tcpdump.kill();
}
