//! eBPF in-pod redirection (docs/ARCHITECTURE.md, "eBPF redirection"): the sk_lookup program
//! in `src/bpf/redirect.bpf.c`, compiled by clang at build time, and its loader (aya; no
//! bpftool or libbpf at run time).
//!
//! Per pod, everything lives under one bpffs directory named by the pod's network namespace
//! cookie (`<root>/netns-<cookie>`, never reused while the machine is up):
//!
//! * `link`: the program's attachment to the namespace. The pin keeps it attached when the
//!   node agent exits or restarts; removing the pin detaches it. The kernel detaches it by
//!   itself when the namespace goes away.
//! * `listeners`: the sockmap ztunnel fills with its in-pod listeners ([`Listener`]) when it
//!   takes the pod; the kernel drops a socket from it when the socket closes.
//! * `pod_addrs`: the pod's own addresses, so traffic to them is not captured as outbound.
//! * `counters`: how many lookups ended each way ([`Counters`]).
//!
//! The policy routes that bring the app's outbound packets to the program are the node
//! agent's part (`cni-plugin`, `redirect/ebpf.rs`).

#![deny(unsafe_code)]

use std::fs::File;
use std::net::IpAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use aya::maps::{HashMap, Map, MapData, PerCpuArray, SockMap};
use aya::programs::{links::FdLink, SkLookup};

/// Where the pins live unless `KEELSON_BPF_ROOT` says otherwise: a bpffs instance of its own,
/// mounted by [`ensure_bpffs`]. Not under /sys: `ip netns exec` (how the local mesh starts
/// ztunnel) mounts a fresh /sys, hiding /sys/fs/bpf, while /run stays shared. On Kubernetes
/// the DaemonSets set `KEELSON_BPF_ROOT=/sys/fs/bpf/keelson` and mount the node's /sys/fs/bpf.
pub const PIN_ROOT: &str = "/run/keelson/bpf";
const BPFFS_MAGIC: libc::__fsword_t = 0xcafe4a11;

/// The pin root both the node agent and ztunnel use: `KEELSON_BPF_ROOT`, else [`PIN_ROOT`].
pub fn pin_root() -> PathBuf {
    std::env::var_os("KEELSON_BPF_ROOT")
        .map(Into::into)
        .unwrap_or_else(|| PIN_ROOT.into())
}

/// The compiled program (see build.rs).
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/redirect.bpf.o"));
const PROGRAM: &str = "keelson_redirect";

/// ztunnel's in-pod listeners, by their slot in the `listeners` sockmap (the program's
/// `SLOT_*` numbers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Outbound = 0,
    Inbound = 1,
    DnsUdp = 2,
    DnsTcp = 3,
}

/// How many lookups the program ended each way, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// App connections handed to ztunnel's outbound listener (15001).
    pub outbound: u64,
    /// Plaintext connections from the wire handed to the inbound listener (15006).
    pub inbound: u64,
    /// DNS queries (UDP or TCP port 53) handed to the DNS proxy (15053).
    pub dns: u64,
    /// Lookups left to the kernel: the app to itself, ztunnel's own connections, probes,
    /// HBONE on 15008.
    pub passed: u64,
    /// Captures that found no ztunnel listener (ztunnel not there yet, or restarting).
    pub no_listener: u64,
}

impl Counters {
    pub fn to_json(&self) -> String {
        format!(
            r#"{{"outbound":{},"inbound":{},"dns":{},"passed":{},"no_listener":{}}}"#,
            self.outbound, self.inbound, self.dns, self.passed, self.no_listener
        )
    }
}

/// The pin directory of the namespace with `cookie`.
pub fn pin_dir(root: &Path, cookie: u64) -> PathBuf {
    root.join(format!("netns-{cookie}"))
}

/// The network namespace cookie of the namespace `socket` was created in (SO_NETNS_COOKIE,
/// Linux 5.14): unique among the namespaces since boot, unlike inode numbers.
pub fn netns_cookie(socket: BorrowedFd<'_>) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: `socket` is a live descriptor for the duration of the call; the kernel writes at
    // most `len` (8) bytes into `cookie`, a u64 that outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}

/// Sets IP_TRANSPARENT (IPV6_TRANSPARENT on an IPv6 socket, which covers its v4-mapped
/// traffic too) on a listener the program hands connections to: its accepted sockets answer
/// from the original destination, an address that is not the pod's, and the kernel routes
/// from such a source only for transparent sockets. Needs CAP_NET_ADMIN.
pub fn make_transparent(socket: BorrowedFd<'_>, ipv6: bool) -> std::io::Result<()> {
    let on: libc::c_int = 1;
    let (level, name) = if ipv6 {
        (libc::SOL_IPV6, libc::IPV6_TRANSPARENT)
    } else {
        (libc::SOL_IP, libc::IP_TRANSPARENT)
    };
    // SAFETY: `socket` is a live descriptor for the duration of the call; the kernel reads
    // exactly `size_of::<c_int>()` bytes from `on`, which outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of the namespace at `netns` (`/var/run/netns/<name>`, `/proc/<pid>/ns/net`).
pub fn cookie_at(netns: &Path) -> Result<u64> {
    netns::run_at(netns, || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").or_else(|_| {
            // A namespace whose lo is down has no 127.0.0.1: any socket will do.
            std::net::UdpSocket::bind("0.0.0.0:0")
        })?;
        netns_cookie(s.as_fd())
    })?
    .with_context(|| format!("reading the namespace cookie of {}", netns.display()))
}

/// Makes sure `root` is a directory on bpffs: an existing bpffs mount at or above it (such as
/// /sys/fs/bpf), else a new bpffs instance mounted on `root` itself. Fails with what is
/// missing when the kernel cannot (no bpffs, no CAP_SYS_ADMIN).
pub fn ensure_bpffs(root: &Path) -> Result<()> {
    let on_bpffs =
        |p: &Path| nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type().0 == BPFFS_MAGIC);
    if on_bpffs(root) {
        return Ok(());
    }
    if root.starts_with("/sys/fs/bpf") && !on_bpffs(Path::new("/sys/fs/bpf")) {
        mount_bpffs(Path::new("/sys/fs/bpf"))?;
    }
    if root.starts_with("/sys/fs/bpf") {
        return std::fs::create_dir_all(root)
            .with_context(|| format!("creating {}", root.display()));
    }
    mount_bpffs(root)
}

fn mount_bpffs(at: &Path) -> Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    nix::mount::mount(
        Some("bpf"),
        at,
        Some("bpf"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .with_context(|| {
        format!(
            "mounting bpffs on {} (the kernel needs CONFIG_BPF_SYSCALL, the caller CAP_SYS_ADMIN)",
            at.display()
        )
    })
}

/// Loads the program into the kernel and unloads it, to fail at start-up (not at the first
/// pod) with what is missing: BPF_PROG_TYPE_SK_LOOKUP needs Linux 5.9, its ingress_ifindex
/// field 5.17, the loader CAP_BPF and CAP_NET_ADMIN (or CAP_SYS_ADMIN).
pub fn check_kernel() -> Result<()> {
    let mut bpf = aya::Ebpf::load(OBJECT).context(
        "loading the eBPF object (the kernel needs BTF-defined maps: Linux 5.2+, and CAP_BPF)",
    )?;
    program(&mut bpf)?.load().context(
        "the kernel refused the sk_lookup program (it needs Linux 5.17+ for ingress_ifindex, and CAP_BPF with CAP_NET_ADMIN)",
    )?;
    Ok(())
}

fn program(bpf: &mut aya::Ebpf) -> Result<&mut SkLookup> {
    let p = bpf
        .program_mut(PROGRAM)
        .with_context(|| format!("the eBPF object has no program {PROGRAM}"))?;
    Ok(p.try_into()?)
}

/// Whether the program is attached to the namespace with `cookie` (its link is pinned).
pub fn attached(root: &Path, cookie: u64) -> bool {
    pin_dir(root, cookie).join("link").exists()
}

/// Loads a fresh copy of the program with its maps, fills `pod_addrs` with `addrs`, pins all
/// of it under [`pin_dir`] and attaches it to the namespace at `netns`. Idempotent: `false`
/// when it was attached already. On failure nothing is left behind.
pub fn attach(root: &Path, netns: &Path, addrs: &[IpAddr]) -> Result<bool> {
    let cookie = cookie_at(netns)?;
    if attached(root, cookie) {
        return Ok(false);
    }
    ensure_bpffs(root)?;
    let dir = pin_dir(root, cookie);
    let result = attach_at(&dir, netns, addrs);
    if result.is_err() {
        let _ = remove_dir(&dir);
    }
    result.map(|()| true)
}

fn attach_at(dir: &Path, netns: &Path, addrs: &[IpAddr]) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut bpf = aya::Ebpf::load(OBJECT).context("loading the eBPF object")?;
    {
        let map = bpf.map_mut("pod_addrs").context("no map pod_addrs")?;
        let mut pod_addrs: HashMap<_, [u8; 16], u8> = HashMap::try_from(map)?;
        for a in addrs {
            let key = match a {
                IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
                IpAddr::V6(v6) => v6.octets(),
            };
            pod_addrs.insert(key, 1, 0)?;
        }
    }
    for name in ["listeners", "pod_addrs", "counters"] {
        let map = bpf.map(name).with_context(|| format!("no map {name}"))?;
        map.pin(dir.join(name))
            .with_context(|| format!("pinning {name} in {}", dir.display()))?;
    }
    let prog = program(&mut bpf)?;
    prog.load()
        .context("the kernel refused the sk_lookup program")?;
    let ns = File::open(netns).with_context(|| format!("opening {}", netns.display()))?;
    let id = prog
        .attach(ns.as_fd())
        .with_context(|| format!("attaching to {}", netns.display()))?;
    let link: FdLink = prog.take_link(id)?.into();
    link.pin(dir.join("link"))
        .with_context(|| format!("pinning the link in {}", dir.display()))?;
    Ok(())
}

/// Detaches the program from the namespace with `cookie` and removes its pins. Nothing
/// there is not an error.
pub fn detach(root: &Path, cookie: u64) -> Result<()> {
    remove_dir(&pin_dir(root, cookie))
}

fn remove_dir(dir: &Path) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    // The link first: with its pin gone the program stops running in the namespace.
    for name in ["link", "listeners", "pod_addrs", "counters"] {
        match std::fs::remove_file(dir.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(e).with_context(|| format!("unpinning {name} in {}", dir.display()))
            }
        }
    }
    std::fs::remove_dir(dir).with_context(|| format!("removing {}", dir.display()))
}

/// Whether the link pinned at `path` is still attached to a live namespace. The kernel
/// detaches a netns link by itself when its namespace goes (a pod sandbox removed without a
/// CNI DEL), and reports namespace inode 0 from then on.
pub fn link_alive(path: &Path) -> std::io::Result<bool> {
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::ffi::OsStrExt;
    const BPF_OBJ_GET: libc::c_long = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    const BPF_LINK_TYPE_NETNS: u32 = 5;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // union bpf_attr, zeroed: for BPF_OBJ_GET, `pathname` (u64) at offset 0, the rest 0.
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    // SAFETY: `attr` is a zeroed bpf_attr (128 bytes) whose pathname points at `name`, a
    // NUL-terminated string alive for the call; the kernel only reads `attr`.
    #[allow(unsafe_code)]
    let fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_GET, attr.as_ptr(), 128usize) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us; nothing else owns it.
    #[allow(unsafe_code)]
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // struct bpf_link_info: type (u32), id, prog_id, then the per-type union at offset 16,
    // whose netns member starts with netns_ino (u32).
    let mut info = [0u64; 32];
    let mut attr = [0u64; 16];
    attr[0] = fd.as_raw_fd() as u64 | ((std::mem::size_of_val(&info) as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    // SAFETY: `attr` names a live link descriptor, `info` and its length (256 bytes); the
    // kernel writes at most that many bytes into `info`, which outlives the call.
    #[allow(unsafe_code)]
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            attr.as_mut_ptr(),
            128usize,
        )
    };
    if rc < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let link_type = (info[0] & 0xffff_ffff) as u32;
    let netns_ino = (info[2] & 0xffff_ffff) as u32;
    Ok(link_type == BPF_LINK_TYPE_NETNS && netns_ino != 0)
}

/// Removes the pin directories under `root` whose namespace is gone (its pod was torn down
/// without a CNI DEL); returns how many. Live ones, whoever made them, stay.
pub fn sweep(root: &Path) -> usize {
    pinned(root)
        .into_iter()
        .filter(|c| {
            let dir = pin_dir(root, *c);
            let link = dir.join("link");
            let dead = if link.exists() {
                !link_alive(&link).unwrap_or(true)
            } else {
                // No link yet: an attach in progress, unless it is old.
                std::fs::metadata(&dir)
                    .and_then(|m| m.modified())
                    .is_ok_and(|t| t.elapsed().unwrap_or_default().as_secs() > 60)
            };
            dead && remove_dir(&dir).is_ok()
        })
        .count()
}

/// The namespaces that have a pin directory under `root`, by cookie.
pub fn pinned(root: &Path) -> Vec<u64> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut v: Vec<u64> = entries
        .filter_map(|e| {
            let name = e.ok()?.file_name();
            name.to_str()?.strip_prefix("netns-")?.parse().ok()
        })
        .collect();
    v.sort_unstable();
    v
}

/// Puts ztunnel's in-pod listeners into the sockmap of the namespace with `cookie`, replacing
/// whatever was there (a restarted ztunnel takes over). `Ok(false)` when the namespace has no
/// program attached (the pod is redirected by iptables or nftables).
pub fn register(root: &Path, cookie: u64, sockets: &[(Listener, BorrowedFd<'_>)]) -> Result<bool> {
    let dir = pin_dir(root, cookie);
    if !dir.join("link").exists() {
        return Ok(false);
    }
    let path = dir.join("listeners");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let mut map: SockMap<MapData> = SockMap::try_from(Map::SockMap(data))?;
    for (slot, fd) in sockets {
        map.set(*slot as u32, fd, 0)
            .with_context(|| format!("putting the {slot:?} listener in {}", path.display()))?;
    }
    Ok(true)
}

/// The counters of the namespace with `cookie`.
pub fn counters(root: &Path, cookie: u64) -> Result<Counters> {
    let path = pin_dir(root, cookie).join("counters");
    let data = MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
    let map: PerCpuArray<MapData, u64> = PerCpuArray::try_from(Map::PerCpuArray(data))?;
    let sum = |i: u32| -> Result<u64> { Ok(map.get(&i, 0)?.iter().sum()) };
    Ok(Counters {
        outbound: sum(0)?,
        inbound: sum(1)?,
        dns: sum(2)?,
        passed: sum(3)?,
        no_listener: sum(4)?,
    })
}
