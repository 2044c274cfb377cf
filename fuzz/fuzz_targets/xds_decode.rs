//! WDS `Address` and `Authorization` resources from the control plane: decoded, then
//! converted strictly into ztunnel's store types.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(a) = xds::workload::Address::decode(data) {
        let _ = proxycore::state::wds::convert_address("fuzz", a);
    }
    if let Ok(p) = xds::security::Authorization::decode(data) {
        let _ = proxycore::rbac::convert(p);
    }
    let _ = xds::discovery::DeltaDiscoveryResponse::decode(data);
    let _ = xds::discovery::DeltaDiscoveryRequest::decode(data);
});
