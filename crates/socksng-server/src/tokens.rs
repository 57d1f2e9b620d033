//! The SOCKS-NG token registry: incoming connections announced to LISTEN clients and waiting
//! for their claim (128-bit single-use tokens, bound to the listener's user), and the count of
//! listeners each user holds. `listen` fills and drains it; every session can reach it through
//! `Shared`.

use socksng_proto::wire::ng::Token;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use tokio::sync::oneshot;

/// How the audit log names a token: its first 32 bits in hex, enough to follow one token
/// from its notice to its claim, refusal or expiry, and of no use for claiming it.
pub(crate) fn token_id(token: &Token) -> String {
    token[..4].iter().map(|b| format!("{b:02x}")).collect()
}

/// Who may claim a token: the listener's user, or for an anonymous listener the client
/// address that opened it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Owner {
    User(String),
    Anonymous(IpAddr),
}

impl Owner {
    pub(crate) fn of(user: Option<&str>, client: IpAddr) -> Owner {
        match user {
            Some(u) => Owner::User(u.to_owned()),
            None => Owner::Anonymous(crate::policy::canonical(client)),
        }
    }
}

/// Hands the incoming connection over: send it the channel to answer on.
pub(crate) type Handoff = oneshot::Sender<oneshot::Sender<crate::stream::Plaintext>>;

/// An incoming connection announced to a listener's client, waiting for its claim. The
/// connection itself stays with the task that watches it (for a peer that goes away); dropping
/// this entry ends that task and closes the connection.
pub(crate) struct Pending {
    /// Who may claim it.
    pub owner: Owner,
    /// The listener that announced it.
    pub listener: u64,
    /// Its peer.
    pub peer: SocketAddr,
    /// Announced over TLS: only a claim over TLS may take it (draft section 6.4).
    pub tls: bool,
    /// The way to the connection.
    pub handoff: Handoff,
}

/// Tokens waiting to be claimed, and listeners per user.
#[derive(Default)]
pub(crate) struct Registry {
    pending: Mutex<HashMap<Token, Pending>>,
    listeners: Mutex<HashMap<crate::shared::Holder, usize>>,
    next_id: AtomicU64,
}

impl Registry {
    /// Takes the entry behind `token` if `claimant` owns it (over TLS if it was announced over
    /// TLS); anyone else's attempt leaves the token in place.
    pub(crate) fn claim(&self, token: &Token, claimant: &Owner, over_tls: bool) -> Option<Pending> {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let entry = pending.get(token)?;
        if &entry.owner != claimant || (entry.tls && !over_tls) {
            return None;
        }
        pending.remove(token)
    }

    /// Removes `token` if `listener` announced it (closing its connection).
    pub(crate) fn remove_for(&self, token: &Token, listener: u64) -> bool {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match pending.get(token) {
            Some(p) if p.listener == listener => pending.remove(token).is_some(),
            _ => false,
        }
    }

    /// Whether `token` still waits for its claim.
    pub(crate) fn is_pending(&self, token: &Token) -> bool {
        let pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.contains_key(token)
    }

    pub(crate) fn insert(&self, token: Token, p: Pending) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.insert(token, p);
    }

    /// Takes one of `user`'s listener places (at most `max`); `None` at the limit. The place
    /// is given back when the returned slot is dropped, on every path.
    pub(crate) fn open_listener(
        &self,
        holder: crate::shared::Holder,
        max: usize,
    ) -> Option<ListenerSlot<'_>> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let n = listeners.entry(holder.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(ListenerSlot {
            registry: self,
            holder,
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
        })
    }

    fn close_listener(&self, holder: &crate::shared::Holder) {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = listeners.get_mut(holder) {
            *n -= 1;
            if *n == 0 {
                listeners.remove(holder);
            }
        }
    }
}

/// One of a user's listener places, with the listener's id; given back on drop.
pub(crate) struct ListenerSlot<'a> {
    registry: &'a Registry,
    holder: crate::shared::Holder,
    /// Tells this listener's tokens from others'.
    pub id: u64,
}

impl Drop for ListenerSlot<'_> {
    fn drop(&mut self) {
        self.registry.close_listener(&self.holder);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(
        owner: Owner,
        tls: bool,
    ) -> (
        Pending,
        oneshot::Receiver<oneshot::Sender<crate::stream::Plaintext>>,
    ) {
        let (handoff, claimed) = oneshot::channel();
        let peer = "192.0.2.7:4000".parse().unwrap();
        let entry = Pending {
            owner,
            listener: 1,
            peer,
            tls,
            handoff,
        };
        (entry, claimed)
    }

    #[test]
    fn a_token_is_claimed_by_its_owner_alone_and_over_tls_when_announced_over_tls() {
        let registry = Registry::default();
        let alice = Owner::User("alice".into());
        let (over_tls, over_plain): (Token, Token) = ([1; 16], [2; 16]);
        let (entry, _keep) = pending(alice.clone(), true);
        registry.insert(over_tls, entry);
        let (entry, _keep2) = pending(alice.clone(), false);
        registry.insert(over_plain, entry);

        let bob = Owner::User("bob".into());
        assert!(registry.claim(&over_tls, &bob, true).is_none());
        // Announced over TLS: a cleartext claim is refused and the token stays.
        assert!(registry.claim(&over_tls, &alice, false).is_none());
        assert!(registry.is_pending(&over_tls));
        assert!(registry.claim(&over_tls, &alice, true).is_some());
        assert!(!registry.is_pending(&over_tls), "single use");
        assert!(registry.claim(&over_tls, &alice, true).is_none());
        // Announced in the clear: either way will do.
        assert!(registry.claim(&over_plain, &alice, true).is_some());
    }
}
