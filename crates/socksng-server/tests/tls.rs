//! socksngd's SOCKS over TLS (draft section 6.4) driven by the client library: TLS and plain
//! SOCKS on one port and a TLS-only port; every command over TLS (CONNECT with a megabyte each
//! way, the UDP tunnel, LISTEN with its claims over TLS); client certificates that name users
//! whose rules apply, alone or with that user's password; the certificate reloaded while a
//! session keeps running.

use socksng_client::{Address, Client, ClientError, ProxyUrl, ReplyCode, TlsSettings};
use socksng_server::testing::{echo_server, exchange, within, TestServer};
use socksng_testkit::tls::{tls_section, Ca, Leaf};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOW_LOOPBACK: &str = "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("socksngd-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The CA, the server's certificate files and the CA file in `dir`.
fn pki(dir: &Path) -> (Ca, PathBuf, PathBuf, PathBuf) {
    let ca = Ca::new("socksng test CA");
    let (cert, key) = ca.server_leaf(&["localhost"]).write(dir, "server");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    (ca, cert, key, ca_file)
}

/// A `socks5s://` client of `at` trusting `ca_file`, with `userinfo` (`user:pass@` or empty)
/// and an optional client certificate.
fn tls_client(at: SocketAddr, userinfo: &str, ca_file: &Path, cert: Option<&Leaf>) -> Client {
    let dir = ca_file.parent().unwrap();
    let client_cert = cert.map(|leaf| {
        let stem = format!("client-{}", leaf.cert_pem.len() ^ leaf.key_pem.len());
        leaf.write(dir, &stem)
    });
    let mut url = ProxyUrl::parse(&format!("socks5s://{userinfo}localhost:{}", at.port())).unwrap();
    url.tls = Some(TlsSettings {
        ca_file: Some(ca_file.to_path_buf()),
        client_cert,
        ..TlsSettings::default()
    });
    Client::new(url)
}

fn plain_client(at: SocketAddr) -> Client {
    Client::new(ProxyUrl::parse(&format!("socks5h://{at}")).unwrap())
}

/// Sends `data` through `c` to the echo server and checks that all of it comes back.
async fn echo(c: &Client, echo: SocketAddr, data: &[u8]) -> Result<bool, ClientError> {
    let s = c.connect(Address::ip(echo)).await?;
    let tls = s.into_inner();
    let was_tls = tls.is_tls();
    let back = exchange(tls, data).await?;
    assert!(back == data, "{} bytes back of {}", back.len(), data.len());
    Ok(was_tls)
}

/// The server ended the TLS handshake (rustls names it, or the connection just drops).
fn assert_tls_refused(e: ClientError) {
    assert!(
        matches!(e, ClientError::Tls(_) | ClientError::Io(_)),
        "{e:?}"
    );
}

fn refusal(e: ClientError) -> ReplyCode {
    match e {
        ClientError::Refused { code } => code,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_plain_socks_share_a_port_and_a_tls_port_takes_only_tls() {
    within("tls_and_plain_socks_share_a_port", async move {
        let dir = scratch("mixed");
        let (_ca, cert, key, ca_file) = pki(&dir);
        let tls_only = "listen = [\"127.0.0.1:0\"]";
        let config = format!(
            "listen = [\"127.0.0.1:0\"]\n{ALLOW_LOOPBACK}{}",
            tls_section(&cert, &key, tls_only)
        );
        let server = TestServer::start_in(&config, &dir).await;
        let (mixed, only_tls) = (server.addrs[0], server.addrs[1]);
        let target = echo_server("127.0.0.1:0").await;
        let data: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
        assert!(echo(&tls_client(mixed, "", &ca_file, None), target, &data)
            .await
            .unwrap());
        assert!(!echo(&plain_client(mixed), target, b"plain").await.unwrap());
        assert!(
            echo(&tls_client(only_tls, "", &ca_file, None), target, &data)
                .await
                .unwrap()
        );
        let e = echo(&plain_client(only_tls), target, b"plain").await;
        assert!(e.is_err(), "a plain client on the TLS-only port: {e:?}");
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_udp_tunnel_and_listen_work_over_tls_and_claims_stay_on_tls() {
    within("udp_and_listen_over_tls", async move {
        let dir = scratch("commands");
        let (_ca, cert, key, ca_file) = pki(&dir);
        // A logged-in user: LISTEN ports are granted to users by default.
        let config = format!(
            "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n{ALLOW_LOOPBACK}{}",
            tls_section(&cert, &key, "")
        );
        let server = TestServer::with_user("tls-commands", &config).await;
        let c = tls_client(server.addr, "alice:s3cret@", &ca_file, None);

        let udp_echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let udp_at = udp_echo.local_addr().unwrap();
        tokio::spawn(async move {
            let mut b = vec![0u8; 70_000];
            while let Ok((n, from)) = udp_echo.recv_from(&mut b).await {
                let _ = udp_echo.send_to(&b[..n], from).await;
            }
        });
        let mut tunnel = c.udp().await.unwrap();
        assert_eq!(tunnel.path(), socksng_client::ProtocolPath::Ng);
        for size in [1usize, 1400, 60_000] {
            let payload = vec![size as u8; size];
            tunnel
                .send_to(&payload, &Address::ip(udp_at))
                .await
                .unwrap();
            let mut buf = vec![0u8; 70_000];
            let (n, from) = tunnel.recv_from(&mut buf).await.unwrap();
            assert_eq!((&buf[..n], from), (&payload[..], udp_at));
        }

        let any = Address::ip("0.0.0.0:0".parse().unwrap());
        let mut listener = c.listen(0, false, 4, any).await.unwrap();
        let public = listener.local_addr().socket_addr().unwrap();
        for i in 0..2u8 {
            let mut outside = tokio::net::TcpStream::connect(public).await.unwrap();
            let (s, _) = listener.accept().await.unwrap();
            let mut s = s.into_inner();
            assert!(s.is_tls(), "the claim connection is TLS too");
            outside.write_all(&[i; 5]).await.unwrap();
            let mut b = [0u8; 5];
            s.read_exact(&mut b).await.unwrap();
            assert_eq!(b, [i; 5]);
            s.write_all(b"answer").await.unwrap();
            let mut r = [0u8; 6];
            outside.read_exact(&mut r).await.unwrap();
            assert_eq!(&r, b"answer");
        }
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_names_the_user_whose_rules_apply() {
    within("client_certificate_user", async move {
        let dir = scratch("mtls");
        let (ca, cert, key, ca_file) = pki(&dir);
        // Only alice may go anywhere; an anonymous client and bob may not.
        let config = format!(
            "[access]\ndefault = \"deny\"\n[[rules]]\naction = \"allow\"\nusers = [\"alice\"]\n\
             to = [\"127.0.0.0/8\"]\n{}",
            tls_section(&cert, &key, "client_ca = \"ca.pem\"\nuser_from = \"cn\"")
        );
        let server = TestServer::start_in(&config, &dir).await;
        let target = echo_server("127.0.0.1:0").await;
        let alice = ca.client_leaf("alice");
        let bob = ca.client_leaf("bob");
        let as_alice = tls_client(server.addr, "", &ca_file, Some(&alice));
        assert!(echo(&as_alice, target, b"alice's bytes").await.unwrap());
        let as_bob = tls_client(server.addr, "", &ca_file, Some(&bob));
        let e = echo(&as_bob, target, b"x").await.unwrap_err();
        assert_eq!(refusal(e), ReplyCode::NOT_ALLOWED);
        let anonymous = tls_client(server.addr, "", &ca_file, None);
        let e = echo(&anonymous, target, b"x").await.unwrap_err();
        assert_eq!(refusal(e), ReplyCode::NOT_ALLOWED);
        // The user can come from an e-mail address or a DNS name instead (user_from).
        for (field, leaf) in [
            ("email", ca.client_leaf_with_email("Alice A.", "alice")),
            ("dns", ca.client_leaf("alice")),
        ] {
            let config = format!(
                "listen = [\"127.0.0.1:0\"]\n[access]\ndefault = \"deny\"\n[[rules]]\naction = \"allow\"\n\
                 users = [\"alice\"]\nto = [\"127.0.0.0/8\"]\n{}",
                tls_section(&cert, &key, &format!("client_ca = \"ca.pem\"\nuser_from = \"{field}\""))
            );
            let by_field = TestServer::start_in(&config, &dir).await;
            let c = tls_client(by_field.addr, "", &ca_file, Some(&leaf));
            assert!(echo(&c, target, field.as_bytes()).await.unwrap(), "{field}");
            // The CN is "Alice A.", which no rule names: only the field counts.
            by_field.stop().await;
        }
        // A certificate from another CA is refused in the TLS handshake.
        let stranger = Ca::new("someone else").client_leaf("alice");
        let e = echo(
            &tls_client(server.addr, "", &ca_file, Some(&stranger)),
            target,
            b"x",
        )
        .await
        .unwrap_err();
        assert_tls_refused(e);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_password_a_certificate_user_must_also_log_in_as_itself() {
    within("certificate_and_password", async move {
        let dir = scratch("mtls-pw");
        let (ca, cert, key, ca_file) = pki(&dir);
        let config = format!(
            "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n{ALLOW_LOOPBACK}{}",
            tls_section(
                &cert,
                &key,
                &format!(
                    "client_ca = {:?}\nrequire_client_cert = true\ncert_login = \"with-password\"",
                    ca_file.display().to_string()
                )
            )
        );
        let server = TestServer::with_user("mtls-pw", &config).await;
        let target = echo_server("127.0.0.1:0").await;
        let alice = ca.client_leaf("alice");
        let bob = ca.client_leaf("bob");
        let good = tls_client(server.addr, "alice:s3cret@", &ca_file, Some(&alice));
        assert!(echo(&good, target, b"both").await.unwrap());
        // bob's certificate with alice's password: not alice.
        let mixed = tls_client(server.addr, "alice:s3cret@", &ca_file, Some(&bob));
        let e = echo(&mixed, target, b"x").await.unwrap_err();
        assert!(matches!(e, ClientError::AuthFailed), "{e:?}");
        // The certificate alone does not log in.
        let alone = tls_client(server.addr, "", &ca_file, Some(&alice));
        let e = echo(&alone, target, b"x").await.unwrap_err();
        assert!(matches!(e, ClientError::NoAcceptableMethod), "{e:?}");
        // Without a certificate the TLS handshake fails.
        let none = tls_client(server.addr, "alice:s3cret@", &ca_file, None);
        let e = echo(&none, target, b"x").await.unwrap_err();
        assert_tls_refused(e);
        server.stop().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reloaded_certificate_serves_new_clients_while_a_session_runs_on() {
    within("reload", async move {
        let dir = scratch("reload");
        let (_ca, cert, key, ca_file) = pki(&dir);
        let config = format!("{ALLOW_LOOPBACK}{}", tls_section(&cert, &key, ""));
        let mut cfg = socksng_server::Config::from_toml(
            &format!("listen = [\"127.0.0.1:0\"]\n{config}"),
            &dir,
        )
        .unwrap();
        cfg.timeouts.shutdown_grace = std::time::Duration::from_millis(100);
        let server = socksng_server::Server::bind(cfg).unwrap();
        let at = server.local_addrs()[0];
        let reload = server.handle();
        let stop = socksng_server::CancellationToken::new();
        let task = tokio::spawn(server.run(stop.clone()));
        let target = echo_server("127.0.0.1:0").await;

        let old = tls_client(at, "", &ca_file, None);
        let mut running = old.connect(Address::ip(target)).await.unwrap().into_inner();
        running.write_all(b"before").await.unwrap();
        let mut b = [0u8; 6];
        running.read_exact(&mut b).await.unwrap();

        // A new CA's certificate in the same files.
        let new_ca = Ca::new("the next CA");
        new_ca.server_leaf(&["localhost"]).write(&dir, "server");
        let new_ca_file = dir.join("new-ca.pem");
        std::fs::write(&new_ca_file, new_ca.pem()).unwrap();
        assert!(reload.reload_tls().unwrap());

        assert!(
            echo(&tls_client(at, "", &new_ca_file, None), target, b"new")
                .await
                .unwrap()
        );
        let e = echo(&old, target, b"x").await.unwrap_err();
        assert!(
            matches!(&e, ClientError::Tls(w) if w.contains("unknown CA")),
            "{e:?}"
        );
        running.write_all(b"after!").await.unwrap();
        running.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"after!");

        // A broken key leaves the working certificate in force.
        std::fs::write(&key, "not a key").unwrap();
        assert!(reload.reload_tls().is_err());
        assert!(
            echo(&tls_client(at, "", &new_ca_file, None), target, b"still")
                .await
                .unwrap()
        );
        stop.cancel();
        task.await.unwrap();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_that_stops_reading_is_reset_when_its_relay_times_out() {
    within("tls_client_stops_reading", async move {
        let dir = scratch("stalled");
        let (_ca, cert, key, ca_file) = pki(&dir);
        let config = format!(
            "[timeouts]\nidle = \"1s\"\n{ALLOW_LOOPBACK}{}",
            tls_section(&cert, &key, "")
        );
        let server = TestServer::start_in(&config, &dir).await;
        // A target that sends until it cannot.
        let source = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let source_at = source.local_addr().unwrap();
        tokio::spawn(async move {
            if let Ok((mut s, _)) = source.accept().await {
                let chunk = vec![0x42u8; 64 * 1024];
                while s.write_all(&chunk).await.is_ok() {}
            }
        });
        let c = tls_client(server.addr, "", &ca_file, None);
        let stalled = c
            .connect(Address::ip(source_at))
            .await
            .unwrap()
            .into_inner();
        // The client reads nothing: buffers fill, the relay goes idle, and its timeout must
        // reach the client as a reset even though the TLS task is stuck writing to it.
        let tcp = stalled.tcp();
        tcp.ready(tokio::io::Interest::ERROR).await.unwrap();
        let error = tcp.take_error().unwrap().expect("a socket error");
        assert_eq!(error.kind(), std::io::ErrorKind::ConnectionReset, "{error}");
        server.stop().await;
    })
    .await;
}
