//! A child process that is stopped (SIGTERM, then SIGKILL) when its handle is dropped, and
//! where to find the workspace binaries to start.

use std::process::{Child, ExitStatus};
use std::time::{Duration, Instant};

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

pub struct Proc {
    name: String,
    child: Option<Child>,
}

impl Proc {
    pub fn new(name: &str, child: Child) -> Self {
        Proc {
            name: name.to_string(),
            child: Some(child),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn signal(&self, sig: Signal) -> Result<()> {
        kill(Pid::from_raw(self.pid() as i32), sig)?;
        Ok(())
    }

    /// The exit status if the process has ended.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.try_wait() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// SIGTERM, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_wait() {
            return Some(s);
        }
        let _ = self.signal(Signal::SIGTERM);
        if let Some(s) = self.wait_timeout(grace) {
            return Some(s);
        }
        let _ = self.signal(Signal::SIGKILL);
        self.child.as_mut()?.wait().ok()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(2));
    }
}

/// Finds a binary of this workspace: `$KEELSON_<NAME>_BIN`, else next to the running
/// executable or one level up (test executables live in `target/<profile>/deps`).
pub fn find_binary(name: &str) -> Result<PathBuf> {
    let var = format!(
        "KEELSON_{}_BIN",
        name.to_ascii_uppercase().replace('-', "_")
    );
    if let Ok(p) = std::env::var(&var) {
        return Ok(PathBuf::from(p));
    }
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(Path::to_path_buf);
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "target") {
            break;
        }
        dir = d.parent().map(Path::to_path_buf);
    }
    bail!(
        "cannot find the {name} binary near {} (build it with `cargo build --bins`, or set {var})",
        exe.display()
    )
}

/// Kills every process whose network namespace is `name` (what `keelson exec` or a pod's
/// command started and left behind).
pub fn kill_all_in(name: &str) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(target) = std::fs::metadata(crate::netns_path(name)) else {
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
