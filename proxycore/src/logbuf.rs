//! Log output in batches: lines collect in memory and go to stderr together at most
//! [`FLUSH_DELAY`] after the first of them (as Envoy flushes its access log files), so a
//! proxy logging a line per request makes one `write` per batch instead of one per line.
//! Warnings and errors go out at once, with everything before them, in order; so does a
//! batch that has grown past [`FLUSH_BYTES`]. [`flush`] empties the buffer (at exit, and
//! from the panic hook).
//!
//! A failed write (a full disk, a closed pipe) loses the lines, never the process: it is
//! counted in `keelson_log_write_failures_total` (docs/HARDENING.md, "disk full for logs").

use std::io::Write;
use std::sync::{Condvar, LazyLock, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The longest a line waits in the buffer.
pub const FLUSH_DELAY: Duration = Duration::from_millis(100);
/// A batch this large is written at once.
pub const FLUSH_BYTES: usize = 32 * 1024;

/// Log writes that failed since the process started.
pub static WRITE_FAILURES: LazyLock<prometheus_client::metrics::counter::Counter> =
    LazyLock::new(Default::default);

/// Writes `bytes` to stderr; a failure is counted, not returned.
fn to_stderr(bytes: &[u8]) {
    if std::io::stderr().write_all(bytes).is_err() {
        WRITE_FAILURES.inc();
    }
}

/// A `tracing_subscriber` writer to stderr, unbuffered, that never fails: the subscriber
/// reports a failed write by printing to stderr, which panics when stderr is what failed.
#[derive(Clone, Copy, Default)]
pub struct Stderr;

pub struct Unfailing;

impl Write for Unfailing {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        to_stderr(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = Unfailing;

    fn make_writer(&'a self) -> Unfailing {
        Unfailing
    }
}

#[derive(Default)]
struct Pending {
    buf: Vec<u8>,
    /// The flusher thread has been told to write this batch.
    armed: bool,
}

struct Shared {
    pending: Mutex<Pending>,
    wake: Condvar,
}

fn shared() -> &'static Shared {
    static SHARED: OnceLock<Shared> = OnceLock::new();
    SHARED.get_or_init(|| {
        // The thread that writes batches out; it sleeps until one is started.
        let spawned = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(flusher);
        if let Err(e) = spawned {
            eprintln!("logging: no flusher thread ({e}); lines go out one by one");
        }
        Shared {
            pending: Mutex::new(Pending::default()),
            wake: Condvar::new(),
        }
    })
}

fn lock() -> MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves bytes, not broken invariants: keep going.
    shared()
        .pending
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn flusher() {
    loop {
        {
            let mut p = lock();
            while !p.armed {
                p = shared()
                    .wake
                    .wait(p)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
        }
        std::thread::sleep(FLUSH_DELAY);
        let mut p = lock();
        write_out(&mut p);
    }
}

/// Writes the batch to stderr (under the lock, so batches stay in order).
fn write_out(p: &mut Pending) {
    if !p.buf.is_empty() {
        to_stderr(&p.buf);
        p.buf.clear();
    }
    p.armed = false;
}

/// Writes out whatever is buffered now.
pub fn flush() {
    write_out(&mut lock());
}

/// Installs a panic hook that flushes the buffer before the default hook reports the panic.
pub fn flush_on_panic() {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        flush();
        previous(info);
    }));
}

/// A `tracing_subscriber` writer that batches lines to stderr.
#[derive(Clone, Copy, Default)]
pub struct Batched;

/// One event's output: appended to the batch as it is written; written out when dropped if
/// the event is urgent or the batch is full, else handed to the flusher.
pub struct Line {
    urgent: bool,
}

impl Write for Line {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        lock().buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        written(&mut lock(), self.urgent);
    }
}

/// After a line: out at once when urgent or the batch is full, else within [`FLUSH_DELAY`].
fn written(p: &mut Pending, urgent: bool) {
    if urgent || p.buf.len() >= FLUSH_BYTES {
        write_out(p);
    } else if !p.armed && !p.buf.is_empty() {
        p.armed = true;
        shared().wake.notify_one();
    }
}

/// Adds lines formatted elsewhere (the waypoint's access log) to the batch, as INFO lines.
pub fn append(lines: &[u8]) {
    let mut p = lock();
    p.buf.extend_from_slice(lines);
    written(&mut p, false);
}

impl<'a> MakeWriter<'a> for Batched {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line { urgent: true }
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        // Levels order by verbosity: WARN and ERROR are the ones at or below WARN.
        Line {
            urgent: *meta.level() <= Level::WARN,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_wait_for_the_batch_and_urgent_ones_flush_it() {
        flush();
        let mut info = Line { urgent: false };
        info.write_all(b"one\n").unwrap();
        drop(info);
        assert_eq!(lock().buf, b"one\n");
        assert!(lock().armed);
        // The flusher writes it out within the delay.
        std::thread::sleep(FLUSH_DELAY * 3);
        assert!(lock().buf.is_empty() && !lock().armed);
        let mut info = Line { urgent: false };
        info.write_all(b"two\n").unwrap();
        drop(info);
        let mut warn = Batched.make_writer();
        warn.write_all(b"three\n").unwrap();
        drop(warn);
        assert!(lock().buf.is_empty());
    }
}
