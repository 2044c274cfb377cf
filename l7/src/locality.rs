//! Locality-aware load balancing (DR-19..22, docs/WIRE.md §8): which of a service's
//! endpoints a proxy picks among, by where it and they run.
//!
//! - **Failover** (the default once outlier detection is set for the host): endpoints are
//!   ranked by how much of the proxy's locality they share (region, zone and subzone; region
//!   and zone; region; then a `failover` target region; then any), or, with
//!   `failoverPriority`, by how many of the listed labels in order match the proxy's. The
//!   best-ranked endpoints that are healthy (not ejected) take all the traffic; when none is
//!   left, the next rank does.
//! - **Distribute**: the first `distribute` entry whose `from` covers the proxy's locality
//!   splits the traffic between localities by the weights of `to`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Where a workload runs; empty parts are unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locality<'a> {
    pub region: &'a str,
    pub zone: &'a str,
    pub subzone: &'a str,
}

/// `localityLbSetting`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LocalityLbSetting {
    #[serde(default)]
    pub enabled: Option<bool>,
    #[serde(default)]
    pub distribute: Vec<Distribute>,
    #[serde(default)]
    pub failover: Vec<Failover>,
    #[serde(default)]
    pub failover_priority: Vec<String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distribute {
    pub from: String,
    /// Locality pattern → weight (percent).
    pub to: BTreeMap<String, u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Failover {
    pub from: String,
    pub to: String,
}

/// The labels `failoverPriority` can name: what a proxy knows of every endpoint.
pub const PRIORITY_LABELS: [&str; 4] = [
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
    "topology.istio.io/subzone",
    "topology.istio.io/network",
];

impl LocalityLbSetting {
    pub fn validate(&self, at: &str) -> Result<(), String> {
        if !self.distribute.is_empty()
            && (!self.failover.is_empty() || !self.failover_priority.is_empty())
        {
            return Err(format!(
                "{at}: distribute excludes failover and failoverPriority"
            ));
        }
        for (i, d) in self.distribute.iter().enumerate() {
            let total: u32 = d.to.values().sum();
            if total != 100 {
                return Err(format!(
                    "{at}.distribute[{i}].to: the weights add up to {total}, not 100"
                ));
            }
        }
        for (i, f) in self.failover.iter().enumerate() {
            if f.from.is_empty() || f.to.is_empty() || f.from.contains('/') || f.to.contains('/') {
                return Err(format!(
                    "{at}.failover[{i}]: from and to are regions (no '/')"
                ));
            }
            if f.from == f.to {
                return Err(format!(
                    "{at}.failover[{i}]: from and to are the same region"
                ));
            }
        }
        for (i, l) in self.failover_priority.iter().enumerate() {
            let key = l.split_once('=').map_or(l.as_str(), |(k, _)| k);
            if !PRIORITY_LABELS.contains(&key) {
                return Err(format!(
                    "{at}.failoverPriority[{i}]: {key:?}: only {} can be used (the labels a proxy knows of every endpoint)",
                    PRIORITY_LABELS.join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Whether the setting ranks endpoints for failover (needs outlier detection, DR-21).
    pub fn fails_over(&self, outlier_detection: bool) -> bool {
        self.enabled != Some(false) && self.distribute.is_empty() && outlier_detection
    }

    /// The rank of an endpoint at `ep` (and on `ep_network`) for a proxy at `own` (on
    /// `own_network`): lower is preferred.
    pub fn rank(
        &self,
        own: &Locality<'_>,
        own_network: &str,
        ep: &Locality<'_>,
        ep_network: &str,
    ) -> u32 {
        if !self.failover_priority.is_empty() {
            let value = |l: &Locality<'_>, network: &str, key: &str| -> String {
                match key {
                    "topology.kubernetes.io/region" => l.region.to_string(),
                    "topology.kubernetes.io/zone" => l.zone.to_string(),
                    "topology.istio.io/subzone" => l.subzone.to_string(),
                    _ => network.to_string(),
                }
            };
            // The nth label counts only when the n-1 before it match (DR-22).
            let matched = self
                .failover_priority
                .iter()
                .take_while(|entry| match entry.split_once('=') {
                    Some((k, v)) => value(ep, ep_network, k) == v,
                    None => value(ep, ep_network, entry) == value(own, own_network, entry),
                })
                .count();
            return (self.failover_priority.len() - matched) as u32;
        }
        let region = !own.region.is_empty() && own.region == ep.region;
        let zone = region && own.zone == ep.zone;
        let subzone = zone && own.subzone == ep.subzone;
        match (region, zone, subzone) {
            (_, _, true) => 0,
            (_, true, false) => 1,
            (true, false, false) => 2,
            _ if self
                .failover
                .iter()
                .any(|f| f.from == own.region && f.to == ep.region) =>
            {
                3
            }
            _ => 4,
        }
    }

    /// The weights of `distribute` for a proxy at `own`: for each endpoint locality, the
    /// weight of the first `to` pattern covering it (0: none). `None`: no entry applies.
    pub fn distribution(&self, own: &Locality<'_>) -> Option<&BTreeMap<String, u32>> {
        if self.enabled == Some(false) {
            return None;
        }
        self.distribute
            .iter()
            .find(|d| covers(&d.from, own))
            .map(|d| &d.to)
    }
}

/// Whether a locality pattern (`region/zone/subzone`, a part `*` or a trailing `*`
/// standing for anything) covers `l`.
pub fn covers(pattern: &str, l: &Locality<'_>) -> bool {
    let parts = [l.region, l.zone, l.subzone];
    for (i, p) in pattern.split('/').enumerate() {
        if p == "*" {
            return true;
        }
        match parts.get(i) {
            Some(v) if *v == p => {}
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at<'a>(region: &'a str, zone: &'a str, subzone: &'a str) -> Locality<'a> {
        Locality {
            region,
            zone,
            subzone,
        }
    }

    fn setting(y: &str) -> LocalityLbSetting {
        let s: LocalityLbSetting = serde_yaml::from_str(y).unwrap();
        s.validate("lb").unwrap();
        s
    }

    #[test]
    fn endpoints_rank_by_the_locality_they_share() {
        let s = setting("{failover: [{from: us-east, to: eu-west}]}");
        let own = at("us-east", "a", "1");
        let rank = |ep: Locality<'_>| s.rank(&own, "", &ep, "");
        assert_eq!(rank(at("us-east", "a", "1")), 0);
        assert_eq!(rank(at("us-east", "a", "2")), 1);
        assert_eq!(rank(at("us-east", "b", "1")), 2);
        assert_eq!(rank(at("eu-west", "a", "1")), 3);
        assert_eq!(rank(at("ap-south", "a", "1")), 4);
        // Nothing known of the proxy: every endpoint alike.
        assert_eq!(s.rank(&at("", "", ""), "", &at("", "", ""), ""), 4);
        assert!(s.fails_over(true) && !s.fails_over(false));
        assert!(!setting("{enabled: false}").fails_over(true));
    }

    #[test]
    fn failover_priority_counts_leading_matches() {
        let s = setting(
            "failoverPriority: [topology.istio.io/network, topology.kubernetes.io/region, 'topology.kubernetes.io/zone=z9']",
        );
        let own = at("r1", "z1", "");
        assert_eq!(s.rank(&own, "n1", &at("r1", "z9", ""), "n1"), 0);
        assert_eq!(s.rank(&own, "n1", &at("r1", "z1", ""), "n1"), 1);
        assert_eq!(s.rank(&own, "n1", &at("r2", "z9", ""), "n1"), 2);
        // The region matches, but only after the network, which does not.
        assert_eq!(s.rank(&own, "n1", &at("r1", "z9", ""), "n2"), 3);
    }

    #[test]
    fn distribute_picks_the_entry_from_the_proxy_locality() {
        let s = setting(
            "distribute: [{from: 'us-east/a/*', to: {'us-east/a/*': 80, 'us-east/b/*': 20}}, {from: '*', to: {'*': 100}}]",
        );
        let to = s.distribution(&at("us-east", "a", "1")).unwrap();
        assert_eq!(to["us-east/a/*"], 80);
        assert_eq!(s.distribution(&at("eu", "x", "")).unwrap()["*"], 100);
        assert!(covers("us-east/*", &at("us-east", "b", "2")));
        assert!(covers("us-east", &at("us-east", "b", "2")));
        assert!(!covers("us-east/a", &at("us-east", "b", "2")));
    }

    #[test]
    fn bad_settings_say_what_is_wrong() {
        let e = |y: &str| {
            serde_yaml::from_str::<LocalityLbSetting>(y)
                .unwrap()
                .validate("lb")
                .unwrap_err()
        };
        assert!(e("{distribute: [{from: '*', to: {'*': 90}}]}").contains("add up to 90"));
        assert!(
            e("{distribute: [{from: '*', to: {'*': 100}}], failover: [{from: a, to: b}]}")
                .contains("excludes")
        );
        assert!(e("{failover: [{from: a/b, to: c}]}").contains("regions"));
        assert!(e("{failoverPriority: [app]}").contains("only topology"));
    }
}
