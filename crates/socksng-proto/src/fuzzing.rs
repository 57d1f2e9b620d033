//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by the test that
//! replays their corpus in every normal test run. Each takes arbitrary bytes and must never
//! panic; internal invariants are asserted so the fuzzer also finds logic slips.

use crate::client::{ClientConfig, ClientEvent, ClientHandshake, ClientRequest};
use crate::handshake::{Event, HandshakeConfig, ServerHandshake};
use crate::wire::ng::{Capabilities, ControlMessage, NgHello, NgRequest, TunnelFrame};
use crate::wire::{
    Address, AuthRequest, Greeting, Reply, ReplyCode, Request, Socks4Request, UdpHeader,
};

/// Drives the server handshake over `data`. The first byte picks the configuration, the
/// chunk size the input arrives in, and the decisions the "driver" makes.
pub fn server_handshake(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let config = HandshakeConfig {
        no_auth: flags & 1 != 0,
        username_password: flags & 2 != 0,
        socks4: flags & 4 != 0,
        // Shares a bit with the chunk size; both still vary independently enough.
        ng: flags & 8 != 0,
    };
    let chunk = usize::from((flags >> 3) & 7) + 1;
    let accept_auth = flags & 0x40 != 0;
    let reply_ok = flags & 0x80 != 0;

    let mut hs = ServerHandshake::new(config);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut fed = 0;
    loop {
        let before = out.len();
        let progress = match hs.handle_input(&buf, &mut out) {
            Ok(p) => p,
            Err(_) => {
                // A final reply is at most a method selection, an auth status or a reply.
                assert!(out.len() - before <= 22);
                return;
            }
        };
        assert!(progress.consumed <= buf.len());
        buf.drain(..progress.consumed);
        match progress.event {
            Some(Event::Authenticate(a)) => {
                assert!(a.username.len() <= 255 && a.password.len() <= 255);
                if hs.auth_result(accept_auth, &mut out).is_err() {
                    return;
                }
            }
            Some(Event::Request(r)) => {
                let code = if reply_ok {
                    ReplyCode::SUCCEEDED
                } else {
                    ReplyCode::HOST_UNREACHABLE
                };
                let _ = hs.reply(code, &r.address, &mut out);
                let _ = hs.reply(code, &r.address, &mut out);
                return;
            }
            Some(Event::NgRequest(_)) => {
                let code = if reply_ok {
                    ReplyCode::SUCCEEDED
                } else {
                    ReplyCode::NOT_ALLOWED
                };
                let _ = hs.reply(code, &Address::unspecified(), &mut out);
                return;
            }
            Some(Event::Socks4Request(r)) => {
                let code = if reply_ok {
                    ReplyCode::SUCCEEDED
                } else {
                    ReplyCode::NOT_ALLOWED
                };
                let _ = hs.reply(code, &r.address, &mut out);
                return;
            }
            None => {
                if fed == input.len() {
                    return;
                }
                let end = (fed + chunk).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

/// Decodes `data` as every wire message; whatever decodes must re-encode to the same bytes
/// (modulo the reserved fields the decoders deliberately ignore) and decode again equal.
pub fn wire_roundtrip(data: &[u8]) {
    if let Ok((a, n)) = Address::decode(data) {
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(out, &data[..n]);
        assert_eq!(a.encoded_len(), n);
    }
    if let Ok((g, n)) = Greeting::decode(data) {
        let mut out = Vec::new();
        g.encode(&mut out);
        assert_eq!(out, &data[..n]);
    }
    if let Ok((a, n)) = AuthRequest::decode(data) {
        let mut out = Vec::new();
        a.encode(&mut out).expect("decoded fields fit");
        assert_eq!(out, &data[..n]);
    }
    if let Ok((r, _)) = Request::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(Request::decode(&out).map(|x| x.0), Ok(r));
    }
    if let Ok((r, _)) = Reply::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(Reply::decode(&out).map(|x| x.0), Ok(r));
    }
    if let Ok((h, _)) = UdpHeader::decode(data) {
        let mut out = Vec::new();
        h.encode(&mut out);
        assert_eq!(UdpHeader::decode(&out).map(|x| x.0), Ok(h));
    }
    if let Ok((h, _)) = NgHello::decode(data) {
        let mut out = Vec::new();
        h.encode(&mut out).expect("decoded credentials fit");
        assert_eq!(NgHello::decode(&out).map(|x| x.0), Ok(h));
    }
    if let Ok((r, _)) = NgRequest::decode(data) {
        let mut out = Vec::new();
        r.encode(&mut out);
        assert_eq!(NgRequest::decode(&out).map(|x| x.0), Ok(r));
    }
    if let Ok((m, n)) = ControlMessage::decode(data) {
        let mut out = Vec::new();
        m.encode(&mut out);
        assert_eq!(out, &data[..n]);
    }
    if let Ok((c, _)) = Capabilities::decode(data) {
        let mut out = Vec::new();
        if c.encode(&mut out).is_ok() {
            assert_eq!(Capabilities::decode(&out).map(|x| x.0), Ok(c));
        }
    }
    if let Ok((frame, n)) = TunnelFrame::decode(data) {
        let mut out = Vec::new();
        match &frame {
            TunnelFrame::Datagram { address, payload } => {
                TunnelFrame::encode_datagram(address, payload, &mut out)
                    .expect("a decoded payload fits")
            }
            TunnelFrame::Error { code, address } => {
                TunnelFrame::encode_error(*code, address, &mut out)
            }
        }
        assert_eq!(out, &data[..n]);
    }
    if let Ok((r, _)) = Socks4Request::decode(data) {
        // Not byte-exact: any 0.0.0.x (x != 0) marks SOCKS4a, and we always write 0.0.0.1.
        let mut out = Vec::new();
        r.encode(&mut out)
            .expect("SOCKS4 targets are IPv4 or names");
        assert_eq!(Socks4Request::decode(&out).map(|x| x.0), Ok(r));
    }
}

/// Drives the client handshake over `data` as the proxy's bytes. The first byte picks the
/// configuration, the request and the chunk size. The machine must never panic, never claim
/// more input than it was given, and stop consuming once it is done.
pub fn client_handshake(data: &[u8]) {
    let Some((&flags, input)) = data.split_first() else {
        return;
    };
    let config = ClientConfig {
        socks4: flags & 0x80 != 0,
        offer_ng: flags & 1 != 0,
        credentials: (flags & 2 != 0).then(|| (b"user".to_vec(), b"pass".to_vec())),
        hops: flags & 0x40,
    };
    let request = match (flags >> 2) & 3 {
        0 => ClientRequest::Socks5(Request {
            command: crate::wire::Command::Connect,
            address: Address::ip("192.0.2.1:80".parse().expect("literal")),
        }),
        1 => ClientRequest::Socks5(Request {
            command: crate::wire::Command::Bind,
            address: Address::ip("0.0.0.0:0".parse().expect("literal")),
        }),
        2 => ClientRequest::Ng(NgRequest::Capabilities),
        _ => ClientRequest::Ng(NgRequest::UdpTunnel),
    };
    let chunk = usize::from((flags >> 4) & 7) + 1;
    let mut out = Vec::new();
    let mut hs = ClientHandshake::new(config, request, &mut out);
    let mut buf = Vec::new();
    let mut fed = 0;
    let mut events = 0;
    loop {
        let progress = match hs.handle_input(&buf, &mut out) {
            Ok(p) => p,
            Err(_) => return,
        };
        assert!(progress.consumed <= buf.len());
        buf.drain(..progress.consumed);
        if let Some(e) = progress.event {
            events += 1;
            // A reply first; then at most one more (BIND's second reply or the block).
            assert!(events <= 2, "too many events");
            assert_eq!(events == 1, matches!(e, ClientEvent::Reply(_)), "{e:?}");
            continue;
        }
        if hs.is_done() {
            let rest = buf.len();
            let again = hs.handle_input(&buf, &mut out).expect("done stays quiet");
            assert_eq!((again.consumed, again.event, buf.len()), (0, None, rest));
            return;
        }
        if fed >= input.len() {
            return;
        }
        let n = chunk.min(input.len() - fed);
        buf.extend_from_slice(&input[fed..fed + n]);
        fed += n;
    }
}

/// Drives both LISTEN control-connection machines over `data`. Each byte is an instruction
/// (announce, claim, refuse, peer gone, a clock step, or a run of raw bytes for either
/// machine's input), so the fuzzer explores orders of events as well as hostile bytes. The
/// machines must never panic, never exceed the backlog, never schedule a timeout in the past
/// of a timeout they were just given, and stop producing output once closed.
pub fn listener_control(data: &[u8]) {
    use crate::listener::{ClientListener, ListenerGrant, ServerListener, ServerListenerEvent};
    use std::time::{Duration, Instant};
    let Some((&flags, mut rest)) = data.split_first() else {
        return;
    };
    let grant = ListenerGrant {
        backlog: u16::from(flags & 7) + 1,
        token_lifetime: Duration::from_secs(u64::from(flags >> 3 & 7) + 1),
        idle: (flags & 0x40 != 0).then(|| Duration::from_secs(5)),
    };
    let mut now = Instant::now();
    let mut server = ServerListener::new(grant, now);
    let mut client = ClientListener::new(now);
    let mut next_token = 0u8;
    let mut wire = Vec::new();
    let mut client_alive = true;
    while let Some((&op, tail)) = rest.split_first() {
        rest = tail;
        match op % 8 {
            0 => {
                let token = [next_token; 16];
                next_token = next_token.wrapping_add(1);
                let peer = Address::ip("198.51.100.7:4000".parse().expect("literal"));
                let room = server.has_room();
                assert_eq!(server.announce(token, peer, now), room);
            }
            1 => {
                server.claimed(&[op >> 3; 16]);
            }
            2 => {
                server.peer_gone(&[op >> 3; 16]);
            }
            3 => client.refuse([op >> 3; 16], now),
            4 => {
                now += Duration::from_millis(u64::from(op) * 20);
                server.handle_timeout(now);
                client.handle_timeout(now);
                if let Some(at) = server.poll_timeout() {
                    assert!(at > now || server.is_closing(), "a timeout already due");
                }
            }
            _ => {
                // Raw bytes for one side: the next `op >> 4` bytes of the input.
                let n = usize::from(op >> 4).min(rest.len());
                let (raw, tail) = rest.split_at(n);
                rest = tail;
                if op & 8 != 0 {
                    server.handle_input(raw, now);
                } else if client_alive {
                    client_alive = client.handle_input(raw, now).is_ok();
                }
            }
        }
        assert!(server.unclaimed().count() <= usize::from(server.grant().backlog));
        // Whatever the machines say to each other must be understood by the other side.
        wire.clear();
        server.poll_transmit(&mut wire);
        if client_alive {
            client_alive = client.handle_input(&wire, now).is_ok();
        }
        wire.clear();
        client.poll_transmit(&mut wire);
        server.handle_input(&wire, now);
        while let Some(event) = server.poll_event() {
            if let ServerListenerEvent::Close { .. } = event {
                let mut after = Vec::new();
                server.poll_transmit(&mut after);
                server.handle_input(&[3; 17], now);
                assert!(!server.poll_transmit(&mut after), "quiet once closing");
            }
        }
        while client.poll_event().is_some() {}
    }
}

/// The discovery option's decoders (draft section 10) over arbitrary bytes: as a list, as a
/// whole DHCPv4 message, as a DHCPv6 vendor option. A list that decodes re-encodes to the
/// same URLs; a DHCPv4 option split and rejoined is the text again.
pub fn discovery(data: &[u8]) {
    use crate::wire::discovery::{
        decode_dhcpv6_vendor, decode_list, dhcpv4_option, dhcpv6_vendor_list, encode_dhcpv4,
        encode_list, DEFAULT_DHCPV6_ENTERPRISE,
    };
    if let Ok(urls) = decode_list(data) {
        let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
        let text = encode_list(&refs).expect("decoded URLs encode");
        assert_eq!(decode_list(text.as_bytes()).expect("re-decodes"), urls);
        let mut message = vec![0u8; 236];
        message.extend_from_slice(&[99, 130, 83, 99]);
        message.extend(encode_dhcpv4(224, &text));
        message.push(255);
        let joined = dhcpv4_option(&message, 224)
            .expect("own message")
            .unwrap_or_default();
        assert_eq!(joined, text.as_bytes());
    }
    if let Some((&code, rest)) = data.split_first() {
        let _ = dhcpv4_option(rest, code);
    }
    if data.len() >= 4 {
        let enterprise = u32::from_be_bytes([data[0], data[1], data[2], data[3]]);
        let _ = decode_dhcpv6_vendor(data, enterprise);
        let _ = dhcpv6_vendor_list(data, enterprise);
        let _ = dhcpv6_vendor_list(data, DEFAULT_DHCPV6_ENTERPRISE);
        let _ = crate::wire::discovery::dhcpv6_valid_lifetime(data);
    }
}
