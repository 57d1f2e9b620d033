//! The policy engine: which clients may use the server and which destinations each user may
//! reach. One engine answers for every command (CONNECT targets, BIND peers, every UDP
//! datagram), so no command becomes the way around the rules.
//!
//! Destinations on the server host itself (loopback, unspecified, link-local including the
//! cloud metadata address, and whatever the kernel delivers locally: see `host`), multicast
//! groups and broadcast addresses are refused unless an allow rule names them narrowly in `to`:
//! a catch-all allow does not open them. Names are checked again after resolution, so a name
//! pointing at 127.0.0.1 is refused like the address itself.
//!
//! An IPv6 address that carries an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible and
//! IPv4-translated forms) reaches that IPv4 address wherever a translator or relay exists, so
//! both are judged and the stricter verdict wins: the IPv4 rules and the host-local guard apply
//! to the embedded address as they would to the address itself.

use crate::config::{names_user, Action, Config, RuleCommand};

pub(crate) type Groups = std::collections::HashMap<String, Vec<String>>;
use crate::host::{HostKind, HostView};
use ipnet::IpNet;
use socksng_proto::Command;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::RangeInclusive;

/// The outcome of a check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Permitted.
    Allow,
    /// Refused, with the reason for the log line.
    Deny(DenyReason),
}

/// What the rules say of a name before it is resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameVerdict {
    /// Allowed by name (a matching allow rule, or the default).
    Allow,
    /// Refused by name.
    Deny(DenyReason),
    /// A rule that matches by network comes first: only the addresses can tell.
    DependsOnAddress,
}

/// Why a destination was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenyReason {
    /// Rule number N (0-based, in file order) denies it.
    Rule(usize),
    /// No rule matched and `access.default` is deny.
    Default,
    /// It is an address of this host and no rule names it explicitly.
    HostLocal,
    /// A multicast group, and no rule names it explicitly.
    Multicast,
    /// A broadcast address, and no rule names it explicitly.
    Broadcast,
}

impl std::fmt::Display for DenyReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DenyReason::Rule(i) => write!(f, "denied by rules[{i}]"),
            DenyReason::Default => f.write_str("denied by the default action"),
            DenyReason::HostLocal => f.write_str("destination is on the proxy host"),
            DenyReason::Multicast => f.write_str("destination is a multicast group"),
            DenyReason::Broadcast => f.write_str("destination is a broadcast address"),
        }
    }
}

struct Rule {
    action: Action,
    selector: Selector,
}

/// Which requests a rule or a route is about: users, commands, ports and destinations
/// (networks and domain suffixes). Empty lists match everything.
pub(crate) struct Selector {
    users: Option<Vec<String>>,
    nets: Vec<IpNet>,
    domains: Vec<String>,
    ports: Vec<RangeInclusive<u16>>,
    commands: Option<Vec<RuleCommand>>,
}

/// What is known about a destination when it is checked.
#[derive(Debug, Clone, Copy)]
pub struct Destination<'a> {
    /// The name the client asked for, if it asked by name.
    pub name: Option<&'a str>,
    /// The address; `None` before resolution.
    pub ip: Option<IpAddr>,
    /// The port.
    pub port: u16,
}

/// How a rule relates to a destination whose address is not known yet.
enum Match {
    Yes,
    No,
    DependsOnAddress,
}

impl Selector {
    pub(crate) fn new(
        users: &Option<Vec<String>>,
        to: &[IpNet],
        domains: &[String],
        ports: &[crate::config::PortRange],
        commands: &Option<Vec<RuleCommand>>,
    ) -> Selector {
        Selector {
            users: users.clone(),
            nets: to.iter().map(|n| n.trunc()).collect(),
            domains: domains.to_vec(),
            ports: ports.iter().map(|p| p.0.clone()).collect(),
            commands: commands.clone(),
        }
    }

    /// For routing, where nothing is resolved: whether a request for `dest` (an address, or
    /// a name that only domain suffixes can match) is selected.
    pub(crate) fn selects(
        &self,
        user: Option<&str>,
        cmd: Command,
        dest: &Destination<'_>,
        groups: &Groups,
    ) -> bool {
        self.applies_to(user, cmd, dest.port, groups)
            && matches!(self.matches_destination(dest), Match::Yes)
    }

    /// For requests whose destinations come later (UDP, LISTEN): whether it selects them by
    /// user and command alone, naming no destination.
    pub(crate) fn selects_without_destination(
        &self,
        user: Option<&str>,
        cmd: Command,
        groups: &Groups,
    ) -> bool {
        !self.names_destinations() && self.applies_to(user, cmd, 0, groups)
    }

    /// Whether it selects by destination (networks, domains or ports) at all.
    pub(crate) fn names_destinations(&self) -> bool {
        !(self.nets.is_empty() && self.domains.is_empty() && self.ports.is_empty())
    }

    /// Whether its users and commands include this request's, whatever the destination.
    pub(crate) fn applies_to_any_destination(
        &self,
        user: Option<&str>,
        cmd: Command,
        groups: &Groups,
    ) -> bool {
        names_user(self.users.as_deref(), user, groups)
            && self
                .commands
                .as_ref()
                .is_none_or(|cs| cs.iter().any(|c| c.matches(cmd)))
    }

    fn applies_to(&self, user: Option<&str>, cmd: Command, port: u16, groups: &Groups) -> bool {
        names_user(self.users.as_deref(), user, groups)
            && self
                .commands
                .as_ref()
                .is_none_or(|cs| cs.iter().any(|c| c.matches(cmd)))
            && (self.ports.is_empty() || self.ports.iter().any(|r| r.contains(&port)))
    }

    fn matches_destination(&self, dest: &Destination<'_>) -> Match {
        if self.nets.is_empty() && self.domains.is_empty() {
            return Match::Yes;
        }
        if let Some(name) = dest.name {
            if self.domains.iter().any(|d| domain_matches(d, name)) {
                return Match::Yes;
            }
        }
        match dest.ip {
            Some(ip) if self.nets.iter().any(|n| n.contains(&ip)) => Match::Yes,
            Some(_) => Match::No,
            None if self.nets.is_empty() => Match::No,
            None => Match::DependsOnAddress,
        }
    }
}

/// `suffix` matches `name` itself and its subdomains; with a leading dot, only subdomains.
/// Case-insensitive, and a trailing root dot on the name is ignored.
fn domain_matches(suffix: &str, name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    let (suffix, subdomains_only) = match suffix.strip_prefix('.') {
        Some(s) => (s, true),
        None => (suffix, false),
    };
    if name.len() == suffix.len() {
        return !subdomains_only && name.eq_ignore_ascii_case(suffix);
    }
    name.len() > suffix.len()
        && name.as_bytes()[name.len() - suffix.len() - 1] == b'.'
        && name[name.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
}

/// Networks that are this host (or its cloud metadata service) from any client's point of
/// view: loopback, "this network", link-local (169.254.169.254 included), broadcast, the
/// unspecified address, and the IPv6 and Alibaba metadata addresses.
const FIXED_LOCAL: [&str; 9] = [
    "127.0.0.0/8",
    "0.0.0.0/8",
    "169.254.0.0/16",
    "255.255.255.255/32",
    "100.100.100.200/32",
    "::1/128",
    "::/128",
    "fe80::/10",
    "fd00:ec2::254/128",
];

/// Multicast: a datagram to a group reaches every member on the link, this host's own
/// listeners (SSDP, mDNS) included.
const MULTICAST: [&str; 2] = ["224.0.0.0/4", "ff00::/8"];

fn nets(list: &[&str]) -> Vec<IpNet> {
    list.iter().filter_map(|n| n.parse().ok()).collect()
}

/// The IPv4 address placed in an IPv6 address under a NAT64 prefix of `prefix_len` bits, by
/// the layouts of RFC 6052 section 2.2 (bits 64-71 are the zero "u" octet and are skipped).
pub fn rfc6052_ipv4(ip: Ipv6Addr, prefix_len: u8) -> Option<Ipv4Addr> {
    let b = ip.octets();
    let at = match prefix_len {
        32 => [4, 5, 6, 7],
        40 => [5, 6, 7, 9],
        48 => [6, 7, 9, 10],
        56 => [7, 9, 10, 11],
        64 => [9, 10, 11, 12],
        96 => [12, 13, 14, 15],
        _ => return None,
    };
    Some(Ipv4Addr::new(b[at[0]], b[at[1]], b[at[2]], b[at[3]]))
}

/// The IPv4 addresses an IPv6 address may carry, where a translator, relay or dual stack would
/// deliver it: IPv4-compatible (`::/96`, RFC 4291), IPv4-translated (`::ffff:0:0:0/96`,
/// RFC 2765), NAT64 (`64:ff9b::/96`, RFC 6052; the local-use `64:ff9b:1::/48` of RFC 8215 in
/// the /96 layout; and the network's own prefixes in `nat64`, in their layouts), 6to4
/// (`2002::/16`, RFC 3056) and Teredo's client (`2001::/32`, RFC 4380). IPv4-mapped addresses
/// are not here: `canonical` turns them into IPv4 outright.
pub fn embedded_ipv4(ip: Ipv6Addr, nat64: &[ipnet::Ipv6Net]) -> Vec<Ipv4Addr> {
    let s = ip.segments();
    let low = || rfc6052_ipv4(ip, 96).into_iter();
    let mut found: Vec<Ipv4Addr> = match s {
        // :: and ::1 are the unspecified and loopback addresses, not IPv4-compatible ones.
        [0, 0, 0, 0, 0, 0, 0, 0 | 1] => Vec::new(),
        [0, 0, 0, 0, 0, 0, _, _] => low().collect(),
        [0, 0, 0, 0, 0xffff, 0, _, _] => low().collect(),
        [0x64, 0xff9b, 0, 0, 0, 0, _, _] => low().collect(),
        // The local-use prefix is usually split into /96s; the /48-/64 layouts would read
        // zero bytes as 0.0.0.0 and refuse everything under a /96. A network that uses
        // another layout names its prefix in `nat64_prefixes`.
        [0x64, 0xff9b, 1, ..] => low().collect(),
        [0x2002, hi, lo, ..] => vec![Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo))],
        [0x2001, 0, ..] => low().map(|v4| Ipv4Addr::from(!u32::from(v4))).collect(),
        _ => Vec::new(),
    };
    for net in nat64.iter().filter(|n| n.contains(&ip)) {
        found.extend(rfc6052_ipv4(ip, net.prefix_len()));
    }
    found
}

/// IPv4-mapped IPv6 (::ffff:a.b.c.d) reaches the IPv4 address, so it is judged as one.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(v6),
        },
        v4 => v4,
    }
}

/// Client and destination policy, built once from the configuration.
pub struct Policy {
    clients: Vec<IpNet>,
    rules: Vec<Rule>,
    default: Action,
    groups: Groups,
    fixed_local: Vec<IpNet>,
    multicast: Vec<IpNet>,
    nat64: Vec<ipnet::Ipv6Net>,
    host: HostView,
}

impl Policy {
    /// Builds the engine from the configuration.
    pub fn new(cfg: &Config) -> Self {
        let rules = cfg
            .rules
            .iter()
            .map(|r| Rule {
                action: r.action,
                selector: Selector::new(&r.users, &r.to, &r.domains, &r.ports, &r.commands),
            })
            .collect();
        Policy {
            clients: cfg.access.clients.clone(),
            rules,
            default: cfg.access.default,
            groups: cfg.groups.clone(),
            fixed_local: nets(&FIXED_LOCAL),
            multicast: nets(&MULTICAST),
            nat64: cfg
                .nat64_prefixes
                .iter()
                .filter_map(|n| match n {
                    IpNet::V6(v6) => Some(v6.trunc()),
                    IpNet::V4(_) => None,
                })
                .collect(),
            host: HostView::new(),
        }
    }

    /// Whether a client at `ip` may use the server at all.
    pub fn client_allowed(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.clients.iter().any(|n| n.contains(&ip))
    }

    /// Checks a named destination before resolving it: `Some(verdict)` when the name alone
    /// decides (no DNS query is made for a denied name), `None` when it depends on the address
    /// or is allowed so far (its addresses are checked after resolution).
    pub fn check_name(
        &self,
        user: Option<&str>,
        cmd: Command,
        name: &str,
        port: u16,
    ) -> Option<Verdict> {
        match self.judge_name(user, cmd, name, port) {
            NameVerdict::Deny(why) => Some(Verdict::Deny(why)),
            NameVerdict::Allow | NameVerdict::DependsOnAddress => None,
        }
    }

    /// What the rules say of a named destination without resolving it: allowed by name,
    /// denied, or decided only by the addresses it resolves to.
    pub fn judge_name(
        &self,
        user: Option<&str>,
        cmd: Command,
        name: &str,
        port: u16,
    ) -> NameVerdict {
        let dest = Destination {
            name: Some(name),
            ip: None,
            port,
        };
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.selector.applies_to(user, cmd, port, &self.groups) {
                continue;
            }
            match rule.selector.matches_destination(&dest) {
                Match::No => continue,
                Match::DependsOnAddress => return NameVerdict::DependsOnAddress,
                Match::Yes => {
                    return match rule.action {
                        Action::Deny => NameVerdict::Deny(DenyReason::Rule(i)),
                        Action::Allow => NameVerdict::Allow,
                    }
                }
            }
        }
        match self.default {
            Action::Deny => NameVerdict::Deny(DenyReason::Default),
            Action::Allow => NameVerdict::Allow,
        }
    }

    /// Checks a destination address (resolved, or as given), with the name it came from. An
    /// address that carries an IPv4 address is judged twice, as itself and as that address,
    /// and refused when either is.
    pub fn check(
        &self,
        user: Option<&str>,
        cmd: Command,
        name: Option<&str>,
        ip: IpAddr,
        port: u16,
    ) -> Verdict {
        let ip = canonical(ip);
        let outer = self.check_one(user, cmd, name, ip, port);
        match ip {
            IpAddr::V6(v6) if outer == Verdict::Allow => embedded_ipv4(v6, &self.nat64)
                .into_iter()
                .map(|inner| self.check_one(user, cmd, name, IpAddr::V4(inner), port))
                .find(|v| *v != Verdict::Allow)
                .unwrap_or(outer),
            _ => outer,
        }
    }

    fn check_one(
        &self,
        user: Option<&str>,
        cmd: Command,
        name: Option<&str>,
        ip: IpAddr,
        port: u16,
    ) -> Verdict {
        let dest = Destination {
            name,
            ip: Some(ip),
            port,
        };
        let guarded = self.guard(ip);
        for (i, rule) in self.rules.iter().enumerate() {
            if !rule.selector.applies_to(user, cmd, port, &self.groups)
                || !matches!(rule.selector.matches_destination(&dest), Match::Yes)
            {
                continue;
            }
            return match (rule.action, guarded) {
                (Action::Deny, _) => Verdict::Deny(DenyReason::Rule(i)),
                (Action::Allow, Some(why)) if !self.opens_guarded(rule, ip) => Verdict::Deny(why),
                (Action::Allow, _) => Verdict::Allow,
            };
        }
        if let Some(why) = guarded {
            return Verdict::Deny(why);
        }
        match self.default {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny(DenyReason::Default),
        }
    }

    /// Why an address is closed unless a rule names it: it is this host's, a multicast group
    /// or a broadcast address.
    fn guard(&self, ip: IpAddr) -> Option<DenyReason> {
        if self.fixed_local.iter().any(|n| n.contains(&ip)) {
            return Some(if ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
                DenyReason::Broadcast
            } else {
                DenyReason::HostLocal
            });
        }
        if self.multicast.iter().any(|n| n.contains(&ip)) {
            return Some(DenyReason::Multicast);
        }
        match self.host.classify(ip)? {
            HostKind::Local => Some(DenyReason::HostLocal),
            HostKind::Broadcast => Some(DenyReason::Broadcast),
        }
    }

    /// A rule opens a guarded address only by naming it narrowly: with a net that lies inside
    /// one of the fixed local or multicast ranges, or with exactly that address. A broad net
    /// such as 0.0.0.0/0, or the LAN's /24 that happens to hold the proxy's own address, does
    /// not.
    fn opens_guarded(&self, rule: &Rule, ip: IpAddr) -> bool {
        rule.selector.nets.iter().any(|n| {
            n.contains(&ip)
                && (self
                    .fixed_local
                    .iter()
                    .chain(&self.multicast)
                    .any(|f| f.contains(n))
                    || n.prefix_len() == n.max_prefix_len())
        })
    }

    /// The host's local addresses as the guard sees them now.
    pub fn host_view(&self) -> crate::host::LocalView {
        self.host.snapshot()
    }
}

/// The fixed part of the host-local set, for documentation and tests.
pub const ALWAYS_LOCAL_EXAMPLES: [IpAddr; 8] = [
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
    IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    IpAddr::V4(Ipv4Addr::new(169, 254, 169, 254)),
    IpAddr::V6(Ipv6Addr::LOCALHOST),
    IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
    IpAddr::V6(Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)),
    IpAddr::V4(Ipv4Addr::new(100, 100, 100, 200)),
];

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn policy(toml: &str) -> Policy {
        Policy::new(&Config::from_toml(toml, Path::new(".")).unwrap())
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn host_local_denied_by_default() {
        let p = policy("");
        for a in ALWAYS_LOCAL_EXAMPLES {
            for cmd in [Command::Connect, Command::Bind, Command::UdpAssociate] {
                assert_eq!(
                    p.check(None, cmd, None, a, 80),
                    Verdict::Deny(DenyReason::HostLocal),
                    "{a}"
                );
            }
        }
        for a in [
            "127.1.2.3",
            "::ffff:127.0.0.1",
            "0.1.2.3",
            "169.254.0.1",
            "fe80::abcd",
            "febf::1",
        ] {
            assert_eq!(
                p.check(None, Command::Connect, None, ip(a), 80),
                Verdict::Deny(DenyReason::HostLocal),
                "{a}"
            );
        }
        for net in p.host_view().local {
            assert_eq!(
                p.check(None, Command::Connect, None, net.addr(), 80),
                Verdict::Deny(DenyReason::HostLocal)
            );
        }
        assert_eq!(
            p.check(None, Command::Connect, Some("x.test"), ip("192.0.2.1"), 80),
            Verdict::Allow
        );
        assert_eq!(
            p.check(None, Command::Connect, None, ip("2001:db8::1"), 80),
            Verdict::Allow
        );
    }

    #[test]
    fn catch_all_allow_does_not_open_host_local_but_explicit_net_does() {
        let p = policy("[[rules]]\naction = \"allow\"\n");
        assert_eq!(
            p.check(None, Command::Connect, None, ip("127.0.0.1"), 80),
            Verdict::Deny(DenyReason::HostLocal)
        );
        let p = policy("[[rules]]\naction = \"allow\"\ndomains = [\"localhost\"]\n");
        assert_eq!(
            p.check(
                None,
                Command::Connect,
                Some("localhost"),
                ip("127.0.0.1"),
                80
            ),
            Verdict::Deny(DenyReason::HostLocal)
        );
        let p = policy("[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\nports = [8080]\n");
        assert_eq!(
            p.check(None, Command::Connect, None, ip("127.0.0.1"), 8080),
            Verdict::Allow
        );
        assert_eq!(
            p.check(None, Command::Connect, None, ip("::ffff:127.0.0.1"), 8080),
            Verdict::Allow
        );
        assert_eq!(
            p.check(None, Command::Connect, None, ip("127.0.0.1"), 8081),
            Verdict::Deny(DenyReason::HostLocal)
        );
    }

    #[test]
    fn broad_nets_do_not_open_host_local() {
        let own = if_addrs::get_if_addrs()
            .unwrap()
            .into_iter()
            .map(|i| canonical(i.ip()))
            .find(|a| !a.is_loopback());
        let p = policy("[[rules]]\naction = \"allow\"\nusers = [\"alice\"]\nto = [\"0.0.0.0/0\", \"::/0\", \"127.0.0.0/7\"]\n");
        for a in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1"] {
            assert_eq!(
                p.check(Some("alice"), Command::Connect, None, ip(a), 80),
                Verdict::Deny(DenyReason::HostLocal),
                "{a}"
            );
        }
        if let Some(own) = own {
            assert_eq!(
                p.check(Some("alice"), Command::Connect, None, own, 80),
                Verdict::Deny(DenyReason::HostLocal)
            );
            // Naming exactly the host's own address opens it.
            let p = policy(&format!(
                "[[rules]]\naction = \"allow\"\nto = [\"{own}/{}\"]\n",
                if own.is_ipv4() { 32 } else { 128 }
            ));
            assert_eq!(
                p.check(None, Command::Connect, None, own, 80),
                Verdict::Allow
            );
        }
        assert_eq!(
            p.check(Some("alice"), Command::Connect, None, ip("192.0.2.1"), 80),
            Verdict::Allow
        );
    }

    #[test]
    fn first_match_wins_with_users_ports_commands() {
        let p = policy(
            r#"
[access]
default = "deny"
[[rules]]
action = "deny"
to = ["10.0.0.0/8"]
[[rules]]
action = "allow"
users = ["alice"]
domains = ["example.com"]
ports = ["80", "443"]
commands = ["connect"]
[[rules]]
action = "allow"
users = ["*"]
to = ["192.0.2.0/24"]
"#,
        );
        let c = Command::Connect;
        assert_eq!(
            p.check(
                Some("alice"),
                c,
                Some("www.example.com"),
                ip("198.51.100.1"),
                443
            ),
            Verdict::Allow
        );
        assert_eq!(
            p.check(
                Some("alice"),
                c,
                Some("www.example.com"),
                ip("10.1.1.1"),
                443
            ),
            Verdict::Deny(DenyReason::Rule(0))
        );
        assert_eq!(
            p.check(
                Some("alice"),
                c,
                Some("www.example.com"),
                ip("198.51.100.1"),
                22
            ),
            Verdict::Deny(DenyReason::Default)
        );
        assert_eq!(
            p.check(
                Some("alice"),
                Command::Bind,
                Some("example.com"),
                ip("198.51.100.1"),
                80
            ),
            Verdict::Deny(DenyReason::Default)
        );
        assert_eq!(
            p.check(Some("bob"), c, Some("example.com"), ip("198.51.100.1"), 80),
            Verdict::Deny(DenyReason::Default)
        );
        assert_eq!(
            p.check(
                Some("bob"),
                Command::UdpAssociate,
                None,
                ip("192.0.2.9"),
                53
            ),
            Verdict::Allow
        );
        assert_eq!(
            p.check(None, c, None, ip("192.0.2.9"), 53),
            Verdict::Deny(DenyReason::Default)
        );
        // Before resolution: a net rule may match, so the name alone does not decide.
        assert_eq!(p.check_name(Some("alice"), c, "example.com", 80), None);
        assert_eq!(p.check_name(None, c, "other.org", 80), None);
    }

    #[test]
    fn deny_by_name_before_resolution() {
        let p = policy("[[rules]]\naction = \"deny\"\ndomains = [\".blocked.test\"]\n");
        assert_eq!(
            p.check_name(None, Command::Connect, "a.blocked.test", 80),
            Some(Verdict::Deny(DenyReason::Rule(0)))
        );
        assert_eq!(
            p.check_name(None, Command::Connect, "blocked.test", 80),
            None
        );
        let p = policy("[access]\ndefault = \"deny\"\n");
        assert_eq!(
            p.check_name(None, Command::Connect, "x.test", 80),
            Some(Verdict::Deny(DenyReason::Default))
        );
    }

    /// The verdict for an anonymous client and a destination address written as text.
    fn anon(p: &Policy, cmd: Command, dest: &str, port: u16) -> Verdict {
        p.check(None, cmd, None, ip(dest), port)
    }

    #[test]
    fn embedded_ipv4_is_unwrapped_for_every_check() {
        let cases = [
            ("::7f00:1", "127.0.0.1"),
            ("::ffff:0:7f00:1", "127.0.0.1"),
            ("64:ff9b::7f00:1", "127.0.0.1"),
            ("64:ff9b:1::a9fe:a9fe", "169.254.169.254"),
            ("2002:7f00:1::1", "127.0.0.1"),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "127.0.0.1"),
        ];
        for (v6, v4) in cases {
            let IpAddr::V6(six) = ip(v6) else { panic!() };
            let v4: Ipv4Addr = v4.parse().unwrap();
            assert!(embedded_ipv4(six, &[]).contains(&v4), "{v6}");
        }
        assert!(embedded_ipv4("2001:db8::1".parse().unwrap(), &[]).is_empty());
        assert!(embedded_ipv4(Ipv6Addr::LOCALHOST, &[]).is_empty());
        assert!(embedded_ipv4(Ipv6Addr::UNSPECIFIED, &[]).is_empty());
        // RFC 6052 section 2.4's examples: 192.0.2.33 under each prefix length.
        for (v6, len) in [
            ("2001:db8:c000:221::", 32),
            ("2001:db8:1c0:2:21::", 40),
            ("2001:db8:122:c000:2:2100::", 48),
            ("2001:db8:122:3c0:0:221::", 56),
            ("2001:db8:122:344:c0:2:2100:0", 64),
            ("2001:db8:122:344::192.0.2.33", 96),
        ] {
            let IpAddr::V6(six) = ip(v6) else { panic!() };
            assert_eq!(
                rfc6052_ipv4(six, len),
                Some(Ipv4Addr::new(192, 0, 2, 33)),
                "{v6}"
            );
        }
        // The local-use prefix (/96 layout): loopback refused, a public address reachable.
        let p = policy("");
        assert_eq!(
            anon(&p, Command::Connect, "64:ff9b:1::7f00:1", 80),
            Verdict::Deny(DenyReason::HostLocal)
        );
        assert_eq!(
            anon(&p, Command::Connect, "64:ff9b:1::c633:6401", 80),
            Verdict::Allow
        );
        // A network's own prefix in the /48 layout.
        let p = policy("nat64_prefixes = [\"2001:db8:64::/48\"]\n");
        assert_eq!(
            anon(&p, Command::Connect, "2001:db8:64:7f00:0:100::", 80),
            Verdict::Deny(DenyReason::HostLocal)
        );
        let p = policy("nat64_prefixes = [\"2001:db8:64::/96\"]\n");
        assert_eq!(
            anon(&p, Command::Connect, "2001:db8:64::7f00:1", 80),
            Verdict::Deny(DenyReason::HostLocal)
        );
        assert_eq!(
            anon(&p, Command::Connect, "2001:db8:64::c000:221", 80),
            Verdict::Allow
        );
        let p = policy("");
        for (v6, _) in cases {
            assert_eq!(
                anon(&p, Command::Connect, v6, 80),
                Verdict::Deny(DenyReason::HostLocal),
                "{v6}"
            );
        }
        // Public IPv4 through NAT64 stays reachable...
        assert_eq!(
            anon(&p, Command::Connect, "64:ff9b::c000:201", 80),
            Verdict::Allow
        );
        // ...and the operator's IPv4 rules apply to it.
        let p = policy("[[rules]]\naction = \"deny\"\nto = [\"192.0.2.0/24\"]\n");
        for a in ["64:ff9b::c000:201", "2002:c000:201::1", "::c000:201"] {
            assert_eq!(
                anon(&p, Command::UdpAssociate, a, 53),
                Verdict::Deny(DenyReason::Rule(0)),
                "{a}"
            );
        }
        // Opening loopback by name opens it in its embedded forms too, not more.
        let p = policy("[[rules]]\naction = \"allow\"\nto = [\"127.0.0.1/32\"]\n");
        assert_eq!(
            anon(&p, Command::Connect, "64:ff9b::7f00:1", 80),
            Verdict::Allow
        );
        assert_eq!(
            anon(&p, Command::Connect, "64:ff9b::7f00:2", 80),
            Verdict::Deny(DenyReason::HostLocal)
        );
    }

    #[test]
    fn multicast_and_broadcast_closed_unless_named() {
        let p = policy("[[rules]]\naction = \"allow\"\nto = [\"0.0.0.0/0\", \"::/0\"]\n");
        for a in [
            "239.255.255.250",
            "224.0.0.1",
            "224.0.0.251",
            "ff02::1",
            "ff05::c",
        ] {
            assert_eq!(
                anon(&p, Command::UdpAssociate, a, 1900),
                Verdict::Deny(DenyReason::Multicast),
                "{a}"
            );
        }
        assert_eq!(
            anon(&p, Command::UdpAssociate, "255.255.255.255", 67),
            Verdict::Deny(DenyReason::Broadcast)
        );
        for b in p.host_view().broadcast {
            // 127.255.255.255 is refused as loopback before its broadcast route is looked at.
            let v = p.check(None, Command::UdpAssociate, None, b, 9);
            assert!(
                matches!(
                    v,
                    Verdict::Deny(DenyReason::Broadcast | DenyReason::HostLocal)
                ),
                "{b}: {v:?}"
            );
        }
        let p = policy(
            "[[rules]]\naction = \"allow\"\nto = [\"239.255.255.250/32\"]\ncommands = [\"udp\"]\n",
        );
        assert_eq!(
            anon(&p, Command::UdpAssociate, "239.255.255.250", 1900),
            Verdict::Allow
        );
        assert_eq!(
            anon(&p, Command::UdpAssociate, "239.255.255.251", 1900),
            Verdict::Deny(DenyReason::Multicast)
        );
    }

    #[test]
    fn domain_suffixes() {
        assert!(domain_matches("example.com", "example.com"));
        assert!(domain_matches("example.com", "A.Example.COM."));
        assert!(!domain_matches("example.com", "badexample.com"));
        assert!(!domain_matches(".example.com", "example.com"));
        assert!(domain_matches(".example.com", "x.example.com"));
        assert!(!domain_matches("example.com", "com"));
    }

    #[test]
    fn client_networks() {
        let p = policy("");
        assert!(p.client_allowed(ip("127.0.0.1")));
        assert!(p.client_allowed(ip("::ffff:127.0.0.1")));
        assert!(p.client_allowed(ip("::1")));
        assert!(!p.client_allowed(ip("192.0.2.1")));
    }
}
