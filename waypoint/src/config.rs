//! The waypoint's L7 configuration: Keelson's HTTPRoute, VirtualService, DestinationRule and
//! AuthorizationPolicy xDS types (xds/proto/l7.proto), decoded and checked as they arrive
//! ([`crate::store`]), and the route tables of each frontend, built (regexes compiled,
//! precedence sorted) once per change instead of per request.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use l7::table::{Route, RouteTable};
use l7::vsroute::{DestinationRule, SubsetMembers, VirtualService, VsTable};
use prost::Message;
use proxycore::state::State;

use crate::store::L7Store;

/// An HTTPRoute resource from the control plane, checked.
pub fn decode_route(bytes: &[u8]) -> Result<Route, String> {
    let r = xds::l7::HttpRoute::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let spec: l7::httproute::HttpRouteSpec =
        serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    spec.validate()?;
    Ok(Route {
        namespace: r.namespace,
        name: r.name,
        created: r.created,
        spec,
    })
}

/// A VirtualService resource from the control plane, checked.
pub fn decode_virtual_service(bytes: &[u8]) -> Result<VirtualService, String> {
    let r = xds::l7::VirtualService::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let spec: l7::istio::VirtualServiceSpec =
        serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    spec.validate()?;
    Ok(VirtualService {
        namespace: r.namespace,
        name: r.name,
        created: r.created,
        spec,
    })
}

/// A DestinationRule resource from the control plane, checked.
pub fn decode_destination_rule(bytes: &[u8]) -> Result<DestinationRule, String> {
    let r = xds::l7::DestinationRule::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let spec: l7::istio::DestinationRuleSpec =
        serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    spec.validate()?;
    Ok(DestinationRule {
        namespace: r.namespace,
        name: r.name,
        created: r.created,
        spec,
        subsets: r
            .subsets
            .into_iter()
            .map(|s| {
                (
                    s.name.clone(),
                    Arc::new(SubsetMembers {
                        name: s.name,
                        uids: s.workload_uids.into_iter().collect::<BTreeSet<_>>(),
                    }),
                )
            })
            .collect(),
    })
}

/// Tracing settings from the control plane, checked.
pub fn decode_tracing(bytes: &[u8]) -> Result<xds::l7::Tracing, String> {
    let t = xds::l7::Tracing::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    if !(0.0..=100.0).contains(&t.sampling) {
        return Err(format!("sampling {} is not within 0 to 100", t.sampling));
    }
    if !t.disabled && (t.service.is_empty() || t.port == 0 || t.port > 65535) {
        return Err(format!(
            "collector {}:{} is not an address",
            t.service, t.port
        ));
    }
    Ok(t)
}

/// A RequestAuthentication attached to waypoints, with what it attaches to.
#[derive(Debug)]
pub struct WaypointAuthn {
    pub namespace: String,
    pub spec: l7::authn::RequestAuthenticationSpec,
    pub all_waypoints: bool,
    pub waypoint_uids: BTreeSet<String>,
    pub service_hostnames: BTreeSet<String>,
    pub namespace_wide: bool,
}

/// A waypoint RequestAuthentication from the control plane, checked.
pub fn decode_authn(bytes: &[u8]) -> Result<WaypointAuthn, String> {
    let r = xds::l7::RequestAuthentication::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let spec: l7::authn::RequestAuthenticationSpec =
        serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    spec.validate()?;
    Ok(WaypointAuthn {
        namespace: r.namespace,
        spec,
        all_waypoints: r.all_waypoints,
        waypoint_uids: r.waypoint_uids.into_iter().collect(),
        service_hostnames: r.service_hostnames.into_iter().collect(),
        namespace_wide: r.namespace_wide,
    })
}

/// An ingress gateway from the control plane, checked.
pub fn decode_gateway(bytes: &[u8]) -> Result<l7::gateway::IngressGateway, String> {
    let r = xds::l7::IngressGateway::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))
}

/// An AuthorizationPolicy attached to waypoints, with what it attaches to.
#[derive(Debug)]
pub struct WaypointPolicy {
    pub policy: Arc<l7::authz::Policy>,
    pub all_waypoints: bool,
    pub waypoint_uids: BTreeSet<String>,
    pub service_hostnames: BTreeSet<String>,
}

/// A waypoint AuthorizationPolicy from the control plane, checked.
pub fn decode_policy(bytes: &[u8]) -> Result<WaypointPolicy, String> {
    let r = xds::l7::AuthorizationPolicy::decode(bytes).map_err(|e| format!("decode: {e}"))?;
    let spec: l7::authz::AuthorizationPolicySpec =
        serde_json::from_str(&r.spec_json).map_err(|e| format!("spec_json: {e}"))?;
    spec.validate()?;
    Ok(WaypointPolicy {
        policy: Arc::new(l7::authz::Policy::new(
            &r.namespace,
            &r.name,
            &spec,
            r.dry_run,
        )),
        all_waypoints: r.all_waypoints,
        waypoint_uids: r.waypoint_uids.into_iter().collect(),
        service_hostnames: r.service_hostnames.into_iter().collect(),
    })
}

/// HTTPRoute frontend: (service namespace, service name, port, client namespace).
type RouteKey = (String, String, u16, String);

#[derive(Default)]
struct Cache {
    /// The versions (workload state, L7 store) the rest was built from; `None` before the
    /// first build.
    version: Option<Version>,
    routes: Vec<Arc<Route>>,
    virtual_services: Vec<Arc<VirtualService>>,
    destination_rules: Vec<Arc<DestinationRule>>,
    /// Whether any DestinationRule sets `outlierDetection`, `connectionPool` or
    /// `loadBalancer` anywhere.
    any_policy: bool,
    route_tables: HashMap<RouteKey, Arc<Option<RouteTable>>>,
    /// By service hostname.
    vs_tables: HashMap<String, Arc<Option<VsTable>>>,
    policies: Vec<Arc<WaypointPolicy>>,
    /// The policies that apply here, by destination service hostname ("" for requests
    /// addressed to a workload).
    applied: HashMap<String, AppliedPolicies>,
    /// An ingress gateway's listeners by port, for the gateway's own uid.
    ingress: Option<(String, Arc<IngressPorts>)>,
    /// By gateway key and listener name.
    listener_routes: HashMap<(String, String), Arc<Option<RouteTable>>>,
    /// By gateway key and port.
    gateway_vs: HashMap<(String, u16), Arc<Option<VsTable>>>,
    authentications: Vec<Arc<WaypointAuthn>>,
    /// The proxy's tracing settings, once looked up.
    tracing: Option<Option<Arc<xds::l7::Tracing>>>,
    /// The JWT rules that apply, by destination service hostname.
    authenticators: HashMap<String, Arc<l7::authn::Authenticator>>,
}

/// One listener of an ingress gateway, with its gateway.
#[derive(Debug, Clone)]
pub struct Served {
    pub gateway: Arc<l7::gateway::IngressGateway>,
    pub listener: usize,
}

impl Served {
    pub fn listener(&self) -> &l7::gateway::ResolvedListener {
        &self.gateway.listeners[self.listener]
    }
}

/// What an ingress gateway listens on: per port, the listeners of every gateway it serves
/// there (gateways in creation order).
#[derive(Debug, Default)]
pub struct IngressPorts {
    pub ports: std::collections::BTreeMap<u16, Vec<Served>>,
}

impl IngressPorts {
    /// Whether the port terminates TLS (any HTTPS listener on it).
    pub fn is_tls(&self, port: u16) -> bool {
        self.ports.get(&port).is_some_and(|l| {
            l.iter()
                .any(|s| s.listener().protocol == l7::gateway::Protocol::Https)
        })
    }

    /// The listener on `port` for `host` (no port): the one with the most specific host
    /// that covers it, among those of the connection's kind (`tls`).
    pub fn pick(&self, port: u16, tls: bool, host: &str) -> Option<&Served> {
        let https = |s: &&Served| (s.listener().protocol == l7::gateway::Protocol::Https) == tls;
        self.ports
            .get(&port)?
            .iter()
            .filter(https)
            .filter_map(|s| {
                let l = s.listener();
                let rank = if l.hosts.is_empty() {
                    Some(usize::MAX)
                } else {
                    l.hosts
                        .iter()
                        .filter_map(|h| l7::gateway::host_rank(&h.host, host))
                        .min()
                };
                rank.map(|r| (r, s))
            })
            .min_by_key(|(r, _)| *r)
            .map(|(_, s)| s)
    }
}

/// The authorization policies of one destination, in name order.
pub type AppliedPolicies = Arc<[Arc<l7::authz::Policy>]>;

/// What tables built from the configuration depend on: the workload state's version, the
/// L7 store's, and the fetched JWKS' generation.
pub type Version = (u64, u64, u64);

/// The waypoint's L7 configuration: its store, and what is built from it.
#[derive(Default)]
pub struct L7Config {
    pub store: Arc<L7Store>,
    cached: Mutex<Cache>,
    /// JWKS the waypoint fetches itself (`crate::jwks`).
    pub remote_jwks: Arc<crate::jwks::RemoteJwks>,
}

impl L7Config {
    /// What the tables built from the configuration depend on: they are rebuilt when this
    /// changes.
    pub fn version(&self, state: &State) -> Version {
        (
            state.version(),
            self.store.version(),
            self.remote_jwks.generation(),
        )
    }

    /// Runs `f` on the cache, rebuilt first when the state or the store changed since.
    fn with<R>(&self, state: &State, f: impl FnOnce(&mut Cache) -> R) -> R {
        let version = self.version(state);
        let mut c = self.cached.lock().unwrap();
        if c.version != Some(version) {
            *c = self.store.read(|r| Cache {
                version: Some(version),
                routes: r.routes.values().cloned().collect(),
                virtual_services: r.virtual_services.values().cloned().collect(),
                destination_rules: r.destination_rules.values().cloned().collect(),
                policies: r.policies.values().cloned().collect(),
                authentications: r.authentications.values().cloned().collect(),
                ..Cache::default()
            });
            c.any_policy = c.destination_rules.iter().any(|d| sets_policy(&d.spec));
        }
        f(&mut c)
    }

    /// The tracing settings of a proxy in `namespace` (its namespace's, else the mesh's);
    /// `None` when no spans are to be reported.
    pub fn tracing(&self, state: &State, namespace: &str) -> Option<Arc<xds::l7::Tracing>> {
        self.with(state, |c| {
            c.tracing
                .get_or_insert_with(|| {
                    self.store.read(|r| {
                        r.tracing
                            .get(&format!("namespace/{namespace}"))
                            .or_else(|| r.tracing.get("mesh"))
                            .filter(|t| !t.disabled)
                            .cloned()
                    })
                })
                .clone()
        })
    }

    /// The HTTPRoute table for `frontend`; `None` inside when no route attaches to it.
    pub fn route_table(
        &self,
        state: &State,
        frontend: &l7::table::Frontend<'_>,
    ) -> Arc<Option<RouteTable>> {
        let key = (
            frontend.namespace.to_string(),
            frontend.name.to_string(),
            frontend.port,
            frontend.client_namespace.to_string(),
        );
        self.with(state, |c| {
            if let Some(t) = c.route_tables.get(&key) {
                return t.clone();
            }
            let t = Arc::new(RouteTable::build(&c.routes, frontend));
            c.route_tables.insert(key, t.clone());
            t
        })
    }

    /// The VirtualService table for a service; `None` inside when none applies.
    pub fn vs_table(
        &self,
        state: &State,
        frontend: &l7::vsroute::Frontend<'_>,
    ) -> Arc<Option<VsTable>> {
        self.with(state, |c| {
            if let Some(t) = c.vs_tables.get(frontend.hostname) {
                return t.clone();
            }
            let t = Arc::new(VsTable::build(&c.virtual_services, frontend));
            c.vs_tables.insert(frontend.hostname.to_string(), t.clone());
            t
        })
    }

    /// The AuthorizationPolicies for requests through this waypoint (its workload is `own`,
    /// namespace and name) to `hostname` ("" when a workload is addressed): those attached
    /// to every waypoint, to this one, or to that Service (AP-02).
    pub fn authorization(
        &self,
        state: &State,
        own: (&str, &str),
        hostname: &str,
    ) -> AppliedPolicies {
        self.with(state, |c| {
            if c.policies.is_empty() {
                return Arc::from([]);
            }
            if let Some(p) = c.applied.get(hostname) {
                return p.clone();
            }
            let uid = state.workload_by_name(own.0, own.1).map(|w| w.uid.clone());
            let mut found: Vec<&Arc<WaypointPolicy>> = c
                .policies
                .iter()
                .filter(|p| {
                    p.all_waypoints
                        || uid.as_ref().is_some_and(|u| p.waypoint_uids.contains(u))
                        || (!hostname.is_empty() && p.service_hostnames.contains(hostname))
                })
                .collect();
            found.sort_by(|a, b| a.policy.id.cmp(&b.policy.id));
            let list: AppliedPolicies = found.iter().map(|p| p.policy.clone()).collect();
            c.applied.insert(hostname.to_string(), list.clone());
            list
        })
    }

    /// The AuthorizationPolicies and JWT rules that select this ingress gateway's pod
    /// (`own_uid`): the gateway enforces them on every request it takes (docs/GATEWAY.md).
    pub fn gateway_policies(
        &self,
        state: &State,
        own_uid: &str,
    ) -> (AppliedPolicies, Arc<l7::authn::Authenticator>) {
        // Not a hostname: the cache entries of the gateway's own policies.
        const KEY: &str = "\0gateway";
        self.with(state, |c| {
            let policies = match c.applied.get(KEY) {
                Some(p) => p.clone(),
                None => {
                    let mut found: Vec<&Arc<WaypointPolicy>> = c
                        .policies
                        .iter()
                        .filter(|p| p.waypoint_uids.contains(own_uid))
                        .collect();
                    found.sort_by(|a, b| a.policy.id.cmp(&b.policy.id));
                    let list: AppliedPolicies = found.iter().map(|p| p.policy.clone()).collect();
                    c.applied.insert(KEY.to_string(), list.clone());
                    list
                }
            };
            let authn = match c.authenticators.get(KEY) {
                Some(a) => a.clone(),
                None => {
                    let specs: Vec<&l7::authn::RequestAuthenticationSpec> = c
                        .authentications
                        .iter()
                        .filter(|a| a.waypoint_uids.contains(own_uid))
                        .map(|a| &a.spec)
                        .collect();
                    let auth = authenticator(&specs, &self.remote_jwks);
                    c.authenticators.insert(KEY.to_string(), auth.clone());
                    auth
                }
            };
            (policies, authn)
        })
    }

    /// The listeners of the ingress gateways whose `proxy_uids` hold `own_uid`, by port.
    pub fn ingress_ports(&self, state: &State, own_uid: &str) -> Arc<IngressPorts> {
        self.with(state, |c| {
            if let Some((uid, p)) = &c.ingress {
                if uid == own_uid {
                    return p.clone();
                }
            }
            let mut gateways: Vec<Arc<l7::gateway::IngressGateway>> = self.store.read(|r| {
                r.gateways
                    .values()
                    .filter(|g| g.proxy_uids.iter().any(|u| u == own_uid))
                    .cloned()
                    .collect()
            });
            gateways.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
            let mut ports = IngressPorts::default();
            for g in gateways {
                for (i, l) in g.listeners.iter().enumerate() {
                    ports.ports.entry(l.port).or_default().push(Served {
                        gateway: g.clone(),
                        listener: i,
                    });
                }
            }
            let ports = Arc::new(ports);
            c.ingress = Some((own_uid.to_string(), ports.clone()));
            ports
        })
    }

    /// The HTTPRoute table of a Gateway API listener.
    pub fn listener_routes(&self, state: &State, s: &Served) -> Arc<Option<RouteTable>> {
        let g = &s.gateway;
        let l = s.listener();
        self.with(state, |c| {
            let key = (g.key(), l.name.clone());
            if let Some(t) = c.listener_routes.get(&key) {
                return t.clone();
            }
            let frontend = l7::table::ListenerFrontend {
                gateway_namespace: &g.namespace,
                gateway_name: &g.name,
                listener: &l.name,
                port: l.port,
                hostname: l.hosts.first().map(|h| h.host.as_str()),
                route_namespaces: l.route_namespaces.as_deref(),
            };
            let t = Arc::new(RouteTable::for_listener(&c.routes, &frontend));
            c.listener_routes.insert(key, t.clone());
            t
        })
    }

    /// The VirtualService table of an Istio gateway's (or an Ingress's) servers on a port.
    pub fn gateway_vs_table(
        &self,
        state: &State,
        s: &Served,
        proxy_namespace: &str,
    ) -> Arc<Option<VsTable>> {
        let g = &s.gateway;
        let port = s.listener().port;
        self.with(state, |c| {
            let key = (g.key(), port);
            if let Some(t) = c.gateway_vs.get(&key) {
                return t.clone();
            }
            let hosts: Vec<l7::gateway::HostFilter> = g
                .listeners
                .iter()
                .filter(|l| l.port == port)
                .flat_map(|l| {
                    if l.hosts.is_empty() {
                        vec![l7::gateway::HostFilter {
                            namespace: None,
                            host: "*".into(),
                        }]
                    } else {
                        l.hosts.clone()
                    }
                })
                .collect();
            let key_str = g.key();
            let frontend = l7::vsroute::GatewayFrontend {
                key: &key_str,
                proxy_namespace,
                hosts: &hosts,
            };
            let t = Arc::new(VsTable::for_gateway(&c.virtual_services, &frontend));
            c.gateway_vs.insert(key, t.clone());
            t
        })
    }

    /// The JWT rules for requests through this waypoint (its workload `own`) to `hostname`
    /// (a service of `service_ns`; "" for a workload): those attached to every waypoint, to
    /// this one, to that Service, or without targets in the service's namespace.
    pub fn authentication(
        &self,
        state: &State,
        own: (&str, &str),
        hostname: &str,
        service_ns: &str,
    ) -> Arc<l7::authn::Authenticator> {
        self.with(state, |c| {
            if c.authentications.is_empty() {
                return Arc::default();
            }
            if let Some(a) = c.authenticators.get(hostname) {
                return a.clone();
            }
            let uid = state.workload_by_name(own.0, own.1).map(|w| w.uid.clone());
            let specs: Vec<&l7::authn::RequestAuthenticationSpec> = c
                .authentications
                .iter()
                .filter(|a| {
                    a.all_waypoints
                        || uid.as_ref().is_some_and(|u| a.waypoint_uids.contains(u))
                        || (!hostname.is_empty() && a.service_hostnames.contains(hostname))
                        || (a.namespace_wide && !hostname.is_empty() && a.namespace == service_ns)
                })
                .map(|a| &a.spec)
                .collect();
            let auth = authenticator(&specs, &self.remote_jwks);
            c.authenticators.insert(hostname.to_string(), auth.clone());
            auth
        })
    }

    /// The VirtualServices (for TCP rules).
    pub fn virtual_services(&self, state: &State) -> Vec<Arc<VirtualService>> {
        self.with(state, |c| c.virtual_services.clone())
    }

    /// The outlier detection and circuit breakers for requests to `hostname`'s `port`, to
    /// `subset` when a route names one. Each section is the port's or else the policy's own
    /// (DR-06), of the subset's policy, else of the first DestinationRule with a top-level
    /// policy (DR-02, DR-05: a subset's section replaces the rule's). Rules are looked for
    /// as in [`L7Config::subset`].
    pub fn policies(
        &self,
        state: &State,
        hostname: &str,
        namespaces: [&str; 3],
        port: u16,
        subset: Option<&str>,
    ) -> Policies {
        self.with(state, |c| {
            if !c.any_policy {
                return Policies::default();
            }
            let candidates = ranked(&c.destination_rules, hostname, namespaces);
            let subset_policy = subset.and_then(|name| {
                candidates
                    .iter()
                    .find_map(|d| d.spec.subsets.iter().find(|s| s.name == name))
                    .and_then(|s| s.traffic_policy.as_ref())
            });
            let rule_policy = candidates
                .iter()
                .find_map(|d| d.spec.traffic_policy.as_ref());
            let section = |pick: &dyn Fn(&'_ l7::istio::TrafficPolicy) -> bool| {
                subset_policy
                    .filter(|p| pick(p))
                    .or(rule_policy.filter(|p| pick(p)))
            };
            Policies {
                ejection: section(&|p| p.outlier_detection_for(port).is_some())
                    .and_then(|p| p.outlier_detection_for(port))
                    .map(l7::istio::OutlierDetection::effective),
                limits: section(&|p| p.connection_pool_for(port).is_some())
                    .and_then(|p| p.connection_pool_for(port))
                    .map(l7::istio::ConnectionPool::effective)
                    .filter(l7::istio::Limits::any),
                balance: section(&|p| p.load_balancer_for(port).is_some())
                    .and_then(|p| p.load_balancer_for(port))
                    .map(l7::istio::LoadBalancer::balance)
                    .filter(|b| *b != l7::istio::Balance::Random),
                locality: section(&|p| p.load_balancer_for(port).is_some())
                    .and_then(|p| p.load_balancer_for(port))
                    .and_then(|l| l.locality_lb_setting.clone())
                    .map(Arc::new),
                tls: section(&|p| p.tls_for(port).is_some())
                    .and_then(|p| p.tls_for(port))
                    .cloned()
                    .map(Arc::new),
            }
        })
    }

    /// The workloads of `subset` of the service `hostname`: from the DestinationRule for it
    /// in the service's namespace, else the waypoint's, else the root namespace (DR-01,
    /// DR-03: the first with that subset wins). `None`: no such subset.
    pub fn subset(
        &self,
        state: &State,
        hostname: &str,
        namespaces: [&str; 3],
        subset: &str,
    ) -> Option<Arc<SubsetMembers>> {
        self.with(state, |c| {
            ranked(&c.destination_rules, hostname, namespaces)
                .into_iter()
                .find_map(|d| d.subsets.get(subset).cloned())
        })
    }
}

/// The authenticator of `specs`. A `jwksUri` the control plane left to the proxies gets
/// the JWKS fetched through the mesh once it is there (until then the rule has no keys).
fn authenticator(
    specs: &[&l7::authn::RequestAuthenticationSpec],
    remote: &crate::jwks::RemoteJwks,
) -> Arc<l7::authn::Authenticator> {
    let filled: Vec<l7::authn::RequestAuthenticationSpec> = specs
        .iter()
        .map(|s| {
            let mut s = (*s).clone();
            for r in &mut s.jwt_rules {
                if r.jwks.is_none() {
                    let url = r
                        .jwks_uri
                        .as_deref()
                        .filter(|u| u.starts_with("http://") || u.starts_with("https://"));
                    r.jwks = url.and_then(|u| remote.get(u));
                }
            }
            s
        })
        .collect();
    Arc::new(l7::authn::Authenticator::new(&filled))
}

/// The DestinationRules for `hostname` in `namespaces`, in that order, oldest first within
/// one namespace; only those exported to the proxy's namespace, `namespaces[1]` (DR-07).
fn ranked<'a>(
    rules: &'a [Arc<DestinationRule>],
    hostname: &str,
    namespaces: [&str; 3],
) -> Vec<&'a Arc<DestinationRule>> {
    let rank = |d: &DestinationRule| {
        namespaces
            .iter()
            .position(|n| *n == d.namespace)
            .unwrap_or(usize::MAX)
    };
    let mut candidates: Vec<&Arc<DestinationRule>> = rules
        .iter()
        .filter(|d| rank(d) != usize::MAX)
        .filter(|d| {
            l7::istio::delegate::exported_to(&d.spec.export_to, &d.namespace, namespaces[1])
        })
        .filter(|d| l7::vsroute::fqdn(&d.spec.host, &d.namespace) == hostname)
        .collect();
    candidates.sort_by_key(|d| (rank(d), d.created));
    candidates
}

/// What applies to the requests to one cluster (service, port, subset).
#[derive(Debug, Default, Clone)]
pub struct Policies {
    pub ejection: Option<l7::istio::Ejection>,
    /// Only when some breaker is set.
    pub limits: Option<l7::istio::Limits>,
    /// Only when not the default weighted random pick.
    pub balance: Option<l7::istio::Balance>,
    /// How to speak to endpoints outside the mesh (DR-47).
    pub tls: Option<Arc<l7::istio::ClientTls>>,
    /// `loadBalancer.localityLbSetting` (DR-19..22).
    pub locality: Option<Arc<l7::locality::LocalityLbSetting>>,
}

/// Whether a DestinationRule sets a section the waypoint applies, at any level.
fn sets_policy(spec: &l7::istio::DestinationRuleSpec) -> bool {
    let policy = l7::istio::TrafficPolicy::applied;
    spec.traffic_policy.as_ref().is_some_and(policy)
        || spec
            .subsets
            .iter()
            .any(|s| s.traffic_policy.as_ref().is_some_and(policy))
}
