//! The state every session shares: one generation of configuration (the config, policy,
//! users, upstream routes), and what lasts across reloads (the admission stages and pools,
//! per-user session slots, the SOCKS-NG token registry, TLS, the admin registry, the audit
//! log). A reload makes a new generation around the same lasting state; a session keeps the
//! generation it started under.

use crate::admission::{Lookups, NotChecked, PasswordChecks, Stage};
use crate::config::Config;
use crate::policy::Policy;
use crate::users::Accounts;
use socksng_proto::HandshakeConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// State every session shares.
pub(crate) struct Shared {
    pub cfg: Arc<Config>,
    pub policy: Policy,
    pub users: Option<Accounts>,
    pub handshake_config: HandshakeConfig,
    /// Upstream servers and the routes to them.
    pub upstreams: crate::upstream::Upstreams,
    per_user: Arc<Mutex<HashMap<(Held, Holder), usize>>>,
    /// Rate limits and the shared uplink.
    pub shaper: Arc<crate::shaping::Shaper>,
    /// Argon2 takes ~19 MiB and tens of milliseconds per check; a flood of bad logins must
    /// queue (boundedly) here rather than fill the blocking pool and the memory.
    passwords: Arc<PasswordChecks>,
    /// getaddrinfo on a bounded number of threads.
    pub lookups: Arc<Lookups>,
    /// Connections still in their handshake.
    pub handshakes: Arc<Stage>,
    /// Sessions past the handshake.
    pub sessions: Arc<Stage>,
    /// SOCKS-NG listeners and their pending tokens.
    pub listeners: Arc<crate::tokens::Registry>,
    /// SOCKS over TLS, when configured.
    pub tls: Option<Arc<crate::tls::TlsService>>,
    /// The running sessions, for the admin view.
    pub live: Arc<crate::admin::Live>,
    /// The audit log, when configured.
    pub audit: Option<Arc<crate::audit::Audit>>,
}

/// The generation new connections are served under; a reload replaces it.
pub(crate) struct Current(std::sync::RwLock<Arc<Shared>>);

impl Current {
    pub(crate) fn new(shared: Shared) -> Current {
        Current(std::sync::RwLock::new(Arc::new(shared)))
    }

    pub(crate) fn get(&self) -> Arc<Shared> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(crate) fn set(&self, shared: Arc<Shared>) {
        *self.0.write().unwrap_or_else(|p| p.into_inner()) = shared;
    }
}

/// What a user holds a limited number of at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Held {
    Sessions,
    /// UDP associations and tunnels.
    Udp,
}

/// Holds one of a user's places (a session, a UDP relay) until dropped.
/// Who a per-user limit counts against: the user logged in, or for an anonymous client its
/// address (as shaping accounts it), so that a class taking anonymous clients limits each
/// of them rather than none or all together.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Holder {
    User(String),
    Address(std::net::IpAddr),
}

impl Holder {
    pub(crate) fn of(user: Option<&str>, peer: std::net::IpAddr) -> Holder {
        match user {
            Some(u) => Holder::User(u.to_owned()),
            None => Holder::Address(crate::policy::canonical(peer)),
        }
    }
}

pub(crate) struct UserSlot {
    per_user: Arc<Mutex<HashMap<(Held, Holder), usize>>>,
    key: Option<(Held, Holder)>,
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let mut map = self.per_user.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(n) = map.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&key);
                }
            }
        }
    }
}

/// The methods a configuration offers clients.
fn handshake_config(cfg: &Config) -> HandshakeConfig {
    HandshakeConfig {
        no_auth: cfg.accepts_no_auth(),
        username_password: cfg.accepts_password(),
        socks4: cfg.auth.socks4,
        ng: cfg.ng.enabled,
    }
}

impl Shared {
    /// The state for a server with this configuration and users.
    pub(crate) fn new(
        cfg: Config,
        users: Option<Accounts>,
        tls: Option<crate::tls::TlsService>,
        audit: Option<Arc<crate::audit::Audit>>,
    ) -> Shared {
        Shared {
            tls: tls.map(Arc::new),
            upstreams: crate::upstream::Upstreams::new(&cfg),
            live: Default::default(),
            audit,
            policy: Policy::new(&cfg),
            users,
            handshake_config: handshake_config(&cfg),
            per_user: Default::default(),
            shaper: Default::default(),
            listeners: Default::default(),
            passwords: Arc::new(PasswordChecks::new(&cfg.limits)),
            lookups: Arc::new(Lookups::new(cfg.limits.lookups)),
            handshakes: Arc::new(Stage::new(
                "handshake",
                cfg.limits.max_handshakes,
                cfg.limits.max_handshakes_per_address,
            )),
            sessions: Arc::new(Stage::new(
                "session",
                cfg.limits.max_sessions,
                cfg.limits.max_sessions_per_address,
            )),
            cfg: Arc::new(cfg),
        }
    }

    /// The next generation: `cfg` and `users` around this one's lasting state.
    pub(crate) fn reloaded(&self, cfg: Config, users: Option<Accounts>) -> Shared {
        Shared {
            tls: self.tls.clone(),
            upstreams: crate::upstream::Upstreams::new(&cfg),
            live: self.live.clone(),
            audit: self.audit.clone(),
            policy: Policy::new(&cfg),
            users,
            handshake_config: handshake_config(&cfg),
            per_user: self.per_user.clone(),
            shaper: self.shaper.clone(),
            listeners: self.listeners.clone(),
            passwords: self.passwords.clone(),
            lookups: self.lookups.clone(),
            handshakes: self.handshakes.clone(),
            sessions: self.sessions.clone(),
            cfg: Arc::new(cfg),
        }
    }

    /// Queues an audit record, when there is an audit log.
    pub(crate) fn audit(&self, record: impl FnOnce() -> crate::audit::Record) {
        if let Some(audit) = &self.audit {
            audit.record(record());
        }
    }

    /// The handshake configuration for one client: over TLS or not, from `client`, with or
    /// without a certificate user. The flag says that password logins were taken away
    /// because they would cross the network in the clear.
    pub(crate) fn handshake_config_for(
        &self,
        over_tls: bool,
        client: IpAddr,
        has_cert_user: bool,
    ) -> (HandshakeConfig, bool) {
        let mut config = self.handshake_config;
        let mut passwords_refused = false;
        if config.username_password
            && self.cfg.auth.require_tls_for_passwords
            && !over_tls
            && !client.is_loopback()
        {
            config.username_password = false;
            passwords_refused = true;
        }
        if has_cert_user && self.cert_logs_in_alone() {
            config.no_auth = true;
        }
        (config, passwords_refused)
    }

    /// Whether a client certificate's user is logged in without a password.
    pub(crate) fn cert_logs_in_alone(&self) -> bool {
        self.cfg
            .tls
            .as_ref()
            .is_some_and(|t| t.cert_login == crate::config::CertLogin::Alone)
    }

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

    /// Takes one of `holder`'s places of `held` (at most `limit`, 0 for no limit); `None`
    /// when it is at the limit.
    pub(crate) fn user_slot(&self, held: Held, holder: Holder, limit: usize) -> Option<UserSlot> {
        let per_user = self.per_user.clone();
        if limit == 0 {
            return Some(UserSlot {
                per_user,
                key: None,
            });
        }
        let key = (held, holder);
        let mut map = per_user.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        drop(map);
        Some(UserSlot {
            per_user,
            key: Some(key),
        })
    }
}
