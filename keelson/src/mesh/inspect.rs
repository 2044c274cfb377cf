//! `keelson ztunnel-config` and `keelson waypoint-config` (docs/OBSERVABILITY.md): what a
//! ztunnel or a waypoint of the local mesh holds, read from its admin port (15000, in its
//! network namespace) and its metrics (15020), as tables like `istioctl ztunnel-config`
//! prints, or as JSON with `-o json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use serde_json::Value;

use super::{MeshState, Paths};

/// What `ztunnel-config` shows.
pub const ZTUNNEL_VIEWS: &[&str] = &[
    "workloads",
    "services",
    "policies",
    "certificates",
    "connections",
    "all",
];

pub(super) fn get(netns: &str, addr: &str, path: &str) -> Result<String> {
    let (status, body) = netns::http_get_at(
        &netns::netns_path(netns),
        addr.parse().expect("a literal address"),
        path,
    )
    .with_context(|| format!("GET {addr}{path} in {netns}"))?;
    if status != 200 {
        bail!("GET {addr}{path} in {netns}: HTTP {status}");
    }
    Ok(body)
}

/// Columns padded to their widest cell, two spaces apart.
fn table(header: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let n = cells.len();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                let _ = write!(out, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for r in &rows {
        line(r.iter().map(String::as_str).collect(), &mut out);
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `namespace/hostname` of a waypoint reference → its service's short name.
fn waypoint_name(v: &Value) -> String {
    let dest = s(&v["destination"]);
    if dest.is_empty() {
        return "None".into();
    }
    dest.rsplit('/')
        .next()
        .and_then(|h| h.split('.').next())
        .unwrap_or(&dest)
        .to_string()
}

fn workloads(dump: &Value) -> String {
    let mut rows: Vec<Vec<String>> = dump["workloads"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|w| {
            vec![
                s(&w["namespace"]),
                s(&w["name"]),
                w["workloadIps"]
                    .as_array()
                    .map(|a| a.iter().map(s).collect::<Vec<_>>().join(","))
                    .unwrap_or_default(),
                s(&w["node"]),
                waypoint_name(&w["waypoint"]),
                s(&w["protocol"]),
            ]
        })
        .collect();
    rows.sort();
    table(
        &[
            "NAMESPACE",
            "POD NAME",
            "ADDRESS",
            "NODE",
            "WAYPOINT",
            "PROTOCOL",
        ],
        rows,
    )
}

fn services(dump: &Value) -> String {
    let mut rows: Vec<Vec<String>> = dump["services"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|svc| {
            let eps = svc["endpoints"].as_object().map_or(0, |e| e.len());
            let healthy = svc["endpoints"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(uid, _)| {
                    dump["workloads"].as_array().into_iter().flatten().any(|w| {
                        w["uid"].as_str() == Some(uid.as_str()) && w["status"] == "Healthy"
                    })
                })
                .count();
            vec![
                s(&svc["namespace"]),
                s(&svc["hostname"]),
                svc["vips"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .map(|v| s(v).trim_start_matches('/').to_string())
                            .collect::<Vec<_>>()
                            .join(",")
                    })
                    .unwrap_or_default(),
                waypoint_name(&svc["waypoint"]),
                format!("{healthy}/{eps}"),
            ]
        })
        .collect();
    rows.sort();
    table(
        &[
            "NAMESPACE",
            "SERVICE NAME",
            "SERVICE VIP",
            "WAYPOINT",
            "ENDPOINTS",
        ],
        rows,
    )
}

fn policies(dump: &Value) -> String {
    let mut rows: Vec<Vec<String>> = dump["policies"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            vec![
                s(&p["namespace"]),
                s(&p["name"]),
                s(&p["action"]),
                s(&p["scope"]),
            ]
        })
        .collect();
    rows.sort();
    table(&["NAMESPACE", "POLICY NAME", "ACTION", "SCOPE"], rows)
}

fn certificates(per_node: &[(String, Value)]) -> String {
    let mut rows = Vec::new();
    for (node, dump) in per_node {
        for c in dump["certificates"].as_array().into_iter().flatten() {
            for (i, cert) in c["certChain"].as_array().into_iter().flatten().enumerate() {
                rows.push(vec![
                    node.clone(),
                    s(&c["identity"]),
                    if i == 0 { "Leaf" } else { "Root" }.to_string(),
                    s(&c["state"]),
                    s(&cert["serialNumber"]),
                    s(&cert["expirationTime"]),
                    s(&cert["validFrom"]),
                ]);
            }
        }
    }
    table(
        &[
            "NODE",
            "CERTIFICATE NAME",
            "TYPE",
            "STATUS",
            "SERIAL NUMBER",
            "NOT AFTER",
            "NOT BEFORE",
        ],
        rows,
    )
}

/// One line of Prometheus text: its name, labels and value.
pub(super) fn sample(line: &str) -> Option<(&str, BTreeMap<&str, &str>, f64)> {
    if line.starts_with('#') || line.is_empty() {
        return None;
    }
    let (head, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match head.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (head, ""),
    };
    let mut map = BTreeMap::new();
    // Label values here never hold `",` (workload names, hostnames, principals).
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        if let Some((k, v)) = pair.split_once("=\"") {
            map.insert(k.trim_start_matches(','), v.trim_end_matches('"'));
        }
    }
    Some((name, map, value))
}

/// One row of `ztunnel-config connections`, by column name.
pub type ConnectionRow = BTreeMap<&'static str, Value>;

/// Connections per source, destination and reporter, from ztunnel's `istio_tcp_*`
/// counters: open now (opened − closed), opened, failed, and bytes each way.
pub fn connection_rows(metrics: &str) -> Vec<ConnectionRow> {
    type Key = (String, String, String, String);
    let mut by: BTreeMap<Key, [f64; 5]> = BTreeMap::new();
    for line in metrics.lines() {
        let Some((name, l, v)) = sample(line) else {
            continue;
        };
        let i = match name {
            "istio_tcp_connections_opened_total" => 0,
            "istio_tcp_connections_closed_total" => 1,
            "istio_tcp_connections_failed_total" => 2,
            "istio_tcp_received_bytes_total" => 3,
            "istio_tcp_sent_bytes_total" => 4,
            _ => continue,
        };
        let who = |w: &str, ns: &str| {
            let (w, ns) = (l.get(w).copied().unwrap_or("unknown"), l.get(ns).copied());
            match ns {
                Some(ns) if ns != "unknown" => format!("{ns}/{w}"),
                _ => w.to_string(),
            }
        };
        let key = (
            l.get("reporter").copied().unwrap_or_default().to_string(),
            who("source_workload", "source_workload_namespace"),
            who("destination_workload", "destination_workload_namespace"),
            l.get("destination_service")
                .copied()
                .unwrap_or_default()
                .to_string(),
        );
        by.entry(key).or_default()[i] += v;
    }
    by.into_iter()
        .map(|((reporter, src, dst, svc), n)| {
            BTreeMap::from([
                ("reporter", Value::from(reporter)),
                ("source", src.into()),
                ("destination", dst.into()),
                ("service", svc.into()),
                ("open", ((n[0] - n[1]).max(0.0) as u64).into()),
                ("opened", (n[0] as u64).into()),
                ("failed", (n[2] as u64).into()),
                ("bytesReceived", (n[3] as u64).into()),
                ("bytesSent", (n[4] as u64).into()),
            ])
        })
        .collect()
}

/// `keelson ztunnel-config VIEW [--node N] [-o json]`.
pub fn ztunnel_config(paths: &Paths, view: &str, node: Option<&str>, json: bool) -> Result<String> {
    if !ZTUNNEL_VIEWS.contains(&view) {
        bail!("unknown view {view:?}; one of {}", ZTUNNEL_VIEWS.join(", "));
    }
    let state = MeshState::load(paths).context("no local mesh (keelson up)")?;
    let nodes: Vec<_> = match node {
        Some(n) => vec![state.node(n)?],
        None => state.nodes.iter().collect(),
    };
    let mut dumps = Vec::new();
    for n in &nodes {
        let body = get(&n.netns, "127.0.0.1:15000", "/config_dump")?;
        let dump: Value = serde_json::from_str(&body).context("config_dump is not JSON")?;
        dumps.push((n.name.clone(), dump));
    }
    let first = &dumps[0].1;
    let connections = || -> Result<Vec<(String, Vec<ConnectionRow>)>> {
        nodes
            .iter()
            .map(|n| {
                let m = get(&n.netns, "127.0.0.1:15020", "/metrics")?;
                Ok((n.name.clone(), connection_rows(&m)))
            })
            .collect()
    };
    if json {
        let v = match view {
            "workloads" | "services" | "policies" => first[view].clone(),
            "certificates" => dumps
                .iter()
                .map(|(n, d)| (n.clone(), d["certificates"].clone()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            "connections" => connections()?
                .into_iter()
                .map(|(n, rows)| (n, serde_json::to_value(rows).unwrap_or_default()))
                .collect::<serde_json::Map<_, _>>()
                .into(),
            _ => dumps.into_iter().collect::<serde_json::Map<_, _>>().into(),
        };
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    let conn_table = || -> Result<String> {
        let mut rows = Vec::new();
        for (node, rs) in connections()? {
            for r in rs {
                let mut row = vec![node.clone()];
                for k in [
                    "reporter",
                    "source",
                    "destination",
                    "service",
                    "open",
                    "opened",
                    "failed",
                    "bytesReceived",
                    "bytesSent",
                ] {
                    row.push(s(&r[k]));
                }
                rows.push(row);
            }
        }
        Ok(table(
            &[
                "NODE",
                "REPORTER",
                "SOURCE",
                "DESTINATION",
                "SERVICE",
                "OPEN",
                "OPENED",
                "FAILED",
                "BYTES RECEIVED",
                "BYTES SENT",
            ],
            rows,
        ))
    };
    Ok(match view {
        "workloads" => workloads(first),
        "services" => services(first),
        "policies" => policies(first),
        "certificates" => certificates(&dumps),
        "connections" => conn_table()?,
        _ => format!(
            "{}\n{}\n{}\n{}\n{}",
            workloads(first),
            services(first),
            policies(first),
            certificates(&dumps),
            conn_table()?
        ),
    })
}

/// `keelson waypoint-config routes|clusters [NAME] [-n NS] [-o json]`: NAME is a waypoint
/// (or gateway) pod, or a Deployment's first pod; the default is the first waypoint.
pub fn waypoint_config(
    paths: &Paths,
    view: &str,
    name: Option<&str>,
    namespace: Option<&str>,
    json: bool,
) -> Result<String> {
    let path = match view {
        "routes" => "/waypoint/routes",
        "clusters" => "/waypoint/clusters",
        other => bail!("unknown view {other:?}; routes or clusters"),
    };
    let state = MeshState::load(paths).context("no local mesh (keelson up)")?;
    let pod = match name {
        Some(n) => state
            .find_pod(n, namespace)
            .with_context(|| format!("no pod {n} in the mesh (keelson status lists them)"))?,
        None => state
            .pods
            .iter()
            .find(|p| p.runs_proxy(false))
            .context("no waypoint in the mesh")?,
    };
    let body = get(&pod.netns, "127.0.0.1:15000", path)?;
    let v: Value = serde_json::from_str(&body).context("not JSON")?;
    if json {
        return Ok(serde_json::to_string_pretty(&v)? + "\n");
    }
    if view == "routes" {
        let mut rows = Vec::new();
        for svc in v["services"].as_array().into_iter().flatten() {
            for (port, p) in svc["ports"].as_object().into_iter().flatten() {
                let rules = p["rules"].as_array().cloned().unwrap_or_default();
                if rules.is_empty() {
                    rows.push(vec![
                        s(&svc["service"]),
                        port.clone(),
                        s(&p["protocol"]),
                        s(&p["routing"]),
                        "-".into(),
                        "to the service".into(),
                    ]);
                }
                for r in rules {
                    let from = if r["route"].is_null() {
                        format!("{}#{}", s(&r["virtualService"]), r["rule"])
                    } else {
                        format!("{}#{}", s(&r["route"]), r["rule"])
                    };
                    rows.push(vec![
                        s(&svc["service"]),
                        port.clone(),
                        s(&p["protocol"]),
                        s(&p["routing"]),
                        from,
                        summary(&r["spec"]),
                    ]);
                }
            }
        }
        return Ok(table(
            &[
                "SERVICE",
                "PORT",
                "PROTOCOL",
                "ROUTING",
                "RULE",
                "MATCH → TO",
            ],
            rows,
        ));
    }
    let mut rows = Vec::new();
    for c in v["clusters"].as_array().into_iter().flatten() {
        let eps = c["endpoints"].as_array().cloned().unwrap_or_default();
        let ejected = eps
            .iter()
            .filter(|e| !e["outlier"]["ejectedForMs"].is_null())
            .count();
        let breaker = c["circuitBreaker"]
            .as_array()
            .and_then(|b| b.first())
            .map(|b| {
                format!(
                    "{}/{} in flight, {} pending",
                    b["inFlight"], b["maxInFlight"], b["pending"]
                )
            })
            .unwrap_or_else(|| "-".into());
        rows.push(vec![
            s(&c["cluster"]),
            eps.len().to_string(),
            ejected.to_string(),
            if c["outlierDetection"].is_null() {
                "-"
            } else {
                "on"
            }
            .to_string(),
            breaker,
        ]);
    }
    Ok(table(
        &[
            "CLUSTER",
            "ENDPOINTS",
            "EJECTED",
            "OUTLIER DETECTION",
            "CIRCUIT BREAKER",
        ],
        rows,
    ))
}

/// A rule in one line: its first match's path and where it goes, with weights.
fn summary(spec: &Value) -> String {
    let first_match = spec["matches"]
        .as_array()
        .or(spec["match"].as_array())
        .and_then(|m| m.first());
    let path = first_match
        .map(|m| {
            let p = if m["path"].is_null() {
                &m["uri"]
            } else {
                &m["path"]
            };
            match p
                .as_object()
                .and_then(|o| o.iter().find(|(k, _)| *k != "type"))
            {
                Some((k, v)) if k == "value" => format!("{} {}", s(&p["type"]), s(v)),
                Some((k, v)) => format!("{k} {}", s(v)),
                None => "any".into(),
            }
        })
        .unwrap_or_else(|| "any".into());
    let backends = spec["backendRefs"]
        .as_array()
        .or(spec["route"].as_array())
        .map(|b| {
            b.iter()
                .map(|r| {
                    let to = if r["destination"].is_null() {
                        s(&r["name"])
                    } else {
                        let d = &r["destination"];
                        match d["subset"].as_str() {
                            Some(sub) => format!("{}/{sub}", s(&d["host"])),
                            None => s(&d["host"]),
                        }
                    };
                    match r["weight"].as_u64() {
                        Some(w) => format!("{to} ({w})"),
                        None => to,
                    }
                })
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_else(|| "-".into());
    format!("{path} → {backends}")
}
