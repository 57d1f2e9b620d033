//! The TCP relay: both directions move independently, each half-closes its destination when
//! its source reaches EOF (so a client's shutdown(SHUT_WR) reaches the target while the
//! target's answer still flows back), and an optional idle timeout ends a silent relay.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const BUF_SIZE: usize = 16 * 1024;

/// How a relay ended.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum RelayEnd {
    /// Both sides closed their sending direction.
    #[default]
    Closed,
    /// No data either way for the idle timeout.
    Idle,
    /// A read or write failed (reset, broken pipe).
    Error,
}

impl RelayEnd {
    /// Word for the session log.
    pub fn as_str(self) -> &'static str {
        match self {
            RelayEnd::Closed => "closed",
            RelayEnd::Idle => "idle timeout",
            RelayEnd::Error => "reset",
        }
    }
}

async fn pump<R, W>(
    mut from: R,
    mut to: W,
    moved: &AtomicU64,
    activity: &AtomicU64,
    epoch: Instant,
) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF_SIZE];
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            // Propagate the half-close; the other direction keeps going.
            return to.shutdown().await;
        }
        to.write_all(&buf[..n]).await?;
        moved.fetch_add(n as u64, Ordering::Relaxed);
        activity.store(epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
}

/// Relays between `client` and `target` until both directions are done, one fails, or the
/// relay sits idle for `idle` (zero: never). Bytes are added to `up` (client to target) and
/// `down` as they move, so a relay cut short still reports what it carried.
pub async fn relay(
    client: &mut TcpStream,
    target: &mut TcpStream,
    idle: Duration,
    up: &AtomicU64,
    down: &AtomicU64,
) -> RelayEnd {
    let (cr, cw) = client.split();
    let (tr, tw) = target.split();
    let activity = AtomicU64::new(0);
    let epoch = Instant::now();
    let both = async {
        // One failing direction (a reset, say) ends both: the other may never see EOF.
        match tokio::try_join!(
            pump(cr, tw, up, &activity, epoch),
            pump(tr, cw, down, &activity, epoch)
        ) {
            Ok(_) => RelayEnd::Closed,
            Err(_) => RelayEnd::Error,
        }
    };
    if idle.is_zero() {
        both.await
    } else {
        let watchdog = async {
            loop {
                let last = Duration::from_millis(activity.load(Ordering::Relaxed));
                let deadline = epoch + last + idle;
                if Instant::now() >= deadline {
                    return RelayEnd::Idle;
                }
                tokio::time::sleep_until(deadline).await;
            }
        };
        tokio::select! {
            end = both => end,
            end = watchdog => end,
        }
    }
}
