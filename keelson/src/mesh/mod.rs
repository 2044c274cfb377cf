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

mod fabric;
pub mod inspect;
mod lb;
pub mod manifest;
mod objects;
pub mod observe;
mod pods;
mod process;
mod state;
mod status;
pub mod supervise;
pub mod ui;

pub use fabric::thread_node_links;
use fabric::*;
pub use lb::{gateway_url, prometheus_url};
pub use objects::label;
use objects::*;
pub use pods::exec;
use pods::*;
use process::*;
pub use state::*;
pub use status::{restart, status};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use manifest::Manifest;
use netns::find_binary;

/// The bundled example `keelson up` runs without arguments.
pub const BOOKINFO: &str = include_str!("../../../examples/bookinfo/bookinfo.yaml");

const CP_IP: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
const CP_PORT: u16 = 15012;
const DNS_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const FIRST_VIP: u32 = 100;
const READY_TIMEOUT: Duration = Duration::from_secs(60);

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
    let mut manifest = match &opts.source {
        Some(p) => Manifest::load(p)?,
        None => {
            let mut m = Manifest::default();
            m.add_text("bookinfo.yaml (bundled)", BOOKINFO)?;
            m
        }
    };
    if opts.ingress {
        manifest.add_default_ingress()?;
    }
    if opts.redirect == cni_plugin::redirect::Redirect::Ebpf {
        // Here, in the machine's mount namespace: the node agents and ztunnels run under `ip
        // netns exec`, whose own mounts would not be seen by one another.
        cni_plugin::redirect::ebpf::check()
            .context("--redirect ebpf: this kernel or these privileges cannot run it")?;
    }
    if paths.state_file().exists() || !leftover_netns(paths).is_empty() {
        say("cleaning up a previous local mesh");
        down(paths)?;
    }
    if opts.observability {
        observe::prepare(paths, &mut manifest)?;
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
    build_network(paths, opts, &mut state)?;
    // The control plane's CA, token key and a node-bound token per node, made before it
    // starts so the ztunnels can be pointed at them.
    let mesh = resources::MeshSettings::default();
    let (_ca, tokens) = controlplane::run::load_state(&paths.cp_state(), &mesh)?;
    write_resources(paths, &mut state, manifest)?;
    start_control_plane(paths, &mut state)?;
    for node in state.nodes.clone() {
        start_node(paths, opts, &mut state, &node, &tokens)?;
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

/// The fabric bridge, the control plane's namespace on it, and each node: its namespace on
/// the fabric, its pods' bridge and routes to the other nodes' pods.
fn build_network(paths: &Paths, opts: &UpOptions, state: &mut MeshState) -> Result<()> {
    say(format!(
        "network: fabric 172.30.0.0/24, {} nodes, control plane at {CP_IP}",
        opts.nodes
    ));
    let fabric = paths.netns("fabric");
    create_netns(&fabric)?;
    netns::ip_in(&fabric, &["link", "add", "br0", "type", "bridge"])?;
    netns::ip_in(&fabric, &["link", "set", "br0", "up"])?;
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
        let gateway = format!("{}/24", node.gateway());
        netns::ip_in(&node.netns, &["link", "add", "cni0", "type", "bridge"])?;
        netns::ip_in(&node.netns, &["addr", "add", &gateway, "dev", "cni0"])?;
        netns::ip_in(&node.netns, &["link", "set", "cni0", "up"])?;
        netns::exec_in(
            &node.netns,
            "sysctl",
            &["-q", "-w", "net.ipv4.ip_forward=1"],
        )?;
        state.nodes.push(node);
        state.save(paths)?;
    }
    // The control plane answers pods too (waypoints run in pods and talk to it).
    for n in &state.nodes {
        let via = n.ip.to_string();
        netns::ip_in(&cp_ns, &["route", "add", &n.pod_cidr(), "via", &via])?;
    }
    for a in &state.nodes {
        for b in state.nodes.iter().filter(|b| b.name != a.name) {
            let via = b.ip.to_string();
            netns::ip_in(&a.netns, &["route", "add", &b.pod_cidr(), "via", &via])?;
        }
    }
    Ok(())
}

/// `keelson controlplane` in its namespace, once it answers `/ready`.
fn start_control_plane(paths: &Paths, state: &mut MeshState) -> Result<()> {
    let cp_ns = paths.netns("controlplane");
    let keelson = std::env::current_exe()?;
    let cp_log = paths.logs().join("controlplane.log");
    let args: Vec<String> = [
        "controlplane",
        "--resources",
        &paths.resources().display().to_string(),
        "--state-dir",
        &paths.cp_state().display().to_string(),
        "--listen",
        &format!("{CP_IP}:{CP_PORT}"),
    ]
    .map(String::from)
    .to_vec();
    let cp = spawn_in(
        &cp_ns,
        &keelson,
        &args,
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
    let ready = SocketAddr::from((CP_IP, controlplane::run::DEFAULT_MONITORING_PORT));
    wait_for(
        "the control plane",
        || {
            netns::http_get_at(&netns::netns_path(&cp_ns), ready, "/ready")
                .is_ok_and(|(s, _)| s == 200)
        },
        &cp_log,
    )
}

/// A node's own processes, as its DaemonSets would run them: the CNI node agent and the
/// shared-mode ztunnel (with a node-bound token), both in the node's namespace.
fn start_node(
    paths: &Paths,
    opts: &UpOptions,
    state: &mut MeshState,
    node: &NodeState,
    tokens: &controlplane::token::TokenAuthority,
) -> Result<()> {
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
    let at = |file: &str| dir.join(file).display().to_string();
    let agent_args: Vec<String> = [
        "agent",
        "--socket",
        &at("cni.sock"),
        "--zds-socket",
        &at("ztunnel.sock"),
        "--resources",
        &paths.resources().display().to_string(),
        "--host-probe-snat",
        "--redirect",
        opts.redirect.name(),
    ]
    .map(String::from)
    .to_vec();
    let agent = spawn_in(
        &node.netns,
        &find_binary("keelson-cni")?,
        &agent_args,
        &[],
        &paths.logs().join(format!("{}-cni-agent.log", node.name)),
        &format!("cni-agent/{}", node.name),
    )?;
    state.procs.push(agent);
    let env: Vec<(&str, String)> = vec![
        ("PROXY_MODE", "shared".into()),
        ("INPOD_UDS", at("ztunnel.sock")),
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
        ("KEELSON_RESOLV_CONF", at("resolv.conf")),
        ("RUST_LOG", "info".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let zt = spawn_in(
        &node.netns,
        &find_binary("ztunnel")?,
        &["proxy".into(), "ztunnel".into()],
        &env,
        &paths.logs().join(format!("{}-ztunnel.log", node.name)),
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
    Ok(())
}

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

/// Removes everything the mesh made: processes inside its namespaces, the namespaces (and
/// with them every link, route and rule in them), their resolv.conf, the state directory.
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
        // What the supervisor started again (a restarted ztunnel) runs under a pid of its
        // record, not of `mesh.json`.
        let restarted = supervise::Record::load(paths);
        let current = |pr: &ProcRecord| restarted.current(pr).clone();
        for p in &s.pods {
            for pr in &p.procs {
                stop(&current(pr), Duration::from_secs(2));
            }
        }
        for pr in s.procs.iter().rev() {
            let now = current(pr);
            if now.pid != pr.pid {
                stop(&now, Duration::from_secs(2));
            }
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
        netns::kill_all_in(n);
    }
    if cni_plugin::redirect::ebpf::pin_root().exists() {
        // The namespaces take eBPF programs with them; their pins on bpffs are removed here.
        for n in names.iter().filter(|n| n.contains("-pod-")) {
            cni_plugin::redirect::ebpf::forget(&netns::netns_path(n));
        }
    }
    for n in &names {
        netns::delete(n);
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
