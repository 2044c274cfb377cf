//! The labels and annotations of ambient mode (docs/WIRE.md §7.1) and what they decide.

use crate::{Namespace, Pod};

pub const DATAPLANE_MODE: &str = "istio.io/dataplane-mode";
pub const REDIRECTION: &str = "ambient.istio.io/redirection";
pub const TUNNEL_LABEL: &str = "networking.istio.io/tunnel";
pub const USE_WAYPOINT: &str = "istio.io/use-waypoint";
pub const USE_WAYPOINT_NAMESPACE: &str = "istio.io/use-waypoint-namespace";
pub const WAYPOINT_FOR: &str = "istio.io/waypoint-for";
/// On a waypoint's own pods and Service: the Gateway they implement.
pub const GATEWAY_NAME: &str = "gateway.networking.k8s.io/gateway-name";

/// Whether the pod is enrolled in ambient: the CNI marked it, or it (or its namespace) asks for
/// ambient and it does not opt out.
pub fn is_ambient(pod: &Pod, ns: Option<&Namespace>) -> bool {
    let m = &pod.metadata;
    if m.annotations.get(REDIRECTION).map(String::as_str) == Some("enabled") {
        return true;
    }
    if pod.spec.host_network {
        return false;
    }
    match m.labels.get(DATAPLANE_MODE).map(String::as_str) {
        Some("ambient") => true,
        Some(_) => false,
        None => ns.is_some_and(|n| {
            n.metadata.labels.get(DATAPLANE_MODE).map(String::as_str) == Some("ambient")
        }),
    }
}
