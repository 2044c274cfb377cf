//! The waypoint's HTTP/1.1 request-head parser on a client's bytes (pipelined requests).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    waypoint::fuzzing::http1_head(data);
});
