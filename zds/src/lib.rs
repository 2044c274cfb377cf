//! ZDS (docs/WIRE.md §5): how a node agent hands pods' network namespaces to the node's
//! ztunnel. `socket` is the unix SOCK_SEQPACKET transport with one descriptor passed per
//! message; `client` is ztunnel's side (each request checked, then acted on and acked);
//! `server` is the node agent's side (its pod cache replayed as a snapshot to every ztunnel
//! that connects, then pod events forwarded).

pub mod client;
pub mod server;
pub mod socket;
