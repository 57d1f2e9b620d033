//! Outgoing connections: name resolution, RFC 8305 ("Happy Eyeballs v2") connection racing
//! across address families, socket options, and the mapping of failures to SOCKS reply codes.
//!
//! Names go to the system resolver (getaddrinfo, on the bounded pool in `admission`), which
//! answers both families at once, so the
//! resolution-delay part of RFC 8305 does not apply; the connection-attempt part does: the
//! addresses are interleaved starting with the preferred family, each attempt gets
//! `attempt_delay` before the next one starts, a failure starts the next at once, and the first
//! established connection wins while the rest are abandoned.

use crate::config::FamilyPreference;
use socket2::{Domain, Protocol, SockRef, Socket, TcpKeepalive, Type};
use socksng_proto::ReplyCode;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::task::JoinSet;

/// Orders addresses as RFC 8305 section 4 asks: families alternate, the preferred one first,
/// each family keeping the resolver's order; duplicates removed.
pub fn interleave(addrs: &[SocketAddr], prefer: FamilyPreference) -> Vec<SocketAddr> {
    let first_is_v6 = prefer == FamilyPreference::Ipv6;
    let mut seen = Vec::with_capacity(addrs.len());
    for a in addrs {
        if !seen.contains(a) {
            seen.push(*a);
        }
    }
    let (first, second): (Vec<_>, Vec<_>) =
        seen.into_iter().partition(|a| a.is_ipv6() == first_is_v6);
    let mut out = Vec::with_capacity(first.len() + second.len());
    let (mut f, mut s) = (first.into_iter(), second.into_iter());
    loop {
        match (f.next(), s.next()) {
            (None, None) => return out,
            (a, b) => out.extend(a.into_iter().chain(b)),
        }
    }
}

/// Applies the options every relayed TCP leg gets: no Nagle delay, and keepalive when set.
pub fn tune_stream(stream: &TcpStream, keepalive: Duration) {
    tune_socket(SockRef::from(stream), keepalive);
}

/// The same options on any TCP socket. Set on a listening socket, Linux copies them to every
/// accepted connection, which saves the calls per session.
pub fn tune_socket(socket: SockRef<'_>, keepalive: Duration) {
    let _ = socket.set_tcp_nodelay(true);
    if !keepalive.is_zero() {
        let ka = TcpKeepalive::new()
            .with_time(keepalive)
            .with_interval(keepalive / 4 + Duration::from_secs(1));
        let _ = socket.set_tcp_keepalive(&ka);
    }
}

/// The configured source address of `target`'s family, if any.
pub fn external_for(external: &[IpAddr], target: IpAddr) -> Option<IpAddr> {
    external
        .iter()
        .copied()
        .find(|e| e.is_ipv4() == target.is_ipv4())
}

/// How the server's outgoing TCP connections are made: from which source addresses, with
/// which keepalive, and a service class's mark and DSCP.
#[derive(Debug, Clone, Default)]
pub struct Outgoing {
    /// Source addresses (`external`): the first of the target's family is bound.
    pub external: Vec<IpAddr>,
    pub keepalive: Duration,
    /// Linux SO_MARK.
    pub mark: Option<u32>,
    /// DSCP, 0 to 63.
    pub dscp: Option<u8>,
}

impl Outgoing {
    /// Sets the mark and DSCP on a socket about to connect to (or send to) `family`'s kind of
    /// address. Best effort: a mark needs CAP_NET_ADMIN; a failure is logged once per socket.
    pub fn mark_socket(&self, socket: SockRef<'_>, ipv6: bool) {
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if let Some(mark) = self.mark {
            if let Err(e) = socket.set_mark(mark) {
                tracing::warn!(mark, error = %e, "cannot set SO_MARK (needs CAP_NET_ADMIN)");
            }
        }
        if let Some(dscp) = self.dscp {
            let tos = u32::from(dscp) << 2;
            let set = if ipv6 {
                socket.set_tclass_v6(tos)
            } else {
                socket.set_tos_v4(tos)
            };
            if let Err(e) = set {
                tracing::warn!(dscp, error = %e, "cannot set DSCP");
            }
        }
    }
}

/// Connects one socket, tuned before the SYN leaves. Success is read from the readiness
/// itself: a failed connect raises EPOLLERR, so the SO_ERROR query that tokio's own connect
/// makes on every connection is only needed on failure.
async fn connect_one(addr: SocketAddr, out: &Outgoing) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM.nonblocking().cloexec(),
        Some(Protocol::TCP),
    )?;
    tune_socket(SockRef::from(&socket), out.keepalive);
    out.mark_socket(SockRef::from(&socket), addr.is_ipv6());
    if let Some(source) = external_for(&out.external, addr.ip()) {
        socket.bind(&SocketAddr::new(source, 0).into())?;
    }
    match socket.connect(&addr.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket))?;
    let ready = stream.ready(Interest::WRITABLE | Interest::ERROR).await?;
    if ready.is_error() || ready.is_write_closed() {
        return Err(stream
            .take_error()?
            .unwrap_or_else(|| io::ErrorKind::NotConnected.into()));
    }
    Ok(stream)
}

/// Races connections to `addrs` (already in preference order) and returns the first that
/// succeeds, with its address, made as `out` says. On total failure returns the most telling
/// error seen.
pub async fn connect_racing(
    addrs: &[SocketAddr],
    attempt_delay: Duration,
    out: &Outgoing,
) -> io::Result<(TcpStream, SocketAddr)> {
    // One address has nothing to race: connect in this task, without spawning.
    if let [only] = addrs {
        return connect_one(*only, out).await.map(|s| (s, *only));
    }
    let mut pending = addrs.iter().copied();
    let mut attempts = JoinSet::new();
    let mut best_error: Option<io::Error> = None;
    loop {
        if attempts.is_empty() {
            match pending.next() {
                Some(a) => {
                    let out = out.clone();
                    attempts.spawn(async move { (a, connect_one(a, &out).await) });
                }
                None => {
                    return Err(best_error.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "no addresses")
                    }))
                }
            }
        }
        let next_start = tokio::time::sleep(attempt_delay);
        tokio::select! {
            done = attempts.join_next() => match done {
                Some(Ok((a, Ok(stream)))) => return Ok((stream, a)),
                Some(Ok((_, Err(e)))) => {
                    best_error = Some(more_telling(best_error.take(), e));
                    // A failure starts the next attempt without waiting.
                    if let Some(a) = pending.next() {
                        let out = out.clone();
                    attempts.spawn(async move { (a, connect_one(a, &out).await) });
                    }
                }
                Some(Err(join)) => best_error = Some(more_telling(best_error.take(), io::Error::other(join))),
                None => {}
            },
            _ = next_start, if pending.len() > 0 => {
                if let Some(a) = pending.next() {
                    let out = out.clone();
                    attempts.spawn(async move { (a, connect_one(a, &out).await) });
                }
            }
        }
    }
}

fn rank(e: &io::Error) -> u8 {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => 4,
        io::ErrorKind::TimedOut => 3,
        io::ErrorKind::HostUnreachable => 2,
        io::ErrorKind::NetworkUnreachable => 1,
        _ => 0,
    }
}

fn more_telling(old: Option<io::Error>, new: io::Error) -> io::Error {
    match old {
        Some(o) if rank(&o) > rank(&new) => o,
        _ => new,
    }
}

/// Accept errors that mean "no resources right now": retrying at once would spin.
pub fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

/// The SOCKS reply code for a failed connection attempt.
pub fn reply_code_for(e: &io::Error) -> ReplyCode {
    match e.kind() {
        io::ErrorKind::ConnectionRefused => ReplyCode::CONNECTION_REFUSED,
        io::ErrorKind::NetworkUnreachable => ReplyCode::NETWORK_UNREACHABLE,
        io::ErrorKind::HostUnreachable => ReplyCode::HOST_UNREACHABLE,
        io::ErrorKind::TimedOut => ReplyCode::TTL_EXPIRED,
        io::ErrorKind::AddrNotAvailable => ReplyCode::NETWORK_UNREACHABLE,
        io::ErrorKind::PermissionDenied => ReplyCode::NOT_ALLOWED,
        _ => match e.raw_os_error() {
            Some(libc::ENETUNREACH) | Some(libc::EAFNOSUPPORT) => ReplyCode::NETWORK_UNREACHABLE,
            Some(libc::EHOSTUNREACH) | Some(libc::EHOSTDOWN) => ReplyCode::HOST_UNREACHABLE,
            _ => ReplyCode::GENERAL_FAILURE,
        },
    }
}

/// The address a socket is bound to, with IPv4-mapped IPv6 unmapped (a dual-stack listener
/// reports IPv4 peers that way, and clients expect to see IPv4).
pub fn canonical_addr(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(crate::policy::canonical(a.ip()), a.port())
}

/// The same address with port 0, to bind a new socket beside an existing one. IPv4-mapped
/// forms are unmapped; a link-local IPv6 address keeps its scope (interface).
pub fn port_zero(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) if v6.ip().to_ipv4_mapped().is_none() => SocketAddr::V6(
            std::net::SocketAddrV6::new(*v6.ip(), 0, v6.flowinfo(), v6.scope_id()),
        ),
        other => SocketAddr::new(crate::policy::canonical(other.ip()), 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interleaves_preferred_family_first() {
        let input = [
            a("192.0.2.1:1"),
            a("192.0.2.2:1"),
            a("[2001:db8::1]:1"),
            a("192.0.2.1:1"),
            a("[2001:db8::2]:1"),
        ];
        assert_eq!(
            interleave(&input, FamilyPreference::Ipv6),
            [
                a("[2001:db8::1]:1"),
                a("192.0.2.1:1"),
                a("[2001:db8::2]:1"),
                a("192.0.2.2:1")
            ]
        );
        assert_eq!(
            interleave(&input, FamilyPreference::Ipv4),
            [
                a("192.0.2.1:1"),
                a("[2001:db8::1]:1"),
                a("192.0.2.2:1"),
                a("[2001:db8::2]:1")
            ]
        );
        assert_eq!(
            interleave(&input[..2], FamilyPreference::Ipv6),
            [a("192.0.2.1:1"), a("192.0.2.2:1")]
        );
    }

    #[test]
    fn reply_codes() {
        let e = |k| io::Error::from(k);
        assert_eq!(
            reply_code_for(&e(io::ErrorKind::ConnectionRefused)),
            ReplyCode::CONNECTION_REFUSED
        );
        assert_eq!(
            reply_code_for(&e(io::ErrorKind::TimedOut)),
            ReplyCode::TTL_EXPIRED
        );
        assert_eq!(
            reply_code_for(&io::Error::from_raw_os_error(libc::ENETUNREACH)),
            ReplyCode::NETWORK_UNREACHABLE
        );
        assert_eq!(
            reply_code_for(&io::Error::from_raw_os_error(libc::EHOSTUNREACH)),
            ReplyCode::HOST_UNREACHABLE
        );
        assert_eq!(
            reply_code_for(&e(io::ErrorKind::Other)),
            ReplyCode::GENERAL_FAILURE
        );
    }

    #[tokio::test]
    async fn races_past_a_dead_address() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = l.local_addr().unwrap();
        // A port nobody listens on: refused at once, and the next address is tried.
        let dead = {
            let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            t.local_addr().unwrap()
        };
        let (_, used) =
            connect_racing(&[dead, good], Duration::from_secs(30), &Outgoing::default())
                .await
                .unwrap();
        assert_eq!(used, good);
        let err = connect_racing(&[dead], Duration::from_millis(10), &Outgoing::default())
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::ConnectionRefused);
    }
}
