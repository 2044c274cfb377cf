//! The waypoint's own store of L7 resources: Keelson's HTTPRoute, VirtualService,
//! DestinationRule and waypoint AuthorizationPolicy xDS types (xds/proto/l7.proto), each
//! decoded and checked as it arrives and kept typed. A resource that does not decode or
//! check is NACKed by name and the last good one of that name is kept.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use l7::table::Route;
use l7::vsroute::{DestinationRule, VirtualService};
use proxycore::xds_client::Subscription;

use crate::config::{
    decode_destination_rule, decode_gateway, decode_policy, decode_route, decode_virtual_service,
    WaypointPolicy,
};

/// The resources of each type, by xDS resource name.
#[derive(Default)]
pub struct Resources {
    pub routes: BTreeMap<String, Arc<Route>>,
    pub virtual_services: BTreeMap<String, Arc<VirtualService>>,
    pub destination_rules: BTreeMap<String, Arc<DestinationRule>>,
    pub policies: BTreeMap<String, Arc<WaypointPolicy>>,
    pub authentications: BTreeMap<String, Arc<crate::config::WaypointAuthn>>,
    /// Tracing settings by resource name: `namespace/<ns>`, or `mesh` for the default.
    pub tracing: BTreeMap<String, Arc<xds::l7::Tracing>>,
    /// Ingress gateways (only an ingress gateway subscribes to them).
    pub gateways: BTreeMap<String, Arc<l7::gateway::IngressGateway>>,
}

/// The live L7 store. `version` is bumped by every change, so whatever is built from the
/// resources (route tables) knows when to rebuild.
#[derive(Default)]
pub struct L7Store {
    resources: RwLock<Resources>,
    version: AtomicU64,
}

impl L7Store {
    /// The change counter.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Runs `f` on the resources.
    pub fn read<R>(&self, f: impl FnOnce(&Resources) -> R) -> R {
        f(&self.resources.read().unwrap())
    }

    /// The xDS subscriptions that fill this store: an ingress gateway's (`ingress`) also
    /// takes the resolved gateways.
    pub fn subscriptions(self: &Arc<Self>, ingress: bool) -> Vec<Arc<dyn Subscription>> {
        let mut subs: Vec<Arc<dyn Subscription>> = vec![
            Arc::new(Kind {
                type_url: xds::type_url::HTTP_ROUTE,
                ready: "xds http routes",
                decode: decode_route,
                slot: |r| &mut r.routes,
                store: self.clone(),
            }),
            Arc::new(Kind {
                type_url: xds::type_url::VIRTUAL_SERVICE,
                ready: "xds virtual services",
                decode: decode_virtual_service,
                slot: |r| &mut r.virtual_services,
                store: self.clone(),
            }),
            Arc::new(Kind {
                type_url: xds::type_url::DESTINATION_RULE,
                ready: "xds destination rules",
                decode: decode_destination_rule,
                slot: |r| &mut r.destination_rules,
                store: self.clone(),
            }),
            Arc::new(Kind {
                type_url: xds::type_url::WAYPOINT_POLICY,
                ready: "xds authorization policies",
                decode: decode_policy,
                slot: |r| &mut r.policies,
                store: self.clone(),
            }),
            Arc::new(Kind {
                type_url: xds::type_url::REQUEST_AUTHENTICATION,
                ready: "xds request authentications",
                decode: crate::config::decode_authn,
                slot: |r| &mut r.authentications,
                store: self.clone(),
            }),
            Arc::new(Kind {
                type_url: xds::type_url::TRACING,
                ready: "xds tracing",
                decode: crate::config::decode_tracing,
                slot: |r| &mut r.tracing,
                store: self.clone(),
            }),
        ];
        if ingress {
            subs.push(Arc::new(Kind {
                type_url: xds::type_url::INGRESS_GATEWAY,
                ready: "xds ingress gateways",
                decode: decode_gateway,
                slot: |r| &mut r.gateways,
                store: self.clone(),
            }));
        }
        subs
    }
}

/// One resource type: how it decodes and where it is kept.
struct Kind<T> {
    type_url: &'static str,
    ready: &'static str,
    decode: fn(&[u8]) -> Result<T, String>,
    slot: fn(&mut Resources) -> &mut BTreeMap<String, Arc<T>>,
    store: Arc<L7Store>,
}

impl<T: Send + Sync> Subscription for Kind<T> {
    fn type_url(&self) -> &'static str {
        self.type_url
    }

    fn ready(&self) -> &'static str {
        self.ready
    }

    fn apply(
        &self,
        resources: Vec<(String, Vec<u8>)>,
        removed: &[String],
    ) -> Vec<(String, String)> {
        let mut rejected = Vec::new();
        let mut good = Vec::new();
        for (name, body) in resources {
            match (self.decode)(&body) {
                Ok(t) => good.push((name, Arc::new(t))),
                Err(e) => rejected.push((name, e)),
            }
        }
        let mut res = self.store.resources.write().unwrap();
        let of_type = (self.slot)(&mut res);
        for name in removed {
            of_type.remove(name);
        }
        of_type.extend(good);
        drop(res);
        self.store.version.fetch_add(1, Ordering::AcqRel);
        rejected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_resource_is_rejected_by_name_and_the_good_ones_kept() {
        let store = Arc::new(L7Store::default());
        let subs = store.subscriptions(false);
        let routes = subs
            .iter()
            .find(|s| s.type_url() == xds::type_url::HTTP_ROUTE)
            .unwrap();
        let v0 = store.version();
        let rejected = routes.apply(vec![("default/bad".into(), b"\xff\xff".to_vec())], &[]);
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].0, "default/bad");
        assert!(store.version() > v0);
        assert!(store.read(|r| r.routes.is_empty()));
    }
}
