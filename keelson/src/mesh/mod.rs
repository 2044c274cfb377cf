//! The local mesh: a whole ambient cluster on one Linux machine, built from ordinary
//! Kubernetes YAML.
//!
//! - A fabric namespace holds the bridge joining the nodes (172.30.0.0/24).
//! - Each node is a namespace (node-N at 172.30.0.1N) with a bridge for its pods
//!   (10.244.N.0/24, gateway .1) and routes to the other nodes' pod ranges. It runs the CNI
//!   node agent (`keelson-cni agent`) and a shared-mode ztunnel, both in its namespace.
//! - The control plane runs in its own namespace (172.30.0.2:15012) on a resource directory
//!   the local mesh writes: the user's resources (Services get a cluster IP from
//!   10.96.0.0/16) and one Pod per replica.
//! - Each pod is a namespace with a veth into its node; it is created the way a container
//!   runtime does it: network first, then the CNI plugin binary (`CNI_COMMAND=ADD`, the
//!   network configuration with `prevResult` on stdin), then the containers' processes.
//!
//! Everything is named with a prefix (`keelson-`, or `KEELSON_PREFIX`) and recorded in a state
//! directory (`/run/keelson`, or `KEELSON_HOME`), which is how `down` removes exactly what
//! `up` made, and how `up` finds the leftovers of a crashed run.

pub mod manifest;
pub mod supervise;

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use crate::testbed::find_binary;
use manifest::{Manifest, Program, Resource, Workload};

/// The bundled example `keelson up` runs without arguments.
pub const BOOKINFO: &str = include_str!("../../../examples/bookinfo/bookinfo.yaml");

const CP_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const CP_PORT: u16 = 15012;
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const FIRST_VIP: u32 = 100;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

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
    fn state_file(&self) -> PathBuf {
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
    fn node_dir(&self, node: &str) -> PathBuf {
        self.home.join("nodes").join(node)
    }
    fn netns(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }
    /// Whether a namespace name is one of this mesh's.
    fn owns(&self, netns: &str) -> bool {
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
    fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 244, self.index, 1)
    }
    fn pod_cidr(&self) -> String {
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
fn boot_time() -> u64 {
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
fn clock_ticks() -> u64 {
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
    next_vip: u32,
    next_veth: u32,
    next_node: usize,
}

impl MeshState {
    fn load(paths: &Paths) -> Result<MeshState> {
        let text = std::fs::read_to_string(paths.state_file()).map_err(|_| {
            anyhow::anyhow!(
                "no local mesh is running (no {}); start one with `keelson up`",
                paths.state_file().display()
            )
        })?;
        serde_json::from_str(&text).context("reading the mesh state")
    }

    fn save(&self, paths: &Paths) -> Result<()> {
        let tmp = paths.state_file().with_extension("tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(tmp, paths.state_file())?;
        Ok(())
    }

    fn node(&self, name: &str) -> Result<&NodeState> {
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
}

impl Default for UpOptions {
    fn default() -> Self {
        UpOptions {
            source: None,
            nodes: 2,
            redirect: cni_plugin::redirect::Redirect::Iptables,
        }
    }
}

fn say(msg: impl std::fmt::Display) {
    println!("{msg}");
    let _ = std::io::stdout().flush();
}

/// Builds the mesh and returns once every pod answers; the processes keep running.
pub fn up(paths: &Paths, opts: &UpOptions) -> Result<MeshState> {
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the local mesh builds network namespaces: run keelson up as root");
    }
    if opts.nodes == 0 || opts.nodes > 50 {
        bail!("--nodes must be between 1 and 50");
    }
    // Everything is read and checked before anything is built.
    let manifest = match &opts.source {
        Some(p) => Manifest::load(p)?,
        None => {
            let mut m = Manifest::default();
            m.add_text("bookinfo.yaml (bundled)", BOOKINFO)?;
            m
        }
    };
    if paths.state_file().exists() || !leftover_netns(paths).is_empty() {
        say("cleaning up a previous local mesh");
        down(paths)?;
    }
    let result = build(paths, opts, &manifest).and_then(|mut state| {
        state.procs.push(supervise::start(paths, &state.instance)?);
        state.save(paths)?;
        Ok(state)
    });
    if result.is_err() {
        say("keelson up failed; the partial mesh is left for `keelson status` and the logs; `keelson down` removes it");
    }
    result
}

fn build(paths: &Paths, opts: &UpOptions, manifest: &Manifest) -> Result<MeshState> {
    for d in [paths.resources(), paths.cp_state(), paths.logs()] {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
    }
    let mut state = MeshState {
        prefix: paths.prefix.clone(),
        nodes: Vec::new(),
        pods: Vec::new(),
        services: BTreeMap::new(),
        procs: Vec::new(),
        instance: format!(
            "{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ),
        next_vip: FIRST_VIP,
        next_veth: 0,
        next_node: 0,
    };
    state.save(paths)?;

    say(format!(
        "network: fabric 172.30.0.0/24, {} nodes, control plane at {CP_IP}",
        opts.nodes
    ));
    let fabric = paths.netns("fabric");
    create_netns(&fabric)?;
    ip(&fabric, &["link", "add", "br0", "type", "bridge"])?;
    ip(&fabric, &["link", "set", "br0", "up"])?;
    let cp_ns = paths.netns("controlplane");
    attach_to_fabric(&fabric, &cp_ns, "cp", CP_IP)?;
    for i in 1..=opts.nodes {
        let node = NodeState {
            name: format!("node-{i}"),
            index: i,
            netns: paths.netns(&format!("node-{i}")),
            ip: Ipv4Addr::new(172, 30, 0, 10 + i),
        };
        attach_to_fabric(&fabric, &node.netns, &format!("n{i}"), node.ip)?;
        ip(&node.netns, &["link", "add", "cni0", "type", "bridge"])?;
        ip(
            &node.netns,
            &[
                "addr",
                "add",
                &format!("{}/24", node.gateway()),
                "dev",
                "cni0",
            ],
        )?;
        ip(&node.netns, &["link", "set", "cni0", "up"])?;
        in_netns(
            &node.netns,
            "sysctl",
            &["-q", "-w", "net.ipv4.ip_forward=1"],
        )?;
        state.nodes.push(node);
        state.save(paths)?;
    }
    // The control plane answers pods too (waypoints run in pods and talk to it).
    for n in &state.nodes {
        ip(
            &cp_ns,
            &["route", "add", &n.pod_cidr(), "via", &n.ip.to_string()],
        )?;
    }
    for a in &state.nodes {
        for b in &state.nodes {
            if a.name != b.name {
                ip(
                    &a.netns,
                    &["route", "add", &b.pod_cidr(), "via", &b.ip.to_string()],
                )?;
            }
        }
    }

    // The control plane's CA, token key and a node-bound token per node, made before it
    // starts so the ztunnels can be pointed at them.
    let mesh = resources::MeshSettings::default();
    let (_ca, tokens) = controlplane::run::load_state(&paths.cp_state(), &mesh)?;
    write_resources(paths, &mut state, manifest)?;
    let keelson = std::env::current_exe()?;
    let cp_log = paths.logs().join("controlplane.log");
    let cp = spawn_in(
        &cp_ns,
        &keelson,
        &[
            "controlplane".into(),
            "--resources".into(),
            paths.resources().display().to_string(),
            "--state-dir".into(),
            paths.cp_state().display().to_string(),
            "--listen".into(),
            format!("{CP_IP}:{CP_PORT}"),
        ],
        &[("RUST_LOG", "info")],
        &cp_log,
        "controlplane",
    )?;
    state.procs.push(cp);
    state.save(paths)?;
    say(format!(
        "control plane: starting (log {})",
        cp_log.display()
    ));
    wait_for(
        "the control plane",
        || {
            netns::http_get_at(
                &netns::netns_path(&cp_ns),
                SocketAddr::from((CP_IP, controlplane::run::DEFAULT_MONITORING_PORT)),
                "/ready",
            )
            .is_ok_and(|(s, _)| s == 200)
        },
        &cp_log,
    )?;

    let cni_bin = find_binary("keelson-cni")?;
    let ztunnel_bin = find_binary("ztunnel")?;
    for node in state.nodes.clone() {
        let dir = paths.node_dir(&node.name);
        std::fs::create_dir_all(&dir)?;
        let token = dir.join("token");
        let (ns, sa) = controlplane::run::ZTUNNEL_ACCOUNT
            .split_once('/')
            .unwrap_or_default();
        identity::ca::write_private(&token, &tokens.mint(ns, sa, Some(&node.name)))?;
        // ztunnel forwards the names it does not know to these; nothing answers them here,
        // so they fail fast instead of waiting on the machine's resolver.
        std::fs::write(dir.join("resolv.conf"), "nameserver 127.0.0.1\n")?;
        let agent_log = paths.logs().join(format!("{}-cni-agent.log", node.name));
        let agent = spawn_in(
            &node.netns,
            &cni_bin,
            &[
                "agent".into(),
                "--socket".into(),
                dir.join("cni.sock").display().to_string(),
                "--zds-socket".into(),
                dir.join("ztunnel.sock").display().to_string(),
                "--resources".into(),
                paths.resources().display().to_string(),
                "--host-probe-snat".into(),
                "--redirect".into(),
                match opts.redirect {
                    cni_plugin::redirect::Redirect::Iptables => "iptables".into(),
                    cni_plugin::redirect::Redirect::Nftables => "nftables".into(),
                },
            ],
            &[],
            &agent_log,
            &format!("cni-agent/{}", node.name),
        )?;
        state.procs.push(agent);
        let zt_log = paths.logs().join(format!("{}-ztunnel.log", node.name));
        let env: Vec<(&str, String)> = vec![
            ("PROXY_MODE", "shared".into()),
            ("INPOD_UDS", dir.join("ztunnel.sock").display().to_string()),
            ("POD_NAME", format!("ztunnel-{}", node.name)),
            ("POD_NAMESPACE", "istio-system".into()),
            ("INSTANCE_IP", node.ip.to_string()),
            ("NODE_NAME", node.name.clone()),
            ("XDS_ADDRESS", format!("https://{CP_IP}:{CP_PORT}")),
            (
                "XDS_ROOT_CA",
                paths.cp_state().join("root-cert.pem").display().to_string(),
            ),
            ("AUTH_TOKEN", token.display().to_string()),
            (
                "KEELSON_RESOLV_CONF",
                dir.join("resolv.conf").display().to_string(),
            ),
            ("RUST_LOG", "info".into()),
        ];
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let zt = spawn_in(
            &node.netns,
            &ztunnel_bin,
            &["proxy".into(), "ztunnel".into()],
            &env,
            &zt_log,
            &format!("ztunnel/{}", node.name),
        )?;
        state.procs.push(zt);
        state.save(paths)?;
        say(format!(
            "{}: {} (pods {}), cni agent and ztunnel starting",
            node.name,
            node.ip,
            node.pod_cidr()
        ));
    }
    for node in &state.nodes {
        let zt_log = paths.logs().join(format!("{}-ztunnel.log", node.name));
        let path = netns::netns_path(&node.netns);
        wait_for(
            &format!("the ztunnel of {}", node.name),
            || {
                netns::http_get_at(&path, "127.0.0.1:15021".parse().unwrap(), "/healthz/ready")
                    .is_ok_and(|(s, _)| s == 200)
            },
            &zt_log,
        )?;
    }
    say("ztunnels ready");

    create_workloads(paths, &mut state, &manifest.workloads)?;
    wait_pods(paths, &state, &state.pods)?;
    Ok(state)
}

/// Writes the manifest's resources (and the namespaces its workloads use, labelled for
/// ambient when the manifest does not define them) for the control plane.
fn write_resources(paths: &Paths, state: &mut MeshState, manifest: &Manifest) -> Result<()> {
    let mut resources = manifest.resources.clone();
    let defined: Vec<String> = resources
        .iter()
        .filter(|r| r.kind == "Namespace")
        .map(|r| r.name.clone())
        .collect();
    let mut needed: Vec<String> = manifest
        .workloads
        .iter()
        .map(|w| w.namespace.clone())
        .collect();
    needed.sort();
    needed.dedup();
    for ns in needed {
        let file = paths.resources().join(resource_file(&Resource {
            kind: "Namespace".into(),
            namespace: None,
            name: ns.clone(),
            value: serde_yaml::Value::Null,
        }));
        if defined.contains(&ns) || file.exists() {
            continue;
        }
        say(format!(
            "namespace {ns}: created and labelled istio.io/dataplane-mode=ambient (define it in your YAML to choose)"
        ));
        let value: serde_yaml::Value = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/dataplane-mode: ambient\n"
        ))?;
        resources.push(Resource {
            kind: "Namespace".into(),
            namespace: None,
            name: ns,
            value,
        });
    }
    for mut r in resources {
        if r.kind == "Service" {
            assign_cluster_ip(state, &mut r)?;
        }
        let path = paths.resources().join(resource_file(&r));
        std::fs::write(&path, serde_yaml::to_string(&r.value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    state.save(paths)
}

fn resource_file(r: &Resource) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    format!(
        "{}.{}.{}.yaml",
        clean(&r.kind),
        clean(r.namespace.as_deref().unwrap_or("-")),
        clean(&r.name)
    )
}

fn pod_file(namespace: &str, name: &str) -> String {
    format!("pod.{namespace}.{name}.yaml")
}

fn assign_cluster_ip(state: &mut MeshState, r: &mut Resource) -> Result<()> {
    let key = format!("{}/{}", r.namespace.as_deref().unwrap_or("default"), r.name);
    let spec = r
        .value
        .get_mut("spec")
        .and_then(|s| s.as_mapping_mut())
        .with_context(|| format!("Service {key}: no spec"))?;
    let given = spec
        .get("clusterIP")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    match given.as_deref() {
        Some("None") => return Ok(()),
        Some(ip) => {
            let ip: Ipv4Addr = ip
                .parse()
                .with_context(|| format!("Service {key}: spec.clusterIP {ip:?}"))?;
            state.services.insert(key, ip);
            return Ok(());
        }
        None => {}
    }
    let vip = match state.services.get(&key) {
        Some(v) => *v,
        None => {
            let n = state.next_vip;
            state.next_vip += 1;
            let v = Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8);
            state.services.insert(key, v);
            v
        }
    };
    spec.insert("clusterIP".into(), vip.to_string().into());
    Ok(())
}

/// Creates the pods of `workloads` (replicas spread over the nodes in turn).
fn create_workloads(paths: &Paths, state: &mut MeshState, workloads: &[Workload]) -> Result<()> {
    for w in workloads {
        let template = format!("{w:?}");
        for r in 0..w.replicas {
            let name = if w.kind == "Pod" {
                w.name.clone()
            } else {
                format!("{}-{r}", w.name)
            };
            let node = match &w.node_name {
                Some(n) => state
                    .node(n)
                    .map_err(|_| {
                        anyhow::anyhow!(
                            "{} {}/{}: spec.nodeName {n} is not a node of this mesh (nodes: {})",
                            w.kind,
                            w.namespace,
                            w.name,
                            state
                                .nodes
                                .iter()
                                .map(|n| n.name.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    })?
                    .name
                    .clone(),
                None => {
                    let n = state.nodes[state.next_node % state.nodes.len()]
                        .name
                        .clone();
                    state.next_node += 1;
                    n
                }
            };
            let pod = create_pod(paths, state, w, &name, &node, &template)
                .with_context(|| format!("pod {}/{name}", w.namespace))?;
            say(format!(
                "pod {}/{}: {} on {}{}",
                pod.namespace,
                pod.name,
                pod.ip,
                pod.node,
                if pod.enrolled {
                    ", in the mesh"
                } else {
                    ", not in the mesh"
                }
            ));
        }
    }
    Ok(())
}

fn create_pod(
    paths: &Paths,
    state: &mut MeshState,
    w: &Workload,
    name: &str,
    node_name: &str,
    template: &str,
) -> Result<PodState> {
    if state
        .pods
        .iter()
        .any(|p| p.name == name && p.namespace == w.namespace)
    {
        bail!("a pod of that name already exists");
    }
    // The lowest free address of the node's range, as a cluster's IPAM hands them out: a
    // deleted pod's address goes to the next pod (docs/HARDENING.md, F13).
    let taken: std::collections::BTreeSet<Ipv4Addr> = state
        .pods
        .iter()
        .filter(|p| p.node == node_name)
        .map(|p| p.ip)
        .collect();
    let node = state
        .nodes
        .iter()
        .find(|n| n.name == node_name)
        .context("no such node")?;
    let Some(host) = (2..255u8).find(|h| !taken.contains(&Ipv4Addr::new(10, 244, node.index, *h)))
    else {
        bail!("node {} has no pod address left", node.name);
    };
    let pod_ip = Ipv4Addr::new(10, 244, node.index, host);
    let node = node.clone();
    let veth = format!("vp{}", state.next_veth);
    state.next_veth += 1;
    let ns_name = paths.netns(&format!("pod-{}-{name}", w.namespace));
    let mut pod = PodState {
        namespace: w.namespace.clone(),
        name: name.to_string(),
        owner: format!("{}/{}", w.kind, w.name),
        template: template.to_string(),
        node: node.name.clone(),
        ip: pod_ip,
        netns: ns_name.clone(),
        enrolled: false,
        ports: w.containers.iter().flat_map(|c| c.ports.clone()).collect(),
        procs: Vec::new(),
    };
    // Recorded first: whatever fails below, `down` finds what was made.
    state.pods.push(pod.clone());
    state.save(paths)?;

    // The runtime's part: the sandbox network.
    create_netns(&ns_name)?;
    ip(
        &node.netns,
        &[
            "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns_name,
        ],
    )?;
    ip(&node.netns, &["link", "set", &veth, "master", "cni0", "up"])?;
    ip(
        &ns_name,
        &["addr", "add", &format!("{pod_ip}/24"), "dev", "eth0"],
    )?;
    ip(&ns_name, &["link", "set", "eth0", "up"])?;
    ip(
        &ns_name,
        &[
            "route",
            "add",
            "default",
            "via",
            &node.gateway().to_string(),
        ],
    )?;
    let etc = Path::new("/etc/netns").join(&ns_name);
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("resolv.conf"),
        format!(
            "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_VIP}\noptions ndots:5\n",
            ns = w.namespace
        ),
    )?;
    std::fs::write(etc.join("hostname"), format!("{name}\n"))?;

    // The API server's part: the pod object, which the node agent and the control plane read.
    let pod_yaml = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": w.namespace,
            "uid": format!("{:032x}", rand::random::<u128>()),
            "labels": w.labels,
            "annotations": w.annotations,
            "ownerReferences": [owner_reference(w)],
        },
        "spec": {
            "serviceAccountName": w.service_account,
            "nodeName": node.name,
            "containers": w.containers.iter().map(|c| serde_json::json!({
                "name": c.name,
                "image": c.image,
                "ports": c.ports.iter().map(|p| serde_json::json!({"containerPort": p})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        },
        "status": {
            "phase": "Running",
            "podIP": pod_ip.to_string(),
            "podIPs": [{"ip": pod_ip.to_string()}],
            "conditions": [{"type": "Ready", "status": "True"}],
        },
    });
    std::fs::write(
        paths.resources().join(pod_file(&w.namespace, name)),
        serde_yaml::to_string(&pod_yaml)?,
    )?;

    // The control plane publishes the pod before the sandbox is handed over (as the API
    // server has the pod before the kubelet runs the CNI plugin): the CA then knows it runs
    // on this node when ztunnel asks for its certificate.
    wait_published(&node, &w.namespace, name)?;

    // The CNI plugin, called as a runtime calls it.
    cni(paths, "ADD", &pod, &node)?;
    pod.enrolled = cni_plugin::redirect::installed(&netns::netns_path(&ns_name));

    // The containers.
    let keelson = std::env::current_exe()?;
    for c in &w.containers {
        let log = paths
            .logs()
            .join(format!("pod-{}-{name}-{}.log", w.namespace, c.name));
        let (program, args): (PathBuf, Vec<String>) = match &c.program {
            Program::App {
                name: app,
                version,
                port,
            } => (
                keelson.clone(),
                vec![
                    "app".into(),
                    app.clone(),
                    "--version".into(),
                    version.clone(),
                    "--port".into(),
                    port.to_string(),
                ],
            ),
            Program::Command(cmd) => (PathBuf::from(&cmd[0]), cmd[1..].to_vec()),
            Program::Waypoint => (find_binary("waypoint")?, Vec::new()),
        };
        let mut owned: Vec<(String, String)> = c.env.clone();
        owned.push(("HOSTNAME".into(), name.to_string()));
        if c.program == Program::Waypoint {
            // Its own identity (no impersonation): a token for the Gateway's service account.
            let tokens = controlplane::token::TokenAuthority::load_or_create(&paths.cp_state())?;
            let token = paths
                .home
                .join("tokens")
                .join(format!("{}.{name}", w.namespace));
            std::fs::create_dir_all(paths.home.join("tokens"))?;
            identity::ca::write_private(
                &token,
                &tokens.mint(&w.namespace, &w.service_account, None),
            )?;
            owned.extend([
                (
                    "PROXY_WORKLOAD_INFO".to_string(),
                    format!("{}/{name}/{}", w.namespace, w.service_account),
                ),
                ("XDS_ADDRESS".into(), format!("https://{CP_IP}:{CP_PORT}")),
                (
                    "XDS_ROOT_CA".into(),
                    paths.cp_state().join("root-cert.pem").display().to_string(),
                ),
                ("AUTH_TOKEN".into(), token.display().to_string()),
                ("RUST_LOG".into(), "info".into()),
            ]);
        }
        let env: Vec<(&str, &str)> = owned
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let proc = spawn_in(
            &ns_name,
            &program,
            &args,
            &env,
            &log,
            &format!("pod/{}/{name}/{}", w.namespace, c.name),
        )?;
        pod.procs.push(proc);
    }
    if let Some(p) = state
        .pods
        .iter_mut()
        .find(|p| p.name == name && p.namespace == w.namespace)
    {
        *p = pod.clone();
    }
    state.save(paths)?;
    Ok(pod)
}

/// Waits until the node's ztunnel has the pod's workload from the control plane.
fn wait_published(node: &NodeState, namespace: &str, name: &str) -> Result<()> {
    let path = netns::netns_path(&node.netns);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let known = netns::http_get_at(&path, "127.0.0.1:15000".parse().unwrap(), "/config_dump")
            .ok()
            .and_then(|(_, body)| serde_json::from_str::<serde_json::Value>(&body).ok())
            .is_some_and(|d| {
                d["workloads"].as_array().is_some_and(|ws| {
                    ws.iter()
                        .any(|w| w["name"] == name && w["namespace"] == namespace)
                })
            });
        if known {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the control plane did not publish the pod to {} within 10 s",
                node.name
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the CNI plugin binary for `pod` as a container runtime does; its stdout on success,
/// its error (CNI error JSON) otherwise.
fn cni(paths: &Paths, command: &str, pod: &PodState, node: &NodeState) -> Result<String> {
    let bin = find_binary("keelson-cni")?;
    let sandbox = netns::netns_path(&pod.netns);
    let conf = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "keelson",
        "type": "keelson-cni",
        "agentSocket": paths.node_dir(&node.name).join("cni.sock"),
        "prevResult": {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": sandbox}],
            "ips": [{"address": format!("{}/24", pod.ip), "gateway": node.gateway().to_string(), "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
        },
    });
    let out = crate::cni::call(
        &bin,
        &crate::cni::CniCall {
            command,
            container_id: &format!("{}-{}", pod.namespace, pod.name),
            netns: &sandbox,
            namespace: &pod.namespace,
            pod: &pod.name,
            conf: &conf,
        },
    )?;
    if !out.ok {
        let msg = serde_json::from_str::<serde_json::Value>(&out.stdout)
            .ok()
            .and_then(|v| {
                Some(format!(
                    "{} (CNI error {})",
                    v.get("msg")?.as_str()?,
                    v.get("code")?
                ))
            })
            .unwrap_or(out.stdout);
        bail!("CNI {command} failed: {msg}");
    }
    Ok(out.stdout)
}

/// Waits until every pod's ports accept connections from its node (the kubelet's probe
/// path); names the pods that do not, with the end of their logs.
fn wait_pods(paths: &Paths, state: &MeshState, pods: &[PodState]) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut pending: Vec<&PodState> = pods.iter().filter(|p| !p.ports.is_empty()).collect();
    while !pending.is_empty() {
        pending.retain(|p| {
            let Ok(node) = state.node(&p.node) else {
                return false;
            };
            let path = netns::netns_path(&node.netns);
            let addrs: Vec<SocketAddr> = p
                .ports
                .iter()
                .map(|port| SocketAddr::from((p.ip, *port)))
                .collect();
            !netns::run_at(&path, move || {
                addrs.iter().all(|a| {
                    std::net::TcpStream::connect_timeout(a, Duration::from_millis(300)).is_ok()
                })
            })
            .unwrap_or(false)
        });
        if pending.is_empty() {
            break;
        }
        if let Some(dead) = pending
            .iter()
            .find(|p| p.procs.iter().any(|pr| !pr.alive()))
        {
            bail!(
                "pod {}/{} exited:\n{}",
                dead.namespace,
                dead.name,
                pod_log_tail(dead)
            );
        }
        if Instant::now() > deadline {
            let names: Vec<String> = pending
                .iter()
                .map(|p| format!("{}/{} (ports {:?})", p.namespace, p.name, p.ports))
                .collect();
            bail!(
                "pods not answering on their ports after {READY_TIMEOUT:?}: {}\n{}",
                names.join(", "),
                pod_log_tail(pending[0])
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = paths;
    Ok(())
}

fn pod_log_tail(p: &PodState) -> String {
    p.procs
        .iter()
        .map(|pr| format!("{}:\n{}", pr.log.display(), tail(&pr.log, 10)))
        .collect::<Vec<_>>()
        .join("\n")
}

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool, log: &Path) -> Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    while !ready() {
        if Instant::now() > deadline {
            bail!(
                "{what} is not ready after {READY_TIMEOUT:?}; end of {}:\n{}",
                log.display(),
                tail(log, 20)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

// ---- apply, delete ----

/// Adds or updates what `file` describes: resources are (re)written for the control plane,
/// and a workload's pods are created, or replaced when its template changed.
pub fn apply(paths: &Paths, file: &Path) -> Result<()> {
    let manifest = Manifest::load(file)?;
    let mut state = MeshState::load(paths)?;
    write_resources(paths, &mut state, &manifest)?;
    for r in &manifest.resources {
        say(format!("{} {}: configured", r.kind, r.name));
    }
    let mut created = Vec::new();
    for w in &manifest.workloads {
        let owner = format!("{}/{}", w.kind, w.name);
        let template = format!("{w:?}");
        let existing: Vec<PodState> = state
            .pods
            .iter()
            .filter(|p| p.owner == owner && p.namespace == w.namespace)
            .cloned()
            .collect();
        let running = |p: &PodState| p.procs.iter().all(ProcRecord::alive);
        if !existing.is_empty()
            && existing
                .iter()
                .all(|p| p.template == template && running(p))
        {
            say(format!("{owner}: unchanged"));
            continue;
        }
        for p in existing {
            delete_pod(paths, &mut state, &p)?;
        }
        let before = state.pods.len();
        create_workloads(paths, &mut state, std::slice::from_ref(w))?;
        created.extend(state.pods[before..].iter().cloned());
    }
    wait_pods(paths, &state, &created)
}

/// Removes what `file` describes: its workloads' pods (CNI DEL, processes, namespace) and its
/// resources.
pub fn delete(paths: &Paths, file: &Path) -> Result<()> {
    let manifest = Manifest::load(file)?;
    let mut state = MeshState::load(paths)?;
    for w in &manifest.workloads {
        let owner = format!("{}/{}", w.kind, w.name);
        let pods: Vec<PodState> = state
            .pods
            .iter()
            .filter(|p| p.owner == owner && p.namespace == w.namespace)
            .cloned()
            .collect();
        if pods.is_empty() {
            say(format!("{owner}: not found"));
        }
        for p in pods {
            delete_pod(paths, &mut state, &p)?;
            say(format!("pod {}/{}: deleted", p.namespace, p.name));
        }
    }
    for r in &manifest.resources {
        let path = paths.resources().join(resource_file(r));
        if std::fs::remove_file(&path).is_ok() {
            say(format!("{} {}: deleted", r.kind, r.name));
        } else {
            say(format!("{} {}: not found", r.kind, r.name));
        }
        if r.kind == "Service" {
            state.services.remove(&format!(
                "{}/{}",
                r.namespace.as_deref().unwrap_or("default"),
                r.name
            ));
        }
    }
    state.save(paths)
}

/// Deletes one pod as the runtime would: CNI DEL while the sandbox exists, then the
/// processes, the namespace and the pod object.
fn delete_pod(paths: &Paths, state: &mut MeshState, pod: &PodState) -> Result<()> {
    let node = state.node(&pod.node)?.clone();
    if let Err(e) = cni(paths, "DEL", pod, &node) {
        say(format!(
            "pod {}/{}: {e:#} (removing it anyway)",
            pod.namespace, pod.name
        ));
    }
    for p in &pod.procs {
        stop(p, Duration::from_secs(5));
    }
    kill_in_netns(&pod.netns);
    delete_netns(&pod.netns);
    let _ = std::fs::remove_file(paths.resources().join(pod_file(&pod.namespace, &pod.name)));
    state
        .pods
        .retain(|p| !(p.name == pod.name && p.namespace == pod.namespace));
    state.save(paths)
}

// ---- exec, status, down ----

/// Runs `cmd` inside the pod's network namespace (and with its resolv.conf); returns its
/// exit code.
pub fn exec(paths: &Paths, pod: &str, namespace: Option<&str>, cmd: &[String]) -> Result<i32> {
    let state = MeshState::load(paths)?;
    let Some(p) = state.find_pod(pod, namespace) else {
        bail!(
            "no pod or deployment {pod:?}{}; pods: {}",
            namespace.map(|n| format!(" in {n}")).unwrap_or_default(),
            state
                .pods
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if cmd.is_empty() {
        bail!("no command given (keelson exec POD -- CMD...)");
    }
    let status = Command::new("ip")
        .args(["netns", "exec", &p.netns])
        .args(cmd)
        .status()
        .context("running ip netns exec")?;
    Ok(status.code().unwrap_or(1))
}

/// `keelson restart ROLE`: a deliberate restart of one process of the mesh by its
/// supervisor (a node's ztunnel is handed off with no downtime; see `supervise`). Returns
/// once the new process runs.
pub fn restart(paths: &Paths, role: &str) -> Result<()> {
    let state = MeshState::load(paths)?;
    let roles: Vec<String> = supervise::Record::load(paths)
        .processes
        .keys()
        .cloned()
        .chain(
            state
                .procs
                .iter()
                .chain(state.pods.iter().flat_map(|p| p.procs.iter()))
                .filter(|p| p.spec.is_some())
                .map(|p| p.role.clone()),
        )
        .collect();
    if !roles.iter().any(|r| r == role) {
        let mut known: Vec<&String> = roles.iter().collect();
        known.sort();
        known.dedup();
        bail!(
            "no process {role} in the mesh; its processes: {}",
            known
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let supervisor = state.procs.iter().find(|p| p.role == "supervisor");
    if !supervisor.is_some_and(ProcRecord::alive) {
        bail!("the mesh's supervisor is not running (keelson up starts it)");
    }
    let before = supervise::Record::load(paths).restarts(role);
    supervise::request_restart(paths, role)?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let record = supervise::Record::load(paths);
        if let Some(s) = record.processes.get(role) {
            if s.restarts > before && s.current.alive() {
                say(format!("{role}: restarted (pid {})", s.current.pid));
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{role} was not restarted within 40 s (see {})",
                paths.logs().join("supervisor.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A human-readable account of the mesh: nodes, processes, pods, services, and the resources
/// the control plane rejected.
pub fn status(paths: &Paths) -> Result<String> {
    use std::fmt::Write as _;
    let state = MeshState::load(paths)?;
    let supervisor = supervise::Record::load(paths);
    let mut out = String::new();
    let alive = |p: &ProcRecord| {
        let state = if supervisor.current(p).alive() {
            "running"
        } else {
            "EXITED"
        };
        match supervisor.restarts(&p.role) {
            0 => state.to_string(),
            n => format!("{state} (restarts {n})"),
        }
    };
    writeln!(out, "NODE      ADDRESS       PODS            PROCESSES")?;
    for n in &state.nodes {
        let procs: Vec<String> = state
            .procs
            .iter()
            .filter(|p| p.role.ends_with(&format!("/{}", n.name)))
            .map(|p| {
                format!(
                    "{} {}",
                    p.role.split('/').next().unwrap_or_default(),
                    alive(p)
                )
            })
            .collect();
        let ready = netns::http_get_at(
            &netns::netns_path(&n.netns),
            "127.0.0.1:15021".parse().unwrap(),
            "/healthz/ready",
        )
        .is_ok_and(|(s, _)| s == 200);
        writeln!(
            out,
            "{:<9} {:<13} {:<15} {} (ztunnel {})",
            n.name,
            n.ip,
            n.pod_cidr(),
            procs.join(", "),
            if ready { "ready" } else { "NOT READY" }
        )?;
    }
    if let Some(cp) = state.procs.iter().find(|p| p.role == "controlplane") {
        writeln!(
            out,
            "\ncontrol plane {CP_IP}:{CP_PORT}: {} (log {})",
            alive(cp),
            cp.log.display()
        )?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(paths.resources())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    for f in files {
        if let Err(e) = resources::Resources::default().add_file(&f) {
            writeln!(out, "  rejected: {e}")?;
        }
    }
    writeln!(
        out,
        "\nNAMESPACE   POD                     NODE     IP             MESH  STATUS"
    )?;
    if let Some(sup) = state.procs.iter().find(|p| p.role == "supervisor") {
        writeln!(out, "supervisor: {}", alive(sup))?;
    }
    for p in &state.pods {
        let running = p.procs.iter().all(|pr| supervisor.current(pr).alive());
        let enrolled = cni_plugin::redirect::installed(&netns::netns_path(&p.netns));
        writeln!(
            out,
            "{:<11} {:<23} {:<8} {:<14} {:<5} {}",
            p.namespace,
            p.name,
            p.node,
            p.ip,
            if enrolled { "yes" } else { "no" },
            if running { "Running" } else { "EXITED" }
        )?;
    }
    writeln!(out, "\nSERVICE                         CLUSTER-IP")?;
    for (name, ip) in &state.services {
        writeln!(out, "{name:<31} {ip}")?;
    }
    Ok(out)
}

/// Removes everything the mesh made: processes inside its namespaces, the namespaces (and
/// with them every link, route and rule in them), their resolv.conf, the state directory.
/// Makes each node's link into the fabric behave like a NIC between machines: what a node
/// sends is received by the fabric in a NAPI kernel thread of its own (GRO on, `threaded`),
/// so the fabric bridge and the receiving node's whole path (its bridges, netfilter, the
/// destination pod's TCP receive) no longer run inside the sender's `write`, charged to the
/// sending process, as they do on one machine with plain veths. Used by `keelson bench l7`
/// so that a proxy's CPU is its own node's share, as a multi-node cluster would measure it.
/// The node side of each link stops doing TSO (veth hands only unsegmented TCP to NAPI),
/// which makes bulk transfers dearer: not for throughput benchmarks.
pub fn thread_node_links(paths: &Paths, state: &MeshState) -> Result<()> {
    let fabric = paths.netns("fabric");
    for node in &state.nodes {
        let port = format!("n{}", node.index);
        in_netns(&node.netns, "ethtool", &["-K", "eth0", "tso", "off"])?;
        in_netns(&fabric, "ethtool", &["-K", &port, "gro", "on"])?;
        // sysfs shows the devices of the namespace it was mounted in: `ip netns exec`
        // mounts the fabric's.
        in_netns(
            &fabric,
            "sh",
            &["-c", &format!("echo 1 > /sys/class/net/{port}/threaded")],
        )?;
    }
    Ok(())
}

pub fn down(paths: &Paths) -> Result<()> {
    let state = MeshState::load(paths).ok();
    let mut names = leftover_netns(paths);
    if let Some(s) = &state {
        if s.prefix != paths.prefix {
            bail!(
                "the mesh in {} was made with prefix {:?}, not {:?}",
                paths.home.display(),
                s.prefix,
                paths.prefix
            );
        }
        // The supervisor first (it would start again what is stopped here), then pods'
        // processes, then the node agents and ztunnels, then the control plane.
        for pr in s.procs.iter().filter(|p| p.role == "supervisor") {
            stop(pr, Duration::from_secs(2));
        }
        for p in &s.pods {
            for pr in &p.procs {
                stop(pr, Duration::from_secs(2));
            }
        }
        for pr in s.procs.iter().rev() {
            stop(pr, Duration::from_secs(2));
        }
        for n in s
            .pods
            .iter()
            .map(|p| p.netns.clone())
            .chain(s.nodes.iter().map(|n| n.netns.clone()))
        {
            if !names.contains(&n) {
                names.push(n);
            }
        }
    }
    // Pods before nodes before the fabric: the order veths are torn down in does not matter
    // to the kernel, but processes started inside (exec'd shells) are found by namespace.
    names.sort_by_key(|n| (!n.contains("-pod-"), n.contains("fabric")));
    for n in &names {
        kill_in_netns(n);
    }
    for n in &names {
        delete_netns(n);
    }
    if paths.home.exists() {
        std::fs::remove_dir_all(&paths.home)
            .with_context(|| format!("removing {}", paths.home.display()))?;
    }
    say(format!(
        "local mesh removed ({} network namespaces)",
        names.len()
    ));
    Ok(())
}

// ---- helpers ----

fn ip(netns: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", netns];
    full.extend_from_slice(args);
    netns::run("ip", &full)
}

fn in_netns(netns: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", netns, cmd];
    full.extend_from_slice(args);
    netns::run("ip", &full)
}

fn create_netns(name: &str) -> Result<()> {
    netns::Netns::create(name)?.persist();
    Ok(())
}

fn delete_netns(name: &str) {
    let _ = netns::run("ip", &["netns", "del", name]);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

/// Joins `netns` (created here) to the fabric bridge with address `addr`.
fn attach_to_fabric(fabric: &str, netns: &str, port: &str, addr: Ipv4Addr) -> Result<()> {
    create_netns(netns)?;
    ip(
        fabric,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )?;
    ip(fabric, &["link", "set", port, "master", "br0", "up"])?;
    ip(
        netns,
        &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )?;
    ip(netns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// This mesh's namespaces that exist now.
fn leftover_netns(paths: &Paths) -> Vec<String> {
    netns::run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| paths.owns(n))
        .map(str::to_string)
        .collect()
}

/// Starts `program` inside `netns` in its own process group (it outlives this command),
/// output appended to `log`.
fn spawn_in(
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

/// The start time (clock ticks since boot) of a live, non-zombie process.
fn proc_start(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name is in parentheses and may contain spaces: fields follow the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if fields.first() == Some(&"Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// SIGTERM, then SIGKILL after `grace`; only if the pid is still the recorded process.
fn stop(p: &ProcRecord, grace: Duration) {
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
fn kill_in_netns(name: &str) {
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

/// The owner a controller gives a pod. A Deployment's pods belong to its ReplicaSet, named
/// `<deployment>-<pod template hash>` (the control plane takes the workload name back off
/// that suffix, as istiod does); the hash here is a stable one of the deployment's name.
fn owner_reference(w: &Workload) -> serde_json::Value {
    if w.kind == "Deployment" {
        let hash = w.name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        serde_json::json!({"kind": "ReplicaSet", "name": format!("{}-{:x}", w.name, hash & 0xff_ffff_ffff)})
    } else {
        serde_json::json!({"kind": "Pod", "name": w.name})
    }
}
