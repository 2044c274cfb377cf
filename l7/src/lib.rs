//! L7 configuration for waypoints, shared by the control plane (types, validation) and the
//! waypoint (selection): Gateway API `HTTPRoute` with its precedence-sorted route table
//! (docs/WIRE.md §8), Istio `VirtualService` and `DestinationRule` with first-match
//! rule tables, and retry policies for both.

pub mod authn;
pub mod authz;
pub mod gateway;
pub mod grpcroute;
pub mod httproute;
pub mod istio;
pub mod jwt;
pub mod locality;
pub mod retry;
pub mod table;
pub mod telemetry;
pub mod vsroute;

/// A redirect's status code, as both APIs allow it (GW-26, VS-47; each has its own
/// default): `Err` names `field`.
pub fn check_redirect_code(field: &str, code: u16) -> Result<(), String> {
    if [301, 302, 303, 307, 308].contains(&code) {
        Ok(())
    } else {
        Err(format!("{field}: {code} is not 301, 302, 303, 307 or 308"))
    }
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_istio;
