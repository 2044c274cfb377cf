//! HTTP/2 settings of HBONE (docs/WIRE.md §1.3). Each value is overridable by the ztunnel
//! environment variable named in its doc comment.

use std::time::Duration;

#[derive(Debug, Clone, serde::Serialize)]
pub struct H2Config {
    /// `HTTP2_STREAM_WINDOW_SIZE`: SETTINGS_INITIAL_WINDOW_SIZE, 4 MiB.
    pub stream_window: u32,
    /// `HTTP2_CONNECTION_WINDOW_SIZE`: connection-level window, 16 MiB.
    pub connection_window: u32,
    /// `HTTP2_FRAME_SIZE`: SETTINGS_MAX_FRAME_SIZE, 1 MiB.
    pub frame_size: u32,
    /// `POOL_MAX_STREAMS_PER_CONNECTION`: streams used per pooled client connection, 100.
    pub pool_max_streams: u32,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised by the server, 200.
    pub server_max_streams: u32,
    /// PING interval; a PING unanswered for `keepalive_timeout` drops the connection.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// `POOL_UNUSED_RELEASE_TIMEOUT`: idle pooled connections are closed after this, 5 min.
    pub pool_idle_timeout: Duration,
    /// Budgets on the server side for frames that cost work but carry no request.
    pub frames: crate::guard::FrameLimits,
}

pub const CLIENT_MAX_HEADER_LIST: u32 = 16 * 1024;
pub const SERVER_MAX_HEADER_LIST: u32 = 64 * 1024;
pub const SERVER_SEND_BUFFER: usize = 400 * 1024;
/// Streams the server may have locally reset for protocol errors before it sends GOAWAY:
/// bounds the work a misbehaving peer can cause (RUSTSEC-2024-0003).
pub const MAX_LOCAL_ERROR_RESETS: usize = 1024;
/// Remotely reset streams queued before accept (Rapid Reset, CVE-2023-44487).
pub const MAX_PENDING_ACCEPT_RESETS: usize = 100;

impl Default for H2Config {
    fn default() -> Self {
        H2Config {
            stream_window: 4 * 1024 * 1024,
            connection_window: 16 * 1024 * 1024,
            frame_size: 1024 * 1024,
            pool_max_streams: 100,
            server_max_streams: 200,
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            pool_idle_timeout: Duration::from_secs(300),
            frames: crate::guard::FrameLimits::default(),
        }
    }
}

impl H2Config {
    pub(crate) fn client_builder(&self) -> h2::client::Builder {
        let mut b = h2::client::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.frame_size)
            .max_header_list_size(CLIENT_MAX_HEADER_LIST)
            .enable_push(false)
            .max_send_buffer_size(self.stream_window as usize)
            .initial_max_send_streams(self.pool_max_streams as usize)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        b
    }

    pub(crate) fn server_builder(&self) -> h2::server::Builder {
        let mut b = h2::server::Builder::new();
        b.initial_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .max_frame_size(self.frame_size)
            .max_header_list_size(SERVER_MAX_HEADER_LIST)
            .max_concurrent_streams(self.server_max_streams)
            .max_send_buffer_size(SERVER_SEND_BUFFER)
            .max_pending_accept_reset_streams(MAX_PENDING_ACCEPT_RESETS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS));
        b
    }
}
