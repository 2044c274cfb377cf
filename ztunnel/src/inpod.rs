//! Shared (in-pod) mode (docs/WIRE.md §2.1, §5.3): one ztunnel per node serving every pod the
//! CNI node agent hands over. For each pod, listeners 15001, 15006, 15008 (and 15053 DNS,
//! 15080 SOCKS5 when on) are opened inside the pod's network namespace and every upstream
//! socket is made there too; its certificate is prefetched; a deleted pod's proxies drain.

use std::collections::{HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hbone::Pool;
use identity::{CertStore, Identity};

use crate::dns::DnsMetrics;
use crate::proxy;
use proxycore::admin::Readiness;
use proxycore::config::{Config, ProxyWorkloadInfo};
use proxycore::drain::Drain;
use proxycore::metrics::Metrics;
use proxycore::state::State;
use proxycore::ProxyInputs;
use zds::client::{self as zds_client, Event, Handler};

pub const READY_TASK: &str = "inpod snapshot";

/// What every pod's proxies share.
#[derive(Clone)]
pub struct Shared {
    pub cfg: Arc<Config>,
    pub state: State,
    pub certs: CertStore,
    pub pool: Pool,
    pub handshakes: Arc<hbone::Handshakes>,
    pub metrics: Arc<Metrics>,
    pub dns_metrics: DnsMetrics,
    pub upstreams: Vec<std::net::SocketAddr>,
    /// The node's drain: a pod's drain is its child.
    pub drain: Drain,
}

struct Pod {
    inode: u64,
    info: ProxyWorkloadInfo,
    drain: Drain,
    /// Its listeners as handed to its eBPF program, if it has one.
    capture: Option<proxy::capture::Capture>,
}

/// One line of `/config_dump`'s `workloadState`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PodState {
    pub uid: String,
    pub namespace: String,
    pub name: String,
    pub service_account: String,
}

/// The enrolled pods, as the admin endpoint shows them (`workloadState`).
pub type PodsView = Arc<Mutex<Vec<PodState>>>;

pub struct WorkloadManager {
    shared: Shared,
    pods: HashMap<String, Pod>,
    /// Uids named by the snapshot in progress.
    snapshot: HashSet<String>,
    readiness: Readiness,
    /// What `/config_dump` shows.
    pub view: PodsView,
}

impl WorkloadManager {
    pub fn new(shared: Shared, readiness: Readiness) -> Self {
        readiness.register(READY_TASK);
        WorkloadManager {
            shared,
            pods: HashMap::new(),
            snapshot: HashSet::new(),
            readiness,
            view: Arc::default(),
        }
    }

    fn publish(&self) {
        let mut v: Vec<PodState> = self
            .pods
            .iter()
            .map(|(uid, p)| PodState {
                uid: uid.clone(),
                namespace: p.info.namespace.clone(),
                name: p.info.name.clone(),
                service_account: p.info.service_account.clone(),
            })
            .collect();
        v.sort_by(|a, b| a.uid.cmp(&b.uid));
        *self.view.lock().unwrap() = v;
    }

    /// Opens the pod's listeners in its namespace and starts serving. Fails (nothing left
    /// running) if any listener cannot be bound.
    fn start(
        &self,
        info: &ProxyWorkloadInfo,
        netns: Arc<std::fs::File>,
    ) -> Result<(Drain, Option<proxy::capture::Capture>), String> {
        let s = &self.shared;
        let drain = s.drain.child();
        let pi = ProxyInputs::for_pod(
            s.cfg.clone(),
            s.state.clone(),
            s.certs.clone(),
            s.pool.clone(),
            s.handshakes.clone(),
            s.metrics.clone(),
            drain.clone(),
            info.clone(),
            Some(netns),
        );
        let capture = proxy::start(&pi, s.dns_metrics.clone(), s.upstreams.clone())?;
        s.certs.prefetch(&pi.local_identity());
        Ok((drain, capture))
    }

    /// Drains a pod's proxies in the background and forgets its certificate unless another
    /// pod has the same identity.
    fn stop(&mut self, uid: &str) {
        let Some(pod) = self.pods.remove(uid) else {
            return;
        };
        let deadline = self.shared.cfg.drain_deadline;
        let uid = uid.to_string();
        tokio::spawn(async move {
            let forced = pod.drain.drain(deadline).await;
            tracing::info!(%uid, forced_closed = forced, "pod proxies drained");
        });
        let id = self.identity(&pod.info);
        if !self.pods.values().any(|p| self.identity(&p.info) == id) {
            self.shared.certs.forget(&id);
        }
    }

    fn identity(&self, info: &ProxyWorkloadInfo) -> Identity {
        let td = self
            .shared
            .state
            .workload_by_name(&info.namespace, &info.name)
            .map(|w| w.trust_domain.clone())
            .unwrap_or_default();
        Identity::new(&td, &info.namespace, &info.service_account)
    }
}

impl Handler for WorkloadManager {
    async fn handle(&mut self, event: Event) -> Result<(), String> {
        let result = match event {
            Event::Add { uid, info, netns } => {
                let netns = std::fs::File::from(netns);
                let inode = netns.metadata().map_err(|e| e.to_string())?.ino();
                self.snapshot.insert(uid.clone());
                if let Some(pod) = self.pods.get(&uid).filter(|p| p.inode == inode) {
                    // The same pod again (a new node agent's snapshot): its eBPF program may
                    // have been attached anew, with an empty sockmap.
                    return pod.capture.as_ref().map_or(Ok(()), |c| c.renew());
                }
                // Same pod, new namespace (sandbox recreated): replace.
                self.stop(&uid);
                let info = ProxyWorkloadInfo {
                    namespace: info.namespace,
                    name: info.name,
                    service_account: info.service_account,
                };
                let (drain, capture) = self.start(&info, Arc::new(netns))?;
                tracing::info!(%uid, pod = %format!("{}/{}", info.namespace, info.name), "pod enrolled: proxies listening in its namespace");
                self.pods.insert(
                    uid,
                    Pod {
                        inode,
                        info,
                        drain,
                        capture,
                    },
                );
                Ok(())
            }
            Event::Keep { uid } => {
                self.snapshot.insert(uid);
                Ok(())
            }
            Event::Del { uid } => {
                tracing::info!(%uid, "pod removed: draining its proxies");
                self.stop(&uid);
                Ok(())
            }
            Event::SnapshotSent => {
                let stale: Vec<String> = self
                    .pods
                    .keys()
                    .filter(|u| !self.snapshot.contains(*u))
                    .cloned()
                    .collect();
                for uid in stale {
                    tracing::info!(%uid, "pod not in the snapshot: draining its proxies");
                    self.stop(&uid);
                }
                self.readiness.done(READY_TASK);
                Ok(())
            }
        };
        self.publish();
        result
    }
}

/// Talks to the node agent for ever: a session, then reconnect with backoff 10 ms → 15 s.
/// Not ready while disconnected.
pub async fn run(path: PathBuf, mut manager: WorkloadManager) {
    let mut backoff = Duration::from_millis(10);
    loop {
        manager.snapshot.clear();
        match zds_client::session(&path, &mut manager).await {
            Ok(()) => {
                tracing::info!(path = %path.display(), "node agent closed the connection");
                backoff = Duration::from_millis(10);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, retry_in = ?backoff, "node agent connection failed")
            }
        }
        manager.readiness.register(READY_TASK);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(15));
    }
}
