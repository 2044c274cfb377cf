//! Network-namespace building blocks for tests, benchmarks and the local mesh: named network
//! namespaces removed on drop, pods joined by veth pairs to a bridge, code and processes run
//! inside a namespace. Everything fails loudly: a test must never pass because it could not
//! build its network.
#![deny(unsafe_code)]

mod process;

use std::fs::File;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{bail, Context, Result};

pub use process::{find_binary, kill_all_in, Proc};

/// Runs a command and fails with its stderr if it exits non-zero.
pub fn run(cmd: &str, args: &[&str]) -> Result<String> {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {cmd} (is it installed? run scripts/setup.sh)"))?;
    if !out.status.success() {
        bail!(
            "{cmd} {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Raises the soft open-file limit to the hard limit (proxies and load tests hold many sockets).
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
            .map(|()| hard)
            .unwrap_or(soft),
        Ok((soft, _)) => soft,
        Err(_) => 0,
    }
}

/// A short name unique to this process and call, usable as a namespace name prefix.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "k{tag}{}x{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A named network namespace (`ip netns add`), deleted when dropped.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    pub fn create(name: &str) -> Result<Netns> {
        if !nix::unistd::Uid::effective().is_root() {
            bail!("network namespaces need root: run the tests as root");
        }
        run("ip", &["netns", "add", name])?;
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Result<String> {
        ip_in(&self.name, args)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Result<String> {
        exec_in(&self.name, cmd, args)
    }

    /// A `Command` that runs `program` inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", self.name.as_str(), program]);
        c
    }

    /// Runs `f` on a thread that has entered the namespace. Sockets created by `f` stay in the
    /// namespace after the thread ends, so this is how to make a socket "inside a pod".
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        run_at(&self.path(), f)
    }

    /// The namespace's bind mount, `/var/run/netns/<name>`.
    pub fn path(&self) -> std::path::PathBuf {
        netns_path(&self.name)
    }

    /// Keeps the namespace after this handle is gone (the local mesh outlives its command);
    /// returns its name.
    pub fn persist(self) -> String {
        let name = self.name.clone();
        std::mem::forget(self);
        name
    }
}

/// `ip -n <name> ...`, for a namespace known by name (one kept with [`Netns::persist`]).
pub fn ip_in(name: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["-n", name];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs a command inside the namespace `name`.
pub fn exec_in(name: &str, cmd: &str, args: &[&str]) -> Result<String> {
    let mut full = vec!["netns", "exec", name, cmd];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Removes the namespace `name` (kept with [`Netns::persist`]) and its `/etc/netns` files;
/// a namespace that is already gone is not an error.
pub fn delete(name: &str) {
    let _ = run("ip", &["netns", "del", name]);
    let _ = std::fs::remove_dir_all(Path::new("/etc/netns").join(name));
}

/// The names of the namespaces that exist now.
pub fn list() -> Vec<String> {
    run("ip", &["netns", "list"])
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// The bind mount of the named namespace.
pub fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/var/run/netns").join(name)
}

/// Runs `f` on a thread that has entered the network namespace at `path`.
pub fn run_at<T: Send + 'static>(path: &Path, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let shown = path.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the network namespace")?;
        Ok(f())
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread inside {shown} panicked"))?
}

/// A one-shot HTTP/1.0 GET from inside the namespace at `ns`: (status, body).
pub fn http_get_at(ns: &Path, addr: std::net::SocketAddr, path: &str) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let path = path.to_string();
    run_at(ns, move || -> Result<(u16, String)> {
        let timeout = std::time::Duration::from_secs(5);
        let mut s = std::net::TcpStream::connect_timeout(&addr, timeout)?;
        s.set_read_timeout(Some(timeout))?;
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

impl Netns {
    /// A TCP connection made from inside the namespace (blocking connect, then non-blocking).
    pub fn tcp_connect(&self, addr: std::net::SocketAddr) -> Result<std::net::TcpStream> {
        let s = self.run(move || {
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(10))
        })??;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        Ok(s)
    }

    /// A TCP listener bound inside the namespace (non-blocking).
    /// The backlog is 4,096 (std's is 128): a test dialling 1,000 connections at once under
    /// full CPU load must not see SYNs dropped for a full accept queue.
    pub fn tcp_listen(&self, addr: std::net::SocketAddr) -> Result<std::net::TcpListener> {
        let l = self.run(move || -> std::io::Result<std::net::TcpListener> {
            use socket2::{Domain, Socket, Type};
            let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
            s.set_reuse_address(true)?;
            s.bind(&addr.into())?;
            s.listen(4096)?;
            Ok(s.into())
        })??;
        l.set_nonblocking(true)?;
        Ok(l)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also deletes the veth ends inside it.
        let _ = run("ip", &["netns", "del", &self.name]);
        let _ = std::fs::remove_dir_all(format!("/etc/netns/{}", self.name));
    }
}

/// An L2 segment: a namespace holding a bridge, to which pods attach with veth pairs.
pub struct Lan {
    /// Pods are declared before the bridge so they are deleted first.
    pods: Vec<Netns>,
    bridge: Netns,
    prefix: String,
    subnet: Ipv4Addr,
}

impl Lan {
    /// A bridge for `subnet`/24 (e.g. 10.10.0.0).
    pub fn new(prefix: &str, subnet: Ipv4Addr) -> Result<Lan> {
        let bridge = Netns::create(&format!("{prefix}-net"))?;
        bridge.ip(&["link", "add", "br0", "type", "bridge"])?;
        bridge.ip(&["link", "set", "br0", "up"])?;
        Ok(Lan {
            pods: Vec::new(),
            bridge,
            prefix: prefix.to_string(),
            subnet,
        })
    }

    /// The address of host `n` in the subnet.
    pub fn addr(&self, n: u8) -> Ipv4Addr {
        let o = self.subnet.octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }

    /// Creates pod namespace `name` with `eth0` = host `n` of the subnet, default route on eth0.
    /// Returns its index in [`Lan::pod`].
    pub fn add_pod(&mut self, name: &str, n: u8) -> Result<usize> {
        let ns = Netns::create(&format!("{}-{name}", self.prefix))?;
        let host_end = format!("v{}", self.pods.len());
        run(
            "ip",
            &[
                "link",
                "add",
                "name",
                &host_end,
                "netns",
                self.bridge.name(),
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
        )?;
        self.bridge
            .ip(&["link", "set", &host_end, "master", "br0", "up"])?;
        let cidr = format!("{}/24", self.addr(n));
        ns.ip(&["addr", "add", &cidr, "dev", "eth0"])?;
        ns.ip(&["link", "set", "eth0", "up"])?;
        ns.ip(&["route", "add", "default", "dev", "eth0"])?;
        self.pods.push(ns);
        Ok(self.pods.len() - 1)
    }

    pub fn pod(&self, i: usize) -> &Netns {
        &self.pods[i]
    }

    /// The namespace holding the bridge (where a capture of inter-pod traffic can run).
    pub fn bridge(&self) -> &Netns {
        &self.bridge
    }
}

impl Netns {
    /// The resolv.conf processes started with [`Netns::command`] see (`ip netns exec` mounts
    /// `/etc/netns/<name>/resolv.conf` over `/etc/resolv.conf`); removed with the namespace.
    pub fn set_resolv_conf(&self, text: &str) -> Result<()> {
        let dir = format!("/etc/netns/{}", self.name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(format!("{dir}/resolv.conf"), text)?;
        Ok(())
    }
}

/// Runs a command inside the network namespace at `path` (`/var/run/netns/<name>` or
/// `/proc/<pid>/ns/net`): a thread enters it and spawns the command, which inherits it.
pub fn exec_at(path: &Path, cmd: &str, args: &[&str]) -> Result<String> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let cmd = cmd.to_string();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || -> Result<String> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .context("setns into the network namespace")?;
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&cmd, &refs)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("thread running {} panicked", path.display()))?
}
