//! The four proxies of a (dedicated) ztunnel. Each file holds one listener:
//! accept → one task per connection (tracked by the drain) → resolve → connect → copy.

pub mod capture;
pub mod inbound;
pub mod outbound;
pub mod passthrough;
pub mod socks5;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use std::os::fd::AsFd;

use proxycore::socket;
use proxycore::ProxyInputs;

/// Binds every listener of the workload `pi` serves (in its pod's namespace when it has one):
/// outbound, inbound HBONE, inbound plaintext, SOCKS5 and the DNS proxy when on. Then serves
/// them until `pi.drain` starts. Nothing is served unless every listener could be bound.
/// When the pod is redirected by eBPF, the listeners are handed to its program too: the
/// [`capture::Capture`] returned can hand them again.
pub fn start(
    pi: &Arc<ProxyInputs>,
    dns_metrics: crate::dns::DnsMetrics,
    upstreams: Vec<SocketAddr>,
) -> Result<Option<capture::Capture>, String> {
    let cfg = &pi.cfg;
    let ports = cfg.ports;
    let ns = pi.netns.as_deref();
    let bind = |ip, port: u16, what: &str| {
        socket::listen_in(ns, ip, port, cfg.ipv6)
            .map_err(|e| format!("binding the {what} listener on port {port}: {e}"))
    };
    let localhost = Some(IpAddr::from([127, 0, 0, 1]));
    if ns.is_some() {
        socket::migrate_on_close(ns);
    }
    let outbound = bind(None, ports.outbound, "outbound")?;
    let inbound = bind(None, ports.inbound_hbone, "inbound HBONE")?;
    let plaintext = bind(None, ports.inbound_plaintext, "inbound plaintext")?;
    let socks = if cfg.socks5 {
        Some(bind(localhost, ports.socks5, "SOCKS5")?)
    } else {
        None
    };
    let dns = if cfg.dns_proxy {
        Some(
            crate::dns::bind(ns, ports.dns)
                .map_err(|e| format!("binding the DNS proxy on 127.0.0.1:{}: {e}", ports.dns))?,
        )
    } else {
        None
    };
    let dns_fds = dns.as_ref().map(|(u, t)| (u.as_fd(), t.as_fd()));
    let captured =
        capture::Capture::take(&outbound, &plaintext, &inbound, cfg.packet_mark, dns_fds)?;
    tokio::spawn(outbound::serve(pi.clone(), outbound));
    tokio::spawn(inbound::serve(pi.clone(), inbound));
    tokio::spawn(passthrough::serve(pi.clone(), plaintext));
    if let Some(l) = socks {
        tokio::spawn(socks5::serve(pi.clone(), l));
    }
    if let Some((udp, tcp)) = dns {
        let dns = Arc::new(crate::dns::Dns {
            state: pi.state.clone(),
            namespace: pi.local_ns.clone(),
            workload_name: pi.local_name.clone(),
            domain: "cluster.local".into(),
            upstreams,
            mark: cfg.packet_mark,
            metrics: dns_metrics,
            netns: pi.netns.clone(),
        });
        let stop = pi.drain.started();
        tokio::spawn(async move {
            tokio::select! {
                () = crate::dns::serve_udp(dns.clone(), udp) => {}
                () = crate::dns::serve_tcp(dns, tcp) => {}
                () = stop => {}
            }
        });
    }
    Ok(captured)
}
