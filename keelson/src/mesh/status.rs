//! `keelson status` and `keelson restart`.

use anyhow::{bail, Result};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::*;

/// `keelson restart ROLE`: a deliberate restart of one process of the mesh by its
/// supervisor (a node's ztunnel is handed off with no downtime; see `supervise`). Returns
/// once the new process runs.
pub fn restart(paths: &Paths, role: &str) -> Result<()> {
    let state = MeshState::load(paths)?;
    let roles: Vec<String> = supervise::Record::load(paths)
        .processes
        .keys()
        .cloned()
        .chain(
            state
                .procs
                .iter()
                .chain(state.pods.iter().flat_map(|p| p.procs.iter()))
                .filter(|p| p.spec.is_some())
                .map(|p| p.role.clone()),
        )
        .collect();
    if !roles.iter().any(|r| r == role) {
        let mut known: Vec<&String> = roles.iter().collect();
        known.sort();
        known.dedup();
        bail!(
            "no process {role} in the mesh; its processes: {}",
            known
                .iter()
                .map(|r| r.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let supervisor = state.procs.iter().find(|p| p.role == "supervisor");
    if !supervisor.is_some_and(ProcRecord::alive) {
        bail!("the mesh's supervisor is not running (keelson up starts it)");
    }
    let before = supervise::Record::load(paths).restarts(role);
    supervise::request_restart(paths, role)?;
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let record = supervise::Record::load(paths);
        if let Some(s) = record.processes.get(role) {
            if s.restarts > before && s.current.alive() {
                say(format!("{role}: restarted (pid {})", s.current.pid));
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            bail!(
                "{role} was not restarted within 40 s (see {})",
                paths.logs().join("supervisor.log").display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A human-readable account of the mesh: nodes, processes, pods, services, and the resources
/// the control plane rejected.
pub fn status(paths: &Paths) -> Result<String> {
    use std::fmt::Write as _;
    let state = MeshState::load(paths)?;
    let supervisor = supervise::Record::load(paths);
    let alive = |p: &ProcRecord| {
        let state = if supervisor.current(p).alive() {
            "running"
        } else {
            "EXITED"
        };
        match supervisor.restarts(&p.role) {
            0 => state.to_string(),
            n => format!("{state} (restarts {n})"),
        }
    };
    let mut out = nodes(&state, &alive)?;
    if let Some(cp) = state.procs.iter().find(|p| p.role == "controlplane") {
        writeln!(
            out,
            "\ncontrol plane {CP_IP}:{CP_PORT}: {} (log {})",
            alive(cp),
            cp.log.display()
        )?;
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(paths.resources())?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    files.sort();
    let mut all = resources::Resources::default();
    for f in files {
        let mut one = resources::Resources::default();
        match one.add_file(&f) {
            Err(e) => writeln!(out, "  rejected: {e}")?,
            Ok(()) => all.extend(one),
        }
    }
    // Tracing, once a mesh config or a Telemetry names it (docs/OBSERVABILITY.md).
    if !all.mesh_configs.is_empty() || !all.telemetries.is_empty() {
        let mesh = resources::MeshSettings::default();
        writeln!(
            out,
            "
TRACING (namespace: provider, collector, sampling)"
        )?;
        for t in controlplane::snapshot::tracing(&all, &mesh) {
            let ns = if t.namespace.is_empty() {
                "(mesh)"
            } else {
                t.namespace.as_str()
            };
            if t.disabled {
                writeln!(out, "{ns:<20} off: {}", t.source)?;
            } else {
                writeln!(
                    out,
                    "{ns:<20} {} {}:{} {}% ({})",
                    t.provider, t.service, t.port, t.sampling, t.source
                )?;
            }
        }
    }
    writeln!(
        out,
        "\nNAMESPACE   POD                     NODE     IP             MESH  REDIRECT  STATUS"
    )?;
    if let Some(sup) = state.procs.iter().find(|p| p.role == "supervisor") {
        writeln!(out, "supervisor: {}", alive(sup))?;
    }
    let mut programs = String::new();
    for p in &state.pods {
        let running = p.procs.iter().all(|pr| supervisor.current(pr).alive());
        let path = netns::netns_path(&p.netns);
        let flavour = cni_plugin::redirect::installed_flavour(&path);
        writeln!(
            out,
            "{:<11} {:<23} {:<8} {:<14} {:<5} {:<9} {}",
            p.namespace,
            p.name,
            p.node,
            p.ip,
            if flavour.is_some() { "yes" } else { "no" },
            flavour.map_or("-", |f| f.name()),
            if running { "Running" } else { "EXITED" }
        )?;
        if flavour == Some(cni_plugin::redirect::Redirect::Ebpf) {
            writeln!(
                programs,
                "{:<35} {}",
                format!("{}/{}", p.namespace, p.name),
                ebpf_line(&path)
            )?;
        }
    }
    if !programs.is_empty() {
        writeln!(
            out,
            "\nEBPF PROGRAM (sk_lookup)            PINS AND LOOKUPS SO FAR"
        )?;
        out.push_str(&programs);
    }
    writeln!(out, "\nSERVICE                         CLUSTER-IP")?;
    for (name, ip) in &state.services {
        writeln!(out, "{name:<31} {ip}")?;
    }
    out.push_str(&gateways(paths));
    Ok(out)
}

/// The condition `kind` of a status object: `True`, or `False (Reason: message)`.
fn condition(conditions: &serde_json::Value, kind: &str) -> String {
    let Some(c) = conditions
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == kind))
    else {
        return "-".into();
    };
    let status = c["status"].as_str().unwrap_or("?");
    if status == "True" {
        status.into()
    } else {
        format!(
            "{status} ({}: {})",
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        )
    }
}

/// Gateways (ingress and waypoint, both APIs, and Ingresses) and HTTPRoutes with the
/// conditions the control plane computed (`status.json` of its state directory, what it
/// would write to the API server), and `GATEWAY_URL`.
fn gateways(paths: &Paths) -> String {
    use std::fmt::Write as _;
    let file = paths.cp_state().join(controlplane::run::STATUS_FILE);
    let Ok(all) = std::fs::read_to_string(&file)
        .map_err(|e| e.to_string())
        .and_then(|t| {
            serde_json::from_str::<Vec<serde_json::Value>>(&t).map_err(|e| e.to_string())
        })
    else {
        return String::new();
    };
    let name = |o: &serde_json::Value| {
        format!(
            "{}/{}",
            o["metadata"]["namespace"].as_str().unwrap_or("-"),
            o["metadata"]["name"].as_str().unwrap_or("-")
        )
    };
    let mut out = String::new();
    let is_route = |o: &serde_json::Value| o["kind"] == "HTTPRoute" || o["kind"] == "GRPCRoute";
    let gateways: Vec<&serde_json::Value> = all.iter().filter(|o| !is_route(o)).collect();
    if !gateways.is_empty() {
        let _ = writeln!(out, "\nGATEWAY                                  API          ADDRESS         ACCEPTED  PROGRAMMED");
        for g in gateways {
            let api = match (g["kind"].as_str(), g["apiVersion"].as_str()) {
                (Some("Ingress"), _) => "Ingress",
                (_, Some(v)) if v.starts_with("networking.istio.io") => "Istio",
                _ => "Gateway API",
            };
            let status = &g["status"];
            let address = status["addresses"][0]["value"]
                .as_str()
                .or(status["loadBalancer"]["ingress"][0]["ip"].as_str())
                .unwrap_or("-");
            let _ = writeln!(
                out,
                "{:<40} {:<12} {:<15} {:<9} {}",
                name(g),
                api,
                address,
                condition(&status["conditions"], "Accepted"),
                condition(&status["conditions"], "Programmed"),
            );
            for l in status["listeners"].as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  listener {:<20} routes {:<3} resolved refs {}",
                    l["name"].as_str().unwrap_or("-"),
                    l["attachedRoutes"],
                    condition(&l["conditions"], "ResolvedRefs"),
                );
            }
        }
    }
    let routes: Vec<&serde_json::Value> = all.iter().filter(|o| is_route(o)).collect();
    if !routes.is_empty() {
        let _ = writeln!(out, "\nROUTE                          PARENT                         ACCEPTED  RESOLVEDREFS");
        for r in routes {
            for p in r["status"]["parents"].as_array().into_iter().flatten() {
                let parent = &p["parentRef"];
                let _ = writeln!(
                    out,
                    "{:<30} {:<30} {:<9} {}",
                    name(r),
                    format!(
                        "{}{}",
                        parent["name"].as_str().unwrap_or("-"),
                        parent["sectionName"]
                            .as_str()
                            .map(|s| format!("/{s}"))
                            .unwrap_or_default()
                    ),
                    condition(&p["conditions"], "Accepted"),
                    condition(&p["conditions"], "ResolvedRefs"),
                );
            }
        }
    }
    if let Some(url) = MeshState::load(paths)
        .ok()
        .as_ref()
        .and_then(super::lb::gateway_url)
    {
        let _ = writeln!(
            out,
            "\nGATEWAY_URL={url} (istio-system/istio-ingressgateway)"
        );
    }
    out
}

/// Where a pod's eBPF program is pinned and how its lookups ended (docs/ARCHITECTURE.md,
/// "eBPF redirection").
fn ebpf_line(netns: &std::path::Path) -> String {
    let root = ebpf::pin_root();
    let Ok(cookie) = ebpf::cookie_at(netns) else {
        return "namespace unreadable".into();
    };
    let dir = ebpf::pin_dir(&root, cookie);
    match ebpf::counters(&root, cookie) {
        Ok(c) => format!(
            "{} outbound={} inbound={} dns={} passed={} no_listener={}",
            dir.display(),
            c.outbound,
            c.inbound,
            c.dns,
            c.passed,
            c.no_listener
        ),
        Err(e) => format!("{}: {e:#}", dir.display()),
    }
}

/// The node table: each node's address, pod range, processes and ztunnel readiness.
fn nodes(state: &MeshState, alive: &dyn Fn(&ProcRecord) -> String) -> Result<String> {
    use std::fmt::Write as _;
    let mut out = String::new();
    writeln!(out, "NODE      ADDRESS       PODS            PROCESSES")?;
    for n in &state.nodes {
        let procs: Vec<String> = state
            .procs
            .iter()
            .filter(|p| p.role.ends_with(&format!("/{}", n.name)))
            .map(|p| {
                format!(
                    "{} {}",
                    p.role.split('/').next().unwrap_or_default(),
                    alive(p)
                )
            })
            .collect();
        let ready = netns::http_get_at(
            &netns::netns_path(&n.netns),
            "127.0.0.1:15021".parse().unwrap(),
            "/healthz/ready",
        )
        .is_ok_and(|(s, _)| s == 200);
        writeln!(
            out,
            "{:<9} {:<13} {:<15} {} (ztunnel {})",
            n.name,
            n.ip,
            n.pod_cidr(),
            procs.join(", "),
            if ready { "ready" } else { "NOT READY" }
        )?;
    }
    Ok(out)
}
