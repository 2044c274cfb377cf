//! The DNS proxy's query parser, and an answer built for what it parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = ztunnel::dns::parse_query(data) {
        let ip = std::net::IpAddr::from([10, 0, 0, 1]);
        let out = ztunnel::dns::response(data, &q, 0, &[ip], true);
        assert!(out.len() <= 65_535);
        let _ = ztunnel::dns::candidates(&q.name, "default", "cluster.local");
    }
});
