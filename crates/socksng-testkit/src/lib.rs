//! socksng-testkit: the peer programs that integration tests and benchmarks compare socksng
//! with or talk to. It starts Dante, microsocks, and a private sshd for `ssh -D` (or alone, for
//! ssh through `socksng connect`), socksngd and any given command for the benchmark, and finds
//! dnsmasq for the CLI's DNS test, looking on PATH plus /usr/sbin and /sbin. It never installs
//! anything: a missing program is an error naming its Debian package, which scripts/test-all
//! installs (socksng-bench installs it for a benchmark run as root or with `--install`). The
//! built-in targets, the SOCKS5 client of the readiness probe and the process handling are here
//! too, because starting a peer needs them, and so is a TLS front (with throwaway
//! certificates) for tests of SOCKS over TLS.

pub mod procs;
pub mod programs;
pub mod socks;
pub mod subjects;
pub mod targets;
pub mod tls;
pub mod zerocopy;

pub use programs::require;
