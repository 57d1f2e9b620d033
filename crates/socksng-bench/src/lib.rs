//! socksng-bench as a library: the load generators, the cases and their report, the machine-wide
//! CPU accounting, and the installation of the peers' packages for a benchmark run. The peers
//! themselves (socksngd, Dante, microsocks, `ssh -D`), the built-in targets and the SOCKS5
//! client come from socksng-testkit, re-exported here under their old paths so the benchmark's
//! modules name them as before.

pub mod cases;
pub mod install;
pub mod machine;
pub mod report;
pub mod socksify;
pub mod stats;
pub mod tcp;
pub mod udp;

pub use socksng_testkit::{procs, socks, subjects, targets, zerocopy};
