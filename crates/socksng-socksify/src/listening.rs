//! Listening sockets on the proxy's outside: `listen()` on a TCP socket bound to a
//! non-loopback address becomes a SOCKS-NG LISTEN, and the program's descriptor becomes the
//! listener's control connection (so its poll, select or epoll sees it readable when a
//! notice arrives). `accept()` reads the notices through socksng-proto's `ClientListener`
//! (answering the proxy's PINGs) and claims each connection with ACCEPT over a new
//! connection to the proxy, which it returns; `getpeername` on it is the real remote peer,
//! `getsockname` on either the address the proxy listens on.

use crate::drive::{errno, Pending};
use crate::plan::Server;
use crate::real::real;
use socksng_proto::client::{ClientConfig, ClientRequest};
use socksng_proto::listener::{ClientListener, ClientListenerEvent};
use socksng_proto::wire::ng::{NgRequest, Token};
use socksng_proto::Address;
use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// A listener on the proxy's outside.
pub(crate) struct Listening {
    machine: ClientListener,
    /// Where the proxy listens for us.
    pub public: SocketAddr,
    notices: VecDeque<(Token, SocketAddr)>,
    server: &'static Server,
    family: i32,
    timeout: Duration,
    /// Set once the control connection is gone: the errno accept reports (EINVAL, as for a
    /// socket that is not listening: ECONNABORTED would tell event loops to try again).
    closed: Option<i32>,
    /// Against a plain SOCKS5 server, RFC 1928 BIND instead: one connection, announced by
    /// the second reply on the control connection.
    bind: Option<Pending>,
    spent: bool,
}

pub(crate) fn config(server: &Server) -> ClientConfig {
    ClientConfig {
        socks4: false,
        offer_ng: true,
        credentials: server
            .url
            .credentials
            .clone()
            .map(|(u, p)| (u.into_bytes(), p.into_bytes())),
        hops: 0,
    }
}

/// A new socket of `family` connected to `server` that has run `request` to its reply.
pub(crate) fn request(
    server: &Server,
    family: i32,
    request: ClientRequest,
    asked: String,
    timeout: Duration,
    first_reply_only: bool,
) -> Result<(i32, Pending), i32> {
    let proxy = server
        .addrs()?
        .iter()
        .copied()
        .find(|a| family == libc::AF_INET6 || a.is_ipv4())
        .ok_or(libc::EAFNOSUPPORT)?;
    // SAFETY: socket(2) with constant arguments.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(errno());
    }
    let (storage, len) = crate::sys::to_storage(proxy, family);
    // SAFETY: a valid address of `len` bytes.
    let r =
        unsafe { (real().connect)(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    if r != 0 && errno() != libc::EINPROGRESS {
        let e = errno();
        crate::sys::say(&format!(
            "cannot reach the proxy {}: {}",
            server.describe(),
            std::io::Error::from_raw_os_error(e)
        ));
        // SAFETY: our own descriptor.
        unsafe { (real().close)(fd) };
        return Err(e);
    }
    let mut pending = Pending::new(
        config(server),
        request,
        asked,
        proxy,
        server.describe(),
        Instant::now() + timeout,
        r != 0,
    );
    pending.first_reply_only = first_reply_only;
    match crate::drive::run_blocking(fd, &mut pending) {
        Ok(()) => Ok((fd, pending)),
        Err(e) => {
            // SAFETY: our own descriptor.
            unsafe { (real().close)(fd) };
            Err(e)
        }
    }
}

impl Listening {
    /// LISTEN for the program's socket `fd` (of `family`, bound to `port`), through `server`;
    /// on success `fd` is the control connection.
    pub(crate) fn open(
        fd: i32,
        family: i32,
        server: &'static Server,
        port: u16,
        backlog: i32,
        timeout: Duration,
    ) -> Result<Listening, i32> {
        let any: IpAddr = if family == libc::AF_INET6 {
            Ipv6Addr::UNSPECIFIED.into()
        } else {
            Ipv4Addr::UNSPECIFIED.into()
        };
        let listen = ClientRequest::Ng(NgRequest::Listen {
            address: Address::ip(SocketAddr::new(any, port)),
            exact: false,
            backlog: u16::try_from(backlog.max(0)).unwrap_or(u16::MAX),
        });
        let listened = request(
            server,
            family,
            listen,
            format!("LISTEN :{port}"),
            timeout,
            false,
        );
        let (control, pending, bind) = match listened {
            Ok((control, pending)) => (control, pending, false),
            // A plain SOCKS5 server: BIND, for one connection from anyone.
            Err(crate::drive::NOT_NG) => {
                crate::sys::say(&format!(
                    "{} is a plain SOCKS5 server: listening with BIND, for one connection",
                    server.describe()
                ));
                let bind = ClientRequest::Socks5(socksng_proto::Request {
                    command: socksng_proto::Command::Bind,
                    address: Address::ip(SocketAddr::new(any, 0)),
                });
                let (control, pending) =
                    request(server, family, bind, format!("BIND :{port}"), timeout, true)?;
                (control, pending, true)
            }
            Err(e) => return Err(e),
        };
        let mut public = pending
            .reply()
            .and_then(|r| r.bound.socket_addr())
            .unwrap_or(SocketAddr::new(any, port));
        if public.ip().is_unspecified() {
            if let Some(p) = server.addrs()?.first() {
                public.set_ip(p.ip());
            }
        }
        // The program's descriptor becomes the control connection, with its own flags.
        // SAFETY: fcntl and dup3 on descriptors we and the program own.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFL);
            let cloexec = libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0;
            let r = (real().dup3)(control, fd, if cloexec { libc::O_CLOEXEC } else { 0 });
            let e = errno();
            (real().close)(control);
            if r < 0 {
                return Err(e);
            }
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFL, flags);
            }
        }
        Ok(Listening {
            machine: ClientListener::new(Instant::now()),
            public,
            notices: VecDeque::new(),
            server,
            family,
            timeout,
            closed: None,
            bind: bind.then_some(pending),
            spent: false,
        })
    }

    /// Whether the listener was a BIND whose one connection has been taken: the program's
    /// descriptor is an ordinary (quiet) listener again.
    pub(crate) fn spent(&self) -> bool {
        self.spent
    }

    /// accept for a BIND: waits for the second reply, then hands the control connection over
    /// as the accepted one, and leaves in the program's descriptor a listener on loopback
    /// that nobody connects to (as a listener whose backlog is spent).
    fn accept_bound(&mut self, fd: i32, flags: i32) -> Result<(i32, SocketAddr), i32> {
        let Some(pending) = self.bind.as_mut() else {
            return Err(libc::EINVAL);
        };
        // SAFETY: fcntl on the program's descriptor.
        let nonblocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
        // The peer may take its time: no deadline while waiting for it.
        pending.deadline = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        loop {
            match pending.step(fd) {
                crate::drive::Step::Done => break,
                crate::drive::Step::Failed(e) => return Err(e),
                crate::drive::Step::Want(_) if nonblocking => return Err(libc::EAGAIN),
                crate::drive::Step::Want(events) => {
                    let mut p = libc::pollfd {
                        fd,
                        events,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { (real().poll)(&mut p, 1, -1) };
                }
            }
        }
        let peer = pending
            .bind_peer()
            .and_then(|r| r.bound.socket_addr())
            .unwrap_or(SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), 0));
        // SAFETY: fcntl/socket/bind/listen/dup3 on descriptors we and the program own.
        unsafe {
            let cloexec = if flags & libc::SOCK_CLOEXEC != 0 {
                libc::F_DUPFD_CLOEXEC
            } else {
                libc::F_DUPFD
            };
            let accepted = libc::fcntl(fd, cloexec, 0);
            if accepted < 0 {
                return Err(errno());
            }
            let fl = libc::fcntl(accepted, libc::F_GETFL);
            let fl = if flags & libc::SOCK_NONBLOCK != 0 {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            // The accepted descriptor shares the file with the listener's: its flags too, so
            // the listener is switched to the quiet socket below first.
            let quiet = libc::socket(self.family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            if quiet >= 0 {
                let any: IpAddr = if self.family == libc::AF_INET6 {
                    Ipv6Addr::LOCALHOST.into()
                } else {
                    Ipv4Addr::LOCALHOST.into()
                };
                let (storage, len) = crate::sys::to_storage(SocketAddr::new(any, 0), self.family);
                libc::bind(
                    quiet,
                    (&storage as *const libc::sockaddr_storage).cast(),
                    len,
                );
                libc::syscall(libc::SYS_listen, quiet, 1);
                let keep = libc::fcntl(fd, libc::F_GETFL);
                let cloexec_fd = libc::fcntl(fd, libc::F_GETFD) & libc::FD_CLOEXEC != 0;
                (real().dup3)(quiet, fd, if cloexec_fd { libc::O_CLOEXEC } else { 0 });
                (real().close)(quiet);
                libc::fcntl(fd, libc::F_SETFL, keep);
            }
            libc::fcntl(accepted, libc::F_SETFL, fl);
            self.bind = None;
            self.spent = true;
            Ok((accepted, peer))
        }
    }

    /// Whether notices wait for accept (read from the socket already).
    pub(crate) fn has_queued(&self) -> bool {
        !self.notices.is_empty() || self.closed.is_some()
    }

    /// The next incoming connection: a new descriptor (with `flags`' SOCK_NONBLOCK and
    /// SOCK_CLOEXEC) and its peer. Waits for one on a blocking `fd`; EAGAIN on a non-blocking
    /// one with none there.
    pub(crate) fn accept(&mut self, fd: i32, flags: i32) -> Result<(i32, SocketAddr), i32> {
        if self.bind.is_some() {
            return self.accept_bound(fd, flags);
        }
        loop {
            if let Some((token, peer)) = self.notices.pop_front() {
                match self.claim(token, peer, flags) {
                    Ok(accepted) => return Ok((accepted, peer)),
                    // Gone before the claim (the peer left, the token expired): the next.
                    Err(_) => continue,
                }
            }
            if let Some(e) = self.closed {
                return Err(e);
            }
            match self.read(fd) {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    self.closed = Some(e);
                    continue;
                }
            }
            // SAFETY: fcntl on the program's descriptor.
            let nonblocking = unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
            if nonblocking {
                return Err(libc::EAGAIN);
            }
            let wake = self.machine.poll_timeout();
            let ms = wake.map_or(-1, |w| {
                w.saturating_duration_since(Instant::now())
                    .as_millis()
                    .min(i32::MAX as u128) as i32
            });
            let mut p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            unsafe { (real().poll)(&mut p, 1, ms) };
            self.machine.handle_timeout(Instant::now());
            self.flush(fd)?;
        }
    }

    /// Reads what the control connection has; true when it brought something to act on.
    fn read(&mut self, fd: i32) -> Result<bool, i32> {
        let mut buf = [0u8; 2048];
        // SAFETY: a buffer of its own length.
        let n =
            unsafe { (real().recv)(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = errno();
            return if e == libc::EAGAIN || e == libc::EINTR {
                Ok(false)
            } else {
                Err(e)
            };
        }
        if n == 0 {
            crate::sys::say(&format!(
                "the proxy {} closed the listener",
                self.server.describe()
            ));
            return Err(libc::EINVAL);
        }
        if let Err(e) = self
            .machine
            .handle_input(&buf[..n as usize], Instant::now())
        {
            crate::sys::say(&format!("listener control connection: {e}"));
            return Err(libc::EINVAL);
        }
        while let Some(event) = self.machine.poll_event() {
            match event {
                ClientListenerEvent::Incoming { token, peer } => {
                    if let Some(peer) = peer.socket_addr() {
                        self.notices.push_back((token, peer));
                    }
                }
                ClientListenerEvent::Expired(token) => self.notices.retain(|(t, _)| *t != token),
                ClientListenerEvent::Closing(code) => {
                    crate::sys::say(&format!("the proxy closed the listener: {code}"));
                    self.closed = Some(libc::EINVAL);
                }
                ClientListenerEvent::Listening(_) => {}
            }
        }
        self.flush(fd)?;
        Ok(true)
    }

    /// Sends what the machine has to say (PONGs, PINGs).
    fn flush(&mut self, fd: i32) -> Result<(), i32> {
        let mut out = Vec::new();
        if !self.machine.poll_transmit(&mut out) {
            return Ok(());
        }
        let mut sent = 0;
        while sent < out.len() {
            // SAFETY: the unsent part of `out`.
            let n = unsafe {
                (real().send)(
                    fd,
                    out[sent..].as_ptr().cast(),
                    out.len() - sent,
                    libc::MSG_NOSIGNAL,
                )
            };
            if n < 0 {
                let e = errno();
                if e == libc::EINTR {
                    continue;
                }
                if e == libc::EAGAIN {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLOUT,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { (real().poll)(&mut p, 1, 1000) };
                    continue;
                }
                return Err(e);
            }
            sent += n as usize;
        }
        Ok(())
    }

    /// Claims `token` over a new connection to the proxy.
    fn claim(&mut self, token: Token, peer: SocketAddr, flags: i32) -> Result<i32, i32> {
        let accept = ClientRequest::Ng(NgRequest::Accept { token });
        let (fd, _) = request(
            self.server,
            self.family,
            accept,
            format!("ACCEPT from {peer}"),
            self.timeout,
            false,
        )?;
        // SAFETY: fcntl on our new descriptor: the flags accept4 asked for.
        unsafe {
            let fl = libc::fcntl(fd, libc::F_GETFL);
            let fl = if flags & libc::SOCK_NONBLOCK != 0 {
                fl | libc::O_NONBLOCK
            } else {
                fl & !libc::O_NONBLOCK
            };
            libc::fcntl(fd, libc::F_SETFL, fl);
            if flags & libc::SOCK_CLOEXEC == 0 {
                libc::fcntl(fd, libc::F_SETFD, 0);
            }
        }
        Ok(fd)
    }
}
