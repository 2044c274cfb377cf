//! Keelson's ztunnel: the node proxy of Istio ambient mode. See ARCHITECTURE.md for the path
//! of a connection through these modules.
#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod ca_client;
pub mod config;
pub mod connection;
pub mod dns;
pub mod drain;
pub mod grpc;
pub mod inpod;
pub mod logbuf;
pub mod metrics;
pub mod proxy;
pub mod ratelog;
pub mod rbac;
pub mod state;
pub mod xds_client;
