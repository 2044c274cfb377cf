//! The certificate store: one certificate per workload identity, fetched on first use, renewed
//! at half-life with exponential backoff and jitter, and kept while still valid when renewal
//! fails (a CA outage must not take traffic down before the certificate expires).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rand::Rng;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::ca::LocalCa;
use crate::cert::{CertError, WorkloadCertificate};
use crate::Identity;

/// First retry delay after a failed fetch; doubles up to [`MAX_BACKOFF`].
pub const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
pub const MAX_BACKOFF: Duration = Duration::from_secs(150);
/// How long a caller waits for the first certificate of an identity.
pub const FETCH_WAIT: Duration = Duration::from_secs(10);
/// A caller that finds no certificate after a failed fetch asks for a new attempt, but no
/// sooner than this after the last one (many waiting connections make one CA request).
pub const DEMAND_RETRY_AFTER: Duration = Duration::from_millis(250);

pub type FetchFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCertificate, CertError>> + Send + 'a>>;

/// Where certificates come from: the local CA, or (later) a remote CA client.
pub trait CertProvider: Send + Sync + 'static {
    fn fetch<'a>(&'a self, id: &'a Identity) -> FetchFuture<'a>;
}

impl CertProvider for LocalCa {
    fn fetch<'a>(&'a self, id: &'a Identity) -> FetchFuture<'a> {
        Box::pin(async move { self.issue(id) })
    }
}

#[derive(Clone, Default)]
struct Slot {
    cert: Option<Arc<WorkloadCertificate>>,
    /// Bumped on every fetch attempt so waiters can tell a fresh failure from an old one.
    attempts: u64,
    last_error: Option<String>,
}

struct Entry {
    state: watch::Receiver<Slot>,
    /// Wakes the refresh loop out of its backoff: a caller is waiting for a certificate.
    demand: Arc<Notify>,
    task: JoinHandle<()>,
}

/// Summary of one held certificate, for `/config_dump`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub identity: String,
    pub state: &'static str,
    pub not_before: Option<u64>,
    pub not_after: Option<u64>,
    /// Roots the certificate's holder trusts (more than one during a root rotation).
    pub roots: usize,
    pub last_error: Option<String>,
    /// The chain then the roots, as upstream's `/config_dump` lists them (docs/WIRE.md §5).
    #[serde(rename = "certChain")]
    pub cert_chain: Vec<ChainCert>,
}

/// One certificate of a held chain, in the fields `istioctl ztunnel-config certificates`
/// reads.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChainCert {
    pub pem: String,
    pub serial_number: String,
    /// RFC 3339.
    pub valid_from: String,
    pub expiration_time: String,
}

fn chain_cert(der: &rustls::pki_types::CertificateDer<'_>) -> Option<ChainCert> {
    let info = crate::cert::LeafInfo::parse(der).ok()?;
    let rfc3339 = |t: SystemTime| {
        let secs = t.duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs() as i64;
        time::OffsetDateTime::from_unix_timestamp(secs)
            .ok()?
            .format(&time::format_description::well_known::Rfc3339)
            .ok()
    };
    Some(ChainCert {
        pem: crate::cert::to_pem(der.as_ref()),
        serial_number: info.serial,
        valid_from: rfc3339(info.not_before)?,
        expiration_time: rfc3339(info.not_after)?,
    })
}

#[derive(Clone)]
pub struct CertStore {
    provider: Arc<dyn CertProvider>,
    entries: Arc<Mutex<HashMap<Identity, Entry>>>,
}

impl CertStore {
    pub fn new(provider: Arc<dyn CertProvider>) -> Self {
        CertStore {
            provider,
            entries: Arc::default(),
        }
    }

    /// The current certificate of `id`, fetching it first if the store does not hold one.
    /// After a failed fetch (a pod the CA did not know yet, a CA restart) the caller does not
    /// inherit the old error: it asks for a new attempt and reports that attempt's outcome.
    pub async fn get(&self, id: &Identity) -> Result<Arc<WorkloadCertificate>, CertError> {
        let (mut rx, demand) = self.watch(id);
        let deadline = tokio::time::Instant::now() + FETCH_WAIT;
        let start_attempts = rx.borrow().attempts;
        loop {
            {
                let slot = rx.borrow_and_update();
                if let Some(cert) = &slot.cert {
                    if cert.is_valid_at(SystemTime::now()) {
                        return Ok(cert.clone());
                    }
                }
                if slot.attempts > start_attempts {
                    if let Some(e) = &slot.last_error {
                        return Err(CertError::Provider(e.clone()));
                    }
                }
                if slot.last_error.is_some() {
                    demand.notify_one();
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) => return Err(CertError::Provider("identity was forgotten".into())),
                Err(_) => return Err(CertError::Timeout(id.clone(), FETCH_WAIT)),
            }
        }
    }

    /// Starts fetching `id` in the background without waiting (prefetch).
    pub fn prefetch(&self, id: &Identity) {
        let _ = self.watch(id);
    }

    /// Stops renewing `id` and drops its certificate.
    pub fn forget(&self, id: &Identity) {
        if let Some(e) = self.entries.lock().unwrap().remove(id) {
            e.task.abort();
        }
    }

    pub fn summaries(&self) -> Vec<CertSummary> {
        let entries = self.entries.lock().unwrap();
        let secs = |t: SystemTime| {
            t.duration_since(SystemTime::UNIX_EPOCH)
                .ok()
                .map(|d| d.as_secs())
        };
        let mut out: Vec<CertSummary> = entries
            .iter()
            .map(|(id, e)| {
                let slot = e.state.borrow();
                CertSummary {
                    identity: id.to_string(),
                    state: match &slot.cert {
                        Some(c) if c.is_valid_at(SystemTime::now()) => "available",
                        Some(_) => "expired",
                        None => "pending",
                    },
                    not_before: slot.cert.as_ref().and_then(|c| secs(c.not_before)),
                    not_after: slot.cert.as_ref().and_then(|c| secs(c.not_after)),
                    roots: slot.cert.as_ref().map_or(0, |c| c.roots.len()),
                    last_error: slot.last_error.clone(),
                    cert_chain: slot
                        .cert
                        .as_ref()
                        .map(|c| {
                            c.chain
                                .iter()
                                .chain(&c.roots)
                                .filter_map(chain_cert)
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            })
            .collect();
        out.sort_by(|a, b| a.identity.cmp(&b.identity));
        out
    }

    fn watch(&self, id: &Identity) -> (watch::Receiver<Slot>, Arc<Notify>) {
        let mut entries = self.entries.lock().unwrap();
        if let Some(e) = entries.get(id) {
            return (e.state.clone(), e.demand.clone());
        }
        let (tx, rx) = watch::channel(Slot::default());
        let demand = Arc::new(Notify::new());
        let task = tokio::spawn(refresh_loop(
            self.provider.clone(),
            id.clone(),
            tx,
            demand.clone(),
        ));
        entries.insert(
            id.clone(),
            Entry {
                state: rx.clone(),
                demand: demand.clone(),
                task,
            },
        );
        (rx, demand)
    }
}

impl Drop for Entry {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Delay before the next attempt after `failures` consecutive failures: 500 ms doubling,
/// ±20 % jitter, capped at 150 s.
pub fn backoff(failures: u32) -> Duration {
    let base = INITIAL_BACKOFF
        .saturating_mul(2u32.saturating_pow(failures.min(16)))
        .min(MAX_BACKOFF);
    let jitter = rand::thread_rng().gen_range(0.8..1.2);
    base.mul_f64(jitter).min(MAX_BACKOFF)
}

async fn refresh_loop(
    provider: Arc<dyn CertProvider>,
    id: Identity,
    tx: watch::Sender<Slot>,
    demand: Arc<Notify>,
) {
    let mut failures = 0u32;
    loop {
        let result = provider.fetch(&id).await;
        let delay = match result {
            Ok(cert) => {
                failures = 0;
                let refresh_in = cert
                    .refresh_at()
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO);
                tracing::info!(identity = %id, refresh_in = ?refresh_in, "certificate issued");
                tx.send_modify(|s| {
                    s.cert = Some(Arc::new(cert));
                    s.attempts += 1;
                    s.last_error = None;
                });
                refresh_in
            }
            Err(e) => {
                failures += 1;
                let delay = backoff(failures);
                let kept = tx
                    .borrow()
                    .cert
                    .as_ref()
                    .map(|c| c.is_valid_at(SystemTime::now()));
                tracing::warn!(identity = %id, error = %e, retry_in = ?delay,
                    keeping_valid_certificate = kept.unwrap_or(false), "certificate fetch failed");
                tx.send_modify(|s| {
                    s.attempts += 1;
                    s.last_error = Some(e.to_string());
                    if kept == Some(false) {
                        s.cert = None;
                    }
                });
                if kept != Some(true) {
                    // No usable certificate: a waiting caller cuts the backoff short.
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = async {
                            tokio::time::sleep(DEMAND_RETRY_AFTER).await;
                            demand.notified().await;
                        } => {}
                    }
                    continue;
                }
                delay
            }
        };
        tokio::time::sleep(delay).await;
    }
}

#[cfg(test)]
mod tests;
