//! UDP relaying: the outside half shared by both ways a client can send UDP, UDP ASSOCIATE
//! (RFC 1928) and the SOCKS-NG UDP-TUNNEL (datagrams framed inside the TCP connection).
//!
//! UDP ASSOCIATE: one relay socket per association, bound next to the control connection.
//! Datagrams are taken only from the control connection's client IP; the client's UDP port is
//! the one named in the request when it is non-zero (and the request names this client), else
//! it is learned from the first datagram, since real clients send 0.0.0.0:0. Datagrams with
//! FRAG != 0 are dropped (no reassembly). The association ends with its control connection.
//!
//! Both: every destination goes through the policy engine; replies from a destination the
//! client has sent to are relayed (that destination was checked with its name and port),
//! replies from anyone else are checked by address.

use crate::conn::{Handshaken, SessionLog};
use crate::dial::{external_for, interleave, port_zero};
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use crate::policy::{canonical, NameVerdict, Verdict};
use crate::relay::{read_drained, IdleTimer, PooledBuf};
use crate::shared::Shared;
use crate::stream::{Plaintext, Ready};
use socksng_proto::wire::ng::{rep, TunnelFrame, MAX_UDP_PAYLOAD};
use socksng_proto::{Address, Command, DecodeError, DomainName, Host, ReplyCode, UdpHeader};
use std::collections::{HashMap, HashSet};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::UdpSocket;

/// Names resolved per client are remembered, but not without bound.
const NAME_CACHE_MAX: usize = 256;
/// Destinations remembered for reply matching, per client.
const CONTACTED_MAX: usize = 4096;
/// A name lookup holds up the client's other datagrams, so it gets a short leash.
const UDP_RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest SOCKS5 UDP header: RSV FRAG ATYP, an IPv6 address, the port.
const MAX_UDP_HEADER: usize = 3 + 1 + 16 + 2;

async fn readable(sock: &Option<UdpSocket>) -> io::Result<()> {
    match sock {
        Some(s) => s.readable().await,
        None => std::future::pending().await,
    }
}

/// Counters for the session log.
#[derive(Default)]
struct Counts {
    up: u64,
    down: u64,
    dropped: u64,
}

/// The outside of a client's UDP relay: policy-checked destinations, the outgoing sockets
/// (opened per family on first use), and the peers the client has sent to; or, where a route
/// says so, an upstream's UDP (its tunnel, or its association for a plain SOCKS5 upstream).
pub(crate) struct UdpOutside {
    shared: Arc<Shared>,
    user: Option<String>,
    out4: Option<UdpSocket>,
    out6: Option<UdpSocket>,
    names: HashMap<DomainName, Vec<IpAddr>>,
    contacted: HashSet<SocketAddr>,
    upstream: Option<UpstreamUdp>,
    /// Source addresses and the class's mark and DSCP for the outgoing sockets.
    outgoing: crate::dial::Outgoing,
    /// The user's place among their UDP relays.
    _slot: crate::shared::UserSlot,
}

/// Datagrams through an upstream: sent on its tunnel or association; received by a task that
/// hands them over one at a time (the next waits in the channel, bounded).
struct UpstreamUdp {
    tx: socksng_client::UdpSender,
    rx: tokio::sync::mpsc::Receiver<(Vec<u8>, SocketAddr)>,
    reader: tokio::task::JoinHandle<()>,
    held: Option<(Vec<u8>, SocketAddr)>,
}

impl Drop for UpstreamUdp {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl UpstreamUdp {
    fn new(udp: socksng_client::ProxyUdp) -> UpstreamUdp {
        let (tx, mut receiver) = udp.split();
        let (to_session, rx) = tokio::sync::mpsc::channel(16);
        let reader = tokio::spawn(async move {
            let mut buf = vec![0u8; crate::relay::DATAGRAM_BUF_SIZE];
            loop {
                match receiver.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        if to_session.send((buf[..n].to_vec(), from)).await.is_err() {
                            return;
                        }
                    }
                    // The upstream could not deliver one datagram: UDP would not say either.
                    Err(socksng_client::ClientError::DatagramRefused { .. }) => continue,
                    Err(e) => {
                        tracing::debug!(error = %e, "upstream UDP ended");
                        return;
                    }
                }
            }
        });
        UpstreamUdp {
            tx,
            rx,
            reader,
            held: None,
        }
    }
}

impl UdpOutside {
    /// The outside for a client's UDP: direct, or through the upstream its route names (the
    /// first that works; `hops` is passed on). Fails with the refusal for the client.
    async fn open(
        shared: Arc<Shared>,
        user: Option<String>,
        holder: crate::shared::Holder,
        hops: u8,
        outgoing: crate::dial::Outgoing,
    ) -> Result<(Self, Option<String>), SessionOutcome> {
        let class = shared.cfg.class_of(user.as_deref());
        let limit = class.max_udp.unwrap_or(0);
        let Some(slot) = shared.user_slot(crate::shared::Held::Udp, holder, limit) else {
            let why = format!(
                "per-user UDP limit ({limit}) of class {} reached",
                class.name
            );
            return Err(SessionOutcome::refused(rep::LIMIT_REACHED, why));
        };
        let ways = shared
            .upstreams
            .ways_without_destination(user.as_deref(), Command::UdpAssociate);
        let mut via = Some(shared.upstreams.names(&ways));
        let upstream = if ways.is_empty() {
            via = Some("direct".into());
            None
        } else {
            let limit = shared.cfg.timeouts.connect;
            let opened = shared
                .upstreams
                .first_working(
                    &ways,
                    hops,
                    limit,
                    |client| async move { client.udp().await },
                )
                .await;
            match opened {
                Ok((i, udp)) => {
                    via = Some(shared.upstreams.name(i).to_owned());
                    Some(UpstreamUdp::new(udp))
                }
                Err(failed) => {
                    let why = format!("{} (via {})", failed.why, via.unwrap_or_default());
                    return Err(SessionOutcome::refused(failed.code, why));
                }
            }
        };
        let outside = UdpOutside {
            shared,
            user,
            out4: None,
            out6: None,
            names: HashMap::new(),
            contacted: HashSet::new(),
            upstream,
            outgoing,
            _slot: slot,
        };
        Ok((outside, via))
    }

    /// Sends `payload` to `to` if the policy allows it; when it was dropped, the reply code
    /// that says why (X'02' refused, X'04' the name did not resolve, X'03' not sent).
    async fn send(&mut self, to: &Address, payload: &[u8]) -> Result<(), ReplyCode> {
        if self.upstream.is_some() {
            return self.send_upstream(to, payload).await;
        }
        let dest = self.destination(to).await?;
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
            let source = external_for(&self.outgoing.external, dest.ip()).unwrap_or(any);
            match UdpSocket::bind(SocketAddr::new(source, 0)).await {
                Ok(s) => {
                    // Where a rule opens a multicast group, this host's own members of it
                    // must still not hear the datagrams.
                    let sock = socket2::SockRef::from(&s);
                    self.outgoing
                        .mark_socket(socket2::SockRef::from(&s), dest.is_ipv6());
                    let _ = if dest.is_ipv4() {
                        sock.set_multicast_loop_v4(false)
                    } else {
                        sock.set_multicast_loop_v6(false)
                    };
                    *slot = Some(s)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot open outgoing UDP socket");
                    return Err(ReplyCode::NETWORK_UNREACHABLE);
                }
            }
        }
        // The draft gives every failure to send one code: X'03'.
        let Some(sock) = slot.as_ref() else {
            return Err(ReplyCode::NETWORK_UNREACHABLE);
        };
        if sock.send_to(payload, dest).await.is_err() {
            return Err(ReplyCode::NETWORK_UNREACHABLE);
        }
        if self.contacted.len() >= CONTACTED_MAX {
            self.contacted.clear();
        }
        self.contacted.insert(dest);
        Ok(())
    }

    /// Through the upstream: an address is judged as always, a name by its name alone (the
    /// upstream resolves it and judges what it reaches).
    async fn send_upstream(&mut self, to: &Address, payload: &[u8]) -> Result<(), ReplyCode> {
        let user = self.user.as_deref();
        let policy = &self.shared.policy;
        let to = match &to.host {
            Host::Ip(ip) => {
                if policy.check(user, Command::UdpAssociate, None, *ip, to.port) != Verdict::Allow {
                    return Err(ReplyCode::NOT_ALLOWED);
                }
                to.clone()
            }
            Host::Domain(name) => {
                match policy.judge_name(user, Command::UdpAssociate, name, to.port) {
                    NameVerdict::Allow => to.clone(),
                    NameVerdict::Deny(_) => return Err(ReplyCode::NOT_ALLOWED),
                    // A rule by network decides: resolved and judged here, sent by address.
                    NameVerdict::DependsOnAddress => Address::ip(self.destination(to).await?),
                }
            }
        };
        let Some(up) = self.upstream.as_mut() else {
            return Err(ReplyCode::NETWORK_UNREACHABLE);
        };
        up.tx
            .send_to(payload, &to)
            .await
            .map_err(|_| ReplyCode::NETWORK_UNREACHABLE)
    }

    /// The address to send to, resolved and allowed by policy; else why the datagram is
    /// dropped.
    async fn destination(&mut self, address: &Address) -> Result<SocketAddr, ReplyCode> {
        let refused = ReplyCode::NOT_ALLOWED;
        let user = self.user.as_deref();
        let port = address.port;
        let policy = &self.shared.policy;
        match &address.host {
            Host::Ip(ip) => {
                let ip = canonical(*ip);
                let verdict = policy.check(user, Command::UdpAssociate, None, ip, port);
                (verdict == Verdict::Allow)
                    .then_some(SocketAddr::new(ip, port))
                    .ok_or(refused)
            }
            Host::Domain(name) => {
                if let Some(Verdict::Deny(_)) =
                    policy.check_name(user, Command::UdpAssociate, name, port)
                {
                    return Err(refused);
                }
                if !self.names.contains_key(name) {
                    let lookup = self.shared.lookups.resolve(name, port);
                    let resolved = tokio::time::timeout(UDP_RESOLVE_TIMEOUT, lookup)
                        .await
                        .ok()
                        .and_then(Result::ok)
                        .filter(|r| !r.is_empty())
                        .ok_or(ReplyCode::HOST_UNREACHABLE)?;
                    let ordered = interleave(&resolved, self.shared.cfg.resolver.prefer);
                    if self.names.len() >= NAME_CACHE_MAX {
                        self.names.clear();
                    }
                    self.names
                        .insert(name.clone(), ordered.iter().map(|a| a.ip()).collect());
                }
                let ips = self.names.get(name).ok_or(ReplyCode::HOST_UNREACHABLE)?;
                let policy = &self.shared.policy;
                ips.iter()
                    .find(|ip| {
                        policy.check(user, Command::UdpAssociate, Some(name), **ip, port)
                            == Verdict::Allow
                    })
                    .map(|ip| SocketAddr::new(*ip, port))
                    .ok_or(refused)
            }
        }
    }

    /// Waits until an outgoing socket has a datagram; true for the IPv6 one. `None`: the
    /// upstream's UDP has ended, and with it this relay.
    async fn readable(&mut self) -> Option<bool> {
        if let Some(up) = self.upstream.as_mut() {
            if up.held.is_none() {
                up.held = Some(up.rx.recv().await?);
            }
            return Some(false);
        }
        Some(tokio::select! {
            r = readable(&self.out4) => { if r.is_err() { self.out4 = None; } false }
            r = readable(&self.out6) => { if r.is_err() { self.out6 = None; } true }
        })
    }

    /// Takes one datagram from the outside: `Ok(Some)` to relay, `Ok(None)` when it was
    /// refused by policy or nothing was there after all. What an upstream relays was its to
    /// judge.
    fn try_recv(&mut self, v6: bool, buf: &mut [u8]) -> Option<(usize, SocketAddr, bool)> {
        if let Some(up) = self.upstream.as_mut() {
            let (datagram, from) = up.held.take()?;
            let len = datagram.len().min(buf.len());
            buf[..len].copy_from_slice(&datagram[..len]);
            let allowed = len <= usize::from(MAX_UDP_PAYLOAD) && len == datagram.len();
            return Some((len, from, allowed));
        }
        let sock = if v6 { &self.out6 } else { &self.out4 };
        let (len, src) = sock.as_ref()?.try_recv_from(buf).ok()?;
        let src = SocketAddr::new(canonical(src.ip()), src.port());
        // Larger than MAX-UDP-PAYLOAD (an IPv6 datagram can be): dropped, as the draft says,
        // rather than relayed beyond what was announced.
        let allowed = len <= usize::from(MAX_UDP_PAYLOAD)
            && (self.contacted.contains(&src)
                || self.shared.policy.check(
                    self.user.as_deref(),
                    Command::UdpAssociate,
                    None,
                    src.ip(),
                    src.port(),
                ) == Verdict::Allow);
        Some((len, src, allowed))
    }
}

/// The outside of a UDP command, with the way it leaves in the log; `None` once the client
/// has been refused.
async fn open_outside(conn: &mut Handshaken, log: &mut SessionLog) -> Option<UdpOutside> {
    let hops = conn.hs.hops().saturating_add(1);
    let outgoing = conn.outgoing.clone();
    let holder = crate::shared::Holder::of(conn.user.as_deref(), conn.peer.ip());
    match UdpOutside::open(
        conn.shared.clone(),
        conn.user.clone(),
        holder,
        hops,
        outgoing,
    )
    .await
    {
        Ok((outside, via)) => {
            log.via = via;
            Some(outside)
        }
        Err(refusal) => {
            conn.refuse_with(log, refusal).await;
            None
        }
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
    let bind_to = port_zero(conn.local);
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
    let Some(mut outside) = open_outside(&mut conn, log).await else {
        return;
    };
    if !conn.succeed(log, relay_addr).await {
        return;
    }
    log.connected = Some(relay_addr);

    let mut idle = IdleTimer::new(conn.shared.cfg.timeouts.udp_idle);
    let mut n = Counts::default();
    let mut control_buf = [0u8; 64];
    let mut header = Vec::with_capacity(MAX_UDP_HEADER);
    let end = loop {
        tokio::select! {
            r = conn.stream.read(&mut control_buf) => match r {
                Ok(0) => break SessionOutcome::new(OutcomeKind::Completed, Side::Client, "control connection closed"),
                Ok(_) => continue, // Nothing is defined for the client to send here.
                Err(e) => break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("control connection failed: {e}")),
            },
            r = relay.readable() => {
                if let Err(e) = r {
                    break SessionOutcome::new(OutcomeKind::Broken, Side::Internal, format!("relay socket failed: {e}"));
                }
                let mut held = PooledBuf::take_datagram();
                let buf = held.bytes();
                // WouldBlock after a spurious wake-up, or an ICMP error about one datagram.
                let Ok((len, src)) = relay.try_recv_from(buf) else { continue };
                let src = SocketAddr::new(canonical(src.ip()), src.port());
                if src.ip() != client_ip || client_port.is_some_and(|p| p != src.port()) {
                    n.dropped += 1;
                    tracing::debug!(client = %client_ip, from = %src, "UDP datagram from a foreign source dropped");
                    continue;
                }
                client_port = Some(src.port());
                idle.touch();
                let sent = match UdpHeader::decode(&buf[..len]) {
                    Ok((h, head)) if h.frag == 0 => outside.send(&h.address, &buf[head..len]).await.ok().map(|()| len - head),
                    _ => None,
                };
                match sent {
                    Some(bytes) => { n.up += 1; log.add_up(bytes as u64); }
                    None => n.dropped += 1,
                }
            },
            v6 = outside.readable() => {
                let Some(v6) = v6 else {
                    break SessionOutcome::new(OutcomeKind::Broken, Side::Target, "the upstream's UDP ended");
                };
                let mut held = PooledBuf::take_datagram();
                let buf = held.bytes();
                // The payload goes in after room for the longest header, which is then
                // written just before it: one buffer, no copy of the payload.
                let Some((len, src, allowed)) = outside.try_recv(v6, &mut buf[MAX_UDP_HEADER..]) else { continue };
                let Some(port) = client_port.filter(|_| allowed) else {
                    n.dropped += 1;
                    continue;
                };
                header.clear();
                UdpHeader { frag: 0, address: Address::ip(src) }.encode(&mut header);
                let start = MAX_UDP_HEADER - header.len();
                buf[start..MAX_UDP_HEADER].copy_from_slice(&header);
                let packet = &buf[start..MAX_UDP_HEADER + len];
                if relay.send_to(packet, SocketAddr::new(client_ip, port)).await.is_ok() {
                    n.down += 1;
                    idle.touch();
                    log.add_down(len as u64);
                } else {
                    n.dropped += 1;
                }
            },
            _ = idle.expired() => break SessionOutcome::new(OutcomeKind::TimedOut, Side::Client, format!("no datagram for {:?}", conn.shared.cfg.timeouts.udp_idle)),
        }
    };
    log.outcome = Some(end.with_note(format_args!(
        "datagrams up {} down {} dropped {}",
        n.up, n.down, n.dropped
    )));
}

/// Writes what the socket takes of the frames queued for the client (`outq` from `sent_off`);
/// the queue is emptied once all is written, and compacted once more than `limit` was.
fn write_queued(
    stream: &Plaintext,
    outq: &mut Vec<u8>,
    sent_off: &mut usize,
    limit: usize,
) -> io::Result<()> {
    match stream.try_write(&outq[*sent_off..]) {
        Ok(k) => *sent_off += k,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(e) => return Err(e),
    }
    if *sent_off == outq.len() {
        outq.clear();
        // A burst's queue is not kept for an idle tunnel.
        outq.shrink_to(4096);
        *sent_off = 0;
    } else if *sent_off > limit {
        outq.drain(..*sent_off);
        *sent_off = 0;
    }
    Ok(())
}

/// SOCKS-NG UDP-TUNNEL: datagrams framed as `LEN(2) ADDR DATA` inside the connection. Frames
/// queued towards a client that does not read are bounded by `ng.udp_tunnel_queue`; beyond it
/// datagrams are dropped, as UDP would drop them.
pub(crate) async fn tunnel(mut conn: Handshaken, log: &mut SessionLog) {
    let Some(mut outside) = open_outside(&mut conn, log).await else {
        return;
    };
    if !conn
        .succeed(log, SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)))
        .await
    {
        return;
    }
    let limit = conn.shared.cfg.ng.udp_tunnel_queue;
    let mut idle = IdleTimer::new(conn.shared.cfg.timeouts.udp_idle);
    let stream = &conn.stream;
    // A partial frame waiting for the rest (at most one frame long); frames may already
    // have arrived behind the request.
    let mut inbox = std::mem::take(&mut conn.early_data);
    let mut outq: Vec<u8> = Vec::new();
    let mut sent_off = 0usize;
    let mut n = Counts::default();
    let mut pending_early = !inbox.is_empty();
    let mut errors = ErrorFrames::new();
    let end = 'session: loop {
        if pending_early {
            pending_early = false;
            match relay_frames(&mut outside, &inbox, &mut n, log, &mut errors).await {
                Ok(used) => {
                    inbox.drain(..used);
                }
                Err(e) => break 'session e,
            }
        }
        if !errors.bytes.is_empty() {
            if sent_off > 0 && sent_off == outq.len() {
                outq.clear();
                sent_off = 0;
            }
            // Like datagrams, error reports beyond the queue's bound are dropped; the
            // writable branch below sends what was queued.
            if outq.len() - sent_off + errors.bytes.len() <= limit {
                outq.append(&mut errors.bytes);
            }
            errors.bytes.clear();
        }
        let want_write = sent_off < outq.len();
        tokio::select! {
            r = stream.readable() => {
                if let Err(e) = r { break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("connection failed: {e}")); }
                let mut held = PooledBuf::take_datagram();
                let chunk = held.bytes();
                let room = chunk.len();
                let got = match read_drained(stream, room, || stream.try_read(chunk)) {
                    Ok(0) => break SessionOutcome::new(OutcomeKind::Completed, Side::Client, "client closed"),
                    Ok(k) => k,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(e) => break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("connection failed: {e}")),
                };
                idle.touch();
                // Frames are relayed straight from the read buffer; only a partial frame at
                // its end is kept, so an idle tunnel holds no buffer.
                let relayed = if inbox.is_empty() {
                    relay_frames(&mut outside, &chunk[..got], &mut n, log, &mut errors).await.map(|used| {
                        inbox.extend_from_slice(&chunk[used..got]);
                    })
                } else {
                    inbox.extend_from_slice(&chunk[..got]);
                    relay_frames(&mut outside, &inbox, &mut n, log, &mut errors).await.map(|used| {
                        inbox.drain(..used);
                        if inbox.is_empty() {
                            inbox = Vec::new();
                        }
                    })
                };
                if let Err(e) = relayed {
                    break e;
                }
            }
            v6 = outside.readable() => {
                let Some(v6) = v6 else {
                    break SessionOutcome::new(OutcomeKind::Broken, Side::Target, "the upstream's UDP ended");
                };
                let mut held = PooledBuf::take_datagram();
                let buf = held.bytes();
                let Some((len, src, allowed)) = outside.try_recv(v6, buf) else { continue };
                let frame_len = 2 + Address::ip(src).encoded_len() + len;
                if !allowed || outq.len() - sent_off + frame_len > limit {
                    n.dropped += 1;
                    continue;
                }
                if sent_off > 0 && sent_off == outq.len() {
                    outq.clear();
                    sent_off = 0;
                }
                let was_idle = sent_off == outq.len();
                if TunnelFrame::encode_datagram(&Address::ip(src), &buf[..len], &mut outq).is_ok() {
                    n.down += 1;
                    idle.touch();
                    log.add_down(len as u64);
                }
                // Nothing was waiting: write now rather than after another turn of the loop.
                if was_idle {
                    if let Err(e) = write_queued(stream, &mut outq, &mut sent_off, limit) {
                        break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("connection failed: {e}"));
                    }
                }
            }
            r = stream.writable(), if want_write => {
                if let Err(e) = r { break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("connection failed: {e}")); }
                if let Err(e) = write_queued(stream, &mut outq, &mut sent_off, limit) {
                    break SessionOutcome::new(OutcomeKind::Broken, Side::Client, format!("connection failed: {e}"));
                }
            }
            _ = idle.expired() => break SessionOutcome::new(OutcomeKind::TimedOut, Side::Client, format!("no datagram for {:?}", conn.shared.cfg.timeouts.udp_idle)),
        }
    };
    log.outcome = Some(end.with_note(format_args!(
        "datagrams up {} down {} dropped {}",
        n.up, n.down, n.dropped
    )));
}

/// ERROR frames a tunnel sends per second at most; the rest are dropped silently, so a
/// client spraying refused destinations cannot turn the server into an amplifier.
const ERROR_FRAMES_PER_SECOND: u32 = 10;

/// ERROR frames waiting to be queued towards the client, rate limited.
struct ErrorFrames {
    bytes: Vec<u8>,
    window: tokio::time::Instant,
    sent: u32,
}

impl ErrorFrames {
    fn new() -> Self {
        ErrorFrames {
            bytes: Vec::new(),
            window: tokio::time::Instant::now(),
            sent: 0,
        }
    }

    fn note(&mut self, code: ReplyCode, to: &Address) {
        let now = tokio::time::Instant::now();
        if now.duration_since(self.window) >= Duration::from_secs(1) {
            self.window = now;
            self.sent = 0;
        }
        if self.sent < ERROR_FRAMES_PER_SECOND {
            self.sent += 1;
            TunnelFrame::encode_error(code, to, &mut self.bytes);
        }
    }
}

/// Relays every complete frame at the start of `data`; returns the bytes used (a partial
/// frame at the end is left), or why the stream cannot go on. A datagram that is not sent
/// leaves an ERROR frame in `errors`.
async fn relay_frames(
    outside: &mut UdpOutside,
    data: &[u8],
    n: &mut Counts,
    log: &SessionLog,
    errors: &mut ErrorFrames,
) -> Result<usize, SessionOutcome> {
    let mut used = 0;
    loop {
        let rest = &data[used..];
        match TunnelFrame::decode_from_client(rest) {
            Ok((TunnelFrame::Datagram { address, payload }, total)) => {
                used += total;
                let sent = if payload.len() > usize::from(MAX_UDP_PAYLOAD) {
                    Err(rep::DATAGRAM_TOO_LARGE)
                } else {
                    outside.send(&address, payload).await
                };
                match sent {
                    Ok(()) => {
                        n.up += 1;
                        log.add_up(payload.len() as u64);
                    }
                    Err(code) => {
                        n.dropped += 1;
                        errors.note(code, &address);
                    }
                }
            }
            Ok((TunnelFrame::Error { .. }, _)) => {
                let why = "malformed frame: an ERROR frame from the client";
                return Err(SessionOutcome::new(
                    OutcomeKind::ProtocolError,
                    Side::Client,
                    why,
                ));
            }
            Err(DecodeError::Incomplete) => return Ok(used),
            Err(e) => {
                let why = format!("malformed frame: {e}");
                return Err(SessionOutcome::new(
                    OutcomeKind::ProtocolError,
                    Side::Client,
                    why,
                ));
            }
        }
    }
}
