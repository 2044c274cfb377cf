//! Everything the waypoint process keeps, in one place: built at start and passed down to
//! each tunnel and request.

use std::sync::Arc;

use proxycore::ProxyInputs;

use crate::balance::Balancer;
use crate::breaker::Breakers;
use crate::config::L7Config;
use crate::forward::H2Upstreams;
use crate::h1::Kept;
use crate::metrics::HttpMetrics;
use crate::outlier::Outliers;

pub struct Waypoint {
    /// The waypoint's own workload, the workload state, certificates and HBONE pool.
    pub pi: Arc<ProxyInputs>,
    /// The L7 resources and the route tables built from them.
    pub config: L7Config,
    /// `istio_requests_total` and `istio_request_duration_milliseconds`.
    pub metrics: HttpMetrics,
    /// DestinationRule connection pools: the requests admitted per cluster.
    pub breakers: Breakers,
    /// DestinationRule outlier detection: the endpoints ejected per cluster.
    pub outliers: Outliers,
    /// Requests in flight per endpoint and round-robin turns (DestinationRule load balancer).
    pub balancer: Balancer,
    /// Shared HTTP/2 connections to endpoints.
    pub h2: H2Upstreams,
    /// Idle HTTP/1.1 connections to endpoints, kept for reuse.
    pub kept: Arc<Kept>,
    /// Spans waiting for the collector.
    pub tracer: crate::trace::Tracer,
}

impl Waypoint {
    pub fn new(pi: Arc<ProxyInputs>, config: L7Config) -> Arc<Waypoint> {
        Arc::new(Waypoint {
            pi,
            config,
            metrics: HttpMetrics::default(),
            breakers: Breakers::default(),
            outliers: Outliers::default(),
            balancer: Balancer::default(),
            h2: H2Upstreams::default(),
            kept: Arc::default(),
            tracer: crate::trace::Tracer::default(),
        })
    }
}
