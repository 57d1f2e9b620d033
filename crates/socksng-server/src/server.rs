//! The server: listening sockets, accept loops with back-off on descriptor exhaustion, the
//! session limits, and graceful shutdown (stop accepting, drain for the grace period, then cut).

use crate::admission::{Lookups, NotChecked, PasswordChecks, Stage, StageSlot};
use crate::config::Config;
use crate::policy::Policy;
use crate::users::{UserDb, UsersError};
use socket2::{Domain, Protocol, Socket, Type};
use socksng_proto::HandshakeConfig;
use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
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
}

/// State every session shares.
pub(crate) struct Shared {
    pub cfg: Arc<Config>,
    pub policy: Policy,
    pub users: Option<Arc<UserDb>>,
    pub handshake_config: HandshakeConfig,
    per_user: Mutex<HashMap<String, usize>>,
    /// Argon2 takes ~19 MiB and tens of milliseconds per check; a flood of bad logins must
    /// queue (boundedly) here rather than fill the blocking pool and the memory.
    passwords: PasswordChecks,
    /// getaddrinfo on a bounded number of threads.
    pub lookups: Lookups,
    /// Connections still in their handshake.
    pub handshakes: Stage,
    /// Sessions past the handshake.
    pub sessions: Stage,
    /// SOCKS-NG listeners and their pending tokens.
    pub listeners: crate::listen::Registry,
}

/// Holds one of a user's concurrent-session slots until dropped.
pub(crate) struct UserSlot {
    shared: Arc<Shared>,
    user: Option<String>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some(u) = self.user.take() {
            let mut map = self
                .shared
                .per_user
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&u) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&u);
                }
            }
        }
    }
}

impl Shared {
    /// Checks a username/password from a client at `client`, off the runtime threads when
    /// argon2 has to run. `Err` says why no check was made (the login fails).
    pub(crate) async fn authenticate(
        &self,
        client: IpAddr,
        name: &str,
        password: Vec<u8>,
    ) -> Result<bool, NotChecked> {
        let Some(db) = self.users.clone() else {
            return Ok(false);
        };
        self.passwords.check(db, client, name, password).await
    }

    /// Takes a per-user session slot; `None` when the user is at the limit.
    pub(crate) fn user_slot(self: &Arc<Self>, user: Option<&str>) -> Option<UserSlot> {
        let limit = self.cfg.limits.max_sessions_per_user;
        let Some(user) = user.filter(|_| limit > 0) else {
            return Some(UserSlot {
                shared: self.clone(),
                user: None,
            });
        };
        let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(user.to_owned()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(UserSlot {
            shared: self.clone(),
            user: Some(user.to_owned()),
        })
    }
}

/// A server with its sockets bound, ready to [`Server::run`].
pub struct Server {
    shared: Arc<Shared>,
    listeners: Vec<TcpListener>,
}

fn listen_socket(addr: SocketAddr, keepalive: std::time::Duration) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    // Inherited by every accepted client connection (Linux copies them on accept).
    crate::connect::tune_socket(socket2::SockRef::from(&socket), keepalive);
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
        let users = match cfg.users_file() {
            Some(path) if cfg.accepts_password() => Some(Arc::new(UserDb::load(&path)?)),
            _ => None,
        };
        let handshake_config = HandshakeConfig {
            no_auth: cfg.accepts_no_auth(),
            username_password: cfg.accepts_password(),
            socks4: cfg.auth.socks4,
            ng: cfg.ng.enabled,
        };
        let mut listeners = Vec::with_capacity(cfg.listen.len());
        let mut unavailable = None;
        for &addr in &cfg.listen {
            match listen_socket(addr, cfg.timeouts.tcp_keepalive) {
                Ok(l) => listeners.push(l),
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
        let shared = Arc::new(Shared {
            policy: Policy::new(&cfg),
            users,
            handshake_config,
            per_user: Mutex::new(HashMap::new()),
            listeners: Default::default(),
            passwords: PasswordChecks::new(&cfg.limits),
            lookups: Lookups::new(cfg.limits.lookups),
            handshakes: Stage::new(
                "handshake",
                cfg.limits.max_handshakes,
                cfg.limits.max_handshakes_per_address,
            ),
            sessions: Stage::new(
                "session",
                cfg.limits.max_sessions,
                cfg.limits.max_sessions_per_address,
            ),
            cfg: Arc::new(cfg),
        });
        Ok(Server { shared, listeners })
    }

    /// The bound addresses (useful when a port was 0).
    pub fn local_addrs(&self) -> Vec<SocketAddr> {
        self.listeners
            .iter()
            .filter_map(|l| l.local_addr().ok())
            .collect()
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
        let tracker = TaskTracker::new();
        let hard_stop = CancellationToken::new();
        let cut = Arc::new(AtomicUsize::new(0));
        let mut accept_loops = Vec::new();
        for listener in self.listeners {
            if let Ok(a) = listener.local_addr() {
                tracing::info!(listen = %a, "accepting SOCKS connections");
            }
            accept_loops.push(tokio::spawn(accept_loop(
                listener,
                self.shared.clone(),
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
        let grace = self.shared.cfg.timeouts.shutdown_grace;
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

fn is_address_unavailable(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AddrNotAvailable || e.raw_os_error() == Some(libc::EAFNOSUPPORT)
}

/// Accept errors that mean "no resources right now": retrying at once would spin.
pub(crate) fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

async fn accept_loop(
    listener: TcpListener,
    shared: Arc<Shared>,
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
            Err(e) if is_resource_exhaustion(&e) => {
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
        let slot: StageSlot = match shared.handshakes.enter(peer.ip()) {
            Ok(slot) => slot,
            Err(why) => {
                crate::session::log_refused(peer, &shared.handshakes.describe(why));
                continue;
            }
        };
        let shared = shared.clone();
        let hard_stop = hard_stop.clone();
        let cut = cut.clone();
        tracker.spawn(async move {
            let client_fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let mut serve = std::pin::pin!(crate::session::serve(shared, stream, peer, slot));
            tokio::select! {
                _ = &mut serve => {}
                _ = hard_stop.cancelled() => {
                    // SAFETY: the session owns the client stream from start to end, and the
                    // session future is alive here (pinned above, dropped only when this task
                    // ends), so the descriptor is still the client's.
                    let client = unsafe { std::os::fd::BorrowedFd::borrow_raw(client_fd) };
                    // Closing with SO_LINGER 0 sends a reset: the client must not take a
                    // transfer cut here for one that ended. The session, dropped next (and
                    // still writing its log line), closes the descriptor.
                    let _ = socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO));
                    cut.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
}
