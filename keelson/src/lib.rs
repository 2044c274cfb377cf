//! The `keelson` command's library: the local mesh, the bundled demo apps, the
//! network-namespace testbed and the benchmarks.
#![forbid(unsafe_code)]

pub mod apps;
pub mod bench;
pub mod cni;
pub mod mesh;
pub mod testbed;
