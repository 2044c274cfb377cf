//! `ztunnel`: accepts the upstream command line (`ztunnel proxy ztunnel`, `ztunnel version`).

use std::process::ExitCode;

use proxycore::config::{Config, ProcessEnv};
use tracing_subscriber::EnvFilter;

/// jemalloc, as upstream ztunnel uses: it recycles the large buffers of bulk transfers instead
/// of mapping and unmapping them (page faults were ~12% of a bulk-transfer profile with glibc).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

const USAGE: &str = "usage: ztunnel [proxy [ztunnel]] | version\n\nConfiguration comes from environment variables; see ARCHITECTURE.md.";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    match args.as_slice() {
        [] | ["proxy"] | ["proxy", "ztunnel"] => {}
        ["version"] | ["--version"] => {
            println!("keelson-ztunnel {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        ["-h"] | ["--help"] | ["help"] => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => {
            say(&format!("unknown arguments {other:?}\n{USAGE}"));
            return ExitCode::from(2);
        }
    }
    let cfg = match Config::from_source(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            say(&format!("ztunnel: {e}"));
            return ExitCode::from(2);
        }
    };
    init_logging(cfg.json_logs);
    raise_fd_limit();
    proxycore::runtime::return_freed_memory();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.worker_threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            say(&format!("ztunnel: cannot start the runtime: {e}"));
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(ztunnel::app::run(cfg)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "ztunnel failed");
            ExitCode::FAILURE
        }
    }
}

/// A line on stderr for a fatal error; the exit code still tells if stderr is unwritable.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(proxycore::logbuf::Stderr)
        // Colours only on a terminal: logs written to files stay plain text.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().flatten_event(true).init();
    } else {
        builder.init();
    }
}

/// Every proxied connection holds two sockets: raise the soft open-file limit to the hard one.
fn raise_fd_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                Ok(()) => tracing::info!(from = soft, to = hard, "raised the open-file limit"),
                Err(e) => tracing::warn!(error = %e, "cannot raise the open-file limit"),
            }
        }
    }
}
