//! How this server is announced to the network (draft section 10): the proxy URLs it
//! announces; the DHCP option that carries them as configuration text for the DHCP servers
//! networks run (dnsmasq, ISC Kea, ISC dhcpd), for DHCPv4 and DHCPv6 (the bytes come from
//! socksng-proto's discovery codec); and, for systems that read them, the same servers and
//! ranges as provisioning-domain JSON (RFC 8801 with the proxy-config draft's `proxies` and
//! `proxy-match`) and as a PAC file, served over HTTP on `[discovery] http`.

use crate::config::Config;
use socksng_proto::wire::discovery::{encode_dhcpv6, encode_list, OPTION_VENDOR_OPTS};
use std::fmt::Write;
use std::net::SocketAddr;

/// A listening address and what it takes, for announcing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Endpoint {
    /// Where it listens.
    pub addr: SocketAddr,
    /// It takes plain SOCKS.
    pub plain: bool,
    /// It takes SOCKS over TLS.
    pub tls: bool,
}

impl Endpoint {
    /// Its URL: `socks5h://` when it takes plain SOCKS, else `socks5s://`.
    fn url(&self) -> String {
        let scheme = if self.plain { "socks5h" } else { "socks5s" };
        format!("{scheme}://{}", self.addr)
    }
}

/// The listen addresses of a configuration as endpoints (before binding: port 0 stays 0).
pub fn endpoints(cfg: &Config) -> Vec<Endpoint> {
    let tls_too = cfg.tls.as_ref().is_some_and(|t| t.on_plain_listeners);
    let plain = cfg.listen.iter().map(|&addr| Endpoint {
        addr,
        plain: true,
        tls: tls_too,
    });
    let tls_only = cfg
        .tls
        .iter()
        .flat_map(|t| t.listen.iter())
        .map(|&addr| Endpoint {
            addr,
            plain: false,
            tls: true,
        });
    plain.chain(tls_only).collect()
}

/// Whether `urls` can be announced (draft 10.1): printable ASCII without spaces, and no
/// credentials (announcements go to whoever asks, draft 10.4).
pub fn check_urls(urls: &[String]) -> Result<(), String> {
    encode_list(&urls.iter().map(String::as_str).collect::<Vec<_>>()).map_err(|e| e.to_string())?;
    let with_login = urls.iter().position(|u| {
        let rest = u.split_once("://").map_or(u.as_str(), |(_, r)| r);
        rest.split(['/', '?', '#'])
            .next()
            .unwrap_or(rest)
            .contains('@')
    });
    match with_login {
        Some(i) => Err(format!(
            "URL {} carries credentials (user@); announced URLs must not",
            i + 1
        )),
        None => Ok(()),
    }
}

/// The URLs this server announces to the network, in order: `discovery.urls`, else one per
/// listen address (`socks5h://`, or `socks5s://` for a TLS-only one; unspecified and
/// loopback addresses are left out: no other host can reach them).
pub fn urls(cfg: &Config) -> Vec<String> {
    urls_for(cfg, &endpoints(cfg), false)
}

/// As [`urls`], for the endpoints really bound; loopback ones too when `loopback_ok` (for a
/// client on this host).
pub(crate) fn urls_for(cfg: &Config, endpoints: &[Endpoint], loopback_ok: bool) -> Vec<String> {
    if !cfg.discovery.urls.is_empty() {
        return cfg.discovery.urls.clone();
    }
    endpoints
        .iter()
        .filter(|e| !e.addr.ip().is_unspecified() && (loopback_ok || !e.addr.ip().is_loopback()))
        .map(Endpoint::url)
        .collect()
}

/// The `host:port` a PAC file or PvD document names (both speak plain SOCKS5 only): the
/// first announced `socks5h://` or `socks5://` URL's authority.
pub fn plain_proxy(urls: &[String]) -> Option<String> {
    urls.iter().find_map(|u| {
        let (scheme, rest) = u.split_once("://")?;
        if !matches!(scheme, "socks5h" | "socks5") {
            return None;
        }
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        Some(rest[..end].to_string()).filter(|a| !a.is_empty())
    })
}

fn hex(bytes: &[u8], sep: &str) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(sep)
}

/// Configuration text announcing `urls` for dnsmasq, ISC Kea and ISC dhcpd, DHCPv4 and
/// DHCPv6. Fails when a URL cannot be carried (not printable ASCII, a space).
pub fn dhcp_snippets(cfg: &Config, urls: &[String]) -> Result<String, String> {
    let refs: Vec<&str> = urls.iter().map(String::as_str).collect();
    let text = encode_list(&refs).map_err(|e| e.to_string())?;
    if text.is_empty() {
        return Err("no proxy URL to announce: set discovery.urls or a listen address".into());
    }
    let code = cfg.discovery.dhcp_code;
    let en = cfg.discovery.dhcpv6_enterprise;
    let v6 = encode_dhcpv6(en, &text).map_err(|e| e.to_string())?;
    // The option's data, after its code and length.
    let v6_data = &v6[4..];
    let mut out = String::new();
    let _ = writeln!(out, "# socksng proxies, in order of preference: {text}");
    let _ = writeln!(
        out,
        "# DHCPv4 option {code} (site-specific, text); DHCPv6 option {OPTION_VENDOR_OPTS} \
         (vendor-specific, enterprise {en}, sub-option 1)."
    );
    let _ = writeln!(
        out,
        "# Clients do not ask for site-specific options: every server below is told to send \
         it anyway.\n"
    );
    let _ = writeln!(out, "## dnsmasq (dnsmasq.conf)");
    let _ = writeln!(out, "dhcp-option-force={code},\"{text}\"");
    let _ = writeln!(
        out,
        "dhcp-option-force=option6:{OPTION_VENDOR_OPTS},{}\n",
        hex(v6_data, ":")
    );
    let _ = writeln!(
        out,
        "## ISC Kea (kea-dhcp4.conf, \"Dhcp4\"; kea-dhcp6.conf, \"Dhcp6\")"
    );
    let _ = writeln!(
        out,
        "\"option-def\": [ {{ \"name\": \"socksng-proxies\", \"code\": {code}, \"type\": \"string\", \"space\": \"dhcp4\" }} ],"
    );
    let _ = writeln!(
        out,
        "\"option-data\": [ {{ \"name\": \"socksng-proxies\", \"data\": \"{text}\", \"always-send\": true }} ]"
    );
    let _ = writeln!(
        out,
        "\"option-data\": [ {{ \"code\": {OPTION_VENDOR_OPTS}, \"space\": \"dhcp6\", \"csv-format\": false, \"data\": \"{}\", \"always-send\": true }} ]\n",
        hex(v6_data, "")
    );
    let _ = writeln!(out, "## ISC dhcpd (dhcpd.conf)");
    let _ = writeln!(out, "option socksng-proxies code {code} = text;");
    let _ = writeln!(out, "option socksng-proxies \"{text}\";");
    let _ = writeln!(
        out,
        "option dhcp-parameter-request-list = concat(option dhcp-parameter-request-list, {code:02x});"
    );
    Ok(out)
}

/// The provisioning-domain JSON (RFC 8801): `identifier` (the configured one, else the
/// proxy's host), `expires` an hour on, the configured `prefixes` of the network, and the
/// proxy-config draft's `proxies` and `proxy-match` (one rule per served range).
pub fn pvd_json(cfg: &Config, proxy: &str) -> String {
    let ranges = crate::ng::served_ranges(cfg, None);
    let identifier = cfg.discovery.pvd_identifier.clone().unwrap_or_else(|| {
        let host = proxy.rsplit_once(':').map_or(proxy, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    // RFC 8801's `prefixes` are the network's own (its RAs'), not where the proxy reaches.
    let prefixes: Vec<String> = cfg
        .discovery
        .pvd_prefixes
        .iter()
        .map(ToString::to_string)
        .collect();
    let matches: Vec<serde_json::Value> = ranges
        .iter()
        .map(|r| {
            let mut rule = serde_json::Map::new();
            if !r.prefixes.is_empty() {
                let subnets: Vec<String> = r
                    .prefixes
                    .iter()
                    .map(|(ip, len)| format!("{ip}/{len}"))
                    .collect();
                rule.insert("subnets".into(), subnets.into());
            }
            if !r.domains.is_empty() {
                rule.insert("domains".into(), r.domains.clone().into());
            }
            if !r.ports.is_empty() {
                let ports: Vec<String> = r
                    .ports
                    .iter()
                    .map(|(lo, hi)| {
                        if lo == hi {
                            lo.to_string()
                        } else {
                            format!("{lo}-{hi}")
                        }
                    })
                    .collect();
                rule.insert("ports".into(), ports.into());
            }
            rule.insert("proxies".into(), serde_json::json!(["socksng"]));
            serde_json::Value::Object(rule)
        })
        .collect();
    let doc = serde_json::json!({
        "identifier": identifier,
        "expires": humantime::format_rfc3339_seconds(expires).to_string(),
        "prefixes": prefixes,
        "proxies": [ { "protocol": "socks5", "proxy": proxy, "identifier": "socksng" } ],
        "proxy-match": matches,
    });
    let mut text = serde_json::to_string_pretty(&doc).unwrap_or_default();
    text.push('\n');
    text
}

/// A JavaScript string literal of `s` (JSON's, with the two line separators JSON leaves
/// bare escaped too, which JavaScript engines before ES2019 reject in strings).
fn js(s: &str) -> String {
    serde_json::Value::from(s)
        .to_string()
        .replace('\u{2028}', "\\u2028")
        .replace('\u{2029}', "\\u2029")
}

/// A PAC file (proxy auto-config) sending the served ranges to the proxy and everything else
/// DIRECT. Addresses are matched only when the host is an address literal, names only by
/// the served domains: a PAC file that resolved names to test them would send DNS queries
/// for every host from the client. A range of every address (a /0) or of ports alone
/// (draft 4.4: every destination on them) takes names too, as a gateway does. Names are
/// compared without case and without a trailing dot.
pub fn pac(cfg: &Config, proxy: &str) -> String {
    let ranges = crate::ng::served_ranges(cfg, None);
    let mut tests = Vec::new();
    for r in &ranges {
        let mut alternatives = Vec::new();
        if r.prefixes.is_empty() && r.domains.is_empty() {
            // Ports alone serve every destination on them; nothing at all serves nothing.
            if !r.ports.is_empty() {
                alternatives.push("true".to_string());
            }
        } else if r.prefixes.iter().any(|(_, len)| *len == 0) {
            alternatives.push("(!v4 && !v6)".to_string());
        }
        for (ip, len) in &r.prefixes {
            match ip {
                std::net::IpAddr::V6(_) if *len == 0 => alternatives.push("v6".to_string()),
                std::net::IpAddr::V4(v4) => {
                    let mask = if *len == 0 {
                        0
                    } else {
                        u32::MAX << (32 - u32::from(*len))
                    };
                    let mask = std::net::Ipv4Addr::from(mask);
                    alternatives.push(format!(
                        "(v4 && isInNet(host, {}, {}))",
                        js(&v4.to_string()),
                        js(&mask.to_string())
                    ));
                }
                std::net::IpAddr::V6(_) => alternatives.push(format!(
                    "(v6 && typeof isInNetEx == \"function\" && isInNetEx(host, {}))",
                    js(&format!("{ip}/{len}"))
                )),
            }
        }
        for d in &r.domains {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            alternatives.push(format!(
                "(host == {0} || dnsDomainIs(host, {1}))",
                js(&d),
                js(&format!(".{d}"))
            ));
        }
        if alternatives.is_empty() {
            continue;
        }
        let mut test = format!("({})", alternatives.join(" || "));
        if !r.ports.is_empty() {
            let ports: Vec<String> = r
                .ports
                .iter()
                .map(|(lo, hi)| format!("(port >= {lo} && port <= {hi})"))
                .collect();
            test = format!("({test} && ({}))", ports.join(" || "));
        }
        tests.push(test);
    }
    let condition = if tests.is_empty() {
        "false".to_string()
    } else {
        tests.join(" ||\n        ")
    };
    format!(
        "// Generated by socksngd from the ranges it serves (socksngd announce; /proxy.pac).\n\
         function FindProxyForURL(url, host) {{\n\
         \x20   host = host.toLowerCase().replace(/^\\[(.*)\\]$/, \"$1\").replace(/\\.$/, \"\");\n\
         \x20   var v4 = /^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host);\n\
         \x20   var v6 = host.indexOf(\":\") >= 0;\n\
         \x20   var m = url.match(/^([a-z]+):\\/\\/(\\[[^\\]]*\\]|[^\\/:]*)(:([0-9]+))?/i);\n\
         \x20   var scheme = m ? m[1].toLowerCase() : \"\";\n\
         \x20   var port = m && m[4] ? parseInt(m[4], 10) : (scheme == \"https\" || scheme == \"wss\" ? 443 : 80);\n\
         \x20   if ({condition})\n\
         \x20       return {};\n\
         \x20   return \"DIRECT\";\n\
         }}\n",
        js(&format!("SOCKS5 {proxy}; SOCKS {proxy}"))
    )
}

/// Answers `GET /.well-known/pvd` (PvD JSON), `GET /proxy.pac` and `GET /wpad.dat` (PAC)
/// on `[discovery] http` until `stop` fires, from the configuration in force (a reload
/// changes them) and the `endpoints` bound. With `[tls]`, a connection opening with a TLS
/// record is HTTPS (RFC 8801 fetches the PvD document over HTTPS only).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    current: std::sync::Arc<crate::shared::Current>,
    endpoints: Vec<Endpoint>,
    stop: tokio_util::sync::CancellationToken,
) {
    use crate::small_http::answer_one;
    let endpoints = std::sync::Arc::new(endpoints);
    crate::small_http::serve(listener, stop, move |stream| {
        let shared = current.get();
        let endpoints = endpoints.clone();
        async move {
            let local = stream.local_addr().ok();
            let peer = stream.peer_addr().ok();
            let tls = shared.tls.clone();
            let respond = move |_: &str, path: &str| document(&shared.cfg, &endpoints, local, path);
            let mut first = [0u8; 1];
            let opens_tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16);
            match tls {
                Some(tls) if opens_tls => match tls.accept_https(stream).await {
                    Ok(tls) => answer_one(tls, respond).await,
                    Err(e) => tracing::debug!(?peer, "discovery HTTPS handshake: {e}"),
                },
                _ => answer_one(stream, respond).await,
            }
        }
    })
    .await
}

/// The document at `path`, naming the proxy as announced; with only unspecified listen
/// addresses, as the address this client reached the HTTP server at (`local`).
fn document(
    cfg: &Config,
    endpoints: &[Endpoint],
    local: Option<SocketAddr>,
    path: &str,
) -> crate::small_http::Answer {
    use crate::small_http::Answer;
    let path = path.split(['?', '#']).next().unwrap_or(path);
    if !matches!(path, "/.well-known/pvd" | "/proxy.pac" | "/wpad.dat") {
        return Answer::not_found("not found: /.well-known/pvd, /proxy.pac, /wpad.dat\n");
    }
    let local = local.map(|a| a.ip().to_canonical());
    let loopback_ok = local.is_some_and(|ip| ip.is_loopback());
    let proxy = plain_proxy(&urls_for(cfg, endpoints, loopback_ok)).or_else(|| {
        // An unspecified listener of the client's family takes it where it reached us.
        let ip = local?;
        let e = endpoints.iter().find(|e| {
            e.plain && e.addr.ip().is_unspecified() && e.addr.is_ipv4() == ip.is_ipv4()
        })?;
        Some(SocketAddr::new(ip, e.addr.port()).to_string())
    });
    let Some(proxy) = proxy else {
        return Answer::not_found("no plain SOCKS5 address to announce\n");
    };
    if path == "/.well-known/pvd" {
        Answer::ok("application/pvd+json", pvd_json(cfg, &proxy))
    } else {
        Answer::ok("application/x-ns-proxy-autoconfig", pac(cfg, &proxy))
    }
}

/// The DNS-SD service type (draft section 10.5).
pub const MDNS_SERVICE: &str = "_socksng._tcp.local.";

/// The server's DNS-SD announcement over mDNS while it runs: one instance per listen address
/// that is not unspecified or loopback, with TXT `rev` (the SOCKS-NG revision), `tls` (1 when
/// it takes SOCKS over TLS), `auth` (none or password) and `url`. Dropping it withdraws them.
#[cfg(feature = "mdns")]
pub(crate) struct MdnsAnnouncement {
    daemon: mdns_sd::ServiceDaemon,
    names: Vec<String>,
}

#[cfg(feature = "mdns")]
impl MdnsAnnouncement {
    pub(crate) fn start(cfg: &Config, listening: &[Endpoint]) -> Result<Self, String> {
        let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| e.to_string())?;
        let host = hostname();
        let instance = cfg
            .discovery
            .mdns_name
            .clone()
            .unwrap_or_else(|| format!("socksng on {host}"));
        let auth = if cfg.accepts_password() && !cfg.accepts_no_auth() {
            "password"
        } else {
            "none"
        };
        let mut names = Vec::new();
        for (i, endpoint) in listening
            .iter()
            .filter(|e| !e.addr.ip().is_unspecified() && !e.addr.ip().is_loopback())
            .enumerate()
        {
            let addr = endpoint.addr;
            let tls = if endpoint.tls { "1" } else { "0" };
            let name = if i == 0 {
                instance.clone()
            } else {
                format!("{instance} ({})", i + 1)
            };
            let url = endpoint.url();
            let props = [
                ("rev", "1"),
                ("tls", tls),
                ("auth", auth),
                ("url", url.as_str()),
            ];
            let info = mdns_sd::ServiceInfo::new(
                MDNS_SERVICE,
                &name,
                &format!("{host}.local."),
                addr.ip(),
                addr.port(),
                &props[..],
            )
            .map_err(|e| e.to_string())?;
            names.push(info.get_fullname().to_string());
            daemon.register(info).map_err(|e| e.to_string())?;
        }
        if names.is_empty() {
            return Err("no listen address other than unspecified or loopback to announce".into());
        }
        Ok(MdnsAnnouncement { daemon, names })
    }
}

#[cfg(feature = "mdns")]
impl Drop for MdnsAnnouncement {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = self.daemon.unregister(name);
        }
        let _ = self.daemon.shutdown();
    }
}

/// This host's name, for the mDNS host record.
#[cfg(feature = "mdns")]
fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most `buf.len()` bytes into our buffer.
    let r = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    match std::str::from_utf8(&buf[..end]) {
        Ok(h) if r == 0 && !h.is_empty() => h.split('.').next().unwrap_or(h).to_string(),
        _ => "socksng".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_follow_the_listeners_unless_configured() {
        let cfg = Config::from_toml(
            "listen = [\"192.0.2.1:1080\", \"0.0.0.0:1081\"]\n[auth]\nmethods = [\"password\"]\nusers_file = \"u\"\n",
            std::path::Path::new("."),
        )
        .unwrap();
        assert_eq!(urls(&cfg), ["socks5h://192.0.2.1:1080"]);
        let cfg = Config::from_toml(
            "[discovery]\nurls = [\"socks5s://gw.example:1443\", \"socks5h://192.0.2.1:1080\"]\ndhcp_code = 230\n",
            std::path::Path::new("."),
        )
        .unwrap();
        let text = dhcp_snippets(&cfg, &urls(&cfg)).unwrap();
        assert!(
            text.contains(
                "dhcp-option-force=230,\"socks5s://gw.example:1443 socks5h://192.0.2.1:1080\""
            ),
            "{text}"
        );
        assert!(
            text.contains("option socksng-proxies code 230 = text;"),
            "{text}"
        );
        // DHCPv6: enterprise 32473 (00:00:7e:d9), sub-option 1, length 50.
        assert!(
            text.contains("dhcp-option-force=option6:17,00:00:7e:d9:00:01:00:32:73:6f"),
            "{text}"
        );
    }

    #[test]
    fn pac_and_pvd_name_a_plain_proxy_the_client_can_reach() {
        let u = |l: &[&str]| l.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            plain_proxy(&u(&[
                "socks5s://gw:1443?pin=sha256//AAAA",
                "socks5h://192.0.2.1:1080/"
            ])),
            Some("192.0.2.1:1080".into())
        );
        assert_eq!(plain_proxy(&u(&["socks5s://gw:1443"])), None);
        // A TLS-only listener is announced as socks5s, and a shared one as socks5h.
        let e = |addr: &str, plain, tls| Endpoint {
            addr: addr.parse().unwrap(),
            plain,
            tls,
        };
        let cfg = Config::default();
        let bound = [
            e("0.0.0.0:1080", true, true),
            e("192.0.2.1:1443", false, true),
        ];
        assert_eq!(urls_for(&cfg, &bound, false), ["socks5s://192.0.2.1:1443"]);
        // Loopback is announced only to a client on this host.
        let looped = [
            e("127.0.0.1:1080", true, false),
            e("[::]:1081", true, false),
        ];
        assert!(urls_for(&cfg, &looped, false).is_empty());
        let here = Some("127.0.0.1:8081".parse().unwrap());
        let pac = document(&cfg, &looped, here, "/proxy.pac").body;
        assert!(pac.contains("SOCKS5 127.0.0.1:1080;"), "{pac}");
        // Elsewhere: the unspecified listener of the client's family, at the address it used.
        let v6 = Some("[2001:db8::7]:8081".parse().unwrap());
        let pac = document(&cfg, &looped, v6, "/proxy.pac").body;
        assert!(pac.contains("SOCKS5 [2001:db8::7]:1081;"), "{pac}");
        assert_eq!(
            document(
                &cfg,
                &looped,
                Some("192.0.2.7:8081".parse().unwrap()),
                "/proxy.pac"
            )
            .status,
            "404 Not Found"
        );
        // Only an unspecified plain listener: the address the HTTP client reached.
        let local = Some("192.0.2.7:8081".parse().unwrap());
        let pac = document(&cfg, &bound, local, "/proxy.pac?x=1");
        assert_eq!(pac.status, "200 OK");
        assert!(pac.body.contains("SOCKS5 192.0.2.7:1080;"), "{}", pac.body);
        let pvd = document(&cfg, &bound, local, "/.well-known/pvd");
        assert!(pvd.body.contains("\"192.0.2.7:1080\""), "{}", pvd.body);
        assert_eq!(
            document(&cfg, &bound, local, "/etc").status,
            "404 Not Found"
        );
        assert_eq!(
            document(&cfg, &bound[1..], local, "/proxy.pac").status,
            "404 Not Found"
        );
    }

    #[test]
    fn pac_files_take_gateways_and_port_only_ranges_for_names_too() {
        let cfg = |served: &str| {
            Config::from_toml(
                &format!("[ng]\nserved = [{served}]\n"),
                std::path::Path::new("."),
            )
            .unwrap()
        };
        let gateway = pac(&cfg("{ to = [\"0.0.0.0/0\", \"::/0\"] }"), "p:1");
        assert!(gateway.contains("(!v4 && !v6)"), "{gateway}");
        let ports = pac(&cfg("{ ports = [\"443\"] }"), "p:1");
        assert!(
            ports.contains("(true) && ((port >= 443 && port <= 443))"),
            "{ports}"
        );
        assert_eq!(js("a\u{2028}b"), "\"a\\u2028b\"");
    }

    #[test]
    fn bad_codes_and_urls_are_refused() {
        let bad = |t: &str| Config::from_toml(t, std::path::Path::new(".")).is_err();
        assert!(bad("[discovery]\ndhcp_code = 100\n"));
        assert!(bad("[discovery]\nurls = [\"socks5h://a b\"]\n"));
        assert!(bad("[discovery]\nurls = [\"socks5h://u:p@gw:1080\"]\n"));
        assert!(!bad("[discovery]\nurls = [\"socks5h://gw:1080/@x\"]\n"));
    }
}
