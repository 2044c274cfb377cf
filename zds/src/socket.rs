//! Unix SOCK_SEQPACKET sockets for ZDS (docs/WIRE.md §5.1): one datagram per message, at
//! most one file descriptor passed alongside with SCM_RIGHTS, truncation treated as an error.
//! Async over tokio's `AsyncFd`.
#![allow(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    accept4, bind, connect, listen, recvmsg, sendmsg, socket, AddressFamily, Backlog,
    ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr,
};
use tokio::io::unix::AsyncFd;

/// Messages must be smaller than this (both sides read into a buffer of this size).
pub const MAX_MESSAGE: usize = 1024;

fn flags() -> SockFlag {
    SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK
}

fn new_socket() -> io::Result<OwnedFd> {
    Ok(socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        flags(),
        None,
    )?)
}

/// Takes ownership of a descriptor the kernel just gave us.
fn owned(fd: RawFd) -> OwnedFd {
    // SAFETY: `fd` was returned by accept4 or delivered by SCM_RIGHTS to this process a moment
    // ago; nothing else holds it, so this OwnedFd is its only owner and closes it exactly once.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Registers `fd` with the tokio reactor.
fn async_fd(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
    // SAFETY: the AsyncFd takes ownership of `fd`; it stays open and is neither replaced nor
    // closed while registered, and closes when the AsyncFd (and its registration) drops.
    unsafe { AsyncFd::register(fd) }.map_err(|e| io::Error::other(e.to_string()))
}

pub struct SeqPacket {
    fd: AsyncFd<OwnedFd>,
}

pub struct Listener {
    fd: AsyncFd<OwnedFd>,
}

impl Listener {
    /// Binds `path` (an existing socket file there is replaced) and listens.
    pub fn bind(path: &Path) -> io::Result<Listener> {
        let _ = std::fs::remove_file(path);
        let fd = new_socket()?;
        bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        listen(&fd, Backlog::new(16)?)?;
        Ok(Listener { fd: async_fd(fd)? })
    }

    pub async fn accept(&self) -> io::Result<SeqPacket> {
        loop {
            let mut guard = self.fd.readable().await?;
            match guard.try_io(|fd| Ok(accept4(fd.get_ref().as_raw_fd(), flags())?)) {
                Ok(Ok(raw)) => {
                    return Ok(SeqPacket {
                        fd: async_fd(owned(raw))?,
                    })
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }
}

impl SeqPacket {
    pub fn connect(path: &Path) -> io::Result<SeqPacket> {
        let fd = new_socket()?;
        connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
        Ok(SeqPacket { fd: async_fd(fd)? })
    }

    /// A connected pair (tests).
    pub fn pair() -> io::Result<(SeqPacket, SeqPacket)> {
        let (a, b) =
            nix::sys::socket::socketpair(AddressFamily::Unix, SockType::SeqPacket, None, flags())?;
        Ok((
            SeqPacket { fd: async_fd(a)? },
            SeqPacket { fd: async_fd(b)? },
        ))
    }

    /// Sends one message, with `fd` attached when given.
    pub async fn send(&self, msg: &[u8], fd: Option<BorrowedFd<'_>>) -> io::Result<()> {
        if msg.len() >= MAX_MESSAGE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("message of {} bytes; the limit is {MAX_MESSAGE}", msg.len()),
            ));
        }
        let raw: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        loop {
            let mut guard = self.fd.writable().await?;
            let r = guard.try_io(|s| {
                let cmsgs: Vec<ControlMessage<'_>> = if raw.is_empty() {
                    vec![]
                } else {
                    vec![ControlMessage::ScmRights(&raw)]
                };
                Ok(sendmsg::<()>(
                    s.get_ref().as_raw_fd(),
                    &[IoSlice::new(msg)],
                    &cmsgs,
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )?)
            });
            match r {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Receives one message and the descriptor that came with it. `Ok(None)` is EOF. A
    /// truncated message or control part, or more than one descriptor, is an error (and the
    /// descriptors received are closed).
    pub async fn recv(&self) -> io::Result<Option<(Vec<u8>, Option<OwnedFd>)>> {
        loop {
            let mut guard = self.fd.readable().await?;
            let r = guard.try_io(|s| {
                let mut buf = vec![0u8; MAX_MESSAGE];
                let mut space = nix::cmsg_space!([RawFd; 2]);
                let (n, truncated, mut fds) = {
                    let mut iov = [IoSliceMut::new(&mut buf)];
                    let msg = recvmsg::<()>(
                        s.get_ref().as_raw_fd(),
                        &mut iov,
                        Some(&mut space),
                        MsgFlags::MSG_CMSG_CLOEXEC,
                    )?;
                    let mut fds: Vec<OwnedFd> = Vec::new();
                    for c in msg.cmsgs()? {
                        if let ControlMessageOwned::ScmRights(list) = c {
                            fds.extend(list.into_iter().map(owned));
                        }
                    }
                    let truncated = msg
                        .flags
                        .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC);
                    (msg.bytes, truncated, fds)
                };
                if truncated {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "message or control data truncated",
                    ));
                }
                if fds.len() > 1 {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("{} descriptors in one message; at most 1", fds.len()),
                    ));
                }
                buf.truncate(n);
                Ok((buf, fds.pop()))
            });
            match r {
                Ok(Ok((buf, _))) if buf.is_empty() => return Ok(None),
                Ok(Ok(x)) => return Ok(Some(x)),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.get_ref().as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[tokio::test]
    async fn messages_and_one_descriptor_cross() {
        let (a, b) = SeqPacket::pair().unwrap();
        let netns = std::fs::File::open("/proc/self/ns/net").unwrap();
        a.send(b"hello", None).await.unwrap();
        a.send(b"with fd", Some(netns.as_fd())).await.unwrap();
        let (m, fd) = b.recv().await.unwrap().unwrap();
        assert_eq!((m.as_slice(), fd.is_none()), (&b"hello"[..], true));
        let (m, fd) = b.recv().await.unwrap().unwrap();
        assert_eq!(m, b"with fd");
        let got = std::fs::File::from(fd.unwrap());
        assert_eq!(
            got.metadata().unwrap().ino(),
            netns.metadata().unwrap().ino()
        );
        assert!(a.send(&[0u8; MAX_MESSAGE], None).await.is_err());
        drop(a);
        assert!(b.recv().await.unwrap().is_none());
    }
}
