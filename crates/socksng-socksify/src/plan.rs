//! Where the shim sends what: the client configuration as the `socksng` command reads it
//! (`SOCKSNG_PROXY`, which `socksng exec --proxy` sets; else the client configuration file;
//! else ALL_PROXY / NO_PROXY; and the proxies `socksng exec --discover` learned, in
//! `SOCKSNG_LEARNED`), the route table it builds (configured routes, servers'
//! `ranges`, and the ranges servers announced as cached by earlier processes), and each proxy's
//! addresses. Loopback is always direct; what no route names is direct.

use socksng_client::route::{RouteTable, Via};
use socksng_client::{ClientConfig, ProxyUrl, Resolve, SocksVersion};
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// One proxy of the table.
pub(crate) struct Server {
    pub url: ProxyUrl,
    /// Its addresses, resolved once (with the real resolver); `Err` holds the errno.
    addrs: OnceLock<Result<Vec<SocketAddr>, i32>>,
}

/// The configuration the shim runs under.
pub(crate) struct Plan {
    table: Arc<RouteTable>,
    servers: Vec<Server>,
    /// Limit for reaching a proxy and for its handshake.
    pub connect_timeout: Duration,
}

/// Where a connection goes.
pub(crate) enum Way<'a> {
    Direct,
    Proxy(&'a Server),
}

/// What the shim was configured with: `None` when nothing configures a proxy (the shim
/// then leaves every call alone); `Err` when the configuration is broken (the shim then
/// refuses rather than connect directly behind the user's back).
pub(crate) fn plan() -> Result<Option<&'static Plan>, &'static str> {
    match PLAN.get_or_init(load) {
        Ok(p) => Ok(p.as_ref()),
        Err(e) => Err(e.as_str()),
    }
}

static PLAN: OnceLock<Result<Option<Plan>, String>> = OnceLock::new();

/// The plan if it is loaded and sends anything to a proxy; never loads it. The hooks that
/// only keep state true (close, dup, epoll_ctl, the sends) ask this, so that loading the
/// configuration (which opens and closes files) never re-enters its own loading.
pub(crate) fn loaded() -> Option<&'static Plan> {
    PLAN.get()?.as_ref().ok()?.as_ref()
}

fn load() -> Result<Option<Plan>, String> {
    let cfg = if let Some(url) = std::env::var("SOCKSNG_PROXY")
        .ok()
        .filter(|u| !u.is_empty())
    {
        // As ALL_PROXY, but for socksng alone (a program's own proxy settings stay unset).
        let mut cfg = ClientConfig::from_toml(&format!(
            "[[server]]\nurl = {url:?}\nranges = [\"*\"]\nask = false\n"
        ))
        .map_err(|e| format!("SOCKSNG_PROXY: {e}"))?;
        if let Some(no) = socksng_client::env_no_proxy() {
            let direct: Vec<String> = no
                .split(',')
                .map(|e| e.trim().replacen('[', "", 1).replacen(']', "", 1))
                .filter(|e| !e.is_empty())
                .collect();
            cfg.route.push(socksng_client::config::RouteConfig {
                to: direct,
                ports: Vec::new(),
                via: "direct".into(),
            });
        }
        Some(cfg)
    } else if let Some(path) = ClientConfig::default_path() {
        Some(ClientConfig::load(&path).map_err(|e| format!("{}: {e}", path.display()))?)
    } else {
        ClientConfig::from_env().map_err(|e| format!("ALL_PROXY: {e}"))?
    };
    let learned = learned();
    let cfg = match cfg {
        Some(cfg) => cfg,
        None if !learned.is_empty() => ClientConfig::default(),
        None => return Ok(None),
    };
    let router = cfg
        .router_with_learned(learned)
        .map_err(|e| e.to_string())?;
    for (spec, status) in router.servers() {
        if spec.ask && spec.ranges.is_empty() && status.announced.is_empty() {
            crate::sys::say(&format!(
                "the ranges {} serves are not known yet (nothing cached; `socksng exec` or \
                 `socksng routes` asks it): only configured routes go through it",
                spec.name
            ));
        }
    }
    let servers = router
        .servers()
        .into_iter()
        .map(|(spec, _)| Server {
            url: spec.url,
            addrs: OnceLock::new(),
        })
        .collect();
    Ok(Some(Plan {
        table: router.table(),
        servers,
        connect_timeout: cfg.options.connect_timeout,
    }))
}

/// The proxies the network announced, as `socksng exec --discover` found them
/// (`SOCKSNG_LEARNED`: the announced URLs, space-separated). They take only destinations no
/// configured route covers (draft section 10.4); one that cannot be read is said and skipped.
fn learned() -> Vec<ProxyUrl> {
    let list = std::env::var("SOCKSNG_LEARNED").unwrap_or_default();
    list.split_ascii_whitespace()
        .filter_map(|text| match socksng_client::discover::proxy_url(text) {
            Ok(url) => Some(url),
            Err(e) => {
                crate::sys::say(&format!("SOCKSNG_LEARNED: {e}"));
                None
            }
        })
        .collect()
}

/// Names that always mean this host.
fn is_local_name(name: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name == "localhost" || name.ends_with(".localhost")
}

impl Plan {
    fn way(&self, via: Option<Via>) -> Way<'_> {
        match via {
            Some(Via::Server(i)) => self.servers.get(i).map_or(Way::Direct, Way::Proxy),
            _ => Way::Direct,
        }
    }

    /// Where a connection to an address goes.
    pub(crate) fn for_ip(&self, ip: IpAddr, port: u16) -> Way<'_> {
        let ip = ip.to_canonical();
        if ip.is_loopback() || ip.is_unspecified() {
            return Way::Direct;
        }
        self.way(self.table.for_ip(ip, port, &|_| true).map(|r| r.via))
    }

    /// Where a connection to a name goes: a route naming it, else the gateway (a proxy for
    /// every address) if there is one, else direct.
    pub(crate) fn for_name(&self, name: &str, port: u16) -> Way<'_> {
        if is_local_name(name) {
            return Way::Direct;
        }
        let route = self
            .table
            .for_name(name, port, &|_| true)
            .or_else(|| self.table.gateway(port, &|_| true));
        self.way(route.map(|r| r.via))
    }

    /// The proxy listening sockets open on: the gateway's (a proxy for every address), else
    /// the first server.
    pub(crate) fn listen_server(&self) -> Option<&Server> {
        match self.way(self.table.gateway(0, &|_| true).map(|r| r.via)) {
            Way::Proxy(s) => Some(s),
            Way::Direct => self.servers.first(),
        }
    }

    /// Whether a name the program resolves should get a placeholder: it goes to a proxy
    /// that resolves names itself. `port` is 0 when the program did not say.
    pub(crate) fn resolves_remotely(&self, name: &str, port: u16) -> bool {
        match self.for_name(name, port) {
            Way::Proxy(s) => s.url.resolve == Resolve::Remote,
            Way::Direct => false,
        }
    }
}

impl Server {
    /// A server named by URL (for the C API's explicit requests).
    pub(crate) fn from_url(url: &str) -> Result<Server, String> {
        let url = ProxyUrl::parse(url).map_err(|e| e.to_string())?;
        Ok(Server {
            url,
            addrs: OnceLock::new(),
        })
    }

    /// Its addresses, resolved on first use with the real resolver.
    pub(crate) fn addrs(&self) -> Result<&[SocketAddr], i32> {
        self.addrs
            .get_or_init(|| crate::sys::resolve_real(&self.url.host, self.url.port))
            .as_deref()
            .map_err(|e| *e)
    }

    /// The address family the shim's own connections to it use (its first address's).
    pub(crate) fn family(&self) -> Result<i32, i32> {
        Ok(match self.addrs()?.first() {
            Some(a) if a.is_ipv6() => libc::AF_INET6,
            _ => libc::AF_INET,
        })
    }

    /// Whether it speaks SOCKS4.
    pub(crate) fn socks4(&self) -> bool {
        self.url.version == SocksVersion::Socks4
    }

    /// Its name for messages (the URL without the password).
    pub(crate) fn describe(&self) -> String {
        self.url.to_string()
    }
}
