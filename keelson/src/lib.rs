//! The `keelson` command's library: the network-namespace testbed and the benchmarks.
#![forbid(unsafe_code)]

pub mod bench;
pub mod testbed;
