//! Outbound (15001): connections the app made, redirected here by iptables. The original
//! destination is resolved through WDS (docs/WIRE.md §3.5): a service VIP to one healthy
//! endpoint, a workload IP to that workload, anything else passes through untouched. HBONE
//! workloads are reached through a pooled tunnel to their 15008, others with plain TCP.

use std::net::SocketAddr;
use std::sync::Arc;

use hbone::{ConnectRequest, H2Stream, PoolKey};
use tokio::net::{TcpListener, TcpStream};

use proxycore::connection::{ConnectionFacts, ConnectionResult, Direction};
use proxycore::metrics::Reporter;
use proxycore::socket;
use proxycore::state::{Service, State, TunnelProtocol, Workload};
use proxycore::{ProxyError, ProxyInputs};

pub async fn serve(pi: Arc<ProxyInputs>, listener: TcpListener) {
    proxycore::listen::accept_loop(pi, listener, "outbound", |pi, tcp, src| async move {
        match socket::original_dst(&tcp) {
            Ok(orig) => proxy(pi, tcp, src, orig).await,
            Err(e) => tracing::warn!(error = %e, "no original destination"),
        }
    })
    .await
}

/// Proxies one downstream connection to `orig`.
pub async fn proxy(
    pi: Arc<ProxyInputs>,
    mut downstream: TcpStream,
    src: SocketAddr,
    orig: SocketAddr,
) {
    // Boxed: the connect phase (TLS handshake state) is large, and an unboxed future would
    // keep that size for the whole life of the connection task.
    let (mut result, upstream) = Box::pin(establish(&pi, src, orig, Some(&downstream))).await;
    match upstream {
        Ok(up) => relay(&mut downstream, up, &mut result).await,
        Err(e) => {
            tracing::debug!(%src, %orig, error = %e, "outbound connection refused");
            result.fail_early(e.response_flag(), &e);
        }
    }
}

/// Bytes of a request head looked at for its trace context.
const PEEK: usize = 2048;
/// How long a connection to an HTTP port waits for its request head before its CONNECT
/// goes without the client's trace context.
const HEAD_WAIT: std::time::Duration = std::time::Duration::from_millis(10);

/// The client's trace context, for the CONNECT request: what the connection's first bytes
/// say, when they are already here and are a plaintext HTTP/1.x request head carrying one
/// (docs/OBSERVABILITY.md). One non-blocking peek: never waits, consumes nothing. A client
/// that has not written yet (or speaks TLS, HTTP/2 or anything else) gets a new random
/// `traceparent`, as before.
fn client_trace(downstream: &TcpStream) -> Option<String> {
    use nix::sys::socket::{recv, MsgFlags};
    use std::os::fd::AsRawFd;
    let mut buf = [0u8; PEEK];
    let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
    let n = recv(downstream.as_raw_fd(), &mut buf, flags).ok()?;
    let p = hbone::trace::from_http1_head(&buf[..n])?;
    hbone::trace::as_traceparent(&p)
}

pub enum Upstream {
    Hbone(H2Stream),
    Tcp(TcpStream),
}

/// Where a destination resolved to.
enum Route {
    Workload {
        workload: Arc<Workload>,
        port: u16,
        service: Option<Arc<Service>>,
    },
    /// To a waypoint (its workload and HBONE port), carrying the original destination.
    Waypoint {
        workload: Arc<Workload>,
        port: u16,
        service: Option<Arc<Service>>,
    },
    Passthrough,
}

fn resolve(
    state: &State,
    orig: SocketAddr,
    local: Option<&Workload>,
    src: SocketAddr,
) -> Result<Route, ProxyError> {
    if let Some(svc) = state.service_by_vip(orig.ip()) {
        // Service-addressed traffic to a service with a waypoint goes to the waypoint, with
        // the VIP:port as the authority (docs/WIRE.md §3.5, §7.2).
        if let Some(wp) = &svc.waypoint {
            let (workload, port) = state
                .resolve_waypoint(wp)
                .ok_or_else(|| ProxyError::NoWaypoint(wp.hostname.clone()))?;
            return Ok(Route::Waypoint {
                workload,
                port,
                service: Some(svc),
            });
        }
        let ep = state
            .pick_endpoint(&svc, orig.port())
            .ok_or_else(|| ProxyError::NoEndpoints(svc.hostname.clone(), orig.port()))?;
        return Ok(Route::Workload {
            workload: ep.workload,
            port: ep.port,
            service: Some(svc),
        });
    }
    if let Some(w) = state.workload_by_ip(orig.ip()) {
        // Pod-addressed traffic uses the workload's waypoint, unless it comes from that
        // waypoint (same identity and one of its addresses): no loops.
        if let Some(wp) = &w.waypoint {
            if let Some((workload, port)) = state.resolve_waypoint(wp) {
                let from_waypoint = local.is_some_and(|l| {
                    l.identity() == workload.identity() && workload.addresses.contains(&src.ip())
                });
                if !from_waypoint {
                    return Ok(Route::Waypoint {
                        workload,
                        port,
                        service: None,
                    });
                }
            } else {
                return Err(ProxyError::NoWaypoint(wp.hostname.clone()));
            }
        }
        return Ok(Route::Workload {
            workload: w,
            port: orig.port(),
            service: None,
        });
    }
    Ok(Route::Passthrough)
}

/// Resolves `orig` and connects to it; the result record exists whatever happens, so every
/// attempt is logged and counted.
pub async fn establish(
    pi: &ProxyInputs,
    src: SocketAddr,
    orig: SocketAddr,
    downstream: Option<&TcpStream>,
) -> (ConnectionResult, Result<Upstream, ProxyError>) {
    let local = pi.local_workload().ok();
    let mut facts = ConnectionFacts::new(
        Reporter::Source,
        Direction::Outbound,
        &pi.cfg.cluster_id,
        src,
    );
    facts.src_workload = local.clone();
    facts.dst_addr = Some(orig);
    let record = |facts| ConnectionResult::new(pi.metrics.clone(), facts);
    if pi.cfg.ports.is_own(orig.port(), pi.cfg.socks5) && orig.ip().is_loopback() {
        return (record(facts), Err(ProxyError::OwnPort(orig.port())));
    }
    let route = match resolve(&pi.state, orig, local.as_deref(), src) {
        Ok(r) => r,
        Err(e) => return (record(facts), Err(e)),
    };
    // (workload to connect to, the HBONE target it is asked for, whether via a waypoint)
    let (workload, port, service, via_waypoint) = match route {
        Route::Workload {
            workload,
            port,
            service,
        } => (workload, port, service, false),
        Route::Waypoint {
            workload,
            port,
            service,
        } => (workload, port, service, true),
        Route::Passthrough => {
            let r = record(facts);
            let up = pi
                .connect(orig, None)
                .await
                .map(Upstream::Tcp)
                .map_err(|e| ProxyError::Connect(orig, e));
            return (r, up);
        }
    };
    facts.dst_workload = Some(workload.clone());
    facts.dst_service = service.clone();
    if !via_waypoint && workload.tunnel_protocol == TunnelProtocol::None {
        // Plain TCP to its address (or the name it is known by, resolved now).
        let target = match pi.address_of(&workload, port).await {
            Ok(t) => t,
            Err(e) => {
                let unresolved = SocketAddr::new(orig.ip(), port);
                return (record(facts), Err(ProxyError::Connect(unresolved, e)));
            }
        };
        facts.dst_addr = Some(target);
        let r = record(facts);
        let up = pi
            .connect(target, None)
            .await
            .map(Upstream::Tcp)
            .map_err(|e| ProxyError::Connect(target, e));
        return (r, up);
    }
    let Some(&dst_ip) = workload.addresses.first() else {
        let e = std::io::Error::new(std::io::ErrorKind::NotFound, "no address");
        return (record(facts), Err(ProxyError::Connect(orig, e)));
    };
    // A waypoint is asked for the original destination; a workload for its own address and
    // target port.
    let target = if via_waypoint {
        orig
    } else {
        SocketAddr::new(dst_ip, port)
    };
    // HBONE to the workload's ztunnel.
    let src_id = pi.local_identity();
    let mut expected = vec![workload.identity()];
    if let Some(s) = service.as_ref().filter(|_| !via_waypoint) {
        expected.extend(
            s.subject_alt_names
                .iter()
                .filter_map(|san| san.parse().ok()),
        );
    }
    let hbone_addr = SocketAddr::new(
        dst_ip,
        if via_waypoint {
            port
        } else {
            hbone::HBONE_PORT
        },
    );
    facts.src_identity = Some(src_id.to_string());
    facts.dst_identity = Some(workload.identity().to_string());
    facts.mtls = true;
    facts.dst_addr = Some(hbone_addr);
    facts.dst_hbone_addr = Some(target.to_string());
    // Peeked as late as possible: the client has had the most time to send its request. On
    // a port declared HTTP the client speaks first, so its request head is waited for, a
    // little: it is what the connection waits for anyway.
    if let Some(d) = downstream {
        let http = service
            .as_ref()
            .and_then(|s| s.app_protocols.get(&orig.port()))
            .is_some_and(|p| p.starts_with("http") || p == "grpc");
        if http {
            let _ = tokio::time::timeout(HEAD_WAIT, d.readable()).await;
        }
    }
    let trace = downstream.and_then(client_trace);
    facts.trace_id = trace
        .as_deref()
        .and_then(hbone::trace::sampled_trace_id)
        .map(str::to_string);
    let r = record(facts);
    let key = PoolKey {
        src_identity: src_id.clone(),
        dst_identities: expected.clone(),
        dst: hbone_addr,
        src_ip: Some(src.ip()),
    };
    let mut req = ConnectRequest::new(
        target.to_string(),
        src,
        service.as_ref().map(|s| s.hostname.as_str()),
    );
    req.baggage = baggage(local.as_deref(), &pi.cfg.cluster_id);
    if let Some(t) = trace {
        req.traceparent = t;
    }
    let up = pi.hbone(&key, &req).await.map(Upstream::Hbone);
    (r, up)
}

/// `baggage` describing the source workload (docs/WIRE.md §1.4).
pub fn baggage(w: Option<&Workload>, cluster: &str) -> String {
    let Some(w) = w else { return String::new() };
    hbone::headers::Baggage {
        cluster: if w.cluster_id.is_empty() {
            cluster
        } else {
            &w.cluster_id
        },
        namespace: &w.namespace,
        workload_type: &w.workload_type,
        workload_name: &w.workload_name,
        service: &w.canonical_name,
        version: &w.canonical_revision,
    }
    .header()
}

/// Copies between the downstream socket and the upstream, recording bytes and errors.
pub async fn relay(downstream: &mut TcpStream, upstream: Upstream, result: &mut ConnectionResult) {
    let bytes = result.bytes();
    let (up, down) = (&bytes.client_to_server, &bytes.server_to_client);
    // The copy is polled here, beside the report ticker (not moved into a wrapper future,
    // which would make the connection's task hold it twice).
    let mut tick = proxycore::connection::report_ticker();
    match upstream {
        Upstream::Hbone(stream) => {
            let copy = hbone::copy_counted(downstream, stream, up, down);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    r = &mut copy => {
                        if let Err((_, e)) = r {
                            result.fail("CONNECT", e);
                        }
                        return;
                    }
                    _ = tick.tick() => result.report(),
                }
            }
        }
        Upstream::Tcp(mut tcp) => {
            let copy = socket::copy_plain(downstream, &mut tcp, up, down);
            tokio::pin!(copy);
            loop {
                tokio::select! {
                    r = &mut copy => {
                        if let Err(e) = r {
                            result.fail("CONNECT", e);
                        }
                        return;
                    }
                    _ = tick.tick() => result.report(),
                }
            }
        }
    }
}
