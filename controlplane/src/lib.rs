//! Keelson's control plane: Kubernetes resources (read from the YAML files one would
//! `kubectl apply`, or from the API server) translated into WDS `Address` and `Authorization` resources, served over
//! delta ADS together with the certificate service.
#![forbid(unsafe_code)]

pub mod authz;
pub mod ingress;
pub mod kube_source;
pub mod review;
pub mod run;
pub mod server;
pub mod snapshot;
pub mod token;
pub mod waypoints;
pub mod wds;
