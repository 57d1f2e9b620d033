//! UDP ASSOCIATE byte by byte: who may send, FRAG handling, IPv6, and the association's end
//! with its control connection.

mod common;
use common::*;
use socksng_proto::{Address, UdpHeader};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

fn datagram(to: SocketAddr, frag: u8, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    UdpHeader {
        frag,
        address: Address::ip(to),
    }
    .encode(&mut v);
    v.extend_from_slice(payload);
    v
}

async fn expect_echo(sock: &UdpSocket, echo: SocketAddr, payload: &[u8]) {
    let mut buf = vec![0u8; 70_000];
    let (n, _) = sock.recv_from(&mut buf).await.unwrap();
    let (h, head) = UdpHeader::decode(&buf[..n]).unwrap();
    assert_eq!(h.address, Address::ip(echo));
    assert_eq!(&buf[head..n], payload);
}

/// A datagram from another host than the control connection's client is dropped, even when it
/// arrives first; the real client, announced as 0.0.0.0:0, is then learned from its first datagram.
#[tokio::test]
async fn foreign_host_dropped_and_client_port_learned() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, count) = udp_echo("127.0.0.1:0").await;
    let (_ctl, relay) = udp_associate(srv.addr, Address::unspecified()).await;
    // 127.0.0.9 is "another host" for a control connection from 127.0.0.1.
    let intruder = UdpSocket::bind("127.0.0.9:0").await.unwrap();
    intruder
        .send_to(&datagram(echo, 0, b"intruder"), relay)
        .await
        .unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    client
        .send_to(&datagram(echo, 0, b"client"), relay)
        .await
        .unwrap();
    expect_echo(&client, echo, b"client").await;
    assert_eq!(
        count.load(Ordering::SeqCst),
        1,
        "the intruder's datagram must not be relayed"
    );
    // A second port on the client's IP is not the learned one.
    let other_port = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    other_port
        .send_to(&datagram(echo, 0, b"other port"), relay)
        .await
        .unwrap();
    client
        .send_to(&datagram(echo, 0, b"again"), relay)
        .await
        .unwrap();
    expect_echo(&client, echo, b"again").await;
    assert_eq!(count.load(Ordering::SeqCst), 2);
    let mut b = [0u8; 16];
    assert!(intruder.try_recv_from(&mut b).is_err() && other_port.try_recv_from(&mut b).is_err());
    srv.stop().await;
}

/// When the request names the client's UDP port, only that port is accepted from the start.
#[tokio::test]
async fn announced_client_port_is_enforced() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, count) = udp_echo("127.0.0.1:0").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let impostor = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_ctl, relay) = udp_associate(srv.addr, Address::ip(client.local_addr().unwrap())).await;
    impostor
        .send_to(&datagram(echo, 0, b"first but wrong port"), relay)
        .await
        .unwrap();
    client
        .send_to(&datagram(echo, 0, b"right port"), relay)
        .await
        .unwrap();
    expect_echo(&client, echo, b"right port").await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    srv.stop().await;
}

#[tokio::test]
async fn fragments_and_garbage_dropped() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, count) = udp_echo("127.0.0.1:0").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_ctl, relay) = udp_associate(srv.addr, Address::unspecified()).await;
    client
        .send_to(&datagram(echo, 1, b"fragment 1"), relay)
        .await
        .unwrap();
    client
        .send_to(&datagram(echo, 0x81, b"last fragment"), relay)
        .await
        .unwrap();
    client.send_to(&[0, 0, 0, 9, 1, 2], relay).await.unwrap();
    client.send_to(&[0, 0], relay).await.unwrap();
    client
        .send_to(&datagram(echo, 0, b"whole"), relay)
        .await
        .unwrap();
    expect_echo(&client, echo, b"whole").await;
    assert_eq!(count.load(Ordering::SeqCst), 1);
    srv.stop().await;
}

#[tokio::test]
async fn ipv6_association() {
    let srv = start(&format!("listen = [\"[::1]:0\"]\n{ALLOW_LOOPBACK}")).await;
    let (echo, _) = udp_echo("[::1]:0").await;
    let client = UdpSocket::bind("[::1]:0").await.unwrap();
    let (_ctl, relay) = udp_associate(srv.addr, Address::unspecified()).await;
    assert!(relay.is_ipv6());
    let payload = pattern(1200, 9);
    client
        .send_to(&datagram(echo, 0, &payload), relay)
        .await
        .unwrap();
    expect_echo(&client, echo, &payload).await;
    srv.stop().await;
}

/// Closing the control connection ends the association: the relay port closes.
#[tokio::test]
async fn association_ends_with_control_connection() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, _) = udp_echo("127.0.0.1:0").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut ctl, relay) = udp_associate(srv.addr, Address::unspecified()).await;
    client.connect(relay).await.unwrap();
    client.send(&datagram(echo, 0, b"alive")).await.unwrap();
    let mut buf = [0u8; 128];
    client.recv(&mut buf).await.unwrap();
    ctl.shutdown().await.unwrap();
    drop(ctl);
    // Once the relay socket is gone, the kernel answers with ICMP port unreachable, which a
    // connected UDP socket reports as ECONNREFUSED. Bounded polling, not a sleep.
    let mut closed = false;
    for _ in 0..200 {
        let _ = client.send(&datagram(echo, 0, b"still there?")).await;
        match tokio::time::timeout(Duration::from_millis(50), client.recv(&mut buf)).await {
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                closed = true;
                break;
            }
            _ => continue,
        }
    }
    assert!(
        closed,
        "relay port still open after the control connection closed"
    );
    srv.stop().await;
}

/// Clients that put the target (not their own address) in the request still work.
#[tokio::test]
async fn request_naming_the_target_is_tolerated() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, _) = udp_echo("127.0.0.1:0").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_ctl, relay) = udp_associate(srv.addr, Address::domain("example.test", 53).unwrap()).await;
    client
        .send_to(&datagram(echo, 0, b"tolerant"), relay)
        .await
        .unwrap();
    expect_echo(&client, echo, b"tolerant").await;
    srv.stop().await;
}
