//! A small mesh on network namespaces: pods on one bridge, each meshed pod with its own
//! dedicated ztunnel and in-pod redirection, a local CA, and the WDS-shaped YAML they share.
//! Used by the end-to-end tests and by `keelson bench l4`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::{find_binary, Lan, Netns, Proc};

pub mod apiserver;

pub const NAMESPACE: &str = "default";
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
pub const SERVICE_HOST: &str = "echo.default.svc.cluster.local";
/// Host number of the control plane's namespace on the LAN (10.10.0.250).
pub const CONTROL_PLANE_HOST: u8 = 250;
pub const CONTROL_PLANE_PORT: u16 = 15012;
/// The namespace (and testbed pod name) where a shared ztunnel runs, its host number, and
/// the node name every pod has in shared mode.
pub const SHARED_NODE_POD: &str = "node";
pub const SHARED_NODE_HOST: u8 = 240;
pub const SHARED_NODE: &str = "node-1";

/// Where the ztunnels learn workloads and get certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Source {
    /// WDS-shaped YAML files and a local CA.
    #[default]
    LocalFiles,
    /// `keelson controlplane` in its own namespace, fed Kubernetes YAML.
    ControlPlane,
    /// The caller serves xDS and the CA itself in the control plane's namespace (with
    /// `controlplane::server`); `start` does not wait for the ztunnels to be ready.
    ExternalControlPlane,
    /// `keelson controlplane --kubeconfig`, fed by the in-process API server double
    /// ([`apiserver::ApiServer`]) in the control plane's namespace.
    Kubernetes,
}

/// One pod of the testbed.
#[derive(Debug, Clone)]
pub struct PodSpec {
    pub name: String,
    pub service_account: String,
    /// Runs a ztunnel and has redirection rules.
    pub meshed: bool,
    /// Member of the `echo` service, with this target port.
    pub echo_target_port: Option<u16>,
    /// The identity this pod's ztunnel believes it has, when it differs from what the others
    /// believe (to test a peer presenting the wrong identity).
    pub claims_service_account: Option<String>,
}

impl PodSpec {
    pub fn meshed(name: &str) -> Self {
        PodSpec {
            name: name.into(),
            service_account: name.into(),
            meshed: true,
            echo_target_port: None,
            claims_service_account: None,
        }
    }

    pub fn plain(name: &str) -> Self {
        PodSpec {
            meshed: false,
            ..Self::meshed(name)
        }
    }

    pub fn serving_echo(mut self, target_port: u16) -> Self {
        self.echo_target_port = Some(target_port);
        self
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub pods: Vec<PodSpec>,
    /// Extra environment for every ztunnel.
    pub env: Vec<(String, String)>,
    /// Path of the ztunnel binary; found next to the running executable when `None`.
    pub ztunnel_bin: Option<PathBuf>,
    /// Where ztunnel logs go: inherited (visible in test output) or a file per pod.
    pub log_to_files: bool,
    /// Where every dedicated ztunnel writes its logs instead (`/dev/full` to test a full disk).
    pub log_sink: Option<PathBuf>,
    /// A `policies:` section (L4 authorization, see proxycore/src/rbac.rs) for the YAML.
    pub policies_yaml: Option<String>,
    pub source: Source,
    /// One shared (in-pod mode) ztunnel for all meshed pods, on one node, fed pods by a node
    /// agent over ZDS, instead of a dedicated ztunnel per pod. Needs a control plane.
    pub shared_ztunnel: bool,
    /// How meshed pods are redirected: iptables, nftables or eBPF. The default is
    /// [`redirect_under_test`].
    pub redirect: cni_plugin::redirect::Redirect,
    /// How often the control plane's file source looks for changes, when not its default.
    pub control_plane_poll: Option<Duration>,
}

/// The redirection the suites run with: `KEELSON_TEST_REDIRECT` (iptables, nftables, ebpf),
/// else iptables. scripts/test.sh runs the whole suite with iptables and the in-pod, mesh,
/// DNS, authorization and waypoint suites again with eBPF.
pub fn redirect_under_test() -> cni_plugin::redirect::Redirect {
    match std::env::var("KEELSON_TEST_REDIRECT") {
        Ok(v) if !v.is_empty() => v
            .parse()
            .unwrap_or_else(|e| panic!("KEELSON_TEST_REDIRECT: {e}")),
        _ => cni_plugin::redirect::Redirect::Iptables,
    }
}

impl Default for Options {
    fn default() -> Self {
        Options {
            pods: vec![
                PodSpec::meshed("client"),
                PodSpec::meshed("server").serving_echo(8080),
            ],
            env: Vec::new(),
            ztunnel_bin: None,
            log_to_files: true,
            log_sink: None,
            policies_yaml: None,
            source: Source::LocalFiles,
            shared_ztunnel: false,
            redirect: redirect_under_test(),
            control_plane_poll: None,
        }
    }
}

pub struct Testbed {
    /// Processes stop before namespaces go.
    ztunnels: BTreeMap<String, Proc>,
    controlplane: Option<Proc>,
    /// With [`Source::Kubernetes`]: the API server the control plane reads.
    pub apiserver: Option<apiserver::ApiServer>,
    agent: Option<std::sync::Arc<cni_plugin::agent::Agent>>,
    /// Index of the control plane's namespace on the LAN.
    cp_pod: Option<usize>,
    lan: Lan,
    pods: BTreeMap<String, (usize, Ipv4Addr)>,
    dir: PathBuf,
    opts: Options,
}

impl Testbed {
    pub fn start(opts: Options) -> Result<Testbed> {
        let prefix = netns::unique_prefix("t");
        let dir = std::env::temp_dir().join(format!("keelson-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        let mut lan = Lan::new(&prefix, Ipv4Addr::new(10, 10, 0, 0))?;
        let mut pods = BTreeMap::new();
        for (i, p) in opts.pods.iter().enumerate() {
            let n = 2 + i as u8;
            let idx = lan.add_pod(&p.name, n)?;
            pods.insert(p.name.clone(), (idx, lan.addr(n)));
        }
        let cp_pod = match opts.source {
            Source::LocalFiles => None,
            _ => Some(lan.add_pod("istiod", CONTROL_PLANE_HOST)?),
        };
        if opts.shared_ztunnel {
            if opts.source == Source::LocalFiles {
                bail!("a shared ztunnel needs a control plane (its CA impersonates pods)");
            }
            let idx = lan.add_pod(SHARED_NODE_POD, SHARED_NODE_HOST)?;
            pods.insert(
                SHARED_NODE_POD.to_string(),
                (idx, lan.addr(SHARED_NODE_HOST)),
            );
        }
        let mut tb = Testbed {
            ztunnels: BTreeMap::new(),
            controlplane: None,
            apiserver: None,
            agent: None,
            cp_pod,
            lan,
            pods,
            dir,
            opts,
        };
        if tb.opts.source == Source::LocalFiles {
            identity::LocalCa::load_or_create(
                &tb.ca_dir(),
                identity::DEFAULT_TRUST_DOMAIN,
                identity::ca::DEFAULT_CERT_TTL,
            )
            .context("creating the local CA")?;
        } else {
            // The CA and token key exist before anyone needs them; the control plane (ours
            // or the caller's) reads the same files.
            let (_, tokens) = controlplane::run::load_state(
                &tb.cp_state_dir(),
                &resources::MeshSettings::default(),
            )?;
            std::fs::create_dir_all(tb.dir.join("tokens"))?;
            for p in &tb.opts.pods {
                let t = tokens.mint(NAMESPACE, &p.service_account, Some(&tb.node_of(&p.name)));
                std::fs::write(tb.dir.join("tokens").join(&p.name), t)?;
            }
            let t = tokens.mint("istio-system", "ztunnel", Some(SHARED_NODE));
            std::fs::write(tb.dir.join("tokens").join(SHARED_NODE_POD), t)?;
            std::fs::create_dir_all(tb.resources_dir())?;
            if tb.opts.source == Source::Kubernetes {
                let listener = tb
                    .cp_ns()
                    .run(|| std::net::TcpListener::bind("127.0.0.1:0"))??;
                let api = apiserver::ApiServer::start(listener, &tb.dir)?;
                // The proxies' tokens are the control plane's own; here the API server
                // vouches for them, as a cluster's does for projected tokens.
                let authority =
                    controlplane::token::TokenAuthority::load_or_create(&tb.cp_state_dir())?;
                api.set_token_reviewer(Box::new(move |token| {
                    let claims = authority.verify(token).ok()?;
                    Some((claims.sub.clone(), claims.node().map(str::to_string)))
                }));
                tb.apiserver = Some(api);
            }
            tb.write_resources("mesh.yaml", &tb.k8s_yaml())?;
        }
        if matches!(tb.opts.source, Source::ControlPlane | Source::Kubernetes) {
            tb.start_control_plane()?;
        }
        let bin = match &tb.opts.ztunnel_bin {
            Some(b) => b.clone(),
            None => find_binary("ztunnel")?,
        };
        for p in tb.opts.pods.clone() {
            if !p.meshed {
                continue;
            }
            if tb.opts.shared_ztunnel {
                // The CNI plugin enrolls it below.
                continue;
            }
            let ns = tb.pod(&p.name);
            cni_plugin::redirect::install(&ns.path(), tb.opts.redirect)?;
            if tb.opts.ztunnel_bin.is_some() && tb.controlplane.is_some() {
                tb.uncapture_control_plane(&p.name)?;
            }
            let yaml = tb.dir.join(format!("{}.yaml", p.name));
            std::fs::write(&yaml, tb.wds_yaml(Some(&p)))?;
            let proc = tb.spawn_ztunnel(&bin, &p, &yaml)?;
            tb.ztunnels.insert(p.name.clone(), proc);
        }
        if tb.opts.shared_ztunnel {
            // The node: its agent, its ztunnel, then every pod created through the CNI plugin
            // as a container runtime would. With the API server, the agent (in this
            // process) reads pods from it on this namespace's loopback.
            let host_kubeconfig = match &tb.apiserver {
                Some(api) => {
                    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
                    Some(api.serve_also(listener, "agent")?)
                }
                None => None,
            };
            let agent = cni_plugin::agent::start(&cni_plugin::agent::AgentOptions {
                socket: tb.dir.join("cni.sock"),
                zds_socket: tb.dir.join("ztunnel.sock"),
                resources: tb.resources_dir(),
                api: host_kubeconfig.map(|k| cni_plugin::lookup::ApiOptions {
                    kubeconfig: Some(k),
                }),
                host_netns: None,
                redirect: tb.opts.redirect,
                state: Some(tb.dir.join("enrolled-pods.json")),
            })?;
            tb.agent = Some(agent);
            let proc = tb.spawn_shared_ztunnel(&bin)?;
            tb.ztunnels.insert(SHARED_NODE_POD.to_string(), proc);
            tb.wait_ready(SHARED_NODE_POD, Duration::from_secs(20))?;
            for p in tb.opts.pods.clone() {
                tb.cni("ADD", &p.name)?;
            }
            return Ok(tb);
        }
        if tb.opts.source == Source::ExternalControlPlane {
            return Ok(tb);
        }
        let meshed: Vec<String> = tb
            .opts
            .pods
            .iter()
            .filter(|p| p.meshed)
            .map(|p| p.name.clone())
            .collect();
        for name in meshed {
            tb.wait_ready(&name, Duration::from_secs(20))?;
        }
        Ok(tb)
    }

    fn spawn_ztunnel(&self, bin: &Path, p: &PodSpec, yaml: &Path) -> Result<Proc> {
        let mut cmd = self
            .pod(&p.name)
            .command(bin.to_str().context("non-UTF-8 path")?);
        cmd.args(["proxy", "ztunnel"])
            .env("PROXY_MODE", "dedicated")
            .env(
                "PROXY_WORKLOAD_INFO",
                format!("{NAMESPACE}/{}/{}", p.name, p.service_account),
            )
            .env("POD_NAME", &p.name)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("INSTANCE_IP", self.ip(&p.name).to_string())
            .env("NODE_NAME", format!("node-{}", p.name));
        if self.opts.source == Source::LocalFiles {
            cmd.env("LOCAL_XDS_PATH", yaml)
                .env("KEELSON_LOCAL_CA_DIR", self.ca_dir());
        } else {
            // The CA at the same address with the same root, named as well: the upstream
            // ztunnel (a benchmark anchor) does not default the CA to the xDS server.
            let cp = format!("https://{}", self.cp_addr());
            let root = self.cp_state_dir().join("root-cert.pem");
            cmd.env("XDS_ADDRESS", &cp)
                .env("XDS_ROOT_CA", &root)
                .env("CA_ADDRESS", &cp)
                .env("CA_ROOT_CA", &root)
                .env("AUTH_TOKEN", self.dir.join("tokens").join(&p.name));
        }
        cmd.env("PACKET_MARK", "1337")
            .env("ENABLE_ORIG_SRC", "true")
            .env("UNSTABLE_ENABLE_SOCKS5", "true")
            .env(
                "RUST_LOG",
                std::env::var("KEELSON_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        if let Some(sink) = &self.opts.log_sink {
            let log = std::fs::OpenOptions::new().write(true).open(sink)?;
            cmd.stdout(log.try_clone()?).stderr(log);
        } else if self.opts.log_to_files {
            // Appends, so a respawned ztunnel's log follows its predecessor's.
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path(&p.name))?;
            cmd.stdout(log.try_clone()?).stderr(log);
        }
        let child = cmd.spawn().context("starting ztunnel")?;
        Ok(Proc::new(&format!("ztunnel-{}", p.name), child))
    }

    /// Starts a new dedicated ztunnel for `pod` after its previous one was killed (or kills
    /// it first, SIGKILL, if it still runs); returns once the new one is ready.
    pub fn respawn_ztunnel(&mut self, pod: &str) -> Result<()> {
        if let Some(mut old) = self.ztunnels.remove(pod) {
            let _ = old.signal(nix::sys::signal::Signal::SIGKILL);
            old.wait_timeout(Duration::from_secs(5));
        }
        let bin = match &self.opts.ztunnel_bin {
            Some(b) => b.clone(),
            None => find_binary("ztunnel")?,
        };
        let spec = self.pod_spec(pod);
        let yaml = self.dir.join(format!("{pod}.yaml"));
        let proc = self.spawn_ztunnel(&bin, &spec, &yaml)?;
        self.ztunnels.insert(pod.to_string(), proc);
        self.wait_ready(pod, Duration::from_secs(20))
    }

    /// The node a pod runs on.
    pub fn node_of(&self, pod: &str) -> String {
        if self.opts.shared_ztunnel {
            SHARED_NODE.to_string()
        } else {
            format!("node-{pod}")
        }
    }

    /// Runs the `keelson-cni` binary for `pod` as a container runtime does (`CNI_*`
    /// environment, the network configuration with `prevResult` on stdin); its stdout, or an
    /// error holding its output when it fails.
    pub fn cni(&self, command: &str, pod: &str) -> Result<String> {
        let bin = find_binary("keelson-cni")?;
        let conf = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "k8s-pod-network",
            "type": "keelson-cni",
            "agentSocket": self.dir.join("cni.sock"),
            "prevResult": {
                "cniVersion": "1.0.0",
                "interfaces": [{"name": "eth0", "sandbox": format!("/var/run/netns/{}", self.pod(pod).name())}],
                "ips": [{"address": format!("{}/24", self.ip(pod)), "interface": 0}],
            },
        });
        let netns = self.pod(pod).path();
        let out = cni_plugin::invoke::call(
            &bin,
            &cni_plugin::invoke::CniCall {
                command,
                container_id: &format!("sandbox-{pod}"),
                netns: &netns,
                namespace: NAMESPACE,
                pod,
                conf: &conf,
            },
        )?;
        if !out.ok {
            bail!(
                "keelson-cni {command} {pod} failed: {}{}",
                out.stdout,
                out.stderr
            );
        }
        Ok(out.stdout)
    }

    /// Stops the shared ztunnel (SIGTERM, drain) and starts a new one, which gets the node
    /// agent's snapshot; returns once it is ready.
    pub fn restart_shared_ztunnel(&mut self) -> Result<()> {
        if let Some(mut old) = self.ztunnels.remove(SHARED_NODE_POD) {
            old.stop(Duration::from_secs(10));
        }
        let bin = match &self.opts.ztunnel_bin {
            Some(b) => b.clone(),
            None => find_binary("ztunnel")?,
        };
        let proc = self.spawn_shared_ztunnel(&bin)?;
        self.ztunnels.insert(SHARED_NODE_POD.to_string(), proc);
        self.wait_ready(SHARED_NODE_POD, Duration::from_secs(20))
    }

    /// A rolling update of the node's ztunnel: a new process starts beside the running one
    /// (its listeners join the old ones' SO_REUSEPORT groups), and once it has taken every
    /// pod from the node agent the old one gets SIGTERM and drains. Returns the old process,
    /// draining, and the new one's log.
    pub fn hand_off_shared_ztunnel(&mut self) -> Result<(Proc, PathBuf)> {
        let bin = match &self.opts.ztunnel_bin {
            Some(b) => b.clone(),
            None => find_binary("ztunnel")?,
        };
        let log = self.dir.join("ztunnel-next.log");
        let new = self.spawn_shared_ztunnel_logging(&bin, &log)?;
        let pods = self.opts.pods.iter().filter(|p| p.meshed).count();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("pod enrolled").count() >= pods && text.contains("xds stream open") {
                break;
            }
            if Instant::now() > deadline {
                bail!("the new ztunnel did not take the pods over:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let old = self
            .ztunnels
            .insert(SHARED_NODE_POD.to_string(), new)
            .context("no shared ztunnel was running")?;
        old.signal(nix::sys::signal::Signal::SIGTERM)?;
        Ok((old, log))
    }

    fn spawn_shared_ztunnel(&self, bin: &Path) -> Result<Proc> {
        self.spawn_shared_ztunnel_logging(bin, &self.log_path(SHARED_NODE_POD))
    }

    fn spawn_shared_ztunnel_logging(&self, bin: &Path, log: &Path) -> Result<Proc> {
        let node = SHARED_NODE_POD;
        let mut cmd = self
            .pod(node)
            .command(bin.to_str().context("non-UTF-8 path")?);
        cmd.args(["proxy", "ztunnel"])
            .env("PROXY_MODE", "shared")
            .env("INPOD_UDS", self.dir.join("ztunnel.sock"))
            .env("POD_NAME", "ztunnel-1")
            .env("POD_NAMESPACE", "istio-system")
            .env("INSTANCE_IP", self.ip(node).to_string())
            .env("NODE_NAME", SHARED_NODE)
            .env("XDS_ADDRESS", format!("https://{}", self.cp_addr()))
            .env("XDS_ROOT_CA", self.cp_state_dir().join("root-cert.pem"))
            .env("AUTH_TOKEN", self.dir.join("tokens").join(node))
            .env("ENABLE_ORIG_SRC", "true")
            .env(
                "RUST_LOG",
                std::env::var("KEELSON_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("starting the shared ztunnel")?;
        Ok(Proc::new("ztunnel-shared", child))
    }

    fn start_control_plane(&mut self) -> Result<()> {
        let bin = find_binary("keelson")?;
        let ns = self.cp_ns();
        let mut cmd = ns.command(bin.to_str().context("non-UTF-8 path")?);
        cmd.arg("controlplane");
        match &self.apiserver {
            Some(api) => cmd
                .arg("--kubeconfig")
                .arg(&api.kubeconfig)
                .args(["--waypoint-image", "keelson/waypoint:test"]),
            None => cmd.arg("--resources").arg(self.resources_dir()),
        };
        if let Some(poll) = self.opts.control_plane_poll {
            cmd.args(["--poll-interval", &poll.as_millis().to_string()]);
        }
        cmd.arg("--state-dir")
            .arg(self.cp_state_dir())
            .args(["--listen", &self.cp_addr().to_string()])
            .env(
                "RUST_LOG",
                std::env::var("KEELSON_CONTROLPLANE_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("controlplane.log"))?;
        cmd.stdout(log.try_clone()?).stderr(log);
        let child = cmd.spawn().context("starting the control plane")?;
        self.controlplane = Some(Proc::new("controlplane", child));
        Ok(())
    }

    /// Stops the control plane (SIGKILL: no goodbye to the ztunnels).
    pub fn kill_control_plane(&mut self) {
        if let Some(mut p) = self.controlplane.take() {
            let _ = p.signal(nix::sys::signal::Signal::SIGKILL);
            p.wait_timeout(Duration::from_secs(5));
        }
    }

    /// Starts the control plane again, on the same state and resources.
    pub fn restart_control_plane(&mut self) -> Result<()> {
        self.kill_control_plane();
        self.start_control_plane()
    }

    pub fn control_plane_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("controlplane.log")).unwrap_or_default()
    }

    pub fn cp_ns(&self) -> &Netns {
        self.lan
            .pod(self.cp_pod.expect("the testbed has a control plane"))
    }

    /// A dedicated ztunnel runs inside its pod, so its own connections to the control plane
    /// would be captured unless marked. Keelson's ztunnel marks them; another ztunnel (a
    /// benchmark anchor such as the upstream one, whose dedicated mode marks only proxied
    /// connections) needs the control plane exempted from the pod's capture, as it is for a
    /// ztunnel in a namespace of its own.
    fn uncapture_control_plane(&self, pod: &str) -> Result<()> {
        let cp = self.cp_addr();
        let (ip, port) = (cp.ip().to_string(), cp.port().to_string());
        let args = [
            "-t", "nat", "-I", "OUTPUT", "1", "-p", "tcp", "-d", &ip, "--dport", &port, "-j",
            "RETURN",
        ];
        self.pod(pod).exec("iptables", &args)?;
        Ok(())
    }

    pub fn cp_addr(&self) -> SocketAddr {
        SocketAddr::new(
            IpAddr::V4(self.lan.addr(CONTROL_PLANE_HOST)),
            CONTROL_PLANE_PORT,
        )
    }

    pub fn cp_state_dir(&self) -> PathBuf {
        self.dir.join("cp")
    }

    /// The directory the control plane watches.
    pub fn resources_dir(&self) -> PathBuf {
        self.dir.join("k8s")
    }

    /// Writes (atomically) one file of Kubernetes YAML into the watched directory; with
    /// the API server, puts its objects there instead (and deletes the ones the file's
    /// previous content had and this one has not).
    pub fn write_resources(&self, file: &str, text: &str) -> Result<()> {
        if let Some(api) = &self.apiserver {
            return api.sync(file, text);
        }
        let tmp = self.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, self.resources_dir().join(file))?;
        Ok(())
    }

    pub fn remove_resources(&self, file: &str) -> Result<()> {
        if let Some(api) = &self.apiserver {
            return api.sync(file, "");
        }
        std::fs::remove_file(self.resources_dir().join(file))?;
        Ok(())
    }

    /// A Pod manifest for one testbed pod: labels `pod: <name>` (plus `app: echo` when it
    /// serves the echo service) and the ambient label when meshed.
    pub fn pod_yaml(&self, name: &str, extra_labels: &[(&str, &str)]) -> String {
        let p = self.pod_spec(name);
        let mut map = BTreeMap::new();
        map.insert("pod", name);
        map.insert(
            "istio.io/dataplane-mode",
            if p.meshed { "ambient" } else { "none" },
        );
        if p.echo_target_port.is_some() {
            map.insert("app", "echo");
        }
        for (k, v) in extra_labels {
            map.insert(k, v);
        }
        let labels = map
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect::<Vec<_>>()
            .join(", ");
        let ports = p
            .echo_target_port
            .map(|t| format!("\n    ports: [{{name: echo, containerPort: {t}}}]"))
            .unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: {NAMESPACE}\n  labels: {{{labels}}}\nspec:\n  serviceAccountName: {sa}\n  nodeName: {node}\n  containers:\n  - name: main{ports}\nstatus:\n  phase: Running\n  podIP: {ip}\n",
            sa = p.service_account,
            node = self.node_of(name),
            ip = self.ip(name),
        )
    }

    /// The Kubernetes YAML of the whole testbed: the namespace, the echo Service (named
    /// target port, so each pod can serve on its own port) and every pod.
    pub fn k8s_yaml(&self) -> String {
        let mut docs = vec![
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"),
            format!(
                "apiVersion: v1\nkind: Service\nmetadata:\n  name: echo\n  namespace: {NAMESPACE}\nspec:\n  clusterIP: {SERVICE_VIP}\n  selector: {{app: echo}}\n  ports:\n  - {{name: tcp-echo, port: {SERVICE_PORT}, targetPort: echo}}\n"
            ),
        ];
        for p in &self.opts.pods {
            docs.push(self.pod_yaml(&p.name, &[]));
        }
        docs.join("---\n")
    }

    /// The WDS-shaped YAML. `me` is the pod whose ztunnel reads it (it may claim another SA).
    pub fn wds_yaml(&self, me: Option<&PodSpec>) -> String {
        let mut out = String::from("workloads:\n");
        for p in &self.opts.pods {
            let ip = self.pods[&p.name].1;
            let sa = match (me, &p.claims_service_account) {
                (Some(m), Some(claim)) if m.name == p.name => claim.clone(),
                _ => p.service_account.clone(),
            };
            out += &format!(
                "  - uid: Kubernetes//Pod/{NAMESPACE}/{name}\n    name: {name}\n    namespace: {NAMESPACE}\n    addresses: [{ip}]\n    tunnelProtocol: {tp}\n    serviceAccount: {sa}\n    node: node-{name}\n    canonicalName: {name}\n    canonicalRevision: v1\n    workloadName: {name}\n",
                name = p.name,
                tp = if p.meshed { "HBONE" } else { "NONE" },
            );
            if let Some(tport) = p.echo_target_port {
                out += &format!("    services:\n      {NAMESPACE}/{SERVICE_HOST}: {{{SERVICE_PORT}: {tport}}}\n");
            }
        }
        out += &format!(
            "services:\n  - name: echo\n    namespace: {NAMESPACE}\n    hostname: {SERVICE_HOST}\n    addresses: [{SERVICE_VIP}]\n    ports: {{{SERVICE_PORT}: 0}}\n"
        );
        if let Some(p) = &self.opts.policies_yaml {
            out += p;
        }
        out
    }

    /// Replaces the policies in every ztunnel's YAML (ztunnel reloads it within a second).
    pub fn set_policies(&mut self, policies_yaml: Option<String>) -> Result<()> {
        self.opts.policies_yaml = policies_yaml;
        for p in self.opts.pods.clone().iter().filter(|p| p.meshed) {
            self.write_yaml(p, &self.wds_yaml(Some(p)))?;
        }
        Ok(())
    }

    /// Overwrites the YAML file one ztunnel reads (atomically: write then rename).
    pub fn write_yaml(&self, pod: &PodSpec, text: &str) -> Result<()> {
        let path = self.dir.join(format!("{}.yaml", pod.name));
        let tmp = self.dir.join(format!("{}.yaml.tmp", pod.name));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, &path)?;
        Ok(())
    }

    pub fn pod_spec(&self, name: &str) -> PodSpec {
        self.opts
            .pods
            .iter()
            .find(|p| p.name == name)
            .cloned()
            .expect("known pod")
    }

    pub fn pod(&self, name: &str) -> &Netns {
        self.lan.pod(self.pods[name].0)
    }

    pub fn ip(&self, name: &str) -> IpAddr {
        IpAddr::V4(self.pods[name].1)
    }

    pub fn bridge(&self) -> &Netns {
        self.lan.bridge()
    }

    /// The directory holding the mesh root (`root-cert.pem`, `root-key.pem`).
    pub fn ca_dir(&self) -> PathBuf {
        match self.opts.source {
            Source::LocalFiles => self.dir.join("ca"),
            _ => self.cp_state_dir(),
        }
    }

    pub fn log_path(&self, pod: &str) -> PathBuf {
        self.dir.join(format!("ztunnel-{pod}.log"))
    }

    pub fn log(&self, pod: &str) -> String {
        std::fs::read_to_string(self.log_path(pod)).unwrap_or_default()
    }

    pub fn ztunnel(&mut self, pod: &str) -> &mut Proc {
        self.ztunnels.get_mut(pod).expect("pod has a ztunnel")
    }

    pub fn ztunnel_pid(&self, pod: &str) -> u32 {
        self.ztunnels[pod].pid()
    }

    /// An HTTP/1.0 GET from inside `pod` to `addr`; returns (status, body).
    pub fn http_get(&self, pod: &str, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
        http_get_in(self.pod(pod), addr, path)
    }

    /// The control plane's `/metrics` (monitoring port 15014).
    pub fn control_plane_metrics(&self) -> Result<String> {
        let addr = SocketAddr::new(
            self.cp_addr().ip(),
            controlplane::run::DEFAULT_MONITORING_PORT,
        );
        Ok(http_get_in(self.cp_ns(), addr, "/metrics")?.1)
    }
}

/// `n` ambient pods of namespace `scale` on 20 nodes that are not in the testbed: workloads
/// every ztunnel learns of, with no traffic (scale tests, `bench l4 --workloads`). In
/// generation `g`, 1% of them (a different 1% each time) carry a new name, so each
/// generation removes and adds that many workloads.
pub fn synthetic_pods(n: usize, g: usize) -> String {
    let churn = (n / 100).max(1);
    let mut out = String::from(
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: scale\n  labels: {istio.io/dataplane-mode: ambient}\n",
    );
    for i in 0..n {
        let replaced = g > 0 && (i / churn) % 100 == (g - 1) % 100;
        let name = if replaced {
            format!("w{i}-g{g}")
        } else {
            format!("w{i}")
        };
        out.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: scale\n  \
             labels: {{app: a{app}}}\nspec:\n  serviceAccountName: sa{sa}\n  nodeName: n{node}\n  \
             containers:\n  - name: main\nstatus:\n  phase: Running\n  podIP: 10.20.{hi}.{lo}\n",
            app = i % 100,
            sa = i % 50,
            node = i % 20,
            hi = i / 250,
            lo = i % 250 + 1,
        ));
    }
    out
}

/// An HTTP/1.0 GET from inside `ns` to `addr`; returns (status, body).
pub fn http_get_in(ns: &Netns, addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    netns::http_get_at(&ns.path(), addr, path)
}

impl Testbed {
    /// Waits until the ztunnel of `pod` answers 200 on /healthz/ready.
    pub fn wait_ready(&mut self, pod: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let addr: SocketAddr = "127.0.0.1:15021".parse().unwrap();
        loop {
            if let Some(status) = self.ztunnel(pod).try_wait() {
                bail!("ztunnel of {pod} exited with {status}:\n{}", self.log(pod));
            }
            if let Ok((200, _)) = self.http_get(pod, addr, "/healthz/ready") {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "ztunnel of {pod} not ready after {timeout:?}:\n{}",
                    self.log(pod)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Prometheus text of the ztunnel of `pod`.
    pub fn metrics(&self, pod: &str) -> Result<String> {
        Ok(self
            .http_get(pod, "127.0.0.1:15020".parse().unwrap(), "/metrics")?
            .1)
    }

    /// `/config_dump` of the ztunnel of `pod`.
    pub fn config_dump(&self, pod: &str) -> Result<serde_json::Value> {
        let (_, body) = self.http_get(pod, "127.0.0.1:15000".parse().unwrap(), "/config_dump")?;
        Ok(serde_json::from_str(&body)?)
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        self.ztunnels.clear();
        self.agent = None;
        if self.opts.redirect == cni_plugin::redirect::Redirect::Ebpf {
            // The namespaces go with the LAN; their programs' pins would stay on bpffs.
            for (idx, _) in self.pods.values() {
                cni_plugin::redirect::ebpf::forget(&self.lan.pod(*idx).path());
            }
        }
        self.controlplane = None;
        if std::env::var_os("KEELSON_KEEP_TESTBED").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
