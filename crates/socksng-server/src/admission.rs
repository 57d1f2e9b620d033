//! Admission: how much any one client, and all clients together, may hold before and after
//! logging in, and the bounded work a login may cost.
//!
//! - Connections in their handshake and sessions past it are counted separately, in total
//!   and per client address (an IPv4 address or an IPv6 /64), so silent connections can only
//!   fill the handshake stage and never lock out users who have logged in.
//! - Password checks run on at most a few blocking threads; the permit moves into the check,
//!   so a check that has started holds its turn until it ends even if its client is gone. A
//!   bounded number wait; beyond that a login fails at once. Argon2's working memory is
//!   handed from one check to the next while others wait and freed when none do.
//! - Failed logins are throttled per client address with a token bucket.
//! - Name lookups (getaddrinfo, which cannot be cancelled) get the same permit discipline.

use crate::config::Limits;
use crate::users::Accounts;
use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The unit per-address limits count by: IPv4 addresses, IPv6 /64s.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match crate::policy::canonical(ip) {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// Concurrent holders per client address, with a limit (0: unlimited).
struct PerAddress {
    counts: Mutex<HashMap<IpAddr, usize>>,
    limit: usize,
}

impl PerAddress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn release(&self, key: IpAddr) {
        let mut counts = self.lock();
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }
}

/// Why a stage refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The server-wide limit.
    Total,
    /// The client address's limit.
    PerAddress,
}

/// One stage of a connection's life (handshake, or session) with its limits.
pub(crate) struct Stage {
    name: &'static str,
    total: Option<Arc<Semaphore>>,
    per_address: Arc<PerAddress>,
}

/// A place in a stage, given back when dropped.
pub(crate) struct StageSlot {
    _total: Option<OwnedSemaphorePermit>,
    key: IpAddr,
    per_address: Option<Arc<PerAddress>>,
}

impl Drop for StageSlot {
    fn drop(&mut self) {
        if let Some(table) = self.per_address.take() {
            table.release(self.key);
        }
    }
}

impl Stage {
    pub(crate) fn new(name: &'static str, total: usize, per_address: usize) -> Stage {
        Stage {
            name,
            total: (total > 0).then(|| Arc::new(Semaphore::new(total))),
            per_address: Arc::new(PerAddress {
                counts: Mutex::new(HashMap::new()),
                limit: per_address,
            }),
        }
    }

    /// Takes a place for a client at `ip`, or says which limit is reached.
    pub(crate) fn enter(&self, ip: IpAddr) -> Result<StageSlot, Refusal> {
        let key = client_key(ip);
        let per_address = if self.per_address.limit > 0 {
            let mut counts = self.per_address.lock();
            let n = counts.entry(key).or_insert(0);
            if *n >= self.per_address.limit {
                return Err(Refusal::PerAddress);
            }
            *n += 1;
            Some(self.per_address.clone())
        } else {
            None
        };
        let mut slot = StageSlot {
            _total: None,
            key,
            per_address,
        };
        if let Some(sem) = &self.total {
            // Dropping `slot` on refusal gives the per-address place back.
            slot._total = Some(
                sem.clone()
                    .try_acquire_owned()
                    .map_err(|_| Refusal::Total)?,
            );
        }
        Ok(slot)
    }

    /// Words for the log line of a refused connection.
    pub(crate) fn describe(&self, why: Refusal) -> String {
        match why {
            Refusal::Total => format!("{} limit reached", self.name),
            Refusal::PerAddress => format!("per-address {} limit reached", self.name),
        }
    }

    /// Holders from one client address right now.
    #[cfg(test)]
    pub(crate) fn held_by(&self, ip: IpAddr) -> usize {
        self.per_address
            .lock()
            .get(&client_key(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// Entries the login throttle keeps before it forgets addresses that have earned their
/// attempts back (and, past that, arbitrary ones: forgetting errs towards letting users in).
const THROTTLE_TABLE_MAX: usize = 65_536;

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// Failed logins per client address, as a token bucket: `burst` failures at once, then one
/// more every `60 / per_minute` seconds. A guesser gets a handful of tries; a user who
/// mistypes a password twice is never held up.
pub(crate) struct LoginThrottle {
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    burst: f64,
    per_second: f64,
}

impl LoginThrottle {
    pub(crate) fn new(burst: u32, per_minute: u32) -> LoginThrottle {
        LoginThrottle {
            buckets: Mutex::new(HashMap::new()),
            burst: f64::from(burst),
            per_second: f64::from(per_minute) / 60.0,
        }
    }

    fn refill(&self, b: &mut Bucket, now: Instant) {
        let earned = now.duration_since(b.at).as_secs_f64() * self.per_second;
        b.tokens = (b.tokens + earned).min(self.burst);
        b.at = now;
    }

    /// Whether a client at `ip` may try a password now. A burst of 0 switches throttling off.
    pub(crate) fn allows(&self, ip: IpAddr) -> bool {
        if self.burst <= 0.0 {
            return true;
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get_mut(&client_key(ip)) {
            None => true,
            Some(b) => {
                self.refill(b, Instant::now());
                b.tokens >= 1.0
            }
        }
    }

    /// Records a failed login from `ip`.
    pub(crate) fn failed(&self, ip: IpAddr) {
        if self.burst <= 0.0 {
            return;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= THROTTLE_TABLE_MAX {
            buckets.retain(|_, b| {
                let earned = now.duration_since(b.at).as_secs_f64() * self.per_second;
                b.tokens + earned < self.burst
            });
            while buckets.len() >= THROTTLE_TABLE_MAX {
                let Some(k) = buckets.keys().next().copied() else {
                    break;
                };
                buckets.remove(&k);
            }
        }
        let b = buckets.entry(client_key(ip)).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        self.refill(b, now);
        b.tokens = (b.tokens - 1.0).max(0.0);
    }
}

/// Why a password was not checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotChecked {
    /// Too many checks are already waiting.
    QueueFull,
    /// This client address already has its share of checks waiting or running.
    AddressBusy,
    /// The client address has failed too often lately.
    Throttled,
}

/// Checks one client address may have waiting or running at once: one address cannot fill
/// the queue that every other client's login waits in.
const CHECKS_PER_ADDRESS: usize = 4;

/// The bounded pool password checks run in.
pub(crate) struct PasswordChecks {
    per_address: Stage,
    running: Arc<Semaphore>,
    running_limit: usize,
    waiting: Arc<AtomicUsize>,
    queue: usize,
    /// Working memory handed from a finished check to a waiting one.
    spare_memory: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
    throttle: LoginThrottle,
}

/// Counts a waiting check until it starts or gives up. A waiter that gives up (its client
/// timed out) may have been the reason a finished check kept its memory: with nobody left
/// to hand it to, it is freed.
struct Waiting {
    count: Arc<AtomicUsize>,
    running: Arc<Semaphore>,
    spare: Arc<Mutex<Vec<Vec<argon2::Block>>>>,
    limit: usize,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            trim(&self.running, &self.count, &self.spare, self.limit);
        }
    }
}

/// Frees the spare argon2 memory when no check runs and none waits.
fn trim(
    running: &Semaphore,
    waiting: &AtomicUsize,
    spare: &Mutex<Vec<Vec<argon2::Block>>>,
    limit: usize,
) {
    if running.available_permits() == limit && waiting.load(Ordering::Acquire) == 0 {
        spare.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl PasswordChecks {
    pub(crate) fn new(limits: &Limits) -> PasswordChecks {
        let running = match limits.password_checks {
            0 => std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .min(4),
            n => n,
        };
        PasswordChecks {
            per_address: Stage::new("password check", 0, CHECKS_PER_ADDRESS),
            running: Arc::new(Semaphore::new(running)),
            running_limit: running,
            waiting: Arc::new(AtomicUsize::new(0)),
            queue: limits.password_queue,
            spare_memory: Arc::new(Mutex::new(Vec::new())),
            throttle: LoginThrottle::new(
                limits.login_failures_burst,
                limits.login_failures_per_minute,
            ),
        }
    }

    fn trim_spare_memory(&self) {
        trim(
            &self.running,
            &self.waiting,
            &self.spare_memory,
            self.running_limit,
        );
    }

    /// Checks `name`/`password` for a client at `client`: `Ok(true)` when it matches,
    /// `Err` when no check was made.
    pub(crate) async fn check(
        &self,
        db: Accounts,
        client: IpAddr,
        name: &str,
        password: Vec<u8>,
    ) -> Result<bool, NotChecked> {
        // The throttle comes first: a cached password must not let a throttled address go
        // on guessing at full speed (its wrong guesses would fail fast, its right one pass).
        if !self.throttle.allows(client) {
            return Err(NotChecked::Throttled);
        }
        if let Some(ok) = db.verify_cached(name, &password) {
            return Ok(ok);
        }
        let Ok(_mine) = self.per_address.enter(client) else {
            return Err(NotChecked::AddressBusy);
        };
        let queued = self.waiting.fetch_add(1, Ordering::AcqRel);
        let waiting = Waiting {
            count: self.waiting.clone(),
            running: self.running.clone(),
            spare: self.spare_memory.clone(),
            limit: self.running_limit,
        };
        if self.queue > 0 && queued >= self.queue {
            return Err(NotChecked::QueueFull);
        }
        let Ok(permit) = self.running.clone().acquire_owned().await else {
            return Err(NotChecked::QueueFull);
        };
        drop(waiting);
        // Failures may have piled up from this address while it waited.
        if !self.throttle.allows(client) {
            drop(permit);
            self.trim_spare_memory();
            return Err(NotChecked::Throttled);
        }
        let name = name.to_owned();
        let spare = self.spare_memory.clone();
        let others_waiting = self.waiting.clone();
        let running = self.running.clone();
        let limit = self.running_limit;
        let ok = tokio::task::spawn_blocking(move || {
            // Held until the check ends, even if the session that asked is dropped.
            let permit = permit;
            let mut memory = spare
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pop()
                .unwrap_or_default();
            let ok = db.verify_with_memory(&name, &password, &mut memory);
            // Handed to a check that waits; a waiter that gives up later finds no check
            // running and frees it (`Waiting`), as does this check when nobody waits.
            spare.lock().unwrap_or_else(|p| p.into_inner()).push(memory);
            drop(permit);
            trim(&running, &others_waiting, &spare, limit);
            ok
        })
        .await
        .unwrap_or(false);
        if !ok {
            self.throttle.failed(client);
        }
        Ok(ok)
    }
}

/// Name resolution with the system resolver on a bounded number of threads.
pub(crate) struct Lookups {
    running: Arc<Semaphore>,
}

impl Lookups {
    pub(crate) fn new(limit: usize) -> Lookups {
        Lookups {
            running: Arc::new(Semaphore::new(limit.max(1))),
        }
    }

    /// Resolves `name` (IPv4-mapped answers unmapped). A caller that gives up (a timeout)
    /// frees nothing but its place in the queue: a lookup that has started keeps its thread
    /// and its permit until getaddrinfo returns, so slow names cannot pile up threads.
    pub(crate) async fn resolve(&self, name: &str, port: u16) -> io::Result<Vec<SocketAddr>> {
        let permit = self
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(io::Error::other)?;
        let host = name.to_owned();
        let found = tokio::task::spawn_blocking(move || {
            let _permit = permit;
            std::net::ToSocketAddrs::to_socket_addrs(&(host.as_str(), port))
                .map(|it| it.collect::<Vec<_>>())
        })
        .await
        .map_err(io::Error::other)??;
        let addrs: Vec<SocketAddr> = found
            .into_iter()
            .map(|a| SocketAddr::new(crate::policy::canonical(a.ip()), a.port()))
            .collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                "name has no addresses",
            ));
        }
        Ok(addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        assert_eq!(client_key(ip("2001:db8:1:2:aaaa::1")), ip("2001:db8:1:2::"));
        assert_eq!(client_key(ip("::ffff:192.0.2.1")), ip("192.0.2.1"));
        assert_eq!(client_key(ip("192.0.2.1")), ip("192.0.2.1"));
    }

    #[test]
    fn stage_limits_per_address_and_in_total() {
        let stage = Stage::new("handshake", 3, 2);
        let a1 = stage.enter(ip("2001:db8::1")).unwrap();
        let _a2 = stage.enter(ip("2001:db8::2")).unwrap();
        // The same /64 is the same client.
        assert_eq!(
            stage.enter(ip("2001:db8::3")).err(),
            Some(Refusal::PerAddress)
        );
        let _b = stage.enter(ip("192.0.2.1")).unwrap();
        assert_eq!(stage.enter(ip("192.0.2.2")).err(), Some(Refusal::Total));
        // A refusal by the total gives the per-address place back.
        assert_eq!(stage.held_by(ip("192.0.2.2")), 0);
        drop(a1);
        assert_eq!(stage.held_by(ip("2001:db8::9")), 1);
        assert!(stage.enter(ip("2001:db8::3")).is_ok());
        let unlimited = Stage::new("session", 0, 0);
        let many: Vec<_> = (0..100).map(|_| unlimited.enter(ip("192.0.2.1"))).collect();
        assert!(many.iter().all(|s| s.is_ok()));
    }

    #[test]
    fn throttle_lets_a_burst_through_then_slows() {
        let t = LoginThrottle::new(3, 6);
        let guesser = ip("192.0.2.66");
        for _ in 0..3 {
            assert!(t.allows(guesser));
            t.failed(guesser);
        }
        assert!(!t.allows(guesser));
        // Another address is unaffected, and a bucket that has refilled allows again.
        assert!(t.allows(ip("192.0.2.7")));
        {
            let mut b = t.buckets.lock().unwrap();
            let bucket = b.get_mut(&guesser).unwrap();
            bucket.at -= std::time::Duration::from_secs(10);
        }
        assert!(t.allows(guesser));
        let off = LoginThrottle::new(0, 0);
        for _ in 0..10 {
            off.failed(guesser);
        }
        assert!(off.allows(guesser));
    }
}
