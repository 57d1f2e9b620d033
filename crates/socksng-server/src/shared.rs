//! The state every session shares: configuration, policy, users, the admission stages and
//! pools, per-user session slots and the SOCKS-NG token registry.

use crate::admission::{Lookups, NotChecked, PasswordChecks, Stage};
use crate::config::Config;
use crate::policy::Policy;
use crate::users::UserDb;
use socksng_proto::HandshakeConfig;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

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
    pub listeners: crate::tokens::Registry,
    /// SOCKS over TLS, when configured.
    pub tls: Option<crate::tls::TlsService>,
    /// Upstream servers and the routes to them.
    pub upstreams: crate::upstream::Upstreams,
    /// The running sessions, for the admin view.
    pub live: Arc<crate::admin::Live>,
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
    /// The state for a server with this configuration and users.
    pub(crate) fn new(
        cfg: Config,
        users: Option<Arc<UserDb>>,
        handshake_config: HandshakeConfig,
        tls: Option<crate::tls::TlsService>,
    ) -> Shared {
        Shared {
            tls,
            upstreams: crate::upstream::Upstreams::new(&cfg),
            live: Default::default(),
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
