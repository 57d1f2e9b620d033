//! SOCKS-NG LISTEN and ACCEPT: listening sockets on the proxy's outside whose incoming
//! connections are announced with single-use tokens and claimed over new connections.
//!
//! The listener task owns the socket and the control connection and drives the protocol's
//! control machine (`socksng_proto::listener::ServerListener`: notices, REFUSE, token expiry,
//! backlog, keep-alive, idle and CLOSING). Each announced connection is held by a small task
//! that notices a peer going away before the claim and hands the connection to its claimer;
//! the token itself waits in the registry of `tokens`. When the control connection closes,
//! everything the listener announced is removed.

use crate::audit::Record;
use crate::config::{names_user, PortGrant};
use crate::conn::{Handshaken, SessionLog};
use crate::dial::{canonical_addr, port_zero, tune_stream};
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use crate::policy::Verdict;
use crate::shared::Shared;
use crate::stream::Plaintext;
use crate::tokens::{token_id, Owner, Pending};
use rand_core::RngCore;
use socksng_proto::listener::{ListenerGrant, ServerListener, ServerListenerEvent};
use socksng_proto::wire::ng::{rep, Token};
use socksng_proto::{Address, Command, Host, ReplyCode};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{sleep_until, Instant};

/// Largest backlog honoured, whatever the client asks for.
const MAX_BACKLOG: u16 = 1024;
/// The backlog a LISTEN with BACKLOG 0 gets.
const DEFAULT_BACKLOG: u16 = 128;
/// Random ports tried when "any port" has to avoid ports the user may not take.
const ANY_PORT_TRIES: usize = 64;

/// Whether `user` may listen on `port` under the grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortVerdict {
    Allowed,
    /// Granted to other users only.
    Reserved,
    /// No grant covers it.
    NotAllowed,
}

fn grant_applies(grant: &PortGrant, user: Option<&str>, groups: &Groups) -> bool {
    names_user(grant.users.as_deref(), user, groups)
}

type Groups = std::collections::HashMap<String, Vec<String>>;

/// Whether any port grant applies to `user`, so LISTEN can succeed at all.
pub(crate) fn may_listen(grants: &[PortGrant], groups: &Groups, user: Option<&str>) -> bool {
    grants.iter().any(|g| grant_applies(g, user, groups))
}

/// Ports named for particular users are reserved to them, whatever broader grants say.
pub(crate) fn port_verdict(
    grants: &[PortGrant],
    groups: &Groups,
    user: Option<&str>,
    port: u16,
) -> PortVerdict {
    let covering = || {
        grants
            .iter()
            .filter(|g| g.ports.iter().any(|r| r.0.contains(&port)))
    };
    let is_named = |g: &&PortGrant| {
        g.users
            .as_ref()
            .is_some_and(|l| !l.iter().any(|u| u == "*"))
    };
    if covering().any(|g| is_named(&g)) {
        return if covering()
            .filter(is_named)
            .any(|g| grant_applies(g, user, groups))
        {
            PortVerdict::Allowed
        } else {
            PortVerdict::Reserved
        };
    }
    if covering().any(|g| grant_applies(g, user, groups)) {
        PortVerdict::Allowed
    } else {
        PortVerdict::NotAllowed
    }
}

fn bind_listener(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(backlog as i32)?;
    TcpListener::from_std(socket.into())
}

/// Binds a port the user may take: the one asked for, or with `exact` unset any allowed one.
fn choose_and_bind(
    grants: &[PortGrant],
    groups: &Groups,
    user: Option<&str>,
    ip: IpAddr,
    port: u16,
    exact: bool,
    backlog: u32,
) -> Result<TcpListener, SessionOutcome> {
    // The draft checks the address before the port: one this host does not have is X'02'
    // whatever the port. A trial bind on port 0 says whether the address is ours.
    if !ip.is_unspecified() {
        if let Err(e) = std::net::TcpListener::bind(SocketAddr::new(ip, 0)) {
            return Err(bind_refusal(ip, e));
        }
    }
    if port != 0 {
        let refusal = match port_verdict(grants, groups, user, port) {
            PortVerdict::Allowed => match bind_listener(SocketAddr::new(ip, port), backlog) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    SessionOutcome::refused(rep::PORT_IN_USE, format!("port {port} in use"))
                }
                Err(e) => return Err(bind_refusal(ip, e)),
            },
            PortVerdict::Reserved => {
                SessionOutcome::refused(rep::PORT_RESERVED, format!("port {port} reserved"))
            }
            PortVerdict::NotAllowed => {
                SessionOutcome::refused(ReplyCode::NOT_ALLOWED, format!("port {port} not granted"))
            }
        };
        if exact {
            return Err(refusal);
        }
    }
    if !may_listen(grants, groups, user) {
        return Err(SessionOutcome::refused(
            ReplyCode::NOT_ALLOWED,
            "no port granted to this user",
        ));
    }
    // The kernel's pick is usually inside the grants; otherwise try random granted ports.
    let any = bind_listener(SocketAddr::new(ip, 0), backlog).map_err(|e| bind_refusal(ip, e))?;
    let picked = any.local_addr().map(|a| a.port()).unwrap_or(0);
    if port_verdict(grants, groups, user, picked) == PortVerdict::Allowed {
        return Ok(any);
    }
    drop(any);
    let ranges: Vec<_> = grants
        .iter()
        .filter(|g| grant_applies(g, user, groups))
        .flat_map(|g| g.ports.iter().map(|r| r.0.clone()))
        .collect();
    if ranges.is_empty() {
        return Err(SessionOutcome::refused(
            ReplyCode::NOT_ALLOWED,
            "no port granted to this user",
        ));
    }
    let mut rng = rand_core::OsRng;
    for _ in 0..ANY_PORT_TRIES {
        let range = &ranges[rng.next_u32() as usize % ranges.len()];
        let span = u32::from(*range.end()) - u32::from(*range.start()) + 1;
        let candidate = (u32::from(*range.start()) + rng.next_u32() % span) as u16;
        if candidate == 0 || port_verdict(grants, groups, user, candidate) != PortVerdict::Allowed {
            continue;
        }
        if let Ok(l) = bind_listener(SocketAddr::new(ip, candidate), backlog) {
            return Ok(l);
        }
    }
    Err(SessionOutcome::refused(
        rep::PORT_IN_USE,
        "no free granted port found",
    ))
}

/// A bind that failed for a reason other than the port: an address this host does not have
/// is not one the client may listen on.
fn bind_refusal(ip: IpAddr, e: io::Error) -> SessionOutcome {
    if e.kind() == io::ErrorKind::AddrNotAvailable {
        let why = format!("{ip} is not an address of this host");
        SessionOutcome::refused(ReplyCode::NOT_ALLOWED, why)
    } else {
        SessionOutcome::refused(ReplyCode::GENERAL_FAILURE, format!("listen: {e}"))
    }
}

/// The address a listener bound to the unspecified address is reached at: the server's own
/// address on the control connection when the family matches, else the configured external
/// address of that family, else the address this host would send from on its default route
/// (a UDP connect sends nothing), else loopback.
async fn reachable_address(
    shared: &Shared,
    control_local: SocketAddr,
    bound: SocketAddr,
) -> IpAddr {
    let local = port_zero(control_local).ip();
    if local.is_ipv4() == bound.is_ipv4() {
        return local;
    }
    let (any, probe, loopback): (IpAddr, IpAddr, IpAddr) = if bound.is_ipv4() {
        (
            Ipv4Addr::UNSPECIFIED.into(),
            Ipv4Addr::new(192, 0, 2, 1).into(),
            Ipv4Addr::LOCALHOST.into(),
        )
    } else {
        (
            Ipv6Addr::UNSPECIFIED.into(),
            Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1).into(),
            Ipv6Addr::LOCALHOST.into(),
        )
    };
    if let Some(external) = crate::dial::external_for(&shared.cfg.external, probe) {
        return external;
    }
    let routed = async {
        let s = UdpSocket::bind(SocketAddr::new(any, 0)).await.ok()?;
        s.connect(SocketAddr::new(probe, 9)).await.ok()?;
        Some(s.local_addr().ok()?.ip())
    };
    routed.await.unwrap_or(loopback)
}

fn new_token() -> Token {
    let mut t = [0u8; 16];
    rand_core::OsRng.fill_bytes(&mut t);
    t
}

pub(crate) async fn listen(
    mut conn: Handshaken,
    address: Address,
    exact: bool,
    backlog: u16,
    log: &mut SessionLog,
) {
    let shared = conn.shared.clone();
    let user = conn.user.clone();
    log.target = Some(address.clone());
    let ip = match address.host {
        Host::Ip(ip) => crate::policy::canonical(ip),
        Host::Domain(_) => {
            let why = "LISTEN takes an address family, not a name";
            return conn
                .refuse(log, ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED, why)
                .await;
        }
    };
    let max = shared
        .cfg
        .class_of(user.as_deref())
        .max_listeners
        .unwrap_or(shared.cfg.ng.max_listeners_per_user);
    let holder = crate::shared::Holder::of(user.as_deref(), conn.peer.ip());
    let Some(slot) = shared.listeners.open_listener(holder, max) else {
        let why = format!("{max} listeners already open");
        return conn.refuse(log, rep::LIMIT_REACHED, why).await;
    };
    let backlog = match backlog {
        0 => DEFAULT_BACKLOG,
        n => n.min(MAX_BACKLOG),
    };
    let ways = shared
        .upstreams
        .ways_without_destination(user.as_deref(), Command::Bind);
    let (mut incoming, announced) = if ways.is_empty() {
        log.via = Some("direct".into());
        let grants = &shared.cfg.ng.ports;
        let bound = choose_and_bind(
            grants,
            &shared.cfg.groups,
            user.as_deref(),
            ip,
            address.port,
            exact,
            u32::from(backlog),
        );
        let listener = match bound {
            Ok(l) => l,
            Err(refusal) => return conn.refuse_with(log, refusal).await,
        };
        let mut announced = match listener.local_addr() {
            Ok(a) => canonical_addr(a),
            Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
        };
        if announced.ip().is_unspecified() {
            announced.set_ip(reachable_address(&shared, conn.local, announced).await);
        }
        (Incoming::Local(listener), announced)
    } else {
        // This server's grants say who may listen at all, and which ports they may ask for,
        // wherever the listener opens.
        let grants = &shared.cfg.ng.ports;
        let groups = &shared.cfg.groups;
        if !may_listen(grants, groups, user.as_deref()) {
            let why = "no port granted to this user";
            return conn.refuse(log, ReplyCode::NOT_ALLOWED, why).await;
        }
        let mut port = address.port;
        if port != 0 {
            let refusal = match port_verdict(grants, groups, user.as_deref(), port) {
                PortVerdict::Allowed => None,
                PortVerdict::Reserved => Some((rep::PORT_RESERVED, "reserved")),
                PortVerdict::NotAllowed => Some((ReplyCode::NOT_ALLOWED, "not granted")),
            };
            match refusal {
                Some((code, why)) if exact => {
                    return conn.refuse(log, code, format!("port {port} {why}")).await;
                }
                Some(_) => port = 0,
                None => {}
            }
        }
        let hops = conn.hs.hops().saturating_add(1);
        let limit = shared.cfg.timeouts.connect;
        let asked = SocketAddr::new(ip, port);
        log.via = Some(shared.upstreams.names(&ways));
        let opened = shared
            .upstreams
            .first_working(&ways, hops, limit, |client| async move {
                client
                    .listen(asked.port(), exact, backlog, Address::ip(asked))
                    .await
            })
            .await;
        let (used, remote) = match opened {
            Ok(x) => x,
            Err(failed) => {
                let refusal = SessionOutcome::refused(failed.code, failed.why);
                return conn.refuse_with(log, refusal).await;
            }
        };
        log.via = Some(shared.upstreams.name(used).to_owned());
        let Some(announced) = remote.local_addr().socket_addr() else {
            let why = "the upstream announced its listener by name";
            return conn.refuse(log, ReplyCode::GENERAL_FAILURE, why).await;
        };
        (
            Incoming::upstream(remote, shared.upstreams.drain),
            announced,
        )
    };
    let idle = shared.cfg.timeouts.idle;
    let grant = ListenerGrant {
        backlog,
        token_lifetime: shared.cfg.ng.token_lifetime,
        idle: (!idle.is_zero()).then_some(idle),
    };
    if conn.succeed(log, announced).await {
        let _open = crate::metrics::metrics().listener_opened();
        log.connected = Some(announced);
        shared.audit(|| {
            Record::new("listener-opened")
                .with("session", log.id())
                .with("listener", slot.id)
                .with("user", user.clone())
                .with("client", conn.peer.to_string())
                .with("address", announced.to_string())
                .with("via", log.via.clone())
        });
        let owner = Owner::of(user.as_deref(), conn.peer.ip());
        let ctx = ListenerCtx {
            shared: &shared,
            incoming: &mut incoming,
            id: slot.id,
            user: user.as_deref(),
            owner: &owner,
        };
        let early = std::mem::take(&mut conn.early_data);
        let (end, sent_closing) = serve_listener(ctx, &mut conn.stream, grant, early).await;
        log.outcome = Some(end);
        if sent_closing {
            // CLOSING is the last message: a reset must not overtake it. The listener goes
            // first, so nobody connects to a port that is already given up.
            drop(incoming);
            crate::conn::linger_close(&mut conn.stream).await;
            return;
        }
    }
    // The socket closes before the place is given back.
    drop(incoming);
    drop(slot);
}

/// Where a listener's connections come from: its own socket, or a listener opened on an
/// upstream, whose connections arrive claimed there and relayed through it.
enum Incoming {
    Local(TcpListener),
    /// A task accepts on the upstream's listener (its accept is not cancel-safe) and hands
    /// over each connection; it ends, closing the channel, when that listener ends.
    Upstream {
        arrived: mpsc::Receiver<Result<Arrived, String>>,
        task: tokio::task::JoinHandle<()>,
    },
}

/// A connection that arrived at a listener.
struct Arrived {
    stream: Plaintext,
    peer: SocketAddr,
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if let Incoming::Upstream { task, .. } = self {
            task.abort();
        }
    }
}

impl Incoming {
    fn upstream(mut remote: socksng_client::ProxyListener, drain: std::time::Duration) -> Incoming {
        let (tx, arrived) = mpsc::channel(4);
        let task = tokio::spawn(async move {
            loop {
                let next = match remote.accept().await {
                    Ok((proxied, peer)) => {
                        let peer = peer
                            .socket_addr()
                            .unwrap_or_else(|| SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)));
                        match crate::upstream::plaintext(proxied.into_inner(), drain) {
                            Ok((stream, carry)) => {
                                // The TLS task runs on its own: the connection may wait
                                // for its claim, then be relayed by another session.
                                if let Some(carry) = carry {
                                    tokio::spawn(carry);
                                }
                                Ok(Arrived { stream, peer })
                            }
                            Err(e) => Err(format!("socket pair for TLS: {e}")),
                        }
                    }
                    Err(e) => Err(format!("the upstream's listener ended: {e}")),
                };
                let last = next.is_err();
                if tx.send(next).await.is_err() || last {
                    return;
                }
            }
        });
        Incoming::Upstream { arrived, task }
    }

    /// The next connection; `Ok(None)` for one not worth reporting (a failed accept), `Err`
    /// when no more can come.
    async fn next(&mut self) -> Result<Option<Arrived>, String> {
        match self {
            Incoming::Local(listener) => match listener.accept().await {
                Ok((stream, peer)) => Ok(Some(Arrived {
                    stream: Plaintext::Tcp(stream),
                    peer: canonical_addr(peer),
                })),
                Err(e) if crate::dial::is_resource_exhaustion(&e) => {
                    Err(format!("accept failed: {e}"))
                }
                Err(_) => Ok(None),
            },
            Incoming::Upstream { arrived, .. } => match arrived.recv().await {
                Some(Ok(a)) => Ok(Some(a)),
                Some(Err(why)) => Err(why),
                None => Err("the upstream's listener ended".into()),
            },
        }
    }
}

/// What a listener task works with besides its control connection.
struct ListenerCtx<'a> {
    shared: &'a Arc<Shared>,
    incoming: &'a mut Incoming,
    id: u64,
    user: Option<&'a str>,
    owner: &'a Owner,
}

fn now() -> std::time::Instant {
    Instant::now().into_std()
}

/// Runs a listener until its control connection ends; returns how it ended, and whether it
/// ended with the server's CLOSING (which wants a lingering close).
async fn serve_listener(
    cx: ListenerCtx<'_>,
    control: &mut Plaintext,
    grant: ListenerGrant,
    early: Vec<u8>,
) -> (SessionOutcome, bool) {
    let registry = &cx.shared.listeners;
    let mut machine = ServerListener::new(grant, now());
    // Control messages may have come right behind the LISTEN request.
    if !early.is_empty() {
        machine.handle_input(&early, now());
    }
    // Each holder task reports at most once, so the queue is bounded by the backlog.
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<Token>();
    let mut out = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    let mut overflow = 0u64;
    let mut sent_closing = false;
    let end = loop {
        let mut closing = None;
        while let Some(event) = machine.poll_event() {
            match event {
                ServerListenerEvent::Refused(token) | ServerListenerEvent::Expired(token) => {
                    let event = match event {
                        ServerListenerEvent::Refused(_) => "token-refused",
                        _ => "token-expired",
                    };
                    registry.remove_for(&token, cx.id);
                    cx.shared.audit(|| {
                        Record::new(event)
                            .with("listener", cx.id)
                            .with("token", token_id(&token))
                    });
                }
                ServerListenerEvent::Close { reason, why } => {
                    // CLOSING's reason says whose doing the end was.
                    let (kind, side) = match reason {
                        ReplyCode::COMMAND_NOT_SUPPORTED => {
                            (OutcomeKind::ProtocolError, Side::Client)
                        }
                        rep::TIMED_OUT => (OutcomeKind::TimedOut, Side::Client),
                        _ => (OutcomeKind::Broken, Side::Internal),
                    };
                    let words = format!("closed it (CLOSING {:#04x}): {why}", reason.0);
                    closing = Some(SessionOutcome::new(kind, side, words));
                }
            }
        }
        if machine.poll_transmit(&mut out) {
            let written = control.write_all(&out).await;
            out.clear();
            if written.is_err() {
                break SessionOutcome::new(
                    OutcomeKind::Broken,
                    Side::Client,
                    "control connection failed",
                );
            }
        }
        if let Some(why) = closing {
            sent_closing = true;
            break why;
        }
        let deadline = machine.poll_timeout().map(Instant::from_std);
        tokio::select! {
            next = cx.incoming.next() => {
                let Arrived { stream, peer } = match next {
                    Ok(Some(a)) => a,
                    Ok(None) => continue,
                    Err(why) => {
                        machine.fail(why);
                        continue;
                    }
                };
                // Through an upstream too: the rules here say who may reach this user.
                if let Verdict::Deny(why) = cx.shared.policy.check(cx.user, Command::Bind, None, peer.ip(), peer.port()) {
                    tracing::info!(from = %peer, %why, "LISTEN: incoming connection refused by policy");
                    cx.shared.audit(|| {
                        Record::new("incoming-refused")
                            .with("listener", cx.id)
                            .with("peer", peer.to_string())
                            .with("reason", why.to_string())
                    });
                    continue;
                }
                // Claims made while this task waited have freed their places.
                machine.retain_unclaimed(|t| registry.is_pending(t));
                if !machine.has_room() {
                    overflow += 1;
                    continue; // Dropping the stream refuses the connection.
                }
                if let Plaintext::Tcp(tcp) = &stream {
                    tune_stream(tcp, cx.shared.cfg.timeouts.tcp_keepalive);
                }
                let token = new_token();
                let (handoff, claimed) = oneshot::channel();
                registry.insert(token, Pending { owner: cx.owner.clone(), listener: cx.id, peer, tls: control.is_tls(), handoff });
                tokio::spawn(hold_until_claimed(stream, token, cx.id, cx.shared.clone(), claimed, gone_tx.clone()));
                machine.announce(token, Address::ip(peer), now());
                cx.shared.audit(|| {
                    Record::new("token-announced")
                        .with("listener", cx.id)
                        .with("token", token_id(&token))
                        .with("peer", peer.to_string())
                });
            }
            r = control.read(&mut chunk) => match r {
                Ok(0) => break SessionOutcome::new(OutcomeKind::Completed, Side::Client, "control connection closed"),
                Err(e) => break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("control connection failed: {e}")),
                Ok(n) => machine.handle_input(&chunk[..n], now()),
            },
            Some(token) = gone_rx.recv() => {
                machine.peer_gone(&token);
            }
            _ = sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                // A token claimed meanwhile must not be announced as expired.
                machine.retain_unclaimed(|t| registry.is_pending(t));
                machine.handle_timeout(now());
            }
        }
    };
    // Claims made since the last look count as claims, not as connections left behind.
    machine.retain_unclaimed(|t| registry.is_pending(t));
    // Every unclaimed connection goes with the listener.
    for token in machine.unclaimed() {
        registry.remove_for(token, cx.id);
    }
    let st = machine.stats();
    let end = end.with_note(format_args!(
        "announced {}, claimed {}, refused {}, expired {}, gone {}, overflow {overflow}",
        st.announced, st.claimed, st.refused, st.expired, st.gone
    ));
    (end, sent_closing)
}

/// Holds an announced connection until it is claimed (handing it over) or its entry leaves
/// the registry (closing it). A peer that resets, or closes before sending a byte, is gone:
/// its entry is removed and the listener told, so the client hears EXPIRED.
async fn hold_until_claimed(
    stream: Plaintext,
    token: Token,
    listener: u64,
    shared: Arc<Shared>,
    mut claimed: oneshot::Receiver<oneshot::Sender<Plaintext>>,
    gone: mpsc::UnboundedSender<Token>,
) {
    // A connection relayed from an upstream is not watched: its token expires instead.
    let mut watching = matches!(stream, Plaintext::Tcp(_));
    let mut byte = [0u8; 1];
    let answer = loop {
        tokio::select! {
            request = &mut claimed => break request.ok(),
            seen = peek(&stream, &mut byte), if watching => match seen {
                // Data waits for the claim, even if the peer closes after it.
                Ok(n) if n > 0 => watching = false,
                _ => {
                    if shared.listeners.remove_for(&token, listener) {
                        let _ = gone.send(token);
                        return;
                    }
                    // Claimed at this very moment: the claimer gets what there is.
                    watching = false;
                }
            },
        }
    };
    if let Some(reply) = answer {
        let _ = reply.send(stream);
    }
}

/// Peeks at a held connection from this server's own listener.
async fn peek(stream: &Plaintext, byte: &mut [u8]) -> io::Result<usize> {
    match stream {
        Plaintext::Tcp(tcp) => tcp.peek(byte).await,
        Plaintext::Tls(..) => std::future::pending().await,
    }
}

pub(crate) async fn accept(mut conn: Handshaken, token: Token, log: &mut SessionLog) {
    let shared = conn.shared.clone();
    let claimant = Owner::of(conn.user.as_deref(), conn.peer.ip());
    let Some(Pending {
        handoff,
        peer,
        listener,
        ..
    }) = shared
        .listeners
        .claim(&token, &claimant, conn.stream.is_tls())
    else {
        return conn
            .refuse(log, rep::TOKEN_NOT_VALID, "token not valid")
            .await;
    };
    shared.audit(|| {
        Record::new("token-claimed")
            .with("session", log.id())
            .with("listener", listener)
            .with("token", token_id(&token))
            .with("user", conn.user.clone())
            .with("client", conn.peer.to_string())
            .with("peer", peer.to_string())
    });
    let (reply, incoming) = oneshot::channel();
    let incoming = match handoff.send(reply) {
        Ok(()) => incoming.await.ok(),
        Err(_) => None,
    };
    let Some(mut incoming) = incoming else {
        let why = "the peer went away before the claim";
        return conn.refuse(log, rep::TOKEN_NOT_VALID, why).await;
    };
    log.target = Some(Address::ip(peer));
    log.connected_to(peer);
    if !conn.succeed(log, peer).await {
        return;
    }
    // Bytes the client sent right behind its ACCEPT are the first for the peer.
    let early = std::mem::take(&mut conn.early_data);
    conn.relay_with(&mut incoming, early, log).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;

    fn grants() -> Vec<PortGrant> {
        vec![
            PortGrant {
                ports: vec![PortRange(20000..=20009)],
                users: Some(vec!["alice".into()]),
            },
            PortGrant {
                ports: vec![PortRange(20000..=29999)],
                users: Some(vec!["*".into()]),
            },
            PortGrant {
                ports: vec![PortRange(30000..=30000)],
                users: None,
            },
        ]
    }

    #[test]
    fn port_grants() {
        let g = grants();
        assert_eq!(
            port_verdict(&g, &Groups::new(), Some("alice"), 20005),
            PortVerdict::Allowed
        );
        // Named for alice: reserved to her even though the "*" grant covers it too.
        assert_eq!(
            port_verdict(&g, &Groups::new(), Some("bob"), 20005),
            PortVerdict::Reserved
        );
        assert_eq!(
            port_verdict(&g, &Groups::new(), Some("bob"), 25000),
            PortVerdict::Allowed
        );
        assert_eq!(
            port_verdict(&g, &Groups::new(), None, 25000),
            PortVerdict::NotAllowed
        );
        assert_eq!(
            port_verdict(&g, &Groups::new(), None, 30000),
            PortVerdict::Allowed
        );
        assert_eq!(
            port_verdict(&g, &Groups::new(), Some("bob"), 31000),
            PortVerdict::NotAllowed
        );
        let only_alice = vec![PortGrant {
            ports: vec![PortRange(20000..=20009)],
            users: Some(vec!["alice".into()]),
        }];
        assert_eq!(
            port_verdict(&only_alice, &Groups::new(), Some("bob"), 20001),
            PortVerdict::Reserved
        );
    }

    #[test]
    fn ports_reserved_for_a_group() {
        let grants = vec![
            PortGrant {
                ports: vec![PortRange(5000..=5009)],
                users: Some(vec!["@ops".into()]),
            },
            PortGrant {
                ports: vec![PortRange(1024..=65535)],
                users: Some(vec!["*".into()]),
            },
        ];
        let mut groups = Groups::new();
        groups.insert("ops".into(), vec!["alice".into()]);
        assert_eq!(
            port_verdict(&grants, &groups, Some("alice"), 5001),
            PortVerdict::Allowed
        );
        assert_eq!(
            port_verdict(&grants, &groups, Some("bob"), 5001),
            PortVerdict::Reserved
        );
        assert_eq!(
            port_verdict(&grants, &groups, Some("bob"), 6000),
            PortVerdict::Allowed
        );
    }

    #[test]
    fn tokens_differ() {
        assert_ne!(new_token(), new_token());
    }
}
