//! The eBPF side of a pod's listeners (docs/ARCHITECTURE.md, "eBPF redirection"). When the
//! node agent attached the redirection program to the pod's namespace, ztunnel puts its
//! listeners in the program's sockmap: from then on the pod's connections come here. A
//! restarted ztunnel takes over by doing the same; when the agent attaches the program again
//! (a pod whose program was lost), the Add that follows hands the listeners again. Pods
//! redirected by iptables or nftables have no program: nothing to do.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use ebpf::Listener;
use tokio::net::TcpListener;

/// Copies of the listeners' descriptors, to hand them to the program again.
pub struct Capture {
    cookie: u64,
    sockets: Vec<(Listener, OwnedFd)>,
}

impl Capture {
    /// Readies the listeners for the program and hands them over; `None` when the pod is not
    /// redirected by eBPF.
    ///
    /// The accepted sockets answer from the original destination, an address that is not
    /// the pod's: the listeners become transparent. The pod's policy routes send every
    /// unmarked TCP packet to ztunnel, so what ztunnel's accepted sockets send back to the
    /// wire (HBONE on 15008, plaintext on 15006) must carry the mark to leave through eth0:
    /// accepted sockets inherit the listener's mark, which is required here.
    pub fn take(
        outbound: &TcpListener,
        plaintext: &TcpListener,
        hbone: &TcpListener,
        mark: Option<u32>,
        dns: Option<(BorrowedFd<'_>, BorrowedFd<'_>)>,
    ) -> Result<Option<Capture>, String> {
        let root = ebpf::pin_root();
        if !root.exists() {
            return Ok(None);
        }
        let cookie = ebpf::netns_cookie(outbound.as_fd())
            .map_err(|e| format!("reading the pod's namespace cookie: {e}"))?;
        if !ebpf::attached(&root, cookie) {
            return Ok(None);
        }
        let Some(mark) = mark else {
            return Err("eBPF redirection needs ztunnel's packet mark".into());
        };
        for l in [outbound, plaintext] {
            let v6 = l.local_addr().is_ok_and(|a| a.is_ipv6());
            ebpf::make_transparent(l.as_fd(), v6)
                .map_err(|e| format!("making the listeners transparent (CAP_NET_ADMIN): {e}"))?;
        }
        for l in [hbone, plaintext, outbound] {
            socket2::SockRef::from(l)
                .set_mark(mark)
                .map_err(|e| format!("marking the listeners {mark:#x}: {e}"))?;
        }
        let dup = |fd: BorrowedFd<'_>| {
            fd.try_clone_to_owned()
                .map_err(|e| format!("copying a listener's descriptor: {e}"))
        };
        let mut sockets = vec![
            (Listener::Outbound, dup(outbound.as_fd())?),
            (Listener::Inbound, dup(plaintext.as_fd())?),
        ];
        if let Some((udp, tcp)) = dns {
            ebpf::make_transparent(tcp, false)
                .map_err(|e| format!("making the DNS listener transparent: {e}"))?;
            sockets.push((Listener::DnsUdp, dup(udp)?));
            sockets.push((Listener::DnsTcp, dup(tcp)?));
        }
        let capture = Capture { cookie, sockets };
        capture.renew()?;
        tracing::info!(
            cookie,
            "pod redirected by eBPF: listeners handed to its program"
        );
        Ok(Some(capture))
    }

    /// Hands the listeners to the program (again): a no-op for the kernel when they are
    /// there already.
    pub fn renew(&self) -> Result<(), String> {
        let sockets: Vec<(Listener, BorrowedFd<'_>)> = self
            .sockets
            .iter()
            .map(|(l, fd)| (*l, fd.as_fd()))
            .collect();
        match ebpf::register(&ebpf::pin_root(), self.cookie, &sockets) {
            Ok(_) => Ok(()),
            Err(e) => Err(format!(
                "handing the listeners to the pod's eBPF program: {e:#}"
            )),
        }
    }
}
