//! L7 configuration for waypoints: Gateway API `HTTPRoute` (types and validation, shared by
//! the control plane and the waypoint) and the route table the waypoint selects rules from,
//! following l7-semantics.md §3 and §5.

pub mod httproute;
pub mod table;

#[cfg(test)]
mod tests;
