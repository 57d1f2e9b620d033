//! The client against a real socksngd on loopback: SOCKS-NG and plain paths, authentication,
//! refusals with their codes, capabilities, UDP, and local versus proxy name resolution.

use socksng_client::{Address, Client, ClientError, ProtocolPath, ProxyUrl, ReplyCode};
use socksng_server::testing::{echo_server, within, TestServer};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOW_LOOPBACK: &str = "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

type Proxy = TestServer;

/// A socksngd on 127.0.0.1 with user alice (password s3cret) and `extra` configuration.
async fn proxy(tag: &str, extra: &str) -> Proxy {
    TestServer::with_user(tag, extra).await
}

async fn echo() -> SocketAddr {
    echo_server("127.0.0.1:0").await
}

fn url(p: &Proxy, scheme: &str, creds: &str) -> ProxyUrl {
    ProxyUrl::parse(&format!("{scheme}://{creds}{}", p.addr)).unwrap()
}

async fn roundtrip(client: &Client, target: Address) -> ProtocolPath {
    let s = client.connect(target).await.unwrap();
    let path = s.path();
    let mut s = s.into_inner();
    s.write_all(b"hello").await.unwrap();
    let mut b = [0u8; 5];
    s.read_exact(&mut b).await.unwrap();
    assert_eq!(&b, b"hello");
    path
}

#[tokio::test]
async fn ng_and_plain_paths_with_and_without_login() {
    within("ng_and_plain_paths_with_and_without_login", async move {
        let target = echo().await;
        let both = format!(
            "[auth]\nmethods = [\"none\", \"password\"]\nusers_file = \"users\"\n{ALLOW_LOOPBACK}"
        );
        let p = proxy("paths", &both).await;
        let anon = Client::new(url(&p, "socks5h", ""));
        assert_eq!(
            roundtrip(&anon, Address::ip(target)).await,
            ProtocolPath::Ng
        );
        let v6 = echo_server("[::1]:0").await;
        assert_eq!(roundtrip(&anon, Address::ip(v6)).await, ProtocolPath::Ng);
        let alice = Client::new(url(&p, "socks5h", "alice:s3cret@"));
        assert_eq!(
            roundtrip(&alice, Address::ip(target)).await,
            ProtocolPath::Ng
        );
        let plain = Client::new(url(&p, "socks5h", "alice:s3cret@")).plain_socks5_only();
        assert_eq!(
            roundtrip(&plain, Address::ip(target)).await,
            ProtocolPath::Socks5
        );
        let wrong = Client::new(url(&p, "socks5h", "alice:nope@"));
        assert!(matches!(
            wrong.connect(Address::ip(target)).await,
            Err(ClientError::AuthFailed)
        ));
        let wrong_plain = Client::new(url(&p, "socks5h", "alice:nope@")).plain_socks5_only();
        assert!(matches!(
            wrong_plain.connect(Address::ip(target)).await,
            Err(ClientError::AuthFailed)
        ));

        // A server without SOCKS-NG: the client falls back and says so.
        let off = proxy("off", &format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}")).await;
        let c = Client::new(url(&off, "socks5h", ""));
        assert_eq!(
            roundtrip(&c, Address::ip(target)).await,
            ProtocolPath::Socks5
        );
        assert!(matches!(
            c.capabilities().await,
            Err(ClientError::NotSupported(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn refusals_carry_the_reply_code_in_words() {
    within("refusals_carry_the_reply_code_in_words", async move {
        let p = proxy("refusal", "").await;
        let target = echo().await;
        let c = Client::new(url(&p, "socks5h", ""));
        let err = c.connect(Address::ip(target)).await.unwrap_err();
        assert_eq!(err.reply_code(), Some(ReplyCode::NOT_ALLOWED));
        assert!(err.to_string().contains("not allowed by ruleset"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn local_and_remote_name_resolution() {
    within("local_and_remote_name_resolution", async move {
        // The proxy refuses the name "localhost" but allows 127.0.0.1 as an address.
        let rules =
            format!("[[rules]]\naction = \"deny\"\ndomains = [\"localhost\"]\n{ALLOW_LOOPBACK}");
        let p = proxy("resolve", &rules).await;
        let target = echo().await;
        let by_name = Address::domain("localhost", target.port()).unwrap();
        let remote = Client::new(url(&p, "socks5h", ""));
        let err = remote.connect(by_name.clone()).await.unwrap_err();
        assert_eq!(
            err.reply_code(),
            Some(ReplyCode::NOT_ALLOWED),
            "socks5h sends the name"
        );
        let local = Client::new(url(&p, "socks5", ""));
        roundtrip(&local, by_name).await;
    })
    .await;
}

#[tokio::test]
async fn capabilities_and_udp_tunnel() {
    within("capabilities_and_udp_tunnel", async move {
        let p = proxy(
            "caps",
            &format!("[[ng.served]]\nto = [\"10.0.0.0/8\"]\n{ALLOW_LOOPBACK}"),
        )
        .await;
        let c = Client::new(url(&p, "socks5h", ""));
        let caps = c.capabilities().await.unwrap();
        assert_eq!(caps.ranges.len(), 1);
        assert_eq!(
            caps.ranges[0].prefixes,
            vec![("10.0.0.0".parse().unwrap(), 8)]
        );

        let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let echo_addr = sock.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = vec![0u8; 70_000];
            while let Ok((n, from)) = sock.recv_from(&mut b).await {
                let _ = sock.send_to(&b[..n], from).await;
            }
        });
        let mut t = c.udp().await.unwrap();
        assert_eq!(t.path(), ProtocolPath::Ng);
        t.send_to(b"ping", &Address::ip(echo_addr)).await.unwrap();
        let mut buf = [0u8; 64];
        let (n, from) = t.recv_from(&mut buf).await.unwrap();
        assert_eq!((&buf[..n], from), (&b"ping"[..], echo_addr));

        // The same socket API over UDP ASSOCIATE: forced, and against a server without SOCKS-NG.
        let off = proxy(
            "udpoff",
            &format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}"),
        )
        .await;
        for c in [
            Client::new(url(&p, "socks5h", "")).plain_socks5_only(),
            Client::new(url(&off, "socks5h", "")),
        ] {
            let mut u = c.udp().await.unwrap();
            assert_eq!(u.path(), ProtocolPath::Socks5);
            assert!(u.relay().is_some());
            for i in 0..3u8 {
                let payload = vec![i; 1000 + usize::from(i)];
                u.send_to(&payload, &Address::ip(echo_addr)).await.unwrap();
                let mut buf = vec![0u8; 2000];
                let (n, from) = u.recv_from(&mut buf).await.unwrap();
                assert_eq!((&buf[..n], from), (&payload[..], echo_addr));
            }
            // By name: resolved by the proxy (socks5h).
            let by_name = Address::domain("localhost", echo_addr.port()).unwrap();
            u.send_to(b"named", &by_name).await.unwrap();
            let (n, _) = u.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], b"named");
        }
    })
    .await;
}

#[tokio::test]
async fn explicit_bind_on_an_ng_server() {
    within("explicit_bind_on_an_ng_server", async move {
        let p = proxy("bind", ALLOW_LOOPBACK).await;
        let c = Client::new(url(&p, "socks5h", ""));
        let mut l = c
            .bind(Address::ip("127.0.0.1:0".parse().unwrap()))
            .await
            .unwrap();
        assert_eq!(l.path(), ProtocolPath::Socks5);
        let mut outside = tokio::net::TcpStream::connect(l.local_addr().socket_addr().unwrap())
            .await
            .unwrap();
        let (s, peer) = l.accept().await.unwrap();
        assert_eq!(peer, Address::ip(outside.local_addr().unwrap()));
        let mut s = s.into_inner();
        s.write_all(b"from inside").await.unwrap();
        let mut b = [0u8; 11];
        outside.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"from inside");
    })
    .await;
}

#[test]
fn urls_from_the_environment() {
    // Only this test touches these variables in this process.
    std::env::set_var("all_proxy", "socks5h://u:p@127.0.0.1:1081");
    std::env::set_var("no_proxy", "internal.example");
    let p = ProxyUrl::from_env("www.example.org").unwrap().unwrap();
    assert_eq!(
        (p.port, p.credentials.clone()),
        (1081, Some(("u".into(), "p".into())))
    );
    assert!(ProxyUrl::from_env("db.internal.example").unwrap().is_none());
    std::env::remove_var("all_proxy");
    std::env::remove_var("no_proxy");
}

#[tokio::test]
async fn listen_with_ng_and_bind_fallback() {
    within("listen_with_ng_and_bind_fallback", async move {
        let cfg =
            format!("[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n{ALLOW_LOOPBACK}");
        let p = proxy("listen", &cfg).await;
        let c = Client::new(url(&p, "socks5h", "alice:s3cret@"));
        let any: Address = Address::ip("0.0.0.0:0".parse().unwrap());
        let mut l = c.listen(0, false, 16, any.clone()).await.unwrap();
        assert_eq!(l.path(), ProtocolPath::Ng);
        let public = l.local_addr().socket_addr().unwrap();
        for i in 0..3u8 {
            let mut outside = tokio::net::TcpStream::connect(public).await.unwrap();
            let (s, peer) = l.accept().await.unwrap();
            assert_eq!(peer, Address::ip(outside.local_addr().unwrap()));
            let mut s = s.into_inner();
            outside.write_all(&[i; 3]).await.unwrap();
            let mut b = [0u8; 3];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [i; 3]);
            s.write_all(b"back").await.unwrap();
            let mut r = [0u8; 4];
            outside.read_exact(&mut r).await.unwrap();
            assert_eq!(&r, b"back");
        }

        // Plain SOCKS5 server: BIND for one connection.
        let off_cfg = format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}");
        let off = proxy("bindfallback", &off_cfg).await;
        let c = Client::new(url(&off, "socks5h", ""));
        let mut l = c.listen(0, false, 1, any).await.unwrap();
        assert_eq!(l.path(), ProtocolPath::Socks5);
        let mut outside = tokio::net::TcpStream::connect(l.local_addr().socket_addr().unwrap())
            .await
            .unwrap();
        let (s, _) = l.accept().await.unwrap();
        let mut s = s.into_inner();
        outside.write_all(b"bind").await.unwrap();
        let mut b = [0u8; 4];
        s.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"bind");
        assert!(matches!(
            l.accept().await,
            Err(ClientError::NotSupported(_))
        ));
    })
    .await;
}

#[tokio::test]
async fn router_fails_over_takes_servers_out_and_refreshes() {
    within(
        "router_fails_over_takes_servers_out_and_refreshes",
        async move {
            use socksng_client::route::{Destination, RouterOptions, ServerSpec, Via};
            use socksng_client::Router;
            use std::time::Duration;
            let served = format!("[[ng.served]]\nto = [\"127.0.1.0/24\"]\n{ALLOW_LOOPBACK}");
            let a = proxy("router-a", &served).await;
            let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let nowhere = closed.local_addr().unwrap();
            drop(closed);
            let spec = |name: &str, addr: SocketAddr, ranges: &[&str], ask: bool| ServerSpec {
                name: name.into(),
                url: ProxyUrl::parse(&format!("socks5h://{addr}")).unwrap(),
                ranges: ranges
                    .iter()
                    .map(|r| Destination::parse(r).unwrap())
                    .collect(),
                ask,
                learned: false,
            };
            // refresh = 0: every decision asks the servers again.
            let router = Router::new(
                vec![
                    spec("a", a.addr, &[], true),
                    spec("gone", nowhere, &["127.0.2.0/24"], false),
                ],
                Vec::new(),
                RouterOptions {
                    refresh: Duration::ZERO,
                    retry_after: Duration::from_secs(3600),
                    connect_timeout: Duration::from_secs(10),
                    cache_dir: None,
                },
            );
            let in_a = Address::ip("127.0.1.1:9".parse().unwrap());
            assert_eq!(router.decide(&in_a).await.unwrap().0, Via::Server(0));
            // The configured route to "gone" holds until the server fails; then it is taken out and
            // the connection goes the next best way: direct, to an echo that is reachable directly.
            let in_gone = Address::ip(echo_server("127.0.2.1:0").await);
            assert_eq!(router.decide(&in_gone).await.unwrap().0, Via::Server(1));
            // It fails: it is taken out, and its destinations do not leak out directly.
            let err = router.connect(in_gone.clone()).await.unwrap_err();
            // The one server meant for it failed: the error names it and says how.
            assert!(
                matches!(&err, ClientError::Proxy { name, .. } if name == "gone"),
                "{err}"
            );
            assert!(err.to_string().starts_with("proxy gone: "), "{err}");
            assert!(router.servers()[1].1.down.is_some());
            assert!(router.decide(&in_gone).await.is_err());
            // A gateway for everything takes over from a failed server; direct never does.
            let with_gateway = Router::new(
                vec![
                    spec("gone", nowhere, &["127.0.2.0/24"], false),
                    spec("gw", a.addr, &["0.0.0.0/0"], false),
                ],
                Vec::new(),
                RouterOptions::default(),
            );
            let routed = with_gateway.connect(in_gone.clone()).await.unwrap();
            assert_eq!(routed.via_name, "gw");
            assert_eq!(routed.skipped.len(), 1, "{:?}", routed.skipped);
            // ... unless the network announced it: a learned proxy never takes a configured
            // route's traffic, even when the configured server fails (draft 10.4).
            let learned_gateway = Router::new(
                vec![
                    spec("gone", nowhere, &["127.0.2.0/24"], false),
                    ServerSpec {
                        learned: true,
                        ..spec("learned:gw", a.addr, &["0.0.0.0/0"], false)
                    },
                ],
                Vec::new(),
                RouterOptions::default(),
            );
            let err = learned_gateway.connect(in_gone.clone()).await.unwrap_err();
            assert!(
                matches!(&err, ClientError::Proxy { name, .. } if name == "gone"),
                "{err}"
            );
            assert!(matches!(
                learned_gateway.decide(&in_gone).await,
                Err(ClientError::Unavailable(_))
            ));
            // Nor does it get a name whose address is in a configured range: the name is
            // resolved here (localhost, from /etc/hosts) and routed by its address.
            let by_name = Router::new(
                vec![
                    spec("office", nowhere, &["127.0.0.0/8", "::1/128"], false),
                    ServerSpec {
                        learned: true,
                        ..spec("learned:gw", a.addr, &["0.0.0.0/0", "::/0"], false)
                    },
                ],
                Vec::new(),
                RouterOptions::default(),
            );
            let localhost = Address::domain("localhost", 80).unwrap();
            assert_eq!(by_name.decide(&localhost).await.unwrap().0, Via::Server(0));
            // What nothing configured covers still goes to it.
            let elsewhere = Address::ip(echo_server("127.0.4.1:0").await);
            assert_eq!(
                learned_gateway.decide(&elsewhere).await.unwrap().0,
                Via::Server(1)
            );
            // Server a stops: the next refresh finds it down; its last ranges stay, unusable.
            // (Connections start refreshes in the background; this one is awaited to see it.)
            a.stop().await;
            router.refresh().await;
            assert!(matches!(
                router.decide(&in_a).await,
                Err(ClientError::Unavailable(_))
            ));
            assert!(router.servers()[0].1.down.is_some());
            // Outside every range, direct is the default.
            let elsewhere = Address::ip("127.0.3.1:9".parse().unwrap());
            assert_eq!(router.decide(&elsewhere).await.unwrap().0, Via::Direct);
            print!("{}", router.table());

            // A gateway for everything gets names unresolved: nothing is looked up here.
            let gateway = Router::single(ProxyUrl::parse("socks5h://127.0.0.1:1").unwrap());
            let name = Address::domain("only-the-proxy-knows.invalid", 80).unwrap();
            assert_eq!(gateway.decide(&name).await.unwrap(), (Via::Server(0), name));
        },
    )
    .await;
}

/// A refresh never holds up a connection once the table knows the servers' ranges (from an
/// earlier answer, cached on disk): here the server accepts and never answers, and both a
/// proxied decision and a direct connection go ahead while the refresh they started waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_do_not_wait_for_a_refresh() {
    within("connections_do_not_wait_for_a_refresh", async move {
        use socksng_client::route::{RouterOptions, ServerSpec, Via};
        use socksng_client::Router;
        use std::time::Duration;
        let served = format!("[[ng.served]]\nto = [\"127.0.1.0/24\"]\n{ALLOW_LOOPBACK}");
        let a = proxy("no-wait", &served).await;
        let cache = std::env::temp_dir().join(format!("socksng-no-wait-{}", std::process::id()));
        let spec = |addr: SocketAddr| ServerSpec {
            name: "a".into(),
            url: ProxyUrl::parse(&format!("socks5h://{addr}")).unwrap(),
            ranges: Vec::new(),
            ask: true,
            learned: false,
        };
        let options = RouterOptions {
            refresh: Duration::ZERO,
            retry_after: Duration::from_secs(3600),
            // A refresh that started would hold a waiting connection for an hour.
            connect_timeout: Duration::from_secs(3600),
            cache_dir: Some(cache.clone()),
        };
        let first = Router::new(vec![spec(a.addr)], Vec::new(), options.clone());
        first.refresh().await;
        a.stop().await;
        // The same server name, now silent: it accepts and says nothing.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let silent_addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = silent.accept().await {
                conns.push(c);
            }
        });
        let router = Router::new(vec![spec(silent_addr)], Vec::new(), options);
        let in_a = Address::ip("127.0.1.1:9".parse().unwrap());
        let deadline = Duration::from_secs(20);
        let decided = tokio::time::timeout(deadline, router.decide(&in_a))
            .await
            .expect("the decision waited for the refresh")
            .unwrap();
        assert_eq!(decided.0, Via::Server(0), "routed by the cached ranges");
        let target = echo().await;
        let direct = tokio::time::timeout(deadline, router.connect(Address::ip(target)))
            .await
            .expect("the direct connection waited for the refresh")
            .unwrap();
        assert_eq!(direct.via, Via::Direct);
        held.abort();
        let _ = std::fs::remove_dir_all(cache);
    })
    .await;
}
