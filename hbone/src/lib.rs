//! HBONE: HTTP/2 CONNECT over mutual TLS with SPIFFE identities (istio-wire.md §1).
//!
//! - [`tls`]: rustls configurations and the identity checks on both sides;
//! - [`client`]: handshake to a peer's 15008 and CONNECT requests;
//! - [`server`]: serving one accepted connection, one handler call per CONNECT stream;
//! - [`stream`]: copying between a TCP socket and a CONNECT stream, half-close and reset aware;
//! - [`pool`]: pooled client connections.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod error;
mod keepalive;
pub mod pool;
pub mod server;
pub mod stream;
pub mod tls;

pub use client::{ConnectRequest, Connection};
pub use config::H2Config;
pub use error::HboneError;
pub use pool::{Pool, PoolKey, PoolStats};
pub use stream::{copy_bidirectional, CopyError, CopyStats, H2Stream};

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;
