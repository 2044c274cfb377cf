//! What ztunnel knows of the mesh: workloads and services, shaped after WDS `Workload` and
//! `Service` (docs/WIRE.md §3.4) so that xDS can fill the same store later. For now it is
//! loaded from the YAML file named by `LOCAL_XDS_PATH`.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};

use identity::Identity;
use rand::Rng;

use crate::rbac::{Policy, Scope};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TunnelProtocol {
    #[default]
    None,
    Hbone,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub enum HealthStatus {
    #[default]
    Healthy,
    Unhealthy,
}

/// A workload (pod). Field names follow WDS, in camelCase as in upstream's local config file.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub uid: String,
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    #[serde(default)]
    pub network: String,
    #[serde(default)]
    pub tunnel_protocol: TunnelProtocol,
    #[serde(default)]
    pub trust_domain: String,
    #[serde(default)]
    pub service_account: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub canonical_name: String,
    #[serde(default)]
    pub canonical_revision: String,
    #[serde(default)]
    pub workload_name: String,
    #[serde(default)]
    pub workload_type: String,
    #[serde(default)]
    pub cluster_id: String,
    #[serde(default)]
    pub status: HealthStatus,
    /// Load-balancing weight; unset means 1.
    #[serde(default)]
    pub capacity: Option<u32>,
    /// `namespace/hostname` → service port → this endpoint's target port. Defines membership.
    #[serde(default)]
    pub services: BTreeMap<String, BTreeMap<u16, u16>>,
    /// `namespace/name` of the selector-scoped policies that apply to this workload.
    #[serde(default)]
    pub authorization_policies: Vec<String>,
    /// The waypoint for traffic addressed to this workload's IP.
    #[serde(default)]
    pub waypoint: Option<Waypoint>,
    /// Where it runs (WDS `locality`), for locality-aware load balancing.
    #[serde(default)]
    pub locality: Option<Locality>,
    /// A name resolved when connecting, for a workload without addresses (WDS `hostname`:
    /// a ServiceEntry endpoint with DNS resolution).
    #[serde(default)]
    pub hostname: String,
}

/// A workload's region, zone and subzone (any of them may be empty).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Locality {
    #[serde(default)]
    pub region: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub subzone: String,
}

/// Where a waypoint is (WDS `GatewayAddress`): a Service by `namespace/hostname`, or an IP;
/// reached with HBONE on `port` (15008).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Waypoint {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub hostname: String,
    #[serde(default)]
    pub address: Option<IpAddr>,
    pub port: u16,
}

impl Workload {
    pub fn identity(&self) -> Identity {
        Identity::new(&self.trust_domain, &self.namespace, &self.service_account)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub hostname: String,
    /// VIPs; empty for headless services.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
    /// Service port → target port; a target port of 0 means "named", resolved per endpoint.
    #[serde(default)]
    pub ports: BTreeMap<u16, u16>,
    #[serde(default)]
    pub subject_alt_names: Vec<String>,
    /// The waypoint for traffic addressed to this service.
    #[serde(default)]
    pub waypoint: Option<Waypoint>,
    /// Service port → application protocol (`http`, `http2`, `grpc`, `tcp`, `tls`), for the
    /// ports whose protocol is known.
    #[serde(default)]
    pub app_protocols: BTreeMap<u16, String>,
    /// [`Service::key`], made once: endpoints are looked up by it per connection.
    #[serde(skip)]
    pub key_text: std::sync::OnceLock<String>,
}

impl Service {
    /// The resource key used in `Workload.services`: `namespace/hostname`.
    pub fn key(&self) -> &str {
        self.key_text
            .get_or_init(|| format!("{}/{}", self.namespace, self.hostname))
    }
}

/// The file named by `LOCAL_XDS_PATH`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalConfig {
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub policies: Vec<Policy>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Parse {
        path: String,
        source: serde_yaml::Error,
    },
    #[error("{path}: {}", .errors.join("; "))]
    Invalid { path: String, errors: Vec<String> },
}

impl LocalConfig {
    pub fn load(path: &Path) -> Result<Self, StateError> {
        let p = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| StateError::Read {
            path: p.clone(),
            source,
        })?;
        let cfg: LocalConfig = serde_yaml::from_str(&text).map_err(|source| StateError::Parse {
            path: p.clone(),
            source,
        })?;
        let errors = cfg.validate();
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(StateError::Invalid { path: p, errors })
        }
    }

    fn validate(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut uids = std::collections::HashSet::new();
        for w in &self.workloads {
            if !uids.insert(&w.uid) {
                errors.push(format!("workload {}: duplicate uid", w.uid));
            }
            if w.namespace.is_empty() || w.name.is_empty() {
                errors.push(format!(
                    "workload {}: name and namespace are required",
                    w.uid
                ));
            }
            if let Err(e) = w.identity().to_string().parse::<Identity>() {
                errors.push(format!("workload {}: identity: {e}", w.uid));
            }
            for key in w.services.keys() {
                if !key.contains('/') {
                    errors.push(format!(
                        "workload {}: services key {key:?} is not namespace/hostname",
                        w.uid
                    ));
                }
            }
        }
        for s in &self.services {
            for san in &s.subject_alt_names {
                if let Err(e) = san.parse::<Identity>() {
                    errors.push(format!("service {}: subjectAltNames: {e}", s.key()));
                }
            }
        }
        errors
    }
}

/// An endpoint chosen for a connection.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub port: u16,
}

#[derive(Default)]
struct Index {
    workloads: Vec<Arc<Workload>>,
    by_ip: HashMap<IpAddr, Arc<Workload>>,
    /// namespace → name → workload: every proxied connection looks up its local workload
    /// by name, which must not cost a scan of every workload known.
    by_name: HashMap<String, HashMap<String, Arc<Workload>>>,
    services: Vec<Arc<Service>>,
    by_vip: HashMap<IpAddr, Arc<Service>>,
    by_host: HashMap<String, Vec<Arc<Service>>>,
    /// Service key → member workloads.
    members: HashMap<String, Vec<Arc<Workload>>>,
}

impl Index {
    fn build(
        workloads: &HashMap<String, Arc<Workload>>,
        services: &HashMap<String, Arc<Service>>,
    ) -> Index {
        let mut idx = Index::default();
        let mut ws: Vec<&Arc<Workload>> = workloads.values().collect();
        ws.sort_by(|a, b| a.uid.cmp(&b.uid));
        for w in ws {
            for ip in &w.addresses {
                idx.by_ip.insert(*ip, w.clone());
            }
            for key in w.services.keys() {
                idx.members.entry(key.clone()).or_default().push(w.clone());
            }
            // Sorted by uid, so of two workloads with one name (which a valid snapshot does
            // not have) the first wins, as the scan this replaced did.
            idx.by_name
                .entry(w.namespace.clone())
                .or_default()
                .entry(w.name.clone())
                .or_insert_with(|| w.clone());
            idx.workloads.push(w.clone());
        }
        let mut ss: Vec<&Arc<Service>> = services.values().collect();
        ss.sort_by(|a, b| a.key().cmp(b.key()));
        for s in ss {
            for ip in &s.addresses {
                idx.by_vip.insert(*ip, s.clone());
            }
            idx.by_host
                .entry(s.hostname.clone())
                .or_default()
                .push(s.clone());
            idx.services.push(s.clone());
        }
        idx
    }
}

/// A copy of what the store holds, by pointer ([`State::dump`]).
pub struct Dump {
    pub workloads: Vec<Arc<Workload>>,
    pub services: Vec<Arc<Service>>,
    pub policies: Vec<Arc<Policy>>,
}

/// The resources themselves, keyed by xDS resource name (workload uid, `namespace/hostname`).
#[derive(Default)]
struct Resources {
    workloads: HashMap<String, Arc<Workload>>,
    services: HashMap<String, Arc<Service>>,
    policies: HashMap<String, Arc<Policy>>,
}

/// One change to the store: resources added or replaced, and resource names removed.
#[derive(Debug, Default)]
pub struct Update {
    pub workloads: Vec<Workload>,
    pub services: Vec<Service>,
    pub policies: Vec<Policy>,
    /// Workload uids or service `namespace/hostname` names; unknown names are ignored.
    pub removed: Vec<String>,
    /// Policy `namespace/name` names removed.
    pub removed_policies: Vec<String>,
}

/// The live store. Readers take a short read lock, never across an await.
///
/// Lock order: `resources` before `index`, everywhere. [`State::apply`] holds `resources`
/// while it swaps in the new index; a reader holding `index` that then waited for
/// `resources` would deadlock against it (a config dump did, and hung the whole process).
#[derive(Clone)]
pub struct State {
    resources: Arc<std::sync::Mutex<Resources>>,
    index: Arc<RwLock<Index>>,
    /// Bumped on every change, so open connections can re-check their authorization.
    changes: Arc<tokio::sync::watch::Sender<u64>>,
}

impl Default for State {
    fn default() -> Self {
        State {
            resources: Arc::default(),
            index: Arc::default(),
            changes: Arc::new(tokio::sync::watch::channel(0).0),
        }
    }
}

impl State {
    pub fn from_config(cfg: LocalConfig) -> Self {
        let s = State::default();
        s.replace(cfg);
        s
    }

    /// Replaces everything (a full push).
    pub fn replace(&self, cfg: LocalConfig) {
        let mut res = self.resources.lock().unwrap();
        *res = Resources::default();
        drop(res);
        self.apply(Update {
            workloads: cfg.workloads,
            services: cfg.services,
            policies: cfg.policies,
            ..Update::default()
        });
    }

    /// Applies an incremental change (a delta push), then rebuilds the lookup indexes.
    pub fn apply(&self, update: Update) {
        let mut res = self.resources.lock().unwrap();
        for name in &update.removed {
            res.workloads.remove(name);
            res.services.remove(name);
        }
        for w in update.workloads {
            res.workloads.insert(w.uid.clone(), Arc::new(w));
        }
        for s in update.services {
            res.services.insert(s.key().to_string(), Arc::new(s));
        }
        for name in &update.removed_policies {
            res.policies.remove(name);
        }
        for p in update.policies {
            res.policies.insert(p.key(), Arc::new(p));
        }
        let idx = Index::build(&res.workloads, &res.services);
        *self.index.write().unwrap() = idx;
        drop(res);
        self.changes.send_modify(|v| *v += 1);
    }

    /// The change counter (bumped by every change).
    pub fn version(&self) -> u64 {
        *self.changes.borrow()
    }

    /// Notified after every change.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    /// The policies that apply to connections to `w` (docs/WIRE.md §3.7): every GLOBAL one,
    /// the NAMESPACE ones of its namespace, and the selector ones it names (missing ones skipped).
    pub fn policies_for(&self, w: &Workload) -> Vec<Arc<Policy>> {
        let res = self.resources.lock().unwrap();
        let mut out: Vec<Arc<Policy>> = res
            .policies
            .values()
            .filter(|p| match p.scope {
                Scope::Global => true,
                Scope::Namespace => p.namespace == w.namespace,
                Scope::WorkloadSelector => false,
            })
            .cloned()
            .collect();
        out.extend(
            w.authorization_policies
                .iter()
                .filter_map(|k| res.policies.get(k))
                .cloned(),
        );
        out
    }

    pub fn workload_by_ip(&self, ip: IpAddr) -> Option<Arc<Workload>> {
        self.index.read().unwrap().by_ip.get(&ip).cloned()
    }

    pub fn workload_by_name(&self, namespace: &str, name: &str) -> Option<Arc<Workload>> {
        let idx = self.index.read().unwrap();
        idx.by_name.get(namespace)?.get(name).cloned()
    }

    pub fn service_by_vip(&self, ip: IpAddr) -> Option<Arc<Service>> {
        self.index.read().unwrap().by_vip.get(&ip).cloned()
    }

    /// A service by hostname, preferring one in `prefer_ns`.
    pub fn service_by_host(&self, host: &str, prefer_ns: &str) -> Option<Arc<Service>> {
        let idx = self.index.read().unwrap();
        let list = idx.by_host.get(host)?;
        list.iter()
            .find(|s| s.namespace == prefer_ns)
            .or_else(|| list.first())
            .cloned()
    }

    /// The addresses DNS answers for a service hostname: its VIPs, or for a headless service
    /// the addresses of its healthy endpoints. `None` when no service has that hostname.
    pub fn dns_addresses(&self, host: &str, prefer_ns: &str) -> Option<Vec<IpAddr>> {
        let svc = self.service_by_host(host, prefer_ns)?;
        if !svc.addresses.is_empty() {
            return Some(svc.addresses.clone());
        }
        let idx = self.index.read().unwrap();
        Some(
            idx.members
                .get(svc.key())
                .map(|ws| {
                    ws.iter()
                        .filter(|w| w.status == HealthStatus::Healthy)
                        .flat_map(|w| w.addresses.iter().copied())
                        .collect()
                })
                .unwrap_or_default(),
        )
    }

    /// The waypoint workload to send to, and its HBONE port: a hostname names a Service,
    /// whose endpoint serving `port` is picked; an address names a workload.
    pub fn resolve_waypoint(&self, wp: &Waypoint) -> Option<(Arc<Workload>, u16)> {
        if let Some(ip) = wp.address {
            return self.workload_by_ip(ip).map(|w| (w, wp.port));
        }
        let svc = self.service_by_host(&wp.hostname, &wp.namespace)?;
        self.pick_endpoint(&svc, wp.port)
            .map(|e| (e.workload, e.port))
    }

    /// The target port of `service_port` on `w`: the endpoint's own mapping first, then the
    /// service's (a service target port of 0 needs the endpoint mapping).
    pub fn target_port(svc: &Service, w: &Workload, service_port: u16) -> Option<u16> {
        if let Some(p) = w.services.get(svc.key()).and_then(|m| m.get(&service_port)) {
            if *p != 0 {
                return Some(*p);
            }
        }
        match svc.ports.get(&service_port) {
            Some(0) | None => None,
            Some(p) => Some(*p),
        }
    }

    /// Picks one healthy endpoint of `svc` serving `port`: weighted random by capacity.
    pub fn pick_endpoint(&self, svc: &Service, port: u16) -> Option<Endpoint> {
        self.pick_endpoint_in(svc, port, |_| true)
    }

    /// [`State::pick_endpoint`] among the endpoints `keep` accepts (a subset, untried ones).
    pub fn pick_endpoint_in(
        &self,
        svc: &Service,
        port: u16,
        keep: impl Fn(&Workload) -> bool,
    ) -> Option<Endpoint> {
        let idx = self.index.read().unwrap();
        let members = idx.members.get(svc.key())?;
        // Two passes over the members instead of a list of candidates: nothing allocated or
        // reference-counted but the one picked.
        let candidates = || Self::candidates(members, svc, port, &keep);
        let weight = |w: &Workload| u64::from(w.capacity.unwrap_or(1));
        let total: u64 = candidates().map(|(w, _)| weight(w)).sum();
        if total == 0 {
            return None;
        }
        let mut pick = rand::thread_rng().gen_range(0..total);
        for (w, p) in candidates() {
            if pick < weight(w) {
                return Some(Endpoint {
                    workload: w.clone(),
                    port: p,
                });
            }
            pick -= weight(w);
        }
        None
    }

    /// The endpoints [`State::pick_endpoint_in`] would choose among, in a stable order.
    pub fn endpoints_in(
        &self,
        svc: &Service,
        port: u16,
        keep: impl Fn(&Workload) -> bool,
    ) -> Vec<Endpoint> {
        let idx = self.index.read().unwrap();
        let Some(members) = idx.members.get(svc.key()) else {
            return Vec::new();
        };
        let mut out: Vec<Endpoint> = Self::candidates(members, svc, port, &keep)
            .map(|(w, p)| Endpoint {
                workload: w.clone(),
                port: p,
            })
            .collect();
        out.sort_by(|a, b| a.workload.uid.cmp(&b.workload.uid));
        out
    }

    /// How many endpoints [`State::pick_endpoint_in`] would choose among.
    pub fn count_endpoints_in(
        &self,
        svc: &Service,
        port: u16,
        keep: impl Fn(&Workload) -> bool,
    ) -> usize {
        let idx = self.index.read().unwrap();
        idx.members.get(svc.key()).map_or(0, |members| {
            Self::candidates(members, svc, port, &keep).count()
        })
    }

    /// The healthy, addressed members `keep` accepts that serve `port`, with their target
    /// port.
    fn candidates<'a>(
        members: &'a [Arc<Workload>],
        svc: &'a Service,
        port: u16,
        keep: &'a impl Fn(&Workload) -> bool,
    ) -> impl Iterator<Item = (&'a Arc<Workload>, u16)> + 'a {
        members
            .iter()
            .filter(|w| {
                w.status == HealthStatus::Healthy
                    && (!w.addresses.is_empty() || !w.hostname.is_empty())
            })
            .filter(|w| keep(w))
            .filter_map(move |w| Self::target_port(svc, w, port).map(|p| (w, p)))
    }

    /// The first service `w` belongs to whose target port is `port` (inbound telemetry guess).
    pub fn service_for_inbound(&self, w: &Workload, port: u16) -> Option<Arc<Service>> {
        let idx = self.index.read().unwrap();
        idx.services
            .iter()
            .find(|s| {
                w.services.contains_key(s.key())
                    && s.ports
                        .keys()
                        .any(|sp| Self::target_port(s, w, *sp) == Some(port))
            })
            .cloned()
    }

    /// Everything known, for the admin's `/config_dump`: the locks are held only to copy
    /// the pointers, and the caller serializes straight from the resources (no JSON value
    /// tree: with 10,000 workloads that tree was tens of MiB per request).
    pub fn dump(&self) -> Dump {
        // Lock order: resources, then index (see [`State`]).
        let res = self.resources.lock().unwrap();
        let idx = self.index.read().unwrap();
        Dump {
            workloads: idx.workloads.clone(),
            services: idx.services.clone(),
            policies: res.policies.values().cloned().collect(),
        }
    }
}

pub mod wds;

#[cfg(test)]
mod tests;
