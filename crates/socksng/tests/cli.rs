//! The `socksng` command against real servers: socksngd in-process (SOCKS-NG and plain),
//! curl as the outside clients of forward-remote, sshd behind `connect` as ProxyCommand, and
//! routing across two servers plus direct, checked by what the targets see. The tests that
//! start sshd or dnsmasq are ignored unless asked for, as scripts/test-all does (it installs
//! them); nothing is installed here.

use socksng_server::testing::{echo_server, within, TestServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::process::{Child, Command};

const ALLOW_LOOPBACK: &str = "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";
const PASSWORD_AUTH: &str = "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("socksng-cli-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

type Proxy = TestServer;

/// A socksngd on 127.0.0.1 with user alice (password s3cret) and `extra` configuration.
async fn proxy(tag: &str, extra: &str) -> Proxy {
    TestServer::with_user(tag, extra).await
}

fn socksng(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_socksng"));
    c.args(args)
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .env("SOCKSNG_CLIENT_CONFIG", "/nonexistent/socksng-client.toml")
        .kill_on_drop(true);
    c
}

/// Runs socksng to completion with `input` on standard input.
async fn run(args: &[&str], input: &[u8]) -> std::process::Output {
    let mut child = socksng(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    // A command that fails early may not read its input; that is not the test's concern.
    let _ = stdin.write_all(input).await;
    drop(stdin);
    within("socksng to finish", child.wait_with_output())
        .await
        .unwrap()
}

/// Starts a long-running socksng and returns it with its first line of standard output.
async fn start(args: &[&str]) -> (Child, String) {
    let mut child = socksng(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = within("socksng's first line", lines.next_line())
        .await
        .unwrap()
        .expect("a first line");
    (child, first)
}

/// A target that writes the address it sees the connection coming from, then closes.
async fn who_am_i_server(bind: &str) -> SocketAddr {
    let l = TcpListener::bind(bind).await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, peer)) = l.accept().await {
            let _ = s.write_all(peer.ip().to_string().as_bytes()).await;
        }
    });
    a
}

/// The command failed with exit status `status` and said `why` on standard error, once.
fn assert_failed_saying(out: &std::process::Output, status: i32, why: &str) {
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "{err}");
    assert!(err.contains(why), "expected {why:?} in: {err}");
    assert_eq!(err.matches(why).count(), 1, "said twice: {err}");
}

/// The exit statuses of `socksng --help`.
const PROXY_FAILED: i32 = 5;
const REFUSED: i32 = 7;

fn text(out: &[u8]) -> String {
    String::from_utf8_lossy(out).into_owned()
}

fn url(p: &Proxy, creds: &str) -> String {
    format!("socks5h://{creds}{}", p.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_relays_standard_input_and_output() {
    within("connect_relays_standard_input_and_output", async move {
        let p = proxy("connect", ALLOW_LOOPBACK).await;
        let echo = echo_server("127.0.0.1:0").await;
        let u = url(&p, "");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let out = run(&["-x", &u, "connect", &echo.to_string()], &data).await;
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert!(out.stdout == data, "echoed {} bytes", out.stdout.len());

        // By name, resolved by the proxy, with -v saying which way it went.
        let named = format!("localhost:{}", echo.port());
        let out = run(&["-v", "-x", &u, "connect", &named], b"by name").await;
        assert_eq!(text(&out.stdout), "by name");
        assert!(
            text(&out.stderr).contains("via 127.0.0.1"),
            "{}",
            text(&out.stderr)
        );
        assert!(
            text(&out.stderr).contains("SOCKS-NG"),
            "{}",
            text(&out.stderr)
        );

        // A refusal is an error exit with the reason in words.
        let denied = proxy("connect-denied", "").await;
        let out = run(
            &["-x", &url(&denied, ""), "connect", &echo.to_string()],
            b"",
        )
        .await;
        assert_failed_saying(&out, REFUSED, "not allowed by ruleset");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_local_relays_every_connection() {
    within("forward_local_relays_every_connection", async move {
        let p = proxy("fwd-local", ALLOW_LOOPBACK).await;
        let echo = echo_server("127.0.0.1:0").await;
        let (mut child, line) = start(&[
            "-x",
            &url(&p, ""),
            "forward-local",
            "127.0.0.1:0",
            &echo.to_string(),
        ])
        .await;
        let local: SocketAddr = line
            .strip_prefix("forwarding ")
            .and_then(|r| r.split(' ').next())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"))
            .parse()
            .unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..20u8 {
            tasks.spawn(async move {
                let mut s = TcpStream::connect(local).await.unwrap();
                let msg = vec![i; 10_000];
                s.write_all(&msg).await.unwrap();
                s.shutdown().await.unwrap();
                let mut back = Vec::new();
                s.read_to_end(&mut back).await.unwrap();
                assert!(back == msg, "connection {i}");
            });
        }
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
        child.kill().await.unwrap();
    })
    .await;
}

/// A tiny HTTP/1.1 server: answers every request with "served PATH" and closes.
async fn http_server() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let a = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut r = BufReader::new(s);
                let mut request_line = String::new();
                if r.read_line(&mut request_line).await.is_err() {
                    return;
                }
                loop {
                    let mut h = String::new();
                    match r.read_line(&mut h).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) if h == "\r\n" => break,
                        Ok(_) => {}
                    }
                }
                let path = request_line.split(' ').nth(1).unwrap_or("?").to_string();
                let body = format!("served {path}");
                let resp = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut s = r.into_inner();
                let _ = s.write_all(resp.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_remote_serves_fifty_concurrent_curl_clients() {
    within(
        "forward_remote_serves_fifty_concurrent_curl_clients",
        async move {
            let p = proxy("fwd-remote", &format!("{PASSWORD_AUTH}{ALLOW_LOOPBACK}")).await;
            let web = http_server().await;
            let (mut child, line) = start(&[
                "-x",
                &url(&p, "alice:s3cret@"),
                "forward-remote",
                &web.port().to_string(),
            ])
            .await;
            let public = line
                .strip_prefix("listening on ")
                .and_then(|r| r.split(' ').next())
                .unwrap_or_else(|| panic!("unexpected line {line:?}"))
                .to_string();
            let public_addr: SocketAddr = public.parse().unwrap();
            assert_ne!(public_addr.port(), web.port());
            let mut curls = Vec::new();
            for i in 0..50 {
                let c = Command::new("curl")
                    .args(["-sS", "--max-time", "60", "--noproxy", "*"])
                    .arg(format!("http://{public}/item-{i}"))
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true)
                    .spawn()
                    .expect("curl must be installed");
                curls.push((i, c));
            }
            for (i, c) in curls {
                let out = c.wait_with_output().await.unwrap();
                assert!(out.status.success(), "curl {i}: {}", text(&out.stderr));
                assert_eq!(text(&out.stdout), format!("served /item-{i}"));
            }
            child.kill().await.unwrap();
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_remote_on_a_chosen_port_exact_or_not() {
    within("forward_remote_on_a_chosen_port_exact_or_not", async move {
        let p = proxy("fwd-port", &format!("{PASSWORD_AUTH}{ALLOW_LOOPBACK}")).await;
        let web = http_server().await;
        let u = url(&p, "alice:s3cret@");
        let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = taken.local_addr().unwrap().port().to_string();
        let web = web.to_string();
        let forward = |exact: bool| {
            let mut args = vec!["-x", u.as_str(), "forward-remote", "--port", port.as_str()];
            if exact {
                args.push("--exact");
            }
            args.push(web.as_str());
            args
        };
        // Exact on a taken port: refused with the draft's words for X'0A', a failing exit.
        let out = run(&forward(true), b"").await;
        assert_failed_saying(&out, REFUSED, "the proxy refused: port in use (0x0a)");
        // Not exact: another port is taken instead, and it serves.
        let (mut child, line) = start(&forward(false)).await;
        let public: SocketAddr = line.split(' ').nth(2).unwrap().parse().unwrap();
        assert_ne!(public.port().to_string(), port);
        let mut s = TcpStream::connect(public).await.unwrap();
        s.write_all(b"GET /other HTTP/1.0\r\n\r\n").await.unwrap();
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.unwrap();
        assert!(resp.ends_with("served /other"), "{resp}");
        child.kill().await.unwrap();
        // A free port asked exactly is the one published.
        drop(taken);
        let (mut child, line) = start(&forward(true)).await;
        assert!(
            line.starts_with(&format!("listening on 127.0.0.1:{port} ")),
            "{line}"
        );
        child.kill().await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udp_through_the_tunnel_and_through_udp_associate() {
    within(
        "udp_through_the_tunnel_and_through_udp_associate",
        async move {
            let echo = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let echo_addr = echo.local_addr().unwrap();
            tokio::spawn(async move {
                let mut b = vec![0u8; 65_536];
                while let Ok((n, from)) = echo.recv_from(&mut b).await {
                    let _ = echo.send_to(&b[..n], from).await;
                }
            });
            let ng = proxy("udp-ng", ALLOW_LOOPBACK).await;
            let plain = proxy(
                "udp-plain",
                &format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}"),
            )
            .await;
            for (p, path) in [(&ng, "SOCKS-NG"), (&plain, "SOCKS5")] {
                let u = url(p, "");
                let target = echo_addr.to_string();
                let out = run(&["-v", "-x", &u, "udp", &target, "-d", "ping"], b"").await;
                assert!(out.status.success(), "{}", text(&out.stderr));
                assert_eq!(text(&out.stdout), "ping");
                assert!(text(&out.stderr).contains(&format!("UDP via {path}")));
                // Payload from standard input, reply shown as hex with its source.
                let out = run(&["-x", &u, "udp", &target, "--hex"], b"\x00\x01binary").await;
                assert_eq!(
                    text(&out.stdout).trim(),
                    format!("{echo_addr} 000162696e617279")
                );
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_that_is_down_is_an_error_never_a_direct_connection() {
    within(
        "a_proxy_that_is_down_is_an_error_never_a_direct_connection",
        async move {
            let echo = echo_server("127.0.0.1:0").await;
            let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let gone = closed.local_addr().unwrap();
            drop(closed);
            for target in [echo.to_string(), format!("localhost:{}", echo.port())] {
                let out = run(
                    &["-x", &format!("socks5h://{gone}"), "connect", &target],
                    b"x",
                )
                .await;
                assert!(out.stdout.is_empty(), "{target}: data went somewhere");
                // As nc or curl would say it: the proxy refused the connection; no talk of
                // a route table for a single --proxy.
                let said = format!("proxy {gone}: Connection refused");
                assert_failed_saying(&out, PROXY_FAILED, &said);
                assert!(
                    !text(&out.stderr).contains("table"),
                    "{}",
                    text(&out.stderr)
                );
            }
        },
    )
    .await;
}

/// A DNS query for `example.test` A, id 0x1234, recursion desired.
const DNS_QUERY: &[u8] =
    b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x04test\x00\x00\x01\x00\x01";

/// A port on 127.0.0.1 free for both UDP and TCP at the time of asking: dnsmasq binds both.
fn free_udp_and_tcp_port() -> u16 {
    for _ in 0..50 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no port on 127.0.0.1 free for both UDP and TCP");
}

/// dnsmasq on 127.0.0.1 answering `example.test` with 192.0.2.7 and nothing else (no upstream,
/// no hosts file), stopped when dropped; waits until it answers. The port is chosen before
/// dnsmasq binds it, so another test may take it in between: dnsmasq then exits, and it is
/// started again on another port.
async fn dnsmasq() -> (Child, SocketAddr) {
    let bin = socksng_testkit::require("dnsmasq");
    let mut last_words = String::new();
    for _ in 0..5 {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_udp_and_tcp_port()));
        let mut child = Command::new(&bin)
            .args([
                "-k",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--bind-interfaces",
                // Stay the user we are: a fresh machine may have no `dnsmasq` account to drop to.
                "--user=",
                "--group=",
            ])
            .args([
                "--listen-address=127.0.0.1",
                "--pid-file=",
                "--address=/example.test/192.0.2.7",
            ])
            .arg(format!("--port={}", addr.port()))
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let asker = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let mut buf = [0u8; 512];
        for _ in 0..100 {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut stderr) = child.stderr.take() {
                    let _ = stderr.read_to_string(&mut err).await;
                }
                last_words = format!("{status}: {}", err.trim());
                break;
            }
            asker.send_to(DNS_QUERY, addr).await.unwrap();
            let answered =
                tokio::time::timeout(std::time::Duration::from_millis(100), asker.recv(&mut buf));
            if let Ok(Ok(n)) = answered.await {
                if n > 2 && buf[..2] == DNS_QUERY[..2] {
                    return (child, addr);
                }
            }
        }
        if last_words.is_empty() {
            panic!("dnsmasq did not answer on {addr}");
        }
    }
    panic!("dnsmasq would not start: {last_words}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts peer programs (Dante, microsocks, sshd, dnsmasq): run by scripts/test-all"]
async fn one_dns_query_through_the_tunnel_and_udp_associate() {
    within(
        "one_dns_query_through_the_tunnel_and_udp_associate",
        async move {
            let (_dns, dns) = dnsmasq().await;
            let ng = proxy("dns-ng", ALLOW_LOOPBACK).await;
            let plain = proxy(
                "dns-plain",
                &format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}"),
            )
            .await;
            for p in [&ng, &plain] {
                let out = run(
                    &["-x", &url(p, ""), "udp", &dns.to_string(), "--hex"],
                    DNS_QUERY,
                )
                .await;
                let t = text(&out.stdout);
                assert!(out.status.success(), "{}", text(&out.stderr));
                let (from, reply) = t.trim().split_once(' ').unwrap();
                assert_eq!(from, dns.to_string());
                // The same id, a response, and the answer's address 192.0.2.7.
                assert!(reply.starts_with("12348"), "{reply}");
                assert!(reply.ends_with("c0000207"), "{reply}");
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn info_in_text_and_json() {
    within("info_in_text_and_json", async move {
        let served =
            "[[ng.served]]\nto = [\"10.0.0.0/8\"]\ndomains = [\"corp.example\"]\nports = [\"1-1024\"]\n[[ng.ports]]\nports = [\"20000-20100\"]\n";
        let ng = proxy("info-ng", &format!("{served}{ALLOW_LOOPBACK}")).await;
        let out = run(&["info", &url(&ng, "")], b"").await;
        let t = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        for want in [
            "SOCKS-NG revision 1",
            "LISTEN",
            "UDP-TUNNEL",
            "10.0.0.0/8 .corp.example ports 1-1024",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let out = run(&["info", "--json", &url(&ng, "")], b"").await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["protocol"], "socks-ng");
        assert_eq!(v["ranges"][0]["prefixes"][0], "10.0.0.0/8");
        assert_eq!(v["ranges"][0]["domains"][0], "corp.example");
        assert_eq!(v["max_udp_payload"], 65507);

        let plain = proxy(
            "info-plain",
            &format!("[ng]\nenabled = false\n{ALLOW_LOOPBACK}"),
        )
        .await;
        let out = run(&["info", "--json", &url(&plain, "")], b"").await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(v["protocol"], "socks5");

        // Nothing listening: an error, and a failing exit.
        let closed = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        let out = run(&["info", &format!("socks5h://{gone}")], b"").await;
        assert_eq!(out.status.code(), Some(PROXY_FAILED));
        assert!(text(&out.stdout).contains("error"), "{}", text(&out.stdout));
    })
    .await;
}

fn write_config(dir: &Path, text: &str) -> String {
    let path = dir.join("client.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

/// Two SOCKS-NG servers announcing different ranges (one also a domain), a plain server with
/// a configured range, and direct for the rest. Each server leaves from its own source
/// address (`external`), so every target reports which way the connection really came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_across_two_servers_a_plain_one_and_direct() {
    within("routing_across_two_servers_a_plain_one_and_direct", async move {
        let a = proxy(
            "route-a",
            &format!(
                "external = [\"127.0.0.11\"]\n[[ng.served]]\nto = [\"127.0.1.0/24\"]\n{ALLOW_LOOPBACK}"
            ),
        )
        .await;
        let b = proxy(
            "route-b",
            &format!(
                "external = [\"127.0.0.12\"]\n[[ng.served]]\nto = [\"127.0.2.0/24\"]\n\
                 domains = [\"localhost\"]\n{ALLOW_LOOPBACK}"
            ),
        )
        .await;
        let c = proxy(
            "route-c",
            &format!("external = [\"127.0.0.13\"]\n[ng]\nenabled = false\n{ALLOW_LOOPBACK}"),
        )
        .await;
        let dir = scratch("route-client");
        let cfg = write_config(
            &dir,
            &format!(
                "[[server]]\nname = \"a\"\nurl = \"{}\"\n\n[[server]]\nname = \"b\"\nurl = \"{}\"\n\n\
                 [[server]]\nname = \"c\"\nurl = \"{}\"\nranges = [\"127.0.4.0/24\"]\n\n\
                 [[route]]\nto = [\"127.0.2.128/25\"]\nvia = \"direct\"\n\n\
                 [options]\ncache_dir = \"{}\"\n",
                url(&a, ""),
                url(&b, ""),
                url(&c, ""),
                dir.join("cache").display()
            ),
        );
        let in_a = who_am_i_server("127.0.1.1:0").await;
        let in_b = who_am_i_server("127.0.2.1:0").await;
        let in_b_but_direct = who_am_i_server("127.0.2.200:0").await;
        let in_c = who_am_i_server("127.0.4.1:0").await;
        let elsewhere = who_am_i_server("127.0.3.1:0").await;
        let by_name = format!("localhost:{}", who_am_i_server("127.0.0.1:0").await.port());
        let cases = [
            (in_a.to_string(), "127.0.0.11"),
            (in_b.to_string(), "127.0.0.12"),
            (in_b_but_direct.to_string(), "127.0.0.1"),
            (in_c.to_string(), "127.0.0.13"),
            (elsewhere.to_string(), "127.0.0.1"),
            (by_name.clone(), "127.0.0.12"),
        ];
        for (target, seen) in &cases {
            let out = run(&["-v", "-c", &cfg, "connect", target], b"").await;
            assert!(out.status.success(), "{target}: {}", text(&out.stderr));
            assert_eq!(
                &text(&out.stdout),
                seen,
                "{target} came from the wrong place: {}",
                text(&out.stderr)
            );
        }

        // The table as printed, and lookups.
        let out = run(
            &[
                "-c",
                &cfg,
                "routes",
                "--lookup",
                &in_a.to_string(),
                "--lookup",
                &by_name,
            ],
            b"",
        )
        .await;
        let t = text(&out.stdout);
        assert!(out.status.success(), "{}", text(&out.stderr));
        for want in [
            "server a",
            "up, SOCKS-NG",
            "up, SOCKS5",
            ".localhost",
            "127.0.2.128/25",
        ] {
            assert!(t.contains(want), "missing {want:?} in\n{t}");
        }
        let line = |needle: &str| {
            t.lines()
                .find(|l| l.starts_with(needle))
                .unwrap_or_else(|| panic!("no line for {needle} in\n{t}"))
                .split_whitespace()
                .collect::<Vec<_>>()
        };
        assert_eq!(line("127.0.1.0/24")[2..], ["a", "announced"]);
        assert_eq!(line("127.0.4.0/24")[2..], ["c", "configured"]);
        assert_eq!(line(&format!("{in_a} ->")).last(), Some(&"a"));
        assert_eq!(line(&format!("{by_name} ->")).last(), Some(&"b"));

        // Server b goes away. A new `socksng` process knows b's last ranges from the cache, so
        // 127.0.2.1 is refused ("no usable proxy") rather than reached directly.
        b.stop().await;
        let out = run(&["-c", &cfg, "connect", &in_b.to_string()], b"").await;
        assert_failed_saying(&out, PROXY_FAILED, "no usable proxy");
        let out = run(&["-c", &cfg, "connect", &in_a.to_string()], b"").await;
        assert_eq!(text(&out.stdout), "127.0.0.11", "{}", text(&out.stderr));
        let out = run(&["-c", &cfg, "routes", "--json"], b"").await;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert!(v["servers"][1]["down"].is_string(), "{v}");
        let _ = std::fs::remove_dir_all(dir);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "starts peer programs (Dante, microsocks, sshd, dnsmasq): run by scripts/test-all"]
async fn connect_as_ssh_proxy_command() {
    within("connect_as_ssh_proxy_command", async move {
        let p = proxy(
            "ssh",
            &format!("external = [\"127.0.0.11\"]\n{ALLOW_LOOPBACK}"),
        )
        .await;
        let env = socksng_testkit::subjects::Env::for_tests(scratch("ssh-peer"))
            .await
            .unwrap();
        let kind = socksng_testkit::subjects::Kind::SshD;
        let subject = socksng_testkit::subjects::Subject::prepare("ssh-d", kind, &env);
        let (mut sshd, port, key, user) = subject.start_sshd_only().await.expect("starting sshd");
        let proxy_command = format!(
            "{} -x {} connect %h:%p",
            env!("CARGO_BIN_EXE_socksng"),
            url(&p, "")
        );
        let out = Command::new("ssh")
            .args(["-F", "/dev/null", "-o", "BatchMode=yes"])
            .args([
                "-o",
                "StrictHostKeyChecking=no",
                "-o",
                "UserKnownHostsFile=/dev/null",
            ])
            .args(["-o", "LogLevel=ERROR", "-o"])
            .arg(format!("ProxyCommand={proxy_command}"))
            .arg("-i")
            .arg(&key)
            .args(["-p", &port.to_string()])
            .arg(format!("{user}@127.0.0.1"))
            .arg("echo through-socksng $SSH_CONNECTION")
            .stdin(Stdio::null())
            .output()
            .await
            .unwrap();
        sshd.stop(std::time::Duration::from_secs(3)).await;
        let t = text(&out.stdout);
        assert!(out.status.success(), "ssh: {}", text(&out.stderr));
        // sshd saw the connection come from the proxy's external address.
        assert!(t.starts_with("through-socksng 127.0.0.11 "), "{t}");
    })
    .await;
}
