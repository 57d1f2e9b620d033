//! The server: listening sockets, accept loops with back-off on descriptor exhaustion, the
//! handshake stage every accepted connection must find a place in, and graceful shutdown
//! (stop accepting, drain for the grace period, then reset what is left).

use crate::admission::StageSlot;
use crate::config::Config;
use crate::session::Intake;
use crate::shared::{Current, Shared};
use crate::users::{Accounts, UsersError};
use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: io::Error,
    },
    /// The users file is missing or broken.
    #[error(transparent)]
    Users(#[from] UsersError),
    /// The admin control socket could not be made.
    #[error("cannot make the admin socket {path}: {source}")]
    Admin {
        /// The socket's path.
        path: std::path::PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// The TLS certificate, key or client CAs are missing or broken.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// The audit log's writer could not start.
    #[error("cannot start the audit log: {0}")]
    Audit(io::Error),
}

/// Why a reload was refused (the configuration in force stays).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReloadError {
    /// The users file is missing or broken.
    #[error(transparent)]
    Users(#[from] UsersError),
}

/// A server with its sockets bound, ready to [`Server::run`].
pub struct Server {
    current: Arc<Current>,
    listeners: Vec<(TcpListener, Intake)>,
    metrics: Option<TcpListener>,
    /// `[discovery] http`: PvD JSON and the PAC file.
    discovery: Option<TcpListener>,
    admin: Option<(tokio::net::UnixListener, std::path::PathBuf)>,
}

/// Changes a running server: a new configuration, the TLS certificate read again, the audit
/// log reopened (for SIGHUP and SIGUSR1).
#[derive(Clone)]
pub struct ServerHandle {
    current: Arc<Current>,
}

/// What a reload did.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ReloadReport {
    /// Settings that changed but keep their old value until a restart (listen addresses,
    /// the server-wide admission limits and pools, the endpoints, the audit sink).
    pub needs_restart: Vec<&'static str>,
    /// Running sessions the new rules refuse, ended (with `reload.recheck_sessions`).
    pub sessions_ended: usize,
}

impl ServerHandle {
    /// New TLS handshakes use the certificate and key as the files now hold them; running
    /// sessions are untouched. On error the old pair stays in force. Without TLS configured
    /// this does nothing.
    pub fn reload_tls(&self) -> Result<bool, crate::tls::TlsError> {
        match &self.current.get().tls {
            Some(tls) => tls.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Puts `cfg` (already validated) in force for new sessions: users and passwords, rules,
    /// routes, classes and per-user limits, and the TLS certificate. Sessions already running
    /// keep the rules they started with, unless `cfg.reload.recheck_sessions` asks for them
    /// to be judged again: those the new rules refuse are ended (and audited as such). On
    /// error nothing changes.
    pub fn reload(&self, cfg: Config) -> Result<ReloadReport, ReloadError> {
        let old = self.current.get();
        let users = Accounts::load(&cfg)?;
        if let Some(tls) = &old.tls {
            // The pair is read again; a broken one leaves the old one (and says so).
            match tls.reload() {
                Ok(()) => tracing::info!("TLS certificate and key reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in force")
                }
            }
        }
        let report = ReloadReport {
            needs_restart: restart_only_changes(&old.cfg, &cfg),
            sessions_ended: 0,
        };
        let judge_running = cfg.reload.recheck_sessions;
        let new = Arc::new(old.reloaded(cfg, users));
        self.current.set(new.clone());
        let sessions_ended = if judge_running { recheck(&new) } else { 0 };
        Ok(ReloadReport {
            sessions_ended,
            ..report
        })
    }

    /// Has the audit log reopen its file before the next record (log rotation).
    pub fn reopen_audit(&self) {
        if let Some(audit) = &self.current.get().audit {
            audit.reopen();
        }
    }
}

/// Judges the running sessions again under `shared`'s rules and ends those it refuses.
/// Sessions still in their handshake finish it under the rules they started with.
fn recheck(shared: &Shared) -> usize {
    let mut ended = 0;
    for session in shared.live.all() {
        let Some(request) = session.request() else {
            continue;
        };
        if let Some(why) = refusal(shared, &session, &request) {
            tracing::info!(session = session.id, %why, "reload: ending a running session the new rules refuse");
            let why = format!("refused by the reloaded configuration: {why}");
            session.end(crate::outcome::Side::Policy, why);
            ended += 1;
        }
    }
    ended
}

/// Why the rules of `shared` refuse a running session, if they do.
fn refusal(
    shared: &Shared,
    session: &crate::admin::LiveSession,
    request: &crate::admin::Request,
) -> Option<String> {
    use crate::policy::Verdict;
    if !shared.policy.client_allowed(session.client.ip()) {
        return Some("client network not allowed".into());
    }
    let user = request.user.as_deref();
    if let (Some(name), true) = (user, request.password_login) {
        if !shared.users.as_ref().is_some_and(|db| db.knows(name)) {
            return Some(format!("user {name} no longer exists"));
        }
    }
    let command = request.command?;
    if let Some(socksng_proto::Address {
        host: socksng_proto::Host::Domain(name),
        port,
    }) = &request.target
    {
        if let Some(Verdict::Deny(why)) =
            shared
                .policy
                .check_name(user, command, name.as_str(), *port)
        {
            return Some(why.to_string());
        }
    }
    let name = match &request.target {
        Some(socksng_proto::Address {
            host: socksng_proto::Host::Domain(name),
            ..
        }) => Some(name.as_str()),
        _ => None,
    };
    let peer = session.connected().or_else(|| match &request.target {
        Some(socksng_proto::Address {
            host: socksng_proto::Host::Ip(ip),
            port,
        }) => Some(SocketAddr::new(*ip, *port)),
        _ => None,
    })?;
    match shared
        .policy
        .check(user, command, name, peer.ip(), peer.port())
    {
        Verdict::Deny(why) => Some(why.to_string()),
        Verdict::Allow => None,
    }
}

/// The settings a reload cannot change, by name, where `new` differs from `old`.
fn restart_only_changes(old: &Config, new: &Config) -> Vec<&'static str> {
    let (o, n) = (&old.limits, &new.limits);
    let checks: [(&'static str, bool); 13] = [
        ("listen", old.listen != new.listen),
        ("tls", old.tls != new.tls),
        ("workers", old.workers != new.workers),
        ("metrics.listen", old.metrics.listen != new.metrics.listen),
        ("admin.socket", old.admin.socket != new.admin.socket),
        ("discovery.http", old.discovery.http != new.discovery.http),
        ("audit", old.audit != new.audit),
        (
            "limits.max_sessions",
            o.max_sessions != n.max_sessions
                || o.max_sessions_per_address != n.max_sessions_per_address,
        ),
        (
            "limits.max_handshakes",
            o.max_handshakes != n.max_handshakes
                || o.max_handshakes_per_address != n.max_handshakes_per_address,
        ),
        (
            "limits.password_checks",
            o.password_checks != n.password_checks || o.password_queue != n.password_queue,
        ),
        (
            "limits.login_failures",
            o.login_failures_burst != n.login_failures_burst
                || o.login_failures_per_minute != n.login_failures_per_minute,
        ),
        ("limits.lookups", o.lookups != n.lookups),
        (
            "log_file",
            old.log_file != new.log_file || old.log_level != new.log_level,
        ),
    ];
    checks
        .into_iter()
        .filter(|(_, changed)| *changed)
        .map(|(name, _)| name)
        .collect()
}

fn listen_socket(addr: SocketAddr, keepalive: std::time::Duration) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Inherited by every accepted client connection (Linux copies them on accept).
    crate::dial::tune_socket(socket2::SockRef::from(&socket), keepalive);
    if addr.is_ipv6() {
        // So that [::]:1080 and 0.0.0.0:1080 can both be listed.
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

impl Server {
    /// Loads the users file, builds the policy and binds every listen address. Must be called
    /// within a tokio runtime.
    pub fn bind(cfg: Config) -> Result<Server, ServerError> {
        let users = Accounts::load(&cfg)?;
        let tls = match &cfg.tls {
            Some(t) => Some(crate::tls::TlsService::new(t, &cfg.base_dir)?),
            None => None,
        };
        let plain_intake = match &cfg.tls {
            Some(t) if t.on_plain_listeners => Intake::PlainOrTls,
            _ => Intake::Plain,
        };
        let tls_listen = cfg.tls.iter().flat_map(|t| t.listen.iter());
        let addresses: Vec<(SocketAddr, Intake)> = cfg
            .listen
            .iter()
            .map(|&a| (a, plain_intake))
            .chain(tls_listen.map(|&a| (a, Intake::Tls)))
            .collect();
        let mut listeners = Vec::with_capacity(addresses.len());
        let mut unavailable = None;
        for (addr, intake) in addresses {
            match listen_socket(addr, cfg.timeouts.tcp_keepalive) {
                Ok(l) => listeners.push((l, intake)),
                // A host without IPv6 (or without that address) should still serve the rest,
                // as the built-in default lists both 127.0.0.1 and ::1.
                Err(source) if is_address_unavailable(&source) => {
                    tracing::warn!(listen = %addr, error = %source, "address not available here; not listening on it");
                    unavailable = Some(ServerError::Listen { addr, source });
                }
                Err(source) => return Err(ServerError::Listen { addr, source }),
            }
        }
        if listeners.is_empty() {
            if let Some(e) = unavailable {
                return Err(e);
            }
        }
        let metrics = match cfg.metrics.listen {
            Some(addr) => Some(
                listen_socket(addr, Duration::ZERO)
                    .map_err(|source| ServerError::Listen { addr, source })?,
            ),
            None => None,
        };
        let discovery = match cfg.discovery.http {
            Some(addr) => Some(
                listen_socket(addr, Duration::ZERO)
                    .map_err(|source| ServerError::Listen { addr, source })?,
            ),
            None => None,
        };
        let admin = match &cfg.admin.socket {
            Some(path) => {
                let path = cfg.path(path);
                let listener = crate::admin::bind(&path).map_err(|source| ServerError::Admin {
                    path: path.clone(),
                    source,
                })?;
                Some((listener, path))
            }
            None => None,
        };
        let audit = match cfg.audit.sink(&cfg.base_dir) {
            Some(sink) => Some(
                crate::audit::Audit::start(sink, cfg.audit.queue).map_err(ServerError::Audit)?,
            ),
            None => None,
        };
        let shared = Shared::new(cfg, users, tls, audit);
        Ok(Server {
            current: Arc::new(Current::new(shared)),
            listeners,
            metrics,
            discovery,
            admin,
        })
    }

    /// The bound addresses (useful when a port was 0): the plain listeners, then the TLS-only
    /// ones.
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|(l, _)| l.local_addr().ok())
            .collect()
    }

    /// Where the Prometheus endpoint listens, when configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The handle that changes the server while it runs (reload, audit log reopening).
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            current: self.current.clone(),
        }
    }

    /// Serves until `shutdown` is cancelled, then stops accepting, lets sessions drain for
    /// the configured grace period and cuts the rest (their clients see a reset, not a clean
    /// end that could pass for a complete transfer).
    pub async fn run(self, shutdown: CancellationToken) -> RunSummary {
        self.run_until(shutdown, CancellationToken::new()).await
    }

    /// [`Server::run`], with a second token that ends the grace period early (a second
    /// SIGTERM): the remaining sessions are reset at once.
    pub async fn run_until(
        self,
        shutdown: CancellationToken,
        cut_now: CancellationToken,
    ) -> RunSummary {
        let shared = self.current.get();
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let cut = Arc::new(AtomicUsize::new(0));
        let mut accept_loops = Vec::new();
        let mut admin_path = None;
        if let Some((listener, path)) = self.admin {
            tracing::info!(socket = %path.display(), "admin control socket ready");
            admin_path = Some(path);
            accept_loops.push(tokio::spawn(crate::admin::serve(
                listener,
                shared.live.clone(),
                shutdown.clone(),
            )));
        }
        #[cfg(feature = "metrics")]
        if let Some(listener) = self.metrics {
            if let Ok(a) = listener.local_addr() {
                tracing::info!(metrics = %a, "serving Prometheus metrics at /metrics");
            }
            accept_loops.push(tokio::spawn(crate::metrics::serve(
                listener,
                shutdown.clone(),
            )));
        }
        if let Some(listener) = self.discovery {
            if let Ok(a) = listener.local_addr() {
                tracing::info!(http = %a, "serving /.well-known/pvd and /proxy.pac");
            }
            accept_loops.push(tokio::spawn(crate::discovery::serve(
                listener,
                self.current.clone(),
                bound_endpoints(&self.listeners),
                shutdown.clone(),
            )));
        }
        #[cfg(feature = "mdns")]
        let _mdns = if shared.cfg.discovery.mdns {
            let bound = bound_endpoints(&self.listeners);
            match crate::discovery::MdnsAnnouncement::start(&shared.cfg, &bound) {
                Ok(a) => {
                    tracing::info!(
                        service = crate::discovery::MDNS_SERVICE,
                        "announcing by mDNS"
                    );
                    Some(a)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot announce by mDNS");
                    None
                }
            }
        } else {
            None
        };
        for (listener, intake) in self.listeners {
            if let Ok(a) = listener.local_addr() {
                let tls = match intake {
                    Intake::Plain => "no",
                    Intake::PlainOrTls => "also",
                    Intake::Tls => "only",
                };
                // `listen` last: scripts read the address to the end of the line.
                tracing::info!(tls, listen = %a, "accepting SOCKS connections");
            }
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                intake,
                self.current.clone(),
                shutdown.clone(),
                hard_stop.clone(),
                tracker.clone(),
                cut.clone(),
            )));
        }
        shutdown.cancelled().await;
        for l in accept_loops {
            let _ = l.await;
        }
        // Only sessions are tracked, so this count is exact.
        let grace = self.current.get().cfg.timeouts.shutdown_grace;
        tracker.close();
        tracing::info!(
            sessions = tracker.len(),
            ?grace,
            "shutting down: draining sessions"
        );
        let drained = tokio::select! {
            r = tokio::time::timeout(grace, tracker.wait()) => r.is_ok(),
            _ = cut_now.cancelled() => tracker.is_empty(),
        };
        if !drained {
            tracing::warn!(
                remaining = tracker.len(),
                "grace period over: closing remaining sessions"
            );
            hard_stop.cancel();
            tracker.wait().await;
        }
        if let Some(path) = admin_path {
            let _ = std::fs::remove_file(path);
        }
        if let Some(audit) = &shared.audit {
            // Off the runtime: a sink that takes nothing holds this for the bounded wait.
            let audit = audit.clone();
            let _ = tokio::task::spawn_blocking(move || audit.finish(Duration::from_secs(2))).await;
        }
        let cut = cut.load(Ordering::Relaxed);
        if cut > 0 {
            tracing::warn!(
                sessions = cut,
                "shutdown complete: sessions were cut (reset)"
            );
        } else {
            tracing::info!("shutdown complete");
        }
        RunSummary { sessions_cut: cut }
    }
}

/// How a server's run ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RunSummary {
    /// Sessions still open at the end of the grace period, cut with a reset.
    pub sessions_cut: usize,
}

/// The listeners as really bound (port 0 resolved), for announcing them.
fn bound_endpoints(listeners: &[(TcpListener, Intake)]) -> Vec<crate::discovery::Endpoint> {
    listeners
        .iter()
        .filter_map(|(l, intake)| {
            Some(crate::discovery::Endpoint {
                addr: l.local_addr().ok()?,
                plain: *intake != Intake::Tls,
                tls: *intake != Intake::Plain,
            })
        })
        .collect()
}

fn is_address_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

async fn accept_loop(
    listener: TcpListener,
    intake: Intake,
    current: Arc<Current>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    tracker: TaskTracker,
    cut: Arc<AtomicUsize>,
) {
    const MIN_BACKOFF: Duration = Duration::from_millis(10);
    const MAX_BACKOFF: Duration = Duration::from_secs(1);
    let mut backoff = MIN_BACKOFF;
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(x) => {
                backoff = MIN_BACKOFF;
                x
            }
            Err(e) if crate::dial::is_resource_exhaustion(&e) => {
                if backoff == MIN_BACKOFF {
                    tracing::warn!(error = %e, "accept: out of resources, backing off");
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                continue;
            }
        };
        let shared = current.get();
        let slot: StageSlot = match shared.handshakes.enter(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                crate::conn::log_refused(&shared, peer, &shared.handshakes.describe(why));
                continue;
            }
        };
        let hard_stop = hard_stop.clone();
        let cut = cut.clone();
        tracker.spawn(async move {
            let client_fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let live = shared.live.add(crate::dial::canonical_addr(peer));
            let registry = shared.clone();
            // In a block of its own: the session (and its log line) is gone before its entry.
            {
                let mut serve = std::pin::pin!(crate::session::serve(
                    shared,
                    stream,
                    peer,
                    slot,
                    intake,
                    live.clone()
                ));
                // Closing with SO_LINGER 0 sends a reset: the client must not take a transfer
                // cut here (at shutdown, or by the administrator) for one that ended. The
                // session, dropped next (and still writing its log line), closes the
                // descriptor.
                let reset_client = || {
                    // SAFETY: the session owns the client stream from start to end, and the
                    // session future is alive here (pinned above, dropped only at the end of
                    // this block), so the descriptor is still the client's.
                    let client = unsafe { std::os::fd::BorrowedFd::borrow_raw(client_fd) };
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                };
                tokio::select! {
                    _ = &mut serve => {}
                    _ = live.kill.cancelled() => reset_client(),
                    _ = hard_stop.cancelled() => {
                        reset_client();
                        cut.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            registry.live.remove(live.id);
        });
    }
}
