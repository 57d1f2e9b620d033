//! The SOCKS handshake on the program's own socket, driven through socksng-proto's
//! `ClientHandshake` without blocking: each `step` sends and receives what it can and says
//! what it waits for next (the socket writable, or readable) or how it ended. A blocking
//! `connect` loops over `step` with `poll`; a non-blocking one returns EINPROGRESS and its
//! steps run inside the program's own `poll`, `select` or `epoll_wait` (see `hooks`). Reads
//! never pass the last reply (`next_read_len`), so the target's first bytes stay in the
//! socket for the program.

use crate::real::real;
use socksng_proto::client::{ClientConfig, ClientEvent, ClientHandshake, ClientRequest};
use socksng_proto::{Address, Command, Reply, ReplyCode, Request};
use std::net::SocketAddr;
use std::time::Instant;

/// What a step came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Waiting for these poll events (POLLOUT or POLLIN).
    Want(i16),
    /// The proxy connected the target: the socket is the program's.
    Done,
    /// The connection failed with this errno.
    Failed(i32),
}

/// A handshake in progress on one socket.
pub(crate) struct Pending {
    machine: ClientHandshake,
    out: Vec<u8>,
    sent: usize,
    input: Vec<u8>,
    /// The TCP connection to the proxy is not yet up.
    connecting: bool,
    /// What the program connected to (its placeholder for a name): `getpeername` says this.
    pub target: SocketAddr,
    /// The proxy, for messages.
    pub proxy: String,
    /// The destination as asked (a name, for a placeholder), for messages.
    asked: String,
    pub deadline: Instant,
    /// What the last step waited for.
    want: i16,
    /// The reply to the request, once it came.
    reply: Option<Reply>,
    /// The block a CAPABILITIES request brings after its reply.
    capabilities: Option<socksng_proto::wire::ng::Capabilities>,
    /// BIND: stop at the first reply (the listening address); the second (the peer) comes
    /// with later steps.
    pub first_reply_only: bool,
    /// BIND's second reply: the peer that connected.
    bind_peer: Option<Reply>,
}

/// The "errno" of a SOCKS-NG request a plain SOCKS5 server cannot take (its own, never
/// shown to the program: the caller falls back).
pub(crate) const NOT_NG: i32 = libc::EPROTONOSUPPORT;

/// The errno a SOCKS reply code stands for, as `connect` would report the failure directly.
pub(crate) fn errno_for(code: ReplyCode) -> i32 {
    match code {
        ReplyCode::NOT_ALLOWED => libc::EACCES,
        ReplyCode::NETWORK_UNREACHABLE => libc::ENETUNREACH,
        ReplyCode::HOST_UNREACHABLE => libc::EHOSTUNREACH,
        ReplyCode::TTL_EXPIRED => libc::ETIMEDOUT,
        _ => libc::ECONNREFUSED,
    }
}

impl Pending {
    /// A CONNECT to `address` through a proxy this socket is connecting (or connected) to.
    pub(crate) fn connect(
        address: Address,
        credentials: Option<(String, String)>,
        socks4: bool,
        target: SocketAddr,
        proxy: String,
        deadline: Instant,
        connecting: bool,
    ) -> Pending {
        let asked = address.to_string();
        let request = ClientRequest::Socks5(Request {
            command: Command::Connect,
            address,
        });
        let config = ClientConfig {
            socks4,
            offer_ng: false,
            credentials: credentials.map(|(u, p)| (u.into_bytes(), p.into_bytes())),
            hops: 0,
        };
        Pending::new(config, request, asked, target, proxy, deadline, connecting)
    }

    /// Any request (`what` names it in messages).
    pub(crate) fn new(
        config: ClientConfig,
        request: ClientRequest,
        asked: String,
        target: SocketAddr,
        proxy: String,
        deadline: Instant,
        connecting: bool,
    ) -> Pending {
        let mut out = Vec::with_capacity(64);
        let machine = ClientHandshake::new(config, request, &mut out);
        Pending {
            machine,
            out,
            sent: 0,
            input: Vec::with_capacity(32),
            connecting,
            target,
            proxy,
            asked,
            deadline,
            want: libc::POLLOUT,
            reply: None,
            capabilities: None,
            first_reply_only: false,
            bind_peer: None,
        }
    }

    /// The capabilities a CAPABILITIES request brought.
    pub(crate) fn take_capabilities(&mut self) -> Option<socksng_proto::wire::ng::Capabilities> {
        self.capabilities.take()
    }

    /// BIND's second reply, once the peer has connected.
    pub(crate) fn bind_peer(&self) -> Option<&Reply> {
        self.bind_peer.as_ref()
    }

    /// The reply to the request (its bound address), once the handshake is done.
    pub(crate) fn reply(&self) -> Option<&Reply> {
        self.reply.as_ref()
    }

    /// What the handshake waits for now (POLLOUT or POLLIN).
    pub(crate) fn want(&self) -> i16 {
        self.want
    }

    /// Moves the handshake on as far as the socket allows, without blocking.
    pub(crate) fn step(&mut self, fd: i32) -> Step {
        let step = self.step_inner(fd);
        if let Step::Want(events) = step {
            self.want = events;
        }
        step
    }

    fn step_inner(&mut self, fd: i32) -> Step {
        loop {
            if Instant::now() >= self.deadline {
                crate::sys::say(&format!(
                    "{}: no answer from the proxy {} in time",
                    self.asked, self.proxy
                ));
                return Step::Failed(libc::ETIMEDOUT);
            }
            if self.connecting {
                match connect_result(fd) {
                    Some(0) => self.connecting = false,
                    Some(e) => {
                        crate::sys::say(&format!(
                            "cannot reach the proxy {}: {}",
                            self.proxy,
                            std::io::Error::from_raw_os_error(e)
                        ));
                        return Step::Failed(e);
                    }
                    None => return Step::Want(libc::POLLOUT),
                }
            }
            if self.sent < self.out.len() {
                // SAFETY: the slice is valid for its length; MSG_DONTWAIT never blocks.
                let n = unsafe {
                    (real().send)(
                        fd,
                        self.out[self.sent..].as_ptr().cast(),
                        self.out.len() - self.sent,
                        libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                    )
                };
                if n < 0 {
                    let e = errno();
                    if e == libc::EAGAIN || e == libc::EINTR {
                        return Step::Want(libc::POLLOUT);
                    }
                    return self.broken(e);
                }
                self.sent += n as usize;
                continue;
            }
            self.out.clear();
            self.sent = 0;
            if self.machine.is_done() || (self.first_reply_only && self.reply.is_some()) {
                self.first_reply_only = false;
                return Step::Done;
            }
            let want = self.machine.next_read_len(&self.input);
            if want == 0 {
                return self.broken(libc::EPROTO);
            }
            let mut buf = [0u8; 512];
            let want = want.min(buf.len());
            // SAFETY: reading at most `want` bytes into a buffer at least that long.
            let n = unsafe { (real().recv)(fd, buf.as_mut_ptr().cast(), want, libc::MSG_DONTWAIT) };
            if n < 0 {
                let e = errno();
                if e == libc::EAGAIN || e == libc::EINTR {
                    return Step::Want(libc::POLLIN);
                }
                return self.broken(e);
            }
            if n == 0 {
                if let Some(code) = self.machine.refusal_at_eof(&self.input) {
                    return self.refused(code);
                }
                return self.broken(libc::ECONNRESET);
            }
            self.input.extend_from_slice(&buf[..n as usize]);
            let progress = match self.machine.handle_input(&self.input, &mut self.out) {
                Ok(p) => p,
                // Not an error to report: the caller falls back to plain SOCKS5.
                Err(socksng_proto::client::ClientHandshakeError::NgNotSelected) => {
                    return Step::Failed(NOT_NG);
                }
                Err(e) => {
                    crate::sys::say(&format!("the proxy {}: {e}", self.proxy));
                    return Step::Failed(libc::ECONNREFUSED);
                }
            };
            self.input.drain(..progress.consumed);
            if let Some(ClientEvent::Reply(reply)) = progress.event {
                if reply.code != ReplyCode::SUCCEEDED {
                    return self.refused(reply.code);
                }
                self.reply = Some(reply);
            } else if let Some(ClientEvent::Capabilities(c)) = progress.event {
                self.capabilities = Some(c);
            } else if let Some(ClientEvent::BindPeer(peer)) = progress.event {
                if peer.code != ReplyCode::SUCCEEDED {
                    return self.refused(peer.code);
                }
                self.bind_peer = Some(peer);
            }
        }
    }

    fn refused(&self, code: ReplyCode) -> Step {
        crate::sys::say(&format!(
            "the proxy {} refused {}: {code}",
            self.proxy, self.asked
        ));
        Step::Failed(errno_for(code))
    }

    fn broken(&self, e: i32) -> Step {
        crate::sys::say(&format!(
            "the connection to the proxy {} broke: {}",
            self.proxy,
            std::io::Error::from_raw_os_error(e)
        ));
        Step::Failed(if e == libc::EPROTO {
            libc::ECONNREFUSED
        } else {
            e
        })
    }
}

pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// How a non-blocking connect came out: `None` while it is in progress, `Some(0)` connected,
/// `Some(errno)` failed.
fn connect_result(fd: i32) -> Option<i32> {
    let mut err: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `err` and `len` are valid for getsockopt to write.
    let r = unsafe {
        (real().getsockopt)(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ERROR,
            (&mut err as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Some(errno());
    }
    if err != 0 {
        return Some(err);
    }
    // SAFETY: an all-zero sockaddr_storage is valid; getpeername writes at most `len`.
    let mut peer: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let r = unsafe {
        (real().getpeername)(
            fd,
            (&mut peer as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r == 0 {
        return Some(0);
    }
    match errno() {
        libc::ENOTCONN => None,
        e => Some(e),
    }
}

/// Drives a handshake to its end, waiting with poll, within its deadline.
pub(crate) fn run_blocking(fd: i32, pending: &mut Pending) -> Result<(), i32> {
    loop {
        match pending.step(fd) {
            Step::Done => return Ok(()),
            Step::Failed(e) => return Err(e),
            Step::Want(events) => {
                let left = pending.deadline.saturating_duration_since(Instant::now());
                let mut p = libc::pollfd {
                    fd,
                    events,
                    revents: 0,
                };
                let ms = left.as_millis().min(i32::MAX as u128) as libc::c_int;
                // SAFETY: one valid pollfd.
                unsafe { (real().poll)(&mut p, 1, ms.max(1)) };
            }
        }
    }
}
