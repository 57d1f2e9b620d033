//! A connection past its handshake, as the commands see it: `Handshaken` (the stream, the
//! handshake machine for the reply, the user), the `SessionLog` whose one line records the
//! session when it ends, destination resolution under the policy, and the ways a connection
//! is ended or watched.

use crate::dial::{canonical_addr, interleave};
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use crate::policy::Verdict;
use crate::shared::Shared;
use crate::stream::Plaintext;
use socksng_proto::{Address, Command, Host, ReplyCode, ServerHandshake};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::{timeout, Instant};

/// Everything the end-of-session log line reports.
pub(crate) struct SessionLog {
    pub client: SocketAddr,
    /// The user: logged in, or the name a failed login tried.
    pub user: Option<String>,
    /// Whether `user` logged in (by password or certificate).
    pub authenticated: bool,
    pub command: &'static str,
    pub target: Option<Address>,
    pub connected: Option<SocketAddr>,
    /// How the session left: "direct", or the upstream it went through (the upstreams it
    /// tried, when none worked); unset when it never got that far.
    pub via: Option<String>,
    pub up: Arc<AtomicU64>,
    pub down: Arc<AtomicU64>,
    /// The session's entry in the admin view, when it has one.
    pub live: Option<Arc<crate::admin::LiveSession>>,
    /// How it ended; unset when it is dropped means it was cut at shutdown.
    pub outcome: Option<SessionOutcome>,
    /// Whether the client came over TLS.
    pub tls: bool,
    /// The session's service class, once known.
    pub class: Option<String>,
    /// Where the session's audit record goes.
    pub audit: Option<Arc<crate::audit::Audit>>,
    started: Instant,
    started_at: std::time::SystemTime,
}

/// The line is written when the session ends, however it ends: a session dropped at shutdown
/// still reports who it was and what it moved.
impl Drop for SessionLog {
    fn drop(&mut self) {
        let outcome = self.outcome.take().unwrap_or_else(|| {
            let (side, why) = match self.live.as_ref().and_then(|l| l.kill_reason()) {
                Some(reason) => reason,
                None => (Side::Internal, "cut at shutdown".into()),
            };
            SessionOutcome::new(OutcomeKind::Cut, side, why)
        });
        self.emit(&outcome);
    }
}

/// Logs a connection refused before it became a session (a limit was reached).
pub(crate) fn log_refused(shared: &Shared, client: SocketAddr, why: &str) {
    let mut log = SessionLog::new(canonical_addr(client));
    log.audit = shared.audit.clone();
    log.end(OutcomeKind::Refused, Side::Policy, why);
}

impl SessionLog {
    pub(crate) fn new(client: SocketAddr) -> Self {
        SessionLog {
            client,
            user: None,
            authenticated: false,
            command: "-",
            target: None,
            connected: None,
            via: None,
            up: Arc::default(),
            down: Arc::default(),
            live: None,
            outcome: None,
            tls: false,
            class: None,
            audit: None,
            started: Instant::now(),
            started_at: std::time::SystemTime::now(),
        }
    }

    pub(crate) fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }

    /// Records the address the session is connected to (the target, or the incoming peer).
    pub(crate) fn connected_to(&mut self, peer: SocketAddr) {
        self.connected = Some(peer);
        if let Some(live) = &self.live {
            live.set_connected(peer);
        }
    }

    /// Records how the session ended.
    pub(crate) fn end(&mut self, kind: OutcomeKind, side: Side, detail: impl Into<String>) {
        self.outcome = Some(SessionOutcome::new(kind, side, detail));
    }

    /// Time since the connection was accepted.
    pub(crate) fn age(&self) -> std::time::Duration {
        self.started.elapsed()
    }

    /// The session's id in the admin view and the audit log (0: it never had one).
    pub(crate) fn id(&self) -> u64 {
        self.live.as_ref().map_or(0, |l| l.id)
    }

    /// The audit record of the session.
    fn audit_record(&self, outcome: &SessionOutcome) -> crate::audit::Record {
        use crate::audit::Record;
        // Who did it: the login (or the name a failed login tried), or for an anonymous
        // client its address.
        let who = match &self.user {
            Some(u) => u.clone(),
            None => self.client.ip().to_string(),
        };
        let duration_ms = self.started.elapsed().as_millis() as u64;
        Record::new("session")
            .with("session", self.id())
            .with("start", crate::audit::rfc3339(self.started_at))
            .with("duration_ms", duration_ms)
            .with("user", who)
            .with("authenticated", self.authenticated)
            .with("client", self.client.to_string())
            .with("tls", self.tls)
            .with("command", self.command)
            .with("target", self.target.as_ref().map(|t| t.to_string()))
            .with("connected", self.connected.map(|c| c.to_string()))
            .with("via", self.via.clone())
            .with("class", self.class.clone())
            .with("bytes_up", self.up.load(Ordering::Relaxed))
            .with("bytes_down", self.down.load(Ordering::Relaxed))
            .with("outcome", outcome.kind.as_str())
            .with("side", outcome.side.as_str())
            .with("reply", outcome.reply.map(|c| c.0))
            .with("detail", outcome.detail.clone())
    }

    fn emit(&self, outcome: &SessionOutcome) {
        crate::metrics::metrics().session_ended(
            self.command,
            outcome.kind.as_str(),
            self.class.as_deref(),
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        );
        if let Some(audit) = &self.audit {
            audit.record(self.audit_record(outcome));
        }
        let target = self.target.as_ref().map(|t| t.to_string());
        let connected = self.connected.map(|c| c.to_string());
        // The target names the session line for log filters, wherever the code lives.
        tracing::info!(
            target: "socksng_server::session",
            client = %self.client,
            user = self.user.as_deref().unwrap_or("-"),
            command = self.command,
            target = target.as_deref().unwrap_or("-"),
            connected = connected.as_deref().unwrap_or("-"),
            via = self.via.as_deref().unwrap_or("-"),
            class = self.class.as_deref().unwrap_or("-"),
            bytes_up = self.up.load(Ordering::Relaxed),
            bytes_down = self.down.load(Ordering::Relaxed),
            duration_ms = self.started.elapsed().as_millis() as u64,
            outcome_kind = outcome.kind.as_str(),
            side = outcome.side.as_str(),
            reply = outcome.reply.map_or(0, |c| c.0),
            // Last: its words run to the end of the line.
            outcome = %outcome,
            "session"
        );
    }
}

/// A connection after a successful handshake, holding the machine for the reply(s).
pub(crate) struct Handshaken {
    pub stream: Plaintext,
    /// The server's address on the client's connection.
    pub local: SocketAddr,
    pub hs: ServerHandshake,
    /// Bytes the client sent after its request (pipelined data for the target).
    pub early_data: Vec<u8>,
    pub user: Option<String>,
    /// The user logged in with a password (not by a certificate alone).
    pub password_login: bool,
    pub peer: SocketAddr,
    pub shared: Arc<Shared>,
    /// What the session's class holds its two directions to.
    pub paces: crate::shaping::Paces,
    /// How its outgoing connections are made (source, keepalive, the class's mark and DSCP).
    pub outgoing: crate::dial::Outgoing,
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
                let why = format!("client gone before the reply: {e}");
                log.end(OutcomeKind::Broken, Side::Client, why);
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
        self.refuse_with(log, SessionOutcome::refused(code, why))
            .await
    }

    /// Passes `early` (bytes the client sent ahead of the reply) to `other`, then relays the
    /// two until both are done; how it ended goes to `log`. `other` is the target or, for
    /// BIND and ACCEPT, the incoming peer.
    pub async fn relay_with(
        &mut self,
        other: &mut (impl crate::stream::Ready + AsyncWrite + Unpin),
        early: Vec<u8>,
        log: &mut SessionLog,
    ) {
        if !early.is_empty() {
            if let Err(e) = other.write_all(&early).await {
                log.end(
                    OutcomeKind::Broken,
                    Side::Target,
                    format!("target write failed: {e}"),
                );
                return;
            }
            log.add_up(early.len() as u64);
        }
        let end = crate::relay::relay(
            &self.stream,
            &*other,
            crate::relay::RelayTimeouts::from_config(&self.shared.cfg.timeouts),
            &self.paces,
            &log.up,
            &log.down,
        )
        .await;
        log.outcome = Some(end.outcome());
    }

    /// Sends the failure reply `outcome` carries (general failure if none) and records it.
    pub async fn refuse_with(&mut self, log: &mut SessionLog, mut outcome: SessionOutcome) {
        let code = outcome.reply.unwrap_or(ReplyCode::GENERAL_FAILURE);
        // The log says what the client heard (a plain client hears X'01' for a SOCKS-NG code).
        let sent = self.hs.code_as_sent(code);
        if outcome.reply.is_some() && sent != code {
            outcome =
                SessionOutcome::refused(sent, format_args!("{} ({code} here)", outcome.detail));
        }
        log.outcome = Some(outcome);
        if self.reply(code, &Address::unspecified()).await.is_ok() {
            linger_close(&mut self.stream).await;
        }
    }
}

/// Closes after a final failure reply so that the reply survives: send FIN, then read and
/// discard what the client already sent (pipelined data) for a moment. Closing with unread
/// input would make the kernel send a reset, which can destroy the reply before it is read.
pub(crate) async fn linger_close(stream: &mut (impl AsyncRead + AsyncWrite + Unpin)) {
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

/// Resolves and policy-checks a destination: the allowed addresses in connection order, or
/// the refusal.
pub(crate) async fn allowed_addresses(
    shared: &Shared,
    user: Option<&str>,
    command: Command,
    address: &Address,
) -> Result<Vec<SocketAddr>, SessionOutcome> {
    let policy = &shared.policy;
    let port = address.port;
    let (name, candidates) = match &address.host {
        Host::Ip(ip) => (
            None,
            vec![SocketAddr::new(crate::policy::canonical(*ip), port)],
        ),
        Host::Domain(name) => {
            if let Some(Verdict::Deny(why)) = policy.check_name(user, command, name, port) {
                return Err(SessionOutcome::refused(ReplyCode::NOT_ALLOWED, why));
            }
            let resolved = timeout(
                shared.cfg.timeouts.connect,
                shared.lookups.resolve(name, port),
            )
            .await
            .map_err(|_| {
                let why = format!("resolving {name} timed out");
                SessionOutcome::refused(ReplyCode::HOST_UNREACHABLE, why)
            })?
            .map_err(|e| {
                let why = format!("cannot resolve {name}: {e}");
                SessionOutcome::refused(ReplyCode::HOST_UNREACHABLE, why)
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
        let why = refusal.unwrap_or_else(|| "no address allowed".into());
        return Err(SessionOutcome::refused(ReplyCode::NOT_ALLOWED, why));
    }
    Ok(interleave(&allowed, shared.cfg.resolver.prefer))
}
