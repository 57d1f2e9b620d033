//! UDP through the proxy with UDP ASSOCIATE (RFC 1928 section 7), which SOCKS-NG servers and
//! plain SOCKS5 servers (Dante) both serve: the program's own UDP socket stays a UDP socket,
//! sending to the proxy's relay with the request header in front (socksng-proto's
//! `UdpHeader`) and receiving the relay's datagrams with it stripped, so its poll, select and
//! epoll see real readiness. The association's control connection is the shim's own
//! descriptor, closed with the program's socket.
//!
//! A reply from an address the program never sent to (the proxy resolved a placeholder's
//! name) is reported as coming from the placeholder the program sent to on that port, so a
//! resolver that checks the source of its answers (dig, glibc) accepts it.

use crate::drive::{errno, Pending};
use crate::plan::Server;
use crate::real::real;
use socksng_proto::client::{ClientConfig, ClientRequest};
use socksng_proto::{Address, Command, Host, Request, UdpHeader};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

/// One UDP socket's association.
pub(crate) struct Association {
    /// The control connection (the shim's descriptor).
    control: i32,
    /// Where datagrams go, with the header.
    pub relay: SocketAddr,
    /// The default destination of a connected socket, as the program gave it.
    pub peer: Option<SocketAddr>,
    /// Placeholders sent to, by port: the source a reply from that port is given.
    placeholders: HashMap<u16, SocketAddr>,
}

impl Association {
    /// UDP ASSOCIATE through `server` for the program's UDP socket `fd` (bound first if it
    /// was not, so the request can name its port).
    pub(crate) fn open(
        fd: i32,
        family: i32,
        server: &Server,
        timeout: Duration,
    ) -> Result<Association, i32> {
        let local = local_or_bind(fd, family)?;
        let proxy = server
            .addrs()?
            .iter()
            .copied()
            .find(|a| family == libc::AF_INET6 || a.is_ipv4())
            .ok_or(libc::EAFNOSUPPORT)?;
        // SAFETY: socket(2) with constant arguments.
        let control = unsafe {
            libc::socket(
                if proxy.is_ipv4() {
                    libc::AF_INET
                } else {
                    libc::AF_INET6
                },
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if control < 0 {
            return Err(errno());
        }
        let fail = |e: i32| {
            // SAFETY: our own descriptor.
            unsafe { (real().close)(control) };
            Err(e)
        };
        let fam = if proxy.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        };
        let (storage, len) = crate::hooks::to_storage(proxy, fam);
        // SAFETY: a valid address of `len` bytes.
        let r = unsafe {
            (real().connect)(
                control,
                (&storage as *const libc::sockaddr_storage).cast(),
                len,
            )
        };
        if r != 0 && errno() != libc::EINPROGRESS {
            let e = errno();
            crate::hooks::say(&format!(
                "cannot reach the proxy {}: {}",
                server.describe(),
                std::io::Error::from_raw_os_error(e)
            ));
            return fail(e);
        }
        // The source the relay will see: our address toward the proxy, with the socket's port.
        let source = SocketAddr::new(
            if local.ip().is_unspecified() {
                if family == libc::AF_INET6 {
                    IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED)
                } else {
                    IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED)
                }
            } else {
                local.ip()
            },
            local.port(),
        );
        let config = ClientConfig {
            socks4: false,
            offer_ng: false,
            credentials: server
                .url
                .credentials
                .clone()
                .map(|(u, p)| (u.into_bytes(), p.into_bytes())),
            hops: 0,
        };
        let request = ClientRequest::Socks5(Request {
            command: Command::UdpAssociate,
            address: Address::ip(source),
        });
        let mut pending = Pending::new(
            config,
            request,
            "UDP ASSOCIATE".into(),
            proxy,
            server.describe(),
            Instant::now() + timeout,
            r != 0,
        );
        if let Err(e) = crate::hooks::run_blocking(control, &mut pending) {
            return fail(e);
        }
        let Some(mut relay) = pending.reply().and_then(|r| r.bound.socket_addr()) else {
            crate::hooks::say("the proxy named its UDP relay by name");
            return fail(libc::EPROTO);
        };
        if relay.ip().is_unspecified() {
            relay.set_ip(proxy.ip());
        }
        if family == libc::AF_INET && relay.is_ipv6() {
            return fail(libc::EAFNOSUPPORT);
        }
        Ok(Association {
            control,
            relay,
            peer: None,
            placeholders: HashMap::new(),
        })
    }

    /// Closes the control connection (the association ends with it).
    pub(crate) fn close(&self) {
        // SAFETY: the shim's own descriptor.
        unsafe { (real().close)(self.control) };
    }

    /// `payload` for `dest` (a placeholder stands for its name) as the relay wants it.
    pub(crate) fn wrap(&mut self, dest: SocketAddr, payload: &[u8]) -> Vec<u8> {
        let address = match crate::names::name_of(dest.ip()) {
            Some(name) => {
                self.placeholders.insert(dest.port(), dest);
                Address::domain(&name, dest.port()).unwrap_or_else(|_| Address::ip(dest))
            }
            None => Address::ip(dest),
        };
        let mut out = Vec::with_capacity(payload.len() + 24);
        UdpHeader { frag: 0, address }.encode(&mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A datagram from the relay: its source (as the program should see it) and where the
    /// payload starts; `None` for one to drop (fragmented, malformed).
    pub(crate) fn unwrap(&self, datagram: &[u8]) -> Option<(SocketAddr, usize)> {
        let (header, n) = UdpHeader::decode(datagram).ok()?;
        if header.frag != 0 {
            return None;
        }
        let source = match header.address.host {
            Host::Ip(ip) => SocketAddr::new(ip, header.address.port),
            Host::Domain(_) => self.placeholders.get(&header.address.port).copied()?,
        };
        // A connected socket hears from its peer only; the kernel would say the same.
        if let Some(peer) = self.peer {
            return Some((peer, n));
        }
        let source = match self.placeholders.get(&source.port()) {
            Some(p) if crate::names::name_of(source.ip()).is_none() => *p,
            _ => source,
        };
        Some((source, n))
    }
}

/// The socket's local address, binding it to any address first if it is not bound.
fn local_or_bind(fd: i32, family: i32) -> Result<SocketAddr, i32> {
    let get = || -> Result<SocketAddr, i32> {
        // SAFETY: all-zero storage for getsockname to fill.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: a valid buffer (the real getsockname: ours would not differ here).
        let r = unsafe {
            libc::syscall(
                libc::SYS_getsockname,
                fd,
                &mut storage as *mut libc::sockaddr_storage,
                &mut len,
            )
        };
        if r != 0 {
            return Err(errno());
        }
        // SAFETY: filled for `len` bytes.
        unsafe {
            crate::hooks::read_sockaddr((&storage as *const libc::sockaddr_storage).cast(), len)
        }
        .ok_or(libc::EAFNOSUPPORT)
    };
    let local = get()?;
    if local.port() != 0 {
        return Ok(local);
    }
    let any: IpAddr = if family == libc::AF_INET6 {
        std::net::Ipv6Addr::UNSPECIFIED.into()
    } else {
        std::net::Ipv4Addr::UNSPECIFIED.into()
    };
    let (storage, len) = crate::hooks::to_storage(SocketAddr::new(any, 0), family);
    // SAFETY: a valid address.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(errno());
    }
    get()
}
