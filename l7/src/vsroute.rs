//! VirtualService rules of one service port, in first-match order (VS-03), and what a
//! selected rule does to a request: redirect `Location`, URI rewrite, header operations and
//! CORS (docs/WIRE.md §8).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use regex::Regex;

use crate::istio::{
    CorsPolicy, DestinationRuleSpec, HeaderOps, HttpRedirect, HttpRule, StringMatch,
    VirtualServiceSpec,
};

/// The cluster's DNS suffix for services.
pub const CLUSTER_SUFFIX: &str = "svc.cluster.local";

/// A VirtualService as the waypoint holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    pub namespace: String,
    pub name: String,
    /// Creation order (older first): the order rules of several VirtualServices merge in.
    pub created: u64,
    pub spec: VirtualServiceSpec,
}

/// A DestinationRule, with the workloads of each subset (resolved by the control plane,
/// which knows the pods' labels).
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationRule {
    pub namespace: String,
    pub name: String,
    pub created: u64,
    pub spec: DestinationRuleSpec,
    /// Subset name → its workloads.
    pub subsets: BTreeMap<String, Arc<SubsetMembers>>,
}

/// A subset of a DestinationRule and the uids of its workloads.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubsetMembers {
    pub name: String,
    pub uids: BTreeSet<String>,
}

/// A host as written in a VirtualService or DestinationRule, as a fully qualified name:
/// `reviews` → `reviews.<ns>.svc.cluster.local`, `reviews.other` →
/// `reviews.other.svc.cluster.local`; names with more dots are taken as they are.
pub fn fqdn(host: &str, namespace: &str) -> String {
    match host.matches('.').count() {
        0 => format!("{host}.{namespace}.{CLUSTER_SUFFIX}"),
        1 => format!("{host}.{CLUSTER_SUFFIX}"),
        2 if host.ends_with(".svc") => format!("{host}.cluster.local"),
        _ => host.to_string(),
    }
}

/// Whether a VirtualService host (`*`, `*.suffix`, short or full name) names `hostname`.
pub fn host_matches(vs_host: &str, vs_namespace: &str, hostname: &str) -> bool {
    if vs_host == "*" {
        return true;
    }
    if let Some(suffix) = vs_host.strip_prefix('*') {
        return hostname.ends_with(suffix);
    }
    fqdn(vs_host, vs_namespace) == hostname
}

/// The service port a request was addressed to, as VirtualService selection sees it.
#[derive(Debug, Clone)]
pub struct Frontend<'a> {
    pub service_namespace: &'a str,
    pub hostname: &'a str,
    pub waypoint_namespace: &'a str,
}

#[derive(Debug)]
enum StrTest {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

impl StrTest {
    fn new(m: &StringMatch, ignore_case: bool) -> Option<StrTest> {
        let fold = |s: &String| {
            if ignore_case {
                s.to_ascii_lowercase()
            } else {
                s.clone()
            }
        };
        if let Some(e) = &m.exact {
            return Some(StrTest::Exact(fold(e)));
        }
        if let Some(p) = &m.prefix {
            return Some(StrTest::Prefix(fold(p)));
        }
        let re = m.regex.as_ref()?;
        Regex::new(&format!("^(?:{re})$")).ok().map(StrTest::Regex)
    }

    fn matches(&self, v: &str, ignore_case: bool) -> bool {
        let folded;
        let v = if ignore_case && !matches!(self, StrTest::Regex(_)) {
            folded = v.to_ascii_lowercase();
            folded.as_str()
        } else {
            v
        };
        match self {
            StrTest::Exact(e) => v == e,
            StrTest::Prefix(p) => v.starts_with(p.as_str()),
            StrTest::Regex(r) => r.is_match(v),
        }
    }
}

#[derive(Debug)]
enum HeaderTest {
    /// `{}` or `regex: "*"`: the header is there.
    Presence,
    Value(StrTest),
}

impl HeaderTest {
    fn new(m: &StringMatch) -> Option<HeaderTest> {
        if m == &StringMatch::default() || m.regex.as_deref() == Some("*") {
            return Some(HeaderTest::Presence);
        }
        StrTest::new(m, false).map(HeaderTest::Value)
    }

    /// `headers`: the header is there and matches.
    fn matches(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (HeaderTest::Presence, v) => v.is_some(),
            (HeaderTest::Value(t), Some(v)) => t.matches(v, false),
            (HeaderTest::Value(_), None) => false,
        }
    }

    /// `withoutHeaders` (VS-30): a missing header counts as empty, except for a presence
    /// test, which then holds only when the header is absent.
    fn matches_without(&self, v: Option<&str>) -> bool {
        match self {
            HeaderTest::Presence => v.is_none(),
            HeaderTest::Value(t) => !t.matches(v.unwrap_or(""), false),
        }
    }
}

/// How the path matched, for rewrites.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UriMatched {
    /// No `uri` condition.
    None,
    Exact,
    /// This many bytes of the path are the matched prefix.
    Prefix(usize),
    Regex,
}

#[derive(Debug)]
struct Compiled {
    uri: Option<(StrTest, bool)>,
    scheme: Option<StrTest>,
    method: Option<StrTest>,
    authority: Option<StrTest>,
    headers: Vec<(HeaderKey, HeaderTest)>,
    without: Vec<(HeaderKey, HeaderTest)>,
    query: Vec<(String, StrTest)>,
    port: Option<u16>,
    /// `sourceLabels` / `sourceNamespace`: config-time client selectors, which an Istio
    /// waypoint drops (VS-33): the block never matches.
    never: bool,
}

/// What a `headers`/`withoutHeaders` key names: a header, or one of HTTP/2's request
/// pseudo-headers (RFC 9113 §8.3.1), which an HTTP/1.1 request has too, as its request line
/// and `host`.
#[derive(Debug)]
enum HeaderKey {
    Name(HeaderName),
    Method,
    Authority,
    Scheme,
    /// The request target with its query, as `:path` carries it.
    Path,
}

impl HeaderKey {
    fn new(name: &str) -> Option<HeaderKey> {
        Some(match name {
            ":method" => HeaderKey::Method,
            ":authority" => HeaderKey::Authority,
            ":scheme" => HeaderKey::Scheme,
            ":path" => HeaderKey::Path,
            // Any other pseudo-header, or a name that is not a header name: the match
            // block is invalid.
            _ => HeaderKey::Name(HeaderName::from_bytes(name.as_bytes()).ok()?),
        })
    }

    fn value<'a>(&self, r: &'a RequestView<'_>) -> Option<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        match self {
            HeaderKey::Name(n) => r.headers.get(n)?.to_str().ok().map(Cow::Borrowed),
            HeaderKey::Method => Some(Cow::Borrowed(r.method)),
            HeaderKey::Authority => Some(Cow::Borrowed(r.authority)),
            HeaderKey::Scheme => Some(Cow::Borrowed(r.scheme)),
            HeaderKey::Path => Some(match r.query {
                Some(q) => Cow::Owned(format!("{}?{q}", r.path)),
                None => Cow::Borrowed(r.path),
            }),
        }
    }
}

/// The request facts VirtualService matches look at.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub scheme: &'a str,
    /// Host / `:authority` as sent.
    pub authority: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The service port addressed.
    pub port: u16,
}

/// The first value of query parameter `name` (`Some("")` for a bare `?name`).
fn query_value<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?.split('&').find_map(|kv| match kv.split_once('=') {
        Some((k, v)) if k == name => Some(v),
        None if kv == name => Some(""),
        _ => None,
    })
}

impl Compiled {
    /// `gateway`: the gateway (`namespace/name`) the table is for, `None` for the mesh; a
    /// block whose own `gateways` leave it out never matches there.
    fn new(m: &crate::istio::HttpMatch, vs_ns: &str, gateway: Option<&str>) -> Option<Compiled> {
        let elsewhere = !m.gateways.is_empty()
            && match gateway {
                None => !m.gateways.iter().any(|g| g == "mesh"),
                Some(key) => !m
                    .gateways
                    .iter()
                    .any(|g| crate::gateway::binds(g, vs_ns, key)),
            };
        let opt = |m: &Option<StringMatch>| -> Option<Option<StrTest>> {
            match m {
                None => Some(None),
                Some(m) => StrTest::new(m, false).map(Some),
            }
        };
        let headers =
            |map: &BTreeMap<String, StringMatch>| -> Option<Vec<(HeaderKey, HeaderTest)>> {
                map.iter()
                    .filter(|(n, _)| {
                        !matches!(n.as_str(), "uri" | "scheme" | "method" | "authority")
                    })
                    .map(|(n, t)| Some((HeaderKey::new(n)?, HeaderTest::new(t)?)))
                    .collect()
            };
        Some(Compiled {
            uri: match &m.uri {
                None => None,
                Some(u) => Some((StrTest::new(u, m.ignore_uri_case)?, m.ignore_uri_case)),
            },
            scheme: opt(&m.scheme)?,
            method: opt(&m.method)?,
            authority: opt(&m.authority)?,
            headers: headers(&m.headers)?,
            without: headers(&m.without_headers)?,
            query: m
                .query_params
                .iter()
                .map(|(n, t)| Some((n.clone(), StrTest::new(t, false)?)))
                .collect::<Option<_>>()?,
            port: m.port,
            never: elsewhere || !m.source_labels.is_empty() || m.source_namespace.is_some(),
        })
    }

    fn matches(&self, r: &RequestView<'_>) -> Option<UriMatched> {
        if self.never || self.port.is_some_and(|p| p != r.port) {
            return None;
        }
        let test = |t: &Option<StrTest>, v: &str| t.as_ref().is_none_or(|t| t.matches(v, false));
        if !test(&self.scheme, r.scheme)
            || !test(&self.method, r.method)
            || !test(&self.authority, r.authority)
        {
            return None;
        }
        if !self
            .headers
            .iter()
            .all(|(k, t)| t.matches(k.value(r).as_deref()))
        {
            return None;
        }
        if !self
            .without
            .iter()
            .all(|(k, t)| t.matches_without(k.value(r).as_deref()))
        {
            return None;
        }
        if !self
            .query
            .iter()
            .all(|(n, t)| query_value(r.query, n).is_some_and(|v| t.matches(v, false)))
        {
            return None;
        }
        match &self.uri {
            None => Some(UriMatched::None),
            Some((t, fold)) => t.matches(r.path, *fold).then_some(match t {
                StrTest::Exact(_) => UriMatched::Exact,
                StrTest::Prefix(p) => UriMatched::Prefix(p.len()),
                StrTest::Regex(_) => UriMatched::Regex,
            }),
        }
    }
}

#[derive(Debug)]
struct Entry {
    vs: Arc<VirtualService>,
    rule: usize,
    /// Empty: the rule matches everything.
    matches: Vec<Compiled>,
    /// At a gateway: the VirtualService's hosts that the gateway serves.
    hosts: Arc<[String]>,
}

/// An ingress gateway as VirtualServices bind to it: its `namespace/name` and the hosts of
/// one port's servers.
#[derive(Debug, Clone)]
pub struct GatewayFrontend<'a> {
    pub key: &'a str,
    /// The gateway pods' namespace: `exportTo` is seen from there (VS-06).
    pub proxy_namespace: &'a str,
    pub hosts: &'a [crate::gateway::HostFilter],
}

/// The rules of every VirtualService that applies to one service, in order.
#[derive(Debug)]
pub struct VsTable {
    entries: Vec<Entry>,
}

/// The selected rule.
#[derive(Debug, Clone)]
pub struct Selected {
    pub vs: Arc<VirtualService>,
    pub rule: usize,
    pub uri: UriMatched,
}

impl Selected {
    pub fn rule(&self) -> &HttpRule {
        &self.vs.spec.http[self.rule]
    }

    pub fn name(&self) -> String {
        format!("{}/{}", self.vs.namespace, self.vs.name)
    }
}

/// Whether `vs` applies to the service (VS-01, VS-02): one of its hosts names the service,
/// it is bound to the mesh, it lives in the service's or the waypoint's namespace, and it is
/// exported to the waypoint's (VS-06).
pub fn applies(vs: &VirtualService, f: &Frontend<'_>) -> bool {
    (vs.namespace == f.service_namespace || vs.namespace == f.waypoint_namespace)
        && vs.spec.for_mesh()
        && crate::istio::delegate::exported_to(
            &vs.spec.export_to,
            &vs.namespace,
            f.waypoint_namespace,
        )
        && vs
            .spec
            .hosts
            .iter()
            .any(|h| host_matches(h, &vs.namespace, f.hostname))
}

impl VsTable {
    /// The HTTP rules in the order requests are matched against them: the VirtualService
    /// (`namespace/name`), the rule's index and the rule as written (`waypoint-config`).
    pub fn describe(&self) -> Vec<serde_json::Value> {
        self.entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "virtualService": format!("{}/{}", e.vs.namespace, e.vs.name),
                    "rule": e.rule,
                    "spec": e.vs.spec.http.get(e.rule),
                })
            })
            .collect()
    }

    /// The table for `f`, or `None` when no VirtualService with HTTP rules applies. Several
    /// merge in creation order (then namespace/name).
    pub fn build(all: &[Arc<VirtualService>], f: &Frontend<'_>) -> Option<VsTable> {
        let chosen = all
            .iter()
            .filter(|vs| !vs.spec.http.is_empty() && applies(vs, f))
            .map(|vs| (vs, Arc::from([])));
        Self::of(chosen, None)
    }

    /// The table of an ingress gateway's servers on one port: the VirtualServices bound to
    /// the gateway by `gateways:` whose hosts the servers serve (a server host
    /// `namespace/host` admits only that namespace's VirtualServices).
    pub fn for_gateway(all: &[Arc<VirtualService>], g: &GatewayFrontend<'_>) -> Option<VsTable> {
        let chosen = all.iter().filter_map(|vs| {
            let bound = vs
                .spec
                .gateways
                .iter()
                .any(|name| crate::gateway::binds(name, &vs.namespace, g.key));
            let exported = crate::istio::delegate::exported_to(
                &vs.spec.export_to,
                &vs.namespace,
                g.proxy_namespace,
            );
            if vs.spec.http.is_empty() || !bound || !exported {
                return None;
            }
            let hosts: Vec<String> = vs
                .spec
                .hosts
                .iter()
                .map(|h| {
                    if h.contains('*') || h.contains('.') {
                        h.clone()
                    } else {
                        fqdn(h, &vs.namespace)
                    }
                })
                .filter(|h| {
                    g.hosts.iter().any(|f| {
                        f.namespace.as_deref().is_none_or(|n| n == vs.namespace)
                            && crate::gateway::hosts_intersect(&f.host, h)
                    })
                })
                .collect();
            (!hosts.is_empty()).then(|| (vs, Arc::from(hosts)))
        });
        Self::of(chosen, Some(g.key))
    }

    fn of<'a>(
        chosen: impl Iterator<Item = (&'a Arc<VirtualService>, Arc<[String]>)>,
        gateway: Option<&str>,
    ) -> Option<VsTable> {
        let mut chosen: Vec<_> = chosen.collect();
        if chosen.is_empty() {
            return None;
        }
        chosen.sort_by(|(a, _), (b, _)| {
            (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
        });
        let mut entries = Vec::new();
        for (vs, hosts) in chosen {
            for (i, rule) in vs.spec.http.iter().enumerate() {
                let matches: Option<Vec<Compiled>> = rule
                    .matches
                    .iter()
                    .map(|m| Compiled::new(m, &vs.namespace, gateway))
                    .collect();
                // Validated at the control plane; a rule that does not compile is skipped.
                let Some(matches) = matches else { continue };
                entries.push(Entry {
                    vs: vs.clone(),
                    rule: i,
                    matches,
                    hosts: hosts.clone(),
                });
            }
        }
        Some(VsTable { entries })
    }

    /// At a gateway: the first matching rule among the VirtualServices with the most
    /// specific host covering `host` (no port), as Istio picks a virtual host first.
    pub fn select_for_host(&self, host: &str, r: &RequestView<'_>) -> Option<Selected> {
        let rank = |e: &Entry| -> Option<usize> {
            e.hosts
                .iter()
                .filter_map(|p| crate::gateway::host_rank(p, host))
                .min()
        };
        let best = self.entries.iter().filter_map(rank).min()?;
        self.entries
            .iter()
            .filter(|e| rank(e) == Some(best))
            .find_map(|e| e.select(r))
    }

    /// The first rule with a matching block (or no blocks).
    pub fn select(&self, r: &RequestView<'_>) -> Option<Selected> {
        self.entries.iter().find_map(|e| e.select(r))
    }
}

impl Entry {
    fn select(&self, r: &RequestView<'_>) -> Option<Selected> {
        let uri = if self.matches.is_empty() {
            Some(UriMatched::None)
        } else {
            self.matches.iter().find_map(|m| m.matches(r))
        }?;
        Some(Selected {
            vs: self.vs.clone(),
            rule: self.rule,
            uri,
        })
    }
}

/// The TCP rule destinations for a connection to `dst:port` (VS-81..84), first match.
pub fn tcp_route<'a>(
    all: &'a [Arc<VirtualService>],
    f: &Frontend<'_>,
    dst: std::net::IpAddr,
    port: u16,
) -> Option<(&'a VirtualService, &'a crate::istio::TcpRule)> {
    let mut chosen: Vec<&Arc<VirtualService>> = all
        .iter()
        .filter(|vs| !vs.spec.tcp.is_empty() && applies(vs, f))
        .collect();
    chosen.sort_by(|a, b| {
        (a.created, &a.namespace, &a.name).cmp(&(b.created, &b.namespace, &b.name))
    });
    chosen.into_iter().find_map(|vs| {
        vs.spec
            .tcp
            .iter()
            .find(|r| {
                r.matches.is_empty()
                    || r.matches.iter().any(|m| {
                        m.source_labels.is_empty()
                            && m.source_namespace.is_none()
                            && m.port.is_none_or(|p| p == port)
                            && (m.destination_subnets.is_empty()
                                || m.destination_subnets.iter().any(|s| {
                                    crate::istio::parse_cidr(s).is_some_and(|(n, l)| {
                                        crate::istio::cidr_contains(n, l, dst)
                                    })
                                }))
                    })
            })
            .map(|r| (vs.as_ref(), r))
    })
}

/// One destination of a weighted list (VS-39): a single one takes everything; otherwise by
/// weight, weight 0 never.
pub fn pick_weighted(
    route: &[crate::istio::RouteDestination],
) -> Option<&crate::istio::RouteDestination> {
    use rand::Rng;
    if route.len() == 1 {
        return route.first();
    }
    let total: u64 = route.iter().map(|r| u64::from(r.weight.unwrap_or(0))).sum();
    if total == 0 {
        return None;
    }
    let mut n = rand::thread_rng().gen_range(0..total);
    for r in route {
        let w = u64::from(r.weight.unwrap_or(0));
        if n < w {
            return Some(r);
        }
        n -= w;
    }
    None
}

/// Applies VirtualService header operations (`set` replaces, `add` appends, `remove`).
/// `host`/`:authority` in `set` are authority rewrites, left to the caller.
pub fn apply_header_ops(headers: &mut HeaderMap, ops: &HeaderOps) {
    let name = |n: &str| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
    for (n, v) in &ops.set {
        if matches!(n.to_ascii_lowercase().as_str(), ":authority" | "host") {
            continue;
        }
        if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_str(v)) {
            headers.insert(n, v);
        }
    }
    for (n, v) in &ops.add {
        if let (Some(n), Ok(v)) = (name(n), HeaderValue::from_str(v)) {
            headers.append(n, v);
        }
    }
    for n in &ops.remove {
        if n.eq_ignore_ascii_case("host") {
            continue;
        }
        if let Some(n) = name(n) {
            headers.remove(n);
        }
    }
}

/// The authority a `headers.request.set` of `host`/`:authority` asks for.
pub fn authority_set(ops: &HeaderOps) -> Option<&str> {
    ops.set
        .iter()
        .find(|(k, _)| matches!(k.to_ascii_lowercase().as_str(), ":authority" | "host"))
        .map(|(_, v)| v.as_str())
}

/// The path after `rewrite.uri` (VS-50): the matched prefix replaced (raw, `/foo` + `/` on
/// `/foo/bar` gives `//bar`), the whole path for an exact or regex match, and for a rule
/// without a `uri` condition the leading `/`.
pub fn rewrite_uri(path: &str, matched: &UriMatched, with: &str) -> String {
    match matched {
        UriMatched::Exact | UriMatched::Regex => with.to_string(),
        UriMatched::Prefix(n) => format!("{with}{}", &path[(*n).min(path.len())..]),
        UriMatched::None => format!("{with}{}", path.strip_prefix('/').unwrap_or(path)),
    }
}

/// `rewrite.uriRegexRewrite` (VS-52): every match replaced, `\1` naming capture groups.
pub fn regex_rewrite(path: &str, pattern: &str, with: &str) -> String {
    let Ok(re) = Regex::new(pattern) else {
        return path.to_string();
    };
    let with = Regex::new(r"\\(\d)")
        .map(|r| r.replace_all(with, "$${$1}").into_owned())
        .unwrap_or_else(|_| with.to_string());
    re.replace_all(path, with.as_str()).into_owned()
}

/// The status and `Location` of a VirtualService redirect (VS-41..47).
pub fn redirect(
    r: &HttpRedirect,
    scheme: &str,
    authority: &str,
    service_port: u16,
    path: &str,
    query: Option<&str>,
    matched: &UriMatched,
) -> (u16, String) {
    let new_scheme = r.scheme.as_deref().unwrap_or(scheme);
    let default_port = |s: &str| if s == "https" { 443 } else { 80 };
    let authority = r.authority.as_deref().unwrap_or(authority);
    let (host, mut port) = match authority.rsplit_once(':') {
        Some((h, p)) if p.parse::<u16>().is_ok() => (h, p.parse().ok()),
        _ => (authority, None),
    };
    match (r.port, r.derive_port.as_deref()) {
        (Some(p), _) => port = Some(p),
        (None, Some("FROM_PROTOCOL_DEFAULT")) => port = None,
        // The port the request named, else the one it was sent to.
        (None, Some("FROM_REQUEST_PORT")) => port = port.or(Some(service_port)),
        // A scheme change drops the old scheme's default port; otherwise the authority
        // is kept as it was sent (`b:80` stays `b:80`).
        _ if new_scheme != scheme && port == Some(default_port(scheme)) => port = None,
        _ => {}
    }
    if r.port.is_some() || r.derive_port.is_some() {
        port = port.filter(|p| *p != default_port(new_scheme));
    }
    let (new_path, own_query) = match (&r.uri, &r.prefix_rewrite) {
        (Some(u), _) => match u.split_once('?') {
            Some((p, q)) => (p.to_string(), Some(q.to_string())),
            None => (u.clone(), None),
        },
        (None, Some(p)) => (rewrite_uri(path, matched, p), None),
        (None, None) => (path.to_string(), None),
    };
    let mut loc = format!("{new_scheme}://{host}");
    if let Some(p) = port {
        loc.push_str(&format!(":{p}"));
    }
    loc.push_str(&new_path);
    if let Some(q) = own_query.as_deref().or(query) {
        loc.push('?');
        loc.push_str(q);
    }
    (r.redirect_code.unwrap_or(301), loc)
}

/// What CORS does with a request (VS-68..74).
#[derive(Debug, PartialEq, Eq)]
pub enum Cors {
    /// Not a cross-origin request, or an origin that is not allowed: forward it as it is.
    Forward,
    /// A preflight answered here: 200 with these headers (none for an unmatched preflight
    /// with `unmatchedPreflights: IGNORE`).
    Preflight(Vec<(HeaderName, String)>),
    /// An allowed actual request: forward, and add these to the response.
    Actual(Vec<(HeaderName, String)>),
}

fn origin_allowed(p: &CorsPolicy, origin: &str) -> bool {
    p.allow_origins
        .iter()
        .any(|m| StrTest::new(m, false).is_some_and(|t| t.matches(origin, false)))
        || p.allow_origin.iter().any(|o| o == "*" || o == origin)
}

pub fn cors(p: &CorsPolicy, method: &http::Method, headers: &HeaderMap) -> Cors {
    use http::header as h;
    let Some(origin) = headers.get(h::ORIGIN).and_then(|o| o.to_str().ok()) else {
        return Cors::Forward;
    };
    let preflight =
        method == http::Method::OPTIONS && headers.contains_key(h::ACCESS_CONTROL_REQUEST_METHOD);
    let allowed = origin_allowed(p, origin);
    let mut out = Vec::new();
    if allowed {
        out.push((h::ACCESS_CONTROL_ALLOW_ORIGIN, origin.to_string()));
        if p.allow_credentials == Some(true) {
            out.push((h::ACCESS_CONTROL_ALLOW_CREDENTIALS, "true".to_string()));
        }
    }
    match (preflight, allowed) {
        (true, true) => {
            if !p.allow_methods.is_empty() {
                out.push((h::ACCESS_CONTROL_ALLOW_METHODS, p.allow_methods.join(",")));
            }
            if !p.allow_headers.is_empty() {
                out.push((h::ACCESS_CONTROL_ALLOW_HEADERS, p.allow_headers.join(",")));
            }
            if let Some(age) = p
                .max_age
                .as_deref()
                .and_then(|a| crate::istio::parse_duration(a).ok())
            {
                out.push((h::ACCESS_CONTROL_MAX_AGE, age.as_secs().to_string()));
            }
            Cors::Preflight(out)
        }
        (true, false) if p.unmatched_preflights.as_deref() == Some("IGNORE") => {
            Cors::Preflight(Vec::new())
        }
        (false, true) => {
            if !p.expose_headers.is_empty() {
                out.push((h::ACCESS_CONTROL_EXPOSE_HEADERS, p.expose_headers.join(",")));
            }
            Cors::Actual(out)
        }
        _ => Cors::Forward,
    }
}
