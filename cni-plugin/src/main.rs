//! `keelson-cni`: run by the container runtime as a chained CNI plugin (no arguments), or as
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
    if args.first().map(String::as_str) == Some("agent") {
        return agent(&args[1..]);
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

fn agent(args: &[String]) -> ExitCode {
    let mut socket = None;
    let mut zds = None;
    let mut resources = None;
    let mut host_netns = None;
    let mut redirect = cni_plugin::redirect::Redirect::default();
    let mut state = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
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
    let (Some(socket), Some(zds), Some(resources)) = (socket, zds, resources) else {
        eprintln!("usage: keelson-cni agent --socket PATH --zds-socket PATH --resources DIR [--host-probe-snat] [--redirect iptables|nftables] [--state FILE]");
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
