//! Load balancer addresses (docs/GATEWAY.md): the local mesh's stand-in for a cloud load
//! balancer in front of an ingress gateway. The gateway's first pod gets a veth from the
//! machine's own namespace, a /30 from 198.18.0.0/15 (RFC 2544's benchmarking range, which
//! no real network uses), and the Service's port→targetPort mapping for what arrives on it
//! (as kube-proxy maps a LoadBalancer's ports). The pod's address is written to the
//! Service's `status.loadBalancer`, where Gateway and Ingress status (and `GATEWAY_URL`)
//! take it from. The link goes with the pod's namespace.

use std::io::Write as _;
use std::net::Ipv4Addr;

use anyhow::{Context, Result};

use super::*;

/// Where concurrent meshes (tests run several) agree on who takes which block.
const LOCK: &str = "/run/keelson-lb.lock";
/// The pod's side of the link.
const POD_LINK: &str = "lb0";

/// Gives `pod` an address reachable from the machine for the LoadBalancer Service
/// `namespace/service`; returns it.
pub(super) fn attach(
    paths: &Paths,
    pod: &PodState,
    namespace: &str,
    service: &str,
) -> Result<Ipv4Addr> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK)
        .with_context(|| format!("opening {LOCK}"))?;
    // Held until `lock` is dropped, once the addresses are on the links.
    let lock = nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .context("locking the load balancer address range")?;
    let used = netns::run("ip", &["-o", "-4", "addr", "show"])?;
    let block = (0..32768u32)
        .map(|i| 0xc612_0000 + i * 4)
        .find(|b| {
            let (host, gw) = (Ipv4Addr::from(b + 1), Ipv4Addr::from(b + 2));
            !used.contains(&format!(" {host}/")) && !used.contains(&format!(" {gw}/"))
        })
        .context("no free /30 left in 198.18.0.0/15")?;
    let (host, addr) = (Ipv4Addr::from(block + 1), Ipv4Addr::from(block + 2));
    let link = format!(
        "kl{:08x}",
        pod.netns.bytes().fold(0x811c_9dc5_u32, |h, b| {
            (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
        })
    );
    netns::run(
        "ip",
        &[
            "link", "add", &link, "type", "veth", "peer", "name", POD_LINK, "netns", &pod.netns,
        ],
    )?;
    netns::run("ip", &["addr", "add", &format!("{host}/30"), "dev", &link])?;
    netns::run("ip", &["link", "set", &link, "up"])?;
    netns::ip_in(
        &pod.netns,
        &["addr", "add", &format!("{addr}/30"), "dev", POD_LINK],
    )?;
    netns::ip_in(&pod.netns, &["link", "set", POD_LINK, "up"])?;
    drop(lock);
    publish(paths, &pod.netns, namespace, service, addr)?;
    say(format!(
        "load balancer {namespace}/{service}: {addr} (from this machine, link {link})"
    ));
    Ok(addr)
}

/// Maps the Service's ports to their target ports for what comes in by the link, and
/// writes the address to the Service's status.
fn publish(
    paths: &Paths,
    pod_netns: &str,
    namespace: &str,
    service: &str,
    addr: Ipv4Addr,
) -> Result<()> {
    let file = paths.resources().join(resource_file(&manifest::Resource {
        kind: "Service".into(),
        namespace: Some(namespace.into()),
        name: service.into(),
        value: serde_yaml::Value::Null,
    }));
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut value: serde_yaml::Value = serde_yaml::from_str(&text)?;
    for p in value["spec"]["ports"]
        .as_sequence()
        .cloned()
        .unwrap_or_default()
    {
        let port = p["port"].as_u64().unwrap_or(0);
        let target = p["targetPort"].as_u64().unwrap_or(port);
        if port != target && port != 0 {
            netns::exec_in(
                pod_netns,
                "iptables",
                &[
                    "-w",
                    "-t",
                    "nat",
                    "-A",
                    "PREROUTING",
                    "-i",
                    POD_LINK,
                    "-p",
                    "tcp",
                    "--dport",
                    &port.to_string(),
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &target.to_string(),
                ],
            )?;
        }
    }
    let status: serde_yaml::Value =
        serde_yaml::from_str(&format!("loadBalancer:\n  ingress:\n  - ip: {addr}\n"))?;
    if let Some(m) = value.as_mapping_mut() {
        m.insert("status".into(), status);
    }
    let tmp = file.with_extension("tmp");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(serde_yaml::to_string(&value)?.as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, &file)?;
    Ok(())
}

/// The address of a LoadBalancer Service's pod, with the Service's first non-status port:
/// what `GATEWAY_URL` is for the default ingress gateway.
pub fn gateway_url(state: &MeshState) -> Option<String> {
    let pod = state.pods.iter().find(|p| {
        p.namespace == manifest::INGRESS_NAMESPACE
            && p.owner == format!("Deployment/{}", manifest::INGRESS_NAME)
            && p.host_ip.is_some()
    })?;
    Some(format!("{}:80", pod.host_ip?))
}

/// Prometheus' address from this machine, when `--observability` runs it.
pub fn prometheus_url(state: &MeshState) -> Option<String> {
    let pod = state.pods.iter().find(|p| {
        p.namespace == super::observe::NAMESPACE
            && p.owner == format!("Deployment/{}", super::observe::NAME)
    })?;
    Some(format!("http://{}:{}", pod.host_ip?, super::observe::PORT))
}
