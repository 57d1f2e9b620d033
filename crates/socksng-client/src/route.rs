//! Routing across several proxies: a table of destination prefixes and domain suffixes, each
//! pointing at a proxy or at a direct connection, built from static configuration and from the
//! ranges SOCKS-NG servers announce through CAPABILITIES. Direct is the default route.
//!
//! The most specific match wins: the longest prefix for an address, the longest suffix for a
//! name, and a route limited to certain ports over one for every port; among equals, the one
//! configured first. A server that cannot be reached is taken out of the table for a while:
//! another server's route may take over its destinations, a direct one never does. The
//! announced ranges are asked again when the table is older than the refresh interval.
//!
//! ```
//! use socksng_client::route::Via;
//! use socksng_client::{Address, ClientConfig};
//! let config = ClientConfig::from_toml(r#"
//!     [[server]]
//!     name = "office"
//!     url = "socks5h://127.0.0.1:1081"
//!     ranges = ["10.0.0.0/8", "corp.example"]
//!     ask = false
//!
//!     [[route]]
//!     to = ["10.99.0.0/16"]
//!     via = "direct"
//! "#).unwrap();
//! let router = config.router().unwrap();
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let way = |t: &str| {
//!     let (host, port) = t.rsplit_once(':').unwrap();
//!     let a = match host.parse() {
//!         Ok(ip) => Address::ip(std::net::SocketAddr::new(ip, port.parse().unwrap())),
//!         Err(_) => Address::domain(host, port.parse().unwrap()).unwrap(),
//!     };
//!     let router = &router;
//!     async move { router.decide(&a).await.unwrap().0 }
//! };
//! assert_eq!(way("10.1.2.3:22").await, Via::Server(0));
//! assert_eq!(way("10.99.0.1:22").await, Via::Direct); // the longer prefix wins
//! assert_eq!(way("git.corp.example:443").await, Via::Server(0));
//! assert_eq!(way("192.0.2.1:80").await, Via::Direct); // the default route
//! # });
//! println!("{}", router.table());
//! ```

use crate::{Client, ClientError, ProtocolPath, ProxyUrl, ServedRange};
use ipnet::IpNet;
use socksng_proto::{Address, Host};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// A destination set of one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Addresses inside a prefix (IPv4-mapped IPv6 addresses match as IPv4).
    Net(IpNet),
    /// A name and every name below it (lower case, no leading dot).
    Suffix(String),
}

impl Destination {
    /// Parses `10.0.0.0/8`, `192.0.2.7`, `2001:db8::/32`, `corp.example` or `.corp.example`.
    pub fn parse(text: &str) -> Result<Destination, ClientError> {
        let t = text.trim();
        if let Ok(net) = t.parse::<IpNet>() {
            return Ok(Destination::Net(net.trunc()));
        }
        if let Ok(ip) = t.parse::<IpAddr>() {
            return Ok(Destination::Net(IpNet::from(ip)));
        }
        let name = t.trim_start_matches('.').trim_end_matches('.');
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && l.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !valid {
            return Err(ClientError::Config(format!(
                "{text:?} is neither an address prefix nor a domain name"
            )));
        }
        Ok(Destination::Suffix(name.to_ascii_lowercase()))
    }

    /// How specific the destination is: prefix length, or labels in the suffix.
    fn specificity(&self) -> u32 {
        match self {
            Destination::Net(n) => u32::from(n.prefix_len()),
            Destination::Suffix(s) => s.split('.').count() as u32,
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Net(n) => write!(f, "{n}"),
            Destination::Suffix(s) => write!(f, ".{s}"),
        }
    }
}

/// Where a route sends connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// No proxy.
    Direct,
    /// The server at this index of the router's server list.
    Server(usize),
}

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The configuration (a `[[route]]`, a server's `ranges`, or a `--proxy` for everything).
    Configured,
    /// The server's CAPABILITIES reply.
    Announced,
    /// The CAPABILITIES reply of a server the network announced (DHCP, draft section 10):
    /// such a route never wins over a configured or announced one, however specific.
    Learned,
}

/// One entry of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// What it matches.
    pub destination: Destination,
    /// Inclusive port ranges it is limited to; empty for every port.
    pub ports: Vec<(u16, u16)>,
    /// Where it sends connections.
    pub via: Via,
    /// Where it came from.
    pub origin: Origin,
}

impl Route {
    fn port_matches(&self, port: u16) -> bool {
        self.ports.is_empty() || self.ports.iter().any(|&(lo, hi)| lo <= port && port <= hi)
    }

    /// The routes a server's announced ranges stand for.
    pub fn from_served(range: &ServedRange, via: Via, origin: Origin) -> Vec<Route> {
        let nets = range
            .prefixes
            .iter()
            .filter_map(|&(ip, len)| IpNet::new(ip, len).ok())
            .map(|n| Destination::Net(n.trunc()));
        let names = range
            .domains
            .iter()
            .filter_map(|d| Destination::parse(d).ok());
        // A RANGE of ports alone serves every destination on those ports (the draft's
        // matching rules); names then go to it unresolved, as to a gateway.
        let port_only = range.prefixes.is_empty() && range.domains.is_empty();
        let every = everything()
            .into_iter()
            .filter(move |_| port_only && !range.ports.is_empty());
        nets.chain(names)
            .chain(every)
            .map(|destination| Route {
                destination,
                ports: range.ports.clone(),
                via,
                origin,
            })
            .collect()
    }
}

/// The destinations a NO_PROXY value sends direct: names (and every name below them) and
/// address prefixes. Entries that are neither (a name with a port, a `*` among others) are
/// skipped, as curl skips what it cannot match; `*` alone is the caller's to handle.
fn no_proxy_destinations(no_proxy: &str) -> Vec<Destination> {
    no_proxy
        .split(',')
        .map(|e| e.trim().replacen('[', "", 1).replacen(']', "", 1))
        .filter(|e| !e.is_empty())
        .flat_map(|e| Destination::parse(&e).into_iter().collect::<Vec<_>>())
        .collect()
}

/// Every destination: what a single `--proxy` or an "everything" gateway stands for.
pub fn everything() -> Vec<Destination> {
    vec![
        Destination::Net(IpNet::new(Ipv4Addr::UNSPECIFIED.into(), 0).expect("valid prefix")),
        Destination::Net(IpNet::new(Ipv6Addr::UNSPECIFIED.into(), 0).expect("valid prefix")),
    ]
}

/// Port ranges as written in configuration files: `22`, `8000-8999`.
pub fn port_ranges_text(ports: &[(u16, u16)]) -> Vec<String> {
    ports
        .iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect()
}

/// A snapshot of the routes, in configuration order, and the server names for printing.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Route>,
    names: Vec<String>,
}

impl RouteTable {
    /// A table of `routes`; `names[i]` names `Via::Server(i)` when printed.
    pub fn new(routes: Vec<Route>, names: Vec<String>) -> RouteTable {
        RouteTable { routes, names }
    }

    /// The routes, in the order ties are broken.
    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The name of where `via` goes.
    pub fn via_name(&self, via: Via) -> &str {
        match via {
            Via::Direct => "direct",
            Via::Server(i) => self.names.get(i).map_or("?", String::as_str),
        }
    }

    fn best<'a>(
        &'a self,
        port: u16,
        usable: &dyn Fn(Via) -> bool,
        matches: impl Fn(&Destination) -> bool,
    ) -> Option<&'a Route> {
        let mut best: Option<&Route> = None;
        for r in &self.routes {
            if !matches(&r.destination) || !r.port_matches(port) || !usable(r.via) {
                continue;
            }
            let key = |r: &Route| {
                (
                    r.origin != Origin::Learned,
                    r.destination.specificity(),
                    !r.ports.is_empty(),
                )
            };
            if best.is_none_or(|b| key(r) > key(b)) {
                best = Some(r);
            }
        }
        best
    }

    /// The most specific usable route for an address, if any (none means direct).
    pub fn for_ip(&self, ip: IpAddr, port: u16, usable: &dyn Fn(Via) -> bool) -> Option<&Route> {
        let ip = ip.to_canonical();
        self.best(
            port,
            usable,
            |d| matches!(d, Destination::Net(n) if n.contains(&ip)),
        )
    }

    /// The best usable route to a proxy for every address (`0.0.0.0/0` or `::/0`) on `port`:
    /// a gateway, which gets names unresolved.
    pub fn gateway(&self, port: u16, usable: &dyn Fn(Via) -> bool) -> Option<&Route> {
        self.best(
            port,
            usable,
            |d| matches!(d, Destination::Net(n) if n.prefix_len() == 0),
        )
        .filter(|r| r.via != Via::Direct)
    }

    /// Whether a route not learned from the network names a range of addresses (not all).
    pub fn has_configured_ranges(&self) -> bool {
        self.routes.iter().any(|r| {
            r.origin != Origin::Learned
                && matches!(r.destination, Destination::Net(n) if n.prefix_len() > 0)
        })
    }

    /// The most specific usable route naming a suffix of `name`, if any.
    pub fn for_name(&self, name: &str, port: u16, usable: &dyn Fn(Via) -> bool) -> Option<&Route> {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        self.best(port, usable, |d| match d {
            Destination::Suffix(s) => {
                name == *s
                    || (name.len() > s.len()
                        && name.ends_with(s.as_str())
                        && name.as_bytes()[name.len() - s.len() - 1] == b'.')
            }
            Destination::Net(_) => false,
        })
    }
}

impl fmt::Display for RouteTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:<13} {:<16} ORIGIN",
            "DESTINATION", "PORTS", "VIA"
        )?;
        let mut sorted: Vec<&Route> = self.routes.iter().collect();
        // Names, then addresses, each most specific first as the lookup sees them; the stable
        // sort keeps ties in configuration order.
        sorted.sort_by_key(|r| {
            std::cmp::Reverse((
                matches!(r.destination, Destination::Suffix(_)),
                r.destination.specificity(),
                !r.ports.is_empty(),
            ))
        });
        for r in sorted {
            let ports = if r.ports.is_empty() {
                "all".to_string()
            } else {
                port_ranges_text(&r.ports).join(",")
            };
            let origin = match r.origin {
                Origin::Configured => "configured",
                Origin::Announced => "announced",
                Origin::Learned => "learned",
            };
            writeln!(
                f,
                "{:<28} {:<13} {:<16} {origin}",
                r.destination.to_string(),
                ports,
                self.via_name(r.via)
            )?;
        }
        writeln!(
            f,
            "{:<28} {:<13} {:<16} default",
            "(anything else)", "all", "direct"
        )
    }
}

/// A proxy the router may use.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// Name in tables and logs.
    pub name: String,
    /// How to reach it.
    pub url: ProxyUrl,
    /// Destinations configured for it (what a plain SOCKS5 server cannot announce).
    pub ranges: Vec<Destination>,
    /// Whether to ask it for its served ranges (SOCKS-NG CAPABILITIES).
    pub ask: bool,
    /// The network announced it (DHCP): its routes are `Origin::Learned`.
    pub learned: bool,
}

/// Timers and the range cache of the router.
#[derive(Debug, Clone)]
pub struct RouterOptions {
    /// Ask the servers again when the table is older than this.
    pub refresh: Duration,
    /// How long a failed server stays out of the table.
    pub retry_after: Duration,
    /// Limit for reaching a proxy (or a direct target) and for one CAPABILITIES exchange.
    pub connect_timeout: Duration,
    /// Where the ranges each server last announced are kept, so that a new process routes by
    /// them before it could ask, and refuses rather than goes direct while a server is down.
    /// `None`: no cache.
    pub cache_dir: Option<PathBuf>,
}

impl Default for RouterOptions {
    fn default() -> Self {
        RouterOptions {
            refresh: Duration::from_secs(600),
            retry_after: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            cache_dir: None,
        }
    }
}

/// What the router knows about one server.
#[derive(Debug, Clone, Default)]
pub struct ServerStatus {
    /// The protocol it spoke at the last refresh (`None` before one, or when unreachable).
    pub path: Option<ProtocolPath>,
    /// Why it is out of the table, while it is.
    pub down: Option<String>,
    /// Ranges from its last CAPABILITIES reply.
    pub announced: Vec<ServedRange>,
}

struct ServerEntry {
    spec: ServerSpec,
    client: Client,
    state: Mutex<ServerState>,
}

#[derive(Default)]
struct ServerState {
    status: ServerStatus,
    down_until: Option<Instant>,
}

/// A connection made by the router.
#[derive(Debug)]
pub struct RoutedStream {
    /// The stream, relayed to the target when through a proxy.
    pub stream: crate::Transport,
    /// Which way it went.
    pub via: Via,
    /// The server's name, or "direct".
    pub via_name: String,
    /// The protocol spoken with the proxy (`None` when direct).
    pub path: Option<ProtocolPath>,
    /// Servers that failed on the way and were taken out, with the reason.
    pub skipped: Vec<String>,
}

/// Routes connections across several proxies and direct. Cloning is cheap: clones share the
/// table and the servers' state.
#[derive(Clone)]
pub struct Router {
    inner: Arc<RouterInner>,
}

struct RouterInner {
    servers: Vec<ServerEntry>,
    configured: Vec<Route>,
    options: RouterOptions,
    table: Mutex<Arc<RouteTable>>,
    /// Held while the servers are asked, so concurrent refreshes become one.
    refreshing: tokio::sync::Mutex<()>,
    /// When the servers were last asked; `None` before the first time.
    refreshed_at: Mutex<Option<Instant>>,
    /// A background refresh is under way (connections do not start another).
    in_background: std::sync::atomic::AtomicBool,
    /// Whether the table knows what the asked servers serve (from an answer or the cache),
    /// so connections need not wait for the servers.
    known: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Router")
            .field(
                "servers",
                &self
                    .inner
                    .servers
                    .iter()
                    .map(|s| &s.spec.name)
                    .collect::<Vec<_>>(),
            )
            .field("routes", &self.table().routes.len())
            .finish()
    }
}

impl Router {
    /// A router over `servers` with the extra `routes` (which may point at `Via::Direct`);
    /// nothing is asked until the first connection or [`Router::refresh`].
    pub fn new(servers: Vec<ServerSpec>, routes: Vec<Route>, options: RouterOptions) -> Router {
        let mut configured = routes;
        for (i, s) in servers.iter().enumerate() {
            // A learned server's ranges are the network's word, whoever wrote them down.
            let origin = if s.learned {
                Origin::Learned
            } else {
                Origin::Configured
            };
            configured.extend(s.ranges.iter().map(|d| Route {
                destination: d.clone(),
                ports: Vec::new(),
                via: Via::Server(i),
                origin,
            }));
        }
        let servers: Vec<ServerEntry> = servers
            .into_iter()
            .map(|spec| ServerEntry {
                client: Client::new(spec.url.clone()),
                spec,
                state: Mutex::new(ServerState::default()),
            })
            .collect();
        let mut known = true;
        for s in servers.iter().filter(|s| s.spec.ask) {
            let cached = options
                .cache_dir
                .as_deref()
                .and_then(|dir| cache::load(dir, &s.spec.name));
            match cached {
                Some(ranges) => s.state.lock().expect("state lock").status.announced = ranges,
                None => known = false,
            }
        }
        let router = Router {
            inner: Arc::new(RouterInner {
                servers,
                configured,
                options,
                table: Mutex::new(Arc::new(RouteTable::default())),
                refreshing: tokio::sync::Mutex::new(()),
                refreshed_at: Mutex::new(None),
                in_background: std::sync::atomic::AtomicBool::new(false),
                known: std::sync::atomic::AtomicBool::new(known),
            }),
        };
        router.rebuild();
        router
    }

    /// A router that sends everything through one proxy.
    pub fn single(url: ProxyUrl) -> Router {
        Router::single_except(url, None)
    }

    /// A router that sends everything through one proxy except what `no_proxy` (NO_PROXY's
    /// comma-separated form) sends direct, as curl does with `-x`.
    pub fn single_except(url: ProxyUrl, no_proxy: Option<&str>) -> Router {
        let name = url.host_port();
        // `*` alone (as curl reads it) bypasses the proxy for everything, names included: the
        // server stays known (for listeners and datagrams asked of it by name) but no route
        // uses it.
        if no_proxy.is_some_and(|n| n.trim() == "*") {
            let spec = ServerSpec {
                name,
                url,
                ranges: Vec::new(),
                ask: false,
                learned: false,
            };
            return Router::new(vec![spec], Vec::new(), RouterOptions::default());
        }
        let direct = no_proxy
            .map(no_proxy_destinations)
            .unwrap_or_default()
            .into_iter()
            .map(|destination| Route {
                destination,
                ports: Vec::new(),
                via: Via::Direct,
                origin: Origin::Configured,
            })
            .collect();
        Router::new(
            vec![ServerSpec {
                name,
                url,
                ranges: everything(),
                ask: false,
                learned: false,
            }],
            direct,
            RouterOptions::default(),
        )
    }

    /// The current table.
    pub fn table(&self) -> Arc<RouteTable> {
        self.inner.table.lock().expect("table lock").clone()
    }

    /// The servers' names, specs and what is known about them.
    pub fn servers(&self) -> Vec<(ServerSpec, ServerStatus)> {
        self.inner
            .servers
            .iter()
            .map(|s| {
                (
                    s.spec.clone(),
                    s.state.lock().expect("state lock").status.clone(),
                )
            })
            .collect()
    }

    fn rebuild(&self) {
        let mut routes = self.inner.configured.clone();
        for (i, s) in self.inner.servers.iter().enumerate() {
            let state = s.state.lock().expect("state lock");
            for range in &state.status.announced {
                let origin = if s.spec.learned {
                    Origin::Learned
                } else {
                    Origin::Announced
                };
                routes.extend(Route::from_served(range, Via::Server(i), origin));
            }
        }
        let names = self
            .inner
            .servers
            .iter()
            .map(|s| s.spec.name.clone())
            .collect();
        *self.inner.table.lock().expect("table lock") = Arc::new(RouteTable::new(routes, names));
    }

    /// Asks every server that is to be asked for its served ranges, and rebuilds the table.
    /// A server that cannot be reached is taken out for `retry_after`.
    pub async fn refresh(&self) {
        let _one = self.inner.refreshing.lock().await;
        self.ask_servers().await;
    }

    async fn ask_servers(&self) {
        let mut asks = tokio::task::JoinSet::new();
        for (i, s) in self.inner.servers.iter().enumerate() {
            if s.spec.ask {
                let client = s.client.clone();
                let limit = self.inner.options.connect_timeout;
                asks.spawn(async move {
                    let got = match tokio::time::timeout(limit, client.capabilities()).await {
                        Ok(r) => r,
                        Err(_) => Err(ClientError::Io(std::io::ErrorKind::TimedOut.into())),
                    };
                    (i, got)
                });
            }
        }
        while let Some(joined) = asks.join_next().await {
            let Ok((i, got)) = joined else { continue };
            let mut state = self.inner.servers[i].state.lock().expect("state lock");
            match got {
                Ok(caps) => {
                    if let Some(dir) = &self.inner.options.cache_dir {
                        // Best effort: without the cache, routing still works in this process.
                        let _ = cache::save(dir, &self.inner.servers[i].spec.name, &caps.ranges);
                    }
                    state.status.path = Some(ProtocolPath::Ng);
                    state.status.announced = caps.ranges;
                    state.status.down = None;
                    state.down_until = None;
                }
                Err(ClientError::NotSupported(_)) => {
                    // A plain SOCKS5 (or SOCKS4) server: reachable, serving what the
                    // configuration says.
                    state.status.path = Some(match self.inner.servers[i].spec.url.version {
                        crate::SocksVersion::Socks4 => ProtocolPath::Socks4,
                        crate::SocksVersion::Socks5 => ProtocolPath::Socks5,
                    });
                    state.status.announced.clear();
                    state.status.down = None;
                    state.down_until = None;
                }
                Err(e) => {
                    state.status.path = None;
                    state.status.down = Some(e.to_string());
                    state.down_until = Some(Instant::now() + self.inner.options.retry_after);
                }
            }
        }
        self.rebuild();
        *self.inner.refreshed_at.lock().expect("stamp lock") = Some(Instant::now());
        self.inner
            .known
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Whether the table is older than `refresh`, or a server that could not be asked is due
    /// for another try.
    fn refresh_due(&self) -> bool {
        let stale = self
            .inner
            .refreshed_at
            .lock()
            .expect("stamp lock")
            .is_none_or(|t| t.elapsed() >= self.inner.options.refresh);
        stale
            || self.inner.servers.iter().any(|s| {
                s.spec.ask
                    && s.state
                        .lock()
                        .expect("state lock")
                        .down_until
                        .is_some_and(|t| Instant::now() >= t)
            })
    }

    /// Keeps the table fresh without holding up connections: only before the table knows
    /// anything about the asked servers (no answer yet, nothing cached) does a connection
    /// wait for them, since routing without that would send their traffic the wrong way.
    /// Otherwise a due refresh runs in the background, one at a time, and connections use
    /// the table as it is; a direct connection never waits for a proxy.
    async fn keep_fresh(&self) {
        use std::sync::atomic::Ordering;
        if !self.inner.known.load(Ordering::Acquire) {
            let _one = self.inner.refreshing.lock().await;
            // Another connection may have asked while this one waited.
            if !self.inner.known.load(Ordering::Acquire) {
                self.ask_servers().await;
            }
            return;
        }
        if !self.refresh_due() || self.inner.in_background.swap(true, Ordering::AcqRel) {
            return;
        }
        let router = self.clone();
        tokio::spawn(async move {
            {
                let _one = router.inner.refreshing.lock().await;
                if router.refresh_due() {
                    router.ask_servers().await;
                }
            }
            router.inner.in_background.store(false, Ordering::Release);
        });
    }

    fn usable(&self, via: Via) -> bool {
        match via {
            Via::Direct => true,
            Via::Server(i) => {
                let state = self.inner.servers[i].state.lock().expect("state lock");
                state.down_until.is_none_or(|t| Instant::now() >= t)
            }
        }
    }

    fn mark_down(&self, via: Via, why: &ClientError) {
        if let Via::Server(i) = via {
            let mut state = self.inner.servers[i].state.lock().expect("state lock");
            state.status.down = Some(why.to_string());
            state.down_until = Some(Instant::now() + self.inner.options.retry_after);
        }
    }

    /// Which way a connection to `target` goes now, and the address to ask for. A name goes
    /// by the most specific suffix route; else to the gateway (a proxy routed for every
    /// address) without being resolved here; else it is resolved here and routed by address.
    ///
    /// When the best route's server is out of the table, another server's route may take
    /// over, but never a direct one: traffic meant for a proxy does not silently leave
    /// without it. That is an [`ClientError::Unavailable`] error instead. Nor does a learned
    /// server take over a configured route.
    pub async fn decide(&self, target: &Address) -> Result<(Via, Address), ClientError> {
        self.keep_fresh().await;
        let table = self.table();
        let port = target.port;
        let ip = match &target.host {
            Host::Ip(ip) => *ip,
            Host::Domain(name) => {
                if let Some(via) = self.pick(&table, |u| table.for_name(name, port, u))? {
                    return Ok((via, target.clone()));
                }
                // A gateway gets the name unresolved, so no query leaks here; that is what
                // socks5h:// and ALL_PROXY users expect. Not a gateway the network announced
                // while configured ranges exist: the name may be in one of them, and only
                // its address can tell (draft 10.4).
                if let Some(via) = self.pick(&table, |u| table.gateway(port, u))? {
                    let learned =
                        matches!(via, Via::Server(i) if self.inner.servers[i].spec.learned);
                    if !(learned && table.has_configured_ranges()) {
                        return Ok((via, target.clone()));
                    }
                }
                // Split routing: only the address tells whether a private range's server
                // serves this name. Direct connections use every address; a proxy gets the
                // name back (resolved by it for socks5h://, by the client for socks5://).
                crate::resolve_here(name, port).await?[0].ip()
            }
        };
        let via = self.pick(&table, |u| table.for_ip(ip, port, u))?;
        Ok((via.unwrap_or(Via::Direct), target.clone()))
    }

    /// The route `lookup` finds, skipping servers that are out; `None` when nothing matches.
    fn pick<'t>(
        &self,
        table: &'t RouteTable,
        lookup: impl Fn(&dyn Fn(Via) -> bool) -> Option<&'t Route>,
    ) -> Result<Option<Via>, ClientError> {
        let Some(best) = lookup(&|_| true) else {
            return Ok(None);
        };
        if self.usable(best.via) {
            return Ok(Some(best.via));
        }
        // A configured route's traffic never falls to a proxy the network announced: else a
        // hostile network would only have to make the configured one fail (draft 10.4).
        let may_take_over = |v: Via| match v {
            Via::Server(i) => best.origin == Origin::Learned || !self.inner.servers[i].spec.learned,
            Via::Direct => false,
        };
        let servers_up = |v: Via| may_take_over(v) && self.usable(v);
        match lookup(&servers_up) {
            Some(r) => Ok(Some(r.via)),
            None => {
                let why = match best.via {
                    Via::Server(i) => self.inner.servers[i]
                        .state
                        .lock()
                        .expect("state lock")
                        .status
                        .down
                        .clone()
                        .unwrap_or_default(),
                    Via::Direct => String::new(),
                };
                Err(ClientError::Unavailable(format!(
                    "{} is out of the table until it is retried ({why})",
                    table.via_name(best.via)
                )))
            }
        }
    }

    /// Connects to `target` the way the table says. A proxy that cannot be reached or
    /// negotiated with is taken out for `retry_after` and the next best server is tried; a
    /// refusal or a timeout after the request is the target's failure and is returned as is.
    pub async fn connect(&self, target: Address) -> Result<RoutedStream, ClientError> {
        let limit = self.inner.options.connect_timeout;
        let timed_out = || ClientError::Io(std::io::ErrorKind::TimedOut.into());
        // Once the proxy took the request (or for a direct connection), the clock is the
        // target's.
        let target_timed_out = || ClientError::Target(std::io::ErrorKind::TimedOut.into());
        let mut skipped = Vec::new();
        let mut failed: Vec<(String, ClientError)> = Vec::new();
        for _ in 0..=self.inner.servers.len() {
            let (via, ask) = match self.decide(&target).await {
                // The one server meant for this target failed just now: its own failure says
                // more than "out of the table" (a single --proxy that refuses, say).
                Err(ClientError::Unavailable(_)) if failed.len() == 1 => {
                    let (name, cause) = failed.remove(0);
                    return Err(ClientError::Proxy {
                        name,
                        cause: Box::new(cause),
                    });
                }
                other => other?,
            };
            let via_name = self.table().via_name(via).to_string();
            let Via::Server(i) = via else {
                let stream = tokio::time::timeout(limit, direct(&ask))
                    .await
                    .map_err(|_| target_timed_out())??;
                return Ok(RoutedStream {
                    stream: crate::Transport::Tcp(stream),
                    via,
                    via_name,
                    path: None,
                    skipped,
                });
            };
            let client = &self.inner.servers[i].client;
            let wire = client.resolve_target(ask).await?;
            match tokio::time::timeout(limit, client.negotiate()).await {
                Ok(Ok(negotiated)) => {
                    let path = negotiated.path;
                    let proxied =
                        tokio::time::timeout(limit, Client::connect_negotiated(negotiated, wire))
                            .await
                            .map_err(|_| target_timed_out())??;
                    return Ok(RoutedStream {
                        stream: proxied.into_inner(),
                        via,
                        via_name,
                        path: Some(path),
                        skipped,
                    });
                }
                // Wrong credentials are the configuration's fault, not the server's.
                Ok(Err(e @ (ClientError::AuthFailed | ClientError::NoAcceptableMethod))) => {
                    return Err(e)
                }
                Ok(Err(e)) => {
                    self.mark_down(via, &e);
                    skipped.push(format!("{via_name}: {e}"));
                    failed.push((via_name, e));
                }
                Err(_) => {
                    let e = timed_out();
                    self.mark_down(via, &e);
                    skipped.push(format!("{via_name}: {e}"));
                    failed.push((via_name, e));
                }
            }
        }
        Err(ClientError::Unavailable(skipped.join("; ")))
    }

    /// The client for the server `via` names, to open listeners or datagram sockets on it.
    pub fn client(&self, via: Via) -> Option<&Client> {
        match via {
            Via::Server(i) => self.inner.servers.get(i).map(|s| &s.client),
            Via::Direct => None,
        }
    }
}

/// Connects to `target` without a proxy: a name that does not resolve is a local failure,
/// a connection that fails is the target's.
async fn direct(target: &Address) -> Result<TcpStream, ClientError> {
    let addrs = match &target.host {
        Host::Ip(ip) => vec![SocketAddr::new(*ip, target.port)],
        Host::Domain(name) => crate::resolve_here(name, target.port).await?,
    };
    let stream = TcpStream::connect(&addrs[..])
        .await
        .map_err(ClientError::Target)?;
    let _ = stream.set_nodelay(true);
    Ok(stream)
}

mod cache {
    //! The announced ranges on disk: one file per server, one range per line, written whole
    //! and renamed into place. A line is its prefixes (`10.0.0.0/8`), domains (`.corp.example`)
    //! and ports (`port:1-1024`), separated by spaces.
    use crate::ServedRange;
    use std::io;
    use std::path::{Path, PathBuf};

    fn file(dir: &Path, server: &str) -> PathBuf {
        let safe: String = server
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        dir.join(format!("ranges-{safe}.txt"))
    }

    pub(super) fn save(dir: &Path, server: &str, ranges: &[ServedRange]) -> io::Result<()> {
        let mut text = String::new();
        for r in ranges {
            let mut words: Vec<String> = r
                .prefixes
                .iter()
                .map(|(ip, len)| format!("{ip}/{len}"))
                .collect();
            words.extend(r.domains.iter().map(|d| format!(".{d}")));
            words.extend(r.ports.iter().map(|(lo, hi)| format!("port:{lo}-{hi}")));
            text.push_str(&words.join(" "));
            text.push('\n');
        }
        std::fs::create_dir_all(dir)?;
        let path = file(dir, server);
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(tmp, path)
    }

    /// The cached ranges; `None` when there is no cache or it cannot be read whole.
    pub(super) fn load(dir: &Path, server: &str) -> Option<Vec<ServedRange>> {
        let text = std::fs::read_to_string(file(dir, server)).ok()?;
        let mut ranges = Vec::new();
        for line in text.lines() {
            let mut r = ServedRange::default();
            for word in line.split_whitespace() {
                if let Some(ports) = word.strip_prefix("port:") {
                    let (lo, hi) = ports.split_once('-')?;
                    r.ports.push((lo.parse().ok()?, hi.parse().ok()?));
                } else if let Some(domain) = word.strip_prefix('.') {
                    r.domains.push(domain.to_string());
                } else {
                    let (ip, len) = word.split_once('/')?;
                    r.prefixes.push((ip.parse().ok()?, len.parse().ok()?));
                }
            }
            ranges.push(r);
        }
        Some(ranges)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn ranges_survive_the_round_trip() {
            let dir = std::env::temp_dir().join(format!("socksng-cache-{}", std::process::id()));
            let ranges = vec![
                ServedRange {
                    prefixes: vec![
                        ("10.0.0.0".parse().unwrap(), 8),
                        ("fd00::".parse().unwrap(), 8),
                    ],
                    domains: vec!["corp.example".into()],
                    ports: vec![(1, 1024), (8080, 8080)],
                },
                ServedRange {
                    prefixes: vec![("0.0.0.0".parse().unwrap(), 0)],
                    ..Default::default()
                },
            ];
            save(&dir, "office/1", &ranges).unwrap();
            assert_eq!(load(&dir, "office/1"), Some(ranges));
            assert_eq!(load(&dir, "other"), None);
            std::fs::write(file(&dir, "bad"), "10.0.0.0/x\n").unwrap();
            assert_eq!(load(&dir, "bad"), None);
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(d: &str, ports: &[(u16, u16)], via: Via) -> Route {
        Route {
            destination: Destination::parse(d).unwrap(),
            ports: ports.to_vec(),
            via,
            origin: Origin::Configured,
        }
    }

    #[test]
    fn most_specific_prefix_and_suffix_win() {
        let t = RouteTable::new(
            vec![
                route("0.0.0.0/0", &[], Via::Server(0)),
                route("10.0.0.0/8", &[], Via::Server(1)),
                route("10.1.0.0/16", &[], Via::Direct),
                route("10.2.0.0/16", &[(22, 22)], Via::Server(0)),
                route("10.2.0.0/16", &[], Via::Server(1)),
                route("corp.example", &[], Via::Server(1)),
                route("lab.corp.example", &[], Via::Direct),
            ],
            vec!["gw".into(), "office".into()],
        );
        let all = |_: Via| true;
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let via = |r: Option<&Route>| r.map(|r| r.via);
        assert_eq!(
            via(t.for_ip(ip("10.9.9.9"), 80, &all)),
            Some(Via::Server(1))
        );
        assert_eq!(via(t.for_ip(ip("10.1.2.3"), 80, &all)), Some(Via::Direct));
        assert_eq!(
            via(t.for_ip(ip("10.2.0.1"), 22, &all)),
            Some(Via::Server(0))
        );
        assert_eq!(
            via(t.for_ip(ip("10.2.0.1"), 23, &all)),
            Some(Via::Server(1))
        );
        assert_eq!(
            via(t.for_ip(ip("192.0.2.1"), 80, &all)),
            Some(Via::Server(0))
        );
        assert_eq!(
            via(t.for_ip(ip("::ffff:10.9.9.9"), 80, &all)),
            Some(Via::Server(1))
        );
        assert_eq!(via(t.for_ip(ip("2001:db8::1"), 80, &all)), None);
        assert_eq!(
            via(t.for_name("www.corp.example", 80, &all)),
            Some(Via::Server(1))
        );
        assert_eq!(
            via(t.for_name("CORP.example.", 80, &all)),
            Some(Via::Server(1))
        );
        assert_eq!(
            via(t.for_name("a.lab.corp.example", 80, &all)),
            Some(Via::Direct)
        );
        assert_eq!(via(t.for_name("notcorp.example", 80, &all)), None);
        // With server 1 out, its destinations fall to the next best route.
        let without_1 = |v: Via| v != Via::Server(1);
        assert_eq!(
            via(t.for_ip(ip("10.9.9.9"), 80, &without_1)),
            Some(Via::Server(0))
        );
        assert_eq!(via(t.for_name("www.corp.example", 80, &without_1)), None);
        let printed = t.to_string();
        assert!(printed.contains("10.1.0.0/16"), "{printed}");
        assert!(printed.contains(".lab.corp.example"), "{printed}");
        let first = printed.lines().nth(1).unwrap();
        assert!(
            first.starts_with("lab.corp.example") || first.starts_with(".lab"),
            "{printed}"
        );
        assert!(printed.lines().last().unwrap().contains("direct"));
    }

    #[test]
    fn destinations_parse() {
        assert_eq!(
            Destination::parse("10.1.2.3/8").unwrap(),
            Destination::Net("10.0.0.0/8".parse().unwrap())
        );
        assert_eq!(
            Destination::parse("192.0.2.7").unwrap(),
            Destination::Net("192.0.2.7/32".parse().unwrap())
        );
        assert_eq!(
            Destination::parse(".Corp.Example").unwrap(),
            Destination::Suffix("corp.example".into())
        );
        assert!(Destination::parse("bad name!").is_err());
        assert!(Destination::parse("").is_err());
    }

    #[test]
    fn announced_ranges_become_routes() {
        let r = ServedRange {
            prefixes: vec![("10.0.0.0".parse().unwrap(), 8)],
            domains: vec!["corp.example".into()],
            ports: vec![(1, 1024)],
        };
        let routes = Route::from_served(&r, Via::Server(2), Origin::Announced);
        assert_eq!(routes.len(), 2);
        assert!(routes.iter().all(|r| r.ports == vec![(1, 1024)]));
        // Ports alone: every destination on those ports, names included (as a gateway).
        let ports_only = ServedRange {
            ports: vec![(443, 443)],
            ..Default::default()
        };
        let routes = Route::from_served(&ports_only, Via::Server(0), Origin::Announced);
        let table = RouteTable::new(routes, vec!["s".into()]);
        let any = |_: Via| true;
        assert!(table.gateway(443, &any).is_some());
        assert!(table.gateway(80, &any).is_none());
        // An empty range serves nothing.
        assert!(
            Route::from_served(&ServedRange::default(), Via::Server(0), Origin::Announced)
                .is_empty()
        );
    }

    #[test]
    fn a_learned_route_never_wins_over_a_configured_one() {
        let route = |d: &str, via, origin| Route {
            destination: Destination::parse(d).unwrap(),
            ports: Vec::new(),
            via,
            origin,
        };
        let table = RouteTable::new(
            vec![
                route("10.99.0.0/16", Via::Server(0), Origin::Configured),
                route("10.99.1.0/24", Via::Server(1), Origin::Learned),
                route("0.0.0.0/0", Via::Server(1), Origin::Learned),
            ],
            vec!["office".into(), "learned".into()],
        );
        let via = |ip: &str| {
            table
                .for_ip(ip.parse().unwrap(), 80, &|_| true)
                .map(|r| r.via)
        };
        assert_eq!(via("10.99.1.1"), Some(Via::Server(0)));
        assert_eq!(via("192.0.2.1"), Some(Via::Server(1)));
    }
}
