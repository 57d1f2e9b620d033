//! socksngd: command-line parsing, configuration loading, logging and signal wiring around
//! `socksng_server`. Everything the server does lives in the library.

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use socksng_server::config::EXAMPLE_CONFIG;
use socksng_server::{CancellationToken, Config, Server};
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

mod log_output;

/// socksngd: a SOCKS5 (RFC 1928/1929) and SOCKS4/4a proxy server.
///
/// Without a configuration file it listens on 127.0.0.1:1080 and [::1]:1080, asks for no
/// authentication and serves loopback clients only.
///
/// Signals: SIGTERM or SIGINT stops accepting and lets sessions drain for
/// `timeouts.shutdown_grace`, then resets the rest; a second one resets them at once. SIGHUP
/// reopens the log and audit files (for logrotate) and reloads the configuration: users and
/// passwords, rules, routes, classes, limits and the TLS certificate, for new sessions (running
/// ones keep theirs unless `reload.recheck_sessions`); a file with errors is refused and the
/// old configuration stays. SIGUSR1 reopens the log and audit files only.
///
/// Exit status: 0 after a clean stop, 1 on an error (configuration, listening), 2 on a usage
/// error, 3 when the server stopped but had to cut sessions.
#[derive(Parser)]
#[command(version, about, long_about)]
struct Cli {
    /// Configuration file (TOML). `socksngd --print-config` shows an annotated example.
    #[arg(short, long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print an annotated example configuration and exit.
    #[arg(long)]
    print_config: bool,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server (the default).
    Run,
    /// Check the configuration (and users file) and exit: 0 when valid.
    Check,
    /// Print the ranges this server announces in SOCKS-NG CAPABILITIES, as
    /// draft-ietf-intarea-proxy-config JSON (`proxies` and `proxy-match`).
    Served {
        /// Announce what this user may reach (the ranges can differ per user).
        #[arg(long)]
        user: Option<String>,
        /// The proxy address to publish; default: the first listen address.
        #[arg(long, value_name = "HOST:PORT")]
        proxy: Option<String>,
    },
    /// Print how to announce this server to the network (draft section 10): with --dhcp the
    /// DHCPv4 and DHCPv6 option carrying its proxy URLs, ready to paste into dnsmasq, ISC Kea
    /// and ISC dhcpd; with --pac a proxy auto-config file; with --pvd provisioning-domain
    /// JSON; without any, the URLs, one per line.
    Announce {
        /// The DHCP option for dnsmasq, Kea and dhcpd.
        #[arg(long, conflicts_with_all = ["pac", "pvd"])]
        dhcp: bool,
        /// A PAC file (proxy auto-config): the served ranges to the proxy, the rest DIRECT.
        #[arg(long, conflicts_with = "pvd")]
        pac: bool,
        /// Provisioning-domain JSON (RFC 8801) with the proxy-config draft's keys.
        #[arg(long)]
        pvd: bool,
        /// The URLs to announce instead of `discovery.urls` (or the listen addresses).
        #[arg(long = "url", value_name = "URL")]
        urls: Vec<String>,
    },
    /// List the running sessions of the server the configuration names, over its `[admin]`
    /// control socket: id, user, client, command, target, bytes and age.
    Sessions {
        /// Print the server's JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// End a running session (its client gets a reset), by the id `sessions` shows.
    Kill {
        /// The session id.
        id: u64,
    },
    /// Add a user or change a password in a users file. The password is read from the
    /// terminal without echo, or as the first line of standard input.
    Passwd {
        /// The users file; created (mode 0600) when missing.
        #[arg(long, value_name = "FILE")]
        users_file: Option<PathBuf>,
        /// The user name.
        name: String,
    },
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Ok(Config::load(p)?),
        None => Ok(Config::default()),
    }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if cli.print_config {
        print!("{EXAMPLE_CONFIG}");
        return Ok(());
    }
    match cli.command.unwrap_or(Cmd::Run) {
        Cmd::Run => {
            let cut = run(load_config(cli.config.as_deref())?, cli.config.clone())?;
            if cut > 0 {
                std::process::exit(EXIT_SESSIONS_CUT);
            }
            Ok(())
        }
        Cmd::Check => {
            let cfg = load_config(cli.config.as_deref())?;
            log_filter(&cfg.log_level)?;
            if let Some(path) = cfg.log_file() {
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&path)
                    .with_context(|| format!("log file {}", path.display()))?;
            }
            if let Some(users) = cfg.users_file().filter(|_| cfg.accepts_password()) {
                let db = socksng_server::users::UserDb::load(&users)?;
                println!("users file {}: {} user(s)", users.display(), db.len());
            }
            socksng_server::check_tls(&cfg)?;
            if let Some(tls) = &cfg.tls {
                println!(
                    "TLS certificate {} and key {}: OK",
                    cfg.path(&tls.cert).display(),
                    cfg.path(&tls.key).display()
                );
            }
            let listen: Vec<_> = cfg.all_listen().collect();
            println!("configuration OK: listening on {}", list(&listen));
            Ok(())
        }
        Cmd::Sessions { json } => {
            let answer = admin_request(cli.config.as_deref(), "sessions")?;
            if json {
                print!("{answer}");
            } else {
                print_sessions(&answer)?;
            }
            Ok(())
        }
        Cmd::Kill { id } => {
            let answer = admin_request(cli.config.as_deref(), &format!("kill {id}"))?;
            print!("{answer}");
            if answer.starts_with("error") || answer.starts_with("refused") {
                bail!("{}", answer.trim());
            }
            Ok(())
        }
        Cmd::Announce {
            dhcp,
            pac,
            pvd,
            urls,
        } => {
            let cfg = load_config(cli.config.as_deref())?;
            let urls = if urls.is_empty() {
                socksng_server::discovery::urls(&cfg)
            } else {
                socksng_server::discovery::check_urls(&urls)
                    .map_err(|e| anyhow::anyhow!("--url: {e}"))?;
                urls
            };
            // PAC files and PvD documents can only name a plain SOCKS5 proxy.
            let proxy = || {
                socksng_server::discovery::plain_proxy(&urls).ok_or_else(|| {
                    anyhow::anyhow!(
                        "no plain SOCKS5 URL to announce (socks5h:// with a specified address)"
                    )
                })
            };
            if dhcp {
                let text = socksng_server::discovery::dhcp_snippets(&cfg, &urls)
                    .map_err(anyhow::Error::msg)?;
                print!("{text}");
            } else if pac {
                print!("{}", socksng_server::discovery::pac(&cfg, &proxy()?));
            } else if pvd {
                print!("{}", socksng_server::discovery::pvd_json(&cfg, &proxy()?));
            } else {
                for u in &urls {
                    println!("{u}");
                }
            }
            Ok(())
        }
        Cmd::Served { user, proxy } => {
            let cfg = load_config(cli.config.as_deref())?;
            let proxy = proxy.unwrap_or_else(|| {
                cfg.all_listen()
                    .next()
                    .map(|a| a.to_string())
                    .unwrap_or_default()
            });
            print!(
                "{}",
                socksng_server::ng::served_ranges_json(&cfg, user.as_deref(), &proxy)
            );
            Ok(())
        }
        Cmd::Passwd { users_file, name } => {
            let path = match users_file {
                Some(p) => p,
                None => load_config(cli.config.as_deref())?
                    .users_file()
                    .context("no --users-file given and the configuration names none")?,
            };
            let password = read_password()?;
            socksng_server::users::set_password(&path, &name, password.as_bytes())?;
            println!("password for {name} stored in {}", path.display());
            Ok(())
        }
    }
}

/// Sends `request` to the control socket the configuration names.
fn admin_request(config: Option<&Path>, request: &str) -> Result<String> {
    let cfg = load_config(config)?;
    let socket = cfg
        .admin
        .socket
        .as_ref()
        .map(|p| cfg.path(p))
        .context("the configuration names no `[admin] socket`")?;
    let answer = socksng_server::admin::request(&socket, request)
        .with_context(|| format!("admin socket {}", socket.display()))?;
    if answer.starts_with("refused") {
        bail!("{}", answer.trim());
    }
    Ok(answer)
}

/// The server's JSON lines as a table.
fn print_sessions(answer: &str) -> Result<()> {
    println!(
        "{:>6}  {:<12} {:<22} {:<12} {:<28} {:>12} {:>12} {:>6}",
        "ID", "USER", "CLIENT", "COMMAND", "TARGET", "UP", "DOWN", "AGE"
    );
    for line in answer.lines().filter(|l| !l.is_empty()) {
        let s: serde_json::Value =
            serde_json::from_str(line).with_context(|| format!("unexpected answer: {line}"))?;
        let text = |k: &str| s[k].as_str().unwrap_or("-").to_owned();
        let num = |k: &str| s[k].as_u64().unwrap_or(0);
        println!(
            "{:>6}  {:<12} {:<22} {:<12} {:<28} {:>12} {:>12} {:>5}s",
            num("id"),
            text("user"),
            text("client"),
            text("command"),
            text("target"),
            num("bytes_up"),
            num("bytes_down"),
            num("age_s"),
        );
    }
    Ok(())
}

fn list(addrs: &[std::net::SocketAddr]) -> String {
    addrs
        .iter()
        .map(|a| a.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Exit status when the server stopped but cut sessions at the end of the grace period.
const EXIT_SESSIONS_CUT: i32 = 3;

/// Runs the server; returns how many sessions had to be cut when it stopped.
fn run(cfg: Config, config_path: Option<PathBuf>) -> Result<usize> {
    let filter = log_filter(&cfg.log_level)?;
    log_output::start(cfg.log_file())?;
    init_logging(
        filter,
        cfg.log_file.is_none() && std::io::stderr().is_terminal(),
    );
    tune_allocator();
    raise_fd_limit();
    let workers = match cfg.workers {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let mut builder = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(workers);
        b
    };
    let runtime = builder.enable_all().build()?;
    let served = runtime.block_on(async move {
        // Handlers go in before the first "accepting" line, so a supervisor that signals as
        // soon as it sees the server listening is never met by the default (killing) action.
        let mut signals = Signals::install(config_path)?;
        let server = Server::bind(cfg)?;
        signals.server = Some(server.handle());
        let shutdown = CancellationToken::new();
        let cut_now = CancellationToken::new();
        let (trigger, cut_trigger) = (shutdown.clone(), cut_now.clone());
        tokio::spawn(async move {
            let which = signals.next_stop().await;
            trigger.cancel();
            tracing::info!("{which} received: stopping (send it again to stop at once)");
            let again = signals.next_stop().await;
            tracing::warn!("{again} received again: resetting the remaining sessions");
            cut_trigger.cancel();
        });
        let summary = server.run_until(shutdown, cut_now).await;
        Ok::<_, anyhow::Error>(summary.sessions_cut)
    });
    log_output::flush();
    served
}

/// glibc raises its mmap threshold to the size of the largest block freed, so after one
/// argon2 check (~19 MiB) every later one comes from heaps it never gives back to the system:
/// hundreds of megabytes after a burst of logins. A fixed threshold keeps large blocks mapped
/// and returned when freed. (musl, used by static router builds, always does this.)
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters (glibc takes its own lock).
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    usr1: tokio::signal::unix::Signal,
    /// The configuration file SIGHUP reads again.
    config_path: Option<PathBuf>,
    /// The running server SIGHUP and SIGUSR1 act on.
    server: Option<socksng_server::ServerHandle>,
}

impl Signals {
    fn install(config_path: Option<PathBuf>) -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
            usr1: signal(SignalKind::user_defined1())?,
            config_path,
            server: None,
        })
    }

    /// Waits for a signal to stop. Meanwhile SIGHUP reopens the logs and reloads the
    /// configuration, and SIGUSR1 reopens the logs (for log rotation).
    async fn next_stop(&mut self) -> &'static str {
        loop {
            tokio::select! {
                _ = self.term.recv() => return "SIGTERM",
                _ = self.int.recv() => return "SIGINT",
                _ = self.usr1.recv() => {
                    self.reopen_logs();
                    tracing::info!("SIGUSR1 received: log and audit files reopened");
                }
                _ = self.hup.recv() => {
                    self.reopen_logs();
                    tracing::info!("SIGHUP received: log and audit files reopened; reloading the configuration");
                    self.reload();
                }
            }
        }
    }

    fn reopen_logs(&self) {
        log_output::reopen();
        if let Some(server) = &self.server {
            server.reopen_audit();
        }
    }

    /// Reads the configuration file again and puts it in force; a file with errors is
    /// refused with the reason, and the configuration in force stays.
    fn reload(&self) {
        let Some(server) = &self.server else {
            return;
        };
        let Some(path) = &self.config_path else {
            // The built-in configuration cannot change; the TLS files can (none without a file).
            return;
        };
        let cfg = match Config::load(path) {
            Ok(cfg) => cfg,
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the previous configuration stays in force");
                match server.reload_tls() {
                    Ok(true) => tracing::info!("TLS certificate and key reloaded"),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "TLS reload failed; the previous certificate stays in force")
                    }
                }
                return;
            }
        };
        match server.reload(cfg) {
            Ok(report) => {
                if !report.needs_restart.is_empty() {
                    tracing::warn!(
                        settings = report.needs_restart.join(", "),
                        "these changed settings keep their old values until a restart"
                    );
                }
                tracing::info!(
                    sessions_ended = report.sessions_ended,
                    "configuration reloaded: new sessions follow it"
                );
            }
            Err(e) => {
                tracing::error!(error = %e, "configuration reload refused; the previous configuration stays in force")
            }
        }
    }
}

/// The log filter of `log_level`, as this build understands it.
#[cfg(feature = "env-filter")]
fn log_filter(level: &str) -> Result<tracing_subscriber::EnvFilter> {
    use tracing_subscriber::EnvFilter;
    socksng_server::config::check_log_filter(level)
        .map_err(|e| anyhow::anyhow!("`log_level`: {e}"))?;
    Ok(match std::env::var("RUST_LOG") {
        Ok(v) => EnvFilter::try_new(&v).with_context(|| format!("RUST_LOG={v:?}"))?,
        Err(_) => EnvFilter::try_new(level).with_context(|| format!("`log_level` {level:?}"))?,
    })
}

/// The log filter of `log_level`, as this build understands it (one level: the router build
/// has no per-module filters).
#[cfg(not(feature = "env-filter"))]
fn log_filter(level: &str) -> Result<tracing_subscriber::filter::LevelFilter> {
    use tracing_subscriber::filter::LevelFilter;
    let from_env = std::env::var("RUST_LOG").ok();
    let (source, text) = match &from_env {
        Some(v) => ("RUST_LOG", v.as_str()),
        None => ("`log_level`", level),
    };
    text.trim().parse::<LevelFilter>().map_err(|_| {
        anyhow::anyhow!(
            "{source} {text:?}: this build takes one level (error, warn, info, debug, trace, off)"
        )
    })
}

#[cfg(feature = "env-filter")]
fn init_logging(filter: tracing_subscriber::EnvFilter, colours: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colours)
        // A vanished log reader must not turn every log call into a panic.
        .log_internal_errors(false)
        .with_writer(log_output::Output)
        .init();
}

#[cfg(not(feature = "env-filter"))]
fn init_logging(filter: tracing_subscriber::filter::LevelFilter, colours: bool) {
    tracing_subscriber::fmt()
        .with_max_level(filter)
        .with_ansi(colours)
        .log_internal_errors(false)
        .with_writer(log_output::Output)
        .init();
}

/// A proxy holds two descriptors per session; the usual soft limit of 1024 is far too low.
fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                tracing::warn!("could not raise the open file limit");
            }
        }
    }
}

fn read_password() -> Result<String> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        let mut line = String::new();
        stdin.lock().read_line(&mut line)?;
        let pw = line.trim_end_matches(['\n', '\r']).to_owned();
        if pw.is_empty() {
            bail!("empty password on standard input");
        }
        return Ok(pw);
    }
    let first = prompt_hidden("Password: ")?;
    let second = prompt_hidden("Again: ")?;
    if first != second {
        bail!("the passwords differ");
    }
    if first.is_empty() {
        bail!("empty password");
    }
    Ok(first)
}

fn prompt_hidden(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    let fd = libc::STDIN_FILENO;
    // SAFETY: termios is plain data; tcgetattr fills it, tcsetattr reads it.
    let mut term: libc::termios = unsafe { std::mem::zeroed() };
    let have_term = unsafe { libc::tcgetattr(fd, &mut term) } == 0;
    if have_term {
        let mut quiet = term;
        quiet.c_lflag &= !libc::ECHO;
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    }
    let mut line = String::new();
    let read = std::io::stdin().lock().read_line(&mut line);
    if have_term {
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &term) };
    }
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}
