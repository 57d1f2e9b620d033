//! socksng-server: the socksng SOCKS server as a library, driving the sans-IO machines of
//! `socksng-proto` on tokio.
//!
//! [`Server::bind`] opens the listeners from a [`config::Config`]; [`Server::run`] serves until
//! its cancellation token fires. The `socksngd` binary and the integration tests start the
//! server through exactly these two calls.
//!
//! - [`config`]: the TOML schema, defaults and validation;
//! - [`policy`]: client networks and destination rules, one engine for every command;
//! - [`host`]: the addresses this host delivers to itself, kept current from netlink;
//! - [`users`]: the argon2 users file;
//! - [`connect`]: resolution, RFC 8305 connection racing, reply codes for failures;
//! - [`relay`]: the bidirectional TCP relay with half-close;
//! - `session`, `bind`, `udp`: one connection's life, and the BIND and UDP ASSOCIATE commands.

pub mod admin;
mod admission;
pub mod audit;
pub mod config;
pub mod dial;
pub mod discovery;
pub mod host;
pub mod outcome;
pub mod policy;
pub mod relay;
pub mod testing;
pub mod users;

mod bind;
mod conn;
mod connect;
mod listen;
mod metrics;
pub mod ng;
#[cfg(feature = "pam")]
pub mod pam;
mod server;
mod session;
mod shaping;
mod shared;
mod small_http;
mod stream;
mod tls;
mod tokens;
mod udp;
mod upstream;

pub use config::Config;
pub use server::{ReloadError, ReloadReport, RunSummary, Server, ServerError, ServerHandle};
pub use tls::{check_tls, TlsError};
pub use tokio_util::sync::CancellationToken;
