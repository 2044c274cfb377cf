//! Gateway API `HTTPRoute` (gateway.networking.k8s.io/v1), the fields the waypoint applies,
//! with validation that names the failing field (docs/WIRE.md §8).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpRouteSpec {
    #[serde(default)]
    pub parent_refs: Vec<ParentRef>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    #[serde(default)]
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ParentRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub namespace: Option<String>,
    pub name: String,
    #[serde(default)]
    pub section_name: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
}

impl ParentRef {
    /// A Service parent (GAMMA): kind `Service` with the core group given explicitly
    /// (GW-01: a missing group means Gateway).
    pub fn is_service(&self) -> bool {
        self.kind.as_deref() == Some("Service")
            && matches!(self.group.as_deref(), Some("" | "core"))
    }

    /// A Gateway parent: kind `Gateway` (the default) of group gateway.networking.k8s.io
    /// (the default).
    pub fn is_gateway(&self) -> bool {
        self.kind.as_deref().is_none_or(|k| k == "Gateway")
            && self
                .group
                .as_deref()
                .is_none_or(|g| g == "gateway.networking.k8s.io")
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rule {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub matches: Vec<Match>,
    #[serde(default)]
    pub filters: Vec<Filter>,
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    #[serde(default)]
    pub timeouts: Option<Timeouts>,
    #[serde(default)]
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Match {
    #[serde(default)]
    pub path: Option<PathMatch>,
    #[serde(default)]
    pub headers: Vec<ValueMatch>,
    #[serde(default)]
    pub query_params: Vec<ValueMatch>,
    #[serde(default)]
    pub method: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathType {
    Exact,
    #[default]
    PathPrefix,
    RegularExpression,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PathMatch {
    #[serde(rename = "type", default)]
    pub kind: PathType,
    #[serde(default)]
    pub value: Option<String>,
}

impl PathMatch {
    pub fn value(&self) -> &str {
        self.value.as_deref().unwrap_or("/")
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum MatchType {
    #[default]
    Exact,
    RegularExpression,
}

/// A header or query parameter match.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ValueMatch {
    #[serde(rename = "type", default)]
    pub kind: MatchType,
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FilterType {
    RequestHeaderModifier,
    ResponseHeaderModifier,
    RequestRedirect,
    URLRewrite,
    RequestMirror,
    CORS,
    ExtensionRef,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Filter {
    #[serde(rename = "type")]
    pub kind: FilterType,
    #[serde(default)]
    pub request_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub response_header_modifier: Option<HeaderModifier>,
    #[serde(default)]
    pub request_redirect: Option<Redirect>,
    #[serde(default, rename = "urlRewrite")]
    pub url_rewrite: Option<UrlRewrite>,
    #[serde(default)]
    pub request_mirror: Option<Mirror>,
    #[serde(default)]
    pub cors: Option<CorsFilter>,
}

/// The `CORS` filter (GW-33..38).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CorsFilter {
    #[serde(default)]
    pub allow_origins: Vec<String>,
    #[serde(default)]
    pub allow_credentials: Option<bool>,
    #[serde(default)]
    pub allow_methods: Vec<String>,
    #[serde(default)]
    pub allow_headers: Vec<String>,
    #[serde(default)]
    pub expose_headers: Vec<String>,
    #[serde(default)]
    pub max_age: Option<u32>,
}

/// Whether `origin` (`scheme://host[:port]`) is one `pattern` allows: `*` any; otherwise
/// the same scheme and port, and the host equal, or under a `*.` wildcard (which covers
/// any number of labels: `https://*.bar.com` allows `https://a.www.bar.com`, GW-33).
pub fn origin_matches(pattern: &str, origin: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let split = |s: &str| -> Option<(String, String, String)> {
        let (scheme, rest) = s.split_once("://")?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !p.is_empty() => {
                (h.to_string(), p.to_string())
            }
            _ => (rest.to_string(), String::new()),
        };
        Some((scheme.to_ascii_lowercase(), host.to_ascii_lowercase(), port))
    };
    let (Some((ps, ph, pp)), Some((os, oh, op))) = (split(pattern), split(origin)) else {
        return false;
    };
    if ps != os || pp != op {
        return false;
    }
    match ph.strip_prefix('*') {
        Some(suffix) => oh.len() > suffix.len() && oh.ends_with(&suffix),
        None => ph == oh,
    }
}

impl CorsFilter {
    /// What the filter does to a request (GW-33..38): a preflight (`OPTIONS` with
    /// `Access-Control-Request-Method`) is answered here, with the CORS headers when its
    /// origin is allowed and none otherwise; an actual request from an allowed origin gets
    /// them on its response; anything else goes on untouched.
    pub fn apply(&self, method: &http::Method, headers: &http::HeaderMap) -> crate::vsroute::Cors {
        use crate::vsroute::Cors;
        use http::header as h;
        let Some(origin) = headers.get(h::ORIGIN).and_then(|o| o.to_str().ok()) else {
            return Cors::Forward;
        };
        let preflight = method == http::Method::OPTIONS
            && headers.contains_key(h::ACCESS_CONTROL_REQUEST_METHOD);
        let matched = self
            .allow_origins
            .iter()
            .find(|p| origin_matches(p, origin));
        let Some(pattern) = matched else {
            return if preflight {
                Cors::Preflight(Vec::new())
            } else {
                Cors::Forward
            };
        };
        let credentials = self.allow_credentials == Some(true);
        let mut out = Vec::new();
        // `*` only without credentials; otherwise the origin itself.
        let allow_origin = if pattern == "*" && !credentials {
            "*".to_string()
        } else {
            origin.to_string()
        };
        out.push((h::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin));
        if credentials {
            out.push((h::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".to_string()));
        }
        let requested = |name: h::HeaderName| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        if !preflight {
            if !self.expose_headers.is_empty() {
                out.push((
                    h::ACCESS_CONTROL_EXPOSE_HEADERS,
                    self.expose_headers.join(", "),
                ));
            }
            return Cors::Actual(out);
        }
        let star = |list: &[String]| list.iter().any(|m| m == "*");
        let methods = if star(&self.allow_methods) {
            if credentials {
                requested(h::ACCESS_CONTROL_REQUEST_METHOD)
            } else {
                Some("*".to_string())
            }
        } else if self.allow_methods.is_empty() {
            None
        } else {
            Some(self.allow_methods.join(", "))
        };
        if let Some(m) = methods {
            out.push((h::ACCESS_CONTROL_ALLOW_METHODS, m));
        }
        let allowed_headers = if star(&self.allow_headers) {
            if credentials {
                requested(h::ACCESS_CONTROL_REQUEST_HEADERS)
            } else {
                Some("*".to_string())
            }
        } else if self.allow_headers.is_empty() {
            None
        } else {
            Some(self.allow_headers.join(", "))
        };
        if let Some(hs) = allowed_headers {
            out.push((h::ACCESS_CONTROL_ALLOW_HEADERS, hs));
        }
        // Always sent; 5 s when unset (GW-38).
        out.push((
            h::ACCESS_CONTROL_MAX_AGE,
            self.max_age.unwrap_or(5).to_string(),
        ));
        Cors::Preflight(out)
    }

    fn validate(&self, field: &str) -> Result<(), String> {
        for (i, o) in self.allow_origins.iter().enumerate() {
            let ok = o == "*"
                || o.split_once("://").is_some_and(|(scheme, host)| {
                    matches!(scheme, "http" | "https") && !host.is_empty() && !host.contains('/')
                });
            if !ok {
                return Err(format!(
                    "{field}.cors.allowOrigins[{i}]: {o:?} is not * or scheme://host[:port]"
                ));
            }
        }
        if self.allow_credentials == Some(true) && self.expose_headers.iter().any(|h| h == "*") {
            return Err(format!(
                "{field}.cors.exposeHeaders: * is not allowed with allowCredentials"
            ));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<NameValue>,
    #[serde(default)]
    pub add: Vec<NameValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PathModifierType {
    ReplaceFullPath,
    ReplacePrefixMatch,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PathModifier {
    #[serde(rename = "type")]
    pub kind: PathModifierType,
    #[serde(default)]
    pub replace_full_path: Option<String>,
    #[serde(default)]
    pub replace_prefix_match: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Redirect {
    #[serde(default)]
    pub scheme: Option<String>,
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub status_code: Option<u16>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UrlRewrite {
    #[serde(default)]
    pub hostname: Option<String>,
    #[serde(default)]
    pub path: Option<PathModifier>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mirror {
    pub backend_ref: BackendRef,
    #[serde(default)]
    pub percent: Option<u32>,
    #[serde(default)]
    pub fraction: Option<Fraction>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Fraction {
    pub numerator: u32,
    #[serde(default = "hundred")]
    pub denominator: u32,
}

fn hundred() -> u32 {
    100
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendRef {
    #[serde(default)]
    pub group: Option<String>,
    #[serde(default)]
    pub kind: Option<String>,
    pub name: String,
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub port: Option<u16>,
    #[serde(default)]
    pub weight: Option<u32>,
    #[serde(default)]
    pub filters: Vec<Filter>,
}

impl BackendRef {
    /// Default 1 (GW-43).
    pub fn weight(&self) -> u32 {
        self.weight.unwrap_or(1)
    }

    /// Only core Services are backends here; anything else is an invalid backend (500).
    pub fn is_service(&self) -> bool {
        matches!(self.group.as_deref(), None | Some("" | "core"))
            && matches!(self.kind.as_deref(), None | Some("Service"))
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default)]
    pub request: Option<String>,
    #[serde(default)]
    pub backend_request: Option<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Retry {
    #[serde(default)]
    pub codes: Vec<u16>,
    #[serde(default)]
    pub attempts: Option<u32>,
    #[serde(default)]
    pub backoff: Option<String>,
}

/// A Gateway API duration (GEP-2257): 1–4 groups of up to 5 digits, each followed by `h`,
/// `m`, `s` or `ms`; no decimals. `0s` is zero (which disables a timeout).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 1m30s, 500ms)");
    let mut rest = s;
    let mut total = Duration::ZERO;
    let mut groups = 0;
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (Duration::from_millis(1), 2)
        } else if rest.starts_with('h') {
            (Duration::from_secs(3600), 1)
        } else if rest.starts_with('m') {
            (Duration::from_secs(60), 1)
        } else if rest.starts_with('s') {
            (Duration::from_secs(1), 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total += unit * n as u32;
        groups += 1;
    }
    if groups == 0 || groups > 4 {
        return Err(bad());
    }
    Ok(total)
}

fn check_path_value(v: &str, field: &str) -> Result<(), String> {
    if !v.starts_with('/') {
        return Err(format!("{field}: {v:?} must start with /"));
    }
    if v.contains("//") {
        return Err(format!("{field}: {v:?} must not contain //"));
    }
    Ok(())
}

fn check_filter(f: &Filter, field: &str, rule: &Rule, on_backend: bool) -> Result<(), String> {
    let missing = |what: &str| Err(format!("{field}: type {:?} needs {what}", f.kind));
    match f.kind {
        FilterType::RequestHeaderModifier if f.request_header_modifier.is_none() => {
            return missing("requestHeaderModifier")
        }
        FilterType::ResponseHeaderModifier if f.response_header_modifier.is_none() => {
            return missing("responseHeaderModifier")
        }
        FilterType::RequestRedirect => {
            let Some(r) = &f.request_redirect else {
                return missing("requestRedirect");
            };
            if let Some(code) = r.status_code {
                crate::check_redirect_code(&format!("{field}.requestRedirect.statusCode"), code)?;
            }
            if let Some(s) = &r.scheme {
                if s != "http" && s != "https" {
                    return Err(format!(
                        "{field}.requestRedirect.scheme: {s:?} is not http or https"
                    ));
                }
            }
            if !on_backend && !rule.backend_refs.is_empty() {
                return Err(format!(
                    "{field}: RequestRedirect cannot be combined with backendRefs"
                ));
            }
            if let Some(p) = &r.path {
                check_path_modifier(p, &format!("{field}.requestRedirect.path"), rule)?;
            }
        }
        FilterType::URLRewrite => {
            let Some(r) = &f.url_rewrite else {
                return missing("urlRewrite");
            };
            if let Some(p) = &r.path {
                check_path_modifier(p, &format!("{field}.urlRewrite.path"), rule)?;
            }
        }
        FilterType::RequestMirror => {
            let Some(m) = &f.request_mirror else {
                return missing("requestMirror");
            };
            if m.percent.is_some() && m.fraction.is_some() {
                return Err(format!(
                    "{field}.requestMirror: percent and fraction are mutually exclusive"
                ));
            }
            if m.percent.is_some_and(|p| p > 100) {
                return Err(format!("{field}.requestMirror.percent: at most 100"));
            }
            if let Some(fr) = &m.fraction {
                if fr.denominator == 0 || fr.numerator > fr.denominator {
                    return Err(format!(
                        "{field}.requestMirror.fraction: needs 0 ≤ numerator ≤ denominator, denominator > 0"
                    ));
                }
            }
        }
        FilterType::CORS => match &f.cors {
            Some(c) => c.validate(field)?,
            None => return Err(format!("{field}.cors: required for type CORS")),
        },
        FilterType::ExtensionRef => {
            return Err(format!("{field}: filter {:?} is not supported", f.kind));
        }
        _ => {}
    }
    for (m, what) in [
        (&f.request_header_modifier, "requestHeaderModifier"),
        (&f.response_header_modifier, "responseHeaderModifier"),
    ] {
        if let Some(m) = m {
            let mut names: Vec<String> = m
                .set
                .iter()
                .chain(&m.add)
                .map(|nv| nv.name.to_ascii_lowercase())
                .chain(m.remove.iter().map(|n| n.to_ascii_lowercase()))
                .collect();
            for n in &names {
                http::HeaderName::from_bytes(n.as_bytes())
                    .map_err(|_| format!("{field}.{what}: {n:?} is not a header name"))?;
            }
            names.sort();
            if names.windows(2).any(|w| w[0] == w[1]) {
                return Err(format!("{field}.{what}: one action per header name"));
            }
        }
    }
    Ok(())
}

fn check_path_modifier(p: &PathModifier, field: &str, rule: &Rule) -> Result<(), String> {
    match p.kind {
        PathModifierType::ReplaceFullPath => {
            let v = p
                .replace_full_path
                .as_deref()
                .ok_or_else(|| format!("{field}: ReplaceFullPath needs replaceFullPath"))?;
            check_path_value(v, &format!("{field}.replaceFullPath"))
        }
        PathModifierType::ReplacePrefixMatch => {
            let v = p
                .replace_prefix_match
                .as_deref()
                .ok_or_else(|| format!("{field}: ReplacePrefixMatch needs replacePrefixMatch"))?;
            if !v.is_empty() {
                check_path_value(v, &format!("{field}.replacePrefixMatch"))?;
            }
            let prefixes = rule
                .matches
                .iter()
                .filter(|m| {
                    m.path
                        .as_ref()
                        .map(|p| p.kind == PathType::PathPrefix)
                        .unwrap_or(true)
                })
                .count();
            if rule.matches.len() > 1 || prefixes != rule.matches.len().max(1) {
                return Err(format!(
                    "{field}: ReplacePrefixMatch needs the rule to have exactly one PathPrefix match"
                ));
            }
            Ok(())
        }
    }
}

impl HttpRouteSpec {
    /// Checks what the waypoint relies on; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > 16 {
            return Err("spec.rules: at most 16 rules".into());
        }
        for (i, p) in self.parent_refs.iter().enumerate() {
            if p.name.is_empty() {
                return Err(format!("spec.parentRefs[{i}].name: required"));
            }
        }
        for (ri, rule) in self.rules.iter().enumerate() {
            let at = format!("spec.rules[{ri}]");
            for (mi, m) in rule.matches.iter().enumerate() {
                let at = format!("{at}.matches[{mi}]");
                if let Some(p) = &m.path {
                    match p.kind {
                        PathType::Exact | PathType::PathPrefix => {
                            check_path_value(p.value(), &format!("{at}.path.value"))?
                        }
                        PathType::RegularExpression => {
                            regex::Regex::new(p.value()).map_err(|e| {
                                format!("{at}.path.value: bad regular expression: {e}")
                            })?;
                        }
                    }
                }
                for (what, list) in [("headers", &m.headers), ("queryParams", &m.query_params)] {
                    for (hi, h) in list.iter().enumerate() {
                        if h.name.is_empty() {
                            return Err(format!("{at}.{what}[{hi}].name: required"));
                        }
                        if h.kind == MatchType::RegularExpression {
                            regex::Regex::new(&h.value).map_err(|e| {
                                format!("{at}.{what}[{hi}].value: bad regular expression: {e}")
                            })?;
                        }
                    }
                }
                if let Some(method) = &m.method {
                    if method.is_empty() || method.chars().any(|c| !c.is_ascii_uppercase()) {
                        return Err(format!("{at}.method: {method:?} is not an HTTP method"));
                    }
                }
            }
            for (fi, f) in rule.filters.iter().enumerate() {
                check_filter(f, &format!("{at}.filters[{fi}]"), rule, false)?;
            }
            if rule
                .filters
                .iter()
                .any(|f| f.kind == FilterType::RequestRedirect)
                && rule
                    .filters
                    .iter()
                    .any(|f| f.kind == FilterType::URLRewrite)
            {
                return Err(format!(
                    "{at}.filters: RequestRedirect and URLRewrite cannot be combined"
                ));
            }
            for (bi, b) in rule.backend_refs.iter().enumerate() {
                let at = format!("{at}.backendRefs[{bi}]");
                if b.weight.is_some_and(|w| w > 1_000_000) {
                    return Err(format!("{at}.weight: at most 1000000"));
                }
                for (fi, f) in b.filters.iter().enumerate() {
                    check_filter(f, &format!("{at}.filters[{fi}]"), rule, true)?;
                }
            }
            if let Some(t) = &rule.timeouts {
                let request = t
                    .request
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| format!("{at}.timeouts.request: {e}"))?;
                let backend = t
                    .backend_request
                    .as_deref()
                    .map(parse_duration)
                    .transpose()
                    .map_err(|e| format!("{at}.timeouts.backendRequest: {e}"))?;
                if let (Some(r), Some(b)) = (request, backend) {
                    if !r.is_zero() && (b > r || b.is_zero()) {
                        return Err(format!(
                            "{at}.timeouts.backendRequest: must not exceed timeouts.request"
                        ));
                    }
                }
            }
            if let Some(r) = &rule.retry {
                if r.attempts == Some(0) {
                    return Err(format!("{at}.retry.attempts: at least 1"));
                }
                if let Some(c) = r.codes.iter().find(|c| !(400..=599).contains(*c)) {
                    return Err(format!("{at}.retry.codes: {c} is not in 400-599"));
                }
                if let Some(b) = &r.backoff {
                    parse_duration(b).map_err(|e| format!("{at}.retry.backoff: {e}"))?;
                }
            }
        }
        Ok(())
    }
}
