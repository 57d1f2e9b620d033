//! The UDP loads through UDP ASSOCIATE (or straight to the UDP echo for direct), and through
//! socksng's UDP over the stream (SOCKS-NG UDP-TUNNEL, driven by the client library): round
//! trips with one datagram outstanding, and windowed throughput.

use crate::cases::{Measure, Params};
use crate::machine::CpuWindow;
use crate::procs::{sample_tree, Meter};
use crate::socks::{negotiate, request, step, tcp_connect, udp_header, udp_header_len, Route};
use crate::socks::{SocksError, CMD_UDP};
use crate::stats::percentile_sorted;
use crate::targets::Targets;
use crate::tcp::record_memory;
use socksng_client::{Address, Client, ClientError, ProtocolPath, ProxyUdp, ProxyUrl, Resolve};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;
use tokio::time::timeout;

/// A ready UDP path: the socket (connected to the relay or the echo), the header to prefix,
/// and the control connection that keeps an association alive.
pub struct UdpPath {
    sock: UdpSocket,
    header: Vec<u8>,
    _control: Option<TcpStream>,
}

/// Why a UDP path could not be set up; `unsupported` marks a refusal of the command itself.
pub struct UdpSetupError {
    /// The server refused or dropped UDP ASSOCIATE (reported as n/a, not as a failure).
    pub unsupported: bool,
    /// What happened.
    pub reason: String,
}

/// Sets up the path: for a proxy, a control connection, UDP ASSOCIATE naming our socket's
/// address, and a first datagram that must come back within a few tries.
pub async fn setup(route: &Route, t: &Targets, limit: Duration) -> Result<UdpPath, UdpSetupError> {
    let io_err = |what: &str, e: std::io::Error| UdpSetupError {
        unsupported: false,
        reason: format!("{what}: {e}"),
    };
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| io_err("bind", e))?;
    let path = match route {
        Route::Direct => {
            sock.connect(t.udp_echo)
                .await
                .map_err(|e| io_err("connect", e))?;
            UdpPath {
                sock,
                header: Vec::new(),
                _control: None,
            }
        }
        Route::Proxy { addr, auth, .. } => {
            let fail = |e: SocksError| UdpSetupError {
                unsupported: false,
                reason: format!("UDP ASSOCIATE control connection: {e}"),
            };
            let mut ctl = tcp_connect(*addr, limit).await.map_err(fail)?;
            negotiate(&mut ctl, auth.as_ref(), limit)
                .await
                .map_err(fail)?;
            let local = sock.local_addr().map_err(|e| io_err("local address", e))?;
            let mut relay = match request(&mut ctl, CMD_UDP, local, limit).await {
                Ok(a) => a,
                Err(e) => {
                    let unsupported = matches!(
                        e,
                        SocksError::Reply(_) | SocksError::Eof(_) | SocksError::Io(..)
                    );
                    return Err(UdpSetupError {
                        unsupported,
                        reason: format!("UDP ASSOCIATE refused ({e})"),
                    });
                }
            };
            if relay.ip().is_unspecified() {
                relay.set_ip(addr.ip());
            }
            sock.connect(relay)
                .await
                .map_err(|e| io_err("connect to relay", e))?;
            UdpPath {
                sock,
                header: udp_header(t.udp_echo),
                _control: Some(ctl),
            }
        }
    };
    // The first datagram may open sockets in the proxy; it must come back within 3 tries.
    let mut buf = vec![0u8; 2048];
    for _ in 0..3 {
        if round_trip(
            &path,
            u64::MAX,
            16,
            &mut buf,
            limit.min(Duration::from_secs(1)),
        )
        .await
        .is_ok()
        {
            return Ok(path);
        }
    }
    Err(UdpSetupError {
        unsupported: false,
        reason: "UDP ASSOCIATE accepted but no datagram came back".into(),
    })
}

/// Memory per idle UDP association: the proxy tree's RSS before and after `p.udp_idle`
/// associations have each carried one round trip (so their outgoing sockets exist), then sit
/// idle with their control connections open.
pub async fn idle(
    route: &Route,
    t: &Targets,
    p: &Params,
    proxy: &Meter,
) -> Result<Measure, UdpSetupError> {
    let deadline = Instant::now() + p.case_timeout;
    let before = sample_tree(&proxy.roots);
    let mut paths = Vec::with_capacity(p.udp_idle);
    let mut errors = std::collections::BTreeMap::<String, u64>::new();
    while paths.len() < p.udp_idle && Instant::now() < deadline {
        match setup(route, t, p.io_timeout).await {
            Ok(path) => paths.push(path),
            // A server without UDP ASSOCIATE says so on the first one.
            Err(e) if paths.is_empty() => return Err(e),
            Err(e) => *errors.entry(e.reason).or_default() += 1,
        }
        if errors.values().sum::<u64>() > 100 {
            break;
        }
    }
    // Let the proxy settle (freed handshake buffers, lazily trimmed heaps).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = sample_tree(&proxy.roots);
    let mut m = Measure::default();
    m.errors_from(errors);
    record_memory(&mut m, &before, &after, paths.len());
    m.fact("asked", p.udp_idle);
    drop(paths);
    Ok(m)
}

/// The payload (after the header) of a received datagram, if it is well formed.
fn payload<'a>(path: &UdpPath, d: &'a [u8]) -> Option<&'a [u8]> {
    if path.header.is_empty() {
        Some(d)
    } else {
        udp_header_len(d).map(|h| &d[h..])
    }
}

fn build(path: &UdpPath, seq: u64, size: usize) -> Vec<u8> {
    let mut d = path.header.clone();
    d.extend_from_slice(&seq.to_be_bytes());
    d.resize(path.header.len() + size.max(8), 0x33);
    d
}

/// Sends datagram `seq` and waits for its echo (stale echoes are skipped).
async fn round_trip(
    path: &UdpPath,
    seq: u64,
    size: usize,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), SocksError> {
    let d = build(path, seq, size);
    step("udp send", limit, path.sock.send(&d)).await?;
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = step("udp recv", left, path.sock.recv(buf)).await?;
        if let Some(p) = payload(path, &buf[..n]) {
            if p.len() >= 8 && p[..8] == seq.to_be_bytes() {
                return Ok(());
            }
        }
    }
}

/// Round trips with one datagram outstanding; a datagram unanswered within a second counts as
/// lost.
pub async fn rtt(path: &UdpPath, p: &Params, proxy: &Meter) -> Result<Measure, String> {
    rtt_over(Carrier::Datagram(path), p, proxy).await
}

/// What carries the round trips.
enum Carrier<'a> {
    /// Datagrams (UDP ASSOCIATE, or direct).
    Datagram(&'a UdpPath),
    /// Frames in a SOCKS-NG UDP-TUNNEL.
    Tunnel(&'a mut ProxyUdp, &'a Targets),
}

async fn rtt_over(mut carrier: Carrier<'_>, p: &Params, proxy: &Meter) -> Result<Measure, String> {
    let deadline = Instant::now() + p.case_timeout;
    let mut buf = vec![0u8; 65536];
    let mut lat = Vec::with_capacity(p.udp_count);
    let mut m = Measure::default();
    let limit = p.io_timeout.min(Duration::from_secs(1));
    let window = CpuWindow::start(proxy);
    let t0 = Instant::now();
    for seq in 0..p.udp_count as u64 {
        if Instant::now() >= deadline {
            m.error("case timeout".into());
            break;
        }
        let start = Instant::now();
        let size = p.udp_rtt_size;
        let done = match &mut carrier {
            Carrier::Datagram(path) => round_trip(path, seq, size, &mut buf, limit)
                .await
                .map_err(|e| e.kind()),
            Carrier::Tunnel(udp, t) => tunnel_round_trip(udp, t, seq, size, &mut buf, limit).await,
        };
        match done {
            Ok(()) => lat.push(start.elapsed().as_nanos() as u64),
            Err(e) => {
                m.error(e);
                // A tunnel is a stream: after a timeout it is out of step, so stop there.
                if matches!(carrier, Carrier::Tunnel(..)) {
                    break;
                }
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let usage = window.finish();
    if lat.is_empty() {
        return Err(format!("no round trip completed: {:?}", m.errors));
    }
    lat.sort_unstable();
    let us = |q| percentile_sorted(&lat, q).unwrap_or(0) as f64 / 1e3;
    m.metric("per_s", lat.len() as f64 / secs);
    m.metric("p50_us", us(0.5));
    m.metric("p99_us", us(0.99));
    usage.record(&mut m, proxy.is_proxy(), secs);
    m.fact("completed", lat.len());
    m.fact("lost", p.udp_count - lat.len());
    m.fact("payload", p.udp_rtt_size);
    Ok(m)
}

/// What a throughput run counted, up to the last echo.
struct Tally {
    sent: u64,
    got: u64,
    lost: u64,
    bytes: u64,
    secs: f64,
}

impl Tally {
    fn into_measure(
        self,
        mut m: Measure,
        window: CpuWindow,
        p: &Params,
        proxy: &Meter,
    ) -> Result<Measure, String> {
        let usage = window.finish();
        if self.got == 0 || self.secs <= 0.0 {
            return Err(format!("no datagram came back: {:?}", m.errors));
        }
        m.metric("gbit_s", self.bytes as f64 * 8.0 / self.secs / 1e9);
        m.metric("per_s", self.got as f64 / self.secs);
        m.metric("loss", self.lost as f64 / self.sent.max(1) as f64);
        usage.record(&mut m, proxy.is_proxy(), usage.wall);
        m.fact("sent", self.sent);
        m.fact("echoed", self.got);
        m.fact("payload", p.udp_tput_size);
        m.fact("window", p.udp_window);
        Ok(m)
    }
}

/// Throughput: up to `udp_window` datagrams in flight; when nothing comes back for 200 ms the
/// outstanding ones are counted lost and the window refilled. Rate is echoed payload bytes over
/// the time to the last echo.
pub async fn tput(path: &UdpPath, p: &Params, proxy: &Meter) -> Result<Measure, String> {
    let deadline = Instant::now() + p.case_timeout;
    let mut buf = vec![0u8; 65536];
    let total = p.udp_tput_count as u64;
    let (mut sent, mut got, mut in_flight, mut lost) = (0u64, 0u64, 0u64, 0u64);
    let mut bytes = 0u64;
    let mut m = Measure::default();
    let window = CpuWindow::start(proxy);
    let t0 = Instant::now();
    let mut last = t0;
    let mut d = build(path, 0, p.udp_tput_size);
    let hl = path.header.len();
    let window_max = p.udp_window as u64;
    while (sent < total || in_flight > 0) && Instant::now() < deadline {
        // Fill the window without waiting; a full socket buffer just ends the burst.
        while in_flight < window_max && sent < total {
            d[hl..hl + 8].copy_from_slice(&sent.to_be_bytes());
            match path.sock.try_send(&d) {
                Ok(_) => {
                    sent += 1;
                    in_flight += 1;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    m.error(format!("udp send: {:?}", e.kind()));
                    sent += 1;
                    lost += 1;
                }
            }
        }
        // Take every echo already queued, then wait (bounded) only when there was none.
        let mut any = false;
        loop {
            match path.sock.try_recv(&mut buf) {
                Ok(n) => {
                    if let Some(pl) = payload(path, &buf[..n]) {
                        bytes += pl.len() as u64;
                        got += 1;
                        in_flight = in_flight.saturating_sub(1);
                        any = true;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    m.error(format!("udp recv: {:?}", e.kind()));
                    break;
                }
            }
        }
        if any {
            last = Instant::now();
            continue;
        }
        let wait = if in_flight < window_max && sent < total {
            // Room in the window: wait for either direction.
            tokio::time::timeout(Duration::from_millis(200), async {
                tokio::select! {
                    r = path.sock.readable() => r,
                    r = path.sock.writable() => r,
                }
            })
            .await
        } else {
            tokio::time::timeout(Duration::from_millis(200), path.sock.readable()).await
        };
        match wait {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                m.error(format!("udp wait: {:?}", e.kind()));
                break;
            }
            Err(_) => {
                // Nothing for 200 ms: whatever is outstanding is lost.
                lost += in_flight;
                in_flight = 0;
            }
        }
    }
    let tally = Tally {
        sent,
        got,
        lost,
        bytes,
        secs: last.duration_since(t0).as_secs_f64(),
    };
    tally.into_measure(m, window, p, proxy)
}

/// Sets up UDP over the stream: a SOCKS-NG UDP-TUNNEL through the client library, checked
/// with a first round trip. A server that does not select SOCKS-NG is reported as n/a.
pub async fn tunnel_setup(
    route: &Route,
    t: &Targets,
    limit: Duration,
) -> Result<ProxyUdp, UdpSetupError> {
    let Route::Proxy { addr, auth, .. } = route else {
        return Err(UdpSetupError {
            unsupported: true,
            reason: "no proxy, no stream".into(),
        });
    };
    let url = ProxyUrl {
        version: socksng_client::SocksVersion::Socks5,
        host: addr.ip().to_string(),
        port: addr.port(),
        credentials: auth.as_ref().map(|c| (c.user.clone(), c.pass.clone())),
        resolve: Resolve::Remote,
        tls: None,
    };
    let failed = |e: ClientError| UdpSetupError {
        unsupported: false,
        reason: format!("UDP-TUNNEL: {e}"),
    };
    let client = Client::new(url);
    // A plain server is told apart before any UDP request: it does not select SOCKS-NG.
    match timeout(limit, client.capabilities()).await {
        Ok(Ok(_)) => {}
        Ok(Err(ClientError::NotSupported(_))) => {
            return Err(UdpSetupError {
                unsupported: true,
                reason: "no UDP over the stream: the server does not speak SOCKS-NG".into(),
            })
        }
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => return Err(failed(ClientError::Io(std::io::ErrorKind::TimedOut.into()))),
    }
    let mut udp = match timeout(limit, client.udp()).await {
        Ok(Ok(u)) => u,
        Ok(Err(e)) => return Err(failed(e)),
        Err(_) => return Err(failed(ClientError::Io(std::io::ErrorKind::TimedOut.into()))),
    };
    if udp.path() != ProtocolPath::Ng {
        return Err(UdpSetupError {
            unsupported: true,
            reason: "no UDP over the stream: the server does not speak SOCKS-NG".into(),
        });
    }
    let mut buf = vec![0u8; 2048];
    tunnel_round_trip(&mut udp, t, u64::MAX, 16, &mut buf, limit)
        .await
        .map_err(|e| UdpSetupError {
            unsupported: false,
            reason: format!("UDP-TUNNEL accepted but the first datagram: {e}"),
        })?;
    Ok(udp)
}

async fn tunnel_round_trip(
    udp: &mut ProxyUdp,
    t: &Targets,
    seq: u64,
    size: usize,
    buf: &mut [u8],
    limit: Duration,
) -> Result<(), String> {
    let mut d = seq.to_be_bytes().to_vec();
    d.resize(size.max(8), 0x33);
    let to = Address::ip(t.udp_echo);
    let exchange = async {
        udp.send_to(&d, &to).await?;
        loop {
            let (n, _) = udp.recv_from(buf).await?;
            if n >= 8 && buf[..8] == seq.to_be_bytes() {
                return Ok::<(), ClientError>(());
            }
        }
    };
    match timeout(limit, exchange).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("timeout".into()),
    }
}

/// Round trips over the stream with one datagram outstanding (the same load as [`rtt`]).
pub async fn tunnel_rtt(
    mut udp: ProxyUdp,
    t: &Targets,
    p: &Params,
    proxy: &Meter,
) -> Result<Measure, String> {
    rtt_over(Carrier::Tunnel(&mut udp, t), p, proxy).await
}

/// Throughput over the stream with up to `udp_window` datagrams outstanding (the same load
/// as [`tput`]). The server drops datagrams for a client that does not keep up; when nothing
/// comes back for 200 ms, what is outstanding counts as lost and the window is refilled.
pub async fn tunnel_tput(
    udp: ProxyUdp,
    t: &Targets,
    p: &Params,
    proxy: &Meter,
) -> Result<Measure, String> {
    let total = p.udp_tput_count as u64;
    let size = p.udp_tput_size;
    let credit = Arc::new(Semaphore::new(p.udp_window));
    let sent = Arc::new(AtomicU64::new(0));
    let (mut tx, mut rx) = udp.split();
    let to = Address::ip(t.udp_echo);
    let window = CpuWindow::start(proxy);
    let t0 = Instant::now();
    let writer = {
        let (credit, sent) = (credit.clone(), sent.clone());
        tokio::spawn(async move {
            let mut d = vec![0x33u8; size.max(8)];
            for seq in 0..total {
                match credit.acquire().await {
                    Ok(permit) => permit.forget(),
                    Err(_) => return Ok(tx),
                }
                d[..8].copy_from_slice(&seq.to_be_bytes());
                tx.send_to(&d, &to).await?;
                sent.fetch_add(1, Ordering::Relaxed);
            }
            // Handed back rather than dropped: dropping the sender half-closes the tunnel,
            // and the server would end it before the last echoes are read.
            Ok::<_, ClientError>(tx)
        })
    };
    let deadline = t0 + p.case_timeout;
    let mut buf = vec![0u8; 65536];
    let (mut got, mut lost, mut bytes) = (0u64, 0u64, 0u64);
    let mut last = t0;
    let mut m = Measure::default();
    while got + lost < total && Instant::now() < deadline {
        match timeout(Duration::from_millis(200), rx.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) => {
                got += 1;
                bytes += n as u64;
                last = Instant::now();
                credit.add_permits(1);
            }
            Ok(Err(e)) => {
                m.error(format!("tunnel recv: {e}"));
                break;
            }
            Err(_) => {
                let outstanding = sent.load(Ordering::Relaxed).saturating_sub(got + lost);
                lost += outstanding;
                credit.add_permits(outstanding as usize);
            }
        }
    }
    credit.close();
    let sent_total = sent.load(Ordering::Relaxed);
    match writer.await {
        Ok(Ok(tx)) => drop(tx),
        Ok(Err(e)) => m.error(format!("tunnel send: {e}")),
        Err(e) => m.error(format!("tunnel writer: {e}")),
    }
    let tally = Tally {
        sent: sent_total,
        got,
        lost,
        bytes,
        secs: last.duration_since(t0).as_secs_f64(),
    };
    tally.into_measure(m, window, p, proxy)
}
