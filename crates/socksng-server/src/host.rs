//! What this host delivers to itself: the addresses the kernel treats as local (interface
//! addresses, AnyIP ranges such as `ip route add local 192.0.2.0/24 dev lo`, IPv6 anycast) and
//! the subnet-directed broadcast addresses. The SSRF guard in `policy` asks it about every
//! destination that no fixed range already decided.
//!
//! On Linux the source is the kernel's local routing table (routes of type local, anycast and
//! broadcast: what `ip route show table local` lists), read over rtnetlink. A thread of its own
//! waits on a second, subscribed socket for address events and for route events of the local
//! table, and bumps a change count; a question that finds the count moved reads the table
//! again first (one at a time; the others wait for that read), so questions cost no system
//! call. An address added a moment ago is known once that thread has run, microseconds after
//! the kernel queued the event; a question in between still sees the old view. A failed read
//! leaves the count unsettled and is tried again, at most every 100 ms, keeping the last good
//! view meanwhile. Elsewhere, or when netlink is not available, the interface addresses from
//! getifaddrs are used and re-read every few seconds.
//!
//! The netlink code is written by hand (a request, a dump and three attributes) because the
//! general crates add half a megabyte to a router build for this.

use ipnet::IpNet;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
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

/// How soon a failed read of the local table is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_millis(100);

/// How long the getifaddrs fallback trusts a snapshot.
const FALLBACK_TTL: Duration = Duration::from_secs(5);

/// The count of relevant changes the event thread has seen: one thread and one subscribed
/// socket per process, shared by every view (a process may run several servers).
#[cfg(target_os = "linux")]
fn changes() -> Option<Arc<AtomicU64>> {
    static WATCH: std::sync::OnceLock<Option<Arc<AtomicU64>>> = std::sync::OnceLock::new();
    WATCH
        .get_or_init(|| {
            let changed = Arc::new(AtomicU64::new(0));
            netlink::watch(changed.clone())
                .map_err(|e| tracing::warn!(error = %e, "no netlink address events; host addresses are re-read every few seconds"))
                .ok()
                .map(|()| changed)
        })
        .clone()
}

/// The host's local addresses, kept current.
pub struct HostView {
    view: RwLock<LocalView>,
    /// Held while the view is read again, so that questions wait for the new view.
    refresh: Mutex<Instant>,
    /// The process's change count while netlink events arrive; `None` for the getifaddrs
    /// fallback.
    changed: Option<Arc<AtomicU64>>,
    /// The change count the view reflects.
    settled: AtomicU64,
    /// The last read of the table failed.
    failing: std::sync::atomic::AtomicBool,
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
            // Subscribe, and read the count, before the first dump: a change between the two
            // is then seen as an event and read again, never lost.
            if let Some(changed) = changes() {
                let seen = changed.load(Ordering::Acquire);
                match netlink::dump_local_routes() {
                    Ok(view) => {
                        return HostView {
                            view: RwLock::new(view),
                            refresh: Mutex::new(Instant::now()),
                            changed: Some(changed),
                            settled: AtomicU64::new(seen),
                            failing: Default::default(),
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the local routing table; using the interface addresses")
                    }
                }
            }
        }
        HostView {
            view: RwLock::new(read_interfaces().unwrap_or_default()),
            refresh: Mutex::new(Instant::now()),
            changed: None,
            settled: AtomicU64::new(0),
            failing: Default::default(),
        }
    }

    /// Whether `ip` is this host's (or one of its broadcast addresses), as of now.
    pub fn classify(&self, ip: IpAddr) -> Option<HostKind> {
        self.bring_up_to_date();
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .classify(ip)
    }

    /// A copy of the current view (for tests and diagnostics).
    pub fn snapshot(&self) -> LocalView {
        self.bring_up_to_date();
        self.view.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn bring_up_to_date(&self) {
        match &self.changed {
            Some(count) => {
                if count.load(Ordering::Acquire) == self.settled.load(Ordering::Acquire) {
                    return;
                }
                let mut tried_at = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
                // Read the count before the table: an event during the read moves it again.
                let changed = count.load(Ordering::Acquire);
                if changed == self.settled.load(Ordering::Acquire) {
                    return;
                }
                if self.failing.load(Ordering::Relaxed) && tried_at.elapsed() < RETRY_AFTER_FAILURE
                {
                    return;
                }
                *tried_at = Instant::now();
                #[cfg(target_os = "linux")]
                match netlink::dump_local_routes() {
                    Ok(fresh) => {
                        *self.view.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                        self.settled.store(changed, Ordering::Release);
                        self.failing.store(false, Ordering::Relaxed);
                    }
                    // Out of descriptors, say: keep the last good view (it must not open the
                    // host's addresses) and try again shortly; one warning per failing run.
                    Err(e) => {
                        if !self.failing.swap(true, Ordering::Relaxed) {
                            tracing::warn!(error = %e, "cannot read the local routing table; keeping the last view");
                        }
                    }
                }
            }
            None => {
                let mut read_at = self.refresh.lock().unwrap_or_else(|p| p.into_inner());
                if read_at.elapsed() < FALLBACK_TTL {
                    return;
                }
                if let Some(fresh) = read_interfaces() {
                    *self.view.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                    *read_at = Instant::now();
                }
            }
        }
    }
}

fn read_interfaces() -> Option<LocalView> {
    match if_addrs::get_if_addrs() {
        Ok(ifs) => {
            let mut view = LocalView::default();
            for i in ifs {
                // An IPv4-mapped interface address is the IPv4 address.
                let ip = match i.ip() {
                    IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
                    v4 => v4,
                };
                view.local.push(IpNet::from(ip));
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
    const RTM_NEWADDR: u16 = 20;
    const RTM_DELADDR: u16 = 21;
    const RTM_NEWROUTE: u16 = 24;
    const RTM_DELROUTE: u16 = 25;
    const RTM_GETROUTE: u16 = 26;
    const RT_TABLE_LOCAL: u8 = 255;
    const RT_TABLE_MAIN: u8 = 254;
    const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const RTMSG_LEN: usize = 12;
    const RTA_DST: u16 = 1;
    const RTA_TABLE: u16 = 15;
    const RTN_LOCAL: u8 = 2;
    const RTN_BROADCAST: u8 = 3;
    const RTN_ANYCAST: u8 = 4;
    const RTMGRP_IPV4_IFADDR: u32 = 0x10;
    const RTMGRP_IPV4_ROUTE: u32 = 0x40;
    const RTMGRP_IPV6_IFADDR: u32 = 0x100;
    const RTMGRP_IPV6_ROUTE: u32 = 0x400;

    fn socket(groups: u32, nonblocking: bool) -> io::Result<OwnedFd> {
        let flags = if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
        // SAFETY: plain socket creation; the descriptor is owned at once.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | flags,
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

    /// Starts the thread that waits for address events and local-table route events and
    /// moves `changed` for each batch of them.
    pub(super) fn watch(changed: std::sync::Arc<std::sync::atomic::AtomicU64>) -> io::Result<()> {
        let groups =
            RTMGRP_IPV4_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_IFADDR | RTMGRP_IPV6_ROUTE;
        let fd = socket(groups, false)?;
        std::thread::Builder::new()
            .name("socksng-netlink".into())
            .spawn(move || {
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match recv(&fd, &mut buf, 0) {
                        Ok(n) if concerns_local_addresses(&buf[..n]) => {
                            changed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        }
                        Ok(_) => {}
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        // ENOBUFS: events were lost; read everything again.
                        Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                            changed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                        }
                        Err(e) => {
                            // Without events the view could go stale unseen: say so, and
                            // make every question read the table again.
                            tracing::warn!(error = %e, "netlink events lost; reading the local table on every check");
                            loop {
                                changed.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                                std::thread::sleep(std::time::Duration::from_millis(10));
                            }
                        }
                    }
                }
            })?;
        Ok(())
    }

    /// Whether a datagram of events holds an address change or a change to a local,
    /// broadcast or anycast route (a router's churn in its other routes is not our business).
    fn concerns_local_addresses(mut data: &[u8]) -> bool {
        while data.len() >= NLMSG_HDRLEN {
            let len = u32::from_ne_bytes([data[0], data[1], data[2], data[3]]) as usize;
            let kind = u16::from_ne_bytes([data[4], data[5]]);
            if len < NLMSG_HDRLEN || len > data.len() {
                return true;
            }
            let body = &data[NLMSG_HDRLEN..len];
            match kind {
                RTM_NEWADDR | RTM_DELADDR => return true,
                RTM_NEWROUTE | RTM_DELROUTE
                    if body.len() >= RTMSG_LEN
                        && (body[4] == RT_TABLE_LOCAL
                            || matches!(body[7], RTN_LOCAL | RTN_ANYCAST | RTN_BROADCAST)) =>
                {
                    return true
                }
                _ => {}
            }
            data = data.get((len + 3) & !3..).unwrap_or(&[]);
        }
        false
    }

    /// Dumps the local routing table of both families and keeps the routes delivered to this
    /// host.
    pub(super) fn dump_local_routes() -> io::Result<LocalView> {
        let fd = socket(0, true)?;
        // Strict checking (Linux 4.20+) lets the kernel send the local table alone, not a
        // router's whole routing table; older kernels send everything, which is filtered here.
        let on: libc::c_int = 1;
        // SAFETY: an int option on a socket we own.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_NETLINK,
                NETLINK_GET_STRICT_CHK,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        let mut req = [0u8; NLMSG_HDRLEN + RTMSG_LEN];
        req[0..4].copy_from_slice(&((NLMSG_HDRLEN + RTMSG_LEN) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&RTM_GETROUTE.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        // rtmsg: family AF_UNSPEC (both), table local, everything else zero.
        req[NLMSG_HDRLEN + 4] = RT_TABLE_LOCAL;
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
                // A dump cut short says so in its DONE message; its view is not complete.
                NLMSG_DONE => {
                    let code = body
                        .get(0..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(0);
                    if code < 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    return Ok(true);
                }
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
        let mut table = u32::from(body[4]);
        let mut dst: Option<IpAddr> = None;
        let mut attrs = &body[RTMSG_LEN..];
        while attrs.len() >= 4 {
            let len = usize::from(u16::from_ne_bytes([attrs[0], attrs[1]]));
            let ty = u16::from_ne_bytes([attrs[2], attrs[3]]);
            if len < 4 || len > attrs.len() {
                break;
            }
            let value = &attrs[4..len];
            if ty == RTA_TABLE && value.len() == 4 {
                table = u32::from_ne_bytes([value[0], value[1], value[2], value[3]]);
            }
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
        // `ip route add local` puts a route in the local table; the kernel only delivers
        // from tables its rules consult, which for the other tables is the operator's design.
        // A kernel without multiple IPv6 tables keeps IPv6 local routes in the main table.
        let main_v6 = table == u32::from(RT_TABLE_MAIN) && i32::from(family) == libc::AF_INET6;
        if table != u32::from(RT_TABLE_LOCAL) && !main_v6 {
            return;
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
            // A unicast route is not ours, nor a local route of another table.
            data.extend(route(libc::AF_INET as u8, 8, 1, &[10, 0, 0, 0]));
            let mut elsewhere = route(libc::AF_INET as u8, 24, RTN_LOCAL, &[203, 0, 113, 0]);
            elsewhere[NLMSG_HDRLEN + 4] = 254;
            data.extend(elsewhere);
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
            // Events: local-table routes and address changes matter, other routes do not.
            assert!(concerns_local_addresses(&data[..data.len() - 20]));
            let mut addr = vec![0u8; NLMSG_HDRLEN + 8];
            addr[0..4].copy_from_slice(&((NLMSG_HDRLEN + 8) as u32).to_ne_bytes());
            addr[4..6].copy_from_slice(&RTM_NEWADDR.to_ne_bytes());
            assert!(concerns_local_addresses(&addr));
            let mut main = route(libc::AF_INET as u8, 8, 1, &[10, 0, 0, 0]);
            main[NLMSG_HDRLEN + 4] = 254;
            assert!(!concerns_local_addresses(&main));
        }

        #[test]
        fn dumps_this_hosts_loopback() {
            let view = dump_local_routes().unwrap();
            assert!(view
                .local
                .iter()
                .any(|n| n.contains(&IpAddr::V4(Ipv4Addr::LOCALHOST))));
            let v6_loopback = std::net::UdpSocket::bind("[::1]:0").is_ok();
            assert!(
                !v6_loopback
                    || view
                        .local
                        .iter()
                        .any(|n| n.contains(&IpAddr::V6(Ipv6Addr::LOCALHOST))),
                "{view:?}"
            );
        }
    }
}
