//! The node's side (docs/WIRE.md §5.5): TCP from a local socket of the node (the kubelet's
//! probes) to an enrolled pod is source-NATed to the probe address, which the pod's rules let
//! through uncaptured; traffic the node forwards from other pods is untouched. Upstream keeps
//! the pod IPs in an ipset; one rule per pod does the same.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::Result;
use netns::exec_at;

use super::PROBE_SNAT_V4;

/// nat POSTROUTING jumps here first.
const CHAIN: &str = "KEELSON_POSTRT";

fn iptables(host: &Path, line: &str) -> Result<String> {
    let args: Vec<&str> = line.split_whitespace().collect();
    exec_at(host, "iptables", &args)
}

fn rule(op: &str, pod_ip: Ipv4Addr) -> String {
    format!(
        "-t nat {op} {CHAIN} -d {pod_ip}/32 -p tcp -m owner --socket-exists -j SNAT --to-source {PROBE_SNAT_V4}"
    )
}

/// Adds the probe rule for `pod_ip` in the node's namespace at `host`. Idempotent.
pub fn add_probe_snat(host: &Path, pod_ip: Ipv4Addr) -> Result<()> {
    if iptables(host, &format!("-t nat -S {CHAIN}")).is_err() {
        iptables(host, &format!("-t nat -N {CHAIN}"))?;
    }
    if iptables(host, &format!("-t nat -C POSTROUTING -j {CHAIN}")).is_err() {
        iptables(host, &format!("-t nat -I POSTROUTING 1 -j {CHAIN}"))?;
    }
    if iptables(host, &rule("-C", pod_ip)).is_err() {
        iptables(host, &rule("-A", pod_ip))?;
    }
    Ok(())
}

/// Removes the probe rule for `pod_ip`, if there.
pub fn remove_probe_snat(host: &Path, pod_ip: Ipv4Addr) -> Result<()> {
    while iptables(host, &rule("-D", pod_ip)).is_ok() {}
    Ok(())
}
