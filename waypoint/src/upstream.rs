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

/// The locality setting that applies to a cluster, and whether outlier detection is set
/// for it (failover needs it, DR-21).
pub type LocalityLb<'a> = (&'a l7::locality::LocalityLbSetting, bool);

/// An endpoint of the backend, not one in `avoid` while another is left, never one in
/// `ejected` (outlier detection), among the endpoints `locality` prefers; weighted random
/// unless `lb` says otherwise.
pub fn pick(
    wp: &Waypoint,
    backend: &Backend,
    avoid: &[String],
    ejected: &[String],
    lb: Option<Lb<'_>>,
    locality: Option<LocalityLb<'_>>,
) -> Result<Picked, Failure> {
    let pi = &wp.pi;
    match &backend.dst {
        Destination::Service { svc, port } => {
            let healthy = |w: &Workload| {
                backend
                    .subset
                    .as_ref()
                    .is_none_or(|s| s.uids.contains(&w.uid))
                    && !ejected.contains(&w.uid)
            };
            let preferred = locality.and_then(|(setting, outlier)| {
                let mut eps = pi
                    .state
                    .endpoints_in(svc, *port, |w| healthy(w) && !avoid.contains(&w.uid));
                if eps.is_empty() {
                    eps = pi.state.endpoints_in(svc, *port, healthy);
                }
                let own = pi.state.workload_by_name(&pi.local_ns, &pi.local_name);
                by_locality(setting, outlier, own.as_deref(), &eps)
            });
            let in_subset =
                |w: &Workload| healthy(w) && preferred.as_ref().is_none_or(|p| p.contains(&w.uid));
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
        let p = pick(wp, &b, &[], &[], None, None)?;
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

/// The uids of the endpoints a locality setting sends this pick to (docs/WIRE.md §8,
/// DR-19..22): the group `distribute` draws for the proxy's locality, or the best-ranked
/// for failover. `None`: no preference (no setting applies, or all rank alike).
fn by_locality(
    setting: &l7::locality::LocalityLbSetting,
    outlier: bool,
    own: Option<&Workload>,
    eps: &[proxycore::state::Endpoint],
) -> Option<std::collections::HashSet<String>> {
    use l7::locality::Locality;
    fn at(w: &Workload) -> Locality<'_> {
        w.locality
            .as_ref()
            .map_or_else(Locality::default, |l| Locality {
                region: &l.region,
                zone: &l.zone,
                subzone: &l.subzone,
            })
    }
    let own_at = own.map(at).unwrap_or_default();
    let own_network = own.map_or("", |w| w.network.as_str());
    if let Some(to) = setting.distribution(&own_at) {
        // Each endpoint in the group of the most specific pattern covering it.
        let mut patterns: Vec<(&String, &u32)> = to.iter().filter(|(_, w)| **w > 0).collect();
        patterns.sort_by_key(|(p, _)| std::cmp::Reverse(p.len()));
        let group = |w: &Workload| {
            let l = at(w);
            patterns
                .iter()
                .position(|(p, _)| l7::locality::covers(p, &l))
        };
        let mut weights = vec![0u64; patterns.len()];
        for e in eps {
            if let Some(g) = group(&e.workload) {
                weights[g] = u64::from(*patterns[g].1);
            }
        }
        let total: u64 = weights.iter().sum();
        if total == 0 {
            return None;
        }
        let mut draw = rand::Rng::gen_range(&mut rand::thread_rng(), 0..total);
        let chosen = weights.iter().position(|w| {
            if draw < *w {
                true
            } else {
                draw -= w;
                false
            }
        })?;
        return Some(
            eps.iter()
                .filter(|e| group(&e.workload) == Some(chosen))
                .map(|e| e.workload.uid.clone())
                .collect(),
        );
    }
    if !setting.fails_over(outlier) {
        return None;
    }
    let rank = |w: &Workload| setting.rank(&own_at, own_network, &at(w), &w.network);
    let ranks: Vec<u32> = eps.iter().map(|e| rank(&e.workload)).collect();
    let best = *ranks.iter().min()?;
    if ranks.iter().all(|r| *r == best) {
        return None;
    }
    Some(
        eps.iter()
            .zip(&ranks)
            .filter(|(_, r)| **r == best)
            .map(|(e, _)| e.workload.uid.clone())
            .collect(),
    )
}
