//! A certificate request to the control plane's CA: decoded, and its CSR signed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use prost::Message;
use std::sync::OnceLock;

fn ca() -> &'static identity::LocalCa {
    static CA: OnceLock<identity::LocalCa> = OnceLock::new();
    CA.get_or_init(|| {
        identity::LocalCa::generate("cluster.local", std::time::Duration::from_secs(3600)).unwrap()
    })
}

fuzz_target!(|data: &[u8]| {
    let csr = match xds::ca::IstioCertificateRequest::decode(data) {
        Ok(req) => req.csr,
        Err(_) => String::from_utf8_lossy(data).into_owned(),
    };
    let id = identity::Identity::new("cluster.local", "default", "fuzz");
    let _ = ca().sign_csr(&csr, &id, std::time::Duration::from_secs(3600));
});
