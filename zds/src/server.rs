//! The node agent's side of ZDS (docs/WIRE.md §5.3): it listens on the node's socket, and to
//! every ztunnel that connects it replays its pod cache (Add with the netns descriptor, then
//! SnapshotSent), then forwards Add and Del as pods come and go, each waiting for its Ack.
//! Runs on its own thread and runtime; callers talk to it through blocking calls.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::socket::{Listener, SeqPacket};
use anyhow::{anyhow, bail, Context, Result};
use prost::Message;
use tokio::sync::mpsc;
use xds::workload::zds as pb;

/// Each write and read waits at most this long (docs/WIRE.md §5.3).
pub const DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PodInfo {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    /// `/var/run/netns/<name>` or `/proc/<pid>/ns/net`.
    pub netns: PathBuf,
}

type Reply = std::sync::mpsc::Sender<Result<()>>;

enum Command {
    Add(PodInfo, Reply),
    Del(String, Reply),
}

pub struct NodeAgent {
    tx: mpsc::Sender<Command>,
    path: PathBuf,
}

async fn exchange(conn: &SeqPacket, req: pb::WorkloadRequest, netns: Option<&Path>) -> Result<()> {
    let file = netns
        .map(|p| std::fs::File::open(p).with_context(|| format!("opening {}", p.display())))
        .transpose()?;
    let bytes = req.encode_to_vec();
    let send = conn.send(&bytes, file.as_ref().map(|f| f.as_fd()));
    tokio::time::timeout(DEADLINE, send)
        .await
        .map_err(|_| anyhow!("ztunnel did not take the request within {DEADLINE:?}"))??;
    let (resp, _) = tokio::time::timeout(DEADLINE, conn.recv())
        .await
        .map_err(|_| anyhow!("ztunnel did not answer within {DEADLINE:?}"))??
        .ok_or_else(|| anyhow!("ztunnel closed the connection"))?;
    match pb::WorkloadResponse::decode(resp.as_slice())?.payload {
        Some(pb::workload_response::Payload::Ack(a)) if a.error.is_empty() => Ok(()),
        Some(pb::workload_response::Payload::Ack(a)) => bail!("ztunnel refused: {}", a.error),
        None => bail!("ztunnel sent an empty response"),
    }
}

fn add_request(p: &PodInfo) -> pb::WorkloadRequest {
    pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::Add(pb::AddWorkload {
            uid: p.uid.clone(),
            workload_info: Some(pb::WorkloadInfo {
                name: p.name.clone(),
                namespace: p.namespace.clone(),
                service_account: p.service_account.clone(),
            }),
        })),
    }
}

/// Greets a new ztunnel and sends the snapshot.
async fn handshake(conn: &SeqPacket, pods: &BTreeMap<String, PodInfo>) -> Result<()> {
    let (hello, _) = tokio::time::timeout(DEADLINE, conn.recv())
        .await
        .map_err(|_| anyhow!("no hello within {DEADLINE:?}"))??
        .ok_or_else(|| anyhow!("closed before hello"))?;
    let hello = pb::ZdsHello::decode(hello.as_slice())?;
    if hello.version != pb::Version::V1 as i32 {
        bail!("unsupported ZDS version {}", hello.version);
    }
    for p in pods.values() {
        if p.netns.exists() {
            exchange(conn, add_request(p), Some(&p.netns)).await?;
        } else {
            let keep = pb::WorkloadRequest {
                payload: Some(pb::workload_request::Payload::Keep(pb::KeepWorkload {
                    uid: p.uid.clone(),
                })),
            };
            exchange(conn, keep, None).await?;
        }
    }
    let done = pb::WorkloadRequest {
        payload: Some(pb::workload_request::Payload::SnapshotSent(
            pb::SnapshotSent {},
        )),
    };
    exchange(conn, done, None).await
}

/// How many replaced ztunnel connections are held open at most.
const MAX_RETIRED: usize = 4;

async fn serve(
    listener: Listener,
    mut rx: mpsc::Receiver<Command>,
    mut pods: BTreeMap<String, PodInfo>,
) {
    let mut conn: Option<SeqPacket> = None;
    // Connections of ztunnels a newer one replaced: kept open, never written to, so the old
    // ztunnel keeps serving its pods until it drains instead of reconnecting and taking the
    // node back (the newest connection is the one pods go to).
    let mut retired: std::collections::VecDeque<SeqPacket> = Default::default();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok(c) = accepted else { continue };
                match handshake(&c, &pods).await {
                    Ok(()) => {
                        if let Some(old) = conn.replace(c) {
                            retired.push_back(old);
                            if retired.len() > MAX_RETIRED {
                                retired.pop_front();
                            }
                        }
                    }
                    Err(e) => eprintln!("node agent: ztunnel handshake failed: {e:#}"),
                }
            }
            cmd = rx.recv() => {
                let Some(cmd) = cmd else { return };
                match cmd {
                    Command::Add(p, reply) => {
                        let r = match &conn {
                            Some(c) => exchange(c, add_request(&p), Some(&p.netns)).await,
                            None => Err(anyhow!("no ztunnel is connected to the node agent")),
                        };
                        if r.is_ok() {
                            pods.insert(p.uid.clone(), p);
                        }
                        let _ = reply.send(r);
                    }
                    Command::Del(uid, reply) => {
                        pods.remove(&uid);
                        let req = pb::WorkloadRequest {
                            payload: Some(pb::workload_request::Payload::Del(pb::DelWorkload { uid })),
                        };
                        let r = match &conn {
                            Some(c) => exchange(c, req, None).await,
                            None => Ok(()),
                        };
                        let _ = reply.send(r);
                    }
                }
            }
        }
    }
}

impl NodeAgent {
    /// Listens on `path`; `pods` is the cache a connecting ztunnel gets as its snapshot.
    pub fn start(path: &Path, pods: Vec<PodInfo>) -> Result<NodeAgent> {
        let (tx, rx) = mpsc::channel(16);
        let path_owned = path.to_path_buf();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("node-agent".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = ready_tx.send(Err(anyhow!(e)));
                        return;
                    }
                };
                rt.block_on(async move {
                    let listener = match Listener::bind(&path_owned) {
                        Ok(l) => l,
                        Err(e) => {
                            let _ = ready_tx
                                .send(Err(anyhow!("binding {}: {e}", path_owned.display())));
                            return;
                        }
                    };
                    let _ = ready_tx.send(Ok(()));
                    let cache = pods.into_iter().map(|p| (p.uid.clone(), p)).collect();
                    serve(listener, rx, cache).await;
                });
            })?;
        ready_rx.recv()??;
        Ok(NodeAgent {
            tx,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Enrolls a pod with the connected ztunnel; fails if there is none or it refuses.
    pub fn add(&self, pod: PodInfo) -> Result<()> {
        self.call(|reply| Command::Add(pod, reply))
    }

    /// Removes a pod: the ztunnel drains its proxies.
    pub fn del(&self, uid: &str) -> Result<()> {
        self.call(|reply| Command::Del(uid.to_string(), reply))
    }

    /// Sends a command and waits for its outcome (plain threads and async callers alike).
    fn call(&self, cmd: impl FnOnce(Reply) -> Command) -> Result<()> {
        let (reply, rx) = std::sync::mpsc::channel();
        self.tx
            .try_send(cmd(reply))
            .map_err(|_| anyhow!("node agent stopped or busy"))?;
        rx.recv_timeout(DEADLINE * 3)
            .map_err(|_| anyhow!("node agent did not answer"))?
    }
}
