//! The admin view: the registry of running sessions (who, from where, to where, bytes, age)
//! and the local control socket (`[admin] socket`, mode 0600, the server's own user only) on
//! which `socksngd sessions` lists them and `socksngd kill ID` ends one. One request line per
//! connection; the answer runs to the close.

use crate::outcome::Side;
use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

/// What the admin view knows of one running session.
pub(crate) struct LiveSession {
    pub id: u64,
    pub client: SocketAddr,
    started: Instant,
    /// User, command and target, once the handshake has told them.
    info: Mutex<(Option<String>, &'static str, String)>,
    /// What a reload judges the session by again, once the handshake has told it.
    request: Mutex<Option<Arc<Request>>>,
    /// The session's service class, once known.
    class: Mutex<Option<String>>,
    /// The target (or incoming peer) it is connected to, once it is.
    connected: Mutex<Option<SocketAddr>>,
    /// The session's byte counters (shared with its log line).
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    /// Fired by `kill`; the task that runs the session resets it.
    pub kill: CancellationToken,
    /// Why it was ended from outside (the administrator, a reload's new rules), and whose
    /// doing that counts as.
    killed: Mutex<Option<(Side, String)>>,
}

/// A session's request as the rules judge it.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub user: Option<String>,
    /// Logged in with a password from the users file (a reload that removes the user ends
    /// the session when running sessions are re-checked).
    pub password_login: bool,
    /// The SOCKS command the rules know it as; `None` for requests no rule names
    /// (capabilities).
    pub command: Option<socksng_proto::Command>,
    /// The destination as asked, for commands that have one.
    pub target: Option<socksng_proto::Address>,
}

impl LiveSession {
    /// Records what the handshake said.
    pub(crate) fn describe(&self, request: Request, command: &'static str, target: String) {
        let mut info = self.info.lock().unwrap_or_else(|p| p.into_inner());
        *info = (request.user.clone(), command, target);
        *self.request.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(request));
    }

    /// Records the session's class.
    pub(crate) fn set_class(&self, class: &str) {
        *self.class.lock().unwrap_or_else(|p| p.into_inner()) = Some(class.to_owned());
    }

    /// Records the address it is connected to.
    pub(crate) fn set_connected(&self, peer: SocketAddr) {
        *self.connected.lock().unwrap_or_else(|p| p.into_inner()) = Some(peer);
    }

    /// The address it is connected to, once it is.
    pub(crate) fn connected(&self) -> Option<SocketAddr> {
        *self.connected.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The request, once the handshake has told it.
    pub(crate) fn request(&self) -> Option<Arc<Request>> {
        self.request
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Why it was ended from outside, if it was.
    pub(crate) fn kill_reason(&self) -> Option<(Side, String)> {
        self.killed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Ends the session from outside, for `why`, counted as `side`'s doing.
    pub(crate) fn end(&self, side: Side, why: impl Into<String>) {
        *self.killed.lock().unwrap_or_else(|p| p.into_inner()) = Some((side, why.into()));
        self.kill.cancel();
    }
}

/// The running sessions, by id.
#[derive(Default)]
pub(crate) struct Live {
    sessions: Mutex<BTreeMap<u64, Arc<LiveSession>>>,
    next: AtomicU64,
}

impl Live {
    /// Registers a session from `client`; `remove` it when it ends.
    pub(crate) fn add(&self, client: SocketAddr) -> Arc<LiveSession> {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let session = Arc::new(LiveSession {
            id,
            client,
            started: Instant::now(),
            info: Mutex::new((None, "-", "-".into())),
            request: Mutex::new(None),
            class: Mutex::new(None),
            connected: Mutex::new(None),
            up: Arc::default(),
            down: Arc::default(),
            kill: CancellationToken::new(),
            killed: Mutex::new(None),
        });
        self.lock().insert(id, session.clone());
        session
    }

    pub(crate) fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    /// The running sessions, as they are now.
    pub(crate) fn all(&self) -> Vec<Arc<LiveSession>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<LiveSession>>> {
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// One JSON object per running session (those still in their handshake included).
    fn list(&self) -> String {
        let mut out = String::new();
        for s in self.lock().values() {
            let (user, command, target) = s.info.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let class = s.class.lock().unwrap_or_else(|p| p.into_inner()).clone();
            let line = serde_json::json!({
                "id": s.id,
                "client": s.client.to_string(),
                "user": user,
                "command": command,
                "target": target,
                "class": class,
                "bytes_up": s.up.load(Ordering::Relaxed),
                "bytes_down": s.down.load(Ordering::Relaxed),
                "age_s": s.started.elapsed().as_secs(),
            });
            out.push_str(&line.to_string());
            out.push('\n');
        }
        out
    }

    fn kill(&self, id: u64) -> bool {
        match self.lock().get(&id) {
            Some(s) => {
                s.end(Side::Internal, "ended by the administrator");
                true
            }
            None => false,
        }
    }
}

/// Binds the control socket at `path` (a stale socket file is replaced), readable and
/// writable by this user only.
pub(crate) fn bind(path: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if meta.file_type().is_socket() {
            std::fs::remove_file(path)?;
        }
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// How long a control client may take to send its request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers control requests until `stop` fires: `sessions`, or `kill ID`. A peer running as
/// another user than the server (root excepted) is refused, whatever the file mode says.
pub(crate) async fn serve(listener: UnixListener, live: Arc<Live>, stop: CancellationToken) {
    // SAFETY: geteuid has no preconditions.
    let own = unsafe { libc::geteuid() };
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((stream, _)) = accepted else {
            continue;
        };
        let live = live.clone();
        tokio::spawn(async move {
            let allowed = stream
                .peer_cred()
                .map(|c| c.uid() == own || c.uid() == 0)
                .unwrap_or(false);
            let (read, mut write) = stream.into_split();
            if !allowed {
                let _ = write.write_all(b"refused: not the server's user\n").await;
                return;
            }
            let mut line = String::new();
            let mut reader = BufReader::new(read).take(256);
            let got = tokio::time::timeout(REQUEST_TIMEOUT, reader.read_line(&mut line)).await;
            if !matches!(got, Ok(Ok(n)) if n > 0) {
                return;
            }
            let answer = match line.split_whitespace().collect::<Vec<_>>().as_slice() {
                ["sessions"] => live.list(),
                ["kill", id] => match id.parse::<u64>() {
                    Ok(id) if live.kill(id) => {
                        tracing::info!(session = id, "session ended by the administrator");
                        format!("ended session {id}\n")
                    }
                    Ok(id) => format!("error: no session {id}\n"),
                    Err(_) => format!("error: not a session id: {id}\n"),
                },
                _ => "error: requests are `sessions` and `kill ID`\n".into(),
            };
            let _ = write.write_all(answer.as_bytes()).await;
        });
    }
}

/// Sends one request to the control socket at `path` and returns the answer (for the
/// `socksngd sessions` and `socksngd kill` commands).
pub fn request(path: &Path, request: &str) -> io::Result<String> {
    let mut stream = std::os::unix::net::UnixStream::connect(path)?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    stream.write_all(format!("{request}\n").as_bytes())?;
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    Ok(answer)
}
