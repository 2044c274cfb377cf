//! `keelson up --observability` (docs/OBSERVABILITY.md): Prometheus (Debian's package,
//! installed by scripts/setup.sh) as the pod `istio-system/prometheus`, outside the
//! capture, behind a load balancer address reachable from this machine. It scrapes the
//! control plane (15014), every ztunnel and every waypoint and gateway (15020), found
//! through target files written each time the mesh changes, and records Istio's standard
//! aggregations (deploy/prometheus/rules.yml) that the Grafana dashboards of
//! deploy/grafana/ read.

use std::path::PathBuf;

use anyhow::{Context, Result};

use super::manifest::{ContainerPlan, Manifest, Program};
use super::{MeshState, Paths, CP_IP};

pub const NAMESPACE: &str = "istio-system";
pub const NAME: &str = "prometheus";
pub const PORT: u16 = 9090;
/// Where Debian's package puts it.
const BINARY: &str = "/usr/bin/prometheus";
/// Short, for a mesh that lives minutes: rates have points within seconds.
const SCRAPE_INTERVAL: &str = "2s";

const RULES: &str = include_str!("../../../deploy/prometheus/rules.yml");

fn dir(paths: &Paths) -> PathBuf {
    paths.home.join("prometheus")
}

/// Prometheus' configuration: one job per kind of target, each from a file of targets.
fn config(dir: &std::path::Path) -> String {
    let d = dir.display();
    format!(
        "# Written by keelson up --observability.
global:
  scrape_interval: {SCRAPE_INTERVAL}
  evaluation_interval: 5s
rule_files:
- {d}/rules.yml
scrape_configs:
- job_name: controlplane
  file_sd_configs: [{{files: [{d}/controlplane.json], refresh_interval: 2s}}]
- job_name: ztunnel
  file_sd_configs: [{{files: [{d}/ztunnel.json], refresh_interval: 2s}}]
- job_name: proxies
  file_sd_configs: [{{files: [{d}/proxies.json], refresh_interval: 2s}}]
"
    )
}

/// Writes the configuration before the mesh is built; adds the pod and its Service.
pub fn prepare(paths: &Paths, manifest: &mut Manifest) -> Result<()> {
    if !std::path::Path::new(BINARY).exists() {
        anyhow::bail!("--observability: {BINARY} is missing (bash scripts/setup.sh installs Debian's prometheus)");
    }
    let d = dir(paths);
    std::fs::create_dir_all(d.join("data")).with_context(|| format!("creating {}", d.display()))?;
    std::fs::write(d.join("prometheus.yml"), config(&d))?;
    std::fs::write(d.join("rules.yml"), RULES)?;
    for f in ["controlplane.json", "ztunnel.json", "proxies.json"] {
        std::fs::write(d.join(f), "[]\n")?;
    }
    let args = vec![
        BINARY.to_string(),
        format!("--config.file={}/prometheus.yml", d.display()),
        format!("--storage.tsdb.path={}/data", d.display()),
        format!("--web.listen-address=0.0.0.0:{PORT}"),
        "--storage.tsdb.retention.time=6h".to_string(),
        "--web.enable-lifecycle".to_string(),
    ];
    manifest.add_addon(
        NAMESPACE,
        NAME,
        ContainerPlan {
            name: NAME.into(),
            image: "prom/prometheus".into(),
            program: Program::Command(args),
            env: Vec::new(),
            ports: vec![PORT],
        },
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {NAME}\n  namespace: {NAMESPACE}\nspec:\n  type: LoadBalancer\n  selector: {{app: {NAME}}}\n  ports:\n  - {{name: http, port: {PORT}}}\n"
        ),
    )
}

/// The targets, from the mesh as it is now: written whenever the mesh's state is saved,
/// when Prometheus runs.
pub fn write_targets(paths: &Paths, state: &MeshState) -> Result<()> {
    let d = dir(paths);
    if !d.join("prometheus.yml").exists() {
        return Ok(());
    }
    let group = |targets: Vec<String>, labels: serde_json::Value| serde_json::json!({ "targets": targets, "labels": labels });
    let cp = vec![group(vec![format!("{CP_IP}:15014")], serde_json::json!({}))];
    let zt: Vec<_> = state
        .nodes
        .iter()
        .map(|n| {
            group(
                vec![format!("{}:15020", n.ip)],
                serde_json::json!({ "node": n.name }),
            )
        })
        .collect();
    let proxies: Vec<_> = state
        .pods
        .iter()
        .filter(|p| p.runs_proxy(true))
        .map(|p| {
            group(
                vec![format!("{}:15020", p.ip)],
                serde_json::json!({ "namespace": p.namespace, "pod": p.name, "node": p.node }),
            )
        })
        .collect();
    for (file, v) in [
        ("controlplane.json", cp),
        ("ztunnel.json", zt),
        ("proxies.json", proxies),
    ] {
        let tmp = d.join(format!("{file}.tmp"));
        std::fs::write(&tmp, serde_json::to_vec_pretty(&v)?)?;
        std::fs::rename(tmp, d.join(file))?;
    }
    Ok(())
}
