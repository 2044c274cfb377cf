//! Why the waypoint could not carry a request or a tunnel to an endpoint. This is the one
//! place where such a failure becomes wire behaviour and a record: the status code and
//! body the client gets, the Istio response flag of the metrics and access line, the
//! detail logged, and what the retry policy sees.

use http::{HeaderValue, Response, StatusCode};
use l7::retry::Outcome;

use crate::body::{text, Body};
use crate::h1::BoxError;

#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// A route's destination names no known service or subset (`NC`).
    #[error("{0}")]
    NoCluster(String),
    /// A TCP route matched but picked no destination (`NR`).
    #[error("no destination")]
    NoDestination,
    /// No healthy endpoint, or the endpoint has no address (`UH`).
    #[error("{0}")]
    NoHealthyUpstream(String),
    /// The tunnel to the endpoint did not open (`UF`).
    #[error("upstream connect error: {0}")]
    ConnectFailed(String),
    /// Connected, but no response came: reset or closed (`UC`), or what came is not HTTP
    /// (`UPE`).
    #[error("upstream connect error or disconnect/reset before headers: {0}")]
    Reset(BoxError),
    /// A DestinationRule connection-pool limit (`UO`): the request is not sent, and not
    /// retried.
    #[error("upstream connect error or disconnect/reset before headers. reset reason: overflow")]
    Overflow,
    /// The route's timeout, retries included, or one try's (`UT`).
    #[error("upstream request timeout")]
    Timeout,
    /// The client's request body could not be read (`DPE`).
    #[error("reading the request: {0}")]
    RequestBody(String),
}

impl Failure {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Failure::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Failure::RequestBody(_) => StatusCode::BAD_REQUEST,
            _ => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The Istio response flag.
    pub fn flag(&self) -> &'static str {
        match self {
            Failure::NoCluster(_) => "NC",
            Failure::NoDestination => "NR",
            Failure::NoHealthyUpstream(_) => "UH",
            Failure::ConnectFailed(_) => "UF",
            Failure::Reset(e)
                if matches!(e.downcast_ref(), Some(crate::h1::Error::Malformed(_))) =>
            {
                // A response that is not HTTP: Envoy's upstream protocol error.
                "UPE"
            }
            Failure::Reset(_) => "UC",
            Failure::Overflow => "UO",
            Failure::Timeout => "UT",
            Failure::RequestBody(_) => "DPE",
        }
    }

    /// What the retry policy sees of a try that failed this way.
    pub fn outcome(&self) -> Outcome {
        match self {
            Failure::ConnectFailed(_) => Outcome::ConnectFailure,
            Failure::Reset(e) if refused_stream(e) => Outcome::RefusedStream,
            Failure::Reset(_) => Outcome::Reset,
            Failure::Timeout => Outcome::Timeout,
            _ => Outcome::Response {
                status: self.status().as_u16(),
                grpc: None,
            },
        }
    }

    /// Whether a retry may follow (a circuit breaker's answer is final).
    pub fn retriable(&self) -> bool {
        !matches!(self, Failure::Overflow)
    }

    /// The response the client gets.
    pub fn response(&self) -> Response<Body> {
        let mut resp = text(self.status(), &self.to_string());
        if let Failure::Overflow = self {
            resp.headers_mut()
                .insert("x-envoy-overloaded", HeaderValue::from_static("true"));
        }
        resp
    }
}

/// Whether an HTTP/2 endpoint refused the request's stream (REFUSED_STREAM: nothing of it
/// was processed), which `retryOn: refused-stream` retries.
fn refused_stream(e: &BoxError) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e.as_ref());
    while let Some(s) = source {
        if let Some(h2) = s.downcast_ref::<h2::Error>() {
            return h2.reason() == Some(h2::Reason::REFUSED_STREAM);
        }
        source = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_failure_has_one_status_flag_and_outcome() {
        let overflow = Failure::Overflow;
        assert_eq!(overflow.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(overflow.flag(), "UO");
        assert!(!overflow.retriable());
        assert_eq!(
            overflow.response().headers()["x-envoy-overloaded"],
            HeaderValue::from_static("true")
        );
        let timeout = Failure::Timeout;
        assert_eq!(timeout.status(), StatusCode::GATEWAY_TIMEOUT);
        assert!(matches!(timeout.outcome(), Outcome::Timeout));
        let connect = Failure::ConnectFailed("refused".into());
        assert_eq!(connect.flag(), "UF");
        assert!(matches!(connect.outcome(), Outcome::ConnectFailure));
        let malformed = Failure::Reset(Box::new(crate::h1::Error::Malformed("x".into())));
        assert_eq!(malformed.flag(), "UPE");
        assert!(matches!(malformed.outcome(), Outcome::Reset));
        assert_eq!(
            Failure::RequestBody("eof".into()).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
