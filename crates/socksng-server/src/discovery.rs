//! How this server is announced to the network (draft section 10): the proxy URLs it
//! announces; the DHCP option that carries them as configuration text for the DHCP servers
//! networks run (dnsmasq, ISC Kea, ISC dhcpd), for DHCPv4 and DHCPv6 (the bytes come from
//! socksng-proto's discovery codec); and, for systems that read them, the same servers and
//! ranges as provisioning-domain JSON (RFC 8801 with the proxy-config draft's `proxies` and
//! `proxy-match`) and as a PAC file, served over HTTP on `[discovery] http`.

use crate::config::Config;
use socksng_proto::wire::discovery::{encode_dhcpv6, encode_list, OPTION_VENDOR_OPTS};
use std::fmt::Write;

/// The URLs this server announces, in order: `discovery.urls`, else one `socks5h://` per
/// listen address and one `socks5s://` per TLS-only listen address (unspecified addresses
/// are left out: a client cannot reach them).
pub fn urls(cfg: &Config) -> Vec<String> {
    if !cfg.discovery.urls.is_empty() {
        return cfg.discovery.urls.clone();
    }
    let tls_only = cfg.tls.iter().flat_map(|t| t.listen.iter());
    let plain = cfg.listen.iter().map(|a| ("socks5h", a));
    plain
        .chain(tls_only.map(|a| ("socks5s", a)))
        .filter(|(_, a)| !a.ip().is_unspecified())
        .map(|(scheme, a)| format!("{scheme}://{a}"))
        .collect()
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

/// The `host:port` clients reach the proxy at: the first announced URL's authority.
pub fn proxy_hostport(cfg: &Config) -> Option<String> {
    let url = urls(cfg).into_iter().next()?;
    let rest = url
        .split_once("://")
        .map_or(url.as_str(), |(_, r)| r)
        .to_string();
    Some(rest.split('/').next().unwrap_or(&rest).to_string())
}

/// The provisioning-domain JSON (RFC 8801): `identifier` (the configured one, else the
/// proxy's host), `expires` an hour on, the IPv6 `prefixes` served, and the proxy-config
/// draft's `proxies` and `proxy-match` (one rule per served range).
pub fn pvd_json(cfg: &Config, proxy: &str) -> String {
    let ranges = crate::ng::served_ranges(cfg, None);
    let identifier = cfg.discovery.pvd_identifier.clone().unwrap_or_else(|| {
        let host = proxy.rsplit_once(':').map_or(proxy, |(h, _)| h);
        host.trim_start_matches('[')
            .trim_end_matches(']')
            .to_string()
    });
    let expires = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let prefixes: Vec<String> = ranges
        .iter()
        .flat_map(|r| r.prefixes.iter())
        .filter(|(ip, _)| ip.is_ipv6())
        .map(|(ip, len)| format!("{ip}/{len}"))
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

/// A PAC file (proxy auto-config) sending the served ranges to the proxy and everything else
/// DIRECT. Addresses are matched only when the host is an address literal, names only by
/// the served domains: a PAC file that resolved names to test them would send DNS queries
/// for every host from the client.
pub fn pac(cfg: &Config, proxy: &str) -> String {
    let ranges = crate::ng::served_ranges(cfg, None);
    let js = |s: &str| serde_json::Value::from(s).to_string();
    let mut tests = Vec::new();
    for r in &ranges {
        let mut alternatives = Vec::new();
        for (ip, len) in &r.prefixes {
            match ip {
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
            alternatives.push(format!(
                "(host == {0} || dnsDomainIs(host, {1}))",
                js(d),
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
         \x20   var v4 = /^[0-9]+\\.[0-9]+\\.[0-9]+\\.[0-9]+$/.test(host);\n\
         \x20   var v6 = host.indexOf(\":\") >= 0;\n\
         \x20   var m = url.match(/^([a-z]+):\\/\\/(\\[[^\\]]*\\]|[^\\/:]*)(:([0-9]+))?/i);\n\
         \x20   var port = m && m[4] ? parseInt(m[4], 10) : (m && m[1].toLowerCase() == \"https\" ? 443 : 80);\n\
         \x20   if ({condition})\n\
         \x20       return {};\n\
         \x20   return \"DIRECT\";\n\
         }}\n",
        js(&format!("SOCKS5 {proxy}; SOCKS {proxy}"))
    )
}

/// Answers `GET /.well-known/pvd` (PvD JSON), `GET /proxy.pac` and `GET /wpad.dat` (PAC)
/// on `[discovery] http` until `stop` fires, naming `proxy` (host:port); one request per
/// connection. With `[tls]`, a connection opening with a TLS record is HTTPS (RFC 8801 fetches
/// the PvD document over HTTPS only).
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    cfg: std::sync::Arc<Config>,
    tls: Option<std::sync::Arc<crate::tls::TlsService>>,
    proxy: String,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        let (cfg, proxy, tls) = (cfg.clone(), proxy.clone(), tls.clone());
        tokio::spawn(async move {
            let answer = async {
                let mut first = [0u8; 1];
                let opens_tls = matches!(stream.peek(&mut first).await, Ok(1) if first[0] == 0x16);
                match tls {
                    Some(tls) if opens_tls => match tls.accept_https(stream).await {
                        Ok(tls) => answer_one(tls, &cfg, &proxy).await,
                        Err(e) => tracing::debug!(%peer, "discovery HTTPS handshake: {e}"),
                    },
                    _ => answer_one(stream, &cfg, &proxy).await,
                }
            };
            // One bound for the whole exchange, handshake included.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(10), answer).await;
        });
    }
}

/// Reads one HTTP request from `stream` and answers it.
async fn answer_one<S>(mut stream: S, cfg: &Config, proxy: &str)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut request = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&request);
    let path = line.split_whitespace().nth(1).unwrap_or("");
    let (status, kind, body) = match (line.starts_with("GET "), path) {
        (true, "/.well-known/pvd") => ("200 OK", "application/pvd+json", pvd_json(cfg, proxy)),
        (true, "/proxy.pac" | "/wpad.dat") => (
            "200 OK",
            "application/x-ns-proxy-autoconfig",
            pac(cfg, proxy),
        ),
        (true, _) => ("404 Not Found", "text/plain", "not found\n".to_string()),
        (false, _) => (
            "405 Method Not Allowed",
            "text/plain",
            "GET only\n".to_string(),
        ),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(head.as_bytes()).await;
    let _ = stream.write_all(body.as_bytes()).await;
    let _ = stream.shutdown().await;
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
    pub(crate) fn start(cfg: &Config, listening: &[std::net::SocketAddr]) -> Result<Self, String> {
        let daemon = mdns_sd::ServiceDaemon::new().map_err(|e| e.to_string())?;
        let host = hostname();
        let instance = cfg
            .discovery
            .mdns_name
            .clone()
            .unwrap_or_else(|| format!("socksng on {host}"));
        let tls = if cfg.tls.is_some() { "1" } else { "0" };
        let auth = if cfg.accepts_password() && !cfg.accepts_no_auth() {
            "password"
        } else {
            "none"
        };
        let mut names = Vec::new();
        for (i, addr) in listening
            .iter()
            .filter(|a| !a.ip().is_unspecified() && !a.ip().is_loopback())
            .enumerate()
        {
            let name = if i == 0 {
                instance.clone()
            } else {
                format!("{instance} ({})", i + 1)
            };
            let url = format!("socks5h://{addr}");
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
    fn bad_codes_and_urls_are_refused() {
        let bad = |t: &str| Config::from_toml(t, std::path::Path::new(".")).is_err();
        assert!(bad("[discovery]\ndhcp_code = 100\n"));
        assert!(bad("[discovery]\nurls = [\"socks5h://a b\"]\n"));
    }
}
