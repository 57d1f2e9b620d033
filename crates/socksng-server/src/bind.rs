//! BIND: a listening socket for exactly one incoming connection from the expected peer.
//!
//! The first reply carries the listening address; the second, once the expected peer has
//! connected, carries the peer's address, and the control connection becomes the relay.
//! Connections from other hosts, or refused by policy, are closed and the wait goes on until
//! the BIND timeout, which is answered with TTL expired.

use crate::connect::{canonical_addr, tune_stream};
use crate::policy::{canonical, Verdict};
use crate::relay::relay;
use crate::session::{allowed_addresses, Handshaken, SessionLog};
use socksng_proto::{Address, Command, Host, ReplyCode};
use std::net::{IpAddr, SocketAddr};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::time::{sleep_until, Instant};

/// Data the client may send before the peer arrives is kept for it, up to this much.
const MAX_EARLY_DATA: usize = 64 * 1024;

pub(crate) async fn bind(mut conn: Handshaken, expected: Address, log: &mut SessionLog) {
    let shared = conn.shared.clone();
    let user = conn.user.clone();
    // None: any peer the policy allows (the request named 0.0.0.0 or ::).
    let expected_ips: Option<Vec<IpAddr>> = match &expected.host {
        Host::Ip(ip) if ip.is_unspecified() => None,
        _ => match allowed_addresses(&shared, user.as_deref(), Command::Bind, &expected).await {
            Ok(addrs) => Some(addrs.iter().map(|a| canonical(a.ip())).collect()),
            Err((code, why)) => return conn.refuse(log, code, why).await,
        },
    };
    let local_ip = match conn.stream.local_addr() {
        Ok(a) => canonical_addr(a).ip(),
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    let listener = match TcpListener::bind(SocketAddr::new(local_ip, 0)).await {
        Ok(l) => l,
        Err(e) => {
            return conn
                .refuse(log, ReplyCode::GENERAL_FAILURE, format!("BIND listen: {e}"))
                .await
        }
    };
    let listen_addr = match listener.local_addr() {
        Ok(a) => a,
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    if !conn.succeed(log, listen_addr).await {
        return;
    }
    let deadline = Instant::now() + shared.cfg.timeouts.bind;
    let mut early = std::mem::take(&mut conn.early_data);
    let mut chunk = [0u8; 4096];
    let (mut peer_stream, peer) = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (s, from) = match accepted {
                    Ok(x) => x,
                    Err(e) => { tracing::debug!(error = %e, "BIND accept failed"); continue; }
                };
                let from = canonical_addr(from);
                if expected_ips.as_ref().is_some_and(|ips| !ips.contains(&from.ip())) {
                    tracing::info!(client = %conn.peer, from = %from, "BIND: connection from an unexpected host closed");
                    continue;
                }
                if let Verdict::Deny(why) = shared.policy.check(user.as_deref(), Command::Bind, None, from.ip(), from.port()) {
                    tracing::info!(client = %conn.peer, from = %from, %why, "BIND: peer refused by policy");
                    continue;
                }
                break (s, from);
            }
            r = conn.stream.read(&mut chunk) => match r {
                Ok(0) | Err(_) => { log.outcome = "client closed while waiting for the peer".into(); return; }
                Ok(k) if early.len() + k <= MAX_EARLY_DATA => early.extend_from_slice(&chunk[..k]),
                Ok(_) => { log.outcome = "client sent too much before the peer arrived".into(); return; }
            },
            _ = sleep_until(deadline) => {
                let why = format!("no peer within {:?}", shared.cfg.timeouts.bind);
                return conn.refuse(log, ReplyCode::TTL_EXPIRED, why).await;
            }
        }
    };
    drop(listener);
    log.connected = Some(peer);
    tune_stream(&peer_stream, shared.cfg.timeouts.tcp_keepalive);
    if !conn.succeed(log, peer).await {
        return;
    }
    if !early.is_empty() {
        if peer_stream.write_all(&early).await.is_err() {
            log.outcome = "peer write failed".into();
            return;
        }
        log.up += early.len() as u64;
    }
    let stats = relay(&mut conn.stream, &mut peer_stream, shared.cfg.timeouts.idle).await;
    log.up += stats.up;
    log.down += stats.down;
    log.outcome = stats.end.as_str().into();
}
