//! Proxy URLs in the ecosystem's conventions (`socks5://`, `socks5h://`, `user:pass@`,
//! percent-encoding, bracketed IPv6) and the ALL_PROXY / NO_PROXY environment variables.

use crate::ClientError;
use std::fmt;

/// Where names are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolve {
    /// `socks5://`: the client resolves names and sends addresses (curl's convention).
    Local,
    /// `socks5h://`: names go to the proxy, which resolves them.
    Remote,
}

/// Which protocol the proxy is spoken to in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SocksVersion {
    /// `socks4://` and `socks4a://`: SOCKS4, CONNECT and BIND only, no login.
    Socks4,
    /// `socks5://` and `socks5h://`: SOCKS5, with SOCKS-NG offered.
    #[default]
    Socks5,
}

/// A parsed proxy URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ProxyUrl {
    /// SOCKS4 or SOCKS5.
    pub version: SocksVersion,
    /// Host name or address literal (without IPv6 brackets).
    pub host: String,
    /// Port; 1080 when the URL gives none.
    pub port: u16,
    /// Username and password, percent-decoded.
    pub credentials: Option<(String, String)>,
    /// Who resolves target names.
    pub resolve: Resolve,
    /// SOCKS over TLS (`socks5s://`), and how the server is checked; `None`: plain TCP.
    pub tls: Option<crate::TlsSettings>,
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyUrl")
            .field("version", &self.version)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.credentials.as_ref().map(|c| &c.0))
            .field("resolve", &self.resolve)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// The URL without the password: what may be shown in logs and output.
impl fmt::Display for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match (self.version, self.resolve, self.tls.is_some()) {
            (SocksVersion::Socks5, _, true) => "socks5s",
            (SocksVersion::Socks4, Resolve::Local, _) => "socks4",
            (SocksVersion::Socks4, Resolve::Remote, _) => "socks4a",
            (SocksVersion::Socks5, Resolve::Local, _) => "socks5",
            (SocksVersion::Socks5, Resolve::Remote, _) => "socks5h",
        };
        write!(f, "{scheme}://")?;
        if let Some((user, _)) = &self.credentials {
            write!(f, "{user}@")?;
        }
        f.write_str(&self.host_port())
    }
}

/// `text` with the password of a URL's `user:password@` part replaced by `***`, for error
/// messages about text that may hold one.
pub fn redact(text: &str) -> String {
    let start = text.find("://").map_or(0, |i| i + 3);
    // The last '@' of the whole rest: a password with an unencoded '/', '?' or '#' must not
    // end the search early and slip through.
    match text[start..].rfind('@') {
        Some(at) => {
            let userinfo = &text[start..start + at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &text[..start], &text[start + at..]),
                None => text.to_string(),
            }
        }
        None => text.to_string(),
    }
}

/// Decodes `s`; errors name `what` (never repeating it: it may be a password).
fn percent_decode(s: &str, what: &str) -> Result<String, ClientError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ClientError::BadUrl(format!("bad percent-encoding in the {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ClientError::BadUrl(format!("the {what} is not UTF-8")))
}

impl ProxyUrl {
    /// Parses `socks5://[user[:pass]@]host[:port][/]` and curl's other schemes: `socks5h`
    /// (the proxy resolves names), `socks4` and `socks4a` (SOCKS4; 4a lets the proxy resolve).
    /// A bare `host:port` is taken as `socks5h`, the safe default (no local DNS leak). Errors
    /// never repeat a password.
    pub fn parse(url: &str) -> Result<ProxyUrl, ClientError> {
        let shown = redact(url);
        let bad = |why: &str| ClientError::BadUrl(format!("{shown:?}: {why}"));
        let (scheme, rest) = match url.split_once("://") {
            Some((s, r)) => (s.to_ascii_lowercase(), r),
            None => ("socks5h".to_string(), url),
        };
        let (version, resolve, tls) = match scheme.as_str() {
            "socks5" => (SocksVersion::Socks5, Resolve::Local, None),
            "socks5h" | "socks" => (SocksVersion::Socks5, Resolve::Remote, None),
            // SOCKS over TLS, names resolved by the proxy as with socks5h.
            "socks5s" => (
                SocksVersion::Socks5,
                Resolve::Remote,
                Some(crate::TlsSettings::default()),
            ),
            "socks4" => (SocksVersion::Socks4, Resolve::Local, None),
            "socks4a" => (SocksVersion::Socks4, Resolve::Remote, None),
            other => return Err(bad(&format!("unsupported scheme {other:?}"))),
        };
        let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let credentials = match userinfo {
            None => None,
            Some(u) => {
                let (user, pass) = u.split_once(':').unwrap_or((u, ""));
                Some((
                    percent_decode(user, "user name")?,
                    percent_decode(pass, "password")?,
                ))
            }
        };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
            if h.parse::<std::net::Ipv6Addr>().is_err() {
                return Err(bad("not an IPv6 address in brackets"));
            }
            let port = match after {
                "" => None,
                _ => Some(
                    after
                        .strip_prefix(':')
                        .ok_or_else(|| bad("junk after ']'"))?,
                ),
            };
            (h.to_string(), port)
        } else if hostport.matches(':').count() > 1 {
            return Err(bad("IPv6 addresses go in brackets: [2001:db8::1]:1080"));
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h.to_string(), Some(p)),
                None => (hostport.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(bad("no host"));
        }
        let port = match port {
            None | Some("") => 1080,
            Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse() {
                Ok(0) | Err(_) => return Err(bad("bad port")),
                Ok(n) => n,
            },
            Some(_) => return Err(bad("bad port")),
        };
        Ok(ProxyUrl {
            version,
            host,
            port,
            credentials,
            resolve,
            tls,
        })
    }

    /// The URL with TLS checks set: a CA file, a pin (`sha256//BASE64`), a client
    /// certificate and key. Any of them on a URL that is not `socks5s://` is an error.
    pub fn with_tls_options(
        mut self,
        ca_file: Option<std::path::PathBuf>,
        pin: Option<&str>,
        client_cert: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Result<ProxyUrl, ClientError> {
        if ca_file.is_none() && pin.is_none() && client_cert.is_none() {
            return Ok(self);
        }
        let Some(tls) = self.tls.as_mut() else {
            return Err(ClientError::Config(format!(
                "{self}: TLS options for a proxy that is not socks5s://"
            )));
        };
        if ca_file.is_some() {
            tls.ca_file = ca_file;
        }
        if let Some(pin) = pin {
            tls.pin_sha256 = Some(crate::TlsSettings::parse_pin(pin)?);
        }
        if client_cert.is_some() {
            tls.client_cert = client_cert;
        }
        Ok(self)
    }

    /// `host:port`, an IPv6 host in brackets.
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The proxy from `ALL_PROXY` or `all_proxy` (curl's order: lower case first), unless
    /// `target_host` matches `NO_PROXY`/`no_proxy`. `None` when no proxy applies.
    pub fn from_env(target_host: &str) -> Result<Option<ProxyUrl>, ClientError> {
        let Some((all, no)) = env_proxy() else {
            return Ok(None);
        };
        if let Some(no) = no {
            if no_proxy_matches(&no, target_host) {
                return Ok(None);
            }
        }
        ProxyUrl::parse(&all).map(Some)
    }
}

/// The first of the variables `names` that is set, when it is not empty.
fn env_first(names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| std::env::var(n).ok())
        .filter(|v| !v.is_empty())
}

/// ALL_PROXY (curl's order: `all_proxy` first), when set and not empty.
pub fn env_all_proxy() -> Option<String> {
    env_first(&["all_proxy", "ALL_PROXY"])
}

/// NO_PROXY (curl's order: `no_proxy` first), when set and not empty.
pub fn env_no_proxy() -> Option<String> {
    env_first(&["no_proxy", "NO_PROXY"])
}

/// ALL_PROXY and NO_PROXY from the environment, when ALL_PROXY is set and not empty.
pub(crate) fn env_proxy() -> Option<(String, Option<String>)> {
    Some((env_all_proxy()?, env_no_proxy()))
}

/// NO_PROXY as curl reads it: `*` for everything, else comma-separated names that match the
/// host itself or any name below it (a leading dot is optional), or exact address literals.
pub fn no_proxy_matches(no_proxy: &str, host: &str) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    no_proxy
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            // An address prefix matches address literals inside it (curl 7.86 and later);
            // an IPv6 one may be written with brackets, [2001:db8::]/32.
            let unbracketed = entry.replacen('[', "", 1).replacen(']', "", 1);
            if let (Ok(net), Ok(ip)) = (
                unbracketed.parse::<ipnet::IpNet>(),
                host.parse::<std::net::IpAddr>(),
            ) {
                return net.contains(&ip);
            }
            let entry = entry
                .trim_start_matches('.')
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_ascii_lowercase();
            host == entry || host.ends_with(&format!(".{entry}"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schemes_credentials_and_ports() {
        let u = ProxyUrl::parse("socks5h://al%40ice:p%3Ass@proxy.example:1081/").unwrap();
        assert_eq!(u.host, "proxy.example");
        assert_eq!(u.port, 1081);
        assert_eq!(u.credentials, Some(("al@ice".into(), "p:ss".into())));
        assert_eq!(u.resolve, Resolve::Remote);
        let u = ProxyUrl::parse("SOCKS5://[::1]").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.resolve),
            ("::1", 1080, Resolve::Local)
        );
        let u = ProxyUrl::parse("127.0.0.1:9050").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.resolve),
            ("127.0.0.1", 9050, Resolve::Remote)
        );
        assert!(!format!("{u:?}").contains("pass"));
        let shown = ProxyUrl::parse("socks5h://al:secret@[::1]:1081")
            .unwrap()
            .to_string();
        assert_eq!(shown, "socks5h://al@[::1]:1081");
        assert!(ProxyUrl::parse("http://proxy:8080").is_err());
        assert!(ProxyUrl::parse("socks5://:1080").is_err());
        assert!(ProxyUrl::parse("socks5://h:99999").is_err());
        assert!(ProxyUrl::parse("socks5://u%zz@h").is_err());
        assert!(ProxyUrl::parse("socks5://u%+1@h").is_err());
        assert!(ProxyUrl::parse("socks5://[::1]junk").is_err());
        assert!(ProxyUrl::parse("socks5://[not-v6]:1080").is_err());
        assert!(ProxyUrl::parse("socks5://2001:db8::1").is_err());
        assert!(ProxyUrl::parse("socks5://h:+80").is_err());
        assert!(ProxyUrl::parse("socks5://h:0").is_err());
    }

    #[test]
    fn no_proxy_rules() {
        assert!(no_proxy_matches(
            "localhost, .corp.example",
            "host.corp.example"
        ));
        assert!(no_proxy_matches("corp.example", "corp.example"));
        assert!(!no_proxy_matches("corp.example", "notcorp.example"));
        assert!(no_proxy_matches("*", "anything"));
        assert!(no_proxy_matches("::1", "[::1]"));
        assert!(no_proxy_matches("10.0.0.0/8, [2001:db8::]/32", "10.1.2.3"));
        assert!(no_proxy_matches("2001:db8::/32", "[2001:db8::7]"));
        assert!(no_proxy_matches("[2001:db8::]/32", "2001:db8::7"));
        assert!(!no_proxy_matches("10.0.0.0/8", "11.0.0.1"));
        assert!(!no_proxy_matches("", "x"));
    }
}
