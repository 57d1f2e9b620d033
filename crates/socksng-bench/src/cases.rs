//! The benchmark cases: their names, what each needs from a subject, the load parameters, and
//! the per-repeat measurement record they all return.

use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::time::Duration;

/// One case of the benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    /// Upload, one stream.
    TcpUp1,
    /// Download, one stream.
    TcpDown1,
    /// Upload, parallel streams.
    TcpUpPar,
    /// Download, parallel streams.
    TcpDownPar,
    /// Full connect-greet-CONNECT-exchange-close cycles, no authentication.
    Handshake,
    /// The same with username/password.
    HandshakeAuth,
    /// Memory per idle proxied connection, the smaller count.
    IdleSmall,
    /// Memory per idle proxied connection, as many as the descriptor limit allows.
    IdleMax,
    /// UDP ASSOCIATE round trips, one datagram outstanding.
    UdpRtt,
    /// UDP ASSOCIATE throughput with a window of datagrams.
    UdpTput,
    /// UDP over the stream (SOCKS-NG UDP-TUNNEL) round trips; direct UDP for the ceiling.
    UdpStreamRtt,
    /// UDP over the stream throughput with a window of datagrams.
    UdpStreamTput,
    /// Memory per idle UDP association (each has carried one round trip).
    UdpIdle,
}

impl Case {
    /// Every case in run order.
    pub const ALL: [Case; 13] = [
        Case::TcpUp1,
        Case::TcpDown1,
        Case::TcpUpPar,
        Case::TcpDownPar,
        Case::Handshake,
        Case::HandshakeAuth,
        Case::IdleSmall,
        Case::IdleMax,
        Case::UdpRtt,
        Case::UdpTput,
        Case::UdpStreamRtt,
        Case::UdpStreamTput,
        Case::UdpIdle,
    ];

    /// The name used in `--cases` and the JSON.
    pub fn name(self) -> &'static str {
        match self {
            Case::TcpUp1 => "tcp-up-1",
            Case::TcpDown1 => "tcp-down-1",
            Case::TcpUpPar => "tcp-up-par",
            Case::TcpDownPar => "tcp-down-par",
            Case::Handshake => "handshake",
            Case::HandshakeAuth => "handshake-auth",
            Case::IdleSmall => "idle-small",
            Case::IdleMax => "idle-max",
            Case::UdpRtt => "udp-rtt",
            Case::UdpTput => "udp-tput",
            Case::UdpStreamRtt => "udp-stream-rtt",
            Case::UdpStreamTput => "udp-stream-tput",
            Case::UdpIdle => "udp-idle",
        }
    }

    /// Whether the subject must be started with username/password authentication.
    pub fn needs_auth(self) -> bool {
        self == Case::HandshakeAuth
    }

    /// Whether the case measures the proxy itself (no meaning without one).
    pub fn needs_proxy(self) -> bool {
        matches!(self, Case::IdleSmall | Case::IdleMax | Case::UdpIdle)
    }

    /// Whether each repeat gets a freshly started server (memory is measured from a clean
    /// start, not after the allocator has been warmed by bulk transfers).
    pub fn fresh_per_repeat(self) -> bool {
        self.needs_proxy()
    }

    /// Selects cases by comma-separated names or prefixes (`tcp`, `udp`, `idle`, `handshake`,
    /// `tcp-up`, `all`).
    pub fn select(filter: &str) -> Result<Vec<Case>, String> {
        let mut out = Vec::new();
        for word in filter.split(',').map(str::trim).filter(|w| !w.is_empty()) {
            let hits: Vec<Case> = Case::ALL
                .into_iter()
                .filter(|c| word == "all" || c.name() == word || c.name().starts_with(word))
                .collect();
            if hits.is_empty() {
                let names: Vec<&str> = Case::ALL.iter().map(|c| c.name()).collect();
                return Err(format!(
                    "unknown case {word:?}; cases: {}",
                    names.join(", ")
                ));
            }
            for c in hits {
                if !out.contains(&c) {
                    out.push(c);
                }
            }
        }
        // Keep run order regardless of how the filter was written.
        out.sort_by_key(|c| Case::ALL.iter().position(|x| x == c));
        Ok(out)
    }
}

/// Load parameters for all cases.
#[derive(Debug, Clone)]
pub struct Params {
    /// Bytes for the single-stream cases.
    pub bytes_single: u64,
    /// Bytes per stream for the parallel cases.
    pub bytes_per_par_stream: u64,
    /// Streams in the parallel cases.
    pub streams: usize,
    /// Handshake cycles per repeat.
    pub hs_count: usize,
    /// Concurrent handshake workers.
    pub hs_concurrency: usize,
    /// Time limit on the handshake cycles of one repeat (the count may not be reached).
    pub hs_time: Duration,
    /// Bytes echoed in each handshake cycle.
    pub hs_payload: usize,
    /// Idle connections, smaller case.
    pub idle_small: usize,
    /// Idle connections, larger case (already capped by the descriptor limit).
    pub idle_max: usize,
    /// Concurrent connection openers in the idle cases.
    pub idle_concurrency: usize,
    /// UDP associations in the idle UDP case.
    pub udp_idle: usize,
    /// Spread client source addresses over 127.0.0.2-254 in the handshake and idle cases.
    pub spread_sources: bool,
    /// UDP round trips per repeat.
    pub udp_count: usize,
    /// UDP payload for round trips.
    pub udp_rtt_size: usize,
    /// Datagrams per throughput repeat.
    pub udp_tput_count: usize,
    /// UDP payload for throughput.
    pub udp_tput_size: usize,
    /// Datagrams in flight for throughput.
    pub udp_window: usize,
    /// Limit on every single connect/read/write.
    pub io_timeout: Duration,
    /// Limit on one repeat of a case.
    pub case_timeout: Duration,
}

/// What one repeat of a case measured.
#[derive(Debug, Default)]
pub struct Measure {
    /// Named figures (summarised over repeats).
    pub metrics: Vec<(&'static str, f64)>,
    /// Failures by kind.
    pub errors: BTreeMap<String, u64>,
    /// Other facts worth keeping (counts, sizes), from the last repeat.
    pub extra: Map<String, Value>,
}

impl Measure {
    /// Adds a figure.
    pub fn metric(&mut self, key: &'static str, v: f64) {
        self.metrics.push((key, v));
    }

    /// Adds a fact.
    pub fn fact(&mut self, key: &str, v: impl Into<Value>) {
        self.extra.insert(key.to_owned(), v.into());
    }

    /// Counts a failure.
    pub fn error(&mut self, kind: String) {
        *self.errors.entry(kind).or_default() += 1;
    }

    /// Merges a tally of failures.
    pub fn errors_from(&mut self, other: BTreeMap<String, u64>) {
        for (k, v) in other {
            *self.errors.entry(k).or_default() += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_selection() {
        assert_eq!(Case::select("all").unwrap().len(), Case::ALL.len());
        assert_eq!(
            Case::select("udp,tcp-up").unwrap(),
            vec![
                Case::TcpUp1,
                Case::TcpUpPar,
                Case::UdpRtt,
                Case::UdpTput,
                Case::UdpStreamRtt,
                Case::UdpStreamTput,
                Case::UdpIdle
            ]
        );
        assert_eq!(
            Case::select("handshake").unwrap(),
            vec![Case::Handshake, Case::HandshakeAuth]
        );
        assert!(Case::select("nope").is_err());
    }
}
