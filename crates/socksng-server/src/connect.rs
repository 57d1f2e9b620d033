//! CONNECT: the destination resolved and checked by policy, the outgoing connection raced
//! (`dial`), the success reply with the real source address, pipelined bytes passed on, and
//! the relay until both sides are done. A client that resets meanwhile ends it at once.

use crate::conn::{allowed_addresses, Handshaken, SessionLog};
use crate::dial::{canonical_addr, connect_racing, reply_code_for};
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use socksng_proto::{Address, Command, ReplyCode};
use tokio::time::timeout;

pub(crate) async fn connect(mut conn: Handshaken, address: Address, log: &mut SessionLog) {
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
            connect_racing(
                &addrs,
                shared.cfg.resolver.attempt_delay,
                &shared.cfg.external,
                shared.cfg.timeouts.tcp_keepalive,
            ),
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
    log.connected = Some(used);
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
