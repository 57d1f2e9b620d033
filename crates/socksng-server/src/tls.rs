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
    /// HTTPS on the discovery port (`/.well-known/pvd`, draft section 10.6): the same
    /// certificate, ALPN http/1.1, no client certificates.
    https: tokio_rustls::TlsAcceptor,
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
                    WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
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
        let mut https = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Settings(e.to_string()))?
            .with_no_client_auth()
            .with_cert_resolver(store.clone());
        https.alpn_protocols = vec![b"http/1.1".to_vec()];
        let mut config = builder.with_cert_resolver(store.clone());
        config.alpn_protocols = vec![b"socks".to_vec()];
        // Stateless resumption: a returning client skips the key exchange and the
        // certificate, and the server keeps no per-client state for it.
        config.ticketer =
            rustls::crypto::ring::Ticketer::new().map_err(|e| TlsError::Settings(e.to_string()))?;
        Ok(TlsService {
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
            https: tokio_rustls::TlsAcceptor::from(Arc::new(https)),
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

    /// Runs the server side of an HTTPS handshake on the discovery port.
    pub(crate) async fn accept_https(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.https.accept(tcp).await
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

/// The user a certificate names in `field`. The certificate was verified by rustls; this
/// only reads it.
pub(crate) fn cert_user(cert: &CertificateDer<'_>, field: CertUserField) -> Option<String> {
    let name = match field {
        CertUserField::Dns => {
            let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
            parsed.valid_dns_names().next()?.to_owned()
        }
        CertUserField::Cn => {
            let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
            der::common_name(parsed.subject())?
        }
        CertUserField::Email => der::san_email(cert.as_ref())?,
    };
    // A user name travels in logs and rules: no control characters, and within the RFC 1929
    // limit so that the same user can also log in with a password. Names that rules read as
    // a group ("@name") or as "any user" ("*") are no one's.
    let usable = !name.is_empty()
        && name.len() <= 255
        && !name.chars().any(char::is_control)
        && !name.starts_with('@')
        && name != "*";
    usable.then_some(name)
}

/// The two certificate fields webpki does not hand out, read from the DER: the subject's
/// common name and the first e-mail address (rfc822Name) of the subject alternative names.
mod der {
    /// OID 2.5.4.3, id-at-commonName, as its DER contents.
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    /// OID 2.5.29.17, id-ce-subjectAltName.
    const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    const SEQUENCE: u8 = 0x30;
    const SET: u8 = 0x31;
    const OID: u8 = 0x06;
    const OCTET_STRING: u8 = 0x04;
    const BOOLEAN: u8 = 0x01;
    /// [3] EXPLICIT, constructed: the extensions of a TBSCertificate.
    const EXTENSIONS: u8 = 0xa3;
    /// [1] IMPLICIT IA5String in GeneralName: rfc822Name.
    const RFC822_NAME: u8 = 0x81;

    /// One DER element at the start of `input`: its tag, its contents and what follows.
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, rest) = input.split_first()?;
        let (&first, rest) = rest.split_first()?;
        let (len, rest) = if first < 0x80 {
            (usize::from(first), rest)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n]
                .iter()
                .fold(0usize, |l, &b| (l << 8) | usize::from(b));
            (len, &rest[n..])
        };
        (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
    }

    /// The elements inside `contents`, in order; stops at the first malformed one.
    fn elements(mut contents: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
        std::iter::from_fn(move || {
            let (tag, value, rest) = element(contents)?;
            contents = rest;
            Some((tag, value))
        })
    }

    /// The first CN of a Name's contents (a SEQUENCE OF SET OF AttributeTypeAndValue).
    pub(super) fn common_name(subject: &[u8]) -> Option<String> {
        elements(subject)
            .filter(|(tag, _)| *tag == SET)
            .flat_map(|(_, set)| elements(set))
            .filter(|(tag, _)| *tag == SEQUENCE)
            .find_map(|(_, attribute)| {
                let mut parts = elements(attribute);
                let (OID, oid) = parts.next()? else {
                    return None;
                };
                let (_, value) = parts.next()?;
                (oid == COMMON_NAME)
                    .then(|| std::str::from_utf8(value).ok().map(str::to_owned))
                    .flatten()
            })
    }

    /// The first rfc822Name among a certificate's subject alternative names.
    pub(super) fn san_email(cert: &[u8]) -> Option<String> {
        let (SEQUENCE, certificate, _) = element(cert)? else {
            return None;
        };
        let (SEQUENCE, tbs, _) = element(certificate)? else {
            return None;
        };
        let (_, extensions) = elements(tbs).find(|(tag, _)| *tag == EXTENSIONS)?;
        let (SEQUENCE, list, _) = element(extensions)? else {
            return None;
        };
        let san = elements(list).find_map(|(_, extension)| {
            let mut parts = elements(extension);
            let (OID, oid) = parts.next()? else {
                return None;
            };
            if oid != SUBJECT_ALT_NAME {
                return None;
            }
            parts
                .find(|(tag, _)| *tag != BOOLEAN)
                .filter(|(tag, _)| *tag == OCTET_STRING)
                .map(|(_, value)| value)
        })?;
        let (SEQUENCE, names, _) = element(san)? else {
            return None;
        };
        elements(names)
            .find(|(tag, _)| *tag == RFC822_NAME)
            .and_then(|(_, email)| std::str::from_utf8(email).ok().map(str::to_owned))
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn malformed_input_is_none_never_a_panic() {
            for bad in [
                &[][..],
                &[0x30],
                &[0x30, 0x85, 1, 2, 3, 4, 5],
                &[0x30, 0x05, 1],
            ] {
                assert_eq!(super::san_email(bad), None);
                assert_eq!(super::common_name(bad), None);
            }
        }
    }
}

/// Plaintext moved per read in each direction of a TLS connection.
const PUMP_CHUNK: usize = 16 * 1024;

/// Carries one TLS connection until both directions are done: what the peer sends, decrypted,
/// into `inner` (the session's socket pair end), and what the session writes, encrypted, back.
/// A peer that resets or breaks TLS is reported through `link` and ends both directions at
/// once. Once the session has dropped its end: a reset it asked for is sent at once on the
/// TCP connection `tcp_fd` (the TLS stream's own, which lives as long as `tls`); otherwise
/// what is left goes out within `drain` (zero: no limit), so a peer that stops reading cannot
/// keep the task, uncounted, forever.
pub(crate) async fn carry(
    tls: impl AsyncRead + AsyncWrite + Unpin,
    tcp_fd: std::os::fd::RawFd,
    inner: UnixStream,
    link: Arc<TlsLink>,
    drain: std::time::Duration,
) {
    let reset = || {
        // SAFETY: the TLS stream, and with it the descriptor, lives until this function
        // returns, and every caller of this closure returns right after it.
        let tcp = unsafe { std::os::fd::BorrowedFd::borrow_raw(tcp_fd) };
        let _ = socket2::SockRef::from(&tcp).set_linger(Some(std::time::Duration::ZERO));
    };
    let (tls_read, tls_write) = tokio::io::split(tls);
    let (inner_read, inner_write) = inner.into_split();
    let up = copy_half(tls_read, inner_write, Direction::Up);
    let down = copy_from_session(inner_read, tls_write, &link);
    let ended = link.session_ended();
    tokio::pin!(up, down, ended);
    let (mut up_done, mut down_done, mut session_ended) = (false, false, false);
    // After the session's end: the drain deadline, then (once close_notify went out) a short
    // wait for the peer to close, which it should do at once.
    let deadline = tokio::time::sleep(std::time::Duration::MAX);
    tokio::pin!(deadline);
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
                    return reset();
                }
                down_done = true;
                deadline.as_mut().reset(tokio::time::Instant::now() + PEER_LINGER);
            }
            () = &mut ended, if !session_ended => {
                session_ended = true;
                if link.wants_reset() {
                    return reset();
                }
                if !down_done && !drain.is_zero() {
                    deadline.as_mut().reset(tokio::time::Instant::now() + drain);
                }
            }
            () = &mut deadline => {
                if !down_done {
                    // What the session wrote did not all reach the peer: not a clean end.
                    reset();
                }
                return;
            }
        }
    }
}

/// How long a TLS peer may stay silent after the session has ended and said so.
const PEER_LINGER: std::time::Duration = std::time::Duration::from_secs(2);

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
    drain: std::time::Duration,
) -> io::Result<(
    crate::stream::Plaintext,
    impl std::future::Future<Output = ()>,
)> {
    let (session_end, tls_end) = UnixStream::pair()?;
    let link = Arc::new(TlsLink::default());
    let plaintext = crate::stream::Plaintext::Tls(session_end, link.clone());
    Ok((plaintext, carry(tls, tcp_fd, tls_end, link, drain)))
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
            Ok(0) => return finish(&mut to, direction).await,
            Ok(n) => {
                if !deliver(&mut to, &buf[..n]).await {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return finish(&mut to, direction).await;
            }
            Err(_) => return false,
        }
    }
}

/// The session-to-peer half of [`copy_half`]: the session's end is a socket, so this waits
/// for it holding no buffer and borrows one from the relay's pool per chunk; an idle TLS
/// connection holds only the peer-to-session buffer.
async fn copy_from_session(
    from: tokio::net::unix::OwnedReadHalf,
    mut to: impl AsyncWrite + Unpin,
    link: &TlsLink,
) -> bool {
    loop {
        if from.readable().await.is_err() {
            return false;
        }
        let mut held = crate::relay::PooledBuf::take();
        let buf = held.bytes();
        match from.try_read(buf) {
            Ok(0) => return finish(&mut to, Direction::Down(link)).await,
            Ok(n) => {
                if !deliver(&mut to, &buf[..n]).await {
                    return false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(_) => return false,
        }
    }
}

/// Writes one chunk, flushed at once: records rustls could not write would otherwise wait for
/// the next chunk, which may never come before the peer answers.
async fn deliver(to: &mut (impl AsyncWrite + Unpin), data: &[u8]) -> bool {
    to.write_all(data).await.is_ok() && to.flush().await.is_ok()
}

/// At the source's EOF: half-closes the destination, unless the session asked for a reset.
async fn finish(to: &mut (impl AsyncWrite + Unpin), direction: Direction<'_>) -> bool {
    if let Direction::Down(link) = direction {
        if link.wants_reset() {
            return true;
        }
    }
    to.shutdown().await.is_ok()
}
