//! The namespaces and links of the mesh: the fabric bridge between nodes, namespace
//! creation and removal, and the optional in-process links between nodes (`KEELSON_NODE_LINKS`).

use anyhow::Result;
use std::net::Ipv4Addr;

use super::*;

/// Makes each node's link into the fabric behave like a NIC between machines: what a node
/// sends is received by the fabric in a NAPI kernel thread of its own (GRO on, `threaded`),
/// so the fabric bridge and the receiving node's whole path (its bridges, netfilter, the
/// destination pod's TCP receive) no longer run inside the sender's `write`, charged to the
/// sending process, as they do on one machine with plain veths. Used by `keelson bench l7`
/// so that a proxy's CPU is its own node's share, as a multi-node cluster would measure it.
/// The node side of each link stops doing TSO (veth hands only unsegmented TCP to NAPI),
/// which makes bulk transfers dearer: not for throughput benchmarks.
pub fn thread_node_links(paths: &Paths, state: &MeshState) -> Result<()> {
    let fabric = paths.netns("fabric");
    for node in &state.nodes {
        let port = format!("n{}", node.index);
        netns::exec_in(&node.netns, "ethtool", &["-K", "eth0", "tso", "off"])?;
        netns::exec_in(&fabric, "ethtool", &["-K", &port, "gro", "on"])?;
        // sysfs shows the devices of the namespace it was mounted in: `ip netns exec`
        // mounts the fabric's.
        netns::exec_in(
            &fabric,
            "sh",
            &["-c", &format!("echo 1 > /sys/class/net/{port}/threaded")],
        )?;
    }
    Ok(())
}

pub(super) fn create_netns(name: &str) -> Result<()> {
    netns::Netns::create(name)?.persist();
    Ok(())
}

/// Joins `netns` (created here) to the fabric bridge with address `addr`.
pub(super) fn attach_to_fabric(
    fabric: &str,
    netns: &str,
    port: &str,
    addr: Ipv4Addr,
) -> Result<()> {
    create_netns(netns)?;
    netns::ip_in(
        fabric,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", netns,
        ],
    )?;
    netns::ip_in(fabric, &["link", "set", port, "master", "br0", "up"])?;
    netns::ip_in(
        netns,
        &["addr", "add", &format!("{addr}/24"), "dev", "eth0"],
    )?;
    netns::ip_in(netns, &["link", "set", "eth0", "up"])?;
    Ok(())
}

/// This mesh's namespaces that exist now.
pub(super) fn leftover_netns(paths: &Paths) -> Vec<String> {
    netns::list()
        .into_iter()
        .filter(|n| paths.owns(n))
        .collect()
}
