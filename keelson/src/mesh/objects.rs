//! The resource directory the control plane reads: the user's resources (Services given a
//! cluster IP) and one Pod object per replica, as an API server would hold them.

use anyhow::{Context, Result};
use manifest::{Manifest, Resource, Workload};
use std::net::Ipv4Addr;

use super::*;

/// Writes the manifest's resources (and the namespaces its workloads use, labelled for
/// ambient when the manifest does not define them) for the control plane.
pub(super) fn write_resources(
    paths: &Paths,
    state: &mut MeshState,
    manifest: &Manifest,
) -> Result<()> {
    let mut resources = manifest.resources.clone();
    let defined: Vec<String> = resources
        .iter()
        .filter(|r| r.kind == "Namespace")
        .map(|r| r.name.clone())
        .collect();
    let mut needed: Vec<String> = manifest
        .workloads
        .iter()
        .map(|w| w.namespace.clone())
        .collect();
    needed.sort();
    needed.dedup();
    for ns in needed {
        let file = paths.resources().join(resource_file(&Resource {
            kind: "Namespace".into(),
            namespace: None,
            name: ns.clone(),
            value: serde_yaml::Value::Null,
        }));
        if defined.contains(&ns) || file.exists() {
            continue;
        }
        say(format!(
            "namespace {ns}: created and labelled istio.io/dataplane-mode=ambient (define it in your YAML to choose)"
        ));
        let value: serde_yaml::Value = serde_yaml::from_str(&format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    istio.io/dataplane-mode: ambient\n"
        ))?;
        resources.push(Resource {
            kind: "Namespace".into(),
            namespace: None,
            name: ns,
            value,
        });
    }
    for mut r in resources {
        let path = paths.resources().join(resource_file(&r));
        if r.kind == "Service" {
            assign_cluster_ip(state, &mut r)?;
            keep_status(&path, &mut r.value);
        }
        std::fs::write(&path, serde_yaml::to_string(&r.value)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    state.save(paths)
}

/// A Service written again keeps the status the mesh gave it (its load balancer address),
/// as the API server keeps status across spec updates.
fn keep_status(path: &std::path::Path, value: &mut serde_yaml::Value) {
    if value.get("status").is_some() {
        return;
    }
    let old: Option<serde_yaml::Value> = std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_yaml::from_str(&t).ok());
    if let (Some(status), Some(m)) = (
        old.and_then(|o| o.get("status").cloned()),
        value.as_mapping_mut(),
    ) {
        m.insert("status".into(), status);
    }
}

pub(super) fn resource_file(r: &Resource) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    // Two APIs have a Gateway: Istio's is kept apart from the Gateway API's.
    let istio = r
        .value
        .get("apiVersion")
        .and_then(|v| v.as_str())
        .is_some_and(|v| v.starts_with("networking.istio.io/"));
    let kind = if r.kind == "Gateway" && istio {
        "istio-gateway".to_string()
    } else {
        clean(&r.kind)
    };
    format!(
        "{}.{}.{}.yaml",
        kind,
        clean(r.namespace.as_deref().unwrap_or("-")),
        clean(&r.name)
    )
}

pub(super) fn pod_file(namespace: &str, name: &str) -> String {
    format!("pod.{namespace}.{name}.yaml")
}

pub(super) fn assign_cluster_ip(state: &mut MeshState, r: &mut Resource) -> Result<()> {
    let key = format!("{}/{}", r.namespace.as_deref().unwrap_or("default"), r.name);
    let spec = r
        .value
        .get_mut("spec")
        .and_then(|s| s.as_mapping_mut())
        .with_context(|| format!("Service {key}: no spec"))?;
    let given = spec
        .get("clusterIP")
        .and_then(|v| v.as_str())
        .map(str::to_string);
    match given.as_deref() {
        Some("None") => return Ok(()),
        Some(ip) => {
            let ip: Ipv4Addr = ip
                .parse()
                .with_context(|| format!("Service {key}: spec.clusterIP {ip:?}"))?;
            state.services.insert(key, ip);
            return Ok(());
        }
        None => {}
    }
    let vip = match state.services.get(&key) {
        Some(v) => *v,
        None => {
            let n = state.next_vip;
            state.next_vip += 1;
            let v = Ipv4Addr::new(10, 96, (n >> 8) as u8, (n & 0xff) as u8);
            state.services.insert(key, v);
            v
        }
    };
    spec.insert("clusterIP".into(), vip.to_string().into());
    Ok(())
}

/// The owner a controller gives a pod. A Deployment's pods belong to its ReplicaSet, named
/// `<deployment>-<pod template hash>` (the control plane takes the workload name back off
/// that suffix, as istiod does); the hash here is a stable one of the deployment's name.
pub(super) fn owner_reference(w: &Workload) -> serde_json::Value {
    if w.kind == "Deployment" {
        let hash = w.name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        serde_json::json!({"kind": "ReplicaSet", "name": format!("{}-{:x}", w.name, hash & 0xff_ffff_ffff)})
    } else {
        serde_json::json!({"kind": "Pod", "name": w.name})
    }
}

/// `keelson label`: changes the labels of a Namespace or a Pod in place, as `kubectl label`
/// does (`key=value` sets, `key-` removes). The node agents see the change and enrol or hand
/// back the running pods it concerns (docs/ARCHITECTURE.md, "Shared (in-pod) mode").
pub fn label(
    paths: &Paths,
    kind: &str,
    namespace: Option<&str>,
    name: &str,
    changes: &[&str],
) -> Result<()> {
    let (file, mut value): (std::path::PathBuf, serde_yaml::Value) = match kind {
        "namespace" | "namespaces" | "ns" => {
            let file = paths.resources().join(resource_file(&Resource {
                kind: "Namespace".into(),
                namespace: None,
                name: name.into(),
                value: serde_yaml::Value::Null,
            }));
            let value = match std::fs::read_to_string(&file) {
                Ok(t) => serde_yaml::from_str(&t)?,
                Err(_) => serde_yaml::from_str(&format!(
                    "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n"
                ))?,
            };
            (file, value)
        }
        "pod" | "pods" | "po" => {
            let ns = namespace.unwrap_or("default");
            let file = paths.resources().join(pod_file(ns, name));
            let text = std::fs::read_to_string(&file).map_err(|_| {
                anyhow::anyhow!("no pod {ns}/{name} in the mesh (keelson status lists them)")
            })?;
            (file, serde_yaml::from_str(&text)?)
        }
        other => anyhow::bail!("cannot label a {other:?}: namespace or pod"),
    };
    if changes.is_empty() {
        anyhow::bail!("no label given (KEY=VALUE sets, KEY- removes)");
    }
    let meta = value
        .get_mut("metadata")
        .and_then(|m| m.as_mapping_mut())
        .context("the object has no metadata")?;
    let labels = meta
        .entry("labels".into())
        .or_insert_with(|| serde_yaml::Value::Mapping(Default::default()));
    if labels.is_null() {
        *labels = serde_yaml::Value::Mapping(Default::default());
    }
    let labels = labels
        .as_mapping_mut()
        .context("metadata.labels is not a map")?;
    for c in changes {
        match (c.split_once('='), c.strip_suffix('-')) {
            (Some((k, v)), _) if !k.is_empty() => {
                labels.insert(k.into(), v.into());
            }
            (None, Some(k)) if !k.is_empty() => {
                labels.remove(k);
            }
            _ => anyhow::bail!("{c:?}: not KEY=VALUE or KEY-"),
        }
    }
    let tmp = file.with_extension("tmp");
    std::fs::write(&tmp, serde_yaml::to_string(&value)?)
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &file)?;
    say(format!("{kind} {name}: labelled"));
    Ok(())
}
