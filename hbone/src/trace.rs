//! Trace context (W3C Trace Context, https://www.w3.org/TR/trace-context/, and B3,
//! https://github.com/openzipkin/b3-propagation) as it comes in on a request: read by the
//! waypoint for its spans and by ztunnel for the CONNECT request's `traceparent`
//! (docs/OBSERVABILITY.md).

use http::{HeaderMap, HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
pub const B3: HeaderName = HeaderName::from_static("b3");
pub const B3_TRACE: HeaderName = HeaderName::from_static("x-b3-traceid");
pub const B3_SPAN: HeaderName = HeaderName::from_static("x-b3-spanid");
pub const B3_PARENT: HeaderName = HeaderName::from_static("x-b3-parentspanid");
pub const B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
pub const B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// A trace context read from a request.
#[derive(Debug, Clone, PartialEq)]
pub struct Parent {
    pub trace_id: [u8; 16],
    /// The caller's span; `None` for a B3 context with only a trace id and decision.
    pub span_id: Option<[u8; 8]>,
    /// The caller's sampling decision, when it made one.
    pub sampled: Option<bool>,
    pub state: Option<HeaderValue>,
}

pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}

/// Lower- or upper-case hex of exactly `N` bytes.
pub fn unhex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.as_bytes().chunks(2).enumerate() {
        let d = |c: u8| (c as char).to_digit(16);
        out[i] = (d(pair[0])? * 16 + d(pair[1])?) as u8;
    }
    Some(out)
}

/// A B3 trace id: 128 bits, or 64 (the high half zero).
fn b3_trace_id(s: &str) -> Option<[u8; 16]> {
    if s.len() == 16 {
        let low = unhex::<8>(s)?;
        let mut id = [0u8; 16];
        id[8..].copy_from_slice(&low);
        return Some(id);
    }
    unhex::<16>(s)
}

fn b3_decision(s: &str) -> Option<bool> {
    match s {
        "1" | "true" | "d" => Some(true),
        "0" | "false" => Some(false),
        _ => None,
    }
}

pub fn nonzero<const N: usize>(id: [u8; N]) -> Option<[u8; N]> {
    (id != [0u8; N]).then_some(id)
}

/// W3C Trace Context (`traceparent`, `tracestate`), else B3 single, else B3 multi. A
/// malformed header is ignored, as if absent.
pub fn parent(headers: &HeaderMap) -> Option<Parent> {
    let text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    if let Some(tp) = text(&TRACEPARENT) {
        let mut parts = tp.trim().split('-');
        let (v, t, s, f) = (parts.next()?, parts.next(), parts.next(), parts.next());
        // Version ff is invalid; a later version may add fields after these four.
        if v.len() == 2 && v != "ff" && unhex::<1>(v).is_some() {
            if let (Some(t), Some(s), Some(f)) = (t, s, f) {
                let trace_id = unhex::<16>(t).and_then(nonzero);
                let span_id = unhex::<8>(s).and_then(nonzero);
                let flags = unhex::<1>(f);
                if let (Some(trace_id), Some(span_id), Some(flags)) = (trace_id, span_id, flags) {
                    return Some(Parent {
                        trace_id,
                        span_id: Some(span_id),
                        sampled: Some(flags[0] & 1 == 1),
                        state: headers.get(&TRACESTATE).cloned(),
                    });
                }
            }
        }
    }
    if let Some(b3) = text(&B3) {
        let mut parts = b3.trim().split('-');
        let first = parts.next().unwrap_or_default();
        if let Some(span) = parts.next() {
            let trace_id = b3_trace_id(first).and_then(nonzero);
            let span_id = unhex::<8>(span).and_then(nonzero);
            if let (Some(trace_id), Some(span_id)) = (trace_id, span_id) {
                return Some(Parent {
                    trace_id,
                    span_id: Some(span_id),
                    sampled: parts.next().and_then(b3_decision),
                    state: None,
                });
            }
        }
    }
    let trace_id = text(&B3_TRACE).and_then(b3_trace_id).and_then(nonzero)?;
    let sampled = if text(&B3_FLAGS) == Some("1") {
        Some(true)
    } else {
        text(&B3_SAMPLED).and_then(b3_decision)
    };
    Some(Parent {
        trace_id,
        span_id: text(&B3_SPAN).and_then(unhex::<8>).and_then(nonzero),
        sampled,
        state: None,
    })
}

/// Random bytes, never all zero (an all-zero id is invalid in both formats).
pub fn nonzero_random<const N: usize>() -> [u8; N] {
    loop {
        let mut id = [0u8; N];
        for b in &mut id {
            *b = rand::random();
        }
        if id != [0u8; N] {
            return id;
        }
    }
}

/// The context as a `traceparent` value, for a hop that makes no span of its own (ztunnel):
/// the caller's span stays the parent. `None` without a span id (a B3 context of only a
/// trace id and decision).
pub fn as_traceparent(p: &Parent) -> Option<String> {
    let span = p.span_id?;
    let flag = if p.sampled == Some(true) { "01" } else { "00" };
    Some(format!("00-{}-{}-{flag}", hex(&p.trace_id), hex(&span)))
}

/// The trace id of a `traceparent` whose sampled flag is set.
pub fn sampled_trace_id(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (_, trace, _, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let sampled = unhex::<1>(flags).is_some_and(|f| f[0] & 1 == 1);
    (sampled && unhex::<16>(trace).is_some()).then_some(trace)
}

/// The trace context of an HTTP/1.x request whose head starts `bytes` (what ztunnel sees
/// of a plaintext stream before forwarding it). Only the head's fields are read; `None`
/// when the bytes are not an HTTP/1.x request head or carry no context.
pub fn from_http1_head(bytes: &[u8]) -> Option<Parent> {
    let text = std::str::from_utf8(bytes).ok().or_else(|| {
        // A head cut inside a multi-byte character: the part before it.
        let valid = std::str::from_utf8(bytes).err()?.valid_up_to();
        std::str::from_utf8(&bytes[..valid]).ok()
    })?;
    let mut lines = text.split("\r\n");
    let request = lines.next()?;
    let mut parts = request.split(' ');
    let method = parts.next()?;
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return None;
    }
    if !parts.nth(1).is_some_and(|v| v.starts_with("HTTP/1.")) {
        return None;
    }
    let mut headers = HeaderMap::new();
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let name = name.trim();
        let wanted = [
            &TRACEPARENT,
            &TRACESTATE,
            &B3,
            &B3_TRACE,
            &B3_SPAN,
            &B3_SAMPLED,
            &B3_FLAGS,
        ];
        if let Some(h) = wanted
            .iter()
            .find(|h| h.as_str().eq_ignore_ascii_case(name))
        {
            if let Ok(v) = HeaderValue::from_str(value.trim()) {
                headers.insert((*h).clone(), v);
            }
        }
    }
    parent(&headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_head_gives_its_context() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let head = format!("GET /x HTTP/1.1\r\nHost: a\r\nTraceParent: {tp}\r\n\r\nbody");
        let p = from_http1_head(head.as_bytes()).unwrap();
        assert_eq!(as_traceparent(&p).unwrap(), tp);
        // Cut before the end of the head: the fields read so far count.
        let p = from_http1_head(&head.as_bytes()[..head.find("\r\n\r\n").unwrap()]).unwrap();
        assert_eq!(p.sampled, Some(true));
        let b3 =
            "GET / HTTP/1.1\r\nb3: 4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\r\n\r\n";
        let p = from_http1_head(b3.as_bytes()).unwrap();
        assert!(as_traceparent(&p).unwrap().ends_with("-00"));
        for not in [
            "\x16\x03\x01\x02\x00".as_bytes(),
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
            b"hello",
        ] {
            assert!(from_http1_head(not).is_none(), "{not:?}");
        }
    }
}
