//! Compiles proto/*.proto with protox (pure Rust: no system protoc needed) and generates the
//! prost types and tonic services from the descriptor set.

const PROTOS: &[&str] = &[
    "proto/workload.proto",
    "proto/authorization.proto",
    "proto/ca.proto",
    "proto/zds.proto",
    "proto/discovery.proto",
    "proto/l7.proto",
    "proto/otlp_trace.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let fds = protox::compile(PROTOS, ["proto"])?;
    tonic_build::configure()
        // Maps as BTreeMap: a resource encodes to the same bytes every time, so its version
        // (a hash of them) only changes when it does. With HashMap the order of a workload's
        // `services` was random per build, and every rebuild re-pushed such workloads.
        .btree_map(["."])
        .build_client(true)
        .build_server(true)
        .build_transport(false)
        .compile_fds(fds)?;
    for p in PROTOS {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
