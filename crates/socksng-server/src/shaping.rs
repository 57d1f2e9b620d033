//! Service classes on the wire: which class a user is in, each user's rate limit per
//! direction (a token bucket shared by all of the user's sessions), and the weighted fair
//! sharing of a configured uplink between users (self-clocked fair queueing: each grant
//! carries a finish tag of `max(virtual time, the user's last tag) + bytes / weight`, and the
//! link serves the smallest tag at its configured rate). A user with nothing queued keeps no
//! credit, so an idle class's share goes to the others at once, and the link never idles
//! while anyone waits.
//!
//! A relay direction that is shaped asks for each chunk before writing it, so it leaves
//! splice (which moves data without the relay seeing it); unshaped directions keep it.

use crate::config::{ClassConfig, Config};
use std::collections::{BinaryHeap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::oneshot;
use tokio::time::Instant;

/// Which way bytes go: up is client to target, down is target to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Way {
    Up,
    Down,
}

/// The shaping state of a server; lasts across reloads (rates and weights are taken from the
/// class at each session's start).
#[derive(Default)]
pub(crate) struct Shaper {
    buckets: Mutex<HashMap<(String, Way), Arc<Bucket>>>,
    links: Mutex<HashMap<Way, Arc<Link>>>,
}

/// What one direction of one session is held to.
#[derive(Clone)]
pub(crate) struct Pace {
    /// Who it is accounted to: the user, or an anonymous client's address.
    flow: Arc<str>,
    weight: f64,
    bucket: Option<Arc<Bucket>>,
    link: Option<Arc<Link>>,
}

/// The paces of a session's two directions.
#[derive(Clone, Default)]
pub(crate) struct Paces {
    pub up: Option<Pace>,
    pub down: Option<Pace>,
}

impl Shaper {
    /// The paces for a session of `flow` (a user, or a client address) in `class` under
    /// `cfg`'s uplink; directions with neither a limit nor a shared uplink are not shaped.
    pub(crate) fn paces(&self, cfg: &Config, class: &ClassConfig, flow: &str) -> Paces {
        let flow: Arc<str> = Arc::from(flow);
        let pace = |way: Way, limit: Option<u64>, link_rate: Option<u64>| {
            let bucket = limit.map(|rate| self.bucket(&flow, way, rate));
            let link = link_rate.map(|rate| self.link(way, rate));
            (bucket.is_some() || link.is_some()).then(|| Pace {
                flow: flow.clone(),
                weight: f64::from(class.weight.max(1)),
                bucket,
                link,
            })
        };
        Paces {
            up: pace(Way::Up, class.up.map(|r| r.0), cfg.uplink.up.map(|r| r.0)),
            down: pace(
                Way::Down,
                class.down.map(|r| r.0),
                cfg.uplink.down.map(|r| r.0),
            ),
        }
    }

    fn bucket(&self, flow: &str, way: Way, rate: u64) -> Arc<Bucket> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        // Buckets nobody holds any more are dropped as others are made.
        if buckets.len() > 64 {
            buckets.retain(|_, b| Arc::strong_count(b) > 1);
        }
        let bucket = buckets
            .entry((flow.to_owned(), way))
            .or_insert_with(|| Arc::new(Bucket::new(rate)))
            .clone();
        bucket.set_rate(rate);
        bucket
    }

    fn link(&self, way: Way, rate: u64) -> Arc<Link> {
        let mut links = self.links.lock().unwrap_or_else(|p| p.into_inner());
        let link = links
            .entry(way)
            .or_insert_with(|| Arc::new(Link::new(rate)))
            .clone();
        link.set_rate(rate);
        link
    }
}

/// The smallest chunk a shaped direction moves at once: one relay buffer.
const MIN_CHUNK: usize = 16 * 1024;

impl Pace {
    /// How much to move at once: a hundredth of a second at the slowest rate that holds this
    /// direction, at least 16 KiB. Large enough to keep system calls per byte low on fast
    /// links, small enough that a grant does not hold a slow link for long.
    pub(crate) fn chunk(&self) -> usize {
        let rates = [
            self.bucket.as_ref().map(|b| b.rate()),
            self.link.as_ref().map(|l| l.rate()),
        ];
        let slowest = rates.into_iter().flatten().fold(f64::INFINITY, f64::min);
        ((slowest / 100.0) as usize).max(MIN_CHUNK)
    }

    /// Waits until `n` more bytes may go: the user's own limit first, then the uplink's
    /// fair share.
    pub(crate) async fn take(&self, n: usize) {
        if let Some(bucket) = &self.bucket {
            bucket.take(n).await;
        }
        if let Some(link) = &self.link {
            link.take(&self.flow, self.weight, n).await;
        }
    }
}

/// A token bucket: `rate` bytes a second, bursts up to `burst`. A take may run the bucket
/// into debt; the taker then waits until the debt is paid, so the average holds exactly.
pub(crate) struct Bucket {
    state: Mutex<BucketState>,
}

struct BucketState {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

/// The burst of a limit: a fiftieth of a second's worth, at least one relay chunk.
fn burst_of(rate: u64) -> f64 {
    (rate as f64 / 50.0).max(16.0 * 1024.0)
}

impl Bucket {
    fn new(rate: u64) -> Bucket {
        Bucket {
            state: Mutex::new(BucketState {
                rate: rate.max(1) as f64,
                burst: burst_of(rate),
                tokens: burst_of(rate),
                last: Instant::now(),
            }),
        }
    }

    fn set_rate(&self, rate: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.rate = rate.max(1) as f64;
        s.burst = burst_of(rate);
    }

    fn rate(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate
    }

    async fn take(&self, n: usize) {
        let wait = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            let earned = now.duration_since(s.last).as_secs_f64() * s.rate;
            s.tokens = (s.tokens + earned).min(s.burst) - n as f64;
            s.last = now;
            (s.tokens < 0.0).then(|| Duration::from_secs_f64(-s.tokens / s.rate))
        };
        if let Some(wait) = wait {
            tokio::time::sleep(wait).await;
        }
    }
}

/// A shared uplink (one direction) served by weight: self-clocked fair queueing.
pub(crate) struct Link {
    state: Mutex<LinkState>,
}

struct LinkState {
    /// Bytes a second.
    rate: f64,
    /// The finish tag of the last grant.
    virtual_time: f64,
    /// Each flow's last finish tag; flows behind the virtual time have no credit left.
    last_tag: HashMap<Arc<str>, f64>,
    waiting: BinaryHeap<Waiter>,
    /// When the link has sent everything granted so far.
    busy_until: Instant,
    serving: bool,
    order: u64,
}

struct Waiter {
    tag: f64,
    order: u64,
    bytes: usize,
    grant: oneshot::Sender<()>,
}

impl PartialEq for Waiter {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Waiter {}
impl PartialOrd for Waiter {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Waiter {
    /// Reversed, so the heap's top is the smallest tag (and the earliest among equals).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other
            .tag
            .total_cmp(&self.tag)
            .then(other.order.cmp(&self.order))
    }
}

/// How far ahead of the link's clock a grant may be made: timers are not finer than this.
const GRANT_AHEAD: Duration = Duration::from_millis(2);

impl Link {
    fn new(rate: u64) -> Link {
        Link {
            state: Mutex::new(LinkState {
                rate: rate.max(1) as f64,
                virtual_time: 0.0,
                last_tag: HashMap::new(),
                waiting: BinaryHeap::new(),
                busy_until: Instant::now(),
                serving: false,
                order: 0,
            }),
        }
    }

    fn set_rate(&self, rate: u64) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.rate = rate.max(1) as f64;
    }

    fn rate(&self) -> f64 {
        self.state.lock().unwrap_or_else(|p| p.into_inner()).rate
    }

    async fn take(self: &Arc<Self>, flow: &Arc<str>, weight: f64, bytes: usize) {
        let (grant, granted) = oneshot::channel();
        let start_server = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let last = s.last_tag.get(flow).copied().unwrap_or(0.0);
            let tag = last.max(s.virtual_time) + bytes as f64 / weight;
            s.last_tag.insert(flow.clone(), tag);
            let order = s.order;
            s.order += 1;
            s.waiting.push(Waiter {
                tag,
                order,
                bytes,
                grant,
            });
            !std::mem::replace(&mut s.serving, true)
        };
        if start_server {
            tokio::spawn(self.clone().serve());
        }
        // The server only ends with the queue empty, so every waiter is answered.
        let _ = granted.await;
    }

    /// Grants the queued takes in tag order at the link's rate; ends when none is left. The
    /// choice of the next take is made only when the link is free for it, so that flows
    /// whose last grant has just been used have queued their next take by then.
    async fn serve(self: Arc<Self>) {
        loop {
            let free_at = {
                let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let now = Instant::now();
                if s.busy_until > now + GRANT_AHEAD {
                    Some(s.busy_until - GRANT_AHEAD)
                } else {
                    let Some(waiter) = s.waiting.pop() else {
                        s.serving = false;
                        // Tags of flows now behind the clock carry no credit; forget them.
                        let clock = s.virtual_time;
                        s.last_tag.retain(|_, t| *t > clock);
                        return;
                    };
                    s.virtual_time = waiter.tag;
                    let start = s.busy_until.max(now);
                    s.busy_until = start + Duration::from_secs_f64(waiter.bytes as f64 / s.rate);
                    let _ = waiter.grant.send(());
                    None
                }
            };
            if let Some(at) = free_at {
                tokio::time::sleep_until(at).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_bucket_holds_its_rate() {
        let bucket = Bucket::new(100_000);
        let start = Instant::now();
        for _ in 0..100 {
            bucket.take(10_000).await;
        }
        // 1,000,000 bytes at 100,000/s, less the initial burst of 16 KiB.
        let took = start.elapsed().as_secs_f64();
        assert!((9.7..=10.1).contains(&took), "{took}");
    }

    /// Two backlogged flows weighted 3:1 on one link: grants split 3:1; then one goes idle
    /// and the other gets the whole link.
    #[tokio::test(start_paused = true)]
    async fn a_link_shares_by_weight_and_gives_idle_shares_away() {
        let link = Arc::new(Link::new(1_000_000));
        let moved = Arc::new(Mutex::new(HashMap::<&str, usize>::new()));
        let stop_at = Instant::now() + Duration::from_secs(4);
        let mut tasks = Vec::new();
        for (name, weight) in [("gold", 3.0), ("bronze", 1.0)] {
            let (link, moved) = (link.clone(), moved.clone());
            tasks.push(tokio::spawn(async move {
                let flow: Arc<str> = Arc::from(name);
                while Instant::now() < stop_at {
                    link.take(&flow, weight, 16 * 1024).await;
                    *moved.lock().unwrap().entry(name).or_default() += 16 * 1024;
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let m = moved.lock().unwrap().clone();
        let ratio = m["gold"] as f64 / m["bronze"] as f64;
        assert!((2.8..=3.2).contains(&ratio), "{m:?}");
        let total = (m["gold"] + m["bronze"]) as f64;
        assert!((3.9e6..=4.1e6).contains(&total), "{total}");

        // Alone, a flow gets the whole rate.
        let flow: Arc<str> = Arc::from("bronze");
        let start = Instant::now();
        for _ in 0..61 {
            link.take(&flow, 1.0, 16 * 1024).await;
        }
        let took = start.elapsed().as_secs_f64();
        assert!((0.95..=1.05).contains(&took), "{took}");
    }
}
