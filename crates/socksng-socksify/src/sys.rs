//! What the shim's parts share below its hooks: its one line on standard error, errno, socket
//! options and the conversions between socket addresses and their C forms, and the real
//! resolver for proxies' names. Everything here calls the C library's own functions.

use crate::real::real;
use libc::{addrinfo, c_int, sockaddr, socklen_t};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

/// One line on standard error, prefixed "socksng: ", written whole.
pub fn say(msg: &str) {
    let line = format!("socksng: {msg}\n");
    // SAFETY: writing a valid buffer to descriptor 2; a failure is ignored.
    unsafe {
        (real().write)(2, line.as_ptr().cast(), line.len());
    }
}

pub(crate) fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// This thread's errno after a failed call.
pub(crate) fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

/// The socket address at `addr`, if it is IPv4 or IPv6.
///
/// # Safety
/// `addr` must be null or valid for `len` bytes.
pub(crate) unsafe fn read_sockaddr(addr: *const sockaddr, len: socklen_t) -> Option<SocketAddr> {
    if addr.is_null() {
        return None;
    }
    // SAFETY: the family field is within any sockaddr the caller passes.
    let family =
        c_int::from(unsafe { std::ptr::read_unaligned(std::ptr::addr_of!((*addr).sa_family)) });
    match family {
        libc::AF_INET if len as usize >= std::mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: long enough for a sockaddr_in; read unaligned to be safe.
            let a: libc::sockaddr_in = unsafe { std::ptr::read_unaligned(addr.cast()) };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(a.sin_port),
            )))
        }
        libc::AF_INET6 if len as usize >= std::mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: long enough for a sockaddr_in6.
            let a: libc::sockaddr_in6 = unsafe { std::ptr::read_unaligned(addr.cast()) };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(a.sin6_port),
                a.sin6_flowinfo,
                a.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// `sa` as a C socket address of `family` (an IPv4 address in an IPv6 socket is mapped).
pub(crate) fn to_storage(sa: SocketAddr, family: c_int) -> (libc::sockaddr_storage, socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let sa = match (sa, family) {
        (SocketAddr::V4(v4), libc::AF_INET6) => {
            SocketAddr::new(IpAddr::V6(v4.ip().to_ipv6_mapped()), v4.port())
        }
        _ => sa,
    };
    let len = match sa {
        SocketAddr::V4(v4) => {
            let a = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*v4.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), a) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let a = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: v6.ip().octets(),
                },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: as above.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), a) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as socklen_t)
}

/// Writes `sa` to a caller's buffer as getpeername does (truncating to its length).
///
/// # Safety
/// `addr` must be valid for `*len` bytes and `len` valid to read and write.
pub(crate) unsafe fn write_sockaddr(
    sa: SocketAddr,
    family: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
) {
    let (storage, full) = to_storage(sa, family);
    // SAFETY: the caller's length bounds the copy.
    unsafe {
        let n = (*len).min(full) as usize;
        std::ptr::copy_nonoverlapping(
            (&storage as *const libc::sockaddr_storage).cast::<u8>(),
            addr.cast::<u8>(),
            n,
        );
        *len = full;
    }
}

/// The address family of socket `fd` (AF_INET when it cannot be told).
pub(crate) fn socket_family(fd: c_int) -> c_int {
    sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET)
}

pub(crate) fn sockopt_int(fd: c_int, level: c_int, name: c_int) -> Option<c_int> {
    let mut v: c_int = 0;
    let mut len = std::mem::size_of::<c_int>() as socklen_t;
    // SAFETY: `v` and `len` are valid for getsockopt to write.
    let r =
        unsafe { (real().getsockopt)(fd, level, name, (&mut v as *mut c_int).cast(), &mut len) };
    (r == 0).then_some(v)
}

/// Resolves a proxy's host with the C library's resolver (names and literals).
pub(crate) fn resolve_real(host: &str, port: u16) -> Result<Vec<SocketAddr>, i32> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let Ok(node) = std::ffi::CString::new(host) else {
        return Err(libc::EINVAL);
    };
    // SAFETY: all-zero is a valid addrinfo for hints.
    let mut hints: addrinfo = unsafe { std::mem::zeroed() };
    hints.ai_socktype = libc::SOCK_STREAM;
    let mut res: *mut addrinfo = std::ptr::null_mut();
    // SAFETY: valid strings and out-pointer.
    let r = unsafe { (real().getaddrinfo)(node.as_ptr(), std::ptr::null(), &hints, &mut res) };
    if r != 0 {
        say(&format!("cannot resolve the proxy {host}"));
        return Err(libc::EHOSTUNREACH);
    }
    let mut out = Vec::new();
    let mut p = res;
    while !p.is_null() {
        // SAFETY: a node of the list getaddrinfo returned.
        let ai = unsafe { &*p };
        // SAFETY: ai_addr is valid for ai_addrlen.
        if let Some(mut sa) = unsafe { read_sockaddr(ai.ai_addr, ai.ai_addrlen) } {
            sa.set_port(port);
            if !out.contains(&sa) {
                out.push(sa);
            }
        }
        p = ai.ai_next;
    }
    // SAFETY: the list came from the real getaddrinfo.
    unsafe { (real().freeaddrinfo)(res) };
    if out.is_empty() {
        return Err(libc::EHOSTUNREACH);
    }
    Ok(out)
}
