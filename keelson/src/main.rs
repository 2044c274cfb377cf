//! The `keelson` command.

use std::process::ExitCode;

use keelson::bench::{self, BenchOptions};

const USAGE: &str = "usage:
  keelson bench l4 [--json] [--runs N] [--seconds N] [--idle-connections N]
      two pods in network namespaces, measured direct and through two ztunnels;
      each figure is the median of N runs (default 3)
  keelson controlplane --resources DIR --state-dir DIR [--listen ADDR] [--san NAME]...
                       [--trust-domain TD] [--cluster-id ID] [--monitoring ADDR]
      serve the Kubernetes YAML in DIR (watched) over delta ADS and the CA, TLS on
      ADDR (default 0.0.0.0:15012), /metrics on the listen IP:15014; writes root-cert.pem
      and token to the state dir
  keelson controlplane token --state-dir DIR --service-account NS/SA [--node NODE]
      print a bearer token for that service account (bound to NODE if given)
  keelson version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["bench", "l4", rest @ ..] => bench_l4(rest),
        ["controlplane", "token", rest @ ..] => controlplane_token(rest),
        ["controlplane", rest @ ..] => controlplane(rest),
        ["version"] | ["--version"] => {
            println!("keelson {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        ["help"] | ["--help"] | ["-h"] => {
            println!("{USAGE}");
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("keelson: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn bench_l4(args: &[&str]) -> anyhow::Result<()> {
    let mut opts = BenchOptions::default();
    let mut json = false;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--json" => json = true,
            "--seconds" => {
                opts.seconds = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--seconds needs a value"))?
                    .parse()?
            }
            "--runs" => {
                opts.runs = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--runs needs a value"))?
                    .parse()?
            }
            "--idle-connections" => {
                opts.idle_connections = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--idle-connections needs a value"))?
                    .parse()?
            }
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let report = bench::run_l4(&opts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", bench::table(&report));
    }
    Ok(())
}

fn value<'a>(it: &mut std::slice::Iter<'_, &'a str>, flag: &str) -> anyhow::Result<&'a str> {
    it.next()
        .copied()
        .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
}

fn controlplane(args: &[&str]) -> anyhow::Result<()> {
    use controlplane::run::{Options, DEFAULT_PORT};
    let mut resources = None;
    let mut state_dir = None;
    let mut listen: std::net::SocketAddr = ([0, 0, 0, 0], DEFAULT_PORT).into();
    let mut sans = Vec::new();
    let mut mesh = controlplane::wds::MeshSettings::default();
    let mut monitoring: Option<std::net::SocketAddr> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--resources" => resources = Some(value(&mut it, a)?.into()),
            "--state-dir" => state_dir = Some(value(&mut it, a)?.into()),
            "--listen" => listen = value(&mut it, a)?.parse()?,
            "--san" => sans.push(value(&mut it, a)?.to_string()),
            "--trust-domain" => mesh.trust_domain = value(&mut it, a)?.to_string(),
            "--cluster-id" => mesh.cluster_id = value(&mut it, a)?.to_string(),
            "--monitoring" => monitoring = Some(value(&mut it, a)?.parse()?),
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let opts = Options {
        resources: resources.ok_or_else(|| anyhow::anyhow!("--resources is required"))?,
        state_dir: state_dir.ok_or_else(|| anyhow::anyhow!("--state-dir is required"))?,
        monitoring: Some(monitoring.unwrap_or_else(|| {
            std::net::SocketAddr::new(listen.ip(), controlplane::run::DEFAULT_MONITORING_PORT)
        })),
        listen,
        sans,
        mesh,
    };
    init_logs();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(controlplane::run::run(opts))
}

fn controlplane_token(args: &[&str]) -> anyhow::Result<()> {
    let mut state_dir: Option<std::path::PathBuf> = None;
    let mut account = None;
    let mut node = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--state-dir" => state_dir = Some(value(&mut it, a)?.into()),
            "--service-account" => account = Some(value(&mut it, a)?),
            "--node" => node = Some(value(&mut it, a)?),
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let dir = state_dir.ok_or_else(|| anyhow::anyhow!("--state-dir is required"))?;
    let (ns, sa) = account
        .and_then(|a| a.split_once('/'))
        .ok_or_else(|| anyhow::anyhow!("--service-account NS/SA is required"))?;
    let tokens = controlplane::token::TokenAuthority::load_or_create(&dir)?;
    println!("{}", tokens.mint(ns, sa, node));
    Ok(())
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
