//! What both benchmarks measure with: percentiles, medians over runs, and a process's CPU
//! time and memory from `/proc`.

use anyhow::{Context, Result};

pub fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let idx = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[idx]
}

/// The median over runs of one figure.
pub fn median_of<T>(runs: &[T], f: impl Fn(&T) -> f64) -> f64 {
    percentile(&runs.iter().map(f).collect::<Vec<_>>(), 50.0)
}

/// The median over the runs that have the figure; `None` if none has.
pub fn median_of_some<T>(runs: &[T], f: impl Fn(&T) -> Option<f64>) -> Option<f64> {
    let v: Vec<f64> = runs.iter().filter_map(f).collect();
    (!v.is_empty()).then(|| percentile(&v, 50.0))
}

/// CPU seconds (user + system) of a process so far.
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let (user, system) = cpu_split(pid)?;
    Ok(user + system)
}

/// User and system CPU seconds a process has used so far.
pub fn cpu_split(pid: u32) -> Result<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let after = stat.rsplit_once(')').context("bad /proc stat")?.1;
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> Result<f64> {
        Ok(f.get(i).context("short /proc stat")?.parse::<f64>()? / 100.0)
    };
    Ok((ticks(11)?, ticks(12)?))
}

/// Resident set size of a process, in KiB.
pub fn rss_kib(pid: u32) -> Result<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("bad VmRSS")?
        .parse()?)
}
