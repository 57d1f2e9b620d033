//! BIND: a listening socket for exactly one incoming connection from the expected peer.
//!
//! The first reply carries the listening address; the second, once the expected peer has
//! connected, carries the peer's address, and the control connection becomes the relay.
//! Connections from other hosts, or refused by policy, are closed and the wait goes on until
//! the BIND timeout, which is answered with TTL expired.

use crate::conn::{allowed_addresses, Handshaken, SessionLog};
use crate::dial::is_resource_exhaustion;
use crate::dial::{canonical_addr, port_zero, tune_stream};
use crate::outcome::{OutcomeKind, Side};
use crate::policy::{canonical, Verdict};
use socksng_proto::{Address, Command, Host, ReplyCode};
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::TcpListener;
use tokio::time::{sleep_until, Instant};

/// The client closed before the peer came: its choice, not a failure.
const CLIENT_GAVE_UP: &str = "client closed while waiting for the peer";

/// How long a BIND whose client closed before the peer arrived still waits for the peer
/// (`timeouts.half_close` if shorter).
const EOF_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Data the client may send before the peer arrives is kept for it, up to this much.
const MAX_EARLY_DATA: usize = 64 * 1024;

pub(crate) async fn bind(mut conn: Handshaken, expected: Address, log: &mut SessionLog) {
    log.via = Some("direct".into());
    let shared = conn.shared.clone();
    let user = conn.user.clone();
    // None: any peer the policy allows (the request named 0.0.0.0 or ::).
    let expected_ips: Option<Vec<IpAddr>> = match &expected.host {
        Host::Ip(ip) if ip.is_unspecified() => None,
        _ => match allowed_addresses(&shared, user.as_deref(), Command::Bind, &expected).await {
            Ok(addrs) => Some(addrs.iter().map(|a| canonical(a.ip())).collect()),
            Err(refusal) => return conn.refuse_with(log, refusal).await,
        },
    };
    let control_local = conn.local;
    let toward = expected_ips.as_ref().and_then(|ips| ips.first().copied());
    let listener = match TcpListener::bind(listen_address(control_local, toward)).await {
        Ok(l) => l,
        Err(e) => {
            return conn
                .refuse(log, ReplyCode::GENERAL_FAILURE, format!("BIND listen: {e}"))
                .await
        }
    };
    let listen_addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    if !conn.succeed(log, listen_addr).await {
        return;
    }
    let mut deadline = Instant::now() + shared.cfg.timeouts.bind;
    let mut client_eof = false;
    let mut early = std::mem::take(&mut conn.early_data);
    let mut chunk = [0u8; 4096];
    let (mut peer_stream, peer) = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (s, from) = match accepted {
                    Ok(x) => x,
                    Err(e) if is_resource_exhaustion(&e) => {
                        // Retrying would spin on the still-pending connection.
                        return conn.refuse(log, ReplyCode::GENERAL_FAILURE, format!("BIND accept: {e}")).await;
                    }
                    Err(e) => { tracing::debug!(error = %e, "BIND accept failed"); continue; }
                };
                let from = canonical_addr(from);
                match &expected_ips {
                    // The expected peer was checked by name and port before listening.
                    Some(ips) if ips.contains(&from.ip()) => {}
                    Some(_) => {
                        tracing::info!(client = %conn.peer, from = %from, "BIND: connection from an unexpected host closed");
                        continue;
                    }
                    None => {
                        if let Verdict::Deny(why) = shared.policy.check(user.as_deref(), Command::Bind, None, from.ip(), expected.port) {
                            tracing::info!(client = %conn.peer, from = %from, %why, "BIND: peer refused by policy");
                            continue;
                        }
                    }
                }
                break (s, from);
            }
            r = conn.stream.read(&mut chunk), if !client_eof => match r {
                // A client that closes before its peer arrives has probably gone, but it may
                // only have half-closed after early data for the peer and still read the
                // second reply: it keeps the port for a short linger, not the BIND timeout.
                Ok(0) => {
                    client_eof = true;
                    let linger = match shared.cfg.timeouts.half_close {
                        d if d.is_zero() => EOF_LINGER,
                        d => d.min(EOF_LINGER),
                    };
                    deadline = deadline.min(Instant::now() + linger);
                }
                Err(_) => { log.end(OutcomeKind::Completed, Side::Client, CLIENT_GAVE_UP); return; }
                Ok(k) if early.len() + k <= MAX_EARLY_DATA => early.extend_from_slice(&chunk[..k]),
                Ok(_) => { log.end(OutcomeKind::ProtocolError, Side::Client, "client sent too much before the peer arrived"); return; }
            },
            _ = sleep_until(deadline) => {
                if client_eof {
                    log.end(OutcomeKind::Completed, Side::Client, CLIENT_GAVE_UP);
                    return;
                }
                let why = format!("no peer within {:?}", shared.cfg.timeouts.bind);
                return conn.refuse(log, ReplyCode::TTL_EXPIRED, why).await;
            }
        }
    };
    drop(listener);
    log.connected_to(peer);
    tune_stream(&peer_stream, shared.cfg.timeouts.tcp_keepalive);
    if !conn.succeed(log, peer).await {
        return;
    }
    conn.relay_with(&mut peer_stream, early, log).await;
}

/// Where to listen so the expected peer can reach us: the source address this host would use
/// toward it (on a gateway that is the outside interface, not the one the client came in on),
/// else the control connection's own address. Port 0 either way; a link-local scope is kept.
fn listen_address(control_local: SocketAddr, toward: Option<IpAddr>) -> SocketAddr {
    let routed = toward.and_then(|ip| {
        let any: SocketAddr = match ip {
            IpAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
            IpAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        // Connecting a UDP socket sends nothing; it only asks the routing table.
        let probe = std::net::UdpSocket::bind(any).ok()?;
        probe.connect((ip, 9)).ok()?;
        probe.local_addr().ok()
    });
    port_zero(routed.unwrap_or(control_local))
}
