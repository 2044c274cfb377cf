//! L7 configuration for waypoints, shared by the control plane (types, validation) and the
//! waypoint (selection): Gateway API `HTTPRoute` with its precedence-sorted route table
//! (l7-semantics.md §3, §5), Istio `VirtualService` and `DestinationRule` with first-match
//! rule tables (§1, §2), and retry policies for both.

pub mod httproute;
pub mod istio;
pub mod retry;
pub mod table;
pub mod vsroute;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_istio;
