//! The local mesh restarts what exits, as a DaemonSet, a Deployment or the kubelet would: a
//! ztunnel killed with SIGKILL is started again, its node's pods are served again, and
//! `keelson status` shows the restart.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

/// The pid of the process in `role` now: the supervisor's record once it restarted it.
fn pid_of(mesh: &Mesh, role: &str) -> i32 {
    let restarted = std::fs::read_to_string(mesh.home.join("supervisor.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|s| s["processes"][role]["current"]["pid"].as_i64());
    if let Some(pid) = restarted {
        return pid as i32;
    }
    let state = mesh.state();
    state["procs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["role"] == role)
        .and_then(|p| p["pid"].as_i64())
        .unwrap_or_else(|| panic!("no {role} in {state}")) as i32
}

fn kill(pid: i32) {
    use nix::sys::signal::{kill, Signal};
    kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL).unwrap();
}

#[test]
fn killed_processes_are_started_again() {
    let mesh = Mesh::tagged("s");
    mesh.ok(&["up"]);
    let wp = mesh.write("waypoint.yaml", WAYPOINT);
    mesh.ok(&["apply", "-f", wp.to_str().unwrap()]);
    mesh.curl(
        "curl",
        "http://productpage:9080/productpage",
        "productpage-v1",
    );
    let status = mesh.ok(&["status"]);
    assert!(status.contains("supervisor: running"), "{status}");

    // Every node's ztunnel, and the waypoint: killed, then started again.
    kill(pid_of(&mesh, "ztunnel/node-1"));
    kill(pid_of(&mesh, "ztunnel/node-2"));
    let waypoint = mesh.pod("waypoint-0");
    kill(waypoint["procs"][0]["pid"].as_i64().unwrap() as i32);
    let restarted = eventually(30, || {
        let s = mesh.ok(&["status"]);
        s.lines()
            .filter(|l| l.starts_with("node-"))
            .all(|l| l.contains("ztunnel running (restarts 1)") && l.contains("(ztunnel ready)"))
            && s.lines()
                .any(|l| l.contains("waypoint-0") && l.contains("Running"))
    });
    assert!(
        restarted,
        "{}\n{}",
        mesh.ok(&["status"]),
        std::fs::read_to_string(mesh.home.join("logs/supervisor.log")).unwrap_or_default()
    );
    // The pods are served again, through the restarted waypoint.
    assert!(
        eventually(30, || mesh
            .exec(
                "curl",
                &[
                    "curl",
                    "-sS",
                    "-m",
                    "5",
                    "http://productpage:9080/productpage"
                ]
            )
            .stdout
            .contains("productpage-v1")),
        "{}",
        mesh.logs()
    );
    let log = std::fs::read_to_string(mesh.home.join("logs/supervisor.log")).unwrap();
    assert!(log.contains("process restarted"), "{log}");
}

fn in_pod_rules(mesh: &Mesh, pod: &str) -> String {
    keelson_tests::redirection_state(&pod_netns(mesh, pod))
}

fn pod_netns(mesh: &Mesh, pod: &str) -> std::path::PathBuf {
    netns::netns_path(mesh.pod(&format!("{pod}-0"))["netns"].as_str().unwrap())
}

fn enrolled(mesh: &Mesh, node: &str) -> Vec<String> {
    let mut pods: Vec<String> = mesh.config_dump(node)["workloadState"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p["name"].as_str().map(String::from))
        .collect();
    pods.sort();
    pods
}

/// F11 of docs/HARDENING.md: the node agent (the CNI DaemonSet) killed and started again.
/// Its ztunnel must keep every pod it had (the new agent's snapshot names them all), their
/// in-pod rules stay as they were (not doubled, not removed), and traffic from the pods
/// still goes through ztunnel: never a bypass, never an outage. The second time the pod's
/// rules were removed while the agent was down (a node reboot): the agent restores them.
#[test]
fn a_restarted_node_agent_keeps_its_pods_captured() {
    let mesh = Mesh::tagged("a");
    mesh.ok(&["up"]);
    mesh.curl(
        "curl",
        "http://productpage:9080/productpage",
        "productpage-v1",
    );
    let node = mesh.pod("curl-0")["node"].as_str().unwrap().to_string();
    let pods_before = enrolled(&mesh, &node);
    assert!(
        pods_before.iter().any(|p| p.starts_with("curl")),
        "{pods_before:?}"
    );
    let rules_before = in_pod_rules(&mesh, "curl");
    assert!(
        cni_plugin::redirect::installed(&pod_netns(&mesh, "curl")),
        "{rules_before}"
    );
    let opened = |mesh: &Mesh| {
        let (_, m) = netns::http_get_at(
            &mesh.node_netns(&node),
            "127.0.0.1:15020".parse().unwrap(),
            "/metrics",
        )
        .unwrap();
        keelson_tests::metric_value(
            &m,
            "istio_tcp_connections_opened_total",
            &[("reporter", "source")],
        )
        .unwrap_or(0.0)
    };

    for round in 1..=2 {
        if round == 2 {
            // As after a node reboot: the pod's rules are gone when the agent starts; it
            // must put them back, or the pod's traffic would bypass ztunnel.
            cni_plugin::redirect::remove(&pod_netns(&mesh, "curl")).unwrap();
            assert!(!cni_plugin::redirect::installed(&pod_netns(&mesh, "curl")));
        }
        kill(pid_of(&mesh, &format!("cni-agent/{node}")));
        let restarted = eventually(30, || {
            mesh.ok(&["status"]).lines().any(|l| {
                l.starts_with(&node) && l.contains(&format!("cni-agent running (restarts {round})"))
            })
        });
        assert!(restarted, "{}", mesh.ok(&["status"]));
        // Give ztunnel time to reconnect to the new agent and take its snapshot.
        std::thread::sleep(std::time::Duration::from_secs(2));
        assert_eq!(enrolled(&mesh, &node), pods_before, "round {round}");
        assert_eq!(in_pod_rules(&mesh, "curl"), rules_before, "round {round}");
        let before = opened(&mesh);
        mesh.curl(
            "curl",
            "http://productpage:9080/productpage",
            "productpage-v1",
        );
        assert!(
            opened(&mesh) > before,
            "round {round}: the request did not pass ztunnel"
        );
    }
}

/// `keelson restart ztunnel/NODE`, the rollout of a node's ztunnel: handed off to a new
/// process with no downtime. Requests keep flowing from a pod of that node to the other
/// (a new connection every 100 ms, and a slow one open across the hand-off): none fails,
/// and `keelson status` counts the restart.
#[test]
fn a_requested_ztunnel_restart_fails_no_request() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let mesh = Arc::new(Mesh::tagged("h"));
    mesh.ok(&["up"]);
    mesh.curl(
        "curl",
        "http://productpage:9080/productpage",
        "productpage-v1",
    );
    let node = mesh.pod("curl-0")["node"].as_str().unwrap().to_string();
    let old_pid = pid_of(&mesh, &format!("ztunnel/{node}"));

    let stop = Arc::new(AtomicBool::new(false));
    let (made, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let traffic = {
        let (mesh, stop, made, failed) = (mesh.clone(), stop.clone(), made.clone(), failed.clone());
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                let out = mesh.exec(
                    "curl",
                    &["curl", "-sS", "-m", "10", "http://details:9080/details/0"],
                );
                made.fetch_add(1, Ordering::SeqCst);
                if !(out.ok && out.stdout.contains("details")) {
                    failed.fetch_add(1, Ordering::SeqCst);
                    errors.push(format!("{}{}", out.stdout, out.stderr));
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            errors
        })
    };
    // A slow request, open while the old ztunnel drains.
    let slow = {
        let mesh = mesh.clone();
        std::thread::spawn(move || {
            mesh.exec(
                "curl",
                &["curl", "-sS", "-m", "20", "http://details:9080/delay/3000"],
            )
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(500));
    let said = mesh.ok(&["restart", &format!("ztunnel/{node}")]);
    assert!(said.contains("restarted"), "{said}");
    let at_restart = made.load(Ordering::SeqCst);
    let slow = slow.join().unwrap();
    // Traffic goes on until ten requests in all, five of them after the restart (counted,
    // not timed: a loaded machine makes fewer per second), within a bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::time::Instant::now() < deadline {
        let n = made.load(Ordering::SeqCst);
        if n >= 10 && n >= at_restart + 5 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    stop.store(true, Ordering::SeqCst);
    let errors = traffic.join().unwrap();
    let (made, failed) = (made.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!("{made} requests across the hand-off, {failed} failed");
    assert!(
        slow.ok && slow.stdout.contains("details"),
        "the slow request: {}{}",
        slow.stdout,
        slow.stderr
    );
    assert_eq!(failed, 0, "{errors:?}");
    assert!(made >= 10, "{made}");
    let new_pid = pid_of(&mesh, &format!("ztunnel/{node}"));
    assert_ne!(new_pid, old_pid);
    let status = mesh.ok(&["status"]);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with(&node) && l.contains("ztunnel running (restarts 1)")),
        "{status}"
    );
    // The old process is gone once it drained.
    assert!(eventually(15, || std::fs::metadata(format!(
        "/proc/{old_pid}"
    ))
    .is_err()
        || std::fs::read_to_string(format!("/proc/{old_pid}/stat"))
            .is_ok_and(|s| s.contains(") Z"))));
}
