//! The default policy keeps the proxy from reaching its own host, multicast groups and
//! broadcast addresses: every destination on the SSRF list (IPv4 carried inside IPv6 included)
//! is refused with 0x02 for CONNECT and dropped for UDP, given as an address and as
//! a name that resolves to it (numeric names go through getaddrinfo like any other name, so
//! the decimal/hex/octal spellings of 127.0.0.1 are covered too).

mod common;
use common::*;
use socksng_proto::{Address, Host, ReplyCode, UdpHeader};
use std::net::{IpAddr, SocketAddr};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;

fn ssrf_addresses() -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = [
        "127.0.0.1",
        "127.3.4.5",
        "::1",
        "::ffff:127.0.0.1",
        "0.0.0.0",
        "::",
        "169.254.169.254",
        "169.254.1.1",
        "fe80::1",
        // IPv4 carried in IPv6: NAT64, 6to4, IPv4-compatible, IPv4-translated, Teredo.
        "64:ff9b::7f00:1",
        "64:ff9b:1::a9fe:a9fe",
        "2002:7f00:1::1",
        "::127.0.0.1",
        "::ffff:0:127.0.0.1",
        "2001:0:4136:e378:8000:63bf:80ff:fffe",
        // Multicast groups and broadcast.
        "239.255.255.250",
        "224.0.0.1",
        "224.0.0.251",
        "ff02::1",
        "ff05::c",
        "255.255.255.255",
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    for iface in if_addrs::get_if_addrs().unwrap() {
        v.push(iface.ip());
        if let if_addrs::IfAddr::V4(a) = iface.addr {
            v.extend(a.broadcast.map(IpAddr::V4));
        }
    }
    v
}

fn ssrf_names() -> Vec<String> {
    let mut v: Vec<String> = [
        "localhost",
        "127.1",
        "2130706433",
        "0x7f000001",
        "0177.0.0.1",
        "0.0.0.0",
        "169.254.169.254",
        "::1",
        "::ffff:127.0.0.1",
        "::",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    // The host's own name resolves to its own addresses.
    let mut buf = [0u8; 256];
    let n = unsafe { libc::gethostname(buf.as_mut_ptr() as *mut libc::c_char, buf.len()) };
    if n == 0 {
        let len = buf.iter().position(|&b| b == 0).unwrap_or(0);
        if let Ok(h) = std::str::from_utf8(&buf[..len]) {
            if std::net::ToSocketAddrs::to_socket_addrs(&(h, 80)).is_ok() {
                v.push(h.to_string());
            }
        }
    }
    v
}

#[tokio::test]
async fn connect_to_host_local_destinations_refused() {
    let srv = start("").await;
    // A live target on loopback, so a failure cannot be a mere "refused".
    let live = echo_server("127.0.0.1:0").await;
    let live6 = echo_server("[::1]:0").await;
    for ip in ssrf_addresses() {
        for port in [live.port(), live6.port()] {
            let (_, r) = socks_connect(srv.addr, &Address::ip(SocketAddr::new(ip, port))).await;
            assert_eq!(r.code, ReplyCode::NOT_ALLOWED, "CONNECT {ip}");
        }
    }
    for name in ssrf_names() {
        let (_, r) = socks_connect(srv.addr, &Address::domain(&name, live.port()).unwrap()).await;
        assert_eq!(r.code, ReplyCode::NOT_ALLOWED, "CONNECT name {name}");
    }
    // BIND naming a host-local peer is refused too.
    let mut s = tokio::net::TcpStream::connect(srv.addr).await.unwrap();
    let r = request(&mut s, 2, &Address::ip("127.0.0.1:0".parse().unwrap())).await;
    assert_eq!(r.code, ReplyCode::NOT_ALLOWED);
    srv.stop().await;
}

fn datagram(to: Address, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    UdpHeader {
        frag: 0,
        address: to,
    }
    .encode(&mut v);
    v.extend_from_slice(payload);
    v
}

/// Datagrams to host-local destinations are dropped. An allowed datagram sent right after each
/// one proves the relay has processed (and dropped) it: the relay handles datagrams in order,
/// and loopback delivery is immediate, so the forbidden echo's counter is final by then. Only
/// the rows that reach this host's loopback can show up at the echoes; the verdicts for the
/// others (multicast, broadcast, embedded IPv4) are checked in the policy's unit tests, and
/// multicast delivery itself in tests/interop/test_hardening.py.
#[tokio::test]
async fn udp_to_host_local_destinations_dropped() {
    // Only 127.0.0.2 is opened, so the echo on 127.0.0.1 stands for "this host".
    let srv = start("[[rules]]\naction = \"allow\"\nto = [\"127.0.0.2/32\"]\n").await;
    let (forbidden, forbidden_count) = udp_echo("127.0.0.1:0").await;
    let (forbidden6, forbidden6_count) = udp_echo("[::1]:0").await;
    let (allowed, _) = udp_echo("127.0.0.2:0").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (_ctl, relay) = udp_associate(srv.addr, Address::ip(client.local_addr().unwrap())).await;
    let mut targets: Vec<Address> = Vec::new();
    for ip in ssrf_addresses() {
        let port = if ip.is_ipv4() || ip.to_string().starts_with("::ffff") {
            forbidden.port()
        } else {
            forbidden6.port()
        };
        targets.push(Address::ip(SocketAddr::new(ip, port)));
    }
    for name in ssrf_names() {
        targets.push(Address::domain(&name, forbidden.port()).unwrap());
        targets.push(Address::domain(&name, forbidden6.port()).unwrap());
    }
    let mut buf = vec![0u8; 2048];
    for (i, t) in targets.iter().enumerate() {
        client
            .send_to(&datagram(t.clone(), b"must not pass"), relay)
            .await
            .unwrap();
        let marker = format!("probe {i}");
        client
            .send_to(&datagram(Address::ip(allowed), marker.as_bytes()), relay)
            .await
            .unwrap();
        let (n, _) = within("the allowed echo", client.recv_from(&mut buf))
            .await
            .unwrap();
        let (h, head) = UdpHeader::decode(&buf[..n]).unwrap();
        assert_eq!(h.address, Address::ip(allowed));
        assert_eq!(
            &buf[head..n],
            marker.as_bytes(),
            "only the allowed datagram comes back"
        );
        assert_eq!(
            forbidden_count.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "datagram to {t} passed"
        );
        assert_eq!(
            forbidden6_count.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "datagram to {t} passed"
        );
    }
    srv.stop().await;
}

/// The same over the SOCKS-NG UDP tunnel: every forbidden frame is dropped, and an allowed
/// one sent after each proves the relay has handled it.
#[tokio::test]
async fn udp_tunnel_to_host_local_multicast_and_broadcast_dropped() {
    use socksng_proto::wire::ng::TunnelFrame;
    let srv = start("[[rules]]\naction = \"allow\"\nto = [\"127.0.0.2/32\"]\n[[rules]]\naction = \"allow\"\nto = [\"0.0.0.0/0\", \"::/0\"]\n").await;
    let (forbidden, forbidden_count) = udp_echo("127.0.0.1:0").await;
    let (forbidden6, forbidden6_count) = udp_echo("[::1]:0").await;
    let (allowed, _) = udp_echo("127.0.0.2:0").await;
    let mut tunnel = open_tunnel(srv.addr).await;
    for (i, ip) in ssrf_addresses().into_iter().enumerate() {
        let mut frames = Vec::new();
        let port = if ip.is_ipv4() || ip.to_string().starts_with("::ffff") {
            forbidden.port()
        } else {
            forbidden6.port()
        };
        let to = Address::ip(SocketAddr::new(ip, port));
        TunnelFrame::encode_datagram(&to, b"must not pass", &mut frames).unwrap();
        let marker = format!("probe {i}");
        TunnelFrame::encode_datagram(&Address::ip(allowed), marker.as_bytes(), &mut frames)
            .unwrap();
        tunnel.write_all(&frames).await.unwrap();
        let (from, payload) = read_frame(&mut tunnel).await.expect("the allowed frame");
        assert_eq!(from, Address::ip(allowed));
        assert_eq!(
            payload,
            marker.as_bytes(),
            "only the allowed frame comes back"
        );
        for count in [&forbidden_count, &forbidden6_count] {
            assert_eq!(
                count.load(std::sync::atomic::Ordering::SeqCst),
                0,
                "frame to {to} passed"
            );
        }
    }
    srv.stop().await;
}

#[tokio::test]
async fn udp_reply_source_is_reported_and_names_resolve() {
    let srv = start(ALLOW_LOOPBACK).await;
    let (echo, _) = udp_echo("127.0.0.1:0").await;
    let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (mut ctl, relay) = udp_associate(srv.addr, Address::ip(client.local_addr().unwrap())).await;
    let mut buf = vec![0u8; 70_000];
    for (to, payload) in [
        (Address::ip(echo), vec![1u8; 64]),
        (
            Address::domain("localhost", echo.port()).unwrap(),
            pattern(60_000, 3),
        ),
    ] {
        client
            .send_to(&datagram(to, &payload), relay)
            .await
            .unwrap();
        let (n, from) = client.recv_from(&mut buf).await.unwrap();
        assert_eq!(from, relay);
        let (h, head) = UdpHeader::decode(&buf[..n]).unwrap();
        assert_eq!(h.frag, 0);
        match h.address.host {
            Host::Ip(ip) => assert_eq!(SocketAddr::new(ip, h.address.port), echo),
            Host::Domain(_) => panic!("source must be an address"),
        }
        assert_eq!(&buf[head..n], &payload[..]);
    }
    ctl.shutdown().await.unwrap();
    srv.stop().await;
}
