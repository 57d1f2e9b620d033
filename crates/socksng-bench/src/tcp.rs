//! The TCP loads: bulk throughput (with the proxy's CPU time over the transfer), handshake
//! cycles with latency percentiles, and memory per idle proxied connection.

use crate::cases::{Measure, Params};
use crate::machine::{tcp_congestion, CpuWindow};
use crate::procs::{sample_tree, Meter, TreeSample};
use crate::socks::{io_error, open, plain, step, Conn, Route, SocksError};
use crate::stats::percentile_sorted;
use crate::targets::{Targets, BULK, ZEROS};
use crate::zerocopy;
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// Source and destination of the `i`-th of many short or idle connections: sources spread over
/// 127.0.0.2-254 and destinations over the echo ports, because loopback benchmarks otherwise
/// run every connection through one 4-tuple prefix and exhaust the ephemeral ports (connect()
/// then scans the whole range for each attempt, milliseconds each, serialised).
#[derive(Clone)]
pub struct Endpoints {
    targets: Vec<SocketAddr>,
    spread_sources: bool,
}

impl Endpoints {
    /// Always `target`, from the default source.
    pub fn single(target: SocketAddr) -> Endpoints {
        Endpoints {
            targets: vec![target],
            spread_sources: false,
        }
    }

    /// The echo ports, and sources spread when `spread_sources`.
    pub fn echo(t: &Targets, spread_sources: bool) -> Endpoints {
        Endpoints {
            targets: t.echos.clone(),
            spread_sources,
        }
    }

    fn pick(&self, i: usize) -> (Option<IpAddr>, SocketAddr) {
        let src = self
            .spread_sources
            .then(|| IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i % 253) as u8)));
        (src, self.targets[i % self.targets.len()])
    }
}

/// The next of `n` work items for a worker, until they run out or `deadline` passes.
fn claim(next: &AtomicUsize, n: usize, deadline: Instant) -> Option<usize> {
    let i = next.fetch_add(1, Ordering::Relaxed);
    (i < n && Instant::now() < deadline).then_some(i)
}

/// Notes the congestion control the TCP case ran under (see `--tcp-congestion`).
fn record_congestion(m: &mut Measure) {
    if let Some(cc) = tcp_congestion() {
        m.fact("tcp_congestion", cc);
    }
}

/// Opens `n` connections along `route`, at most `concurrency` at a time. Returns the streams
/// opened and a tally of failures; stops claiming new ones after `deadline`.
async fn open_many(
    route: &Route,
    ends: &Endpoints,
    n: usize,
    concurrency: usize,
    limit: Duration,
    deadline: Instant,
    exchange: usize,
) -> (Vec<Conn>, BTreeMap<String, u64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..concurrency.clamp(1, n.max(1)) {
        let (route, next, ends) = (route.clone(), next.clone(), ends.clone());
        set.spawn(async move {
            let mut streams = Vec::new();
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while let Some(i) = claim(&next, n, deadline) {
                let (src, target) = ends.pick(i);
                match open_one(&route, src, target, limit, exchange).await {
                    Ok(s) => streams.push(s),
                    Err(e) => *errors.entry(e.kind()).or_default() += 1,
                }
            }
            (streams, errors)
        });
    }
    let mut streams = Vec::with_capacity(n);
    let mut errors = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        if let Ok((s, e)) = r {
            streams.extend(s);
            for (k, v) in e {
                *errors.entry(k).or_default() += v;
            }
        }
    }
    (streams, errors)
}

/// One connection, plus an echo exchange of `exchange` bytes when non-zero.
async fn open_one(
    route: &Route,
    src: Option<IpAddr>,
    target: SocketAddr,
    limit: Duration,
    exchange: usize,
) -> Result<Conn, SocksError> {
    let mut s = open(route, src, target, limit).await?;
    if exchange > 0 {
        echo_exchange(&mut s, exchange, limit).await?;
    }
    Ok(s)
}

async fn echo_exchange(s: &mut Conn, n: usize, limit: Duration) -> Result<(), SocksError> {
    let msg = [0x5au8; 512];
    let n = n.min(msg.len());
    step("echo write", limit, s.write_all(&msg[..n])).await?;
    step("echo flush", limit, s.flush()).await?;
    let mut back = [0u8; 512];
    step("echo read", limit, s.read_exact(&mut back[..n])).await?;
    if back[..n] != msg[..n] {
        return Err(SocksError::Protocol("echo mismatch"));
    }
    Ok(())
}

/// Moves `len` bytes over a connected stream to the data target.
async fn transfer(mut s: Conn, up: bool, len: u64, limit: Duration) -> Result<u64, SocksError> {
    let mut head = [0u8; 9];
    head[0] = if up { b'U' } else { b'D' };
    head[1..].copy_from_slice(&len.to_be_bytes());
    step("data header", limit, s.write_all(&head)).await?;
    step("data header", limit, s.flush()).await?;
    // Zero-copy needs the bare socket: TLS bytes go through user space anyway.
    if let Some(tcp) = plain(&s).filter(|_| !zerocopy::copy_io()) {
        if up {
            zerocopy::send_zeros(tcp, len, limit)
                .await
                .map_err(|e| io_error("upload send", e))?;
            let mut ack = [0u8; 1];
            step("upload ack", limit, s.read_exact(&mut ack)).await?;
        } else {
            let drain = zerocopy::Drain::new().map_err(|e| io_error("pipe", e))?;
            drain
                .recv_discard(tcp, len, limit)
                .await
                .map_err(|e| io_error("download receive", e))?;
        }
        return Ok(len);
    }
    let mut left = len;
    if up {
        while left > 0 {
            let want = left.min(BULK as u64) as usize;
            let n = step("upload write", limit, s.write(&ZEROS[..want])).await?;
            left -= n as u64;
        }
        // Over TLS the last records may still sit in the client's buffer.
        step("upload flush", limit, s.flush()).await?;
        let mut ack = [0u8; 1];
        step("upload ack", limit, s.read_exact(&mut ack)).await?;
    } else {
        let mut buf = vec![0u8; BULK];
        while left > 0 {
            let want = left.min(BULK as u64) as usize;
            let n = step("download read", limit, s.read(&mut buf[..want])).await?;
            if n == 0 {
                return Err(SocksError::Eof("download read"));
            }
            left -= n as u64;
        }
    }
    Ok(len)
}

/// Bulk throughput: `streams` connections are opened first, then all transfer `per_stream`
/// bytes at once; the clock and the CPU counters run from the first byte to the last stream's
/// end. `proxy` measures the proxy (nothing for direct).
pub async fn throughput(
    route: &Route,
    t: &Targets,
    up: bool,
    streams: usize,
    per_stream: u64,
    p: &Params,
    proxy: &Meter,
) -> Result<Measure, String> {
    let deadline = Instant::now() + p.case_timeout;
    let (conns, errors) = open_many(
        route,
        &Endpoints::single(t.data),
        streams,
        streams,
        p.io_timeout,
        deadline,
        0,
    )
    .await;
    if conns.len() < streams {
        return Err(format!(
            "opened {} of {streams} streams: {errors:?}",
            conns.len()
        ));
    }
    let window = CpuWindow::start(proxy);
    let t0 = Instant::now();
    let mut set = JoinSet::new();
    for s in conns {
        set.spawn(transfer(s, up, per_stream, p.io_timeout));
    }
    let mut total = 0u64;
    let mut m = Measure::default();
    let joined = tokio::time::timeout_at(deadline.into(), async {
        while let Some(r) = set.join_next().await {
            match r {
                Ok(Ok(n)) => total += n,
                Ok(Err(e)) => m.error(e.kind()),
                Err(e) => m.error(format!("task: {e}")),
            }
        }
    })
    .await;
    let secs = t0.elapsed().as_secs_f64();
    let usage = window.finish();
    let cpu = usage.proxy;
    if joined.is_err() {
        return Err(format!(
            "case timeout after {secs:.1}s with {total} bytes moved"
        ));
    }
    if !m.errors.is_empty() {
        return Err(format!("stream failures: {:?}", m.errors));
    }
    m.metric("gbit_s", total as f64 * 8.0 / secs / 1e9);
    usage.record(&mut m, proxy.is_proxy(), secs);
    if proxy.is_proxy() {
        m.metric("proxy_cpu_s", cpu);
        // CPU time comes in clock ticks; below one tick the ratio means nothing.
        if cpu > 0.0 {
            m.metric("gb_per_proxy_cpu_s", total as f64 / cpu / 1e9);
        }
        if let Some(core) = usage.proxy_core.filter(|c| *c > 0.0) {
            m.metric("proxy_core_s", core);
            m.metric("gb_per_proxy_core_s", total as f64 / core / 1e9);
        }
    }
    m.fact("bytes", total);
    if proxy.is_proxy() {
        m.fact("cpu_source", proxy.cpu_source());
    }
    m.fact("streams", streams);
    m.fact("seconds", secs);
    record_congestion(&mut m);
    Ok(m)
}

/// Runs `n` handshake cycles with `concurrency` workers; returns latencies (ns) and failures.
async fn cycles(
    route: &Route,
    ends: &Endpoints,
    n: usize,
    p: &Params,
    deadline: Instant,
) -> (Vec<u64>, BTreeMap<String, u64>) {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = JoinSet::new();
    for _ in 0..p.hs_concurrency.max(1) {
        let (route, next, ends) = (route.clone(), next.clone(), ends.clone());
        let (limit, payload) = (p.io_timeout, p.hs_payload);
        set.spawn(async move {
            let mut lat: Vec<u64> = Vec::with_capacity(n / 8 + 1);
            let mut errors: BTreeMap<String, u64> = BTreeMap::new();
            while let Some(i) = claim(&next, n, deadline) {
                let (src, target) = ends.pick(i);
                let start = Instant::now();
                match open_one(&route, src, target, limit, payload).await {
                    Ok(s) => {
                        drop(s);
                        lat.push(start.elapsed().as_nanos() as u64);
                    }
                    Err(e) => *errors.entry(e.kind()).or_default() += 1,
                }
            }
            (lat, errors)
        });
    }
    let mut lat = Vec::with_capacity(n);
    let mut errors = BTreeMap::new();
    while let Some(r) = set.join_next().await {
        let (l, e) =
            r.unwrap_or_else(|e| (Vec::new(), BTreeMap::from([(format!("task: {e}"), 1)])));
        lat.extend(l);
        for (k, v) in e {
            *errors.entry(k).or_default() += v;
        }
    }
    (lat, errors)
}

/// Handshake cycles: `hs_count` cycles of connect, greeting (and login), CONNECT to the echo,
/// one `hs_payload` exchange and close, by `hs_concurrency` workers, after an unmeasured
/// warm-up of a tenth as many (fresh servers and sockets fault in memory and fill caches).
/// Bounded by `hs_time` (the warm-up by a tenth of it).
pub async fn handshakes(
    route: &Route,
    t: &Targets,
    p: &Params,
    proxy: &Meter,
) -> Result<Measure, String> {
    let limit = p.case_timeout.min(p.hs_time);
    let mut m = Measure::default();
    let warm = (p.hs_count / 10).clamp(1, 2000);
    let ends = Endpoints::echo(t, p.spread_sources);
    let warm_deadline = Instant::now() + limit / 10;
    let (_, warm_errors) = cycles(route, &ends, warm, p, warm_deadline).await;
    for (k, v) in warm_errors {
        *m.errors.entry(format!("warm-up: {k}")).or_default() += v;
    }
    let window = CpuWindow::start(proxy);
    let t0 = Instant::now();
    let (mut lat, errors) = cycles(route, &ends, p.hs_count, p, t0 + limit).await;
    let failed: u64 = errors.values().sum();
    m.errors_from(errors);
    let secs = t0.elapsed().as_secs_f64();
    let usage = window.finish();
    if lat.is_empty() {
        return Err(format!("no handshake completed: {:?}", m.errors));
    }
    lat.sort_unstable();
    let ms = |q| percentile_sorted(&lat, q).unwrap_or(0) as f64 / 1e6;
    m.metric("per_s", lat.len() as f64 / secs);
    m.metric("p50_ms", ms(0.5));
    m.metric("p99_ms", ms(0.99));
    m.metric("p999_ms", ms(0.999));
    usage.record(&mut m, proxy.is_proxy(), secs);
    m.fact("completed", lat.len());
    m.fact("failed", failed);
    m.fact("warm_up", warm);
    let short = p.hs_count.saturating_sub(lat.len() + failed as usize);
    if short > 0 {
        m.fact(
            "stopped_by_time_limit",
            format!(
                "{} of {} cycles run in {} s",
                p.hs_count - short,
                p.hs_count,
                limit.as_secs()
            ),
        );
    }
    m.fact("concurrency", p.hs_concurrency);
    m.fact("max_ms", *lat.last().unwrap_or(&0) as f64 / 1e6);
    m.fact("seconds", secs);
    record_congestion(&mut m);
    Ok(m)
}

/// The memory figures of an idle case: RSS and PSS per connection (or association) from the
/// proxy tree's samples before and after `n` of them were opened.
pub fn record_memory(m: &mut Measure, before: &TreeSample, after: &TreeSample, n: usize) {
    let per = |a: u64, b: u64| (a as f64 - b as f64) / n as f64;
    m.metric("rss_kib_per_conn", per(after.rss_kib, before.rss_kib));
    m.metric("pss_kib_per_conn", per(after.pss_kib, before.pss_kib));
    m.fact("connections", n);
    m.fact("rss_kib_before", before.rss_kib);
    m.fact("rss_kib_after", after.rss_kib);
    m.fact("pss_kib_before", before.pss_kib);
    m.fact("pss_kib_after", after.pss_kib);
    m.fact("procs_after", after.procs);
    m.fact("threads_after", after.threads);
}

/// Memory per idle connection: the proxy tree's RSS (and PSS) before and after `k`
/// connections have each completed CONNECT to the echo and one small exchange, then sit idle.
pub async fn idle(
    route: &Route,
    t: &Targets,
    k: usize,
    p: &Params,
    proxy: &Meter,
) -> Result<Measure, String> {
    let deadline = Instant::now() + p.case_timeout;
    let before = sample_tree(&proxy.roots);
    let t0 = Instant::now();
    let (conns, errors) = open_many(
        route,
        &Endpoints::echo(t, p.spread_sources),
        k,
        p.idle_concurrency,
        p.io_timeout,
        deadline,
        32,
    )
    .await;
    let open_secs = t0.elapsed().as_secs_f64();
    if conns.is_empty() {
        return Err(format!("no connection opened: {errors:?}"));
    }
    // Let the proxy settle (freed handshake buffers, lazily trimmed heaps).
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let after = sample_tree(&proxy.roots);
    let n = conns.len();
    let mut m = Measure::default();
    let failed: u64 = errors.values().sum();
    m.errors_from(errors);
    let untried = k.saturating_sub(n + failed as usize);
    if untried > 0 {
        let key = format!(
            "not attempted: case time limit ({} s)",
            p.case_timeout.as_secs()
        );
        *m.errors.entry(key).or_default() += untried as u64;
    }
    record_memory(&mut m, &before, &after, n);
    m.fact("asked", k);
    m.fact("open_seconds", open_secs);
    drop(conns);
    Ok(m)
}
