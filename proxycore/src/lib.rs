//! What Keelson's two proxies, ztunnel and the waypoint, run on: configuration from the
//! environment, the workload store and the xDS client that fills it, the CA client and the
//! certificate store, the admin, metrics and readiness servers, drain, batched logging and
//! socket helpers. [`runtime::Runtime`] wires them; each proxy then binds its own listeners.
//! See ARCHITECTURE.md for what may import what.
#![forbid(unsafe_code)]

pub mod admin;
pub mod ca_client;
pub mod config;
pub mod connection;
pub mod drain;
pub mod grpc;
mod inputs;
pub mod listen;
pub mod logbuf;
pub mod metrics;
pub mod ratelog;
pub mod rbac;
pub mod runtime;
pub mod socket;
pub mod state;
pub mod xds_client;

pub use inputs::{ProxyError, ProxyInputs};
