//! socksng-bench: command-line parsing and the run itself — pin the load generator, start the
//! built-in targets, then for every subject and case start a fresh server, repeat the load,
//! print one JSON line, and finally the markdown table. Interruption (Ctrl-C, SIGTERM) drops the
//! run, which kills every started process group.

use anyhow::{bail, Context, Result};
use cases::{Case, Measure, Params};
use clap::Parser;
use procs::Meter;
use report::{CaseResult, Status};
use socks::Credentials;
use socksng_bench::{
    cases, install, machine, procs, report, socks, socksify, stats, subjects, targets, tcp, udp,
    zerocopy,
};
use stats::{parse_size, Summary};
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;
use subjects::{Env, Instance, Kind, Subject};

/// Benchmark SOCKS5 servers on loopback: throughput, bytes per proxy CPU-second, handshakes,
/// memory per idle connection and UDP, each against a no-proxy ceiling ("direct").
///
/// Prints one JSON line per (subject, case) on stdout, then a markdown table. Progress goes to
/// stderr. Built-in subjects: direct, socksng, socksng-tls (SOCKS over TLS, sessions resumed),
/// dante, stunnel-dante (Dante behind stunnel: TLS as a user would assemble it), microsocks,
/// ssh-d.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Cli {
    /// Subjects to run, comma separated (built-ins and --subject names). Default: all.
    #[arg(long, value_delimiter = ',')]
    subjects: Vec<String>,
    /// Cases to run: names or prefixes, comma separated (tcp, tcp-up-1, handshake, idle, udp,
    /// ...). Default: all.
    #[arg(long, default_value = "all")]
    cases: String,
    /// Another server: NAME=COMMAND, the command holding a {port} placeholder.
    #[arg(long = "subject", value_name = "NAME=COMMAND")]
    extra: Vec<String>,
    /// The authenticated variant of a --subject: NAME=COMMAND with {port}, {user}, {pass}.
    #[arg(long = "subject-auth", value_name = "NAME=COMMAND")]
    extra_auth: Vec<String>,
    /// Repeats per case (median and min/max are reported).
    #[arg(long, default_value_t = 5)]
    repeat: usize,
    /// Smoke-test sizes and one repeat.
    #[arg(long)]
    quick: bool,
    /// Only the JSON lines, no table.
    #[arg(long)]
    json_only: bool,
    /// Install missing Debian packages even when not running as root (apt-get must work).
    #[arg(long)]
    install: bool,
    /// Never install packages.
    #[arg(long, conflicts_with = "install")]
    no_install: bool,
    /// Do not create a system user for Dante's username method (Dante auth becomes n/a).
    #[arg(long)]
    no_system_user: bool,
    /// Only the socksify comparison: curl fetching a page by name through socksngd N times
    /// each with its own --socks5-hostname, the LD_PRELOAD shim, `socksng exec` and
    /// proxychains4 (needs root, unshare and proxychains4; the shim and socksng are taken
    /// from socksngd's directory).
    #[arg(long, value_name = "N")]
    socksify: Option<usize>,
    /// The socksngd binary. Default: next to this binary, else target/release/socksngd.
    #[arg(long, value_name = "PATH")]
    socksngd: Option<PathBuf>,
    /// Bytes for the single-stream cases (K/M/G suffixes).
    #[arg(long, value_name = "SIZE")]
    bytes_single: Option<String>,
    /// Bytes per stream for the parallel cases.
    #[arg(long, value_name = "SIZE")]
    bytes_per_stream: Option<String>,
    /// Streams in the parallel cases.
    #[arg(long, default_value_t = 64)]
    streams: usize,
    /// Handshake cycles per repeat.
    #[arg(long)]
    hs_count: Option<usize>,
    /// Concurrent handshake workers.
    #[arg(long, default_value_t = 32)]
    hs_concurrency: usize,
    /// Time limit on one repeat's handshake cycles, seconds (slow servers stop short of
    /// --hs-count; rates are over the cycles completed).
    #[arg(long)]
    hs_seconds: Option<u64>,
    /// UDP associations in the idle UDP memory case (each holds a control connection and a
    /// relay socket in the proxy).
    #[arg(long, value_name = "N")]
    udp_idle: Option<usize>,
    /// Idle connections in the smaller memory case.
    #[arg(long)]
    idle_small: Option<usize>,
    /// Idle connections wanted in the larger memory case (capped by the descriptor limit).
    #[arg(long)]
    idle_max: Option<usize>,
    /// UDP round trips per repeat.
    #[arg(long)]
    udp_count: Option<usize>,
    /// Datagrams per UDP throughput repeat.
    #[arg(long)]
    udp_tput_count: Option<usize>,
    /// Payload of UDP throughput datagrams.
    #[arg(long, default_value_t = 1200)]
    udp_size: usize,
    /// UDP datagrams in flight in the throughput case.
    #[arg(long, default_value_t = 64)]
    udp_window: usize,
    /// CPU for the proxies.
    #[arg(long, default_value_t = 0)]
    proxy_cpu: usize,
    /// CPU(s) for the load generator and the built-in targets, comma separated; with more than
    /// one the generator runs one runtime thread per CPU.
    #[arg(long, value_delimiter = ',', default_value = "1")]
    gen_cpu: Vec<usize>,
    /// socksngd's log level (it logs one line per session at "info", its default).
    #[arg(long, default_value = "info", value_name = "LEVEL")]
    socksng_log_level: String,
    /// Limit on every connect, read and write, seconds.
    #[arg(long, default_value_t = 10)]
    io_timeout: u64,
    /// Limit on one repeat of a case, seconds.
    #[arg(long, default_value_t = 180)]
    case_timeout: u64,
    /// Nice value for the benchmark and the servers it starts (e.g. -10 on a machine shared
    /// with other work; negative values need root). Default: unchanged.
    #[arg(long, allow_hyphen_values = true, value_name = "N")]
    nice: Option<i32>,
    /// Move bulk data with plain read/write through 256 KiB buffers instead of sendfile and
    /// splice (the generator then copies every byte twice and may become the bottleneck).
    #[arg(long)]
    copy_io: bool,
    /// Connect from 127.0.0.1 only (for servers that refuse other loopback sources); at high
    /// connection rates the ephemeral ports of one 4-tuple prefix then run out.
    #[arg(long)]
    single_source: bool,
    /// Keep the run directory (configs, server logs) afterwards.
    #[arg(long)]
    keep_tmp: bool,
    /// Set the machine's TCP congestion control for the run (net.ipv4.tcp_congestion_control,
    /// e.g. cubic; needs root) and put the previous one back afterwards. It applies to every
    /// subject and to direct. Default: unchanged.
    #[arg(long, value_name = "ALGORITHM")]
    tcp_congestion: Option<String>,
}

const BUILTIN: [&str; 7] = [
    "direct",
    "socksng",
    "socksng-tls",
    "dante",
    "stunnel-dante",
    "microsocks",
    "ssh-d",
];

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match real_main(&cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The message chain, not a backtrace: these are operational errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn default_socksngd(cli: &Cli) -> PathBuf {
    cli.socksngd.clone().unwrap_or_else(|| {
        let beside = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(|d| d.join("socksngd")));
        match beside {
            Some(b) if b.is_file() => b,
            _ => PathBuf::from("target/release/socksngd"),
        }
    })
}

fn real_main(cli: &Cli) -> Result<()> {
    if let Some(runs) = cli.socksify {
        let variants = socksify::run(&default_socksngd(cli), runs.max(1))?;
        print!("{}", socksify::report(&variants, runs.max(1)));
        return Ok(());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    // Pin before the runtime exists, so every thread it makes inherits the mask.
    let gen_cpus: Vec<usize> = cli.gen_cpu.iter().copied().filter(|&c| c < cpus).collect();
    let pinned =
        if !gen_cpus.is_empty() && cli.proxy_cpu < cpus && !gen_cpus.contains(&cli.proxy_cpu) {
            match procs::pin_self(&gen_cpus) {
                Ok(()) => true,
                Err(e) => {
                    eprintln!("# warning: cannot pin to CPU(s) {gen_cpus:?}: {e}");
                    false
                }
            }
        } else {
            eprintln!("# warning: {cpus} CPU(s): proxy and load generator are not pinned apart");
            false
        };
    let nofile = machine::raise_nofile(65536);
    if let Some(n) = cli.nice {
        procs::set_nice(n).with_context(|| format!("setting nice {n}"))?;
    }
    zerocopy::set_copy_io(cli.copy_io);
    // Held to the end of this function: the previous algorithm comes back on every exit path.
    let _congestion = match &cli.tcp_congestion {
        Some(cc) => Some(
            machine::CongestionControl::set(cc)
                .with_context(|| format!("setting TCP congestion control {cc}"))?,
        ),
        None => None,
    };
    let rt = if pinned && gen_cpus.len() > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(gen_cpus.len())
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    };
    let results: Rc<RefCell<Vec<CaseResult>>> = Rc::default();
    let order: Rc<RefCell<Vec<String>>> = Rc::default();
    let setup = Setup {
        pinned,
        nofile,
        cpus,
    };
    let outcome = rt.block_on(async {
        tokio::select! {
            r = run(cli, &setup, results.clone(), order.clone()) => r,
            sig = signals() => Err(anyhow::anyhow!("interrupted by {sig}; servers stopped")),
        }
    });
    // The run future is gone by now: every server it started has been killed and reaped.
    if !cli.json_only && !results.borrow().is_empty() {
        let (streams, idle) = (cli.streams, idle_counts(cli, nofile));
        let subjects = order.borrow().clone();
        let table = report::table(&results.borrow(), &subjects, streams, idle);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "\n{table}");
        let _ = writeln!(out, "{}", machine_note(cli, &setup));
    }
    outcome
}

struct Setup {
    pinned: bool,
    nofile: u64,
    cpus: usize,
}

async fn signals() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
        signal(SignalKind::hangup()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => "SIGINT",
        _ = term.recv() => "SIGTERM",
        _ = hup.recv() => "SIGHUP",
    }
}

/// (smaller, larger) idle connection counts. The generator holds two descriptors per idle
/// connection (client side and echo side) and a proxy at least two, so the larger count is
/// capped at half the descriptor limit minus headroom.
fn idle_counts(cli: &Cli, nofile: u64) -> (usize, usize) {
    let small = cli.idle_small.unwrap_or(1000);
    let want = cli
        .idle_max
        .unwrap_or(if cli.quick { 2000 } else { 10_000 });
    let cap = (nofile.saturating_sub(256) / 2) as usize;
    (small.min(cap), want.min(cap))
}

fn params(cli: &Cli, nofile: u64) -> Result<Params> {
    let size = |v: &Option<String>, default: u64| -> Result<u64> {
        match v {
            Some(t) => parse_size(t).map_err(anyhow::Error::msg),
            None => Ok(default),
        }
    };
    let q = cli.quick;
    let (idle_small, idle_max) = idle_counts(cli, nofile);
    Ok(Params {
        bytes_single: size(&cli.bytes_single, if q { 64 << 20 } else { 1 << 30 })?,
        bytes_per_par_stream: size(&cli.bytes_per_stream, if q { 1 << 20 } else { 32 << 20 })?,
        streams: cli.streams.max(1),
        hs_count: cli.hs_count.unwrap_or(if q { 2000 } else { 20_000 }),
        hs_concurrency: cli.hs_concurrency.max(1),
        hs_time: Duration::from_secs(cli.hs_seconds.unwrap_or(if q { 10 } else { 30 }).max(1)),
        hs_payload: 32,
        idle_small,
        idle_max,
        idle_concurrency: 64,
        udp_idle: cli.udp_idle.unwrap_or(if q { 200 } else { 1000 }),
        spread_sources: !cli.single_source,
        udp_count: cli.udp_count.unwrap_or(if q { 2000 } else { 20_000 }),
        udp_rtt_size: 64,
        udp_tput_count: cli
            .udp_tput_count
            .unwrap_or(if q { 20_000 } else { 200_000 }),
        udp_tput_size: cli.udp_size.clamp(8, 65000),
        udp_window: cli.udp_window.max(1),
        io_timeout: Duration::from_secs(cli.io_timeout.max(1)),
        case_timeout: Duration::from_secs(cli.case_timeout.max(5)),
    })
}

fn machine_note(cli: &Cli, setup: &Setup) -> String {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_owned())
        })
        .unwrap_or_default();
    let args: Vec<String> = std::env::args()
        .map(|a| {
            if a.contains([' ', '"', '\'', '{', '$']) {
                format!("'{}'", a.replace('\'', "'\\''"))
            } else {
                a
            }
        })
        .collect();
    format!(
        "Machine: {} CPU(s) ({model}), Linux {}; proxy on CPU {}, load generator and targets on \
         CPU {}{}; generator I/O {}; TCP congestion control {}; nice {}; descriptor limit {}; \
         repeats {}. Cells: median [min–max] (ratio to direct).\nCommand: `{}`",
        setup.cpus,
        kernel.trim(),
        cli.proxy_cpu,
        cli.gen_cpu
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(","),
        if setup.pinned { "" } else { " (NOT pinned)" },
        if cli.copy_io {
            "read/write"
        } else {
            "sendfile/splice"
        },
        machine::tcp_congestion().unwrap_or_else(|| "unknown".into()),
        cli.nice.map_or("unchanged".into(), |n| n.to_string()),
        setup.nofile,
        if cli.quick { 1 } else { cli.repeat.max(1) },
        args.join(" ")
    )
}

/// Removes the run directory on drop unless asked to keep it.
struct RunDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("# run directory kept: {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

fn parse_named(list: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in list {
        let Some((name, cmd)) = item.split_once('=') else {
            bail!("{what} {item:?}: expected NAME=COMMAND");
        };
        let name = name.trim();
        if name.is_empty() || BUILTIN.contains(&name) {
            bail!("{what} {item:?}: the name must be new and non-empty");
        }
        out.insert(name.to_owned(), cmd.to_owned());
    }
    Ok(out)
}

async fn run(
    cli: &Cli,
    setup: &Setup,
    results: Rc<RefCell<Vec<CaseResult>>>,
    order: Rc<RefCell<Vec<String>>>,
) -> Result<()> {
    let p = params(cli, setup.nofile)?;
    let cases = Case::select(&cli.cases).map_err(anyhow::Error::msg)?;
    let extra = parse_named(&cli.extra, "--subject")?;
    let extra_auth = parse_named(&cli.extra_auth, "--subject-auth")?;
    for name in extra_auth.keys() {
        if !extra.contains_key(name) {
            bail!("--subject-auth {name} has no matching --subject");
        }
    }
    let names: Vec<String> = if cli.subjects.is_empty() {
        BUILTIN
            .iter()
            .map(|s| s.to_string())
            .chain(extra.keys().cloned())
            .collect()
    } else {
        cli.subjects.iter().map(|s| s.trim().to_owned()).collect()
    };
    let socksngd = default_socksngd(cli);
    let mut kinds = Vec::new();
    for n in &names {
        let kind = match Subject::builtin(n, &socksngd) {
            Some(k) => k,
            None => match extra.get(n) {
                Some(cmd) => Kind::Custom {
                    cmd: cmd.clone(),
                    auth_cmd: extra_auth.get(n).cloned(),
                },
                None => bail!(
                    "unknown subject {n:?} (built-ins: {}; or --subject NAME=CMD)",
                    BUILTIN.join(", ")
                ),
            },
        };
        kinds.push((n.clone(), kind));
    }
    *order.borrow_mut() = names.clone();

    let dir = std::env::temp_dir().join(format!("socksng-bench.{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let _rundir = RunDir {
        path: dir.clone(),
        keep: cli.keep_tmp,
    };
    let targets = targets::start()
        .await
        .context("starting the built-in targets")?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    let may_install = !cli.no_install && (root || cli.install);
    let env = Env {
        dir,
        proxy_cpu: setup.pinned.then_some(cli.proxy_cpu),
        nice: cli.nice,
        targets,
        creds: Credentials {
            user: subjects::BENCH_USER.into(),
            pass: format!(
                "bench-{:x}",
                std::process::id() as u64 * 2_654_435_761 % 1_000_000_007
            ),
        },
        io_timeout: p.io_timeout,
        allow_system_user: !cli.no_system_user,
        socksng_log_level: cli.socksng_log_level.clone(),
    };
    let repeats = if cli.quick { 1 } else { cli.repeat.max(1) };
    eprintln!(
        "# cases: {}; subjects: {}; repeats {repeats}; idle {}/{}; descriptor limit {}",
        cases.iter().map(|c| c.name()).collect::<Vec<_>>().join(","),
        names.join(","),
        p.idle_small,
        p.idle_max,
        setup.nofile
    );
    let mut subjects: Vec<Subject> = Vec::new();
    for (name, kind) in kinds {
        eprintln!("# preparing {name}");
        // A failed installation is only a warning: preparing says what is still missing.
        if let Err(e) = install::ensure_packages(kind.programs(), may_install) {
            eprintln!("# warning: installing the packages of {name}: {e}");
        }
        let s = Subject::prepare(&name, kind, &env);
        if let Err(e) = &s.usable {
            eprintln!("# {name} unusable: {e}");
        }
        subjects.push(s);
    }
    for subject in &mut subjects {
        for &case in &cases {
            eprintln!("# {} {} ...", subject.name, case.name());
            let res = run_case(subject, case, &env, &p, repeats).await;
            let line = {
                let all = results.borrow();
                let direct = all.iter().find(|r| r.subject == "direct" && r.case == case);
                res.to_json(direct)
            };
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "{line}");
            let _ = out.flush();
            results.borrow_mut().push(res);
        }
    }
    Ok(())
}

async fn run_case(
    s: &mut Subject,
    case: Case,
    env: &Env,
    p: &Params,
    repeats: usize,
) -> CaseResult {
    let mut res = CaseResult::empty(&s.name, &s.version, case, Status::Ok, repeats);
    let na = |mut r: CaseResult, why: String| {
        r.status = Status::NotApplicable(why);
        r
    };
    if let Err(e) = &s.usable {
        res.status = Status::Failed(e.clone());
        return res;
    }
    let is_direct = matches!(s.kind, Kind::Direct);
    if case.needs_auth() {
        res.note = s.auth_note.clone();
    }
    if case.needs_proxy() && is_direct {
        return na(res, "no proxy to measure".into());
    }
    if case.needs_auth() && !is_direct {
        if let Err(e) = &s.auth {
            return na(res, e.clone());
        }
    }
    let mut values: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
    let mut instance: Option<Instance> = None;
    for rep in 0..repeats {
        if instance.is_none() {
            match s.start(env, case.needs_auth() && !is_direct).await {
                Ok(i) => instance = Some(i),
                Err(e) => {
                    res.failed_repeats.push(format!("start: {e}"));
                    break;
                }
            }
        }
        let inst = instance.as_ref().expect("started above");
        let meter = inst.meter();
        let outcome = measure(case, inst, &meter, env, p).await;
        match outcome {
            Ok(m) => {
                for (k, v) in m.metrics {
                    values.entry(k).or_default().push(v);
                }
                for (k, v) in m.errors {
                    *res.errors.entry(k).or_default() += v;
                }
                res.extra = m.extra;
            }
            Err(Failure::Unsupported(why)) => {
                if let Some(i) = instance.take() {
                    i.stop().await;
                }
                let why = match &s.udp_note {
                    Some(note) => format!("{note}; {why}"),
                    None => why,
                };
                return na(res, why);
            }
            Err(Failure::Failed(why)) => {
                eprintln!("#   repeat {}: {why}", rep + 1);
                res.failed_repeats.push(why);
            }
        }
        if case.fresh_per_repeat() || rep + 1 == repeats {
            if let Some(i) = instance.take() {
                i.stop().await;
            }
        }
    }
    if let Some(i) = instance.take() {
        i.stop().await;
    }
    for (k, v) in values {
        if let Some(sum) = Summary::of(&v) {
            res.metrics.insert(k, sum);
        }
    }
    if let Some(v) = res
        .extra
        .get("stopped_by_time_limit")
        .and_then(|v| v.as_str())
    {
        let note = format!("time-limited (--hs-seconds): {v}");
        res.note = Some(match res.note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note,
        });
    }
    // Figures from clock ticks (10 ms) need enough of them to mean something.
    let ticks_only = res
        .extra
        .get("cpu_source")
        .and_then(|v| v.as_str())
        .is_some_and(|v| v.starts_with("/proc"));
    let mut coarse = Vec::new();
    if let Some(c) = res.metrics.get("proxy_cpu_s") {
        if ticks_only && c.median < 0.25 {
            coarse.push(format!("proxy process CPU ~{:.0} ticks", c.median * 100.0));
        }
    }
    if let Some(c) = res.metrics.get("proxy_core_s") {
        if c.median < 0.25 {
            coarse.push(format!("proxy core busy ~{:.0} ticks", c.median * 100.0));
        }
    }
    if !coarse.is_empty() {
        let note = format!(
            "{}: per-CPU-second figures are coarse (use larger --bytes-single/--bytes-per-stream)",
            coarse.join(", ")
        );
        res.note = Some(match res.note.take() {
            Some(n) => format!("{n}; {note}"),
            None => note,
        });
    }
    if res.metrics.is_empty() {
        let why = res
            .failed_repeats
            .first()
            .cloned()
            .unwrap_or_else(|| "nothing measured".into());
        res.status = Status::Failed(why);
    }
    res
}

enum Failure {
    Unsupported(String),
    Failed(String),
}

async fn measure(
    case: Case,
    inst: &Instance,
    meter: &Meter,
    env: &Env,
    p: &Params,
) -> Result<Measure, Failure> {
    let t = &env.targets;
    let r = &inst.route;
    let failed = Failure::Failed;
    let m = match case {
        Case::TcpUp1 => tcp::throughput(r, t, true, 1, p.bytes_single, p, meter).await,
        Case::TcpDown1 => tcp::throughput(r, t, false, 1, p.bytes_single, p, meter).await,
        Case::TcpUpPar => {
            tcp::throughput(r, t, true, p.streams, p.bytes_per_par_stream, p, meter).await
        }
        Case::TcpDownPar => {
            tcp::throughput(r, t, false, p.streams, p.bytes_per_par_stream, p, meter).await
        }
        Case::Handshake | Case::HandshakeAuth => tcp::handshakes(r, t, p, meter).await,
        Case::IdleSmall => tcp::idle(r, t, p.idle_small, p, meter).await,
        Case::IdleMax => tcp::idle(r, t, p.idle_max, p, meter).await,
        Case::UdpIdle => match udp::idle(r, t, p, meter).await {
            Ok(m) => Ok(m),
            Err(e) if e.unsupported => return Err(Failure::Unsupported(e.reason)),
            Err(e) => Err(e.reason),
        },
        Case::UdpStreamRtt | Case::UdpStreamTput if matches!(r, socks::Route::Proxy { .. }) => {
            let tunnel = match udp::tunnel_setup(r, t, p.io_timeout).await {
                Ok(tunnel) => tunnel,
                Err(e) if e.unsupported => return Err(Failure::Unsupported(e.reason)),
                Err(e) => return Err(failed(e.reason)),
            };
            if case == Case::UdpStreamRtt {
                udp::tunnel_rtt(tunnel, t, p, meter).await
            } else {
                udp::tunnel_tput(tunnel, t, p, meter).await
            }
        }
        // Direct has no stream to carry UDP: its plain UDP figures are the ceiling.
        Case::UdpRtt | Case::UdpTput | Case::UdpStreamRtt | Case::UdpStreamTput => {
            let path = match udp::setup(r, t, p.io_timeout).await {
                Ok(path) => path,
                Err(e) if e.unsupported => return Err(Failure::Unsupported(e.reason)),
                Err(e) => return Err(failed(e.reason)),
            };
            if matches!(case, Case::UdpRtt | Case::UdpStreamRtt) {
                udp::rtt(&path, p, meter).await
            } else {
                udp::tput(&path, p, meter).await
            }
        }
    };
    m.map_err(failed)
}
