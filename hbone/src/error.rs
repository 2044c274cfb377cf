//! HBONE errors, tagged by who caused them; the one place where they become wire behaviour.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum HboneError {
    #[error("connect to {addr}: {source}")]
    Connect {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("connect to {0} timed out (maybe a NetworkPolicy is blocking HBONE port 15008)")]
    ConnectTimeout(std::net::SocketAddr),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("handshake not complete within the handshake timeout")]
    HandshakeTimeout,
    #[error("handshake shed ({0}): too many connections in handshake")]
    HandshakeShed(&'static str),
    #[error("peer over its HTTP/2 {0} budget: GOAWAY ENHANCE_YOUR_CALM")]
    Flood(&'static str),
    #[error("TLS configuration: {0}")]
    TlsConfig(#[from] rustls::Error),
    #[error("HTTP/2 handshake: {0}")]
    H2Handshake(h2::Error),
    #[error("HTTP/2: {0}")]
    H2(#[from] h2::Error),
    #[error("peer answered CONNECT with status {0}")]
    Status(StatusCode),
    #[error("certificate: {0}")]
    Cert(#[from] identity::CertError),
    #[error("peer presented no SPIFFE identity")]
    NoPeerIdentity,
    #[error("bad CONNECT request: {0}")]
    BadRequest(String),
    #[error("peer allows no streams (SETTINGS_MAX_CONCURRENT_STREAMS 0)")]
    NoStreams,
}

impl HboneError {
    /// The Istio response flag this error is reported with in metrics and access logs.
    pub fn response_flag(&self) -> &'static str {
        match self {
            HboneError::ConnectTimeout(_) => "NETWORK_POLICY",
            HboneError::Connect { .. } => "CONNECT",
            HboneError::Tls(_)
            | HboneError::TlsConfig(_)
            | HboneError::NoPeerIdentity
            | HboneError::HandshakeTimeout
            | HboneError::HandshakeShed(_) => "TLS_FAILURE",
            HboneError::Flood(_) => "OVERLOAD",
            HboneError::H2Handshake(_) => "H2_HANDSHAKE_FAILURE",
            HboneError::Cert(_) => "IDENTITY_ERROR",
            HboneError::Status(s) if *s == StatusCode::UNAUTHORIZED => "DENY",
            HboneError::Status(_)
            | HboneError::H2(_)
            | HboneError::BadRequest(_)
            | HboneError::NoStreams => "CONNECT",
        }
    }

    /// Whether a new connection might succeed where this one failed.
    pub fn is_retryable_on_new_connection(&self) -> bool {
        match self {
            HboneError::NoStreams => true,
            HboneError::H2(e) => {
                e.is_go_away() || e.is_io() || e.reason() == Some(h2::Reason::REFUSED_STREAM)
            }
            _ => false,
        }
    }
}
