//! SOCKS-NG on a real server: negotiation, fallback for plain clients, CAPABILITIES.

mod common;
use common::*;
use socksng_proto::wire::ng::{Capabilities, NgAuth, NgHello, NgRequest};
use socksng_proto::ReplyCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn capabilities_report_configured_ranges() {
    let srv =
        start("[[ng.served]]\nto = [\"10.0.0.0/8\", \"fd00::/8\"]\ndomains = [\"corp.example\"]\n")
            .await;
    let mut s = ng_session(srv.addr).await;
    let mut req = Vec::new();
    NgRequest::Capabilities.encode(&mut req);
    s.write_all(&req).await.unwrap();
    let reply = read_reply(&mut s).await;
    assert_eq!(reply.code, ReplyCode::SUCCEEDED);
    let mut rest = Vec::new();
    s.read_to_end(&mut rest).await.unwrap();
    let (caps, used) = Capabilities::decode(&rest).unwrap();
    assert_eq!(used, rest.len());
    assert_eq!(caps.revision, 1);
    assert!(caps.commands.contains(&0x11) && caps.commands.contains(&0x01));
    assert_eq!(caps.ranges.len(), 1);
    assert_eq!(
        caps.ranges[0].prefixes,
        vec![
            ("10.0.0.0".parse().unwrap(), 8),
            ("fd00::".parse().unwrap(), 8)
        ]
    );
    assert_eq!(caps.ranges[0].domains, vec!["corp.example".to_string()]);
    srv.stop().await;
}

/// Plain clients never offer the NG method and see plain SOCKS5; a client offering it to a
/// server with NG switched off falls back without an extra round trip.
#[tokio::test]
async fn plain_clients_and_fallback() {
    let srv = start(&format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}")).await;
    let target = echo_server("127.0.0.1:0").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let mut msg = vec![5, 2, 0xa5, 0, 5, 1, 0];
    socksng_proto::Address::ip(target).encode(&mut msg);
    s.write_all(&msg).await.unwrap();
    let mut sel = [0u8; 2];
    s.read_exact(&mut sel).await.unwrap();
    assert_eq!(sel, [5, 0], "NG off: the plain method is chosen");
    assert_eq!(read_reply(&mut s).await.code, ReplyCode::SUCCEEDED);
    // NG commands are unknown commands without NG.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&[5, 1, 0, 5, 0x11, 0]).await.unwrap();
    s.read_exact(&mut sel).await.unwrap();
    assert_eq!(
        read_reply(&mut s).await.code,
        ReplyCode::COMMAND_NOT_SUPPORTED
    );
    srv.stop().await;
}

// ---- LISTEN and ACCEPT -------------------------------------------------------------------

use socksng_proto::wire::ng::{rep, ControlMessage, Token};
use socksng_proto::Address;
use std::net::SocketAddr;
use std::path::PathBuf;

struct Fixture {
    srv: TestServer,
    dir: PathBuf,
}

/// A server with users alice and bob, loopback allowed, and extra configuration.
async fn fixture(tag: &str, extra: &str) -> Fixture {
    let (srv, dir) = two_user_server(&format!("ng-{tag}"), extra).await;
    Fixture { srv, dir }
}

impl Fixture {
    async fn done(self) {
        self.srv.stop().await;
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn ng_login(proxy: SocketAddr, user: &str, pass: &str) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut msg = vec![5, 1, 0xa5];
    NgHello::new(NgAuth::Password {
        username: user.into(),
        password: pass.into(),
    })
    .encode(&mut msg)
    .unwrap();
    s.write_all(&msg).await.unwrap();
    let mut head = [0u8; 5];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head, [5, 0xa5, 1, 0, 1], "login as {user}");
    s
}

async fn listen(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    port: u16,
    exact: bool,
    backlog: u16,
) -> (TcpStream, socksng_proto::Reply) {
    let mut s = ng_login(proxy, user, pass).await;
    let mut req = Vec::new();
    NgRequest::Listen {
        address: Address::ip(SocketAddr::new("127.0.0.1".parse().unwrap(), port)),
        exact,
        backlog,
    }
    .encode(&mut req);
    s.write_all(&req).await.unwrap();
    let r = read_reply(&mut s).await;
    if r.code == socksng_proto::ReplyCode::SUCCEEDED {
        // LISTENING comes first, before any notice.
        let granted = read_control(&mut s).await;
        assert!(
            matches!(granted, ControlMessage::Listening { backlog: b, .. } if b >= 1 && b <= backlog.max(128)),
            "{granted:?}"
        );
    }
    (s, r)
}

async fn read_control(s: &mut TcpStream) -> ControlMessage {
    within("a control message", read_control_unbounded(s)).await
}

async fn read_control_unbounded(s: &mut TcpStream) -> ControlMessage {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match ControlMessage::decode(&buf) {
            Ok((m, _)) => return m,
            Err(socksng_proto::DecodeError::Incomplete) => {}
            Err(e) => panic!("bad control message {buf:?}: {e}"),
        }
        assert_eq!(
            s.read(&mut byte).await.unwrap(),
            1,
            "control connection closed"
        );
        buf.push(byte[0]);
    }
}

async fn claim(
    proxy: SocketAddr,
    user: &str,
    pass: &str,
    token: Token,
) -> (TcpStream, socksng_proto::Reply) {
    let mut s = ng_login(proxy, user, pass).await;
    let mut req = Vec::new();
    NgRequest::Accept { token }.encode(&mut req);
    s.write_all(&req).await.unwrap();
    let r = read_reply(&mut s).await;
    (s, r)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn listen_any_exact_and_fallback() {
    let f = fixture("ports", "").await;
    let (_c1, r) = listen(f.srv.addr, "alice", "wonder", 0, false, 8).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let any = r.bound.socket_addr().unwrap();
    assert!(any.port() >= 1024 && any.ip().is_loopback(), "{any}");

    let wanted = free_port();
    let (_c2, r) = listen(f.srv.addr, "alice", "wonder", wanted, true, 8).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    assert_eq!(r.bound.socket_addr().unwrap().port(), wanted);

    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port();
    let (_c3, r) = listen(f.srv.addr, "alice", "wonder", busy_port, true, 8).await;
    assert_eq!(r.code, rep::PORT_IN_USE);
    let (_c4, r) = listen(f.srv.addr, "alice", "wonder", busy_port, false, 8).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED, "else-any falls back");
    assert_ne!(r.bound.socket_addr().unwrap().port(), busy_port);
    f.done().await;
}

/// 50 incoming connections to one listener, claimed concurrently over 50 claim connections,
/// data checked both ways.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_incoming_claimed_concurrently() {
    let f = fixture("fifty", "").await;
    let proxy = f.srv.addr;
    let (mut control, r) = listen(proxy, "alice", "wonder", 0, false, 64).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let public = r.bound.socket_addr().unwrap();
    let mut outside = Vec::new();
    for i in 0..50u64 {
        outside.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(public).await.unwrap();
            let local = s.local_addr().unwrap();
            let msg = pattern(1000 + i as usize, i + 1);
            s.write_all(&msg).await.unwrap();
            s.shutdown().await.unwrap();
            let back = read_to_end(&mut s).await;
            let reversed: Vec<u8> = msg.iter().rev().copied().collect();
            (local, checksum(&back), checksum(&reversed))
        }));
    }
    let mut claims = Vec::new();
    for _ in 0..50 {
        let ControlMessage::AcceptNotice { token, peer } = read_control(&mut control).await else {
            panic!("expected an accept notice")
        };
        claims.push(tokio::spawn(async move {
            let (mut s, r) = claim(proxy, "alice", "wonder", token).await;
            assert_eq!(r.code, ReplyCode::SUCCEEDED);
            assert_eq!(r.bound, peer, "ACCEPT reply names the peer of the notice");
            let got = read_to_end(&mut s).await;
            // Answer with the reversed bytes, so each side checks the other's data.
            let answer: Vec<u8> = got.iter().rev().copied().collect();
            s.write_all(&answer).await.unwrap();
            s.shutdown().await.unwrap();
        }));
    }
    for c in claims {
        c.await.unwrap();
    }
    for o in outside {
        let (_, back_sum, expected_sum) = o.await.unwrap();
        assert_eq!(
            back_sum, expected_sum,
            "each outside client gets its own data reversed"
        );
    }
    f.done().await;
}

#[tokio::test]
async fn refused_notice_and_invalid_tokens() {
    let f = fixture("tokens", "").await;
    let proxy = f.srv.addr;
    let (mut control, r) = listen(proxy, "alice", "wonder", 0, false, 8).await;
    let public = r.bound.socket_addr().unwrap();

    // Refused on the control connection: the incoming connection is closed.
    let mut refused = TcpStream::connect(public).await.unwrap();
    let ControlMessage::AcceptNotice { token, .. } = read_control(&mut control).await else {
        panic!()
    };
    let mut msg = Vec::new();
    ControlMessage::Refuse { token }.encode(&mut msg);
    control.write_all(&msg).await.unwrap();
    assert!(closed_silently(&mut refused).await);
    let (_, r) = claim(proxy, "alice", "wonder", token).await;
    assert_eq!(r.code, rep::TOKEN_NOT_VALID, "a refused token is gone");

    // Unknown token.
    let (_, r) = claim(proxy, "alice", "wonder", [7u8; 16]).await;
    assert_eq!(r.code, rep::TOKEN_NOT_VALID);

    // Another user's claim fails and does not consume the token; reuse fails.
    let mut waiting = TcpStream::connect(public).await.unwrap();
    let ControlMessage::AcceptNotice { token, .. } = read_control(&mut control).await else {
        panic!()
    };
    let (_, r) = claim(proxy, "bob", "builder", token).await;
    assert_eq!(r.code, rep::TOKEN_NOT_VALID);
    let (mut mine, r) = claim(proxy, "alice", "wonder", token).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let (_, r) = claim(proxy, "alice", "wonder", token).await;
    assert_eq!(r.code, rep::TOKEN_NOT_VALID, "tokens are single use");
    waiting.write_all(b"ok").await.unwrap();
    let mut two = [0u8; 2];
    mine.read_exact(&mut two).await.unwrap();
    assert_eq!(&two, b"ok");
    f.done().await;
}

#[tokio::test]
async fn expired_tokens() {
    let f = fixture("expiry", "[ng]\ntoken_lifetime = \"300ms\"").await;
    let (mut control, r) = listen(f.srv.addr, "alice", "wonder", 0, false, 8).await;
    let mut incoming = TcpStream::connect(r.bound.socket_addr().unwrap())
        .await
        .unwrap();
    let ControlMessage::AcceptNotice { token, .. } = read_control(&mut control).await else {
        panic!()
    };
    assert_eq!(
        read_control(&mut control).await,
        ControlMessage::Expired { token }
    );
    assert!(closed_silently(&mut incoming).await);
    let (_, r) = claim(f.srv.addr, "alice", "wonder", token).await;
    assert_eq!(r.code, rep::TOKEN_NOT_VALID);
    f.done().await;
}

/// Closing the control connection closes the listener and every unclaimed connection.
#[tokio::test]
async fn listener_gone_with_control_connection() {
    let f = fixture("gone", "").await;
    let (mut control, r) = listen(f.srv.addr, "alice", "wonder", 0, false, 8).await;
    let public = r.bound.socket_addr().unwrap();
    let mut pending = TcpStream::connect(public).await.unwrap();
    let _ = read_control(&mut control).await;
    drop(control);
    assert!(closed_silently(&mut pending).await);
    let mut gone = false;
    for _ in 0..500 {
        if TcpStream::connect(public).await.is_err() {
            gone = true;
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(gone, "listener still accepting");
    f.done().await;
}

#[tokio::test]
async fn reserved_ports_backlog_and_anonymous() {
    let reserved = free_port();
    let extra = format!(
        "[[ng.ports]]\nports = [{reserved}]\nusers = [\"alice\"]\n[[ng.ports]]\nports = [\"1024-65535\"]\nusers = [\"*\"]"
    );
    let f = fixture("reserved", &extra).await;
    let (_b, r) = listen(f.srv.addr, "bob", "builder", reserved, true, 8).await;
    assert_eq!(r.code, rep::PORT_RESERVED);
    let (mut control, r) = listen(f.srv.addr, "alice", "wonder", reserved, true, 2).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);

    // Backlog 2: the third unclaimed connection is refused (closed).
    let public = r.bound.socket_addr().unwrap();
    let mut first = TcpStream::connect(public).await.unwrap();
    let _second = TcpStream::connect(public).await.unwrap();
    let ControlMessage::AcceptNotice { token, .. } = read_control(&mut control).await else {
        panic!()
    };
    let _ = read_control(&mut control).await;
    let mut third = TcpStream::connect(public).await.unwrap();
    assert!(closed_silently(&mut third).await);
    // The waiting ones are still there.
    let (mut claimed, r) = claim(f.srv.addr, "alice", "wonder", token).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    first.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    claimed.read_exact(&mut b).await.unwrap();
    f.done().await;

    // Unauthenticated clients get no port by default.
    let srv = start(ALLOW_LOOPBACK).await;
    let mut s = ng_session(srv.addr).await;
    let mut req = Vec::new();
    NgRequest::Listen {
        address: Address::ip("127.0.0.1:0".parse().unwrap()),
        exact: false,
        backlog: 1,
    }
    .encode(&mut req);
    s.write_all(&req).await.unwrap();
    assert_eq!(read_reply(&mut s).await.code, ReplyCode::NOT_ALLOWED);
    srv.stop().await;
}

// ---- UDP-TUNNEL --------------------------------------------------------------------------

use socksng_proto::wire::ng::TunnelFrame;

fn frame(to: &Address, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    TunnelFrame::encode_datagram(to, payload, &mut v).unwrap();
    v
}

#[tokio::test]
async fn udp_tunnel_ipv4_ipv6_and_names() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo4, _) = udp_echo("127.0.0.1:0").await;
    let (echo6, _) = udp_echo("[::1]:0").await;
    let mut t = open_tunnel(srv.addr).await;
    for (to, source) in [
        (Address::ip(echo4), echo4),
        (Address::ip(echo6), echo6),
        (Address::domain("localhost", echo4.port()).unwrap(), echo4),
    ] {
        for size in [64usize, 60_000] {
            let payload = pattern(size, size as u64);
            t.write_all(&frame(&to, &payload)).await.unwrap();
            let (from, back) = read_frame(&mut t).await.expect("echo");
            assert_eq!(
                from,
                Address::ip(source),
                "reply carries the source address"
            );
            assert_eq!(back, payload);
        }
    }
    // A refused destination (host-local without a rule) is dropped silently; the tunnel goes on.
    let srv2 = start("").await;
    let mut t2 = open_tunnel(srv2.addr).await;
    let (echo_denied, count) = udp_echo("127.0.0.1:0").await;
    t2.write_all(&frame(&Address::ip(echo_denied), b"no"))
        .await
        .unwrap();
    t2.shutdown().await.unwrap();
    assert!(read_frame(&mut t2).await.is_none());
    assert_eq!(count.load(std::sync::atomic::Ordering::SeqCst), 0);
    srv.stop().await;
    srv2.stop().await;
}

/// Thousands of datagrams in flight at once (a window of 256), none corrupted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tunnel_thousands_in_flight() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, _) = udp_echo("127.0.0.1:0").await;
    let t = open_tunnel(srv.addr).await;
    let (mut rd, mut wr) = t.into_split();
    const N: u32 = 4000;
    let (credit_tx, mut credit_rx) = tokio::sync::mpsc::channel::<()>(256);
    for _ in 0..256 {
        credit_tx.send(()).await.unwrap();
    }
    let writer = tokio::spawn(async move {
        for i in 0..N {
            if credit_rx.recv().await.is_none() {
                break;
            }
            let mut payload = i.to_be_bytes().to_vec();
            payload.extend(pattern(100 + (i as usize * 37) % 1400, u64::from(i)));
            let mut f = Vec::new();
            TunnelFrame::encode_datagram(&Address::ip(echo), &payload, &mut f).unwrap();
            wr.write_all(&f).await.unwrap();
        }
        // Returned, not dropped: dropping a write half shuts the tunnel down.
        wr
    });
    let mut seen = std::collections::HashSet::new();
    let mut corrupted = 0;
    while seen.len() < (N as usize) * 95 / 100 {
        let mut len = [0u8; 2];
        if rd.read_exact(&mut len).await.is_err() {
            break;
        }
        let mut rest_head = [0u8; 7];
        rd.read_exact(&mut rest_head).await.unwrap();
        let mut payload = vec![0u8; u16::from_be_bytes(len) as usize];
        rd.read_exact(&mut payload).await.unwrap();
        let i = u32::from_be_bytes(payload[..4].try_into().unwrap());
        let expect = pattern(100 + (i as usize * 37) % 1400, u64::from(i));
        if payload[4..] != expect[..] {
            corrupted += 1;
        }
        seen.insert(i);
        let _ = credit_tx.try_send(());
    }
    drop(credit_tx);
    let _wr = writer.await.unwrap();
    assert_eq!(corrupted, 0);
    assert!(
        seen.len() >= (N as usize) * 95 / 100,
        "only {} of {N} came back",
        seen.len()
    );
    srv.stop().await;
}

/// A client that stops reading: replies beyond the queue limit are dropped, so what the server
/// holds for it stays bounded (queue limit 64 KiB here, plus the kernel's socket buffers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_tunnel_slow_reader_is_bounded() {
    let srv = start(&format!("[ng]\nudp_tunnel_queue = 65536\n{ALLOW_LOOPBACK}")).await;
    // An echo that reports every datagram it answers, so the client can send the next one
    // only after the previous one has been echoed: no datagram is lost on the way out, and
    // every echo goes back towards a client that does not read.
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo = sock.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65_536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
            if seen_tx.send(()).is_err() {
                return;
            }
        }
    });
    let mut t = open_tunnel(srv.addr).await;
    const N: usize = 4000;
    const SIZE: usize = 8000;
    let payload = pattern(SIZE, 11);
    let f = frame(&Address::ip(echo), &payload);
    let mut echoed = 0usize;
    for _ in 0..N {
        t.write_all(&f).await.unwrap();
        seen.recv().await.unwrap();
        echoed += 1;
    }
    t.shutdown().await.unwrap();
    let mut received = 0usize;
    while let Some((_, back)) = read_frame(&mut t).await {
        assert_eq!(back, payload);
        received += 1;
    }
    assert_eq!(echoed, N);
    assert!(
        received * SIZE < 16 << 20,
        "{received} datagrams queued for a client that did not read"
    );
    assert!(
        received < echoed,
        "nothing was dropped: {received} of {echoed}"
    );
    srv.stop().await;
}

/// A claim frees its place in the backlog: fill it, claim it down, and new peers are announced
/// again, many times over.
#[tokio::test]
async fn claims_free_backlog_places() {
    let f = fixture("backlog-cycle", "").await;
    let (mut control, r) = listen(f.srv.addr, "alice", "wonder", 0, false, 2).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let public = r.bound.socket_addr().unwrap();
    let deadline = std::time::Duration::from_secs(10);
    for round in 0..5 {
        let mut peers = Vec::new();
        let mut tokens = Vec::new();
        for _ in 0..2 {
            peers.push(TcpStream::connect(public).await.unwrap());
            let notice = tokio::time::timeout(deadline, read_control(&mut control))
                .await
                .unwrap_or_else(|_| panic!("round {round}: no accept notice"));
            let ControlMessage::AcceptNotice { token, .. } = notice else {
                panic!("round {round}: {notice:?}")
            };
            tokens.push(token);
        }
        for (token, peer) in tokens.into_iter().zip(peers.iter_mut()) {
            let (mut claimed, r) = claim(f.srv.addr, "alice", "wonder", token).await;
            assert_eq!(r.code, ReplyCode::SUCCEEDED, "round {round}");
            peer.write_all(b"x").await.unwrap();
            let mut b = [0u8; 1];
            tokio::time::timeout(deadline, claimed.read_exact(&mut b))
                .await
                .unwrap()
                .unwrap();
        }
    }
    f.done().await;
}
