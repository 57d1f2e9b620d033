//! CONNECT end to end over loopback: addresses of every type, pipelining, authentication,
//! bad input, reply codes, half-close, full-duplex relaying and many concurrent clients.

mod common;
use common::*;
use socksng_proto::{Address, ReplyCode};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn connect_ipv4_reply_carries_real_outgoing_address() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (target, mut accepted) = accepting_server("127.0.0.1:0").await;
    let (mut s, reply) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(reply.code, ReplyCode::SUCCEEDED);
    let (mut t, seen_from) = accepted.recv().await.unwrap();
    assert_eq!(
        reply.bound,
        Address::ip(seen_from),
        "BND must be the outgoing socket's local address"
    );
    s.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    t.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"ping");
    t.write_all(b"pong").await.unwrap();
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"pong");
    srv.stop().await;
}

#[tokio::test]
async fn external_address_is_the_source_of_connections_and_datagrams() {
    // An IPv6 entry is skipped for IPv4 targets; the IPv4 one is the source.
    let srv = start(&format!(
        "external = [\"::1\", \"127.0.0.11\"]\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let (target, mut accepted) = accepting_server("127.0.0.1:0").await;
    let (_s, reply) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(reply.code, ReplyCode::SUCCEEDED);
    let (_t, seen_from) = accepted.recv().await.unwrap();
    assert_eq!(seen_from.ip().to_string(), "127.0.0.11");
    assert_eq!(reply.bound, Address::ip(seen_from));

    // UDP ASSOCIATE: the echo sees the datagram from the external address.
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let (_ctl, relay) = udp_associate(srv.addr, Address::unspecified()).await;
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut dgram = vec![0, 0, 0];
    Address::ip(echo_addr).encode(&mut dgram);
    dgram.extend_from_slice(b"hi");
    client.send_to(&dgram, relay).await.unwrap();
    let mut b = [0u8; 16];
    let (n, from) = echo.recv_from(&mut b).await.unwrap();
    assert_eq!(
        (&b[..n], from.ip().to_string().as_str()),
        (&b"hi"[..], "127.0.0.11")
    );
    srv.stop().await;
}

#[tokio::test]
async fn connect_ipv6_target_and_ipv6_listener() {
    let srv = start(&format!("listen = [\"[::1]:0\"]\n{ALLOW_LOOPBACK}")).await;
    assert!(srv.addr.is_ipv6());
    let target = echo_server("[::1]:0").await;
    let (mut s, reply) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(reply.code, ReplyCode::SUCCEEDED);
    assert!(matches!(reply.bound.socket_addr(), Some(SocketAddr::V6(_))));
    s.write_all(b"over v6").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"over v6");
    srv.stop().await;
}

#[tokio::test]
async fn connect_by_name_resolved_by_server() {
    let srv = start(ALLOW_LOOPBACK).await;
    let target = echo_server("127.0.0.1:0").await;
    let (mut s, reply) = socks_connect(
        srv.addr,
        &Address::domain("localhost", target.port()).unwrap(),
    )
    .await;
    assert_eq!(reply.code, ReplyCode::SUCCEEDED);
    s.write_all(b"named").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"named");
    srv.stop().await;
}

#[tokio::test]
async fn pipelined_greeting_request_and_data_in_one_write() {
    let srv = start(ALLOW_LOOPBACK).await;
    let target = echo_server("127.0.0.1:0").await;
    let mut msg = vec![5, 1, 0, 5, 1, 0];
    Address::ip(target).encode(&mut msg);
    msg.extend_from_slice(b"early data");
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&msg).await.unwrap();
    s.shutdown().await.unwrap();
    let all = read_to_end(&mut s).await;
    assert_eq!(&all[..2], [5, 0]);
    assert_eq!(all[3], 0, "reply code");
    assert!(all.ends_with(b"early data"), "{all:?}");
    srv.stop().await;
}

#[tokio::test]
async fn pipelined_with_authentication_and_one_byte_at_a_time() {
    let dir = std::env::temp_dir().join(format!("socksng-auth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    socksng_server::users::set_password(&dir.join("users"), "alice", b"wonderland").unwrap();
    let cfg = format!("[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n{ALLOW_LOOPBACK}");
    let srv = start_in(&cfg, &dir).await;
    let target = echo_server("127.0.0.1:0").await;
    let mut msg = vec![5, 2, 0, 2, 1, 5];
    msg.extend_from_slice(b"alice");
    msg.push(10);
    msg.extend_from_slice(b"wonderland");
    msg.extend_from_slice(&[5, 1, 0]);
    Address::ip(target).encode(&mut msg);

    for one_byte in [false, true] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        if one_byte {
            for b in &msg {
                s.write_all(&[*b]).await.unwrap();
                s.flush().await.unwrap();
            }
        } else {
            s.write_all(&msg).await.unwrap();
        }
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [5, 2, 1, 0], "method 2 chosen, then auth success");
        let reply = read_reply(&mut s).await;
        assert_eq!(reply.code, ReplyCode::SUCCEEDED);
        s.write_all(b"hi").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut s).await, b"hi");
    }

    // Wrong password: status 1, then close.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&[5, 1, 2, 1, 5, b'a', b'l', b'i', b'c', b'e', 1, b'x'])
        .await
        .unwrap();
    let mut head = [0u8; 4];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head, [5, 2, 1, 1]);
    assert!(closed_silently(&mut s).await);

    // A client that offers only "no authentication" gets X'FF'.
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    s.write_all(&[5, 1, 0]).await.unwrap();
    let mut sel = [0u8; 2];
    s.read_exact(&mut sel).await.unwrap();
    assert_eq!(sel, [5, 0xff]);
    assert!(closed_silently(&mut s).await);
    srv.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Each bad input gets its reply or a clean close, and a valid client is served right after.
#[tokio::test]
async fn bad_input_then_valid_client() {
    let srv = start(ALLOW_LOOPBACK).await;
    let target = echo_server("127.0.0.1:0").await;
    // (bytes sent, bytes expected back before the close)
    let cases: Vec<(Vec<u8>, Vec<u8>)> = vec![
        (vec![6, 1, 0], vec![]),                                 // wrong version
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(), vec![]), // garbage
        (vec![0x16, 3, 1, 0, 5], vec![]),                        // a TLS ClientHello
        (vec![5, 0], vec![5, 0xff]),                             // zero methods
        (
            vec![5, 1, 0, 5, 9, 0, 1, 1, 2, 3, 4, 0, 80],
            vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
        ), // unknown command
        (
            vec![5, 1, 0, 5, 1, 0, 7, 1, 2, 3, 4, 0, 80],
            vec![5, 0, 5, 8, 0, 1, 0, 0, 0, 0, 0, 0],
        ), // unknown ATYP
        (
            vec![5, 1, 0, 5, 1, 0, 3, 0, 0, 80],
            vec![5, 0, 5, 1, 0, 1, 0, 0, 0, 0, 0, 0],
        ), // empty domain
        (vec![5, 1, 0, 4, 1, 0, 1, 1, 2, 3, 4, 0, 80], vec![5, 0]), // request with version 4
        (vec![5, 1, 0, 5, 1], vec![5, 0]),                       // truncated, then EOF
        (vec![5, 3], vec![]),                                    // truncated greeting, EOF
        (
            {
                let mut v = vec![4, 1, 0, 80, 1, 2, 3, 4];
                v.extend(std::iter::repeat_n(b'u', 5000));
                v
            },
            vec![0, 91, 0, 0, 0, 0, 0, 0],
        ), // oversized SOCKS4 user id
        (vec![5, 1, 2, 1, 1, b'u', 1, b'p'], vec![5, 0xff]),     // password not accepted here
        // Unknown command with 32 KiB pipelined behind it: the reply must survive the close
        // (no reset discarding it).
        (
            {
                let mut v = vec![5, 1, 0, 5, 9, 0, 1, 1, 2, 3, 4, 0, 80];
                v.extend(pattern(32 * 1024, 5));
                v
            },
            vec![5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0],
        ),
    ];
    for (i, (send, expect)) in cases.iter().enumerate() {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        let _ = s.write_all(send).await;
        let _ = s.shutdown().await;
        let mut got = Vec::new();
        let _ = s.read_to_end(&mut got).await;
        assert_eq!(&got, expect, "case {i}");
        let (mut ok, reply) = socks_connect(srv.addr, &Address::ip(target)).await;
        assert_eq!(
            reply.code,
            ReplyCode::SUCCEEDED,
            "valid client after case {i}"
        );
        ok.write_all(b"still here").await.unwrap();
        ok.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut ok).await, b"still here");
    }
    srv.stop().await;
}

#[tokio::test]
async fn socks4_and_socks4a_connect() {
    let srv = start(ALLOW_LOOPBACK).await;
    let target = echo_server("127.0.0.1:0").await;
    let p = target.port().to_be_bytes();
    let mut v4 = vec![4, 1, p[0], p[1], 127, 0, 0, 1];
    v4.extend_from_slice(b"user\0");
    let mut v4a = vec![4, 1, p[0], p[1], 0, 0, 0, 1, 0];
    v4a.extend_from_slice(b"localhost\0");
    for msg in [v4, v4a] {
        let mut s = TcpStream::connect(srv.addr).await.unwrap();
        s.write_all(&msg).await.unwrap();
        let mut rep = [0u8; 8];
        s.read_exact(&mut rep).await.unwrap();
        assert_eq!(rep[..2], [0, 90]);
        s.write_all(b"four").await.unwrap();
        s.shutdown().await.unwrap();
        assert_eq!(read_to_end(&mut s).await, b"four");
    }
    // The default policy applies to SOCKS4 as well.
    let srv2 = start("").await;
    let mut s = TcpStream::connect(srv2.addr).await.unwrap();
    s.write_all(&[4, 1, p[0], p[1], 127, 0, 0, 1, 0])
        .await
        .unwrap();
    let mut rep = [0u8; 8];
    s.read_exact(&mut rep).await.unwrap();
    assert_eq!(rep[1], 91);
    srv.stop().await;
    srv2.stop().await;
}

#[tokio::test]
async fn failure_reply_codes() {
    let srv = start(&format!(
        "[timeouts]\nconnect = \"300ms\"\n{ALLOW_LOOPBACK}"
    ))
    .await;
    // Refused: a port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (_, r) = socks_connect(srv.addr, &Address::ip(closed)).await;
    assert_eq!(r.code, ReplyCode::CONNECTION_REFUSED);
    // Host unreachable: a name that does not resolve (.invalid never does, RFC 6761).
    let (_, r) = socks_connect(
        srv.addr,
        &Address::domain("no-such-host.invalid", 80).unwrap(),
    )
    .await;
    assert_eq!(r.code, ReplyCode::HOST_UNREACHABLE);
    // TTL expired for a connect timeout: a listener whose accept queue is full drops SYNs.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
        .unwrap();
    sock.listen(0).unwrap();
    let full: SocketAddr = sock.local_addr().unwrap().as_socket().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..16 {
        match tokio::time::timeout(Duration::from_millis(200), TcpStream::connect(full)).await {
            Ok(Ok(s)) => fillers.push(s),
            _ => break,
        }
    }
    let (_, r) = socks_connect(srv.addr, &Address::ip(full)).await;
    assert_eq!(r.code, ReplyCode::TTL_EXPIRED);
    drop(fillers);
    srv.stop().await;
}

/// After the client's shutdown(SHUT_WR) the target sees EOF and its answer still arrives;
/// and the other way round.
#[tokio::test]
async fn half_close_both_ways() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (target, mut accepted) = accepting_server("127.0.0.1:0").await;

    // Client closes first.
    let (mut s, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let (mut t, _) = accepted.recv().await.unwrap();
    s.write_all(b"question").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut t).await, b"question");
    t.write_all(b"answer after EOF").await.unwrap();
    t.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"answer after EOF");

    // Target closes first.
    let (mut s, _) = socks_connect(srv.addr, &Address::ip(target)).await;
    let (mut t, _) = accepted.recv().await.unwrap();
    t.write_all(b"banner").await.unwrap();
    t.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"banner");
    s.write_all(b"late reply").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut t).await, b"late reply");
    srv.stop().await;
}

/// Both directions stream 32 MiB at once; a relay that serialises them would deadlock here,
/// since neither side reads until it has written everything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_duplex_without_stall() {
    const LEN: usize = 32 << 20;
    let srv = start(ALLOW_LOOPBACK).await;
    let (target, mut accepted) = accepting_server("127.0.0.1:0").await;
    let (s, _) = socks_connect(srv.addr, &Address::ip(target)).await;
    let (t, _) = accepted.recv().await.unwrap();
    let up = pattern(LEN, 1);
    let down = pattern(LEN, 2);
    let (up_sum, down_sum) = (checksum(&up), checksum(&down));
    async fn write_then_read(mut s: TcpStream, data: Vec<u8>) -> Vec<u8> {
        let (mut r, mut w) = s.split();
        let writer = async {
            w.write_all(&data).await.unwrap();
            w.shutdown().await.unwrap();
        };
        let mut got = Vec::new();
        let reader = r.read_to_end(&mut got);
        let (_, n) = tokio::join!(writer, reader);
        n.unwrap();
        got
    }
    let (at_target, at_client) = tokio::join!(
        tokio::spawn(write_then_read(t, down)),
        tokio::spawn(write_then_read(s, up))
    );
    assert_eq!(checksum(&at_target.unwrap()), up_sum);
    assert_eq!(checksum(&at_client.unwrap()), down_sum);
    // Bulk flows in both directions are moved with splice(2) on Linux.
    #[cfg(target_os = "linux")]
    assert!(socksng_server::relay::spliced_directions() >= 2);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousand_concurrent_clients_with_checksums() {
    raise_fd_limit();
    let srv = start(ALLOW_LOOPBACK).await;
    // Spread over several loopback addresses so 2,000 connections in quick succession never
    // need a 4-tuple still in TIME_WAIT from an earlier run.
    let mut targets = Vec::new();
    for k in 2..10 {
        targets.push(echo_server(&format!("127.0.0.{k}:0")).await);
    }
    // Every client first completes its handshake, so all 1,000 sessions are open at once.
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(1000));
    let proxy = srv.addr;
    let mut tasks = Vec::new();
    for i in 0..1000u64 {
        let barrier = barrier.clone();
        let target = targets[i as usize % targets.len()];
        tasks.push(tokio::spawn(async move {
            let sock = tokio::net::TcpSocket::new_v4().unwrap();
            sock.bind(format!("127.0.1.{}:0", 1 + i % 200).parse().unwrap())
                .unwrap();
            let mut s = sock.connect(proxy).await.unwrap();
            let r = request(&mut s, 1, &Address::ip(target)).await;
            assert_eq!(r.code, ReplyCode::SUCCEEDED);
            barrier.wait().await;
            let data = pattern(16 * 1024 + i as usize, i + 7);
            let (mut rd, mut wr) = s.split();
            let w = async {
                wr.write_all(&data).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let (_, n) = tokio::join!(w, rd.read_to_end(&mut back));
            n.unwrap();
            checksum(&back) == checksum(&data) && back.len() == data.len()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        if t.await.unwrap() {
            ok += 1;
        }
    }
    assert_eq!(ok, 1000);
    srv.stop().await;
}
