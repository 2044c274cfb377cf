//! The mesh's processes: started inside a namespace, stopped by pid only if still the
//! recorded process, and whatever a crashed run left in a namespace killed.

use anyhow::{Context, Result};
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::*;

/// Starts `program` inside `netns` in its own process group (it outlives this command),
/// output appended to `log`.
pub(super) fn spawn_in(
    netns: &str,
    program: &Path,
    args: &[String],
    env: &[(&str, &str)],
    log: &Path,
    role: &str,
) -> Result<ProcRecord> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    let child = Command::new("ip")
        .args(["netns", "exec", netns])
        .arg(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {role}"))?;
    let pid = child.id() as i32;
    // `ip netns exec` execs the program in place: the pid is the program's. Its start time
    // is read once it is there.
    let start = proc_start(pid).with_context(|| format!("{role} exited at once"))?;
    Ok(ProcRecord {
        role: role.to_string(),
        pid,
        start,
        log: log.to_path_buf(),
        spec: Some(supervise::Spawn {
            netns: netns.to_string(),
            program: program.to_path_buf(),
            args: args.to_vec(),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }),
    })
}

/// SIGTERM, then SIGKILL after `grace`; only if the pid is still the recorded process.
pub(super) fn stop(p: &ProcRecord, grace: Duration) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if !p.alive() {
        return;
    }
    let _ = kill(Pid::from_raw(p.pid), Signal::SIGTERM);
    let deadline = Instant::now() + grace;
    while p.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if p.alive() {
        let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
    }
}

/// Kills every process whose network namespace is `name` (what `keelson exec` or a pod's
/// command started and left behind).
pub(super) fn kill_in_netns(name: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(target) = std::fs::metadata(netns::netns_path(name)) else {
        return;
    };
    let inside = || -> Vec<i32> {
        let Ok(dir) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                std::fs::metadata(format!("/proc/{pid}/ns/net"))
                    .is_ok_and(|m| m.ino() == target.ino() && m.dev() == target.dev())
            })
            .collect()
    };
    for sig in [Signal::SIGTERM, Signal::SIGKILL] {
        let pids = inside();
        if pids.is_empty() {
            return;
        }
        for pid in pids {
            let _ = kill(Pid::from_raw(pid), sig);
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline && !inside().is_empty() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
