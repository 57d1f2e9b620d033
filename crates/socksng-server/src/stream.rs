//! A connection as the commands see it, in plaintext: a `Plaintext` is either the TCP
//! connection itself or, for TLS (a SOCKS over TLS client, an upstream reached over TLS), the
//! session's end of a socket pair whose other end a TLS task (`tls.rs`) feeds with the
//! decrypted bytes. Both are kernel sockets, so readiness, splice(2) and half-closes work the
//! same on either, and every command has one code path. `Ready` is what the relay and the UDP
//! tunnel need of a socket.

use std::future::Future;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, Interest, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::Notify;

/// What a session and the TLS task that carries one of its connections tell each other.
#[derive(Default)]
pub(crate) struct TlsLink {
    /// Set by the session: its end should reach the client as a reset, not a clean close (a
    /// relay cut by a timer, a session cut at shutdown).
    reset: AtomicBool,
    /// Set by the TLS task: the client's connection failed (reset, broken TLS).
    gone: AtomicBool,
    gone_notify: Notify,
    /// Set when the session has dropped its end: what the TLS task still carries, it carries
    /// on a clock (or not at all when a reset was asked for).
    ended: AtomicBool,
    ended_notify: Notify,
}

impl TlsLink {
    pub(crate) fn wants_reset(&self) -> bool {
        self.reset.load(Ordering::Relaxed)
    }

    pub(crate) fn set_gone(&self) {
        self.gone.store(true, Ordering::Relaxed);
        self.gone_notify.notify_waiters();
    }

    fn is_gone(&self) -> bool {
        self.gone.load(Ordering::Relaxed)
    }

    async fn gone(&self) {
        wait_for(&self.gone, &self.gone_notify).await
    }

    /// Completes once the session has dropped its end of the socket pair.
    pub(crate) async fn session_ended(&self) {
        wait_for(&self.ended, &self.ended_notify).await
    }
}

/// Waits until `flag` is set; the setter sets it, then notifies.
async fn wait_for(flag: &AtomicBool, notify: &Notify) {
    loop {
        let notified = notify.notified();
        if flag.load(Ordering::Relaxed) {
            return;
        }
        notified.await;
    }
}

/// The session's end of a TLS connection, as the session drops it.
impl Drop for Plaintext {
    fn drop(&mut self) {
        if let Plaintext::Tls(_, link) = self {
            link.ended.store(true, Ordering::Relaxed);
            link.ended_notify.notify_waiters();
        }
    }
}

/// A connection of a session, in plaintext.
pub(crate) enum Plaintext {
    /// The TCP connection itself.
    Tcp(TcpStream),
    /// Over TLS: the plaintext end of the socket pair the TLS task serves.
    Tls(UnixStream, Arc<TlsLink>),
}

/// A socket the relay can wait on and move bytes through without buffering of its own.
pub(crate) trait Ready: AsFd {
    fn readable(&self) -> impl Future<Output = io::Result<()>>;
    fn writable(&self) -> impl Future<Output = io::Result<()>>;
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize>;
    fn try_write(&self, buf: &[u8]) -> io::Result<usize>;
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
    /// Makes the coming close reach the peer as a reset.
    fn reset_on_close(&self);
    /// Whether an end of input just read was the peer failing rather than closing (a TLS
    /// peer that reset or broke TLS: its task can only hand on an EOF).
    fn failed_at_eof(&self) -> bool {
        false
    }
}

impl Ready for TcpStream {
    fn readable(&self) -> impl Future<Output = io::Result<()>> {
        TcpStream::readable(self)
    }
    fn writable(&self) -> impl Future<Output = io::Result<()>> {
        TcpStream::writable(self)
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        TcpStream::try_read(self, buf)
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        TcpStream::try_write(self, buf)
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        TcpStream::try_io(self, interest, f)
    }
    fn reset_on_close(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(Duration::ZERO));
    }
}

impl Ready for Plaintext {
    async fn readable(&self) -> io::Result<()> {
        match self {
            Plaintext::Tcp(s) => s.readable().await,
            Plaintext::Tls(s, _) => s.readable().await,
        }
    }
    async fn writable(&self) -> io::Result<()> {
        match self {
            Plaintext::Tcp(s) => s.writable().await,
            Plaintext::Tls(s, _) => s.writable().await,
        }
    }
    fn try_read(&self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Plaintext::Tcp(s) => s.try_read(buf),
            Plaintext::Tls(s, _) => s.try_read(buf),
        }
    }
    fn try_write(&self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Plaintext::Tcp(s) => s.try_write(buf),
            Plaintext::Tls(s, _) => s.try_write(buf),
        }
    }
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R> {
        match self {
            Plaintext::Tcp(s) => s.try_io(interest, f),
            Plaintext::Tls(s, _) => s.try_io(interest, f),
        }
    }
    fn reset_on_close(&self) {
        match self {
            Plaintext::Tcp(s) => s.reset_on_close(),
            Plaintext::Tls(_, link) => link.reset.store(true, Ordering::Relaxed),
        }
    }
    fn failed_at_eof(&self) -> bool {
        matches!(self, Plaintext::Tls(_, link) if link.is_gone())
    }
}

impl AsFd for Plaintext {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Plaintext::Tcp(s) => s.as_fd(),
            Plaintext::Tls(s, _) => s.as_fd(),
        }
    }
}

impl Plaintext {
    /// Whether the peer speaks through TLS.
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, Plaintext::Tls(..))
    }

    /// Completes when the peer's connection has been reset. A FIN alone may be a half-close
    /// (a client that sent its data and waits for the answer), which is legitimate, and
    /// pipelined data says nothing either: in both cases this waits forever and the session
    /// goes on, bounded by its own timeouts.
    pub(crate) async fn reset_by_client(&self) {
        match self {
            Plaintext::Tcp(stream) => {
                let mut byte = [0u8; 1];
                let mut buf = ReadBuf::new(&mut byte);
                // A peek that finds nothing clears the readiness, so a stale "readable" left
                // by the handshake cannot hide the reset that comes later.
                if std::future::poll_fn(|cx| stream.poll_peek(cx, &mut buf))
                    .await
                    .is_ok()
                {
                    std::future::pending::<()>().await;
                }
            }
            Plaintext::Tls(_, link) => link.gone().await,
        }
    }
}

impl AsyncRead for Plaintext {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plaintext::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Plaintext::Tls(s, _) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Plaintext {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Plaintext::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Plaintext::Tls(s, _) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plaintext::Tcp(s) => Pin::new(s).poll_flush(cx),
            Plaintext::Tls(s, _) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Plaintext::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Plaintext::Tls(s, _) => Pin::new(s).poll_shutdown(cx),
        }
    }
}
