//! Where a tunnel or request goes: the destination a tunnel names, the backend a route
//! picks, an endpoint of it, and the HBONE tunnel to that endpoint's ztunnel. Also the L4
//! path: a tunnel's bytes copied to an endpoint.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::client::ConnectRequest;
use hbone::io::H2Io;
use hbone::pool::PoolKey;
use proxycore::connection::ConnectionResult;
use proxycore::state::{Service, Workload};
use proxycore::ProxyInputs;

use crate::error::Failure;
use crate::process::Waypoint;

/// What a tunnel was opened for: a service port, or a workload's port.
#[derive(Clone)]
pub enum Destination {
    Service { svc: Arc<Service>, port: u16 },
    Workload { w: Arc<Workload>, port: u16 },
}

impl Destination {
    pub fn name(&self) -> String {
        match self {
            Destination::Service { svc, port } => format!("{}:{port}", svc.hostname),
            Destination::Workload { w, port } => format!("{}/{}:{port}", w.namespace, w.name),
        }
    }

    pub fn is_http(&self) -> bool {
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
pub struct Backend {
    pub dst: Destination,
    pub subset: Option<Arc<l7::vsroute::SubsetMembers>>,
}

impl Backend {
    pub fn of(dst: Destination) -> Backend {
        Backend { dst, subset: None }
    }
}

/// An endpoint of a backend, and the port to reach it on.
pub struct Picked {
    pub w: Arc<Workload>,
    pub port: u16,
    /// The service, whose hostname goes in the tunnel's `Forwarded` header.
    pub svc: Option<Arc<Service>>,
}

/// How a DestinationRule has endpoints picked: the balance, the cluster key and the
/// request's hash key.
pub type Lb<'a> = (&'a l7::istio::Balance, &'a str, Option<u64>);

/// An endpoint of the backend, not one in `avoid` while another is left, never one in
/// `ejected` (outlier detection); weighted random unless `lb` says otherwise.
pub fn pick(
    wp: &Waypoint,
    backend: &Backend,
    avoid: &[String],
    ejected: &[String],
    lb: Option<Lb<'_>>,
) -> Result<Picked, Failure> {
    let pi = &wp.pi;
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
                    (!eps.is_empty()).then(|| wp.balancer.choose(balance, cluster, eps, hash))
                }
                None => pi
                    .state
                    .pick_endpoint_in(svc, *port, |w| in_subset(w) && !avoid.contains(&w.uid))
                    .or_else(|| pi.state.pick_endpoint_in(svc, *port, in_subset)),
            }
            .ok_or_else(|| {
                Failure::NoHealthyUpstream(format!(
                    "no healthy upstream for {}:{port}",
                    svc.hostname
                ))
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
pub async fn open_tunnel(
    pi: &ProxyInputs,
    p: &Picked,
    client: SocketAddr,
) -> Result<hbone::stream::H2Stream, Failure> {
    let ip = *p.w.addresses.first().ok_or_else(|| {
        Failure::NoHealthyUpstream(format!("workload {} has no address", p.w.name))
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
    pi.hbone(&key, &req)
        .await
        .map_err(|e| Failure::ConnectFailed(e.to_string()))
}

/// L4: the tunnel's bytes to an endpoint, both ways, counted in `record` as they cross
/// (whatever way the copy ends); the access line is `record`'s.
pub async fn l4(
    wp: &Waypoint,
    backend: Result<Backend, Failure>,
    down: H2Io,
    client: SocketAddr,
    record: &mut ConnectionResult,
) {
    let result = async {
        let b = backend?;
        let p = pick(wp, &b, &[], &[], None)?;
        let up = open_tunnel(&wp.pi, &p, client).await?;
        Ok::<_, Failure>((up, p.w))
    }
    .await;
    match result {
        Err(f) => record.fail_early(f.flag(), f.to_string()),
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
