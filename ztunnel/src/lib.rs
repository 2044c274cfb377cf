//! Keelson's ztunnel: the node proxy of Istio ambient mode, on the shared runtime
//! (`proxycore`). See ARCHITECTURE.md for the path of a connection through these modules.
#![forbid(unsafe_code)]

pub mod app;
pub mod dns;
mod inpod;
pub mod proxy;
