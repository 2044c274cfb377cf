//! The `keelson` command's library: the local mesh, the bundled demo apps and the
//! benchmarks (`bench l4` on the tests' namespace testbed, `tests/testbed/`).
#![forbid(unsafe_code)]

pub mod apps;
pub mod bench;
pub mod install;
pub mod mesh;
