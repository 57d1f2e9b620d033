//! The C functions the shim replaces. Each one passes straight to the C library unless the
//! configuration sends the call to a proxy; a panic inside one falls back to the C library's
//! own function (an unwinding panic must never cross into the program).
//!
//! - `connect` on a TCP socket to a destination the route table sends to a proxy: connects
//!   the socket to the proxy and runs the SOCKS handshake on it. A blocking socket gets 0 or
//!   the error when the handshake is over (within the configured connect timeout); a
//!   non-blocking one gets EINPROGRESS, and the handshake runs inside the program's `poll`,
//!   `ppoll`, `select`, `pselect`, `epoll_wait` and `epoll_pwait`, which report the socket
//!   writable only once the proxy has connected the target (and `SO_ERROR` the failure, if
//!   it failed).
//! - `getaddrinfo`, `gethostbyname`, `gethostbyname2`: a name that goes to a proxy which
//!   resolves names gets a placeholder address (`names`), so no DNS query leaves this host.
//! - `getpeername`, `getsockopt(SO_ERROR)`, `close`, `dup2`, `dup3`, `epoll_ctl`: keep the
//!   state above true.

use crate::drive::{run_blocking, Pending, Step};
use crate::fds::{self, FdState, Registration};
use crate::names;
use crate::plan::{plan, Plan, Server, Way};
use crate::real::real;
use crate::sys::{errno, read_sockaddr, say, set_errno, sockopt_int, to_storage, write_sockaddr};
use libc::{
    addrinfo, c_char, c_int, c_void, epoll_event, fd_set, hostent, nfds_t, pollfd, sigset_t,
    sockaddr, socklen_t, timespec, timeval,
};
use socksng_proto::Address;
use std::net::{IpAddr, SocketAddr};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::{Duration, Instant};

/// The C library's function `$name` (looked up once), for the hooks `real` does not hold.
/// An atomic, not a OnceLock: `syscall` is reached from the standard library's own futex
/// waits, so finding the function must never wait (a race looks it up twice, harmlessly).
macro_rules! next_fn {
    ($name:literal, $ty:ty) => {{
        static F: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let mut f = F.load(std::sync::atomic::Ordering::Acquire);
        if f == 0 {
            // SAFETY: a NUL-terminated name and the RTLD_NEXT pseudo-handle.
            f = unsafe { libc::dlsym(libc::RTLD_NEXT, $name.as_ptr()) as usize };
            if f == 0 {
                crate::sys::say(&format!("cannot find the C library's {:?}", $name));
                std::process::abort();
            }
            F.store(f, std::sync::atomic::Ordering::Release);
        }
        // SAFETY: the C library's function of this signature (not null, checked above).
        unsafe { std::mem::transmute::<usize, $ty>(f) }
    }};
}

/// Runs `f`; a panic falls back to `fallback`, as does a call this thread makes while it
/// holds the table's lock (the standard library's own I/O inside the shim, a panic message,
/// a signal handler): those go straight to the C library.
fn guarded<T>(f: impl FnOnce() -> T, fallback: impl FnOnce() -> T) -> T {
    if fds::held_here() {
        return fallback();
    }
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| fallback())
}

/// The plan, when the shim has anything to do. A broken configuration is reported once.
fn active_plan() -> Result<Option<&'static Plan>, ()> {
    match plan() {
        Ok(p) => Ok(p),
        Err(why) => {
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| say(&format!("configuration: {why}; connections are refused")));
            Err(())
        }
    }
}

// ---------------------------------------------------------------------------------------
// connect

/// # Safety
/// As connect(2).
#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const sockaddr, len: socklen_t) -> c_int {
    // SAFETY: the program's arguments, passed on unchanged.
    let direct = || unsafe { (real().connect)(fd, addr, len) };
    // SAFETY: the program's address, valid for `len` by connect's contract.
    let Some(target) = (unsafe { read_sockaddr(addr, len) }) else {
        return direct();
    };
    guarded(|| connect_to(fd, target, direct), direct)
}

fn connect_to(fd: c_int, target: SocketAddr, direct: impl Fn() -> c_int) -> c_int {
    match sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) {
        Some(libc::SOCK_STREAM) => {}
        Some(libc::SOCK_DGRAM) => return udp_connect(fd, target).unwrap_or_else(direct),
        _ => return direct(),
    }
    // A connect again on a socket whose handshake runs or ran: as the kernel answers it.
    if let Some(r) = connect_again(fd) {
        return r;
    }
    let ip = target.ip().to_canonical();
    let plan = match active_plan() {
        Ok(Some(p)) => p,
        Ok(None) => return direct(),
        Err(()) if ip.is_loopback() => return direct(),
        Err(()) => {
            set_errno(libc::ECONNREFUSED);
            return -1;
        }
    };
    let port = target.port();
    let (way, address) = match names::name_of(ip) {
        Some(name) => {
            let address = match Address::domain(&name, port) {
                Ok(a) => a,
                Err(_) => {
                    set_errno(libc::EINVAL);
                    return -1;
                }
            };
            (plan.for_name(&name, port), address)
        }
        None if names::is_placeholder(ip) => {
            say(&format!(
                "{ip} is a placeholder this process did not hand out"
            ));
            set_errno(libc::EHOSTUNREACH);
            return -1;
        }
        None => (
            plan.for_ip(ip, port),
            Address::ip(SocketAddr::new(ip, port)),
        ),
    };
    let server = match way {
        Way::Proxy(s) => s,
        Way::Direct if matches!(address.host, socksng_proto::Host::Domain(_)) => {
            // Resolved as going to a proxy, now routed direct: never resolved here.
            say(&format!("{address} is no longer routed through a proxy"));
            set_errno(libc::EHOSTUNREACH);
            return -1;
        }
        Way::Direct => return direct(),
    };
    start(fd, plan, server, address, target)
}

/// What the kernel would say to a second connect on a socket the shim handles: EALREADY
/// while the handshake runs, EISCONN once connected, the error once if it failed.
fn connect_again(fd: c_int) -> Option<c_int> {
    let mut table = fds::lock();
    let result = match table.state.get_mut(&fd)? {
        FdState::Pending(_) => match advance(&mut table, fd) {
            None => Err(libc::EALREADY),
            Some(Ok(())) => Err(libc::EISCONN),
            Some(Err(e)) => {
                // Reported here, as the kernel reports a failed connect to the next connect.
                table.forget(fd);
                Err(e)
            }
        },
        FdState::Proxied { .. } => Err(libc::EISCONN),
        FdState::Listener(_) | FdState::Udp(_) => Err(libc::EISCONN),
        FdState::Failed { errno, .. } => {
            let e = *errno;
            table.forget(fd);
            Err(e)
        }
    };
    match result {
        Ok(()) => Some(0),
        Err(e) => {
            set_errno(e);
            Some(-1)
        }
    }
}

fn start(fd: c_int, plan: &Plan, server: &Server, address: Address, target: SocketAddr) -> c_int {
    if server.url.tls.is_some() {
        say(&format!(
            "{}: SOCKS over TLS (socks5s://) is not supported by the shim yet",
            server.describe()
        ));
        set_errno(libc::ECONNREFUSED);
        return -1;
    }
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    let proxy = match server.addrs() {
        Ok(addrs) => addrs
            .iter()
            .copied()
            .find(|a| family == libc::AF_INET6 || a.is_ipv4()),
        Err(e) => {
            set_errno(e);
            return -1;
        }
    };
    let Some(proxy) = proxy else {
        say(&format!(
            "the proxy {} has no IPv4 address for this IPv4 socket",
            server.describe()
        ));
        set_errno(libc::EAFNOSUPPORT);
        return -1;
    };
    // SAFETY: fcntl on the program's descriptor.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    let nonblocking = flags >= 0 && flags & libc::O_NONBLOCK != 0;
    if !nonblocking {
        // The handshake runs on a non-blocking socket either way, so that it keeps its deadline.
        // SAFETY: as above.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) };
    }
    let (storage, len) = to_storage(proxy, family);
    // SAFETY: a valid socket address of `len` bytes.
    let r =
        unsafe { (real().connect)(fd, (&storage as *const libc::sockaddr_storage).cast(), len) };
    let e = if r == 0 { 0 } else { errno() };
    if r != 0 && e != libc::EINPROGRESS {
        if !nonblocking {
            // SAFETY: as above.
            unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        }
        say(&format!(
            "cannot reach the proxy {}: {}",
            server.describe(),
            std::io::Error::from_raw_os_error(e)
        ));
        set_errno(e);
        return -1;
    }
    let deadline = Instant::now() + plan.connect_timeout;
    let mut pending = Pending::connect(
        address,
        server.url.credentials.clone(),
        server.socks4(),
        target,
        server.describe(),
        deadline,
        r != 0,
    );
    if nonblocking {
        let first = pending.step(fd);
        let mut table = fds::lock();
        match first {
            Step::Want(events) => {
                table.set(fd, FdState::Pending(Box::new(pending)));
                rearm_registrations(&table, fd, events);
                set_errno(libc::EINPROGRESS);
                -1
            }
            // Done at once (a fast proxy): still EINPROGRESS, as programs that set a socket
            // non-blocking expect; the socket is writable, so their wait returns at once.
            Step::Done => {
                table.set(
                    fd,
                    FdState::Proxied {
                        target,
                        local: None,
                    },
                );
                set_errno(libc::EINPROGRESS);
                -1
            }
            Step::Failed(e) => {
                set_errno(e);
                -1
            }
        }
    } else {
        let result = run_blocking(fd, &mut pending);
        // SAFETY: as above: the program's own flags back.
        unsafe { libc::fcntl(fd, libc::F_SETFL, flags) };
        match result {
            Ok(()) => {
                fds::lock().set(
                    fd,
                    FdState::Proxied {
                        target,
                        local: None,
                    },
                );
                0
            }
            Err(e) => {
                disconnect(fd);
                set_errno(e);
                -1
            }
        }
    }
}

/// Leaves a socket whose proxied connect failed unconnected, so that the program's next
/// read or write fails instead of talking to the proxy.
fn disconnect(fd: c_int) {
    // SAFETY: all-zero with AF_UNSPEC is the documented way to dissolve an association.
    let mut unspec: libc::sockaddr = unsafe { std::mem::zeroed() };
    unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
    // SAFETY: a valid sockaddr.
    unsafe {
        (real().connect)(
            fd,
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as socklen_t,
        )
    };
}

// ---------------------------------------------------------------------------------------
// epoll registrations borrowed by a handshake

fn epoll_events(poll_events: i16) -> u32 {
    if poll_events & libc::POLLIN != 0 {
        libc::EPOLLIN as u32
    } else {
        libc::EPOLLOUT as u32
    }
}

/// Points the program's registrations of `fd` at what the handshake waits for.
fn rearm_registrations(table: &fds::Fds, fd: c_int, poll_events: i16) {
    for (epfd, reg) in table.registrations(fd) {
        let mut ev = epoll_event {
            events: epoll_events(poll_events),
            u64: reg.data,
        };
        // SAFETY: a valid epoll descriptor and event.
        unsafe { (real().epoll_ctl)(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
    }
}

/// Gives the program its registrations of `fd` back.
fn restore_registrations(table: &fds::Fds, fd: c_int) {
    for (epfd, reg) in table.registrations(fd) {
        let mut ev = epoll_event {
            events: reg.events,
            u64: reg.data,
        };
        // SAFETY: as above.
        unsafe { (real().epoll_ctl)(epfd, libc::EPOLL_CTL_MOD, fd, &mut ev) };
    }
}

/// Moves `fd`'s handshake on; what the program should see: `None` while it runs, else
/// `Some(Ok)` connected or `Some(Err(errno))`.
fn advance(table: &mut fds::Fds, fd: c_int) -> Option<Result<(), c_int>> {
    let FdState::Pending(p) = table.state.get_mut(&fd)? else {
        return None;
    };
    match p.step(fd) {
        Step::Want(events) => {
            rearm_registrations(table, fd, events);
            None
        }
        Step::Done => {
            let target = p.target;
            table.set(
                fd,
                FdState::Proxied {
                    target,
                    local: None,
                },
            );
            restore_registrations(table, fd);
            Some(Ok(()))
        }
        Step::Failed(errno) => {
            disconnect(fd);
            table.set(fd, FdState::Failed { errno });
            restore_registrations(table, fd);
            Some(Err(errno))
        }
    }
}

/// The earliest handshake deadline, as a poll timeout in ms from now (for waits that must
/// wake to fail a handshake in time).
fn earliest_deadline(table: &fds::Fds) -> Option<Instant> {
    table
        .state
        .values()
        .filter_map(|s| match s {
            FdState::Pending(p) => Some(p.deadline),
            _ => None,
        })
        .min()
}

/// The timeout to wait with: the program's (ms, negative for none), cut to the earliest
/// handshake deadline.
fn wait_ms(until: Option<Instant>, deadline: Option<Instant>) -> c_int {
    let soonest = match (until, deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    match soonest {
        None => -1,
        Some(t) => {
            let left = t.saturating_duration_since(Instant::now());
            // Rounded up, so a wait never returns just short of its deadline.
            (left.as_micros().div_ceil(1000)).min(i32::MAX as u128) as c_int
        }
    }
}

fn until_of(ms: c_int) -> Option<Instant> {
    (ms >= 0).then(|| Instant::now() + Duration::from_millis(ms as u64))
}

// ---------------------------------------------------------------------------------------
// poll, ppoll, select, pselect

/// poll over `fds` as the program sees it: sockets with a handshake in progress wait for
/// what the handshake needs, and are reported only when it has ended.
fn poll_driving(
    fds_in: &mut [pollfd],
    until: Option<Instant>,
    wait: impl Fn(&mut [pollfd], c_int) -> c_int,
) -> c_int {
    let mut mine: Vec<pollfd> = fds_in.to_vec();
    loop {
        let (pending, queued, deadline): (Vec<bool>, Vec<bool>, Option<Instant>) = {
            let table = fds::lock();
            let pending = fds_in
                .iter()
                .map(|p| matches!(table.state.get(&p.fd), Some(FdState::Pending(_))))
                .collect();
            let queued = fds_in
                .iter()
                .map(|p| p.events & libc::POLLIN != 0 && table.has_queued(p.fd))
                .collect();
            // Only this call's handshakes: another thread's overdue one is its to fail.
            let deadline = fds_in
                .iter()
                .filter_map(|p| match table.state.get(&p.fd) {
                    Some(FdState::Pending(h)) => Some(h.deadline),
                    _ => None,
                })
                .min();
            (pending, queued, deadline)
        };
        let tunnels: Vec<Option<i32>> = {
            let table = fds::lock();
            fds_in
                .iter()
                .map(|p| {
                    (p.events & libc::POLLIN != 0)
                        .then(|| table.tunnel_of(p.fd))
                        .flatten()
                })
                .collect()
        };
        let any_queued = queued.iter().any(|q| *q);
        let any_tunnel = tunnels.iter().any(Option::is_some);
        if !pending.iter().any(|p| *p) && !any_queued && !any_tunnel {
            return wait(fds_in, wait_ms(until, None));
        }
        for (i, p) in fds_in.iter().enumerate() {
            mine[i] = *p;
            if pending[i] {
                // Both: a handshake step may want either; the step decides.
                mine[i].events = libc::POLLIN | libc::POLLOUT;
                let table = fds::lock();
                if let Some(FdState::Pending(_)) = table.state.get(&p.fd) {
                    mine[i].events = want_of(&table, p.fd);
                }
            }
        }
        // A tunnel's connection is waited on beside the program's UDP socket.
        mine.truncate(fds_in.len());
        let extra: Vec<(usize, i32)> = tunnels
            .iter()
            .enumerate()
            .filter_map(|(i, t)| t.map(|c| (i, c)))
            .collect();
        mine.extend(extra.iter().map(|&(_, c)| pollfd {
            fd: c,
            events: libc::POLLIN,
            revents: 0,
        }));
        // Notices and frames already read are ready now: look at the rest without waiting.
        let ms = if any_queued {
            0
        } else {
            wait_ms(until, deadline)
        };
        let r = wait(&mut mine, ms);
        if r < 0 {
            return r;
        }
        let mut ready = 0;
        let mut table = fds::lock();
        for (k, &(i, _)) in extra.iter().enumerate() {
            if mine[fds_in.len() + k].revents != 0 {
                mine[i].revents |= libc::POLLIN;
            }
        }
        for (i, p) in fds_in.iter_mut().enumerate() {
            p.revents = mine[i].revents;
            if queued[i] {
                p.revents |= libc::POLLIN;
            }
            if pending[i] {
                // Ready or not, a step may have a deadline to meet.
                p.revents = match advance(&mut table, p.fd) {
                    None => 0,
                    Some(Ok(())) => p.events & libc::POLLOUT,
                    Some(Err(_)) => (p.events & libc::POLLOUT) | libc::POLLERR,
                };
            }
            if p.revents != 0 {
                ready += 1;
            }
        }
        drop(table);
        if ready > 0 || until.is_some_and(|u| Instant::now() >= u) {
            return ready;
        }
    }
}

/// What a pending socket's handshake waits for (POLLOUT at first).
fn want_of(table: &fds::Fds, fd: c_int) -> i16 {
    match table.state.get(&fd) {
        Some(FdState::Pending(p)) => p.want(),
        _ => libc::POLLOUT,
    }
}

/// # Safety
/// As poll(2).
#[no_mangle]
pub unsafe extern "C" fn poll(fds_ptr: *mut pollfd, nfds: nfds_t, timeout: c_int) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().poll)(fds_ptr, nfds, timeout) };
    if !fds::any_pending() || fds_ptr.is_null() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: poll's contract: `nfds` valid entries.
            let list = unsafe { std::slice::from_raw_parts_mut(fds_ptr, nfds as usize) };
            poll_driving(list, until_of(timeout), |l, ms| {
                // SAFETY: a valid list of `l.len()` entries.
                unsafe { (real().poll)(l.as_mut_ptr(), l.len() as nfds_t, ms) }
            })
        },
        direct,
    )
}

/// # Safety
/// As ppoll(2).
#[no_mangle]
pub unsafe extern "C" fn ppoll(
    fds_ptr: *mut pollfd,
    nfds: nfds_t,
    tmo: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().ppoll)(fds_ptr, nfds, tmo, sigmask) };
    if !fds::any_pending() || fds_ptr.is_null() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: ppoll's contract.
            let list = unsafe { std::slice::from_raw_parts_mut(fds_ptr, nfds as usize) };
            // SAFETY: a non-null timeout is valid to read.
            let until = unsafe { tmo.as_ref() }.map(|t| {
                Instant::now()
                    + Duration::new(
                        t.tv_sec.max(0) as u64,
                        t.tv_nsec.clamp(0, 999_999_999) as u32,
                    )
            });
            poll_driving(list, until, |l, ms| {
                let t = (ms >= 0).then(|| timespec {
                    tv_sec: libc::time_t::from(ms / 1000),
                    tv_nsec: libc::c_long::from(ms % 1000) * 1_000_000,
                });
                let tp = t
                    .as_ref()
                    .map_or(std::ptr::null(), |t| t as *const timespec);
                // SAFETY: valid list, timeout and the program's mask.
                unsafe { (real().ppoll)(l.as_mut_ptr(), l.len() as nfds_t, tp, sigmask) }
            })
        },
        direct,
    )
}

/// Bit `fd` of a select set (an array of 64-bit words, as glibc lays out fd_set).
///
/// # Safety
/// `set` must cover at least `fd + 1` bits.
unsafe fn bit(set: *mut fd_set, fd: c_int) -> bool {
    let words = set.cast::<u64>();
    // SAFETY: within the caller's set.
    unsafe { *words.add(fd as usize / 64) & (1u64 << (fd % 64)) != 0 }
}

/// Sets bit `fd` of a select set.
///
/// # Safety
/// As `bit`.
unsafe fn set_bit(set: *mut fd_set, fd: c_int) {
    let words = set.cast::<u64>();
    // SAFETY: within the caller's set.
    unsafe { *words.add(fd as usize / 64) |= 1u64 << (fd % 64) };
}

/// Clears the first `n` bits of a select set (the words holding them: what select itself
/// may write), never the whole FD_SETSIZE a program's smaller set would not hold.
///
/// # Safety
/// `set` must cover at least `n` bits, rounded up to a word.
unsafe fn clear_bits(set: *mut fd_set, n: c_int) {
    let words = (n.max(0) as usize).div_ceil(64);
    // SAFETY: within the caller's set.
    unsafe { std::ptr::write_bytes(set.cast::<u64>(), 0, words) };
}

/// select as poll: the sets become a poll list and back.
///
/// # Safety
/// The sets must be null or valid for `nfds` descriptors.
unsafe fn select_driving(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    until: Option<Instant>,
    wait: impl Fn(&mut [pollfd], c_int) -> c_int,
) -> c_int {
    let n = nfds.max(0);
    let mut list = Vec::new();
    let isset = |set: *mut fd_set, fd: c_int| {
        // SAFETY: the program's set covers at least its first `nfds` bits.
        !set.is_null() && unsafe { bit(set, fd) }
    };
    for fd in 0..n {
        let mut events = 0;
        if isset(r, fd) {
            events |= libc::POLLIN;
        }
        if isset(w, fd) {
            events |= libc::POLLOUT;
        }
        if isset(e, fd) {
            events |= libc::POLLPRI;
        }
        if events != 0 {
            list.push(pollfd {
                fd,
                events,
                revents: 0,
            });
        }
    }
    let got = poll_driving(&mut list, until, wait);
    if got < 0 {
        return got;
    }
    for set in [r, w, e] {
        if !set.is_null() {
            // SAFETY: only the program's first `nfds` bits (its set may be no larger).
            unsafe { clear_bits(set, n) };
        }
    }
    let mut count = 0;
    for p in &list {
        let bad = p.revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0;
        // SAFETY: bits of the program's sets for a descriptor below nfds it listed.
        unsafe {
            if !r.is_null()
                && p.events & libc::POLLIN != 0
                && (p.revents & libc::POLLIN != 0 || bad)
            {
                set_bit(r, p.fd);
                count += 1;
            }
            if !w.is_null()
                && p.events & libc::POLLOUT != 0
                && (p.revents & libc::POLLOUT != 0 || bad)
            {
                set_bit(w, p.fd);
                count += 1;
            }
            if !e.is_null() && p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0 {
                set_bit(e, p.fd);
                count += 1;
            }
        }
    }
    count
}

fn plain_poll(l: &mut [pollfd], ms: c_int) -> c_int {
    // SAFETY: a valid list.
    unsafe { (real().poll)(l.as_mut_ptr(), l.len() as nfds_t, ms) }
}

/// # Safety
/// As select(2).
#[no_mangle]
pub unsafe extern "C" fn select(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    tmo: *mut timeval,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().select)(nfds, r, w, e, tmo) };
    if !fds::any_pending() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: a non-null timeout is valid to read.
            let until = unsafe { tmo.as_ref() }.map(|t| {
                Instant::now()
                    + Duration::from_micros(
                        t.tv_sec.max(0) as u64 * 1_000_000 + t.tv_usec.max(0) as u64,
                    )
            });
            // SAFETY: select's contract on the sets.
            unsafe { select_driving(nfds, r, w, e, until, plain_poll) }
        },
        direct,
    )
}

/// # Safety
/// As pselect(2).
#[no_mangle]
pub unsafe extern "C" fn pselect(
    nfds: c_int,
    r: *mut fd_set,
    w: *mut fd_set,
    e: *mut fd_set,
    tmo: *const timespec,
    sigmask: *const sigset_t,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().pselect)(nfds, r, w, e, tmo, sigmask) };
    if !fds::any_pending() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: a non-null timeout is valid to read.
            let until = unsafe { tmo.as_ref() }.map(|t| {
                Instant::now()
                    + Duration::new(
                        t.tv_sec.max(0) as u64,
                        t.tv_nsec.clamp(0, 999_999_999) as u32,
                    )
            });
            // SAFETY: select's contract on the sets.
            unsafe {
                select_driving(nfds, r, w, e, until, |l, ms| {
                    let t = (ms >= 0).then(|| timespec {
                        tv_sec: libc::time_t::from(ms / 1000),
                        tv_nsec: libc::c_long::from(ms % 1000) * 1_000_000,
                    });
                    let tp = t
                        .as_ref()
                        .map_or(std::ptr::null(), |t| t as *const timespec);
                    (real().ppoll)(l.as_mut_ptr(), l.len() as nfds_t, tp, sigmask)
                })
            }
        },
        direct,
    )
}

// ---------------------------------------------------------------------------------------
// epoll

/// # Safety
/// As epoll_ctl(2).
#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(
    epfd: c_int,
    op: c_int,
    fd: c_int,
    event: *mut epoll_event,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().epoll_ctl)(epfd, op, fd, event) };
    if crate::plan::loaded().is_none() {
        return direct();
    }
    guarded(
        || {
            let mut table = fds::lock();
            // SAFETY: a non-null event is valid to read.
            let reg = unsafe { event.as_ref() }.map(|e| Registration {
                events: e.events,
                data: e.u64,
            });
            let pending = matches!(table.state.get(&fd), Some(FdState::Pending(_)));
            let r = match (op, reg, pending) {
                (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, Some(reg), true) => {
                    // The handshake keeps the registration until it ends.
                    let mut ev = epoll_event {
                        events: epoll_events(want_of(&table, fd)),
                        u64: reg.data,
                    };
                    // SAFETY: a valid event.
                    unsafe { (real().epoll_ctl)(epfd, op, fd, &mut ev) }
                }
                _ => direct(),
            };
            if r == 0 {
                match (op, reg) {
                    (libc::EPOLL_CTL_ADD | libc::EPOLL_CTL_MOD, Some(reg)) => {
                        table.epoll.insert((epfd, fd), reg);
                    }
                    (libc::EPOLL_CTL_DEL, _) => {
                        table.epoll.remove(&(epfd, fd));
                    }
                    _ => {}
                }
                // A tunnel's connection mirrors its UDP socket's registrations.
                if let Some(control) = table.tunnel_of(fd) {
                    mirror_registration(epfd, op, control, reg);
                }
            }
            r
        },
        direct,
    )
}

/// epoll_wait as the program sees it: events of sockets with a handshake in progress move
/// the handshake on and are reported only when it has ended.
///
/// # Safety
/// `events` must be valid for `max` entries.
unsafe fn epoll_driving(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    until: Option<Instant>,
    wait: impl Fn(c_int) -> c_int,
) -> c_int {
    loop {
        let (deadline, queued) = {
            let table = fds::lock();
            (earliest_deadline(&table), table.queued_registrations(epfd))
        };
        // Notices already read are ready now: look at the rest without waiting.
        let ms = if queued.is_empty() {
            wait_ms(until, deadline)
        } else {
            0
        };
        let n = wait(ms);
        if n < 0 {
            return n;
        }
        // SAFETY: the kernel filled `n` entries of the program's array.
        let list = unsafe { std::slice::from_raw_parts_mut(events, max.max(0) as usize) };
        let mut table = fds::lock();
        let mut kept = 0usize;
        for i in 0..n as usize {
            let ev = list[i];
            let data = ev.u64;
            let fd = table.pending_by_data(epfd, data);
            let out = match fd {
                None => Some(ev.events),
                Some(fd) => {
                    let wanted = table.epoll.get(&(epfd, fd)).map_or(0, |r| r.events);
                    match advance(&mut table, fd) {
                        None => None,
                        Some(Ok(())) => Some(wanted & libc::EPOLLOUT as u32).filter(|e| *e != 0),
                        Some(Err(_)) => Some(
                            (wanted & libc::EPOLLOUT as u32)
                                | libc::EPOLLERR as u32
                                | libc::EPOLLHUP as u32,
                        ),
                    }
                }
            };
            if let Some(events) = out {
                list[kept] = epoll_event { events, u64: data };
                kept += 1;
            }
        }
        for reg in queued {
            let wanted = reg.events & libc::EPOLLIN as u32;
            let listed = list[..kept].iter().any(|e| e.u64 == reg.data);
            if wanted != 0 && !listed && kept < list.len() {
                list[kept] = epoll_event {
                    events: wanted,
                    u64: reg.data,
                };
                kept += 1;
            }
        }
        // Handshakes past their deadline fail even if their socket said nothing.
        let overdue: Vec<i32> = table
            .state
            .iter()
            .filter_map(|(fd, s)| match s {
                FdState::Pending(p) if Instant::now() >= p.deadline => Some(*fd),
                _ => None,
            })
            .collect();
        for fd in overdue {
            let reg = table.epoll.get(&(epfd, fd)).copied();
            if advance(&mut table, fd).is_some() {
                if let Some(reg) = reg {
                    if kept < list.len() {
                        list[kept] = epoll_event {
                            events: (reg.events & libc::EPOLLOUT as u32)
                                | libc::EPOLLERR as u32
                                | libc::EPOLLHUP as u32,
                            u64: reg.data,
                        };
                        kept += 1;
                    }
                }
            }
        }
        drop(table);
        if kept > 0 || until.is_some_and(|u| Instant::now() >= u) {
            return kept as c_int;
        }
    }
}

/// # Safety
/// As epoll_wait(2).
#[no_mangle]
pub unsafe extern "C" fn epoll_wait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().epoll_wait)(epfd, events, max, timeout) };
    if !fds::any_pending() || events.is_null() || max <= 0 {
        return direct();
    }
    guarded(
        // SAFETY: epoll_wait's contract on `events`.
        || unsafe {
            epoll_driving(epfd, events, max, until_of(timeout), |ms| {
                (real().epoll_wait)(epfd, events, max, ms)
            })
        },
        direct,
    )
}

/// # Safety
/// As epoll_pwait(2).
#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(
    epfd: c_int,
    events: *mut epoll_event,
    max: c_int,
    timeout: c_int,
    sigmask: *const sigset_t,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().epoll_pwait)(epfd, events, max, timeout, sigmask) };
    if !fds::any_pending() || events.is_null() || max <= 0 {
        return direct();
    }
    guarded(
        // SAFETY: epoll_pwait's contract on `events`.
        || unsafe {
            epoll_driving(epfd, events, max, until_of(timeout), |ms| {
                (real().epoll_pwait)(epfd, events, max, ms, sigmask)
            })
        },
        direct,
    )
}

// ---------------------------------------------------------------------------------------
// socket state: SO_ERROR, getpeername, close, dup2, dup3

/// # Safety
/// As getsockopt(2).
#[no_mangle]
pub unsafe extern "C" fn getsockopt(
    fd: c_int,
    level: c_int,
    name: c_int,
    value: *mut c_void,
    len: *mut socklen_t,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().getsockopt)(fd, level, name, value, len) };
    if level != libc::SOL_SOCKET || name != libc::SO_ERROR || value.is_null() || len.is_null() {
        return direct();
    }
    guarded(
        || {
            let mut table = fds::lock();
            let error = match table.state.get(&fd) {
                Some(FdState::Pending(_)) => match advance(&mut table, fd) {
                    None | Some(Ok(())) => 0,
                    Some(Err(e)) => {
                        table.forget(fd);
                        e
                    }
                },
                Some(FdState::Failed { errno, .. }) => {
                    let e = *errno;
                    table.forget(fd);
                    e
                }
                _ => return direct(),
            };
            // SAFETY: the program's buffer, at least as long as it says.
            unsafe {
                if (*len as usize) >= std::mem::size_of::<c_int>() {
                    std::ptr::write_unaligned(value as *mut c_int, error);
                    *len = std::mem::size_of::<c_int>() as socklen_t;
                }
            }
            0
        },
        direct,
    )
}

/// # Safety
/// As getpeername(2).
#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().getpeername)(fd, addr, len) };
    if addr.is_null() || len.is_null() {
        return direct();
    }
    guarded(
        || {
            let target = match fds::lock().state.get(&fd) {
                Some(FdState::Proxied { target, .. }) => *target,
                Some(FdState::Udp(a)) if a.peer.is_some() => a.peer.unwrap_or(a.relay),
                Some(FdState::Pending(_))
                | Some(FdState::Failed { .. })
                | Some(FdState::Udp(_))
                | Some(FdState::Listener(_)) => {
                    set_errno(libc::ENOTCONN);
                    return -1;
                }
                None => return direct(),
            };
            let family =
                sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
            // SAFETY: getpeername's contract on the buffer.
            unsafe { write_sockaddr(target, family, addr, len) };
            0
        },
        direct,
    )
}

fn forget(fd: c_int) {
    if crate::plan::loaded().is_some() && !fds::held_here() {
        fds::lock().forget(fd);
    }
}

/// # Safety
/// As close(2).
#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let _ = catch_unwind(|| forget(fd));
    // SAFETY: the program's descriptor.
    unsafe { (real().close)(fd) }
}

/// A duplicate `new` of `old`: a copy of a socket connected through a proxy says the same
/// peer.
fn duplicated(old: c_int, new: c_int) {
    if new < 0 || old == new || fds::held_here() {
        return;
    }
    let _ = catch_unwind(|| {
        if crate::plan::loaded().is_none() {
            return;
        }
        let mut table = fds::lock();
        if let Some(FdState::Proxied { target, local }) = table.state.get(&old) {
            let (target, local) = (*target, *local);
            table.set(new, FdState::Proxied { target, local });
        }
    });
}

/// # Safety
/// As dup(2).
#[no_mangle]
pub unsafe extern "C" fn dup(old: c_int) -> c_int {
    type DupFn = unsafe extern "C" fn(c_int) -> c_int;
    let real_dup = next_fn!(c"dup", DupFn);
    // SAFETY: the program's descriptor.
    let new = unsafe { real_dup(old) };
    duplicated(old, new);
    new
}

type FcntlFn = unsafe extern "C" fn(c_int, c_int, ...) -> c_int;

/// Runs the C library's fcntl (`real`), noting a duplicated socket's state for the copy.
///
/// # Safety
/// As fcntl(2).
unsafe fn fcntl_through(real: FcntlFn, fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int {
    // SAFETY: the program's arguments.
    let r = unsafe { real(fd, cmd, arg) };
    if cmd == libc::F_DUPFD || cmd == libc::F_DUPFD_CLOEXEC {
        duplicated(fd, r);
    }
    r
}

/// fcntl(2), for F_DUPFD and F_DUPFD_CLOEXEC (how Python and others duplicate sockets); every
/// other command goes straight to the C library's, without touching the shim's state.
/// Defined with one argument after the command rather than as a variadic function, as
/// `syscall` is (the argument is passed the same way on the platforms this shim is built
/// for).
///
/// # Safety
/// As fcntl(2).
#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int {
    let real = next_fn!(c"fcntl", FcntlFn);
    // SAFETY: as fcntl.
    unsafe { fcntl_through(real, fd, cmd, arg) }
}

/// fcntl64: the name programs built with 64-bit file offsets call fcntl by.
///
/// # Safety
/// As fcntl(2).
#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: libc::c_long) -> c_int {
    let real = next_fn!(c"fcntl64", FcntlFn);
    // SAFETY: as fcntl.
    unsafe { fcntl_through(real, fd, cmd, arg) }
}

/// # Safety
/// As dup2(2).
#[no_mangle]
pub unsafe extern "C" fn dup2(old: c_int, new: c_int) -> c_int {
    if old != new {
        let _ = catch_unwind(|| forget(new));
    }
    // SAFETY: the program's descriptors.
    unsafe { (real().dup2)(old, new) }
}

/// # Safety
/// As dup3(2).
#[no_mangle]
pub unsafe extern "C" fn dup3(old: c_int, new: c_int, flags: c_int) -> c_int {
    let _ = catch_unwind(|| forget(new));
    // SAFETY: the program's descriptors.
    unsafe { (real().dup3)(old, new, flags) }
}

// ---------------------------------------------------------------------------------------
// listening sockets: listen, accept, accept4, getsockname

type ListenFn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type AcceptFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t, c_int) -> c_int;
type GetsocknameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;

/// # Safety
/// As listen(2).
#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let real_listen = next_fn!(c"listen", ListenFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_listen(fd, backlog) };
    guarded(
        || listen_through(fd, backlog).unwrap_or_else(direct),
        direct,
    )
}

/// LISTEN on the proxy for a TCP socket bound to a non-loopback address; `None` to listen
/// here.
fn listen_through(fd: c_int, backlog: c_int) -> Option<c_int> {
    let Ok(Some(plan)) = plan() else {
        return None;
    };
    if sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_STREAM) {
        return None;
    }
    if matches!(fds::lock().state.get(&fd), Some(FdState::Listener(_))) {
        return Some(0); // listen again: the backlog stays as granted
    }
    let getsockname = next_fn!(c"getsockname", GetsocknameFn);
    // SAFETY: all-zero storage and its length for getsockname to fill.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
    // SAFETY: a valid buffer.
    if unsafe {
        getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } != 0
    {
        return None;
    }
    // SAFETY: filled by getsockname for `len` bytes.
    let local = unsafe { read_sockaddr((&storage as *const libc::sockaddr_storage).cast(), len) }?;
    if local.ip().to_canonical().is_loopback() {
        return None;
    }
    let server = plan.listen_server()?;
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    // Connections over the backlog are refused at once, not held back as by a kernel
    // listener: the small backlogs programs ask for would refuse bursts.
    let backlog = backlog.max(128);
    match crate::listening::Listening::open(
        fd,
        family,
        server,
        local.port(),
        backlog,
        plan.connect_timeout,
    ) {
        Ok(listening) => {
            say(&format!("listening on {} for {local}", listening.public));
            fds::lock().set(fd, FdState::Listener(Some(Box::new(listening))));
            Some(0)
        }
        Err(e) => {
            say(&format!(
                "cannot listen through the proxy {} for {local}: {}",
                server.describe(),
                std::io::Error::from_raw_os_error(e)
            ));
            set_errno(e);
            Some(-1)
        }
    }
}

/// accept on a listener through the proxy; `None` for any other socket.
///
/// # Safety
/// `addr` and `len` as for accept(2).
unsafe fn accept_through(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> Option<c_int> {
    let Ok(Some(_)) = plan() else {
        return None;
    };
    // Taken out of the table while it waits, so that other threads are not held up.
    let mut listening = loop {
        let mut table = fds::lock();
        match table.state.get_mut(&fd) {
            Some(FdState::Listener(slot)) => match slot.take() {
                Some(l) => break l,
                // Another thread's accept has it: wait for the socket like it does.
                None => {
                    drop(table);
                    let mut p = pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { (real().poll)(&mut p, 1, 100) };
                }
            },
            _ => return None,
        }
    };
    let got = listening.accept(fd, flags);
    let public = listening.public;
    {
        let mut table = fds::lock();
        if listening.spent() {
            // A BIND's one connection is taken: the descriptor is an ordinary listener again.
            table.forget(fd);
        } else if let Some(FdState::Listener(slot)) = table.state.get_mut(&fd) {
            *slot = Some(listening);
        }
        if let Ok((accepted, peer)) = got {
            table.set(
                accepted,
                FdState::Proxied {
                    target: peer,
                    local: Some(public),
                },
            );
        }
    }
    Some(match got {
        Ok((accepted, peer)) => {
            if !addr.is_null() && !len.is_null() {
                let family = sockopt_int(accepted, libc::SOL_SOCKET, libc::SO_DOMAIN)
                    .unwrap_or(libc::AF_INET);
                // SAFETY: accept's contract on the buffer.
                unsafe { write_sockaddr(peer, family, addr, len) };
            }
            accepted
        }
        Err(e) => {
            set_errno(e);
            -1
        }
    })
}

/// # Safety
/// As accept(2).
#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real_accept4 = next_fn!(c"accept4", AcceptFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_accept4(fd, addr, len, 0) };
    // SAFETY: the program's arguments.
    guarded(
        || unsafe { accept_through(fd, addr, len, 0) }.unwrap_or_else(direct),
        direct,
    )
}

/// # Safety
/// As accept4(2).
#[no_mangle]
pub unsafe extern "C" fn accept4(
    fd: c_int,
    addr: *mut sockaddr,
    len: *mut socklen_t,
    flags: c_int,
) -> c_int {
    let real_accept4 = next_fn!(c"accept4", AcceptFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_accept4(fd, addr, len, flags) };
    // SAFETY: the program's arguments.
    guarded(
        || unsafe { accept_through(fd, addr, len, flags) }.unwrap_or_else(direct),
        direct,
    )
}

/// # Safety
/// As getsockname(2).
#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut sockaddr, len: *mut socklen_t) -> c_int {
    let real_getsockname = next_fn!(c"getsockname", GetsocknameFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_getsockname(fd, addr, len) };
    if addr.is_null() || len.is_null() {
        return direct();
    }
    guarded(
        || {
            let public = match fds::lock().state.get(&fd) {
                Some(FdState::Listener(Some(l))) => l.public,
                Some(FdState::Proxied {
                    local: Some(local), ..
                }) => *local,
                _ => return direct(),
            };
            let family =
                sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
            // SAFETY: getsockname's contract on the buffer.
            unsafe { write_sockaddr(public, family, addr, len) };
            0
        },
        direct,
    )
}

// ---------------------------------------------------------------------------------------
// UDP: sendto, sendmsg, sendmmsg, recvfrom, recvmsg, recvmmsg, send, recv, read, write

/// The proxy a datagram to `dest` goes through, if any; `Err` to refuse it.
fn udp_way(dest: SocketAddr) -> Result<Option<&'static Server>, c_int> {
    let plan = match active_plan() {
        Ok(Some(p)) => p,
        Ok(None) => return Ok(None),
        Err(()) if dest.ip().to_canonical().is_loopback() => return Ok(None),
        Err(()) => return Err(libc::ENETUNREACH),
    };
    let ip = dest.ip().to_canonical();
    let way = match names::name_of(ip) {
        Some(name) => plan.for_name(&name, dest.port()),
        None if names::is_placeholder(ip) => return Err(libc::EHOSTUNREACH),
        None => plan.for_ip(ip, dest.port()),
    };
    match way {
        Way::Proxy(s) => Ok(Some(s)),
        Way::Direct if names::name_of(ip).is_some() => Err(libc::EHOSTUNREACH),
        Way::Direct => Ok(None),
    }
}

/// Registers (or changes, or removes) a tunnel's connection in `epfd` as its UDP socket is,
/// with the socket's events and data: the program reads a frame's arrival as its socket's.
fn mirror_registration(epfd: c_int, op: c_int, control: c_int, reg: Option<Registration>) {
    let mut ev = epoll_event {
        events: reg.map_or(0, |r| r.events & !(libc::EPOLLOUT as u32)),
        u64: reg.map_or(0, |r| r.data),
    };
    // SAFETY: a valid epoll descriptor and event.
    let r = unsafe { (real().epoll_ctl)(epfd, op, control, &mut ev) };
    if r != 0 && op == libc::EPOLL_CTL_MOD {
        // Not there yet (registered before the tunnel existed): add it.
        // SAFETY: as above.
        unsafe { (real().epoll_ctl)(epfd, libc::EPOLL_CTL_ADD, control, &mut ev) };
    }
}

/// Makes sure `fd` has an association through `server`.
fn ensure_association(fd: c_int, server: &Server) -> Result<(), c_int> {
    if matches!(fds::lock().state.get(&fd), Some(FdState::Udp(_))) {
        return Ok(());
    }
    let Ok(Some(plan)) = plan() else {
        return Err(libc::ENETUNREACH);
    };
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    let association = crate::udp::Association::open(fd, family, server, plan.connect_timeout)?;
    let mut table = fds::lock();
    if matches!(table.state.get(&fd), Some(FdState::Udp(_))) {
        association.close(); // another thread was first
    } else {
        let tunnel = association.tunnel.is_some().then_some(association.control);
        table.set(fd, FdState::Udp(Box::new(association)));
        if let Some(control) = tunnel {
            for (epfd, reg) in table.registrations(fd) {
                mirror_registration(epfd, libc::EPOLL_CTL_ADD, control, Some(reg));
            }
        }
    }
    Ok(())
}

/// connect() on a UDP socket to a destination through a proxy: the peer is remembered and
/// the socket connected to the relay; `None` to connect directly.
fn udp_connect(fd: c_int, target: SocketAddr) -> Option<c_int> {
    let server = match udp_way(target) {
        Ok(Some(s)) => s,
        Ok(None) => {
            // Direct from now on: a previous association's peer no longer applies.
            if let Some(FdState::Udp(a)) = fds::lock().state.get_mut(&fd) {
                a.peer = None;
            }
            return None;
        }
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    if let Err(e) = ensure_association(fd, server) {
        set_errno(e);
        return Some(-1);
    }
    let relay = {
        let mut table = fds::lock();
        let Some(FdState::Udp(a)) = table.state.get_mut(&fd) else {
            set_errno(libc::EBADF);
            return Some(-1);
        };
        a.peer = Some(target);
        if a.tunnel.is_some() {
            return Some(0); // the tunnel carries it; the socket itself stays as it was
        }
        a.relay
    };
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    let (storage, len) = to_storage(relay, family);
    // SAFETY: a valid address.
    Some(unsafe { (real().connect)(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })
}

type SendtoFn =
    unsafe extern "C" fn(c_int, *const c_void, usize, c_int, *const sockaddr, socklen_t) -> isize;
type RecvfromFn =
    unsafe extern "C" fn(c_int, *mut c_void, usize, c_int, *mut sockaddr, *mut socklen_t) -> isize;

/// Sends `payload` from UDP socket `fd` to `dest` (`None`: its connected peer) through the
/// proxy; `None` when the datagram is not the shim's (a direct one, or not UDP).
fn udp_send(fd: c_int, dest: Option<SocketAddr>, payload: &[u8], flags: c_int) -> Option<isize> {
    if crate::plan::loaded().is_none() && !fds::any_udp() {
        return None;
    }
    let dest = match dest {
        Some(d) => d,
        None => match fds::lock().state.get(&fd) {
            Some(FdState::Udp(a)) => a.peer?,
            _ => return None,
        },
    };
    if sockopt_int(fd, libc::SOL_SOCKET, libc::SO_TYPE) != Some(libc::SOCK_DGRAM) {
        return None;
    }
    let server = match udp_way(dest) {
        Ok(Some(s)) => s,
        Ok(None) => return None,
        Err(e) => {
            set_errno(e);
            return Some(-1);
        }
    };
    if let Err(e) = ensure_association(fd, server) {
        set_errno(e);
        return Some(-1);
    }
    let (framed, relay, tunnel) = {
        let mut table = fds::lock();
        let Some(FdState::Udp(a)) = table.state.get_mut(&fd) else {
            set_errno(libc::EBADF);
            return Some(-1);
        };
        let framed = match a.wrap(dest, payload) {
            Ok(f) => f,
            Err(e) => {
                set_errno(e);
                return Some(-1);
            }
        };
        let tunnel = a.tunnel.is_some().then(|| (a.control, a.io.clone()));
        (framed, a.relay, tunnel)
    };
    if let Some((control, io)) = tunnel {
        // SAFETY: fcntl on the program's descriptor.
        let nonblocking = flags & libc::MSG_DONTWAIT != 0
            || unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
        let _one_frame_at_a_time = io.lock().unwrap_or_else(|p| p.into_inner());
        return Some(match send_frame(control, &framed, nonblocking) {
            Ok(()) => payload.len() as isize,
            Err(e) => {
                set_errno(e);
                -1
            }
        });
    }
    let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
    let (storage, len) = to_storage(relay, family);
    let real_sendto = next_fn!(c"sendto", SendtoFn);
    // SAFETY: a valid buffer and address.
    let n = unsafe {
        real_sendto(
            fd,
            framed.as_ptr().cast(),
            framed.len(),
            flags,
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    Some(if n < 0 { n } else { payload.len() as isize })
}

/// Receives one datagram on UDP socket `fd` into `buf`: the payload length (the whole
/// datagram's with MSG_TRUNC) and its source as the program should see it; `None` when `fd`
/// has no association.
fn udp_recv(fd: c_int, buf: &mut [u8], flags: c_int) -> Option<(isize, Option<SocketAddr>, bool)> {
    if !fds::any_udp() {
        return None;
    }
    let (relay, tunnel) = match fds::lock().state.get(&fd) {
        Some(FdState::Udp(a)) => (a.relay, a.tunnel.is_some().then_some(a.control)),
        _ => return None,
    };
    if let Some(control) = tunnel {
        return Some(tunnel_recv(fd, control, buf, flags));
    }
    let real_recvfrom = next_fn!(c"recvfrom", RecvfromFn);
    // Room for the header in front of what the program asked for; the kernel tells the
    // datagram's whole length (MSG_TRUNC) when it is longer.
    let mut datagram = vec![0u8; buf.len() + 300];
    loop {
        // SAFETY: all-zero storage for the source address.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: valid buffers of their lengths.
        let n = unsafe {
            real_recvfrom(
                fd,
                datagram.as_mut_ptr().cast(),
                datagram.len(),
                flags | libc::MSG_TRUNC,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Some((n, None, false));
        }
        let full = n as usize;
        let n = full.min(datagram.len());
        // SAFETY: filled for `len` bytes.
        let from =
            unsafe { read_sockaddr((&storage as *const libc::sockaddr_storage).cast(), len) };
        let canon = |a: SocketAddr| SocketAddr::new(a.ip().to_canonical(), a.port());
        let (source, payload, whole) = if from.map(canon) == Some(canon(relay)) {
            let unwrapped = match fds::lock().state.get(&fd) {
                Some(FdState::Udp(a)) => a.unwrap(&datagram[..n]),
                _ => None,
            };
            match unwrapped {
                Some((source, at)) => (Some(source), &datagram[at..n], full - at),
                // A datagram the relay should not have sent: dropped, as the kernel would
                // (a peek takes it out first, or every peek would find it again).
                None => {
                    if flags & libc::MSG_PEEK != 0 {
                        // SAFETY: a valid buffer; the datagram is discarded.
                        unsafe {
                            real_recvfrom(
                                fd,
                                datagram.as_mut_ptr().cast(),
                                datagram.len(),
                                libc::MSG_DONTWAIT,
                                std::ptr::null_mut(),
                                std::ptr::null_mut(),
                            )
                        };
                    }
                    continue;
                }
            }
        } else {
            (from, &datagram[..n], full)
        };
        let copied = payload.len().min(buf.len());
        buf[..copied].copy_from_slice(&payload[..copied]);
        let truncated = whole > buf.len();
        let ret = if flags & libc::MSG_TRUNC != 0 {
            whole
        } else {
            copied
        };
        return Some((ret as isize, source, truncated));
    }
}

/// Writes one whole tunnel frame to the shim's connection `fd`. When the connection is full
/// a non-blocking socket gets EAGAIN before anything is written; once part of a frame is
/// written the rest follows, waiting if need be, and a connection that takes nothing for
/// 30 s is shut down (a half frame would corrupt every frame after it).
fn send_frame(fd: c_int, frame: &[u8], nonblocking: bool) -> Result<(), c_int> {
    let mut data = frame;
    while !data.is_empty() {
        // SAFETY: the unsent part of the frame.
        let n = unsafe {
            (real().send)(
                fd,
                data.as_ptr().cast(),
                data.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        };
        if n >= 0 {
            data = &data[n as usize..];
            continue;
        }
        match errno() {
            libc::EINTR => continue,
            libc::EAGAIN if nonblocking && data.len() == frame.len() => return Err(libc::EAGAIN),
            libc::EAGAIN => {
                let mut p = pollfd {
                    fd,
                    events: libc::POLLOUT,
                    revents: 0,
                };
                // SAFETY: one valid pollfd.
                if unsafe { (real().poll)(&mut p, 1, 30_000) } == 0 {
                    // SAFETY: the shim's own connection.
                    unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
                    return Err(libc::EPIPE);
                }
            }
            e => return Err(e),
        }
    }
    Ok(())
}

/// The next datagram of UDP socket `fd`'s tunnel (connection `control`), as `udp_recv`.
fn tunnel_recv(
    fd: c_int,
    control: c_int,
    buf: &mut [u8],
    flags: c_int,
) -> (isize, Option<SocketAddr>, bool) {
    // SAFETY: fcntl on the program's descriptor.
    let nonblocking = flags & libc::MSG_DONTWAIT != 0
        || unsafe { libc::fcntl(fd, libc::F_GETFL) } & libc::O_NONBLOCK != 0;
    let peek = flags & libc::MSG_PEEK != 0;
    let real_recvfrom = next_fn!(c"recvfrom", RecvfromFn);
    loop {
        let io = {
            let mut table = fds::lock();
            let Some(FdState::Udp(a)) = table.state.get_mut(&fd) else {
                set_errno(libc::EBADF);
                return (-1, None, false);
            };
            match a.next_frame(buf, peek) {
                Some(Ok((len, source))) => {
                    let truncated = len > buf.len();
                    let ret = if flags & libc::MSG_TRUNC != 0 {
                        len
                    } else {
                        len.min(buf.len())
                    };
                    return (ret as isize, Some(source), truncated);
                }
                Some(Err(e)) => {
                    set_errno(e);
                    return (-1, None, false);
                }
                None => {}
            }
            a.io.clone()
        };
        // Datagrams sent to the socket itself (from destinations it reaches directly).
        // SAFETY: all-zero storage for the source; the program's buffer.
        let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        let mut slen = std::mem::size_of::<libc::sockaddr_storage>() as socklen_t;
        // SAFETY: valid buffers of their lengths.
        let direct = unsafe {
            real_recvfrom(
                fd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                (flags | libc::MSG_DONTWAIT) & !libc::MSG_TRUNC | libc::MSG_TRUNC,
                (&mut storage as *mut libc::sockaddr_storage).cast(),
                &mut slen,
            )
        };
        if direct >= 0 {
            // SAFETY: filled for `slen` bytes.
            let source =
                unsafe { read_sockaddr((&storage as *const libc::sockaddr_storage).cast(), slen) };
            let full = direct as usize;
            let ret = if flags & libc::MSG_TRUNC != 0 {
                full
            } else {
                full.min(buf.len())
            };
            return (ret as isize, source, full > buf.len());
        }
        // One reader at a time on the tunnel: frames are appended in the order they came.
        let reader = io.lock().unwrap_or_else(|p| p.into_inner());
        let mut chunk = vec![0u8; 65_536 + 300];
        // SAFETY: a buffer of its own length.
        let n = unsafe {
            (real().recv)(
                control,
                chunk.as_mut_ptr().cast(),
                chunk.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n == 0 {
            set_errno(libc::ECONNRESET); // the proxy ended the tunnel
            return (-1, None, false);
        }
        if n < 0 {
            let e = errno();
            if e == libc::EINTR {
                continue;
            }
            if e != libc::EAGAIN {
                set_errno(e);
                return (-1, None, false);
            }
            if nonblocking {
                set_errno(libc::EAGAIN);
                return (-1, None, false);
            }
            drop(reader);
            // Either may bring the next datagram.
            let mut p = [
                pollfd {
                    fd: control,
                    events: libc::POLLIN,
                    revents: 0,
                },
                pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                },
            ];
            // SAFETY: two valid pollfds.
            unsafe { (real().poll)(p.as_mut_ptr(), 2, -1) };
            continue;
        }
        if let Some(FdState::Udp(a)) = fds::lock().state.get_mut(&fd) {
            if let Some(inbox) = a.tunnel.as_mut() {
                inbox.extend_from_slice(&chunk[..n as usize]);
            }
        }
    }
}

/// # Safety
/// As sendto(2).
#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    len: usize,
    flags: c_int,
    dest: *const sockaddr,
    dlen: socklen_t,
) -> isize {
    let real_sendto = next_fn!(c"sendto", SendtoFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_sendto(fd, buf, len, flags, dest, dlen) };
    if buf.is_null() || crate::plan::loaded().is_none() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: sendto's contract: `dest` valid for `dlen`, `buf` for `len`.
            let to = unsafe { read_sockaddr(dest, dlen) };
            if !dest.is_null() && to.is_none() {
                return direct();
            }
            // SAFETY: as above.
            let payload = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
            udp_send(fd, to, payload, flags).unwrap_or_else(direct)
        },
        direct,
    )
}

/// # Safety
/// As send(2).
#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, len: usize, flags: c_int) -> isize {
    // SAFETY: the program's arguments.
    unsafe { sendto(fd, buf, len, flags, std::ptr::null(), 0) }
}

/// # Safety
/// As write(2).
#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, len: usize) -> isize {
    type WriteFn = unsafe extern "C" fn(c_int, *const c_void, usize) -> isize;
    let real_write = next_fn!(c"write", WriteFn);
    if !fds::any_udp() || buf.is_null() {
        // SAFETY: the program's arguments.
        return unsafe { real_write(fd, buf, len) };
    }
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_write(fd, buf, len) };
    guarded(
        || {
            // SAFETY: write's contract.
            let payload = unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), len) };
            udp_send(fd, None, payload, 0).unwrap_or_else(direct)
        },
        direct,
    )
}

/// Writes a source address to a caller's buffer, if it gave one.
///
/// # Safety
/// As for recvfrom's address arguments.
unsafe fn give_source(
    fd: c_int,
    source: Option<SocketAddr>,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) {
    if let (Some(source), false, false) = (source, addr.is_null(), alen.is_null()) {
        let family = sockopt_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).unwrap_or(libc::AF_INET);
        // SAFETY: the caller's buffer.
        unsafe { write_sockaddr(source, family, addr, alen) };
    }
}

/// # Safety
/// As recvfrom(2).
#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> isize {
    let real_recvfrom = next_fn!(c"recvfrom", RecvfromFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_recvfrom(fd, buf, len, flags, addr, alen) };
    if !fds::any_udp() || buf.is_null() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: recvfrom's contract.
            let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
            match udp_recv(fd, out, flags) {
                None => direct(),
                Some((n, source, _)) => {
                    if n >= 0 {
                        // SAFETY: the program's address buffer.
                        unsafe { give_source(fd, source, addr, alen) };
                    }
                    n
                }
            }
        },
        direct,
    )
}

/// # Safety
/// As recv(2).
#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, len: usize, flags: c_int) -> isize {
    // SAFETY: the program's arguments.
    unsafe {
        recvfrom(
            fd,
            buf,
            len,
            flags,
            std::ptr::null_mut(),
            std::ptr::null_mut(),
        )
    }
}

/// # Safety
/// As read(2).
#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, len: usize) -> isize {
    type ReadFn = unsafe extern "C" fn(c_int, *mut c_void, usize) -> isize;
    let real_read = next_fn!(c"read", ReadFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_read(fd, buf, len) };
    if !fds::any_udp() || buf.is_null() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: read's contract.
            let out = unsafe { std::slice::from_raw_parts_mut(buf.cast::<u8>(), len) };
            udp_recv(fd, out, 0).map_or_else(direct, |(n, _, _)| n)
        },
        direct,
    )
}

/// The bytes of a message's iovecs, gathered.
///
/// # Safety
/// `msg`'s iovecs must be valid.
unsafe fn gather(msg: &libc::msghdr) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..msg.msg_iovlen {
        // SAFETY: the caller's iovec array of msg_iovlen entries.
        let iov = unsafe { &*msg.msg_iov.add(i) };
        if !iov.iov_base.is_null() {
            // SAFETY: each iovec is valid for its length.
            out.extend_from_slice(unsafe {
                std::slice::from_raw_parts(iov.iov_base.cast::<u8>(), iov.iov_len)
            });
        }
    }
    out
}

/// Spreads `data` over a message's iovecs.
///
/// # Safety
/// `msg`'s iovecs must be valid.
unsafe fn scatter(msg: &libc::msghdr, mut data: &[u8]) {
    for i in 0..msg.msg_iovlen {
        if data.is_empty() {
            break;
        }
        // SAFETY: the caller's iovec array.
        let iov = unsafe { &*msg.msg_iov.add(i) };
        let n = iov.iov_len.min(data.len());
        if n > 0 && !iov.iov_base.is_null() {
            // SAFETY: each iovec is valid for its length.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), iov.iov_base.cast::<u8>(), n) };
        }
        data = &data[n..];
    }
}

fn msg_capacity(msg: &libc::msghdr) -> usize {
    (0..msg.msg_iovlen)
        // SAFETY: the caller's iovec array.
        .map(|i| unsafe { (*msg.msg_iov.add(i)).iov_len })
        .sum()
}

/// sendmsg for a UDP socket through the proxy; `None` when not the shim's.
///
/// # Safety
/// `msg` valid as for sendmsg.
unsafe fn udp_sendmsg(fd: c_int, msg: &libc::msghdr, flags: c_int) -> Option<isize> {
    // SAFETY: sendmsg's contract on msg_name.
    let to = unsafe { read_sockaddr(msg.msg_name.cast(), msg.msg_namelen) };
    if !msg.msg_name.is_null() && to.is_none() {
        return None;
    }
    // SAFETY: sendmsg's contract on the iovecs.
    let payload = unsafe { gather(msg) };
    udp_send(fd, to, &payload, flags)
}

/// recvmsg for a UDP socket with an association; `None` when not the shim's.
///
/// # Safety
/// `msg` valid as for recvmsg.
unsafe fn udp_recvmsg(fd: c_int, msg: &mut libc::msghdr, flags: c_int) -> Option<isize> {
    let mut buf = vec![0u8; msg_capacity(msg)];
    let (n, source, truncated) = udp_recv(fd, &mut buf, flags)?;
    if n >= 0 {
        let copied = (n as usize).min(buf.len());
        // SAFETY: recvmsg's contract.
        unsafe {
            scatter(msg, &buf[..copied]);
            if !msg.msg_name.is_null() {
                give_source(fd, source, msg.msg_name.cast(), &mut msg.msg_namelen);
            }
        }
        msg.msg_controllen = 0;
        msg.msg_flags = if truncated { libc::MSG_TRUNC } else { 0 };
    }
    Some(n)
}

/// # Safety
/// As sendmsg(2).
#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    type SendmsgFn = unsafe extern "C" fn(c_int, *const libc::msghdr, c_int) -> isize;
    let real_sendmsg = next_fn!(c"sendmsg", SendmsgFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_sendmsg(fd, msg, flags) };
    if msg.is_null() || crate::plan::loaded().is_none() {
        return direct();
    }
    // SAFETY: sendmsg's contract.
    guarded(
        || unsafe { udp_sendmsg(fd, &*msg, flags) }.unwrap_or_else(direct),
        direct,
    )
}

/// # Safety
/// As recvmsg(2).
#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    type RecvmsgFn = unsafe extern "C" fn(c_int, *mut libc::msghdr, c_int) -> isize;
    let real_recvmsg = next_fn!(c"recvmsg", RecvmsgFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_recvmsg(fd, msg, flags) };
    if msg.is_null() || !fds::any_udp() {
        return direct();
    }
    // SAFETY: recvmsg's contract.
    guarded(
        || unsafe { udp_recvmsg(fd, &mut *msg, flags) }.unwrap_or_else(direct),
        direct,
    )
}

/// Runs `one` over a batch of messages as sendmmsg and recvmmsg count them: `None` when the
/// first is not the shim's (the C library takes the whole batch), else how many went
/// through, or -1 (errno set) when the first failed.
///
/// # Safety
/// `msgs` valid for `vlen` entries.
unsafe fn each_message(
    msgs: *mut libc::mmsghdr,
    vlen: libc::c_uint,
    mut one: impl FnMut(usize, &mut libc::msghdr) -> Option<isize>,
) -> Option<c_int> {
    let mut done = 0;
    for i in 0..vlen as usize {
        // SAFETY: the caller's array of vlen messages.
        let m = unsafe { &mut *msgs.add(i) };
        match one(i, &mut m.msg_hdr) {
            None if i == 0 => return None,
            None => break,
            Some(n) if n < 0 => return Some(if done > 0 { done } else { -1 }),
            Some(n) => {
                m.msg_len = n as libc::c_uint;
                done += 1;
            }
        }
    }
    Some(done)
}

/// # Safety
/// As sendmmsg(2).
#[no_mangle]
pub unsafe extern "C" fn sendmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    vlen: libc::c_uint,
    flags: c_int,
) -> c_int {
    type SendmmsgFn = unsafe extern "C" fn(c_int, *mut libc::mmsghdr, libc::c_uint, c_int) -> c_int;
    let real_sendmmsg = next_fn!(c"sendmmsg", SendmmsgFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_sendmmsg(fd, msgs, vlen, flags) };
    if msgs.is_null() || vlen == 0 || crate::plan::loaded().is_none() {
        return direct();
    }
    guarded(
        || {
            // SAFETY: the program's array of vlen messages; as sendmsg for each.
            unsafe { each_message(msgs, vlen, |_, m| udp_sendmsg(fd, m, flags)) }
                .unwrap_or_else(direct)
        },
        direct,
    )
}

/// # Safety
/// As recvmmsg(2).
#[no_mangle]
pub unsafe extern "C" fn recvmmsg(
    fd: c_int,
    msgs: *mut libc::mmsghdr,
    vlen: libc::c_uint,
    flags: c_int,
    tmo: *mut timespec,
) -> c_int {
    type RecvmmsgFn = unsafe extern "C" fn(
        c_int,
        *mut libc::mmsghdr,
        libc::c_uint,
        c_int,
        *mut timespec,
    ) -> c_int;
    let real_recvmmsg = next_fn!(c"recvmmsg", RecvmmsgFn);
    // SAFETY: the program's arguments.
    let direct = || unsafe { real_recvmmsg(fd, msgs, vlen, flags, tmo) };
    if msgs.is_null() || vlen == 0 || !fds::any_udp() {
        return direct();
    }
    guarded(
        || {
            // After the first, only what is already there (as the kernel's).
            let each = |i: usize, m: &mut libc::msghdr| {
                let f = if i == 0 {
                    flags & !libc::MSG_WAITFORONE
                } else {
                    flags | libc::MSG_DONTWAIT
                };
                // SAFETY: as recvmsg.
                unsafe { udp_recvmsg(fd, m, f) }
            };
            // SAFETY: the program's array of vlen messages.
            unsafe { each_message(msgs, vlen, each) }.unwrap_or_else(direct)
        },
        direct,
    )
}

/// syscall(2), for the calls programs make through it rather than through their C
/// functions (libuv sends and receives batches of datagrams so): connect, sendmmsg and
/// recvmmsg go to the hooks above; everything else to the C library's syscall.
///
/// Defined with six arguments after the number rather than as a variadic function (not
/// stable in Rust): on the platforms this shim is built for (x86-64 and AArch64 Linux) the
/// integer arguments of a variadic call are passed exactly as those of a non-variadic one.
///
/// # Safety
/// As syscall(2).
#[no_mangle]
pub unsafe extern "C" fn syscall(
    number: libc::c_long,
    a1: libc::c_long,
    a2: libc::c_long,
    a3: libc::c_long,
    a4: libc::c_long,
    a5: libc::c_long,
    a6: libc::c_long,
) -> libc::c_long {
    type SyscallFn = unsafe extern "C" fn(libc::c_long, ...) -> libc::c_long;
    let real_syscall = next_fn!(c"syscall", SyscallFn);
    // Only the calls the shim handles look at its state: everything else (the standard
    // library's own futex calls among them) goes straight through, so nothing here can wait
    // on a lock the caller holds.
    let ours = || crate::plan::loaded().is_some();
    // SAFETY: the program's arguments, as the kernel call it asked for takes them.
    unsafe {
        match number {
            libc::SYS_connect if ours() => {
                connect(a1 as c_int, a2 as *const sockaddr, a3 as socklen_t) as libc::c_long
            }
            libc::SYS_sendmmsg if ours() => sendmmsg(
                a1 as c_int,
                a2 as *mut libc::mmsghdr,
                a3 as libc::c_uint,
                a4 as c_int,
            ) as libc::c_long,
            libc::SYS_recvmmsg if ours() => recvmmsg(
                a1 as c_int,
                a2 as *mut libc::mmsghdr,
                a3 as libc::c_uint,
                a4 as c_int,
                a5 as *mut timespec,
            ) as libc::c_long,
            _ => real_syscall(number, a1, a2, a3, a4, a5, a6),
        }
    }
}

// ---------------------------------------------------------------------------------------
// name resolution

/// Addresses this shim allocated with getaddrinfo, so that freeaddrinfo frees them itself.
static OURS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// The port a getaddrinfo service names (a number, or a name from the services database).
fn service_port(service: *const c_char, socktype: c_int) -> Option<u16> {
    if service.is_null() {
        return Some(0);
    }
    // SAFETY: a NUL-terminated string by getaddrinfo's contract.
    let text = unsafe { std::ffi::CStr::from_ptr(service) }.to_str().ok()?;
    if let Ok(p) = text.parse::<u16>() {
        return Some(p);
    }
    let proto = if socktype == libc::SOCK_DGRAM {
        c"udp"
    } else {
        c"tcp"
    };
    // SAFETY: valid strings; the result is read at once.
    let ent = unsafe { libc::getservbyname(service, proto.as_ptr()) };
    // SAFETY: a non-null servent from the C library.
    unsafe { ent.as_ref() }.map(|e| u16::from_be(e.s_port as u16))
}

/// # Safety
/// As getaddrinfo(3).
#[no_mangle]
pub unsafe extern "C" fn getaddrinfo(
    node: *const c_char,
    service: *const c_char,
    hints: *const addrinfo,
    res: *mut *mut addrinfo,
) -> c_int {
    // SAFETY: the program's arguments.
    let direct = || unsafe { (real().getaddrinfo)(node, service, hints, res) };
    if node.is_null() || res.is_null() {
        return direct();
    }
    guarded(
        || {
            let Ok(Some(plan)) = plan() else {
                return direct();
            };
            // SAFETY: NUL-terminated by getaddrinfo's contract.
            let Ok(name) = (unsafe { std::ffi::CStr::from_ptr(node) }).to_str() else {
                return direct();
            };
            // SAFETY: a non-null hints is valid to read.
            let hints = unsafe { hints.as_ref() };
            let numeric = hints.is_some_and(|h| h.ai_flags & libc::AI_NUMERICHOST != 0);
            if numeric || name.parse::<IpAddr>().is_ok() || name.is_empty() {
                return direct();
            }
            let Some(port) = service_port(service, hints.map_or(0, |h| h.ai_socktype)) else {
                return libc::EAI_SERVICE;
            };
            if !plan.resolves_remotely(name, port) {
                return direct();
            }
            match build_list(name, port, hints) {
                Some(list) => {
                    OURS.lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(list as usize);
                    // SAFETY: `res` is valid to write.
                    unsafe { *res = list };
                    0
                }
                None => libc::EAI_MEMORY,
            }
        },
        direct,
    )
}

/// The list for `name`: one node per socket type, in order.
fn build_list(name: &str, port: u16, hints: Option<&addrinfo>) -> Option<*mut addrinfo> {
    let family = hints.map_or(libc::AF_UNSPEC, |h| h.ai_family);
    let ip: IpAddr = match family {
        libc::AF_INET6 => names::v6_for(name)?.into(),
        libc::AF_INET | libc::AF_UNSPEC => names::v4_for(name)?.into(),
        _ => return None,
    };
    let socktypes: Vec<c_int> = match hints.map_or(0, |h| h.ai_socktype) {
        0 => vec![libc::SOCK_STREAM, libc::SOCK_DGRAM],
        t => vec![t],
    };
    let canon = hints.is_some_and(|h| h.ai_flags & libc::AI_CANONNAME != 0);
    let fam = if ip.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    let (storage, len) = to_storage(SocketAddr::new(ip, port), fam);
    let mut head: *mut addrinfo = std::ptr::null_mut();
    for (i, socktype) in socktypes.iter().enumerate().rev() {
        // SAFETY: malloc'd blocks of the right sizes, fully written before they are linked.
        unsafe {
            let sa = libc::malloc(len as usize) as *mut sockaddr;
            let ai = libc::calloc(1, std::mem::size_of::<addrinfo>()) as *mut addrinfo;
            if sa.is_null() || ai.is_null() {
                free_list(head);
                return None;
            }
            std::ptr::copy_nonoverlapping(
                (&storage as *const libc::sockaddr_storage).cast::<u8>(),
                sa.cast::<u8>(),
                len as usize,
            );
            (*ai).ai_family = fam;
            (*ai).ai_socktype = *socktype;
            (*ai).ai_protocol = match *socktype {
                libc::SOCK_DGRAM => libc::IPPROTO_UDP,
                libc::SOCK_STREAM => libc::IPPROTO_TCP,
                _ => 0,
            };
            (*ai).ai_addrlen = len;
            (*ai).ai_addr = sa;
            if canon && i == 0 {
                if let Ok(c) = std::ffi::CString::new(name) {
                    (*ai).ai_canonname = libc::strdup(c.as_ptr());
                }
            }
            (*ai).ai_next = head;
            head = ai;
        }
    }
    Some(head)
}

/// Frees a list `build_list` made.
fn free_list(mut p: *mut addrinfo) {
    while !p.is_null() {
        // SAFETY: nodes and their parts were malloc'd by build_list.
        unsafe {
            let next = (*p).ai_next;
            libc::free((*p).ai_addr.cast());
            libc::free((*p).ai_canonname.cast());
            libc::free(p.cast());
            p = next;
        }
    }
}

/// # Safety
/// As freeaddrinfo(3).
#[no_mangle]
pub unsafe extern "C" fn freeaddrinfo(res: *mut addrinfo) {
    let ours = catch_unwind(|| {
        let mut list = OURS.lock().unwrap_or_else(|p| p.into_inner());
        match list.iter().position(|p| *p == res as usize) {
            Some(i) => {
                list.swap_remove(i);
                true
            }
            None => false,
        }
    })
    .unwrap_or(false);
    if ours {
        free_list(res);
    } else {
        // SAFETY: a list the C library made.
        unsafe { (real().freeaddrinfo)(res) }
    }
}

/// Storage for gethostbyname's answer (per thread, where glibc keeps one per process).
struct HostBuf {
    ent: hostent,
    name: std::ffi::CString,
    addr: [u8; 16],
    addr_list: [*mut c_char; 2],
    aliases: [*mut c_char; 1],
}

thread_local! {
    static HOST: std::cell::RefCell<Option<Box<HostBuf>>> = const { std::cell::RefCell::new(None) };
}

/// The placeholder hostent for `name` in `family`, or `None` to ask the C library.
fn placeholder_hostent(name: *const c_char, family: c_int) -> Option<*mut hostent> {
    let Ok(Some(plan)) = plan() else {
        return None;
    };
    // SAFETY: a NUL-terminated string by the function's contract.
    let text = unsafe { std::ffi::CStr::from_ptr(name) }.to_str().ok()?;
    if text.parse::<IpAddr>().is_ok() || !plan.resolves_remotely(text, 0) {
        return None;
    }
    let (bytes, len): ([u8; 16], usize) = match family {
        libc::AF_INET6 => (names::v6_for(text)?.octets(), 16),
        _ => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&names::v4_for(text)?.octets());
            (b, 4)
        }
    };
    HOST.with(|cell| {
        let mut slot = cell.borrow_mut();
        let buf = slot.insert(Box::new(HostBuf {
            // SAFETY: all-zero is a valid hostent, filled below.
            ent: unsafe { std::mem::zeroed() },
            name: std::ffi::CString::new(text).ok()?,
            addr: bytes,
            addr_list: [std::ptr::null_mut(); 2],
            aliases: [std::ptr::null_mut(); 1],
        }));
        buf.addr_list[0] = buf.addr.as_mut_ptr().cast();
        buf.ent.h_name = buf.name.as_ptr() as *mut c_char;
        buf.ent.h_aliases = buf.aliases.as_mut_ptr();
        buf.ent.h_addrtype = if len == 16 {
            libc::AF_INET6
        } else {
            libc::AF_INET
        };
        buf.ent.h_length = len as c_int;
        buf.ent.h_addr_list = buf.addr_list.as_mut_ptr();
        Some(&mut buf.ent as *mut hostent)
    })
}

type GethostbynameFn = unsafe extern "C" fn(*const c_char) -> *mut hostent;
type Gethostbyname2Fn = unsafe extern "C" fn(*const c_char, c_int) -> *mut hostent;

/// # Safety
/// As gethostbyname(3).
#[no_mangle]
pub unsafe extern "C" fn gethostbyname(name: *const c_char) -> *mut hostent {
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: the C library's gethostbyname.
    let real_fn: GethostbynameFn = unsafe {
        std::mem::transmute::<usize, GethostbynameFn>(
            *REAL.get_or_init(|| libc::dlsym(libc::RTLD_NEXT, c"gethostbyname".as_ptr()) as usize),
        )
    };
    if !name.is_null() {
        if let Ok(Some(ent)) = catch_unwind(|| placeholder_hostent(name, libc::AF_INET)) {
            return ent;
        }
    }
    // SAFETY: the program's argument.
    unsafe { real_fn(name) }
}

/// # Safety
/// As gethostbyname2(3).
#[no_mangle]
pub unsafe extern "C" fn gethostbyname2(name: *const c_char, family: c_int) -> *mut hostent {
    static REAL: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // SAFETY: the C library's gethostbyname2.
    let real_fn: Gethostbyname2Fn = unsafe {
        std::mem::transmute::<usize, Gethostbyname2Fn>(
            *REAL.get_or_init(|| libc::dlsym(libc::RTLD_NEXT, c"gethostbyname2".as_ptr()) as usize),
        )
    };
    if !name.is_null() {
        if let Ok(Some(ent)) = catch_unwind(|| placeholder_hostent(name, family)) {
            return ent;
        }
    }
    // SAFETY: the program's arguments.
    unsafe { real_fn(name, family) }
}

// ---------------------------------------------------------------------------------------
// _FORTIFY_SOURCE entry points: a program built with it calls these when the compiler knows
// a buffer's size, and the C library's versions go to its internal functions, past the
// hooks. Each checks the size as the C library's does (a buffer overflow aborts), then takes
// the hook.

fn chk(len: usize, size: usize) {
    if len > size {
        say("buffer overflow detected");
        std::process::abort();
    }
}

/// # Safety
/// As __poll_chk.
#[no_mangle]
pub unsafe extern "C" fn __poll_chk(
    fds_ptr: *mut pollfd,
    nfds: nfds_t,
    timeout: c_int,
    fdslen: usize,
) -> c_int {
    chk(
        (nfds as usize).saturating_mul(std::mem::size_of::<pollfd>()),
        fdslen,
    );
    // SAFETY: as poll.
    unsafe { poll(fds_ptr, nfds, timeout) }
}

/// # Safety
/// As __ppoll_chk.
#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(
    fds_ptr: *mut pollfd,
    nfds: nfds_t,
    tmo: *const timespec,
    sigmask: *const sigset_t,
    fdslen: usize,
) -> c_int {
    chk(
        (nfds as usize).saturating_mul(std::mem::size_of::<pollfd>()),
        fdslen,
    );
    // SAFETY: as ppoll.
    unsafe { ppoll(fds_ptr, nfds, tmo, sigmask) }
}

/// # Safety
/// As __recv_chk.
#[no_mangle]
pub unsafe extern "C" fn __recv_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
    flags: c_int,
) -> isize {
    chk(len, buflen);
    // SAFETY: as recv.
    unsafe { recv(fd, buf, len, flags) }
}

/// # Safety
/// As __recvfrom_chk.
#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
    flags: c_int,
    addr: *mut sockaddr,
    alen: *mut socklen_t,
) -> isize {
    chk(len, buflen);
    // SAFETY: as recvfrom.
    unsafe { recvfrom(fd, buf, len, flags, addr, alen) }
}

/// # Safety
/// As __read_chk.
#[no_mangle]
pub unsafe extern "C" fn __read_chk(
    fd: c_int,
    buf: *mut c_void,
    len: usize,
    buflen: usize,
) -> isize {
    chk(len, buflen);
    // SAFETY: as read.
    unsafe { read(fd, buf, len) }
}
