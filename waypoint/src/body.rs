//! The body type of every request and response the waypoint handles, and the small
//! responses it makes itself.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};

pub type Body = BoxBody<Bytes, crate::h1::BoxError>;

/// A `text/plain` response of `msg` and a newline.
pub fn text(status: StatusCode, msg: &str) -> Response<Body> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .body(full(Bytes::from(format!("{msg}\n"))))
        .unwrap()
}

/// A body of `b`, whole.
pub fn full(b: Bytes) -> Body {
    Full::new(b).map_err(|never| match never {}).boxed()
}
