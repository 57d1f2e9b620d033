//! Finding the programs the peers are made of, and running the short helper commands that
//! configure them. Nothing here installs anything: a missing program is an error naming the
//! Debian package that provides it, which scripts/test-all installs before the tests run (and
//! `socksng-bench` installs as root or with `--install`, since a benchmark on a fresh machine
//! needs it).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Every program a peer needs, with the Debian package that provides it.
pub const PACKAGES: &[(&str, &str)] = &[
    ("danted", "dante-server"),
    ("microsocks", "microsocks"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("dnsmasq", "dnsmasq-base"),
    ("stunnel4", "stunnel4"),
];

/// The Debian package that provides `bin`, when `bin` is one of [`PACKAGES`].
pub fn package_of(bin: &str) -> Option<&'static str> {
    PACKAGES.iter().find(|(b, _)| *b == bin).map(|(_, p)| *p)
}

/// The path of `bin`: as given when it holds a `/`, else the first match on PATH, then in
/// /usr/sbin and /sbin (Debian's daemons live there, and a user's PATH often lacks them).
pub fn which(bin: &str) -> Option<PathBuf> {
    if bin.contains('/') {
        return Path::new(bin).is_file().then(|| PathBuf::from(bin));
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
}

/// The path of `bin`, or an error that says which Debian package provides it and what installs
/// that package.
pub fn find(bin: &str) -> Result<PathBuf, String> {
    which(bin).ok_or_else(|| {
        let package = match package_of(bin) {
            Some(p) => format!("Debian's {p} package"),
            None => "its Debian package".to_owned(),
        };
        format!(
            "{bin} not found on PATH, in /usr/sbin or in /sbin: it comes with {package}, which \
             scripts/test-all installs (and socksng-bench as root or with --install)"
        )
    })
}

/// The path of `bin` for a test that cannot run without it; panics with [`find`]'s message
/// when it is missing, because a peer test that silently passed would hide the gap.
pub fn require(bin: &str) -> PathBuf {
    find(bin).unwrap_or_else(|e| panic!("{e}"))
}

/// Runs a short command, returning stdout+stderr; bounded by `timeout`.
pub fn run_capture(
    cmd: &mut Command,
    stdin: Option<&str>,
    timeout: Duration,
) -> Result<String, String> {
    let mut child = cmd
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd:?}: {e}"))?;
    if let (Some(text), Some(mut inp)) = (stdin, child.stdin.take()) {
        let _ = inp.write_all(text.as_bytes());
    }
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("{cmd:?}: timed out"));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() {
        Ok(text)
    } else {
        Err(format!("{cmd:?} failed ({}): {}", out.status, text.trim()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_program_is_an_error_naming_its_package() {
        let e = find("dnsmasq-that-does-not-exist").unwrap_err();
        assert!(e.contains("its Debian package"), "{e}");
        assert_eq!(package_of("danted"), Some("dante-server"));
        assert_eq!(package_of("ssh-keygen"), Some("openssh-client"));
        assert!(find("/bin/sh").is_ok());
    }
}
