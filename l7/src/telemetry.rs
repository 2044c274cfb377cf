//! Tracing settings from Istio's mesh config and `Telemetry` resources (docs/OBSERVABILITY.md):
//! which OpenTelemetry collector a namespace's proxies send spans to, and what share of new
//! traces they sample.
//!
//! - The mesh config (the `mesh` key of the `istio` ConfigMap in the root namespace) names
//!   the collectors (`extensionProviders[].opentelemetry`), the default ones
//!   (`defaultProviders.tracing`) and the default sampling (`defaultConfig.tracing.sampling`,
//!   1% when unset, as in Istio).
//! - A `Telemetry` without a selector in the root namespace overrides the mesh defaults; one
//!   in another namespace overrides those for that namespace. Its first `tracing` entry
//!   counts: `providers` (empty: inherited), `randomSamplingPercentage` (unset: inherited)
//!   and `disableSpanReporting`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Istio's default sampling percentage.
pub const DEFAULT_SAMPLING: f64 = 1.0;

/// The parts of Istio's `MeshConfig` tracing reads.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MeshConfig {
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    #[serde(default)]
    pub default_providers: DefaultProviders,
    #[serde(default)]
    pub default_config: DefaultConfig,
    /// `false` turns tracing off mesh-wide.
    pub enable_tracing: Option<bool>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultProviders {
    #[serde(default)]
    pub tracing: Vec<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DefaultConfig {
    #[serde(default)]
    pub tracing: ProxyTracing,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProxyTracing {
    pub sampling: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtensionProvider {
    pub name: String,
    pub opentelemetry: Option<OtelProvider>,
    /// Other provider kinds (zipkin, prometheus, envoyFileAccessLog, ...): named, not used.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_yaml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OtelProvider {
    pub service: String,
    pub port: u16,
}

/// A `Telemetry` resource's spec, the fields tracing reads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TelemetrySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<serde_json::Value>,
    #[serde(default)]
    pub tracing: Vec<TracingEntry>,
    /// metrics, accessLogging: read by nothing here yet.
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TracingEntry {
    #[serde(default)]
    pub providers: Vec<ProviderRef>,
    pub random_sampling_percentage: Option<f64>,
    pub disable_span_reporting: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ProviderRef {
    pub name: String,
}

impl TelemetrySpec {
    pub fn validate(&self) -> Result<(), String> {
        for (i, t) in self.tracing.iter().enumerate() {
            if let Some(p) = t.random_sampling_percentage {
                if !(0.0..=100.0).contains(&p) {
                    return Err(format!(
                        "tracing[{i}].randomSamplingPercentage: {p} is not within 0 to 100"
                    ));
                }
            }
        }
        Ok(())
    }

    /// Applies to a whole namespace (no selector, no targetRefs).
    pub fn namespace_wide(&self) -> bool {
        self.selector.is_none() && self.target_refs.is_empty()
    }
}

/// One namespace's tracing, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct Tracing {
    /// The namespace, or "" for the mesh-wide default.
    pub namespace: String,
    pub provider: String,
    pub service: String,
    pub port: u16,
    pub sampling: f64,
    /// No spans reported; `reason` says why.
    pub disabled: bool,
    /// Where the settings come from ("meshconfig" or `Telemetry <ns>/<name>`), or why no
    /// spans are reported.
    pub source: String,
}

/// A Telemetry resource as the resolution needs it.
pub struct Telemetry<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub spec: &'a TelemetrySpec,
}

/// The mesh-wide default (namespace "") and one entry per namespace with a namespace-wide
/// Telemetry. Telemetry resources with a selector or targetRefs are not read (they name
/// workloads, not the namespace's proxies).
pub fn resolve(mesh: &MeshConfig, telemetries: &[Telemetry<'_>], root: &str) -> Vec<Tracing> {
    let layer = |base: &Layer, t: Option<&Telemetry<'_>>| -> Layer {
        let Some(t) = t else { return base.clone() };
        let Some(e) = t.spec.tracing.first() else {
            return base.clone();
        };
        Layer {
            providers: if e.providers.is_empty() {
                base.providers.clone()
            } else {
                e.providers.iter().map(|p| p.name.clone()).collect()
            },
            sampling: e.random_sampling_percentage.unwrap_or(base.sampling),
            disabled: e.disable_span_reporting.unwrap_or(base.disabled),
            source: format!("Telemetry {}/{}", t.namespace, t.name),
        }
    };
    let mesh_layer = Layer {
        providers: mesh.default_providers.tracing.clone(),
        sampling: mesh
            .default_config
            .tracing
            .sampling
            .unwrap_or(DEFAULT_SAMPLING),
        disabled: mesh.enable_tracing == Some(false),
        source: "meshconfig".into(),
    };
    // The oldest namespace-wide Telemetry of a namespace counts (Istio warns of the rest).
    let mut by_ns: BTreeMap<&str, &Telemetry<'_>> = BTreeMap::new();
    for t in telemetries.iter().filter(|t| t.spec.namespace_wide()) {
        by_ns.entry(t.namespace).or_insert(t);
    }
    let root_layer = layer(&mesh_layer, by_ns.get(root).copied());
    let mut out = vec![root_layer.clone().settle(mesh, "")];
    for (ns, t) in by_ns {
        if ns != root {
            out.push(layer(&root_layer, Some(t)).settle(mesh, ns));
        }
    }
    out
}

#[derive(Clone)]
struct Layer {
    providers: Vec<String>,
    sampling: f64,
    disabled: bool,
    source: String,
}

impl Layer {
    fn settle(self, mesh: &MeshConfig, namespace: &str) -> Tracing {
        let mut t = Tracing {
            namespace: namespace.to_string(),
            provider: String::new(),
            service: String::new(),
            port: 0,
            sampling: self.sampling.clamp(0.0, 100.0),
            disabled: self.disabled,
            source: self.source,
        };
        let Some(name) = self.providers.first() else {
            t.disabled = true;
            t.source = format!("{}: no tracing provider", t.source);
            return t;
        };
        t.provider = name.clone();
        match mesh.extension_providers.iter().find(|p| &p.name == name) {
            Some(ExtensionProvider {
                opentelemetry: Some(o),
                ..
            }) => {
                t.service = o.service.clone();
                t.port = o.port;
            }
            Some(_) => {
                t.disabled = true;
                t.source = format!("{}: provider {name} is not opentelemetry", t.source);
            }
            None => {
                t.disabled = true;
                t.source = format!("{}: no extension provider {name}", t.source);
            }
        }
        t
    }
}

/// Reads the `mesh` key of the `istio` ConfigMap.
pub fn parse_mesh_config(text: &str) -> Result<MeshConfig, String> {
    if text.trim().is_empty() {
        return Ok(MeshConfig::default());
    }
    serde_yaml::from_str(text).map_err(|e| format!("mesh: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "
extensionProviders:
- name: otel
  opentelemetry:
    service: collector.observability.svc.cluster.local
    port: 4317
- name: zipkin
  zipkin:
    service: zipkin.istio-system.svc.cluster.local
    port: 9411
defaultConfig:
  tracing:
    sampling: 5
";

    fn telemetry(yaml: &str) -> TelemetrySpec {
        let t: TelemetrySpec = serde_yaml::from_str(yaml).unwrap();
        t.validate().unwrap();
        t
    }

    #[test]
    fn no_provider_means_no_spans() {
        let mesh = parse_mesh_config(MESH).unwrap();
        let out = resolve(&mesh, &[], "istio-system");
        assert_eq!(out.len(), 1);
        assert!(out[0].disabled);
        assert!(out[0].source.contains("no tracing provider"));
    }

    #[test]
    fn telemetry_layers_override_the_mesh_then_the_root() {
        let mesh = parse_mesh_config(MESH).unwrap();
        let root = telemetry("tracing:\n- providers: [{name: otel}]\n");
        let ns = telemetry("tracing:\n- randomSamplingPercentage: 100\n");
        let off = telemetry("tracing:\n- disableSpanReporting: true\n");
        let zipkin = telemetry("tracing:\n- providers: [{name: zipkin}]\n");
        let selected = telemetry(
            "selector: {matchLabels: {app: a}}\ntracing:\n- randomSamplingPercentage: 50\n",
        );
        let ts = [
            Telemetry {
                namespace: "istio-system",
                name: "mesh-default",
                spec: &root,
            },
            Telemetry {
                namespace: "a",
                name: "all",
                spec: &ns,
            },
            Telemetry {
                namespace: "b",
                name: "off",
                spec: &off,
            },
            Telemetry {
                namespace: "c",
                name: "z",
                spec: &zipkin,
            },
            Telemetry {
                namespace: "d",
                name: "sel",
                spec: &selected,
            },
        ];
        let out = resolve(&mesh, &ts, "istio-system");
        let get = |ns: &str| out.iter().find(|t| t.namespace == ns).unwrap();
        assert_eq!(get("").service, "collector.observability.svc.cluster.local");
        assert_eq!(get("").port, 4317);
        assert_eq!(get("").sampling, 5.0);
        assert!(!get("").disabled);
        assert_eq!(get("a").sampling, 100.0);
        assert_eq!(get("a").provider, "otel");
        assert!(get("b").disabled);
        assert!(get("c").disabled && get("c").source.contains("not opentelemetry"));
        assert!(out.iter().all(|t| t.namespace != "d"));
    }

    #[test]
    fn sampling_out_of_range_is_refused() {
        let t: TelemetrySpec =
            serde_yaml::from_str("tracing:\n- randomSamplingPercentage: 101\n").unwrap();
        assert!(t
            .validate()
            .unwrap_err()
            .contains("randomSamplingPercentage"));
    }
}
