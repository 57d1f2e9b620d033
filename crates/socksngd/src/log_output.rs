//! Where log lines go: standard error or a log file, written by a thread of its own, so that a
//! log reader that stops reading (a full pipe) or a slow disk never stops the server.
//!
//! Runtime threads only append lines to a bounded buffer in memory. Beyond `MAX_PENDING` bytes
//! lines are dropped and counted, and the writer reports how many once it can write again.
//!
//! A busy proxy logs one line per session, and a write(2) per line would be one system call in
//! every 35 a short session costs; waking the writer thread for every line would cost two
//! context switches more. So info and debug lines wait: the writer wakes by itself when the
//! first pending line is `MAX_AGE` old, or is woken when the buffer holds `BATCH_BYTES`, and
//! writes everything pending in one call. Warnings and errors wake it at once; the order of
//! lines is kept.
//!
//! The log file (if any) is opened for appending and opened again on `reopen`, which the
//! binary calls on SIGHUP so that logrotate can move the old file away.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;

/// The writer is woken once this much is pending.
const BATCH_BYTES: usize = 16 * 1024;
/// ...or once the first pending line has waited this long.
const MAX_AGE: Duration = Duration::from_millis(100);
/// Lines beyond this much unwritten are dropped (and counted).
const MAX_PENDING: usize = 1024 * 1024;
/// How long `flush` waits for the writer before the process exits anyway.
const FLUSH_DEADLINE: Duration = Duration::from_secs(2);

/// Where the writer writes.
enum Sink {
    Stderr,
    File { path: PathBuf, file: Option<File> },
}

struct State {
    pending: Vec<u8>,
    since: Option<Instant>,
    dropped: u64,
    /// The writer should run now.
    wake: bool,
    /// A batch is being written.
    writing: bool,
    reopen: bool,
    started: bool,
}

static STATE: Mutex<State> = Mutex::new(State {
    pending: Vec::new(),
    since: None,
    dropped: 0,
    wake: false,
    writing: false,
    reopen: false,
    started: false,
});
/// Wakes the writer.
static WORK: Condvar = Condvar::new();
/// Tells `flush` that a batch went out.
static WRITTEN: Condvar = Condvar::new();

fn state() -> MutexGuard<'static, State> {
    // A panic while holding the lock leaves only bytes behind, which are still fine to write.
    STATE.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the writer thread, writing to `file` (appended) or standard error. A file that
/// cannot be opened is an error, so that `run` fails at start rather than log nowhere.
pub fn start(file: Option<PathBuf>) -> io::Result<()> {
    let sink = match file {
        None => Sink::Stderr,
        Some(path) => {
            let file = open_log(&path)?;
            Sink::File {
                path,
                file: Some(file),
            }
        }
    };
    state().started = true;
    std::thread::Builder::new()
        .name("socksngd-log".into())
        .spawn(move || writer(sink))?;
    Ok(())
}

fn open_log(path: &PathBuf) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| io::Error::new(e.kind(), format!("log file {}: {e}", path.display())))
}

fn writer(mut sink: Sink) {
    loop {
        let (batch, dropped, reopen) = {
            let mut s = state();
            while !s.wake {
                let wait = match s.since {
                    Some(t) => MAX_AGE.saturating_sub(t.elapsed()),
                    None => Duration::from_secs(3600),
                };
                let (next, timeout) = WORK
                    .wait_timeout(s, wait)
                    .unwrap_or_else(|p| p.into_inner());
                s = next;
                if timeout.timed_out() && s.since.is_some() {
                    break;
                }
            }
            s.wake = false;
            s.writing = true;
            s.since = None;
            let dropped = std::mem::take(&mut s.dropped);
            let reopen = std::mem::take(&mut s.reopen);
            (std::mem::take(&mut s.pending), dropped, reopen)
        };
        if reopen {
            if let Sink::File { path, file } = &mut sink {
                // The old file (moved away by logrotate) is closed; on failure the lines are
                // lost rather than the server stopped, and the next SIGHUP tries again.
                *file = None;
                match open_log(path) {
                    Ok(f) => *file = Some(f),
                    Err(e) => eprintln!("socksngd: cannot reopen {e}"),
                }
            }
        }
        // Failures are ignored: a vanished log reader must not stop the server.
        let mut out = |bytes: &[u8]| match &mut sink {
            Sink::Stderr => {
                let _ = io::stderr().lock().write_all(bytes);
            }
            Sink::File { file: Some(f), .. } => {
                let _ = f.write_all(bytes);
            }
            Sink::File { file: None, .. } => {}
        };
        if dropped > 0 {
            let note = format!(
                "socksngd: {dropped} log line(s) dropped: the log output was not keeping up\n"
            );
            out(note.as_bytes());
        }
        if !batch.is_empty() {
            out(&batch);
        }
        let mut s = state();
        s.writing = false;
        // Hand the allocation back for the next batch, unless it grew large in a burst.
        if s.pending.is_empty() && batch.capacity() <= 4 * BATCH_BYTES {
            let mut batch = batch;
            batch.clear();
            s.pending = batch;
        }
        WRITTEN.notify_all();
    }
}

/// Asks the writer to open the log file again (after logrotate moved it).
pub fn reopen() {
    let mut s = state();
    s.reopen = true;
    s.wake = true;
    WORK.notify_one();
}

/// Waits (boundedly: the output may be stuck) until everything pending is written; called
/// before the process exits.
pub fn flush() {
    let deadline = Instant::now() + FLUSH_DEADLINE;
    let mut s = state();
    if !s.started {
        return;
    }
    s.wake = true;
    WORK.notify_one();
    while !s.pending.is_empty() || s.writing || s.wake {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        s = WRITTEN
            .wait_timeout(s, left)
            .unwrap_or_else(|p| p.into_inner())
            .0;
    }
}

/// Adds a line; `urgent` wakes the writer at once.
fn push(line: &[u8], urgent: bool) {
    let mut s = state();
    if !s.started {
        // Before the writer runs (or in unit tests) lines go straight out.
        drop(s);
        let _ = io::stderr().lock().write_all(line);
        return;
    }
    if s.pending.len() + line.len() > MAX_PENDING {
        s.dropped += 1;
        return;
    }
    s.pending.extend_from_slice(line);
    if s.since.is_none() {
        s.since = Some(Instant::now());
        // The writer may be in its long wait: it must start counting this line's age.
        WORK.notify_one();
    }
    let due = urgent || s.pending.len() >= BATCH_BYTES;
    if due && !s.wake {
        s.wake = true;
        WORK.notify_one();
    }
}

/// The `MakeWriter` for the fmt subscriber.
pub struct Output;

/// The writer for one log line.
pub enum LineWriter {
    /// Waits for the batch to age or fill.
    Batched,
    /// Wakes the writer at once.
    Now,
}

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        push(line, matches!(self, LineWriter::Now));
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Output {
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
    if level > Level::WARN {
        LineWriter::Batched
    } else {
        LineWriter::Now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_batches_through_the_writer_thread() {
        assert!(matches!(writer_for(Level::INFO), LineWriter::Batched));
        assert!(matches!(writer_for(Level::WARN), LineWriter::Now));
        let dir = std::env::temp_dir().join(format!("socksngd-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("log");
        start(Some(path.clone())).unwrap();
        writer_for(Level::INFO).write_all(b"line 1\n").unwrap();
        writer_for(Level::ERROR).write_all(b"line 2\n").unwrap();
        flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 1\nline 2\n");
        // Rotation: the file is moved away, reopen creates a new one.
        let rotated = dir.join("log.1");
        std::fs::rename(&path, &rotated).unwrap();
        reopen();
        flush();
        writer_for(Level::INFO).write_all(b"line 3\n").unwrap();
        flush();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "line 3\n");
        // A flood beyond the bound is dropped and counted rather than queued without end.
        let line = vec![b'x'; 1023];
        let mut s = state();
        s.pending.resize(MAX_PENDING - 10, b'.');
        drop(s);
        writer_for(Level::INFO).write_all(&line).unwrap();
        assert_eq!(state().dropped, 1);
        state().pending.clear();
        flush();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("1 log line(s) dropped"), "{text}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
