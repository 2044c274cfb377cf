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
//!
//! Labels change while pods run: the agent also remembers the pods it was asked about and did
//! not enrol (`seen-pods.json` beside the state file), and reconciles every pod of both lists
//! against their labels, on start and whenever the resources change (file source: each
//! change of the directory; API source: every [`API_RECONCILE`]). A pod (or namespace) newly
//! labelled `istio.io/dataplane-mode=ambient` is enrolled where it runs, without a restart;
//! one whose label goes (or turns to `none`) is handed back: ztunnel lets go of it, then its
//! rules are removed.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
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

/// How often the API source's pods are looked up again for label changes.
pub const API_RECONCILE: Duration = Duration::from_secs(10);
/// How often the file source's directory is checked for changes.
const FILE_RECONCILE: Duration = Duration::from_millis(300);

/// A set of pods by uid, kept in a file (written whole, then renamed): those this agent
/// enrolled, and those it saw and did not.
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
    /// Pods of this node that are not enrolled (their netns, for a later enrolment).
    seen: Mutex<Enrolled>,
    /// Bumped by every scan of the resource directory that found a change.
    generation: AtomicU64,
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
        let mut seen = Enrolled::load(opts.state.as_ref().map(|s| s.with_file_name(SEEN_FILE)));
        seen.pods.retain(|_, p| p.netns.exists());
        seen.save();
        Ok(Agent {
            zds: NodeAgent::start(&opts.zds_socket, pods)?,
            enrolled: Mutex::new(enrolled),
            seen: Mutex::new(seen),
            generation: AtomicU64::new(0),
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
        if dir.scan() {
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        let res = dir.merged();
        drop(dir);
        Self::find(&res, namespace, name)
    }

    /// The pod in `res` and whether it is to be enrolled.
    fn find(
        res: &resources::Resources,
        namespace: &str,
        name: &str,
    ) -> Result<(Pod, bool), String> {
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
                let netns = Path::new(&ev.netns);
                if !ambient {
                    if ev.op == "add" && !ev.netns.is_empty() {
                        let info = Self::info(&pod, netns);
                        self.remember(&info.uid.clone(), Some(info));
                    }
                    return AgentReply {
                        ok: true,
                        enrolled: false,
                        error: String::new(),
                    };
                }
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
                match self.enroll(&pod, netns) {
                    Ok(()) => AgentReply {
                        ok: true,
                        enrolled: true,
                        error: String::new(),
                    },
                    Err(e) => fail(e),
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
                self.remember(&uid, None);
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

/// The file of the pods seen and not enrolled, beside the state file.
const SEEN_FILE: &str = "seen-pods.json";

impl Agent {
    fn info(pod: &Pod, netns: &Path) -> PodInfo {
        PodInfo {
            uid: Self::uid(pod),
            name: pod.metadata.name.clone(),
            namespace: ns_of(pod),
            service_account: pod
                .spec
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            netns: netns.to_path_buf(),
        }
    }

    /// Enrols a pod: its rules, the host probe rule, then ztunnel takes it; recorded.
    fn enroll(&self, pod: &Pod, netns: &Path) -> Result<(), String> {
        crate::redirect::install(netns, self.redirect)
            .map_err(|e| format!("installing the redirection rules: {e:#}"))?;
        if let Some(host) = &self.host_netns {
            let ip = Self::pod_ip(pod).ok_or("the pod has no IPv4 address in its status")?;
            crate::redirect::add_probe_snat(host, ip)
                .map_err(|e| format!("installing the host probe rule: {e:#}"))?;
        }
        let info = Self::info(pod, netns);
        self.zds
            .add(info.clone())
            .map_err(|e| format!("ztunnel did not take the pod: {e:#}"))?;
        self.remember(&info.uid, None);
        self.record(&info.uid.clone(), Some(info));
        Ok(())
    }

    /// Hands an enrolled pod back: ztunnel lets go of it, then its rules go; it is then
    /// only seen.
    fn unenroll(&self, pod: Option<&Pod>, info: PodInfo) {
        let _ = self.zds.del(&info.uid);
        if let (Some(host), Some(ip)) = (&self.host_netns, pod.and_then(Self::pod_ip)) {
            let _ = crate::redirect::remove_probe_snat(host, ip);
        }
        if info.netns.exists() {
            if let Err(e) = crate::redirect::remove(&info.netns) {
                eprintln!(
                    "keelson-cni agent: removing the rules of {}/{}: {e:#}",
                    info.namespace, info.name
                );
            }
        }
        if self.redirect == crate::redirect::Redirect::Ebpf {
            crate::redirect::ebpf::sweep();
        }
        self.record(&info.uid, None);
        self.remember(&info.uid.clone(), Some(info));
    }

    /// Brings every known pod of this node to what its labels (and its namespace's) ask
    /// for now. Returns how many changed.
    pub fn reconcile(&self) -> usize {
        let enrolled: Vec<PodInfo> = self
            .enrolled
            .lock()
            .unwrap()
            .pods
            .values()
            .cloned()
            .collect();
        let seen: Vec<PodInfo> = self.seen.lock().unwrap().pods.values().cloned().collect();
        // The file source: one read of the directory for the whole pass.
        let res = self.api.is_none().then(|| {
            let mut dir = self.resources.lock().unwrap();
            if dir.scan() {
                self.generation.fetch_add(1, Ordering::AcqRel);
            }
            dir.merged()
        });
        let mut changed = 0;
        for (info, was) in enrolled
            .into_iter()
            .map(|p| (p, true))
            .chain(seen.into_iter().map(|p| (p, false)))
        {
            if !info.netns.exists() {
                continue; // gone; its DEL forgets it
            }
            // A pod no longer in the resources is being deleted: its DEL decides.
            let found = match &res {
                Some(res) => Self::find(res, &info.namespace, &info.name),
                None => self.lookup(&info.namespace, &info.name),
            };
            let Ok((pod, ambient)) = found else {
                continue;
            };
            if Self::uid(&pod) != info.uid {
                continue; // another pod of that name now: its own ADD decides
            }
            match (was, ambient) {
                (false, true) => {
                    changed += 1;
                    match self.enroll(&pod, &info.netns) {
                        Ok(()) => eprintln!(
                            "keelson-cni agent: {}/{}: labelled ambient while running; enrolled",
                            info.namespace, info.name
                        ),
                        Err(e) => eprintln!(
                            "keelson-cni agent: {}/{}: labelled ambient, but enrolling failed: {e}",
                            info.namespace, info.name
                        ),
                    }
                }
                (true, false) => {
                    changed += 1;
                    eprintln!(
                        "keelson-cni agent: {}/{}: no longer labelled ambient; un-enrolled",
                        info.namespace, info.name
                    );
                    self.unenroll(Some(&pod), info);
                }
                _ => {}
            }
        }
        changed
    }

    /// Runs [`Agent::reconcile`] on start and on every change of the resources.
    fn keep_reconciled(self: Arc<Self>) {
        let mut done = None;
        loop {
            if self.api.is_none() {
                let mut dir = self.resources.lock().unwrap();
                if dir.scan() {
                    self.generation.fetch_add(1, Ordering::AcqRel);
                }
            }
            // The generation before the pass: a change during it brings another pass.
            let generation = self.generation.load(Ordering::Acquire);
            if self.api.is_some() || done != Some(generation) {
                self.reconcile();
                done = Some(generation);
            }
            std::thread::sleep(if self.api.is_some() {
                API_RECONCILE
            } else {
                FILE_RECONCILE
            });
        }
    }

    /// Records that `uid` is now seen and not enrolled (`Some`) or not (`None`).
    fn remember(&self, uid: &str, pod: Option<PodInfo>) {
        let mut e = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match pod {
            Some(p) => e.pods.insert(uid.to_string(), p),
            None => e.pods.remove(uid),
        };
        e.save();
    }

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
    let reconciler = agent.clone();
    std::thread::Builder::new()
        .name("cni-reconcile".into())
        .spawn(move || reconciler.keep_reconciled())?;
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
