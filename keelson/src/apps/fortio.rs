//! `keelson app fortio load`: a load client in the manner of fortio's, for the
//! circuit-breaking and traffic walkthroughs: `-c` connections each sending its share of
//! `-n` requests one after the other over one kept HTTP/1.1 connection (a new one after a
//! failure or a `connection: close`), at `-qps` requests per second overall (0: as fast as
//! they answer), then the status code histogram and latency percentiles. A request that
//! gets no answer counts as code -1.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use tokio::net::TcpStream;

#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub connections: usize,
    /// Requests per second over all connections; 0: no pacing.
    pub qps: f64,
    pub requests: usize,
    pub url: String,
    /// Extra request headers (`-H name:value`).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
}

/// What a run came to.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Status code (-1: no answer) → count.
    pub codes: BTreeMap<i32, usize>,
    /// Every request's latency, sorted.
    pub latencies: Vec<Duration>,
    pub elapsed: Duration,
}

impl LoadResult {
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((p / 100.0) * (self.latencies.len() - 1) as f64).round() as usize;
        self.latencies[i.min(self.latencies.len() - 1)]
    }

    /// The report fortio users read: the codes, then the latencies.
    pub fn report(&self, o: &LoadOptions) -> String {
        let total: usize = self.codes.values().sum();
        let mut out = format!(
            "Fortio-style load: {} connections, qps {}, {} calls to {}\n",
            o.connections,
            if o.qps > 0.0 {
                format!("{}", o.qps)
            } else {
                "max".into()
            },
            o.requests,
            o.url
        );
        for (code, n) in &self.codes {
            out.push_str(&format!(
                "Code {code:>3} : {n} ({:.1} %)\n",
                100.0 * *n as f64 / total.max(1) as f64
            ));
        }
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        out.push_str(&format!(
            "Latency ms: p50 {:.2} p75 {:.2} p90 {:.2} p99 {:.2} max {:.2}\n",
            ms(self.percentile(50.0)),
            ms(self.percentile(75.0)),
            ms(self.percentile(90.0)),
            ms(self.percentile(99.0)),
            ms(self.latencies.last().copied().unwrap_or_default()),
        ));
        out.push_str(&format!(
            "All done {total} calls in {:.3} s: {:.1} qps\n",
            self.elapsed.as_secs_f64(),
            total as f64 / self.elapsed.as_secs_f64().max(1e-9)
        ));
        out
    }
}

/// Parses `fortio load` options: `-c N -qps Q -n M [-H name:value]... [-timeout 5s] URL`.
pub fn parse(args: &[&str]) -> Result<LoadOptions> {
    let mut o = LoadOptions {
        connections: 4,
        qps: 8.0,
        requests: 40,
        url: String::new(),
        headers: Vec::new(),
        timeout: Duration::from_secs(5),
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || {
            it.next()
                .copied()
                .with_context(|| format!("{a} needs a value"))
        };
        match *a {
            "-c" => o.connections = value()?.parse().context("-c")?,
            "-qps" => o.qps = value()?.parse().context("-qps")?,
            "-n" => o.requests = value()?.parse().context("-n")?,
            "-H" => {
                let h = value()?;
                let (k, v) = h.split_once(':').context("-H needs name:value")?;
                o.headers.push((k.trim().to_string(), v.trim().to_string()));
            }
            "-timeout" => {
                let t = value()?;
                let secs: f64 = t.trim_end_matches('s').parse().context("-timeout")?;
                o.timeout = Duration::from_secs_f64(secs);
            }
            "-quiet" | "-loglevel" => {}
            url if !url.starts_with('-') => o.url = url.to_string(),
            other => bail!("unknown fortio load option {other}"),
        }
    }
    if o.url.is_empty() {
        bail!("usage: keelson app fortio load -c N -qps Q -n M [-H name:value] URL");
    }
    if o.connections == 0 || o.requests == 0 {
        bail!("-c and -n must be at least 1");
    }
    // At most 100,000 requests and 1,000 connections: a load loop always ends.
    o.requests = o.requests.min(100_000);
    o.connections = o.connections.min(1000);
    Ok(o)
}

/// Runs the load and returns what came of it.
pub async fn run(o: &LoadOptions) -> Result<LoadResult> {
    let uri: hyper::Uri = o.url.parse().context("the URL")?;
    if uri.scheme_str() != Some("http") {
        bail!("only http:// URLs");
    }
    let host = uri.host().context("the URL has no host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let path = uri
        .path_and_query()
        .map_or("/".to_string(), |p| p.to_string());
    let authority = uri.authority().map_or(host.clone(), |a| a.to_string());
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..o.connections {
        // This connection's requests: the total spread evenly.
        let share = o.requests / o.connections + usize::from(c < o.requests % o.connections);
        let pace = (o.qps > 0.0).then(|| Duration::from_secs_f64(o.connections as f64 / o.qps));
        let (host, path, authority) = (host.clone(), path.clone(), authority.clone());
        let headers = o.headers.clone();
        let timeout = o.timeout;
        tasks.push(tokio::spawn(async move {
            let mut out: Vec<(i32, Duration)> = Vec::with_capacity(share);
            let mut sender = None;
            let mut next = Instant::now();
            for _ in 0..share {
                if let Some(p) = pace {
                    tokio::time::sleep_until(next.into()).await;
                    next += p;
                }
                let t0 = Instant::now();
                let one = async {
                    if sender.is_none() {
                        let tcp = TcpStream::connect((host.as_str(), port)).await?;
                        let _ = tcp.set_nodelay(true);
                        let (s, conn) = hyper::client::conn::http1::handshake(
                            hyper_util::rt::TokioIo::new(tcp),
                        )
                        .await?;
                        tokio::spawn(conn);
                        sender = Some(s);
                    }
                    let s = sender.as_mut().expect("set above");
                    let mut req = Request::get(path.as_str()).header("host", &authority);
                    for (k, v) in &headers {
                        req = req.header(k, v);
                    }
                    let resp = s.send_request(req.body(Full::new(Bytes::new()))?).await?;
                    let close = resp
                        .headers()
                        .get(hyper::header::CONNECTION)
                        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                    let code = i32::from(resp.status().as_u16());
                    resp.into_body().collect().await?;
                    anyhow::Ok((code, close))
                };
                let code = match tokio::time::timeout(timeout, one).await {
                    Ok(Ok((code, close))) => {
                        if close {
                            sender = None;
                        }
                        code
                    }
                    _ => {
                        sender = None;
                        -1
                    }
                };
                out.push((code, t0.elapsed()));
            }
            out
        }));
    }
    let mut result = LoadResult::default();
    for t in tasks {
        for (code, took) in t.await? {
            *result.codes.entry(code).or_default() += 1;
            result.latencies.push(took);
        }
    }
    result.elapsed = started.elapsed();
    result.latencies.sort();
    Ok(result)
}

/// `keelson app fortio load ...`: runs it and prints the report.
pub fn main(args: &[&str]) -> Result<()> {
    let o = parse(args)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let result = rt.block_on(run(&o))?;
    print!("{}", result.report(&o));
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn options_parse_as_fortio_writes_them() {
        let o = super::parse(&[
            "-c",
            "3",
            "-qps",
            "0",
            "-n",
            "30",
            "-H",
            "x-user: tester",
            "http://h:8000/get",
        ])
        .unwrap();
        assert_eq!((o.connections, o.requests), (3, 30));
        assert_eq!(o.qps, 0.0);
        assert_eq!(o.headers, [("x-user".to_string(), "tester".to_string())]);
        assert!(super::parse(&["-c", "3"]).is_err());
    }
}
