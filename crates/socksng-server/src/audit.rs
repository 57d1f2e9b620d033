//! The audit log, apart from the diagnostic log: one JSON object per line for every session
//! (written when it ends, with its start time), failed logins, and the SOCKS-NG listener and
//! token events. Records go through a bounded queue to a writer thread, so a slow or full disk
//! (or a reader that stopped reading a FIFO) never blocks a relay: a record that finds the
//! queue full is dropped and counted, and the writer says how many in a `dropped` record. The
//! sink is a file (reopened on request, for log rotation) or syslog.

use serde_json::{Map, Value};
use std::io::{self, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Where the records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sink {
    /// Appended to a file (created mode 0600), reopened by [`Audit::reopen`].
    File(PathBuf),
    /// To syslog (journald takes it from there), facility `authpriv`, tag `socksngd-audit`.
    Syslog,
}

/// One audit record being built: the event name and its fields, in the order given.
pub(crate) struct Record(Map<String, Value>);

impl Record {
    /// A record of `event`, stamped now.
    pub(crate) fn new(event: &str) -> Record {
        let mut fields = Map::new();
        fields.insert("time".into(), rfc3339(SystemTime::now()).into());
        fields.insert("event".into(), event.into());
        Record(fields)
    }

    /// Adds a field.
    pub(crate) fn with(mut self, key: &str, value: impl Into<Value>) -> Record {
        self.0.insert(key.into(), value.into());
        self
    }
}

/// A time as RFC 3339 UTC with milliseconds.
pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

enum Message {
    Line(String),
    /// Write what is queued, then end.
    Stop,
}

struct State {
    dropped: AtomicU64,
    reopen: AtomicBool,
}

/// The audit log of one server: cheap to clone handles, one writer thread.
pub struct Audit {
    tx: SyncSender<Message>,
    state: Arc<State>,
    finished: Mutex<Option<Receiver<()>>>,
}

impl Audit {
    /// Starts the writer for `sink` with room for `queue` records.
    pub fn start(sink: Sink, queue: usize) -> io::Result<Arc<Audit>> {
        let (tx, rx) = sync_channel(queue.max(1));
        let state = Arc::new(State {
            dropped: AtomicU64::new(0),
            reopen: AtomicBool::new(false),
        });
        let (done_tx, done_rx) = sync_channel(1);
        let writer_state = state.clone();
        std::thread::Builder::new()
            .name("socksng-audit".into())
            .spawn(move || {
                Writer::new(sink).run(rx, &writer_state);
                let _ = done_tx.send(());
            })?;
        Ok(Arc::new(Audit {
            tx,
            state,
            finished: Mutex::new(Some(done_rx)),
        }))
    }

    /// Queues a record; when the queue is full it is dropped and counted instead.
    pub(crate) fn record(&self, record: Record) {
        let line = Value::Object(record.0).to_string();
        match self.tx.try_send(Message::Line(line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.state.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records dropped so far and not yet reported in a `dropped` record.
    pub fn dropped(&self) -> u64 {
        self.state.dropped.load(Ordering::Relaxed)
    }

    /// Has the writer reopen its file before the next record (after log rotation moved it).
    pub fn reopen(&self) {
        self.state.reopen.store(true, Ordering::Relaxed);
    }

    /// Writes out what is queued and stops the writer, waiting at most `wait` (a sink that
    /// does not take data must not hold up the exit).
    pub fn finish(&self, wait: Duration) {
        let deadline = std::time::Instant::now() + wait;
        let Some(done) = self
            .finished
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        else {
            return;
        };
        let mut stop = Message::Stop;
        loop {
            match self.tx.try_send(stop) {
                Ok(()) => break,
                Err(TrySendError::Disconnected(_)) => return,
                Err(TrySendError::Full(m)) => stop = m,
            }
            if std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(std::time::Instant::now()));
    }
}

/// The writer thread's end of the sink.
struct Writer {
    sink: Sink,
    file: Option<io::BufWriter<std::fs::File>>,
    /// The last failure reported, so a broken disk logs once, not per record.
    failing: bool,
}

/// How often the writer looks for drops to report when no record comes.
const IDLE_CHECK: Duration = Duration::from_millis(500);

impl Writer {
    fn new(sink: Sink) -> Writer {
        if sink == Sink::Syslog {
            syslog::open();
        }
        Writer {
            sink,
            file: None,
            failing: false,
        }
    }

    fn run(mut self, rx: Receiver<Message>, state: &State) {
        loop {
            let mut next = match rx.recv_timeout(IDLE_CHECK) {
                Ok(m) => Some(m),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            if state.reopen.swap(false, Ordering::Relaxed) {
                self.flush();
                self.file = None;
            }
            let dropped = state.dropped.swap(0, Ordering::Relaxed);
            if dropped > 0 {
                let line = Value::Object(Record::new("dropped").with("count", dropped).0);
                if !self.write(&line.to_string()) {
                    state.dropped.fetch_add(dropped, Ordering::Relaxed);
                }
            }
            // A burst goes through the buffer and is flushed once the queue is empty.
            while let Some(message) = next {
                match message {
                    Message::Line(line) => {
                        if !self.write(&line) {
                            state.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Message::Stop => {
                        // Drops since the last look are reported before the end.
                        let dropped = state.dropped.swap(0, Ordering::Relaxed);
                        if dropped > 0 {
                            let line = Record::new("dropped").with("count", dropped);
                            self.write(&Value::Object(line.0).to_string());
                        }
                        self.flush();
                        return;
                    }
                }
                next = rx.try_recv().ok();
            }
            self.flush();
        }
        self.flush();
    }

    /// Writes one line; false when it was lost.
    fn write(&mut self, line: &str) -> bool {
        let path = match &self.sink {
            Sink::Syslog => {
                syslog::send(line);
                return true;
            }
            Sink::File(path) => path.clone(),
        };
        if self.file.is_none() {
            match open_append(&path) {
                Ok(f) => self.file = Some(io::BufWriter::with_capacity(64 * 1024, f)),
                Err(e) => return self.failed(format_args!("cannot open {}: {e}", path.display())),
            }
        }
        let Some(file) = self.file.as_mut() else {
            return false;
        };
        let written = file
            .write_all(line.as_bytes())
            .and_then(|()| file.write_all(b"\n"));
        match written {
            Ok(()) => {
                if self.failing {
                    self.failing = false;
                    tracing::info!(file = %path.display(), "audit log writable again");
                }
                true
            }
            Err(e) => {
                // Reopened at the next record: the disk may have room again, or a new file.
                self.file = None;
                self.failed(format_args!("cannot write {}: {e}", path.display()))
            }
        }
    }

    fn failed(&mut self, why: std::fmt::Arguments<'_>) -> bool {
        if !self.failing {
            self.failing = true;
            tracing::error!("audit log: {why}; records are dropped and counted until it works");
        }
        false
    }

    fn flush(&mut self) {
        if let Some(f) = self.file.as_mut() {
            if f.flush().is_err() {
                self.file = None;
            }
        }
    }
}

fn open_append(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .open(path)
}

/// The C library's syslog, which journald also reads.
mod syslog {
    /// The tag; syslog keeps the pointer, so it lives for the program.
    const IDENT: &std::ffi::CStr = c"socksngd-audit";

    pub(super) fn open() {
        // SAFETY: IDENT is a static NUL-terminated string, as openlog requires.
        unsafe {
            libc::openlog(
                IDENT.as_ptr(),
                libc::LOG_PID | libc::LOG_NDELAY,
                libc::LOG_AUTHPRIV,
            )
        }
    }

    pub(super) fn send(line: &str) {
        let Ok(text) = std::ffi::CString::new(line) else {
            return; // JSON escapes NUL, so this does not happen.
        };
        // SAFETY: both strings are NUL-terminated; "%s" takes exactly one string argument.
        unsafe { libc::syslog(libc::LOG_INFO, c"%s".as_ptr(), text.as_ptr()) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_path(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("socksng-audit-{}-{name}", std::process::id()));
        let _ = std::fs::remove_file(&dir);
        dir
    }

    #[test]
    fn records_are_json_lines_in_order() {
        let path = temp_path("order");
        let audit = Audit::start(Sink::File(path.clone()), 16).unwrap();
        for i in 0..10u64 {
            audit.record(Record::new("session").with("n", i).with("user", "alice"));
        }
        audit.finish(Duration::from_secs(5));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 10);
        for (i, l) in lines.iter().enumerate() {
            assert_eq!(l["event"], "session");
            assert_eq!(l["n"], i as u64);
            assert!(l["time"].as_str().unwrap().ends_with('Z'));
        }
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn reopen_follows_a_rotated_file() {
        let path = temp_path("rotate");
        let rotated = temp_path("rotate.1");
        let audit = Audit::start(Sink::File(path.clone()), 16).unwrap();
        audit.record(Record::new("first"));
        // Wait (bounded) until the writer has the file, so the rename moves it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0) == 0 {
            assert!(
                std::time::Instant::now() < deadline,
                "first record never written"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::rename(&path, &rotated).unwrap();
        audit.reopen();
        audit.record(Record::new("second"));
        audit.finish(Duration::from_secs(5));
        assert!(std::fs::read_to_string(&rotated)
            .unwrap()
            .contains("\"first\""));
        let now = std::fs::read_to_string(&path).unwrap();
        assert!(now.contains("\"second\"") && !now.contains("\"first\""));
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&rotated);
    }
}
