//! Socket plumbing: listeners, the original destination of a redirected connection, and
//! upstream connects with ztunnel's options (TCP_NODELAY, keepalive, mark, original source).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Upstream connect timeout (docs/WIRE.md §1.6).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const KEEPALIVE_TIME: Duration = Duration::from_secs(180);
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(180);
const KEEPALIVE_RETRIES: u32 = 9;
const BACKLOG: i32 = 1024;

/// The network namespace ztunnel's threads live in, opened before any switch.
static HOME_NETNS: std::sync::OnceLock<io::Result<std::fs::File>> = std::sync::OnceLock::new();

/// Runs `f` (which creates sockets) with the current thread inside `netns`, then switches
/// back. A socket stays in the namespace it was created in, so this is how ztunnel listens and
/// connects inside a pod (docs/WIRE.md §2.1). Nothing awaits in between: the thread cannot
/// run another task while it is away.
pub fn in_netns<T>(
    netns: Option<&std::fs::File>,
    f: impl FnOnce() -> io::Result<T>,
) -> io::Result<T> {
    use nix::sched::{setns, CloneFlags};
    let Some(netns) = netns else {
        return f();
    };
    // Every thread is in the home namespace whenever it is not inside this function.
    let home = HOME_NETNS
        .get_or_init(|| std::fs::File::open("/proc/thread-self/ns/net"))
        .as_ref()
        .map_err(|e| io::Error::new(e.kind(), format!("opening ztunnel's own netns: {e}")))?;
    setns(netns, CloneFlags::CLONE_NEWNET)?;
    let result = f();
    if let Err(e) = setns(home, CloneFlags::CLONE_NEWNET) {
        // A worker thread stranded in a pod's namespace would put later sockets there.
        tracing::error!(error = %e, "cannot return to ztunnel's own network namespace");
        std::process::abort();
    }
    result
}

/// Turns on `net.ipv4.tcp_migrate_req` in `netns`: when a listener of a SO_REUSEPORT group
/// closes (the old ztunnel draining after a new one bound beside it), the connections still
/// waiting in its accept queue move to another listener of the group instead of being reset.
/// Kernels before 5.14 lack it; a hand-off there can reset the few connections queued at that
/// instant.
pub fn migrate_on_close(netns: Option<&std::fs::File>) {
    let r = in_netns(netns, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1")
    });
    if let Err(e) = r {
        tracing::debug!(error = %e, "net.ipv4.tcp_migrate_req not set");
    }
}

/// Binds `port` on all addresses (dual-stack `[::]` when possible, else `0.0.0.0`), or on
/// `ip` when given. SO_REUSEPORT lets a new ztunnel take over before the old one drains.
pub fn listen(ip: Option<IpAddr>, port: u16, ipv6: bool) -> io::Result<TcpListener> {
    listen_in(None, ip, port, ipv6)
}

/// [`listen`] inside `netns`.
pub fn listen_in(
    netns: Option<&std::fs::File>,
    ip: Option<IpAddr>,
    port: u16,
    ipv6: bool,
) -> io::Result<TcpListener> {
    in_netns(netns, || listen_here(ip, port, ipv6))
}

fn listen_here(ip: Option<IpAddr>, port: u16, ipv6: bool) -> io::Result<TcpListener> {
    let candidates: Vec<IpAddr> = match ip {
        Some(ip) => vec![ip],
        None if ipv6 => vec![Ipv6Addr::UNSPECIFIED.into(), Ipv4Addr::UNSPECIFIED.into()],
        None => vec![Ipv4Addr::UNSPECIFIED.into()],
    };
    let mut last = None;
    for ip in candidates {
        match bind_one(SocketAddr::new(ip, port)) {
            Ok(l) => return Ok(l),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| io::ErrorKind::AddrNotAvailable.into()))
}

fn bind_one(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    if addr.is_ipv6() {
        s.set_only_v6(false)?;
    }
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(BACKLOG)?;
    TcpListener::from_std(s.into())
}

/// The destination the app dialled before iptables REDIRECTed it here, else the local address.
pub fn original_dst(tcp: &TcpStream) -> io::Result<SocketAddr> {
    let sock = SockRef::from(tcp);
    let local = tcp.local_addr()?;
    let orig = if local.is_ipv6() && !is_v4_mapped(&local) {
        sock.original_dst_v6()
    } else {
        sock.original_dst_v4()
    };
    match orig.ok().and_then(|a| a.as_socket()) {
        Some(a) => Ok(canonical(a)),
        None => Ok(canonical(local)),
    }
}

fn is_v4_mapped(a: &SocketAddr) -> bool {
    matches!(a.ip(), IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some())
}

/// `::ffff:a.b.c.d` → `a.b.c.d`, so lookups by IP work for dual-stack listeners.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(a.ip().to_canonical(), a.port())
}

pub fn set_accepted_options(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
}

/// Connects to `dst` with ztunnel's upstream options. `src` binds the source address with
/// IP_TRANSPARENT (original-source preservation); if the kernel refuses, the connection is made
/// from the ordinary source instead.
pub async fn connect(
    dst: SocketAddr,
    src: Option<IpAddr>,
    mark: Option<u32>,
) -> io::Result<TcpStream> {
    connect_in(None, dst, src, mark).await
}

/// [`connect`] from inside `netns`.
pub async fn connect_in(
    netns: Option<&std::fs::File>,
    dst: SocketAddr,
    src: Option<IpAddr>,
    mark: Option<u32>,
) -> io::Result<TcpStream> {
    let socket = |dst, src, mark| in_netns(netns, || socket(dst, src, mark));
    let attempt = async {
        if let Some(src) = src {
            match socket(dst, Some(src), mark) {
                Ok(s) => match s.connect(dst).await {
                    Ok(t) => return Ok(t),
                    Err(e) => {
                        tracing::debug!(%src, %dst, error = %e, "transparent connect failed; using the local source")
                    }
                },
                Err(e) => {
                    tracing::debug!(%src, error = %e, "cannot bind original source; using the local source")
                }
            }
        }
        socket(dst, None, mark)?.connect(dst).await
    };
    let tcp = tokio::time::timeout(CONNECT_TIMEOUT, attempt)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
    tcp.set_nodelay(true)?;
    Ok(tcp)
}

fn socket(dst: SocketAddr, src: Option<IpAddr>, mark: Option<u32>) -> io::Result<TcpSocket> {
    let s = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
    s.set_nonblocking(true)?;
    s.set_tcp_nodelay(true)?;
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_TIME)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_RETRIES);
    s.set_tcp_keepalive(&ka)?;
    if let Some(m) = mark {
        s.set_mark(m)?;
    }
    if let Some(src) = src {
        s.set_ip_transparent_v4(true)?;
        s.set_freebind_v4(true)?;
        let src = match (src, dst) {
            (IpAddr::V4(v4), SocketAddr::V6(_)) => IpAddr::V6(v4.to_ipv6_mapped()),
            (s, _) => s,
        };
        s.bind(&SocketAddr::new(src, 0).into())?;
    }
    Ok(TcpSocket::from_std_stream(s.into()))
}

/// Copies plain TCP both ways with half-close; if either side resets, the other is reset too.
/// Bytes are counted in `a_to_b` and `b_to_a` as they are written.
pub async fn copy_plain(
    a: &mut TcpStream,
    b: &mut TcpStream,
    a_to_b: &hbone::Counter,
    b_to_a: &hbone::Counter,
) -> Result<(u64, u64), io::Error> {
    match hbone::io::copy_counted(a, b, a_to_b, b_to_a).await {
        Ok(n) => Ok(n),
        Err(e) => {
            hbone::stream::reset_tcp(a);
            hbone::stream::reset_tcp(b);
            Err(e)
        }
    }
}
