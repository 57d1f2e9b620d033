//! SOCKS over TLS from the client's side (`socks5s://`) against socksngd's own TLS, with
//! certificates made for each case. A good chain is accepted and the ALPN id agreed; an
//! unknown CA, a wrong name, an expired certificate and a wrong pin are each refused with the
//! error that names them; a pin and a client certificate work.

use socksng_client::{Address, Client, ClientError, ProxyUrl, TlsSettings, ALPN_SOCKS};
use socksng_server::testing::{echo_server, within, TestServer};
use socksng_testkit::tls::{tls_section, Ca, ExtendedKeyUsagePurpose, Leaf};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ALLOW_LOOPBACK: &str = "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("socksng-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// socksngd taking TLS with `leaf` (written to `dir` as `stem`), plus `tls_extra` lines of
/// its `[tls]` section.
async fn tls_server(dir: &Path, stem: &str, leaf: &Leaf, tls_extra: &str) -> TestServer {
    let (cert, key) = leaf.write(dir, stem);
    let config = format!("{ALLOW_LOOPBACK}{}", tls_section(&cert, &key, tls_extra));
    TestServer::start_in(&config, dir).await
}

/// A client for `socks5s://HOST:PORT` with `settings`.
fn client(host: &str, port: u16, settings: TlsSettings) -> Client {
    let mut url = ProxyUrl::parse(&format!("socks5s://{host}:{port}")).unwrap();
    url.tls = Some(settings);
    Client::new(url)
}

async fn echo_through(c: &Client, echo: SocketAddr) -> Result<(), ClientError> {
    let s = c.connect(Address::ip(echo)).await?;
    let mut s = s.into_inner();
    assert!(s.is_tls());
    assert_eq!(
        s.alpn(),
        Some(ALPN_SOCKS),
        "the ALPN id was offered and agreed"
    );
    s.write_all(b"over TLS").await?;
    let mut back = [0u8; 8];
    s.read_exact(&mut back).await?;
    assert_eq!(&back, b"over TLS");
    Ok(())
}

fn tls_error(e: ClientError) -> String {
    match e {
        ClientError::Tls(words) => words,
        other => panic!("expected a TLS error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_certificate_check_is_named_when_it_fails() {
    within(
        "each_certificate_check_is_named_when_it_fails",
        async move {
            let echo = echo_server("127.0.0.1:0").await;
            let dir = scratch("checks");
            let ca = Ca::new("socksng test CA");
            let ca_file = write(&dir, "ca.pem", &ca.pem());
            let with_ca = TlsSettings {
                ca_file: Some(ca_file.clone()),
                ..TlsSettings::default()
            };

            // A good chain for the name the client asks for (a host name and an address).
            let good = ca.server_leaf(&["localhost", "127.0.0.1"]);
            let socksngd = tls_server(&dir, "good", &good, "").await;
            let at = socksngd.addr;
            for host in ["localhost", "127.0.0.1"] {
                echo_through(&client(host, at.port(), with_ca.clone()), echo)
                    .await
                    .unwrap_or_else(|e| panic!("{host}: {e}"));
            }

            // Another CA: unknown.
            let other = Ca::new("someone else");
            let other_file = write(&dir, "other.pem", &other.pem());
            let stranger = TlsSettings {
                ca_file: Some(other_file),
                ..TlsSettings::default()
            };
            let e = echo_through(&client("localhost", at.port(), stranger), echo).await;
            assert!(tls_error(e.unwrap_err()).contains("unknown CA"));

            // A certificate for another name.
            let elsewhere = ca.server_leaf(&["other.test"]);
            let elsewhere_server = tls_server(&dir, "elsewhere", &elsewhere, "").await;
            let wrong_name = elsewhere_server.addr;
            let e = echo_through(
                &client("localhost", wrong_name.port(), with_ca.clone()),
                echo,
            )
            .await;
            assert!(tls_error(e.unwrap_err()).contains("name mismatch"));

            // An expired certificate.
            let old = ca.leaf(
                &["localhost"],
                (2000, 2001),
                ExtendedKeyUsagePurpose::ServerAuth,
            );
            let old_server = tls_server(&dir, "old", &old, "").await;
            let expired = old_server.addr;
            let e = echo_through(&client("localhost", expired.port(), with_ca.clone()), echo).await;
            assert!(tls_error(e.unwrap_err()).contains("expired"));

            // The pin: the right key passes (on top of the chain), another key is refused.
            let right = socksng_client::spki_sha256(&good.der()).unwrap();
            let pinned = TlsSettings {
                pin_sha256: Some(right),
                ..with_ca.clone()
            };
            echo_through(&client("localhost", at.port(), pinned), echo)
                .await
                .unwrap();
            let mut wrong = right;
            wrong[0] ^= 1;
            let mispinned = TlsSettings {
                pin_sha256: Some(wrong),
                ..with_ca.clone()
            };
            let e = echo_through(&client("localhost", at.port(), mispinned), echo).await;
            assert!(tls_error(e.unwrap_err()).contains("pin mismatch"));
            socksngd.stop().await;
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_when_the_server_asks_for_one() {
    within(
        "a_client_certificate_when_the_server_asks_for_one",
        async move {
            let echo = echo_server("127.0.0.1:0").await;
            let dir = scratch("mtls");
            let ca = Ca::new("socksng test CA");
            let ca_file = write(&dir, "ca.pem", &ca.pem());
            let server = ca.server_leaf(&["localhost"]);
            let asks = "client_ca = \"ca.pem\"\nrequire_client_cert = true";
            let socksngd = tls_server(&dir, "server", &server, asks).await;
            let at = socksngd.addr;
            let alice = ca.leaf(
                &["alice"],
                (2020, 2100),
                ExtendedKeyUsagePurpose::ClientAuth,
            );
            let cert = write(&dir, "alice.pem", &alice.cert_pem);
            let key = write(&dir, "alice.key", &alice.key_pem);
            let with_cert = TlsSettings {
                ca_file: Some(ca_file.clone()),
                client_cert: Some((cert, key)),
                ..TlsSettings::default()
            };
            echo_through(&client("localhost", at.port(), with_cert), echo)
                .await
                .unwrap();
            let without = TlsSettings {
                ca_file: Some(ca_file),
                ..TlsSettings::default()
            };
            let e = echo_through(&client("localhost", at.port(), without), echo).await;
            let words = tls_error(e.unwrap_err());
            assert!(words.contains("client certificate"), "{words}");
            socksngd.stop().await;
        },
    )
    .await;
}

#[test]
fn socks5s_urls_resolve_at_the_proxy_and_take_tls_options() {
    let url = ProxyUrl::parse("socks5s://alice:pw@proxy.example:1443").unwrap();
    assert_eq!(url.resolve, socksng_client::Resolve::Remote);
    assert!(url.tls.is_some());
    assert_eq!(url.to_string(), "socks5s://alice@proxy.example:1443");
    let pinned = url
        .with_tls_options(
            None,
            Some("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="),
            None,
        )
        .unwrap();
    assert_eq!(pinned.tls.unwrap().pin_sha256.unwrap()[1], 1);
    // TLS options on a plain URL are a configuration error.
    let plain = ProxyUrl::parse("socks5h://proxy.example").unwrap();
    assert!(matches!(
        plain.with_tls_options(Some("ca.pem".into()), None, None),
        Err(ClientError::Config(_))
    ));
}
