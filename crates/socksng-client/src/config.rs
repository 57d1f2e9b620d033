//! The client-side configuration file (servers, credentials, routes), shared by the `socksng`
//! command and the socksify shim, and the environment fallback (ALL_PROXY / NO_PROXY).
//!
//! ```toml
//! [[server]]
//! name = "office"
//! url = "socks5h://alice:secret@gw.example:1080"
//! # Destinations for a plain SOCKS5 server, which cannot announce them.
//! ranges = ["10.0.0.0/8", "corp.example"]
//! # Ask a SOCKS-NG server for the ranges it serves (the default).
//! ask = true
//!
//! [[route]]
//! to = ["192.168.0.0/16", "home.arpa"]
//! via = "direct"
//!
//! [options]
//! refresh = "10m"
//! retry_after = "30s"
//! connect_timeout = "10s"
//! # The ranges servers announced, for the next process: "" for none.
//! cache_dir = "/var/cache/socksng"
//! ```

use crate::route::{
    everything, Destination, Origin, Route, Router, RouterOptions, ServerSpec, Via,
};
use crate::{ClientError, ProxyUrl};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The parsed file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientConfig {
    /// `[[server]]`, in tie-breaking order.
    #[serde(default)]
    pub server: Vec<ServerConfig>,
    /// `[[route]]`: configured routes.
    #[serde(default)]
    pub route: Vec<RouteConfig>,
    /// `[options]`.
    #[serde(default)]
    pub options: OptionsConfig,
}

/// One `[[server]]`.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Name used by `[[route]] via` and in tables; defaults to `host:port`.
    pub name: Option<String>,
    /// Proxy URL (`socks5h://`, `socks5://`, `socks5s://` for TLS, `socks4a://`,
    /// `socks4://`; with credentials).
    pub url: String,
    /// TLS (`socks5s://` only): trust the CA certificates in this PEM file instead of the
    /// system's roots.
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
    /// TLS: accept only this server key, `sha256//BASE64` as curl's --pinnedpubkey.
    #[serde(default)]
    pub tls_pin: Option<String>,
    /// TLS: a client certificate chain (PEM), for servers that ask for one.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// TLS: the client certificate's key (PEM).
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Destinations configured for it: prefixes, addresses, domain suffixes, or `*`.
    #[serde(default)]
    pub ranges: Vec<String>,
    /// Ask it for its served ranges.
    #[serde(default = "yes")]
    pub ask: bool,
}

/// Without the URL's password.
impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("url", &crate::redact(&self.url))
            .field("ranges", &self.ranges)
            .field("ask", &self.ask)
            .finish_non_exhaustive()
    }
}

fn yes() -> bool {
    true
}

/// One `[[route]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Destinations: prefixes, addresses, domain suffixes, or `*`.
    pub to: Vec<String>,
    /// Inclusive port ranges such as `"22"` or `"8000-8999"`; empty for every port.
    #[serde(default)]
    pub ports: Vec<String>,
    /// `"direct"` or a server's name.
    pub via: String,
}

/// `[options]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptionsConfig {
    /// Ask the servers again after this long.
    #[serde(with = "humantime_serde")]
    pub refresh: Duration,
    /// Keep a failed server out of the table this long.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
    /// Limit for reaching a proxy or a direct target.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Where announced ranges are cached; default `$XDG_CACHE_HOME/socksng` (or
    /// `~/.cache/socksng`); an empty string for no cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for OptionsConfig {
    fn default() -> Self {
        let d = RouterOptions::default();
        OptionsConfig {
            refresh: d.refresh,
            retry_after: d.retry_after,
            connect_timeout: d.connect_timeout,
            cache_dir: None,
        }
    }
}

/// The user's socksng directory of one XDG kind: `$VAR/socksng`, else `~/FALLBACK/socksng`.
fn xdg_dir(var: &str, fallback: &str) -> Option<PathBuf> {
    std::env::var_os(var)
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(fallback)))
        .map(|d| d.join("socksng"))
}

/// `$XDG_CACHE_HOME/socksng`, else `~/.cache/socksng`.
pub fn default_cache_dir() -> Option<PathBuf> {
    xdg_dir("XDG_CACHE_HOME", ".cache")
}

fn destinations(list: &[String]) -> Result<Vec<Destination>, ClientError> {
    let mut out = Vec::new();
    for d in list {
        if d.trim() == "*" {
            out.extend(everything());
        } else {
            out.push(Destination::parse(d)?);
        }
    }
    Ok(out)
}

fn port_range(text: &str) -> Result<(u16, u16), ClientError> {
    let bad = || ClientError::Config(format!("bad port range {text:?}"));
    let (lo, hi) = text.split_once('-').unwrap_or((text, text));
    let lo: u16 = lo.trim().parse().map_err(|_| bad())?;
    let hi: u16 = hi.trim().parse().map_err(|_| bad())?;
    if lo > hi {
        return Err(bad());
    }
    Ok((lo, hi))
}

impl ClientConfig {
    /// Parses the file's text.
    pub fn from_toml(text: &str) -> Result<ClientConfig, ClientError> {
        // The parser's own message quotes the failing line, which may hold a password: only
        // its words and the line number go out.
        toml::from_str(text).map_err(|e: toml::de::Error| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            ClientError::Config(match line {
                Some(n) => format!("line {n}: {}", e.message()),
                None => e.message().to_string(),
            })
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<ClientConfig, ClientError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ClientError::Config(format!("cannot read {}: {e}", path.display())))?;
        Self::from_toml(&text)
    }

    /// Where the file is looked for: `$SOCKSNG_CLIENT_CONFIG`, then
    /// `$XDG_CONFIG_HOME/socksng/client.toml` (or `~/.config/...`), then
    /// `/etc/socksng/client.toml`. The first that exists wins.
    pub fn default_path() -> Option<PathBuf> {
        if let Some(p) = std::env::var_os("SOCKSNG_CLIENT_CONFIG") {
            return Some(PathBuf::from(p));
        }
        let user = xdg_dir("XDG_CONFIG_HOME", ".config").map(|d| d.join("client.toml"));
        user.into_iter()
            .chain([PathBuf::from("/etc/socksng/client.toml")])
            .find(|p| p.is_file())
    }

    /// The router this configuration describes.
    pub fn router(&self) -> Result<Router, ClientError> {
        self.router_with_learned(Vec::new())
    }

    /// The router with the proxies the network announced beside the configured ones (draft
    /// section 10): each is asked what it serves, and its routes only cover destinations no
    /// configured or announced route does. A learned URL with credentials is refused, and one
    /// naming a configured server is that server.
    pub fn router_with_learned(&self, learned: Vec<ProxyUrl>) -> Result<Router, ClientError> {
        let mut servers = Vec::with_capacity(self.server.len() + learned.len());
        for s in &self.server {
            if s.tls_cert.is_some() != s.tls_key.is_some() {
                return Err(ClientError::Config(
                    "tls_cert and tls_key go together".into(),
                ));
            }
            let url = ProxyUrl::parse(&s.url)?.with_tls_options(
                s.tls_ca.clone(),
                s.tls_pin.as_deref(),
                s.tls_cert.clone().zip(s.tls_key.clone()),
            )?;
            let name = s.name.clone().unwrap_or_else(|| url.host_port());
            if name == "direct" || servers.iter().any(|o: &ServerSpec| o.name == name) {
                return Err(ClientError::Config(format!(
                    "server name {name:?} is reserved or used twice"
                )));
            }
            servers.push(ServerSpec {
                name,
                url,
                ranges: destinations(&s.ranges)?,
                ask: s.ask,
                learned: false,
            });
        }
        for url in learned {
            if url.credentials.is_some() {
                return Err(ClientError::Config(format!(
                    "{url}: a proxy the network announced may not carry credentials"
                )));
            }
            let name = format!("learned:{}", url.host_port());
            if servers
                .iter()
                .any(|o: &ServerSpec| o.url.host_port() == url.host_port() || o.name == name)
            {
                continue;
            }
            servers.push(ServerSpec {
                name,
                url,
                ranges: Vec::new(),
                ask: true,
                learned: true,
            });
        }
        let mut routes = Vec::new();
        for r in &self.route {
            let via = if r.via == "direct" {
                Via::Direct
            } else {
                let i = servers
                    .iter()
                    .position(|s| s.name == r.via)
                    .ok_or_else(|| {
                        ClientError::Config(format!("route via {:?}: no such server", r.via))
                    })?;
                Via::Server(i)
            };
            let ports = r
                .ports
                .iter()
                .map(|p| port_range(p))
                .collect::<Result<Vec<_>, _>>()?;
            for destination in destinations(&r.to)? {
                routes.push(Route {
                    destination,
                    ports: ports.clone(),
                    via,
                    origin: Origin::Configured,
                });
            }
        }
        let o = &self.options;
        Ok(Router::new(
            servers,
            routes,
            RouterOptions {
                refresh: o.refresh,
                retry_after: o.retry_after,
                connect_timeout: o.connect_timeout,
                cache_dir: match &o.cache_dir {
                    Some(d) if d.as_os_str().is_empty() => None,
                    Some(d) => Some(d.clone()),
                    None => default_cache_dir(),
                },
            },
        ))
    }

    /// The configuration the environment implies: ALL_PROXY (or all_proxy) for everything,
    /// with the NO_PROXY names and addresses going direct. `None` without ALL_PROXY.
    pub fn from_env() -> Result<Option<ClientConfig>, ClientError> {
        let Some((all, no)) = crate::url::env_proxy() else {
            return Ok(None);
        };
        let mut cfg = ClientConfig {
            server: vec![ServerConfig {
                name: None,
                url: all,
                ranges: vec!["*".into()],
                ask: false,
                tls_ca: None,
                tls_pin: None,
                tls_cert: None,
                tls_key: None,
            }],
            ..Default::default()
        };
        if let Some(no) = no {
            // Entries that are neither names nor addresses (with a port, say) are skipped,
            // as curl skips what it cannot match.
            let direct: Vec<String> = no
                .split(',')
                .map(|e| e.trim().replacen('[', "", 1).replacen(']', "", 1))
                .filter(|e| e == "*" || Destination::parse(e).is_ok())
                .collect();
            if !direct.is_empty() {
                cfg.route.push(RouteConfig {
                    to: direct,
                    ports: Vec::new(),
                    via: "direct".into(),
                });
            }
        }
        Ok(Some(cfg))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_builds_a_router() {
        let cfg = ClientConfig::from_toml(
            r#"
[[server]]
name = "office"
url = "socks5h://a:b@127.0.0.1:1081"
ranges = ["10.0.0.0/8", "corp.example"]
ask = false

[[server]]
url = "socks5://127.0.0.1:1082"

[[route]]
to = ["10.9.0.0/16"]
ports = ["22", "8000-8999"]
via = "direct"

[options]
retry_after = "5s"
"#,
        )
        .unwrap();
        assert_eq!(cfg.options.retry_after, Duration::from_secs(5));
        let router = cfg.router().unwrap();
        let servers = router.servers();
        assert_eq!(servers[1].0.name, "127.0.0.1:1082");
        assert!(servers[1].0.ask);
        let table = router.table();
        assert_eq!(table.routes().len(), 3);
        assert_eq!(table.routes()[0].ports, vec![(22, 22), (8000, 8999)]);
        let r = table.for_name("git.corp.example", 443, &|_| true).unwrap();
        assert_eq!(table.via_name(r.via), "office");
    }

    #[test]
    fn bad_files_say_why() {
        for (text, why) in [
            ("[[server]]\nurl = \"http://x\"\n", "unsupported scheme"),
            (
                "[[route]]\nto = [\"*\"]\nvia = \"nowhere\"\n",
                "no such server",
            ),
            (
                "[[route]]\nto = [\"not a name\"]\nvia = \"direct\"\n",
                "neither",
            ),
            (
                "[[route]]\nto = [\"*\"]\nports = [\"9-1\"]\nvia = \"direct\"\n",
                "port range",
            ),
            ("bogus = 1\n", "unknown field"),
        ] {
            let err = ClientConfig::from_toml(text)
                .and_then(|c| c.router())
                .unwrap_err();
            assert!(err.to_string().contains(why), "{text}: {err}");
        }
    }
}
