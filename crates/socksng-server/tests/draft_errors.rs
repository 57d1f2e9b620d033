//! Every error case of the draft's error-handling section (docs/draft-socksng.md, section 7)
//! on a real socksngd, byte for byte: the bytes sent and the bytes expected are the draft's
//! own Appendix A vectors wherever the draft has one, so draft, codec and server cannot part.

mod common;
use common::*;
use socksng_proto::wire::ng::{rep, ControlMessage, NgAuth, NgHello, NgRequest, TunnelFrame};
use socksng_proto::{Address, ReplyCode};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const DRAFT: &str = include_str!("../../../docs/draft-socksng.md");

/// The bytes of the draft's vector `name`.
fn v(name: &str) -> Vec<u8> {
    DRAFT
        .lines()
        .filter_map(|l| l.strip_prefix("vector "))
        .find_map(|l| {
            let mut parts = l.split_whitespace();
            (parts.next() == Some(name)).then(|| {
                parts
                    .map(|h| u8::from_str_radix(h, 16).expect("hex"))
                    .collect()
            })
        })
        .unwrap_or_else(|| panic!("the draft has no vector {name}"))
}

fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

/// Sends `bytes` on a new connection and returns everything the server says until it
/// closes (within the deadline).
async fn exchange(proxy: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(bytes).await.unwrap();
    read_to_end(&mut s).await
}

const NG_ONLY: &[u8] = &[5, 1, 0xa5];

/// Loopback only, everything else refused by default: the refused destinations of these
/// tests (192.0.2.1, the draft's example) must never see a datagram.
const DENY_ALL_BUT_LOOPBACK: &str = "[access]\ndefault = \"deny\"\n[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

fn hello_password(user: &str, pass: &str) -> Vec<u8> {
    let mut out = Vec::new();
    NgHello::new(NgAuth::Password {
        username: user.into(),
        password: pass.into(),
    })
    .encode(&mut out)
    .unwrap();
    out
}

#[tokio::test]
async fn ng_hello_errors_get_their_welcome_status_and_a_close() {
    let (srv, dir) = two_user_server("draft-hello", "").await;
    let selected = v("method-ng");
    for (hello, welcome) in [
        ("hello-version-zero", "welcome-revision-not-supported"),
        ("hello-alen-too-big", "welcome-malformed"),
        ("hello-none-with-data", "welcome-malformed"),
        ("hello-lengths-disagree", "welcome-malformed"),
        ("hello-unknown-auth", "welcome-not-acceptable"),
        // A server that requires a login answers AUTH X'00' with X'02'.
        ("hello-none", "welcome-not-acceptable"),
    ] {
        let got = exchange(srv.addr, &cat(&[NG_ONLY, &v(hello)])).await;
        assert_eq!(got, cat(&[&selected, &v(welcome)]), "{hello}");
    }
    // A wrong password: X'01'. The right one: X'00' and a request may follow at once.
    let got = exchange(srv.addr, &cat(&[NG_ONLY, &hello_password("alice", "nope")])).await;
    assert_eq!(got, cat(&[&selected, &v("welcome-auth-failed")]));
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let msg = cat(&[
        NG_ONLY,
        &hello_password("alice", "wonder"),
        &v("request-capabilities"),
    ]);
    s.write_all(&msg).await.unwrap();
    let mut head = vec![0u8; 5];
    within("welcome", s.read_exact(&mut head)).await.unwrap();
    assert_eq!(head, cat(&[&selected, &v("welcome-ok")]));
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_server_without_logins_takes_credentials_and_serves_anonymously() {
    let srv = start(ALLOW_LOOPBACK).await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let msg = cat(&[NG_ONLY, &hello_password("anyone", "anything")]);
    s.write_all(&msg).await.unwrap();
    let mut head = vec![0u8; 5];
    within("welcome", s.read_exact(&mut head)).await.unwrap();
    assert_eq!(head, cat(&[&v("method-ng"), &v("welcome-ok")]));
    // A client speaking a later revision settles on revision 1.
    let mut later = v("hello-none");
    later[0] = 7;
    let got = exchange(srv.addr, &cat(&[NG_ONLY, &later, &[5, 0x42, 0]])).await;
    assert_eq!(
        got,
        cat(&[
            &v("method-ng"),
            &v("welcome-ok"),
            &v("reply-command-not-supported")
        ])
    );
    srv.stop().await;
}

/// A server without logins whose LISTEN may take `ports`, plus `extra` configuration.
async fn listen_server(ports: &str, extra: &str) -> TestServer {
    start(&format!(
        "{extra}[[ng.ports]]\nports = [\"{ports}\"]\n{ALLOW_LOOPBACK}"
    ))
    .await
}

#[tokio::test]
async fn requests_refused_with_their_codes() {
    let srv = listen_server("20000-60000", "").await;
    let ng = cat(&[NG_ONLY, &v("hello-none")]);
    let ng_ok = cat(&[&v("method-ng"), &v("welcome-ok")]);
    // A SOCKS-NG command without SOCKS-NG negotiation: X'07'.
    let got = exchange(srv.addr, &cat(&[&[5, 1, 0], &v("request-capabilities")])).await;
    assert_eq!(got, cat(&[&[5, 0], &v("reply-command-not-supported")]));
    // An unknown command after negotiation: X'07'.
    let got = exchange(srv.addr, &cat(&[&ng, &[5, 0x15, 0]])).await;
    assert_eq!(got, cat(&[&ng_ok, &v("reply-command-not-supported")]));
    // LISTEN by name: X'08'.
    let mut listen_name = Vec::new();
    NgRequest::Listen {
        address: Address::domain("example.test", 0).unwrap(),
        exact: false,
        backlog: 1,
    }
    .encode(&mut listen_name);
    let got = exchange(srv.addr, &cat(&[&ng, &listen_name])).await;
    assert_eq!(got, cat(&[&ng_ok, &v("reply-address-type-not-supported")]));
    // An unknown ATYP in a request: X'08'.
    let got = exchange(srv.addr, &cat(&[&ng, &[5, 0x12, 0, 9, 0, 0]])).await;
    assert_eq!(got, cat(&[&ng_ok, &v("reply-address-type-not-supported")]));
    // ACCEPT of a token nobody issued: X'0C'.
    let got = exchange(srv.addr, &cat(&[&ng, &v("request-accept")])).await;
    assert_eq!(got, cat(&[&ng_ok, &v("reply-token-not-valid")]));
    // LISTEN exactly on a port outside every grant: X'02'.
    let got = exchange(srv.addr, &cat(&[&ng, &listen_on("127.0.0.1:1999", true)])).await;
    assert_eq!(got, cat(&[&ng_ok, &v("reply-not-allowed")]));
    // LISTEN on an address this host does not have: X'02'.
    let got = exchange(
        srv.addr,
        &cat(&[&ng, &listen_on("198.51.100.254:0", false)]),
    )
    .await;
    assert_eq!(got, cat(&[&ng_ok, &v("reply-not-allowed")]));
    // LISTEN exactly on a granted port that is taken: X'0A'.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    if (20000..=60000).contains(&port) {
        let at = format!("127.0.0.1:{port}");
        let got = exchange(srv.addr, &cat(&[&ng, &listen_on(&at, true)])).await;
        assert_eq!(got, cat(&[&ng_ok, &v("reply-port-in-use")]));
    }
    srv.stop().await;
}

fn listen_on(at: &str, exact: bool) -> Vec<u8> {
    let mut out = Vec::new();
    NgRequest::Listen {
        address: Address::ip(at.parse().unwrap()),
        exact,
        backlog: 16,
    }
    .encode(&mut out);
    out
}

#[tokio::test]
async fn listen_reserved_ports_and_the_listener_limit() {
    let (srv, dir) = two_user_server(
        "draft-ports",
        "[ng]\nmax_listeners_per_user = 1\n[[ng.ports]]\nports = [\"20000-20009\"]\nusers = [\"alice\"]\n[[ng.ports]]\nports = [\"20000-60000\"]\nusers = [\"*\"]\n",
    )
    .await;
    let bob = cat(&[NG_ONLY, &hello_password("bob", "builder")]);
    let ok = cat(&[&v("method-ng"), &v("welcome-ok")]);
    let got = exchange(srv.addr, &cat(&[&bob, &listen_on("127.0.0.1:20005", true)])).await;
    assert_eq!(got, cat(&[&ok, &v("reply-port-reserved")]));
    // The address is judged before the port: one this host lacks is X'02' even there.
    let elsewhere = listen_on("198.51.100.254:20005", true);
    let got = exchange(srv.addr, &cat(&[&bob, &elsewhere])).await;
    assert_eq!(got, cat(&[&ok, &v("reply-not-allowed")]));
    // Bob's one listener is open; a second one hits the limit.
    let mut first = TcpStream::connect(srv.addr).await.unwrap();
    first
        .write_all(&cat(&[&bob, &listen_on("127.0.0.1:0", false)]))
        .await
        .unwrap();
    let mut head = vec![0u8; 5];
    within("welcome", first.read_exact(&mut head))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut first).await.code, ReplyCode::SUCCEEDED);
    let got = exchange(srv.addr, &cat(&[&bob, &listen_on("127.0.0.1:0", false)])).await;
    assert_eq!(got, cat(&[&ok, &v("reply-limit-reached")]));
    srv.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

/// Opens an anonymous listener on `at` with `backlog`; returns the control connection (the
/// reply read, LISTENING not yet) and the address the server reported.
async fn anonymous_listener_on(
    proxy: SocketAddr,
    at: &str,
    backlog: u16,
) -> (TcpStream, SocketAddr) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    let mut req = Vec::new();
    NgRequest::Listen {
        address: Address::ip(at.parse().unwrap()),
        exact: false,
        backlog,
    }
    .encode(&mut req);
    s.write_all(&cat(&[NG_ONLY, &v("hello-none"), &req]))
        .await
        .unwrap();
    let mut head = vec![0u8; 5];
    within("welcome", s.read_exact(&mut head)).await.unwrap();
    let r = read_reply(&mut s).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED, "LISTEN on {at}");
    (s, r.bound.socket_addr().unwrap())
}

async fn anonymous_listener(proxy: SocketAddr, backlog: u16) -> (TcpStream, SocketAddr) {
    anonymous_listener_on(proxy, "127.0.0.1:0", backlog).await
}

/// What an anonymous claim of a token it may not have gets: welcome, then X'0C'.
fn token_not_valid() -> Vec<u8> {
    cat(&[
        &v("method-ng"),
        &v("welcome-ok"),
        &v("reply-token-not-valid"),
    ])
}

/// Reads exactly `n` bytes of the control connection.
async fn read_n(s: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    within("control bytes", s.read_exact(&mut buf))
        .await
        .unwrap();
    buf
}

async fn notice(s: &mut TcpStream) -> ControlMessage {
    // A notice of an IPv4 peer: TYPE, token, ATYP 01, 4 + 2 bytes.
    let bytes = read_n(s, 1 + 16 + 1 + 4 + 2).await;
    ControlMessage::decode(&bytes).unwrap().0
}

#[tokio::test]
async fn the_control_connection_per_the_draft() {
    let timers = "[ng]\ntoken_lifetime = \"60s\"\n[timeouts]\nidle = \"300s\"\n";
    let srv = listen_server("1024-65535", timers).await;
    let (mut ctl, at) = anonymous_listener(srv.addr, 16).await;
    // LISTENING first: backlog 16, lifetime 60 s, idle 300 s, exactly the draft's vector.
    assert_eq!(read_n(&mut ctl, v("listening").len()).await, v("listening"));
    // PING is answered with PONG; REFUSE of an unknown token changes nothing.
    ctl.write_all(&cat(&[&v("refuse"), &v("ping")]))
        .await
        .unwrap();
    assert_eq!(read_n(&mut ctl, 5).await, v("pong"));
    // A peer connects: a notice; the same client address claims it.
    let mut peer = TcpStream::connect(at).await.unwrap();
    let ControlMessage::AcceptNotice { token, peer: from } = notice(&mut ctl).await else {
        panic!("a notice");
    };
    assert_eq!(
        from,
        Address::ip(peer.local_addr().unwrap()),
        "IPv4 as ATYP 01"
    );
    // Another client address, anonymous too, may not claim it, and does not spend it.
    let mut accept = Vec::new();
    NgRequest::Accept { token }.encode(&mut accept);
    let claim_bytes = cat(&[NG_ONLY, &v("hello-none"), &accept]);
    let other = TcpSocket::new_v4().unwrap();
    other.bind("127.0.0.2:0".parse().unwrap()).unwrap();
    let mut other = other.connect(srv.addr).await.unwrap();
    other.write_all(&claim_bytes).await.unwrap();
    let got = read_to_end(&mut other).await;
    assert_eq!(got, token_not_valid());
    let mut mine = TcpStream::connect(srv.addr).await.unwrap();
    mine.write_all(&claim_bytes).await.unwrap();
    let mut head = vec![0u8; 5];
    within("welcome", mine.read_exact(&mut head)).await.unwrap();
    assert_eq!(read_reply(&mut mine).await.code, ReplyCode::SUCCEEDED);
    peer.write_all(b"hello").await.unwrap();
    assert_eq!(read_n(&mut mine, 5).await, b"hello");
    // A peer that goes away before its claim: EXPIRED, and its token no longer claims.
    let gone = TcpStream::connect(at).await.unwrap();
    let ControlMessage::AcceptNotice { token, .. } = notice(&mut ctl).await else {
        panic!("a notice");
    };
    drop(gone);
    let mut expired = Vec::new();
    ControlMessage::Expired { token }.encode(&mut expired);
    assert_eq!(read_n(&mut ctl, expired.len()).await, expired);
    let mut accept = Vec::new();
    NgRequest::Accept { token }.encode(&mut accept);
    let got = exchange(srv.addr, &cat(&[NG_ONLY, &v("hello-none"), &accept])).await;
    assert_eq!(got, token_not_valid());
    // A type only a server may send, alone: CLOSING X'07' at once (its body is never
    // waited for), then the close, and the listener is gone.
    ctl.write_all(&[0x04]).await.unwrap();
    assert_eq!(read_to_end(&mut ctl).await, v("closing-unknown-message"));
    assert!(
        std::net::TcpStream::connect(at).is_err(),
        "the listener closed"
    );
    srv.stop().await;
}

#[tokio::test]
async fn listen_on_the_unspecified_address_reports_a_concrete_one() {
    let srv = listen_server("1024-65535", "").await;
    for (any, v6) in [("0.0.0.0:0", false), ("[::]:0", true)] {
        let (mut s, bound) = anonymous_listener_on(srv.addr, any, 0).await;
        assert!(!bound.ip().is_unspecified(), "{any} reported as {bound}");
        assert_eq!(bound.is_ipv6(), v6, "{any} reported as {bound}");
        if !v6 {
            assert_eq!(
                bound.ip(),
                srv.addr.ip(),
                "where the client reached the server"
            );
        }
        // BACKLOG 0 means the server's default, reported in LISTENING.
        let ControlMessage::Listening { backlog, .. } =
            ControlMessage::decode(&read_n(&mut s, 11).await).unwrap().0
        else {
            panic!("LISTENING first");
        };
        assert!(backlog >= 1, "granted {backlog}");
    }
    srv.stop().await;
}

/// The draft's example destination, refused by `DENY_ALL_BUT_LOOPBACK`.
fn refused() -> Address {
    Address::ip("192.0.2.1:53".parse().unwrap())
}

fn frame_to(to: &Address, payload: &[u8]) -> Vec<u8> {
    let mut frame = Vec::new();
    TunnelFrame::encode_datagram(to, payload, &mut frame).unwrap();
    frame
}

#[tokio::test]
async fn udp_tunnel_error_frames_and_malformed_frames() {
    let srv = start(DENY_ALL_BUT_LOOPBACK).await;
    let (echo, _) = udp_echo("127.0.0.1:0").await;
    let mut t = open_tunnel(srv.addr).await;
    // A refused destination: the draft's ERROR frame, byte for byte (nothing is sent to it).
    t.write_all(&frame_to(&refused(), b"x")).await.unwrap();
    let want = v("udp-error-refused");
    assert_eq!(read_n(&mut t, want.len()).await, want);
    // Above MAX-UDP-PAYLOAD (65507): X'0E', checked before anything else.
    t.write_all(&frame_to(&refused(), &vec![0u8; 65_508]))
        .await
        .unwrap();
    let want = v("udp-error-too-large");
    assert_eq!(read_n(&mut t, want.len()).await, want);
    // A name that cannot resolve (a label over 63 bytes fails before any query leaves).
    let name = format!("{}.test", "x".repeat(64));
    let unresolved = Address::domain(&name, 53).unwrap();
    t.write_all(&frame_to(&unresolved, b"x")).await.unwrap();
    match read_tunnel_frame(&mut t).await {
        Some(Frame::Error(code, to)) => {
            assert_eq!((code, to), (ReplyCode::HOST_UNREACHABLE, unresolved));
        }
        other => panic!("an ERROR frame, got {other:?}"),
    }
    // The tunnel still carries datagrams.
    t.write_all(&frame_to(&Address::ip(echo), b"still here"))
        .await
        .unwrap();
    let (from, back) = read_frame(&mut t).await.expect("the echo");
    assert_eq!(
        (from, back.as_slice()),
        (Address::ip(echo), &b"still here"[..])
    );
    // An ERROR frame from the client is a protocol error: the tunnel closes on its LEN alone.
    let mut bad = Vec::new();
    TunnelFrame::encode_error(rep::DATAGRAM_TOO_LARGE, &Address::ip(echo), &mut bad);
    t.write_all(&bad[..2]).await.unwrap();
    assert!(read_to_end(&mut t).await.is_empty());
    srv.stop().await;
}

#[tokio::test]
async fn error_frames_are_rate_limited() {
    let srv = start(DENY_ALL_BUT_LOOPBACK).await;
    let mut t = open_tunnel(srv.addr).await;
    let mut frames = frame_to(&refused(), b"x").repeat(50);
    t.write_all(&frames).await.unwrap();
    // Then one to the tunnel's end marker: a malformed frame closes it, so the count is final.
    TunnelFrame::encode_error(ReplyCode::NOT_ALLOWED, &Address::unspecified(), &mut frames);
    t.write_all(&frames[frames.len() - 10..]).await.unwrap();
    let all = read_to_end(&mut t).await;
    let one = v("udp-error-refused").len();
    assert_eq!(all.len() % one, 0);
    let count = all.len() / one;
    assert!(
        (1..=20).contains(&count),
        "{count} ERROR frames for 50 refused datagrams"
    );
    srv.stop().await;
}

/// Bytes pipelined behind a request belong to the protocol step after it: control messages
/// behind LISTEN are answered, data behind ACCEPT reaches the peer first.
#[tokio::test]
async fn bytes_behind_listen_and_accept_are_not_lost() {
    let srv = listen_server("1024-65535", "").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&cat(&[
        NG_ONLY,
        &v("hello-none"),
        &listen_on("127.0.0.1:0", false),
        &v("ping"),
    ]))
    .await
    .unwrap();
    let mut head = vec![0u8; 5];
    within("welcome", s.read_exact(&mut head)).await.unwrap();
    let at = read_reply(&mut s).await.bound.socket_addr().unwrap();
    let listening = read_n(&mut s, 11).await;
    assert!(matches!(
        ControlMessage::decode(&listening).unwrap().0,
        ControlMessage::Listening { .. }
    ));
    assert_eq!(read_n(&mut s, 5).await, v("pong"), "the PING behind LISTEN");
    let mut peer = TcpStream::connect(at).await.unwrap();
    let ControlMessage::AcceptNotice { token, .. } = notice(&mut s).await else {
        panic!("a notice");
    };
    let mut accept = Vec::new();
    NgRequest::Accept { token }.encode(&mut accept);
    let mut claim = TcpStream::connect(srv.addr).await.unwrap();
    claim
        .write_all(&cat(&[NG_ONLY, &v("hello-none"), &accept, b"first words"]))
        .await
        .unwrap();
    let mut got = vec![0u8; 11];
    within("the pipelined bytes at the peer", peer.read_exact(&mut got))
        .await
        .unwrap();
    assert_eq!(got, b"first words");
    srv.stop().await;
}

/// LISTEN and ACCEPT (and TOKEN-LIFETIME) are announced only to clients a port grant
/// applies to.
#[tokio::test]
async fn capabilities_offer_listen_only_with_a_grant() {
    for (ports, offered) in [
        ("", false),
        ("[[ng.ports]]\nports = [\"20000-20009\"]\n", true),
    ] {
        let srv = start(&format!("{ports}{ALLOW_LOOPBACK}")).await;
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(&cat(&[
            NG_ONLY,
            &v("hello-none"),
            &v("request-capabilities"),
        ]))
        .await
        .unwrap();
        let all = read_to_end(&mut s).await;
        let (_, head) = socksng_proto::Reply::decode(&all[5..]).unwrap();
        let (caps, _) = socksng_proto::wire::ng::Capabilities::decode(&all[5 + head..]).unwrap();
        assert_eq!(caps.commands.contains(&0x12), offered, "{ports}");
        assert_eq!(caps.commands.contains(&0x13), offered, "{ports}");
        assert_eq!(caps.token_lifetime.is_some(), offered, "{ports}");
        srv.stop().await;
    }
}
