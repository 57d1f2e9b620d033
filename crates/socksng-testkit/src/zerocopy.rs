//! Bulk data movement for the load generator and the sink/source without copying through user
//! space, so the generator's own core is not what limits a fast proxy: sending is `sendfile(2)`
//! from a zero-filled memfd, receiving is `splice(2)` from the socket into a pipe and on into
//! /dev/null. The plain read/write path (`--copy-io`) remains for comparison.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// Size of the zero file sendfile reads from (offsets wrap around it).
const ZERO_FILE: u64 = 8 << 20;
/// Most bytes moved by one system call.
const CHUNK: usize = 1 << 20;

static COPY_IO: AtomicBool = AtomicBool::new(false);

/// Chooses plain read/write instead of sendfile/splice for everything afterwards.
pub fn set_copy_io(on: bool) {
    COPY_IO.store(on, Ordering::Relaxed);
}

/// Whether the plain copy path is selected.
pub fn copy_io() -> bool {
    COPY_IO.load(Ordering::Relaxed)
}

fn zero_file() -> io::Result<&'static File> {
    static FILE: OnceLock<File> = OnceLock::new();
    if let Some(f) = FILE.get() {
        return Ok(f);
    }
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the fd is new and ours.
    let fd = unsafe { libc::memfd_create(c"socksng-bench-zeros".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd was just created and is owned by nobody else.
    let mut f = unsafe { File::from_raw_fd(fd) };
    // Real pages, not holes: sendfile then hands the same page-cache pages out every time.
    let block = vec![0u8; 1 << 20];
    for _ in 0..(ZERO_FILE >> 20) {
        f.write_all(&block)?;
    }
    Ok(FILE.get_or_init(|| f))
}

fn cvt(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

async fn ready(s: &TcpStream, interest: Interest, limit: Duration, what: &str) -> io::Result<()> {
    match tokio::time::timeout(limit, s.ready(interest)).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{what} stalled"),
        )),
    }
}

/// Sends `len` zero bytes with sendfile; no progress for `limit` is an error.
pub async fn send_zeros(s: &TcpStream, len: u64, limit: Duration) -> io::Result<()> {
    let file = zero_file()?.as_raw_fd();
    let sock = s.as_raw_fd();
    let mut left = len;
    let mut off: libc::off_t = 0;
    while left > 0 {
        ready(s, Interest::WRITABLE, limit, "send").await?;
        let want = (left.min(CHUNK as u64) as usize).min((ZERO_FILE - off as u64) as usize);
        let r = s.try_io(Interest::WRITABLE, || {
            // SAFETY: both fds are open for the duration; off is a valid out-parameter.
            cvt(unsafe { libc::sendfile(sock, file, &mut off, want) })
        });
        match r {
            Ok(n) => {
                left -= n as u64;
                if off as u64 >= ZERO_FILE {
                    off = 0;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// A pipe and /dev/null for discarding socket data inside the kernel.
pub struct Drain {
    rd: OwnedFd,
    wr: OwnedFd,
    null: File,
}

impl Drain {
    /// A new drain with a 1 MiB pipe (or whatever the system allows).
    pub fn new() -> io::Result<Drain> {
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 fills the two-element array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both fds were just created and are ours alone.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: fcntl on our own pipe; failure only leaves the default size.
        unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
        let null = File::options().write(true).open("/dev/null")?;
        Ok(Drain { rd, wr, null })
    }

    /// Receives exactly `len` bytes from `s` and discards them; no progress for `limit` is an
    /// error, EOF before `len` is `UnexpectedEof`.
    pub async fn recv_discard(&self, s: &TcpStream, len: u64, limit: Duration) -> io::Result<()> {
        let sock = s.as_raw_fd();
        let (rd, wr, null) = (
            self.rd.as_raw_fd(),
            self.wr.as_raw_fd(),
            self.null.as_raw_fd(),
        );
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        let mut left = len;
        while left > 0 {
            ready(s, Interest::READABLE, limit, "receive").await?;
            let want = left.min(CHUNK as u64) as usize;
            let r = s.try_io(Interest::READABLE, || {
                // SAFETY: plain fds we own or borrow for the call; null offsets.
                cvt(unsafe {
                    libc::splice(
                        sock,
                        std::ptr::null_mut(),
                        wr,
                        std::ptr::null_mut(),
                        want,
                        flags,
                    )
                })
            });
            let n = match r {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            };
            // The pipe was empty before; empty it again into /dev/null (never blocks).
            let mut pending = n;
            while pending > 0 {
                // SAFETY: as above.
                let m = cvt(unsafe {
                    libc::splice(
                        rd,
                        std::ptr::null_mut(),
                        null,
                        std::ptr::null_mut(),
                        pending,
                        0,
                    )
                })?;
                if m == 0 {
                    return Err(io::Error::other("splice to /dev/null made no progress"));
                }
                pending -= m;
            }
            left -= n as u64;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    #[test]
    fn sendfile_and_splice_move_exact_counts() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            let len = ZERO_FILE * 2 + 12345;
            let sender = tokio::spawn(async move {
                let s = TcpStream::connect(addr).await.unwrap();
                send_zeros(&s, len, Duration::from_secs(10)).await.unwrap();
                send_zeros(&s, 3, Duration::from_secs(10)).await.unwrap();
            });
            let (mut r, _) = l.accept().await.unwrap();
            let drain = Drain::new().unwrap();
            drain
                .recv_discard(&r, len, Duration::from_secs(10))
                .await
                .unwrap();
            // Nothing beyond `len` was consumed.
            let mut tail = Vec::new();
            sender.await.unwrap();
            r.read_to_end(&mut tail).await.unwrap();
            assert_eq!(tail, vec![0, 0, 0]);
        });
    }
}
