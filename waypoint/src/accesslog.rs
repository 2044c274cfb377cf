//! The per-request access log line, written without going through `tracing`'s formatter:
//! the same text `tracing_subscriber`'s default format gives an `access` event (timestamp,
//! level, target, message, `key=value` fields, `str` values quoted), at about a fifth of the
//! cost (`docs/BENCHMARKS.md`: the formatter was 5 % of the waypoint's CPU). The line is
//! written only when the `access` target is enabled at INFO, and goes into the same batched
//! writer as every other line ([`proxycore::logbuf`]).

use std::cell::RefCell;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// One request's line.
pub struct Request<'a> {
    pub source: &'a str,
    pub destination: &'a str,
    pub method: &'a str,
    pub path: &'a str,
    pub authority: &'a str,
    pub route: &'a str,
    pub upstream: &'a str,
    pub status: u16,
    pub flags: &'a str,
    pub attempts: u32,
    pub duration_ms: u64,
    /// Why it was answered here, when the flags do not say (an authorization denial).
    pub details: Option<&'a str>,
    /// The spans the request is in, outermost first, each a name and its `id`: written as
    /// tracing writes an event's spans, so the line is found by the same grep as the others
    /// of its connection.
    pub spans: &'a [(&'static str, u64)],
}

/// Writes `r` when the access log is on; `json` (`LOG_FORMAT=json`): as a JSON object, as
/// tracing's JSON format writes an `access` event (flattened fields).
pub fn request(r: &Request<'_>, json: bool) {
    if !tracing::enabled!(target: "access", tracing::Level::INFO) {
        return;
    }
    thread_local! {
        static LINE: RefCell<String> = RefCell::new(String::with_capacity(512));
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        if json {
            format_request_json(line, SystemTime::now(), r);
        } else {
            format_request(line, SystemTime::now(), r);
        }
        proxycore::logbuf::append(line.as_bytes());
    });
}

fn format_request(line: &mut String, now: SystemTime, r: &Request<'_>) {
    timestamp(line, now);
    line.push_str("  INFO ");
    for (name, id) in r.spans {
        let _ = write!(line, "{name}{{id={id}}}:");
    }
    if !r.spans.is_empty() {
        line.push(' ');
    }
    line.push_str("access: request src.identity=");
    line.push_str(r.source);
    line.push_str(" destination=");
    line.push_str(r.destination);
    line.push_str(" method=");
    line.push_str(r.method);
    line.push_str(" path=");
    line.push_str(r.path);
    line.push_str(" authority=");
    line.push_str(r.authority);
    line.push_str(" route=");
    line.push_str(r.route);
    line.push_str(" upstream=");
    quoted(line, r.upstream);
    let _ = write!(line, " status={} response_flags=", r.status);
    quoted(line, r.flags);
    if let Some(d) = r.details {
        line.push_str(" details=");
        quoted(line, d);
    }
    let _ = writeln!(
        line,
        " attempts={} duration_ms={}",
        r.attempts, r.duration_ms
    );
}

fn format_request_json(line: &mut String, now: SystemTime, r: &Request<'_>) {
    let mut time = String::new();
    timestamp(&mut time, now);
    let mut v = serde_json::json!({
        "timestamp": time,
        "level": "INFO",
        "message": "request",
        "src.identity": r.source,
        "destination": r.destination,
        "method": r.method,
        "path": r.path,
        "authority": r.authority,
        "route": r.route,
        "upstream": r.upstream,
        "status": r.status,
        "response_flags": r.flags,
        "attempts": r.attempts,
        "duration_ms": r.duration_ms,
        "target": "access",
    });
    if let Some(d) = r.details {
        v["details"] = d.into();
    }
    let span = |(name, id): &(&str, u64)| serde_json::json!({ "id": id, "name": name });
    if let Some(last) = r.spans.last() {
        v["span"] = span(last);
        v["spans"] = r.spans.iter().map(span).collect();
    }
    line.push_str(&v.to_string());
    line.push('\n');
}

/// A `str` value as `tracing_subscriber` writes one: Rust's `Debug` (quoted, escaped).
fn quoted(line: &mut String, s: &str) {
    if s.bytes()
        .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
    {
        line.push('"');
        line.push_str(s);
        line.push('"');
    } else {
        let _ = write!(line, "{s:?}");
    }
}

/// `2026-11-22T17:30:01.123456Z`, as `tracing_subscriber`'s default timer; the part up to
/// the second is kept per thread and rebuilt once a second.
fn timestamp(line: &mut String, now: SystemTime) {
    thread_local! {
        static SECOND: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    SECOND.with_borrow_mut(|(cached, text)| {
        if *cached != secs {
            *cached = secs;
            text.clear();
            let (y, m, d) = civil_from_days((secs / 86_400) as i64);
            let rem = secs % 86_400;
            let _ = write!(
                text,
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.",
                rem / 3600,
                rem % 3600 / 60,
                rem % 60
            );
        }
        line.push_str(text);
    });
    let _ = write!(line, "{:06}Z", since.subsec_micros());
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_414), (2025, 11, 22));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn json_lines_are_objects_with_the_same_fields() {
        let r = Request {
            source: "spiffe://cluster.local/ns/default/sa/curl",
            destination: "details.default.svc.cluster.local:9080",
            method: "GET",
            path: "/\"quoted\"",
            authority: "details:9080",
            route: "-",
            upstream: "details-v1-0",
            status: 403,
            flags: "-",
            attempts: 1,
            duration_ms: 0,
            details: Some("rbac_access_denied"),
            spans: &[("conn", 3), ("stream", 7), ("request", 12)],
        };
        let mut line = String::new();
        format_request_json(&mut line, UNIX_EPOCH, &r);
        assert!(line.ends_with('\n'));
        let v: serde_json::Value = serde_json::from_str(line.trim_end()).unwrap();
        assert_eq!(v["target"], "access");
        assert_eq!(v["src.identity"], r.source);
        assert_eq!(v["path"], "/\"quoted\"");
        assert_eq!(v["status"], 403);
        assert_eq!(v["details"], "rbac_access_denied");
        assert_eq!(v["timestamp"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(v["span"]["id"], 12);
        assert_eq!(v["spans"][1]["name"], "stream");
        // What tracing_subscriber's JSON format writes for the same event in the same spans.
        let theirs = traced(true, &r);
        let mut theirs: serde_json::Value = serde_json::from_str(theirs.trim_end()).unwrap();
        theirs["timestamp"] = v["timestamp"].clone();
        assert_eq!(theirs, v);
    }

    #[test]
    fn the_line_tracing_would_write() {
        let r = Request {
            source: "spiffe://cluster.local/ns/default/sa/curl",
            destination: "details.default.svc.cluster.local:9080",
            method: "GET",
            path: "/details/0?x=1",
            authority: "details:9080",
            route: "default/details",
            upstream: "details-v1-0",
            status: 503,
            flags: "UF",
            attempts: 2,
            duration_ms: 7,
            details: None,
            spans: &[("conn", 3), ("stream", 7), ("request", 12)],
        };
        let mut line = String::new();
        let t = UNIX_EPOCH + Duration::from_micros(1_763_832_601_000_042);
        format_request(&mut line, t, &r);
        assert_eq!(
            line,
            "2025-11-22T17:30:01.000042Z  INFO conn{id=3}:stream{id=7}:request{id=12}: \
             access: request \
             src.identity=spiffe://cluster.local/ns/default/sa/curl \
             destination=details.default.svc.cluster.local:9080 method=GET \
             path=/details/0?x=1 authority=details:9080 route=default/details \
             upstream=\"details-v1-0\" status=503 response_flags=\"UF\" attempts=2 \
             duration_ms=7\n"
        );
        // What tracing_subscriber's default format writes for the same event: the same
        // after the timestamp.
        let theirs = traced(false, &r);
        let after_time = |l: &str| l.split_once(' ').unwrap().1.to_string();
        assert_eq!(after_time(&theirs), after_time(&line));
        assert_eq!(theirs.split_once(' ').unwrap().0.len(), 27, "{theirs}");
        let mut q = String::new();
        quoted(&mut q, "a\"b\n");
        assert_eq!(q, "\"a\\\"b\\n\"");
    }

    /// The line tracing_subscriber writes for `r`'s event in the spans conn 3, stream 7,
    /// request 12: its default format, or JSON as the proxies configure it.
    fn traced(json: bool, r: &Request<'_>) -> String {
        let buf = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = buf.clone();
        let builder = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()));
        let emit = || {
            let _conn = tracing::info_span!("conn", id = 3).entered();
            let _stream = tracing::info_span!("stream", id = 7).entered();
            let _request = tracing::info_span!("request", id = 12).entered();
            tracing::event!(target: "access", tracing::Level::INFO,
                src.identity = %r.source, destination = %r.destination,
                method = %r.method, path = %r.path, authority = %r.authority,
                route = %r.route, upstream = r.upstream, status = r.status,
                response_flags = r.flags, details = r.details, attempts = r.attempts,
                duration_ms = r.duration_ms, "request");
        };
        if json {
            tracing::subscriber::with_default(builder.json().flatten_event(true).finish(), emit);
        } else {
            tracing::subscriber::with_default(builder.finish(), emit);
        }
        let out = buf.lock().unwrap().clone();
        String::from_utf8(out).unwrap()
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
}
