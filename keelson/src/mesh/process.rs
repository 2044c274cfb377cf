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
