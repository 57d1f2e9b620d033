//! The SOCKS-NG token registry: incoming connections announced to LISTEN clients and waiting
//! for their claim (128-bit single-use tokens, bound to the listener's user), and the count of
//! listeners each user holds. `listen` fills and drains it; every session can reach it through
//! `Shared`.

use socksng_proto::wire::ng::Token;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::net::TcpStream;

/// An incoming connection announced to a listener's client, waiting for its claim.
pub(crate) struct Pending {
    /// The user who owns the listener.
    pub owner: Option<String>,
    /// The listener that announced it.
    pub listener: u64,
    /// The connection.
    pub stream: TcpStream,
    /// Its peer.
    pub peer: SocketAddr,
}

/// Tokens waiting to be claimed, and listeners per user.
#[derive(Default)]
pub(crate) struct Registry {
    pending: Mutex<HashMap<Token, Pending>>,
    listeners: Mutex<HashMap<Option<String>, usize>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Takes the connection behind `token` if `user` owns it; another user's attempt leaves
    /// the token in place.
    pub(crate) fn claim(
        &self,
        token: &Token,
        user: Option<&str>,
    ) -> Option<(TcpStream, SocketAddr)> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.get(token)?.owner.as_deref() != user {
            return None;
        }
        pending.remove(token).map(|p| (p.stream, p.peer))
    }

    pub(crate) fn remove_for(&self, token: &Token, listener: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get(token) {
            Some(p) if p.listener == listener => pending.remove(token).is_some(),
            _ => false,
        }
    }

    pub(crate) fn is_pending(&self, token: &Token) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.contains_key(token)
    }

    pub(crate) fn insert(&self, token: Token, p: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(token, p);
    }

    pub(crate) fn open_listener(&self, user: Option<&str>, max: usize) -> Option<u64> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let n = listeners.entry(user.map(str::to_owned)).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(self.next_id.fetch_add(1, Ordering::Relaxed))
    }

    pub(crate) fn close_listener(&self, user: Option<&str>) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let key = user.map(str::to_owned);
        if let Some(n) = listeners.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                listeners.remove(&key);
            }
        }
    }
}
