//! The client against real plain SOCKS5 servers started here: Dante (CONNECT, BIND, UDP
//! ASSOCIATE), `ssh -D` and microsocks (CONNECT). SOCKS-NG is offered on every connection,
//! so these also show that the offer costs nothing with servers that do not know it, and the
//! fallbacks (BIND for a listener, UDP ASSOCIATE for datagrams) are the paths taken.
//!
//! The peers come from Debian's packages (dante-server, microsocks, openssh-server and
//! openssh-client), which `scripts/test-all` installs; nothing is installed here. So that a bare
//! `cargo test` needs none of them, the tests are ignored unless asked for
//! (`cargo test -- --include-ignored`, as scripts/test-all runs them).

use socksng_client::{Address, Client, ClientError, ProtocolPath, ProxyUrl};
use socksng_server::testing::within;
use socksng_testkit::subjects::{start_peer, Env};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn env(tag: &str) -> Env {
    let dir = std::env::temp_dir().join(format!("socksng-peers-{tag}-{}", std::process::id()));
    Env::for_tests(dir).await.unwrap()
}

fn client(addr: SocketAddr) -> Client {
    Client::new(ProxyUrl::parse(&format!("socks5h://{addr}")).unwrap())
}

/// CONNECT through the peer to the echo, by address and by name; the path is plain SOCKS5.
async fn connect_and_echo(c: &Client, echo: SocketAddr) {
    for target in [
        Address::ip(echo),
        Address::domain("localhost", echo.port()).unwrap(),
    ] {
        let s = c.connect(target.clone()).await.unwrap();
        assert_eq!(s.path(), ProtocolPath::Socks5, "{target}");
        let mut s = s.into_inner();
        let msg: Vec<u8> = (0..50_000u32).map(|i| (i % 253) as u8).collect();
        s.write_all(&msg).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        s.read_exact(&mut back).await.unwrap();
        assert!(back == msg, "{target}: echo differs");
    }
    assert!(
        matches!(c.capabilities().await, Err(ClientError::NotSupported(_))),
        "a plain server has no capabilities"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts peer programs (Dante, microsocks, sshd, dnsmasq): run by scripts/test-all"]
async fn dante_connect_bind_and_udp_associate() {
    within("dante_connect_bind_and_udp_associate", async move {
        let env = env("dante").await;
        let (_subject, instance, addr) = start_peer("dante", &env).await.expect("starting Dante");
        let c = client(addr);
        connect_and_echo(&c, env.targets.echo).await;

        // listen() on a plain server is BIND: one connection, from the announced peer.
        let mut l = c
            .listen(0, false, 1, Address::ip("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(l.path(), ProtocolPath::Socks5);
        let public = l.local_addr().socket_addr().unwrap();
        let mut outside = tokio::net::TcpStream::connect(public).await.unwrap();
        let (s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, Address::ip(outside.local_addr().unwrap()));
        let mut s = s.into_inner();
        outside.write_all(b"to the binder").await.unwrap();
        let mut b = [0u8; 13];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"to the binder");
        s.write_all(b"and back").await.unwrap();
        let mut b = [0u8; 8];
        outside.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"and back");

        // udp() on a plain server is UDP ASSOCIATE.
        let mut u = c.udp().await.unwrap();
        assert_eq!(u.path(), ProtocolPath::Socks5);
        for size in [1usize, 512, 8_000] {
            let payload: Vec<u8> = (0..size).map(|i| (i % 241) as u8).collect();
            u.send_to(&payload, &Address::ip(env.targets.udp_echo))
                .await
                .unwrap();
            let mut buf = vec![0u8; 65_536];
            let (n, from) = u.recv_from(&mut buf).await.unwrap();
            assert_eq!(from, env.targets.udp_echo);
            assert!(buf[..n] == payload[..], "{size}-byte datagram differs");
        }
        drop(u);
        instance.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts peer programs (Dante, microsocks, sshd, dnsmasq): run by scripts/test-all"]
async fn ssh_dynamic_forwarding_connect() {
    within("ssh_dynamic_forwarding_connect", async move {
        let env = env("sshd").await;
        let (_subject, instance, addr) = start_peer("ssh-d", &env).await.expect("starting ssh -D");
        connect_and_echo(&client(addr), env.targets.echo).await;
        instance.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts peer programs (Dante, microsocks, sshd, dnsmasq): run by scripts/test-all"]
async fn microsocks_connect() {
    within("microsocks_connect", async move {
        let env = env("microsocks").await;
        let (_subject, instance, addr) = start_peer("microsocks", &env)
            .await
            .expect("starting microsocks");
        connect_and_echo(&client(addr), env.targets.echo).await;
        instance.stop().await;
    })
    .await;
}
