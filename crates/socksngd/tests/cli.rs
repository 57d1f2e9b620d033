//! The socksngd binary as users run it: the config check, password management, SIGTERM, and
//! running out of file descriptors.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_socksngd");

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("socksngd-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Starts socksngd and waits for its "accepting" log line to learn the port.
fn spawn(cmd: &mut Command) -> (Child, SocketAddr, BufReader<std::process::ChildStderr>) {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    for _ in 0..50 {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            let status = child.wait();
            panic!("socksngd exited before listening: {status:?}");
        }
        if let Some(rest) = line.split("listen=").nth(1) {
            let addr = rest.trim().parse().unwrap();
            return (child, addr, err);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("no listen line");
}

fn socks_connect_works(proxy: SocketAddr, target: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect(proxy) else {
        return false;
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let SocketAddr::V4(t) = target else { panic!() };
    let mut msg = vec![5, 1, 0, 5, 1, 0, 1];
    msg.extend_from_slice(&t.ip().octets());
    msg.extend_from_slice(&t.port().to_be_bytes());
    if s.write_all(&msg).is_err() {
        return false;
    }
    let mut rep = [0u8; 12];
    s.read_exact(&mut rep).is_ok() && rep[..2] == [5, 0] && rep[3] == 0
}

#[test]
fn check_reports_errors_with_line_numbers() {
    let dir = tmpdir("check");
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        "listen = [\"127.0.0.1:1080\"]\n\n[timeouts]\nconnect = 5\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 4"), "{err}");
    assert!(err.contains("bad.toml"), "{err}");

    let open = dir.join("open.toml");
    std::fs::write(
        &open,
        "listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"0.0.0.0/0\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&open)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("open proxy"));

    let good = dir.join("good.toml");
    std::fs::write(&good, "").unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&good)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn passwd_creates_and_updates_users_file() {
    let dir = tmpdir("passwd");
    let users = dir.join("users");
    for pw in ["first\n", "second\n"] {
        let mut child = Command::new(BIN)
            .args(["passwd", "--users-file"])
            .arg(&users)
            .arg("carol")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(pw.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success());
    }
    let db = socksng_server::users::UserDb::load(&users).unwrap();
    assert_eq!(db.len(), 1);
    assert!(db.verify("carol", b"second") && !db.verify("carol", b"first"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With the descriptor limit at 64 and 100 clients holding connections open, accept hits
/// EMFILE: the server backs off instead of crashing or spinning, and serves again once the
/// clients leave.
#[test]
fn survives_file_descriptor_exhaustion() {
    let dir = tmpdir("emfile");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\nworkers = 1\n[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let target_addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in target.incoming().flatten() {
            held.push(s);
        }
    });
    let (mut child, addr, mut err) = spawn(
        Command::new("prlimit")
            .args(["--nofile=64:64", BIN, "--config"])
            .arg(&cfg),
    );
    let hogs: Vec<TcpStream> = (0..100)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    // Wait until the server reports the exhaustion (bounded by the lines it prints).
    let mut saw_backoff = false;
    let mut line = String::new();
    for _ in 0..1000 {
        line.clear();
        if err.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.contains("out of resources") {
            saw_backoff = true;
            break;
        }
    }
    assert!(saw_backoff, "no EMFILE back-off reported");
    assert!(child.try_wait().unwrap().is_none(), "server died");
    drop(hogs);
    let mut served = false;
    for _ in 0..100 {
        if socks_connect_works(addr, target_addr) {
            served = true;
            break;
        }
    }
    assert!(served, "not serving after descriptors were freed");
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sigterm_stops_gracefully() {
    let dir = tmpdir("term");
    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "listen = [\"127.0.0.1:0\"]\n").unwrap();
    let (mut child, addr, mut err) = spawn(Command::new(BIN).arg("--config").arg(&cfg));
    assert!(TcpStream::connect(addr).is_ok());
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(
        rest.contains("SIGTERM received") && rest.contains("shutdown complete"),
        "{rest}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn served_ranges_as_proxy_config_json() {
    let dir = tmpdir("served");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "[[ng.served]]\nto = [\"10.0.0.0/8\"]\ndomains = [\"corp.example\"]\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["served", "--proxy", "vpn.example:1080", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["proxies"][0]["proxy"], "vpn.example:1080", "{v}");
    assert_eq!(v["proxies"][0]["protocol"], "socks5", "{v}");
    let rule = &v["proxy-match"][0];
    assert_eq!(rule["subnets"], serde_json::json!(["10.0.0.0/8"]), "{v}");
    assert_eq!(rule["domains"], serde_json::json!(["corp.example"]), "{v}");
    assert_eq!(rule["proxies"], serde_json::json!(["socksng"]), "{v}");
    assert_eq!(v["proxy-match"].as_array().map(Vec::len), Some(1), "{v}");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Waits for a child with a deadline; kills it and fails the test when the deadline passes.
fn wait_deadline(child: &mut Child, what: &str) -> std::process::ExitStatus {
    let give_up = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() >= give_up {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after 30 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn check(config: &str) -> std::process::Output {
    let dir = tmpdir("check-run");
    let cfg = dir.join(format!("c{}.toml", config.len()));
    std::fs::write(&cfg, config).unwrap();
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    // `run` must refuse too; one that starts serving instead is stopped by the deadline.
    let mut run = Command::new(BIN)
        .args(["run", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_deadline(&mut run, "run on an invalid configuration");
    let mut err = String::new();
    run.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    // `check` refuses exactly what `run` would.
    assert_eq!(
        out.status.success(),
        status.success(),
        "check and run disagree on {config:?}: {err}"
    );
    out
}

#[test]
fn check_finds_every_error_run_would() {
    for (config, words) in [
        (
            "listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"0.0.0.0/1\", \"128.0.0.0/1\"]\n",
            "open proxy",
        ),
        (
            "listen = [\"0.0.0.0:1080\"]\n[access]\nclients = [\"0.0.0.0/2\", \"64.0.0.0/2\", \"128.0.0.0/2\", \"192.0.0.0/2\"]\n",
            "open proxy",
        ),
        ("listen = [\"127.0.0.1:1080\", \"127.0.0.1:1080\"]\n", "twice"),
        ("listen = [\"0.0.0.0:1080\", \"127.0.0.1:1080\"]\n", "wildcard"),
        ("log_level = \"verbose\"\n", "log_level"),
        ("[[ng.ports]]\nports = []\n", "line 2"),
        ("log_file = \"/nonexistent-dir/socksngd.log\"\n", "log file"),
    ] {
        let out = check(config);
        assert!(!out.status.success(), "{config}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(words), "{config}: {err}");
    }
}

/// Polls a log file (with a deadline) until a line contains `needle`; returns that line.
fn wait_for_line(path: &std::path::Path, needle: &str) -> String {
    let give_up = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(text) = std::fs::read_to_string(path) {
            if let Some(line) = text.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
        }
        assert!(
            std::time::Instant::now() < give_up,
            "no {needle:?} in {}",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A target that greets each connection with "hello", then holds it open (`hold`) or closes.
fn greeting_target(hold: bool) -> SocketAddr {
    let target = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = target.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut s in target.incoming().flatten() {
            let _ = s.write_all(b"hello");
            if hold {
                held.push(s);
            }
        }
    });
    addr
}

#[test]
fn sighup_reopens_the_log_file_and_the_server_goes_on() {
    let dir = tmpdir("hup");
    let cfg = dir.join("c.toml");
    let log = dir.join("socksngd.log");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\nlog_file = \"socksngd.log\"\n[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let line = wait_for_line(&log, "listen=");
    let addr: SocketAddr = line
        .split("listen=")
        .nth(1)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let target = greeting_target(false);
    // logrotate moves the file away, then signals.
    std::fs::rename(&log, dir.join("socksngd.log.1")).unwrap();
    unsafe { libc::kill(child.id() as i32, libc::SIGHUP) };
    wait_for_line(&log, "SIGHUP received");
    assert!(
        child.try_wait().unwrap().is_none(),
        "SIGHUP ended the server"
    );
    assert!(socks_connect_works(addr, target));
    wait_for_line(&log, "session");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    assert!(wait_deadline(&mut child, "socksngd after SIGTERM").success());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_log_reader_that_stops_reading_does_not_stop_traffic() {
    let dir = tmpdir("stuck-log");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let target = greeting_target(false);
    // The listen line is read, then standard error is never read again: its pipe (64 KiB)
    // fills after a few hundred session lines.
    let (mut child, addr, _unread) = spawn(Command::new(BIN).arg("--config").arg(&cfg));
    for i in 0..1500 {
        assert!(socks_connect_works(addr, target), "session {i} failed");
    }
    child.kill().unwrap();
    child.wait().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn sessions_cut_at_the_end_of_the_grace_period_are_reset() {
    let dir = tmpdir("cut");
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        "listen = [\"127.0.0.1:0\"]\n[timeouts]\nshutdown_grace = \"200ms\"\n[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    let target = greeting_target(true);
    let (mut child, addr, mut err) = spawn(Command::new(BIN).arg("--config").arg(&cfg));
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let SocketAddr::V4(t) = target else { panic!() };
    let mut msg = vec![5, 1, 0, 5, 1, 0, 1];
    msg.extend_from_slice(&t.ip().octets());
    msg.extend_from_slice(&t.port().to_be_bytes());
    s.write_all(&msg).unwrap();
    let mut reply = [0u8; 2 + 10 + 5];
    s.read_exact(&mut reply).unwrap();
    assert_eq!(&reply[12..], b"hello");
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut buf = [0u8; 16];
    let end = s.read(&mut buf);
    assert_eq!(
        end.as_ref().map_err(|e| e.kind()),
        Err(std::io::ErrorKind::ConnectionReset),
        "a cut session must not end like a complete one: {end:?}"
    );
    let status = wait_deadline(&mut child, "socksngd after SIGTERM");
    assert_eq!(status.code(), Some(3), "exit status says sessions were cut");
    let mut rest = String::new();
    err.read_to_string(&mut rest).unwrap();
    assert!(rest.contains("sessions were cut"), "{rest}");
    std::fs::remove_dir_all(&dir).unwrap();
}
