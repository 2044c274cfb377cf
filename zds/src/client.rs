//! The ztunnel side of ZDS (docs/WIRE.md §5): connect to the CNI node agent's SEQPACKET
//! socket, say hello, then answer every workload request with an Ack once the handler has
//! acted on it. Requests are checked before they reach the handler: an Add needs its workload
//! info and exactly one descriptor that is a network namespace; Keep is only valid in the
//! snapshot; the snapshot ends once.

use std::os::fd::OwnedFd;
use std::path::Path;

use crate::socket::SeqPacket;
use prost::Message;
use xds::workload::zds as pb;

/// What the node agent asks of ztunnel.
#[derive(Debug)]
pub enum Event {
    Add {
        uid: String,
        info: pb::WorkloadInfo,
        netns: OwnedFd,
    },
    Keep {
        uid: String,
    },
    Del {
        uid: String,
    },
    SnapshotSent,
}

/// Acts on events; an `Err` is sent back as the Ack's error.
pub trait Handler {
    fn handle(&mut self, event: Event) -> impl std::future::Future<Output = Result<(), String>>;
}

#[derive(Debug, thiserror::Error)]
pub enum ZdsError {
    #[error("node agent socket: {0}")]
    Io(#[from] std::io::Error),
    #[error("undecodable message from the node agent: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Whether `fd` refers to a namespace (nsfs; `/proc/<pid>/ns/net` and bind-mounted netns
/// paths both open as nsfs on the kernels Keelson supports).
fn is_netns(fd: &OwnedFd) -> bool {
    use nix::sys::statfs::{fstatfs, NSFS_MAGIC};
    fstatfs(fd).is_ok_and(|s| s.filesystem_type() == NSFS_MAGIC)
}

/// Checks one request; the event, or the error its Ack carries.
pub fn check(
    req: pb::WorkloadRequest,
    fd: Option<OwnedFd>,
    snapshot_done: bool,
) -> Result<Event, String> {
    use pb::workload_request::Payload;
    let payload = req.payload.ok_or("empty request")?;
    if fd.is_some() && !matches!(payload, Payload::Add(_)) {
        return Err("a descriptor came with a request other than Add".into());
    }
    match payload {
        Payload::Add(a) => {
            let info = a.workload_info.ok_or("Add without workload_info")?;
            let netns = fd.ok_or("Add without a network namespace descriptor")?;
            if !is_netns(&netns) {
                return Err("the descriptor is not a network namespace".into());
            }
            if a.uid.is_empty() {
                return Err("Add without a uid".into());
            }
            Ok(Event::Add {
                uid: a.uid,
                info,
                netns,
            })
        }
        Payload::Keep(k) if snapshot_done => {
            Err(format!("Keep {} after the snapshot ended", k.uid))
        }
        Payload::Keep(k) => Ok(Event::Keep { uid: k.uid }),
        Payload::Del(d) => Ok(Event::Del { uid: d.uid }),
        Payload::SnapshotSent(_) if snapshot_done => Err("a second SnapshotSent".into()),
        Payload::SnapshotSent(_) => Ok(Event::SnapshotSent),
    }
}

/// One session with the node agent, until it closes the socket (`Ok`) or sends garbage.
pub async fn session(path: &Path, handler: &mut impl Handler) -> Result<(), ZdsError> {
    let conn = SeqPacket::connect(path)?;
    let hello = pb::ZdsHello {
        version: pb::Version::V1 as i32,
    };
    conn.send(&hello.encode_to_vec(), None).await?;
    let mut snapshot_done = false;
    while let Some((msg, fd)) = conn.recv().await? {
        let req = pb::WorkloadRequest::decode(msg.as_slice())?;
        let result = match check(req, fd, snapshot_done) {
            Ok(event) => {
                let last = matches!(event, Event::SnapshotSent);
                let r = handler.handle(event).await;
                snapshot_done |= last;
                r
            }
            Err(e) => Err(e),
        };
        if let Err(e) = &result {
            tracing::warn!(error = %e, "node agent request refused");
        }
        let ack = pb::WorkloadResponse {
            payload: Some(pb::workload_response::Payload::Ack(pb::Ack {
                error: result.err().unwrap_or_default(),
            })),
        };
        conn.send(&ack.encode_to_vec(), None).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
