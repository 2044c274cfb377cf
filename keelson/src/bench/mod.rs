//! `keelson bench`: each benchmark runs a no-proxy baseline in the same run and reports
//! ratios and percentiles (docs/BENCHMARKS.md). `l4`: two pods, direct and through two
//! ztunnels; `l7`: HTTP through a waypoint on the local mesh; `stats`: what both measure with.

pub mod l4;
pub mod l7;
pub mod stats;

pub use l4::{
    run_l4, run_scaling, run_workloads, scaling_table, table, workloads_table, BenchOptions, Report,
};
