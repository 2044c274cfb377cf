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

/// A response body whose size is not known ahead: its bytes are counted as they pass and
/// given to `observe` (with `base`, the head's size) once it ends or is dropped.
pub struct Counted {
    body: Body,
    bytes: u64,
    observe: Option<prometheus_client::metrics::histogram::Histogram>,
}

impl Counted {
    pub fn wrap(
        body: Body,
        base: u64,
        observe: prometheus_client::metrics::histogram::Histogram,
    ) -> Body {
        BodyExt::boxed(Counted {
            body,
            bytes: base,
            observe: Some(observe),
        })
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(h) = self.observe.take() {
            h.observe(self.bytes as f64);
        }
    }
}

impl hyper::body::Body for Counted {
    type Data = Bytes;
    type Error = crate::h1::BoxError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, Self::Error>>> {
        let me = self.get_mut();
        let polled = std::pin::Pin::new(&mut me.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                me.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}
