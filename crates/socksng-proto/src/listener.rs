//! The SOCKS-NG LISTEN control connection as two sans-IO machines, one per side, in the shape
//! of quinn-proto: bytes in through `handle_input`, bytes out through `poll_transmit`, events
//! through `poll_event`, and time passed in as a value (`handle_timeout(now)`, `poll_timeout`).
//! Token lifetimes, the backlog bound, idle closing and keep-alive live here, so the tokio
//! server and client (and the blocking socksify shim) only move bytes and connections.
//!
//! The server machine ([`ServerListener`]) announces incoming connections, answers PING,
//! honours REFUSE (ignoring unknown tokens, which may cross an EXPIRED or a claim), expires
//! unclaimed tokens, and closes the control connection with CLOSING on a message it does not
//! understand, on idleness and on a listener failure. The client machine ([`ClientListener`])
//! reads LISTENING, notices, EXPIRED and CLOSING, answers PING and keeps an idle listener alive.

use crate::wire::ng::{control, ControlMessage, Token};
use crate::wire::{Address, DecodeError, ReplyCode};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Why a control connection must close from the client's side.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// A TYPE the receiver does not know; its length is unknown, so the stream is lost.
    #[error("unknown control message type {0:#04x}")]
    UnknownMessage(u8),
    /// A message the other side may not send (or LISTENING not first, or twice).
    #[error("unexpected control message: {0}")]
    Unexpected(&'static str),
    /// A message that cannot be decoded.
    #[error("malformed control message: {0}")]
    Malformed(DecodeError),
}

/// What a listener was granted; the server sends it in LISTENING.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListenerGrant {
    /// Unclaimed connections that may wait at once (at least 1).
    pub backlog: u16,
    /// How long a token stays claimable, counted from its notice (whole seconds on the wire).
    pub token_lifetime: Duration,
    /// Silence after which the server closes the control connection; `None`: never.
    pub idle: Option<Duration>,
}

impl ListenerGrant {
    fn message(&self) -> ControlMessage {
        ControlMessage::Listening {
            backlog: self.backlog,
            token_lifetime: secs(self.token_lifetime),
            idle: self.idle.map_or(0, secs),
        }
    }
}

/// Whole seconds, at least 1 for a non-zero duration, saturating at `u32::MAX`.
fn secs(d: Duration) -> u32 {
    let s = d.as_secs().max(u64::from(!d.is_zero()));
    u32::try_from(s).unwrap_or(u32::MAX)
}

/// Takes one whole control message off the front of `inbox`; `Ok(None)` until one arrived.
fn next_message(inbox: &mut Vec<u8>) -> Result<Option<ControlMessage>, ControlError> {
    match ControlMessage::decode(inbox) {
        Ok((msg, used)) => {
            inbox.drain(..used);
            Ok(Some(msg))
        }
        Err(DecodeError::Incomplete) => Ok(None),
        Err(DecodeError::UnknownCommand(t)) => Err(ControlError::UnknownMessage(t)),
        Err(e) => Err(ControlError::Malformed(e)),
    }
}

/// What a machine has to say: bytes for the other side and events for its own driver.
#[derive(Debug)]
struct Outbox<E> {
    bytes: Vec<u8>,
    events: VecDeque<E>,
}

impl<E> Outbox<E> {
    fn new() -> Self {
        Outbox {
            bytes: Vec::with_capacity(64),
            events: VecDeque::new(),
        }
    }

    fn transmit(&mut self, buf: &mut Vec<u8>) -> bool {
        let any = !self.bytes.is_empty();
        buf.append(&mut self.bytes);
        any
    }
}

/// What the server's driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerListenerEvent {
    /// The client refused this token: close its incoming connection.
    Refused(Token),
    /// The token's lifetime passed (EXPIRED is queued): close its incoming connection.
    Expired(Token),
    /// Send what is queued (CLOSING last), then close the control connection, the listener
    /// and every unclaimed connection ([`ServerListener::unclaimed`]).
    Close {
        /// The CLOSING reason sent.
        reason: ReplyCode,
        /// For the log.
        why: String,
    },
}

/// Counts for the session's log line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// Notices sent.
    pub announced: u64,
    /// Tokens the client refused.
    pub refused: u64,
    /// Tokens that expired unclaimed.
    pub expired: u64,
    /// Tokens whose peer went away before the claim.
    pub gone: u64,
    /// Tokens claimed.
    pub claimed: u64,
}

/// The server side of one control connection.
#[derive(Debug)]
pub struct ServerListener {
    grant: ListenerGrant,
    /// Unclaimed tokens with their deadlines, in announcement order.
    unclaimed: Vec<(Token, Instant)>,
    inbox: Vec<u8>,
    out: Outbox<ServerListenerEvent>,
    last_activity: Instant,
    closing: bool,
    stats: ListenerStats,
}

impl ServerListener {
    /// A listener that was just granted `grant`; LISTENING is queued as the first message.
    pub fn new(grant: ListenerGrant, now: Instant) -> Self {
        let grant = ListenerGrant {
            backlog: grant.backlog.max(1),
            ..grant
        };
        let mut out = Outbox::new();
        grant.message().encode(&mut out.bytes);
        ServerListener {
            grant,
            unclaimed: Vec::new(),
            inbox: Vec::new(),
            out,
            last_activity: now,
            closing: false,
            stats: ListenerStats::default(),
        }
    }

    /// Whether another incoming connection may be announced; when not, the driver closes it
    /// without a notice.
    pub fn has_room(&self) -> bool {
        !self.closing && self.unclaimed.len() < usize::from(self.grant.backlog)
    }

    /// Queues the ACCEPT-NOTICE of a new incoming connection; its token's lifetime starts now.
    /// `false` (nothing queued) when the backlog is full or the listener is closing.
    pub fn announce(&mut self, token: Token, peer: Address, now: Instant) -> bool {
        if !self.has_room() {
            return false;
        }
        ControlMessage::AcceptNotice { token, peer }.encode(&mut self.out.bytes);
        self.unclaimed
            .push((token, now + self.grant.token_lifetime));
        self.last_activity = now;
        self.stats.announced += 1;
        true
    }

    /// A claim took `token`: its backlog place is free. `false` if it was not unclaimed here.
    pub fn claimed(&mut self, token: &Token) -> bool {
        let was = self.forget(token);
        self.stats.claimed += u64::from(was);
        was
    }

    /// Drops every unclaimed token for which `still_waiting` says no (claimed elsewhere).
    pub fn retain_unclaimed(&mut self, mut still_waiting: impl FnMut(&Token) -> bool) {
        let before = self.unclaimed.len();
        self.unclaimed.retain(|(t, _)| still_waiting(t));
        self.stats.claimed += (before - self.unclaimed.len()) as u64;
    }

    /// The peer of `token` went away before its claim: EXPIRED is queued and the place freed.
    pub fn peer_gone(&mut self, token: &Token) -> bool {
        if !self.forget(token) {
            return false;
        }
        if !self.closing {
            ControlMessage::Expired { token: *token }.encode(&mut self.out.bytes);
        }
        self.stats.gone += 1;
        true
    }

    fn forget(&mut self, token: &Token) -> bool {
        let before = self.unclaimed.len();
        self.unclaimed.retain(|(t, _)| t != token);
        self.unclaimed.len() != before
    }

    /// Bytes from the client. Every whole message is acted on; one the server does not
    /// understand closes the listener with CLOSING X'07'.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) {
        if self.closing {
            return;
        }
        self.last_activity = now;
        self.inbox.extend_from_slice(bytes);
        loop {
            // A TYPE a client may not send is refused on its first byte: its length is
            // unknown, and waiting for a body that may never come would stall the listener.
            if let Some(&t) = self.inbox.first() {
                if ![control::REFUSE, control::PING, control::PONG].contains(&t) {
                    let why = format!("client sent control message type {t:#04x}");
                    return self.close(crate::wire::ReplyCode::COMMAND_NOT_SUPPORTED, why);
                }
            }
            match next_message(&mut self.inbox) {
                Ok(None) => return,
                Ok(Some(ControlMessage::Refuse { token })) => {
                    // An unknown token may have crossed its EXPIRED or its claim: not an error.
                    if self.forget(&token) {
                        self.stats.refused += 1;
                        self.out
                            .events
                            .push_back(ServerListenerEvent::Refused(token));
                    }
                }
                Ok(Some(ControlMessage::Ping(opaque))) => {
                    ControlMessage::Pong(opaque).encode(&mut self.out.bytes)
                }
                Ok(Some(ControlMessage::Pong(_))) => {}
                Ok(Some(_)) => {
                    return self.close(
                        crate::wire::ReplyCode::COMMAND_NOT_SUPPORTED,
                        "the client sent a server-only message".into(),
                    )
                }
                Err(e) => {
                    return self.close(
                        crate::wire::ReplyCode::COMMAND_NOT_SUPPORTED,
                        format!("client: {e}"),
                    )
                }
            }
        }
    }

    /// The listener failed (accept errors): CLOSING X'01' is queued.
    pub fn fail(&mut self, why: String) {
        self.close(ReplyCode::GENERAL_FAILURE, why);
    }

    fn close(&mut self, reason: ReplyCode, why: String) {
        if self.closing {
            return;
        }
        self.closing = true;
        ControlMessage::Closing { reason }.encode(&mut self.out.bytes);
        self.inbox.clear();
        self.out
            .events
            .push_back(ServerListenerEvent::Close { reason, why });
    }

    /// Expires tokens whose lifetime passed and closes an idle control connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closing {
            return;
        }
        let mut i = 0;
        while i < self.unclaimed.len() {
            if self.unclaimed[i].1 <= now {
                let (token, _) = self.unclaimed.remove(i);
                ControlMessage::Expired { token }.encode(&mut self.out.bytes);
                self.stats.expired += 1;
                self.out
                    .events
                    .push_back(ServerListenerEvent::Expired(token));
            } else {
                i += 1;
            }
        }
        if let Some(idle) = self.grant.idle {
            if now >= self.last_activity + idle {
                self.close(
                    crate::wire::ng::rep::TIMED_OUT,
                    format!("idle for {}s", idle.as_secs()),
                );
            }
        }
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closing {
            return None;
        }
        let expiry = self.unclaimed.iter().map(|(_, at)| *at).min();
        let idle = self.grant.idle.map(|i| self.last_activity + i);
        match (expiry, idle) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next thing the driver must do.
    pub fn poll_event(&mut self) -> Option<ServerListenerEvent> {
        self.out.events.pop_front()
    }

    /// Moves the bytes to send into `buf` (appended); `false` when there were none.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> bool {
        self.out.transmit(buf)
    }

    /// The tokens still waiting for their claim (all of them close with the listener).
    pub fn unclaimed(&self) -> impl Iterator<Item = &Token> {
        self.unclaimed.iter().map(|(t, _)| t)
    }

    /// What was granted (the backlog at least 1).
    pub fn grant(&self) -> ListenerGrant {
        self.grant
    }

    /// Counts so far.
    pub fn stats(&self) -> ListenerStats {
        self.stats
    }

    /// Whether the listener is closing (CLOSING queued or sent).
    pub fn is_closing(&self) -> bool {
        self.closing
    }
}

/// What the client's listener hears from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientListenerEvent {
    /// LISTENING: what the server granted.
    Listening(ListenerGrant),
    /// An incoming connection to claim (ACCEPT) or refuse.
    Incoming {
        /// The token to claim it with.
        token: Token,
        /// Its peer.
        peer: Address,
    },
    /// The token can no longer be claimed.
    Expired(Token),
    /// The server closes the listener for `reason`.
    Closing(ReplyCode),
}

/// The client side of one control connection.
#[derive(Debug)]
pub struct ClientListener {
    inbox: Vec<u8>,
    out: Outbox<ClientListenerEvent>,
    grant: Option<ListenerGrant>,
    last_activity: Instant,
    pings: u32,
    closed: bool,
}

impl ClientListener {
    /// A control connection whose LISTEN just succeeded.
    pub fn new(now: Instant) -> Self {
        ClientListener {
            inbox: Vec::new(),
            out: Outbox::new(),
            grant: None,
            last_activity: now,
            pings: 0,
            closed: false,
        }
    }

    /// Bytes from the server. An error means the control connection must be closed.
    pub fn handle_input(&mut self, bytes: &[u8], now: Instant) -> Result<(), ControlError> {
        if self.closed {
            return Ok(());
        }
        self.inbox.extend_from_slice(bytes);
        while let Some(msg) = next_message(&mut self.inbox)? {
            let listening = matches!(msg, ControlMessage::Listening { .. });
            if self.grant.is_none() != listening {
                return Err(ControlError::Unexpected("LISTENING not first, or repeated"));
            }
            let event = match msg {
                ControlMessage::Listening {
                    backlog,
                    token_lifetime,
                    idle,
                } => {
                    let grant = ListenerGrant {
                        backlog,
                        token_lifetime: Duration::from_secs(token_lifetime.into()),
                        idle: (idle > 0).then(|| Duration::from_secs(idle.into())),
                    };
                    self.grant = Some(grant);
                    ClientListenerEvent::Listening(grant)
                }
                ControlMessage::AcceptNotice { peer, .. }
                    if matches!(peer.host, crate::wire::Host::Domain(_)) =>
                {
                    return Err(ControlError::Unexpected("ACCEPT-NOTICE naming a host"));
                }
                ControlMessage::AcceptNotice { token, peer } => {
                    // Only what the server counts as activity keeps the keep-alive quiet:
                    // its notices and our own messages, not its PONGs or EXPIREDs.
                    self.last_activity = now;
                    ClientListenerEvent::Incoming { token, peer }
                }
                ControlMessage::Expired { token } => ClientListenerEvent::Expired(token),
                ControlMessage::Closing { reason } => {
                    self.closed = true;
                    self.out
                        .events
                        .push_back(ClientListenerEvent::Closing(reason));
                    return Ok(());
                }
                ControlMessage::Ping(opaque) => {
                    ControlMessage::Pong(opaque).encode(&mut self.out.bytes);
                    continue;
                }
                ControlMessage::Pong(_) => continue,
                ControlMessage::Refuse { .. } => {
                    return Err(ControlError::Unexpected("REFUSE from the server"))
                }
            };
            self.out.events.push_back(event);
        }
        Ok(())
    }

    /// Queues a REFUSE for `token`.
    pub fn refuse(&mut self, token: Token, now: Instant) {
        ControlMessage::Refuse { token }.encode(&mut self.out.bytes);
        self.last_activity = now;
    }

    /// How often a PING keeps the listener alive: a third of the server's idle time.
    fn keepalive(&self) -> Option<Duration> {
        let idle = self.grant?.idle?;
        Some((idle / 3).max(Duration::from_millis(500)))
    }

    /// Sends a PING when the connection has been quiet for a third of the server's idle time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if let Some(every) = self.keepalive() {
            if now >= self.last_activity + every {
                self.pings = self.pings.wrapping_add(1);
                ControlMessage::Ping(self.pings.to_be_bytes()).encode(&mut self.out.bytes);
                self.last_activity = now;
            }
        }
    }

    /// When `handle_timeout` next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        self.keepalive().map(|every| self.last_activity + every)
    }

    /// The next thing heard from the server.
    pub fn poll_event(&mut self) -> Option<ClientListenerEvent> {
        self.out.events.pop_front()
    }

    /// Moves the bytes to send into `buf` (appended); `false` when there were none.
    pub fn poll_transmit(&mut self, buf: &mut Vec<u8>) -> bool {
        self.out.transmit(buf)
    }

    /// What the server granted, once LISTENING arrived.
    pub fn grant(&self) -> Option<ListenerGrant> {
        self.grant
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant() -> ListenerGrant {
        ListenerGrant {
            backlog: 2,
            token_lifetime: Duration::from_secs(30),
            idle: Some(Duration::from_secs(300)),
        }
    }

    fn tok(n: u8) -> Token {
        [n; 16]
    }

    fn peer() -> Address {
        Address::ip("198.51.100.7:50000".parse().unwrap())
    }

    /// Runs the two machines against each other until neither has bytes to send.
    fn exchange(s: &mut ServerListener, c: &mut ClientListener, now: Instant) {
        for _ in 0..8 {
            let mut buf = Vec::new();
            let a = s.poll_transmit(&mut buf);
            c.handle_input(&buf, now).unwrap();
            buf.clear();
            let b = c.poll_transmit(&mut buf);
            s.handle_input(&buf, now);
            if !a && !b {
                return;
            }
        }
        panic!("the machines never went quiet");
    }

    #[test]
    fn listening_first_then_notices_within_the_backlog() {
        let t0 = Instant::now();
        let mut s = ServerListener::new(grant(), t0);
        let mut c = ClientListener::new(t0);
        assert!(s.announce(tok(1), peer(), t0));
        assert!(s.announce(tok(2), peer(), t0));
        assert!(!s.has_room());
        assert!(!s.announce(tok(3), peer(), t0), "backlog full");
        exchange(&mut s, &mut c, t0);
        assert_eq!(
            c.poll_event(),
            Some(ClientListenerEvent::Listening(grant()))
        );
        assert!(
            matches!(c.poll_event(), Some(ClientListenerEvent::Incoming { token, .. }) if token == tok(1))
        );
        assert!(
            matches!(c.poll_event(), Some(ClientListenerEvent::Incoming { token, .. }) if token == tok(2))
        );
        // A claim frees a place at once.
        assert!(s.claimed(&tok(1)));
        assert!(s.has_room());
        // REFUSE frees one too; an unknown token is ignored, the listener stays.
        c.refuse(tok(2), t0);
        c.refuse(tok(9), t0);
        exchange(&mut s, &mut c, t0);
        assert_eq!(s.poll_event(), Some(ServerListenerEvent::Refused(tok(2))));
        assert_eq!(s.poll_event(), None);
        assert!(!s.is_closing());
        assert_eq!(s.unclaimed().count(), 0);
    }

    #[test]
    fn tokens_expire_by_the_clock_passed_in() {
        let t0 = Instant::now();
        let mut s = ServerListener::new(grant(), t0);
        let mut c = ClientListener::new(t0);
        s.announce(tok(1), peer(), t0);
        let t1 = t0 + Duration::from_secs(10);
        s.announce(tok(2), peer(), t1);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(30)));
        s.handle_timeout(t0 + Duration::from_secs(29));
        assert_eq!(s.poll_event(), None);
        s.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(s.poll_event(), Some(ServerListenerEvent::Expired(tok(1))));
        assert_eq!(s.poll_timeout(), Some(t1 + Duration::from_secs(30)));
        exchange(&mut s, &mut c, t1);
        let events: Vec<_> = std::iter::from_fn(|| c.poll_event()).collect();
        assert_eq!(events.last(), Some(&ClientListenerEvent::Expired(tok(1))));
    }

    #[test]
    fn a_gone_peer_is_expired_and_frees_its_place() {
        let t0 = Instant::now();
        let mut s = ServerListener::new(grant(), t0);
        s.announce(tok(1), peer(), t0);
        s.announce(tok(2), peer(), t0);
        assert!(s.peer_gone(&tok(1)));
        assert!(!s.peer_gone(&tok(1)), "only once");
        assert!(s.has_room());
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        assert!(out.ends_with(&{
            let mut e = Vec::new();
            ControlMessage::Expired { token: tok(1) }.encode(&mut e);
            e
        }));
        assert_eq!(s.stats().gone, 1);
    }

    #[test]
    fn an_unknown_or_server_only_message_closes_with_closing_07() {
        for input in [
            &[0x7f, 0, 0][..],
            &[0x01; 40][..],
            &[0x04, 0, 1, 0, 0, 0, 1, 0, 0, 0, 1],
        ] {
            let t0 = Instant::now();
            let mut s = ServerListener::new(grant(), t0);
            s.announce(tok(1), peer(), t0);
            let mut out = Vec::new();
            s.poll_transmit(&mut out);
            // The REFUSE before the bad message is still honoured.
            let mut bytes = vec![0x03];
            bytes.extend_from_slice(&tok(1));
            bytes.extend_from_slice(input);
            s.handle_input(&bytes, t0);
            assert_eq!(s.poll_event(), Some(ServerListenerEvent::Refused(tok(1))));
            assert!(matches!(
                s.poll_event(),
                Some(ServerListenerEvent::Close { reason, .. }) if reason == ReplyCode::COMMAND_NOT_SUPPORTED
            ));
            out.clear();
            s.poll_transmit(&mut out);
            assert_eq!(out, [0x07, 0x07]);
            assert!(!s.announce(tok(2), peer(), t0));
            assert_eq!(s.poll_timeout(), None);
        }
    }

    #[test]
    fn ping_is_answered_and_the_idle_client_keeps_the_listener() {
        let t0 = Instant::now();
        let mut s = ServerListener::new(grant(), t0);
        let mut c = ClientListener::new(t0);
        exchange(&mut s, &mut c, t0);
        assert!(matches!(
            c.poll_event(),
            Some(ClientListenerEvent::Listening(_))
        ));
        // The client pings after a third of the idle time; the server answers and stays.
        let mut now = t0;
        for _ in 0..10 {
            now = c.poll_timeout().expect("a keep-alive is due");
            assert!(now > t0);
            c.handle_timeout(now);
            s.handle_timeout(now);
            exchange(&mut s, &mut c, now);
            assert_eq!(s.poll_event(), None);
        }
        assert!(
            now >= t0 + Duration::from_secs(900),
            "outlived three idle times"
        );
        // Without pings, the server closes for idleness with X'09'.
        let late = now + Duration::from_secs(300);
        assert_eq!(s.poll_timeout(), Some(late));
        s.handle_timeout(late);
        assert!(
            matches!(s.poll_event(), Some(ServerListenerEvent::Close { reason, .. }) if reason.0 == 0x09)
        );
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        c.handle_input(&out, late).unwrap();
        assert_eq!(
            c.poll_event(),
            Some(ClientListenerEvent::Closing(ReplyCode(0x09)))
        );
    }

    #[test]
    fn the_client_closes_on_unknown_types_and_on_notices_before_listening() {
        let t0 = Instant::now();
        let mut c = ClientListener::new(t0);
        let mut notice = Vec::new();
        ControlMessage::AcceptNotice {
            token: tok(1),
            peer: peer(),
        }
        .encode(&mut notice);
        assert!(matches!(
            c.handle_input(&notice, t0),
            Err(ControlError::Unexpected(_))
        ));
        let mut c = ClientListener::new(t0);
        let mut bytes = Vec::new();
        grant().message().encode(&mut bytes);
        bytes.push(0x42);
        assert_eq!(
            c.handle_input(&bytes, t0),
            Err(ControlError::UnknownMessage(0x42))
        );
    }

    #[test]
    fn byte_by_byte_input_gives_the_same_events() {
        let t0 = Instant::now();
        let mut s = ServerListener::new(grant(), t0);
        s.announce(tok(1), peer(), t0);
        s.announce(
            tok(2),
            Address::ip("[2001:db8::7]:443".parse().unwrap()),
            t0,
        );
        s.handle_timeout(t0 + Duration::from_secs(31));
        let mut out = Vec::new();
        s.poll_transmit(&mut out);
        let mut whole = ClientListener::new(t0);
        whole.handle_input(&out, t0).unwrap();
        let mut split = ClientListener::new(t0);
        for b in &out {
            split.handle_input(std::slice::from_ref(b), t0).unwrap();
        }
        let a: Vec<_> = std::iter::from_fn(|| whole.poll_event()).collect();
        let b: Vec<_> = std::iter::from_fn(|| split.poll_event()).collect();
        assert_eq!(a.len(), 5);
        assert_eq!(a, b);
    }
}
