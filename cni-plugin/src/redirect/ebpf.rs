//! The eBPF flavour of the in-pod redirection (docs/ARCHITECTURE.md, "eBPF redirection"): no
//! netfilter rule at all. An sk_lookup program attached to the pod's namespace (crate
//! `ebpf`) hands connections to ztunnel's listeners; these policy routes bring the app's
//! outbound packets to it by making every destination local for them:
//!
//! | pref  | selector                              | table | why |
//! |-------|---------------------------------------|-------|-----|
//! | 99    | iif lo, to a pod address              | 101   | the app to itself, ztunnel into the app: over lo |
//! | 100   | (all)                                 | local | the kernel's local table, moved here from 0 |
//! | 32760 | fwmark 0x539/0xfff                    | main  | ztunnel's own sockets leave normally |
//! | 32761 | to 169.254.7.127                      | main  | replies to the node's probes leave normally |
//! | 32762 | iif lo, ipproto tcp                   | 100   | the app's TCP (and the app's replies to ztunnel's spoofed connections) |
//! | 32763 | iif lo, ipproto udp, dport 53         | 100   | the app's DNS queries |
//!
//! Table 100 holds `local default dev lo src <pod address>`: delivered locally, with the
//! pod's address as the source the app's sockets pick. Table 101 holds `local <pod address>
//! dev lo` for each of the pod's addresses: the kernel's local table would name eth0 as the
//! way in for them, and the program tells the app's own connections (and ztunnel's
//! connections into the app) from connections off the wire by the way in being lo. That is
//! why the local table's rule moves from preference 0 to 100, behind rule 99.

use std::net::IpAddr;
use std::path::Path;

use anyhow::{Context, Result};
use netns::exec_at;

const TABLE: &str = "100";
const SELF_TABLE: &str = "101";

/// The v4 and v6 probe sources (docs/WIRE.md §5.5).
const PROBE_V4: &str = "169.254.7.127";
const PROBE_V6: &str = "fd16:9254:7127:1337:ffff:ffff:ffff:ffff";

fn rules(family: &str, probe: &str) -> Vec<String> {
    vec![
        format!("{family} rule add pref 32760 fwmark 0x539/0xfff lookup main"),
        format!("{family} rule add pref 32761 to {probe} lookup main"),
        format!("{family} rule add pref 32762 iif lo ipproto tcp lookup {TABLE}"),
        format!("{family} rule add pref 32763 iif lo ipproto udp dport 53 lookup {TABLE}"),
    ]
}

fn ip(path: &Path, line: &str) -> Result<String> {
    let args: Vec<&str> = line.split_whitespace().collect();
    exec_at(path, "ip", &args).with_context(|| format!("ip {line}"))
}

pub use ebpf::pin_root;

/// The pod's global addresses (its interfaces other than lo), read inside its namespace.
pub fn pod_addresses(path: &Path) -> Result<Vec<IpAddr>> {
    let out = exec_at(path, "ip", &["-o", "addr", "show", "scope", "global"])?;
    Ok(out
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let family = w.nth(2)?;
            if family != "inet" && family != "inet6" {
                return None;
            }
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect())
}

/// Fails, naming what is missing, unless this kernel and these privileges can run the
/// flavour: bpffs mounted (mounted here if it is not), the program accepted by the verifier.
pub fn check() -> Result<()> {
    ebpf::ensure_bpffs(&pin_root())?;
    ebpf::check_kernel()
}

/// Removes the pins of pods whose namespace went without a DEL, saying how many.
pub fn sweep() {
    let n = ebpf::sweep(&pin_root());
    if n > 0 {
        eprintln!("keelson-cni: removed the eBPF pins of {n} pods whose namespace is gone");
    }
}

/// Detaches the program from the namespace at `path` and removes its pins, leaving the
/// routes: for a namespace about to be deleted.
pub fn forget(path: &Path) {
    if let Ok(cookie) = ebpf::cookie_at(path) {
        let _ = ebpf::detach(&pin_root(), cookie);
    }
}

/// Whether the program is attached in the namespace at `path`.
pub fn installed(path: &Path) -> bool {
    ebpf::cookie_at(path).is_ok_and(|c| ebpf::attached(&pin_root(), c))
}

/// Attaches the program and adds the routes; `false` when it was attached already.
pub fn install(path: &Path) -> Result<bool> {
    let addrs = pod_addresses(path)?;
    let v4 = addrs.iter().find(|a| a.is_ipv4());
    let v6 = addrs.iter().find(|a| a.is_ipv6());
    if v4.is_none() && v6.is_none() {
        anyhow::bail!("the pod has no address to redirect for");
    }
    let root = pin_root();
    if !ebpf::attach(&root, path, &addrs)? {
        return Ok(false);
    }
    let routed = (|| {
        remove_routes(path);
        for family in ["-4", "-6"] {
            let mine: Vec<&IpAddr> = addrs
                .iter()
                .filter(|a| a.is_ipv4() == (family == "-4"))
                .collect();
            if mine.is_empty() {
                continue;
            }
            for a in mine {
                ip(
                    path,
                    &format!("{family} route add local {a} dev lo table {SELF_TABLE}"),
                )?;
                ip(
                    path,
                    &format!("{family} rule add pref 99 iif lo to {a} lookup {SELF_TABLE}"),
                )?;
            }
            // Added before the old one goes, so that local delivery never lapses.
            ip(path, &format!("{family} rule add pref 100 lookup local"))?;
            while ip(path, &format!("{family} rule del pref 0 lookup local")).is_ok() {}
        }
        for (family, addr, probe) in [("-4", v4, PROBE_V4), ("-6", v6, PROBE_V6)] {
            let Some(a) = addr else { continue };
            let route = format!("{family} route add local default dev lo src {a} table {TABLE}");
            ip(path, &route)?;
            for r in rules(family, probe) {
                ip(path, &r)?;
            }
        }
        Ok::<_, anyhow::Error>(())
    })();
    if let Err(e) = routed {
        remove(path);
        return Err(e.context("adding the eBPF flavour's policy routes"));
    }
    Ok(true)
}

fn remove_routes(path: &Path) {
    for family in ["-4", "-6"] {
        let rules = ip(path, &format!("{family} rule list")).unwrap_or_default();
        if !rules.lines().any(|l| l.starts_with("0:")) {
            let _ = ip(path, &format!("{family} rule add pref 0 lookup local"));
        }
        for pref in ["99", "100", "32760", "32761", "32762", "32763"] {
            while ip(path, &format!("{family} rule del pref {pref}")).is_ok() {}
        }
        for table in [TABLE, SELF_TABLE] {
            let _ = ip(path, &format!("{family} route flush table {table}"));
        }
    }
}

/// Detaches the program (its pins go) and removes the routes. Nothing there is not an error.
pub fn remove(path: &Path) {
    let routed = ["-4", "-6"].iter().any(|f| {
        ip(path, &format!("{f} rule list pref 32762")).is_ok_and(|o| !o.trim().is_empty())
    });
    if routed {
        remove_routes(path);
    }
    if let Ok(cookie) = ebpf::cookie_at(path) {
        if let Err(e) = ebpf::detach(&pin_root(), cookie) {
            eprintln!("keelson-cni: detaching the eBPF program: {e:#}");
        }
    }
}
