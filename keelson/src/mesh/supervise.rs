//! What the DaemonSet and Deployment controllers and the kubelet do for a cluster: a process
//! of the local mesh that exits (the control plane, a node agent, a ztunnel, a waypoint or an
//! app container) is started again, with a back-off that doubles from 1 s up to 30 s and
//! starts over once a process has run 30 s. `keelson up` starts this loop as a process of its
//! own (`keelson supervise`); `keelson status` shows each process's restarts, and `keelson
//! down` stops the loop before anything else.
//!
//! The loop never writes `mesh.json` (the other commands do): what it restarted, and how
//! often, is in `supervisor.json` beside it.
//!
//! `keelson restart ROLE` asks the loop for a deliberate restart (a rollout): a node's
//! ztunnel is handed off with no downtime, as a DaemonSet rolling update with the in-pod
//! hand-off does: the new process starts beside the old one (its listeners join the old
//! ones' SO_REUSEPORT groups), takes every pod from the node agent, and only then is the old
//! one told to drain (SIGTERM). Other processes are stopped, then started.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{spawn_in, MeshState, Paths, ProcRecord};

const POLL: Duration = Duration::from_millis(500);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A process that ran this long before exiting starts its back-off over.
const STABLE: Duration = Duration::from_secs(30);

/// How to start a process again: what `spawn_in` was given.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spawn {
    pub netns: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

/// One supervised process: the one running now, and its history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Supervised {
    /// The process started last (by `keelson up` or by this loop).
    pub current: ProcRecord,
    pub restarts: u32,
    /// Seconds since the epoch when it was last seen to exit, and when it may start again.
    pub exited_at: u64,
    pub retry_at: u64,
    pub backoff_secs: u64,
    pub started_at: u64,
}

impl Supervised {
    /// A process as a mesh command started it: no restarts yet.
    fn new(p: &ProcRecord) -> Supervised {
        Supervised {
            current: p.clone(),
            restarts: 0,
            exited_at: 0,
            retry_at: 0,
            backoff_secs: 0,
            started_at: p.start_epoch(),
        }
    }
}

/// `supervisor.json`: supervised processes by role.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Record {
    pub processes: BTreeMap<String, Supervised>,
}

impl Record {
    pub fn load(paths: &Paths) -> Record {
        std::fs::read_to_string(file(paths))
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = file(paths).with_extension("json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, file(paths))?;
        Ok(())
    }

    /// The process running for `p`'s role now: a restarted one, or `p` itself.
    pub fn current<'a>(&'a self, p: &'a ProcRecord) -> &'a ProcRecord {
        match self.processes.get(&p.role) {
            Some(s) if s.started_at >= p.start_epoch() => &s.current,
            _ => p,
        }
    }

    pub fn restarts(&self, role: &str) -> u32 {
        self.processes.get(role).map_or(0, |s| s.restarts)
    }
}

fn file(paths: &Paths) -> PathBuf {
    paths.home.join("supervisor.json")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Every process of the mesh that can be started again, by role.
fn supervised(state: &MeshState) -> Vec<&ProcRecord> {
    state
        .procs
        .iter()
        .chain(state.pods.iter().flat_map(|p| p.procs.iter()))
        .filter(|p| p.spec.is_some())
        .collect()
}

/// `keelson supervise INSTANCE`: runs until the mesh made by that `keelson up` is gone (no
/// `mesh.json`, or one of another mesh).
pub fn run(paths: &Paths, instance: &str) -> Result<()> {
    let mut record = Record::load(paths);
    loop {
        let state = match MeshState::load(paths) {
            Ok(s) if s.instance == instance => s,
            _ => {
                tracing::info!("the mesh is gone; supervisor stopping");
                return Ok(());
            }
        };
        let mut changed = false;
        for role in take_requests(paths) {
            changed |= restart_on_request(&state, &mut record, &role);
        }
        if pass(&state, &mut record) || changed {
            record.save(paths)?;
        }
        std::thread::sleep(POLL);
    }
}

fn requests_dir(paths: &Paths) -> PathBuf {
    paths.home.join("restart-requests")
}

/// Asks the supervisor of the mesh at `paths` to restart `role` (`keelson restart`).
pub fn request_restart(paths: &Paths, role: &str) -> Result<()> {
    let dir = requests_dir(paths);
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join(role.replace('/', "__")), role)?;
    Ok(())
}

/// The roles asked for since the last look; each request is taken once.
fn take_requests(paths: &Paths) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(requests_dir(paths)) else {
        return Vec::new();
    };
    let mut roles = Vec::new();
    for e in entries.flatten() {
        if let Ok(role) = std::fs::read_to_string(e.path()) {
            roles.push(role);
        }
        let _ = std::fs::remove_file(e.path());
    }
    roles
}

/// How long a new ztunnel may take to serve every pod of its node before a hand-off is
/// abandoned (the old one keeps serving).
const HAND_OFF_WITHIN: Duration = Duration::from_secs(20);

/// A deliberate restart of `role`; true when the record changed.
fn restart_on_request(state: &MeshState, record: &mut Record, role: &str) -> bool {
    let Some(p) = supervised(state).into_iter().find(|p| p.role == role) else {
        tracing::warn!(%role, "restart asked for a process the mesh does not have");
        return false;
    };
    let entry = record
        .processes
        .entry(p.role.clone())
        .or_insert_with(|| Supervised::new(p));
    let old = entry.current.clone();
    let started = match role.strip_prefix("ztunnel/") {
        Some(node) => hand_off(state, p, &old, node),
        None => {
            super::stop(&old, Duration::from_secs(10));
            respawn(p)
        }
    };
    match started {
        Ok(new) => {
            entry.restarts += 1;
            entry.started_at = now();
            tracing::info!(%role, old_pid = old.pid, pid = new.pid, restarts = entry.restarts, "process restarted on request");
            entry.current = new;
            true
        }
        Err(e) => {
            tracing::warn!(%role, error = format!("{e:#}"), "restart on request failed; the running process stays");
            false
        }
    }
}

/// Starts `p` again from its spec.
fn respawn(p: &ProcRecord) -> Result<ProcRecord> {
    let spec = p
        .spec
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("{} cannot be started again", p.role))?;
    let env: Vec<(&str, &str)> = spec
        .env
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    spawn_in(
        &spec.netns,
        &spec.program,
        &spec.args,
        &env,
        &p.log,
        &p.role,
    )
}

/// A new ztunnel for `node` beside `old`; once it serves every enrolled pod of the node
/// (its log, appended to the same file, says so), `old` gets SIGTERM and drains.
fn hand_off(state: &MeshState, p: &ProcRecord, old: &ProcRecord, node: &str) -> Result<ProcRecord> {
    let pods = state
        .pods
        .iter()
        .filter(|x| x.node == node && x.enrolled)
        .count();
    let offset = std::fs::metadata(&p.log).map_or(0, |m| m.len());
    let new = respawn(p)?;
    let deadline = std::time::Instant::now() + HAND_OFF_WITHIN;
    loop {
        let text = std::fs::read(&p.log).unwrap_or_default();
        let since = String::from_utf8_lossy(text.get(offset as usize..).unwrap_or_default());
        if since.matches("pod enrolled").count() >= pods && since.contains("xds stream open") {
            break;
        }
        if !new.alive() || std::time::Instant::now() > deadline {
            super::stop(&new, Duration::from_secs(1));
            anyhow::bail!("the new ztunnel did not take the node's {pods} pods over");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    if old.alive() {
        use nix::sys::signal::{kill, Signal};
        let _ = kill(nix::unistd::Pid::from_raw(old.pid), Signal::SIGTERM);
    }
    Ok(new)
}

/// One look at every process; true when the record changed.
fn pass(state: &MeshState, record: &mut Record) -> bool {
    let mut changed = false;
    let roles: Vec<&str> = supervised(state).iter().map(|p| p.role.as_str()).collect();
    // Roles gone from the mesh (a deleted pod) are forgotten.
    let before = record.processes.len();
    record
        .processes
        .retain(|role, _| roles.contains(&role.as_str()));
    changed |= record.processes.len() != before;
    for p in supervised(state) {
        let t = now();
        let entry = record
            .processes
            .entry(p.role.clone())
            .or_insert_with(|| Supervised::new(p));
        if p.start_epoch() > entry.started_at {
            // Started anew by a mesh command (a pod deleted and applied again).
            *entry = Supervised::new(p);
            changed = true;
        }
        if entry.current.alive() {
            continue;
        }
        if entry.exited_at < entry.started_at || entry.exited_at == 0 {
            // Newly seen dead: schedule its restart.
            let ran = t.saturating_sub(entry.started_at);
            entry.backoff_secs = if ran >= STABLE.as_secs() || entry.backoff_secs == 0 {
                FIRST_BACKOFF.as_secs()
            } else {
                (entry.backoff_secs * 2).min(MAX_BACKOFF.as_secs())
            };
            entry.exited_at = t;
            entry.retry_at = t + entry.backoff_secs;
            tracing::warn!(role = %p.role, pid = entry.current.pid, retry_in_secs = entry.backoff_secs, "process exited");
            changed = true;
        }
        if t < entry.retry_at {
            continue;
        }
        if p.spec.is_none() {
            continue;
        }
        match respawn(p) {
            Ok(new) => {
                entry.restarts += 1;
                entry.started_at = now();
                tracing::info!(role = %p.role, pid = new.pid, restarts = entry.restarts, "process restarted");
                entry.current = new;
            }
            Err(e) => {
                entry.backoff_secs = (entry.backoff_secs * 2).min(MAX_BACKOFF.as_secs());
                entry.retry_at = now() + entry.backoff_secs;
                tracing::warn!(role = %p.role, error = format!("{e:#}"), "restart failed");
            }
        }
        changed = true;
    }
    changed
}

/// Starts `keelson supervise` for the mesh at `paths`, as a process of its own.
pub fn start(paths: &Paths, instance: &str) -> Result<ProcRecord> {
    use std::os::unix::process::CommandExt as _;
    let log = paths.logs().join("supervisor.log");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)?;
    let child = std::process::Command::new(std::env::current_exe()?)
        .args(["supervise", instance])
        .env("KEELSON_HOME", &paths.home)
        .env("KEELSON_PREFIX", &paths.prefix)
        .stdin(std::process::Stdio::null())
        .stdout(file.try_clone()?)
        .stderr(file)
        .process_group(0)
        .spawn()?;
    let pid = child.id() as i32;
    let start =
        super::proc_start(pid).ok_or_else(|| anyhow::anyhow!("the supervisor exited at once"))?;
    Ok(ProcRecord {
        role: "supervisor".into(),
        pid,
        start,
        log,
        spec: None,
    })
}
