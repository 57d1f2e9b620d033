//! The built-in targets the proxies connect to, served by the test or benchmark process itself
//! on 127.0.0.1: a data server that sinks an upload or sources a download, a TCP echo and a UDP
//! echo.
//!
//! Bulk data moves by sendfile/splice unless the benchmark's `--copy-io` (see `zerocopy`).
//!
//! Data protocol: the client sends `op` (b'U' or b'D') and a big-endian u64 length. For `U`
//! the server reads that many bytes and answers one byte `K`, so the upload's end is known
//! without relying on half-close; for `D` it writes that many bytes and closes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Read and write size for bulk transfers.
pub const BULK: usize = 256 * 1024;
/// A buffer of zeros to send from.
pub static ZEROS: [u8; BULK] = [0u8; BULK];
/// TCP echo listeners.
const ECHO_PORTS: usize = 8;
/// No progress for this long ends a target-side connection.
const STALL: Duration = Duration::from_secs(30);

/// Addresses of the running targets.
#[derive(Debug, Clone)]
pub struct Targets {
    /// Sink/source.
    pub data: SocketAddr,
    /// TCP echo (the first of `echos`).
    pub echo: SocketAddr,
    /// TCP echo on several ports, so many short connections through one proxy do not all
    /// share one destination (and exhaust the proxy's ephemeral ports for it).
    pub echos: Vec<SocketAddr>,
    /// UDP echo.
    pub udp_echo: SocketAddr,
}

/// Binds the targets on 127.0.0.1 and spawns their tasks on the current runtime; they run
/// until the runtime ends.
pub async fn start() -> io::Result<Targets> {
    let data = TcpListener::bind("127.0.0.1:0").await?;
    let mut echos = Vec::new();
    for _ in 0..ECHO_PORTS {
        let l = TcpListener::bind("127.0.0.1:0").await?;
        echos.push(l.local_addr()?);
        tokio::spawn(accept_loop(l, serve_echo));
    }
    let udp = UdpSocket::bind("127.0.0.1:0").await?;
    let t = Targets {
        data: data.local_addr()?,
        echo: echos[0],
        echos,
        udp_echo: udp.local_addr()?,
    };
    tokio::spawn(accept_loop(data, serve_data));
    tokio::spawn(udp_echo(udp));
    Ok(t)
}

async fn accept_loop<F, Fut>(l: TcpListener, serve: F)
where
    F: Fn(TcpStream) -> Fut,
    Fut: std::future::Future<Output = io::Result<()>> + Send + 'static,
{
    loop {
        match l.accept().await {
            Ok((s, _)) => {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s));
            }
            // EMFILE and friends: back off briefly instead of spinning.
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn timed<T>(fut: impl std::future::Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(STALL, fut)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

async fn serve_data(mut s: TcpStream) -> io::Result<()> {
    let mut head = [0u8; 9];
    timed(s.read_exact(&mut head)).await?;
    let len = u64::from_be_bytes(head[1..].try_into().expect("8 bytes"));
    let zero_copy = !crate::zerocopy::copy_io();
    match head[0] {
        b'U' if zero_copy => {
            let drain = crate::zerocopy::Drain::new()?;
            drain.recv_discard(&s, len, STALL).await?;
            timed(s.write_all(b"K")).await?;
            let mut b = [0u8; 1];
            let _ = timed(s.read(&mut b)).await;
        }
        b'D' if zero_copy => {
            crate::zerocopy::send_zeros(&s, len, STALL).await?;
            let _ = timed(s.shutdown()).await;
            let mut b = [0u8; 1];
            let _ = timed(s.read(&mut b)).await;
        }
        b'U' => {
            let mut buf = vec![0u8; BULK];
            let mut left = len;
            while left > 0 {
                let want = left.min(BULK as u64) as usize;
                let n = timed(s.read(&mut buf[..want])).await?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            timed(s.write_all(b"K")).await?;
            // Wait for the client's close so the ack is never cut short by a reset.
            let _ = timed(s.read(&mut buf[..1])).await;
        }
        b'D' => {
            let mut left = len;
            while left > 0 {
                let want = left.min(BULK as u64) as usize;
                let n = timed(s.write(&ZEROS[..want])).await?;
                left -= n as u64;
            }
            let _ = timed(s.shutdown()).await;
            let mut b = [0u8; 1];
            let _ = timed(s.read(&mut b)).await;
        }
        _ => {}
    }
    Ok(())
}

async fn serve_echo(mut s: TcpStream) -> io::Result<()> {
    let mut buf = [0u8; 2048];
    loop {
        // Idle connections of the memory case sit here for a long time; no stall limit.
        let n = s.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        timed(s.write_all(&buf[..n])).await?;
    }
}

async fn udp_echo(sock: UdpSocket) {
    let mut buf = vec![0u8; 65536];
    loop {
        if let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let _ = sock.send_to(&buf[..n], from).await;
        }
    }
}
