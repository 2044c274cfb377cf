//! Istio `VirtualService` and `DestinationRule` (networking.istio.io/v1), the fields the
//! waypoint applies, with validation that names the failing field (l7-semantics.md §1, §2).
//!
//! Unknown fields are refused (a typo would otherwise silently change routing); fields of
//! the API that a waypoint does not apply are accepted where Istio's waypoints ignore them
//! too, and refused with a reason where ignoring them would change what traffic does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VirtualServiceSpec {
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub http: Vec<HttpRule>,
    #[serde(default)]
    pub tcp: Vec<TcpRule>,
    #[serde(default)]
    pub tls: Vec<serde_json::Value>,
    #[serde(default)]
    pub export_to: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default, rename = "match")]
    pub matches: Vec<HttpMatch>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    #[serde(default)]
    pub redirect: Option<HttpRedirect>,
    #[serde(default)]
    pub direct_response: Option<DirectResponse>,
    #[serde(default)]
    pub delegate: Option<serde_json::Value>,
    #[serde(default)]
    pub rewrite: Option<Rewrite>,
    #[serde(default)]
    pub timeout: Option<String>,
    #[serde(default)]
    pub retries: Option<Retries>,
    #[serde(default)]
    pub fault: Option<Fault>,
    #[serde(default)]
    pub mirror: Option<Destination>,
    #[serde(default)]
    pub mirror_percentage: Option<Percent>,
    #[serde(default)]
    pub mirror_percent: Option<u32>,
    #[serde(default)]
    pub mirrors: Vec<MirrorPolicy>,
    #[serde(default)]
    pub cors_policy: Option<CorsPolicy>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

/// Exactly one of the three, or none of them (a presence test, for headers).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StringMatch {
    #[serde(default)]
    pub exact: Option<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub regex: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpMatch {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uri: Option<StringMatch>,
    #[serde(default)]
    pub scheme: Option<StringMatch>,
    #[serde(default)]
    pub method: Option<StringMatch>,
    #[serde(default)]
    pub authority: Option<StringMatch>,
    #[serde(default)]
    pub headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub without_headers: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub query_params: BTreeMap<String, StringMatch>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub ignore_uri_case: bool,
    #[serde(default)]
    pub stat_prefix: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortSelector {
    pub number: u16,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destination {
    pub host: String,
    #[serde(default)]
    pub subset: Option<String>,
    #[serde(default)]
    pub port: Option<PortSelector>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteDestination {
    pub destination: Destination,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub headers: Option<Headers>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpRedirect {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub prefix_rewrite: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub derive_port: Option<String>,
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub redirect_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    pub status: u16,
    #[serde(default)]
    pub body: Option<DirectBody>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectBody {
    #[serde(default)]
    pub string: Option<String>,
    /// Base64.
    #[serde(default)]
    pub bytes: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Rewrite {
    #[serde(default)]
    pub uri: Option<String>,
    #[serde(default)]
    pub authority: Option<String>,
    #[serde(default)]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    #[serde(rename = "match")]
    pub pattern: String,
    pub rewrite: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub per_try_timeout: Option<String>,
    #[serde(default)]
    pub retry_on: Option<String>,
    #[serde(default)]
    pub retry_remote_localities: Option<bool>,
    #[serde(default)]
    pub retry_ignore_previous_hosts: Option<bool>,
    #[serde(default)]
    pub backoff: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percent {
    pub value: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fault {
    #[serde(default)]
    pub delay: Option<FaultDelay>,
    #[serde(default)]
    pub abort: Option<FaultAbort>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultDelay {
    #[serde(default)]
    pub fixed_delay: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
    /// Deprecated integer percentage.
    #[serde(default)]
    pub percent: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultAbort {
    #[serde(default)]
    pub http_status: Option<u16>,
    #[serde(default)]
    pub grpc_status: Option<String>,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    pub destination: Destination,
    #[serde(default)]
    pub percentage: Option<Percent>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorsPolicy {
    #[serde(default)]
    pub allow_origins: Vec<StringMatch>,
    /// Deprecated: plain origins, `*` for any.
    #[serde(default)]
    pub allow_origin: Vec<String>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub unmatched_preflights: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOps {
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    #[serde(default)]
    pub request: Option<HeaderOps>,
    #[serde(default)]
    pub response: Option<HeaderOps>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpRule {
    #[serde(default, rename = "match")]
    pub matches: Vec<L4Match>,
    #[serde(default)]
    pub route: Vec<RouteDestination>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct L4Match {
    #[serde(default)]
    pub destination_subnets: Vec<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub source_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub gateways: Vec<String>,
    #[serde(default)]
    pub source_namespace: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationRuleSpec {
    pub host: String,
    /// Accepted; load balancing, connection pools and outlier detection are not applied yet.
    #[serde(default)]
    pub traffic_policy: Option<serde_json::Value>,
    #[serde(default)]
    pub subsets: Vec<Subset>,
    #[serde(default)]
    pub export_to: Vec<String>,
    #[serde(default)]
    pub workload_selector: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Subset {
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub traffic_policy: Option<serde_json::Value>,
}

/// A protobuf-JSON or Go-style duration: `3s`, `0.5s`, `100ms`, `1m30s`, `1h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 3s, 0.5s, 100ms)");
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let n = rest
            .chars()
            .take_while(|c| c.is_ascii_digit() || *c == '.')
            .count();
        if n == 0 {
            return Err(bad());
        }
        let value: f64 = rest[..n].parse().map_err(|_| bad())?;
        rest = &rest[n..];
        let units = [
            ("ms", 1e-3),
            ("us", 1e-6),
            ("ns", 1e-9),
            ("h", 3600.0),
            ("m", 60.0),
            ("s", 1.0),
        ];
        let (unit, scale) = units
            .iter()
            .find(|(u, _)| rest.starts_with(u))
            .ok_or_else(bad)?;
        rest = &rest[unit.len()..];
        total += value * scale;
    }
    if !total.is_finite() || total > 1e9 {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(total))
}

/// The gRPC status code of a status name (`UNAVAILABLE` → 14).
pub fn grpc_code(name: &str) -> Option<u32> {
    const NAMES: [&str; 17] = [
        "OK",
        "CANCELLED",
        "UNKNOWN",
        "INVALID_ARGUMENT",
        "DEADLINE_EXCEEDED",
        "NOT_FOUND",
        "ALREADY_EXISTS",
        "PERMISSION_DENIED",
        "RESOURCE_EXHAUSTED",
        "FAILED_PRECONDITION",
        "ABORTED",
        "OUT_OF_RANGE",
        "UNIMPLEMENTED",
        "INTERNAL",
        "UNAVAILABLE",
        "DATA_LOSS",
        "UNAUTHENTICATED",
    ];
    NAMES.iter().position(|n| *n == name).map(|i| i as u32)
}

/// The retry conditions Keelson's waypoint evaluates (VS-56, VS-57).
pub const RETRY_ON: [&str; 11] = [
    "5xx",
    "gateway-error",
    "reset",
    "reset-before-request",
    "connect-failure",
    "refused-stream",
    "retriable-4xx",
    "retriable-status-codes",
    "cancelled",
    "deadline-exceeded",
    "internal",
];
const RETRY_ON_GRPC_MORE: [&str; 2] = ["resource-exhausted", "unavailable"];

fn check_string_match(m: &StringMatch, field: &str, presence_ok: bool) -> Result<(), String> {
    let set = [&m.exact, &m.prefix, &m.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if set > 1 {
        return Err(format!("{field}: only one of exact, prefix, regex"));
    }
    if set == 0 && !presence_ok {
        return Err(format!("{field}: one of exact, prefix, regex is required"));
    }
    if let Some(re) = &m.regex {
        if !(presence_ok && re == "*") {
            regex::Regex::new(re).map_err(|e| format!("{field}.regex: {e}"))?;
        }
    }
    Ok(())
}

fn check_percent(p: &Option<Percent>, field: &str) -> Result<(), String> {
    if let Some(p) = p {
        if !(0.0..=100.0).contains(&p.value) {
            return Err(format!("{field}.value: {} is not within 0..100", p.value));
        }
    }
    Ok(())
}

fn check_header_ops(h: &Option<Headers>, field: &str) -> Result<(), String> {
    let Some(h) = h else { return Ok(()) };
    for (dir, ops) in [("request", &h.request), ("response", &h.response)] {
        let Some(ops) = ops else { continue };
        for (kind, names) in [
            ("set", ops.set.keys().collect::<Vec<_>>()),
            ("add", ops.add.keys().collect()),
            ("remove", ops.remove.iter().collect()),
        ] {
            for n in names {
                let plain = n.trim_start_matches(':');
                let authority = matches!(n.to_ascii_lowercase().as_str(), ":authority" | "host");
                if http::HeaderName::from_bytes(plain.as_bytes()).is_err()
                    || (n.starts_with(':') && !authority)
                {
                    return Err(format!("{field}.{dir}.{kind}: {n:?} is not a header name"));
                }
                if authority && (dir == "response" || kind != "set") {
                    return Err(format!(
                        "{field}.{dir}.{kind}: {n:?} can only be set, on requests"
                    ));
                }
            }
        }
        for (kind, map) in [("set", &ops.set), ("add", &ops.add)] {
            for (n, v) in map {
                if http::HeaderValue::from_str(v).is_err() {
                    return Err(format!("{field}.{dir}.{kind}.{n}: not a header value"));
                }
            }
        }
    }
    Ok(())
}

fn check_destination(d: &Destination, field: &str) -> Result<(), String> {
    if d.host.is_empty() {
        return Err(format!("{field}.host: required"));
    }
    if d.host.contains('*') {
        return Err(format!(
            "{field}.host: {:?}: wildcards are not allowed",
            d.host
        ));
    }
    if d.port.as_ref().is_some_and(|p| p.number == 0) {
        return Err(format!("{field}.port.number: 0 is not a port"));
    }
    Ok(())
}

fn check_destinations(route: &[RouteDestination], field: &str) -> Result<(), String> {
    for (i, r) in route.iter().enumerate() {
        let f = format!("{field}[{i}]");
        check_destination(&r.destination, &format!("{f}.destination"))?;
        check_header_ops(&r.headers, &format!("{f}.headers"))?;
    }
    if route.len() > 1 && route.iter().all(|r| r.weight.unwrap_or(0) == 0) {
        return Err(format!("{field}: the weights are all 0"));
    }
    Ok(())
}

fn check_duration(d: &Option<String>, field: &str) -> Result<(), String> {
    if let Some(d) = d {
        parse_duration(d).map_err(|e| format!("{field}: {e}"))?;
    }
    Ok(())
}

fn check_rule(r: &HttpRule, field: &str) -> Result<(), String> {
    if r.delegate.is_some() {
        return Err(format!("{field}.delegate: delegation is not supported"));
    }
    let actions = [
        !r.route.is_empty(),
        r.redirect.is_some(),
        r.direct_response.is_some(),
    ];
    match actions.iter().filter(|a| **a).count() {
        0 => {
            return Err(format!(
                "{field}: one of route, redirect, directResponse is required"
            ))
        }
        1 => {}
        _ => {
            return Err(format!(
                "{field}: only one of route, redirect, directResponse"
            ))
        }
    }
    if r.redirect.is_some() && (r.rewrite.is_some() || r.fault.is_some()) {
        return Err(format!(
            "{field}.redirect: cannot be combined with rewrite or fault"
        ));
    }
    if r.direct_response.is_some() && r.fault.is_some() {
        return Err(format!(
            "{field}.directResponse: cannot be combined with fault"
        ));
    }
    for (i, m) in r.matches.iter().enumerate() {
        let f = format!("{field}.match[{i}]");
        if *m == HttpMatch::default() {
            return Err(format!(
                "{f}: an empty match block (omit match to match everything)"
            ));
        }
        if let Some(u) = &m.uri {
            check_string_match(u, &format!("{f}.uri"), false)?;
        }
        for (name, v) in [
            ("scheme", &m.scheme),
            ("method", &m.method),
            ("authority", &m.authority),
        ] {
            if let Some(v) = v {
                check_string_match(v, &format!("{f}.{name}"), false)?;
            }
        }
        for (kind, map) in [
            ("headers", &m.headers),
            ("withoutHeaders", &m.without_headers),
        ] {
            for (n, v) in map {
                if n.to_ascii_lowercase() != *n {
                    return Err(format!("{f}.{kind}.{n}: header names must be lowercase"));
                }
                check_string_match(v, &format!("{f}.{kind}.{n}"), true)?;
            }
        }
        for (n, v) in &m.query_params {
            check_string_match(v, &format!("{f}.queryParams.{n}"), false)?;
            if v.prefix.is_some() {
                return Err(format!(
                    "{f}.queryParams.{n}: prefix is not supported (exact or regex)"
                ));
            }
        }
    }
    check_destinations(&r.route, &format!("{field}.route"))?;
    if let Some(rd) = &r.redirect {
        let f = format!("{field}.redirect");
        if rd.uri.is_some() && rd.prefix_rewrite.is_some() {
            return Err(format!("{f}: only one of uri, prefixRewrite"));
        }
        if let Some(c) = rd.redirect_code {
            if ![301, 302, 303, 307, 308].contains(&c) {
                return Err(format!(
                    "{f}.redirectCode: {c} is not 301, 302, 303, 307 or 308"
                ));
            }
        }
        if let Some(d) = &rd.derive_port {
            if d != "FROM_PROTOCOL_DEFAULT" && d != "FROM_REQUEST_PORT" {
                return Err(format!(
                    "{f}.derivePort: {d:?} is not FROM_PROTOCOL_DEFAULT or FROM_REQUEST_PORT"
                ));
            }
            if rd.port.is_some() {
                return Err(format!("{f}: only one of port, derivePort"));
            }
        }
        if let Some(s) = &rd.scheme {
            if s != "http" && s != "https" {
                return Err(format!("{f}.scheme: {s:?} is not http or https"));
            }
        }
    }
    if let Some(d) = &r.direct_response {
        if !(200..=599).contains(&d.status) {
            return Err(format!(
                "{field}.directResponse.status: {} is not within 200..599",
                d.status
            ));
        }
        if let Some(b) = &d.body {
            if b.string.is_some() == b.bytes.is_some() {
                return Err(format!("{field}.directResponse.body: one of string, bytes"));
            }
            if let Some(bytes) = &b.bytes {
                base64_decode(bytes)
                    .ok_or_else(|| format!("{field}.directResponse.body.bytes: not base64"))?;
            }
        }
    }
    if let Some(rw) = &r.rewrite {
        if rw.uri.is_some() && rw.uri_regex_rewrite.is_some() {
            return Err(format!("{field}.rewrite: only one of uri, uriRegexRewrite"));
        }
        if let Some(rr) = &rw.uri_regex_rewrite {
            regex::Regex::new(&rr.pattern)
                .map_err(|e| format!("{field}.rewrite.uriRegexRewrite.match: {e}"))?;
        }
        let header_authority = r
            .headers
            .as_ref()
            .and_then(|h| h.request.as_ref())
            .is_some_and(|o| {
                o.set
                    .keys()
                    .any(|k| matches!(k.to_ascii_lowercase().as_str(), ":authority" | "host"))
            });
        if rw.authority.is_some() && header_authority {
            return Err(format!(
                "{field}.rewrite.authority: the authority is also set in headers.request.set"
            ));
        }
    }
    check_duration(&r.timeout, &format!("{field}.timeout"))?;
    if let Some(rt) = &r.retries {
        let f = format!("{field}.retries");
        check_duration(&rt.per_try_timeout, &format!("{f}.perTryTimeout"))?;
        check_duration(&rt.backoff, &format!("{f}.backoff"))?;
        if let Some(on) = &rt.retry_on {
            for c in on.split(',').map(str::trim).filter(|c| !c.is_empty()) {
                let known = RETRY_ON.contains(&c) || RETRY_ON_GRPC_MORE.contains(&c);
                let code = c.parse::<u16>().is_ok_and(|n| (100..=599).contains(&n));
                if !known && !code {
                    return Err(format!(
                        "{f}.retryOn: {c:?} is not a retry condition or status code"
                    ));
                }
            }
        }
    }
    if let Some(fault) = &r.fault {
        let f = format!("{field}.fault");
        if fault.delay.is_none() && fault.abort.is_none() {
            return Err(format!("{f}: one of delay, abort is required"));
        }
        if let Some(d) = &fault.delay {
            let Some(fixed) = &d.fixed_delay else {
                return Err(format!("{f}.delay.fixedDelay: required"));
            };
            parse_duration(fixed).map_err(|e| format!("{f}.delay.fixedDelay: {e}"))?;
            check_percent(&d.percentage, &format!("{f}.delay.percentage"))?;
            if d.percent.is_some_and(|p| p > 100) {
                return Err(format!("{f}.delay.percent: over 100"));
            }
        }
        if let Some(a) = &fault.abort {
            match (a.http_status, &a.grpc_status) {
                (Some(s), None) if (200..=599).contains(&s) => {}
                (Some(s), None) => {
                    return Err(format!("{f}.abort.httpStatus: {s} is not within 200..599"))
                }
                (None, Some(g)) if grpc_code(g).is_some() => {}
                (None, Some(g)) => {
                    return Err(format!(
                        "{f}.abort.grpcStatus: {g:?} is not a gRPC status name (e.g. UNAVAILABLE)"
                    ))
                }
                _ => {
                    return Err(format!(
                        "{f}.abort: one of httpStatus, grpcStatus is required"
                    ))
                }
            }
            check_percent(&a.percentage, &format!("{f}.abort.percentage"))?;
        }
    }
    if r.mirror.is_some() && !r.mirrors.is_empty() {
        return Err(format!("{field}: only one of mirror, mirrors"));
    }
    if let Some(m) = &r.mirror {
        check_destination(m, &format!("{field}.mirror"))?;
    }
    check_percent(&r.mirror_percentage, &format!("{field}.mirrorPercentage"))?;
    for (i, m) in r.mirrors.iter().enumerate() {
        check_destination(&m.destination, &format!("{field}.mirrors[{i}].destination"))?;
        check_percent(&m.percentage, &format!("{field}.mirrors[{i}].percentage"))?;
    }
    if let Some(c) = &r.cors_policy {
        let f = format!("{field}.corsPolicy");
        for (i, o) in c.allow_origins.iter().enumerate() {
            check_string_match(o, &format!("{f}.allowOrigins[{i}]"), false)?;
        }
        check_duration(&c.max_age, &format!("{f}.maxAge"))?;
        if let Some(u) = &c.unmatched_preflights {
            if u != "FORWARD" && u != "IGNORE" && u != "UNSPECIFIED" {
                return Err(format!(
                    "{f}.unmatchedPreflights: {u:?} is not FORWARD or IGNORE"
                ));
            }
        }
    }
    check_header_ops(&r.headers, &format!("{field}.headers"))?;
    Ok(())
}

impl VirtualServiceSpec {
    /// Checks what the waypoint relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.hosts.is_empty() {
            return Err("spec.hosts: at least one host is required".into());
        }
        for (i, h) in self.hosts.iter().enumerate() {
            if h.is_empty() || (h.contains('*') && !h.starts_with("*")) || h[1..].contains('*') {
                return Err(format!(
                    "spec.hosts[{i}]: {h:?} is not a host name or *.suffix"
                ));
            }
        }
        if !self.tls.is_empty() {
            return Err("spec.tls: TLS (SNI) routes are not supported".into());
        }
        for (i, r) in self.http.iter().enumerate() {
            check_rule(r, &format!("spec.http[{i}]"))?;
        }
        for (i, r) in self.tcp.iter().enumerate() {
            let f = format!("spec.tcp[{i}]");
            if r.route.is_empty() {
                return Err(format!("{f}.route: at least one destination is required"));
            }
            check_destinations(&r.route, &format!("{f}.route"))?;
            for (j, m) in r.matches.iter().enumerate() {
                for (k, s) in m.destination_subnets.iter().enumerate() {
                    crate::istio::parse_cidr(s)
                        .ok_or_else(|| format!("{f}.match[{j}].destinationSubnets[{k}]: {s:?} is not an address or CIDR"))?;
                }
            }
        }
        Ok(())
    }

    /// Whether the VirtualService applies to mesh traffic (`gateways` empty or with `mesh`).
    pub fn for_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}

impl DestinationRuleSpec {
    pub fn validate(&self) -> Result<(), String> {
        if self.host.is_empty() {
            return Err("spec.host: required".into());
        }
        let mut seen = std::collections::BTreeSet::new();
        for (i, s) in self.subsets.iter().enumerate() {
            if s.name.is_empty() {
                return Err(format!("spec.subsets[{i}].name: required"));
            }
            if !seen.insert(&s.name) {
                return Err(format!(
                    "spec.subsets[{i}].name: {:?} appears twice",
                    s.name
                ));
            }
        }
        Ok(())
    }
}

/// An address or CIDR (`10.0.0.0/8`, `10.1.2.3`), as (network, prefix length).
pub fn parse_cidr(s: &str) -> Option<(std::net::IpAddr, u8)> {
    let (ip, len) = match s.split_once('/') {
        Some((ip, len)) => (ip, Some(len)),
        None => (s, None),
    };
    let ip: std::net::IpAddr = ip.parse().ok()?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        Some(l) => l.parse::<u8>().ok().filter(|l| *l <= max)?,
        None => max,
    };
    Some((ip, len))
}

/// Whether `ip` lies in `net/len`.
pub fn cidr_contains(net: std::net::IpAddr, len: u8, ip: std::net::IpAddr) -> bool {
    match (net, ip) {
        (std::net::IpAddr::V4(n), std::net::IpAddr::V4(a)) => {
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            u32::from(n) & mask == u32::from(a) & mask
        }
        (std::net::IpAddr::V6(n), std::net::IpAddr::V6(a)) => {
            let mask = if len == 0 {
                0
            } else {
                u128::MAX << (128 - len)
            };
            u128::from(n) & mask == u128::from(a) & mask
        }
        _ => false,
    }
}

/// Standard base64 (with or without padding).
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| !c.is_ascii_whitespace()) {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' => continue,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    Some(out)
}
