//! SOCKS-NG LISTEN and ACCEPT: listening sockets on the proxy's outside whose incoming
//! connections are announced with single-use tokens and claimed over new connections.
//!
//! Live tokens wait in the registry of `tokens`. The listener task owns the socket and the control connection: it announces
//! incoming connections, honours REFUSE, expires unclaimed tokens, bounds the unclaimed ones
//! by the backlog, and on the control connection's close removes everything it announced.

use crate::config::{names_user, PortGrant};
use crate::conn::{Handshaken, SessionLog};
use crate::connect::{canonical_addr, port_zero, tune_stream};
use crate::policy::Verdict;
use crate::relay::{relay, IdleTimer, RelayTimeouts};
use crate::shared::Shared;
use crate::tokens::Pending;
use rand_core::RngCore;
use socksng_proto::wire::ng::{rep, ControlMessage, Token};
use socksng_proto::{Address, Command, DecodeError, Host, ReplyCode};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep_until, Instant};

/// Largest backlog honoured, whatever the client asks for.
const MAX_BACKLOG: usize = 1024;
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
) -> Result<TcpListener, (ReplyCode, String)> {
    if port != 0 {
        let refusal = match port_verdict(grants, groups, user, port) {
            PortVerdict::Allowed => match bind_listener(SocketAddr::new(ip, port), backlog) {
                Ok(l) => return Ok(l),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                    (rep::PORT_IN_USE, format!("port {port} in use"))
                }
                Err(e) => return Err((ReplyCode::GENERAL_FAILURE, format!("listen: {e}"))),
            },
            PortVerdict::Reserved => (rep::PORT_RESERVED, format!("port {port} reserved")),
            PortVerdict::NotAllowed => (ReplyCode::NOT_ALLOWED, format!("port {port} not granted")),
        };
        if exact {
            return Err(refusal);
        }
    }
    if !grants.iter().any(|g| grant_applies(g, user, groups)) {
        return Err((
            ReplyCode::NOT_ALLOWED,
            "no port granted to this user".into(),
        ));
    }
    // The kernel's pick is usually inside the grants; otherwise try random granted ports.
    let any = bind_listener(SocketAddr::new(ip, 0), backlog)
        .map_err(|e| (ReplyCode::GENERAL_FAILURE, format!("listen: {e}")))?;
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
        return Err((
            ReplyCode::NOT_ALLOWED,
            "no port granted to this user".into(),
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
    Err((rep::PORT_IN_USE, "no free granted port found".into()))
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
        Host::Ip(ip) => ip,
        Host::Domain(_) => {
            let why = "LISTEN takes an address family, not a name";
            return conn
                .refuse(log, ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED, why)
                .await;
        }
    };
    let max = shared.cfg.ng.max_listeners_per_user;
    let Some(slot) = shared.listeners.open_listener(user.as_deref(), max) else {
        let why = format!("{max} listeners already open");
        return conn.refuse(log, rep::LIMIT_REACHED, why).await;
    };
    let backlog = usize::from(backlog).clamp(1, MAX_BACKLOG);
    let grants = &shared.cfg.ng.ports;
    let bound = choose_and_bind(
        grants,
        &shared.cfg.groups,
        user.as_deref(),
        ip,
        address.port,
        exact,
        backlog as u32,
    );
    let listener = match bound {
        Ok(l) => l,
        Err((code, why)) => return conn.refuse(log, code, why).await,
    };
    let mut announced = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    // A wildcard listener is reached at the address the client reached us on.
    if announced.ip().is_unspecified() {
        if let Ok(local) = conn.stream.local_addr() {
            if local.is_ipv4() == announced.is_ipv4() {
                announced = SocketAddr::new(port_zero(local).ip(), announced.port());
            }
        }
    }
    if conn.succeed(log, announced).await {
        log.connected = Some(announced);
        let stats = serve_listener(
            &shared,
            &mut conn.stream,
            &listener,
            slot.id,
            user.as_deref(),
            backlog,
        )
        .await;
        log.outcome = stats;
    }
    // The socket closes before the place is given back.
    drop(listener);
    drop(slot);
}

/// Runs a listener until its control connection ends; returns the log outcome.
async fn serve_listener(
    shared: &Arc<Shared>,
    control: &mut TcpStream,
    listener: &TcpListener,
    id: u64,
    user: Option<&str>,
    backlog: usize,
) -> String {
    let lifetime = shared.cfg.ng.token_lifetime;
    let registry = &shared.listeners;
    let mut mine: Vec<(Token, Instant)> = Vec::new();
    let (mut announced, mut overflow, mut refused, mut expired) = (0u64, 0u64, 0u64, 0u64);
    let mut inbox: Vec<u8> = Vec::with_capacity(64);
    let mut chunk = [0u8; 256];
    let mut out = Vec::with_capacity(64);
    // A control connection whose client vanished without closing would hold its port.
    let mut idle = IdleTimer::new(shared.cfg.timeouts.idle);
    let end = loop {
        registry.keep_pending(&mut mine);
        let next_expiry = mine.iter().map(|(_, at)| *at).min();
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) if crate::connect::is_resource_exhaustion(&e) => break format!("accept failed: {e}"),
                    Err(_) => continue,
                };
                let peer = canonical_addr(peer);
                if let Verdict::Deny(why) = shared.policy.check(user, Command::Bind, None, peer.ip(), peer.port()) {
                    tracing::info!(from = %peer, %why, "LISTEN: incoming connection refused by policy");
                    continue;
                }
                // Claims made while this task waited have freed their places.
                registry.keep_pending(&mut mine);
                if mine.len() >= backlog {
                    overflow += 1;
                    continue; // Dropping the stream refuses the connection.
                }
                tune_stream(&stream, shared.cfg.timeouts.tcp_keepalive);
                let token = new_token();
                registry.insert(token, Pending { owner: user.map(str::to_owned), listener: id, stream, peer });
                mine.push((token, Instant::now() + lifetime));
                out.clear();
                ControlMessage::AcceptNotice { token, peer: Address::ip(peer) }.encode(&mut out);
                if control.write_all(&out).await.is_err() {
                    break "control connection failed".to_string();
                }
                idle.touch();
                announced += 1;
            }
            r = control.read(&mut chunk) => match r {
                Ok(0) => break "control connection closed".to_string(),
                Err(e) => break format!("control connection failed: {e}"),
                Ok(n) => {
                    idle.touch();
                    inbox.extend_from_slice(&chunk[..n]);
                    loop {
                        match ControlMessage::decode(&inbox) {
                            Ok((ControlMessage::Refuse { token }, used)) => {
                                if registry.remove_for(&token, id) {
                                    refused += 1;
                                }
                                inbox.drain(..used);
                            }
                            Ok((_, _)) => break,
                            Err(DecodeError::Incomplete) => break,
                            Err(_) => { inbox.clear(); break; }
                        }
                    }
                    if ControlMessage::decode(&inbox).is_ok() {
                        break "client sent a server-only message".to_string();
                    }
                }
            },
            _ = sleep_until(next_expiry.unwrap_or_else(|| Instant::now() + lifetime)), if next_expiry.is_some() => {
                let now = Instant::now();
                for (token, _) in mine.iter().filter(|(_, at)| *at <= now) {
                    if registry.remove_for(token, id) {
                        expired += 1;
                        out.clear();
                        ControlMessage::Expired { token: *token }.encode(&mut out);
                        let _ = control.write_all(&out).await;
                    }
                }
                mine.retain(|(_, at)| *at > now);
            }
            _ = idle.expired() => break format!("idle for {:?}", shared.cfg.timeouts.idle),
        }
    };
    // Every unclaimed connection goes with the listener.
    for (token, _) in &mine {
        registry.remove_for(token, id);
    }
    format!(
        "{end}; announced {announced}, refused {refused}, expired {expired}, overflow {overflow}"
    )
}

pub(crate) async fn accept(mut conn: Handshaken, token: Token, log: &mut SessionLog) {
    let shared = conn.shared.clone();
    let Some((mut incoming, peer)) = shared.listeners.claim(&token, conn.user.as_deref()) else {
        return conn
            .refuse(log, rep::TOKEN_NOT_VALID, "token not valid")
            .await;
    };
    log.target = Some(Address::ip(peer));
    log.connected = Some(peer);
    if !conn.succeed(log, peer).await {
        return;
    }
    let end = relay(
        &mut conn.stream,
        &mut incoming,
        RelayTimeouts::from_config(&shared.cfg.timeouts),
        &log.up,
        &log.down,
    )
    .await;
    log.outcome = end.as_str().into();
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
