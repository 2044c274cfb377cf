//! The `keelson` command.

use std::process::ExitCode;

use keelson::bench::{self, BenchOptions};
use keelson::mesh::{self, Paths, UpOptions};

const USAGE: &str = "usage:
  keelson up [DIR|FILE] [--nodes N] [--redirect iptables|nftables|ebpf] [--no-ingress]
             [--observability]
      build a local mesh on this machine (network namespaces as nodes and pods, a control
      plane, a CNI node agent and a ztunnel per node) running the Kubernetes YAML given
      (default: the bundled bookinfo), with the ingress gateway istio-system/
      istio-ingressgateway reachable from this machine at $GATEWAY_URL (printed);
      returns once every pod answers; --observability also runs Prometheus scraping the
      mesh (istio-system/prometheus, its address printed; dashboards in deploy/grafana/)
  keelson apply -f FILE       add or update resources and workloads in the local mesh
  keelson delete -f FILE      remove them
  keelson exec [-n NS] POD -- CMD...
      run CMD in a pod's network namespace (POD: a pod, or a Deployment's first pod)
  keelson label [-n NS] namespace|pod NAME KEY=VALUE|KEY-...
      change a namespace's or a pod's labels (istio.io/dataplane-mode=ambient enrols its
      running pods, removing it hands them back; no restart)
  keelson status              nodes, processes, pods, services, gateways and routes with
                              their conditions, rejected resources
  keelson restart ROLE        restart one process (ROLE as in supervisor.json, e.g.
                              ztunnel/node-1: handed off to a new ztunnel with no downtime)
  keelson down                remove everything the local mesh made
  keelson ztunnel-config workloads|services|policies|certificates|connections|all
                         [--node N] [-o json]
      what the ztunnels hold (like istioctl ztunnel-config), from their admin port;
      connections: open/opened/failed and bytes per source and destination
  keelson ui [--listen ADDR]   a live service graph of the local mesh in the browser
      (default 127.0.0.1:20001): request rate, errors, p99, mTLS and denials per edge;
      click a node for its policies and routes
  keelson waypoint-config routes|clusters [POD] [-n NS] [-o json]
      a waypoint's (or gateway's) routes in match order, or its clusters: endpoints with
      outlier state, DestinationRule policies, circuit breaker counts
  keelson app NAME [--version V] [--port P]
      run a bundled demo app (bookinfo: productpage, details, reviews, ratings; weather:
      frontend, advertisement, forecast, recommendation; httpbin, echo; raw: a
      hand-written HTTP/1.1 server for framing tests); DELAY_MS and FAIL_PERCENT in its
      environment delay or fail its pages
  keelson app fortio load [-c N] [-qps Q] [-n M] [-H name:value] URL
      a fortio-style load client: the status code histogram and latency percentiles
  keelson bench l4 [--json] [--runs N] [--seconds N] [--idle-connections N] [--scaling]
                   [--redirect iptables,nftables,ebpf] [--anchor ZTUNNEL]
                   [--phases throughput,rr,newconn,rate,idle] [--workloads 10,1000,10000]
      (--anchor: another ztunnel taking upstream's command line, e.g. the upstream ztunnel,
       measured in the same run against Keelson's control plane)
      (--phases: run only these; the figures of the others read 0. For profiling one phase)
      (--workloads: RSS and the time to apply a push with that many workloads known, per
       setup; with --anchor, the anchor fed the same snapshot)
      (--scaling: throughput and connections/s with 1, 2, 4, 8 streams or clients, and
       request/response at 1,000/s, 5,000/s and the most 4 connections make: latency and CPU
       per request; direct, the first --redirect, and --anchor when given)
  keelson bench l7 [--json] [--runs N] [--seconds N] [--rate R] [--setups direct,ztunnel,waypoint]
                   [--node-links threaded|inline] [--redirect iptables,nftables,ebpf]
      two pods in network namespaces, measured direct and through two ztunnels;
      each figure is the median of N runs (default 3)
  keelson controlplane (--resources DIR | --kubernetes [--kubeconfig FILE]
                       [--waypoint-image IMAGE] [--root-cert-config-map NAME])
                       --state-dir DIR [--listen ADDR] [--san NAME]...
                       [--trust-domain TD] [--cluster-id ID] [--monitoring ADDR]
                       [--poll-interval MS]
      serve the Kubernetes YAML in DIR (checked every MS, default 200) over delta ADS and the CA, TLS on
      ADDR (default 0.0.0.0:15012), /metrics on the listen IP:15014; writes root-cert.pem
      and token to the state dir
  keelson controlplane token --state-dir DIR --service-account NS/SA [--node NODE]
      print a bearer token for that service account (bound to NODE if given)
  keelson install [--values FILE] [--set key.path=value]... [--dry-run | --apply [--kubeconfig F]]
      print every object a Kubernetes cluster needs (control plane, ztunnel and CNI
      DaemonSets, RBAC), for `kubectl apply -f -`; `--set mode=istiod` for Keelson's data
      plane under an existing istiod (docs/KUBERNETES.md)
  keelson uninstall [--values FILE] [--set key.path=value]... [--apply [--kubeconfig F]]
      list what the install created, in the order to delete it (--apply: delete it)
  keelson version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["bench", "l4", rest @ ..] => bench_l4(rest),
        ["bench", "l7", rest @ ..] => bench_l7(rest),
        ["up", rest @ ..] => up(rest),
        ["down"] => mesh::down(&Paths::default()),
        ["supervise", instance] => supervise(instance),
        ["restart", role] => mesh::restart(&Paths::default(), role),
        ["status"] => mesh::status(&Paths::default()).map(|s| print!("{s}")),
        ["apply", "-f", file] => mesh::apply(&Paths::default(), std::path::Path::new(file)),
        ["delete", "-f", file] => mesh::delete(&Paths::default(), std::path::Path::new(file)),
        ["label", rest @ ..] => label(rest),
        ["ztunnel-config", view, rest @ ..] => ztunnel_config(view, rest),
        ["ui", rest @ ..] => ui(rest),
        ["waypoint-config", view, rest @ ..] => waypoint_config(view, rest),
        ["exec", rest @ ..] => match exec(rest) {
            Ok(code) => return ExitCode::from(code.clamp(0, 255) as u8),
            Err(e) => Err(e),
        },
        ["app", "fortio", "load", rest @ ..] => keelson::apps::fortio::main(rest),
        ["app", name, rest @ ..] => app(name, rest),
        ["install", rest @ ..] => install(rest, false),
        ["uninstall", rest @ ..] => install(rest, true),
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

/// The local mesh's supervisor (started by `keelson up`; see `mesh::supervise`).
fn supervise(instance: &str) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(std::io::stderr)
        // A failed write (a full disk) loses the line; reporting it to stderr would panic.
        .log_internal_errors(false)
        .init();
    mesh::supervise::run(&Paths::default(), instance)
}

fn bench_l4(args: &[&str]) -> anyhow::Result<()> {
    let mut opts = BenchOptions::default();
    let mut json = false;
    let mut scaling = false;
    let mut workloads: Option<Vec<usize>> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--json" => json = true,
            "--scaling" => scaling = true,
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
            "--anchor" => {
                opts.anchor = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--anchor needs a ztunnel binary"))?
                        .into(),
                )
            }
            "--redirect" => {
                opts.redirects = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--redirect needs a value"))?
                    .split(',')
                    .map(str::parse)
                    .collect::<anyhow::Result<_>>()?
            }
            "--workloads" => {
                workloads = Some(
                    it.next()
                        .ok_or_else(|| anyhow::anyhow!("--workloads needs counts, e.g. 10,1000"))?
                        .split(',')
                        .map(|n| match n.parse::<usize>() {
                            Ok(n) if n > 0 => Ok(n),
                            _ => Err(anyhow::anyhow!("--workloads: {n:?} is not a count")),
                        })
                        .collect::<anyhow::Result<_>>()?,
                )
            }
            "--phases" => {
                opts.phases = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--phases needs a value"))?
                    .split(',')
                    .map(str::parse)
                    .collect::<anyhow::Result<_>>()?
            }
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    if let Some(counts) = workloads {
        let rows = bench::run_workloads(&opts, &counts)?;
        if json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            print!("{}", bench::workloads_table(&rows));
        }
        return Ok(());
    }
    if scaling {
        let rows = bench::run_scaling(&opts)?;
        if json {
            println!("{}", serde_json::to_string(&rows)?);
        } else {
            print!("{}", bench::scaling_table(&rows));
        }
        return Ok(());
    }
    let report = bench::run_l4(&opts)?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", bench::table(&report));
    }
    Ok(())
}

fn bench_l7(args: &[&str]) -> anyhow::Result<()> {
    let mut opts = keelson::bench::l7::L7Options::default();
    let mut redirects = vec![opts.redirect];
    let mut json = false;
    let mut it = args.iter();
    let value = |name: &str, it: &mut std::slice::Iter<'_, &str>| -> anyhow::Result<f64> {
        Ok(it
            .next()
            .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?
            .parse()?)
    };
    while let Some(a) = it.next() {
        match *a {
            "--json" => json = true,
            "--seconds" => opts.seconds = value("--seconds", &mut it)?,
            "--runs" => opts.runs = value("--runs", &mut it)? as usize,
            "--rate" => opts.rate = value("--rate", &mut it)?,
            "--redirect" => {
                redirects = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--redirect needs a value"))?
                    .split(',')
                    .map(str::parse)
                    .collect::<anyhow::Result<_>>()?
            }
            "--node-links" => {
                opts.threaded_links = match it.next().copied() {
                    Some("threaded") => true,
                    Some("inline") => false,
                    _ => anyhow::bail!("--node-links: threaded or inline"),
                }
            }
            "--setups" => {
                let list = it
                    .next()
                    .ok_or_else(|| anyhow::anyhow!("--setups needs a value"))?;
                opts.setups = list.split(',').map(str::to_string).collect();
                if let Some(bad) = opts
                    .setups
                    .iter()
                    .find(|s| !keelson::bench::l7::SETUPS.contains(&s.as_str()))
                {
                    anyhow::bail!("--setups: unknown setup {bad} (direct, ztunnel, waypoint)");
                }
            }
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    // One whole L7 run (a mesh of its own) per redirection flavour, one after the other.
    let mut reports = Vec::new();
    for r in &redirects {
        opts.redirect = *r;
        reports.push((r.name(), keelson::bench::l7::run(&opts)?));
    }
    if json && reports.len() == 1 {
        println!("{}", serde_json::to_string(&reports[0].1)?);
    } else if json {
        println!("{}", serde_json::to_string(&reports)?);
    } else {
        for (name, report) in &reports {
            if reports.len() > 1 {
                println!("== {name} redirection");
            }
            print!("{}", keelson::bench::l7::table(report));
        }
    }
    Ok(())
}

fn up(args: &[&str]) -> anyhow::Result<()> {
    let mut opts = UpOptions::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--nodes" => opts.nodes = value(&mut it, a)?.parse()?,
            "--redirect" => opts.redirect = value(&mut it, a)?.parse()?,
            "--no-ingress" => opts.ingress = false,
            "--observability" => opts.observability = true,
            other if other.starts_with('-') => anyhow::bail!("unknown option {other}\n{USAGE}"),
            path => opts.source = Some(path.into()),
        }
    }
    let paths = Paths::default();
    let state = mesh::up(&paths, &opts)?;
    let me = std::env::current_exe()?;
    let me = me.display();
    let client = state
        .find_pod("curl", None)
        .or(state.pods.first())
        .map(|p| p.name.clone())
        .unwrap_or_else(|| "POD".into());
    let target = if state.services.contains_key("default/productpage") {
        "http://productpage:9080/productpage"
    } else {
        "http://SERVICE:PORT/"
    };
    let prometheus = match mesh::prometheus_url(&state) {
        Some(url) => format!(
            "Prometheus, scraping the control plane, the ztunnels, waypoints and gateways
(dashboards to import into Grafana: deploy/grafana/*.json):
  {url}
"
        ),
        None => String::new(),
    };
    let gateway = match mesh::gateway_url(&state) {
        Some(url) => format!(
            "The ingress gateway, from this machine (expose the app with a Gateway first,
as examples/bookinfo/bookinfo-gateway.yaml does):
  export GATEWAY_URL={url}
  curl -s http://$GATEWAY_URL/productpage
"
        ),
        None => String::new(),
    };
    println!(
        "\nlocal mesh ready: {} pods on {} nodes, mTLS (HBONE) between them.
{gateway}{prometheus}Look at it:
  {me} exec {client} -- curl -s {target}
  {me} status
  tail -f {}/logs/node-1-ztunnel.log     (access logs: src and dst identities)
Remove it:
  {me} down",
        state.pods.len(),
        state.nodes.len(),
        paths.home.display(),
    );
    Ok(())
}

fn label(args: &[&str]) -> anyhow::Result<()> {
    let (namespace, rest) = match args {
        ["-n" | "--namespace", ns, rest @ ..] => (Some(*ns), rest),
        rest => (None, rest),
    };
    match rest {
        [kind, name, changes @ ..] => {
            mesh::label(&Paths::default(), kind, namespace, name, changes)
        }
        _ => anyhow::bail!("usage: keelson label [-n NS] namespace|pod NAME KEY=VALUE|KEY-..."),
    }
}

fn exec(args: &[&str]) -> anyhow::Result<i32> {
    let mut namespace = None;
    let mut pod = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-n" | "--namespace" => namespace = Some(value(&mut it, a)?),
            "--" => break,
            other if pod.is_none() => pod = Some(other),
            other => anyhow::bail!("unexpected {other:?} (keelson exec POD -- CMD...)"),
        }
    }
    let pod = pod.ok_or_else(|| anyhow::anyhow!("keelson exec POD -- CMD..."))?;
    let cmd: Vec<String> = it.map(|s| s.to_string()).collect();
    mesh::exec(&Paths::default(), pod, namespace, &cmd)
}

fn app(name: &str, args: &[&str]) -> anyhow::Result<()> {
    let mut opts = keelson::apps::AppOptions {
        name: name.to_string(),
        version: "v1".into(),
        port: 9080,
        upstream_port: 9080,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--version" => opts.version = value(&mut it, a)?.to_string(),
            "--port" => opts.port = value(&mut it, a)?.parse()?,
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    keelson::apps::run(opts)
}

fn ztunnel_config(view: &str, args: &[&str]) -> anyhow::Result<()> {
    let (mut node, mut json) = (None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--node" => node = Some(value(&mut it, a)?),
            "-o" | "--output" => json = output_json(value(&mut it, a)?)?,
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let out = mesh::inspect::ztunnel_config(&Paths::default(), view, node, json)?;
    print!("{out}");
    Ok(())
}

fn waypoint_config(view: &str, args: &[&str]) -> anyhow::Result<()> {
    let (mut name, mut namespace, mut json) = (None, None, false);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "-n" | "--namespace" => namespace = Some(value(&mut it, a)?),
            "-o" | "--output" => json = output_json(value(&mut it, a)?)?,
            other if !other.starts_with('-') && name.is_none() => name = Some(other),
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let out = mesh::inspect::waypoint_config(&Paths::default(), view, name, namespace, json)?;
    print!("{out}");
    Ok(())
}

fn ui(args: &[&str]) -> anyhow::Result<()> {
    let mut listen: std::net::SocketAddr = mesh::ui::DEFAULT_LISTEN.parse()?;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--listen" => listen = value(&mut it, a)?.parse()?,
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    mesh::ui::serve(Paths::default(), listen)
}

fn output_json(v: &str) -> anyhow::Result<bool> {
    match v {
        "json" => Ok(true),
        "table" | "short" => Ok(false),
        other => anyhow::bail!("-o {other}: json or table"),
    }
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
    let mut mesh = resources::MeshSettings::default();
    let mut monitoring: Option<std::net::SocketAddr> = None;
    let mut poll = controlplane::run::POLL;
    let mut kubernetes = None;
    let mut waypoint_image: Option<String> = None;
    let mut root_map = "keelson-ca-root-cert".to_string();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match *a {
            "--kubernetes" => {
                kubernetes.get_or_insert_with(controlplane::kube_source::KubeOptions::default);
            }
            "--kubeconfig" => {
                kubernetes
                    .get_or_insert_with(controlplane::kube_source::KubeOptions::default)
                    .kubeconfig = Some(value(&mut it, a)?.into())
            }
            "--waypoint-image" => waypoint_image = Some(value(&mut it, a)?.to_string()),
            "--root-cert-config-map" => root_map = value(&mut it, a)?.to_string(),
            "--resources" => resources = Some(value(&mut it, a)?.into()),
            "--state-dir" => state_dir = Some(value(&mut it, a)?.into()),
            "--listen" => listen = value(&mut it, a)?.parse()?,
            "--san" => sans.push(value(&mut it, a)?.to_string()),
            "--trust-domain" => mesh.trust_domain = value(&mut it, a)?.to_string(),
            "--cluster-id" => mesh.cluster_id = value(&mut it, a)?.to_string(),
            "--monitoring" => monitoring = Some(value(&mut it, a)?.parse()?),
            "--poll-interval" => {
                let ms: u64 = value(&mut it, a)?.parse()?;
                anyhow::ensure!(ms > 0, "--poll-interval: milliseconds, more than 0");
                poll = std::time::Duration::from_millis(ms);
            }
            other => anyhow::bail!("unknown option {other}\n{USAGE}"),
        }
    }
    // The control plane's own namespace (the Downward API's).
    let ns = std::env::var("POD_NAMESPACE").unwrap_or_else(|_| "istio-system".into());
    if let Some(k) = kubernetes.as_mut() {
        k.namespace = Some(ns.clone());
    }
    if let (Some(k), Some(image)) = (kubernetes.as_mut(), waypoint_image) {
        k.waypoints = Some(controlplane::waypoints::WaypointSettings {
            image,
            control_plane: format!("keelson.{ns}.svc:{}", listen.port()),
            root_cert_config_map: root_map,
            namespace: ns,
            roots_pem: String::new(),
        });
    }
    let resources = match (resources, &kubernetes) {
        (Some(r), _) => r,
        (None, Some(_)) => std::path::PathBuf::new(),
        (None, None) => anyhow::bail!("--resources DIR or --kubernetes is required"),
    };
    let opts = Options {
        resources,
        kubernetes,
        state_dir: state_dir.ok_or_else(|| anyhow::anyhow!("--state-dir is required"))?,
        monitoring: Some(monitoring.unwrap_or_else(|| {
            std::net::SocketAddr::new(listen.ip(), controlplane::run::DEFAULT_MONITORING_PORT)
        })),
        listen,
        sans,
        mesh,
        poll,
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
        // A failed write (a full disk) loses the line; reporting it to stderr would panic.
        .log_internal_errors(false)
        // Colours only on a terminal: logs written to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

/// `keelson install` prints the manifest; `keelson uninstall` lists what it removes.
fn install(args: &[&str], uninstall: bool) -> anyhow::Result<()> {
    let parsed = keelson::install::InstallArgs::parse(args).map_err(anyhow::Error::msg)?;
    let values = parsed.values().map_err(anyhow::Error::msg)?;
    if parsed.apply {
        let kube = controlplane::kube_source::KubeOptions {
            kubeconfig: parsed.kubeconfig.map(Into::into),
            ..Default::default()
        };
        let mut objects = keelson::install::objects(&values);
        return tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(async {
                let client = controlplane::kube_source::client(&kube).await?;
                if uninstall {
                    objects.reverse();
                    keelson::install::apply::delete(&client, &objects).await
                } else {
                    keelson::install::apply::apply(&client, &objects).await
                }
            });
    }
    if uninstall {
        println!("# keelson uninstall: delete these, in this order (the CNI DaemonSet's pods");
        println!("# unchain the plugin from each node's CNI configuration as they stop)");
        for o in keelson::install::removal(&values) {
            println!("{o}");
        }
    } else {
        print!(
            "{}",
            keelson::install::manifest(&values).map_err(anyhow::Error::msg)?
        );
    }
    Ok(())
}
