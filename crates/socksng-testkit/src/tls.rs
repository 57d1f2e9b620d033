//! TLS for tests of SOCKS over TLS: a throwaway CA that signs certificates made for one case
//! (rcgen), the files a socksngd `[tls]` section names, and the section itself.

pub use rcgen::ExtendedKeyUsagePurpose;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use std::path::{Path, PathBuf};

/// A CA that signs the certificates of one case.
pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, both PEM.
#[derive(Debug, Clone)]
pub struct Leaf {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

impl Ca {
    /// A self-signed CA called `name`.
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().expect("a key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.self_signed(&key).expect("a CA certificate");
        Ca { cert, key }
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A leaf for `names` (host names or addresses), valid from January of `years.0` to
    /// January of `years.1`, for `usage`.
    pub fn leaf(&self, names: &[&str], years: (i32, i32), usage: ExtendedKeyUsagePurpose) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.not_before = rcgen::date_time_ymd(years.0, 1, 1);
        params.not_after = rcgen::date_time_ymd(years.1, 1, 1);
        params.extended_key_usages = vec![usage];
        if let Some(first) = names.first() {
            params.distinguished_name.push(DnType::CommonName, *first);
        }
        self.sign(params)
    }

    /// Signs `params` with a fresh key.
    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().expect("a key");
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("a signed leaf");
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `names`, valid now.
    pub fn server_leaf(&self, names: &[&str]) -> Leaf {
        self.leaf(names, (2020, 2100), ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate for `name`, valid now.
    pub fn client_leaf(&self, name: &str) -> Leaf {
        self.leaf(&[name], (2020, 2100), ExtendedKeyUsagePurpose::ClientAuth)
    }

    /// A client certificate whose subject's common name is `cn` and whose only subject
    /// alternative name is the e-mail address `email`.
    pub fn client_leaf_with_email(&self, cn: &str, email: &str) -> Leaf {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("leaf params");
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.distinguished_name.push(DnType::CommonName, cn);
        params.subject_alt_names = vec![rcgen::SanType::Rfc822Name(
            email.try_into().expect("an e-mail address"),
        )];
        self.sign(params)
    }
}

impl Leaf {
    /// Writes the certificate and key to `dir` as `STEM.pem` and `STEM.key`; returns their
    /// paths.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        std::fs::write(&cert, &self.cert_pem).expect("write the certificate");
        std::fs::write(&key, &self.key_pem).expect("write the key");
        (cert, key)
    }

    /// The certificate, DER.
    pub fn der(&self) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(self.cert_pem.as_bytes()).expect("a PEM certificate")
    }
}

/// A socksngd `[tls]` section serving `cert` and `key`, followed by `extra` lines of it.
pub fn tls_section(cert: &Path, key: &Path, extra: &str) -> String {
    format!(
        "[tls]\ncert = {:?}\nkey = {:?}\n{extra}\n",
        cert.display().to_string(),
        key.display().to_string()
    )
}

/// Standard base64 with padding (for curl-style pins in command lines).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_rfc_4648_says() {
        assert_eq!(super::base64(b""), "");
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"fo"), "Zm8=");
        assert_eq!(super::base64(b"foo"), "Zm9v");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
    }
}
