//! The `keelson` command.

use std::process::ExitCode;

use keelson::bench::{self, BenchOptions};

const USAGE: &str = "usage:
  keelson bench l4 [--json] [--runs N] [--seconds N] [--idle-connections N]
      two pods in network namespaces, measured direct and through two ztunnels;
      each figure is the median of N runs (default 3)
  keelson version";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["bench", "l4", rest @ ..] => bench_l4(rest),
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
