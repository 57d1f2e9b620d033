//! socksify: an LD_PRELOAD shim that makes unmodified programs use socksng. Loaded into a
//! program (`socksng exec -- PROGRAM`, or `LD_PRELOAD=libsocksng_socksify.so`), it replaces
//! the C library's `connect`, the waiting functions and the resolver entry points, so that
//! connections the route table sends to a proxy go through it, with the SOCKS handshake run
//! on the program's own socket by socksng-proto's client machine, and names the proxy
//! resolves never reach a local DNS server.
//!
//! It runs inside someone else's process: no runtime, no thread of its own, nothing that
//! blocks a non-blocking socket. Its state is a table of descriptors behind one lock.
//!
//! - `real`: the C library's own functions;
//! - `sys`: stderr lines, errno, socket addresses in C form, the real resolver;
//! - `plan`: the configuration and route table (the `socksng` command's, from the same file,
//!   URL and environment variables);
//! - `names`: placeholder addresses for names resolved by the proxy;
//! - `drive`: the handshake on one socket, step by step;
//! - `fds`: what the shim knows of the program's descriptors;
//! - `listening`: listening sockets on the proxy's outside (SOCKS-NG LISTEN and ACCEPT);
//! - `udp`: UDP through the proxy (UDP ASSOCIATE);
//! - `hooks`: the replaced functions;
//! - `capi`: the public C API (`include/socksng.h`).

pub mod capi;
mod drive;
mod fds;
mod hooks;
mod listening;
pub mod names;
mod plan;
mod real;
mod sys;
mod udp;

/// Loads the configuration when the shim is loaded, before the program's first instruction
/// (and before it starts threads), so that every hook finds it ready and none has to load it
/// in the middle of the program's own calls.
extern "C" fn load_at_start() {
    fds::install_fork_handlers();
    let _ = std::panic::catch_unwind(plan::plan);
}

#[used]
#[link_section = ".init_array"]
static LOAD_AT_START: extern "C" fn() = load_at_start;
