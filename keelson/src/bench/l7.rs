//! `keelson bench l7`: HTTP/1.1 requests (1 KiB up, 1 KiB down) on a local mesh of its own,
//! from a client pod on node-1 to a server pod on node-2, three ways in one run:
//!
//! - **direct**: both pods outside the mesh, to the server's pod IP;
//! - **ztunnel**: both pods in ambient mode, to the service VIP (client ztunnel → HBONE →
//!   server ztunnel);
//! - **waypoint**: the same with a namespace waypoint (client ztunnel → waypoint, which
//!   parses each request, picks an endpoint and opens the next HBONE hop → server ztunnel).
//!
//! Per setup: the most requests per second 8 keep-alive connections get, and p50/p99 latency
//! at a fixed 1,000 requests/s over 4 connections, with the CPU seconds the waypoint (and the
//! ztunnels) used for them. Every response is checked (status 200, 1,024 body bytes). Setups
//! alternate `runs` times; each figure is the median. The node links behave like NICs
//! between machines unless `--node-links inline` ([`mesh::thread_node_links`]).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use serde::Serialize;

use super::stats::{cpu_seconds, cpu_split, median_of, median_of_some, percentile, rss_kib};
use crate::mesh::{self, MeshState, Paths, UpOptions};

const BODY: usize = 1024;
const PORT: u16 = 9080;
pub const SETUPS: [&str; 3] = ["direct", "ztunnel", "waypoint"];

#[derive(Debug, Clone)]
pub struct L7Options {
    pub seconds: f64,
    pub runs: usize,
    /// Requests per second of the latency phase.
    pub rate: f64,
    /// The setups to measure (all of [`SETUPS`] by default); the others are reported empty.
    pub setups: Vec<String>,
    /// Node links like NICs between machines ([`mesh::thread_node_links`]), so that each
    /// process's CPU is its own node's share; `false`: plain veths, where a sender's `write`
    /// also runs the receiving node's packet path.
    pub threaded_links: bool,
    /// How the mesh's pods are redirected.
    pub redirect: cni_plugin::redirect::Redirect,
}

impl Default for L7Options {
    fn default() -> Self {
        L7Options {
            seconds: 4.0,
            runs: 3,
            rate: 1000.0,
            setups: SETUPS.iter().map(|s| s.to_string()).collect(),
            threaded_links: true,
            redirect: cni_plugin::redirect::Redirect::Iptables,
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct L7Figures {
    pub max_rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
    /// CPU seconds per 1,000 requests in the fixed-rate phase (= vCPU per 1,000 req/s).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint_cpu_s_per_1k: Option<f64>,
    /// Of which in user space (the rest is kernel time: its sockets, and on this one machine
    /// also the receiving side's network stack, which runs in the sender's system call).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint_user_s_per_1k: Option<f64>,
    /// The waypoint's CPU seconds per 1,000 requests in the closed-loop phase.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint_cpu_s_per_1k_max: Option<f64>,
    /// The same for both ztunnels together.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ztunnels_cpu_s_per_1k: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waypoint_rss_kib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct L7Report {
    /// `threaded` (node links like NICs between machines) or `inline` (plain veths).
    pub node_links: &'static str,
    pub direct: L7Figures,
    pub ztunnel: L7Figures,
    pub waypoint: L7Figures,
}

fn manifest() -> String {
    let mut out = String::new();
    for setup in SETUPS {
        let labels = match setup {
            "direct" => String::new(),
            "ztunnel" => "\n  labels: {istio.io/dataplane-mode: ambient}".into(),
            _ => "\n  labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}"
                .into(),
        };
        out += &format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {setup}{labels}\n---\n\
             apiVersion: v1\nkind: Service\nmetadata: {{name: server, namespace: {setup}}}\n\
             spec: {{selector: {{app: server}}, ports: [{{port: {PORT}, name: http}}]}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: server, namespace: {setup}, labels: {{app: server}}}}\n\
             spec:\n  nodeName: node-2\n  containers: [{{name: server, image: docker.io/istio/examples-bookinfo-details-v1}}]\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: {setup}, labels: {{app: client}}}}\n\
             spec:\n  nodeName: node-1\n  containers: [{{name: client, image: curlimages/curl, command: [/bin/sleep, infinity]}}]\n---\n"
        );
    }
    out += "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: waypoint, namespace: waypoint}\n\
            spec:\n  gatewayClassName: istio-waypoint\n  listeners: [{name: mesh, port: 15008, protocol: HBONE}]\n";
    out
}

/// Runs the three setups on a mesh of its own (state in `$KEELSON_HOME-bench`, namespaces
/// `kbench-*`), torn down at the end whatever happens.
pub fn run(opts: &L7Options) -> Result<L7Report> {
    netns::raise_fd_limit();
    let base = Paths::default();
    let paths = Paths {
        home: PathBuf::from(format!("{}-bench", base.home.display())),
        prefix: "kbench".into(),
    };
    let _ = mesh::down(&paths);
    std::fs::create_dir_all(&paths.home)?;
    let file = paths.home.join("bench-l7.yaml");
    std::fs::write(&file, manifest())?;
    eprintln!(
        "bench l7: starting a local mesh of its own ({})",
        paths.home.display()
    );
    let result = mesh::up(
        &paths,
        &UpOptions {
            source: Some(file),
            redirect: opts.redirect,
            ingress: false,
            ..UpOptions::default()
        },
    )
    .and_then(|state| {
        if opts.threaded_links {
            mesh::thread_node_links(&paths, &state)?;
        }
        measure_all(&state, opts)
    });
    if let Err(e) = mesh::down(&paths) {
        eprintln!("bench l7: tearing the mesh down: {e:#}");
    }
    result
}

struct Target {
    client_netns: PathBuf,
    addr: SocketAddr,
    /// Processes whose CPU counts: the waypoint, then the two node ztunnels.
    waypoint: Option<i32>,
    ztunnels: Vec<i32>,
}

fn target(state: &MeshState, setup: &str) -> Result<Target> {
    let pod = |name: &str| {
        state
            .find_pod(name, Some(setup))
            .with_context(|| format!("no pod {setup}/{name}"))
    };
    let client = pod("client")?;
    let addr = match setup {
        "direct" => SocketAddr::new(IpAddr::V4(pod("server")?.ip), PORT),
        _ => SocketAddr::new(
            IpAddr::V4(
                *state
                    .services
                    .get(&format!("{setup}/server"))
                    .context("no service VIP")?,
            ),
            PORT,
        ),
    };
    let waypoint = match setup {
        "waypoint" => Some(
            pod("waypoint-0")?
                .procs
                .first()
                .context("no waypoint process")?
                .pid,
        ),
        _ => None,
    };
    let ztunnels = match setup {
        "direct" => vec![],
        _ => state
            .procs
            .iter()
            .filter(|p| p.role.starts_with("ztunnel/"))
            .map(|p| p.pid)
            .collect(),
    };
    Ok(Target {
        client_netns: netns::netns_path(&client.netns),
        addr,
        waypoint,
        ztunnels,
    })
}

fn measure_all(state: &MeshState, opts: &L7Options) -> Result<L7Report> {
    let targets: Vec<Target> = SETUPS
        .iter()
        .map(|s| target(state, s))
        .collect::<Result<_>>()?;
    let mut figures: Vec<Vec<L7Figures>> = vec![Vec::new(); SETUPS.len()];
    for run in 1..=opts.runs.max(1) {
        for (i, setup) in SETUPS.iter().enumerate() {
            if !opts.setups.iter().any(|s| s == setup) {
                figures[i].push(L7Figures::default());
                continue;
            }
            eprintln!("bench l7 run {run}: {setup}");
            figures[i].push(measure(&targets[i], opts)?);
        }
    }
    let med = |runs: &[L7Figures]| {
        let m = |f: fn(&L7Figures) -> f64| median_of(runs, f);
        let mo = |f: fn(&L7Figures) -> Option<f64>| median_of_some(runs, f);
        L7Figures {
            max_rps: m(|f| f.max_rps),
            p50_us: m(|f| f.p50_us),
            p99_us: m(|f| f.p99_us),
            waypoint_cpu_s_per_1k: mo(|f| f.waypoint_cpu_s_per_1k),
            waypoint_user_s_per_1k: mo(|f| f.waypoint_user_s_per_1k),
            waypoint_cpu_s_per_1k_max: mo(|f| f.waypoint_cpu_s_per_1k_max),
            ztunnels_cpu_s_per_1k: mo(|f| f.ztunnels_cpu_s_per_1k),
            waypoint_rss_kib: mo(|f| f.waypoint_rss_kib),
        }
    };
    Ok(L7Report {
        node_links: if opts.threaded_links {
            "threaded"
        } else {
            "inline"
        },
        direct: med(&figures[0]),
        ztunnel: med(&figures[1]),
        waypoint: med(&figures[2]),
    })
}

fn measure(t: &Target, opts: &L7Options) -> Result<L7Figures> {
    let (addr, secs, rate) = (t.addr, opts.seconds, opts.rate);
    // Warm up: certificates, pooled tunnels, the waypoint's route tables.
    netns::run_at(&t.client_netns, move || closed_loop(addr, 4, 0.5))??;
    let cpu = |pids: &[i32]| -> Result<f64> { pids.iter().map(|p| cpu_seconds(*p as u32)).sum() };
    let wp: Vec<i32> = t.waypoint.into_iter().collect();
    let wm0 = cpu(&wp)?;
    let max_rps = netns::run_at(&t.client_netns, move || closed_loop(addr, 8, secs))??;
    let wm1 = cpu(&wp)?;
    let user = |pids: &[i32]| -> Result<f64> {
        pids.iter()
            .map(|p| cpu_split(*p as u32).map(|(u, _)| u))
            .sum()
    };
    let (w0, z0, u0) = (cpu(&wp)?, cpu(&t.ztunnels)?, user(&wp)?);
    let (lat, done) = netns::run_at(&t.client_netns, move || fixed_rate(addr, 4, rate, secs))??;
    let (w1, z1, u1) = (cpu(&wp)?, cpu(&t.ztunnels)?, user(&wp)?);
    let per_1k = |d: f64| d / (done as f64 / 1000.0);
    Ok(L7Figures {
        max_rps,
        p50_us: percentile(&lat, 50.0),
        p99_us: percentile(&lat, 99.0),
        waypoint_cpu_s_per_1k: t.waypoint.map(|_| per_1k(w1 - w0)),
        waypoint_user_s_per_1k: t.waypoint.map(|_| per_1k(u1 - u0)),
        waypoint_cpu_s_per_1k_max: t.waypoint.map(|_| (wm1 - wm0) / (max_rps * secs / 1000.0)),
        ztunnels_cpu_s_per_1k: (!t.ztunnels.is_empty()).then(|| per_1k(z1 - z0)),
        waypoint_rss_kib: t.waypoint.map(|p| rss_kib(p as u32)).transpose()?,
    })
}

/// One keep-alive HTTP/1.1 connection sending `POST /bytes/1024` with a 1 KiB body.
struct Client {
    s: TcpStream,
    req: Vec<u8>,
    buf: Vec<u8>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Client> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut req = format!(
            "POST /bytes/{BODY} HTTP/1.1\r\nHost: server:{PORT}\r\ncontent-type: application/octet-stream\r\ncontent-length: {BODY}\r\n\r\n"
        )
        .into_bytes();
        req.extend(std::iter::repeat_n(b'k', BODY));
        Ok(Client {
            s,
            req,
            buf: Vec::with_capacity(4096),
        })
    }

    /// One request and its whole response, checked.
    fn exchange(&mut self) -> Result<()> {
        self.s.write_all(&self.req)?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (head_end, body_len) = loop {
            let n = self.s.read(&mut chunk)?;
            ensure!(n > 0, "connection closed before the response");
            self.buf.extend_from_slice(&chunk[..n]);
            if let Some(i) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..i]).context("response head")?;
                ensure!(
                    head.starts_with("HTTP/1.1 200"),
                    "unexpected response: {}",
                    head.lines().next().unwrap_or("")
                );
                let len = head
                    .lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case("content-length")
                            .then(|| v.trim().parse::<usize>().ok())?
                    })
                    .context("response without content-length")?;
                break (i + 4, len);
            }
        };
        while self.buf.len() < head_end + body_len {
            let n = self.s.read(&mut chunk)?;
            ensure!(n > 0, "connection closed in the response body");
            self.buf.extend_from_slice(&chunk[..n]);
        }
        ensure!(
            body_len == BODY && self.buf.len() == head_end + body_len,
            "response body of {body_len} bytes, not {BODY}"
        );
        Ok(())
    }
}

/// `conns` connections sending back to back for `secs`: requests per second.
fn closed_loop(addr: SocketAddr, conns: usize, secs: f64) -> Result<f64> {
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let start = Instant::now();
    std::thread::scope(|sc| -> Result<()> {
        let handles: Vec<_> = (0..conns)
            .map(|_| {
                let (stop, count) = (&stop, &count);
                sc.spawn(move || -> Result<()> {
                    let mut c = Client::connect(addr)?;
                    while !stop.load(Ordering::Relaxed) {
                        c.exchange()?;
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        std::thread::sleep(Duration::from_secs_f64(secs));
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
        Ok(())
    })?;
    Ok(count.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64())
}

/// `rate` requests per second in total over `conns` connections for `secs`: latencies in µs
/// and the number of requests.
fn fixed_rate(addr: SocketAddr, conns: usize, rate: f64, secs: f64) -> Result<(Vec<f64>, usize)> {
    let per_conn = Duration::from_secs_f64(conns as f64 / rate);
    let n = (secs * rate / conns as f64) as usize;
    let lat = std::thread::scope(|sc| -> Result<Vec<f64>> {
        let handles: Vec<_> = (0..conns)
            .map(|i| {
                sc.spawn(move || -> Result<Vec<f64>> {
                    let mut c = Client::connect(addr)?;
                    let mut out = Vec::with_capacity(n);
                    let t0 = Instant::now() + per_conn.mul_f64(i as f64 / conns as f64);
                    for k in 0..n {
                        let at = t0 + per_conn * k as u32;
                        if let Some(d) = at.checked_duration_since(Instant::now()) {
                            std::thread::sleep(d);
                        }
                        let t = Instant::now();
                        c.exchange()?;
                        out.push(t.elapsed().as_secs_f64() * 1e6);
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
    if lat.is_empty() {
        bail!("no requests completed");
    }
    let n = lat.len();
    Ok((lat, n))
}

/// The human-readable table.
pub fn table(r: &L7Report) -> String {
    let mut out = format!(
        "{:<38} {:>10} {:>10} {:>10}\n",
        "figure", "direct", "ztunnel", "waypoint"
    );
    // A setup that was not measured shows "-".
    let cell = |fig: &L7Figures, f: fn(&L7Figures) -> f64| {
        if fig.max_rps > 0.0 {
            format!("{:>10.0}", f(fig))
        } else {
            format!("{:>10}", "-")
        }
    };
    let row = |name: &str, f: fn(&L7Figures) -> f64| {
        format!(
            "{name:<38} {} {} {}\n",
            cell(&r.direct, f),
            cell(&r.ztunnel, f),
            cell(&r.waypoint, f)
        )
    };
    out += &row("requests/s, 8 connections", |f| f.max_rps);
    out += &row("p50 at fixed rate (µs)", |f| f.p50_us);
    out += &row("p99 at fixed rate (µs)", |f| f.p99_us);
    out += &format!(
        "added by the waypoint hop (waypoint − ztunnel): p50 {:.0} µs, p99 {:.0} µs\n",
        r.waypoint.p50_us - r.ztunnel.p50_us,
        r.waypoint.p99_us - r.ztunnel.p99_us
    );
    let opt = |v: Option<f64>| v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into());
    out += &format!(
        "waypoint CPU s per 1,000 requests (= vCPU per 1,000 req/s): {}\n",
        opt(r.waypoint.waypoint_cpu_s_per_1k)
    );
    out += &format!(
        "  of which user space: {}; at the closed-loop rate: {}\n",
        opt(r.waypoint.waypoint_user_s_per_1k),
        opt(r.waypoint.waypoint_cpu_s_per_1k_max)
    );
    out += &format!(
        "ztunnels (both) CPU s per 1,000 requests: ztunnel only {}, with waypoint {}\n",
        opt(r.ztunnel.ztunnels_cpu_s_per_1k),
        opt(r.waypoint.ztunnels_cpu_s_per_1k)
    );
    out += &format!("waypoint RSS: {} KiB\n", opt(r.waypoint.waypoint_rss_kib));
    out += &format!(
        "node links: {} ({})\n",
        r.node_links,
        if r.node_links == "threaded" {
            "the receiving node's packet path runs in its own kernel thread, as on another machine"
        } else {
            "plain veths: a sender's write also runs the receiving node's packet path"
        }
    );
    out
}
