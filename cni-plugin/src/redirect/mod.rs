//! In-pod redirection (docs/WIRE.md §5.4): what in a pod's network namespace sends its TCP
//! to the node's ztunnel listening there. Three flavours with the same behaviour: iptables or
//! nftables rules (the same list, `rules.rs`) with the policy routing that brings replies to
//! spoofed connections back to ztunnel, or an eBPF program with policy routes and no netfilter
//! at all (`ebpf.rs`). On the node, the probe rule of §5.5 (`host.rs`).
//! Installing is idempotent; removing leaves the pod as if it had never been enrolled.

pub mod ebpf;
mod host;
mod rules;

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};
use netns::exec_at;

pub use host::{add_probe_snat, remove_probe_snat};

/// Where the node's probes appear to come from inside a pod (§5.5).
pub const PROBE_SNAT_V4: &str = "169.254.7.127";

/// How the pod's traffic reaches ztunnel. All three give the same behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redirect {
    #[default]
    Iptables,
    Nftables,
    /// An sk_lookup program and policy routes; no netfilter.
    Ebpf,
}

impl FromStr for Redirect {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "iptables" => Ok(Redirect::Iptables),
            "nftables" | "nft" => Ok(Redirect::Nftables),
            "ebpf" | "bpf" => Ok(Redirect::Ebpf),
            other => bail!("unknown redirection {other:?} (iptables, nftables or ebpf)"),
        }
    }
}

impl Redirect {
    pub fn name(self) -> &'static str {
        match self {
            Redirect::Iptables => "iptables",
            Redirect::Nftables => "nftables",
            Redirect::Ebpf => "ebpf",
        }
    }
}

/// Packets marked 0x111 (replies to ztunnel's spoofed connections) are delivered locally,
/// to ztunnel's transparent socket: route table 100, rule preference 32764.
const POLICY_ROUTING: [&str; 2] = [
    "rule add fwmark 0x111/0xfff pref 32764 lookup 100",
    "route add local 0.0.0.0/0 dev lo table 100",
];

fn ip(path: &Path, line: &str) -> Result<String> {
    let args: Vec<&str> = line.split_whitespace().collect();
    exec_at(path, "ip", &args)
}

/// Runs `tool` (`iptables-restore --noflush`, `nft -f`) on `script` inside the namespace.
fn load(path: &Path, tool: &str, flags: &[&str], script: &str) -> Result<()> {
    let file =
        std::env::temp_dir().join(format!("keelson-rules-{}-{}", std::process::id(), unique()));
    std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let mut args = flags.to_vec();
    args.push(file.to_str().context("non-UTF-8 temp path")?);
    let result = exec_at(path, tool, &args);
    let _ = std::fs::remove_file(&file);
    result.map(|_| ())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

fn iptables_installed(path: &Path) -> bool {
    exec_at(path, "iptables", &["-t", "nat", "-S", "KEELSON_OUTPUT"]).is_ok()
}

fn nft_table_exists(path: &Path, table: &str) -> bool {
    exec_at(path, "nft", &["list", "table", "inet", table]).is_ok()
}

/// Whether any flavour is in place in the namespace at `path`.
pub fn installed(path: &Path) -> bool {
    ebpf::installed(path) || iptables_installed(path) || nft_table_exists(path, rules::NFT_NAT)
}

/// The flavour in place in the namespace at `path`, if any.
pub fn installed_flavour(path: &Path) -> Option<Redirect> {
    if ebpf::installed(path) {
        Some(Redirect::Ebpf)
    } else if iptables_installed(path) {
        Some(Redirect::Iptables)
    } else if nft_table_exists(path, rules::NFT_NAT) {
        Some(Redirect::Nftables)
    } else {
        None
    }
}

/// Installs the rules with `how` in the namespace at `path` (`/var/run/netns/<name>` or
/// `/proc/<pid>/ns/net`), in one transaction; `false` when either flavour was already there.
pub fn install(path: &Path, how: Redirect) -> Result<bool> {
    if installed(path) {
        return Ok(false);
    }
    if how == Redirect::Ebpf {
        return ebpf::install(path).context("installing the eBPF redirection");
    }
    for line in POLICY_ROUTING {
        ip(path, line).with_context(|| format!("ip {line}"))?;
    }
    match how {
        Redirect::Iptables => load(
            path,
            "iptables-restore",
            &["--noflush"],
            &rules::iptables_restore(),
        ),
        Redirect::Nftables => load(path, "nft", &["-f"], &rules::nft_ruleset()),
        Redirect::Ebpf => unreachable!("handled above"),
    }
    .with_context(|| format!("installing the {} rules", how.name()))?;
    Ok(true)
}

/// Removes the rules (any flavour) and the policy routing. Nothing there is not an error.
pub fn remove(path: &Path) -> Result<()> {
    ebpf::remove(path);
    for table in [rules::NFT_NAT, rules::NFT_MANGLE] {
        if nft_table_exists(path, table) {
            exec_at(path, "nft", &["delete", "table", "inet", table])?;
        }
    }
    if iptables_installed(path) {
        load(
            path,
            "iptables-restore",
            &["--noflush"],
            &rules::iptables_removal(),
        )
        .context("removing the iptables rules")?;
    }
    while ip(path, "rule del fwmark 0x111/0xfff pref 32764 lookup 100").is_ok() {}
    let _ = ip(path, "route flush table 100");
    Ok(())
}
