//! A small mesh on network namespaces: pods on one bridge, each meshed pod with its own
//! dedicated ztunnel and in-pod redirection, a local CA, and the WDS-shaped YAML they share.
//! Used by the end-to-end tests and by `keelson bench l4`.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use netns::{Lan, Netns, Proc};

pub const NAMESPACE: &str = "default";
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
pub const SERVICE_PORT: u16 = 80;
pub const SERVICE_HOST: &str = "echo.default.svc.cluster.local";

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
    /// A `policies:` section (L4 authorization, see ztunnel/src/rbac.rs) for the YAML.
    pub policies_yaml: Option<String>,
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
            policies_yaml: None,
        }
    }
}

pub struct Testbed {
    /// Processes stop before namespaces go.
    ztunnels: BTreeMap<String, Proc>,
    lan: Lan,
    pods: BTreeMap<String, (usize, Ipv4Addr)>,
    dir: PathBuf,
    opts: Options,
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

impl Testbed {
    pub fn start(opts: Options) -> Result<Testbed> {
        let prefix = netns::unique_prefix("t");
        let dir = std::env::temp_dir().join(format!("keelson-{prefix}"));
        std::fs::create_dir_all(&dir)?;
        let ca_dir = dir.join("ca");
        identity::LocalCa::load_or_create(
            &ca_dir,
            identity::DEFAULT_TRUST_DOMAIN,
            identity::ca::DEFAULT_CERT_TTL,
        )
        .context("creating the local CA")?;
        let mut lan = Lan::new(&prefix, Ipv4Addr::new(10, 10, 0, 0))?;
        let mut pods = BTreeMap::new();
        for (i, p) in opts.pods.iter().enumerate() {
            let n = 2 + i as u8;
            let idx = lan.add_pod(&p.name, n)?;
            pods.insert(p.name.clone(), (idx, lan.addr(n)));
        }
        let mut tb = Testbed {
            ztunnels: BTreeMap::new(),
            lan,
            pods,
            dir,
            opts,
        };
        let bin = match &tb.opts.ztunnel_bin {
            Some(b) => b.clone(),
            None => find_binary("ztunnel")?,
        };
        for p in tb.opts.pods.clone() {
            if !p.meshed {
                continue;
            }
            let ns = tb.pod(&p.name);
            netns::install_redirect(ns)?;
            let yaml = tb.dir.join(format!("{}.yaml", p.name));
            std::fs::write(&yaml, tb.wds_yaml(Some(&p)))?;
            let proc = tb.spawn_ztunnel(&bin, &p, &yaml)?;
            tb.ztunnels.insert(p.name.clone(), proc);
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
            .env("LOCAL_XDS_PATH", yaml)
            .env("KEELSON_LOCAL_CA_DIR", self.dir.join("ca"))
            .env("PACKET_MARK", "1337")
            .env("ENABLE_ORIG_SRC", "true")
            .env("UNSTABLE_ENABLE_SOCKS5", "true")
            .env(
                "RUST_LOG",
                std::env::var("KEELSON_ZTUNNEL_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.opts.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        if self.opts.log_to_files {
            let log = std::fs::File::create(self.log_path(&p.name))?;
            cmd.stdout(log.try_clone()?).stderr(log);
        }
        let child = cmd.spawn().context("starting ztunnel")?;
        Ok(Proc::new(&format!("ztunnel-{}", p.name), child))
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

    pub fn ca_dir(&self) -> PathBuf {
        self.dir.join("ca")
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
        let path = path.to_string();
        self.pod(pod).run(move || -> Result<(u16, String)> {
            let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
            let mut buf = String::new();
            s.read_to_string(&mut buf)?;
            let status = buf
                .split_whitespace()
                .nth(1)
                .and_then(|c| c.parse().ok())
                .context("no HTTP status")?;
            let body = buf
                .split_once("\r\n\r\n")
                .map(|x| x.1)
                .unwrap_or("")
                .to_string();
            Ok((status, body))
        })?
    }

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
        if std::env::var_os("KEELSON_KEEP_TESTBED").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}
