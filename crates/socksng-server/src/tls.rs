//! SOCKS over TLS on the server side (docs/draft-socksng.md section 6.4): the rustls server
//! configuration (ALPN "socks", session resumption by tickets), the certificate store that
//! SIGHUP swaps without touching running sessions, client certificates and the user they
//! name, and the task that carries one TLS connection (a client's, or an upstream's): it
//! decrypts into a socket pair whose other end is the session's `Plaintext`, and encrypts
//! what comes back.
//!
//! Why a socket pair: every command works on kernel sockets (readiness for the UDP tunnel,
//! splice for bulk relays); the TLS record layer lives in user space. The pair keeps one code
//! path for every command, at the cost of one more copy per byte, the design stunnel uses with
//! a socket between two processes.

use crate::config::{CertUserField, TlsConfig};
use crate::stream::TlsLink;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

/// The first byte of a TLS record carrying a handshake message (RFC 8446 section 5.1).
pub(crate) const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{what} {path}: {why}")]
    File {
        /// What the file was meant to hold.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The reason.
        why: String,
    },
    /// rustls refused the settings (a key that does not match the certificate, say).
    #[error("TLS settings: {0}")]
    Settings(String),
}

fn file_error(what: &'static str, path: &Path, why: impl std::fmt::Display) -> TlsError {
    TlsError::File {
        what,
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

fn load_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "no certificate in it"));
    }
    Ok(certs)
}

/// Reads the chain and key and checks that they belong together.
fn load_certified_key(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = load_certs("certificate chain", cert)?;
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error("key", key, e))?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| file_error("key", key, e))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|e| {
        file_error(
            "key",
            key,
            format!("does not match the certificate {}: {e}", cert.display()),
        )
    })?;
    Ok(Arc::new(certified))
}

/// The server's certificate, swapped whole on reload; handshakes under way keep the one they
/// started with.
#[derive(Debug)]
struct CertStore {
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

/// SOCKS over TLS, ready to accept connections.
pub(crate) struct TlsService {
    acceptor: tokio_rustls::TlsAcceptor,
    store: Arc<CertStore>,
    cert: PathBuf,
    key: PathBuf,
    user_from: CertUserField,
}

impl TlsService {
    /// Loads the certificate, key and client CAs of `cfg` (paths relative to `base`).
    pub(crate) fn new(cfg: &TlsConfig, base: &Path) -> Result<TlsService, TlsError> {
        let (cert, key) = (base.join(&cfg.cert), base.join(&cfg.key));
        let store = Arc::new(CertStore {
            current: RwLock::new(load_certified_key(&cert, &key)?),
        });
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?;
        let builder = match &cfg.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let path = base.join(ca);
                let mut roots = rustls::RootCertStore::empty();
                for c in load_certs("client CA file", &path)? {
                    roots
                        .add(c)
                        .map_err(|e| file_error("client CA file", &path, e))?;
                }
                let verifier =
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let verifier = if cfg.require_client_cert {
                    verifier
                } else {
                    verifier.allow_unauthenticated()
                };
                let verifier = verifier
                    .build()
                    .map_err(|e| TlsError::Settings(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_cert_resolver(store.clone());
        config.alpn_protocols = vec![b"socks".to_vec()];
        // Stateless resumption: a returning client skips the key exchange and the
        // certificate, and the server keeps no per-client state for it.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Settings(e.to_string()))?;
        Ok(TlsService {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            store,
            cert,
            key,
            user_from: cfg.user_from,
        })
    }

    /// Reads the certificate and key again; new handshakes use them, running sessions are
    /// untouched. On error the old pair stays in force.
    pub(crate) fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.cert, &self.key)?;
        *self
            .store
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// Runs the server side of the TLS handshake; the client's certificate user comes with
    /// the stream, if it presented a certificate that names one.
    pub(crate) async fn accept(
        &self,
        tcp: TcpStream,
    ) -> io::Result<(TlsStream<TcpStream>, Option<String>)> {
        let tls = self.acceptor.accept(tcp).await?;
        let user = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(|leaf| cert_user(leaf, self.user_from));
        Ok((tls, user))
    }
}

/// Checks the `[tls]` files of a configuration as the server would load them.
pub fn check_tls(cfg: &crate::Config) -> Result<(), TlsError> {
    match &cfg.tls {
        Some(t) => TlsService::new(t, &cfg.base_dir).map(drop),
        None => Ok(()),
    }
}

/// The user a certificate names in `field`.
pub(crate) fn cert_user(cert: &CertificateDer<'_>, field: CertUserField) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let name = match field {
        CertUserField::Cn => parsed
            .subject()
            .iter_common_name()
            .next()?
            .as_str()
            .ok()?
            .to_owned(),
        CertUserField::Email | CertUserField::Dns => {
            let san = parsed.subject_alternative_name().ok()??;
            san.value
                .general_names
                .iter()
                .find_map(|n| match (n, field) {
                    (GeneralName::RFC822Name(e), CertUserField::Email) => Some(e.to_string()),
                    (GeneralName::DNSName(d), CertUserField::Dns) => Some(d.to_string()),
                    _ => None,
                })?
        }
    };
    // A user name travels in logs and rules: no control characters, and within the RFC 1929
    // limit so that the same user can also log in with a password.
    (!name.is_empty() && name.len() <= 255 && !name.chars().any(char::is_control)).then_some(name)
}

/// Plaintext moved per read in each direction of a TLS connection.
const PUMP_CHUNK: usize = 16 * 1024;

/// Carries one TLS connection until both directions are done: what the peer sends, decrypted,
/// into `inner` (the session's socket pair end), and what the session writes, encrypted, back.
/// A peer that resets or breaks TLS is reported through `link` and ends both directions at
/// once; a session that asks for a reset gets one on the TCP connection `tcp_fd` (the TLS
/// stream's own, which lives as long as `tls`).
pub(crate) async fn carry(
    tls: impl AsyncRead + AsyncWrite + Unpin,
    tcp_fd: std::os::fd::RawFd,
    inner: UnixStream,
    link: Arc<TlsLink>,
) {
    let (tls_read, tls_write) = tokio::io::split(tls);
    let (inner_read, inner_write) = inner.into_split();
    let up = copy_half(tls_read, inner_write, Direction::Up);
    let down = copy_half(inner_read, tls_write, Direction::Down(&link));
    tokio::pin!(up, down);
    let (mut up_done, mut down_done) = (false, false);
    // Once the session has closed its end (and close_notify went out), a peer that neither
    // closes nor sends gets this long before its connection is closed.
    let linger = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(linger);
    while !(up_done && down_done) {
        tokio::select! {
            ok = &mut up, if !up_done => {
                if !ok {
                    link.set_gone();
                    return;
                }
                up_done = true;
            }
            ok = &mut down, if !down_done => {
                if !ok {
                    return;
                }
                if link.wants_reset() {
                    // SAFETY: the TLS stream, and with it the descriptor, lives until this
                    // function returns.
                    let tcp = unsafe { std::os::fd::BorrowedFd::borrow_raw(tcp_fd) };
                    let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
                    return;
                }
                down_done = true;
                linger.as_mut().reset(tokio::time::Instant::now() + PEER_LINGER);
            }
            _ = &mut linger => return,
        }
    }
}

/// How long a TLS peer may stay silent after the session has ended and said so.
const PEER_LINGER: std::time::Duration = std::time::Duration::from_secs(10);

/// Which way a half of the TLS connection carries bytes.
enum Direction<'a> {
    /// Peer to session.
    Up,
    /// Session to peer; the session's wish for a reset is in the link.
    Down(&'a TlsLink),
}

/// A socket pair for a TLS connection: the session's `Plaintext` end, and the future that
/// carries the TLS connection through the other end until both are done.
pub(crate) fn bridge(
    tls: impl AsyncRead + AsyncWrite + Unpin,
    tcp_fd: std::os::fd::RawFd,
) -> io::Result<(
    crate::stream::Plaintext,
    impl std::future::Future<Output = ()>,
)> {
    let (session_end, tls_end) = UnixStream::pair()?;
    let link = Arc::new(TlsLink::default());
    let plaintext = crate::stream::Plaintext::Tls(session_end, link.clone());
    Ok((plaintext, carry(tls, tcp_fd, tls_end, link)))
}

/// Copies until EOF, then half-closes the writer (a TLS close_notify toward the peer); false
/// when either side failed. A peer that closes TCP without close_notify has closed, not
/// failed: most SOCKS clients do.
async fn copy_half(
    mut from: impl AsyncRead + Unpin,
    mut to: impl AsyncWrite + Unpin,
    direction: Direction<'_>,
) -> bool {
    let mut buf = vec![0u8; PUMP_CHUNK];
    loop {
        match from.read(&mut buf).await {
            Ok(0) => {
                if let Direction::Down(link) = direction {
                    if link.wants_reset() {
                        return true;
                    }
                }
                return to.shutdown().await.is_ok();
            }
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return to.shutdown().await.is_ok();
            }
            Err(_) => return false,
        }
    }
}
