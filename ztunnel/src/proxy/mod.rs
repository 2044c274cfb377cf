//! The four proxies of a (dedicated) ztunnel. Each file holds one listener:
//! accept → one task per connection (tracked by the drain) → resolve → connect → copy.

pub mod inbound;
pub mod outbound;
pub mod passthrough;
pub mod socks5;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use std::os::fd::{AsFd, BorrowedFd};

use proxycore::socket;
use proxycore::ProxyInputs;
use tokio::net::TcpListener;

/// Binds every listener of the workload `pi` serves (in its pod's namespace when it has one):
/// outbound, inbound HBONE, inbound plaintext, SOCKS5 and the DNS proxy when on. Then serves
/// them until `pi.drain` starts. Nothing is served unless every listener could be bound.
pub fn start(
    pi: &Arc<ProxyInputs>,
    dns_metrics: crate::dns::DnsMetrics,
    upstreams: Vec<SocketAddr>,
) -> Result<(), String> {
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
    if ns.is_some() {
        let dns_fds = dns.as_ref().map(|(u, t)| (u.as_fd(), t.as_fd()));
        capture_by_ebpf(&outbound, &plaintext, &inbound, cfg.packet_mark, dns_fds)?;
    }
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
    Ok(())
}

/// When the pod is redirected by eBPF (the node agent attached the program to its namespace,
/// docs/ARCHITECTURE.md "eBPF redirection"), puts this ztunnel's listeners in the program's
/// sockmap: from then on the pod's connections come here, and a restarted ztunnel takes over
/// by doing the same. Pods redirected by iptables or nftables have no program: nothing to do.
/// Without the mark the pod's replies would loop back into ztunnel, so it is required.
fn capture_by_ebpf(
    outbound: &TcpListener,
    plaintext: &TcpListener,
    hbone: &TcpListener,
    mark: Option<u32>,
    dns: Option<(BorrowedFd<'_>, BorrowedFd<'_>)>,
) -> Result<(), String> {
    use ebpf::Listener;
    let root = ebpf::pin_root();
    if !root.exists() {
        return Ok(());
    }
    let cookie = ebpf::netns_cookie(outbound.as_fd())
        .map_err(|e| format!("reading the pod's namespace cookie: {e}"))?;
    if !ebpf::attached(&root, cookie) {
        return Ok(());
    }
    let transparent = |l: &TcpListener| {
        let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
        ebpf::make_transparent(l.as_fd(), v6)
            .map_err(|e| format!("making the listeners transparent (CAP_NET_ADMIN): {e}"))
    };
    transparent(outbound)?;
    transparent(plaintext)?;
    // The pod's policy routes send every unmarked TCP packet to ztunnel: what ztunnel's
    // accepted sockets send back to the wire (HBONE on 15008, plaintext on 15006) must carry
    // the mark to leave through eth0. Accepted sockets inherit the listener's mark.
    if let Some(m) = mark {
        for l in [hbone, plaintext, outbound] {
            socket2::SockRef::from(l)
                .set_mark(m)
                .map_err(|e| format!("marking the listeners {m:#x}: {e}"))?;
        }
    }
    let mut sockets = vec![
        (Listener::Outbound, outbound.as_fd()),
        (Listener::Inbound, plaintext.as_fd()),
    ];
    if let Some((udp, tcp)) = dns {
        ebpf::make_transparent(tcp, false)
            .map_err(|e| format!("making the DNS listener transparent: {e}"))?;
        sockets.push((Listener::DnsUdp, udp));
        sockets.push((Listener::DnsTcp, tcp));
    }
    match ebpf::register(&root, cookie, &sockets) {
        Ok(true) => {
            tracing::info!(cookie, "pod redirected by eBPF: listeners registered");
            Ok(())
        }
        Ok(false) => Ok(()),
        Err(e) => Err(format!(
            "registering the listeners with the pod's eBPF program: {e:#}"
        )),
    }
}
