//! UDP through the proxy: over the stream with SOCKS-NG UDP-TUNNEL where the server speaks
//! SOCKS-NG (socksng-proto's `TunnelFrame`s on the shim's own connection), else with UDP
//! ASSOCIATE (RFC 1928 section 7; Dante), the program's own UDP socket sending to the proxy's
//! relay with the request header in front (`UdpHeader`) and receiving with it stripped. The
//! program's socket stays a UDP socket either way. A tunnel's connection stands in for it in
//! the waiting functions: poll and select wait on both, and the program's epoll registrations
//! of its socket are copied to the tunnel's (same events, same data), so an arriving frame
//! reads as its socket being readable. The shim's connection is closed with the program's
//! socket.
//!
//! A reply from an address the program never sent to (the proxy resolved a placeholder's
//! name) is reported as coming from the placeholder the program sent to on that port, so a
//! resolver that checks the source of its answers (dig, glibc) accepts it.

use crate::drive::errno;
use crate::plan::Server;
use crate::real::real;
use socksng_proto::client::ClientRequest;
use socksng_proto::wire::ng::{NgRequest, TunnelFrame};
use socksng_proto::{Address, Command, DecodeError, Host, Request, UdpHeader};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// One UDP socket's association.
pub(crate) struct Association {
    /// The control connection (the shim's descriptor); for a tunnel, the frames' stream.
    pub control: i32,
    /// Where datagrams go, with the header (UDP ASSOCIATE); unused for a tunnel.
    pub relay: SocketAddr,
    /// UDP-TUNNEL: frames are read into this until one is whole.
    pub tunnel: Option<Vec<u8>>,
    /// The default destination of a connected socket, as the program gave it.
    pub peer: Option<SocketAddr>,
    /// Placeholders sent to, by name: the source a reply naming that name is given.
    by_name: HashMap<String, SocketAddr>,
    /// Placeholders sent to, by port: a reply from an address the program never sent to,
    /// from a port only one placeholder uses, is given that placeholder (the proxy
    /// resolved its name).
    placeholders: HashMap<u16, Vec<SocketAddr>>,
    /// Addresses the program sent to itself: their replies keep their source.
    sent_to: std::collections::HashSet<SocketAddr>,
    /// Serialises a tunnel's use, so frames of two threads never interleave.
    pub io: std::sync::Arc<std::sync::Mutex<()>>,
}

/// Bounds the memory of what a socket sent to (a program spraying many destinations).
const SENT_TO_MAX: usize = 4096;

impl Association {
    /// A UDP-TUNNEL through `server`, or UDP ASSOCIATE where it does not speak SOCKS-NG.
    pub(crate) fn open(
        fd: i32,
        family: i32,
        server: &Server,
        timeout: Duration,
    ) -> Result<Association, i32> {
        match Association::tunnel(server, timeout) {
            Err(crate::drive::NOT_NG) => Association::associate(fd, family, server, timeout),
            other => other,
        }
    }

    /// SOCKS-NG UDP-TUNNEL: datagrams framed inside a connection of the shim's.
    fn tunnel(server: &Server, timeout: Duration) -> Result<Association, i32> {
        let request = ClientRequest::Ng(NgRequest::UdpTunnel);
        let (control, _) = crate::listening::request(
            server,
            server.family()?,
            request,
            "UDP-TUNNEL".into(),
            timeout,
            false,
        )?;
        Ok(Association {
            control,
            relay: SocketAddr::from(([0, 0, 0, 0], 0)),
            tunnel: Some(Vec::new()),
            peer: None,
            by_name: HashMap::new(),
            placeholders: HashMap::new(),
            sent_to: Default::default(),
            io: Default::default(),
        })
    }

    /// UDP ASSOCIATE through `server` for the program's UDP socket `fd` (bound first if it
    /// was not, so the request can name its address and port).
    fn associate(
        fd: i32,
        family: i32,
        server: &Server,
        timeout: Duration,
    ) -> Result<Association, i32> {
        let source = local_or_bind(fd, family)?;
        let request = ClientRequest::Socks5(Request {
            command: Command::UdpAssociate,
            address: Address::ip(source),
        });
        let (control, pending) = crate::listening::request(
            server,
            server.family()?,
            request,
            "UDP ASSOCIATE".into(),
            timeout,
            false,
        )?;
        let fail = |e: i32| {
            // SAFETY: our own descriptor.
            unsafe { (real().close)(control) };
            Err(e)
        };
        let Some(mut relay) = pending.reply().and_then(|r| r.bound.socket_addr()) else {
            crate::sys::say("the proxy named its UDP relay by name");
            return fail(libc::EPROTO);
        };
        if relay.ip().is_unspecified() {
            relay.set_ip(pending.target.ip());
        }
        if family == libc::AF_INET && relay.is_ipv6() {
            return fail(libc::EAFNOSUPPORT);
        }
        Ok(Association {
            control,
            relay,
            tunnel: None,
            peer: None,
            by_name: HashMap::new(),
            placeholders: HashMap::new(),
            sent_to: Default::default(),
            io: Default::default(),
        })
    }

    /// Closes the control connection (the association ends with it).
    pub(crate) fn close(&self) {
        // SAFETY: the shim's own descriptor.
        unsafe { (real().close)(self.control) };
    }

    /// `payload` for `dest` (a placeholder stands for its name) as the relay or the tunnel
    /// wants it; `Err` for a payload a tunnel frame cannot carry.
    pub(crate) fn wrap(&mut self, dest: SocketAddr, payload: &[u8]) -> Result<Vec<u8>, i32> {
        let address = match crate::names::name_of(dest.ip()) {
            Some(name) => {
                let on_port = self.placeholders.entry(dest.port()).or_default();
                if !on_port.contains(&dest) {
                    on_port.push(dest);
                }
                let address =
                    Address::domain(&name, dest.port()).unwrap_or_else(|_| Address::ip(dest));
                self.by_name.insert(name, dest);
                address
            }
            None => {
                if self.sent_to.len() >= SENT_TO_MAX {
                    self.sent_to.clear();
                }
                self.sent_to.insert(dest);
                Address::ip(dest)
            }
        };
        let mut out = Vec::with_capacity(payload.len() + 24);
        if self.tunnel.is_some() {
            TunnelFrame::encode_datagram(&address, payload, &mut out)
                .map_err(|_| libc::EMSGSIZE)?;
        } else {
            UdpHeader { frag: 0, address }.encode(&mut out);
            out.extend_from_slice(payload);
        }
        Ok(out)
    }

    /// The source the program should see for a datagram from `address`.
    fn source_of(&self, address: &Address) -> Option<SocketAddr> {
        // A connected socket hears from its peer only; the kernel would say the same.
        if let Some(peer) = self.peer {
            return Some(peer);
        }
        let ip = match &address.host {
            Host::Domain(name) => return self.by_name.get(name.as_str()).copied(),
            Host::Ip(ip) => *ip,
        };
        let source = SocketAddr::new(ip, address.port);
        if self.sent_to.contains(&source) {
            return Some(source);
        }
        Some(
            match self.placeholders.get(&source.port()).map(Vec::as_slice) {
                Some([only]) => *only,
                _ => source,
            },
        )
    }

    /// Whether a whole tunnel frame waits in the shim (the program's socket is readable).
    pub(crate) fn has_frame(&self) -> bool {
        self.tunnel.as_ref().is_some_and(|inbox| {
            !matches!(TunnelFrame::decode(inbox), Err(DecodeError::Incomplete)) && !inbox.is_empty()
        })
    }

    /// The next datagram of a tunnel, copied into `buf`: (payload length, source); `None`
    /// when no whole frame is there yet. ERROR frames (a datagram the proxy could not send)
    /// are passed over, as the network would lose the datagram.
    pub(crate) fn next_frame(
        &mut self,
        buf: &mut [u8],
        peek: bool,
    ) -> Option<Result<(usize, SocketAddr), i32>> {
        loop {
            let inbox = self.tunnel.as_mut()?;
            let (frame, used) = match TunnelFrame::decode(inbox) {
                Err(DecodeError::Incomplete) => return None,
                Err(_) => return Some(Err(libc::EPROTO)),
                Ok(x) => x,
            };
            let out = match frame {
                TunnelFrame::Datagram { address, payload } => {
                    let n = payload.len().min(buf.len());
                    buf[..n].copy_from_slice(&payload[..n]);
                    Some((payload.len(), address))
                }
                TunnelFrame::Error { .. } => None,
            };
            if !(peek && out.is_some()) {
                inbox.drain(..used);
            }
            if let Some((len, address)) = out {
                let source = self
                    .source_of(&address)
                    .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
                return Some(Ok((len, source)));
            }
        }
    }

    /// A datagram from the relay: its source (as the program should see it) and where the
    /// payload starts; `None` for one to drop (fragmented, malformed).
    pub(crate) fn unwrap(&self, datagram: &[u8]) -> Option<(SocketAddr, usize)> {
        let (header, n) = UdpHeader::decode(datagram).ok()?;
        if header.frag != 0 {
            return None;
        }
        Some((self.source_of(&header.address)?, n))
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
            crate::sys::read_sockaddr((&storage as *const libc::sockaddr_storage).cast(), len)
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
    let (storage, len) = crate::sys::to_storage(SocketAddr::new(any, 0), family);
    // SAFETY: a valid address.
    if unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) } != 0 {
        return Err(errno());
    }
    get()
}
