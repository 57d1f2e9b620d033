//! The SOCKS-NG commands (docs/draft-socksng.md) on the server side: CAPABILITIES with the
//! served ranges, and the dispatch of LISTEN, ACCEPT and UDP-TUNNEL.

use crate::config::{Action, Config};
use crate::conn::{Handshaken, SessionLog};
use crate::outcome::{OutcomeKind, Side};
use socksng_proto::wire::ng::{
    cmd, Capabilities, NgRequest, ServedRange, MAX_UDP_PAYLOAD, NG_REVISION,
};
use socksng_proto::{Address, ReplyCode};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use tokio::io::AsyncWriteExt;

/// The log's name for an NG request.
pub(crate) fn command_name(request: &NgRequest) -> &'static str {
    match request {
        NgRequest::Capabilities => "capabilities",
        NgRequest::Listen { .. } => "listen",
        NgRequest::Accept { .. } => "accept",
        NgRequest::UdpTunnel => "udp-tunnel",
    }
}

/// The SOCKS command the rules judge a SOCKS-NG request as (LISTEN and ACCEPT as BIND, the UDP
/// tunnel as UDP ASSOCIATE); none for CAPABILITIES.
pub(crate) fn rule_command(request: &NgRequest) -> Option<socksng_proto::Command> {
    use socksng_proto::Command;
    match request {
        NgRequest::Capabilities => None,
        NgRequest::Listen { .. } | NgRequest::Accept { .. } => Some(Command::Bind),
        NgRequest::UdpTunnel => Some(Command::UdpAssociate),
    }
}

pub(crate) async fn serve(conn: Handshaken, request: NgRequest, log: &mut SessionLog) {
    match request {
        NgRequest::Capabilities => capabilities(conn, log).await,
        NgRequest::Listen {
            address,
            exact,
            backlog,
        } => crate::listen::listen(conn, address, exact, backlog, log).await,
        NgRequest::Accept { token } => crate::listen::accept(conn, token, log).await,
        NgRequest::UdpTunnel => crate::udp::tunnel(conn, log).await,
    }
}

async fn capabilities(mut conn: Handshaken, log: &mut SessionLog) {
    let cfg = &conn.shared.cfg;
    // LISTEN and ACCEPT are offered only to a client some port grant applies to.
    let listens = crate::listen::may_listen(&cfg.ng.ports, &cfg.groups, conn.user.as_deref());
    let mut commands = vec![0x01, 0x02, 0x03, cmd::CAPABILITIES];
    if listens {
        commands.extend([cmd::LISTEN, cmd::ACCEPT]);
    }
    commands.push(cmd::UDP_TUNNEL);
    let caps = Capabilities {
        revision: NG_REVISION,
        commands,
        max_udp_payload: Some(MAX_UDP_PAYLOAD),
        token_lifetime: listens
            .then(|| cfg.ng.token_lifetime.as_secs().min(u64::from(u32::MAX)) as u32),
        ranges: ranges_for(&conn).await,
    };
    let mut block = Vec::with_capacity(128);
    if let Err(e) = caps.encode(&mut block) {
        return conn
            .refuse(
                log,
                ReplyCode::GENERAL_FAILURE,
                format!("capabilities: {e}"),
            )
            .await;
    }
    if conn
        .reply(ReplyCode::SUCCEEDED, &Address::unspecified())
        .await
        .is_err()
        || conn.stream.write_all(&block).await.is_err()
    {
        log.end(
            OutcomeKind::Broken,
            Side::Client,
            "client gone before the capabilities",
        );
        return;
    }
    let done = format!("{} range(s) announced", caps.ranges.len());
    log.end(OutcomeKind::Completed, Side::Client, done);
    // The block is the last message: a reset must not overtake it.
    crate::conn::linger_close(&mut conn.stream).await;
}

/// What this server announces to the client of `conn`: `[[ng.served]]` when configured; else,
/// when a route sends all of the user's requests to upstreams, what the first of them that
/// answers announces (asked with HOPS one above the request's); else what the rules allow.
async fn ranges_for(conn: &Handshaken) -> Vec<ServedRange> {
    let shared = &conn.shared;
    let user = conn.user.as_deref();
    if shared.cfg.ng.served.is_empty() {
        if let Some(ways) = shared.upstreams.serving_everything(user) {
            let hops = conn.hs.hops().saturating_add(1);
            let limit = shared.cfg.timeouts.connect;
            match shared.upstreams.announced(&ways, hops, limit).await {
                Some(ranges) => return ranges,
                None => tracing::info!(
                    "no upstream announced its ranges: announcing what the rules allow"
                ),
            }
        }
    }
    served_ranges(&shared.cfg, user)
}

/// The served ranges as draft-ietf-intarea-proxy-config JSON (a `proxies` entry for this
/// server and one `proxy-match` rule per range), for systems that read that format.
pub fn served_ranges_json(cfg: &Config, user: Option<&str>, proxy: &str) -> String {
    fn quoted(s: &str) -> String {
        let mut out = String::with_capacity(s.len() + 2);
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }
    fn list(items: impl Iterator<Item = String>) -> String {
        format!("[{}]", items.collect::<Vec<_>>().join(", "))
    }
    let rules: Vec<String> = served_ranges(cfg, user)
        .iter()
        .map(|r| {
            let mut keys = Vec::new();
            if !r.prefixes.is_empty() {
                let subnets = r
                    .prefixes
                    .iter()
                    .map(|(ip, len)| quoted(&format!("{ip}/{len}")));
                keys.push(format!("\"subnets\": {}", list(subnets)));
            }
            if !r.domains.is_empty() {
                keys.push(format!(
                    "\"domains\": {}",
                    list(r.domains.iter().map(|d| quoted(d)))
                ));
            }
            if !r.ports.is_empty() {
                let ports = r.ports.iter().map(|(lo, hi)| {
                    quoted(&if lo == hi {
                        lo.to_string()
                    } else {
                        format!("{lo}-{hi}")
                    })
                });
                keys.push(format!("\"ports\": {}", list(ports)));
            }
            keys.push("\"proxies\": [\"socksng\"]".into());
            format!("    {{ {} }}", keys.join(", "))
        })
        .collect();
    format!(
        "{{\n  \"proxies\": [ {{ \"protocol\": \"socks5\", \"proxy\": {}, \"identifier\": \"socksng\" }} ],\n  \"proxy-match\": [\n{}\n  ]\n}}\n",
        quoted(proxy),
        rules.join(",\n")
    )
}

fn everything() -> ServedRange {
    ServedRange {
        prefixes: vec![
            (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
            (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
        ],
        ..Default::default()
    }
}

/// What this user may reach, as served ranges: the configured `[[ng.served]]` list, or else
/// derived from the access rules: everything when unmatched traffic is allowed, otherwise the
/// allow rules that apply to the user. Deny rules are not subtracted, so the announcement can
/// be wider than the truth, never narrower: a client routes by it, the policy still decides.
pub(crate) fn served_ranges(cfg: &Config, user: Option<&str>) -> Vec<ServedRange> {
    if !cfg.ng.served.is_empty() {
        return cfg
            .ng
            .served
            .iter()
            .map(|r| range_of(&r.to, &r.domains, &r.ports))
            .collect();
    }
    if cfg.access.default == Action::Allow {
        return vec![everything()];
    }
    cfg.rules
        .iter()
        .filter(|r| r.action == Action::Allow)
        .filter(|r| crate::config::names_user(r.users.as_deref(), user, &cfg.groups))
        .map(|r| {
            let mut range = range_of(&r.to, &r.domains, &r.ports);
            // A rule for every destination is a gateway; one for some ports only stays a
            // RANGE of ports, which serves names too.
            if range.prefixes.is_empty() && range.domains.is_empty() && range.ports.is_empty() {
                range.prefixes = everything().prefixes;
            }
            range
        })
        .collect()
}

/// The wire form of a destination set as written in the configuration.
fn range_of(
    to: &[ipnet::IpNet],
    domains: &[String],
    ports: &[crate::config::PortRange],
) -> ServedRange {
    ServedRange {
        prefixes: to.iter().map(|n| (n.network(), n.prefix_len())).collect(),
        // The wire carries suffixes without the configuration's leading dot, in lower case.
        domains: domains
            .iter()
            .map(|d| {
                d.trim_start_matches('.')
                    .trim_end_matches('.')
                    .to_ascii_lowercase()
            })
            .filter(|d| !d.is_empty())
            .collect(),
        ports: ports.iter().map(|p| (*p.0.start(), *p.0.end())).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn cfg(text: &str) -> Config {
        Config::from_toml(text, Path::new(".")).unwrap()
    }

    #[test]
    fn json_publication() {
        let c = cfg("[[ng.served]]\nto = [\"10.0.0.0/8\"]\ndomains = [\"corp.example\"]\nports = [443, \"8000-8080\"]\n");
        let json = served_ranges_json(&c, None, "proxy.example:1080\"\\");
        let v: serde_json::Value = serde_json::from_str(&json).expect("valid JSON");
        // The proxy string is escaped, not spliced in.
        assert_eq!(v["proxies"][0]["proxy"], "proxy.example:1080\"\\", "{json}");
        let rule = &v["proxy-match"][0];
        assert_eq!(rule["subnets"], serde_json::json!(["10.0.0.0/8"]), "{json}");
        assert_eq!(
            rule["domains"],
            serde_json::json!(["corp.example"]),
            "{json}"
        );
        assert_eq!(
            rule["ports"],
            serde_json::json!(["443", "8000-8080"]),
            "{json}"
        );
        assert_eq!(rule["proxies"], serde_json::json!(["socksng"]), "{json}");
    }

    #[test]
    fn gateway_serves_everything() {
        assert_eq!(served_ranges(&cfg(""), None), vec![everything()]);
    }

    #[test]
    fn configured_ranges_win() {
        let c = cfg("[[ng.served]]\nto = [\"10.0.0.0/8\"]\ndomains = [\"corp.example\"]\nports = [\"1-1024\"]\n");
        let r = served_ranges(&c, Some("x"));
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].prefixes, vec![("10.0.0.0".parse().unwrap(), 8)]);
        assert_eq!(r[0].domains, vec!["corp.example".to_string()]);
        assert_eq!(r[0].ports, vec![(1, 1024)]);
    }

    #[test]
    fn derived_from_allow_rules_per_user() {
        let c = cfg(
            "[access]\ndefault = \"deny\"\n[[rules]]\naction = \"allow\"\nusers = [\"alice\"]\nto = [\"10.1.0.0/16\"]\n[[rules]]\naction = \"allow\"\ndomains = [\"intra.example\"]\n[[rules]]\naction = \"deny\"\nto = [\"0.0.0.0/0\"]\n",
        );
        assert_eq!(served_ranges(&c, Some("alice")).len(), 2);
        let bob = served_ranges(&c, Some("bob"));
        assert_eq!(bob.len(), 1);
        assert_eq!(bob[0].domains, vec!["intra.example".to_string()]);
    }
}
