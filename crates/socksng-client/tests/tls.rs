//! SOCKS over TLS from the client's side (`socks5s://`): a TLS terminator written here with
//! rustls stands in front of a real socksngd, with certificates made for each case by rcgen.
//! A good chain is accepted; an unknown CA, a wrong name, an expired certificate and a wrong
//! pin are each refused with the error that names them; a pin and a client certificate work;
//! the ALPN id is offered.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use socksng_client::{Address, Client, ClientError, ProxyUrl, TlsSettings};
use socksng_server::testing::{echo_server, within, TestServer};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const ALLOW_LOOPBACK: &str = "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

/// A CA that signs the certificates of one case.
struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// A leaf for `names`, valid from `from` to `until` (years), for `usage`.
    fn leaf(
        &self,
        names: &[&str],
        years: (i32, i32),
        usage: ExtendedKeyUsagePurpose,
    ) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn server_leaf(&self, names: &[&str]) -> (String, String) {
        self.leaf(names, (2020, 2100), ExtendedKeyUsagePurpose::ServerAuth)
    }
}

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

/// A TLS terminator on 127.0.0.1 in front of `backend`, with `leaf` (PEM chain and key); with
/// `client_ca`, it asks for a client certificate signed by it. It records the ALPN ids the
/// clients got.
async fn terminator(
    backend: SocketAddr,
    leaf: &(String, String),
    client_ca: Option<&Ca>,
) -> (SocketAddr, Arc<Mutex<Vec<Option<Vec<u8>>>>>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(leaf.0.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_slice(leaf.1.as_bytes()).unwrap();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.cert.der().clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(chain, key).unwrap();
    config.alpn_protocols = vec![socksng_client::ALPN_SOCKS.to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let alpn = Arc::new(Mutex::new(Vec::new()));
    let seen = alpn.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                seen.lock()
                    .unwrap()
                    .push(tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec));
                if let Ok(mut plain) = TcpStream::connect(backend).await {
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                }
            });
        }
    });
    (addr, alpn)
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
            let socksngd = TestServer::start(ALLOW_LOOPBACK).await;
            let echo = echo_server("127.0.0.1:0").await;
            let dir = scratch("checks");
            let ca = Ca::new("socksng test CA");
            let ca_file = write(&dir, "ca.pem", &ca.cert.pem());
            let with_ca = TlsSettings {
                ca_file: Some(ca_file.clone()),
                ..TlsSettings::default()
            };

            // A good chain for the name the client asks for (a host name and an address).
            let good = ca.server_leaf(&["localhost", "127.0.0.1"]);
            let (at, alpn) = terminator(socksngd.addr, &good, None).await;
            for host in ["localhost", "127.0.0.1"] {
                echo_through(&client(host, at.port(), with_ca.clone()), echo)
                    .await
                    .unwrap_or_else(|e| panic!("{host}: {e}"));
            }
            assert!(
                alpn.lock()
                    .unwrap()
                    .iter()
                    .all(|a| a.as_deref() == Some(&b"socks"[..])),
                "the ALPN id was offered and agreed"
            );

            // Another CA: unknown.
            let other = Ca::new("someone else");
            let other_file = write(&dir, "other.pem", &other.cert.pem());
            let stranger = TlsSettings {
                ca_file: Some(other_file),
                ..TlsSettings::default()
            };
            let e = echo_through(&client("localhost", at.port(), stranger), echo).await;
            assert!(tls_error(e.unwrap_err()).contains("unknown CA"));

            // A certificate for another name.
            let elsewhere = ca.server_leaf(&["other.test"]);
            let (wrong_name, _) = terminator(socksngd.addr, &elsewhere, None).await;
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
            let (expired, _) = terminator(socksngd.addr, &old, None).await;
            let e = echo_through(&client("localhost", expired.port(), with_ca.clone()), echo).await;
            assert!(tls_error(e.unwrap_err()).contains("expired"));

            // The pin: the right key passes (on top of the chain), another key is refused.
            let der = CertificateDer::from_pem_slice(good.0.as_bytes()).unwrap();
            let right = socksng_client::spki_sha256(&der).unwrap();
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
            let socksngd = TestServer::start(ALLOW_LOOPBACK).await;
            let echo = echo_server("127.0.0.1:0").await;
            let dir = scratch("mtls");
            let ca = Ca::new("socksng test CA");
            let ca_file = write(&dir, "ca.pem", &ca.cert.pem());
            let server = ca.server_leaf(&["localhost"]);
            let (at, _) = terminator(socksngd.addr, &server, Some(&ca)).await;
            let alice = ca.leaf(
                &["alice"],
                (2020, 2100),
                ExtendedKeyUsagePurpose::ClientAuth,
            );
            let cert = write(&dir, "alice.pem", &alice.0);
            let key = write(&dir, "alice.key", &alice.1);
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
