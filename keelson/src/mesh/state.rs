//! What the local mesh records about itself (`mesh.json`): paths and names, nodes, pods and
//! their processes, and the options of `keelson up`.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use super::*;

/// Where the mesh keeps its state and how its namespaces are named.
#[derive(Debug, Clone)]
pub struct Paths {
    pub home: PathBuf,
    pub prefix: String,
}

impl Default for Paths {
    fn default() -> Self {
        Paths {
            home: std::env::var_os("KEELSON_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/run/keelson")),
            prefix: std::env::var("KEELSON_PREFIX").unwrap_or_else(|_| "keelson".into()),
        }
    }
}

impl Paths {
    pub(super) fn state_file(&self) -> PathBuf {
        self.home.join("mesh.json")
    }
    pub fn resources(&self) -> PathBuf {
        self.home.join("resources")
    }
    pub fn cp_state(&self) -> PathBuf {
        self.home.join("controlplane")
    }
    pub fn logs(&self) -> PathBuf {
        self.home.join("logs")
    }
    pub(super) fn node_dir(&self, node: &str) -> PathBuf {
        self.home.join("nodes").join(node)
    }
    pub(super) fn netns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
    /// Whether a namespace name is one of this mesh's.
    pub(super) fn owns(&self, netns: &str) -> bool {
        netns.starts_with(&format!("{}-", self.prefix))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeState {
    pub name: String,
    pub index: u8,
    pub netns: String,
    pub ip: Ipv4Addr,
}

impl NodeState {
    pub(super) fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }
    pub(super) fn pod_cidr(&self) -> String {
        format!("10.244.{}.0/24", self.index)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodState {
    pub namespace: String,
    pub name: String,
    /// `Deployment/<name>` or `Pod/<name>`.
    pub owner: String,
    /// The workload this pod was made from, to notice a changed template on `apply`.
    pub template: String,
    pub node: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub enrolled: bool,
    pub ports: Vec<u16>,
    pub procs: Vec<ProcRecord>,
    /// An address on a link from the machine's own namespace: the pod stands behind a
    /// LoadBalancer Service (an ingress gateway).
    #[serde(default)]
    pub host_ip: Option<Ipv4Addr>,
}

impl PodState {
    /// Runs the `waypoint` binary: a waypoint, or (`gateway`) an ingress gateway too.
    pub fn runs_proxy(&self, gateway: bool) -> bool {
        self.procs.iter().any(|pr| {
            pr.spec.as_ref().is_some_and(|sp| {
                sp.program.ends_with("waypoint")
                    && (gateway || sp.args.first().map(String::as_str) != Some("gateway"))
            })
        })
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcRecord {
    pub role: String,
    pub pid: i32,
    /// `/proc/<pid>/stat` start time: a recycled pid is never taken for ours.
    pub start: u64,
    pub log: PathBuf,
    /// How to start it again (the supervisor's), when it can be.
    #[serde(default)]
    pub spec: Option<supervise::Spawn>,
}

impl ProcRecord {
    pub fn alive(&self) -> bool {
        proc_start(self.pid) == Some(self.start)
    }

    /// When it started, in seconds since the epoch.
    pub fn start_epoch(&self) -> u64 {
        boot_time() + self.start / clock_ticks()
    }
}

/// The system's boot time, seconds since the epoch (`btime` in /proc/stat).
pub(super) fn boot_time() -> u64 {
    std::fs::read_to_string("/proc/stat")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("btime "))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Clock ticks per second, the unit of `/proc/<pid>/stat` times.
pub(super) fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .map_or(100, |t| t.max(1) as u64)
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct MeshState {
    pub prefix: String,
    pub nodes: Vec<NodeState>,
    pub pods: Vec<PodState>,
    /// `namespace/name` → cluster IP.
    pub services: BTreeMap<String, Ipv4Addr>,
    /// Control plane, node agents and ztunnels.
    pub procs: Vec<ProcRecord>,
    /// Which `keelson up` made this mesh: its supervisor serves that mesh only.
    #[serde(default)]
    pub instance: String,
    pub(super) next_vip: u32,
    pub(super) next_veth: u32,
    pub(super) next_node: usize,
}

impl MeshState {
    pub(super) fn load(paths: &Paths) -> Result<MeshState> {
        let text = std::fs::read_to_string(paths.state_file()).map_err(|_| {
            anyhow::anyhow!(
                "no local mesh is running (no {}); start one with `keelson up`",
                paths.state_file().display()
            )
        })?;
        serde_json::from_str(&text).context("reading the mesh state")
    }

    pub(super) fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = paths.state_file().with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, paths.state_file())?;
        super::observe::write_targets(paths, self)?;
        Ok(())
    }

    pub(super) fn node(&self, name: &str) -> Result<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .with_context(|| format!("no node {name}"))
    }

    /// A pod by name (or the first pod of a Deployment of that name), in `namespace` if
    /// given.
    pub fn find_pod(&self, name: &str, namespace: Option<&str>) -> Option<&PodState> {
        let in_ns = |p: &&PodState| namespace.is_none_or(|ns| p.namespace == ns);
        self.pods
            .iter()
            .filter(in_ns)
            .find(|p| p.name == name)
            .or_else(|| {
                self.pods
                    .iter()
                    .filter(in_ns)
                    .find(|p| p.owner == format!("Deployment/{name}"))
            })
    }
}

/// `keelson up` options.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// A YAML file or directory; `None` runs the bundled bookinfo.
    pub source: Option<PathBuf>,
    pub nodes: u8,
    /// The CNI agents' in-pod rules: iptables or nftables.
    pub redirect: cni_plugin::redirect::Redirect,
    /// Run the default ingress gateway (`istio-system/istio-ingressgateway`).
    pub ingress: bool,
    /// Run Prometheus scraping the mesh (`istio-system/prometheus`).
    pub observability: bool,
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            source: None,
            nodes: 2,
            redirect: cni_plugin::redirect::Redirect::Iptables,
            ingress: true,
            observability: false,
        }
    }
}

/// The start time (clock ticks since boot) of a live, non-zombie process.
pub(super) fn proc_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}
