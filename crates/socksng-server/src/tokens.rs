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

    /// Keeps only the tokens of `mine` that still wait for their claim (one lock for all).
    pub(crate) fn keep_pending<T>(&self, mine: &mut Vec<(Token, T)>) {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        mine.retain(|(t, _)| pending.contains_key(t));
    }

    pub(crate) fn insert(&self, token: Token, p: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(token, p);
    }

    /// Takes one of `user`'s listener places (at most `max`); `None` at the limit. The place
    /// is given back when the returned slot is dropped, on every path.
    pub(crate) fn open_listener(&self, user: Option<&str>, max: usize) -> Option<ListenerSlot<'_>> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let n = listeners.entry(user.map(str::to_owned)).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ListenerSlot {
            registry: self,
            user: user.map(str::to_owned),
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn close_listener(&self, user: &Option<String>) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = listeners.get_mut(user) {
            *n -= 1;
            if *n == 0 {
                listeners.remove(user);
            }
        }
    }
}

/// One of a user's listener places, with the listener's id; given back on drop.
pub(crate) struct ListenerSlot<'a> {
    registry: &'a Registry,
    user: Option<String>,
    /// Tells this listener's tokens from others'.
    pub id: u64,
}

impl Drop for ListenerSlot<'_> {
    fn drop(&mut self) {
        self.registry.close_listener(&self.user);
    }
}
