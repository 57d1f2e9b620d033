//! CONNECT: the route chosen (direct, or upstreams), the destination checked by policy, the
//! outgoing connection raced (`dial`) or opened through an upstream, the success reply with
//! the real source address, pipelined bytes passed on, and the relay until both sides are
//! done. A client that resets meanwhile ends it at once.

use crate::conn::{allowed_addresses, Handshaken, SessionLog};
use crate::dial::{canonical_addr, connect_racing, reply_code_for};
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use crate::policy::{NameVerdict, Verdict};
use crate::upstream::Via;
use socksng_proto::{Address, Command, Host, ReplyCode};
use tokio::time::timeout;

pub(crate) async fn connect(conn: Handshaken, address: Address, log: &mut SessionLog) {
    let ways = conn
        .shared
        .upstreams
        .ways(conn.user.as_deref(), Command::Connect, &address);
    let upstreams: Vec<usize> = ways
        .iter()
        .map_while(|v| match v {
            Via::Upstream(i) => Some(*i),
            Via::Direct => None,
        })
        .collect();
    if upstreams.is_empty() {
        return direct(conn, address, log).await;
    }
    let direct_after = ways.contains(&Via::Direct);
    Box::pin(through_upstream(
        conn,
        address,
        &upstreams,
        direct_after,
        log,
    ))
    .await
}

/// CONNECT through the first of `upstreams` that works; direct afterwards only when the route
/// lists it.
async fn through_upstream(
    mut conn: Handshaken,
    address: Address,
    upstreams: &[usize],
    direct_after: bool,
    log: &mut SessionLog,
) {
    let shared = conn.shared.clone();
    let user = conn.user.clone();
    let address = match upstream_target(&shared, user.as_deref(), address).await {
        Ok(a) => a,
        Err(refusal) => return conn.refuse_with(log, refusal).await,
    };
    let hops = conn.hs.hops().saturating_add(1);
    let limit = shared.cfg.timeouts.connect;
    log.via = Some(shared.upstreams.names(upstreams));
    let opened = tokio::select! {
        r = shared.upstreams.connect(upstreams, &address, hops, limit) => r,
        _ = conn.stream.reset_by_client() => {
            let why = "client gone before the upstream answered";
            return log.end(OutcomeKind::Broken, Side::Client, why);
        }
    };
    let (used, opened) = match opened {
        Ok(x) => x,
        Err(failed) if direct_after => {
            tracing::info!(target = %address, why = %failed.why, "upstreams failed: going direct, as the route allows");
            return direct(conn, address, log).await;
        }
        Err(failed) => {
            let outcome = SessionOutcome::refused(failed.code, failed.why);
            return conn.refuse_with(log, outcome).await;
        }
    };
    log.via = Some(shared.upstreams.name(used).to_owned());
    log.connected = opened.peer;
    let bound = opened
        .bound
        .socket_addr()
        .unwrap_or_else(|| std::net::SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)));
    if !conn.succeed(log, bound).await {
        return;
    }
    let early = std::mem::take(&mut conn.early_data);
    let mut upstream = opened.stream;
    // The relay owns the upstream end and closes it when done, which ends the TLS task.
    let relay = async move {
        conn.relay_with(&mut upstream, early, log).await;
    };
    match opened.carry {
        Some(carry) => {
            tokio::join!(relay, carry);
        }
        None => relay.await,
    }
}

/// What to ask an upstream for, judged by the policy here as far as it can be: an address as
/// always; a name by its name when the rules decide by name (the upstream resolves it); a name
/// the rules decide by address is resolved here (on the bounded pool) and the first allowed
/// address is asked for instead, so no rule by network is passed by with a name.
async fn upstream_target(
    shared: &crate::shared::Shared,
    user: Option<&str>,
    address: Address,
) -> Result<Address, SessionOutcome> {
    let port = address.port;
    let verdict = match &address.host {
        Host::Ip(ip) => match shared.policy.check(user, Command::Connect, None, *ip, port) {
            Verdict::Allow => NameVerdict::Allow,
            Verdict::Deny(why) => NameVerdict::Deny(why),
        },
        Host::Domain(name) => shared.policy.judge_name(user, Command::Connect, name, port),
    };
    match verdict {
        NameVerdict::Allow => Ok(address),
        NameVerdict::Deny(why) => Err(SessionOutcome::refused(ReplyCode::NOT_ALLOWED, why)),
        NameVerdict::DependsOnAddress => {
            let allowed = allowed_addresses(shared, user, Command::Connect, &address).await?;
            allowed.first().map(|a| Address::ip(*a)).ok_or_else(|| {
                SessionOutcome::refused(ReplyCode::NOT_ALLOWED, "no address allowed")
            })
        }
    }
}

/// CONNECT from this server.
async fn direct(mut conn: Handshaken, address: Address, log: &mut SessionLog) {
    log.via = Some("direct".into());
    let shared = conn.shared.clone();
    let limit = shared.cfg.timeouts.connect;
    // Resolving and connecting can take the connect timeout; a client whose connection is
    // reset meanwhile ends the session at once instead of holding its slot that long.
    let reach = async {
        let addrs = Box::pin(allowed_addresses(
            &shared,
            conn.user.as_deref(),
            Command::Connect,
            &address,
        ))
        .await?;
        match Box::pin(timeout(
            limit,
            connect_racing(&addrs, shared.cfg.resolver.attempt_delay, &conn.outgoing),
        ))
        .await
        {
            Ok(Ok(t)) => Ok(t),
            Ok(Err(e)) => Err(SessionOutcome::refused(reply_code_for(&e), e)),
            Err(_) => Err(SessionOutcome::refused(
                ReplyCode::TTL_EXPIRED,
                format!("connect timed out after {limit:?}"),
            )),
        }
    };
    let reached = tokio::select! {
        r = reach => r,
        _ = conn.stream.reset_by_client() => {
            let why = "client gone before the target was reached";
            log.end(OutcomeKind::Broken, Side::Client, why);
            return;
        }
    };
    let (mut target, used) = match reached {
        Ok(t) => t,
        Err(refusal) => return conn.refuse_with(log, refusal).await,
    };
    log.connected_to(used);
    let bound = match target.local_addr() {
        Ok(a) => canonical_addr(a),
        Err(e) => return conn.refuse(log, ReplyCode::GENERAL_FAILURE, e).await,
    };
    if !conn.succeed(log, bound).await {
        return;
    }
    let early = std::mem::take(&mut conn.early_data);
    conn.relay_with(&mut target, early, log).await;
}
