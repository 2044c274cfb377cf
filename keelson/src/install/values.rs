//! The values of `keelson install`: typed, with defaults sized from docs/BENCHMARKS.md, and
//! overridden by a YAML file (`--values`) and `--set key.path=value` in that order. A key
//! that is not a value is an error naming it; a value of the wrong type is an error naming
//! its path.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Values {
    /// Where everything but the waypoints goes.
    pub namespace: String,
    /// The image registry and tag: `<hub>/<image>:<tag>`.
    pub hub: String,
    pub tag: String,
    pub image_pull_policy: String,
    pub trust_domain: String,
    pub cluster_id: String,
    /// `keelson` (Keelson's control plane) or `istiod` (Keelson's ztunnel and CNI under an
    /// existing istiod).
    pub mode: Mode,
    pub istiod: Istiod,
    pub control_plane: ControlPlane,
    pub ztunnel: Ztunnel,
    pub cni: Cni,
    /// The default ingress gateway (`istio-ingressgateway`), in `keelson` mode.
    pub ingress_gateway: IngressGateway,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IngressGateway {
    pub enabled: bool,
    pub replicas: i64,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Keelson,
    Istiod,
}

/// An existing istiod, in `istiod` mode.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Istiod {
    pub xds_address: String,
    pub ca_address: String,
    /// The ConfigMap holding istiod's root certificate (`root-cert.pem`) in the namespace.
    pub root_cert_config_map: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ControlPlane {
    pub replicas: i32,
    pub resources: Resources,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Ztunnel {
    pub resources: Resources,
    /// `RUST_LOG`.
    pub log_level: String,
    /// `plain` or `json` (`LOG_FORMAT`).
    pub log_format: String,
    /// How long a draining ztunnel keeps open connections (`terminationGracePeriodSeconds`).
    pub drain_seconds: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Cni {
    /// The node's CNI directories.
    pub bin_dir: String,
    pub conf_dir: String,
    /// `iptables` or `nftables`.
    pub redirect: String,
    pub resources: Resources,
}

/// Kubernetes resource requests and the memory limit (no CPU limit: a proxy throttled by
/// CFS adds latency to every connection it carries).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Resources {
    pub cpu: String,
    pub memory: String,
    pub memory_limit: String,
}

impl Default for Values {
    fn default() -> Self {
        Values {
            namespace: "istio-system".into(),
            hub: "ghcr.io/keelson-mesh".into(),
            tag: env!("CARGO_PKG_VERSION").into(),
            image_pull_policy: "IfNotPresent".into(),
            trust_domain: identity::DEFAULT_TRUST_DOMAIN.into(),
            cluster_id: "Kubernetes".into(),
            mode: Mode::Keelson,
            istiod: Istiod {
                xds_address: "istiod.istio-system.svc:15012".into(),
                ca_address: "istiod.istio-system.svc:15012".into(),
                root_cert_config_map: "istio-ca-root-cert".into(),
            },
            // docs/BENCHMARKS.md: the control plane holds the resource model and one xDS
            // stream per proxy; 5,000 workloads synced in 0.28 s.
            control_plane: ControlPlane {
                replicas: 1,
                resources: Resources {
                    cpu: "100m".into(),
                    memory: "128Mi".into(),
                    memory_limit: "1Gi".into(),
                },
            },
            // docs/BENCHMARKS.md: ~0.075 vCPU per 1,000 requests/s through two ztunnels, RSS
            // 10-26 MiB under the soak, ~16 KiB per idle connection.
            ztunnel: Ztunnel {
                resources: Resources {
                    cpu: "100m".into(),
                    memory: "64Mi".into(),
                    memory_limit: "1Gi".into(),
                },
                log_level: "info".into(),
                log_format: "plain".into(),
                drain_seconds: 30,
            },
            cni: Cni {
                bin_dir: "/opt/cni/bin".into(),
                conf_dir: "/etc/cni/net.d".into(),
                redirect: "iptables".into(),
                resources: Resources {
                    cpu: "10m".into(),
                    memory: "32Mi".into(),
                    memory_limit: "256Mi".into(),
                },
            },
            ingress_gateway: IngressGateway {
                enabled: true,
                replicas: 1,
            },
        }
    }
}

impl Values {
    /// The defaults, then `file` (YAML text), then each `key.path=value` of `sets`.
    pub fn load(file: Option<&str>, sets: &[String]) -> Result<Values, String> {
        let mut tree = serde_json::to_value(Values::default()).map_err(|e| e.to_string())?;
        if let Some(text) = file {
            let given: Value =
                serde_yaml::from_str(text).map_err(|e| format!("values file: {e}"))?;
            if !given.is_null() {
                merge(&mut tree, given, "")?;
            }
        }
        for s in sets {
            let (path, raw) = s
                .split_once('=')
                .ok_or_else(|| format!("--set {s}: expected key.path=value"))?;
            set(&mut tree, path, raw)?;
        }
        let values: Values = serde_path_to_error::deserialize(tree)
            .map_err(|e| format!("value {}: {}", e.path(), e.inner()))?;
        values.validate()?;
        Ok(values)
    }

    fn validate(&self) -> Result<(), String> {
        let one_of = |key: &str, v: &str, allowed: &[&str]| {
            if allowed.contains(&v) {
                Ok(())
            } else {
                Err(format!("value {key}: {v:?} is not one of {allowed:?}"))
            }
        };
        one_of(
            "ztunnel.logFormat",
            &self.ztunnel.log_format,
            &["plain", "json"],
        )?;
        one_of(
            "cni.redirect",
            &self.cni.redirect,
            &["iptables", "nftables", "ebpf"],
        )?;
        one_of(
            "imagePullPolicy",
            &self.image_pull_policy,
            &["Always", "IfNotPresent", "Never"],
        )?;
        if self.control_plane.replicas < 1 {
            return Err("value controlPlane.replicas: must be at least 1".into());
        }
        if self.ingress_gateway.replicas < 1 {
            return Err("value ingressGateway.replicas: must be at least 1".into());
        }
        if self.ztunnel.drain_seconds < 0 {
            return Err("value ztunnel.drainSeconds: must not be negative".into());
        }
        Ok(())
    }

    /// `<hub>/<name>:<tag>`.
    pub fn image(&self, name: &str) -> String {
        format!("{}/{name}:{}", self.hub, self.tag)
    }
}

/// Merges `given` into `tree`; a key `tree` does not have is an error naming its path.
fn merge(tree: &mut Value, given: Value, at: &str) -> Result<(), String> {
    match (tree, given) {
        (Value::Object(t), Value::Object(g)) => {
            for (k, v) in g {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                let slot = t.get_mut(&k).ok_or(format!("unknown value {path}"))?;
                merge(slot, v, &path)?;
            }
            Ok(())
        }
        (slot, v) => {
            *slot = v;
            Ok(())
        }
    }
}

/// Sets the value at `path` (dotted) from `raw`: read as YAML when the current value is
/// not a string (numbers, booleans), else taken as it is.
fn set(tree: &mut Value, path: &str, raw: &str) -> Result<(), String> {
    let mut slot = tree;
    for k in path.split('.') {
        slot = slot
            .get_mut(k)
            .ok_or_else(|| format!("--set {path}: unknown value {path}"))?;
    }
    *slot = match slot {
        Value::String(_) => Value::String(raw.to_string()),
        _ => serde_yaml::from_str(raw).map_err(|e| format!("--set {path}: {e}"))?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_in_order_and_unknown_keys_named() {
        let v = Values::load(
            Some("ztunnel:\n  logLevel: debug\ncontrolPlane:\n  replicas: 2\n"),
            &["ztunnel.logLevel=trace".into(), "tag=1.2.3".into()],
        )
        .unwrap();
        assert_eq!(v.ztunnel.log_level, "trace");
        assert_eq!(v.control_plane.replicas, 2);
        assert_eq!(v.tag, "1.2.3");
        assert_eq!(v.image("ztunnel"), "ghcr.io/keelson-mesh/ztunnel:1.2.3");

        let e = Values::load(Some("ztunnel:\n  logLevle: debug\n"), &[]).unwrap_err();
        assert_eq!(e, "unknown value ztunnel.logLevle");
        let e = Values::load(None, &["cni.binDirr=/x".into()]).unwrap_err();
        assert!(e.contains("unknown value cni.binDirr"), "{e}");
        let e = Values::load(None, &["controlPlane.replicas=two".into()]).unwrap_err();
        assert!(e.contains("controlPlane.replicas"), "{e}");
        let e = Values::load(None, &["mode=linkerd".into()]).unwrap_err();
        assert!(e.contains("mode"), "{e}");
        let e = Values::load(None, &["cni.redirect=bpfilter".into()]).unwrap_err();
        assert!(e.contains("cni.redirect"), "{e}");
        assert!(Values::load(None, &["cni.redirect=ebpf".into()]).is_ok());
        assert_eq!(Values::load(None, &[]).unwrap(), Values::default());
        assert_eq!(
            Values::load(None, &["mode=istiod".into()]).unwrap().mode,
            Mode::Istiod
        );
    }
}
