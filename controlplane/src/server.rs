//! The gRPC server on one TLS port (default 15012): delta ADS
//! (`envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources`) and the
//! certificate service (`istio.v1.auth.IstioCertificateService/CreateCertificate`), both behind
//! a bearer token (docs/WIRE.md §3.1, §3.3, §4).

// tonic's handlers return `Status` by value; helpers feeding them do the same.
#![allow(clippy::result_large_err)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{Stream, StreamExt};
use identity::{Identity, LocalCa};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xds::ca::istio_certificate_service_server::{
    IstioCertificateService, IstioCertificateServiceServer,
};
use xds::ca::{IstioCertificateRequest, IstioCertificateResponse};
use xds::discovery::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use xds::discovery::{DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource};

use crate::snapshot::Snapshot;
use crate::token::{Claims, TokenAuthority};

/// istiod's defaults: 24 h when the request asks for ≤ 0, at most 90 days.
pub const DEFAULT_CERT_TTL: Duration = Duration::from_secs(24 * 3600);
pub const MAX_CERT_TTL: Duration = Duration::from_secs(90 * 24 * 3600);
pub const IMPERSONATED_IDENTITY: &str = "ImpersonatedIdentity";
/// Decoded messages may be this large (docs/WIRE.md §3.1).
/// The largest response (a whole snapshot for a big cluster).
const MAX_MESSAGE: usize = 200 << 20;
/// The largest request a client may send: a subscription's `initial_resource_versions` for
/// tens of thousands of resources fits; an attacker's 200 MiB message does not.
pub const MAX_REQUEST: usize = 4 << 20;

/// What the server shares between connections.
pub struct Shared {
    pub snapshot: watch::Receiver<Arc<Snapshot>>,
    pub ca: Arc<LocalCa>,
    pub tokens: Arc<TokenAuthority>,
    pub trust_domain: String,
    /// Service accounts (`ns/sa`) allowed to ask for other identities (`CA_TRUSTED_NODE_ACCOUNTS`).
    pub trusted_node_accounts: Vec<String>,
    pub counters: Arc<Counters>,
    /// Kubernetes source: tokens are reviewed by the API server instead of `tokens`.
    pub reviewer: Option<Arc<crate::review::TokenReviewer>>,
}

/// What the control plane counts; served on the monitoring port as Prometheus counters.
#[derive(Debug, Default)]
pub struct Counters {
    pub streams: AtomicU64,
    pub pushes: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub certs_issued: AtomicU64,
    pub certs_refused: AtomicU64,
    pub auth_failures: AtomicU64,
    pub resource_file_errors: AtomicU64,
    pub tls_failures: AtomicU64,
    pub bad_requests: AtomicU64,
    /// When the CA's root certificate expires, in seconds since the epoch (0: unknown).
    pub root_expiry: AtomicU64,
}

impl Counters {
    /// OpenMetrics text (names after istiod's where one exists).
    pub fn render(&self) -> String {
        let rows: [(&str, &str, &AtomicU64); 10] = [
            (
                "pilot_xds_streams",
                "Delta ADS streams opened",
                &self.streams,
            ),
            ("pilot_xds_pushes", "Delta ADS responses sent", &self.pushes),
            ("pilot_xds_acks", "ACKs received", &self.acks),
            ("pilot_total_xds_rejects", "NACKs received", &self.nacks),
            (
                "citadel_server_success_cert_issuance_count",
                "Certificates issued",
                &self.certs_issued,
            ),
            (
                "citadel_server_csr_refused_count",
                "Certificate requests refused",
                &self.certs_refused,
            ),
            (
                "citadel_server_authentication_failure_count",
                "Callers refused for their token",
                &self.auth_failures,
            ),
            (
                "keelson_resource_file_errors",
                "Resource files rejected",
                &self.resource_file_errors,
            ),
            (
                "keelson_tls_handshake_failures",
                "Connections whose TLS handshake failed or timed out",
                &self.tls_failures,
            ),
            (
                "keelson_xds_bad_requests",
                "Delta ADS streams ended for a request that did not decode",
                &self.bad_requests,
            ),
        ];
        let mut out = String::new();
        for (name, help, v) in rows {
            out += &format!(
                "# HELP {name} {help}.\n# TYPE {name} counter\n{name}_total {}\n",
                v.load(Ordering::Relaxed)
            );
        }
        let expiry = self.root_expiry.load(Ordering::Relaxed);
        if expiry > 0 {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            out += &format!(
                "# HELP citadel_server_root_cert_expiry_timestamp The unix timestamp, in seconds, when the root certificate will expire.\n\
                 # TYPE citadel_server_root_cert_expiry_timestamp gauge\n\
                 citadel_server_root_cert_expiry_timestamp {expiry}\n\
                 # HELP citadel_server_root_cert_expiry_seconds The time remaining, in seconds, before the root certificate will expire.\n\
                 # TYPE citadel_server_root_cert_expiry_seconds gauge\n\
                 citadel_server_root_cert_expiry_seconds {}\n",
                expiry as i64 - now as i64
            );
        }
        out += &format!(
            "# HELP istio_build Istio component build info.\n# TYPE istio_build gauge\nistio_build{{component=\"pilot\",tag=\"{}\"}} 1\n",
            env!("CARGO_PKG_VERSION")
        );
        out += "# EOF\n";
        out
    }
}

/// The caller's claims: its token checked by the control plane's own key, or (Kubernetes
/// source) reviewed by the API server.
/// What [`verify`] needs of a request, taken out so the request is not held across it.
fn credentials<T>(req: &Request<T>) -> (Option<String>, Option<std::net::SocketAddr>) {
    let header = req
        .metadata()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    (header, req.remote_addr())
}

async fn verify(
    shared: &Shared,
    header: Option<String>,
    peer: Option<std::net::SocketAddr>,
) -> Result<Claims, Status> {
    let claims = match &shared.reviewer {
        Some(r) => match header.as_deref().and_then(|h| h.strip_prefix("Bearer ")) {
            Some(token) => r.review(token.trim()).await,
            None => Err("no bearer token".to_string()),
        },
        None => shared
            .tokens
            .verify_header(header.as_deref())
            .map_err(|e| e.to_string()),
    };
    claims.map_err(|e| {
        shared
            .counters
            .auth_failures
            .fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, ?peer, "refused an unauthenticated caller");
        Status::unauthenticated(format!("authentication failed: {e}"))
    })
}

#[derive(Clone)]
pub struct Ads(pub Arc<Shared>);

/// One subscribed type on one stream: what the client holds (name → version).
struct Subscription {
    held: HashMap<String, String>,
    /// Sent the first response yet (an empty one still has to go out so the client can ACK).
    answered: bool,
}

/// The changes that bring `sub` to `snap`: every resource whose version differs and every held
/// name that is gone. Updates `sub.held` to match.
fn diff(
    type_url: &str,
    sub: &mut Subscription,
    snap: &Snapshot,
    nonce: &AtomicU64,
    caller: &str,
) -> Option<DeltaDiscoveryResponse> {
    let empty = BTreeMap::new();
    let all = snap.resources.get(type_url).unwrap_or(&empty);
    // What this caller may receive; the rest is, to it, absent.
    let current: BTreeMap<&String, &Arc<crate::snapshot::Versioned>> =
        all.iter().filter(|(_, v)| v.readable_by(caller)).collect();
    let mut resources = Vec::new();
    for (name, v) in current.iter().map(|(n, v)| (*n, *v)) {
        if sub.held.get(name) != Some(&v.version) {
            resources.push(Resource {
                name: name.clone(),
                version: v.version.clone(),
                resource: Some(v.resource.clone()),
                ..Default::default()
            });
            sub.held.insert(name.clone(), v.version.clone());
        }
    }
    let mut removed: Vec<String> = sub
        .held
        .keys()
        .filter(|n| !current.contains_key(*n))
        .cloned()
        .collect();
    removed.sort();
    for n in &removed {
        sub.held.remove(n);
    }
    if resources.is_empty() && removed.is_empty() && sub.answered {
        return None;
    }
    sub.answered = true;
    Some(DeltaDiscoveryResponse {
        type_url: type_url.to_string(),
        resources,
        removed_resources: removed,
        nonce: format!("{:x}", nonce.fetch_add(1, Ordering::Relaxed) + 1),
        system_version_info: String::new(),
    })
}

/// Serves one delta stream until the client goes away.
async fn delta_stream(
    shared: Arc<Shared>,
    mut inbound: Streaming<DeltaDiscoveryRequest>,
    out: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    peer: String,
    cluster_id: String,
    caller: String,
) {
    let mut snap_rx = shared.snapshot.clone();
    let mut subs: BTreeMap<String, Subscription> = BTreeMap::new();
    let nonce = AtomicU64::new(0);
    let mut node_id = String::new();
    let counters = shared.counters.clone();
    loop {
        tokio::select! {
            req = inbound.next() => {
                let req = match req {
                    Some(Ok(r)) => r,
                    Some(Err(e)) => {
                        // A request that does not decode (or is too large) ends the stream
                        // with a status saying why, not with OK.
                        // (Decode failures are Internal, an oversize length prefix
                        // OutOfRange; the rest is the connection going away.)
                        if !matches!(e.code(), tonic::Code::Internal | tonic::Code::OutOfRange) {
                            tracing::debug!(%peer, node = %node_id, error = %e, "delta stream ended");
                            return;
                        }
                        counters.bad_requests.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(%peer, node = %node_id, code = ?e.code(), error = %e.message(), "delta stream closed: bad request");
                        let status = match e.code() {
                            tonic::Code::OutOfRange => Status::resource_exhausted(format!(
                                "request over {MAX_REQUEST} bytes: {}", e.message()
                            )),
                            _ => Status::invalid_argument(format!("bad DeltaDiscoveryRequest: {}", e.message())),
                        };
                        let _ = out.send(Err(status)).await;
                        return;
                    }
                    None => return,
                };
                if let Some(node) = &req.node {
                    if node_id.is_empty() {
                        node_id = node.id.clone();
                        let node_name = node
                            .metadata
                            .as_ref()
                            .and_then(|m| m.fields.get("NODE_NAME"))
                            .and_then(|v| match &v.kind {
                                Some(prost_types::value::Kind::StringValue(s)) => Some(s.as_str()),
                                _ => None,
                            })
                            .unwrap_or_default();
                        tracing::info!(%peer, node = %node_id, %cluster_id, %node_name, "delta stream opened");
                    }
                }
                if !req.response_nonce.is_empty() {
                    match &req.error_detail {
                        Some(err) => {
                            counters.nacks.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(node = %node_id, type_url = %req.type_url,
                                nonce = %req.response_nonce, error = %err.message, "NACK");
                        }
                        None => {
                            counters.acks.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!(node = %node_id, type_url = %req.type_url,
                                nonce = %req.response_nonce, "ACK");
                        }
                    }
                    if subs.contains_key(&req.type_url) {
                        continue;
                    }
                }
                if req.type_url.is_empty() {
                    continue;
                }
                // A (re)subscription. Only wildcard is served: explicit names (on-demand)
                // are answered with everything, which is what wildcard clients expect.
                let sub = subs.entry(req.type_url.clone()).or_insert_with(|| Subscription {
                    held: req.initial_resource_versions.clone().into_iter().collect(),
                    answered: false,
                });
                let snap = snap_rx.borrow_and_update().clone();
                if let Some(resp) = diff(&req.type_url, sub, &snap, &nonce, &caller) {
                    counters.pushes.fetch_add(1, Ordering::Relaxed);
                    if out.send(Ok(resp)).await.is_err() {
                        return;
                    }
                }
            }
            changed = snap_rx.changed() => {
                if changed.is_err() {
                    return;
                }
                let snap = snap_rx.borrow_and_update().clone();
                for (type_url, sub) in subs.iter_mut() {
                    if let Some(resp) = diff(type_url, sub, &snap, &nonce, &caller) {
                        counters.pushes.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(node = %node_id, %type_url,
                            updated = resp.resources.len(), removed = resp.removed_resources.len(), "push");
                        if out.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for Ads {
    type DeltaAggregatedResourcesStream =
        Pin<Box<dyn Stream<Item = Result<DeltaDiscoveryResponse, Status>> + Send + 'static>>;

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let (header, peer) = credentials(&request);
        let claims = verify(&self.0, header, peer).await?;
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let cluster_id = request
            .metadata()
            .get("clusterid")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        tracing::debug!(%peer, sub = %claims.sub, "delta stream authenticated");
        self.0.counters.streams.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(16);
        let caller = claims
            .service_account()
            .map(|(ns, sa)| format!("{ns}/{sa}"))
            .unwrap_or_default();
        tokio::spawn(delta_stream(
            self.0.clone(),
            request.into_inner(),
            tx,
            peer,
            cluster_id,
            caller,
        ));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[derive(Clone)]
pub struct Ca(pub Arc<Shared>);

impl Ca {
    /// The identity to sign for: the impersonated one (checked against the caller's node), or
    /// the caller's own service account.
    fn identity_for(
        &self,
        claims: &Claims,
        req: &IstioCertificateRequest,
    ) -> Result<Identity, Status> {
        let shared = &self.0;
        let impersonated = req
            .metadata
            .as_ref()
            .and_then(|m| m.fields.get(IMPERSONATED_IDENTITY))
            .and_then(|v| match &v.kind {
                Some(prost_types::value::Kind::StringValue(s)) => Some(s.clone()),
                _ => None,
            });
        let (caller_ns, caller_sa) = claims
            .service_account()
            .ok_or_else(|| Status::unauthenticated("the token names no service account"))?;
        let Some(requested) = impersonated else {
            return Ok(Identity::new(&shared.trust_domain, caller_ns, caller_sa));
        };
        let id: Identity = requested
            .parse()
            .map_err(|e| Status::unauthenticated(format!("bad {IMPERSONATED_IDENTITY}: {e}")))?;
        let caller = format!("{caller_ns}/{caller_sa}");
        if !shared.trusted_node_accounts.contains(&caller) {
            return Err(Status::unauthenticated(format!(
                "{caller} may not request certificates for other identities"
            )));
        }
        if id.trust_domain != shared.trust_domain {
            return Err(Status::unauthenticated(format!(
                "trust domain {} is not {}",
                id.trust_domain, shared.trust_domain
            )));
        }
        let node = claims
            .node()
            .ok_or_else(|| Status::unauthenticated("the token is not bound to a node"))?;
        let snap = shared.snapshot.borrow().clone();
        if !snap.runs_on(node, &id.namespace, &id.service_account) {
            return Err(Status::unauthenticated(format!(
                "no pod with identity {id} runs on node {node}"
            )));
        }
        Ok(id)
    }
}

#[tonic::async_trait]
impl IstioCertificateService for Ca {
    async fn create_certificate(
        &self,
        request: Request<IstioCertificateRequest>,
    ) -> Result<Response<IstioCertificateResponse>, Status> {
        let (header, peer) = credentials(&request);
        let claims = verify(&self.0, header, peer).await?;
        let req = request.into_inner();
        let counters = &self.0.counters;
        let id = self.identity_for(&claims, &req).inspect_err(|e| {
            counters.certs_refused.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(caller = %claims.sub, node = ?claims.node(), reason = %e.message(), "certificate refused");
        })?;
        let ttl = match req.validity_duration {
            d if d <= 0 => DEFAULT_CERT_TTL,
            d if d as u64 > MAX_CERT_TTL.as_secs() => {
                counters.certs_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::invalid_argument(format!(
                    "requested TTL {d}s is above the maximum {}s",
                    MAX_CERT_TTL.as_secs()
                )));
            }
            d => Duration::from_secs(d as u64),
        };
        let chain = self.0.ca.sign_csr(&req.csr, &id, ttl).map_err(|e| {
            counters.certs_refused.fetch_add(1, Ordering::Relaxed);
            Status::invalid_argument(format!("bad CSR: {e}"))
        })?;
        counters.certs_issued.fetch_add(1, Ordering::Relaxed);
        tracing::info!(identity = %id, caller = %claims.sub, ttl_s = ttl.as_secs(), "certificate issued");
        Ok(Response::new(IstioCertificateResponse {
            cert_chain: chain,
        }))
    }
}

/// A TLS connection handed to tonic.
pub struct TlsConn {
    inner: tokio_rustls::server::TlsStream<TcpStream>,
    peer: SocketAddr,
}

impl tonic::transport::server::Connected for TlsConn {
    type ConnectInfo = tonic::transport::server::TcpConnectInfo;
    fn connect_info(&self) -> Self::ConnectInfo {
        tonic::transport::server::TcpConnectInfo {
            local_addr: self.inner.get_ref().0.local_addr().ok(),
            remote_addr: Some(self.peer),
        }
    }
}

impl AsyncRead for TlsConn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsConn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Serves `/metrics` (and `/ready`) over plain HTTP on `listener` (istiod's monitoring port
/// is 15014).
pub async fn serve_monitoring(listener: TcpListener, counters: Arc<Counters>) {
    use http_body_util::Full;
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let counters = counters.clone();
        tokio::spawn(async move {
            let svc =
                hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let counters = counters.clone();
                    async move {
                        let (status, body) = match req.uri().path() {
                            "/metrics" | "/stats/prometheus" => {
                                (http::StatusCode::OK, counters.render())
                            }
                            "/ready" => (http::StatusCode::OK, "ready\n".to_string()),
                            _ => (http::StatusCode::NOT_FOUND, "not found\n".to_string()),
                        };
                        let resp = http::Response::builder()
                            .status(status)
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(bytes::Bytes::from(body)))
                            .unwrap_or_default();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                .await;
        });
    }
}

/// The server's TLS settings: its serving certificate, ALPN h2, no client certificate.
pub fn tls_config(
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(cfg))
}

/// Serves both services on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shared: Arc<Shared>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let counters = shared.counters.clone();
    let (tx, rx) = mpsc::channel::<Result<TlsConn, std::io::Error>>(64);
    let accept_loop = tokio::spawn(async move {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            let counters = counters.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await {
                    Ok(Ok(inner)) => {
                        let _ = tx.send(Ok(TlsConn { inner, peer })).await;
                    }
                    // Anyone can cause these: counted, and logged at debug only.
                    Ok(Err(e)) => {
                        counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        counters.tls_failures.fetch_add(1, Ordering::Relaxed);
                        tracing::debug!(%peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    let ads = AggregatedDiscoveryServiceServer::new(Ads(shared.clone()))
        .max_decoding_message_size(MAX_REQUEST)
        .max_encoding_message_size(MAX_MESSAGE);
    let ca = IstioCertificateServiceServer::new(Ca(shared));
    let result = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .add_service(ads)
        .add_service(ca)
        .serve_with_incoming_shutdown(ReceiverStream::new(rx), shutdown)
        .await;
    accept_loop.abort();
    result.map_err(Into::into)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A resource with readers goes only to their proxies; to anyone else it does not exist,
    /// even when claimed as held on reconnection.
    #[test]
    fn a_gateway_goes_only_to_its_own_accounts() {
        let mut snap = Snapshot::default();
        let mut v = crate::snapshot::Versioned::new(xds::type_url::INGRESS_GATEWAY, vec![1]);
        v.readers = Some(["istio-system/gw".to_string()].into());
        snap.resources
            .entry(xds::type_url::INGRESS_GATEWAY.into())
            .or_default()
            .insert("istio/default/g".into(), Arc::new(v));
        let nonce = AtomicU64::new(0);
        let sub = |held: &[(&str, &str)]| Subscription {
            held: held
                .iter()
                .map(|(n, v)| (n.to_string(), v.to_string()))
                .collect(),
            answered: false,
        };
        let mut own = sub(&[]);
        let r = diff(
            xds::type_url::INGRESS_GATEWAY,
            &mut own,
            &snap,
            &nonce,
            "istio-system/gw",
        )
        .unwrap();
        assert_eq!(r.resources.len(), 1);
        let mut other = sub(&[("istio/default/g", "stale")]);
        let r = diff(
            xds::type_url::INGRESS_GATEWAY,
            &mut other,
            &snap,
            &nonce,
            "istio-system/ztunnel",
        )
        .unwrap();
        assert!(r.resources.is_empty());
        assert_eq!(r.removed_resources, ["istio/default/g"]);
    }
}
