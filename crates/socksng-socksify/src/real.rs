//! The C library's own functions behind the ones the shim replaces, found once with
//! `dlsym(RTLD_NEXT, ...)`. Every call the shim makes itself goes through these, so it never
//! re-enters its own hooks (a hook that takes the descriptor table's lock, called while the
//! shim holds it, would wait for itself).

use libc::{
    addrinfo, c_char, c_int, c_void, epoll_event, fd_set, nfds_t, pollfd, sigset_t, sockaddr,
    socklen_t, timespec, timeval,
};
use std::sync::OnceLock;

type ConnectFn = unsafe extern "C" fn(c_int, *const sockaddr, socklen_t) -> c_int;
type CloseFn = unsafe extern "C" fn(c_int) -> c_int;
type GetsockoptFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut c_void, *mut socklen_t) -> c_int;
type NameFn = unsafe extern "C" fn(c_int, *mut sockaddr, *mut socklen_t) -> c_int;
type PollFn = unsafe extern "C" fn(*mut pollfd, nfds_t, c_int) -> c_int;
type PpollFn = unsafe extern "C" fn(*mut pollfd, nfds_t, *const timespec, *const sigset_t) -> c_int;
type SelectFn =
    unsafe extern "C" fn(c_int, *mut fd_set, *mut fd_set, *mut fd_set, *mut timeval) -> c_int;
type PselectFn = unsafe extern "C" fn(
    c_int,
    *mut fd_set,
    *mut fd_set,
    *mut fd_set,
    *const timespec,
    *const sigset_t,
) -> c_int;
type EpollCtlFn = unsafe extern "C" fn(c_int, c_int, c_int, *mut epoll_event) -> c_int;
type EpollWaitFn = unsafe extern "C" fn(c_int, *mut epoll_event, c_int, c_int) -> c_int;
type EpollPwaitFn =
    unsafe extern "C" fn(c_int, *mut epoll_event, c_int, c_int, *const sigset_t) -> c_int;
type GetaddrinfoFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const addrinfo,
    *mut *mut addrinfo,
) -> c_int;
type FreeaddrinfoFn = unsafe extern "C" fn(*mut addrinfo);
type Dup2Fn = unsafe extern "C" fn(c_int, c_int) -> c_int;
type SendFn = unsafe extern "C" fn(c_int, *const c_void, usize, c_int) -> isize;
type RecvFn = unsafe extern "C" fn(c_int, *mut c_void, usize, c_int) -> isize;
type WriteFn = unsafe extern "C" fn(c_int, *const c_void, usize) -> isize;
type Dup3Fn = unsafe extern "C" fn(c_int, c_int, c_int) -> c_int;

/// The real functions.
pub(crate) struct Real {
    pub connect: ConnectFn,
    pub close: CloseFn,
    pub getsockopt: GetsockoptFn,
    pub getpeername: NameFn,
    pub poll: PollFn,
    pub ppoll: PpollFn,
    pub select: SelectFn,
    pub pselect: PselectFn,
    pub epoll_ctl: EpollCtlFn,
    pub epoll_wait: EpollWaitFn,
    pub epoll_pwait: EpollPwaitFn,
    pub getaddrinfo: GetaddrinfoFn,
    pub freeaddrinfo: FreeaddrinfoFn,
    pub dup2: Dup2Fn,
    pub dup3: Dup3Fn,
    pub send: SendFn,
    pub recv: RecvFn,
    pub write: WriteFn,
}

/// Looks `name` up in the libraries loaded after this one.
fn next(name: &std::ffi::CStr) -> *mut c_void {
    // SAFETY: `name` is NUL-terminated; RTLD_NEXT is a valid pseudo-handle.
    let f = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    if f.is_null() {
        // Without the C library's own function nothing can go on; say which, once.
        let line = format!("socksng: cannot find the C library's {name:?}\n");
        // SAFETY: a raw write of a valid buffer to standard error; the process ends next.
        unsafe { libc::syscall(libc::SYS_write, 2, line.as_ptr(), line.len()) };
        std::process::abort();
    }
    f
}

macro_rules! real {
    ($name:literal, $ty:ty) => {
        // SAFETY: the symbol is the C library's function of exactly this signature.
        unsafe { std::mem::transmute::<*mut c_void, $ty>(next($name)) }
    };
}

/// The real functions (looked up on first use).
pub(crate) fn real() -> &'static Real {
    static REAL: OnceLock<Real> = OnceLock::new();
    REAL.get_or_init(|| Real {
        connect: real!(c"connect", ConnectFn),
        close: real!(c"close", CloseFn),
        getsockopt: real!(c"getsockopt", GetsockoptFn),
        getpeername: real!(c"getpeername", NameFn),
        poll: real!(c"poll", PollFn),
        ppoll: real!(c"ppoll", PpollFn),
        select: real!(c"select", SelectFn),
        pselect: real!(c"pselect", PselectFn),
        epoll_ctl: real!(c"epoll_ctl", EpollCtlFn),
        epoll_wait: real!(c"epoll_wait", EpollWaitFn),
        epoll_pwait: real!(c"epoll_pwait", EpollPwaitFn),
        getaddrinfo: real!(c"getaddrinfo", GetaddrinfoFn),
        freeaddrinfo: real!(c"freeaddrinfo", FreeaddrinfoFn),
        dup2: real!(c"dup2", Dup2Fn),
        dup3: real!(c"dup3", Dup3Fn),
        send: real!(c"send", SendFn),
        recv: real!(c"recv", RecvFn),
        write: real!(c"write", WriteFn),
    })
}
