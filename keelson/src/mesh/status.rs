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
    for f in files {
        if let Err(e) = resources::Resources::default().add_file(&f) {
            writeln!(out, "  rejected: {e}")?;
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
    Ok(out)
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
