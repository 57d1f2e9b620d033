//! socksng-bench as a library: the load generators, the built-in targets, and the start-up of
//! real SOCKS5 servers (socksngd, Dante, microsocks, `ssh -D`) with their configuration and
//! package installation. The `socksng-bench` binary drives them; the client's test suites use
//! `subjects` to run their interop tests against the same peers.

pub mod cases;
pub mod procs;
pub mod report;
pub mod socks;
pub mod stats;
pub mod subjects;
pub mod targets;
pub mod tcp;
pub mod udp;
pub mod zerocopy;
