//! Evaluation at a waypoint: policies compiled into checks once, then judged per request
//! or connection (AP-07), with the path normalized first (AP-21).

use std::borrow::Cow;
use std::net::IpAddr;

use super::*;

/// A `paths` entry (AP-21): the `*` forms of [`Pattern`], or a template whose segments may
/// be `{*}` (one segment) or, last, `{**}` (any number of segments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    Plain(Pattern),
    Template(Vec<Segment>),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Segment {
    Literal(String),
    One,
    Rest,
}

impl PathPattern {
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.contains('{') {
            return Ok(PathPattern::Plain(Pattern::parse(s)));
        }
        let Some(rest) = s.strip_prefix('/') else {
            return Err(format!("template {s:?} does not start with /"));
        };
        let segments: Vec<Segment> = rest
            .split('/')
            .map(|seg| match seg {
                "{*}" => Ok(Segment::One),
                "{**}" => Ok(Segment::Rest),
                s if s.contains(['{', '}', '*']) => {
                    Err(format!("{s:?}: a segment is {{*}}, {{**}} or literal text"))
                }
                s => Ok(Segment::Literal(s.to_string())),
            })
            .collect::<Result<_, _>>()?;
        if segments[..segments.len() - 1].contains(&Segment::Rest) {
            return Err(format!("template {s:?}: {{**}} must be the last segment"));
        }
        Ok(PathPattern::Template(segments))
    }

    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Plain(p) => p.matches(path),
            PathPattern::Template(segments) => {
                let Some(rest) = path.strip_prefix('/') else {
                    return false;
                };
                let mut parts = rest.split('/');
                for seg in segments {
                    match seg {
                        Segment::Rest => return true,
                        Segment::One => {
                            if parts.next().is_none_or(str::is_empty) {
                                return false;
                            }
                        }
                        Segment::Literal(l) => {
                            if parts.next() != Some(l.as_str()) {
                                return false;
                            }
                        }
                    }
                }
                parts.next().is_none()
            }
        }
    }
}

/// What a request or connection is judged on.
#[derive(Debug, Clone)]
pub struct Attributes<'a> {
    /// The peer's identity as `<trust domain>/ns/<ns>/sa/<sa>`; `None` without one.
    pub principal: Option<&'a str>,
    pub source_ip: IpAddr,
    pub destination_ip: IpAddr,
    pub destination_port: u16,
    /// `None` for a TCP connection.
    pub http: Option<HttpAttributes<'a>>,
}

#[derive(Debug, Clone)]
pub struct HttpAttributes<'a> {
    pub method: &'a str,
    /// Normalized ([`normalize_path`]), without the query.
    pub path: &'a str,
    pub host: &'a str,
    pub headers: &'a http::HeaderMap,
    /// The verified JWT (`RequestAuthentication`), if any.
    pub auth: Option<&'a crate::authn::AuthInfo>,
}

impl Attributes<'_> {
    fn peer(&self) -> Option<(&str, &str, &str)> {
        let p = self.principal?;
        let (td, rest) = p.split_once("/ns/")?;
        let (ns, sa) = rest.split_once("/sa/")?;
        Some((td, ns, sa))
    }
}

/// Values and excluded values of one attribute. An empty `any` constrains nothing; an
/// attribute that is absent matches no `any` and is excluded by no `none` (AP-11:
/// `notPrincipals` matches peers without an identity).
#[derive(Debug, Clone, Default)]
pub(super) struct Field<P> {
    any: Vec<P>,
    none: Vec<P>,
}

impl<P> Field<P> {
    fn of<T, E>(any: &[T], none: &[T], f: impl Fn(&T) -> Result<P, E>) -> Field<P> {
        Field {
            any: any.iter().filter_map(|v| f(v).ok()).collect(),
            none: none.iter().filter_map(|v| f(v).ok()).collect(),
        }
    }

    fn set(&self) -> bool {
        !(self.any.is_empty() && self.none.is_empty())
    }

    fn check<V: Copy>(&self, v: Option<V>, hit: impl Fn(&P, V) -> bool) -> bool {
        (self.any.is_empty() || v.is_some_and(|v| self.any.iter().any(|p| hit(p, v))))
            && !v.is_some_and(|v| self.none.iter().any(|p| hit(p, v)))
    }
}

pub(super) fn patterns(any: &[String], none: &[String]) -> Field<Pattern> {
    Field::of(any, none, |s| Ok::<_, ()>(Pattern::parse(s)))
}

pub(super) fn lower_patterns(any: &[String], none: &[String]) -> Field<Pattern> {
    Field::of(any, none, |s| {
        Ok::<_, ()>(Pattern::parse(&s.to_ascii_lowercase()))
    })
}

pub(super) fn cidrs(any: &[String], none: &[String]) -> Field<(IpAddr, u8)> {
    Field::of(any, none, |s| parse_cidr(s))
}

pub(super) fn ports(any: &[String], none: &[String]) -> Field<u16> {
    Field::of(any, none, |s| parse_port(s))
}

pub(super) fn in_cidr((net, len): &(IpAddr, u8), ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
            u32::from(*n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(*len)).unwrap_or(0);
            u128::from(*n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// One checkable condition of a rule.
#[derive(Debug, Clone)]
pub(super) enum Check {
    Principal(Field<Pattern>),
    Namespace(Field<Pattern>),
    TrustDomain(Field<Pattern>),
    /// (namespace, service account).
    ServiceAccount(Field<(String, String)>),
    SourceIp(Field<(IpAddr, u8)>),
    DestinationIp(Field<(IpAddr, u8)>),
    DestinationPort(Field<u16>),
    /// Never present here: no SNI inside the tunnel, keys this version does not know.
    Absent(Field<Pattern>, bool),
    /// A JWT attribute (`requestPrincipals`, `request.auth.*`): holds when one of its
    /// values matches (none without a verified token).
    Auth(AuthKey, Field<Pattern>),
    Host(Field<Pattern>),
    Method(Field<Pattern>),
    Path(Field<PathPattern>),
    Header(http::HeaderName, Field<Pattern>),
}

impl Check {
    /// Whether the condition holds. An HTTP condition on a TCP connection holds in a DENY
    /// policy and fails in any other: the rule then denies more and allows less (as ztunnel
    /// does with such rules, AP-36/37).
    fn holds(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let peer = a.peer();
        let by_pattern = |p: &Pattern, v: &str| p.matches(v);
        match self {
            Check::Principal(f) => f.check(a.principal, by_pattern),
            Check::Namespace(f) => f.check(peer.map(|p| p.1), by_pattern),
            Check::TrustDomain(f) => f.check(peer.map(|p| p.0), by_pattern),
            Check::ServiceAccount(f) => f.check(peer.map(|p| (p.1, p.2)), |(n, s), (pn, ps)| {
                n == pn && s == ps
            }),
            Check::SourceIp(f) => f.check(Some(a.source_ip), in_cidr),
            Check::DestinationIp(f) => f.check(Some(a.destination_ip), in_cidr),
            Check::DestinationPort(f) => f.check(Some(a.destination_port), |p, v| *p == v),
            Check::Absent(f, l7) => {
                if *l7 && a.http.is_none() {
                    deny
                } else {
                    f.check(None::<&str>, by_pattern)
                }
            }
            Check::Auth(key, f) => a.http.as_ref().map_or(deny, |h| {
                let values = h.auth.map(|auth| key.values(auth)).unwrap_or_default();
                (f.any.is_empty() || values.iter().any(|v| f.any.iter().any(|p| p.matches(v))))
                    && !values.iter().any(|v| f.none.iter().any(|p| p.matches(v)))
            }),
            // HTTP conditions: on a TCP connection they hold only in a DENY policy.
            Check::Host(f) => a.http.as_ref().map_or(deny, |h| {
                f.check(Some(h.host.to_ascii_lowercase().as_str()), by_pattern)
            }),
            Check::Method(f) => a
                .http
                .as_ref()
                .map_or(deny, |h| f.check(Some(h.method), by_pattern)),
            Check::Header(name, f) => a.http.as_ref().map_or(deny, |h| {
                f.check(header_value(h.headers, name).as_deref(), by_pattern)
            }),
            Check::Path(f) => a
                .http
                .as_ref()
                .map_or(deny, |h| f.check(Some(h.path), |p, v| p.matches(v))),
        }
    }
}

/// Which JWT attribute a check reads.
#[derive(Debug, Clone)]
pub(super) enum AuthKey {
    Principal,
    Audiences,
    Presenter,
    /// A claim by path (`[a][b]`).
    Claim(Vec<String>),
}

impl AuthKey {
    fn values(&self, a: &crate::authn::AuthInfo) -> Vec<String> {
        match self {
            AuthKey::Principal => vec![a.principal.clone()],
            AuthKey::Audiences => a.audiences.clone(),
            AuthKey::Presenter => a.presenter.iter().cloned().collect(),
            AuthKey::Claim(path) => {
                let p: Vec<&str> = path.iter().map(String::as_str).collect();
                a.claim(&p)
            }
        }
    }

    /// The key of a `request.auth.*` condition.
    fn of(key: &str) -> Option<AuthKey> {
        match key {
            "request.auth.principal" => Some(AuthKey::Principal),
            "request.auth.audiences" => Some(AuthKey::Audiences),
            "request.auth.presenter" => Some(AuthKey::Presenter),
            _ => {
                let rest = key.strip_prefix("request.auth.claims")?;
                let inner = rest.strip_prefix('[')?.strip_suffix(']')?;
                let path: Vec<String> = inner.split("][").map(str::to_string).collect();
                (!path.iter().any(String::is_empty)).then_some(AuthKey::Claim(path))
            }
        }
    }
}

/// A header's value; several values are judged as one, comma-joined, as Envoy does.
pub(super) fn header_value<'a>(
    headers: &'a http::HeaderMap,
    name: &http::HeaderName,
) -> Option<Cow<'a, str>> {
    let mut values = headers.get_all(name).iter().filter_map(|v| v.to_str().ok());
    let first = values.next()?;
    match values.next() {
        None => Some(Cow::Borrowed(first)),
        Some(second) => Some(Cow::Owned(
            [first, second]
                .into_iter()
                .chain(values)
                .collect::<Vec<_>>()
                .join(","),
        )),
    }
}

/// A rule: (any `from`) AND (any `to`) AND (every `when`) (AP-09). Each `from` and `to`
/// entry is the AND of its fields.
#[derive(Debug, Clone, Default)]
pub(super) struct Rule {
    from: Vec<Vec<Check>>,
    to: Vec<Vec<Check>>,
    when: Vec<Check>,
}

impl Rule {
    fn matches(&self, a: &Attributes<'_>, deny: bool) -> bool {
        let all = |checks: &Vec<Check>| checks.iter().all(|c| c.holds(a, deny));
        (self.from.is_empty() || self.from.iter().any(all))
            && (self.to.is_empty() || self.to.iter().any(all))
            && all(&self.when)
    }
}

pub(super) fn push<P>(out: &mut Vec<Check>, f: Field<P>, make: fn(Field<P>) -> Check) {
    if f.set() {
        out.push(make(f));
    }
}

pub(super) fn source_checks(s: &Source, policy_ns: &str) -> Vec<Check> {
    let mut out = Vec::new();
    push(
        &mut out,
        patterns(&s.principals, &s.not_principals),
        Check::Principal,
    );
    push(
        &mut out,
        patterns(&s.namespaces, &s.not_namespaces),
        Check::Namespace,
    );
    push(
        &mut out,
        patterns(&s.trust_domains, &s.not_trust_domains),
        Check::TrustDomain,
    );
    let sa = |v: &String| {
        let (ns, sa) = v.split_once('/').unwrap_or((policy_ns, v));
        Ok::<_, ()>((ns.to_string(), sa.to_string()))
    };
    push(
        &mut out,
        Field::of(&s.service_accounts, &s.not_service_accounts, sa),
        Check::ServiceAccount,
    );
    push(
        &mut out,
        cidrs(&s.ip_blocks, &s.not_ip_blocks),
        Check::SourceIp,
    );
    // No trusted proxies: the remote address is the connection's source (AP-16).
    push(
        &mut out,
        cidrs(&s.remote_ip_blocks, &s.not_remote_ip_blocks),
        Check::SourceIp,
    );
    let principals = patterns(&s.request_principals, &s.not_request_principals);
    if principals.set() {
        out.push(Check::Auth(AuthKey::Principal, principals));
    }
    if has_values(&s.other) {
        // A field this version does not know: it never holds.
        out.push(Check::Absent(
            Field {
                any: vec![Pattern::Presence],
                none: vec![],
            },
            false,
        ));
    }
    out
}

pub(super) fn operation_checks(o: &Operation) -> Vec<Check> {
    let mut out = Vec::new();
    push(
        &mut out,
        lower_patterns(&o.hosts, &o.not_hosts),
        Check::Host,
    );
    push(
        &mut out,
        ports(&o.ports, &o.not_ports),
        Check::DestinationPort,
    );
    push(
        &mut out,
        patterns(&o.methods, &o.not_methods),
        Check::Method,
    );
    push(
        &mut out,
        Field::of(&o.paths, &o.not_paths, |s| PathPattern::parse(s)),
        Check::Path,
    );
    if has_values(&o.other) {
        out.push(Check::Absent(
            Field {
                any: vec![Pattern::Presence],
                none: vec![],
            },
            false,
        ));
    }
    out
}

pub(super) fn condition_check(c: &RuleCondition) -> Check {
    let (v, n) = (&c.values, &c.not_values);
    match c.key.as_str() {
        "source.ip" | "remote.ip" => Check::SourceIp(cidrs(v, n)),
        "destination.ip" => Check::DestinationIp(cidrs(v, n)),
        "destination.port" => Check::DestinationPort(ports(v, n)),
        "source.namespace" => Check::Namespace(patterns(v, n)),
        "source.principal" => Check::Principal(patterns(v, n)),
        "source.trustDomain" => Check::TrustDomain(patterns(v, n)),
        "source.serviceAccount" => Check::ServiceAccount(Field::of(v, n, |s: &String| {
            s.split_once('/')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or(())
        })),
        key => match bracketed(key, "request.headers")
            .and_then(|name| http::HeaderName::from_bytes(name.as_bytes()).ok())
        {
            Some(name) => Check::Header(name, patterns(v, n)),
            None => match AuthKey::of(key) {
                Some(auth) => Check::Auth(auth, patterns(v, n)),
                // connection.sni: never present at this waypoint.
                None => Check::Absent(patterns(v, n), key.starts_with("request.")),
            },
        },
    }
}

/// A policy ready to judge requests.
#[derive(Debug, Clone)]
pub struct Policy {
    /// `namespace.name`, as Envoy names the matched policy.
    pub id: String,
    pub action: PolicyAction,
    pub dry_run: bool,
    /// CUSTOM: the provider named.
    pub provider: Option<String>,
    rules: Vec<Rule>,
}

impl Policy {
    pub fn new(
        namespace: &str,
        name: &str,
        spec: &AuthorizationPolicySpec,
        dry_run: bool,
    ) -> Policy {
        Policy {
            id: format!("{namespace}.{name}"),
            action: spec.action.unwrap_or(PolicyAction::Allow),
            dry_run,
            provider: spec.provider.as_ref().map(|p| p.name.clone()),
            rules: spec
                .rules
                .iter()
                .map(|r| Rule {
                    from: r
                        .from
                        .iter()
                        .map(|f| source_checks(&f.source, namespace))
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .map(|t| operation_checks(&t.operation))
                        .collect(),
                    when: r.when.iter().map(condition_check).collect(),
                })
                .collect(),
        }
    }

    /// Whether any rule matches; a policy without rules matches nothing (AP-03, AP-04).
    pub fn matches(&self, a: &Attributes<'_>) -> bool {
        let deny = self.action != PolicyAction::Allow;
        self.rules.iter().any(|r| r.matches(a, deny))
    }
}

/// The outcome for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Allowed; by the ALLOW policy named, or `None` when no ALLOW policy applies.
    Allow(Option<String>),
    /// Denied by the policy named (`None`: ALLOW policies apply and none matched).
    Deny(Option<String>),
}

impl Decision {
    pub fn allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    /// Envoy's response code details for a denial: `rbac_access_denied_matched_policy[..]`.
    pub fn details(&self) -> String {
        match self {
            Decision::Allow(_) => "-".into(),
            Decision::Deny(p) => format!(
                "rbac_access_denied_matched_policy[{}]",
                p.as_deref().unwrap_or("none")
            ),
        }
    }
}

/// A request's decision, and what the dry-run and AUDIT policies make of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub decision: Decision,
    /// What the `istio.io/dry-run` policies alone would decide, when there are any.
    pub shadow: Option<Decision>,
    /// The AUDIT policies that match.
    pub audited: Vec<String>,
}

/// CUSTOM (a provider this waypoint cannot reach: a matching CUSTOM policy denies), then
/// DENY, then ALLOW: allowed when no ALLOW policy applies or one matches (AP-07).
pub(super) fn decide<'a>(
    policies: impl Iterator<Item = &'a Policy> + Clone,
    a: &Attributes<'_>,
) -> Decision {
    let acting = |action: PolicyAction| policies.clone().filter(move |p| p.action == action);
    if let Some(p) = acting(PolicyAction::Custom).find(|p| p.matches(a)) {
        return Decision::Deny(Some(p.id.clone()));
    }
    if let Some(p) = acting(PolicyAction::Deny).find(|p| p.matches(a)) {
        return Decision::Deny(Some(p.id.clone()));
    }
    let mut allows = acting(PolicyAction::Allow).peekable();
    if allows.peek().is_none() {
        return Decision::Allow(None);
    }
    match allows.find(|p| p.matches(a)) {
        Some(p) => Decision::Allow(Some(p.id.clone())),
        None => Decision::Deny(None),
    }
}

/// Judges `a` by the policies that apply to it.
pub fn evaluate(policies: &[std::sync::Arc<Policy>], a: &Attributes<'_>) -> Verdict {
    let enforced = policies.iter().map(|p| &**p).filter(|p| !p.dry_run);
    let dry = policies.iter().map(|p| &**p).filter(|p| p.dry_run);
    Verdict {
        decision: decide(enforced, a),
        shadow: (dry.clone().next().is_some()).then(|| decide(dry, a)),
        audited: policies
            .iter()
            .filter(|p| p.action == PolicyAction::Audit && p.matches(a))
            .map(|p| p.id.clone())
            .collect(),
    }
}

/// The path as matched and forwarded (docs/WIRE.md §8, AP-21, mesh `pathNormalization`
/// BASE): `\` as `/`, percent-encoded unreserved characters decoded, other escapes in upper
/// case, and `.` and `..` segments removed (RFC 3986 §5.2.4). `path` has no query.
pub fn normalize_path(path: &str) -> Cow<'_, str> {
    let needs = path.contains(['%', '\\']) || path.split('/').any(|s| s == "." || s == "..");
    if !needs || !path.starts_with(['/', '\\']) {
        return Cow::Borrowed(path);
    }
    let b = path.as_bytes();
    let mut decoded = String::with_capacity(path.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'\\' => decoded.push('/'),
            b'%' if i + 2 < b.len()
                && b[i + 1].is_ascii_hexdigit()
                && b[i + 2].is_ascii_hexdigit() =>
            {
                let hex = |c: u8| (c as char).to_digit(16).unwrap_or(0) as u8;
                let c = hex(b[i + 1]) * 16 + hex(b[i + 2]);
                if c.is_ascii_alphanumeric() || b"-._~".contains(&c) {
                    decoded.push(char::from(c));
                } else {
                    decoded.push('%');
                    decoded.push(char::from(b[i + 1].to_ascii_uppercase()));
                    decoded.push(char::from(b[i + 2].to_ascii_uppercase()));
                }
                i += 3;
                continue;
            }
            _ => {
                // The whole character: a lenient client may send raw UTF-8.
                let ch = path[i..].chars().next().unwrap_or('\u{fffd}');
                decoded.push(ch);
                i += ch.len_utf8();
                continue;
            }
        }
        i += 1;
    }
    let segments: Vec<&str> = decoded[1..].split('/').collect();
    let mut out: Vec<&str> = Vec::with_capacity(segments.len());
    for (k, seg) in segments.iter().enumerate() {
        let last = k + 1 == segments.len();
        match *seg {
            "." | ".." => {
                if *seg == ".." {
                    out.pop();
                }
                if last {
                    out.push("");
                }
            }
            s => out.push(s),
        }
    }
    Cow::Owned(format!("/{}", out.join("/")))
}
