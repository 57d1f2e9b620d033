//! UDP ASSOCIATE: one relay socket per association, bound next to the control connection.
//!
//! Datagrams are taken only from the control connection's client IP; the client's UDP port is
//! the one named in the request when it is non-zero (and the request names this client), else
//! it is learned from the first datagram, since real clients send 0.0.0.0:0. Datagrams with
//! FRAG != 0 are dropped (no reassembly). Every destination goes through the policy engine;
//! replies from a destination the client has sent to are relayed (that destination was checked
//! with its name and port), replies from anyone else are checked by address. The association
//! ends with its control connection.

use crate::connect::{interleave, port_zero, resolve};
use crate::policy::{canonical, Verdict};
use crate::server::Shared;
use crate::session::{Handshaken, SessionLog};
use socksng_proto::{Address, Command, Host, ReplyCode, UdpHeader};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

/// Names resolved per association are remembered, but not without bound.
const NAME_CACHE_MAX: usize = 256;
/// Destinations remembered for reply matching, per association.
const CONTACTED_MAX: usize = 4096;
/// A name lookup holds up the association's other datagrams, so it gets a short leash.
const UDP_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

async fn readable(sock: &Option<UdpSocket>) -> io::Result<()> {
    match sock {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

struct Association {
    shared: Arc<Shared>,
    user: Option<String>,
    client_ip: IpAddr,
    client_port: Option<u16>,
    relay: UdpSocket,
    out4: Option<UdpSocket>,
    out6: Option<UdpSocket>,
    names: HashMap<String, Vec<IpAddr>>,
    contacted: HashSet<SocketAddr>,
    buf: Vec<u8>,
    packet: Vec<u8>,
    up_datagrams: u64,
    down_datagrams: u64,
    dropped: u64,
}

pub(crate) async fn associate(mut conn: Handshaken, requested: Address, log: &mut SessionLog) {
    let client_ip = conn.peer.ip();
    // The request names the client's own UDP source. Clients that misread the field put the
    // target there instead; such a port is no use for matching, so it is learned instead.
    let client_port = match requested.host {
        Host::Ip(ip)
            if requested.port != 0 && (ip.is_unspecified() || canonical(ip) == client_ip) =>
        {
            Some(requested.port)
        }
        _ => None,
    };
    let bind_to = match conn.stream.local_addr() {
        Ok(a) => port_zero(a),
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    let relay = match UdpSocket::bind(bind_to).await {
        Ok(s) => s,
        Err(e) => {
            let why = format!("UDP relay socket: {e}");
            return conn.refuse(log, ReplyCode::GENERAL_FAILURE, why).await;
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

    let mut assoc = Association {
        shared: conn.shared.clone(),
        user: conn.user.clone(),
        client_ip,
        client_port,
        relay,
        out4: None,
        out6: None,
        names: HashMap::new(),
        contacted: HashSet::new(),
        buf: vec![0u8; 65_536],
        packet: Vec::with_capacity(2048),
        up_datagrams: 0,
        down_datagrams: 0,
        dropped: 0,
    };
    let mut control_buf = [0u8; 512];
    let end = loop {
        tokio::select! {
            r = conn.stream.read(&mut control_buf) => match r {
                Ok(0) => break "control connection closed".to_string(),
                Ok(_) => continue, // Nothing is defined for the client to send here.
                Err(e) => break format!("control connection failed: {e}"),
            },
            r = assoc.relay.readable() => match r {
                Ok(()) => assoc.relay_outgoing(log).await,
                Err(e) => break format!("relay socket failed: {e}"),
            },
            r = readable(&assoc.out4) => match r {
                Ok(()) => assoc.relay_incoming(false, log).await,
                Err(_) => assoc.out4 = None,
            },
            r = readable(&assoc.out6) => match r {
                Ok(()) => assoc.relay_incoming(true, log).await,
                Err(_) => assoc.out6 = None,
            },
        }
    };
    log.outcome = format!(
        "{end}; datagrams up {} down {} dropped {}",
        assoc.up_datagrams, assoc.down_datagrams, assoc.dropped
    );
}

impl Association {
    async fn relay_outgoing(&mut self, log: &mut SessionLog) {
        let (len, src) = match self.relay.try_recv_from(&mut self.buf) {
            Ok(x) => x,
            // WouldBlock after a spurious wake-up, or an ICMP error about one earlier datagram.
            Err(_) => return,
        };
        let src = SocketAddr::new(canonical(src.ip()), src.port());
        if src.ip() != self.client_ip {
            self.dropped += 1;
            tracing::debug!(client = %self.client_ip, from = %src, "UDP datagram from a foreign host dropped");
            return;
        }
        match self.client_port {
            Some(p) if p != src.port() => {
                self.dropped += 1;
                tracing::debug!(client = %self.client_ip, from = %src, "UDP datagram from an unexpected port dropped");
                return;
            }
            Some(_) => {}
            None => self.client_port = Some(src.port()),
        }
        let Ok((header, head_len)) = UdpHeader::decode(&self.buf[..len]) else {
            self.dropped += 1;
            return;
        };
        if header.frag != 0 {
            self.dropped += 1;
            return;
        }
        let Some(dest) = self.destination(&header.address).await else {
            self.dropped += 1;
            return;
        };
        let slot = if dest.is_ipv4() {
            &mut self.out4
        } else {
            &mut self.out6
        };
        if slot.is_none() {
            let any: IpAddr = if dest.is_ipv4() {
                Ipv4Addr::UNSPECIFIED.into()
            } else {
                Ipv6Addr::UNSPECIFIED.into()
            };
            match UdpSocket::bind(SocketAddr::new(any, 0)).await {
                Ok(s) => *slot = Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open outgoing UDP socket");
                    self.dropped += 1;
                    return;
                }
            }
        }
        let Some(sock) = slot.as_ref() else { return };
        let payload = &self.buf[head_len..len];
        if sock.send_to(payload, dest).await.is_ok() {
            self.up_datagrams += 1;
            log.add_up(payload.len() as u64);
            if self.contacted.len() >= CONTACTED_MAX {
                self.contacted.clear();
            }
            self.contacted.insert(dest);
        } else {
            self.dropped += 1;
        }
    }

    /// The address to send to, resolved and allowed by policy; `None` drops the datagram.
    async fn destination(&mut self, address: &Address) -> Option<SocketAddr> {
        let user = self.user.as_deref();
        let port = address.port;
        let policy = &self.shared.policy;
        match &address.host {
            Host::Ip(ip) => {
                let ip = canonical(*ip);
                let verdict = policy.check(user, Command::UdpAssociate, None, ip, port);
                (verdict == Verdict::Allow).then_some(SocketAddr::new(ip, port))
            }
            Host::Domain(name) => {
                if let Some(Verdict::Deny(_)) =
                    policy.check_name(user, Command::UdpAssociate, name, port)
                {
                    return None;
                }
                if !self.names.contains_key(name) {
                    let resolved = tokio::time::timeout(UDP_RESOLVE_TIMEOUT, resolve(name, port))
                        .await
                        .ok()?
                        .ok()?;
                    let ordered = interleave(&resolved, self.shared.cfg.resolver.prefer);
                    if self.names.len() >= NAME_CACHE_MAX {
                        self.names.clear();
                    }
                    self.names
                        .insert(name.clone(), ordered.iter().map(|a| a.ip()).collect());
                }
                let ips = self.names.get(name)?;
                let policy = &self.shared.policy;
                ips.iter()
                    .find(|ip| {
                        policy.check(user, Command::UdpAssociate, Some(name), **ip, port)
                            == Verdict::Allow
                    })
                    .map(|ip| SocketAddr::new(*ip, port))
            }
        }
    }

    async fn relay_incoming(&mut self, v6: bool, log: &mut SessionLog) {
        let sock = if v6 { &self.out6 } else { &self.out4 };
        let Some(sock) = sock.as_ref() else { return };
        let (len, src) = match sock.try_recv_from(&mut self.buf) {
            Ok(x) => x,
            Err(_) => return,
        };
        let src = SocketAddr::new(canonical(src.ip()), src.port());
        let Some(port) = self.client_port else {
            self.dropped += 1;
            return;
        };
        if !self.contacted.contains(&src) {
            let verdict = self.shared.policy.check(
                self.user.as_deref(),
                Command::UdpAssociate,
                None,
                src.ip(),
                src.port(),
            );
            if verdict != Verdict::Allow {
                self.dropped += 1;
                return;
            }
        }
        self.packet.clear();
        UdpHeader {
            frag: 0,
            address: Address::ip(src),
        }
        .encode(&mut self.packet);
        self.packet.extend_from_slice(&self.buf[..len]);
        let to = SocketAddr::new(self.client_ip, port);
        if self.relay.send_to(&self.packet, to).await.is_ok() {
            self.down_datagrams += 1;
            log.add_down(len as u64);
        } else {
            self.dropped += 1;
        }
    }
}
