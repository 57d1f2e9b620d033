//! socksng: the command-line client. Argument parsing, choosing the servers (a `--proxy`, the
//! client config file, or ALL_PROXY) and printing; the work is done by `socksng_client`.

use anyhow::{anyhow, bail, Context, Result};
use clap::{Parser, Subcommand};
use socksng_client::forward::{forward_local, forward_remote, ForwardEvent};
use socksng_client::route::{port_ranges_text, Via};
use socksng_client::{
    Address, Capabilities, Client, ClientConfig, ClientError, ProtocolPath, ProxyUrl, Router,
};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
/// Proxy URLs: socks5h://[user[:password]@]host[:port] (names resolved by the proxy) or
/// socks5:// (names resolved here); the port defaults to 1080. Targets are HOST:PORT, with
/// IPv6 literals in brackets: [2001:db8::1]:22.
///
/// Examples:
///   ssh -o ProxyCommand='socksng -x socks5h://gw:1080 connect %h:%p' host.internal
///   socksng -x socks5h://gw:1080 forward-local 127.0.0.1:5432 db.internal:5432
///   socksng -x socks5h://gw:1080 forward-remote --port 8080 127.0.0.1:80
///   printf 'ping' | socksng -x socks5h://gw:1080 udp 192.0.2.53:7
///   socksng info socks5h://gw:1080 --json
///   socksng routes --lookup db.internal:5432
#[derive(Parser, Debug)]
#[command(version, about, long_about, verbatim_doc_comment)]
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
}

fn main() {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("socksng: {e:#}");
            1
        }
    };
    // Standard input may still be held by a blocking read; do not wait for it.
    runtime.shutdown_background();
    std::process::exit(code);
}

/// HOST:PORT, [V6]:PORT.
fn parse_target(text: &str) -> Result<Address> {
    let bad = || anyhow!("{text:?}: expected HOST:PORT");
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (h, p) = rest.split_once("]:").ok_or_else(bad)?;
        (h, p)
    } else {
        text.rsplit_once(':').ok_or_else(bad)?
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    Ok(match host.parse() {
        Ok(ip) => Address::ip(SocketAddr::new(ip, port)),
        Err(_) => Address::domain(host, port).map_err(|e| anyhow!("{text:?}: {e}"))?,
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
    with_brackets
        .to_socket_addrs()
        .with_context(|| format!("{text:?}: expected HOST:PORT or PORT"))?
        .next()
        .ok_or_else(|| anyhow!("{text:?} has no address"))
}

fn router(cli: &Cli) -> Result<Router> {
    if let Some(url) = &cli.proxy {
        return Ok(Router::single(ProxyUrl::parse(url)?));
    }
    if let Some(path) = cli.config.clone().or_else(ClientConfig::default_path) {
        return ClientConfig::load(&path)
            .and_then(|c| c.router())
            .with_context(|| format!("client config {}", path.display()));
    }
    if let Some(cfg) = ClientConfig::from_env()? {
        return Ok(cfg.router()?);
    }
    bail!(
        "no proxy configured: give --proxy URL, a client config file (--config, \
         ~/.config/socksng/client.toml) or ALL_PROXY"
    )
}

/// A server given as a URL or a configured name.
fn server_client(cli: &Cli, which: &str) -> Result<(String, Client)> {
    if which.contains("://") || which.parse::<SocketAddr>().is_ok() {
        let url = ProxyUrl::parse(which)?;
        return Ok((which.to_string(), Client::new(url)));
    }
    let router = router(cli)?;
    let (spec, _) = router
        .servers()
        .into_iter()
        .find(|(s, _)| s.name == which)
        .ok_or_else(|| anyhow!("no configured server is called {which:?}"))?;
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
            println!("forwarding {} -> {target}", listener.local_addr()?);
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
                    let (spec, _) = router
                        .servers()
                        .into_iter()
                        .next()
                        .ok_or_else(|| anyhow!("no server configured"))?;
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
            println!("listening on {} -> {local}", listener.local_addr());
            if listener.path() == ProtocolPath::Socks5 {
                eprintln!("socksng: {name} is a plain SOCKS5 server: BIND accepts one connection");
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
        } => {
            let target = parse_target(target)?;
            let payload = match data {
                Some(d) => d.clone().into_bytes(),
                None => {
                    let mut v = Vec::new();
                    tokio::io::stdin().read_to_end(&mut v).await?;
                    v
                }
            };
            let limit = Duration::try_from_secs_f64(*timeout).context("--timeout")?;
            udp(
                &cli,
                server.as_deref(),
                target,
                payload,
                *count,
                limit,
                *hex,
            )
            .await
        }
        Cmd::Info { server, json } => info(&cli, server.as_deref(), *json).await,
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
    let (mut from_target, mut to_target) = routed.stream.into_split();
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

async fn udp(
    cli: &Cli,
    server: Option<&str>,
    target: Address,
    payload: Vec<u8>,
    count: usize,
    limit: Duration,
    hex: bool,
) -> Result<()> {
    let client = match server {
        Some(s) => Some(server_client(cli, s)?.1),
        None => {
            let router = router(cli)?;
            let (via, _) = router.decide(&target).await?;
            match via {
                Via::Direct => None,
                Via::Server(_) => router.client(via).cloned(),
            }
        }
    };
    let mut buf = vec![0u8; 65_536];
    let mut out = std::io::stdout().lock();
    let mut print = |data: &[u8], from: SocketAddr| -> Result<()> {
        if hex {
            let h: String = data.iter().map(|b| format!("{b:02x}")).collect();
            writeln!(out, "{from} {h}")?;
        } else {
            out.write_all(data)?;
        }
        out.flush()?;
        Ok(())
    };
    match client {
        Some(client) => {
            let mut sock = in_time(client.udp()).await?;
            if cli.verbose {
                eprintln!("socksng: UDP via {}", path_name(sock.path()));
            }
            sock.send_to(&payload, &target).await?;
            for _ in 0..count {
                let got = tokio::time::timeout(limit, sock.recv_from(&mut buf))
                    .await
                    .map_err(|_| anyhow!("no reply within {limit:?}"))??;
                print(&buf[..got.0], got.1)?;
            }
        }
        None => {
            let to = parse_local(&target.to_string())?;
            let bind: SocketAddr = if to.is_ipv6() { "[::]:0" } else { "0.0.0.0:0" }.parse()?;
            let sock = tokio::net::UdpSocket::bind(bind).await?;
            if cli.verbose {
                eprintln!("socksng: UDP direct");
            }
            sock.send_to(&payload, to).await?;
            for _ in 0..count {
                let got = tokio::time::timeout(limit, sock.recv_from(&mut buf))
                    .await
                    .map_err(|_| anyhow!("no reply within {limit:?}"))??;
                print(&buf[..got.0], got.1)?;
            }
        }
    }
    Ok(())
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

async fn info(cli: &Cli, server: Option<&str>, json: bool) -> Result<()> {
    let targets: Vec<(String, Client)> = match server {
        Some(s) => vec![server_client(cli, s)?],
        None => router(cli)?
            .servers()
            .into_iter()
            .map(|(spec, _)| (spec.name, Client::new(spec.url)))
            .collect(),
    };
    let mut failed = false;
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
                    println!("{v}");
                } else {
                    println!("server           {name} ({shown})");
                    println!("protocol         SOCKS-NG revision {}", caps.revision);
                    let cmds: Vec<String> =
                        caps.commands.iter().map(|&c| command_name(c)).collect();
                    println!("commands         {}", cmds.join(" "));
                    if let Some(max) = caps.max_udp_payload {
                        println!("max UDP payload  {max}");
                    }
                    if let Some(t) = caps.token_lifetime {
                        println!("token lifetime   {t} s");
                    }
                    if caps.ranges.is_empty() {
                        println!("serves           (nothing announced)");
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
                        println!("{label:<16} {}{ports}", parts.join(" "));
                    }
                }
            }
            Err(ClientError::NotSupported(_)) => {
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"server": name, "url": shown, "protocol": "socks5"})
                    );
                } else {
                    println!("server           {name} ({shown})");
                    println!("protocol         SOCKS5 (no SOCKS-NG: no capabilities or ranges)");
                }
            }
            Err(e) => {
                failed = true;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({"server": name, "url": shown, "error": e.to_string()})
                    );
                } else {
                    println!("server           {name} ({shown})");
                    println!("error            {e}");
                }
            }
        }
        if !json {
            println!();
        }
    }
    if failed {
        bail!("some servers could not be asked");
    }
    Ok(())
}

async fn routes(cli: &Cli, json: bool, lookup: &[String]) -> Result<()> {
    let router = router(cli)?;
    router.refresh().await;
    let table = router.table();
    let servers = router.servers();
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
                    "protocol": st.path.map(path_name),
                    "down": st.down,
                })
            })
            .collect();
        let mut lookups = Vec::new();
        for t in lookup {
            let (via, _) = router.decide(&parse_target(t)?).await?;
            lookups.push(serde_json::json!({"target": t, "via": table.via_name(via)}));
        }
        println!(
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
        println!("server {:<16} {state}", spec.name);
    }
    println!();
    print!("{table}");
    for t in lookup {
        let (via, _) = router.decide(&parse_target(t)?).await?;
        println!("{t} -> {}", table.via_name(via));
    }
    Ok(())
}
