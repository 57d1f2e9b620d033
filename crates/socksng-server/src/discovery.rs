//! How this server is announced to the network (draft section 10): the proxy URLs it
//! announces, and the DHCP option that carries them as configuration text for the DHCP
//! servers networks run (dnsmasq, ISC Kea, ISC dhcpd), for DHCPv4 and DHCPv6. The bytes come
//! from socksng-proto's discovery codec.

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
