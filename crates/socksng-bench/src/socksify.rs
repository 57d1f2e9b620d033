//! The socksify comparison (`--socksify N`): one program (curl) fetching a small page by name
//! through socksngd N times in each of four ways, side by side: curl's own
//! `--socks5-hostname`; the shim by LD_PRELOAD; `socksng exec`; and proxychains4 (with
//! `proxy_dns`). Reported per run: wall time (median and 90th percentile) and the CPU time
//! (user + system) of the client processes, which holds on any machine.
//!
//! The shim sends loopback destinations direct, so the page is fetched by a name that only
//! socksngd resolves (to 127.0.0.1): socksngd runs in a mount namespace of its own (`unshare
//! -m`) whose /etc/hosts has the name. This needs root and util-linux's unshare.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The name only socksngd can resolve.
const NAME: &str = "page.socksify.bench";

/// One way of running the client, measured.
pub struct Variant {
    pub name: &'static str,
    pub wall_ms: Vec<f64>,
    pub cpu_ms: f64,
}

fn children_cpu() -> Duration {
    // SAFETY: all-zero is a valid rusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage writes into the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A minimal HTTP server: every request gets a small page.
fn page_server() -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = [0u8; 2048];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let body = "socksify bench page\n";
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            });
        }
    });
    Ok(addr)
}

struct Proxy {
    child: Child,
    port: u16,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // SAFETY: a signal to the process we started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// socksngd in a mount namespace whose /etc/hosts maps NAME to 127.0.0.1.
fn start_proxy(socksngd: &Path, dir: &Path) -> Result<Proxy> {
    let port = socksng_testkit::subjects::free_port()?;
    let cfg = dir.join("socksngd.toml");
    std::fs::write(
        &cfg,
        format!(
            "listen = [\"127.0.0.1:{port}\"]\nworkers = 1\nlog_level = \"warn\"\n\
             [[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n"
        ),
    )?;
    let hosts = dir.join("hosts");
    std::fs::write(&hosts, format!("127.0.0.1 localhost\n127.0.0.1 {NAME}\n"))?;
    let script = format!(
        "mount --bind '{}' /etc/hosts && exec '{}' --config '{}'",
        hosts.display(),
        socksngd.display(),
        cfg.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .context("starting socksngd under unshare (needs root and util-linux)")?;
    let proxy = Proxy { child, port };
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("socksngd did not start listening on 127.0.0.1:{port}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(proxy)
}

/// Runs `argv` `runs` times (each must succeed and print the page); wall times and the CPU
/// of all runs.
fn measure(
    name: &'static str,
    argv: &[String],
    env: &[(&str, String)],
    runs: usize,
) -> Result<Variant> {
    let mut wall = Vec::with_capacity(runs);
    let cpu0 = children_cpu();
    for i in 0..runs {
        let start = Instant::now();
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .envs(env.iter().map(|(k, v)| (k, v.as_str())))
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running {}", argv[0]))?;
        wall.push(start.elapsed().as_secs_f64() * 1000.0);
        if !out.status.success() || !out.stdout.starts_with(b"socksify bench page") {
            bail!(
                "{name}, run {i}: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let cpu = children_cpu() - cpu0;
    Ok(Variant {
        name,
        wall_ms: wall,
        cpu_ms: cpu.as_secs_f64() * 1000.0 / runs as f64,
    })
}

/// The comparison: `runs` fetches per variant.
pub fn run(socksngd: &Path, runs: usize) -> Result<Vec<Variant>> {
    let bin_dir = socksngd
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    let shim = bin_dir.join("libsocksng_socksify.so");
    let socksng = bin_dir.join("socksng");
    for (what, p) in [("the shim", &shim), ("socksng", &socksng)] {
        if !p.is_file() {
            bail!(
                "{what} not found at {} (cargo build --release -p socksng -p socksng-socksify)",
                p.display()
            );
        }
    }
    let proxychains =
        socksng_testkit::programs::find("proxychains4").map_err(anyhow::Error::msg)?;
    let curl = socksng_testkit::programs::find("curl").map_err(anyhow::Error::msg)?;
    let dir = std::env::temp_dir().join(format!("socksify-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let page = page_server()?;
    let proxy = start_proxy(socksngd, &dir)?;
    let proxy_url = format!("socks5h://127.0.0.1:{}", proxy.port);
    let url = format!("http://{NAME}:{}/", page.port());
    let pc_conf = dir.join("proxychains.conf");
    std::fs::write(
        &pc_conf,
        format!(
            "strict_chain\nproxy_dns\nremote_dns_subnet 224\ntcp_read_time_out 15000\n\
             tcp_connect_time_out 8000\n[ProxyList]\nsocks5 127.0.0.1 {}\n",
            proxy.port
        ),
    )?;
    let curl_s = curl.display().to_string();
    let fetch = |mut pre: Vec<String>| {
        pre.extend([
            curl_s.clone(),
            "-q".into(),
            "-sS".into(),
            "--max-time".into(),
            "20".into(),
        ]);
        pre
    };
    let mut own = fetch(Vec::new());
    own.extend([
        "--socks5-hostname".into(),
        format!("127.0.0.1:{}", proxy.port),
        url.clone(),
    ]);
    let mut preload = fetch(Vec::new());
    preload.push(url.clone());
    let mut exec = fetch(vec![
        socksng.display().to_string(),
        "-x".into(),
        proxy_url.clone(),
        "exec".into(),
        "--".into(),
    ]);
    exec.push(url.clone());
    let mut pc = fetch(vec![
        proxychains.display().to_string(),
        "-q".into(),
        "-f".into(),
        pc_conf.display().to_string(),
    ]);
    pc.push(url.clone());
    let shim_env = vec![
        ("LD_PRELOAD", shim.display().to_string()),
        ("SOCKSNG_PROXY", proxy_url.clone()),
    ];
    // Warm the page cache and the proxy once.
    measure("warm-up", &own, &[], 3)?;
    let out = vec![
        measure("curl --socks5-hostname", &own, &[], runs)?,
        measure("LD_PRELOAD shim", &preload, &shim_env, runs)?,
        measure("socksng exec", &exec, &[], runs)?,
        measure("proxychains4 (proxy_dns)", &pc, &[], runs)?,
    ];
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[((s.len() - 1) as f64 * p).round() as usize]
}

/// The table (markdown) and one JSON line per variant.
pub fn report(variants: &[Variant], runs: usize) -> String {
    let base = variants
        .first()
        .map_or(1.0, |v| percentile(&v.wall_ms, 0.5));
    let base_cpu = variants.first().map_or(1.0, |v| v.cpu_ms);
    let mut out = format!(
        "| curl, {runs} fetches by name through socksngd | wall median, ms | wall p90, ms | client CPU per fetch, ms | vs curl's own |\n|---|---|---|---|---|\n"
    );
    for v in variants {
        let med = percentile(&v.wall_ms, 0.5);
        out.push_str(&format!(
            "| {} | {:.2} | {:.2} | {:.2} | {:.2}x wall, {:.2}x CPU |\n",
            v.name,
            med,
            percentile(&v.wall_ms, 0.9),
            v.cpu_ms,
            med / base,
            v.cpu_ms / base_cpu
        ));
    }
    for v in variants {
        out.push_str(&format!(
            "{{\"case\":\"socksify\",\"variant\":\"{}\",\"runs\":{runs},\"wall_median_ms\":{:.3},\"wall_p90_ms\":{:.3},\"cpu_ms_per_run\":{:.3}}}\n",
            v.name,
            percentile(&v.wall_ms, 0.5),
            percentile(&v.wall_ms, 0.9),
            v.cpu_ms
        ));
    }
    out
}
