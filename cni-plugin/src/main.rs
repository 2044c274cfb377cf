//! `keelson-cni`: run by the container runtime as a chained CNI plugin (no arguments), as the
//! DaemonSet's install step (`keelson-cni install|uninstall`, see `install.rs`), or as
//! the node agent (`keelson-cni agent --socket S --zds-socket Z --resources DIR
//! [--host-probe-snat] [--state FILE]`; `--host-probe-snat` installs docs/WIRE.md §5.5's
//! rules in the agent's own network namespace, which must then be the node's; `--state` is
//! where the enrolled pods are recorded for the next start, by default `enrolled-pods.json`
//! beside the socket).

use std::io::Read;
use std::process::ExitCode;
use std::time::Duration;

use cni_plugin::spec::{self, CniError, SocketAgent};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("agent") => return agent(&args[1..]),
        Some(step @ ("install" | "uninstall")) => return install(step, &args[1..]),
        _ => {}
    }
    // A plugin must answer, never panic and never hang: a panic becomes a CNI error.
    let result = std::panic::catch_unwind(|| {
        let mut stdin = String::new();
        let _ = std::io::stdin().read_to_string(&mut stdin);
        let env = |k: &str| std::env::var(k).ok();
        spec::run(
            &env,
            &stdin,
            &SocketAgent {
                timeout: Duration::from_secs(15),
            },
        )
    })
    .unwrap_or_else(|_| Err(CniError::new(spec::INTERNAL, "keelson-cni panicked", "")));
    match result {
        Ok(out) => {
            if !out.is_empty() {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
            eprintln!("keelson-cni: {} ({})", e.msg, e.details);
            ExitCode::FAILURE
        }
    }
}

/// The CNI DaemonSet's install step: `keelson-cni install|uninstall [--cni-bin-dir DIR]
/// [--cni-conf-dir DIR] [--agent-socket PATH]` (defaults: the host paths as mounted by
/// `keelson install`'s DaemonSet).
fn install(step: &str, args: &[String]) -> ExitCode {
    let mut layout = cni_plugin::install::Layout {
        bin_dir: "/host/opt/cni/bin".into(),
        conf_dir: "/host/etc/cni/net.d".into(),
        agent_socket: "/var/run/keelson/cni.sock".into(),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let Some(v) = it.next() else {
            eprintln!("keelson-cni {step}: {a} needs a value");
            return ExitCode::from(2);
        };
        match a.as_str() {
            "--cni-bin-dir" => layout.bin_dir = v.into(),
            "--cni-conf-dir" => layout.conf_dir = v.into(),
            "--agent-socket" => layout.agent_socket = v.into(),
            other => {
                eprintln!("keelson-cni {step}: unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    let done = match step {
        "install" => std::env::current_exe()
            .map_err(|e| format!("finding this binary: {e}"))
            .and_then(|exe| cni_plugin::install::install(&layout, &exe)),
        _ => cni_plugin::install::uninstall(&layout),
    };
    match done {
        Ok(c) => {
            let conf = c.conflist.map(|p| p.display().to_string());
            println!(
                "keelson-cni {step}: {} and {}",
                c.binary.display(),
                conf.as_deref().unwrap_or("no configuration changed")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("keelson-cni {step}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn agent(args: &[String]) -> ExitCode {
    let mut socket = None;
    let mut zds = None;
    let mut resources = None;
    let mut host_netns = None;
    let mut redirect = cni_plugin::redirect::Redirect::default();
    let mut state = None;
    let mut api: Option<cni_plugin::lookup::ApiOptions> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--kubernetes" {
            api.get_or_insert_with(Default::default);
            continue;
        }
        if a == "--host-probe-snat" {
            // The node is the namespace the agent runs in.
            host_netns = Some("/proc/self/ns/net".into());
            continue;
        }
        let v = it.next().cloned();
        match a.as_str() {
            "--socket" => socket = v,
            "--zds-socket" => zds = v,
            "--resources" => resources = v,
            "--state" => state = v,
            "--kubeconfig" => {
                api.get_or_insert_with(Default::default).kubeconfig = v.map(Into::into)
            }
            "--redirect" => match v.as_deref().unwrap_or_default().parse() {
                Ok(r) => redirect = r,
                Err(e) => {
                    eprintln!("keelson-cni agent: {e}");
                    return ExitCode::from(2);
                }
            },
            other => {
                eprintln!("keelson-cni agent: unknown option {other}");
                return ExitCode::from(2);
            }
        }
    }
    let resources = resources.or_else(|| api.as_ref().map(|_| String::new()));
    let (Some(socket), Some(zds), Some(resources)) = (socket, zds, resources) else {
        eprintln!("usage: keelson-cni agent --socket PATH --zds-socket PATH (--resources DIR | --kubernetes [--kubeconfig FILE]) [--host-probe-snat] [--redirect iptables|nftables|ebpf] [--state FILE]");
        return ExitCode::from(2);
    };
    let socket = std::path::PathBuf::from(socket);
    let state = state
        .map(Into::into)
        .unwrap_or_else(|| cni_plugin::agent::AgentOptions::default_state(&socket));
    let opts = cni_plugin::agent::AgentOptions {
        state: Some(state),
        socket,
        zds_socket: zds.into(),
        resources: resources.into(),
        api,
        host_netns,
        redirect,
    };
    match cni_plugin::agent::start(&opts) {
        Ok(_agent) => loop {
            std::thread::park();
        },
        Err(e) => {
            eprintln!("keelson-cni agent: {e:#}");
            ExitCode::FAILURE
        }
    }
}
