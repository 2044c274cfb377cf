//! Validation of VirtualService and DestinationRule specs: what the waypoint relies on, each
//! error naming the field (`spec.http[0].fault.abort.percentage.value: ...`).

use super::*;

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

/// Exactly one of route, redirect, directResponse, and what each excludes (VS-09..11).
fn check_actions(r: &HttpRule, field: &str) -> Result<(), String> {
    if let Some(d) = &r.delegate {
        if d.name.is_empty() {
            return Err(format!("{field}.delegate.name: required"));
        }
        if !r.route.is_empty() || r.redirect.is_some() || r.direct_response.is_some() {
            return Err(format!(
                "{field}.delegate: only one of route, redirect, directResponse, delegate"
            ));
        }
        return Ok(());
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
    Ok(())
}

/// Match blocks: not empty, valid string matches, lowercase header names (VS-22..37).
fn check_matches(r: &HttpRule, field: &str) -> Result<(), String> {
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
                if n.starts_with(':')
                    && !matches!(n.as_str(), ":method" | ":authority" | ":scheme" | ":path")
                {
                    return Err(format!(
                        "{f}.{kind}.{n}: of the pseudo-headers only :method, :authority, :scheme and :path can be matched"
                    ));
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
    Ok(())
}

/// `redirect` (VS-41..47).
fn check_redirect(r: &HttpRule, field: &str) -> Result<(), String> {
    if let Some(rd) = &r.redirect {
        let f = format!("{field}.redirect");
        if rd.uri.is_some() && rd.prefix_rewrite.is_some() {
            return Err(format!("{f}: only one of uri, prefixRewrite"));
        }
        if let Some(c) = rd.redirect_code {
            crate::check_redirect_code(&format!("{f}.redirectCode"), c)?;
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
    Ok(())
}

/// `directResponse` (VS-48, VS-49).
fn check_direct_response(r: &HttpRule, field: &str) -> Result<(), String> {
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
    Ok(())
}

/// `rewrite`, and a single authority rewrite (VS-50..52).
fn check_rewrite(r: &HttpRule, field: &str) -> Result<(), String> {
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
    Ok(())
}

/// `retries` (VS-53..60).
fn check_retries(r: &HttpRule, field: &str) -> Result<(), String> {
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
    Ok(())
}

/// `fault` (VS-62..67).
fn check_fault(r: &HttpRule, field: &str) -> Result<(), String> {
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
    Ok(())
}

/// `mirror`, `mirrorPercentage`, `mirrors` (VS-17..19).
fn check_mirrors(r: &HttpRule, field: &str) -> Result<(), String> {
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
    Ok(())
}

/// `corsPolicy` (VS-68..74).
fn check_cors(r: &HttpRule, field: &str) -> Result<(), String> {
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
    Ok(())
}

fn check_rule(r: &HttpRule, field: &str) -> Result<(), String> {
    check_actions(r, field)?;
    check_matches(r, field)?;
    check_destinations(&r.route, &format!("{field}.route"))?;
    check_redirect(r, field)?;
    check_direct_response(r, field)?;
    check_rewrite(r, field)?;
    check_duration(&r.timeout, &format!("{field}.timeout"))?;
    check_retries(r, field)?;
    check_fault(r, field)?;
    check_mirrors(r, field)?;
    check_cors(r, field)?;
    check_header_ops(&r.headers, &format!("{field}.headers"))
}

impl VirtualServiceSpec {
    /// Checks what the waypoint relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        // Without hosts, a VirtualService is a delegate (VS-01, VS-12): only `http`
        // rules, none of them delegating again.
        let delegate = self.hosts.is_empty();
        if delegate {
            if !self.gateways.is_empty() {
                return Err(
                    "spec.gateways: a delegate VirtualService (no hosts) cannot bind gateways"
                        .into(),
                );
            }
            if !self.tcp.is_empty() {
                return Err(
                    "spec.tcp: a delegate VirtualService (no hosts) has only http rules".into(),
                );
            }
            if self.http.is_empty() {
                return Err(
                    "spec.hosts: at least one host is required (or http rules, for a delegate)"
                        .into(),
                );
            }
            if let Some(i) = self.http.iter().position(|r| r.delegate.is_some()) {
                return Err(format!(
                    "spec.http[{i}].delegate: a delegate VirtualService cannot delegate again"
                ));
            }
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
        if let Some(p) = &self.traffic_policy {
            p.validate("spec.trafficPolicy")?;
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
            if let Some(p) = &s.traffic_policy {
                p.validate(&format!("spec.subsets[{i}].trafficPolicy"))?;
            }
        }
        Ok(())
    }
}

impl TrafficPolicy {
    fn validate(&self, at: &str) -> Result<(), String> {
        self.sections.validate(at)?;
        for (i, p) in self.port_level_settings.iter().enumerate() {
            let at = format!("{at}.portLevelSettings[{i}]");
            if p.port.is_none() {
                return Err(format!("{at}.port: required"));
            }
            p.sections.validate(&at)?;
        }
        Ok(())
    }
}

impl Sections {
    fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(o) = &self.outlier_detection {
            o.validate(&format!("{at}.outlierDetection"))?;
        }
        if let Some(c) = &self.connection_pool {
            c.validate(&format!("{at}.connectionPool"))?;
        }
        if let Some(l) = &self.load_balancer {
            l.validate(&format!("{at}.loadBalancer"))?;
        }
        if let Some(t) = &self.tls {
            t.validate(&format!("{at}.tls"))?;
        }
        Ok(())
    }
}

impl ClientTls {
    fn validate(&self, at: &str) -> Result<(), String> {
        let mode = self.mode.as_deref().unwrap_or("DISABLE");
        if !matches!(mode, "DISABLE" | "SIMPLE" | "MUTUAL" | "ISTIO_MUTUAL") {
            return Err(format!(
                "{at}.mode: {mode:?} is not DISABLE, SIMPLE, MUTUAL or ISTIO_MUTUAL"
            ));
        }
        if self.credential_name.is_some() {
            return Err(format!(
                "{at}.credentialName: not supported; give clientCertificate, privateKey and caCertificates as files"
            ));
        }
        if self.ca_crl.is_some() {
            return Err(format!(
                "{at}.caCrl: certificate revocation lists are not supported"
            ));
        }
        let files = [
            ("clientCertificate", &self.client_certificate),
            ("privateKey", &self.private_key),
            ("caCertificates", &self.ca_certificates),
        ];
        if !matches!(mode, "SIMPLE" | "MUTUAL") {
            if let Some((name, _)) = files.iter().find(|(_, v)| v.is_some()) {
                return Err(format!("{at}.{name}: only with mode SIMPLE or MUTUAL"));
            }
        }
        if mode == "MUTUAL" && (self.client_certificate.is_none() || self.private_key.is_none()) {
            return Err(format!(
                "{at}: mode MUTUAL needs clientCertificate and privateKey"
            ));
        }
        if mode == "SIMPLE" && (self.client_certificate.is_some() || self.private_key.is_some()) {
            return Err(format!(
                "{at}: clientCertificate and privateKey are for mode MUTUAL"
            ));
        }
        if let Some(sni) = &self.sni {
            if !dns_name(sni) {
                return Err(format!("{at}.sni: {sni:?} is not a DNS name"));
            }
        }
        Ok(())
    }
}

/// Whether `s` is a DNS name (dot-separated labels of letters, digits and `-`), as SNI
/// and ServiceEntry endpoints take.
pub fn dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl LoadBalancer {
    fn validate(&self, at: &str) -> Result<(), String> {
        if let Some(l) = &self.locality_lb_setting {
            l.validate(&format!("{at}.localityLbSetting"))?;
        }
        const SIMPLE: [&str; 6] = [
            "UNSPECIFIED",
            "LEAST_CONN",
            "RANDOM",
            "PASSTHROUGH",
            "ROUND_ROBIN",
            "LEAST_REQUEST",
        ];
        if let Some(s) = &self.simple {
            if !SIMPLE.contains(&s.as_str()) {
                return Err(format!(
                    "{at}.simple: {s:?} is not one of {}",
                    SIMPLE.join(", ")
                ));
            }
            if self.consistent_hash.is_some() {
                return Err(format!("{at}: simple and consistentHash are exclusive"));
            }
        }
        if let Some(h) = &self.consistent_hash {
            let keys = [
                h.http_header_name.is_some(),
                h.http_cookie.is_some(),
                h.use_source_ip == Some(true),
                h.http_query_parameter_name.is_some(),
            ];
            if keys.iter().filter(|k| **k).count() != 1 {
                return Err(format!(
                    "{at}.consistentHash: exactly one of httpHeaderName, httpCookie, useSourceIp, httpQueryParameterName"
                ));
            }
            if let Some(n) = &h.http_header_name {
                if http::HeaderName::from_bytes(n.as_bytes()).is_err() {
                    return Err(format!(
                        "{at}.consistentHash.httpHeaderName: {n:?} is not a header name"
                    ));
                }
            }
            if let Some(c) = &h.http_cookie {
                let token = |s: &str| {
                    !s.is_empty()
                        && s.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
                };
                if !token(&c.name) {
                    return Err(format!(
                        "{at}.consistentHash.httpCookie.name: {:?} is not a cookie name",
                        c.name
                    ));
                }
                if let Some(t) = &c.ttl {
                    parse_duration(t)
                        .map_err(|e| format!("{at}.consistentHash.httpCookie.ttl: {e}"))?;
                }
                if let Some(p) = &c.path {
                    if !p.starts_with('/') || p.bytes().any(|b| b == b';' || b.is_ascii_control()) {
                        return Err(format!(
                            "{at}.consistentHash.httpCookie.path: {p:?} is not a cookie path"
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

impl ConnectionPool {
    fn validate(&self, at: &str) -> Result<(), String> {
        let tcp = self.tcp.as_ref();
        let http = self.http.as_ref();
        for (name, v) in [
            ("tcp.maxConnections", tcp.and_then(|t| t.max_connections)),
            (
                "http.http1MaxPendingRequests",
                http.and_then(|h| h.http1_max_pending_requests),
            ),
            (
                "http.http2MaxRequests",
                http.and_then(|h| h.http2_max_requests),
            ),
            (
                "http.maxRequestsPerConnection",
                http.and_then(|h| h.max_requests_per_connection),
            ),
        ] {
            if v.is_some_and(|v| v < 0) {
                return Err(format!("{at}.{name}: must not be negative"));
            }
        }
        Ok(())
    }
}

impl OutlierDetection {
    fn validate(&self, at: &str) -> Result<(), String> {
        for (name, d) in [
            ("interval", &self.interval),
            ("baseEjectionTime", &self.base_ejection_time),
        ] {
            if let Some(d) = d {
                let t = parse_duration(d).map_err(|e| format!("{at}.{name}: {e}"))?;
                if t < Duration::from_millis(1) {
                    return Err(format!("{at}.{name}: must be at least 1ms"));
                }
            }
        }
        for (name, p) in [
            ("maxEjectionPercent", self.max_ejection_percent),
            ("minHealthPercent", self.min_health_percent),
        ] {
            if p.is_some_and(|p| !(0..=100).contains(&p)) {
                return Err(format!("{at}.{name}: must be between 0 and 100"));
            }
        }
        Ok(())
    }
}
