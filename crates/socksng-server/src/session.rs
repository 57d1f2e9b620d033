//! One client connection from accept to close: client-network check, the handshake driven
//! through the sans-IO machine under the handshake timeout, authentication, the per-user
//! session limit, dispatch to CONNECT / BIND / UDP ASSOCIATE, and the one log line that
//! records the session when it ends.

use crate::admission::{NotChecked, StageSlot};
use crate::connect::{canonical_addr, connect_racing, interleave, reply_code_for};
use crate::policy::Verdict;
use crate::relay::{relay, RelayTimeouts};
use crate::server::Shared;
use socksng_proto::wire::ng::NgRequest;
use socksng_proto::{Address, Command, Event, Host, ReplyCode, ServerHandshake};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Largest handshake input buffered before a complete message; every SOCKS4/5 handshake
/// message fits well within it, so reaching it means the client is misbehaving.
const MAX_HANDSHAKE_BUFFER: usize = 4096;

/// Everything the end-of-session log line reports.
pub(crate) struct SessionLog {
    pub client: SocketAddr,
    pub user: Option<String>,
    pub command: &'static str,
    pub target: Option<Address>,
    pub connected: Option<SocketAddr>,
    pub up: AtomicU64,
    pub down: AtomicU64,
    pub outcome: String,
    started: Instant,
}

/// The line is written when the session ends, however it ends: a session dropped at shutdown
/// still reports who it was and what it moved.
impl Drop for SessionLog {
    fn drop(&mut self) {
        if self.outcome.is_empty() {
            self.outcome = "cut at shutdown".into();
        }
        self.emit();
    }
}

/// Logs a connection refused before it became a session (a limit was reached).
pub(crate) fn log_refused(client: SocketAddr, why: &str) {
    let mut log = SessionLog::new(canonical_addr(client));
    log.outcome = why.to_owned();
}

impl SessionLog {
    fn new(client: SocketAddr) -> Self {
        SessionLog {
            client,
            user: None,
            command: "-",
            target: None,
            connected: None,
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            outcome: String::new(),
            started: Instant::now(),
        }
    }

    pub(crate) fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn fail(&mut self, code: ReplyCode, why: impl std::fmt::Display) {
        self.outcome = format!("{}: {why}", code.description());
    }

    fn emit(&self) {
        let target = self.target.as_ref().map(|t| t.to_string());
        let connected = self.connected.map(|c| c.to_string());
        tracing::info!(
            client = %self.client,
            user = self.user.as_deref().unwrap_or("-"),
            command = self.command,
            target = target.as_deref().unwrap_or("-"),
            connected = connected.as_deref().unwrap_or("-"),
            bytes_up = self.up.load(Ordering::Relaxed),
            bytes_down = self.down.load(Ordering::Relaxed),
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome = %self.outcome,
            "session"
        );
    }
}

/// A connection after a successful handshake, holding the machine for the reply(s).
pub(crate) struct Handshaken {
    pub stream: TcpStream,
    pub hs: ServerHandshake,
    /// Bytes the client sent after its request (pipelined data for the target).
    pub early_data: Vec<u8>,
    pub user: Option<String>,
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
}

impl Handshaken {
    /// Sends a reply through the machine.
    pub async fn reply(&mut self, code: ReplyCode, bound: &Address) -> io::Result<()> {
        let mut out = Vec::with_capacity(32);
        self.hs
            .reply(code, bound, &mut out)
            .map_err(|e| io::Error::other(e.to_string()))?;
        self.stream.write_all(&out).await
    }

    /// Sends the success reply naming `bound`; false, with the outcome recorded, when the
    /// client is already gone.
    pub async fn succeed(&mut self, log: &mut SessionLog, bound: SocketAddr) -> bool {
        match self.reply(ReplyCode::SUCCEEDED, &Address::ip(bound)).await {
            Ok(()) => true,
            Err(e) => {
                log.outcome = format!("client gone before the reply: {e}");
                false
            }
        }
    }

    /// Sends a failure reply (best effort: the client may be gone) and records why.
    pub async fn refuse(
        &mut self,
        log: &mut SessionLog,
        code: ReplyCode,
        why: impl std::fmt::Display,
    ) {
        log.fail(code, why);
        if self.reply(code, &Address::unspecified()).await.is_ok() {
            linger_close(&mut self.stream).await;
        }
    }
}

/// Closes after a final failure reply so that the reply survives: send FIN, then read and
/// discard what the client already sent (pipelined data) for a moment. Closing with unread
/// input would make the kernel send a reset, which can destroy the reply before it is read.
async fn linger_close(stream: &mut TcpStream) {
    const LINGER: std::time::Duration = std::time::Duration::from_secs(2);
    const MAX_DISCARD: usize = 64 * 1024;
    if stream.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 1024];
    let mut discarded = 0;
    let drain = async {
        while discarded < MAX_DISCARD {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => return,
                Ok(n) => discarded += n,
            }
        }
    };
    let _ = timeout(LINGER, drain).await;
}

/// Serves one accepted connection to its end and logs it. `handshake_slot` is its place among
/// the connections still in their handshake, given back when the handshake ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    handshake_slot: StageSlot,
) {
    let peer = canonical_addr(peer);
    let mut log = SessionLog::new(peer);
    if !shared.policy.client_allowed(peer.ip()) {
        log.outcome = "client network not allowed".into();
        return;
    }
    // Nodelay and keepalive came with the accepted socket from the listener (server.rs).
    #[cfg(not(target_os = "linux"))]
    crate::connect::tune_stream(&stream, shared.cfg.timeouts.tcp_keepalive);
    let handshake_timeout = shared.cfg.timeouts.handshake;
    // The transient phases are boxed so that a long-lived relay's task is not sized for them.
    let result = Box::pin(timeout(
        handshake_timeout,
        handshake(shared, stream, peer, &mut log),
    ))
    .await;
    let (conn, asked) = match result {
        Err(_) => {
            log.outcome = format!("handshake timed out after {handshake_timeout:?}");
            return;
        }
        Ok(Err(why)) => {
            log.outcome = why;
            return;
        }
        Ok(Ok(x)) => x,
    };
    drop(handshake_slot);
    dispatch(conn, asked, &mut log).await;
}

async fn handshake(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    log: &mut SessionLog,
) -> Result<(Handshaken, Asked), String> {
    let mut hs = ServerHandshake::new(shared.handshake_config);
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(16);
    let mut user = None;
    loop {
        let progress = hs.handle_input(&buf, &mut out);
        let replied = !out.is_empty();
        if replied {
            let written = stream.write_all(&out).await;
            out.clear();
            written.map_err(|e| format!("handshake write failed: {e}"))?;
        }
        let progress = match progress {
            Ok(p) => p,
            Err(e) => {
                if replied {
                    linger_close(&mut stream).await;
                }
                return Err(format!("handshake failed: {e}"));
            }
        };
        buf.drain(..progress.consumed);
        let asked = match progress.event {
            Some(Event::Authenticate(auth)) => {
                let name = String::from_utf8_lossy(&auth.username).into_owned();
                let (ok, unchecked) =
                    match shared.authenticate(peer.ip(), &name, auth.password).await {
                        Ok(ok) => (ok, ""),
                        Err(NotChecked::QueueFull) => {
                            (false, " (not checked: too many password checks waiting)")
                        }
                        Err(NotChecked::AddressBusy) => (
                            false,
                            " (not checked: this address has password checks waiting)",
                        ),
                        Err(NotChecked::Throttled) => (
                            false,
                            " (not checked: too many failed logins from this address)",
                        ),
                    };
                log.user = Some(name.clone());
                let res = hs.auth_result(ok, &mut out);
                stream
                    .write_all(&out)
                    .await
                    .map_err(|e| format!("handshake write failed: {e}"))?;
                out.clear();
                if let Err(e) = res {
                    linger_close(&mut stream).await;
                    return Err(format!("handshake failed: {e}{unchecked}"));
                }
                user = Some(name);
                continue;
            }
            Some(Event::Request(r)) => Asked::Socks {
                command: r.command,
                address: r.address,
                socks4: false,
            },
            Some(Event::NgRequest(r)) => Asked::Ng(r),
            Some(Event::Socks4Request(r)) => Asked::Socks {
                command: Command::Connect,
                address: r.address,
                socks4: true,
            },
            None => {
                if buf.len() >= MAX_HANDSHAKE_BUFFER {
                    return Err("handshake failed: oversized message".into());
                }
                buf.reserve(512);
                let n = stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| format!("handshake read failed: {e}"))?;
                if n == 0 {
                    return Err(if buf.is_empty() && hs.method().is_none() {
                        "client closed before the greeting".into()
                    } else {
                        "client closed during the handshake".into()
                    });
                }
                continue;
            }
        };
        // Most clients wait for the reply: drop the handshake buffer rather than keep it for
        // the session's lifetime.
        let early_data = if buf.is_empty() { Vec::new() } else { buf };
        let conn = Handshaken {
            stream,
            hs,
            early_data,
            user,
            peer,
            shared,
        };
        return Ok((conn, asked));
    }
}

/// The request a handshake ended with.
enum Asked {
    /// A SOCKS5 or SOCKS4 request.
    Socks {
        command: Command,
        address: Address,
        socks4: bool,
    },
    /// A request only valid after SOCKS-NG negotiation.
    Ng(NgRequest),
}

async fn dispatch(mut conn: Handshaken, asked: Asked, log: &mut SessionLog) {
    // Named in the log before anything can refuse it.
    match &asked {
        Asked::Socks {
            command,
            address,
            socks4,
        } => {
            log.command = match (command, socks4) {
                (Command::Connect, true) => "socks4-connect",
                (c, _) => c.name(),
            };
            log.target = Some(address.clone());
        }
        Asked::Ng(request) => log.command = crate::ng::command_name(request),
    }
    let _session_slot = match conn.shared.sessions.enter(conn.peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            let code = match why {
                crate::admission::Refusal::Total => ReplyCode::GENERAL_FAILURE,
                crate::admission::Refusal::PerAddress => ReplyCode::NOT_ALLOWED,
            };
            let why = conn.shared.sessions.describe(why);
            conn.refuse(log, code, why).await;
            return;
        }
    };
    let _slot = match conn.shared.user_slot(conn.user.as_deref()) {
        Some(slot) => slot,
        None => {
            let why = "per-user session limit reached";
            conn.refuse(log, ReplyCode::NOT_ALLOWED, why).await;
            return;
        }
    };
    match asked {
        Asked::Socks {
            command: Command::Connect,
            address,
            ..
        } => connect(conn, address, log).await,
        // Boxed: their state is large and rare; inline, it would size every session's task.
        Asked::Socks {
            command: Command::Bind,
            address,
            ..
        } => Box::pin(crate::bind::bind(conn, address, log)).await,
        Asked::Socks {
            command: Command::UdpAssociate,
            address,
            ..
        } => Box::pin(crate::udp::associate(conn, address, log)).await,
        Asked::Ng(request) => Box::pin(crate::ng::serve(conn, request, log)).await,
    }
}

/// Resolves and policy-checks a destination: the allowed addresses in connection order, or
/// the reply code and reason for refusing it.
pub(crate) async fn allowed_addresses(
    shared: &Shared,
    user: Option<&str>,
    command: Command,
    address: &Address,
) -> Result<Vec<SocketAddr>, (ReplyCode, String)> {
    let policy = &shared.policy;
    let port = address.port;
    let (name, candidates) = match &address.host {
        Host::Ip(ip) => (
            None,
            vec![SocketAddr::new(crate::policy::canonical(*ip), port)],
        ),
        Host::Domain(name) => {
            if let Some(Verdict::Deny(why)) = policy.check_name(user, command, name, port) {
                return Err((ReplyCode::NOT_ALLOWED, why.to_string()));
            }
            let resolved = timeout(
                shared.cfg.timeouts.connect,
                shared.lookups.resolve(name, port),
            )
            .await
            .map_err(|_| {
                (
                    ReplyCode::HOST_UNREACHABLE,
                    format!("resolving {name} timed out"),
                )
            })?
            .map_err(|e| {
                (
                    ReplyCode::HOST_UNREACHABLE,
                    format!("cannot resolve {name}: {e}"),
                )
            })?;
            (Some(name.as_str()), resolved)
        }
    };
    let mut refusal = None;
    let allowed: Vec<SocketAddr> = candidates
        .into_iter()
        .filter(|a| match policy.check(user, command, name, a.ip(), port) {
            Verdict::Allow => true,
            Verdict::Deny(why) => {
                refusal.get_or_insert(format!("{} {why}", a.ip()));
                false
            }
        })
        .collect();
    if allowed.is_empty() {
        return Err((
            ReplyCode::NOT_ALLOWED,
            refusal.unwrap_or_else(|| "no address allowed".into()),
        ));
    }
    Ok(interleave(&allowed, shared.cfg.resolver.prefer))
}

/// Completes when the client's connection has been reset. A FIN alone may be a half-close (a
/// client that sent its data and waits for the answer), which is legitimate, and pipelined
/// data says nothing either: in both cases this waits forever and the session goes on,
/// bounded by its own timeouts.
pub(crate) async fn client_gone(stream: &TcpStream) {
    let mut byte = [0u8; 1];
    let mut buf = tokio::io::ReadBuf::new(&mut byte);
    // A peek that finds nothing clears the readiness, so a stale "readable" left by the
    // handshake cannot hide the reset that comes later.
    if std::future::poll_fn(|cx| stream.poll_peek(cx, &mut buf))
        .await
        .is_ok()
    {
        std::future::pending::<()>().await;
    }
}

async fn connect(mut conn: Handshaken, address: Address, log: &mut SessionLog) {
    let shared = conn.shared.clone();
    let limit = shared.cfg.timeouts.connect;
    // Resolving and connecting can take the connect timeout; a client whose connection is
    // reset meanwhile ends the session at once instead of holding its slot that long.
    let reach = async {
        let addrs = Box::pin(allowed_addresses(
            &shared,
            conn.user.as_deref(),
            Command::Connect,
            &address,
        ))
        .await?;
        match Box::pin(timeout(
            limit,
            connect_racing(
                &addrs,
                shared.cfg.resolver.attempt_delay,
                &shared.cfg.external,
                shared.cfg.timeouts.tcp_keepalive,
            ),
        ))
        .await
        {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err((reply_code_for(&e), e.to_string())),
            Err(_) => Err((
                ReplyCode::TTL_EXPIRED,
                format!("connect timed out after {limit:?}"),
            )),
        }
    };
    let reached = tokio::select! {
        r = reach => r,
        _ = client_gone(&conn.stream) => {
            log.outcome = "client gone before the target was reached".into();
            return;
        }
    };
    let (mut target, used) = match reached {
        Ok(t) => t,
        Err((code, why)) => return conn.refuse(log, code, why).await,
    };
    log.connected = Some(used);
    let bound = match target.local_addr() {
        Ok(a) => canonical_addr(a),
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    if !conn.succeed(log, bound).await {
        return;
    }
    if !conn.early_data.is_empty() {
        if let Err(e) = target.write_all(&conn.early_data).await {
            log.outcome = format!("target write failed: {e}");
            return;
        }
        log.add_up(conn.early_data.len() as u64);
        conn.early_data = Vec::new();
    }
    let end = relay(
        &mut conn.stream,
        &mut target,
        RelayTimeouts::from_config(&shared.cfg.timeouts),
        &log.up,
        &log.down,
    )
    .await;
    log.outcome = end.as_str().into();
}
