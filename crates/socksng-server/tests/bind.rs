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

#[tokio::test]
async fn socks4_bind_two_replies_and_relay() {
    // SOCKS4 BIND (CD 2): DSTIP names the host the connection must come from. The first
    // reply gives the listening port and address; the second, the peer's.
    let srv = start(ALLOW_LOOPBACK).await;
    let mut ctl = TcpStream::connect(srv.addr).await.unwrap();
    ctl.write_all(&[4, 2, 0, 21, 127, 0, 0, 5, b'u', 0])
        .await
        .unwrap();
    let mut first = [0u8; 8];
    within("first SOCKS4 reply", ctl.read_exact(&mut first))
        .await
        .unwrap();
    assert_eq!(first[..2], [0, 90], "{first:?}");
    let port = u16::from_be_bytes([first[2], first[3]]);
    let ip = std::net::Ipv4Addr::new(first[4], first[5], first[6], first[7]);
    assert!(port != 0 && ip.is_loopback(), "{first:?}");

    let mut stranger = connect_from("127.0.0.6:0", SocketAddr::from((ip, port))).await;
    assert!(closed_silently(&mut stranger).await);
    let mut peer = connect_from("127.0.0.5:0", SocketAddr::from((ip, port))).await;
    let mut second = [0u8; 8];
    within("second SOCKS4 reply", ctl.read_exact(&mut second))
        .await
        .unwrap();
    let from = peer.local_addr().unwrap();
    let mut expected = vec![0, 90];
    expected.extend_from_slice(&from.port().to_be_bytes());
    expected.extend_from_slice(&[127, 0, 0, 5]);
    assert_eq!(second[..], expected[..]);

    peer.write_all(b"from peer").await.unwrap();
    let mut b = [0u8; 9];
    ctl.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"from peer");
    ctl.write_all(b"to peer").await.unwrap();
    ctl.shutdown().await.unwrap();
    assert_eq!(read_to_end(&mut peer).await, b"to peer");
    srv.stop().await;
}
