//! UDP ASSOCIATE: one relay socket per association, bound next to the control connection.
//!
//! Datagrams are taken only from the control connection's client IP; the client's UDP port is
//! the one named in the request when it is non-zero (and the request names this client), else
//! it is learned from the first datagram, since real clients send 0.0.0.0:0. Datagrams with
//! FRAG != 0 are dropped (no reassembly). Every destination goes through the policy engine,
//! and so does every reply's source. The association ends with its control connection.

use crate::connect::{canonical_addr, interleave, resolve};
use crate::policy::{canonical, Verdict};
use crate::session::{Handshaken, SessionLog};
use socksng_proto::{Address, Command, Host, ReplyCode, UdpHeader};
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

/// Names resolved per association are remembered, but not without bound.
const NAME_CACHE_MAX: usize = 256;

struct Counters {
    up_datagrams: u64,
    down_datagrams: u64,
    dropped: u64,
}

async fn readable(sock: &Option<UdpSocket>) -> io::Result<()> {
    match sock {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

pub(crate) async fn associate(mut conn: Handshaken, requested: Address, log: &mut SessionLog) {
    let client_ip = conn.peer.ip();
    // The request names the client's own UDP source. Clients that misread the field put the
    // target there instead; such a port is no use for matching, so it is learned instead.
    let mut client_port = match requested.host {
        Host::Ip(ip)
            if requested.port != 0 && (ip.is_unspecified() || canonical(ip) == client_ip) =>
        {
            Some(requested.port)
        }
        _ => None,
    };
    let local_ip = match conn.stream.local_addr() {
        Ok(a) => canonical_addr(a).ip(),
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    let relay = match UdpSocket::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(s) => s,
        Err(e) => {
            return conn
                .refuse(
                    log,
                    ReplyCode::GENERAL_FAILURE,
                    format!("UDP relay socket: {e}"),
                )
                .await
        }
    };
    let relay_addr = match relay.local_addr() {
        Ok(a) => a,
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    if !conn.succeed(log, relay_addr).await {
        return;
    }
    log.connected = Some(relay_addr);

    let shared = conn.shared.clone();
    let user = conn.user.clone();
    let mut out4: Option<UdpSocket> = None;
    let mut out6: Option<UdpSocket> = None;
    let mut names: HashMap<String, Option<IpAddr>> = HashMap::new();
    let mut buf = vec![0u8; 65_536];
    let mut packet: Vec<u8> = Vec::with_capacity(2048);
    let mut control_buf = [0u8; 512];
    let mut n = Counters {
        up_datagrams: 0,
        down_datagrams: 0,
        dropped: 0,
    };

    let end = loop {
        tokio::select! {
            r = conn.stream.read(&mut control_buf) => match r {
                Ok(0) => break "control connection closed".to_string(),
                Ok(_) => continue, // Nothing is defined for the client to send here.
                Err(e) => break format!("control connection failed: {e}"),
            },
            r = relay.readable() => {
                if let Err(e) = r { break format!("relay socket failed: {e}"); }
                let (len, src) = match relay.try_recv_from(&mut buf) {
                    Ok(x) => x,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => continue, // ICMP errors surface here; they concern one datagram.
                };
                let src = canonical_addr(src);
                if src.ip() != client_ip {
                    n.dropped += 1;
                    tracing::debug!(client = %conn.peer, from = %src, "UDP datagram from a foreign host dropped");
                    continue;
                }
                match client_port {
                    Some(p) if p != src.port() => {
                        n.dropped += 1;
                        tracing::debug!(client = %conn.peer, from = %src, "UDP datagram from an unexpected port dropped");
                        continue;
                    }
                    Some(_) => {}
                    None => client_port = Some(src.port()),
                }
                let Ok((header, head_len)) = UdpHeader::decode(&buf[..len]) else {
                    n.dropped += 1;
                    continue;
                };
                if header.frag != 0 {
                    n.dropped += 1;
                    continue;
                }
                let port = header.address.port;
                let (name, ip) = match &header.address.host {
                    Host::Ip(ip) => (None, canonical(*ip)),
                    Host::Domain(name) => {
                        let ip = match names.get(name) {
                            Some(cached) => *cached,
                            None => {
                                let found = resolve_for_udp(&shared, user.as_deref(), name, port).await;
                                if names.len() >= NAME_CACHE_MAX { names.clear(); }
                                names.insert(name.clone(), found);
                                found
                            }
                        };
                        match ip {
                            Some(ip) => (Some(name.as_str()), ip),
                            None => { n.dropped += 1; continue; }
                        }
                    }
                };
                if let Verdict::Deny(why) = shared.policy.check(user.as_deref(), Command::UdpAssociate, name, ip, port) {
                    n.dropped += 1;
                    tracing::debug!(client = %conn.peer, to = %ip, %why, "UDP datagram refused");
                    continue;
                }
                let slot = if ip.is_ipv4() { &mut out4 } else { &mut out6 };
                if slot.is_none() {
                    let any: IpAddr = if ip.is_ipv4() { Ipv4Addr::UNSPECIFIED.into() } else { Ipv6Addr::UNSPECIFIED.into() };
                    match UdpSocket::bind(SocketAddr::new(any, 0)).await {
                        Ok(s) => *slot = Some(s),
                        Err(e) => { tracing::warn!(error = %e, "cannot open outgoing UDP socket"); n.dropped += 1; continue; }
                    }
                }
                if let Some(sock) = slot.as_ref() {
                    let payload = &buf[head_len..len];
                    if sock.send_to(payload, SocketAddr::new(ip, port)).await.is_ok() {
                        n.up_datagrams += 1;
                        log.up += payload.len() as u64;
                    } else {
                        n.dropped += 1;
                    }
                }
            },
            r = readable(&out4) => {
                if r.is_err() { out4 = None; continue; }
                forward_reply(out4.as_ref(), &relay, &mut buf, &mut packet, &shared, user.as_deref(), client_ip, client_port, &mut n, log).await;
            },
            r = readable(&out6) => {
                if r.is_err() { out6 = None; continue; }
                forward_reply(out6.as_ref(), &relay, &mut buf, &mut packet, &shared, user.as_deref(), client_ip, client_port, &mut n, log).await;
            },
        }
    };
    log.outcome = format!(
        "{end}; datagrams up {} down {} dropped {}",
        n.up_datagrams, n.down_datagrams, n.dropped
    );
}

async fn resolve_for_udp(
    shared: &crate::server::Shared,
    user: Option<&str>,
    name: &str,
    port: u16,
) -> Option<IpAddr> {
    if let Some(Verdict::Deny(_)) =
        shared
            .policy
            .check_name(user, Command::UdpAssociate, name, port)
    {
        return None;
    }
    let addrs = resolve(name, port).await.ok()?;
    interleave(&addrs, shared.cfg.resolver.prefer)
        .into_iter()
        .map(|a| a.ip())
        .find(|ip| {
            shared
                .policy
                .check(user, Command::UdpAssociate, Some(name), *ip, port)
                == Verdict::Allow
        })
}

#[allow(clippy::too_many_arguments)]
async fn forward_reply(
    sock: Option<&UdpSocket>,
    relay: &UdpSocket,
    buf: &mut [u8],
    packet: &mut Vec<u8>,
    shared: &crate::server::Shared,
    user: Option<&str>,
    client_ip: IpAddr,
    client_port: Option<u16>,
    n: &mut Counters,
    log: &mut SessionLog,
) {
    let Some(sock) = sock else { return };
    let (len, src) = match sock.try_recv_from(buf) {
        Ok(x) => x,
        Err(_) => return,
    };
    let src = canonical_addr(src);
    let Some(port) = client_port else {
        n.dropped += 1;
        return;
    };
    if let Verdict::Deny(_) =
        shared
            .policy
            .check(user, Command::UdpAssociate, None, src.ip(), src.port())
    {
        n.dropped += 1;
        return;
    }
    packet.clear();
    UdpHeader {
        frag: 0,
        address: Address::ip(src),
    }
    .encode(packet);
    packet.extend_from_slice(&buf[..len]);
    if relay
        .send_to(packet, SocketAddr::new(client_ip, port))
        .await
        .is_ok()
    {
        n.down_datagrams += 1;
        log.down += len as u64;
    } else {
        n.dropped += 1;
    }
}
