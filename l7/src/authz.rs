//! Istio `AuthorizationPolicy` (security.istio.io/v1): the spec, shared with the control
//! plane (which turns selector and namespace policies into ztunnel's L4 policies), and its
//! evaluation at a waypoint (docs/WIRE.md §8): the policies attached by `targetRefs`,
//! judged CUSTOM, then DENY, then ALLOW (AP-07), on every source, operation and condition
//! field.

mod eval;
mod spec;

pub use eval::*;
pub use spec::*;

#[cfg(test)]
mod tests;
