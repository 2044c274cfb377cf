//! The node agent: the CNI plugin's counterpart on the node. For each pod event it looks the
//! pod up (labels, namespace labels, service account) in the resource directory the control
//! plane also reads, decides enrolment (`istio.io/dataplane-mode=ambient` on the pod or its
//! namespace, not `none`), installs the in-pod redirection (idempotent) and hands the netns to
//! the node's ztunnel over ZDS. An enrolment that fails fails the pod: never a silent bypass.
//!
//! The agent keeps the pods it enrolled in a state file. Started again (a DaemonSet rollout,
//! a crash, a node reboot), it reads them back, re-checks each pod's rules (restoring any
//! that went missing) and hands them all to ztunnel in its snapshot: without that, ztunnel
//! would take the empty snapshot of a fresh agent as "no pods" and drop every one
//! (docs/HARDENING.md, F11).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use resources::Pod;
use resources::ResourceDir;

use crate::spec::{AgentReply, PodEvent};
use zds::server::{NodeAgent, PodInfo};

#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Where the CNI plugin reaches the agent.
    pub socket: PathBuf,
    /// Where the node's ztunnel connects (ZDS).
    pub zds_socket: PathBuf,
    /// The Kubernetes YAML directory (pods and namespaces); unused with `api`.
    pub resources: PathBuf,
    /// Look pods and namespaces up on the API server instead (`--kubernetes`).
    pub api: Option<crate::lookup::ApiOptions>,
    /// The node's network namespace, where the host-side probe rules of docs/WIRE.md §5.5
    /// go (`None`: no host rules, for a node that is not a network namespace of its own).
    pub host_netns: Option<PathBuf>,
    /// iptables or nftables for the in-pod rules.
    pub redirect: crate::redirect::Redirect,
    /// Where the enrolled pods are recorded (`None`: nowhere, a restart forgets them).
    pub state: Option<PathBuf>,
}

impl AgentOptions {
    /// The state file beside the plugin socket: `enrolled-pods.json`.
    pub fn default_state(socket: &Path) -> PathBuf {
        socket
            .parent()
            .unwrap_or(Path::new("."))
            .join("enrolled-pods.json")
    }
}

/// The pods this agent enrolled, by uid, kept in a file (written whole, then renamed).
struct Enrolled {
    file: Option<PathBuf>,
    pods: BTreeMap<String, PodInfo>,
}

impl Enrolled {
    fn load(file: Option<PathBuf>) -> Enrolled {
        let pods: Vec<PodInfo> = file
            .as_ref()
            .and_then(|f| std::fs::read(f).ok())
            .and_then(|bytes| match serde_json::from_slice(&bytes) {
                Ok(p) => Some(p),
                Err(e) => {
                    eprintln!("keelson-cni agent: ignoring an unreadable state file: {e}");
                    None
                }
            })
            .unwrap_or_default();
        Enrolled {
            file,
            pods: pods.into_iter().map(|p| (p.uid.clone(), p)).collect(),
        }
    }

    fn save(&self) {
        let Some(file) = &self.file else { return };
        let pods: Vec<&PodInfo> = self.pods.values().collect();
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec_pretty(&pods)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            eprintln!(
                "keelson-cni agent: cannot record enrolled pods in {}: {e}",
                file.display()
            );
        }
    }
}

/// The recorded pods that are still there to serve: their network namespace exists, and
/// their rules are in place (installed again, idempotently, if they went missing).
fn still_enrolled(
    pods: &BTreeMap<String, PodInfo>,
    redirect: crate::redirect::Redirect,
) -> Vec<PodInfo> {
    pods.values()
        .filter(|p| {
            if !p.netns.exists() {
                eprintln!(
                    "keelson-cni agent: {}/{} is gone (no {}); forgetting it",
                    p.namespace,
                    p.name,
                    p.netns.display()
                );
                return false;
            }
            match crate::redirect::install(&p.netns, redirect) {
                Ok(true) => eprintln!(
                    "keelson-cni agent: {}/{} had lost its rules; installed again",
                    p.namespace, p.name
                ),
                Ok(false) => {}
                Err(e) => eprintln!(
                    "keelson-cni agent: checking the rules of {}/{}: {e:#}",
                    p.namespace, p.name
                ),
            }
            true
        })
        .cloned()
        .collect()
}

pub struct Agent {
    zds: NodeAgent,
    enrolled: Mutex<Enrolled>,
    resources: Mutex<ResourceDir>,
    api: Option<crate::lookup::ApiLookup>,
    host_netns: Option<PathBuf>,
    redirect: crate::redirect::Redirect,
}

fn ns_of(p: &Pod) -> String {
    p.metadata
        .namespace
        .clone()
        .unwrap_or_else(|| "default".into())
}

impl Agent {
    pub fn new(opts: &AgentOptions) -> Result<Agent> {
        if opts.redirect == crate::redirect::Redirect::Ebpf {
            crate::redirect::ebpf::check().context("eBPF redirection is not available")?;
            crate::redirect::ebpf::sweep();
        }
        let mut enrolled = Enrolled::load(opts.state.clone());
        let pods = still_enrolled(&enrolled.pods, opts.redirect);
        if !pods.is_empty() {
            eprintln!(
                "keelson-cni agent: {} pods enrolled before this start, replayed to ztunnel",
                pods.len()
            );
        }
        enrolled.pods = pods.iter().map(|p| (p.uid.clone(), p.clone())).collect();
        enrolled.save();
        Ok(Agent {
            zds: NodeAgent::start(&opts.zds_socket, pods)?,
            enrolled: Mutex::new(enrolled),
            resources: Mutex::new(ResourceDir::new(&opts.resources)),
            api: match &opts.api {
                Some(a) => Some(crate::lookup::ApiLookup::new(a)?),
                None => None,
            },
            host_netns: opts.host_netns.clone(),
            redirect: opts.redirect,
        })
    }

    pub fn zds(&self) -> &NodeAgent {
        &self.zds
    }

    /// The pod and whether it is to be enrolled.
    fn lookup(&self, namespace: &str, name: &str) -> Result<(Pod, bool), String> {
        if let Some(api) = &self.api {
            let (pod, ns) = api.pod(namespace, name)?;
            let ambient = resources::is_ambient(&pod, ns.as_ref());
            return Ok((pod, ambient));
        }
        let mut dir = self.resources.lock().unwrap();
        dir.scan();
        let res = dir.merged();
        let pod = res
            .pods
            .iter()
            .find(|p| p.metadata.name == name && ns_of(p) == namespace)
            .cloned()
            .ok_or_else(|| format!("pod {namespace}/{name} is not in the resources"))?;
        let ns = res.namespaces.iter().find(|n| n.metadata.name == namespace);
        let ambient = resources::is_ambient(&pod, ns);
        Ok((pod, ambient))
    }

    /// The pod's IPv4 address, from its status.
    fn pod_ip(pod: &Pod) -> Option<std::net::Ipv4Addr> {
        pod.status
            .pod_ip
            .iter()
            .chain(pod.status.pod_ips.iter().map(|p| &p.ip))
            .find_map(|ip| ip.parse().ok())
    }

    fn uid(pod: &Pod) -> String {
        pod.metadata
            .uid
            .clone()
            .unwrap_or_else(|| format!("{}/{}", ns_of(pod), pod.metadata.name))
    }

    pub fn handle(&self, ev: &PodEvent) -> AgentReply {
        let fail = |error: String| AgentReply {
            ok: false,
            enrolled: false,
            error,
        };
        match ev.op.as_str() {
            "add" | "check" => {
                let (pod, ambient) = match self.lookup(&ev.namespace, &ev.pod) {
                    Ok(x) => x,
                    Err(e) => return fail(e),
                };
                if !ambient {
                    return AgentReply {
                        ok: true,
                        enrolled: false,
                        error: String::new(),
                    };
                }
                let netns = Path::new(&ev.netns);
                if ev.op == "check" {
                    return if crate::redirect::installed(netns) {
                        AgentReply {
                            ok: true,
                            enrolled: true,
                            error: String::new(),
                        }
                    } else {
                        fail("the pod's redirection rules are missing".into())
                    };
                }
                if let Err(e) = crate::redirect::install(netns, self.redirect) {
                    return fail(format!("installing the redirection rules: {e:#}"));
                }
                if let Some(host) = &self.host_netns {
                    let Some(ip) = Self::pod_ip(&pod) else {
                        return fail("the pod has no IPv4 address in its status".into());
                    };
                    if let Err(e) = crate::redirect::add_probe_snat(host, ip) {
                        return fail(format!("installing the host probe rule: {e:#}"));
                    }
                }
                let info = PodInfo {
                    uid: Self::uid(&pod),
                    name: pod.metadata.name.clone(),
                    namespace: ns_of(&pod),
                    service_account: pod
                        .spec
                        .service_account_name
                        .clone()
                        .unwrap_or_else(|| "default".into()),
                    netns: netns.to_path_buf(),
                };
                match self.zds.add(info.clone()) {
                    Ok(()) => {
                        self.record(&info.uid.clone(), Some(info));
                        AgentReply {
                            ok: true,
                            enrolled: true,
                            error: String::new(),
                        }
                    }
                    Err(e) => fail(format!("ztunnel did not take the pod: {e:#}")),
                }
            }
            "del" => {
                let uid = if let Ok((pod, _)) = self.lookup(&ev.namespace, &ev.pod) {
                    if let (Some(host), Some(ip)) = (&self.host_netns, Self::pod_ip(&pod)) {
                        let _ = crate::redirect::remove_probe_snat(host, ip);
                    }
                    Self::uid(&pod)
                } else {
                    format!("{}/{}", ev.namespace, ev.pod)
                };
                let _ = self.zds.del(&uid);
                self.record(&uid, None);
                if self.redirect == crate::redirect::Redirect::Ebpf {
                    crate::redirect::ebpf::sweep();
                }
                // ztunnel has let go of the pod: now its rules go (a sandbox torn down
                // later takes them anyway).
                let sandbox = Path::new(&ev.netns);
                if !ev.netns.is_empty() && sandbox.exists() {
                    if let Err(e) = crate::redirect::remove(sandbox) {
                        eprintln!(
                            "keelson-cni agent: removing the rules of {}/{}: {e:#}",
                            ev.namespace, ev.pod
                        );
                    }
                }
                AgentReply {
                    ok: true,
                    enrolled: false,
                    error: String::new(),
                }
            }
            other => fail(format!("unknown operation {other:?}")),
        }
    }
}

impl Agent {
    /// Records that `uid` is now `pod` (enrolled) or nothing (removed).
    fn record(&self, uid: &str, pod: Option<PodInfo>) {
        let mut e = self.enrolled.lock().unwrap_or_else(|p| p.into_inner());
        match pod {
            Some(p) => e.pods.insert(uid.to_string(), p),
            None => e.pods.remove(uid),
        };
        e.save();
    }
}

fn serve_one(agent: &Agent, stream: UnixStream) -> Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut line = String::new();
    BufReader::new(&stream).read_line(&mut line)?;
    let reply = match serde_json::from_str::<PodEvent>(&line) {
        Ok(ev) => {
            let started = std::time::Instant::now();
            let r = agent.handle(&ev);
            eprintln!(
                "keelson-cni agent: {} {}/{}: ok={} enrolled={} took_ms={} {}",
                ev.op,
                ev.namespace,
                ev.pod,
                r.ok,
                r.enrolled,
                started.elapsed().as_millis(),
                r.error
            );
            r
        }
        Err(e) => AgentReply {
            ok: false,
            enrolled: false,
            error: format!("bad request: {e}"),
        },
    };
    let mut out = serde_json::to_string(&reply)?;
    out.push('\n');
    (&stream).write_all(out.as_bytes())?;
    Ok(())
}

/// Serves the plugin socket on background threads; returns the agent.
pub fn start(opts: &AgentOptions) -> Result<Arc<Agent>> {
    let agent = Arc::new(Agent::new(opts)?);
    let _ = std::fs::remove_file(&opts.socket);
    if let Some(dir) = opts.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let listener = UnixListener::bind(&opts.socket)
        .with_context(|| format!("binding {}", opts.socket.display()))?;
    let a = agent.clone();
    std::thread::Builder::new()
        .name("cni-agent".into())
        .spawn(move || {
            for stream in listener.incoming().flatten() {
                let a = a.clone();
                std::thread::spawn(move || {
                    if let Err(e) = serve_one(&a, stream) {
                        eprintln!("keelson-cni agent: {e:#}");
                    }
                });
            }
        })?;
    Ok(agent)
}
