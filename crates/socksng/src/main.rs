//! socksng: the command-line client. Argument parsing, choosing the servers (a `--proxy`, the
//! client config file, or ALL_PROXY) and printing; the work is done by `socksng_client`.

use anyhow::{anyhow, Context, Result};
use clap::{CommandFactory, Parser, Subcommand};
use socksng_client::forward::{forward_local, forward_remote, ForwardEvent};
use socksng_client::route::{port_ranges_text, Via};
use socksng_client::{
    Address, Capabilities, Client, ClientConfig, ClientError, ProtocolPath, ProxyUrl, ReplyCode,
    Router,
};
use std::io::{IsTerminal, Write};
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// `println!` that returns a failed write (a closed standard output, say) as an error
/// instead of panicking; `stdout_closed` then makes it a quiet success.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

/// Limit for setting something up with a proxy (connect, negotiate, one request).
const PROXY_TIMEOUT: Duration = Duration::from_secs(10);

/// `what` within [`PROXY_TIMEOUT`].
async fn in_time<T>(
    what: impl std::future::Future<Output = Result<T, ClientError>>,
) -> Result<T, ClientError> {
    tokio::time::timeout(PROXY_TIMEOUT, what)
        .await
        .unwrap_or_else(|_| Err(ClientError::Io(std::io::ErrorKind::TimedOut.into())))
}

/// socksng: reach hosts through SOCKS5 and SOCKS-NG proxies.
///
/// Which proxy is used: `--proxy URL` sends everything through that one proxy. Otherwise the
/// client configuration file lists servers and routes (`--config`, $SOCKSNG_CLIENT_CONFIG,
/// ~/.config/socksng/client.toml, /etc/socksng/client.toml); SOCKS-NG servers are asked which
/// ranges they serve, the most specific route wins, and anything else goes direct. Without a
/// file, ALL_PROXY (or all_proxy) is used, with NO_PROXY going direct.
///
/// Proxy URLs: socks5h://[user[:password]@]host[:port] (names resolved by the proxy),
/// socks5s:// (the same over TLS: --proxy-cacert, --proxy-pinnedpubkey, --proxy-cert),
/// socks5:// (names resolved here), socks4a:// and socks4:// (SOCKS4, CONNECT and BIND);
/// the port defaults to 1080. Targets are HOST:PORT, with IPv6 literals in brackets:
/// [2001:db8::1]:22. With --proxy (or ALL_PROXY), NO_PROXY's hosts go direct, as with curl.
///
/// Credentials stay off the command line with --proxy-user USER: the password comes from
/// $SOCKSNG_PASSWORD, else from a netrc file (--netrc, --netrc-file; "machine" is the proxy
/// host), else from a prompt on the terminal.
///
/// Examples:
///   ssh -o ProxyCommand='socksng -x socks5h://gw:1080 connect %h:%p' host.internal
///   socksng -x socks5h://gw:1080 forward-local 127.0.0.1:5432 db.internal:5432
///   socksng -x socks5h://gw:1080 forward-remote --port 8080 127.0.0.1:80
///   printf 'ping' | socksng -x socks5h://gw:1080 udp 192.0.2.53:7
///   socksng info socks5h://gw:1080 --json
///   socksng routes --lookup db.internal:5432
///   socksng -x socks5h://gw:1080 -U alice --netrc-file ~/.socksng-netrc connect db:5432
///
/// Shell completions and the manual page: `socksng completions bash`, `socksng man` (see
/// the README for where to install them).
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment, after_long_help = EXIT_STATUS_HELP)]
struct Cli {
    /// Send everything through this proxy (overrides the config file and ALL_PROXY).
    #[arg(short = 'x', long, global = true, value_name = "URL")]
    proxy: Option<String>,
    /// Client configuration file (servers, credentials, routes).
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Say on standard error which way each connection went.
    #[arg(short, long, global = true)]
    verbose: bool,
    /// Also route through the proxies the network announces (DHCP leases, as `discover`
    /// reads them; $SOCKSNG_LEASE_FILES, colon-separated, instead of the usual places):
    /// they only take destinations no configured route covers.
    #[arg(long, global = true)]
    discover: bool,
    /// With --discover, also take the servers DNS-SD announces over mDNS (browsed for 3 s).
    #[arg(long, global = true, requires = "discover")]
    discover_mdns: bool,
    /// With --discover, also take the SOCKS5 proxies of this provisioning domain's JSON (a
    /// PvD ID, or an https:// or http:// URL, as `discover --pvd`); repeatable.
    #[arg(long, global = true, value_name = "ID|URL", requires = "discover")]
    discover_pvd: Vec<String>,
    /// The proxy's username (for --proxy or ALL_PROXY); the password from $SOCKSNG_PASSWORD,
    /// a netrc file or a prompt. USER:PASSWORD also works, but shows in ps.
    #[arg(short = 'U', long, global = true, value_name = "USER")]
    proxy_user: Option<String>,
    /// Look the proxy password up in ~/.netrc.
    #[arg(long, global = true)]
    netrc: bool,
    /// Look the proxy password up in this netrc-style file.
    #[arg(long, global = true, value_name = "FILE")]
    netrc_file: Option<PathBuf>,
    /// Hosts that bypass --proxy, comma-separated as in NO_PROXY ('' for none); default:
    /// NO_PROXY.
    #[arg(long, global = true, value_name = "LIST")]
    noproxy: Option<String>,
    /// SOCKS over TLS (socks5s://), and HTTPS provisioning domains: trust the CA
    /// certificates in this PEM file, not the system's.
    #[arg(long, global = true, value_name = "FILE")]
    proxy_cacert: Option<PathBuf>,
    /// SOCKS over TLS: accept only this server key (sha256//BASE64, as curl).
    #[arg(long, global = true, value_name = "HASH")]
    proxy_pinnedpubkey: Option<String>,
    /// SOCKS over TLS: a client certificate (PEM), with --proxy-key.
    #[arg(long, global = true, value_name = "FILE", requires = "proxy_key")]
    proxy_cert: Option<PathBuf>,
    /// SOCKS over TLS: the client certificate's key (PEM).
    #[arg(long, global = true, value_name = "FILE", requires = "proxy_cert")]
    proxy_key: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Connect to TARGET and relay standard input and output (like `nc -X 5`).
    ///
    /// Usable as ssh's ProxyCommand. The end of standard input is passed on as a half-close;
    /// the command ends when the target closes its side.
    Connect {
        /// HOST:PORT.
        target: String,
    },
    /// Forward a local port to TARGET (like `ssh -L`).
    ///
    /// Listens on LISTEN and relays every connection to TARGET, the way the routes say.
    ForwardLocal {
        /// Local address, or just a port for 127.0.0.1.
        listen: String,
        /// HOST:PORT, reached the way the routes say.
        target: String,
    },
    /// Publish LOCAL on a port of the proxy's outside (like `ssh -R`).
    ///
    /// Prints "listening on ADDRESS -> LOCAL" and relays every incoming connection to LOCAL,
    /// many at once. Needs SOCKS-NG LISTEN; a plain SOCKS5 server can only BIND for one
    /// connection, which is served before exiting.
    ForwardRemote {
        /// The port to ask for (0 for any).
        #[arg(long, default_value_t = 0)]
        port: u16,
        /// Fail rather than take another port when --port is taken.
        #[arg(long)]
        exact: bool,
        /// Incoming connections the proxy may hold before they are claimed.
        #[arg(long, default_value_t = 128)]
        backlog: u16,
        /// The server (a configured name or a URL); default: the first configured one.
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
        /// The local service, HOST:PORT or just a port on 127.0.0.1.
        local: String,
    },
    /// Send one datagram to TARGET and write the replies to standard output.
    ///
    /// The payload is the --data text, else all of standard input (a DNS query, say). UDP goes
    /// through the SOCKS-NG tunnel, or UDP ASSOCIATE on a plain SOCKS5 server.
    Udp {
        /// HOST:PORT.
        target: String,
        /// The payload (default: standard input).
        #[arg(short, long)]
        data: Option<String>,
        /// Replies to wait for.
        #[arg(long, default_value_t = 1)]
        count: usize,
        /// Give up waiting after this many seconds.
        #[arg(long, default_value_t = 5.0)]
        timeout: f64,
        /// Print each reply as hex, one line each, with its source.
        #[arg(long)]
        hex: bool,
        /// The server (a configured name or a URL); default: the route for TARGET.
        #[arg(long, value_name = "SERVER")]
        server: Option<String>,
        /// Line mode: every line of standard input is one datagram, and every reply is printed
        /// on a line of its own; the command ends --timeout seconds after the input ends and
        /// the replies stop.
        #[arg(long, conflicts_with_all = ["data", "count"])]
        lines: bool,
    },
    /// Ask servers what they offer: protocol, commands, UDP limit, served ranges.
    Info {
        /// A proxy URL or a configured server name; default: every configured server.
        server: Option<String>,
        /// One JSON object per server.
        #[arg(long)]
        json: bool,
    },
    /// Print the route table of the configured servers.
    ///
    /// SOCKS-NG servers are asked for their ranges first; servers that cannot be reached are
    /// shown down.
    Routes {
        /// JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Also say which way these HOST:PORT targets would go.
        #[arg(long, value_name = "TARGET")]
        lookup: Vec<String>,
    },
    /// Run PROGRAM with its connections going the way the routes say (socksify).
    ///
    /// Loads the socksify shim (libsocksng_socksify.so, found next to this command, in
    /// $SOCKSNG_SHIM, or under /usr/lib/socksng) into PROGRAM with LD_PRELOAD, configured by
    /// --proxy (with --proxy-user and --noproxy), --config, the client config file or
    /// ALL_PROXY, as every other command. Names the proxy resolves get placeholder addresses,
    /// so no DNS query leaves this host for them; loopback and what no route names go direct.
    /// Statically linked programs (Go's, often) cannot be socksified this way: a warning says
    /// so.
    Exec {
        /// The program and its arguments (after --).
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            required = true,
            value_name = "PROGRAM"
        )]
        program: Vec<String>,
    },
    /// Find the proxies the network announces (draft section 10) and ask each what it serves.
    ///
    /// Reads the DHCP option (a site-specific code, 224 unless --dhcp-code says otherwise)
    /// from the host's DHCP client leases (dhclient, dhcpcd, systemd-networkd) or the
    /// --lease-file given. URLs with credentials are dropped: a network is not trusted with
    /// them. Learned proxies only inform; configured routes are not changed.
    Discover {
        /// A lease file to read (repeatable); default: the DHCP clients' usual places.
        #[arg(long = "lease-file", value_name = "FILE")]
        lease_files: Vec<PathBuf>,
        /// The DHCP option code the network uses.
        #[arg(long, default_value_t = 224, value_name = "CODE")]
        dhcp_code: u8,
        /// The DHCPv6 vendor option's enterprise number the network uses.
        #[arg(long, default_value_t = 32473, value_name = "NUMBER")]
        dhcpv6_enterprise: u32,
        /// One JSON object per proxy found: url, source, and what it serves.
        #[arg(long)]
        json: bool,
        /// Also browse DNS-SD over mDNS (_socksng._tcp) on this host's links.
        #[arg(long)]
        mdns: bool,
        /// How long to browse mDNS (and wait for DHCPINFORM answers), seconds.
        #[arg(long, default_value_t = 3.0, value_name = "SECS")]
        mdns_wait: f64,
        /// Also ask the DHCP servers on this interface directly: DHCPINFORM when it has an
        /// IPv4 address, a DHCPv6 Information-Request too (needs ports 68 and 546).
        #[arg(long, value_name = "INTERFACE")]
        inform: Option<String>,
        /// Also read a provisioning domain's JSON: a PvD ID (fetched from
        /// https://ID/.well-known/pvd, and it must name that ID) or an https:// or http://
        /// URL (the path /.well-known/pvd by default); repeatable. HTTPS servers are checked
        /// against the system's CAs, or --proxy-cacert's.
        #[arg(long = "pvd", value_name = "ID|URL")]
        pvds: Vec<String>,
    },
    /// Print a completion script for SHELL (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff), for man(1).
    Man,
}

/// What the exit status says.
const EXIT_STATUS_HELP: &str = "\
Exit status:
  0  success (also when standard output is closed early, as by `| head`)
  1  another failure (a local socket, the relay)
  2  the command line
  3  the local configuration: config file, proxy URL, credentials
  4  a name could not be resolved here
  5  the proxy failed: unreachable, timed out, broke the protocol, or cannot do it
  6  the proxy refused the login
  7  the proxy refused the request: by rule (0x02), a port reserved or in use, a limit
  8  the target failed: refused, unreachable, timed out";

/// The statuses of [`EXIT_STATUS_HELP`].
mod status {
    pub const OTHER: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const CONFIG: i32 = 3;
    pub const RESOLVE: i32 = 4;
    pub const PROXY: i32 = 5;
    pub const LOGIN: i32 = 6;
    pub const REFUSED: i32 = 7;
    pub const TARGET: i32 = 8;
}

/// A failure of the command's own inputs, with its exit status.
#[derive(Debug, thiserror::Error)]
enum LocalError {
    /// The command line (a target that is not HOST:PORT, say).
    #[error("{0}")]
    Usage(String),
    /// The configuration (no proxy given, credentials missing).
    #[error("{0}")]
    Config(String),
}

/// The exit status for a failed command: the first cause in the chain that says who failed.
fn exit_status(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|cause| {
            if let Some(c) = cause.downcast_ref::<ClientError>() {
                return Some(client_status(c));
            }
            match cause.downcast_ref::<LocalError>() {
                Some(LocalError::Usage(_)) => Some(status::USAGE),
                Some(LocalError::Config(_)) => Some(status::CONFIG),
                None => None,
            }
        })
        .unwrap_or(status::OTHER)
}

fn client_status(e: &ClientError) -> i32 {
    match e {
        ClientError::Config(_) | ClientError::BadUrl(_) | ClientError::BadTarget(_) => {
            status::CONFIG
        }
        ClientError::Resolve { .. } => status::RESOLVE,
        ClientError::AuthFailed | ClientError::NoAcceptableMethod => status::LOGIN,
        ClientError::Refused { code } | ClientError::DatagramRefused { code, .. } => match *code {
            ReplyCode::NOT_ALLOWED
            | ReplyCode(0x0A)
            | ReplyCode(0x0B)
            | ReplyCode(0x0D)
            | ReplyCode(0x5B..=0x5D) => status::REFUSED,
            ReplyCode::NETWORK_UNREACHABLE
            | ReplyCode::HOST_UNREACHABLE
            | ReplyCode::CONNECTION_REFUSED
            | ReplyCode::TTL_EXPIRED
            | ReplyCode(0x09) => status::TARGET,
            _ => status::PROXY,
        },
        ClientError::Target(_) => status::TARGET,
        ClientError::Proxy { cause, .. } => client_status(cause),
        _ => status::PROXY,
    }
}

/// Whether the failure is only that standard output was closed (`| head`): not a failure.
fn stdout_closed(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) if stdout_closed(&e) => 0,
        Err(e) => {
            eprintln!("socksng: {e:#}");
            exit_status(&e)
        }
    };
    // Standard input may still be held by a blocking read; do not wait for it.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// HOST:PORT, [V6]:PORT.
fn parse_target(text: &str) -> Result<Address> {
    let bad = || anyhow!(LocalError::Usage(format!("{text:?}: expected HOST:PORT")));
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        text.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(match host.parse() {
        Ok(ip) => Address::ip(SocketAddr::new(ip, port)),
        Err(_) => Address::domain(host, port)
            .map_err(|e| anyhow!(LocalError::Usage(format!("{text:?}: {e}"))))?,
    })
}

/// A local address: HOST:PORT, or a bare port on 127.0.0.1.
fn parse_local(text: &str) -> Result<SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    let text = text.trim_start_matches('[').replacen("]:", ":", 1);
    let with_brackets = match text.rsplit_once(':') {
        Some((h, p)) if h.contains(':') => format!("[{h}]:{p}"),
        _ => text.clone(),
    };
    let usage = |why: String| anyhow!(LocalError::Usage(why));
    with_brackets
        .to_socket_addrs()
        .map_err(|e| usage(format!("{text:?}: expected HOST:PORT or PORT ({e})")))?
        .next()
        .ok_or_else(|| usage(format!("{text:?} has no address")))
}

/// Replaces this process with `program` under the socksify shim.
async fn exec(cli: &Cli, program: &[String]) -> Result<()> {
    use std::os::unix::process::CommandExt;
    // The configuration is checked here, where its errors can be reported well.
    let learned = if cli.discover && cli.proxy.is_none() {
        learned_proxies(cli)
    } else {
        Vec::new()
    };
    let router = router_with(cli, learned.iter().map(|(_, url)| url.clone()).collect())?;
    // The shim routes by the ranges servers announced as cached on disk: ask them now, so the
    // program starts with what they serve (a server that does not answer is left to the
    // cache, or to the shim's warning).
    if router.servers().iter().any(|(spec, _)| spec.ask) {
        router.refresh().await;
    }
    let shim = shim_path().ok_or_else(|| {
        anyhow!(LocalError::Config(
            "cannot find libsocksng_socksify.so: set SOCKSNG_SHIM to its path".into()
        ))
    })?;
    let (name, args) = program
        .split_first()
        .ok_or_else(|| anyhow!(LocalError::Usage("no program given".into())))?;
    let mut command = std::process::Command::new(name);
    command.args(args);
    let preload = match std::env::var("LD_PRELOAD") {
        Ok(old) if !old.is_empty() => format!("{} {old}", shim.display()),
        _ => shim.display().to_string(),
    };
    command.env("LD_PRELOAD", preload);
    if let Some(url) = &cli.proxy {
        let url = with_credentials(cli, ProxyUrl::parse(url)?)?;
        command.env("SOCKSNG_PROXY", url_with_credentials(&url));
        if let Some(list) = &cli.noproxy {
            command.env("NO_PROXY", list).env("no_proxy", list);
        }
    } else if let Some(path) = &cli.config {
        command.env("SOCKSNG_CLIENT_CONFIG", std::path::absolute(path)?);
    }
    // The proxies the network announced, for the shim to add as this process did; only when
    // the route table took them (not beside ALL_PROXY, as `router_with` decides).
    if router.servers().iter().any(|(spec, _)| spec.learned) {
        let list: Vec<&str> = learned.iter().map(|(text, _)| text.as_str()).collect();
        command.env("SOCKSNG_LEARNED", list.join(" "));
    } else {
        command.env_remove("SOCKSNG_LEARNED");
    }
    if let Some(path) = find_program(name) {
        if is_static(&path) {
            eprintln!(
                "socksng: {} is statically linked: the shim cannot reach its connections",
                path.display()
            );
        }
    }
    let e = command.exec();
    Err(anyhow!(LocalError::Usage(format!(
        "cannot run {name}: {e}"
    ))))
}

/// The shim: $SOCKSNG_SHIM, next to this program, or where packages install it.
fn shim_path() -> Option<PathBuf> {
    const NAME: &str = "libsocksng_socksify.so";
    let env = std::env::var_os("SOCKSNG_SHIM").map(PathBuf::from);
    let beside = std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(NAME)));
    let installed = ["/usr/local/lib/socksng", "/usr/lib/socksng"]
        .iter()
        .map(|d| Path::new(d).join(NAME));
    env.into_iter()
        .chain(beside)
        .chain(installed)
        .find(|p| p.is_file())
}

/// `url` as text with its credentials (percent-encoded), for the shim's SOCKSNG_PROXY.
fn url_with_credentials(url: &ProxyUrl) -> String {
    fn encode(s: &str) -> String {
        s.bytes()
            .map(|b| match b {
                b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                    char::from(b).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect()
    }
    let shown = url.to_string();
    let Some((scheme, rest)) = shown.split_once("://") else {
        return shown;
    };
    // The displayed URL has the user but not the password: rebuild the authority.
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    match &url.credentials {
        Some((user, pass)) => format!("{scheme}://{}:{}@{host_port}", encode(user), encode(pass)),
        None => format!("{scheme}://{host_port}"),
    }
}

/// `name` as exec would find it.
fn find_program(name: &str) -> Option<PathBuf> {
    if name.contains('/') {
        return Some(PathBuf::from(name));
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|p| p.is_file())
    })
}

/// Whether an ELF file has no program interpreter (statically linked): LD_PRELOAD does not
/// reach it. 64-bit little-endian ELF only; anything else is not judged.
fn is_static(path: &Path) -> bool {
    const PT_INTERP: u32 = 3;
    let Ok(data) = std::fs::read(path) else {
        return false;
    };
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([data[o], data[o + 1]]) as usize;
    let phoff = u64::from_le_bytes(data[0x20..0x28].try_into().unwrap_or([0; 8])) as usize;
    let (phentsize, phnum) = (u16_at(0x36), u16_at(0x38));
    (0..phnum).all(|i| {
        let at = phoff + i * phentsize;
        data.get(at..at + 4)
            .map(|t| u32::from_le_bytes([t[0], t[1], t[2], t[3]]))
            != Some(PT_INTERP)
    })
}

/// One proxy for everything (from --proxy or ALL_PROXY), with --proxy-user's credentials and
/// NO_PROXY's (or --noproxy's) hosts direct.
fn single_proxy(cli: &Cli, url: &str) -> Result<Router> {
    let url = with_credentials(cli, ProxyUrl::parse(url)?)?;
    let no_proxy = match &cli.noproxy {
        Some(list) => Some(list.clone()),
        None => socksng_client::env_no_proxy(),
    };
    Ok(Router::single_except(url, no_proxy.as_deref()))
}

fn router(cli: &Cli) -> Result<Router> {
    let learned = if cli.discover && cli.proxy.is_none() {
        learned_proxies(cli)
    } else {
        Vec::new()
    };
    router_with(cli, learned.into_iter().map(|(_, url)| url).collect())
}

/// The router of `router`, with `learned` as the proxies the network announced.
fn router_with(cli: &Cli, learned: Vec<ProxyUrl>) -> Result<Router> {
    if let Some(url) = &cli.proxy {
        return single_proxy(cli, url);
    }
    if let Some(path) = cli.config.clone().or_else(ClientConfig::default_path) {
        // The load error names the file; what the file says gets the name added.
        let router = ClientConfig::load(&path)?
            .router_with_learned(learned)
            .with_context(|| format!("client config {}", path.display()))?;
        // Not asked yet: a server whose ranges come from its answer is not judged here.
        for name in unused_servers(&router, false) {
            if cli.verbose {
                eprintln!("socksng: server {name} is used by no route: nothing goes through it");
            }
        }
        return Ok(router);
    }
    if let Some(url) = socksng_client::env_all_proxy() {
        return single_proxy(cli, &url);
    }
    if !learned.is_empty() {
        return Ok(ClientConfig::default().router_with_learned(learned)?);
    }
    Err(anyhow!(LocalError::Config(
        "no proxy configured: give --proxy URL, a client config file (--config, \
         ~/.config/socksng/client.toml) or ALL_PROXY"
            .into()
    )))
}

/// The configured servers that no route sends anything to; before the servers were asked for
/// their ranges (`asked` false), those that announce them are left out.
fn unused_servers(router: &Router, asked: bool) -> Vec<String> {
    let table = router.table();
    router
        .servers()
        .into_iter()
        .enumerate()
        .filter(|(_, (spec, _))| asked || !spec.ask)
        .filter(|(i, _)| !table.routes().iter().any(|r| r.via == Via::Server(*i)))
        .map(|(_, (spec, _))| spec.name)
        .collect()
}

/// `url` with the TLS options and --proxy-user's username and its password (never read
/// from the command line unless given there as USER:PASSWORD).
fn with_credentials(cli: &Cli, url: ProxyUrl) -> Result<ProxyUrl> {
    let mut url = url.with_tls_options(
        cli.proxy_cacert.clone(),
        cli.proxy_pinnedpubkey.as_deref(),
        cli.proxy_cert.clone().zip(cli.proxy_key.clone()),
    )?;
    let Some(user) = &cli.proxy_user else {
        return Ok(url);
    };
    let (user, password) = match user.split_once(':') {
        Some((u, p)) => (u.to_string(), p.to_string()),
        None => (user.clone(), password_for(cli, &url.host, user)?),
    };
    url.credentials = Some((user, password));
    Ok(url)
}

/// The password for `user` at `host`: $SOCKSNG_PASSWORD, else a netrc file, else a prompt on
/// the terminal.
fn password_for(cli: &Cli, host: &str, user: &str) -> Result<String> {
    if let Some(p) = std::env::var("SOCKSNG_PASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
    {
        return Ok(p);
    }
    let netrc = cli.netrc_file.clone().or_else(|| {
        cli.netrc
            .then(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".netrc")))
            .flatten()
    });
    if let Some(path) = netrc {
        let text = std::fs::read_to_string(&path)
            .map_err(|e| LocalError::Config(format!("netrc file {}: {e}", path.display())))?;
        return netrc_password(&text, host, user).ok_or_else(|| {
            anyhow!(LocalError::Config(format!(
                "netrc file {} has no password for {user} at {host}",
                path.display()
            )))
        });
    }
    if std::io::stdin().is_terminal() || std::io::stderr().is_terminal() {
        if let Ok(p) = rpassword::prompt_password(format!("Password for {user} at {host}: ")) {
            return Ok(p);
        }
    }
    Err(anyhow!(LocalError::Config(format!(
        "no password for {user}: set SOCKSNG_PASSWORD, give --netrc-file FILE, or run on a \
         terminal"
    ))))
}

/// The password a netrc file gives `user` at `host`: the `machine host` entry (or `default`)
/// whose `login` is the user, or that names no login.
fn netrc_password(text: &str, host: &str, user: &str) -> Option<String> {
    // `#` starts a comment to the end of its line (outside a macro); quoted values lose
    // their quotes, as curl reads them.
    let uncommented: String = text
        .lines()
        .map(|l| match l.find('#') {
            Some(at) if l[..at].trim().is_empty() || l[..at].ends_with(char::is_whitespace) => {
                &l[..at]
            }
            _ => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut tokens = uncommented.split_whitespace().map(|t| {
        t.strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(t)
    });
    let mut entries: Vec<(Option<String>, Option<String>, Option<String>)> = Vec::new();
    while let Some(t) = tokens.next() {
        match t {
            "machine" => entries.push((tokens.next().map(str::to_owned), None, None)),
            "default" => entries.push((None, None, None)),
            "login" | "password" | "account" => {
                let value = tokens.next().map(str::to_owned);
                if let Some(entry) = entries.last_mut() {
                    match t {
                        "login" => entry.1 = value,
                        "password" => entry.2 = value,
                        _ => {}
                    }
                }
            }
            // A macro definition runs to an empty line; whitespace splitting cannot see it,
            // and nothing here uses macros, so the tokens after it are read on as entries.
            _ => {}
        }
    }
    let fits = |(machine, login, password): &(Option<String>, Option<String>, Option<String>),
                exact: bool| {
        let machine_ok = match machine {
            Some(m) => m.eq_ignore_ascii_case(host),
            None => !exact,
        };
        machine_ok && login.as_deref().is_none_or(|l| l == user) && password.is_some()
    };
    entries
        .iter()
        .find(|e| fits(e, true))
        .or_else(|| entries.iter().find(|e| fits(e, false)))
        .and_then(|e| e.2.clone())
}

/// A server given as a URL or a configured name; a URL is shown without its password.
fn server_client(cli: &Cli, which: &str) -> Result<(String, Client)> {
    if which.contains("://") || which.parse::<SocketAddr>().is_ok() {
        let url = with_credentials(cli, ProxyUrl::parse(which)?)?;
        return Ok((url.to_string(), Client::new(url)));
    }
    let router = router(cli)?;
    let (spec, _) = router
        .servers()
        .into_iter()
        .find(|(s, _)| s.name == which)
        .ok_or_else(|| {
            anyhow!(LocalError::Config(format!(
                "no configured server is called {which:?}"
            )))
        })?;
    Ok((spec.name, Client::new(spec.url)))
}

fn path_name(p: ProtocolPath) -> &'static str {
    match p {
        ProtocolPath::Ng => "SOCKS-NG",
        ProtocolPath::Socks5 => "SOCKS5",
        ProtocolPath::Socks4 => "SOCKS4",
    }
}

fn report(verbose: bool) -> impl Fn(ForwardEvent) + Send + Sync + 'static {
    move |e: ForwardEvent| match e.outcome {
        Ok((up, down)) if verbose => {
            eprintln!(
                "{} via {}: {up} bytes out, {down} bytes back",
                e.peer, e.via
            )
        }
        Ok(_) => {}
        Err(why) => eprintln!("{} via {}: {why}", e.peer, e.via),
    }
}

async fn run(cli: Cli) -> Result<()> {
    match &cli.command {
        Cmd::Connect { target } => connect(&cli, parse_target(target)?).await,
        Cmd::ForwardLocal { listen, target } => {
            let target = parse_target(target)?;
            let router = Arc::new(router(&cli)?);
            let at = parse_local(listen)?;
            let listener = tokio::net::TcpListener::bind(at)
                .await
                .with_context(|| format!("listen on {at}"))?;
            say!("forwarding {} -> {target}", listener.local_addr()?);
            std::io::stdout().flush()?;
            forward_local(listener, router, target, report(cli.verbose)).await?;
            Ok(())
        }
        Cmd::ForwardRemote {
            port,
            exact,
            backlog,
            server,
            local,
        } => {
            let local = parse_local(local)?;
            let (name, client) = match server {
                Some(s) => server_client(&cli, s)?,
                None => {
                    let router = router(&cli)?;
                    let (spec, _) = router.servers().into_iter().next().ok_or_else(|| {
                        anyhow!(LocalError::Config("no server configured".into()))
                    })?;
                    (spec.name, Client::new(spec.url))
                }
            };
            let family = if local.is_ipv6() {
                "[::]:0"
            } else {
                "0.0.0.0:0"
            };
            let listener =
                in_time(client.listen(*port, *exact, *backlog, Address::ip(family.parse()?)))
                    .await
                    .with_context(|| format!("listen on {name}"))?;
            say!("listening on {} -> {local}", listener.local_addr());
            if listener.path() != ProtocolPath::Ng {
                let path = path_name(listener.path());
                eprintln!("socksng: {name} is a plain {path} server: BIND accepts one connection");
            }
            std::io::stdout().flush()?;
            forward_remote(listener, local, report(cli.verbose)).await?;
            Ok(())
        }
        Cmd::Udp {
            target,
            data,
            count,
            timeout,
            hex,
            server,
            lines,
        } => {
            let target = parse_target(target)?;
            // Capped at a day, so a deadline never overflows the clock.
            let limit = Duration::try_from_secs_f64(*timeout)
                .map_err(|e| LocalError::Usage(format!("--timeout: {e}")))?
                .min(Duration::from_secs(86_400));
            let endpoint = udp_endpoint(&cli, server.as_deref(), &target).await?;
            let print = Printer { hex: *hex };
            if *lines {
                return udp_lines(endpoint, target, limit, print).await;
            }
            let payload = match data {
                Some(d) => d.clone().into_bytes(),
                None => {
                    let mut v = Vec::new();
                    tokio::io::stdin().read_to_end(&mut v).await?;
                    v
                }
            };
            udp_once(endpoint, target, payload, *count, limit, print).await
        }
        Cmd::Completions { shell } => {
            let mut cmd = Cli::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut cmd, "socksng", &mut script);
            std::io::stdout().write_all(&script)?;
            Ok(())
        }
        Cmd::Man => {
            clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout())?;
            Ok(())
        }
        Cmd::Info { server, json } => info(&cli, server.as_deref(), *json).await,
        Cmd::Discover {
            lease_files,
            dhcp_code,
            dhcpv6_enterprise,
            json,
            mdns,
            mdns_wait,
            inform,
            pvds,
        } => {
            let wait = Duration::try_from_secs_f64(*mdns_wait)
                .map_err(|e| LocalError::Usage(format!("--mdns-wait: {e}")))?
                .min(Duration::from_secs(300));
            let ways = Ways {
                mdns: mdns.then_some(wait),
                inform: inform.clone().map(|i| (i, wait)),
                pvds: pvds.clone(),
            };
            let options = socksng_client::discover::DhcpOptions {
                code: *dhcp_code,
                enterprise: *dhcpv6_enterprise,
            };
            discover(&cli, lease_files, options, *json, ways).await
        }
        Cmd::Exec { program } => exec(&cli, program).await,
        Cmd::Routes { json, lookup } => routes(&cli, *json, lookup).await,
    }
}

async fn connect(cli: &Cli, target: Address) -> Result<()> {
    let router = router(cli)?;
    let routed = router
        .connect(target.clone())
        .await
        .with_context(|| format!("connect to {target}"))?;
    if cli.verbose {
        for why in &routed.skipped {
            eprintln!("socksng: skipped {why}");
        }
        let how = routed.path.map_or("", path_name);
        eprintln!("socksng: {target} via {} {how}", routed.via_name);
    }
    let (mut from_target, mut to_target) = tokio::io::split(routed.stream);
    let upload = tokio::spawn(async move {
        let mut stdin = tokio::io::stdin();
        let _ = tokio::io::copy(&mut stdin, &mut to_target).await;
        // Standard input ended: pass the end on, keep receiving.
        let _ = to_target.shutdown().await;
    });
    let mut stdout = tokio::io::stdout();
    let copied = tokio::io::copy(&mut from_target, &mut stdout).await;
    stdout.flush().await?;
    upload.abort();
    copied.context("relay")?;
    Ok(())
}

/// Where `socksng udp` sends: through a proxy (tunnel or UDP ASSOCIATE), or direct.
enum UdpEndpoint {
    Proxy(Box<socksng_client::ProxyUdp>),
    Direct(tokio::net::UdpSocket, SocketAddr),
}

async fn udp_endpoint(cli: &Cli, server: Option<&str>, target: &Address) -> Result<UdpEndpoint> {
    let client = match server {
        Some(s) => Some(server_client(cli, s)?.1),
        None => {
            let router = router(cli)?;
            let (via, _) = router.decide(target).await?;
            match via {
                Via::Direct => None,
                Via::Server(_) => router.client(via).cloned(),
            }
        }
    };
    match client {
        Some(client) => {
            let sock = in_time(client.udp()).await?;
            if cli.verbose {
                eprintln!("socksng: UDP via {}", path_name(sock.path()));
            }
            Ok(UdpEndpoint::Proxy(Box::new(sock)))
        }
        None => {
            let to = match target.socket_addr() {
                Some(a) => a,
                // A failure is the local lookup's.
                None => {
                    socksng_client::resolve_here(&target.host.to_string(), target.port).await?[0]
                }
            };
            let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
            if cli.verbose {
                eprintln!("socksng: UDP direct");
            }
            Ok(UdpEndpoint::Direct(
                tokio::net::UdpSocket::bind(bind).await?,
                to,
            ))
        }
    }
}

/// How replies are written: raw bytes, or one line each (hex with the source).
#[derive(Clone, Copy)]
struct Printer {
    hex: bool,
}

impl Printer {
    fn print(&self, data: &[u8], from: SocketAddr, line: bool) -> Result<()> {
        let mut out = std::io::stdout().lock();
        if self.hex {
            let h: String = data.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{from} {h}")?;
        } else if line {
            out.write_all(data.strip_suffix(b"\n").unwrap_or(data))?;
            out.write_all(b"\n")?;
        } else {
            out.write_all(data)?;
        }
        out.flush()?;
        Ok(())
    }
}

/// No reply within the time given: the target's silence.
fn no_reply(limit: Duration) -> anyhow::Error {
    anyhow!(ClientError::Target(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no reply within {limit:?}"),
    )))
}

/// One datagram out, `count` replies back.
async fn udp_once(
    endpoint: UdpEndpoint,
    target: Address,
    payload: Vec<u8>,
    count: usize,
    limit: Duration,
    print: Printer,
) -> Result<()> {
    let mut buf = vec![0u8; 65_536];
    match endpoint {
        UdpEndpoint::Proxy(mut sock) => {
            sock.send_to(&payload, &target).await?;
            for _ in 0..count {
                let (n, from) = tokio::time::timeout(limit, sock.recv_from(&mut buf))
                    .await
                    .map_err(|_| no_reply(limit))??;
                print.print(&buf[..n], from, false)?;
            }
        }
        UdpEndpoint::Direct(sock, to) => {
            sock.send_to(&payload, to).await?;
            for _ in 0..count {
                let (n, from) = tokio::time::timeout(limit, sock.recv_from(&mut buf))
                    .await
                    .map_err(|_| no_reply(limit))?
                    .map_err(ClientError::Target)?;
                print.print(&buf[..n], from, false)?;
            }
        }
    }
    Ok(())
}

/// Line mode: each line of standard input is a datagram, each reply a line; the command
/// ends `limit` after the input ended and the last reply came.
async fn udp_lines(
    endpoint: UdpEndpoint,
    target: Address,
    limit: Duration,
    print: Printer,
) -> Result<()> {
    use tokio::io::AsyncBufReadExt;
    let (mut tx, mut rx): (Box<dyn DatagramSend>, Box<dyn DatagramRecv>) = match endpoint {
        UdpEndpoint::Proxy(sock) => {
            let (s, r) = (*sock).split();
            (Box::new((s, target)), Box::new(r))
        }
        UdpEndpoint::Direct(sock, to) => {
            let sock = Arc::new(sock);
            (Box::new((sock.clone(), to)), Box::new(sock))
        }
    };
    let sender = tokio::spawn(async move {
        // Bytes, not text: a datagram need not be UTF-8.
        let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).split(b'\n');
        while let Some(line) = lines.next_segment().await? {
            tx.send(line.strip_suffix(b"\r").unwrap_or(&line)).await?;
        }
        // Handed back, not dropped: a tunnel's sending half closing would end the tunnel
        // before the last replies are in.
        anyhow::Ok(tx)
    });
    tokio::pin!(sender);
    let mut input_done = false;
    let mut _sending_half = None;
    let mut deadline = tokio::time::Instant::now() + limit;
    let mut buf = vec![0u8; 65_536];
    loop {
        tokio::select! {
            got = rx.recv(&mut buf) => {
                let (n, from) = got?;
                print.print(&buf[..n], from, true)?;
                deadline = tokio::time::Instant::now() + limit;
            }
            sent = &mut sender, if !input_done => {
                _sending_half = Some(sent??);
                input_done = true;
                deadline = tokio::time::Instant::now() + limit;
            }
            _ = tokio::time::sleep_until(deadline), if input_done => return Ok(()),
        }
    }
}

/// What a line-mode send returns (it runs in its own task, so it is `Send`).
type SendFuture<'a> = std::pin::Pin<Box<dyn std::future::Future<Output = Result<()>> + Send + 'a>>;
/// What a line-mode receive returns: the length and the source.
type RecvFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(usize, SocketAddr)>> + 'a>>;

/// The sending half of a datagram endpoint, for line mode.
trait DatagramSend: Send {
    fn send<'a>(&'a mut self, payload: &'a [u8]) -> SendFuture<'a>;
}

/// The receiving half.
trait DatagramRecv {
    fn recv<'a>(&'a mut self, buf: &'a mut [u8]) -> RecvFuture<'a>;
}

impl DatagramSend for (socksng_client::UdpSender, Address) {
    fn send<'a>(&'a mut self, payload: &'a [u8]) -> SendFuture<'a> {
        Box::pin(async move { Ok(self.0.send_to(payload, &self.1).await?) })
    }
}

impl DatagramSend for (Arc<tokio::net::UdpSocket>, SocketAddr) {
    fn send<'a>(&'a mut self, payload: &'a [u8]) -> SendFuture<'a> {
        Box::pin(async move {
            self.0.send_to(payload, self.1).await?;
            Ok(())
        })
    }
}

impl DatagramRecv for socksng_client::UdpReceiver {
    fn recv<'a>(&'a mut self, buf: &'a mut [u8]) -> RecvFuture<'a> {
        Box::pin(async move { Ok(self.recv_from(buf).await?) })
    }
}

impl DatagramRecv for Arc<tokio::net::UdpSocket> {
    fn recv<'a>(&'a mut self, buf: &'a mut [u8]) -> RecvFuture<'a> {
        Box::pin(async move { Ok(self.recv_from(buf).await.map_err(ClientError::Target)?) })
    }
}

fn command_name(code: u8) -> String {
    match code {
        0x01 => "CONNECT".into(),
        0x02 => "BIND".into(),
        0x03 => "UDP-ASSOCIATE".into(),
        0x11 => "CAPABILITIES".into(),
        0x12 => "LISTEN".into(),
        0x13 => "ACCEPT".into(),
        0x14 => "UDP-TUNNEL".into(),
        other => format!("0x{other:02x}"),
    }
}

fn ranges_json(caps: &Capabilities) -> serde_json::Value {
    let ranges: Vec<serde_json::Value> = caps
        .ranges
        .iter()
        .map(|r| {
            serde_json::json!({
                "prefixes": r.prefixes.iter().map(|(ip, len)| format!("{ip}/{len}")).collect::<Vec<_>>(),
                "domains": r.domains,
                "ports": port_ranges_text(&r.ports),
            })
        })
        .collect();
    serde_json::Value::Array(ranges)
}

/// The proxies the network announced (for --discover): from $SOCKSNG_LEASE_FILES or the DHCP
/// clients' usual places, option $SOCKSNG_DHCP_CODE (224 unless set) and the DHCPv6 vendor
/// option of enterprise $SOCKSNG_DHCPV6_ENTERPRISE (32473 unless set); with --discover-mdns
/// and --discover-pvd, DNS-SD and provisioning domains too.
/// Each as announced (with its `?pin=`, the form the shim reads) and as a proxy URL.
fn learned_proxies(cli: &Cli) -> Vec<(String, ProxyUrl)> {
    use socksng_client::discover;
    let defaults = discover::DhcpOptions::default();
    let env_number = |name: &str| std::env::var(name).ok().and_then(|v| v.parse().ok());
    let options = discover::DhcpOptions {
        code: env_number("SOCKSNG_DHCP_CODE")
            .and_then(|c: u32| u8::try_from(c).ok())
            .unwrap_or(defaults.code),
        enterprise: env_number("SOCKSNG_DHCPV6_ENTERPRISE").unwrap_or(defaults.enterprise),
    };
    let files: Vec<PathBuf> = match std::env::var_os("SOCKSNG_LEASE_FILES") {
        Some(list) => std::env::split_paths(&list).collect(),
        None => discover::default_lease_files(),
    };
    let mut announced: Vec<(String, discover::Announced)> = Vec::new();
    for f in files {
        for a in discover::from_lease_file(&f, options).unwrap_or_default() {
            announced.push((f.display().to_string(), a));
        }
    }
    if cli.discover_mdns {
        match discover::browse_mdns(Duration::from_secs(3)) {
            Ok(found) => announced.extend(found.into_iter().map(|a| ("mDNS".to_string(), a))),
            Err(e) if cli.verbose => eprintln!("socksng: {e}"),
            Err(_) => {}
        }
    }
    for pvd in &cli.discover_pvd {
        match discover::fetch_pvd(pvd, &pvd_tls(cli), Duration::from_secs(10)) {
            Ok(found) => announced.extend(found.into_iter().map(|a| (pvd.clone(), a))),
            // Asked for by name, so a failure is worth saying even without -v.
            Err(e) => eprintln!("socksng: {pvd}: {e}"),
        }
    }
    let mut out: Vec<(String, ProxyUrl)> = Vec::new();
    for (f, a) in announced {
        match learned_url(cli, &a.url) {
            Ok(u) if !out.iter().any(|(_, o)| *o == u) => out.push((a.url, u)),
            Ok(_) => {}
            Err(e) if cli.verbose => eprintln!("socksng: {f}: {}: {e}", a.url),
            Err(_) => {}
        }
    }
    out
}

/// An announced URL as a proxy URL (its `?pin=` kept), a `socks5s` one checked against
/// --proxy-cacert's CAs when given.
fn learned_url(cli: &Cli, announced: &str) -> std::result::Result<ProxyUrl, ClientError> {
    let url = socksng_client::discover::proxy_url(announced)?;
    match &cli.proxy_cacert {
        Some(ca) if url.tls.is_some() => url.with_tls_options(Some(ca.clone()), None, None),
        _ => Ok(url),
    }
}

/// `socksng discover`: the proxies the leases announce, each asked for its capabilities.
/// The ways `discover` looks besides the lease files, with how long each waits.
struct Ways {
    mdns: Option<Duration>,
    inform: Option<(String, Duration)>,
    pvds: Vec<String>,
}

/// How HTTPS servers of provisioning domains are checked: as SOCKS over TLS servers are.
fn pvd_tls(cli: &Cli) -> socksng_client::TlsSettings {
    socksng_client::TlsSettings {
        ca_file: cli.proxy_cacert.clone(),
        ..Default::default()
    }
}

async fn discover(
    cli: &Cli,
    lease_files: &[PathBuf],
    options: socksng_client::discover::DhcpOptions,
    json: bool,
    ways: Ways,
) -> Result<()> {
    use socksng_client::discover;
    let code = options.code;
    if !discover::is_site_specific(code) {
        return Err(anyhow!(LocalError::Usage(format!(
            "--dhcp-code {code}: site-specific codes are 224 to 254"
        ))));
    }
    let files = if lease_files.is_empty() {
        discover::default_lease_files()
    } else {
        lease_files.to_vec()
    };
    let mut found: Vec<discover::Announced> = Vec::new();
    for f in &files {
        match discover::from_lease_file(f, options) {
            Ok(list) => {
                for a in list {
                    if !found.iter().any(|x| x.url == a.url) {
                        found.push(a);
                    }
                }
            }
            Err(e) if !lease_files.is_empty() => return Err(e.into()),
            Err(_) => {} // another program's file in a shared directory
        }
    }
    let mut more = Vec::new();
    if let Some(wait) = ways.mdns {
        more.extend(
            tokio::task::spawn_blocking(move || discover::browse_mdns(wait))
                .await
                .map_err(|e| anyhow!(e))??,
        );
    }
    if let Some((interface, wait)) = ways.inform {
        // Both families at once; one that cannot ask (no IPv4 address, say) is not an error
        // while the other can.
        let v4 = {
            let interface = interface.clone();
            tokio::task::spawn_blocking(move || discover::inform(&interface, code, wait))
        };
        let enterprise = options.enterprise;
        let v6 =
            tokio::task::spawn_blocking(move || discover::inform6(&interface, enterprise, wait));
        let (v4, v6) = (v4.await?, v6.await?);
        match (v4, v6) {
            (Err(e4), Err(e6)) => return Err(anyhow!("{e4}; {e6}")),
            (a, b) => {
                for answer in [a, b] {
                    match answer {
                        Ok(found) => more.extend(found),
                        Err(e) if cli.verbose => eprintln!("socksng: {e}"),
                        Err(_) => {}
                    }
                }
            }
        }
    }
    for pvd in ways.pvds {
        let tls = pvd_tls(cli);
        more.extend(
            tokio::task::spawn_blocking(move || {
                discover::fetch_pvd(&pvd, &tls, Duration::from_secs(10))
            })
            .await
            .map_err(|e| anyhow!(e))??,
        );
    }
    for a in more {
        if !found.iter().any(|x| x.url == a.url) {
            found.push(a);
        }
    }
    if found.is_empty() && !json {
        say!(
            "no proxy announced (read {} lease file(s), option {code})",
            files.len()
        );
    }
    for a in found {
        let source = a.source.clone();
        let asked = match learned_url(cli, &a.url) {
            Ok(url) => in_time(Client::new(url).capabilities()).await,
            Err(e) => Err(e),
        };
        match (asked, json) {
            (Ok(caps), true) => say!(
                "{}",
                serde_json::json!({
                    "url": a.url, "source": source, "protocol": "socks-ng",
                    "ranges": ranges_json(&caps),
                })
            ),
            (Ok(caps), false) => say!(
                "{:<40} from {source}: SOCKS-NG, {} range(s)",
                a.url,
                caps.ranges.len()
            ),
            (Err(ClientError::NotSupported(_)), true) => say!(
                "{}",
                serde_json::json!({"url": a.url, "source": source, "protocol": "socks5", "ranges": null})
            ),
            (Err(ClientError::NotSupported(_)), false) => {
                say!(
                    "{:<40} from {source}: plain SOCKS5 (announces no ranges)",
                    a.url
                )
            }
            (Err(e), true) => say!(
                "{}",
                serde_json::json!({"url": a.url, "source": source, "error": e.to_string()})
            ),
            (Err(e), false) => say!("{:<40} from {source}: {e}", a.url),
        }
    }
    Ok(())
}

async fn info(cli: &Cli, server: Option<&str>, json: bool) -> Result<()> {
    let targets: Vec<(String, Client)> = match server {
        Some(s) => vec![server_client(cli, s)?],
        None => router(cli)?
            .servers()
            .into_iter()
            .map(|(spec, _)| (spec.name, Client::new(spec.url)))
            .collect(),
    };
    let mut failed: Option<ClientError> = None;
    for (name, client) in targets {
        let shown = client.proxy().to_string();
        match in_time(client.capabilities()).await {
            Ok(caps) => {
                if json {
                    let v = serde_json::json!({
                        "server": name,
                        "url": shown,
                        "protocol": "socks-ng",
                        "revision": caps.revision,
                        "commands": caps.commands.iter().map(|&c| command_name(c)).collect::<Vec<_>>(),
                        "max_udp_payload": caps.max_udp_payload,
                        "token_lifetime": caps.token_lifetime,
                        "ranges": ranges_json(&caps),
                    });
                    say!("{v}");
                } else {
                    say!("server           {name} ({shown})");
                    say!("protocol         SOCKS-NG revision {}", caps.revision);
                    let cmds: Vec<String> =
                        caps.commands.iter().map(|&c| command_name(c)).collect();
                    say!("commands         {}", cmds.join(" "));
                    if let Some(max) = caps.max_udp_payload {
                        say!("max UDP payload  {max}");
                    }
                    if let Some(t) = caps.token_lifetime {
                        say!("token lifetime   {t} s");
                    }
                    if caps.ranges.is_empty() {
                        say!("serves           (nothing announced)");
                    }
                    for (i, r) in caps.ranges.iter().enumerate() {
                        let mut parts: Vec<String> = r
                            .prefixes
                            .iter()
                            .map(|(ip, len)| format!("{ip}/{len}"))
                            .collect();
                        parts.extend(r.domains.iter().map(|d| format!(".{d}")));
                        let ports = if r.ports.is_empty() {
                            String::new()
                        } else {
                            format!(" ports {}", port_ranges_text(&r.ports).join(","))
                        };
                        let label = if i == 0 { "serves" } else { "" };
                        say!("{label:<16} {}{ports}", parts.join(" "));
                    }
                }
            }
            Err(ClientError::NotSupported(_)) => {
                let (protocol, words) = match client.proxy().version {
                    socksng_client::SocksVersion::Socks4 => ("socks4", "SOCKS4"),
                    socksng_client::SocksVersion::Socks5 => ("socks5", "SOCKS5"),
                };
                if json {
                    say!(
                        "{}",
                        serde_json::json!({"server": name, "url": shown, "protocol": protocol})
                    );
                } else {
                    say!("server           {name} ({shown})");
                    say!("protocol         {words} (no SOCKS-NG: no capabilities or ranges)");
                }
            }
            Err(e) => {
                if json {
                    say!(
                        "{}",
                        serde_json::json!({"server": name, "url": shown, "error": e.to_string()})
                    );
                } else {
                    say!("server           {name} ({shown})");
                    say!("error            {e}");
                }
                failed.get_or_insert(e);
            }
        }
        if !json {
            say!();
        }
    }
    // The first failure gives the exit status.
    match failed {
        Some(e) => Err(anyhow!(e).context("some servers could not be asked")),
        None => Ok(()),
    }
}

async fn routes(cli: &Cli, json: bool, lookup: &[String]) -> Result<()> {
    let router = router(cli)?;
    router.refresh().await;
    let table = router.table();
    let servers = router.servers();
    let unused = unused_servers(&router, true);
    if json {
        let routes: Vec<serde_json::Value> = table
            .routes()
            .iter()
            .map(|r| {
                serde_json::json!({
                    "destination": r.destination.to_string(),
                    "ports": port_ranges_text(&r.ports),
                    "via": table.via_name(r.via),
                    "origin": format!("{:?}", r.origin).to_lowercase(),
                })
            })
            .collect();
        let servers: Vec<serde_json::Value> = servers
            .iter()
            .map(|(spec, st)| {
                serde_json::json!({
                    "name": spec.name,
                    "address": spec.url.host_port(),
                    "protocol": st.path.map(path_name),
                    "down": st.down,
                    "used": !unused.contains(&spec.name),
                })
            })
            .collect();
        let mut lookups = Vec::new();
        for t in lookup {
            // One server being down does not stop the other lookups.
            lookups.push(match router.decide(&parse_target(t)?).await {
                Ok((via, _)) => serde_json::json!({"target": t, "via": table.via_name(via)}),
                Err(e) => serde_json::json!({"target": t, "error": e.to_string()}),
            });
        }
        say!(
            "{}",
            serde_json::json!({"servers": servers, "routes": routes, "lookups": lookups})
        );
        return Ok(());
    }
    for (spec, st) in &servers {
        let state = match (&st.down, st.path) {
            (Some(why), _) => format!("down: {why}"),
            (None, Some(p)) => format!("up, {}", path_name(p)),
            (None, None) => "not asked (ranges configured)".into(),
        };
        let unused_note = if unused.contains(&spec.name) {
            "; used by no route: nothing goes through it"
        } else {
            ""
        };
        say!(
            "server {:<16} {:<24} {state}{unused_note}",
            spec.name,
            spec.url.host_port()
        );
    }
    say!();
    {
        use std::io::Write as _;
        write!(std::io::stdout().lock(), "{table}")?;
    }
    for t in lookup {
        match router.decide(&parse_target(t)?).await {
            Ok((via, _)) => say!("{t} -> {}", table.via_name(via)),
            Err(e) => say!("{t} -> error: {e}"),
        }
    }
    Ok(())
}
