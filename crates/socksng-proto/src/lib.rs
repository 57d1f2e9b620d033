//! socksng-proto: the SOCKS protocol as pure data and state machines.
//!
//! This crate owns every byte layout socksng puts on the wire and the server-side handshake
//! state machine. It performs no I/O, owns no socket, no runtime and reads no clock: callers
//! feed it bytes and get back bytes to write plus events that ask for a decision (verify these
//! credentials, serve this request). That keeps it fuzzable, unit-testable byte by byte, and
//! usable from the tokio server, the async client and the blocking LD_PRELOAD shim alike.
//!
//! ```text
//!   bytes in ──► ServerHandshake::handle_input ──► Event::{Authenticate, Request, Socks4Request}
//!                         │                                  │ decision by the driver
//!   bytes out ◄── out: Vec<u8> ◄── auth_result / reply ◄─────┘
//! ```
//!
//! - [`wire`]: encode/decode of SOCKS5 (RFC 1928), username/password (RFC 1929), the UDP
//!   request header (RFC 1928 section 7) and SOCKS4/4a.
//! - [`handshake`]: the server handshake machine, SOCKS4 and SOCKS5 on one port.
//! - [`client`]: the client handshake machine (SOCKS5 with RFC 1929, SOCKS-NG, the request and
//!   its replies, BIND's second one and the CAPABILITIES block).
//! - [`listener`]: the LISTEN control connection, one machine per side (notices, tokens and
//!   their lifetimes, REFUSE, keep-alive, CLOSING), driven with time passed in as a value.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
#[doc(hidden)]
pub mod fuzzing;
pub mod handshake;
pub mod listener;
pub mod wire;

pub use client::{
    ClientConfig, ClientEvent, ClientHandshake, ClientHandshakeError, ClientProgress, ClientRequest,
};
pub use handshake::{Event, HandshakeConfig, HandshakeError, Progress, ServerHandshake};
pub use wire::{
    Address, AuthReply, AuthRequest, Command, DecodeError, DomainName, EncodeError, Greeting, Host,
    Method, MethodSelection, Reply, ReplyCode, Request, Socks4Command, Socks4Reply, Socks4Request,
    UdpHeader,
};
