//! SOCKS5 (15080 on localhost, `UNSTABLE_ENABLE_SOCKS5=true`): version 5, "no auth" only,
//! CONNECT only, IPv4 / IPv6 / domain addresses. The target then takes the outbound path.
//! Malformed requests get the matching SOCKS5 reply where one exists, then a clean close.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::outbound;
use proxycore::socket;
use proxycore::ProxyInputs;

const VERSION: u8 = 5;
const NO_AUTH: u8 = 0;
const NO_ACCEPTABLE_METHOD: u8 = 0xff;
const CMD_CONNECT: u8 = 1;
const ATYP_V4: u8 = 1;
const ATYP_DOMAIN: u8 = 3;
const ATYP_V6: u8 = 4;
/// Time a client has to finish the SOCKS5 handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Reply {
    Succeeded = 0,
    GeneralFailure = 1,
    HostUnreachable = 4,
    ConnectionRefused = 5,
    CommandNotSupported = 7,
    AddressTypeNotSupported = 8,
}

#[derive(Debug, thiserror::Error)]
pub enum SocksError {
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("unsupported SOCKS version {0}")]
    Version(u8),
    #[error("client offers no acceptable authentication method")]
    NoAcceptableMethod,
    #[error("unsupported command {0}")]
    Command(u8),
    #[error("unsupported address type {0}")]
    AddressType(u8),
    #[error("empty or invalid domain name")]
    BadDomain,
    #[error("cannot resolve {0}")]
    Resolve(String),
    #[error("handshake timed out")]
    Timeout,
}

impl SocksError {
    fn reply(&self) -> Option<Reply> {
        match self {
            SocksError::Command(_) => Some(Reply::CommandNotSupported),
            SocksError::AddressType(_) => Some(Reply::AddressTypeNotSupported),
            SocksError::Resolve(_) => Some(Reply::HostUnreachable),
            SocksError::BadDomain => Some(Reply::GeneralFailure),
            _ => None,
        }
    }
}

/// A parsed CONNECT target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Addr(SocketAddr),
    Domain(String, u16),
}

pub async fn serve(pi: Arc<ProxyInputs>, listener: TcpListener) {
    proxycore::listen::accept_loop(pi, listener, "socks5", handle).await
}

async fn handle(pi: Arc<ProxyInputs>, mut tcp: TcpStream, src: SocketAddr) {
    let target = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut tcp)).await {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => return reject(&mut tcp, src, e).await,
        Err(_) => return reject(&mut tcp, src, SocksError::Timeout).await,
    };
    let dst = match resolve(&pi, target).await {
        Ok(d) => d,
        Err(e) => return reject(&mut tcp, src, e).await,
    };
    let (mut result, upstream) = Box::pin(outbound::establish(&pi, src, dst, None)).await;
    match upstream {
        Ok(up) => {
            if send_reply(&mut tcp, Reply::Succeeded).await.is_ok() {
                outbound::relay(&mut tcp, up, &mut result).await;
            }
        }
        Err(e) => {
            let reply = match e {
                proxycore::ProxyError::NoEndpoints(..) | proxycore::ProxyError::NoWaypoint(_) => {
                    Reply::HostUnreachable
                }
                _ => Reply::ConnectionRefused,
            };
            result.fail_early(e.response_flag(), &e);
            let _ = send_reply(&mut tcp, reply).await;
        }
    }
}

async fn reject(tcp: &mut TcpStream, src: SocketAddr, e: SocksError) {
    tracing::info!(%src, error = %e, "socks5 request rejected");
    if let Some(r) = e.reply() {
        let _ = send_reply(tcp, r).await;
    }
    let _ = tcp.shutdown().await;
}

/// Reads the greeting and the request; answers the greeting.
pub async fn handshake<S>(s: &mut S) -> Result<Target, SocksError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let ver = s.read_u8().await?;
    if ver != VERSION {
        return Err(SocksError::Version(ver));
    }
    let n = s.read_u8().await? as usize;
    let mut methods = vec![0u8; n];
    s.read_exact(&mut methods).await?;
    if !methods.contains(&NO_AUTH) {
        s.write_all(&[VERSION, NO_ACCEPTABLE_METHOD]).await?;
        return Err(SocksError::NoAcceptableMethod);
    }
    s.write_all(&[VERSION, NO_AUTH]).await?;
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await?;
    if head[0] != VERSION {
        return Err(SocksError::Version(head[0]));
    }
    if head[1] != CMD_CONNECT {
        return Err(SocksError::Command(head[1]));
    }
    let target = match head[3] {
        ATYP_V4 => {
            let mut b = [0u8; 4];
            s.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                Ipv4Addr::from(b).into(),
                s.read_u16().await?,
            ))
        }
        ATYP_V6 => {
            let mut b = [0u8; 16];
            s.read_exact(&mut b).await?;
            Target::Addr(SocketAddr::new(
                Ipv6Addr::from(b).into(),
                s.read_u16().await?,
            ))
        }
        ATYP_DOMAIN => {
            let len = s.read_u8().await? as usize;
            let mut b = vec![0u8; len];
            s.read_exact(&mut b).await?;
            let port = s.read_u16().await?;
            let name = String::from_utf8(b).map_err(|_| SocksError::BadDomain)?;
            let valid = !name.is_empty()
                && name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.');
            if !valid {
                return Err(SocksError::BadDomain);
            }
            Target::Domain(name, port)
        }
        other => return Err(SocksError::AddressType(other)),
    };
    Ok(target)
}

async fn resolve(pi: &ProxyInputs, t: Target) -> Result<SocketAddr, SocksError> {
    match t {
        Target::Addr(a) => Ok(socket::canonical(a)),
        Target::Domain(name, port) => {
            if let Ok(ip) = name.parse::<IpAddr>() {
                return Ok(SocketAddr::new(ip, port));
            }
            // Mesh services by hostname first, then the system resolver.
            if let Some(ip) = pi
                .state
                .service_by_host(&name, &pi.local_ns)
                .and_then(|s| s.addresses.first().copied())
            {
                return Ok(SocketAddr::new(ip, port));
            }
            tokio::net::lookup_host((name.as_str(), port))
                .await
                .ok()
                .and_then(|mut it| it.next())
                .ok_or(SocksError::Resolve(name))
        }
    }
}

async fn send_reply(tcp: &mut TcpStream, r: Reply) -> std::io::Result<()> {
    tcp.write_all(&[VERSION, r as u8, 0, ATYP_V4, 0, 0, 0, 0, 0, 0])
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<Target, SocksError> {
        let (mut client, mut server) = tokio::io::duplex(1024);
        client.write_all(bytes).await.unwrap();
        client.shutdown().await.unwrap();
        handshake(&mut server).await
    }

    #[tokio::test]
    async fn parses_each_address_type() {
        let v4 = parse(&[5, 1, 0, 5, 1, 0, 1, 10, 0, 0, 1, 0, 80])
            .await
            .unwrap();
        assert_eq!(v4, Target::Addr("10.0.0.1:80".parse().unwrap()));
        let mut v6 = vec![5, 1, 0, 5, 1, 0, 4];
        v6.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        v6.extend_from_slice(&[0x1f, 0x90]);
        assert_eq!(
            parse(&v6).await.unwrap(),
            Target::Addr("[::1]:8080".parse().unwrap())
        );
        let mut d = vec![5, 1, 0, 5, 1, 0, 3, 4];
        d.extend_from_slice(b"echo");
        d.extend_from_slice(&[0, 80]);
        assert_eq!(parse(&d).await.unwrap(), Target::Domain("echo".into(), 80));
    }

    #[tokio::test]
    async fn rejects_garbage() {
        assert!(matches!(
            parse(&[4, 1, 0]).await,
            Err(SocksError::Version(4))
        ));
        assert!(matches!(
            parse(&[5, 0]).await,
            Err(SocksError::NoAcceptableMethod)
        ));
        assert!(matches!(
            parse(&[5, 1, 2]).await,
            Err(SocksError::NoAcceptableMethod)
        ));
        assert!(matches!(
            parse(&[5, 1, 0, 5, 2, 0, 1]).await,
            Err(SocksError::Command(2))
        ));
        assert!(matches!(
            parse(&[5, 1, 0, 5, 1, 0, 9]).await,
            Err(SocksError::AddressType(9))
        ));
        assert!(matches!(
            parse(&[5, 1, 0, 5, 1, 0, 3, 0, 0, 80]).await,
            Err(SocksError::BadDomain)
        ));
        assert!(matches!(parse(&[5, 1]).await, Err(SocksError::Io(_))));
    }
}
