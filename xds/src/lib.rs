//! Wire types of Istio's ambient data plane, generated from Keelson's own `.proto` files
//! (`proto/`), written from the field tables of docs/WIRE.md §3–§5: package names and field
//! numbers are Istio's (and Envoy's, for delta xDS), so the bytes on the wire are the same.
#![allow(clippy::all, missing_docs, rust_2018_idioms)]

/// `istio.workload`: `Address`, `Workload`, `Service` and friends (WDS).
pub mod workload {
    tonic::include_proto!("istio.workload");

    /// `istio.workload.zds`: the CNI node agent ↔ ztunnel protocol.
    pub mod zds {
        tonic::include_proto!("istio.workload.zds");
    }
}

/// `istio.security`: L4 `Authorization` policies.
pub mod security {
    tonic::include_proto!("istio.security");
}

/// `istio.v1.auth`: the certificate service.
pub mod ca {
    tonic::include_proto!("istio.v1.auth");
}

/// `envoy.service.discovery.v3`: delta ADS.
pub mod discovery {
    tonic::include_proto!("envoy.service.discovery.v3");
}

/// Keelson's L7 types for waypoints (not Istio's).
pub mod l7 {
    tonic::include_proto!("keelson.l7.v1");
}

/// OTLP trace export (`opentelemetry.proto.collector.trace.v1`): the spans waypoints send to
/// a collector (docs/OBSERVABILITY.md).
pub mod otlp {
    tonic::include_proto!("opentelemetry.proto.collector.trace.v1");
}

/// Type URLs (docs/WIRE.md §3.2), and Keelson's own L7 types for waypoints.
pub mod type_url {
    /// Keelson's HTTPRoute for waypoints.
    pub const HTTP_ROUTE: &str = "type.googleapis.com/keelson.l7.v1.HTTPRoute";
    /// Keelson's VirtualService for waypoints.
    pub const VIRTUAL_SERVICE: &str = "type.googleapis.com/keelson.l7.v1.VirtualService";
    /// Keelson's DestinationRule (subsets resolved) for waypoints.
    pub const DESTINATION_RULE: &str = "type.googleapis.com/keelson.l7.v1.DestinationRule";
    /// Keelson's waypoint-attached AuthorizationPolicy (attachments resolved).
    pub const WAYPOINT_POLICY: &str = "type.googleapis.com/keelson.l7.v1.AuthorizationPolicy";
    /// Keelson's waypoint-attached RequestAuthentication (JWKS and attachments resolved).
    pub const REQUEST_AUTHENTICATION: &str =
        "type.googleapis.com/keelson.l7.v1.RequestAuthentication";
    /// Keelson's resolved ingress gateway, for ingress gateway proxies.
    pub const INGRESS_GATEWAY: &str = "type.googleapis.com/keelson.l7.v1.IngressGateway";
    /// Keelson's tracing settings (mesh config providers and Telemetry resolved).
    pub const TRACING: &str = "type.googleapis.com/keelson.l7.v1.Tracing";
    pub const ADDRESS: &str = "type.googleapis.com/istio.workload.Address";
    pub const AUTHORIZATION: &str = "type.googleapis.com/istio.security.Authorization";
    pub const WORKLOAD: &str = "type.googleapis.com/istio.workload.Workload";
}

#[cfg(test)]
mod tests;
