//! Keelson's control plane: Kubernetes resources (read from the YAML files one would
//! `kubectl apply`) translated into WDS `Address` and `Authorization` resources, served over
//! delta ADS together with the certificate service.
#![forbid(unsafe_code)]

pub mod authz;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod token;
pub mod wds;
