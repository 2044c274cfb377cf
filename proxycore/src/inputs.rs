//! What every proxy of a process shares ([`ProxyInputs`]), why a connection could not be
//! proxied ([`ProxyError`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::TcpStream;

use hbone::{HboneError, Pool};
use identity::{CertError, CertStore, Identity, WorkloadCertificate};

use crate::config::Config;
use crate::drain::Drain;
use crate::metrics::Metrics;
use crate::socket;
use crate::state::{State, Workload};

/// Why a connection could not be proxied. Becomes wire behaviour in exactly one place per
/// listener: an HBONE status code inbound, a closed (or reset) socket outbound, a SOCKS5 reply.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("service {0} has no healthy endpoint for port {1}")]
    NoEndpoints(String, u16),
    #[error("waypoint {0} has no healthy endpoint")]
    NoWaypoint(String),
    #[error("destination port {0} is one of the proxy's own ports")]
    OwnPort(u16),
    #[error("destination {0} is this proxy itself")]
    SelfDestination(SocketAddr),
    #[error("HBONE: {0}")]
    Hbone(#[from] HboneError),
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("certificate: {0}")]
    Cert(#[from] CertError),
    #[error("the workload this ztunnel serves ({0}) is not known")]
    UnknownLocalWorkload(String),
    #[error("authority {0:?} is not ip:port or host:port")]
    BadAuthority(String),
    #[error("authority IP {authority} does not match the destination {local}")]
    IpMismatch { authority: IpAddr, local: IpAddr },
    #[error("no service {0} with a target port for {1}")]
    UnknownService(String, u16),
    #[error("method {0} is not CONNECT")]
    NotConnect(String),
    #[error("{}", match .0 { Some(p) => format!("denied by policy {p}"), None => "denied: no ALLOW policy matched".to_string() })]
    Denied(Option<String>),
}

impl ProxyError {
    /// The Istio response flag reported in metrics and access logs.
    pub fn response_flag(&self) -> &'static str {
        match self {
            ProxyError::Hbone(e) => e.response_flag(),
            ProxyError::Cert(_) => "IDENTITY_ERROR",
            ProxyError::Denied(_) => "DENY",
            _ => "CONNECT",
        }
    }

    /// The status the HBONE server answers with (docs/WIRE.md §1.5).
    pub fn status(&self) -> http::StatusCode {
        use http::StatusCode as S;
        match self {
            ProxyError::NotConnect(_)
            | ProxyError::BadAuthority(_)
            | ProxyError::IpMismatch { .. }
            | ProxyError::SelfDestination(_) => S::BAD_REQUEST,
            ProxyError::Denied(_) => S::UNAUTHORIZED,
            _ => S::SERVICE_UNAVAILABLE,
        }
    }
}

/// Everything the proxies share.
pub struct ProxyInputs {
    pub cfg: Arc<Config>,
    pub state: State,
    pub certs: CertStore,
    pub pool: Pool,
    /// Inbound HBONE handshakes in progress, bounded over every pod of the process.
    pub handshakes: Arc<hbone::Handshakes>,
    pub metrics: Arc<Metrics>,
    pub drain: Drain,
    /// The workload these proxies serve: namespace, name, service account.
    pub local_ns: String,
    pub local_name: String,
    pub local_sa: String,
    /// The pod's network namespace (shared mode): listeners and upstream sockets are made
    /// there. `None`: the current namespace (dedicated mode).
    pub netns: Option<Arc<std::fs::File>>,
    /// The last server TLS config built, with the certificate it was built from.
    server_tls: Mutex<Option<(Arc<WorkloadCertificate>, Arc<rustls::ServerConfig>)>>,
}

impl ProxyInputs {
    /// The inputs of a dedicated ztunnel: the workload of `PROXY_WORKLOAD_INFO`, here.
    pub fn new(
        cfg: Arc<Config>,
        state: State,
        certs: CertStore,
        metrics: Arc<Metrics>,
        drain: Drain,
    ) -> Arc<Self> {
        let info = cfg
            .workload_info
            .clone()
            .expect("validated: dedicated mode has workload info");
        let pool = Pool::new(&cfg.h2);
        let handshakes = hbone::Handshakes::new(cfg.handshakes);
        Self::for_pod(
            cfg, state, certs, pool, handshakes, metrics, drain, info, None,
        )
    }

    /// The inputs of one pod's proxies (shared mode), sharing the store, certificates, pool
    /// and metrics with every other pod of the node.
    #[allow(clippy::too_many_arguments)]
    pub fn for_pod(
        cfg: Arc<Config>,
        state: State,
        certs: CertStore,
        pool: Pool,
        handshakes: Arc<hbone::Handshakes>,
        metrics: Arc<Metrics>,
        drain: Drain,
        info: crate::config::ProxyWorkloadInfo,
        netns: Option<Arc<std::fs::File>>,
    ) -> Arc<Self> {
        Arc::new(ProxyInputs {
            pool,
            handshakes,
            cfg,
            state,
            certs,
            metrics,
            drain,
            local_ns: info.namespace,
            local_name: info.name,
            local_sa: info.service_account,
            netns,
            server_tls: Mutex::new(None),
        })
    }

    /// Connects from the pod's namespace with ztunnel's mark.
    /// Where to reach `w` on `port`: its address; for a workload known by name (WDS
    /// `hostname`, a ServiceEntry endpoint with DNS resolution) the name resolved now: a
    /// service of the workload state by that name (one of its endpoints with an address),
    /// else the system resolver (docs/GATEWAY.md, "Egress").
    pub async fn address_of(
        &self,
        w: &crate::state::Workload,
        port: u16,
    ) -> std::io::Result<SocketAddr> {
        if let Some(ip) = w.addresses.first() {
            return Ok(SocketAddr::new(*ip, port));
        }
        let missing = |why: String| std::io::Error::new(std::io::ErrorKind::NotFound, why);
        if w.hostname.is_empty() {
            return Err(missing(format!("workload {} has no address", w.name)));
        }
        if let Some(svc) = self.state.service_by_host(&w.hostname, &w.namespace) {
            let ep = self
                .state
                .pick_endpoint_in(&svc, port, |e| !e.addresses.is_empty());
            if let Some(ep) = ep {
                return Ok(SocketAddr::new(ep.workload.addresses[0], ep.port));
            }
        }
        tokio::net::lookup_host((w.hostname.as_str(), port))
            .await?
            .next()
            .ok_or_else(|| missing(format!("{} resolves to no address", w.hostname)))
    }

    pub async fn connect(
        &self,
        dst: SocketAddr,
        src: Option<IpAddr>,
    ) -> std::io::Result<TcpStream> {
        socket::connect_in(self.netns.as_deref(), dst, src, self.cfg.packet_mark).await
    }

    pub fn local_workload(&self) -> Result<Arc<Workload>, ProxyError> {
        self.state
            .workload_by_name(&self.local_ns, &self.local_name)
            .ok_or_else(|| {
                ProxyError::UnknownLocalWorkload(format!("{}/{}", self.local_ns, self.local_name))
            })
    }

    /// The identity of the local workload (from WDS when known, else from the config).
    pub fn local_identity(&self) -> Identity {
        match self.local_workload() {
            Ok(w) => w.identity(),
            Err(_) => Identity::new(
                identity::DEFAULT_TRUST_DOMAIN,
                &self.local_ns,
                &self.local_sa,
            ),
        }
    }

    /// L4 authorization of a connection to the local workload.
    pub fn authorize(&self, local: &Workload, conn: &crate::rbac::Conn) -> Result<(), ProxyError> {
        let policies = self.state.policies_for(local);
        match crate::rbac::evaluate(policies.iter().map(|p| p.as_ref()), conn) {
            crate::rbac::Decision::Allow => Ok(()),
            crate::rbac::Decision::Deny(p) => Err(ProxyError::Denied(p)),
        }
    }

    /// A CONNECT stream to `key.dst` (an HBONE port) as `key.src_identity`, on a pooled
    /// connection or a new one that verifies the peer is one of `key.dst_identities`.
    pub async fn hbone(
        &self,
        key: &hbone::pool::PoolKey,
        req: &hbone::client::ConnectRequest,
    ) -> Result<hbone::stream::H2Stream, ProxyError> {
        let dst = key.dst;
        self.pool
            .connect(key, req, || async {
                let cert = self.certs.get(&key.src_identity).await?;
                let tls = hbone::tls::client_config(&cert, key.dst_identities.clone())?;
                let tcp = self.connect(dst, None).await.map_err(|e| match e.kind() {
                    std::io::ErrorKind::TimedOut => HboneError::ConnectTimeout(dst),
                    _ => HboneError::Connect {
                        addr: dst,
                        source: e,
                    },
                })?;
                hbone::client::handshake(tcp, dst, tls, &self.cfg.h2).await
            })
            .await
            .map_err(ProxyError::from)
    }

    /// Server TLS config for the local identity, rebuilt only when the certificate rotates.
    pub async fn server_tls(&self) -> Result<Arc<rustls::ServerConfig>, ProxyError> {
        let cert = self.certs.get(&self.local_identity()).await?;
        let mut cached = self.server_tls.lock().unwrap();
        if let Some((c, cfg)) = cached.as_ref() {
            if Arc::ptr_eq(c, &cert) {
                return Ok(cfg.clone());
            }
        }
        let cfg = hbone::tls::server_config(&cert).map_err(HboneError::from)?;
        *cached = Some((cert, cfg.clone()));
        Ok(cfg)
    }
}
