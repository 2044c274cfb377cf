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
//! It runs on the shared runtime (`proxycore`): workload state and certificates from the
//! control plane, the HBONE pool, admin, readiness, metrics and drain. Its L7 resources are
//! its own ([`store`]). The README lists which file does what.

mod accesslog;
mod balance;
mod body;
mod breaker;
mod config;
mod error;
mod forward;
mod h1;
pub mod ingress;
mod inspect;
mod intake;
mod jwks;
mod metrics;
mod origin;
mod outlier;
mod plan;
mod process;
mod serve;
mod store;
mod trace;
mod upstream;

use proxycore::config::Config;
use proxycore::runtime::Runtime;

use crate::config::L7Config;

use crate::process::Waypoint;

/// Entry points for the fuzz targets (`fuzz/`): parsers that face a client's bytes.
#[doc(hidden)]
pub mod fuzzing {
    /// The HTTP/1.1 request-head parser of the waypoint's own server.
    pub fn http1_head(bytes: &[u8]) {
        super::serve::parse_for_fuzzing(bytes)
    }
}

/// Runs a waypoint: what the `waypoint` binary does. Besides WDS it subscribes to
/// Keelson's HTTPRoute, VirtualService, DestinationRule and AuthorizationPolicy types, kept
/// in its own store.
pub async fn run(cfg: Config) -> anyhow::Result<()> {
    let config = L7Config::default();
    let mut builder = Runtime::builder("waypoint", cfg);
    for s in config.store.subscriptions(false) {
        builder = builder.subscribe(s);
    }
    let mut rt = builder.build()?;
    let waypoint = Waypoint::new(rt.dedicated_inputs(), config);
    waypoint.metrics.register(rt.registry());
    waypoint.tracer.register(rt.registry());
    intake::start(&waypoint)?;
    trace::start(&waypoint);
    jwks::start(&waypoint);
    rt.readiness.done("proxy");
    rt.ready_with_certificate(&waypoint.pi);
    rt.serve(move |req| {
        inspect::admin(&waypoint, req)
            .unwrap_or_else(|| proxycore::admin::admin_response(&waypoint.pi, None, req))
    })
    .await
}
