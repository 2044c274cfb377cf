//! A ZDS message from the node agent: decoded and checked as ztunnel checks it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = xds::workload::zds::WorkloadRequest::decode(data) {
        let _ = zds::client::check(req.clone(), None, false);
        let _ = zds::client::check(req, None, true);
    }
});
