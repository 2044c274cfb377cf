//! The local mesh driven through the `keelson` command, for the end-to-end suites: `keelson
//! up` in a state directory and with namespace names of this test process only, `keelson
//! down` when dropped.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use netns::find_binary;

/// Namespaces are named `ktm<pid>-…`: unique to this run, and caught by the test script's
/// leak check (`kt*`).
pub fn prefix() -> String {
    format!("ktm{}", std::process::id())
}

/// Several meshes in one test process: `ktm<pid><tag>-…`.
fn tagged_prefix(tag: &str) -> String {
    format!("{}{tag}", prefix())
}

/// The default namespace in ambient mode with a namespace waypoint (a Gateway of class
/// `istio-waypoint`) that its services use.
pub const WAYPOINT: &str = "apiVersion: v1
kind: Namespace
metadata:
  name: default
  labels:
    istio.io/dataplane-mode: ambient
    istio.io/use-waypoint: waypoint
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: waypoint
  namespace: default
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
";

pub struct Mesh {
    pub home: PathBuf,
    bin: PathBuf,
    prefix: String,
    /// The files [`Mesh::write`] made, removed with the mesh (a failing test leaves none).
    written: std::sync::Mutex<Vec<PathBuf>>,
}

pub struct Out {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl Default for Mesh {
    fn default() -> Self {
        Mesh::new()
    }
}

impl Mesh {
    /// The log of the `default` namespace's waypoint (`WAYPOINT`); its access log lines go
    /// out in batches, so poll for a line a request should have left.
    pub fn waypoint_log(&self) -> String {
        std::fs::read_to_string(
            self.home
                .join("logs/pod-default-waypoint-0-istio-proxy.log"),
        )
        .unwrap_or_default()
    }

    pub fn new() -> Mesh {
        Mesh::tagged("")
    }

    /// The `keelson` binary the mesh runs, for pods that run one of its commands.
    pub fn bin(&self) -> &std::path::Path {
        &self.bin
    }

    /// A mesh of its own for one test of a process that runs several.
    pub fn tagged(tag: &str) -> Mesh {
        let home =
            std::env::temp_dir().join(format!("keelson-mesh-test-{}{tag}", std::process::id()));
        Mesh {
            home,
            bin: find_binary("keelson").unwrap(),
            prefix: tagged_prefix(tag),
            written: Default::default(),
        }
    }

    /// `keelson ARGS` on this mesh, to spawn (for commands that run on in the background).
    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args);
        if args.first() == Some(&"up") && !args.contains(&"--redirect") {
            cmd.args(["--redirect", testbed::redirect_under_test().name()]);
        }
        cmd.env("KEELSON_HOME", &self.home)
            .env("KEELSON_PREFIX", &self.prefix)
            .stdin(Stdio::null());
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Out {
        let out = self.command(args).output().unwrap();
        Out {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs a command and fails the test, with its output, if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.ok,
            "keelson {}:\n{}\n{}\n{}",
            args.join(" "),
            out.stdout,
            out.stderr,
            self.logs()
        );
        out.stdout
    }

    pub fn exec(&self, pod: &str, cmd: &[&str]) -> Out {
        let mut args = vec!["exec", pod, "--"];
        args.extend_from_slice(cmd);
        self.run(&args)
    }

    /// `curl URL` from `pod` answers and the answer contains `expect`.
    pub fn curl(&self, pod: &str, url: &str, expect: &str) -> String {
        let out = self.exec(pod, &["curl", "-sS", "-m", "10", url]);
        if !(out.ok && out.stdout.contains(expect)) {
            // What the mesh looked like then: a connection that timed out says little alone.
            let status = self.run(&["status"]).stdout;
            let routes: Vec<String> = ["node-1", "node-2"]
                .iter()
                .map(|n| {
                    let ns = format!("{}-{n}", self.prefix);
                    let o =
                        netns::run("ip", &["-n", &ns, "route"]).unwrap_or_else(|e| e.to_string());
                    format!("routes of {n}:\n{o}")
                })
                .collect();
            panic!(
                "curl {url} from {pod}: {}{}\n{status}\n{}\n{}",
                out.stdout,
                out.stderr,
                routes.join("\n"),
                self.logs()
            );
        }
        out.stdout
    }

    /// `curl -si` from the `curl` pod: the status and the whole response (headers too).
    pub fn curl_i(&self, args: &[&str]) -> (u16, String) {
        let mut cmd = vec!["curl", "-si", "-m", "15"];
        cmd.extend_from_slice(args);
        let out = self.exec("curl", &cmd);
        let status = out
            .stdout
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, out.stdout)
    }

    /// How many requests a bundled app's pod has served (its own `/requests` count, read
    /// over the pod IP, which passes no service waypoint); the read itself counts once.
    pub fn served(&self, pod: &str) -> u64 {
        let ip = self.pod(pod)["ip"].as_str().unwrap().to_string();
        let out = self.curl("curl", &format!("http://{ip}:9080/requests"), "");
        out.trim().parse().unwrap()
    }

    /// Whether `pod` comes to have served exactly `n` requests more than a `served` reading
    /// of `before`, the readings themselves not counted; false after `secs`.
    pub fn served_more(&self, pod: &str, before: u64, n: u64, secs: u64) -> bool {
        let mut reads = 0;
        eventually_sync(secs, || {
            reads += 1;
            self.served(pod) == before + reads + n
        })
    }

    pub fn write(&self, name: &str, yaml: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!("keelson-mesh-test-{}-{name}", self.prefix));
        std::fs::write(&p, yaml).unwrap();
        self.written.lock().unwrap().push(p.clone());
        p
    }

    pub fn logs(&self) -> String {
        let dir = self.home.join("logs");
        let mut out = String::new();
        for f in [
            "controlplane.log",
            "node-1-ztunnel.log",
            "node-2-ztunnel.log",
        ] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            out += &format!(
                "== {f}\n{}\n",
                lines[lines.len().saturating_sub(30)..].join("\n")
            );
        }
        out
    }

    pub fn netns_left(&self) -> Vec<String> {
        netns::run("ip", &["netns", "list"])
            .unwrap()
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(&format!("{}-", self.prefix)))
            .map(str::to_string)
            .collect()
    }

    pub fn state(&self) -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(self.home.join("mesh.json")).unwrap())
            .unwrap()
    }

    pub fn pod(&self, name: &str) -> serde_json::Value {
        self.state()["pods"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no pod {name}"))
    }

    /// The load balancer address of a gateway pod (reachable from the machine's own
    /// namespace).
    pub fn host_ip(&self, pod: &str) -> String {
        self.pod(pod)["host_ip"]
            .as_str()
            .unwrap_or_else(|| panic!("pod {pod} has no load balancer address"))
            .to_string()
    }

    /// `curl -si ARGS` from the machine's own namespace (as a user reaches an ingress
    /// gateway): the status and the whole response.
    pub fn curl_host(&self, args: &[&str]) -> (u16, String) {
        let out = Command::new("curl")
            .args(["-si", "-m", "10"])
            .args(args)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        (status, text + &String::from_utf8_lossy(&out.stderr))
    }

    /// Polls `curl_host` until it answers `status` with `expect` in the response.
    pub fn curl_host_until(&self, args: &[&str], status: u16, expect: &str) -> String {
        let mut last = String::new();
        let ok = eventually_sync(15, || {
            let (s, out) = self.curl_host(args);
            last = out;
            s == status && last.contains(expect)
        });
        assert!(
            ok,
            "curl {args:?} from the machine: {last}\n{}",
            self.logs()
        );
        last
    }

    /// A pod's log (`pod-<ns>-<pod>-<container>.log`).
    pub fn pod_log(&self, namespace: &str, pod: &str, container: &str) -> String {
        std::fs::read_to_string(
            self.home
                .join(format!("logs/pod-{namespace}-{pod}-{container}.log")),
        )
        .unwrap_or_default()
    }

    pub fn node_netns(&self, node: &str) -> PathBuf {
        netns::netns_path(&format!("{}-{node}", self.prefix))
    }

    pub fn config_dump(&self, node: &str) -> serde_json::Value {
        let (_, body) = netns::http_get_at(
            &self.node_netns(node),
            "127.0.0.1:15000".parse().unwrap(),
            "/config_dump",
        )
        .unwrap();
        serde_json::from_str(&body).unwrap()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let down = self.run(&["down"]);
        for p in self.written.lock().unwrap().drain(..) {
            let _ = std::fs::remove_file(p);
        }
        self.reap_leftovers(&down);
    }
}

impl Mesh {
    /// Processes of this mesh still running after `keelson down` (found by the
    /// `KEELSON_HOME` in their environment): recorded in `target/leaked-processes.log`,
    /// which scripts/test.sh prints, and killed by pid.
    fn reap_leftovers(&self, down: &Out) {
        let want = format!("KEELSON_HOME={}", self.home.display()).into_bytes();
        let mut found = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|p| p.parse::<i32>().ok()) else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            if !env.split(|b| *b == 0).any(|kv| kv == want.as_slice()) {
                continue;
            }
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            if cmd.trim().is_empty() {
                continue; // a zombie: nothing runs
            }
            found.push(format!("pid {pid}: {cmd}"));
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if found.is_empty() {
            return;
        }
        let log =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/leaked-processes.log");
        let text = format!(
            "mesh {} (test thread {:?}): {} process(es) outlived `keelson down` (ok: {}, stderr: {})\n  {}\n",
            self.prefix,
            std::thread::current().name().unwrap_or("?"),
            found.len(),
            down.ok,
            down.stderr.trim(),
            found.join("\n  ")
        );
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = f.write_all(text.as_bytes());
        }
        eprintln!("{text}");
    }
}

/// Polls `f` for up to `secs` seconds (blocking).
pub fn eventually_sync(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
