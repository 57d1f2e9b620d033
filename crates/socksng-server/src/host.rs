//! What this host delivers to itself: the addresses the kernel treats as local (interface
//! addresses, AnyIP ranges such as `ip route add local 192.0.2.0/24 dev lo`, IPv6 anycast) and
//! the subnet-directed broadcast addresses. The SSRF guard in `policy` asks it about every
//! destination that no fixed range already decided.
//!
//! On Linux the source is the kernel's routing tables (routes of type local, anycast and
//! broadcast, which is what `ip route show table local` lists), read over rtnetlink and read
//! again as soon as an address or route event arrives on a second, subscribed socket. The event
//! socket is checked without blocking on every question, so an address added a moment ago is
//! already known: the kernel queues the event before `ip addr add` returns. Elsewhere, or when
//! netlink is not available, the interface addresses from getifaddrs are used and re-read every
//! few seconds.
//!
//! The netlink code is written by hand (a request, a dump and three attributes) because the
//! general crates add half a megabyte to a router build for this.

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How a host address relates to this host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostKind {
    /// Delivered to this host (an address of it, or inside a local route).
    Local,
    /// A broadcast address of one of its networks.
    Broadcast,
}

/// The kernel's view, as last read.
#[derive(Debug, Default, Clone)]
pub struct LocalView {
    /// Networks delivered locally (single addresses are /32 or /128 nets).
    pub local: Vec<IpNet>,
    /// Subnet-directed broadcast addresses.
    pub broadcast: Vec<IpAddr>,
}

impl LocalView {
    fn classify(&self, ip: IpAddr) -> Option<HostKind> {
        if self.broadcast.contains(&ip) {
            Some(HostKind::Broadcast)
        } else if self.local.iter().any(|n| n.contains(&ip)) {
            Some(HostKind::Local)
        } else {
            None
        }
    }
}

/// How long the getifaddrs fallback trusts a snapshot.
const FALLBACK_TTL: Duration = Duration::from_secs(5);

struct State {
    view: LocalView,
    read_at: Instant,
    #[cfg(target_os = "linux")]
    events: Option<netlink::Events>,
}

/// The host's local addresses, kept current.
pub struct HostView {
    state: Mutex<State>,
}

impl Default for HostView {
    fn default() -> Self {
        Self::new()
    }
}

impl HostView {
    /// Reads the current view and subscribes to changes.
    pub fn new() -> HostView {
        #[cfg(target_os = "linux")]
        {
            // Subscribe before the first dump: a change between the two is then seen as an
            // event and read again, never lost.
            let events = netlink::Events::subscribe()
                .map_err(|e| tracing::warn!(error = %e, "no netlink address events; host addresses are re-read every few seconds"))
                .ok();
            let view = read_view().unwrap_or_default();
            HostView {
                state: Mutex::new(State {
                    view,
                    read_at: Instant::now(),
                    events,
                }),
            }
        }
        #[cfg(not(target_os = "linux"))]
        HostView {
            state: Mutex::new(State {
                view: read_view().unwrap_or_default(),
                read_at: Instant::now(),
            }),
        }
    }

    /// Whether `ip` is this host's (or one of its broadcast addresses), as of now.
    pub fn classify(&self, ip: IpAddr) -> Option<HostKind> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_stale() {
            // Failing to read (out of descriptors, say) keeps the last good view and tries
            // again on the next question: it must not open the host's addresses.
            if let Some(fresh) = read_view() {
                state.view = fresh;
                state.read_at = Instant::now();
            }
        }
        state.view.classify(ip)
    }

    /// A copy of the current view (for tests and diagnostics).
    pub fn snapshot(&self) -> LocalView {
        let _ = self.classify(IpAddr::from([0u8; 4]));
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.view.clone()
    }
}

impl State {
    fn is_stale(&mut self) -> bool {
        #[cfg(target_os = "linux")]
        if let Some(events) = &self.events {
            return events.changed();
        }
        self.read_at.elapsed() >= FALLBACK_TTL
    }
}

fn read_view() -> Option<LocalView> {
    #[cfg(target_os = "linux")]
    match netlink::dump_local_routes() {
        Ok(v) => return Some(v),
        Err(e) => tracing::debug!(error = %e, "netlink route dump failed; using getifaddrs"),
    }
    match if_addrs::get_if_addrs() {
        Ok(ifs) => {
            let mut view = LocalView::default();
            for i in ifs {
                view.local
                    .push(IpNet::from(crate::policy::canonical(i.ip())));
                if let if_addrs::IfAddr::V4(v4) = &i.addr {
                    if let Some(b) = v4.broadcast {
                        view.broadcast.push(IpAddr::V4(b));
                    }
                }
            }
            Some(view)
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot list this host's addresses; keeping the last known list");
            None
        }
    }
}

#[cfg(target_os = "linux")]
mod netlink {
    //! Just enough rtnetlink: one route dump and an event subscription.
    use super::LocalView;
    use ipnet::IpNet;
    use std::io;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

    const NLMSG_HDRLEN: usize = 16;
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_GETROUTE: u16 = 26;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const RTMSG_LEN: usize = 12;
    const RTA_DST: u16 = 1;
    const RTN_LOCAL: u8 = 2;
    const RTN_BROADCAST: u8 = 3;
    const RTN_ANYCAST: u8 = 4;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;

    fn socket(groups: u32) -> io::Result<OwnedFd> {
        // SAFETY: plain socket creation; the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just created and nobody else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        addr.nl_groups = groups;
        // SAFETY: `addr` is a valid sockaddr_nl of the size given.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(fd)
    }

    fn recv(fd: &OwnedFd, buf: &mut [u8], flags: libc::c_int) -> io::Result<usize> {
        // SAFETY: the buffer is ours and its length is passed.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), flags) };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// A socket subscribed to address and route changes of both families.
    pub(super) struct Events {
        fd: OwnedFd,
    }

    impl Events {
        pub(super) fn subscribe() -> io::Result<Events> {
            let groups =
                RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;
            Ok(Events {
                fd: socket(groups)?,
            })
        }

        /// Drains pending events; true when there were any (or some were lost to an overrun,
        /// or the socket failed), so the view must be read again.
        pub(super) fn changed(&self) -> bool {
            let mut buf = [0u8; 8192];
            let mut changed = false;
            loop {
                match recv(&self.fd, &mut buf, libc::MSG_DONTWAIT) {
                    Ok(0) => return changed,
                    Ok(_) => changed = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return changed,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // ENOBUFS: events were dropped while nobody asked; read everything again.
                    Err(_) => return true,
                }
            }
        }
    }

    /// Dumps every route of both families and keeps those delivered to this host.
    pub(super) fn dump_local_routes() -> io::Result<LocalView> {
        let fd = socket(0)?;
        let mut req = [0u8; NLMSG_HDRLEN + RTMSG_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + RTMSG_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // rtmsg: family AF_UNSPEC (both), everything else zero.
        // SAFETY: the request buffer is ours and its length is passed.
        let sent = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut view = LocalView::default();
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let n = match recv(&fd, &mut buf, 0) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    wait_readable(&fd)?;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if parse_messages(&buf[..n], &mut view)? {
                return Ok(view);
            }
        }
    }

    fn wait_readable(fd: &OwnedFd) -> io::Result<()> {
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // The kernel answers a dump at once; the deadline only guards against a wedged socket.
        // SAFETY: one pollfd we own.
        let r = unsafe { libc::poll(&mut pfd, 1, 2000) };
        match r {
            0 => Err(io::ErrorKind::TimedOut.into()),
            r if r < 0 => Err(io::Error::last_os_error()),
            _ => Ok(()),
        }
    }

    /// Parses one datagram of a dump; true once NLMSG_DONE is seen.
    pub(super) fn parse_messages(mut data: &[u8], view: &mut LocalView) -> io::Result<bool> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, "malformed netlink message");
        while data.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(data[0..4].try_into().map_err(|_| bad())?) as usize;
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            if len < NLMSG_HDRLEN || len > data.len() {
                return Err(bad());
            }
            let body = &data[NLMSG_HDRLEN..len];
            match kind {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    let code = body
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                }
                RTM_NEWROUTE => parse_route(body, view),
                _ => {}
            }
            let advance = (len + 3) & !3;
            data = data.get(advance..).unwrap_or(&[]);
        }
        Ok(false)
    }

    fn parse_route(body: &[u8], view: &mut LocalView) {
        if body.len() < RTMSG_LEN {
            return;
        }
        let (family, dst_len, kind) = (body[0], body[1], body[7]);
        if !matches!(kind, RTN_LOCAL | RTN_ANYCAST | RTN_BROADCAST) {
            return;
        }
        let mut dst: Option<IpAddr> = None;
        let mut attrs = &body[RTMSG_LEN..];
        while attrs.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
            let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                break;
            }
            let value = &attrs[4..len];
            if ty == RTA_DST {
                dst = match (i32::from(family), value.len()) {
                    (libc::AF_INET, 4) => Some(IpAddr::V4(Ipv4Addr::new(
                        value[0], value[1], value[2], value[3],
                    ))),
                    (libc::AF_INET6, 16) => {
                        let mut o = [0u8; 16];
                        o.copy_from_slice(value);
                        Some(IpAddr::V6(Ipv6Addr::from(o)))
                    }
                    _ => None,
                };
            }
            attrs = attrs.get((len + 3) & !3..).unwrap_or(&[]);
        }
        // No destination attribute means the default route of its family.
        let dst = dst.or(match i32::from(family) {
            libc::AF_INET => Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            libc::AF_INET6 => Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED)),
            _ => None,
        });
        let Some(dst) = dst else { return };
        if kind == RTN_BROADCAST {
            view.broadcast.push(dst);
        } else if let Ok(net) = IpNet::new(dst, dst_len) {
            view.local.push(net.trunc());
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn route(family: u8, dst_len: u8, kind: u8, dst: &[u8]) -> Vec<u8> {
            let attr_len = 4 + dst.len();
            let len = NLMSG_HDRLEN + RTMSG_LEN + ((attr_len + 3) & !3);
            let mut m = vec![0u8; len];
            m[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
            m[4..6].copy_from_slice(&RTM_NEWROUTE.to_ne_bytes());
            let b = NLMSG_HDRLEN;
            m[b] = family;
            m[b + 1] = dst_len;
            m[b + 4] = 255;
            m[b + 7] = kind;
            let a = b + RTMSG_LEN;
            m[a..a + 2].copy_from_slice(&(attr_len as u16).to_ne_bytes());
            m[a + 2..a + 4].copy_from_slice(&RTA_DST.to_ne_bytes());
            m[a + 4..a + 4 + dst.len()].copy_from_slice(dst);
            m
        }

        #[test]
        fn parses_local_broadcast_and_anycast_routes() {
            let mut data = route(libc::AF_INET as u8, 24, RTN_LOCAL, &[198, 18, 0, 0]);
            data.extend(route(
                libc::AF_INET as u8,
                32,
                RTN_BROADCAST,
                &[10, 0, 0, 255],
            ));
            let mut v6 = [0u8; 16];
            v6[0] = 0x20;
            v6[1] = 0x01;
            v6[2] = 0x0d;
            v6[3] = 0xb8;
            data.extend(route(libc::AF_INET6 as u8, 128, RTN_ANYCAST, &v6));
            // A unicast route is not ours.
            data.extend(route(libc::AF_INET as u8, 8, 1, &[10, 0, 0, 0]));
            let mut done = vec![0u8; NLMSG_HDRLEN + 4];
            done[0..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
            done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
            data.extend(done);
            let mut view = LocalView::default();
            assert!(parse_messages(&data, &mut view).unwrap());
            assert_eq!(
                view.local,
                vec![
                    "198.18.0.0/24".parse::<IpNet>().unwrap(),
                    "2001:db8::/128".parse().unwrap()
                ]
            );
            assert_eq!(
                view.broadcast,
                vec!["10.0.0.255".parse::<IpAddr>().unwrap()]
            );
            // Truncated input is an error, not a panic.
            let mut view = LocalView::default();
            assert!(parse_messages(&data[..20], &mut view).is_err());
        }

        #[test]
        fn dumps_this_hosts_loopback() {
            let view = dump_local_routes().unwrap();
            assert!(view
                .local
                .iter()
                .any(|n| n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))));
        }
    }
}
