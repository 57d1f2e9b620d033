//! BIND byte by byte: two replies, only the expected peer accepted, and the timeout.

mod common;
use common::*;
use socksng_proto::{Address, ReplyCode};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

async fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    let s = TcpSocket::new_v4().unwrap();
    s.bind(local.parse().unwrap()).unwrap();
    s.connect(to).await.unwrap()
}

#[tokio::test]
async fn bind_two_replies_expected_peer_only() {
    let srv = start(ALLOW_LOOPBACK).await;
    let mut ctl = TcpStream::connect(srv.addr).await.unwrap();
    let first = request(&mut ctl, 2, &Address::ip("127.0.0.5:0".parse().unwrap())).await;
    assert_eq!(first.code, ReplyCode::SUCCEEDED);
    let listen = first.bound.socket_addr().unwrap();
    assert_ne!(listen.port(), 0);

    // An unexpected host is turned away and the wait goes on.
    let mut stranger = connect_from("127.0.0.6:0", listen).await;
    assert!(closed_silently(&mut stranger).await);

    let mut peer = connect_from("127.0.0.5:0", listen).await;
    let second = read_reply(&mut ctl).await;
    assert_eq!(second.code, ReplyCode::SUCCEEDED);
    assert_eq!(
        second.bound,
        Address::ip(peer.local_addr().unwrap()),
        "second reply names the peer"
    );

    peer.write_all(b"from peer").await.unwrap();
    let mut b = [0u8; 9];
    ctl.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"from peer");
    ctl.write_all(b"to peer").await.unwrap();
    ctl.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut peer).await, b"to peer");
    srv.stop().await;
}

#[tokio::test]
async fn bind_any_peer_when_unspecified_and_timeout() {
    let srv = start(&format!("[timeouts]\nbind = \"300ms\"\n{ALLOW_LOOPBACK}")).await;
    let mut ctl = TcpStream::connect(srv.addr).await.unwrap();
    let first = request(&mut ctl, 2, &Address::unspecified()).await;
    let listen = first.bound.socket_addr().unwrap();
    let _peer = connect_from("127.0.0.7:0", listen).await;
    assert_eq!(read_reply(&mut ctl).await.code, ReplyCode::SUCCEEDED);

    // Nobody comes: the second reply is TTL expired, then the connection closes.
    let mut ctl = TcpStream::connect(srv.addr).await.unwrap();
    let first = request(&mut ctl, 2, &Address::unspecified()).await;
    assert_eq!(first.code, ReplyCode::SUCCEEDED);
    assert_eq!(read_reply(&mut ctl).await.code, ReplyCode::TTL_EXPIRED);
    assert!(closed_silently(&mut ctl).await);
    srv.stop().await;
}

/// Peers are checked by the policy engine: with the default policy a peer on this host is refused.
#[tokio::test]
async fn bind_peer_checked_by_policy() {
    let srv = start("[timeouts]\nbind = \"300ms\"\n").await;
    let mut ctl = TcpStream::connect(srv.addr).await.unwrap();
    let first = request(&mut ctl, 2, &Address::unspecified()).await;
    let listen = first.bound.socket_addr().unwrap();
    let mut peer = connect_from("127.0.0.1:0", listen).await;
    assert!(closed_silently(&mut peer).await);
    assert_eq!(read_reply(&mut ctl).await.code, ReplyCode::TTL_EXPIRED);
    srv.stop().await;
}

/// A client that half-closes while waiting still gets its data and its EOF delivered to the
/// peer, and the peer's answer back.
#[tokio::test]
async fn bind_half_close_before_peer_arrives() {
    let srv = start(ALLOW_LOOPBACK).await;
    let mut ctl = TcpStream::connect(srv.addr).await.unwrap();
    let first = request(&mut ctl, 2, &Address::ip("127.0.0.5:0".parse().unwrap())).await;
    let listen = first.bound.socket_addr().unwrap();
    ctl.write_all(b"sent early").await.unwrap();
    ctl.shutdown().await.unwrap();
    let mut peer = connect_from("127.0.0.5:0", listen).await;
    assert_eq!(read_reply(&mut ctl).await.code, ReplyCode::SUCCEEDED);
    assert_eq!(read_to_end(&mut peer).await, b"sent early");
    peer.write_all(b"answer").await.unwrap();
    peer.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut ctl).await, b"answer");
    srv.stop().await;
}
