//! Keelson's CNI plugin (`keelson-cni`) and node agent. The container runtime calls the plugin
//! on pod creation and deletion; the plugin asks the node agent, which decides enrolment,
//! installs the in-pod redirection and hands the pod's network namespace to the node's
//! ztunnel over ZDS (docs/WIRE.md §5).
#![deny(unsafe_code)]

pub mod agent;
pub mod install;
pub mod invoke;
pub mod lookup;
pub mod redirect;
pub mod spec;
