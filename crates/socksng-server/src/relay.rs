//! The TCP relay: both directions move independently, each half-closes its destination when
//! its source reaches EOF (so a client's shutdown(SHUT_WR) reaches the target while the
//! target's answer still flows back), an optional idle timeout ends a silent relay, and a
//! half-close timeout ends one whose remaining direction has gone silent (the client closed
//! and the target never answers).
//!
//! Memory follows traffic, not connections: a direction waits for readiness holding nothing,
//! borrows a buffer from a per-thread pool only while a chunk is in flight, and gives it back.
//! A direction that fills a whole buffer in one read is carrying bulk data; on Linux it then
//! switches to splice(2) through a pipe of its own, so the bytes never enter user space.

use crate::outcome::Side;
use crate::stream::Ready;
use socket2::SockRef;
use std::cell::RefCell;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::Interest;
use tokio::time::Instant;

const BUF_SIZE: usize = 16 * 1024;
/// Buffers kept for reuse per runtime thread; beyond this they are freed.
const POOL_MAX: usize = 64;

static SPLICED_DIRECTIONS: AtomicU64 = AtomicU64::new(0);

/// How many relay directions have switched to splice(2) since the process started.
pub fn spliced_directions() -> u64 {
    SPLICED_DIRECTIONS.load(Ordering::Relaxed)
}

/// How a relay ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending direction.
    #[default]
    Closed,
    /// No data either way for the idle timeout.
    Idle,
    /// The client closed its side and the target sent nothing for the half-close timeout.
    HalfClosed,
    /// A read or write failed (reset, broken pipe) on this side's socket.
    Error(Side),
}

impl RelayEnd {
    /// The session outcome a relay's end is.
    pub fn outcome(self) -> crate::outcome::SessionOutcome {
        use crate::outcome::{OutcomeKind, SessionOutcome};
        let (kind, side) = match self {
            RelayEnd::Closed => (OutcomeKind::Completed, Side::Client),
            RelayEnd::Idle => (OutcomeKind::TimedOut, Side::Client),
            RelayEnd::HalfClosed => (OutcomeKind::TimedOut, Side::Target),
            RelayEnd::Error(side) => (OutcomeKind::Broken, side),
        };
        SessionOutcome::new(kind, side, self.as_str())
    }

    /// Word for the session log.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle timeout",
            RelayEnd::HalfClosed => "half-close timeout",
            RelayEnd::Error(_) => "reset",
        }
    }
}

/// Size of the buffers datagrams are received into: the largest UDP payload fits.
pub(crate) const DATAGRAM_BUF_SIZE: usize = 65_536;
/// Datagram buffers kept for reuse per runtime thread.
const DATAGRAM_POOL_MAX: usize = 8;

thread_local! {
    static POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
    static DATAGRAM_POOL: RefCell<Vec<Box<[u8]>>> = const { RefCell::new(Vec::new()) };
}

/// A pooled buffer, returned to the current thread's pool on drop.
pub(crate) struct PooledBuf {
    buf: Option<Box<[u8]>>,
    datagram: bool,
}

impl PooledBuf {
    /// A relay chunk buffer.
    pub(crate) fn take() -> Self {
        Self::from_pool(false)
    }

    /// A buffer for one datagram of any size (or a shaped relay's chunk), held only while it
    /// is handled, so an idle UDP association or tunnel holds none.
    pub(crate) fn take_datagram() -> Self {
        Self::from_pool(true)
    }

    fn from_pool(datagram: bool) -> Self {
        let (pool, size) = if datagram {
            (&DATAGRAM_POOL, DATAGRAM_BUF_SIZE)
        } else {
            (&POOL, BUF_SIZE)
        };
        let buf = pool.with(|p| p.borrow_mut().pop());
        PooledBuf {
            buf: Some(buf.unwrap_or_else(|| vec![0u8; size].into_boxed_slice())),
            datagram,
        }
    }

    pub(crate) fn bytes(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or(&mut [])
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let (pool, max) = if self.datagram {
                (&DATAGRAM_POOL, DATAGRAM_POOL_MAX)
            } else {
                (&POOL, POOL_MAX)
            };
            pool.with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < max {
                    p.push(b);
                }
            });
        }
    }
}

/// An inactivity deadline that moves with traffic without re-arming a timer per packet:
/// `touch` only notes the time, and the timer, when it fires early, sleeps for the rest.
pub(crate) struct IdleTimer {
    limit: Duration,
    last: Instant,
    sleep: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl IdleTimer {
    /// A timer for `limit` of inactivity; zero never expires.
    pub(crate) fn new(limit: Duration) -> IdleTimer {
        let now = Instant::now();
        IdleTimer {
            limit,
            last: now,
            sleep: (!limit.is_zero()).then(|| Box::pin(tokio::time::sleep_until(now + limit))),
        }
    }

    /// Records activity now.
    pub(crate) fn touch(&mut self) {
        if self.sleep.is_some() {
            self.last = Instant::now();
        }
    }

    /// Completes once `limit` has passed without activity. Cancel-safe: the state lives in
    /// the timer, so it can sit in a `select!` that is polled again and again.
    pub(crate) async fn expired(&mut self) {
        let Some(sleep) = self.sleep.as_mut() else {
            return std::future::pending().await;
        };
        loop {
            sleep.as_mut().await;
            let due = self.last + self.limit;
            if Instant::now() >= due {
                return;
            }
            sleep.as_mut().reset(due);
        }
    }
}

/// Runs one `read` of at most `room` bytes from `from`. A short read means the socket's queue
/// is empty, so the readiness is cleared with it and the next wait goes straight to epoll,
/// instead of costing a read that finds nothing (as tokio's own `poll_read` does). Data that
/// arrives meanwhile raises a new event, which the clearing does not hide.
pub(crate) fn read_drained(
    from: &impl Ready,
    room: usize,
    read: impl FnOnce() -> io::Result<usize>,
) -> io::Result<usize> {
    let mut short = 0;
    let got = from.try_io(Interest::READABLE, || match read() {
        Ok(n) if n > 0 && n < room => {
            short = n;
            Err(io::ErrorKind::WouldBlock.into())
        }
        other => other,
    });
    match got {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock && short > 0 => Ok(short),
        other => other,
    }
}

struct Direction<'a, F, T> {
    from: &'a F,
    to: &'a T,
    moved: &'a AtomicU64,
    activity: &'a AtomicU64,
    /// Set by the first direction to reach EOF.
    one_done: &'a AtomicBool,
    epoch: Instant,
    /// The class's limit and uplink share, when this direction is shaped.
    pace: Option<&'a crate::shaping::Pace>,
}

/// Which socket of a direction failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failed {
    /// The one it reads from.
    Reading,
    /// The one it writes to.
    Writing,
}

impl<F: Ready, T: Ready> Direction<'_, F, T> {
    /// Writes all of `data` to the destination, counting each part as it goes: a slow reader
    /// draining a large chunk is activity, not idleness.
    async fn send(&self, mut data: &[u8]) -> Result<(), Failed> {
        while !data.is_empty() {
            self.to.writable().await.map_err(|_| Failed::Writing)?;
            match self.to.try_write(data) {
                Ok(0) => return Err(Failed::Writing),
                Ok(n) => {
                    self.record(n);
                    data = &data[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Failed::Writing),
            }
        }
        Ok(())
    }

    fn record(&self, n: usize) {
        self.moved.fetch_add(n as u64, Ordering::Relaxed);
        self.activity
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn half_close(&self) -> Result<(), Failed> {
        if self.one_done.swap(true, Ordering::Relaxed) {
            // The other direction has read `to` to its EOF, so the relay ends now and its
            // caller closes both sockets; the close sends this FIN (nothing is left unread, so
            // it is a FIN, not a reset). One system call less per connection.
            return Ok(());
        }
        match SockRef::from(self.to).shutdown(std::net::Shutdown::Write) {
            // The destination may already be gone; its own direction reports that.
            Err(e) if e.kind() == io::ErrorKind::NotConnected => Ok(()),
            Err(_) => Err(Failed::Writing),
            Ok(()) => Ok(()),
        }
    }

    async fn run(self) -> Result<(), Failed> {
        // A shaped direction must see every chunk to pace it.
        let splice_allowed = self.pace.is_none();
        let mut bulk = false;
        loop {
            if bulk {
                // Boxed: only bulk flows get here, and idle relays should not carry its size.
                #[cfg(target_os = "linux")]
                return Box::pin(splice::pump(&self)).await;
            }
            self.from.readable().await.map_err(|_| Failed::Reading)?;
            // A shaped direction never splices; it reads larger chunks (as large as its pace
            // allows) so that it costs fewer system calls per byte.
            let (mut buf, room) = match self.pace {
                None => (PooledBuf::take(), BUF_SIZE),
                Some(pace) => (
                    PooledBuf::take_datagram(),
                    pace.chunk().min(DATAGRAM_BUF_SIZE),
                ),
            };
            let bytes = &mut buf.bytes()[..room];
            let n = match read_drained(self.from, room, || self.from.try_read(bytes)) {
                Ok(0) if self.from.failed_at_eof() => return Err(Failed::Reading),
                Ok(0) => return self.half_close(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Failed::Reading),
            };
            if let Some(pace) = self.pace {
                pace.take(n).await;
            }
            self.send(&buf.bytes()[..n]).await?;
            bulk = splice_allowed && cfg!(target_os = "linux") && n == BUF_SIZE;
        }
    }
}

#[cfg(target_os = "linux")]
mod splice {
    //! Zero-copy forwarding for one direction: socket → pipe → socket with splice(2).
    use super::{Direction, Failed};
    use crate::stream::Ready;
    use std::io;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use tokio::io::Interest;

    /// Pipe capacity asked for; larger means fewer system calls per megabyte.
    const PIPE_SIZE: libc::c_int = 1 << 20;

    struct Pipe {
        read: OwnedFd,
        write: OwnedFd,
        capacity: usize,
    }

    impl Pipe {
        fn new() -> io::Result<Pipe> {
            let mut fds = [0 as RawFd; 2];
            // SAFETY: pipe2 writes two descriptors into the array we own.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: both descriptors were just created and are owned by nobody else.
            let (read, write) =
                unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
            // Best effort: the default 64 KiB also works, just with more calls.
            // SAFETY: fcntl on a descriptor we own.
            let set = unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
            let capacity = if set > 0 { set as usize } else { 64 * 1024 };
            Ok(Pipe {
                read,
                write,
                capacity,
            })
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: plain descriptors and null offsets (both ends are streams).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    pub(super) async fn pump<F: Ready, T: Ready>(d: &Direction<'_, F, T>) -> Result<(), Failed> {
        // Without a pipe this direction cannot go on; the read side is as good a name as any.
        let pipe = Pipe::new().map_err(|_| Failed::Reading)?;
        super::SPLICED_DIRECTIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (from_fd, to_fd) = (d.from.as_fd().as_raw_fd(), d.to.as_fd().as_raw_fd());
        loop {
            d.from.readable().await.map_err(|_| Failed::Reading)?;
            // Not `read_drained`: splice also stops short when the pipe runs out of slots
            // with data still queued, so a short splice says nothing about the socket.
            let n = match d.from.try_io(Interest::READABLE, || {
                splice(from_fd, pipe.write.as_raw_fd(), pipe.capacity)
            }) {
                Ok(0) if d.from.failed_at_eof() => return Err(Failed::Reading),
                Ok(0) => return d.half_close(),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => return Err(Failed::Reading),
            };
            let mut left = n;
            while left > 0 {
                d.to.writable().await.map_err(|_| Failed::Writing)?;
                match d.to.try_io(Interest::WRITABLE, || {
                    splice(pipe.read.as_raw_fd(), to_fd, left)
                }) {
                    Ok(0) => return Err(Failed::Writing),
                    Ok(m) => {
                        left -= m;
                        d.record(m);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                    Err(_) => return Err(Failed::Writing),
                }
            }
        }
    }
}

/// The timeouts a relay runs under; zero switches one off.
#[derive(Debug, Clone, Copy, Default)]
pub struct RelayTimeouts {
    /// End the relay when nothing has moved either way for this long.
    pub idle: Duration,
    /// Once the client has closed its sending side, end the relay when the target sends
    /// nothing for this long: a client that has gone must not hold a silent target forever.
    pub half_close: Duration,
}

impl RelayTimeouts {
    /// The relay timeouts of a server configuration.
    pub fn from_config(t: &crate::config::Timeouts) -> Self {
        RelayTimeouts {
            idle: t.idle,
            half_close: t.half_close,
        }
    }
}

/// Relays between `client` and `target`, each direction held to its pace in `paces`, until both directions are done, one fails, the relay
/// sits idle for `timeouts.idle`, or the client has closed its side and the target has sent
/// nothing for `timeouts.half_close`. Bytes are added to `up` (client to target) and `down` as they
/// move, so a relay cut short still reports what it carried.
///
/// The caller closes both streams as soon as this returns: the last half-close of a relay that
/// ends cleanly is left to that close.
pub(crate) async fn relay(
    client: &impl Ready,
    target: &impl Ready,
    timeouts: RelayTimeouts,
    paces: &crate::shaping::Paces,
    up: &AtomicU64,
    down: &AtomicU64,
) -> RelayEnd {
    let activity = AtomicU64::new(0);
    let one_done = AtomicBool::new(false);
    let epoch = Instant::now();
    let upward = Direction {
        from: client,
        to: target,
        moved: up,
        activity: &activity,
        one_done: &one_done,
        epoch,
        pace: paces.up.as_ref(),
    };
    let downward = Direction {
        from: target,
        to: client,
        moved: down,
        activity: &activity,
        one_done: &one_done,
        epoch,
        pace: paces.down.as_ref(),
    };
    let up_run = upward.run();
    let down_run = downward.run();
    tokio::pin!(up_run, down_run);
    let (mut up_done, mut down_done) = (false, false);
    loop {
        // The clock that applies now: idle while both flow; once the client has closed its
        // sending side, also the half-close linger (counted from that moment or the last byte
        // since). A target that closes first needs no linger: the client answers that, and a
        // client that vanished is found by keepalive. Arming no timer in that, the common,
        // case keeps the end of a relay free of timer work.
        let limit = if up_done {
            [timeouts.idle, timeouts.half_close]
                .into_iter()
                .filter(|d| !d.is_zero())
                .min()
        } else {
            Some(timeouts.idle).filter(|d| !d.is_zero())
        };
        let deadline =
            limit.map(|l| epoch + Duration::from_millis(activity.load(Ordering::Relaxed)) + l);
        tokio::select! {
            r = &mut up_run, if !up_done => match r {
                // One failing direction (a reset, say) ends both: the other may never see EOF.
                // Both sides get a reset, so neither takes the cut stream for a whole one.
                Err(failed) => {
                    client.reset_on_close();
                    target.reset_on_close();
                    return RelayEnd::Error(match failed {
                        Failed::Reading => Side::Client,
                        Failed::Writing => Side::Target,
                    });
                }
                Ok(()) => {
                    up_done = true;
                    activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            },
            r = &mut down_run, if !down_done => match r {
                Err(failed) => {
                    client.reset_on_close();
                    target.reset_on_close();
                    return RelayEnd::Error(match failed {
                        Failed::Reading => Side::Target,
                        Failed::Writing => Side::Client,
                    });
                }
                Ok(()) => {
                    down_done = true;
                    activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
                }
            },
            _ = tokio::time::sleep_until(deadline.unwrap_or(epoch)), if deadline.is_some() => {
                // Activity may have moved the deadline while this slept.
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                if let Some(l) = limit {
                    if Instant::now() >= epoch + last + l {
                        // A relay ended by a clock did not end: both sides get a reset, so
                        // neither takes a cut transfer for a complete one.
                        client.reset_on_close();
                        target.reset_on_close();
                        return if up_done && l == timeouts.half_close {
                            RelayEnd::HalfClosed
                        } else {
                            RelayEnd::Idle
                        };
                    }
                }
            }
        }
        if up_done && down_done {
            return RelayEnd::Closed;
        }
    }
}
