//! The local mesh restarts what exits, as a DaemonSet, a Deployment or the kubelet would: a
//! ztunnel killed with SIGKILL is started again, its node's pods are served again, and
//! `keelson status` shows the restart.

use keelson_tests::mesh::{eventually_sync as eventually, Mesh, WAYPOINT};

fn pid_of(mesh: &Mesh, role: &str) -> i32 {
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
