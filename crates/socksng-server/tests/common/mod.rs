//! Shared harness for the server's integration tests: an in-process server on an ephemeral
//! loopback port, target servers, and a byte-level SOCKS5 client.
#![allow(dead_code)]

use socksng_proto::{Address, Reply};

use std::net::SocketAddr;
use std::path::Path;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// Lets tests reach loopback targets, which the default policy refuses.
pub const ALLOW_LOOPBACK: &str =
    "[[rules]]\naction = \"allow\"\nto = [\"127.0.0.0/8\", \"::1/128\"]\n";

pub use socksng_server::testing::TestServer;

/// Starts a server from configuration text; `listen` defaults to 127.0.0.1:0.
pub async fn start(config: &str) -> TestServer {
    TestServer::start(config).await
}

pub async fn start_in(config: &str, dir: &Path) -> TestServer {
    TestServer::start_in(config, dir).await
}

#[allow(unused_imports)]
pub use socksng_server::testing::{echo_server, within, DEADLINE};

/// A server whose users are alice (password wonder) and bob (builder), with password logins
/// required, loopback destinations allowed and `extra` configuration; its directory is
/// returned for removal.
pub async fn two_user_server(tag: &str, extra: &str) -> (TestServer, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("socksng-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (u, p) in [("alice", "wonder"), ("bob", "builder")] {
        socksng_server::users::set_password(&dir.join("users"), u, p.as_bytes()).unwrap();
    }
    let cfg = format!(
        "[auth]\nmethods = [\"password\"]\nusers_file = \"users\"\n{extra}\n{ALLOW_LOOPBACK}"
    );
    (start_in(&cfg, &dir).await, dir)
}

/// A TCP server that hands each accepted connection (with the peer address) to the test.
pub async fn accepting_server(
    bind: &str,
) -> (
    SocketAddr,
    tokio::sync::mpsc::Receiver<(TcpStream, SocketAddr)>,
) {
    let l = TcpListener::bind(bind).await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok(x) = l.accept().await {
            if tx.send(x).await.is_err() {
                return;
            }
        }
    });
    (addr, rx)
}

/// A UDP echo server; returns its address and a counter of datagrams received.
pub async fn udp_echo(bind: &str) -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let s = UdpSocket::bind(bind).await.unwrap();
    let addr = s.local_addr().unwrap();
    let count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = s.recv_from(&mut buf).await {
            c.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ = s.send_to(&buf[..n], from).await;
        }
    });
    (addr, count)
}

/// Every wait in these helpers fails the test after this long instead of hanging it.
pub async fn read_reply(s: &mut TcpStream) -> Reply {
    within("reply", read_reply_unbounded(s)).await
}

async fn read_reply_unbounded(s: &mut TcpStream) -> Reply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        match Reply::decode(&buf) {
            Ok((r, _)) => return r,
            Err(socksng_proto::DecodeError::Incomplete) => {}
            Err(e) => panic!("bad reply {buf:?}: {e}"),
        }
        let n = s.read(&mut byte).await.unwrap();
        assert_eq!(n, 1, "server closed mid-reply after {buf:?}");
        buf.push(byte[0]);
    }
}

/// Greets with no authentication and sends a request; returns the reply.
pub async fn request(s: &mut TcpStream, cmd: u8, addr: &Address) -> Reply {
    let mut msg = vec![5, 1, 0, 5, cmd, 0];
    addr.encode(&mut msg);
    s.write_all(&msg).await.unwrap();
    let mut sel = [0u8; 2];
    within("method selection", s.read_exact(&mut sel))
        .await
        .unwrap();
    assert_eq!(sel, [5, 0]);
    read_reply(s).await
}

/// Opens a connection to the proxy and asks for CONNECT to `target`.
pub async fn socks_connect(proxy: SocketAddr, target: &Address) -> (TcpStream, Reply) {
    let mut s = within("connect to the proxy", TcpStream::connect(proxy))
        .await
        .unwrap();
    let r = request(&mut s, 1, target).await;
    (s, r)
}

/// Reads until EOF; panics on error.
pub async fn read_to_end(s: &mut TcpStream) -> Vec<u8> {
    let mut v = Vec::new();
    within("end of stream", s.read_to_end(&mut v))
        .await
        .unwrap();
    v
}

/// True when the peer closed the connection (EOF or reset) without sending anything more.
pub async fn closed_silently(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 64];
    matches!(within("close", s.read(&mut buf)).await, Ok(0) | Err(_))
}

/// Deterministic pseudo-random bytes (xorshift), so checksums need no extra crate.
pub fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// FNV-1a, enough to tell corrupted transfers apart.
pub fn checksum(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Opens a UDP association announcing `announce` as the client's datagram address; returns the
/// control connection (the association lives as long as it) and the relay address.
pub async fn udp_associate(proxy: SocketAddr, announce: Address) -> (TcpStream, SocketAddr) {
    let mut ctl = TcpStream::connect(proxy).await.unwrap();
    let r = request(&mut ctl, 3, &announce).await;
    assert_eq!(r.code, socksng_proto::ReplyCode::SUCCEEDED);
    (ctl, r.bound.socket_addr().unwrap())
}

/// Negotiates SOCKS-NG without credentials and returns the connection ready for a request.
pub async fn ng_session(proxy: std::net::SocketAddr) -> TcpStream {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(&[5, 2, 0xa5, 0]).await.unwrap();
    let mut sel = [0u8; 2];
    within("method selection", s.read_exact(&mut sel))
        .await
        .unwrap();
    assert_eq!(sel, [5, 0xa5]);
    let mut hello = Vec::new();
    socksng_proto::wire::ng::NgHello::new(socksng_proto::wire::ng::NgAuth::None)
        .encode(&mut hello)
        .unwrap();
    s.write_all(&hello).await.unwrap();
    let mut w = [0u8; 3];
    within("NG-WELCOME", s.read_exact(&mut w)).await.unwrap();
    assert_eq!(
        socksng_proto::wire::ng::NgWelcome::decode(&w).unwrap().0,
        socksng_proto::wire::ng::NgWelcome {
            status: 0,
            revision: 1
        }
    );
    s
}

/// Negotiates SOCKS-NG and opens a UDP tunnel.
pub async fn open_tunnel(proxy: SocketAddr) -> TcpStream {
    let mut s = ng_session(proxy).await;
    let mut req = Vec::new();
    socksng_proto::wire::ng::NgRequest::UdpTunnel.encode(&mut req);
    s.write_all(&req).await.unwrap();
    assert_eq!(
        read_reply(&mut s).await.code,
        socksng_proto::ReplyCode::SUCCEEDED
    );
    s
}

/// One frame from a tunnel, as the server sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// A datagram from `.0`.
    Datagram(Address, Vec<u8>),
    /// An ERROR frame: the datagram to `.1` was not sent, for reply code `.0`.
    Error(socksng_proto::ReplyCode, Address),
}

/// Reads one datagram frame, skipping ERROR frames; `None` when the stream ends.
pub async fn read_frame(s: &mut TcpStream) -> Option<(Address, Vec<u8>)> {
    loop {
        match read_tunnel_frame(s).await? {
            Frame::Datagram(from, payload) => return Some((from, payload)),
            Frame::Error(..) => continue,
        }
    }
}

/// Reads one frame of either kind; `None` when the stream ends.
pub async fn read_tunnel_frame(s: &mut TcpStream) -> Option<Frame> {
    within("a tunnel frame", read_frame_unbounded(s)).await
}

/// Reads exactly one frame (the head byte by byte, so nothing after it is taken) and
/// decodes it with the protocol's own decoder.
async fn read_frame_unbounded(s: &mut TcpStream) -> Option<Frame> {
    use socksng_proto::wire::ng::{TunnelFrame, ERROR_FRAME_LEN};
    let mut bytes = vec![0u8; 2];
    s.read_exact(&mut bytes).await.ok()?;
    let len = u16::from_be_bytes([bytes[0], bytes[1]]);
    let mut byte = [0u8; 1];
    if len == ERROR_FRAME_LEN {
        s.read_exact(&mut byte).await.ok()?;
        bytes.push(byte[0]);
    }
    let head = bytes.len();
    loop {
        match Address::decode(&bytes[head..]) {
            Ok(_) => break,
            Err(socksng_proto::DecodeError::Incomplete) => {}
            Err(e) => panic!("bad frame head {bytes:?}: {e}"),
        }
        s.read_exact(&mut byte).await.ok()?;
        bytes.push(byte[0]);
    }
    if len != ERROR_FRAME_LEN {
        let at = bytes.len();
        bytes.resize(at + usize::from(len), 0);
        s.read_exact(&mut bytes[at..]).await.ok()?;
    }
    let (frame, used) = TunnelFrame::decode(&bytes).expect("a whole frame");
    assert_eq!(used, bytes.len());
    Some(match frame {
        TunnelFrame::Datagram { address, payload } => Frame::Datagram(address, payload.to_vec()),
        TunnelFrame::Error { code, address } => Frame::Error(code, address),
    })
}
