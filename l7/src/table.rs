//! The routes of one service port, in Gateway API precedence (docs/WIRE.md §8), and
//! what a selected rule does to a request.

use std::sync::Arc;

use http::{HeaderMap, HeaderName, HeaderValue};
use rand::Rng;
use regex::Regex;

use crate::httproute::{
    BackendRef, Filter, FilterType, HeaderModifier, HttpRouteSpec, MatchType, PathModifier,
    PathModifierType, PathType, Redirect, Rule,
};

/// An HTTPRoute as the waypoint holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub namespace: String,
    pub name: String,
    /// Creation order (older first): the cross-route tie-break (GW-63).
    pub created: u64,
    pub spec: HttpRouteSpec,
}

/// The frontend a request was addressed to: a Service port (by VIP), and the client's
/// namespace (for consumer routes, GM-04).
#[derive(Debug, Clone)]
pub struct Frontend<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub port: u16,
    pub port_name: Option<&'a str>,
    pub client_namespace: &'a str,
}

/// A listener of an ingress gateway, as HTTPRoutes attach to it.
#[derive(Debug, Clone)]
pub struct ListenerFrontend<'a> {
    pub gateway_namespace: &'a str,
    pub gateway_name: &'a str,
    pub listener: &'a str,
    pub port: u16,
    /// The listener's hostname; `None`: any.
    pub hostname: Option<&'a str>,
    /// `None`: routes from any namespace.
    pub route_namespaces: Option<&'a [String]>,
}

#[derive(Debug)]
enum PathTest {
    Exact(String),
    Prefix(String),
    Regex(Regex),
}

#[derive(Debug)]
enum ValueTest {
    Exact(String),
    Regex(Regex),
}

impl ValueTest {
    fn matches(&self, v: &str) -> bool {
        match self {
            ValueTest::Exact(e) => e == v,
            ValueTest::Regex(r) => r.is_match(v),
        }
    }
}

/// A full-string regular expression (RE2 full match, as Envoy).
fn full(re: &str) -> Option<Regex> {
    Regex::new(&format!("^(?:{re})$")).ok()
}

fn value_test(kind: MatchType, value: &str) -> Option<ValueTest> {
    match kind {
        MatchType::Exact => Some(ValueTest::Exact(value.to_string())),
        MatchType::RegularExpression => full(value).map(ValueTest::Regex),
    }
}

/// One match of one rule, compiled.
#[derive(Debug)]
struct Entry {
    route: Arc<Route>,
    rule: usize,
    path: PathTest,
    headers: Vec<(HeaderName, ValueTest)>,
    query: Vec<(String, ValueTest)>,
    method: Option<String>,
    /// At a gateway listener: the hostnames the route answers for (empty: any).
    hosts: Arc<[String]>,
}

/// Whether `path` is under `prefix`, segment by segment (GW-12).
pub fn prefix_matches(prefix: &str, path: &str) -> bool {
    let p = prefix.trim_end_matches('/');
    if p.is_empty() {
        return true;
    }
    path == p || path.starts_with(&format!("{p}/"))
}

/// The path with the matched `prefix` replaced by `with` (GW-24/29 slash table; never `//`).
pub fn replace_prefix(path: &str, prefix: &str, with: &str) -> String {
    let p = prefix.trim_end_matches('/');
    let rest = path.get(p.len()..).unwrap_or("");
    let out = format!("{}{rest}", with.trim_end_matches('/'));
    if out.is_empty() {
        "/".into()
    } else if out.starts_with('/') {
        out
    } else {
        format!("/{out}")
    }
}

/// Precedence, smallest first (GW-57..64): path kind (exact, prefix, regex), longer path,
/// has a method, more headers, more query params, older route, route name, rule order.
type SortKey = (
    u8,
    std::cmp::Reverse<usize>,
    u8,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    u64,
    String,
    usize,
);

impl Entry {
    fn sort_key(&self) -> SortKey {
        let (kind, len) = match &self.path {
            PathTest::Exact(v) => (0, v.len()),
            PathTest::Prefix(v) => (1, v.len()),
            PathTest::Regex(_) => (2, 0),
        };
        (
            kind,
            std::cmp::Reverse(len),
            u8::from(self.method.is_none()),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(self.query.len()),
            self.route.created,
            format!("{}/{}", self.route.namespace, self.route.name),
            self.rule,
        )
    }

    fn selected(&self) -> Selected {
        Selected {
            route: self.route.clone(),
            rule: self.rule,
            matched_prefix: match &self.path {
                PathTest::Prefix(p) => Some(p.clone()),
                _ => None,
            },
        }
    }

    fn matches(&self, req: &RequestView<'_>) -> bool {
        let path_ok = match &self.path {
            PathTest::Exact(v) => req.path == v,
            PathTest::Prefix(v) => prefix_matches(v, req.path),
            PathTest::Regex(r) => r.is_match(req.path),
        };
        if !path_ok {
            return false;
        }
        if let Some(m) = &self.method {
            if req.method != m {
                return false;
            }
        }
        for (name, test) in &self.headers {
            let values: Vec<&str> = req
                .headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            if values.is_empty() || !test.matches(&values.join(",")) {
                return false;
            }
        }
        for (name, test) in &self.query {
            // The first value of a repeated parameter (GW-15).
            let first = req.query.and_then(|q| {
                q.split('&').find_map(|kv| {
                    let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
                    (k == name).then_some(v)
                })
            });
            match first {
                Some(v) if test.matches(v) => {}
                _ => return false,
            }
        }
        true
    }
}

/// What the selection looks at.
#[derive(Debug, Clone, Copy)]
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

/// A selected rule: its route, and the path prefix it matched (for ReplacePrefixMatch).
#[derive(Debug, Clone)]
pub struct Selected {
    pub route: Arc<Route>,
    pub rule: usize,
    pub matched_prefix: Option<String>,
}

impl Selected {
    pub fn rule(&self) -> &Rule {
        &self.route.spec.rules[self.rule]
    }
}

/// The routes attached to one Service port, as one ordered list of matches.
#[derive(Debug, Default)]
pub struct RouteTable {
    entries: Vec<Entry>,
}

fn attaches(route: &Route, f: &Frontend<'_>) -> bool {
    route.spec.parent_refs.iter().any(|p| {
        p.is_service()
            && p.name == f.name
            && p.namespace.as_deref().unwrap_or(&route.namespace) == f.namespace
            && p.port.is_none_or(|port| port == f.port)
            && p.section_name
                .as_deref()
                .is_none_or(|s| Some(s) == f.port_name)
    })
}

impl RouteTable {
    /// The entries in the order requests are matched against them: the route
    /// (`namespace/name`), the rule's index and the rule as written (`waypoint-config`).
    pub fn describe(&self) -> Vec<serde_json::Value> {
        self.entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "route": format!("{}/{}", e.route.namespace, e.route.name),
                    "rule": e.rule,
                    "spec": e.route.spec.rules.get(e.rule),
                })
            })
            .collect()
    }

    /// The table for `frontend`, or `None` when no route attaches to it (traffic then goes
    /// to the Service as without routes, GM-02). Routes in the client's namespace that are
    /// not the Service's (consumer routes) replace the producer routes for that client.
    pub fn build(routes: &[Arc<Route>], frontend: &Frontend<'_>) -> Option<RouteTable> {
        let attached: Vec<&Arc<Route>> = routes.iter().filter(|r| attaches(r, frontend)).collect();
        let consumer: Vec<&Arc<Route>> = attached
            .iter()
            .copied()
            .filter(|r| {
                r.namespace != frontend.namespace && r.namespace == frontend.client_namespace
            })
            .collect();
        let chosen: Vec<&Arc<Route>> = if consumer.is_empty() {
            attached
                .into_iter()
                .filter(|r| r.namespace == frontend.namespace)
                .collect()
        } else {
            consumer
        };
        Self::of(chosen.into_iter().map(|r| (r, Arc::from([]))))
    }

    /// The table of one listener of an ingress gateway: the HTTPRoutes whose `parentRefs`
    /// name the Gateway (and the listener by `sectionName` or `port`, when given), from a
    /// namespace the listener allows, whose hostnames intersect the listener's (GW: a route
    /// with none takes the listener's). `None` when no route attaches.
    pub fn for_listener(routes: &[Arc<Route>], l: &ListenerFrontend<'_>) -> Option<RouteTable> {
        let chosen = routes.iter().filter_map(|r| {
            let attached = r.spec.parent_refs.iter().any(|p| {
                p.is_gateway()
                    && p.name == l.gateway_name
                    && p.namespace.as_deref().unwrap_or(&r.namespace) == l.gateway_namespace
                    && p.section_name.as_deref().is_none_or(|s| s == l.listener)
                    && p.port.is_none_or(|port| port == l.port)
            });
            let allowed = l
                .route_namespaces
                .is_none_or(|ns| ns.iter().any(|n| *n == r.namespace));
            if !attached || !allowed {
                return None;
            }
            let hosts: Vec<String> = match (r.spec.hostnames.is_empty(), l.hostname) {
                (true, None) => Vec::new(),
                (true, Some(h)) => vec![h.to_string()],
                (false, None) => r.spec.hostnames.clone(),
                (false, Some(lh)) => r
                    .spec
                    .hostnames
                    .iter()
                    .filter(|h| crate::gateway::hosts_intersect(h, lh))
                    // The narrower of the two names what the route answers for.
                    .map(|h| {
                        if h.starts_with('*') && !lh.starts_with('*') {
                            lh.to_string()
                        } else {
                            h.clone()
                        }
                    })
                    .collect(),
            };
            if !r.spec.hostnames.is_empty() && hosts.is_empty() {
                return None; // no hostname in common (GW: not attached)
            }
            Some((r, Arc::from(hosts)))
        });
        Self::of(chosen)
    }

    fn of<'a>(chosen: impl Iterator<Item = (&'a Arc<Route>, Arc<[String]>)>) -> Option<RouteTable> {
        let mut entries = Vec::new();
        let mut any = false;
        for (route, hosts) in chosen {
            any = true;
            for (ri, rule) in route.spec.rules.iter().enumerate() {
                let default = [crate::httproute::Match::default()];
                let matches: &[crate::httproute::Match] = if rule.matches.is_empty() {
                    &default
                } else {
                    &rule.matches
                };
                for m in matches {
                    let path = match &m.path {
                        None => PathTest::Prefix("/".into()),
                        Some(p) => match p.kind {
                            PathType::Exact => PathTest::Exact(p.value().into()),
                            PathType::PathPrefix => PathTest::Prefix(p.value().into()),
                            PathType::RegularExpression => match full(p.value()) {
                                Some(r) => PathTest::Regex(r),
                                None => continue,
                            },
                        },
                    };
                    // Only the first of duplicate header names counts (GW-14).
                    let mut headers: Vec<(HeaderName, ValueTest)> = Vec::new();
                    for h in &m.headers {
                        let Ok(name) =
                            HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes())
                        else {
                            continue;
                        };
                        if headers.iter().any(|(n, _)| *n == name) {
                            continue;
                        }
                        if let Some(t) = value_test(h.kind, &h.value) {
                            headers.push((name, t));
                        }
                    }
                    let query = m
                        .query_params
                        .iter()
                        .filter_map(|q| value_test(q.kind, &q.value).map(|t| (q.name.clone(), t)))
                        .collect();
                    entries.push(Entry {
                        route: route.clone(),
                        rule: ri,
                        path,
                        headers,
                        query,
                        method: m.method.clone(),
                        hosts: hosts.clone(),
                    });
                }
            }
        }
        if !any {
            return None;
        }
        entries.sort_by_key(|e| e.sort_key());
        Some(RouteTable { entries })
    }

    /// The rule for a request to a gateway listener for `host` (no port): among the routes
    /// whose hostnames cover it, those of the most specific hostname first (GW), then the
    /// usual precedence. `None`: 404.
    pub fn select_for_host(&self, host: &str, req: &RequestView<'_>) -> Option<Selected> {
        let rank = |e: &Entry| -> Option<usize> {
            if e.hosts.is_empty() {
                return Some(usize::MAX);
            }
            e.hosts
                .iter()
                .filter_map(|p| crate::gateway::host_rank(p, host))
                .min()
        };
        let best = self.entries.iter().filter_map(rank).min()?;
        self.entries
            .iter()
            .filter(|e| rank(e) == Some(best))
            .find(|e| e.matches(req))
            .map(Entry::selected)
    }

    /// The rule for a request; `None` means 404 (routes attached, none matches: GW-65).
    pub fn select(&self, req: &RequestView<'_>) -> Option<Selected> {
        self.entries
            .iter()
            .find(|e| e.matches(req))
            .map(Entry::selected)
    }
}

/// A backend picked by weight; `None` when the weights add up to 0 or there are none (500,
/// GW-43/45).
pub fn pick_backend(rule: &Rule) -> Option<&BackendRef> {
    let total: u64 = rule
        .backend_refs
        .iter()
        .map(|b| u64::from(b.weight()))
        .sum();
    if total == 0 {
        return None;
    }
    let mut n = rand::thread_rng().gen_range(0..total);
    for b in &rule.backend_refs {
        let w = u64::from(b.weight());
        if n < w {
            return Some(b);
        }
        n -= w;
    }
    None
}

/// Applies a header modifier (names case-insensitive; `set` replaces, `add` appends,
/// `remove` drops every value).
pub fn modify_headers(headers: &mut HeaderMap, m: &HeaderModifier) {
    let name = |n: &str| HeaderName::from_bytes(n.to_ascii_lowercase().as_bytes()).ok();
    for nv in &m.set {
        if let (Some(n), Ok(v)) = (name(&nv.name), HeaderValue::from_str(&nv.value)) {
            headers.insert(n, v);
        }
    }
    for nv in &m.add {
        if let (Some(n), Ok(v)) = (name(&nv.name), HeaderValue::from_str(&nv.value)) {
            headers.append(n, v);
        }
    }
    for r in &m.remove {
        if let Some(n) = name(r) {
            headers.remove(n);
        }
    }
}

/// The path after a path modifier.
pub fn modify_path(path: &str, m: &PathModifier, matched_prefix: Option<&str>) -> String {
    match m.kind {
        PathModifierType::ReplaceFullPath => {
            m.replace_full_path.clone().unwrap_or_else(|| path.into())
        }
        PathModifierType::ReplacePrefixMatch => replace_prefix(
            path,
            matched_prefix.unwrap_or("/"),
            m.replace_prefix_match.as_deref().unwrap_or(""),
        ),
    }
}

/// The `Location` and status of a redirect (GW-21..26): scheme default `http`; host default
/// the request's; port: the configured one, else none when the scheme was set (its
/// well-known port), else the port the request was addressed to; `:80`/`:443` omitted for
/// their schemes; path per the modifier; query kept.
pub fn redirect(
    r: &Redirect,
    host: &str,
    service_port: u16,
    path: &str,
    query: Option<&str>,
    matched_prefix: Option<&str>,
) -> (u16, String) {
    let scheme = r.scheme.as_deref().unwrap_or("http");
    let hostname = r.hostname.clone().unwrap_or_else(|| {
        host.rsplit_once(':')
            .map(|(h, _)| h)
            .unwrap_or(host)
            .to_string()
    });
    let port = match (r.port, &r.scheme) {
        (Some(p), _) => Some(p),
        (None, Some(_)) => None,
        (None, None) => Some(service_port),
    };
    let port = port.filter(|p| !matches!((scheme, *p), ("http", 80) | ("https", 443)));
    let new_path = r
        .path
        .as_ref()
        .map(|m| modify_path(path, m, matched_prefix))
        .unwrap_or_else(|| path.to_string());
    let mut loc = format!("{scheme}://{hostname}");
    if let Some(p) = port {
        loc.push_str(&format!(":{p}"));
    }
    loc.push_str(&new_path);
    if let Some(q) = query {
        loc.push('?');
        loc.push_str(q);
    }
    (r.status_code.unwrap_or(302), loc)
}

/// The filters of `list` of one type.
pub fn filters_of(list: &[Filter], kind: FilterType) -> impl Iterator<Item = &Filter> {
    list.iter().filter(move |f| f.kind == kind)
}
