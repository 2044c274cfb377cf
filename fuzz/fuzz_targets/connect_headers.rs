//! The CONNECT `:authority` and the `forwarded` header, as ztunnel and the waypoint read them.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Some((host, port)) = hbone::headers::split_host_port(s) {
        assert!(port != 0 && !host.is_empty() && host.len() <= 253);
    }
    let _ = s.parse::<std::net::SocketAddr>();
    let _ = hbone::headers::forwarded_host(s);
    let _ = hbone::headers::forwarded_for(s);
});
