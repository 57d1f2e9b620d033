//! Where log lines go: standard error, with info and debug lines gathered while the runtime is
//! busy and written in one call when it goes idle.
//!
//! A busy proxy logs one line per session, and a write(2) per line is one system call in every
//! 35 a short session costs. Lines wait in memory only while there is other work to do: each
//! runtime thread calls `on_park` just before it sleeps (tokio's `on_thread_park`), which
//! writes the batch, and a batch is also written once it holds `MAX_BYTES` or its first line is
//! `MAX_AGE` old. Only threads that have parked once batch their lines: another thread (the
//! multi-thread runtime's `block_on` caller, the blocking pool) may never park, so its lines go
//! out at once. Warnings and errors go out at once too, after whatever is pending, so the order
//! of lines is kept.

use std::cell::Cell;
use std::io::{self, Write};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// A batch is written once it holds this much.
const MAX_BYTES: usize = 16 * 1024;
/// ...or once its first line has waited this long (a runtime that never idles).
const MAX_AGE: Duration = Duration::from_secs(1);

thread_local! {
    /// Set on a thread once it has parked: it will park again, and flush then.
    static PARKS: Cell<bool> = const { Cell::new(false) };
}
static PENDING: Mutex<Pending> = Mutex::new(Pending {
    bytes: Vec::new(),
    since: None,
});

struct Pending {
    bytes: Vec<u8>,
    since: Option<Instant>,
}

impl Pending {
    fn write_out(&mut self) {
        if !self.bytes.is_empty() {
            // A vanished log reader must not stop the server; the lines are dropped.
            let _ = io::stderr().lock().write_all(&self.bytes);
            self.bytes.clear();
        }
        self.since = None;
    }
}

fn pending() -> std::sync::MutexGuard<'static, Pending> {
    // A panic while holding the lock leaves only bytes behind, which are still fine to write.
    PENDING.lock().unwrap_or_else(|p| p.into_inner())
}

/// For `on_thread_park`: writes the pending lines, and lets this thread's later lines wait for
/// its next park.
pub fn on_park() {
    PARKS.with(|p| p.set(true));
    flush();
}

/// Writes the pending lines (also before the process exits).
pub fn flush() {
    pending().write_out();
}

/// The `MakeWriter` for the fmt subscriber: standard error, batched as the module describes.
pub struct Stderr;

/// The writer for one log line.
pub enum LineWriter {
    /// Added to the pending batch.
    Batched,
    /// Written now, after the pending batch.
    Now,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut p = pending();
        match self {
            LineWriter::Batched => {
                p.bytes.extend_from_slice(line);
                let since = *p.since.get_or_insert_with(Instant::now);
                if p.bytes.len() >= MAX_BYTES || since.elapsed() >= MAX_AGE {
                    p.write_out();
                }
            }
            LineWriter::Now => {
                p.write_out();
                // Ignored for the same reason as in `write_out`.
                let _ = io::stderr().lock().write_all(line);
            }
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Stderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter::Now
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> LineWriter {
        writer_for(*meta.level())
    }
}

fn writer_for(level: Level) -> LineWriter {
    // In tracing's order, WARN and ERROR are the levels at or below WARN.
    if level > Level::WARN && PARKS.with(Cell::get) {
        LineWriter::Batched
    } else {
        LineWriter::Now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_until_flushed_and_keeps_order_for_warnings() {
        // A thread that has not parked writes at once.
        assert!(matches!(writer_for(Level::INFO), LineWriter::Now));
        on_park();
        assert!(matches!(writer_for(Level::WARN), LineWriter::Now));
        let mut info = writer_for(Level::INFO);
        assert!(matches!(info, LineWriter::Batched));
        info.write_all(b"log_output test: 1\n").unwrap();
        info.write_all(b"log_output test: 2\n").unwrap();
        assert_eq!(pending().bytes, b"log_output test: 1\nlog_output test: 2\n");
        // A warning writes what is pending first, then itself.
        writer_for(Level::ERROR)
            .write_all(b"log_output test: 3\n")
            .unwrap();
        assert!(pending().bytes.is_empty());
        // A batch whose first line has waited too long goes out with the next line.
        info.write_all(b"log_output test: 4\n").unwrap();
        pending().since = Some(Instant::now() - MAX_AGE);
        info.write_all(b"log_output test: 5\n").unwrap();
        assert!(pending().bytes.is_empty());
        info.write_all(b"log_output test: 6\n").unwrap();
        flush();
        assert!(pending().bytes.is_empty() && pending().since.is_none());
    }
}
