//! `keelson bench l4`: the same two-pod topology measured in one run with no proxy (pods
//! outside the mesh) and through two ztunnels over HBONE, once per redirection flavour asked
//! for (`--redirect iptables,nftables,ebpf`). Every transfer is verified (byte counts echoed
//! back by the server). Results as a table or one JSON object.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use serde::Serialize;

use super::stats::{cpu_seconds, median_of, median_of_some, percentile, rss_kib};
use cni_plugin::redirect::Redirect;
use testbed::{Options, PodSpec, Testbed};

const SINK_PORT: u16 = 5001;
const RR_PORT: u16 = 5002;
const CONN_PORT: u16 = 5003;
const MSG: usize = 1024;

#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Seconds per throughput and rate phase.
    pub seconds: f64,
    pub idle_connections: usize,
    /// Runs per setup; each figure is the median over the runs.
    pub runs: usize,
    /// How the meshed pods are redirected; one mesh setup per entry, in this order.
    pub redirects: Vec<Redirect>,
    /// Another ztunnel binary taking upstream's command line and environment (the upstream
    /// ztunnel), measured in the same topology as a third setup. With it, both meshes take
    /// their configuration and certificates from Keelson's control plane.
    pub anchor: Option<std::path::PathBuf>,
    /// The phases to run (all by default); a figure of a phase left out reads 0. For
    /// profiling one phase (`perf record -p` on the ztunnels while only it runs).
    pub phases: Vec<Phase>,
}

/// The phases of one measurement, in the order they run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Single- and 8-stream throughput.
    Throughput,
    /// 1 KiB request/response at 1,000/s.
    Rr,
    /// A request on a new connection, at 200/s.
    Newconn,
    /// New connections per second, as fast as they go.
    Rate,
    /// RSS per idle connection.
    Idle,
}

impl Phase {
    pub const ALL: [Phase; 5] = [
        Phase::Throughput,
        Phase::Rr,
        Phase::Newconn,
        Phase::Rate,
        Phase::Idle,
    ];
}

impl std::str::FromStr for Phase {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s {
            "throughput" => Phase::Throughput,
            "rr" => Phase::Rr,
            "newconn" => Phase::Newconn,
            "rate" => Phase::Rate,
            "idle" => Phase::Idle,
            _ => anyhow::bail!("unknown phase {s:?}: throughput, rr, newconn, rate or idle"),
        })
    }
}

impl Default for BenchOptions {
    fn default() -> Self {
        BenchOptions {
            seconds: 4.0,
            idle_connections: 1000,
            runs: 3,
            redirects: vec![Redirect::Iptables],
            anchor: None,
            phases: Phase::ALL.to_vec(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Figures {
    pub throughput_1_gbps: f64,
    pub throughput_8_gbps: f64,
    pub latency_p50_us: f64,
    pub latency_p99_us: f64,
    pub newconn_p50_us: f64,
    pub connections_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vcpu_per_1k_rps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpu_s_per_gb: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_kib_per_idle_conn: Option<f64>,
    /// Of it, the heap the ztunnels' program holds per idle connection (their allocator's
    /// `allocated`, from the admin's `/debug/memory`), when they report it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_kib_per_idle_conn: Option<f64>,
    /// CPU of every process on the path per connection made (this process, which runs the
    /// clients and the servers, plus the ztunnels; kernel time in their system calls, where
    /// the packet path and any netfilter rules run, included), over the connection-rate
    /// phase, in µs.
    pub path_cpu_us_per_conn: f64,
    /// The same per 1 KiB request/response (8 packets through the path), over the fixed-rate
    /// phase, in µs.
    pub path_cpu_us_per_request: f64,
    /// The same per GB of the single-stream transfer (bulk packets), in seconds.
    pub path_cpu_s_per_gb: f64,
    /// Both ztunnels' RSS together once warm (one connection made and closed), before load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_idle_kib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub direct: Figures,
    /// The first redirection asked for.
    pub mesh: Figures,
    /// Every redirection asked for, by name (`iptables`, `nftables`, `ebpf`).
    pub by_redirect: Vec<(String, Figures)>,
    /// The anchor ztunnel (`--anchor`), redirected like the first entry of `by_redirect`, or by
    /// iptables when that is eBPF (another ztunnel does not hand its listeners to Keelson's
    /// program).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub anchor: Option<Figures>,
}

/// Runs direct and each mesh setup alternately `opts.runs` times (so drift hits all alike)
/// and reports the median of each figure.
pub fn run_l4(opts: &BenchOptions) -> Result<Report> {
    netns::raise_fd_limit();
    ensure!(!opts.redirects.is_empty(), "no redirection to measure");
    let mut direct = Vec::new();
    let mut mesh: Vec<Vec<Figures>> = vec![Vec::new(); opts.redirects.len()];
    let mut anchor = Vec::new();
    // The anchor needs the control plane; Keelson's meshes then use it too, for a like
    // comparison (the data path is the same either way).
    let source = if opts.anchor.is_some() {
        testbed::Source::ControlPlane
    } else {
        testbed::Source::LocalFiles
    };
    for run in 1..=opts.runs.max(1) {
        eprintln!("bench run {run}: direct (no proxy)");
        let tb = Testbed::start(Options {
            pods: vec![PodSpec::plain("client"), PodSpec::plain("server")],
            ..Options::default()
        })?;
        direct.push(measure(&tb, opts, false)?);
        drop(tb);
        for (i, redirect) in opts.redirects.iter().enumerate() {
            eprintln!(
                "bench run {run}: mesh, {} redirection (client → ztunnel → HBONE → ztunnel → server)",
                redirect.name()
            );
            let tb = Testbed::start(Options {
                env: vec![("RUST_LOG".into(), "warn".into())],
                redirect: *redirect,
                source,
                ..Options::default()
            })?;
            mesh[i].push(measure(&tb, opts, true)?);
        }
        if let Some(bin) = &opts.anchor {
            eprintln!("bench run {run}: anchor {}", bin.display());
            let tb = Testbed::start(Options {
                env: vec![("RUST_LOG".into(), "warn".into())],
                redirect: anchor_redirect(opts),
                source,
                ztunnel_bin: Some(bin.clone()),
                ..Options::default()
            })
            .with_context(|| format!("starting the anchor {}", bin.display()))?;
            anchor.push(measure(&tb, opts, true)?);
        }
    }
    let by_redirect: Vec<(String, Figures)> = opts
        .redirects
        .iter()
        .zip(&mesh)
        .map(|(r, runs)| (r.name().to_string(), median_figures(runs)))
        .collect();
    Ok(Report {
        direct: median_figures(&direct),
        mesh: by_redirect[0].1.clone(),
        by_redirect,
        anchor: (!anchor.is_empty()).then(|| median_figures(&anchor)),
    })
}

/// How the anchor's pods are redirected: as Keelson's first setup, except that eBPF needs
/// Keelson's ztunnel, so then iptables (the upstream default).
fn anchor_redirect(opts: &BenchOptions) -> Redirect {
    match opts.redirects[0] {
        Redirect::Ebpf => Redirect::Iptables,
        r => r,
    }
}

/// `keelson bench l4 --scaling`: how each setup's figures move with load. Parallel streams
/// and connecting clients at 1, 2, 4 and 8; request/response at 1,000/s, 5,000/s and as fast
/// as 4 connections go (closed loop).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Scaling {
    /// (streams, Gbit/s)
    pub throughput_gbps: Vec<(usize, f64)>,
    /// (clients, connections/s)
    pub connections_per_s: Vec<(usize, f64)>,
    pub rates: Vec<RateFigures>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct RateFigures {
    /// The rate asked for; `None` for as fast as it goes.
    pub target: Option<f64>,
    pub achieved_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU of one ztunnel per request (mean of the two), in µs; `None` without a proxy.
    pub ztunnel_cpu_us_per_request: Option<f64>,
    /// CPU of every process on the path per request, in µs.
    pub path_cpu_us_per_request: f64,
}

pub const SCALING_PARALLEL: [usize; 4] = [1, 2, 4, 8];
pub const SCALING_RATES: [Option<f64>; 3] = [Some(1000.0), Some(5000.0), None];

/// Direct, the first redirection, and the anchor when given, alternating `opts.runs` times;
/// each figure the median over the runs. Returns (setup name, figures).
pub fn run_scaling(opts: &BenchOptions) -> Result<Vec<(String, Scaling)>> {
    netns::raise_fd_limit();
    let source = if opts.anchor.is_some() {
        testbed::Source::ControlPlane
    } else {
        testbed::Source::LocalFiles
    };
    let mut setups: Vec<(String, Options, bool)> = vec![(
        "direct".into(),
        Options {
            pods: vec![PodSpec::plain("client"), PodSpec::plain("server")],
            ..Options::default()
        },
        false,
    )];
    setups.push((
        format!("keelson ({})", opts.redirects[0].name()),
        Options {
            env: vec![("RUST_LOG".into(), "warn".into())],
            redirect: opts.redirects[0],
            source,
            ..Options::default()
        },
        true,
    ));
    if let Some(bin) = &opts.anchor {
        setups.push((
            format!("anchor ({})", anchor_redirect(opts).name()),
            Options {
                env: vec![("RUST_LOG".into(), "warn".into())],
                redirect: anchor_redirect(opts),
                source,
                ztunnel_bin: Some(bin.clone()),
                ..Options::default()
            },
            true,
        ));
    }
    let mut runs: Vec<Vec<Scaling>> = vec![Vec::new(); setups.len()];
    for run in 1..=opts.runs.max(1) {
        for (i, (name, o, mesh)) in setups.iter().enumerate() {
            eprintln!("scaling run {run}: {name}");
            let tb = Testbed::start(o.clone())?;
            runs[i].push(measure_scaling(&tb, opts, *mesh)?);
        }
    }
    Ok(setups
        .into_iter()
        .zip(runs)
        .map(|((name, _, _), r)| (name, median_scaling(&r)))
        .collect())
}

fn measure_scaling(tb: &Testbed, opts: &BenchOptions, mesh: bool) -> Result<Scaling> {
    start_servers(tb)?;
    let connect = connector(tb);
    let cpu = Cpu(if mesh {
        vec![tb.ztunnel_pid("client"), tb.ztunnel_pid("server")]
    } else {
        vec![]
    });
    if mesh {
        let warm = connect(RR_PORT)?;
        exchange(std::slice::from_ref(&warm))?;
    }
    let path = || -> Result<f64> { Ok(cpu_seconds(std::process::id())? + cpu.total()?) };
    let mut out = Scaling::default();
    for n in SCALING_PARALLEL {
        out.throughput_gbps
            .push((n, throughput(&connect, n, opts.seconds)?.0));
    }
    for n in SCALING_PARALLEL {
        out.connections_per_s
            .push((n, connection_rate(&connect, n, opts.seconds.min(3.0))?));
    }
    for target in SCALING_RATES {
        let (c0, p0) = (cpu.total()?, path()?);
        let started = Instant::now();
        let (lat, rps) = fixed_rate(&connect, 4, target, opts.seconds)?;
        let secs = started.elapsed().as_secs_f64();
        let (c1, p1) = (cpu.total()?, path()?);
        let requests = (rps * secs).max(1.0);
        out.rates.push(RateFigures {
            target,
            achieved_rps: rps,
            p50_us: percentile(&lat, 50.0),
            p99_us: percentile(&lat, 99.0),
            ztunnel_cpu_us_per_request: mesh.then(|| cpu.per_proxy(c1 - c0) * 1e6 / requests),
            path_cpu_us_per_request: (p1 - p0) * 1e6 / requests,
        });
    }
    Ok(out)
}

fn median_scaling(runs: &[Scaling]) -> Scaling {
    let Some(first) = runs.first() else {
        return Scaling::default();
    };
    let pairs = |get: fn(&Scaling) -> &Vec<(usize, f64)>| -> Vec<(usize, f64)> {
        get(first)
            .iter()
            .enumerate()
            .map(|(i, (n, _))| (*n, median_of(runs, |r| get(r)[i].1)))
            .collect()
    };
    Scaling {
        throughput_gbps: pairs(|s| &s.throughput_gbps),
        connections_per_s: pairs(|s| &s.connections_per_s),
        rates: first
            .rates
            .iter()
            .enumerate()
            .map(|(i, f)| RateFigures {
                target: f.target,
                achieved_rps: median_of(runs, |r| r.rates[i].achieved_rps),
                p50_us: median_of(runs, |r| r.rates[i].p50_us),
                p99_us: median_of(runs, |r| r.rates[i].p99_us),
                ztunnel_cpu_us_per_request: median_of_some(runs, |r| {
                    r.rates[i].ztunnel_cpu_us_per_request
                }),
                path_cpu_us_per_request: median_of(runs, |r| r.rates[i].path_cpu_us_per_request),
            })
            .collect(),
    }
}

/// The scaling figures, one column per setup, with keelson/anchor when both are there.
pub fn scaling_table(setups: &[(String, Scaling)]) -> String {
    let mut out = format!("{:<40}", "figure");
    for (name, _) in setups {
        out += &format!(" {name:>18}");
    }
    let ratio = setups.len() == 3;
    if ratio {
        out += &format!(" {:>15}", "keelson/anchor");
    }
    out += "\n";
    let mut row = |label: String, values: Vec<Option<f64>>| {
        out += &format!("{label:<40}");
        for v in &values {
            match v {
                Some(v) => out += &format!(" {v:>18.2}"),
                None => out += &format!(" {:>18}", "-"),
            }
        }
        if let (true, Some(Some(k)), Some(Some(a))) = (ratio, values.get(1), values.get(2)) {
            out += &format!(" {:>15.2}", k / a);
        }
        out += "\n";
    };
    for (i, n) in SCALING_PARALLEL.iter().enumerate() {
        row(
            format!("throughput, {n} stream(s) (Gbit/s)"),
            setups
                .iter()
                .map(|(_, s)| s.throughput_gbps.get(i).map(|x| x.1))
                .collect(),
        );
    }
    for (i, n) in SCALING_PARALLEL.iter().enumerate() {
        row(
            format!("connections/s, {n} client(s)"),
            setups
                .iter()
                .map(|(_, s)| s.connections_per_s.get(i).map(|x| x.1))
                .collect(),
        );
    }
    for (i, target) in SCALING_RATES.iter().enumerate() {
        let at = match target {
            Some(r) => format!("@{r:.0}/s"),
            None => "@max".into(),
        };
        let get = |f: fn(&RateFigures) -> Option<f64>| -> Vec<Option<f64>> {
            setups
                .iter()
                .map(|(_, s)| s.rates.get(i).and_then(f))
                .collect()
        };
        row(
            format!("RR {at}: achieved req/s"),
            get(|r| Some(r.achieved_rps)),
        );
        row(format!("RR {at}: p50 (µs)"), get(|r| Some(r.p50_us)));
        row(format!("RR {at}: p99 (µs)"), get(|r| Some(r.p99_us)));
        row(
            format!("RR {at}: ztunnel CPU per request (µs)"),
            get(|r| r.ztunnel_cpu_us_per_request),
        );
        row(
            format!("RR {at}: path CPU per request (µs)"),
            get(|r| Some(r.path_cpu_us_per_request)),
        );
    }
    out
}

fn median_figures(runs: &[Figures]) -> Figures {
    let med = |f: fn(&Figures) -> f64| median_of(runs, f);
    let med_opt = |f: fn(&Figures) -> Option<f64>| median_of_some(runs, f);
    Figures {
        throughput_1_gbps: med(|f| f.throughput_1_gbps),
        throughput_8_gbps: med(|f| f.throughput_8_gbps),
        latency_p50_us: med(|f| f.latency_p50_us),
        latency_p99_us: med(|f| f.latency_p99_us),
        newconn_p50_us: med(|f| f.newconn_p50_us),
        connections_per_s: med(|f| f.connections_per_s),
        vcpu_per_1k_rps: med_opt(|f| f.vcpu_per_1k_rps),
        cpu_s_per_gb: med_opt(|f| f.cpu_s_per_gb),
        rss_kib_per_idle_conn: med_opt(|f| f.rss_kib_per_idle_conn),
        heap_kib_per_idle_conn: med_opt(|f| f.heap_kib_per_idle_conn),
        path_cpu_us_per_conn: med(|f| f.path_cpu_us_per_conn),
        path_cpu_us_per_request: med(|f| f.path_cpu_us_per_request),
        path_cpu_s_per_gb: med(|f| f.path_cpu_s_per_gb),
        rss_idle_kib: med_opt(|f| f.rss_idle_kib),
    }
}

struct Cpu(Vec<u32>);

impl Cpu {
    fn total(&self) -> Result<f64> {
        self.0.iter().map(|p| cpu_seconds(*p)).sum()
    }
    fn per_proxy(&self, d: f64) -> f64 {
        d / self.0.len().max(1) as f64
    }
}

fn measure(tb: &Testbed, opts: &BenchOptions, mesh: bool) -> Result<Figures> {
    start_servers(tb)?;
    let connect = connector(tb);
    let cpu = Cpu(if mesh {
        vec![tb.ztunnel_pid("client"), tb.ztunnel_pid("server")]
    } else {
        vec![]
    });
    let mut fig = Figures::default();
    if mesh {
        // Warm: certificates fetched, the HBONE pool's connection made and idle again.
        let warm = connect(RR_PORT)?;
        exchange(std::slice::from_ref(&warm))?;
        drop(warm);
        std::thread::sleep(Duration::from_millis(500));
        let rss: f64 = cpu.0.iter().map(|p| rss_kib(*p)).sum::<Result<f64>>()?;
        fig.rss_idle_kib = Some(rss);
    }

    let path = || -> Result<f64> { Ok(cpu_seconds(std::process::id())? + cpu.total()?) };
    let run = |p: Phase| opts.phases.contains(&p);
    if run(Phase::Throughput) {
        let (c0, p0) = (cpu.total()?, path()?);
        let (gbps, bytes) = throughput(&connect, 1, opts.seconds)?;
        let (c1, p1) = (cpu.total()?, path()?);
        fig.throughput_1_gbps = gbps;
        fig.path_cpu_s_per_gb = (p1 - p0) / (bytes as f64 / 1e9);
        if mesh {
            fig.cpu_s_per_gb = Some(cpu.per_proxy(c1 - c0) / (bytes as f64 / 1e9));
        }
        fig.throughput_8_gbps = throughput(&connect, 8, opts.seconds)?.0;
    }
    if run(Phase::Rr) {
        let (c0, m0) = (cpu.total()?, path()?);
        let (lat, rps) = fixed_rate(&connect, 4, Some(1000.0), opts.seconds)?;
        let (c1, m1) = (cpu.total()?, path()?);
        fig.path_cpu_us_per_request = (m1 - m0) * 1e6 / (rps * opts.seconds);
        fig.latency_p50_us = percentile(&lat, 50.0);
        fig.latency_p99_us = percentile(&lat, 99.0);
        if mesh {
            fig.vcpu_per_1k_rps = Some(cpu.per_proxy(c1 - c0) / opts.seconds / (rps / 1000.0));
        }
    }
    if run(Phase::Newconn) {
        let nc = new_connections(&connect, 200.0, opts.seconds.min(3.0))?;
        fig.newconn_p50_us = percentile(&nc, 50.0);
    }
    if run(Phase::Rate) {
        let secs = opts.seconds.min(3.0);
        let m0 = path()?;
        fig.connections_per_s = connection_rate(&connect, 16, secs)?;
        let m1 = path()?;
        fig.path_cpu_us_per_conn = (m1 - m0) * 1e6 / (fig.connections_per_s * secs).max(1.0);
    }
    if mesh && run(Phase::Idle) {
        let (rss, heap) = idle_rss(tb, &connect, &cpu.0, opts.idle_connections)?;
        fig.rss_kib_per_idle_conn = Some(rss);
        fig.heap_kib_per_idle_conn = heap;
    }
    Ok(fig)
}

/// Lets the client pod reuse ports in TIME_WAIT and gives it more of them: the connection
/// phases close tens of thousands of connections a minute from one address to one port,
/// which the default 28,000 ephemeral ports held for 60 s would not last (a direct run with 8
/// clients fell to 1,000 connections/s waiting for ports).
fn tune_client(tb: &Testbed) -> Result<()> {
    tb.pod("client").exec(
        "sysctl",
        &[
            "-qw",
            "net.ipv4.tcp_tw_reuse=1",
            "net.ipv4.ip_local_port_range=10000 65000",
        ],
    )?;
    Ok(())
}

/// Blocking connections from the client pod to the server pod's `port`.
fn connector(tb: &Testbed) -> impl Fn(u16) -> Result<TcpStream> + Sync + '_ {
    let server = tb.ip("server");
    let client = tb.pod("client");
    move |port| {
        let s = client.tcp_connect(SocketAddr::new(server, port))?;
        s.set_nonblocking(false)?;
        Ok(s)
    }
}

fn start_servers(tb: &Testbed) -> Result<()> {
    tune_client(tb)?;
    let ip = tb.ip("server");
    let sink = tb
        .pod("server")
        .tcp_listen(SocketAddr::new(ip, SINK_PORT))?;
    let rr = tb.pod("server").tcp_listen(SocketAddr::new(ip, RR_PORT))?;
    let conn = tb
        .pod("server")
        .tcp_listen(SocketAddr::new(ip, CONN_PORT))?;
    serve(sink, |mut s| {
        // Counts until EOF, then reports the count: the client checks nothing was lost.
        let mut buf = vec![0u8; 256 * 1024];
        let mut n = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => n += k as u64,
                Err(_) => return,
            }
        }
        let _ = s.write_all(&n.to_be_bytes());
    });
    serve(rr, |mut s| {
        let mut buf = [0u8; MSG];
        while s.read_exact(&mut buf).is_ok() {
            if s.write_all(&buf).is_err() {
                return;
            }
        }
    });
    serve(conn, |mut s| {
        let mut b = [0u8; 1];
        if s.read_exact(&mut b).is_ok() {
            let _ = s.write_all(&b);
        }
    });
    Ok(())
}

fn serve(l: TcpListener, handler: fn(TcpStream)) {
    l.set_nonblocking(false).ok();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_nonblocking(false);
            let _ = s.set_nodelay(true);
            std::thread::spawn(move || handler(s));
        }
    });
}

type Connect<'a> = dyn Fn(u16) -> Result<TcpStream> + Sync + 'a;

/// `streams` connections writing as fast as they can for `secs`; returns (Gbit/s, bytes).
fn throughput(connect: &Connect<'_>, streams: usize, secs: f64) -> Result<(f64, u64)> {
    let socks: Vec<TcpStream> = (0..streams)
        .map(|_| connect(SINK_PORT))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let total = AtomicU64::new(0);
    std::thread::scope(|sc| -> Result<()> {
        let handles: Vec<_> = socks
            .into_iter()
            .map(|mut s| {
                let total = &total;
                sc.spawn(move || -> Result<()> {
                    let buf = vec![0x5au8; 256 * 1024];
                    let mut sent = 0u64;
                    while Instant::now() < deadline {
                        s.write_all(&buf)?;
                        sent += buf.len() as u64;
                    }
                    s.shutdown(std::net::Shutdown::Write)?;
                    let mut n = [0u8; 8];
                    s.read_exact(&mut n)
                        .context("server did not report its byte count")?;
                    ensure!(
                        u64::from_be_bytes(n) == sent,
                        "server received {} of {sent} bytes",
                        u64::from_be_bytes(n)
                    );
                    total.fetch_add(sent, Ordering::Relaxed);
                    Ok(())
                })
            })
            .collect();
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("sender panicked"))??;
        }
        Ok(())
    })?;
    let bytes = total.load(Ordering::Relaxed);
    Ok((
        bytes as f64 * 8.0 / start.elapsed().as_secs_f64() / 1e9,
        bytes,
    ))
}

/// 1 KiB request/response at a fixed total `rate` over `conns` keep-alive connections, or
/// as fast as they go (`None`: each sends its next request on the last response), for
/// `secs`; returns (latencies in µs, achieved requests/s).
fn fixed_rate(
    connect: &Connect<'_>,
    conns: usize,
    rate: Option<f64>,
    secs: f64,
) -> Result<(Vec<f64>, f64)> {
    let socks: Vec<TcpStream> = (0..conns)
        .map(|_| connect(RR_PORT))
        .collect::<Result<_>>()?;
    let per_conn = rate.map(|r| Duration::from_secs_f64(conns as f64 / r));
    let n = rate.map(|r| (secs * r / conns as f64) as usize);
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let lat = std::thread::scope(|sc| -> Result<Vec<f64>> {
        let handles: Vec<_> = socks
            .into_iter()
            .enumerate()
            .map(|(i, mut s)| {
                sc.spawn(move || -> Result<Vec<f64>> {
                    s.set_nodelay(true)?;
                    let req = [i as u8; MSG];
                    let mut resp = [0u8; MSG];
                    let mut out = Vec::with_capacity(n.unwrap_or(1 << 16));
                    // Stagger the connections across the interval.
                    let t0 = Instant::now()
                        + per_conn.map_or(Duration::ZERO, |p| p.mul_f64(i as f64 / conns as f64));
                    for k in 0.. {
                        match (n, per_conn) {
                            (Some(n), Some(per_conn)) => {
                                if k >= n {
                                    break;
                                }
                                let at = t0 + per_conn * k as u32;
                                if let Some(d) = at.checked_duration_since(Instant::now()) {
                                    std::thread::sleep(d);
                                }
                            }
                            _ if Instant::now() >= deadline => break,
                            _ => {}
                        }
                        let t = Instant::now();
                        s.write_all(&req)?;
                        s.read_exact(&mut resp)?;
                        out.push(t.elapsed().as_secs_f64() * 1e6);
                        ensure!(resp == req, "response differs from request");
                    }
                    Ok(out)
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(h.join().map_err(|_| anyhow::anyhow!("client panicked"))??);
        }
        Ok(all)
    })?;
    let rps = lat.len() as f64 / start.elapsed().as_secs_f64();
    Ok((lat, rps))
}

/// A new connection per 1 KiB request at `rate`/s; returns latencies (connect to response).
fn new_connections(connect: &Connect<'_>, rate: f64, secs: f64) -> Result<Vec<f64>> {
    let n = (rate * secs) as usize;
    let gap = Duration::from_secs_f64(1.0 / rate);
    let t0 = Instant::now();
    let mut out = Vec::with_capacity(n);
    for k in 0..n {
        if let Some(d) = (t0 + gap * k as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
        let t = Instant::now();
        let mut s = connect(RR_PORT)?;
        let req = [7u8; MSG];
        let mut resp = [0u8; MSG];
        s.write_all(&req)?;
        s.read_exact(&mut resp)?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

/// Connections per second with `workers` clients each connecting, exchanging one byte and
/// closing, as fast as they can.
fn connection_rate(connect: &Connect<'_>, workers: usize, secs: f64) -> Result<f64> {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|sc| {
        for _ in 0..workers {
            sc.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = connect(CONN_PORT) else {
                        continue;
                    };
                    let mut b = [1u8];
                    if s.write_all(&b).is_ok() && s.read_exact(&mut b).is_ok() {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
    });
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// RSS added to both ztunnels together per idle proxied connection, in KiB.
/// Heap bytes the ztunnels' allocator says their program holds, both together, when they
/// serve `/debug/memory` (Keelson's do; another ztunnel may not: `None`).
fn heap_allocated(tb: &Testbed) -> Option<f64> {
    let admin: SocketAddr = "127.0.0.1:15000".parse().ok()?;
    let one = |pod: &str| -> Option<f64> {
        let (status, body) = tb.http_get(pod, admin, "/debug/memory").ok()?;
        let v: serde_json::Value = serde_json::from_str(&body).ok().filter(|_| status == 200)?;
        v["allocated"].as_f64().filter(|a| *a > 0.0)
    };
    Some(one("client")? + one("server")?)
}

/// RSS added to both ztunnels together per idle proxied connection, in KiB, and with it the
/// heap the program itself holds per connection (what the allocator reports), when known.
fn idle_rss(
    tb: &Testbed,
    connect: &Connect<'_>,
    pids: &[u32],
    n: usize,
) -> Result<(f64, Option<f64>)> {
    let rss = || -> Result<f64> { pids.iter().map(|p| rss_kib(*p)).sum() };
    // Warm the pool and allocator first so the figure is per connection, not start-up.
    let warm: Vec<TcpStream> = (0..50).map(|_| connect(RR_PORT)).collect::<Result<_>>()?;
    exchange(&warm)?;
    drop(warm);
    std::thread::sleep(Duration::from_millis(500));
    let (before, heap_before) = (rss()?, heap_allocated(tb));
    let conns: Vec<TcpStream> = (0..n).map(|_| connect(RR_PORT)).collect::<Result<_>>()?;
    // One exchange on each proves the tunnel exists end to end; then they sit idle.
    exchange(&conns)?;
    std::thread::sleep(Duration::from_secs(1));
    let (after, heap_after) = (rss()?, heap_allocated(tb));
    drop(conns);
    let heap = heap_before
        .zip(heap_after)
        .map(|(b, a)| (a - b) / 1024.0 / n as f64);
    if after < before {
        // The allocator returned memory meanwhile: the growth is below what RSS can resolve.
        eprintln!("bench: RSS fell while {n} connections were added ({before} → {after} KiB); use more --idle-connections for a figure");
    }
    Ok(((after - before).max(0.0) / n as f64, heap))
}

fn exchange(conns: &[TcpStream]) -> Result<()> {
    for mut s in conns {
        let mut b = [3u8; MSG];
        s.write_all(&b)?;
        s.read_exact(&mut b)?;
    }
    Ok(())
}

/// The human-readable table, with mesh/direct ratios and added latencies.
pub fn table(r: &Report) -> String {
    let d = &r.direct;
    let m = &r.mesh;
    let mut out = String::new();
    out += &format!(
        "{:<34} {:>12} {:>12} {:>10}\n",
        "figure", "direct", "mesh", "mesh/direct"
    );
    let row =
        |name: &str, a: f64, b: f64| format!("{name:<34} {a:>12.2} {b:>12.2} {:>10.2}\n", b / a);
    out += &row(
        "throughput, 1 stream (Gbit/s)",
        d.throughput_1_gbps,
        m.throughput_1_gbps,
    );
    out += &row(
        "throughput, 8 streams (Gbit/s)",
        d.throughput_8_gbps,
        m.throughput_8_gbps,
    );
    out += &row(
        "1 KiB RR @1k/s p50 (µs)",
        d.latency_p50_us,
        m.latency_p50_us,
    );
    out += &row(
        "1 KiB RR @1k/s p99 (µs)",
        d.latency_p99_us,
        m.latency_p99_us,
    );
    out += &row(
        "new connection + RR p50 (µs)",
        d.newconn_p50_us,
        m.newconn_p50_us,
    );
    out += &row(
        "new connections per second",
        d.connections_per_s,
        m.connections_per_s,
    );
    out += &format!(
        "added latency: p50 {:.0} µs, p99 {:.0} µs, new connection {:.0} µs\n",
        m.latency_p50_us - d.latency_p50_us,
        m.latency_p99_us - d.latency_p99_us,
        m.newconn_p50_us - d.newconn_p50_us
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    out += &format!(
        "ztunnel vCPU per 1,000 req/s (per ztunnel): {}\n",
        opt(m.vcpu_per_1k_rps)
    );
    out += &format!(
        "ztunnel CPU seconds per GB (per ztunnel):   {}\n",
        opt(m.cpu_s_per_gb)
    );
    out += &format!(
        "RSS per idle connection, both ztunnels:     {} KiB (heap held: {} KiB)\n",
        opt(m.rss_kib_per_idle_conn),
        opt(m.heap_kib_per_idle_conn)
    );
    if r.by_redirect.len() > 1 {
        out += "\n";
        out += &redirect_table(r);
    }
    if let Some(a) = &r.anchor {
        out += "\n";
        out += &anchor_table(d, m, a);
    }
    out
}

/// Keelson against the anchor, figure by figure, with the target ratio and whether it is met.
/// Latencies are compared as what each mesh adds to the direct figure.
pub fn anchor_table(d: &Figures, k: &Figures, a: &Figures) -> String {
    let mut out = format!(
        "{:<38} {:>12} {:>12} {:>14} {:>8}\n",
        "Keelson against the anchor", "keelson", "anchor", "keelson/anchor", "target"
    );
    let opt = |v: Option<f64>| v.unwrap_or(f64::NAN);
    // (figure, keelson, anchor, target ratio, whether higher is better)
    let rows: [(&str, f64, f64, f64, bool); 11] = [
        (
            "throughput, 1 stream (Gbit/s)",
            k.throughput_1_gbps,
            a.throughput_1_gbps,
            1.25,
            true,
        ),
        (
            "throughput, 8 streams (Gbit/s)",
            k.throughput_8_gbps,
            a.throughput_8_gbps,
            1.25,
            true,
        ),
        (
            "vCPU per 1,000 req/s, per ztunnel",
            opt(k.vcpu_per_1k_rps),
            opt(a.vcpu_per_1k_rps),
            0.8,
            false,
        ),
        (
            "CPU seconds per GB, per ztunnel",
            opt(k.cpu_s_per_gb),
            opt(a.cpu_s_per_gb),
            0.8,
            false,
        ),
        (
            "added p50, 1 KiB RR @1k/s (µs)",
            k.latency_p50_us - d.latency_p50_us,
            a.latency_p50_us - d.latency_p50_us,
            0.8,
            false,
        ),
        (
            "added p99, 1 KiB RR @1k/s (µs)",
            k.latency_p99_us - d.latency_p99_us,
            a.latency_p99_us - d.latency_p99_us,
            0.8,
            false,
        ),
        (
            "added new connection + RR p50 (µs)",
            k.newconn_p50_us - d.newconn_p50_us,
            a.newconn_p50_us - d.newconn_p50_us,
            0.8,
            false,
        ),
        (
            "new connections per second",
            k.connections_per_s,
            a.connections_per_s,
            1.25,
            true,
        ),
        (
            "RSS per idle connection, both (KiB)",
            opt(k.rss_kib_per_idle_conn),
            opt(a.rss_kib_per_idle_conn),
            0.8,
            false,
        ),
        (
            "RSS at idle, both ztunnels (KiB)",
            opt(k.rss_idle_kib),
            opt(a.rss_idle_kib),
            0.8,
            false,
        ),
        (
            "path CPU per connection (µs)",
            k.path_cpu_us_per_conn,
            a.path_cpu_us_per_conn,
            0.8,
            false,
        ),
    ];
    for (name, kv, av, target, higher) in rows {
        let ratio = kv / av;
        let met = if higher {
            ratio >= target
        } else {
            ratio <= target
        };
        // Small figures (vCPU, CPU seconds) need a third decimal to show a difference.
        let (kv_s, av_s) = if kv.abs() < 10.0 && av.abs() < 10.0 {
            (format!("{kv:.3}"), format!("{av:.3}"))
        } else {
            (format!("{kv:.2}"), format!("{av:.2}"))
        };
        out += &format!(
            "{name:<38} {kv_s:>12} {av_s:>12} {ratio:>14.2} {:>8}\n",
            format!(
                "{}{target} {}",
                if higher { "≥" } else { "≤" },
                if met { "met" } else { "MISSED" }
            )
        );
    }
    out
}

/// A figure's name and how to read it.
type FigureRow = (&'static str, fn(&Figures) -> f64);

/// The redirection flavours side by side: each figure with its ratio to no proxy, then what
/// the last flavour saves against the first.
pub fn redirect_table(r: &Report) -> String {
    let d = &r.direct;
    let mut out = format!("{:<34} {:>12}", "figure (ratio to direct)", "direct");
    for (name, _) in &r.by_redirect {
        out += &format!(" {:>18}", name);
    }
    out += "\n";
    let rows: [FigureRow; 9] = [
        ("throughput, 1 stream (Gbit/s)", |f| f.throughput_1_gbps),
        ("throughput, 8 streams (Gbit/s)", |f| f.throughput_8_gbps),
        ("1 KiB RR @1k/s p50 (µs)", |f| f.latency_p50_us),
        ("1 KiB RR @1k/s p99 (µs)", |f| f.latency_p99_us),
        ("new connection + RR p50 (µs)", |f| f.newconn_p50_us),
        ("new connections per second", |f| f.connections_per_s),
        ("path CPU per connection (µs)", |f| f.path_cpu_us_per_conn),
        ("path CPU per 1 KiB RR (µs)", |f| f.path_cpu_us_per_request),
        ("path CPU per GB, 1 stream (s)", |f| f.path_cpu_s_per_gb),
    ];
    for (name, get) in rows {
        out += &format!("{name:<34} {:>12.2}", get(d));
        for (_, m) in &r.by_redirect {
            out += &format!(" {:>10.2} ({:>5.2})", get(m), get(m) / get(d));
        }
        out += "\n";
    }
    let (Some((first, a)), Some((last, b))) = (r.by_redirect.first(), r.by_redirect.last()) else {
        return out;
    };
    out += &format!(
        "{last} against {first}: {:+.1} µs path CPU per connection, {:+.2} µs per 1 KiB RR, {:+.3} s per GB, {:+.0} connections/s, p99 {:+.0} µs\n",
        b.path_cpu_us_per_conn - a.path_cpu_us_per_conn,
        b.path_cpu_us_per_request - a.path_cpu_us_per_request,
        b.path_cpu_s_per_gb - a.path_cpu_s_per_gb,
        b.connections_per_s - a.connections_per_s,
        b.latency_p99_us - a.latency_p99_us,
    );
    out
}

/// What the number of workloads in the snapshot costs one ztunnel (`bench l4 --workloads`).
#[derive(Debug, Clone, Serialize)]
pub struct WorkloadRow {
    /// `keelson` or `anchor`.
    pub setup: String,
    pub workloads: usize,
    /// From writing the workloads to the control plane's input to both ztunnels knowing the
    /// last of them, in ms.
    pub sync_ms: f64,
    /// With them known, one added workload until both ztunnels know it (median of
    /// [`PUSHES`]), in ms.
    pub push_ms: f64,
    /// RSS of one ztunnel (mean of the two) before any and once all are known, in KiB.
    pub rss_before_kib: f64,
    pub rss_kib: f64,
    /// New connections per second (8 clients) with them known, and the CPU of one ztunnel
    /// (mean of the two) per connection, in µs: what a lookup among them costs.
    pub connections_per_s: f64,
    pub ztunnel_cpu_us_per_conn: f64,
    /// Heap the program holds once all are known (mean of the two, its allocator's count)
    /// when the ztunnel reports it, in KiB: RSS less what the allocator keeps aside.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub heap_kib: Option<f64>,
}

const PUSHES: usize = 5;

/// `keelson bench l4 --workloads 10,1000,10000`: for each count, each setup (Keelson, and the
/// anchor when given) starts afresh behind the same control plane, is fed that many
/// synthetic workloads, and its RSS and the time to apply a one-workload push are taken.
/// Both setups are told of a push the same way: each ztunnel's `/config_dump` is polled.
pub fn run_workloads(opts: &BenchOptions, counts: &[usize]) -> Result<Vec<WorkloadRow>> {
    netns::raise_fd_limit();
    let mut setups = vec![("keelson".to_string(), None, opts.redirects[0])];
    if let Some(bin) = &opts.anchor {
        setups.push(("anchor".into(), Some(bin.clone()), anchor_redirect(opts)));
    }
    let mut runs: Vec<Vec<WorkloadRow>> = Vec::new();
    for run in 1..=opts.runs.max(1) {
        for &n in counts {
            for (name, bin, redirect) in &setups {
                eprintln!("workloads run {run}: {n} workloads, {name}");
                let tb = Testbed::start(Options {
                    env: vec![("RUST_LOG".into(), "warn".into())],
                    redirect: *redirect,
                    source: testbed::Source::ControlPlane,
                    ztunnel_bin: bin.clone(),
                    // A push is timed from the file's write: the directory's own polling
                    // (200 ms by default) would be most of it.
                    control_plane_poll: Some(Duration::from_millis(5)),
                    ..Options::default()
                })?;
                let row = measure_workloads(&tb, name, n)?;
                match runs
                    .iter_mut()
                    .find(|r| r[0].setup == *name && r[0].workloads == n)
                {
                    Some(r) => r.push(row),
                    None => runs.push(vec![row]),
                }
            }
        }
    }
    Ok(runs
        .iter()
        .map(|r| WorkloadRow {
            setup: r[0].setup.clone(),
            workloads: r[0].workloads,
            sync_ms: median_of(r, |w| w.sync_ms),
            push_ms: median_of(r, |w| w.push_ms),
            rss_before_kib: median_of(r, |w| w.rss_before_kib),
            rss_kib: median_of(r, |w| w.rss_kib),
            connections_per_s: median_of(r, |w| w.connections_per_s),
            ztunnel_cpu_us_per_conn: median_of(r, |w| w.ztunnel_cpu_us_per_conn),
            heap_kib: median_of_some(r, |w| w.heap_kib),
        })
        .collect())
}

fn measure_workloads(tb: &Testbed, setup: &str, n: usize) -> Result<WorkloadRow> {
    let pods = ["client", "server"];
    let rss = || -> Result<f64> {
        let total: f64 = pods
            .iter()
            .map(|p| rss_kib(tb.ztunnel_pid(p)))
            .sum::<Result<f64>>()?;
        Ok(total / pods.len() as f64)
    };
    // Known by both ztunnels: the name, quoted, in their `/config_dump`.
    let known_by_all = |name: &str| -> bool {
        let quoted = format!("\"{name}\"");
        pods.iter().all(|p| {
            tb.http_get(p, "127.0.0.1:15000".parse().unwrap(), "/config_dump")
                .is_ok_and(|(status, body)| status == 200 && body.contains(&quoted))
        })
    };
    let wait_known = |name: &str, poll: Duration| -> Result<f64> {
        let started = Instant::now();
        while !known_by_all(name) {
            if started.elapsed() > Duration::from_secs(120) {
                let quoted = format!("\"{name}\"");
                let lacking: Vec<&str> = pods
                    .iter()
                    .copied()
                    .filter(|p| {
                        !tb.http_get(p, "127.0.0.1:15000".parse().unwrap(), "/config_dump")
                            .is_ok_and(|(_, body)| body.contains(&quoted))
                    })
                    .collect();
                anyhow::bail!(
                    "{setup}: workload {name} did not reach the ztunnel(s) of {lacking:?} in 120 s"
                );
            }
            std::thread::sleep(poll);
        }
        Ok(started.elapsed().as_secs_f64() * 1e3)
    };
    // Ready: the testbed's own pods are known.
    wait_known("server", Duration::from_millis(50))?;
    std::thread::sleep(Duration::from_millis(500));
    let rss_before_kib = rss()?;
    tb.write_resources("scale.yaml", &testbed::synthetic_pods(n, 0))?;
    let sync_ms = wait_known(&format!("w{}", n - 1), Duration::from_millis(20))?;
    std::thread::sleep(Duration::from_secs(1));
    let rss_kib = rss()?;
    let heap_kib = heap_allocated(tb).map(|b| b / 1024.0 / pods.len() as f64);
    let mut pushes = Vec::with_capacity(PUSHES);
    for k in 0..PUSHES {
        let name = format!("probe{k}");
        let pod = format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  namespace: scale\n  \
             labels: {{app: probe}}\nspec:\n  serviceAccountName: probe\n  nodeName: n0\n  \
             containers:\n  - name: main\nstatus:\n  phase: Running\n  podIP: 10.30.0.{}\n",
            k + 1
        );
        tb.write_resources("probe.yaml", &pod)?;
        pushes.push(wait_known(&name, Duration::from_millis(5))?);
    }
    start_servers(tb)?;
    let connect = connector(tb);
    let cpu = Cpu(pods.iter().map(|p| tb.ztunnel_pid(p)).collect());
    let secs = 3.0;
    let c0 = cpu.total()?;
    let connections_per_s = connection_rate(&connect, 8, secs)?;
    let c1 = cpu.total()?;
    Ok(WorkloadRow {
        setup: setup.to_string(),
        workloads: n,
        sync_ms,
        push_ms: percentile(&pushes, 50.0),
        rss_before_kib,
        rss_kib,
        connections_per_s,
        ztunnel_cpu_us_per_conn: cpu.per_proxy(c1 - c0) * 1e6 / (connections_per_s * secs).max(1.0),
        heap_kib,
    })
}

pub fn workloads_table(rows: &[WorkloadRow]) -> String {
    let mut out = format!(
        "{:>9}  {:<8} {:>10} {:>14} {:>16} {:>10} {:>17} {:>14} {:>16}\n",
        "workloads",
        "setup",
        "sync (ms)",
        "one push (ms)",
        "RSS (MiB) each",
        "heap (MiB)",
        "KiB per workload",
        "connections/s",
        "CPU µs per conn"
    );
    for r in rows {
        out += &format!(
            "{:>9}  {:<8} {:>10.0} {:>14.1} {:>16.1} {:>10} {:>17.2} {:>14.0} {:>16.1}\n",
            r.workloads,
            r.setup,
            r.sync_ms,
            r.push_ms,
            r.rss_kib / 1024.0,
            r.heap_kib
                .map(|h| format!("{:.1}", h / 1024.0))
                .unwrap_or_else(|| "-".into()),
            (r.rss_kib - r.rss_before_kib) / r.workloads as f64,
            r.connections_per_s,
            r.ztunnel_cpu_us_per_conn,
        );
    }
    let anchors: Vec<&WorkloadRow> = rows.iter().filter(|r| r.setup == "anchor").collect();
    if !anchors.is_empty() {
        out += "\nkeelson/anchor: workloads, sync, one push, RSS, connections/s, CPU per conn\n";
        for a in anchors {
            if let Some(k) = rows
                .iter()
                .find(|r| r.setup == "keelson" && r.workloads == a.workloads)
            {
                out += &format!(
                    "{:>9}  {:>6.2} {:>6.2} {:>6.2} {:>6.2} {:>6.2}\n",
                    a.workloads,
                    k.sync_ms / a.sync_ms,
                    k.push_ms / a.push_ms,
                    k.rss_kib / a.rss_kib,
                    k.connections_per_s / a.connections_per_s,
                    k.ztunnel_cpu_us_per_conn / a.ztunnel_cpu_us_per_conn
                );
            }
        }
    }
    out
}
