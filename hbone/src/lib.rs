//! HBONE: HTTP/2 CONNECT over mutual TLS with SPIFFE identities (docs/WIRE.md §1).
//!
//! - [`tls`]: rustls configurations and the identity checks on both sides;
//! - [`client`]: handshake to a peer's 15008 and CONNECT requests;
//! - [`server`]: serving one accepted connection, one handler call per CONNECT stream;
//! - [`stream`]: copying between a TCP socket and a CONNECT stream, half-close and reset aware;
//! - [`pool`]: pooled client connections.
#![forbid(unsafe_code)]

pub mod admission;
pub mod client;
pub mod config;
pub mod error;
pub mod guard;
pub mod headers;
pub mod io;
mod keepalive;
pub mod pool;
pub mod server;
pub mod stream;
pub mod tls;
pub mod trace;

pub use admission::{HandshakeLimits, Handshakes};
pub use client::{ConnectRequest, Connection};
pub use config::H2Config;
pub use error::HboneError;
pub use pool::{Pool, PoolKey, PoolStats};
pub use stream::{copy_bidirectional, copy_counted, CopyError, CopyStats, Counter, H2Stream};

/// Read buffer under TLS: rustls reads at most 4 KiB per call, so without it every 16 KiB
/// record costs four or more `read` syscalls.
pub const TLS_READ_BUFFER: usize = 64 * 1024;

/// Encrypted bytes rustls may queue before the socket write: the default (64 KiB) makes
/// every flush a `writev` of only four records.
pub const TLS_WRITE_BUFFER: usize = 512 * 1024;

/// The HBONE port.
pub const HBONE_PORT: u16 = 15008;
