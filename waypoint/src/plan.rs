//! What to do with one request: the HTTPRoutes attached to the service port it was
//! addressed to decide (Gateway API precedence, docs/WIRE.md §8); else the
//! VirtualServices for the service (first match, VS-03); else it goes to that service.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Request, Response, StatusCode};
use l7::istio::{HeaderOps, HttpRule};
use l7::retry::RetryPolicy;
use l7::vsroute::Cors;
use proxycore::state::Service;
use rand::Rng;

use crate::body::{full, text, Body};
use crate::error::Failure;
use crate::process::Waypoint;
use crate::upstream::{Backend, Destination};

pub enum Action {
    /// Answered here, with a response flag.
    Respond(Response<Body>, &'static str),
    Forward(Backend),
}

/// A change to the response, in order.
pub enum ResponseOp {
    Gateway(l7::httproute::HeaderModifier),
    Istio(HeaderOps),
    Add(Vec<(HeaderName, String)>),
}

impl ResponseOp {
    pub fn apply(&self, headers: &mut http::HeaderMap) {
        match self {
            ResponseOp::Gateway(m) => l7::table::modify_headers(headers, m),
            ResponseOp::Istio(ops) => l7::vsroute::apply_header_ops(headers, ops),
            ResponseOp::Add(list) => {
                for (n, v) in list {
                    if let Ok(v) = http::HeaderValue::from_str(v) {
                        headers.insert(n.clone(), v);
                    }
                }
            }
        }
    }
}

pub struct Plan {
    pub action: Action,
    /// `namespace/name` of the route or VirtualService, for the access log.
    pub route: Option<String>,
    /// The Host sent upstream.
    pub host: String,
    pub response_ops: Vec<ResponseOp>,
    /// The whole request, retries included.
    pub timeout: Option<Duration>,
    pub retry: RetryPolicy,
    /// Where copies go (already drawn against their percentages).
    pub mirrors: Vec<Backend>,
    /// An injected delay (fault), before anything else and outside the timeout.
    pub delay: Option<Duration>,
    /// Why it was answered here, for the access log (an authorization denial).
    pub details: Option<String>,
}

impl Plan {
    fn new(action: Action, route: Option<String>, host: &str) -> Plan {
        Plan {
            action,
            route,
            host: host.to_string(),
            response_ops: Vec::new(),
            timeout: None,
            retry: RetryPolicy::mesh_default(),
            mirrors: Vec::new(),
            delay: None,
            details: None,
        }
    }

    fn respond(
        resp: Response<Body>,
        flag: &'static str,
        route: Option<String>,
        host: &str,
    ) -> Plan {
        Plan::new(Action::Respond(resp, flag), route, host)
    }
}

/// True with probability `percent`/100.
fn chance(percent: f64) -> bool {
    percent >= 100.0 || (percent > 0.0 && rand::thread_rng().gen_range(0.0..100.0) < percent)
}

/// The request facts the planners look at.
pub struct Facts<'a> {
    pub wp: &'a Waypoint,
    pub source_namespace: &'a str,
    /// The tunnel's tables, when it keeps them ([`Tables`]).
    pub tables: Option<&'a Tables>,
    /// The client's identity, `<trust domain>/ns/<ns>/sa/<sa>`.
    pub principal: Option<&'a str>,
    /// The client's address (the tunnel's `forwarded` header, else its peer).
    pub source_ip: std::net::IpAddr,
    /// The address the client addressed (the service VIP or the workload's IP).
    pub destination_ip: std::net::IpAddr,
}

type Found = (
    Arc<Option<l7::table::RouteTable>>,
    Option<Arc<Option<l7::vsroute::VsTable>>>,
    crate::config::AppliedPolicies,
    Arc<l7::authn::Authenticator>,
);

/// The HTTPRoute and VirtualService tables of one tunnel's destination and client, kept for
/// the versions they were looked up in: the requests of a tunnel do not look them up
/// (three key strings, two locks) each time.
#[derive(Default)]
pub struct Tables(std::sync::Mutex<Option<(crate::config::Version, Found)>>);

pub fn plan<B>(f: &Facts<'_>, dst: &Destination, req: &mut Request<B>, host: &str) -> Plan {
    normalize(req);
    let service = match dst {
        Destination::Service { svc, port } => Some((svc, *port)),
        Destination::Workload { .. } => None,
    };
    let look_up = || {
        let pi = &f.wp.pi;
        let hostname = service.map_or("", |(svc, _)| svc.hostname.as_str());
        let policies =
            f.wp.config
                .authorization(&pi.state, (&pi.local_ns, &pi.local_name), hostname);
        let authn = f.wp.config.authentication(
            &pi.state,
            (&pi.local_ns, &pi.local_name),
            hostname,
            service.map_or("", |(svc, _)| svc.namespace.as_str()),
        );
        let Some((svc, port)) = service else {
            return (Arc::new(None), None, policies, authn);
        };
        let frontend = l7::table::Frontend {
            namespace: &svc.namespace,
            name: &svc.name,
            port,
            port_name: None,
            client_namespace: f.source_namespace,
        };
        let routes = f.wp.config.route_table(&pi.state, &frontend);
        if routes.is_some() {
            return (routes, None, policies, authn);
        }
        let vs_frontend = l7::vsroute::Frontend {
            service_namespace: &svc.namespace,
            hostname: &svc.hostname,
            waypoint_namespace: pi.cfg.pod_namespace.as_deref().unwrap_or(""),
        };
        (
            routes,
            Some(f.wp.config.vs_table(&pi.state, &vs_frontend)),
            policies,
            authn,
        )
    };
    let (routes, vss, policies, authn) = match f.tables {
        None => look_up(),
        Some(Tables(kept)) => {
            let version = f.wp.config.version(&f.wp.pi.state);
            let mut kept = kept.lock().unwrap();
            match kept.as_ref() {
                Some((v, found)) if *v == version => found.clone(),
                _ => {
                    let found = look_up();
                    *kept = Some((version, found.clone()));
                    found
                }
            }
        }
    };
    // Request authentication, then authorization, before any route action (docs/WIRE.md
    // §8): a token that does not verify is a 401; none, unauthenticated.
    let auth = match authenticate(&authn, req, host) {
        Ok(a) => a,
        Err(plan) => return *plan,
    };
    if !policies.is_empty() {
        if let Some(denied) = authorize(f, dst, &policies, req, host, auth.as_ref()) {
            return denied;
        }
    }
    let Some((_, port)) = service else {
        return Plan::new(Action::Forward(Backend::of(dst.clone())), None, host);
    };
    if let Some(table) = routes.as_ref().as_ref() {
        return http_route(f, table, port, req, host, false);
    }
    if let Some(table) = vss.as_ref().and_then(|t| t.as_ref().as_ref()) {
        return virtual_service(f, table, port, req, host, false);
    }
    Plan::new(Action::Forward(Backend::of(dst.clone())), None, host)
}

/// What to do with a request that came to an ingress gateway on `port` (`tls`: over
/// HTTPS): the listener for its host decides (docs/GATEWAY.md): a plain listener with
/// `httpsRedirect` answers 301; a Gateway API listener's HTTPRoutes, or the
/// VirtualServices bound to an Istio gateway (or made from an Ingress), route it; with no
/// listener, no route attached, or none matching: 404.
pub fn ingress<B>(
    f: &Facts<'_>,
    ports: &crate::config::IngressPorts,
    port: u16,
    tls: bool,
    req: &mut Request<B>,
    host: &str,
) -> Plan {
    normalize(req);
    let not_found = |what: &str| Plan::respond(text(StatusCode::NOT_FOUND, what), "NR", None, host);
    let Some(served) = ports.pick(port, tls, &l7::gateway::request_host(host)) else {
        return not_found("no listener for this host");
    };
    let listener = served.listener();
    if listener.https_redirect && !tls {
        let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
        let location = format!("https://{}{path}", l7::gateway::request_host(host));
        return Plan::respond(redirect_response(301, &location, 301), "-", None, host);
    }
    if let Some(denied) = gateway_policies(f, port, req, host) {
        return denied;
    }
    let state = &f.wp.pi.state;
    match served.gateway.kind {
        l7::gateway::GatewayKind::GatewayApi => {
            let table = f.wp.config.listener_routes(state, served);
            match table.as_ref() {
                Some(t) => http_route(f, t, port, req, host, true),
                None => not_found("no route attached to this listener"),
            }
        }
        l7::gateway::GatewayKind::Istio | l7::gateway::GatewayKind::Ingress => {
            let table = f.wp.config.gateway_vs_table(
                state,
                served,
                f.wp.pi.cfg.pod_namespace.as_deref().unwrap_or(""),
            );
            match table.as_ref() {
                Some(t) => virtual_service(f, t, port, req, host, true),
                None => not_found("no VirtualService bound to this gateway"),
            }
        }
    }
}

/// The request's JWT checked against `authn`'s rules: what it proves (`None`: no rules, or
/// no token), or the 401 for a token that does not verify (docs/WIRE.md, RA-02).
fn authenticate<B>(
    authn: &l7::authn::Authenticator,
    req: &Request<B>,
    host: &str,
) -> Result<Option<l7::authn::AuthInfo>, Box<Plan>> {
    if authn.is_empty() {
        return Ok(None);
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    authn
        .authenticate(req.headers(), req.uri().query(), now)
        .map_err(|why| {
            let mut plan = Plan::respond(text(StatusCode::UNAUTHORIZED, &why), "-", None, host);
            plan.details = Some(format!("request authentication: {why}"));
            Box::new(plan)
        })
}

/// The RequestAuthentications and AuthorizationPolicies selecting the gateway's own pod
/// (docs/GATEWAY.md), as a waypoint applies those of a service: a token that does not
/// verify is a 401, a denial a 403. `None`: go on.
fn gateway_policies<B>(f: &Facts<'_>, port: u16, req: &Request<B>, host: &str) -> Option<Plan> {
    let pi = &f.wp.pi;
    let own = pi.state.workload_by_name(&pi.local_ns, &pi.local_name)?;
    let (policies, authn) = f.wp.config.gateway_policies(&pi.state, &own.uid);
    let auth = match authenticate(&authn, req, host) {
        Ok(a) => a,
        Err(plan) => return Some(*plan),
    };
    if policies.is_empty() {
        return None;
    }
    let dst = Destination::Workload { w: own, port };
    authorize(f, &dst, &policies, req, host, auth.as_ref())
}

/// The request's path, normalized in place when that changes it (mesh `pathNormalization`
/// BASE): routes and policies see, and the upstream gets, the same path.
fn normalize<B>(req: &mut Request<B>) {
    let uri = req.uri();
    let path = uri.path();
    let normalized = match l7::authz::normalize_path(path) {
        std::borrow::Cow::Borrowed(_) => return,
        std::borrow::Cow::Owned(p) => p,
    };
    let pq = match uri.query() {
        Some(q) => format!("{normalized}?{q}"),
        None => normalized,
    };
    let mut parts = uri.clone().into_parts();
    match pq.parse() {
        Ok(pq) => parts.path_and_query = Some(pq),
        Err(_) => return,
    }
    if let Ok(u) = http::Uri::from_parts(parts) {
        *req.uri_mut() = u;
    }
}

/// The AuthorizationPolicies' answer (AP-07): `None` to go on, else the denial (403, or
/// gRPC PERMISSION_DENIED). Dry-run and AUDIT outcomes are logged.
fn authorize<B>(
    f: &Facts<'_>,
    dst: &Destination,
    policies: &[Arc<l7::authz::Policy>],
    req: &Request<B>,
    host: &str,
    auth: Option<&l7::authn::AuthInfo>,
) -> Option<Plan> {
    let destination_port = match dst {
        Destination::Service { port, .. } | Destination::Workload { port, .. } => *port,
    };
    let attrs = l7::authz::Attributes {
        principal: f.principal,
        source_ip: f.source_ip,
        destination_ip: f.destination_ip,
        destination_port,
        http: Some(l7::authz::HttpAttributes {
            method: req.method().as_str(),
            path: req.uri().path(),
            host,
            headers: req.headers(),
            auth,
        }),
    };
    let verdict = l7::authz::evaluate(policies, &attrs);
    log_verdict(&verdict, f.principal, req.uri().path());
    if verdict.decision.allowed() {
        return None;
    }
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    let resp = if grpc {
        Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
            .header("grpc-status", "7")
            .header("grpc-message", "RBAC: access denied")
            .body(full(bytes::Bytes::new()))
            .unwrap()
    } else {
        text(StatusCode::FORBIDDEN, "RBAC: access denied")
    };
    let mut plan = Plan::respond(resp, "-", None, host);
    plan.details = Some(verdict.decision.details());
    Some(plan)
}

/// What the dry-run policies would have done and which AUDIT policies matched, logged.
pub fn log_verdict(v: &l7::authz::Verdict, principal: Option<&str>, what: &str) {
    if let Some(shadow) = &v.shadow {
        if shadow.allowed() != v.decision.allowed() {
            tracing::info!(
                src.principal = principal.unwrap_or("-"),
                request = what,
                would_be = if shadow.allowed() { "allowed" } else { "denied" },
                details = %shadow.details(),
                "dry-run authorization policy differs"
            );
        }
    }
    for p in &v.audited {
        tracing::info!(src.principal = principal.unwrap_or("-"), request = what, policy = %p, "audited by authorization policy");
    }
}

// ---- Gateway API HTTPRoute ----

fn http_route<B>(
    f: &Facts<'_>,
    table: &l7::table::RouteTable,
    port: u16,
    req: &mut Request<B>,
    host: &str,
    at_gateway: bool,
) -> Plan {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let view = l7::table::RequestView {
        method: req.method().as_str(),
        path: &path,
        query: query.as_deref(),
        headers: req.headers(),
    };
    let selected = if at_gateway {
        table.select_for_host(&l7::gateway::request_host(host), &view)
    } else {
        table.select(&view)
    };
    let Some(sel) = selected else {
        return Plan::respond(
            text(StatusCode::NOT_FOUND, "no matching route"),
            "NR",
            None,
            host,
        );
    };
    let route_name = format!("{}/{}", sel.route.namespace, sel.route.name);
    let rule = sel.rule();
    let mut plan = Plan::respond(
        text(StatusCode::INTERNAL_SERVER_ERROR, "no valid backend"),
        "NR",
        Some(route_name),
        host,
    );
    let mut new_path = path.clone();
    if let Some(r) = gateway_filters(f, &rule.filters, req, &mut new_path, &sel, &mut plan, port) {
        return r;
    }
    let Some(backend) = l7::table::pick_backend(rule) else {
        return plan; // no backend, or all weights 0: 500
    };
    if let Some(r) = gateway_filters(
        f,
        &backend.filters,
        req,
        &mut new_path,
        &sel,
        &mut plan,
        port,
    ) {
        return r;
    }
    let Some(backend_svc) = gateway_backend(f, backend, &sel.route.namespace) else {
        return plan; // invalid backend: its share gets 500
    };
    if new_path != path {
        set_path(req, &new_path, query.as_deref());
    }
    plan.action = Action::Forward(Backend::of(Destination::Service {
        svc: backend_svc,
        port: backend.port.unwrap_or(port),
    }));
    let t = rule.timeouts.as_ref();
    let parse = |d: Option<&String>| {
        d.and_then(|d| l7::httproute::parse_duration(d).ok())
            .filter(|d| !d.is_zero())
    };
    let request = parse(t.and_then(|t| t.request.as_ref()));
    let backend_request = parse(t.and_then(|t| t.backend_request.as_ref()));
    if rule.retry.is_some() {
        // backendRequest bounds each try, request the whole (GW-48, GW-49).
        plan.timeout = request;
        plan.retry = RetryPolicy::from_http_route(rule.retry.as_ref(), backend_request);
    } else {
        // Without a retry stanza Istio makes backendRequest the route timeout too.
        plan.timeout = [request, backend_request].into_iter().flatten().min();
        plan.retry = RetryPolicy::mesh_default();
    }
    plan
}

fn gateway_backend(
    f: &Facts<'_>,
    b: &l7::httproute::BackendRef,
    route_ns: &str,
) -> Option<Arc<Service>> {
    let ns = b.namespace.as_deref().unwrap_or(route_ns);
    let host = format!("{}.{ns}.{}", b.name, l7::vsroute::CLUSTER_SUFFIX);
    b.is_service()
        .then(|| f.wp.pi.state.service_by_host(&host, ns))
        .flatten()
}

fn set_path<B>(req: &mut Request<B>, path: &str, query: Option<&str>) {
    let pq = match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_string(),
    };
    if let Ok(uri) = pq.parse() {
        *req.uri_mut() = uri;
    }
}

/// Applies `filters` to the request; a redirect answers at once (returned).
fn gateway_filters<B>(
    f: &Facts<'_>,
    filters: &[l7::httproute::Filter],
    req: &mut Request<B>,
    path: &mut String,
    sel: &l7::table::Selected,
    plan: &mut Plan,
    port: u16,
) -> Option<Plan> {
    use l7::httproute::FilterType as F;
    for filter in filters {
        match filter.kind {
            F::RequestHeaderModifier => {
                if let Some(m) = &filter.request_header_modifier {
                    l7::table::modify_headers(req.headers_mut(), m);
                }
            }
            F::ResponseHeaderModifier => {
                if let Some(m) = &filter.response_header_modifier {
                    plan.response_ops.push(ResponseOp::Gateway(m.clone()));
                }
            }
            F::RequestRedirect => {
                let r = filter.request_redirect.as_ref()?;
                let (status, location) = l7::table::redirect(
                    r,
                    &plan.host,
                    port,
                    path,
                    req.uri().query(),
                    sel.matched_prefix.as_deref(),
                );
                let mut out = Plan::respond(
                    redirect_response(status, &location, 302),
                    "-",
                    plan.route.clone(),
                    &plan.host,
                );
                out.response_ops = std::mem::take(&mut plan.response_ops);
                return Some(out);
            }
            F::URLRewrite => {
                if let Some(rw) = &filter.url_rewrite {
                    if let Some(h) = &rw.hostname {
                        plan.host = h.clone();
                    }
                    if let Some(m) = &rw.path {
                        *path = l7::table::modify_path(path, m, sel.matched_prefix.as_deref());
                    }
                }
            }
            F::RequestMirror => {
                let Some(m) = &filter.request_mirror else {
                    continue;
                };
                let percent = match (&m.percent, &m.fraction) {
                    (Some(p), _) => f64::from(*p),
                    (None, Some(fr)) => {
                        100.0 * f64::from(fr.numerator) / f64::from(fr.denominator.max(1))
                    }
                    (None, None) => 100.0,
                };
                match gateway_backend(f, &m.backend_ref, &sel.route.namespace) {
                    Some(svc) if chance(percent) => {
                        let port = m.backend_ref.port.unwrap_or(port);
                        plan.mirrors
                            .push(Backend::of(Destination::Service { svc, port }));
                    }
                    Some(_) => {}
                    // GW-30: an unresolvable mirror is dropped; the request is still served.
                    None => {
                        tracing::debug!(backend = %m.backend_ref.name, "mirror backend not found; not mirrored")
                    }
                }
            }
            F::CORS => {
                let Some(c) = &filter.cors else { continue };
                match c.apply(req.method(), req.headers()) {
                    Cors::Forward => {}
                    Cors::Preflight(headers) => {
                        let mut resp = text(StatusCode::OK, "");
                        ResponseOp::Add(headers).apply(resp.headers_mut());
                        let mut out = Plan::respond(resp, "-", plan.route.clone(), &plan.host);
                        out.response_ops = std::mem::take(&mut plan.response_ops);
                        return Some(out);
                    }
                    Cors::Actual(headers) => plan.response_ops.push(ResponseOp::Add(headers)),
                }
            }
            // Validated away at the control plane.
            F::ExtensionRef => {}
        }
    }
    None
}

fn redirect_response(status: u16, location: &str, default: u16) -> Response<Body> {
    let mut resp = text(
        StatusCode::from_u16(status)
            .unwrap_or(StatusCode::from_u16(default).unwrap_or(StatusCode::FOUND)),
        "redirect",
    );
    if let Ok(v) = http::HeaderValue::from_str(location) {
        resp.headers_mut().insert(http::header::LOCATION, v);
    }
    resp
}

// ---- Istio VirtualService ----

/// A VirtualService destination as a backend: the host relative to the VirtualService's
/// namespace, the port (given, the service's only one, or the one addressed) and the
/// subset's workloads. `Err`: Envoy's "cluster not found" (503 NC, VS-38).
fn vs_backend(
    f: &Facts<'_>,
    d: &l7::istio::Destination,
    vs_ns: &str,
    addressed_port: u16,
) -> Result<Backend, Failure> {
    let host = l7::vsroute::fqdn(&d.host, vs_ns);
    let not_found = Failure::NoCluster;
    let svc =
        f.wp.pi
            .state
            .service_by_host(&host, vs_ns)
            .ok_or_else(|| not_found(format!("no service {host}")))?;
    let port = match &d.port {
        Some(p) => p.number,
        None if svc.ports.len() == 1 => *svc.ports.keys().next().unwrap_or(&addressed_port),
        None => addressed_port,
    };
    let subset = match &d.subset {
        None => None,
        Some(name) => Some(
            f.wp.config
                .subset(
                    &f.wp.pi.state,
                    &svc.hostname,
                    [
                        &svc.namespace,
                        f.wp.pi.cfg.pod_namespace.as_deref().unwrap_or(""),
                        "istio-system",
                    ],
                    name,
                )
                .ok_or_else(|| not_found(format!("no subset {name} of {host}")))?,
        ),
    };
    Ok(Backend {
        dst: Destination::Service { svc, port },
        subset,
    })
}

fn percent(p: &Option<l7::istio::Percent>, int: Option<u32>, default: f64) -> f64 {
    match (p, int) {
        (Some(p), _) => p.value,
        (None, Some(i)) => f64::from(i),
        (None, None) => default,
    }
}

fn virtual_service<B>(
    f: &Facts<'_>,
    table: &l7::vsroute::VsTable,
    port: u16,
    req: &mut Request<B>,
    host: &str,
    at_gateway: bool,
) -> Plan {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let scheme = req.uri().scheme_str().unwrap_or("http").to_string();
    let view = l7::vsroute::RequestView {
        method: req.method().as_str(),
        scheme: &scheme,
        authority: host,
        path: &path,
        query: query.as_deref(),
        headers: req.headers(),
        port,
    };
    let selected = if at_gateway {
        table.select_for_host(&l7::gateway::request_host(host), &view)
    } else {
        table.select(&view)
    };
    let Some(sel) = selected else {
        // VS-03: once a VirtualService applies, nothing matching is a 404.
        return Plan::respond(
            text(StatusCode::NOT_FOUND, "no matching route"),
            "NR",
            None,
            host,
        );
    };
    let rule: &HttpRule = sel.rule();
    let mut plan = Plan::new(
        Action::Respond(text(StatusCode::INTERNAL_SERVER_ERROR, "no route"), "NR"),
        Some(sel.name()),
        host,
    );
    if let Some(ops) = rule.headers.as_ref().and_then(|h| h.response.as_ref()) {
        plan.response_ops.push(ResponseOp::Istio(ops.clone()));
    }
    // The port the client dialled, for redirects (VS-45): the service port in the mesh; at
    // a gateway, whose listener port is behind its Service's, the scheme's default (a
    // request to another port names it in its authority, which the redirect keeps).
    let request_port = match (at_gateway, scheme.as_str()) {
        (false, _) => port,
        (true, "https") => 443,
        (true, _) => 80,
    };
    if let Some(answer) = vs_local_answer(rule, &mut plan, req, &sel, request_port) {
        plan.action = answer;
        return plan;
    }
    let Some(dest) = l7::vsroute::pick_weighted(&rule.route) else {
        return plan;
    };
    vs_request_changes(rule, dest, &mut plan, req, &sel);
    match vs_backend(f, &dest.destination, &sel.vs.namespace, port) {
        Ok(b) => plan.action = Action::Forward(b),
        Err(f) => {
            plan.action = Action::Respond(f.response(), f.flag());
            return plan;
        }
    }
    plan.timeout = rule
        .timeout
        .as_deref()
        .and_then(|t| l7::istio::parse_duration(t).ok())
        .filter(|t| !t.is_zero());
    plan.retry = RetryPolicy::from_virtual_service(rule.retries.as_ref());
    plan.mirrors = vs_mirrors(f, rule, &sel.vs.namespace, port);
    plan
}

/// What answers a request at the waypoint itself, in the filter order (fault, CORS, then
/// the route's action): a fault abort, a CORS preflight, a redirect or a direct response.
/// Draws the fault delay into the plan on the way; CORS headers for an actual request go to
/// the response changes.
fn vs_local_answer<B>(
    rule: &HttpRule,
    plan: &mut Plan,
    req: &Request<B>,
    sel: &l7::vsroute::Selected,
    port: u16,
) -> Option<Action> {
    // Fault: delay, then abort, independent draws (VS-62..67); unset percentage is 0.
    if let Some(fault) = &rule.fault {
        if let Some(d) = &fault.delay {
            if chance(percent(&d.percentage, d.percent, 0.0)) {
                plan.delay = d
                    .fixed_delay
                    .as_deref()
                    .and_then(|d| l7::istio::parse_duration(d).ok());
            }
        }
        if let Some(a) = &fault.abort {
            if chance(percent(&a.percentage, None, 0.0)) {
                return Some(Action::Respond(abort_response(a), "FI"));
            }
        }
    }
    if let Some(cors) = &rule.cors_policy {
        match l7::vsroute::cors(cors, req.method(), req.headers()) {
            Cors::Forward => {}
            Cors::Preflight(headers) => {
                let mut resp = text(StatusCode::OK, "");
                ResponseOp::Add(headers).apply(resp.headers_mut());
                return Some(Action::Respond(resp, "-"));
            }
            Cors::Actual(headers) => plan.response_ops.push(ResponseOp::Add(headers)),
        }
    }
    if let Some(r) = &rule.redirect {
        let scheme = req.uri().scheme_str().unwrap_or("http");
        let (status, location) = l7::vsroute::redirect(
            r,
            scheme,
            &plan.host,
            port,
            req.uri().path(),
            req.uri().query(),
            &sel.uri,
        );
        return Some(Action::Respond(
            redirect_response(status, &location, 301),
            "-",
        ));
    }
    let d = rule.direct_response.as_ref()?;
    let body = d
        .body
        .as_ref()
        .map(|b| match (&b.string, &b.bytes) {
            (Some(s), _) => bytes::Bytes::from(s.clone()),
            (None, Some(b64)) => l7::istio::base64_decode(b64).unwrap_or_default().into(),
            _ => bytes::Bytes::new(),
        })
        .unwrap_or_default();
    let resp = Response::builder()
        .status(StatusCode::from_u16(d.status).unwrap_or(StatusCode::OK))
        .body(full(body))
        .unwrap();
    Some(Action::Respond(resp, "-"))
}

/// The request changes of a routed rule: header operations, rule level then destination
/// level (a `host`/`:authority` set is an authority rewrite, the rule's winning, VS-40), then
/// `rewrite` (authority, URI).
fn vs_request_changes<B>(
    rule: &HttpRule,
    dest: &l7::istio::RouteDestination,
    plan: &mut Plan,
    req: &mut Request<B>,
    sel: &l7::vsroute::Selected,
) {
    let rule_ops = rule.headers.as_ref().and_then(|h| h.request.as_ref());
    if let Some(ops) = rule_ops {
        l7::vsroute::apply_header_ops(req.headers_mut(), ops);
        if let Some(a) = l7::vsroute::authority_set(ops) {
            plan.host = a.to_string();
        }
    }
    if let Some(h) = &dest.headers {
        if let Some(ops) = &h.request {
            l7::vsroute::apply_header_ops(req.headers_mut(), ops);
            let rule_sets = rule_ops.and_then(l7::vsroute::authority_set).is_some();
            if let (Some(a), false) = (l7::vsroute::authority_set(ops), rule_sets) {
                plan.host = a.to_string();
            }
        }
        if let Some(ops) = &h.response {
            plan.response_ops.push(ResponseOp::Istio(ops.clone()));
        }
    }
    let Some(rw) = &rule.rewrite else { return };
    if let Some(a) = &rw.authority {
        plan.host = a.clone();
    }
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let new_path = match (&rw.uri, &rw.uri_regex_rewrite) {
        (Some(u), _) => Some(l7::vsroute::rewrite_uri(&path, &sel.uri, u)),
        (None, Some(rr)) => Some(l7::vsroute::regex_rewrite(&path, &rr.pattern, &rr.rewrite)),
        _ => None,
    };
    if let Some(p) = new_path {
        set_path(req, &p, query.as_deref());
    }
}

/// The mirrors of a rule that this request is copied to: `mirrors[]` and `mirror` with
/// `mirrorPercentage` (default 100, explicit 0 none), each drawn on its own (VS-17..19).
fn vs_mirrors(f: &Facts<'_>, rule: &HttpRule, vs_ns: &str, port: u16) -> Vec<Backend> {
    let mut mirrors: Vec<(&l7::istio::Destination, f64)> = rule
        .mirrors
        .iter()
        .map(|m| (&m.destination, percent(&m.percentage, None, 100.0)))
        .collect();
    if let Some(m) = &rule.mirror {
        mirrors.push((
            m,
            percent(&rule.mirror_percentage, rule.mirror_percent, 100.0),
        ));
    }
    mirrors
        .into_iter()
        .filter(|(_, pct)| chance(*pct))
        .filter_map(|(d, _)| match vs_backend(f, d, vs_ns, port) {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::debug!(error = %e, "mirror destination not found; not mirrored");
                None
            }
        })
        .collect()
}

/// A fault abort (VS-64, VS-65): the HTTP status, or HTTP 200 with the gRPC status.
fn abort_response(a: &l7::istio::FaultAbort) -> Response<Body> {
    match (&a.grpc_status, a.http_status) {
        (Some(g), _) => Response::builder()
            .status(StatusCode::OK)
            .header("content-type", "application/grpc")
            .header(
                "grpc-status",
                l7::istio::grpc_code(g).unwrap_or(2).to_string(),
            )
            .header("grpc-message", "fault filter abort")
            .body(full(bytes::Bytes::new()))
            .unwrap(),
        (None, status) => text(
            StatusCode::from_u16(status.unwrap_or(500))
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            "fault filter abort",
        ),
    }
}

/// The backend of a TCP connection to `dst`: the first VirtualService `tcp` rule that
/// matches picks one destination per connection (VS-81..84); without one, `dst` itself.
pub fn tcp_backend(wp: &Waypoint, dst: &Destination) -> Result<Backend, Failure> {
    let pi = &wp.pi;
    let Destination::Service { svc, port } = dst else {
        return Ok(Backend::of(dst.clone()));
    };
    let all = wp.config.virtual_services(&pi.state);
    let frontend = l7::vsroute::Frontend {
        service_namespace: &svc.namespace,
        hostname: &svc.hostname,
        waypoint_namespace: pi.cfg.pod_namespace.as_deref().unwrap_or(""),
    };
    let Some(vip) = svc.addresses.first() else {
        return Ok(Backend::of(dst.clone()));
    };
    let Some((vs, rule)) = l7::vsroute::tcp_route(&all, &frontend, *vip, *port) else {
        return Ok(Backend::of(dst.clone()));
    };
    let dest = l7::vsroute::pick_weighted(&rule.route).ok_or(Failure::NoDestination)?;
    let facts = Facts {
        wp,
        source_namespace: "",
        tables: None,
        principal: None,
        source_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
        destination_ip: std::net::Ipv4Addr::UNSPECIFIED.into(),
    };
    vs_backend(&facts, &dest.destination, &vs.namespace, *port)
}
