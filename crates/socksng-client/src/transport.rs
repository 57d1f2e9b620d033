//! The connection to a proxy (or, routed direct, to a target): plain TCP, or SOCKS over TLS
//! for `socks5s://` proxies. [`Transport`] reads and writes either way; the TLS settings say
//! which server certificates are trusted (the system roots or a CA file), an optional pin of
//! the server's key (SHA-256 of its SubjectPublicKeyInfo, as curl's --pinnedpubkey), and an
//! optional client certificate. A failed check becomes [`ClientError::Tls`] naming it.

use crate::ClientError;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// The ALPN protocol id SOCKS over TLS offers (docs/draft-socksng.md, "SOCKS over TLS").
pub const ALPN_SOCKS: &[u8] = b"socks";

/// How a TLS connection to a proxy is checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trust only the CA certificates in this PEM file (default: the system's roots).
    pub ca_file: Option<PathBuf>,
    /// Accept only a server whose key has this SHA-256 (of its SubjectPublicKeyInfo).
    pub pin_sha256: Option<[u8; 32]>,
    /// A client certificate chain and its key (PEM files), for servers that ask for one.
    pub client_cert: Option<(PathBuf, PathBuf)>,
}

impl TlsSettings {
    /// Parses curl's pin form, `sha256//BASE64` (several separated by `;`, the first used).
    pub fn parse_pin(text: &str) -> Result<[u8; 32], ClientError> {
        let bad = || ClientError::Config(format!("{text:?}: expected sha256//BASE64"));
        let b64 = text
            .split(';')
            .next()
            .and_then(|p| p.trim().strip_prefix("sha256//"))
            .ok_or_else(bad)?;
        let bytes = base64_decode(b64).ok_or_else(bad)?;
        bytes.try_into().map_err(|_| bad())
    }
}

/// Standard base64 (with padding), for pins.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let text = text.trim_end_matches('=').as_bytes();
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    for chunk in text.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= value(c)? << (18 - 6 * i);
        }
        out.extend_from_slice(&n.to_be_bytes()[1..chunk.len()]);
    }
    Some(out)
}

/// The SHA-256 of a certificate's SubjectPublicKeyInfo: what a pin names.
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Option<[u8; 32]> {
    let parsed = webpki::EndEntityCert::try_from(cert).ok()?;
    let spki = parsed.subject_public_key_info();
    let digest = ring::digest::digest(&ring::digest::SHA256, spki.as_ref());
    digest.as_ref().try_into().ok()
}

/// Verifies as the web PKI does, then checks the pin.
#[derive(Debug)]
struct PinningVerifier {
    inner: Arc<dyn ServerCertVerifier>,
    pin: Option<[u8; 32]>,
}

/// The message a pin mismatch carries through rustls, recognised by [`describe_tls_error`].
const PIN_MISMATCH: &str = "the server's key does not match the pin";

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(pin) = self.pin {
            if spki_sha256(end_entity) != Some(pin) {
                return Err(rustls::Error::InvalidCertificate(CertificateError::Other(
                    rustls::OtherError(Arc::new(io::Error::other(PIN_MISMATCH))),
                )));
            }
        }
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

fn config_error(what: &str, e: impl std::fmt::Display) -> ClientError {
    ClientError::Config(format!("{what}: {e}"))
}

/// A TLS connector for `settings`.
pub(crate) fn connector(settings: &TlsSettings) -> Result<tokio_rustls::TlsConnector, ClientError> {
    Ok(tokio_rustls::TlsConnector::from(client_config(
        settings, ALPN_SOCKS,
    )?))
}

/// A rustls client configuration checking servers as `settings` says, offering `alpn`.
pub(crate) fn client_config(
    settings: &TlsSettings,
    alpn: &[u8],
) -> Result<Arc<rustls::ClientConfig>, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    match &settings.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| config_error(&format!("CA file {}", path.display()), e))?;
            for cert in certs {
                let cert =
                    cert.map_err(|e| config_error(&format!("CA file {}", path.display()), e))?;
                roots
                    .add(cert)
                    .map_err(|e| config_error(&format!("CA file {}", path.display()), e))?;
            }
            if roots.is_empty() {
                return Err(config_error(
                    &format!("CA file {}", path.display()),
                    "no certificate in it",
                ));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                // A system root rustls cannot use is skipped, as browsers skip them.
                let _ = roots.add(cert);
            }
        }
    }
    let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .map_err(|e| config_error("TLS roots", e))?;
    let verifier = Arc::new(PinningVerifier {
        inner: webpki,
        pin: settings.pin_sha256,
    });
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| config_error("TLS", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match &settings.client_cert {
        Some((cert, key)) => {
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect())
                .map_err(|e| config_error(&format!("client certificate {}", cert.display()), e))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| config_error(&format!("client key {}", key.display()), e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| config_error("client certificate", e))?
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(config))
}

/// The TLS failure in `e` in words that name the check that failed.
pub(crate) fn describe_tls_error(e: &io::Error) -> Option<String> {
    let inner = e.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(match inner {
        rustls::Error::InvalidCertificate(why) => {
            let check = match why {
                CertificateError::UnknownIssuer => "unknown CA".to_string(),
                CertificateError::NotValidForName
                | CertificateError::NotValidForNameContext { .. } => {
                    "name mismatch: the certificate is not for this host".to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                    "expired".to_string()
                }
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "not valid yet".to_string()
                }
                CertificateError::Revoked => "revoked".to_string(),
                CertificateError::Other(other) if other.to_string().contains(PIN_MISMATCH) => {
                    format!("pin mismatch: {PIN_MISMATCH}")
                }
                other => format!("{other:?}"),
            };
            format!("the server's certificate was refused: {check}")
        }
        rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired) => {
            "the server requires a client certificate".to_string()
        }
        rustls::Error::AlertReceived(alert) => format!("the server refused: {alert:?}"),
        other => other.to_string(),
    })
}

/// A connection to a proxy or a target: plain, or TLS for `socks5s://`.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Tcp(TcpStream),
    /// SOCKS over TLS.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Transport {
    /// The TCP connection underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(s) => s.get_ref().0,
        }
    }

    /// The far end's address.
    pub fn peer_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().peer_addr()
    }

    /// This end's address.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.tcp().local_addr()
    }

    /// Whether this is SOCKS over TLS.
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// The ALPN protocol id agreed with the server, over TLS.
    pub fn alpn(&self) -> Option<&[u8]> {
        match self {
            Transport::Tcp(_) => None,
            Transport::Tls(s) => s.get_ref().1.alpn_protocol(),
        }
    }
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_in_curls_form() {
        let pin =
            TlsSettings::parse_pin("sha256//AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=").unwrap();
        assert_eq!(pin[0], 0);
        assert_eq!(pin[31], 31);
        assert!(TlsSettings::parse_pin("sha1//AAAA").is_err());
        assert!(TlsSettings::parse_pin("sha256//AAAA").is_err(), "too short");
        assert_eq!(base64_decode("aGk="), Some(b"hi".to_vec()));
    }
}
