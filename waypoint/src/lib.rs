//! The waypoint (docs/WIRE.md §7): terminates HBONE from ztunnels on 15008 as its own
//! identity, takes the CONNECT `:authority` (the original `VIP:port` or `podIP:port`) as the
//! destination, and:
//!
//! - for a service port whose protocol is HTTP (`http`, `http2`, `grpc`), serves HTTP/1.1 and
//!   HTTP/2 (prior knowledge) inside the tunnel, applies the service's HTTPRoutes or
//!   VirtualServices to each request ([`plan`]), and forwards it ([`forward`]) over a new
//!   HBONE tunnel to an endpoint's ztunnel (`:authority` podIP:targetPort), presenting the
//!   waypoint's identity;
//! - for any other port, forwards the bytes (L4) the same way, split by VirtualService
//!   `tcp` rules when there are any.
//!
//! It runs on ztunnel's machinery (`ztunnel::app::run_with`): state and certificates from the
//! control plane, the HBONE pool, admin, readiness, metrics and drain.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use bytes::Bytes;
use hbone::client::ConnectRequest;
use hbone::io::H2Io;
use hbone::pool::PoolKey;
use hbone::server::Incoming;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use tokio::net::TcpStream;
use ztunnel::admin::Readiness;
use ztunnel::connection::{ConnectionResult, Direction, Peers};
use ztunnel::proxy::{socket, ProxyError, ProxyInputs};
use ztunnel::state::{Service, State, Workload};

pub mod accesslog;
mod balance;
mod breaker;
pub mod config;
mod forward;
mod h1;
mod metrics;
mod outlier;
mod plan;
mod serve;

pub use config::{decode_destination_rule, decode_route, decode_virtual_service, L7Config};

/// Entry points for the fuzz targets (`fuzz/`): parsers that face a client's bytes.
#[doc(hidden)]
pub mod fuzzing {
    /// The HTTP/1.1 request-head parser of the waypoint's own server.
    pub fn http1_head(bytes: &[u8]) {
        super::serve::parse_for_fuzzing(bytes)
    }
}

type Body = BoxBody<Bytes, h1::BoxError>;

/// Binds 15008 and serves it until drain; readiness also waits for the certificate.
pub fn start(pi: &Arc<ProxyInputs>, readiness: &Readiness) -> anyhow::Result<()> {
    let listener = socket::listen(None, hbone::HBONE_PORT, pi.cfg.ipv6)?;
    tokio::spawn(ztunnel::proxy::accept_loop(
        pi.clone(),
        listener,
        "waypoint",
        serve_connection,
    ));
    readiness.done("proxy");
    tracing::info!(port = hbone::HBONE_PORT, "waypoint listening");
    Ok(())
}

/// Runs a waypoint: what the `waypoint` binary does. Besides WDS it subscribes to
/// Keelson's HTTPRoute, VirtualService and DestinationRule types.
pub async fn run(cfg: ztunnel::config::Config) -> anyhow::Result<()> {
    let start: ztunnel::app::Listeners = Box::new(start);
    ztunnel::app::run_with(cfg, Some(start), config::extra_types(), metrics::register).await
}

/// The process-wide L7 configuration cache.
fn l7_config() -> Arc<L7Config> {
    static CONFIG: std::sync::OnceLock<Arc<L7Config>> = std::sync::OnceLock::new();
    CONFIG.get_or_init(Arc::default).clone()
}

async fn serve_connection(pi: Arc<ProxyInputs>, tcp: TcpStream, peer: SocketAddr) {
    ztunnel::proxy::inbound::serve_hbone(pi, tcp, peer, handle_stream).await
}

/// What a tunnel was opened for: a service port, or a workload's port.
#[derive(Clone)]
enum Destination {
    Service { svc: Arc<Service>, port: u16 },
    Workload { w: Arc<Workload>, port: u16 },
}

impl Destination {
    fn name(&self) -> String {
        match self {
            Destination::Service { svc, port } => format!("{}:{port}", svc.hostname),
            Destination::Workload { w, port } => format!("{}/{}:{port}", w.namespace, w.name),
        }
    }

    fn is_http(&self) -> bool {
        match self {
            Destination::Service { svc, port } => matches!(
                svc.app_protocols.get(port).map(String::as_str),
                Some("http" | "http2" | "grpc")
            ),
            Destination::Workload { .. } => false,
        }
    }
}

/// Where a request or connection goes: a destination, optionally only to the workloads of
/// a subset.
#[derive(Clone)]
struct Backend {
    dst: Destination,
    subset: Option<Arc<l7::vsroute::SubsetMembers>>,
}

impl Backend {
    fn of(dst: Destination) -> Backend {
        Backend { dst, subset: None }
    }
}

/// The destination a CONNECT `authority` names. `local` is the address the tunnel arrived
/// on: the waypoint itself is never a destination (forwarding to it would loop without end),
/// and neither is port 0 or the HBONE port (docs/HARDENING.md, finding 1).
fn destination(state: &State, authority: &str, local: IpAddr) -> Result<Destination, ProxyError> {
    let addr: SocketAddr = authority
        .parse()
        .map_err(|_| ProxyError::BadAuthority(authority.to_string()))?;
    let addr = socket::canonical(addr);
    if addr.port() == 0 {
        return Err(ProxyError::BadAuthority(authority.to_string()));
    }
    if addr.port() == hbone::HBONE_PORT {
        return Err(ProxyError::OwnPort(addr.port()));
    }
    if let Some(svc) = state.service_by_vip(addr.ip()) {
        return Ok(Destination::Service {
            svc,
            port: addr.port(),
        });
    }
    if let Some(w) = state.workload_by_ip(addr.ip()) {
        if w.addresses.contains(&local) {
            return Err(ProxyError::SelfDestination(addr));
        }
        return Ok(Destination::Workload {
            w,
            port: addr.port(),
        });
    }
    Err(ProxyError::UnknownService(
        authority.to_string(),
        addr.port(),
    ))
}

async fn handle_stream(pi: Arc<ProxyInputs>, inc: Incoming) {
    if !inc.is_connect() {
        return inc.reject(StatusCode::BAD_REQUEST);
    }
    let authority = inc.authority().unwrap_or_default().to_string();
    let source = inc.peer_identity.clone();
    let client = inc.peer_addr;
    let local = socket::canonical(inc.local_addr).ip();
    let dst = match destination(&pi.state, &authority, local) {
        Ok(d) => d,
        Err(e) => {
            tracing::event!(target: "access", tracing::Level::INFO, %authority, src.identity = %source, error = %e, "waypoint refused the tunnel");
            return inc.reject(e.status());
        }
    };
    let source_ip = source_address(&pi.state, inc.header("forwarded"), &source, client.ip());
    let destination_ip = authority
        .parse::<SocketAddr>()
        .map_or(client.ip(), |a| socket::canonical(a).ip());
    let source_name = source.to_string();
    let principal = source_name
        .strip_prefix("spiffe://")
        .unwrap_or(&source_name)
        .to_string();
    if !dst.is_http() {
        // TCP: judged once, before the tunnel is answered (HTTP fields cannot match here).
        if let Err(details) = authorize_tcp(&pi, &dst, &principal, source_ip, destination_ip) {
            tracing::event!(target: "access", tracing::Level::INFO, src.identity = %source, destination = %dst.name(),
                response_flags = "-", details = %details, "tcp connection denied");
            return inc.reject(StatusCode::FORBIDDEN);
        }
    }
    let stream = match inc.accept(&[]) {
        Ok(s) => s,
        Err(e) => return tracing::debug!(error = %e, "tunnel closed before it was answered"),
    };
    // The tunnel's own record: `istio_tcp_*` with reporter "waypoint", advancing while it
    // is open, and one access line at its end with the bytes that crossed.
    let labels = metrics::base_labels(&pi, (&source_name, source_ip), &dst);
    let peers = Peers {
        src_identity: Some(source_name.clone()),
        dst_hbone_addr: Some(authority),
        dst_service: match &dst {
            Destination::Service { svc, .. } => Some(svc.hostname.clone()),
            Destination::Workload { .. } => None,
        },
        ..Default::default()
    };
    let mut record = ConnectionResult::new(
        pi.metrics.clone(),
        Direction::Inbound,
        client,
        labels.clone(),
        peers,
    );
    if dst.is_http() {
        let ctx = Arc::new(forward::Context {
            pi: pi.clone(),
            dst_name: dst.name(),
            dst,
            source: source_name,
            principal,
            source_namespace: source.namespace.to_string(),
            client,
            source_ip,
            destination_ip,
            config: l7_config(),
            tables: Default::default(),
            recorder: metrics::Recorder::with_base(labels),
            bytes: record.bytes(),
        });
        // Boxed once per tunnel: the request path inside is large.
        record.reporting(Box::pin(serve::serve(ctx, stream))).await;
    } else {
        let backend = plan::tcp_backend(&pi, &l7_config(), &dst);
        l4(&pi, backend, H2Io::new(stream), client, &mut record).await;
    }
}

/// The client's address for policy and metrics: the `for=` of the tunnel's `forwarded` header
/// only when the workload owning that address has the identity the peer proved with its
/// certificate (the peer's ztunnel speaks for that pod); otherwise the peer's own address. A
/// forged `for=` thus never buys a caller another address (docs/HARDENING.md, finding 3).
fn source_address(
    state: &State,
    forwarded: Option<&str>,
    peer: &identity::Identity,
    peer_ip: IpAddr,
) -> IpAddr {
    let Some(claimed) = forwarded.and_then(hbone::headers::forwarded_for) else {
        return peer_ip;
    };
    if claimed == peer_ip {
        return peer_ip;
    }
    match state.workload_by_ip(claimed) {
        Some(w) if w.identity() == *peer => claimed,
        _ => {
            tracing::debug!(%claimed, %peer, %peer_ip, "forwarded for= not owned by the peer's identity; ignored");
            peer_ip
        }
    }
}

/// The AuthorizationPolicies' answer for a TCP connection; `Err` has the denial's details.
fn authorize_tcp(
    pi: &ProxyInputs,
    dst: &Destination,
    principal: &str,
    source_ip: std::net::IpAddr,
    destination_ip: std::net::IpAddr,
) -> Result<(), String> {
    let hostname = match dst {
        Destination::Service { svc, .. } => svc.hostname.as_str(),
        Destination::Workload { .. } => "",
    };
    let policies = l7_config().authorization(&pi.state, (&pi.local_ns, &pi.local_name), hostname);
    if policies.is_empty() {
        return Ok(());
    }
    let port = match dst {
        Destination::Service { port, .. } | Destination::Workload { port, .. } => *port,
    };
    let verdict = l7::authz::evaluate(
        &policies,
        &l7::authz::Attributes {
            principal: Some(principal),
            source_ip,
            destination_ip,
            destination_port: port,
            http: None,
        },
    );
    plan::log_verdict(&verdict, Some(principal), "tcp");
    if verdict.decision.allowed() {
        Ok(())
    } else {
        Err(verdict.decision.details())
    }
}

fn text(status: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(full(Bytes::from(format!("{msg}\n"))))
        .unwrap()
}

fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}

/// Why a backend could not be reached: status, message, response flag.
type Unreachable = (StatusCode, String, &'static str);

/// An endpoint of a backend, and the port to reach it on.
struct Picked {
    w: Arc<Workload>,
    port: u16,
    /// The service, whose hostname goes in the tunnel's `Forwarded` header.
    svc: Option<Arc<Service>>,
}

/// How a DestinationRule has endpoints picked: the balance, the cluster key and the
/// request's hash key.
type Lb<'a> = (&'a l7::istio::Balance, &'a str, Option<u64>);

/// An endpoint of the backend, not one in `avoid` while another is left, never one in
/// `ejected` (outlier detection); weighted random unless `lb` says otherwise.
fn pick(
    pi: &ProxyInputs,
    backend: &Backend,
    avoid: &[String],
    ejected: &[String],
    lb: Option<Lb<'_>>,
) -> Result<Picked, Unreachable> {
    match &backend.dst {
        Destination::Service { svc, port } => {
            let in_subset = |w: &Workload| {
                backend
                    .subset
                    .as_ref()
                    .is_none_or(|s| s.uids.contains(&w.uid))
                    && !ejected.contains(&w.uid)
            };
            let ep = match lb {
                Some((balance, cluster, hash)) => {
                    let mut eps = pi
                        .state
                        .endpoints_in(svc, *port, |w| in_subset(w) && !avoid.contains(&w.uid));
                    if eps.is_empty() {
                        eps = pi.state.endpoints_in(svc, *port, in_subset);
                    }
                    (!eps.is_empty()).then(|| balance::choose(balance, cluster, eps, hash))
                }
                None => pi
                    .state
                    .pick_endpoint_in(svc, *port, |w| in_subset(w) && !avoid.contains(&w.uid))
                    .or_else(|| pi.state.pick_endpoint_in(svc, *port, in_subset)),
            }
            .ok_or_else(|| {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no healthy upstream for {}:{port}", svc.hostname),
                    "UH",
                )
            })?;
            Ok(Picked {
                w: ep.workload,
                port: ep.port,
                svc: Some(svc.clone()),
            })
        }
        Destination::Workload { w, port } => Ok(Picked {
            w: w.clone(),
            port: *port,
            svc: None,
        }),
    }
}

/// A tunnel to a picked endpoint, as the waypoint.
async fn open_tunnel(
    pi: &ProxyInputs,
    p: &Picked,
    client: SocketAddr,
) -> Result<hbone::stream::H2Stream, Unreachable> {
    let ip = *p.w.addresses.first().ok_or_else(|| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("workload {} has no address", p.w.name),
            "UH",
        )
    })?;
    let key = PoolKey {
        src_identity: pi.local_identity(),
        dst_identities: vec![p.w.identity()],
        dst: SocketAddr::new(ip, hbone::HBONE_PORT),
        src_ip: None,
    };
    let req = ConnectRequest::new(
        SocketAddr::new(ip, p.port).to_string(),
        client,
        p.svc.as_ref().map(|s| s.hostname.as_str()),
    );
    pi.hbone(&key, &req).await.map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream connect error: {e}"),
            "UF",
        )
    })
}

/// L4: the tunnel's bytes to an endpoint, both ways, counted in `record` as they cross
/// (whatever way the copy ends); the access line is `record`'s.
async fn l4(
    pi: &ProxyInputs,
    backend: Result<Backend, Unreachable>,
    down: H2Io,
    client: SocketAddr,
    record: &mut ConnectionResult,
) {
    let result = async {
        let b = backend?;
        let p = pick(pi, &b, &[], &[], None)?;
        let up = open_tunnel(pi, &p, client).await?;
        Ok::<_, Unreachable>((up, p.w))
    }
    .await;
    match result {
        Err((_, msg, flag)) => record.fail_early(flag, msg),
        Ok((up, w)) => {
            tracing::debug!(upstream = %w.name, "tcp tunnel to the endpoint open");
            let bytes = record.bytes();
            let (mut down, mut up) = (down, H2Io::new(up));
            let copy = hbone::io::copy_counted(
                &mut down,
                &mut up,
                &bytes.client_to_server,
                &bytes.server_to_client,
            );
            if let Err(e) = record.reporting(copy).await {
                record.fail("CONNECT", e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn forwarded_is_trusted_only_for_the_peers_own_workload() {
        let state = ztunnel::state::State::default();
        let w = |name: &str, ip: &str, sa: &str| -> ztunnel::state::Workload {
            serde_json::from_value(serde_json::json!({
                "uid": name, "name": name, "namespace": "default", "addresses": [ip],
                "trustDomain": "cluster.local", "serviceAccount": sa,
            }))
            .unwrap()
        };
        state.apply(ztunnel::state::Update {
            workloads: vec![w("a", "10.0.0.7", "sleep"), w("b", "10.0.0.8", "admin")],
            ..Default::default()
        });
        let sleep = identity::Identity::new("cluster.local", "default", "sleep");
        let peer: std::net::IpAddr = "10.0.0.99".parse().unwrap();
        let src = |fwd: Option<&str>| super::source_address(&state, fwd, &sleep, peer);
        // The peer's identity owns 10.0.0.7: its ztunnel may speak for that address.
        assert_eq!(
            src(Some("for=\"10.0.0.7:4000\"")),
            "10.0.0.7".parse::<std::net::IpAddr>().unwrap()
        );
        // 10.0.0.8 belongs to another identity, 10.0.0.50 to nobody: the peer's own address.
        assert_eq!(src(Some("for=\"10.0.0.8:4000\"")), peer);
        assert_eq!(src(Some("for=10.0.0.50")), peer);
        assert_eq!(src(Some("for=garbage")), peer);
        assert_eq!(src(None), peer);
    }
}
