//! The SOCKS5 client of the peers' readiness probes and of the benchmark's load generator:
//! greeting, RFC 1929 login, CONNECT and UDP ASSOCIATE over tokio streams, every step under a
//! timeout, and the RFC 1928 §7 UDP header. Written from the RFCs and independent of
//! socksng-proto, so the proxy under test is not checked against its own codec.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Username and password for RFC 1929.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// User name (1..=255 bytes).
    pub user: String,
    /// Password (1..=255 bytes).
    pub pass: String,
}

/// Where load-generator connections go.
#[derive(Debug, Clone)]
pub enum Route {
    /// Straight to the target: the ceiling.
    Direct,
    /// Through a SOCKS5 proxy.
    Proxy {
        /// The proxy's listening address.
        addr: SocketAddr,
        /// Offer username/password (only) when set, else "no authentication" (only).
        auth: Option<Credentials>,
        /// SOCKS over TLS to the proxy, when set.
        tls: Option<TlsRoute>,
    },
}

/// How to reach a proxy over TLS: one client configuration for every connection, so TLS 1.3
/// session tickets are reused as a long-running client reuses them.
#[derive(Clone)]
pub struct TlsRoute {
    /// Trusts the proxy's CA, offers ALPN "socks", resumes sessions.
    pub config: Arc<rustls::ClientConfig>,
    /// The name the proxy's certificate is checked for.
    pub name: rustls::pki_types::ServerName<'static>,
}

impl fmt::Debug for TlsRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TlsRoute({:?})", self.name)
    }
}

/// A load-generator connection: plain TCP (`Left`), or TLS to a proxy (`Right`).
pub type Conn =
    tokio_util::either::Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// The TCP connection of `conn`, when nothing sits between it and the bytes (zero-copy I/O
/// works).
pub fn plain(conn: &Conn) -> Option<&TcpStream> {
    match conn {
        Conn::Left(s) => Some(s),
        Conn::Right(_) => None,
    }
}

/// Why a SOCKS exchange failed; `kind()` is the key errors are tallied under.
#[derive(Debug)]
pub enum SocksError {
    /// An I/O error at a stage.
    Io(&'static str, io::Error),
    /// A stage took longer than the I/O timeout.
    Timeout(&'static str),
    /// The peer closed the connection during a stage.
    Eof(&'static str),
    /// The server chose a method we did not offer (0xFF: none acceptable).
    Method(u8),
    /// RFC 1929 status other than success.
    AuthFailed(u8),
    /// A reply code other than success.
    Reply(u8),
    /// Something that is not SOCKS5.
    Protocol(&'static str),
}

impl SocksError {
    /// A short stable key, e.g. `reply 0x05` or `timeout: connect`.
    pub fn kind(&self) -> String {
        match self {
            SocksError::Io(stage, e) => format!("{stage}: {:?}", e.kind()),
            SocksError::Timeout(stage) => format!("timeout: {stage}"),
            SocksError::Eof(stage) => format!("eof: {stage}"),
            SocksError::Method(m) => format!("method 0x{m:02x}"),
            SocksError::AuthFailed(s) => format!("auth status 0x{s:02x}"),
            SocksError::Reply(r) => format!("reply 0x{r:02x}"),
            SocksError::Protocol(what) => format!("protocol: {what}"),
        }
    }
}

impl fmt::Display for SocksError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SocksError::Io(stage, e) => write!(f, "{stage}: {e}"),
            other => f.write_str(&other.kind()),
        }
    }
}

impl std::error::Error for SocksError {}

/// Names an I/O error from a long operation (one with its own stall limit) by stage.
pub fn io_error(stage: &'static str, e: io::Error) -> SocksError {
    match e.kind() {
        io::ErrorKind::TimedOut => SocksError::Timeout(stage),
        io::ErrorKind::UnexpectedEof => SocksError::Eof(stage),
        _ => SocksError::Io(stage, e),
    }
}

/// Runs `fut` under `limit`, naming `stage` in the error; EOF-class errors become `Eof`.
pub async fn step<T>(
    stage: &'static str,
    limit: Duration,
    fut: impl Future<Output = io::Result<T>>,
) -> Result<T, SocksError> {
    match tokio::time::timeout(limit, fut).await {
        Err(_) => Err(SocksError::Timeout(stage)),
        Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => Err(SocksError::Eof(stage)),
        Ok(Err(e)) => Err(SocksError::Io(stage, e)),
        Ok(Ok(v)) => Ok(v),
    }
}

/// Opens a TCP connection (nodelay) under the timeout.
pub async fn tcp_connect(addr: SocketAddr, limit: Duration) -> Result<TcpStream, SocksError> {
    tcp_connect_from(None, addr, limit).await
}

/// Opens a TCP connection from source address `src` (any port) when given. The port is chosen
/// at connect time (IP_BIND_ADDRESS_NO_PORT), so it only has to be unique per 4-tuple.
pub async fn tcp_connect_from(
    src: Option<IpAddr>,
    addr: SocketAddr,
    limit: Duration,
) -> Result<TcpStream, SocksError> {
    let s = match src {
        None => step("connect", limit, TcpStream::connect(addr)).await?,
        Some(ip) => {
            let setup = || -> io::Result<tokio::net::TcpSocket> {
                let sock = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                let one: libc::c_int = 1;
                // SAFETY: setsockopt reads an int from a valid pointer on our own socket.
                unsafe {
                    libc::setsockopt(
                        std::os::fd::AsRawFd::as_raw_fd(&sock),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        (&one as *const libc::c_int).cast(),
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
                sock.bind(SocketAddr::new(ip, 0))?;
                Ok(sock)
            };
            let sock = setup().map_err(|e| SocksError::Io("bind", e))?;
            step("connect", limit, sock.connect(addr)).await?
        }
    };
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// CONNECT command.
pub const CMD_CONNECT: u8 = 0x01;
/// UDP ASSOCIATE command.
pub const CMD_UDP: u8 = 0x03;

/// Encodes an address as ATYP + address + port.
pub fn put_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            out.push(0x01);
            out.extend_from_slice(&ip.octets());
        }
        IpAddr::V6(ip) => {
            out.push(0x04);
            out.extend_from_slice(&ip.octets());
        }
    }
    out.extend_from_slice(&addr.port().to_be_bytes());
}

/// Method negotiation and, with credentials, the RFC 1929 login.
pub async fn negotiate(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    auth: Option<&Credentials>,
    limit: Duration,
) -> Result<(), SocksError> {
    let method = if auth.is_some() { 0x02 } else { 0x00 };
    step("greeting write", limit, s.write_all(&[5, 1, method])).await?;
    step("greeting write", limit, s.flush()).await?;
    let mut sel = [0u8; 2];
    step("method read", limit, s.read_exact(&mut sel)).await?;
    if sel[0] != 5 {
        return Err(SocksError::Protocol("method selection version"));
    }
    if sel[1] != method {
        return Err(SocksError::Method(sel[1]));
    }
    if let Some(c) = auth {
        let (u, p) = (c.user.as_bytes(), c.pass.as_bytes());
        let mut msg = Vec::with_capacity(3 + u.len() + p.len());
        msg.push(1);
        msg.push(u.len() as u8);
        msg.extend_from_slice(u);
        msg.push(p.len() as u8);
        msg.extend_from_slice(p);
        step("auth write", limit, s.write_all(&msg)).await?;
        step("auth write", limit, s.flush()).await?;
        let mut st = [0u8; 2];
        step("auth read", limit, s.read_exact(&mut st)).await?;
        if st[1] != 0 {
            return Err(SocksError::AuthFailed(st[1]));
        }
    }
    Ok(())
}

/// Sends a request and reads the reply; returns the bound address it names.
pub async fn request(
    s: &mut (impl AsyncRead + AsyncWrite + Unpin),
    cmd: u8,
    target: SocketAddr,
    limit: Duration,
) -> Result<SocketAddr, SocksError> {
    let mut msg = Vec::with_capacity(22);
    msg.extend_from_slice(&[5, cmd, 0]);
    put_addr(&mut msg, target);
    step("request write", limit, s.write_all(&msg)).await?;
    step("request write", limit, s.flush()).await?;
    let mut head = [0u8; 4];
    step("reply read", limit, s.read_exact(&mut head)).await?;
    if head[0] != 5 {
        return Err(SocksError::Protocol("reply version"));
    }
    if head[1] != 0 {
        return Err(SocksError::Reply(head[1]));
    }
    let ip = match head[3] {
        0x01 => {
            let mut a = [0u8; 4];
            step("reply read", limit, s.read_exact(&mut a)).await?;
            IpAddr::V4(Ipv4Addr::from(a))
        }
        0x04 => {
            let mut a = [0u8; 16];
            step("reply read", limit, s.read_exact(&mut a)).await?;
            IpAddr::V6(Ipv6Addr::from(a))
        }
        0x03 => {
            let mut n = [0u8; 1];
            step("reply read", limit, s.read_exact(&mut n)).await?;
            let mut name = vec![0u8; n[0] as usize];
            step("reply read", limit, s.read_exact(&mut name)).await?;
            // A name in BND.ADDR is legal but useless to us; the caller falls back.
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        }
        _ => return Err(SocksError::Protocol("reply address type")),
    };
    let mut port = [0u8; 2];
    step("reply read", limit, s.read_exact(&mut port)).await?;
    Ok(SocketAddr::new(ip, u16::from_be_bytes(port)))
}

/// A connected stream to `target` along `route` (handshake done when proxied), from source
/// address `src` when given.
pub async fn open(
    route: &Route,
    src: Option<IpAddr>,
    target: SocketAddr,
    limit: Duration,
) -> Result<Conn, SocksError> {
    match route {
        Route::Direct => Ok(Conn::Left(tcp_connect_from(src, target, limit).await?)),
        Route::Proxy { addr, auth, tls } => {
            let tcp = tcp_connect_from(src, *addr, limit).await?;
            let mut s = match tls {
                None => Conn::Left(tcp),
                Some(t) => {
                    let connector = tokio_rustls::TlsConnector::from(t.config.clone());
                    let handshake = connector.connect(t.name.clone(), tcp);
                    Conn::Right(Box::new(step("tls handshake", limit, handshake).await?))
                }
            };
            negotiate(&mut s, auth.as_ref(), limit).await?;
            request(&mut s, CMD_CONNECT, target, limit).await?;
            Ok(s)
        }
    }
}

/// The RFC 1928 §7 header for a datagram to `dst` (FRAG 0).
pub fn udp_header(dst: SocketAddr) -> Vec<u8> {
    let mut h = vec![0, 0, 0];
    put_addr(&mut h, dst);
    h
}

/// Length of the UDP header at the start of `dgram`, or `None` if it is malformed or
/// fragmented.
pub fn udp_header_len(dgram: &[u8]) -> Option<usize> {
    if dgram.len() < 4 || dgram[2] != 0 {
        return None;
    }
    let len = match dgram[3] {
        0x01 => 4 + 4 + 2,
        0x04 => 4 + 16 + 2,
        0x03 => 4 + 1 + *dgram.get(4)? as usize + 2,
        _ => return None,
    };
    (dgram.len() >= len).then_some(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_header_round_trip() {
        let dst: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let mut d = udp_header(dst);
        assert_eq!(d, vec![0, 0, 0, 1, 127, 0, 0, 1, 0x10, 0x92]);
        d.extend_from_slice(b"payload");
        assert_eq!(udp_header_len(&d), Some(10));
        let v6 = udp_header("[::1]:1".parse().unwrap());
        assert_eq!(udp_header_len(&v6), Some(22));
        assert_eq!(udp_header_len(&[0, 0, 1, 1, 0, 0, 0, 0, 0, 0]), None);
        assert_eq!(udp_header_len(&[0, 0, 0, 3, 5, b'a']), None);
    }
}
