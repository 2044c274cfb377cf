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
    version: Option<(u64, u64)>,
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
}

/// The authorization policies of one destination, in name order.
pub type AppliedPolicies = Arc<[Arc<l7::authz::Policy>]>;

/// The waypoint's L7 configuration: its store, and what is built from it.
#[derive(Default)]
pub struct L7Config {
    pub store: Arc<L7Store>,
    cached: Mutex<Cache>,
}

impl L7Config {
    /// What the tables built from the configuration depend on: they are rebuilt when this
    /// changes.
    pub fn version(&self, state: &State) -> (u64, u64) {
        (state.version(), self.store.version())
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
                ..Cache::default()
            });
            c.any_policy = c.destination_rules.iter().any(|d| sets_policy(&d.spec));
        }
        f(&mut c)
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

/// The DestinationRules for `hostname` in `namespaces`, in that order, oldest first within
/// one namespace.
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
