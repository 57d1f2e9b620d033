//! Upstream chaining: socksngd passing CONNECT on to another socksngd over TLS (a megabyte each
//! way), routes by destination with direct as the default, an upstream that goes down mid-run
//! (the next one takes over; no silent fallback to direct), a loop between two servers cut by
//! HOPS (X'0F'), a loop visible in the configuration refused at start, and Dante as a plain
//! SOCKS5 upstream. Every hop binds its outgoing connections to an address of its own
//! (127.0.0.x), so the target tells by the source address which hop reached it.

use socksng_client::{Address, Client, ClientError, ProxyUrl, ReplyCode};
use socksng_server::testing::{exchange, within, TestServer};
use socksng_server::Config;
use socksng_testkit::tls::{tls_section, Ca};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("socksngd-chain-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Rules letting clients reach the loopback network (where the targets are).
const ALLOW_LOOPBACK: &str = "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

/// A target that answers each connection with the source address it came from, then echoes.
async fn source_reporter() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            tokio::spawn(async move {
                let line = format!("{}\n", peer.ip());
                if s.write_all(line.as_bytes()).await.is_err() {
                    return;
                }
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Connects through `c` to a [`source_reporter`], sends `data` and checks the echo; returns
/// the source address the target saw.
async fn reach(c: &Client, target: SocketAddr, data: &[u8]) -> Result<IpAddr, ClientError> {
    let s = c.connect(Address::ip(target)).await?.into_inner();
    let back = exchange(s, data).await?;
    let newline = back
        .iter()
        .position(|&b| b == b'\n')
        .expect("the source line");
    let source: IpAddr = std::str::from_utf8(&back[..newline])
        .unwrap()
        .parse()
        .unwrap();
    assert!(&back[newline + 1..] == data, "the echo came back whole");
    Ok(source)
}

fn client(at: SocketAddr) -> Client {
    Client::new(ProxyUrl::parse(&format!("socks5h://{at}")).unwrap())
}

fn refusal(e: ClientError) -> ReplyCode {
    match e {
        ClientError::Refused { code } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// A socksngd whose outgoing connections leave from `external`, with `extra` configuration.
async fn hop(external: &str, extra: &str, dir: &Path) -> TestServer {
    let config =
        format!("listen = [\"127.0.0.1:0\"]\nexternal = [\"{external}\"]\n{ALLOW_LOOPBACK}{extra}");
    TestServer::start_in(&config, dir).await
}

fn upstream(name: &str, url: &str, extra: &str) -> String {
    format!("[[upstreams]]\nname = \"{name}\"\nurl = \"{url}\"\n{extra}\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_through_a_socksngd_upstream_over_tls_by_route() {
    within("upstream_over_tls", async move {
        let dir = scratch("tls");
        let ca = Ca::new("chain CA");
        let (cert, key) = ca.server_leaf(&["localhost"]).write(&dir, "outer");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        // The outer proxy (the "ISP's"), over TLS only, with a login.
        let outer_cfg = format!(
            "external = [\"127.0.0.3\"]\n[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n\
             {ALLOW_LOOPBACK}{}",
            tls_section(&cert, &key, "")
        );
        let outer = TestServer::with_user("chain-outer", &outer_cfg).await;
        let target = source_reporter().await;
        // The inner proxy (the home router's): the target's port goes through the outer one,
        // everything else direct.
        let inner_cfg = format!(
            "{}[[routes]]\nto = [\"127.0.0.0/8\"]\nports = [{}]\nvia = [\"isp\"]\n",
            upstream(
                "isp",
                &format!("socks5s://alice:s3cret@localhost:{}", outer.addr.port()),
                &format!("tls_ca = {:?}", dir.join("ca.pem").display().to_string()),
            ),
            target.port()
        );
        let inner = hop("127.0.0.2", &inner_cfg, &dir).await;
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i % 253) as u8).collect();
        let seen = reach(&client(inner.addr), target, &data).await.unwrap();
        assert_eq!(
            seen,
            "127.0.0.3".parse::<IpAddr>().unwrap(),
            "the outer hop reached it"
        );

        // Another port of the same host is not routed: direct from the inner hop.
        let other = source_reporter().await;
        let seen = reach(&client(inner.addr), other, b"direct").await.unwrap();
        assert_eq!(seen, "127.0.0.2".parse::<IpAddr>().unwrap());

        // The outer proxy gone: its route fails, it does not fall back to direct.
        outer.stop().await;
        let e = reach(&client(inner.addr), target, b"x").await.unwrap_err();
        assert_eq!(refusal(e), ReplyCode::GENERAL_FAILURE);
        inner.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_goes_down_is_passed_over_for_the_next() {
    within("failover", async move {
        let dir = scratch("failover");
        // The upstreams take clients from the front's `external` address only: connections
        // to upstreams leave from it too.
        let only_front = "[access]\nclients = [\"127.0.0.6/32\"]\n";
        let first = hop("127.0.0.4", only_front, &dir).await;
        let second = hop("127.0.0.5", only_front, &dir).await;
        let target = source_reporter().await;
        let cfg = format!(
            "{}{}[[routes]]\nvia = [\"first\", \"second\"]\n[forwarding]\nretry_after = \"1h\"\n",
            upstream("first", &format!("socks5h://{}", first.addr), ""),
            upstream("second", &format!("socks5h://{}", second.addr), ""),
        );
        let front = hop("127.0.0.6", &cfg, &dir).await;
        let c = client(front.addr);
        assert_eq!(
            reach(&c, target, b"one").await.unwrap(),
            "127.0.0.4".parse::<IpAddr>().unwrap()
        );
        first.stop().await;
        // The first is down: this session and the next ones take the second.
        for _ in 0..3 {
            assert_eq!(
                reach(&c, target, b"two").await.unwrap(),
                "127.0.0.5".parse::<IpAddr>().unwrap()
            );
        }
        second.stop().await;
        let e = reach(&c, target, b"x").await.unwrap_err();
        assert_eq!(
            refusal(e),
            ReplyCode::GENERAL_FAILURE,
            "no silent fallback to direct"
        );
        front.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_between_two_servers_is_cut_by_hops() {
    within("runtime_loop", async move {
        let dir = scratch("loop");
        // A forwards everything to B and B to A: the loop is invisible to either file.
        let a_port = socksng_testkit::subjects::free_port().unwrap();
        let b = hop(
            "127.0.0.7",
            &format!(
                "{}[[routes]]\nvia = [\"a\"]\n",
                upstream("a", &format!("socks5h://127.0.0.1:{a_port}"), "")
            ),
            &dir,
        )
        .await;
        let a_cfg = format!(
            "listen = [\"127.0.0.1:{a_port}\"]\n{ALLOW_LOOPBACK}{}[[routes]]\nvia = [\"b\"]\n\
             [forwarding]\nmax_hops = 4\n",
            upstream("b", &format!("socks5h://{}", b.addr), "")
        );
        let a = TestServer::start_in(&a_cfg, &dir).await;
        let target = source_reporter().await;
        let e = reach(&client(a.addr), target, b"x").await.unwrap_err();
        assert_eq!(refusal(e), rep_hop_limit());
        // A plain SOCKS5 client hears general failure instead of the SOCKS-NG code.
        let plain = client(a.addr).plain_socks5_only();
        let e = reach(&plain, target, b"x").await.unwrap_err();
        assert_eq!(refusal(e), ReplyCode::GENERAL_FAILURE);
        a.stop().await;
        b.stop().await;
    })
    .await;
}

fn rep_hop_limit() -> ReplyCode {
    socksng_proto::wire::ng::rep::HOP_LIMIT_REACHED
}

#[test]
fn a_loop_visible_in_the_configuration_is_refused_at_start() {
    let text = |url: &str| {
        format!(
            "listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"127.0.0.0/8\"]\n\
             [[upstreams]]\nname = \"me\"\nurl = \"{url}\"\n[[routes]]\nvia = [\"me\"]\n"
        )
    };
    for own in [
        "socks5h://127.0.0.1:1080",
        "socks5://localhost:1080",
        "socks5h://127.0.0.2:1080",
    ] {
        let e = Config::from_toml(&text(own), Path::new(".")).unwrap_err();
        assert!(e.to_string().contains("this server itself"), "{own}: {e}");
    }
    // Another port, and an address that is not this host's (TEST-NET-3), are not loops.
    for other in ["socks5h://127.0.0.1:1081", "socks5h://203.0.113.9:1080"] {
        assert!(
            Config::from_toml(&text(other), Path::new(".")).is_ok(),
            "{other}"
        );
    }
    let unknown = "[[routes]]\nvia = [\"nowhere\"]\n";
    let e = Config::from_toml(unknown, Path::new(".")).unwrap_err();
    assert!(e.to_string().contains("no upstream is called"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Dante (dante-server); scripts/test-all runs it"]
async fn connect_through_dante_as_a_plain_socks5_upstream() {
    within("dante_upstream", async move {
        let dir = scratch("dante");
        let env = socksng_testkit::subjects::Env::for_tests(dir.join("env"))
            .await
            .unwrap();
        let (_subject, dante, dante_addr) = socksng_testkit::subjects::start_peer("dante", &env)
            .await
            .expect("starting Dante");
        let target = source_reporter().await;
        let cfg = format!(
            "{}[[routes]]\nvia = [\"dante\"]\n",
            upstream("dante", &format!("socks5h://{dante_addr}"), "")
        );
        let front = hop("127.0.0.8", &cfg, &dir).await;
        let data = vec![7u8; 256 * 1024];
        let seen = reach(&client(front.addr), target, &data).await.unwrap();
        // Dante connects from its own (default) source, not this hop's 127.0.0.8.
        assert_ne!(seen, "127.0.0.8".parse::<IpAddr>().unwrap());
        front.stop().await;
        dante.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_and_listen_go_through_a_socksngd_upstream_over_tls() {
    within("udp_and_listen_through_upstream", async move {
        let dir = scratch("two-hops");
        let ca = Ca::new("chain CA");
        let (cert, key) = ca.server_leaf(&["127.0.0.2"]).write(&dir, "outer");
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        let password = "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n";
        // The outer proxy on 127.0.0.2: a listener it opens is announced there.
        let outer_cfg = format!(
            "listen = [\"127.0.0.2:0\"]\nexternal = [\"127.0.0.9\"]\n{password}{ALLOW_LOOPBACK}\
             [[ng.served]]\nto = [\"10.9.0.0/16\"]\n{}",
            tls_section(&cert, &key, "")
        );
        let outer = TestServer::with_user("two-hops-outer", &outer_cfg).await;
        // Everything alice does goes through the outer proxy (the inner one, on 127.0.0.1,
        // grants her ports as by default: its grants say who may listen at all).
        let inner_cfg = format!(
            "external = [\"127.0.0.10\"]\n{password}{ALLOW_LOOPBACK}{}[[routes]]\nusers = [\"alice\"]\nvia = [\"isp\"]\n",
            upstream(
                "isp",
                &format!("socks5s://alice:s3cret@127.0.0.2:{}", outer.addr.port()),
                &format!("tls_ca = {:?}", dir.join("ca.pem").display().to_string()),
            ),
        );
        let inner = TestServer::with_user("two-hops-inner", &inner_cfg).await;
        let c = Client::new(
            ProxyUrl::parse(&format!("socks5h://alice:s3cret@{}", inner.addr)).unwrap(),
        );

        // All of alice's requests go to the outer proxy: the inner one announces what the
        // outer one does.
        let caps = c.capabilities().await.unwrap();
        let prefixes: Vec<_> = caps.ranges.iter().flat_map(|r| r.prefixes.clone()).collect();
        assert_eq!(prefixes, vec![("10.9.0.0".parse::<IpAddr>().unwrap(), 16)]);

        // UDP over the stream, both hops: the target sees the outer hop's address.
        let udp_target = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_at = udp_target.local_addr().unwrap();
        let mut tunnel = c.udp().await.unwrap();
        assert_eq!(tunnel.path(), socksng_client::ProtocolPath::Ng);
        for size in [1usize, 1200, 30_000] {
            let payload = vec![size as u8; size];
            tunnel.send_to(&payload, &Address::ip(udp_at)).await.unwrap();
            let mut buf = vec![0u8; 65_536];
            let (n, from) = udp_target.recv_from(&mut buf).await.unwrap();
            assert_eq!(&buf[..n], &payload[..]);
            assert_eq!(from.ip(), "127.0.0.9".parse::<IpAddr>().unwrap());
            udp_target.send_to(b"answer", from).await.unwrap();
            let (n, src) = tunnel.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], src), (&b"answer"[..], udp_at));
        }

        // LISTEN across two hops: the listener is the outer proxy's, and a peer reaching it
        // talks to this client through both, data verified both ways.
        let any = Address::ip("0.0.0.0:0".parse().unwrap());
        let mut listener = c.listen(0, false, 4, any).await.unwrap();
        let public = listener.local_addr().socket_addr().unwrap();
        assert_eq!(public.ip(), "127.0.0.2".parse::<IpAddr>().unwrap(), "the outer proxy's");
        for i in 0..3u8 {
            let mut outside = tokio::net::TcpStream::connect(public).await.unwrap();
            let (s, peer) = listener.accept().await.unwrap();
            assert_eq!(peer, Address::ip(outside.local_addr().unwrap()));
            let mut s = s.into_inner();
            let blob = vec![i; 100_000];
            outside.write_all(&blob).await.unwrap();
            let mut got = vec![0u8; blob.len()];
            s.read_exact(&mut got).await.unwrap();
            assert!(got == blob);
            s.write_all(b"from behind two proxies").await.unwrap();
            let mut r = [0u8; 23];
            outside.read_exact(&mut r).await.unwrap();
            assert_eq!(&r, b"from behind two proxies");
        }
        drop(listener);
        inner.stop().await;
        outer.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs OpenSSH (openssh-server, openssh-client); scripts/test-all runs it"]
async fn an_upstream_that_closes_without_a_reply_is_not_taken_for_down() {
    within("ssh_upstream_no_reply", async move {
        let dir = scratch("ssh");
        let env = socksng_testkit::subjects::Env::for_tests(dir.join("env"))
            .await
            .unwrap();
        let (_subject, ssh, ssh_addr) = socksng_testkit::subjects::start_peer("ssh-d", &env)
            .await
            .expect("starting ssh -D");
        let second = hop("127.0.0.11", "", &dir).await;
        let target = source_reporter().await;
        let cfg = format!(
            "{}{}[[routes]]\nvia = [\"ssh\", \"second\"]\n[forwarding]\nretry_after = \"1h\"\n",
            upstream("ssh", &format!("socks5h://{ssh_addr}"), ""),
            upstream("second", &format!("socks5h://{}", second.addr), ""),
        );
        let front = hop("127.0.0.12", &cfg, &dir).await;
        let c = client(front.addr);
        // A closed port: ssh -D answers by closing the connection, without a reply.
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let e = reach(&c, closed, b"x").await.unwrap_err();
        assert_eq!(refusal(e), ReplyCode::GENERAL_FAILURE);
        // ssh -D still takes the next request: it was not passed over for the second.
        let seen = reach(&c, target, b"still ssh").await.unwrap();
        assert_ne!(seen, "127.0.0.11".parse::<IpAddr>().unwrap());
        front.stop().await;
        second.stop().await;
        ssh.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_through_an_upstream_needs_a_grant_here_and_names_are_judged_by_the_rules() {
    within("grants_and_rules_through_upstreams", async move {
        let dir = scratch("grants");
        let outer = hop("127.0.0.13", "", &dir).await;
        // Everything goes to the outer proxy. Here anonymous clients have no port grant, and
        // the rules decide by address: one target's port on 127.0.0.0/8 is denied.
        let target = source_reporter().await;
        let denied = source_reporter().await;
        let cfg = format!(
            "[access]\ndefault = \"deny\"\n[[rules]]\naction = \"deny\"\nto = [\"127.0.0.0/8\"]\n\
             ports = [{}]\n{ALLOW_LOOPBACK}{}[[routes]]\nvia = [\"outer\"]\n",
            denied.port(),
            upstream("outer", &format!("socks5h://{}", outer.addr), "")
        );
        let front = TestServer::start_in(&format!("listen = [\"127.0.0.1:0\"]\n{cfg}"), &dir).await;
        let c = client(front.addr);
        let any = Address::ip("0.0.0.0:0".parse().unwrap());
        let e = c.listen(0, false, 1, any).await.unwrap_err();
        assert_eq!(
            refusal(e),
            ReplyCode::NOT_ALLOWED,
            "no grant here, no listener there"
        );
        // Names the rules decide by address are resolved here and judged: localhost to the
        // allowed port goes through, to the denied port it is refused here (the outer proxy
        // would have taken it).
        let allowed = Address::domain("localhost", target.port()).unwrap();
        drop(c.connect(allowed).await.unwrap());
        let refused = Address::domain("localhost", denied.port()).unwrap();
        let e = c.connect(refused).await.unwrap_err();
        assert_eq!(refusal(e), ReplyCode::NOT_ALLOWED);
        front.stop().await;
        outer.stop().await;
    })
    .await;
}
