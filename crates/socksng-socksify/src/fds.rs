//! What the shim knows of the program's descriptors: sockets with a handshake in progress,
//! sockets whose proxied connect failed (the error `SO_ERROR` reports once), sockets connected
//! through a proxy (for `getpeername`), and the program's epoll registrations, so that a
//! handshake can borrow them and give them back.

use crate::drive::Pending;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

/// One socket's state.
pub(crate) enum FdState {
    /// Its handshake runs.
    Pending(Box<Pending>),
    /// Its proxied connect failed with this errno (reported once by `SO_ERROR`).
    Failed { errno: i32 },
    /// Connected through a proxy to `target` (for an accepted connection, `local` is the
    /// address the proxy listened on).
    Proxied {
        target: SocketAddr,
        local: Option<SocketAddr>,
    },
    /// A listener on the proxy's outside; `None` while a thread's accept has it out.
    Listener(Option<Box<crate::listening::Listening>>),
    /// A UDP socket with an association through the proxy.
    Udp(Box<crate::udp::Association>),
}

/// A registration of the program's: the events and data it gave `epoll_ctl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Registration {
    pub events: u32,
    pub data: u64,
}

#[derive(Default)]
pub(crate) struct Fds {
    pub state: HashMap<i32, FdState>,
    /// (epoll descriptor, descriptor) → the program's registration.
    pub epoll: HashMap<(i32, i32), Registration>,
}

static FDS: Mutex<Option<Fds>> = Mutex::new(None);
/// Handshakes in progress: while 0 (and no listener exists), the waiting functions pass
/// straight through.
static PENDING: AtomicUsize = AtomicUsize::new(0);
/// Listeners on the proxy's outside.
static LISTENERS: AtomicUsize = AtomicUsize::new(0);
/// UDP sockets with an association: while 0, read and write pass straight through.
static UDP: AtomicUsize = AtomicUsize::new(0);

/// Whether any UDP socket goes through a proxy (cheap: no lock).
pub(crate) fn any_udp() -> bool {
    UDP.load(Ordering::Acquire) > 0
}

std::thread_local! {
    /// This thread holds the table's lock: a hook it reaches meanwhile (the standard
    /// library's own writes and closes, a panic message, a signal handler) must pass straight
    /// to the C library rather than wait for a lock its own thread holds.
    static HELD: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// The guard `fork` holds across the fork (see `install_fork_handlers`).
    static AT_FORK: std::cell::RefCell<Option<MutexGuard<'static, Option<Fds>>>> =
        const { std::cell::RefCell::new(None) };
}

/// Whether this thread is inside the shim with the table locked.
pub(crate) fn held_here() -> bool {
    HELD.with(|h| h.get())
}

/// The table, locked.
pub(crate) struct Locked(MutexGuard<'static, Option<Fds>>);

impl Drop for Locked {
    fn drop(&mut self) {
        HELD.with(|h| h.set(false));
    }
}

impl std::ops::Deref for Locked {
    type Target = Fds;
    fn deref(&self) -> &Fds {
        self.0
            .as_ref()
            .unwrap_or_else(|| unreachable!("made in lock()"))
    }
}

impl std::ops::DerefMut for Locked {
    fn deref_mut(&mut self) -> &mut Fds {
        self.0.get_or_insert_with(Fds::default)
    }
}

pub(crate) fn lock() -> Locked {
    let mut guard = FDS.lock().unwrap_or_else(|p| p.into_inner());
    guard.get_or_insert_with(Fds::default);
    HELD.with(|h| h.set(true));
    Locked(guard)
}

/// Makes `fork` take the table's lock first and give it back in both processes, so that a
/// child never starts with the lock held by a thread it does not have.
pub(crate) fn install_fork_handlers() {
    extern "C" fn prepare() {
        let guard = FDS.lock().unwrap_or_else(|p| p.into_inner());
        AT_FORK.with(|g| *g.borrow_mut() = Some(guard));
    }
    extern "C" fn release() {
        AT_FORK.with(|g| drop(g.borrow_mut().take()));
    }
    // SAFETY: three functions that live as long as the process.
    unsafe { libc::pthread_atfork(Some(prepare), Some(release), Some(release)) };
}

/// Whether the waiting functions have anything to do: a handshake in progress, a listener
/// (whose notices may wait in the shim rather than in the socket) or a UDP association (a
/// tunnel's frames arrive on the shim's connection). Cheap: no lock.
pub(crate) fn any_pending() -> bool {
    PENDING.load(Ordering::Acquire) > 0
        || LISTENERS.load(Ordering::Acquire) > 0
        || UDP.load(Ordering::Acquire) > 0
}

fn counter(state: &FdState) -> Option<&'static AtomicUsize> {
    match state {
        FdState::Pending(_) => Some(&PENDING),
        FdState::Listener(_) => Some(&LISTENERS),
        FdState::Udp(_) => Some(&UDP),
        _ => None,
    }
}

impl Fds {
    /// Sets `fd`'s state, keeping the count of handshakes right.
    pub(crate) fn set(&mut self, fd: i32, state: FdState) {
        if let Some(c) = counter(&state) {
            c.fetch_add(1, Ordering::AcqRel);
        }
        let old = self.state.insert(fd, state);
        if let Some(c) = old.as_ref().and_then(counter) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(FdState::Udp(association)) = old {
            association.close();
        }
    }

    /// Forgets `fd` (closed, or replaced by dup2); with `epoll_too`, its registrations and,
    /// if it was an epoll descriptor, the registrations made with it.
    pub(crate) fn forget(&mut self, fd: i32) {
        let old = self.state.remove(&fd);
        if let Some(c) = old.as_ref().and_then(counter) {
            c.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(FdState::Udp(association)) = old {
            association.close();
        }
        if !self.epoll.is_empty() {
            self.epoll.retain(|(ep, f), _| *ep != fd && *f != fd);
        }
    }

    /// The program's registrations of `fd`.
    pub(crate) fn registrations(&self, fd: i32) -> Vec<(i32, Registration)> {
        self.epoll
            .iter()
            .filter(|((_, f), _)| *f == fd)
            .map(|((ep, _), r)| (*ep, *r))
            .collect()
    }

    /// Whether `fd` is a listener with notices waiting in the shim: readable, whatever its
    /// socket says.
    pub(crate) fn has_queued(&self, fd: i32) -> bool {
        match self.state.get(&fd) {
            Some(FdState::Listener(Some(l))) => l.has_queued(),
            Some(FdState::Udp(a)) => a.has_frame(),
            _ => false,
        }
    }

    /// The tunnel connection that stands in for UDP socket `fd` in the waiting functions.
    pub(crate) fn tunnel_of(&self, fd: i32) -> Option<i32> {
        match self.state.get(&fd) {
            Some(FdState::Udp(a)) if a.tunnel.is_some() => Some(a.control),
            _ => None,
        }
    }

    /// The program's registrations with `epfd` of listeners with notices waiting.
    pub(crate) fn queued_registrations(&self, epfd: i32) -> Vec<Registration> {
        self.epoll
            .iter()
            .filter(|((ep, fd), _)| *ep == epfd && self.has_queued(*fd))
            .map(|(_, r)| *r)
            .collect()
    }

    /// The descriptor with a handshake in progress that `epfd` reports with `data`.
    pub(crate) fn pending_by_data(&self, epfd: i32, data: u64) -> Option<i32> {
        self.state.iter().find_map(|(fd, s)| match s {
            FdState::Pending(_) => self
                .epoll
                .get(&(epfd, *fd))
                .filter(|r| r.data == data)
                .map(|_| *fd),
            _ => None,
        })
    }
}
