//! The pod runtime: creating a pod as a container runtime does (network namespace, veth,
//! `resolv.conf`, the pod object, the CNI plugin, then its containers), waiting for pods to
//! answer, deleting them, and running commands in them.

use anyhow::{bail, Context, Result};
use manifest::{Program, Workload};
use netns::find_binary;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::*;

/// Creates the pods of `workloads` (replicas spread over the nodes in turn).
pub(super) fn create_workloads(
    paths: &Paths,
    state: &mut MeshState,
    workloads: &[Workload],
) -> Result<()> {
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

pub(super) fn create_pod(
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
    let node = state
        .nodes
        .iter()
        .find(|n| n.name == node_name)
        .context("no such node")?
        .clone();
    let pod_ip = free_address(state, &node)?;
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
        host_ip: None,
    };
    // Recorded first: whatever fails below, `down` finds what was made.
    state.pods.push(pod.clone());
    state.save(paths)?;

    // The runtime's part: the sandbox network.
    create_sandbox(&pod, &node, &veth, &w.namespace)?;
    // The API server's part: the pod object, which the node agent and the control plane read.
    std::fs::write(
        paths.resources().join(pod_file(&w.namespace, name)),
        serde_yaml::to_string(&pod_object(w, name, &node, pod_ip))?,
    )?;
    // The control plane publishes the pod before the sandbox is handed over (as the API
    // server has the pod before the kubelet runs the CNI plugin): the CA then knows it runs
    // on this node when ztunnel asks for its certificate.
    wait_published(&node, &w.namespace, name)?;

    // The CNI plugin, called as a runtime calls it.
    cni(paths, "ADD", &pod, &node)?;
    pod.enrolled = cni_plugin::redirect::installed(&netns::netns_path(&ns_name));

    // A load balancer's address: the first pod behind it.
    if let Some(service) = &w.load_balancer {
        let taken = state
            .pods
            .iter()
            .any(|p| p.host_ip.is_some() && p.namespace == w.namespace && p.owner == pod.owner);
        if !taken {
            pod.host_ip = Some(super::lb::attach(paths, &pod, &w.namespace, service)?);
        }
    }
    // The containers.
    for c in &w.containers {
        pod.procs
            .push(start_container(paths, w, name, &ns_name, c)?);
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

/// The lowest free address of the node's range, as a cluster's IPAM hands them out: a
/// deleted pod's address goes to the next pod (docs/HARDENING.md, F13).
fn free_address(state: &MeshState, node: &NodeState) -> Result<Ipv4Addr> {
    let taken: std::collections::BTreeSet<Ipv4Addr> = state
        .pods
        .iter()
        .filter(|p| p.node == node.name)
        .map(|p| p.ip)
        .collect();
    (2..255u8)
        .map(|h| Ipv4Addr::new(10, 244, node.index, h))
        .find(|a| !taken.contains(a))
        .with_context(|| format!("node {} has no pod address left", node.name))
}

/// The pod's namespace, its veth into the node's bridge, address and default route, and
/// the `resolv.conf` and `hostname` its processes see.
fn create_sandbox(pod: &PodState, node: &NodeState, veth: &str, namespace: &str) -> Result<()> {
    let ns_name = &pod.netns;
    create_netns(ns_name)?;
    // The pod's MAC comes from its address (locally administered, 02:42 then the four
    // address bytes): a re-created pod that gets a deleted one's address also gets its MAC,
    // so its neighbours' ARP entries stay right. With a fresh MAC they would send to the old
    // one until the entries went stale, ~20 s without connections.
    let o = pod.ip.octets();
    let mac = format!("02:42:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
    let peer = [
        "link", "add", veth, "type", "veth", "peer", "name", "eth0", "address", &mac,
    ];
    netns::ip_in(&node.netns, &[&peer[..], &["netns", ns_name]].concat())?;
    netns::ip_in(&node.netns, &["link", "set", veth, "master", "cni0", "up"])?;
    let addr = format!("{}/24", pod.ip);
    netns::ip_in(ns_name, &["addr", "add", &addr, "dev", "eth0"])?;
    netns::ip_in(ns_name, &["link", "set", "eth0", "up"])?;
    let gateway = node.gateway().to_string();
    netns::ip_in(ns_name, &["route", "add", "default", "via", &gateway])?;
    let etc = Path::new("/etc/netns").join(ns_name);
    std::fs::create_dir_all(&etc)?;
    std::fs::write(
        etc.join("resolv.conf"),
        format!(
            "search {namespace}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_VIP}\noptions ndots:5\n"
        ),
    )?;
    std::fs::write(etc.join("hostname"), format!("{}\n", pod.name))?;
    Ok(())
}

/// The Pod object as the API server would hold it once scheduled and running.
fn pod_object(w: &Workload, name: &str, node: &NodeState, pod_ip: Ipv4Addr) -> serde_json::Value {
    serde_json::json!({
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
    })
}

/// One container of the pod, as a process in its namespace: a bundled app, the container's
/// command, or the waypoint (with a token for its own service account: no impersonation).
fn start_container(
    paths: &Paths,
    w: &Workload,
    name: &str,
    ns_name: &str,
    c: &manifest::ContainerPlan,
) -> Result<ProcRecord> {
    let log = paths
        .logs()
        .join(format!("pod-{}-{name}-{}.log", w.namespace, c.name));
    let (program, args): (PathBuf, Vec<String>) = match &c.program {
        Program::App {
            name: app,
            version,
            port,
        } => (
            std::env::current_exe()?,
            [
                "app",
                app,
                "--version",
                version,
                "--port",
                &port.to_string(),
            ]
            .map(String::from)
            .to_vec(),
        ),
        Program::Command(cmd) => (PathBuf::from(&cmd[0]), cmd[1..].to_vec()),
        Program::Waypoint => (find_binary("waypoint")?, Vec::new()),
        Program::Gateway => (find_binary("waypoint")?, vec!["gateway".into()]),
    };
    let mut owned: Vec<(String, String)> = c.env.clone();
    owned.push(("HOSTNAME".into(), name.to_string()));
    if c.program.is_proxy() {
        let tokens = controlplane::token::TokenAuthority::load_or_create(&paths.cp_state())?;
        let token = paths
            .home
            .join("tokens")
            .join(format!("{}.{name}", w.namespace));
        std::fs::create_dir_all(paths.home.join("tokens"))?;
        identity::ca::write_private(&token, &tokens.mint(&w.namespace, &w.service_account, None))?;
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
    spawn_in(
        ns_name,
        &program,
        &args,
        &env,
        &log,
        &format!("pod/{}/{name}/{}", w.namespace, c.name),
    )
}

/// Waits until the node's ztunnel has the pod's workload from the control plane.
pub(super) fn wait_published(node: &NodeState, namespace: &str, name: &str) -> Result<()> {
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
pub(super) fn cni(
    paths: &Paths,
    command: &str,
    pod: &PodState,
    node: &NodeState,
) -> Result<String> {
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
    let out = cni_plugin::invoke::call(
        &bin,
        &cni_plugin::invoke::CniCall {
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
pub(super) fn wait_pods(paths: &Paths, state: &MeshState, pods: &[PodState]) -> Result<()> {
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

pub(super) fn pod_log_tail(p: &PodState) -> String {
    p.procs
        .iter()
        .map(|pr| format!("{}:\n{}", pr.log.display(), tail(&pr.log, 10)))
        .collect::<Vec<_>>()
        .join("\n")
}

pub(super) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

pub(super) fn wait_for(what: &str, mut ready: impl FnMut() -> bool, log: &Path) -> Result<()> {
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

/// Deletes one pod as the runtime would: CNI DEL while the sandbox exists, then the
/// processes, the namespace and the pod object.
pub(super) fn delete_pod(paths: &Paths, state: &mut MeshState, pod: &PodState) -> Result<()> {
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
    netns::kill_all_in(&pod.netns);
    netns::delete(&pod.netns);
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
