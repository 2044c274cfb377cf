//! Keelson's control plane. This release holds the translation of Kubernetes resources (read
//! from the YAML files one would `kubectl apply`) into WDS `Address` resources; the xDS server
//! and the CA come next.
#![forbid(unsafe_code)]

pub mod k8s;
pub mod wds;
