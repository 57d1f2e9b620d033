//! Installing the Debian packages of the peers a benchmark run needs, as root or with
//! `--install`: a benchmark on a fresh machine has nobody to install them first. It is the only
//! code in the workspace that installs anything; the tests rely on scripts/test-all instead.

use socksng_testkit::programs::{package_of, run_capture, which};
use std::process::Command;
use std::time::Duration;

/// Installs the packages providing whichever of `bins` are missing, when `may_install`.
/// Otherwise it does nothing: preparing the subject then reports what is missing and which
/// package provides it.
pub fn ensure_packages(bins: &[&str], may_install: bool) -> Result<(), String> {
    let mut pkgs: Vec<&str> = bins
        .iter()
        .copied()
        .filter(|bin| which(bin).is_none())
        .filter_map(package_of)
        .collect();
    if pkgs.is_empty() || !may_install {
        return Ok(());
    }
    pkgs.sort_unstable();
    pkgs.dedup();
    eprintln!("# installing {}", pkgs.join(" "));
    let install = |pkgs: &[&str]| {
        run_capture(
            Command::new("apt-get")
                .args(["install", "-y", "-q", "--no-install-recommends"])
                .args(pkgs)
                .env("DEBIAN_FRONTEND", "noninteractive"),
            None,
            Duration::from_secs(600),
        )
    };
    if install(&pkgs).is_err() {
        // Stale package lists are the usual reason; refresh once and retry.
        run_capture(
            Command::new("apt-get").args(["update", "-q"]),
            None,
            Duration::from_secs(300),
        )?;
        install(&pkgs)?;
    }
    Ok(())
}
