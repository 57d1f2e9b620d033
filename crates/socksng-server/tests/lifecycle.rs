//! Limits, timeouts and shutdown: slow or silent clients are cut off without delaying anyone,
//! client networks are enforced, session caps hold, idle relays end, and shutdown drains.

mod common;
use common::*;
use socksng_proto::{Address, ReplyCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn silent_and_dripping_clients_cut_off_without_delaying_others() {
    let srv = start(&format!(
        "[timeouts]\nhandshake = \"400ms\"\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let target = echo_server("127.0.0.1:0").await;
    let mut silent = TcpStream::connect(srv.addr).await.unwrap();
    let mut dripping = TcpStream::connect(srv.addr).await.unwrap();
    dripping.write_all(&[5]).await.unwrap();
    // Meanwhile a normal client is served at once.
    let (mut ok, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    ok.write_all(b"x").await.unwrap();
    let mut b = [0u8; 1];
    ok.read_exact(&mut b).await.unwrap();
    // Both stragglers are closed by the server (EOF), having received nothing.
    assert!(closed_silently(&mut silent).await);
    let _ = dripping.write_all(&[1]).await;
    assert!(closed_silently(&mut dripping).await);
    srv.stop().await;
}

#[tokio::test]
async fn client_network_not_allowed_is_closed_without_reply() {
    let srv = start("[access]\nclients = [\"192.0.2.0/24\"]\n").await;
    let mut s = TcpStream::connect(srv.addr).await.unwrap();
    let _ = s.write_all(&[5, 1, 0]).await;
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got).await;
    assert!(got.is_empty(), "{got:?}");
    srv.stop().await;
}

#[tokio::test]
async fn per_user_session_limit() {
    let dir = std::env::temp_dir().join(format!("socksng-limit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    socksng_server::users::set_password(&dir.join("users"), "bob", b"pw").unwrap();
    let cfg = format!(
        "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n[limits]\nmax_sessions_per_user = 2\n{ALLOW_LOOPBACK}"
    );
    let srv = start_in(&cfg, &dir).await;
    let target = echo_server("127.0.0.1:0").await;
    async fn login(
        proxy: std::net::SocketAddr,
        target: std::net::SocketAddr,
    ) -> (TcpStream, ReplyCode) {
        let mut s = TcpStream::connect(proxy).await.unwrap();
        let mut msg = vec![5, 1, 2, 1, 3, b'b', b'o', b'b', 2, b'p', b'w', 5, 1, 0];
        Address::ip(target).encode(&mut msg);
        s.write_all(&msg).await.unwrap();
        let mut head = [0u8; 4];
        s.read_exact(&mut head).await.unwrap();
        assert_eq!(head, [5, 2, 1, 0]);
        let r = read_reply(&mut s).await;
        (s, r.code)
    }
    let (a, ra) = login(srv.addr, target).await;
    let (_b, rb) = login(srv.addr, target).await;
    let (_, rc) = login(srv.addr, target).await;
    assert_eq!(
        (ra, rb, rc),
        (
            ReplyCode::SUCCEEDED,
            ReplyCode::SUCCEEDED,
            ReplyCode::NOT_ALLOWED
        )
    );
    // Ending a session frees its slot. The server notices the close asynchronously, so retry
    // a bounded number of times.
    drop(a);
    let mut freed = false;
    for _ in 0..200 {
        let (_s, code) = login(srv.addr, target).await;
        if code == ReplyCode::SUCCEEDED {
            freed = true;
            break;
        }
    }
    assert!(freed);
    srv.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn total_session_limit() {
    let srv = start(&format!("[limits]\nmax_sessions = 1\n{ALLOW_LOOPBACK}")).await;
    let target = echo_server("127.0.0.1:0").await;
    let (_held, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    // The limit counts sessions past the handshake: the next client is answered, with a
    // general failure, once its request arrives.
    let (_over, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::GENERAL_FAILURE);
    srv.stop().await;
}

#[tokio::test]
async fn silent_connections_hold_handshake_places_not_sessions() {
    let srv = start(&format!(
        "[limits]\nmax_handshakes = 2\nmax_sessions = 1\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let target = echo_server("127.0.0.1:0").await;
    let (_held, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    // Two silent clients take every handshake place; a third is closed at once.
    let _silent: Vec<TcpStream> = vec![
        TcpStream::connect(srv.addr).await.unwrap(),
        TcpStream::connect(srv.addr).await.unwrap(),
    ];
    let mut over = TcpStream::connect(srv.addr).await.unwrap();
    let _ = over.write_all(&[5, 1, 0]).await;
    assert!(closed_silently(&mut over).await);
    srv.stop().await;
}

#[tokio::test]
async fn idle_timeout_ends_silent_relay() {
    let srv = start(&format!("[timeouts]\nidle = \"300ms\"\n{ALLOW_LOOPBACK}")).await;
    let (target, mut accepted) = accepting_server("127.0.0.1:0").await;
    let (mut s, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    let (mut t, _) = accepted.recv().await.unwrap();
    s.write_all(b"a").await.unwrap();
    let mut b = [0u8; 1];
    t.read_exact(&mut b).await.unwrap();
    // Then nobody speaks: both legs get closed.
    assert!(closed_silently(&mut s).await);
    assert!(closed_silently(&mut t).await);
    srv.stop().await;
}

/// On shutdown the server stops accepting at once, running sessions keep working through the
/// grace period, and `run` returns when they are done.
#[tokio::test]
async fn graceful_shutdown_drains_sessions() {
    let mut srv = start(&format!(
        "[timeouts]\nshutdown_grace = \"60s\"\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let target = echo_server("127.0.0.1:0").await;
    let (mut s, r) = socks_connect(srv.addr, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    srv.shutdown.cancel();
    // New connections are refused once the listener is gone (bounded polling).
    let mut refused = false;
    for _ in 0..500 {
        match TcpStream::connect(srv.addr).await {
            Err(_) => {
                refused = true;
                break;
            }
            Ok(c) => drop(c),
        }
        tokio::task::yield_now().await;
    }
    assert!(refused, "listener still accepting after shutdown");
    assert!(!srv.task.as_ref().unwrap().is_finished());
    // The old session still relays.
    s.write_all(b"during drain").await.unwrap();
    s.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut s).await, b"during drain");
    drop(s);
    srv.task.take().unwrap().await.unwrap();
}

/// When the grace period runs out, remaining sessions are cut.
#[tokio::test]
async fn shutdown_cuts_sessions_after_grace() {
    let mut srv = start(&format!(
        "[timeouts]\nshutdown_grace = \"200ms\"\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let target = echo_server("127.0.0.1:0").await;
    let (mut s, _) = socks_connect(srv.addr, &Address::ip(target)).await;
    srv.shutdown.cancel();
    srv.task.take().unwrap().await.unwrap();
    assert!(closed_silently(&mut s).await);
}

/// Connects from a chosen loopback source address.
async fn connect_from(source: &str, proxy: std::net::SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{source}:0").parse().unwrap()).unwrap();
    sock.connect(proxy).await.unwrap()
}

#[tokio::test]
async fn one_address_cannot_take_every_place() {
    let srv = start(&format!(
        "[limits]\nmax_handshakes_per_address = 3\nmax_sessions_per_address = 1\n{ALLOW_LOOPBACK}"
    ))
    .await;
    let target = echo_server("127.0.0.1:0").await;
    // 127.0.0.1 holds its three silent connections; its fourth is closed unanswered.
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(connect_from("127.0.0.1", srv.addr).await);
    }
    let mut over = connect_from("127.0.0.1", srv.addr).await;
    let _ = over.write_all(&[5, 1, 0]).await;
    assert!(closed_silently(&mut over).await);
    // Another address is served meanwhile...
    let mut other = connect_from("127.0.0.2", srv.addr).await;
    let r = request(&mut other, 1, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::SUCCEEDED);
    other.write_all(b"ping").await.unwrap();
    let mut b = [0u8; 4];
    other.read_exact(&mut b).await.unwrap();
    // ...and holds its one session: a second from the same address is refused by rule.
    let mut second = connect_from("127.0.0.2", srv.addr).await;
    let r = request(&mut second, 1, &Address::ip(target)).await;
    assert_eq!(r.code, ReplyCode::NOT_ALLOWED);
    srv.stop().await;
}
