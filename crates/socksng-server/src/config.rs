//! Server configuration: the TOML schema, its built-in defaults and the checks that run before
//! a single socket is opened (so a bad file fails with a line number, not at 3 a.m.).

use ipnet::IpNet;
use serde::Deserialize;
use socksng_proto::Command;
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// TOML syntax or schema error; the message carries line and column.
    #[error("{0}")]
    Parse(String),
    /// The file parses but describes something the server must not or cannot do.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which authentication methods the server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMethod {
    /// Method 0x00.
    None,
    /// Method 0x02, checked against the users file.
    Password,
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Accepted methods; a client offering both gets username/password.
    pub methods: Vec<AuthMethod>,
    /// File of `name:argon2-hash` lines; relative paths are relative to the config file.
    pub users_file: Option<PathBuf>,
    /// Check passwords with PAM under this service name (`/etc/pam.d/NAME`), as the system's
    /// own logins are, instead of a users file. Needs a build with the `pam` feature.
    pub pam_service: Option<String>,
    /// Serve SOCKS4/4a CONNECT and BIND (only possible when "none" is accepted); refused
    /// requests get SOCKS4's "rejected" (91).
    pub socks4: bool,
    /// Refuse username/password logins that would cross the network in the clear: a client
    /// that is neither on TLS nor on this host is not offered method 0x02.
    pub require_tls_for_passwords: bool,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            methods: vec![AuthMethod::None],
            users_file: None,
            pam_service: None,
            socks4: true,
            require_tls_for_passwords: false,
        }
    }
}

/// `[timeouts]`. A zero duration switches the optional ones off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// From accept to a complete request; slow or silent clients are cut off after it.
    #[serde(with = "humantime_serde")]
    pub handshake: Duration,
    /// Connecting to a target, all address attempts together (reply 0x06 when it runs out).
    #[serde(with = "humantime_serde")]
    pub connect: Duration,
    /// Close a relay (CONNECT, BIND, ACCEPT) or a LISTEN control connection with no traffic
    /// either way for this long; 0 = never (default).
    #[serde(with = "humantime_serde")]
    pub idle: Duration,
    /// End a UDP association or UDP tunnel that carried no datagram either way for this long
    /// (its client may have vanished without closing); 0 = never.
    #[serde(with = "humantime_serde")]
    pub udp_idle: Duration,
    /// Once a relay's client has closed its sending direction, end the relay when the target
    /// sends nothing for this long, so a client that has gone does not hold a silent target
    /// (and its slot) forever; 0 = never. Long enough for a client that half-closes after its
    /// request and waits for a slow answer.
    #[serde(with = "humantime_serde")]
    pub half_close: Duration,
    /// How long a BIND waits for its peer.
    #[serde(with = "humantime_serde")]
    pub bind: Duration,
    /// TCP keepalive idle time on both legs; 0 = off.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// After SIGTERM/SIGINT, how long running sessions may drain before they are cut.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            handshake: Duration::from_secs(10),
            connect: Duration::from_secs(10),
            idle: Duration::ZERO,
            udp_idle: Duration::from_secs(300),
            half_close: Duration::from_secs(300),
            bind: Duration::from_secs(120),
            tcp_keepalive: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// `[limits]`. Zero means unlimited, except where a field says otherwise.
///
/// A "client address" is an IPv4 address or an IPv6 /64: one subscriber holds a whole /64
/// and could otherwise take a new address for every connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Concurrent sessions past authentication, in total.
    pub max_sessions: usize,
    /// Concurrent sessions per user (an anonymous client: per address); 0 for no limit.
    pub max_sessions_per_user: usize,
    /// Concurrent sessions past authentication per client address.
    pub max_sessions_per_address: usize,
    /// Concurrent connections still in their handshake (not yet authenticated), in total.
    /// They hold no session slot, so silent connections cannot lock out logged-in users.
    pub max_handshakes: usize,
    /// Concurrent connections still in their handshake per client address.
    pub max_handshakes_per_address: usize,
    /// Password checks (argon2, ~19 MiB and tens of milliseconds each) running at once;
    /// 0 = one per core, at most 4.
    pub password_checks: usize,
    /// Password checks waiting for a turn; a login beyond this fails at once (status 0x01).
    /// 0: no bound (the handshake limits still bound it).
    pub password_queue: usize,
    /// Failed logins one client address may make in a burst before it is throttled: while
    /// throttled its logins fail at once without a check, right password or not.
    pub login_failures_burst: u32,
    /// How fast a throttled address earns further attempts back, per minute.
    pub login_failures_per_minute: u32,
    /// Name lookups (getaddrinfo, which cannot be cancelled) running at once; more wait their
    /// turn. Each holds a thread until the system resolver gives up. At least 1.
    pub lookups: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_sessions: 10_000,
            max_sessions_per_user: 0,
            max_sessions_per_address: 1_000,
            max_handshakes: 1_000,
            max_handshakes_per_address: 64,
            password_checks: 0,
            password_queue: 64,
            login_failures_burst: 10,
            login_failures_per_minute: 6,
            lookups: 32,
        }
    }
}

/// Address family tried first when a name has both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FamilyPreference {
    /// IPv6 first (RFC 8305's recommendation).
    Ipv6,
    /// IPv4 first.
    Ipv4,
}

/// `[resolver]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResolverConfig {
    /// Which family gets the first connection attempt.
    pub prefer: FamilyPreference,
    /// Delay before racing the next address (RFC 8305 "Connection Attempt Delay").
    #[serde(with = "humantime_serde")]
    pub attempt_delay: Duration,
}

impl Default for ResolverConfig {
    fn default() -> Self {
        ResolverConfig {
            prefer: FamilyPreference::Ipv6,
            attempt_delay: Duration::from_millis(250),
        }
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let it through.
    Allow,
    /// Refuse with reply 0x02 (or drop, for datagrams).
    Deny,
}

/// A port or an inclusive port range, written `"443"`, `443` or `"8000-8999"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(try_from = "PortSpec")]
pub struct PortRange(pub RangeInclusive<u16>);

#[derive(Deserialize)]
#[serde(untagged)]
enum PortSpec {
    Number(u16),
    Text(String),
}

impl TryFrom<PortSpec> for PortRange {
    type Error = String;
    fn try_from(spec: PortSpec) -> Result<Self, String> {
        let text = match spec {
            PortSpec::Number(p) => return Ok(PortRange(p..=p)),
            PortSpec::Text(t) => t,
        };
        let parse = |s: &str| {
            s.trim()
                .parse::<u16>()
                .map_err(|_| format!("bad port {s:?} in {text:?}"))
        };
        let range = match text.split_once('-') {
            Some((a, b)) => parse(a)?..=parse(b)?,
            None => parse(&text)?..=parse(&text)?,
        };
        if range.is_empty() {
            return Err(format!("empty port range {text:?}"));
        }
        Ok(PortRange(range))
    }
}

/// A command name as written in rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleCommand {
    /// CONNECT (SOCKS5 and SOCKS4).
    Connect,
    /// BIND.
    Bind,
    /// UDP ASSOCIATE, checked per datagram.
    Udp,
}

impl RuleCommand {
    /// Whether this names `c`.
    pub fn matches(self, c: Command) -> bool {
        matches!(
            (self, c),
            (RuleCommand::Connect, Command::Connect)
                | (RuleCommand::Bind, Command::Bind)
                | (RuleCommand::Udp, Command::UdpAssociate)
        )
    }
}

/// One `[[rules]]` entry. Empty lists match everything; rules are tried in order and the
/// first match decides.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    /// allow or deny.
    pub action: Action,
    /// User names; `"*"` is any authenticated user. Absent: anyone, even unauthenticated.
    pub users: Option<Vec<String>>,
    /// Destination networks.
    #[serde(default)]
    pub to: Vec<IpNet>,
    /// Destination domain suffixes: `"example.com"` matches it and every subdomain, a leading
    /// dot (`".example.com"`) only subdomains.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Commands; absent: all.
    pub commands: Option<Vec<RuleCommand>>,
}

/// One served range announced in CAPABILITIES: destinations matching every kind of field given.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServedRangeConfig {
    /// Networks.
    #[serde(default)]
    pub to: Vec<IpNet>,
    /// Domain suffixes.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Ports.
    #[serde(default)]
    pub ports: Vec<PortRange>,
}

/// One `[[ng.ports]]` grant: ports LISTEN may take, and for whom.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortGrant {
    /// The ports (at least one).
    #[serde(deserialize_with = "non_empty_ports")]
    pub ports: Vec<PortRange>,
    /// Who may listen on them: user names, `"*"` for any authenticated user; absent for
    /// anyone, unauthenticated clients included. A port listed for some users is reserved:
    /// others get "port reserved".
    pub users: Option<Vec<String>>,
}

/// A grant of no ports is a mistake, refused where it is written (with its line).
fn non_empty_ports<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<PortRange>, D::Error> {
    let ports = Vec::<PortRange>::deserialize(d)?;
    if ports.is_empty() {
        return Err(serde::de::Error::custom(
            "`ports` is empty: a grant names at least one port or range",
        ));
    }
    Ok(ports)
}

/// `[ng]`: the SOCKS-NG extensions (docs/draft-socksng.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NgConfig {
    /// Select the SOCKS-NG method when a client offers it. Plain SOCKS5 clients never offer
    /// it, so they are unaffected either way.
    pub enabled: bool,
    /// Ranges announced by CAPABILITIES; empty: derived from the access rules.
    pub served: Vec<ServedRangeConfig>,
    /// Port grants for LISTEN. Default: 1024-65535 for any authenticated user, nothing for
    /// unauthenticated clients.
    pub ports: Vec<PortGrant>,
    /// How long an accept token waits to be claimed.
    #[serde(with = "humantime_serde")]
    pub token_lifetime: Duration,
    /// Listeners one user (an anonymous client: one address) may hold at once.
    pub max_listeners_per_user: usize,
    /// Bytes queued towards a UDP-TUNNEL client before datagrams are dropped.
    pub udp_tunnel_queue: usize,
}

impl Default for NgConfig {
    fn default() -> Self {
        NgConfig {
            enabled: true,
            served: Vec::new(),
            ports: vec![PortGrant {
                ports: vec![PortRange(1024..=65535)],
                users: Some(vec!["*".into()]),
            }],
            token_lifetime: Duration::from_secs(30),
            max_listeners_per_user: 16,
            udp_tunnel_queue: 256 * 1024,
        }
    }
}

/// `[access]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    /// Client networks that may use the server at all.
    pub clients: Vec<IpNet>,
    /// What happens when no rule matches.
    pub default: Action,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            clients: vec!["127.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            default: Action::Allow,
        }
    }
}

/// One `[[upstreams]]` entry: a SOCKS server this one can pass requests on to.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    /// The name routes use.
    pub name: String,
    /// `socks5h://`, `socks5://`, `socks5s://` (TLS), `socks4a://` or `socks4://`, with
    /// `user:password@` when the upstream wants a login. SOCKS-NG is offered to every SOCKS5
    /// upstream; a plain SOCKS5 server (Dante, ssh -D) just picks another method.
    pub url: String,
    /// For `socks5s://`: PEM CA file the upstream's certificate is checked against (default:
    /// the system's roots).
    pub tls_ca: Option<PathBuf>,
    /// For `socks5s://`: the SHA-256 of the upstream's public key, `sha256//BASE64`.
    pub tls_pin: Option<String>,
    /// For `socks5s://`: a client certificate (PEM) and its key, when the upstream asks.
    pub tls_cert: Option<PathBuf>,
    /// Its key.
    pub tls_key: Option<PathBuf>,
}

/// One `[[routes]]` entry: which requests go where. Matched like rules (empty lists match
/// everything; the first route that matches decides); a request no route matches goes direct.
/// A route with networks in `to` matches requests for addresses only: a named destination is
/// resolved by whoever serves the route, never here to choose it.
///
/// The selecting fields repeat [`RuleConfig`]'s: serde cannot flatten a shared struct into one
/// that denies unknown fields, and a misspelt key must stay an error.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// User names or `"@group"`s; `"*"` is any authenticated user. Absent: anyone.
    pub users: Option<Vec<String>>,
    /// Destination networks.
    #[serde(default)]
    pub to: Vec<IpNet>,
    /// Destination domain suffixes, as in rules.
    #[serde(default)]
    pub domains: Vec<String>,
    /// Destination ports.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    /// Commands; absent: all.
    pub commands: Option<Vec<RuleCommand>>,
    /// Upstream names in order of preference, or `"direct"`; an upstream that fails is
    /// passed over for `forwarding.retry_after` and the next one is used. Direct is used only
    /// where it is listed.
    pub via: Vec<String>,
}

/// `[forwarding]`: how requests passed on to upstreams behave.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    /// Requests that passed through this many SOCKS servers already (their HOPS, draft
    /// section 3.3) are refused with X'0F': a forwarding loop ends here.
    pub max_hops: u8,
    /// How long an upstream that failed is passed over.
    #[serde(with = "humantime_serde")]
    pub retry_after: Duration,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        ForwardingConfig {
            max_hops: 8,
            retry_after: Duration::from_secs(30),
        }
    }
}

/// The word `via` uses for "no upstream".
pub const DIRECT: &str = "direct";

/// Which field of a client certificate names the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertUserField {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first e-mail address among the subject alternative names.
    Email,
    /// The first DNS name among the subject alternative names.
    Dns,
}

/// What a client certificate is worth for the SOCKS login.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CertLogin {
    /// The certificate's user is logged in; no password is asked.
    #[default]
    Alone,
    /// The client must also log in with a password, as the certificate's user.
    WithPassword,
}

/// `[admin]`: the control socket of the admin view.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// A Unix socket (created mode 0600) on which `socksngd sessions` and `socksngd kill ID`
    /// reach the running server; relative to the config file's directory. Absent: none.
    pub socket: Option<PathBuf>,
}

/// A rate in bytes a second, written as a number of bytes a second or with a unit: `bit`,
/// `kbit`, `Mbit`, `Gbit` (bits, powers of 1000), `B`, `kB`/`KB`, `MB`, `GB` (bytes, powers of
/// 1000), `KiB`, `MiB`, `GiB`; an optional `/s` or `ps` after the unit ("20 Mbit", "2.5MB/s").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RateSpec")]
pub struct Rate(pub u64);

#[derive(Deserialize)]
#[serde(untagged)]
enum RateSpec {
    Number(u64),
    Text(String),
}

impl TryFrom<RateSpec> for Rate {
    type Error = String;
    fn try_from(spec: RateSpec) -> Result<Rate, String> {
        let text = match spec {
            RateSpec::Number(n) => return Rate::checked(n as f64),
            RateSpec::Text(t) => t,
        };
        let t = text.trim();
        let t = t
            .strip_suffix("/s")
            .or_else(|| t.strip_suffix("ps"))
            .unwrap_or(t);
        let split = t
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(t.len());
        let (number, unit) = t.split_at(split);
        let number: f64 = number
            .parse()
            .map_err(|_| format!("{text:?} is not a rate (like \"20 Mbit\" or \"2MB\")"))?;
        let factor = match unit.trim() {
            "" | "B" => 1.0,
            "bit" => 1.0 / 8.0,
            "kbit" | "Kbit" => 1e3 / 8.0,
            "Mbit" => 1e6 / 8.0,
            "Gbit" => 1e9 / 8.0,
            "kB" | "KB" => 1e3,
            "MB" => 1e6,
            "GB" => 1e9,
            "KiB" => 1024.0,
            "MiB" => 1024.0 * 1024.0,
            "GiB" => 1024.0 * 1024.0 * 1024.0,
            other => return Err(format!("{text:?}: unknown unit {other:?}")),
        };
        Rate::checked(number * factor)
    }
}

impl Rate {
    fn checked(bytes_per_second: f64) -> Result<Rate, String> {
        if bytes_per_second < 1.0 || !bytes_per_second.is_finite() {
            return Err("a rate must be at least 1 byte a second".into());
        }
        Ok(Rate(bytes_per_second as u64))
    }
}

/// `[uplink]`: the capacity of the way out, which classes share by weight when it is
/// contended. Absent: no sharing (each class is held only to its own limits).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UplinkConfig {
    /// Client-to-target capacity.
    pub up: Option<Rate>,
    /// Target-to-client capacity.
    pub down: Option<Rate>,
}

/// `[[classes]]`: a service class. A user is in the first class whose `users` names them; a
/// class without `users` takes everyone (anonymous clients included) not in an earlier one.
/// Without a class, a user is in the built-in class "default" (weight 1, no limits).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    /// The class's name (in logs, the audit log, metrics and the admin view).
    pub name: String,
    /// Who is in it: user names, `"*"` for any authenticated user, `"@group"`.
    pub users: Option<Vec<String>>,
    /// Its share of a contended `[uplink]` against other classes' weights.
    #[serde(default = "one")]
    pub weight: u32,
    /// Each user's limit client-to-target, over all their sessions.
    pub up: Option<Rate>,
    /// Each user's limit target-to-client, over all their sessions.
    pub down: Option<Rate>,
    /// Each user's sessions at once (instead of `limits.max_sessions_per_user`). Here and
    /// below, an anonymous client counts as one user per address, as for its rates.
    pub max_sessions: Option<usize>,
    /// Each user's SOCKS-NG listeners at once (instead of `ng.max_listeners_per_user`).
    pub max_listeners: Option<usize>,
    /// Each user's UDP associations and tunnels at once (default: no limit of its own).
    pub max_udp: Option<usize>,
    /// Linux: SO_MARK on the class's outgoing sockets, for policy routing, tc and nftables.
    pub mark: Option<u32>,
    /// DSCP (0 to 63) on the class's outgoing packets (IP_TOS / IPV6_TCLASS).
    pub dscp: Option<u8>,
}

fn one() -> u32 {
    1
}

/// The class of users no configured class takes.
pub static DEFAULT_CLASS: std::sync::LazyLock<ClassConfig> =
    std::sync::LazyLock::new(|| ClassConfig {
        name: "default".into(),
        users: None,
        weight: 1,
        up: None,
        down: None,
        max_sessions: None,
        max_listeners: None,
        max_udp: None,
        mark: None,
        dscp: None,
    });

/// `[discovery]`: how this server is announced to the network (draft section 10).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiscoveryConfig {
    /// The proxy URLs announced, in order of preference (socks5h://, socks5s://); empty: one
    /// per listen address (socks5h) and per TLS listen address (socks5s).
    pub urls: Vec<String>,
    /// The DHCPv4 site-specific option code (224 to 254) the network uses.
    pub dhcp_code: u8,
    /// The enterprise number of the DHCPv6 Vendor-specific Information option; the default
    /// is the number reserved for documentation (RFC 5612): set the site's own.
    pub dhcpv6_enterprise: u32,
    /// Where `GET /.well-known/pvd` (provisioning-domain JSON) and `GET /proxy.pac` (a PAC
    /// file) are served, over HTTP and, with `[tls]`, HTTPS on the same port; absent: nowhere.
    pub http: Option<SocketAddr>,
    /// The PvD identifier (an FQDN) of `/.well-known/pvd`; default: the proxy's host.
    pub pvd_identifier: Option<String>,
    /// The IPv6 prefixes of the network this PvD describes (RFC 8801 `prefixes`: those its
    /// Router Advertisements carry); empty for a proxy's own PvD.
    pub pvd_prefixes: Vec<ipnet::Ipv6Net>,
    /// Announce the server by DNS-SD over mDNS (`_socksng._tcp`, draft section 10.5) on the
    /// links of its listen addresses (a build with the `mdns` feature).
    pub mdns: bool,
    /// The DNS-SD instance name; default: "socksng on HOSTNAME".
    pub mdns_name: Option<String>,
}

impl Default for DiscoveryConfig {
    fn default() -> Self {
        DiscoveryConfig {
            urls: Vec::new(),
            dhcp_code: socksng_proto::wire::discovery::DEFAULT_DHCP_CODE,
            dhcpv6_enterprise: 32473,
            http: None,
            pvd_identifier: None,
            pvd_prefixes: Vec::new(),
            mdns: false,
            mdns_name: None,
        }
    }
}

/// `[reload]`: what a reload (SIGHUP) does to sessions already running.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReloadConfig {
    /// Judge running sessions again under the new configuration and end those it refuses (a
    /// user removed, a client network or a destination no longer allowed). Off: running
    /// sessions keep the rules they started with.
    pub recheck_sessions: bool,
}

/// `[audit]`: the audit log (one JSON object per line; see `audit.rs` and the README).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The file records are appended to (created mode 0600, reopened on SIGUSR1 and SIGHUP
    /// for log rotation); relative to the config file's directory.
    pub file: Option<PathBuf>,
    /// Send the records to syslog (facility authpriv, tag socksngd-audit) instead of a file.
    pub syslog: bool,
    /// Records waiting for the sink; beyond that they are dropped and counted (a `dropped`
    /// record says how many), so a slow disk never slows a relay.
    pub queue: usize,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            file: None,
            syslog: false,
            queue: 8192,
        }
    }
}

impl AuditConfig {
    /// Where the records go; `None` when there is no audit log.
    pub fn sink(&self, base_dir: &Path) -> Option<crate::audit::Sink> {
        match (&self.file, self.syslog) {
            (_, true) => Some(crate::audit::Sink::Syslog),
            (Some(f), false) => Some(crate::audit::Sink::File(base_dir.join(f))),
            (None, false) => None,
        }
    }
}

/// `[metrics]`: the Prometheus endpoint.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Where `GET /metrics` is served (OpenMetrics text); absent: no endpoint. Keep it on
    /// loopback or a management network: it tells who uses the proxy how much.
    pub listen: Option<SocketAddr>,
}

/// `[tls]`: SOCKS over TLS (docs/draft-socksng.md section 6.4).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first; read again on SIGHUP.
    pub cert: PathBuf,
    /// PEM private key of the leaf; read again on SIGHUP.
    pub key: PathBuf,
    /// Addresses that take SOCKS over TLS only.
    #[serde(default)]
    pub listen: Vec<SocketAddr>,
    /// Whether the plain `listen` addresses also take TLS, told apart by the first byte.
    #[serde(default = "yes")]
    pub on_plain_listeners: bool,
    /// PEM CA certificates client certificates are checked against; without it none is asked.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients without a valid certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// Which certificate field names the user.
    #[serde(default)]
    pub user_from: CertUserField,
    /// Whether the certificate logs its user in alone or only with that user's password.
    #[serde(default)]
    pub cert_login: CertLogin,
}

fn yes() -> bool {
    true
}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Addresses to listen on.
    pub listen: Vec<SocketAddr>,
    /// Allow listening on a non-loopback address with no authentication and no client network
    /// restriction, i.e. run an open proxy on purpose.
    pub allow_open_proxy: bool,
    /// Log level filter (RUST_LOG overrides it).
    pub log_level: String,
    /// Write the log to this file (appended, reopened on SIGHUP for log rotation) instead of
    /// standard error; relative to the config file's directory.
    pub log_file: Option<PathBuf>,
    /// Runtime worker threads; 0 picks one per core.
    pub workers: usize,
    /// Source addresses for outgoing connections and datagrams (Dante's `external`): the first
    /// of the target's family is bound before connecting; with none of that family the kernel
    /// chooses, as it does when the list is empty.
    pub external: Vec<std::net::IpAddr>,
    /// The network's own NAT64 prefixes (RFC 6052: /32, /40, /48, /56, /64 or /96), beside the
    /// well-known 64:ff9b::/96: an address under one carries an IPv4 address, which the
    /// policy judges too.
    pub nat64_prefixes: Vec<IpNet>,
    /// `[auth]`.
    pub auth: AuthConfig,
    /// `[access]`.
    pub access: AccessConfig,
    /// `[timeouts]`.
    pub timeouts: Timeouts,
    /// `[limits]`.
    pub limits: Limits,
    /// `[resolver]`.
    pub resolver: ResolverConfig,
    /// `[[rules]]`.
    pub rules: Vec<RuleConfig>,
    /// `[ng]`.
    pub ng: NgConfig,
    /// `[tls]`.
    pub tls: Option<TlsConfig>,
    /// `[[upstreams]]`.
    pub upstreams: Vec<UpstreamConfig>,
    /// `[[routes]]`.
    pub routes: Vec<RouteConfig>,
    /// `[forwarding]`.
    pub forwarding: ForwardingConfig,
    /// `[metrics]`.
    pub metrics: MetricsConfig,
    /// `[admin]`.
    pub admin: AdminConfig,
    /// `[audit]`.
    pub audit: AuditConfig,
    /// `[reload]`.
    pub reload: ReloadConfig,
    /// `[uplink]`.
    pub uplink: UplinkConfig,
    /// `[discovery]`.
    pub discovery: DiscoveryConfig,
    /// `[[classes]]`.
    pub classes: Vec<ClassConfig>,
    /// `[groups]`: group name to member user names. Rules and port grants name a group as
    /// `"@name"` in their `users` lists.
    pub groups: std::collections::HashMap<String, Vec<String>>,
    /// Directory relative paths are resolved against (the config file's).
    #[serde(skip)]
    pub base_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: vec![
                "127.0.0.1:1080".parse().unwrap(),
                "[::1]:1080".parse().unwrap(),
            ],
            allow_open_proxy: false,
            log_level: "info".into(),
            log_file: None,
            workers: 0,
            external: Vec::new(),
            nat64_prefixes: Vec::new(),
            auth: AuthConfig::default(),
            access: AccessConfig::default(),
            timeouts: Timeouts::default(),
            limits: Limits::default(),
            resolver: ResolverConfig::default(),
            rules: Vec::new(),
            ng: NgConfig::default(),
            groups: Default::default(),
            tls: None,
            upstreams: Vec::new(),
            routes: Vec::new(),
            forwarding: ForwardingConfig::default(),
            metrics: MetricsConfig::default(),
            admin: AdminConfig::default(),
            audit: AuditConfig::default(),
            reload: ReloadConfig::default(),
            uplink: UplinkConfig::default(),
            discovery: DiscoveryConfig::default(),
            classes: Vec::new(),
            base_dir: PathBuf::from("."),
        }
    }
}

impl Config {
    /// Parses and validates configuration text.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config =
            toml::from_str(text).map_err(|e| ConfigError::Parse(e.to_string()))?;
        cfg.base_dir = base_dir.to_path_buf();
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        Self::from_toml(&text, base).map_err(|e| match e {
            ConfigError::Parse(msg) => ConfigError::Parse(format!("{}: {msg}", path.display())),
            other => other,
        })
    }

    /// The users file path, resolved against the config file's directory.
    pub fn users_file(&self) -> Option<PathBuf> {
        self.auth.users_file.as_ref().map(|p| self.base_dir.join(p))
    }

    /// The log file path, resolved against the config file's directory.
    pub fn log_file(&self) -> Option<PathBuf> {
        self.log_file.as_ref().map(|p| self.base_dir.join(p))
    }

    /// A path of the configuration, resolved against the config file's directory.
    pub fn path(&self, p: &Path) -> PathBuf {
        self.base_dir.join(p)
    }

    /// Every address the server listens on: the plain ones, then the TLS-only ones.
    pub fn all_listen(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        let tls = self.tls.iter().flat_map(|t| t.listen.iter());
        self.listen.iter().chain(tls).copied()
    }

    /// The service class of `user` (`None`: an anonymous client).
    pub fn class_of(&self, user: Option<&str>) -> &ClassConfig {
        self.classes
            .iter()
            .find(|c| names_user(c.users.as_deref(), user, &self.groups))
            .unwrap_or(&DEFAULT_CLASS)
    }

    /// Whether method 0x00 is accepted.
    pub fn accepts_no_auth(&self) -> bool {
        self.auth.methods.contains(&AuthMethod::None)
    }

    /// Whether method 0x02 is accepted.
    pub fn accepts_password(&self) -> bool {
        self.auth.methods.contains(&AuthMethod::Password)
    }

    /// Checks what serde cannot: consistency, and that no open proxy starts by accident.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let user_lists = self
            .rules
            .iter()
            .filter_map(|r| r.users.as_ref())
            .chain(self.ng.ports.iter().filter_map(|g| g.users.as_ref()))
            .chain(self.classes.iter().filter_map(|c| c.users.as_ref()));
        for name in user_lists.flatten() {
            if let Some(group) = name.strip_prefix('@') {
                if !self.groups.contains_key(group) {
                    return invalid(format!("{name:?} names a group missing from [groups]"));
                }
            }
        }
        if self.all_listen().next().is_none() {
            return invalid("`listen` is empty: give at least one address".into());
        }
        let mut class_names = std::collections::HashSet::new();
        for class in &self.classes {
            if !class_names.insert(class.name.as_str()) {
                return invalid(format!("class {:?} is defined twice", class.name));
            }
            if class.weight == 0 {
                return invalid(format!(
                    "class {:?}: `weight` must be at least 1",
                    class.name
                ));
            }
            if class.dscp.is_some_and(|d| d > 63) {
                return invalid(format!("class {:?}: `dscp` is 0 to 63", class.name));
            }
        }
        if self.discovery.mdns && !cfg!(feature = "mdns") {
            return invalid("`discovery.mdns`: this build has no mDNS (the `mdns` feature)".into());
        }
        if !socksng_proto::wire::discovery::is_site_specific(self.discovery.dhcp_code) {
            return invalid(format!(
                "`discovery.dhcp_code` {} is not a site-specific DHCP option code (224 to 254)",
                self.discovery.dhcp_code
            ));
        }
        if let Err(e) = crate::discovery::check_urls(&self.discovery.urls) {
            return invalid(format!("`discovery.urls`: {e}"));
        }
        if self.audit.file.is_some() && self.audit.syslog {
            return invalid("`audit`: give `file` or `syslog = true`, not both".into());
        }
        if self.auth.methods.is_empty() {
            return invalid("`auth.methods` is empty: use \"none\", \"password\" or both".into());
        }
        if self.auth.pam_service.is_some() {
            if self.auth.users_file.is_some() {
                return invalid("`auth`: give `users_file` or `pam_service`, not both".into());
            }
            if !cfg!(feature = "pam") {
                return invalid(
                    "`auth.pam_service`: this build has no PAM support (the `pam` feature)".into(),
                );
            }
        }
        if self.accepts_password()
            && self.auth.users_file.is_none()
            && self.auth.pam_service.is_none()
        {
            return invalid(
                "`auth.methods` includes \"password\" but neither `auth.users_file` nor `auth.pam_service` is set".into(),
            );
        }
        if self.access.clients.is_empty() {
            return invalid("`access.clients` is empty: no client could ever connect".into());
        }
        // Deadlines are computed as now + duration; absurd values would overflow the clock.
        const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
        let t = &self.timeouts;
        for (key, d) in [
            ("timeouts.handshake", t.handshake),
            ("timeouts.connect", t.connect),
            ("timeouts.idle", t.idle),
            ("timeouts.udp_idle", t.udp_idle),
            ("timeouts.half_close", t.half_close),
            ("timeouts.bind", t.bind),
            ("timeouts.tcp_keepalive", t.tcp_keepalive),
            ("timeouts.shutdown_grace", t.shutdown_grace),
            ("ng.token_lifetime", self.ng.token_lifetime),
        ] {
            if d > MAX_DURATION {
                return invalid(format!("`{key}` is over ten years"));
            }
        }
        if self.timeouts.handshake.is_zero() || self.timeouts.connect.is_zero() {
            return invalid(
                "`timeouts.handshake` and `timeouts.connect` must be above zero".into(),
            );
        }
        for (i, rule) in self.rules.iter().enumerate() {
            check_domains(&format!("rules[{i}]"), &rule.domains)?;
        }
        for (i, served) in self.ng.served.iter().enumerate() {
            check_domains(&format!("ng.served[{i}]"), &served.domains)?;
        }
        for net in &self.nat64_prefixes {
            if !net.addr().is_ipv6() || ![32, 40, 48, 56, 64, 96].contains(&net.prefix_len()) {
                return invalid(format!(
                    "`nat64_prefixes`: {net} is not an IPv6 prefix of 32, 40, 48, 56, 64 or 96 bits (RFC 6052)"
                ));
            }
        }
        if let Some(tls) = &self.tls {
            if tls.require_client_cert && tls.client_ca.is_none() {
                return invalid("`tls.require_client_cert` needs `tls.client_ca`".into());
            }
            if tls.cert_login == CertLogin::WithPassword && !self.accepts_password() {
                return invalid(
                    "`tls.cert_login = \"with-password\"` needs \"password\" in `auth.methods`"
                        .into(),
                );
            }
        }
        self.validate_forwarding()?;
        if cfg!(not(feature = "metrics")) && self.metrics.listen.is_some() {
            return invalid(
                "`metrics.listen`: this socksngd was built without the `metrics` feature".into(),
            );
        }
        let all_listen: Vec<SocketAddr> = self.all_listen().collect();
        if let Some((a, b)) = overlapping_listens(&all_listen) {
            return invalid(if a == b {
                format!("`listen` names {a} twice")
            } else {
                format!("`listen` names both {a} and {b}: the wildcard address already takes that port on every address")
            });
        }
        if let Err(e) = check_log_filter(&self.log_level) {
            return invalid(format!("`log_level` {:?}: {e}", self.log_level));
        }
        if self.limits.login_failures_burst > 0 && self.limits.login_failures_per_minute == 0 {
            return invalid(
                "`limits.login_failures_per_minute` is 0: a throttled address would never log in \
                 again; set it above 0, or `login_failures_burst = 0` to switch throttling off"
                    .into(),
            );
        }
        if self.limits.lookups == 0 {
            return invalid("`limits.lookups` must be at least 1".into());
        }
        let any_client = covers_most_addresses(&self.access.clients);
        // A listener that takes only clients with a certificate is not open.
        let certs_required = self.tls.as_ref().is_some_and(|t| t.require_client_cert);
        let mut open_listeners = self.listen.iter().chain(
            self.tls
                .iter()
                .filter(|_| !certs_required)
                .flat_map(|t| t.listen.iter()),
        );
        if self.accepts_no_auth() && any_client && !self.allow_open_proxy {
            if let Some(a) = open_listeners.find(|a| !a.ip().is_loopback()) {
                return invalid(format!(
                    "refusing to listen on {a} without authentication for any client address: \
                     this would be an open proxy. Require \"password\" in `auth.methods`, \
                     narrow `access.clients`, or set `allow_open_proxy = true` if you mean it"
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    /// Upstream names, route targets, and the loops visible in the file: an upstream that is
    /// one of this server's own listening addresses.
    fn validate_forwarding(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.forwarding.max_hops == 0 {
            return invalid("`forwarding.max_hops` must be at least 1".into());
        }
        let mut names = std::collections::HashSet::new();
        for up in &self.upstreams {
            if up.name == DIRECT || !names.insert(up.name.as_str()) {
                return invalid(format!(
                    "upstream name {:?} is used twice or is the word \"{DIRECT}\"",
                    up.name
                ));
            }
            let url = self
                .upstream_url(up)
                .map_err(|e| ConfigError::Invalid(format!("upstream {:?}: {e}", up.name)))?;
            if let Some(own) = self.own_address(&url.host, url.port) {
                return invalid(format!(
                    "upstream {:?} is this server itself ({own}): requests would loop",
                    up.name
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if route.via.is_empty() {
                return invalid(format!("routes[{i}]: `via` is empty"));
            }
            for v in &route.via {
                if v != DIRECT && !names.contains(v.as_str()) {
                    return invalid(format!("routes[{i}]: no upstream is called {v:?}"));
                }
            }
            check_domains(&format!("routes[{i}]"), &route.domains)?;
        }
        Ok(())
    }

    /// The URL of an upstream with its TLS files (resolved against the config's directory).
    pub fn upstream_url(
        &self,
        up: &UpstreamConfig,
    ) -> Result<socksng_client::ProxyUrl, socksng_client::ClientError> {
        let url = socksng_client::ProxyUrl::parse(&up.url)?;
        let client_cert = match (&up.tls_cert, &up.tls_key) {
            (Some(c), Some(k)) => Some((self.path(c), self.path(k))),
            (None, None) => None,
            _ => {
                return Err(socksng_client::ClientError::Config(
                    "`tls_cert` and `tls_key` go together".into(),
                ))
            }
        };
        let ca = up.tls_ca.as_deref().map(|p| self.path(p));
        url.with_tls_options(ca, up.tls_pin.as_deref(), client_cert)
    }

    /// The listen address `host:port` reaches, when it names this server by address.
    fn own_address(&self, host: &str, port: u16) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = match host.parse() {
            Ok(ip) => ip,
            Err(_) if host.eq_ignore_ascii_case("localhost") => {
                std::net::Ipv4Addr::LOCALHOST.into()
            }
            Err(_) => return None,
        };
        let ip = ip.to_canonical();
        let this_host = || {
            ip.is_loopback()
                || if_addrs::get_if_addrs()
                    .map(|all| all.iter().any(|a| a.ip() == ip))
                    .unwrap_or(false)
        };
        self.all_listen().find(|l| {
            l.port() == port
                && port != 0
                && (l.ip() == ip
                    || (l.ip().is_unspecified() && l.is_ipv4() == ip.is_ipv4() && this_host()))
        })
    }
}

/// Two listen addresses that cannot both be bound: the same address and port, or a wildcard
/// and an address of its family on the same port. Port 0 (any free port) never clashes.
fn overlapping_listens(listen: &[SocketAddr]) -> Option<(SocketAddr, SocketAddr)> {
    for (i, a) in listen.iter().enumerate() {
        for b in &listen[i + 1..] {
            let clash = a.port() != 0
                && a.port() == b.port()
                && a.is_ipv4() == b.is_ipv4()
                && (a.ip() == b.ip() || a.ip().is_unspecified() || b.ip().is_unspecified());
            if clash {
                return Some((*a, *b));
            }
        }
    }
    None
}

/// Checks a log filter: a level (`error`, `warn`, `info`, `debug`, `trace`, `off`) or a
/// comma-separated list of levels and `target=level` directives. A bare word must be a level:
/// the wider RUST_LOG syntax would take a misspelt level for a target and log nothing else.
pub fn check_log_filter(filter: &str) -> Result<(), String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    let is_level = |l: &str| LEVELS.iter().any(|x| x.eq_ignore_ascii_case(l.trim()));
    let valid_target = |t: &str| {
        !t.is_empty()
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':' || c == '-')
    };
    for directive in filter.split(',') {
        let ok = match directive.split_once('=') {
            Some((target, level)) => valid_target(target.trim()) && is_level(level),
            None => is_level(directive),
        };
        if !ok {
            return Err(format!(
                "{:?} is not a level (error, warn, info, debug, trace, off) or target=level",
                directive.trim()
            ));
        }
    }
    Ok(())
}

/// Whether client networks, taken together, admit a large part of the Internet: at least a
/// sixteenth of the public IPv4 unicast space (private, shared, loopback, link-local, multicast
/// and reserved space not counted), or of IPv6 global unicast (2000::/3). No access list for a
/// site or a provider's customers comes near that; a union of nets ("0.0.0.0/1" and
/// "128.0.0.0/1") is as open as 0.0.0.0/0.
pub fn covers_most_addresses(nets: &[IpNet]) -> bool {
    const NOT_PUBLIC_V4: [&str; 9] = [
        "0.0.0.0/8",
        "10.0.0.0/8",
        "100.64.0.0/10",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "172.16.0.0/12",
        "192.168.0.0/16",
        "224.0.0.0/4",
        "240.0.0.0/4",
    ];
    let special: Vec<IpNet> = NOT_PUBLIC_V4
        .iter()
        .filter_map(|n| n.parse().ok())
        .collect();
    let size = |n: &IpNet| -> u128 { 1u128 << (n.max_prefix_len() - n.prefix_len()) };
    // The part of `n` inside `m` (CIDR blocks are nested or apart).
    let overlap = |n: &IpNet, m: &IpNet| -> u128 {
        if m.contains(n) {
            size(n)
        } else if n.contains(m) {
            size(m)
        } else {
            0
        }
    };
    let public_v4: u128 = (1u128 << 32) - special.iter().map(size).sum::<u128>();
    let global: IpNet = "2000::/3".parse().expect("valid net");
    let merged = IpNet::aggregate(&nets.iter().map(|n| n.trunc()).collect::<Vec<_>>());
    let (mut v4, mut v6): (u128, u128) = (0, 0);
    for n in &merged {
        match n {
            IpNet::V4(_) => v4 += size(n) - special.iter().map(|s| overlap(n, s)).sum::<u128>(),
            IpNet::V6(_) => v6 += overlap(n, &global),
        }
    }
    v4 >= public_v4 / 16 || v6 >= size(&global) / 16
}

/// Whether a `users` list (absent: anyone, unauthenticated clients included) names `user`:
/// by name, `"*"` for any authenticated user, or `"@group"` for a member of `[groups]`.
pub fn names_user(
    list: Option<&[String]>,
    user: Option<&str>,
    groups: &std::collections::HashMap<String, Vec<String>>,
) -> bool {
    let Some(list) = list else { return true };
    let Some(user) = user else { return false };
    list.iter().any(|entry| {
        entry == "*"
            || entry == user
            || entry
                .strip_prefix('@')
                .and_then(|g| groups.get(g))
                .is_some_and(|members| members.iter().any(|m| m == user))
    })
}

/// An annotated example configuration, shown by `socksngd --print-config` and in the README.
pub const EXAMPLE_CONFIG: &str = include_str!("../../../docs/socksngd.example.toml");

/// Domain suffixes as requests carry them and CAPABILITIES announces them: not empty, and
/// ASCII (draft section 4.3: internationalised names travel as A-labels, so one written in
/// Unicode would never match a request and must not be announced).
fn check_domains(what: &str, domains: &[String]) -> Result<(), ConfigError> {
    for d in domains {
        if d.trim_start_matches('.').is_empty() {
            return Err(ConfigError::Invalid(format!(
                "{what}: empty domain suffix {d:?}"
            )));
        }
        if !d.is_ascii() {
            return Err(ConfigError::Invalid(format!(
                "{what}: {d:?} is not ASCII: write an internationalised name as its A-label \
                 (xn--...), as clients send it"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::from_toml(s, Path::new("/etc/socksng"))
    }

    #[test]
    fn empty_file_is_the_default() {
        let c = parse("").unwrap();
        assert_eq!(c.listen.len(), 2);
        assert!(c.accepts_no_auth() && !c.accepts_password());
        assert_eq!(c.timeouts.idle, Duration::ZERO);
    }

    #[test]
    fn example_config_is_valid() {
        let c = parse(EXAMPLE_CONFIG).unwrap();
        assert!(c.accepts_password());
        assert!(!c.rules.is_empty());
        assert_eq!(c.users_file().unwrap(), Path::new("/etc/socksng/users"));
    }

    #[test]
    fn errors_carry_line_numbers() {
        let e =
            parse("listen = [\"127.0.0.1:1080\"]\n[timeouts]\nconnect = \"ten\"\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse("[[rules]]\naction = \"allow\"\nto = [\"10.0.0.0/33\"]\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse("\n\nbogus = 1\n").unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        let e = parse("[[rules]]\naction = \"allow\"\nports = [\"90-80\"]\n").unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("empty"),
            "{e}"
        );
    }

    #[test]
    fn ports_and_durations() {
        let c = parse(
            "[timeouts]\nidle = \"5m\"\n[[rules]]\naction = \"deny\"\nports = [25, \"6000-6063\"]\ncommands = [\"udp\"]\n",
        )
        .unwrap();
        assert_eq!(c.timeouts.idle, Duration::from_secs(300));
        assert_eq!(
            c.rules[0].ports,
            vec![PortRange(25..=25), PortRange(6000..=6063)]
        );
    }

    #[test]
    fn refuses_accidental_open_proxy() {
        let open = "listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"0.0.0.0/0\", \"::/0\"]\n";
        let e = parse(open).unwrap_err();
        assert!(e.to_string().contains("open proxy"), "{e}");
        assert!(parse(&format!("allow_open_proxy = true\n{open}")).is_ok());
        // Coverage counts, not spelling.
        for clients in [
            r#"["0.0.0.0/1", "128.0.0.0/1"]"#,
            r#"["0.0.0.0/2", "64.0.0.0/2", "128.0.0.0/2", "192.0.0.0/2"]"#,
            r#"["0.0.0.0/1", "10.0.0.0/8"]"#,
            r#"["2000::/4", "3000::/4"]"#,
            r#"["::/1"]"#,
            r#"["16.0.0.0/4"]"#,
            r#"["2000::/7"]"#,
        ] {
            let cfg = format!("listen = [\"0.0.0.0:1080\"]\n[access]\nclients = {clients}\n");
            let e = parse(&cfg).unwrap_err();
            assert!(e.to_string().contains("open proxy"), "{clients}: {e}");
        }
        assert!(parse(
            "listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"10.0.0.0/8\", \"100.64.0.0/10\", \"172.16.0.0/12\", \"192.168.0.0/16\", \"198.51.100.0/24\", \"2001:db8::/32\", \"fc00::/7\"]\n"
        )
        .is_ok());
        // Restricted client networks or authentication make it acceptable.
        assert!(
            parse("listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"192.168.0.0/16\"]\n")
                .is_ok()
        );
        assert!(parse(
            "listen = [\"0.0.0.0:1080\"]\n[auth]\nmethods = [\"password\"]\nusers_file = \"u\"\n[access]\nclients = [\"0.0.0.0/0\"]\n"
        )
        .is_ok());
    }

    #[test]
    fn groups_in_user_lists() {
        let c = parse("[groups]\nops = [\"alice\", \"bob\"]\n[[rules]]\naction = \"allow\"\nusers = [\"@ops\"]\n").unwrap();
        let list = c.rules[0].users.as_deref();
        assert!(names_user(list, Some("bob"), &c.groups));
        assert!(!names_user(list, Some("carol"), &c.groups));
        assert!(!names_user(list, None, &c.groups));
        assert!(names_user(None, None, &c.groups));
        assert!(parse("[[rules]]\naction = \"allow\"\nusers = [\"@nobody\"]\n").is_err());
    }

    #[test]
    fn inconsistent_settings() {
        assert!(parse("listen = []").is_err());
        assert!(parse("[auth]\nmethods = [\"password\"]\n").is_err());
        assert!(parse("[auth]\nmethods = []\n").is_err());
        assert!(parse("[access]\nclients = []\n").is_err());
        assert!(parse("[timeouts]\nbind = \"600000000y\"\n").is_err());
        assert!(parse("[[rules]]\naction = \"allow\"\ndomains = [\".\"]\n").is_err());
        assert!(
            parse("[[rules]]\naction = \"allow\"\ndomains = [\"b\u{fc}cher.example\"]\n").is_err()
        );
        assert!(parse("[[ng.served]]\ndomains = [\"b\u{fc}cher.example\"]\n").is_err());
        assert!(parse("[[ng.served]]\ndomains = [\"xn--bcher-kva.example\"]\n").is_ok());
        assert!(parse("[limits]\nlookups = 0\n").is_err());
        let e = parse("[ng]\n[[ng.ports]]\nports = []\n").unwrap_err();
        assert!(
            e.to_string().contains("line 3") && e.to_string().contains("empty"),
            "{e}"
        );
        assert!(parse("[limits]\nlogin_failures_per_minute = 0\n").is_err());
        assert!(
            parse("[limits]\nlogin_failures_per_minute = 0\nlogin_failures_burst = 0\n").is_ok()
        );
    }

    #[test]
    fn listen_addresses_that_cannot_all_be_bound() {
        for bad in [
            r#"["127.0.0.1:1080", "127.0.0.1:1080"]"#,
            r#"["0.0.0.0:1080", "127.0.0.1:1080"]"#,
            r#"["[::1]:1080", "[::]:1080"]"#,
        ] {
            let e = parse(&format!("listen = {bad}\n")).unwrap_err();
            assert!(e.to_string().contains("listen"), "{bad}: {e}");
        }
        for good in [
            r#"["0.0.0.0:1080", "[::]:1080"]"#,
            r#"["127.0.0.1:1080", "127.0.0.1:1081"]"#,
            r#"["127.0.0.1:0", "127.0.0.1:0"]"#,
        ] {
            assert!(parse(&format!("listen = {good}\n")).is_ok(), "{good}");
        }
    }

    #[test]
    fn log_levels() {
        for good in [
            "info",
            "WARN",
            "off",
            "socksng_server=debug,info",
            "socksngd=trace",
        ] {
            assert!(check_log_filter(good).is_ok(), "{good}");
        }
        for bad in ["", "verbose", "info=loud", "a b=info", "debug,", "socksngd"] {
            assert!(check_log_filter(bad).is_err(), "{bad:?}");
        }
        let e = parse("log_level = \"verbose\"\n").unwrap_err();
        assert!(e.to_string().contains("log_level"), "{e}");
    }
}
