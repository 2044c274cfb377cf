//! The DNS proxy (docs/WIRE.md §2.2) on 127.0.0.1:15053, UDP and TCP: A and AAAA for the
//! service hostnames ztunnel knows (short names and search-domain forms too), TTL 30 s;
//! everything else is forwarded to the resolvers of ztunnel's own `/etc/resolv.conf`, from
//! sockets carrying ztunnel's mark so they are not captured again.
//!
//! Only the header and the one question are parsed, with hard bounds (name length, label
//! count, at most 16 compression jumps, each backwards), so a hostile packet costs a few
//! hundred steps at most. Upstream answers are relayed as bytes, never parsed.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use proxycore::state::State;

pub const PORT: u16 = proxycore::config::DNS_PORT;
pub const TTL: u32 = 30;
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(5);
pub const TCP_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_UDP: usize = 512;
const MAX_MESSAGE: usize = 65_535;

pub const TYPE_A: u16 = 1;
pub const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;

pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_FORMERR: u8 = 1;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NOTIMP: u8 = 4;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Query {
    pub id: u16,
    pub recursion_desired: bool,
    /// Lower case, no trailing dot.
    pub name: String,
    pub qtype: u16,
    pub qclass: u16,
    /// End of the question section in the query bytes.
    pub question_end: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Not worth an answer (too short to hold an id, or a response).
    #[error("dropped: {0}")]
    Drop(&'static str),
    /// Answered with this rcode.
    #[error("rcode {0}: {1}")]
    Reply(u8, &'static str),
}

fn u16_at(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

/// Reads a name at `pos`; returns it and the offset just past it in the original position.
fn read_name(b: &[u8], mut pos: usize) -> Result<(String, usize), ParseError> {
    let bad = |why| ParseError::Reply(RCODE_FORMERR, why);
    let mut name = String::new();
    let mut end = None;
    let mut jumps = 0;
    loop {
        let len = *b.get(pos).ok_or(bad("name runs past the message"))? as usize;
        match len & 0xC0 {
            0x00 if len == 0 => {
                let end = end.unwrap_or(pos + 1);
                return Ok((name, end));
            }
            0x00 => {
                let label = b
                    .get(pos + 1..pos + 1 + len)
                    .ok_or(bad("label runs past the message"))?;
                if !name.is_empty() {
                    name.push('.');
                }
                for c in label {
                    name.push(c.to_ascii_lowercase() as char);
                }
                if name.len() > 253 {
                    return Err(bad("name longer than 253 bytes"));
                }
                pos += 1 + len;
            }
            0xC0 => {
                let target = (u16_at(b, pos).ok_or(bad("truncated pointer"))? & 0x3FFF) as usize;
                jumps += 1;
                if jumps > 16 || target >= pos {
                    return Err(bad("compression loop or forward pointer"));
                }
                end.get_or_insert(pos + 2);
                pos = target;
            }
            _ => return Err(bad("reserved label type")),
        }
    }
}

/// Parses a query: exactly one question, a standard query opcode.
pub fn parse_query(b: &[u8]) -> Result<Query, ParseError> {
    if b.len() < 12 {
        return Err(ParseError::Drop("shorter than a header"));
    }
    let id = u16_at(b, 0).unwrap_or(0);
    let flags = u16_at(b, 2).unwrap_or(0);
    if flags & 0x8000 != 0 {
        return Err(ParseError::Drop("a response, not a query"));
    }
    if (flags >> 11) & 0xF != 0 {
        return Err(ParseError::Reply(RCODE_NOTIMP, "opcode other than QUERY"));
    }
    if u16_at(b, 4) != Some(1) {
        return Err(ParseError::Reply(RCODE_FORMERR, "QDCOUNT is not 1"));
    }
    let (name, pos) = read_name(b, 12)?;
    let qtype = u16_at(b, pos).ok_or(ParseError::Reply(RCODE_FORMERR, "truncated question"))?;
    let qclass =
        u16_at(b, pos + 2).ok_or(ParseError::Reply(RCODE_FORMERR, "truncated question"))?;
    Ok(Query {
        id,
        recursion_desired: flags & 0x0100 != 0,
        name,
        qtype,
        qclass,
        question_end: pos + 4,
    })
}

/// A response to `q` (whose bytes are `raw`) with `rcode` and address answers. Over UDP,
/// answers that do not fit 512 bytes are cut and TC is set.
pub fn response(raw: &[u8], q: &Query, rcode: u8, answers: &[IpAddr], udp: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(q.question_end + answers.len() * 28);
    out.extend_from_slice(&q.id.to_be_bytes());
    // QR, AA, RD copied, RA.
    let mut flags: u16 = 0x8000 | 0x0400 | 0x0080 | u16::from(rcode & 0xF);
    if q.recursion_desired {
        flags |= 0x0100;
    }
    out.extend_from_slice(&flags.to_be_bytes());
    out.extend_from_slice(&1u16.to_be_bytes());
    out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&raw[12..q.question_end]);
    let mut count: u16 = 0;
    for ip in answers {
        let (rtype, data): (u16, Vec<u8>) = match ip {
            IpAddr::V4(v4) => (TYPE_A, v4.octets().to_vec()),
            IpAddr::V6(v6) => (TYPE_AAAA, v6.octets().to_vec()),
        };
        if udp && out.len() + 12 + data.len() > MAX_UDP {
            out[2] |= 0x02; // TC
            break;
        }
        out.extend_from_slice(&[0xC0, 0x0C]);
        out.extend_from_slice(&rtype.to_be_bytes());
        out.extend_from_slice(&CLASS_IN.to_be_bytes());
        out.extend_from_slice(&TTL.to_be_bytes());
        out.extend_from_slice(&(data.len() as u16).to_be_bytes());
        out.extend_from_slice(&data);
        count += 1;
    }
    out[6..8].copy_from_slice(&count.to_be_bytes());
    out
}

/// A bare error response when the question could not be read: the header only.
fn error_header(raw: &[u8], rcode: u8) -> Vec<u8> {
    let mut out = raw[..12].to_vec();
    out[2] = 0x80 | (raw[2] & 0x79); // QR, opcode and RD kept
    out[3] = 0x80 | (rcode & 0xF);
    out[4..12].fill(0);
    out
}

/// The names to try for `name`, as a resolver with Kubernetes search domains would: as given,
/// then with each search domain appended, and with a search domain that the client already
/// appended stripped again.
pub fn candidates(name: &str, namespace: &str, domain: &str) -> Vec<String> {
    let search = [
        format!("{namespace}.svc.{domain}"),
        format!("svc.{domain}"),
        domain.to_string(),
    ];
    let mut out = vec![name.to_string()];
    for s in &search {
        out.push(format!("{name}.{s}"));
    }
    for s in &search {
        if let Some(stripped) = name.strip_suffix(&format!(".{s}")) {
            out.push(stripped.to_string());
            for t in &search {
                out.push(format!("{stripped}.{t}"));
            }
        }
    }
    out.dedup();
    out
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DnsLabels {
    pub request_query_type: String,
    pub request_protocol: &'static str,
    pub source_canonical_service: String,
    pub source_canonical_revision: String,
}

#[derive(Clone, Default)]
pub struct DnsMetrics {
    pub requests: Family<DnsLabels, Counter>,
    pub upstream_requests: Family<DnsLabels, Counter>,
    pub upstream_failures: Family<DnsLabels, Counter>,
}

impl DnsMetrics {
    pub fn register(registry: &mut Registry) -> Self {
        let m = DnsMetrics::default();
        let r = registry.sub_registry_with_prefix("istio");
        r.register(
            "dns_requests",
            "Total number of DNS requests",
            m.requests.clone(),
        );
        r.register(
            "dns_upstream_requests",
            "Total number of DNS requests forwarded to upstream resolvers",
            m.upstream_requests.clone(),
        );
        r.register(
            "dns_upstream_failures",
            "Total number of DNS requests that failed upstream",
            m.upstream_failures.clone(),
        );
        m
    }
}

fn type_name(t: u16) -> String {
    match t {
        TYPE_A => "a".into(),
        TYPE_AAAA => "aaaa".into(),
        5 => "cname".into(),
        12 => "ptr".into(),
        15 => "mx".into(),
        16 => "txt".into(),
        33 => "srv".into(),
        other => other.to_string(),
    }
}

/// What the proxy needs: the store, the client workload (namespace and name: its namespace
/// decides the search domains, its canonical names label the metrics), the upstream
/// resolvers and the socket mark.
pub struct Dns {
    pub state: State,
    pub namespace: String,
    pub workload_name: String,
    pub domain: String,
    pub upstreams: Vec<SocketAddr>,
    pub mark: Option<u32>,
    pub metrics: DnsMetrics,
    /// The pod's namespace: upstream queries leave from there (shared mode).
    pub netns: Option<Arc<std::fs::File>>,
}

/// The nameservers of a resolv.conf text, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Dns {
    fn labels(&self, q: Option<&Query>, protocol: &'static str) -> DnsLabels {
        let w = self
            .state
            .workload_by_name(&self.namespace, &self.workload_name);
        let or_unknown = |s: Option<&str>| {
            s.filter(|s| !s.is_empty())
                .unwrap_or(proxycore::metrics::UNKNOWN)
                .to_string()
        };
        DnsLabels {
            request_query_type: q.map(|q| type_name(q.qtype)).unwrap_or_default(),
            request_protocol: protocol,
            source_canonical_service: or_unknown(w.as_deref().map(|w| w.canonical_name.as_str())),
            source_canonical_revision: or_unknown(
                w.as_deref().map(|w| w.canonical_revision.as_str()),
            ),
        }
    }

    /// The answer to one message, or `None` to stay silent.
    pub async fn answer(&self, raw: &[u8], udp: bool) -> Option<Vec<u8>> {
        let protocol = if udp { "udp" } else { "tcp" };
        let q = match parse_query(raw) {
            Ok(q) => q,
            Err(ParseError::Drop(why)) => {
                tracing::debug!(why, "DNS message dropped");
                return None;
            }
            Err(ParseError::Reply(rcode, why)) => {
                tracing::debug!(why, "DNS query refused");
                self.metrics
                    .requests
                    .get_or_create(&self.labels(None, protocol))
                    .inc();
                return Some(error_header(raw, rcode));
            }
        };
        let labels = self.labels(Some(&q), protocol);
        self.metrics.requests.get_or_create(&labels).inc();
        if q.qclass == CLASS_IN && (q.qtype == TYPE_A || q.qtype == TYPE_AAAA) {
            for name in candidates(&q.name, &self.namespace, &self.domain) {
                if let Some(ips) = self.state.dns_addresses(&name, &self.namespace) {
                    let want_v4 = q.qtype == TYPE_A;
                    let ips: Vec<IpAddr> = ips
                        .into_iter()
                        .filter(|ip| ip.is_ipv4() == want_v4)
                        .collect();
                    tracing::debug!(query = %q.name, host = %name, answers = ips.len(), "DNS answered");
                    return Some(response(raw, &q, RCODE_NOERROR, &ips, udp));
                }
            }
        }
        self.metrics.upstream_requests.get_or_create(&labels).inc();
        match self.forward(raw, udp).await {
            Ok(resp) => Some(resp),
            Err(e) => {
                self.metrics.upstream_failures.get_or_create(&labels).inc();
                tracing::info!(query = %q.name, error = %e, "DNS upstream failed");
                Some(response(raw, &q, RCODE_SERVFAIL, &[], udp))
            }
        }
    }

    async fn forward(&self, raw: &[u8], udp: bool) -> std::io::Result<Vec<u8>> {
        let mut last = std::io::Error::other("no upstream resolver in /etc/resolv.conf");
        for up in &self.upstreams {
            let attempt = async {
                if udp {
                    let s = proxycore::socket::in_netns(self.netns.as_deref(), || {
                        socket2::Socket::new(
                            socket2::Domain::for_address(*up),
                            socket2::Type::DGRAM,
                            Some(socket2::Protocol::UDP),
                        )
                    })?;
                    if let Some(m) = self.mark {
                        s.set_mark(m)?;
                    }
                    s.set_nonblocking(true)?;
                    let s = UdpSocket::from_std(s.into())?;
                    s.connect(up).await?;
                    s.send(raw).await?;
                    let mut buf = vec![0u8; MAX_MESSAGE];
                    let n = s.recv(&mut buf).await?;
                    buf.truncate(n);
                    Ok(buf)
                } else {
                    let mut s =
                        proxycore::socket::connect_in(self.netns.as_deref(), *up, None, self.mark)
                            .await?;
                    s.write_all(&(raw.len() as u16).to_be_bytes()).await?;
                    s.write_all(raw).await?;
                    let n = s.read_u16().await? as usize;
                    let mut buf = vec![0u8; n];
                    s.read_exact(&mut buf).await?;
                    Ok(buf)
                }
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(resp)) => return Ok(resp),
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = std::io::Error::new(std::io::ErrorKind::TimedOut, "upstream timed out")
                }
            }
        }
        Err(last)
    }
}

/// Serves UDP until the socket fails. Each answer leaves from the address the query was sent
/// to: with iptables or nftables the kernel rewrites it on the way back; with eBPF
/// redirection the query arrives with its original destination (say 10.96.0.10:53) and the
/// answer must come from there, or the app's connected resolver socket would not take it.
pub async fn serve_udp(dns: Arc<Dns>, socket: UdpSocket) {
    let socket = Arc::new(socket);
    let local = socket.local_addr().ok();
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (n, from, to) = match recv_with_destination(&socket, &mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "DNS UDP receive failed");
                continue;
            }
        };
        let msg = buf[..n].to_vec();
        let (dns, socket) = (dns.clone(), socket.clone());
        tokio::spawn(async move {
            let Some(resp) = dns.answer(&msg, true).await else {
                return;
            };
            match to.filter(|to| Some(*to) != local) {
                Some(to) => {
                    if let Err(e) = dns.reply_from(to, from, &resp) {
                        tracing::debug!(%to, %from, error = %e, "DNS answer not sent");
                    }
                }
                None => {
                    let _ = socket.send_to(&resp, from).await;
                }
            }
        });
    }
}

/// One datagram, its sender and (when the kernel says) the address it was sent to
/// (IP_RECVORIGDSTADDR).
async fn recv_with_destination(
    socket: &UdpSocket,
    buf: &mut [u8],
) -> std::io::Result<(usize, SocketAddr, Option<SocketAddr>)> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags, SockaddrStorage};
    use std::os::fd::AsRawFd;
    loop {
        socket.readable().await?;
        let r = socket.try_io(tokio::io::Interest::READABLE, || {
            let mut iov = [std::io::IoSliceMut::new(buf)];
            let mut space = nix::cmsg_space!(nix::libc::sockaddr_in);
            let msg = recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::empty(),
            )
            .map_err(std::io::Error::from)?;
            let from = msg
                .address
                .and_then(|a| {
                    a.as_sockaddr_in()
                        .map(|a| SocketAddr::from((a.ip(), a.port())))
                })
                .ok_or_else(|| std::io::Error::other("datagram without an IPv4 sender"))?;
            let mut to = None;
            for c in msg.cmsgs().map_err(std::io::Error::from)? {
                if let ControlMessageOwned::Ipv4OrigDstAddr(a) = c {
                    let ip = std::net::Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
                    to = Some(SocketAddr::from((ip, u16::from_be(a.sin_port))));
                }
            }
            Ok((msg.bytes, from, to))
        });
        match r {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            r => return r,
        }
    }
}

impl Dns {
    /// Sends `resp` to `client` from `source`, an address that is not this host's: a
    /// transparent (IP_TRANSPARENT) socket made in the pod's namespace for the one answer.
    fn reply_from(
        &self,
        source: SocketAddr,
        client: SocketAddr,
        resp: &[u8],
    ) -> std::io::Result<()> {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = proxycore::socket::in_netns(self.netns.as_deref(), || {
            let s = Socket::new(
                Domain::for_address(source),
                Type::DGRAM,
                Some(Protocol::UDP),
            )?;
            s.set_ip_transparent_v4(true)?;
            s.set_reuse_address(true)?;
            if let Some(m) = self.mark {
                s.set_mark(m)?;
            }
            s.bind(&source.into())?;
            Ok(s)
        })?;
        s.send_to(resp, &client.into())?;
        Ok(())
    }
}

/// Serves TCP: length-prefixed messages, each connection closed after 5 s of silence.
pub async fn serve_tcp(dns: Arc<Dns>, listener: TcpListener) {
    loop {
        let Ok((s, _)) = listener.accept().await else {
            continue;
        };
        tokio::spawn(tcp_connection(dns.clone(), s));
    }
}

async fn tcp_connection(dns: Arc<Dns>, mut s: TcpStream) {
    loop {
        let read = async {
            let n = s.read_u16().await? as usize;
            let mut msg = vec![0u8; n];
            s.read_exact(&mut msg).await?;
            Ok::<_, std::io::Error>(msg)
        };
        let msg = match tokio::time::timeout(TCP_TIMEOUT, read).await {
            Ok(Ok(m)) => m,
            _ => return,
        };
        let Some(resp) = dns.answer(&msg, false).await else {
            return;
        };
        let mut framed = (resp.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&resp);
        if s.write_all(&framed).await.is_err() {
            return;
        }
    }
}

/// Binds UDP and TCP on 127.0.0.1:`port`, inside `netns` when given.
pub fn bind(netns: Option<&std::fs::File>, port: u16) -> std::io::Result<(UdpSocket, TcpListener)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let udp = proxycore::socket::in_netns(netns, || {
        use socket2::{Domain, Protocol, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP))?;
        // As the TCP listeners: a new ztunnel binds beside the old one during a hand-off.
        s.set_reuse_port(true)?;
        // Where each query was sent (eBPF redirection keeps the original destination).
        nix::sys::socket::setsockopt(&s, nix::sys::socket::sockopt::Ipv4OrigDstAddr, &true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())?;
        Ok(std::net::UdpSocket::from(s))
    })?;
    let udp = UdpSocket::from_std(udp)?;
    let tcp = proxycore::socket::listen_in(netns, Some(addr.ip()), port, false)?;
    Ok((udp, tcp))
}

#[cfg(test)]
mod tests;
