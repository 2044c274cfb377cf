//! The nftables flavour of the in-pod redirection (docs/WIRE.md §5.4, "nftables flavour"),
//! the choice between the flavours, and removal of either.

use std::path::Path;
use std::str::FromStr;

use anyhow::{bail, Context, Result};

use crate::{exec_at, PROBE_SNAT_V4};

/// Which tool writes the in-pod rules. Both give the same behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Redirect {
    #[default]
    Iptables,
    Nftables,
}

impl FromStr for Redirect {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "iptables" => Ok(Redirect::Iptables),
            "nftables" | "nft" => Ok(Redirect::Nftables),
            other => bail!("unknown redirection {other:?} (iptables or nftables)"),
        }
    }
}

const NAT_TABLE: &str = "keelson-ambient-nat";
const MANGLE_TABLE: &str = "keelson-ambient-mangle";

/// The rule set, in one `nft -f` transaction. Same order and meaning as the iptables rules
/// of [`crate::install_redirect_at`].
fn ruleset() -> String {
    format!(
        r#"table inet {MANGLE_TABLE} {{
  chain prerouting {{
    type filter hook prerouting priority mangle; policy accept;
    meta mark & 0x00000fff == 0x00000539 ct mark set ct mark & 0xfffff000 | 0x00000111
  }}
  chain output {{
    type route hook output priority mangle; policy accept;
    ct mark & 0x00000fff == 0x00000111 meta mark set ct mark
  }}
}}
table inet {NAT_TABLE} {{
  chain prerouting {{
    type nat hook prerouting priority dstnat; policy accept;
    ip saddr {PROBE_SNAT_V4} meta l4proto tcp return
    tcp dport 15008 return
    meta l4proto tcp redirect to :15006
  }}
  chain output {{
    type nat hook output priority -100; policy accept;
    meta mark & 0x00000fff == 0x00000539 return
    ip daddr {PROBE_SNAT_V4} meta l4proto tcp return
    udp dport 53 oifname != "lo" redirect to :15053
    ip daddr 127.0.0.1 return
    tcp dport 53 redirect to :15053
    oifname "lo" meta l4proto tcp return
    meta l4proto tcp redirect to :15001
  }}
}}
"#
    )
}

fn nft_table_exists(path: &Path, table: &str) -> bool {
    exec_at(path, "nft", &["list", "table", "inet", table]).is_ok()
}

fn iptables_installed(path: &Path) -> bool {
    exec_at(path, "iptables", &["-t", "nat", "-S", "KEELSON_OUTPUT"]).is_ok()
}

/// Whether either flavour of the redirection is in place in that namespace.
pub fn redirect_installed(path: &Path) -> bool {
    iptables_installed(path) || nft_table_exists(path, NAT_TABLE)
}

/// Installs the redirection with `how`; idempotent (returns `false` when either flavour was
/// already there).
pub fn install_redirect_with(path: &Path, how: Redirect) -> Result<bool> {
    match how {
        Redirect::Iptables => crate::install_redirect_at(path),
        Redirect::Nftables => {
            if redirect_installed(path) {
                return Ok(false);
            }
            crate::install_policy_routing(path)?;
            let file = std::env::temp_dir().join(format!(
                "keelson-nft-{}-{}.nft",
                std::process::id(),
                rand_suffix()
            ));
            std::fs::write(&file, ruleset())
                .with_context(|| format!("writing {}", file.display()))?;
            let result = exec_at(path, "nft", &["-f", file.to_str().context("path")?]);
            let _ = std::fs::remove_file(&file);
            result?;
            Ok(true)
        }
    }
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default()
}

/// `iptables-restore --noflush` of: each hook deleted (`-t TABLE -D ...`), then each chain
/// flushed and deleted, table by table.
fn remove_in_one_transaction(
    path: &Path,
    hooks: &[&[&str]],
    chains: &[(&str, &str)],
) -> Result<()> {
    let mut script = String::new();
    for table in ["mangle", "nat"] {
        script.push_str(&format!("*{table}\n"));
        for h in hooks.iter().filter(|h| h.get(1) == Some(&table)) {
            script.push_str(&h[2..].join(" "));
            script.push('\n');
        }
        for (_, chain) in chains.iter().filter(|(t, _)| *t == table) {
            script.push_str(&format!("-F {chain}\n-X {chain}\n"));
        }
        script.push_str("COMMIT\n");
    }
    let file = std::env::temp_dir().join(format!(
        "keelson-ipt-{}-{}.rules",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&file, script).with_context(|| format!("writing {}", file.display()))?;
    let result = exec_at(
        path,
        "iptables-restore",
        &["--noflush", file.to_str().context("path")?],
    );
    let _ = std::fs::remove_file(&file);
    result.map(|_| ())
}

/// Removes the redirection (either flavour) and its routing rule: the pod's traffic flows
/// as if it had never been enrolled. Nothing there is not an error.
pub fn remove_redirect_at(path: &Path) -> Result<()> {
    for table in [NAT_TABLE, MANGLE_TABLE] {
        if nft_table_exists(path, table) {
            exec_at(path, "nft", &["delete", "table", "inet", table])?;
        }
    }
    if iptables_installed(path) {
        let ipt = |args: &[&str]| exec_at(path, "iptables", args);
        // Unhook the chains, then flush and delete them.
        let hooks: &[&[&str]] = &[
            &["-t", "mangle", "-D", "PREROUTING", "-j", "KEELSON_PRERT"],
            &["-t", "mangle", "-D", "OUTPUT", "-j", "KEELSON_OUTPUT"],
            &[
                "-t",
                "nat",
                "-D",
                "OUTPUT",
                "-p",
                "tcp",
                "-j",
                "KEELSON_OUTPUT",
            ],
            &[
                "-t",
                "nat",
                "-D",
                "PREROUTING",
                "-p",
                "tcp",
                "-j",
                "KEELSON_PRERT",
            ],
            &crate::udp_dns_rule("-D"),
        ];
        let chains = [
            ("mangle", "KEELSON_PRERT"),
            ("mangle", "KEELSON_OUTPUT"),
            ("nat", "KEELSON_OUTPUT"),
            ("nat", "KEELSON_PRERT"),
        ];
        // One iptables-restore transaction: deleting is slow one command at a time with
        // the nft backend (~20 ms each, ~200 ms for a pod). One by one only if it fails
        // (some hook already gone).
        if remove_in_one_transaction(path, hooks, &chains).is_err() {
            for h in hooks {
                let _ = ipt(h);
            }
            for (table, chain) in chains {
                let _ = ipt(&["-t", table, "-F", chain]);
                ipt(&["-t", table, "-X", chain])?;
            }
        }
    }
    let ip = |args: &[&str]| exec_at(path, "ip", args);
    while ip(&[
        "rule",
        "del",
        "fwmark",
        "0x111/0xfff",
        "pref",
        "32764",
        "lookup",
        "100",
    ])
    .is_ok()
    {}
    let _ = ip(&["route", "flush", "table", "100"]);
    Ok(())
}
