//! One client connection from accept to close: client-network check, the handshake driven
//! through the sans-IO machine under the handshake timeout, authentication, the session and
//! per-user limits, dispatch to CONNECT / BIND / UDP ASSOCIATE / SOCKS-NG, and CONNECT itself.

use crate::admission::{NotChecked, StageSlot};
use crate::conn::{allowed_addresses, client_gone, linger_close, Handshaken, SessionLog};
use crate::connect::{canonical_addr, connect_racing, reply_code_for};
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use crate::relay::{relay, RelayTimeouts};
use crate::shared::Shared;
use socksng_proto::wire::ng::NgRequest;
use socksng_proto::{Address, Command, Event, ReplyCode, ServerHandshake};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

/// Largest handshake input buffered before a complete message; every SOCKS4/5 handshake
/// message fits well within it, so reaching it means the client is misbehaving.
const MAX_HANDSHAKE_BUFFER: usize = 4096;

/// Serves one accepted connection to its end and logs it. `handshake_slot` is its place among
/// the connections still in their handshake, given back when the handshake ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    handshake_slot: StageSlot,
) {
    let peer = canonical_addr(peer);
    let mut log = SessionLog::new(peer);
    if !shared.policy.client_allowed(peer.ip()) {
        log.end(
            OutcomeKind::Refused,
            Side::Policy,
            "client network not allowed",
        );
        return;
    }
    // Nodelay and keepalive came with the accepted socket from the listener (server.rs).
    #[cfg(not(target_os = "linux"))]
    crate::connect::tune_stream(&stream, shared.cfg.timeouts.tcp_keepalive);
    let handshake_timeout = shared.cfg.timeouts.handshake;
    // The transient phases are boxed so that a long-lived relay's task is not sized for them.
    let result = Box::pin(timeout(
        handshake_timeout,
        handshake(shared, stream, peer, &mut log),
    ))
    .await;
    let (conn, asked) = match result {
        Err(_) => {
            let why = format!("handshake timed out after {handshake_timeout:?}");
            log.end(OutcomeKind::TimedOut, Side::Client, why);
            return;
        }
        Ok(Err(outcome)) => {
            log.outcome = Some(outcome);
            return;
        }
        Ok(Ok(x)) => x,
    };
    drop(handshake_slot);
    dispatch(conn, asked, &mut log).await;
}

/// The client broke off the handshake (closed, reset, or could not be written to).
fn broken(why: impl Into<String>) -> SessionOutcome {
    SessionOutcome::new(OutcomeKind::Broken, Side::Client, why)
}

/// The handshake failed on its own terms (malformed, refused login, nothing acceptable).
fn failed(why: impl Into<String>) -> SessionOutcome {
    SessionOutcome::new(OutcomeKind::HandshakeFailed, Side::Client, why)
}

async fn handshake(
    shared: Arc<Shared>,
    mut stream: TcpStream,
    peer: SocketAddr,
    log: &mut SessionLog,
) -> Result<(Handshaken, Asked), SessionOutcome> {
    let mut hs = ServerHandshake::new(shared.handshake_config);
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(16);
    let mut user = None;
    loop {
        let progress = hs.handle_input(&buf, &mut out);
        let replied = !out.is_empty();
        if replied {
            let written = stream.write_all(&out).await;
            out.clear();
            written.map_err(|e| broken(format!("handshake write failed: {e}")))?;
        }
        let progress = match progress {
            Ok(p) => p,
            Err(e) => {
                if replied {
                    linger_close(&mut stream).await;
                }
                return Err(failed(format!("handshake failed: {e}")));
            }
        };
        buf.drain(..progress.consumed);
        let asked = match progress.event {
            Some(Event::Authenticate(auth)) => {
                let name = String::from_utf8_lossy(&auth.username).into_owned();
                let (ok, unchecked) =
                    match shared.authenticate(peer.ip(), &name, auth.password).await {
                        Ok(ok) => (ok, ""),
                        Err(NotChecked::QueueFull) => {
                            (false, " (not checked: too many password checks waiting)")
                        }
                        Err(NotChecked::AddressBusy) => (
                            false,
                            " (not checked: this address has password checks waiting)",
                        ),
                        Err(NotChecked::Throttled) => (
                            false,
                            " (not checked: too many failed logins from this address)",
                        ),
                    };
                log.user = Some(name.clone());
                let res = hs.auth_result(ok, &mut out);
                stream
                    .write_all(&out)
                    .await
                    .map_err(|e| broken(format!("handshake write failed: {e}")))?;
                out.clear();
                if let Err(e) = res {
                    linger_close(&mut stream).await;
                    return Err(failed(format!("handshake failed: {e}{unchecked}")));
                }
                user = Some(name);
                continue;
            }
            Some(Event::Request(r)) => Asked::Socks {
                command: r.command,
                address: r.address,
                socks4: false,
            },
            Some(Event::NgRequest(r)) => Asked::Ng(r),
            Some(Event::Socks4Request(r)) => Asked::Socks {
                command: Command::Connect,
                address: r.address,
                socks4: true,
            },
            None => {
                if buf.len() >= MAX_HANDSHAKE_BUFFER {
                    return Err(failed("handshake failed: oversized message"));
                }
                buf.reserve(512);
                let n = stream
                    .read_buf(&mut buf)
                    .await
                    .map_err(|e| broken(format!("handshake read failed: {e}")))?;
                if n == 0 {
                    return Err(broken(if buf.is_empty() && hs.method().is_none() {
                        "client closed before the greeting"
                    } else {
                        "client closed during the handshake"
                    }));
                }
                continue;
            }
        };
        // Most clients wait for the reply: drop the handshake buffer rather than keep it for
        // the session's lifetime.
        let early_data = if buf.is_empty() { Vec::new() } else { buf };
        let conn = Handshaken {
            stream,
            hs,
            early_data,
            user,
            peer,
            shared,
        };
        return Ok((conn, asked));
    }
}

/// The request a handshake ended with.
enum Asked {
    /// A SOCKS5 or SOCKS4 request.
    Socks {
        command: Command,
        address: Address,
        socks4: bool,
    },
    /// A request only valid after SOCKS-NG negotiation.
    Ng(NgRequest),
}

async fn dispatch(mut conn: Handshaken, asked: Asked, log: &mut SessionLog) {
    // Named in the log before anything can refuse it.
    match &asked {
        Asked::Socks {
            command,
            address,
            socks4,
        } => {
            log.command = match (command, socks4) {
                (Command::Connect, true) => "socks4-connect",
                (c, _) => c.name(),
            };
            log.target = Some(address.clone());
        }
        Asked::Ng(request) => log.command = crate::ng::command_name(request),
    }
    let _session_slot = match conn.shared.sessions.enter(conn.peer.ip()) {
        Ok(slot) => slot,
        Err(why) => {
            let code = match why {
                crate::admission::Refusal::Total => ReplyCode::GENERAL_FAILURE,
                crate::admission::Refusal::PerAddress => ReplyCode::NOT_ALLOWED,
            };
            let why = conn.shared.sessions.describe(why);
            conn.refuse(log, code, why).await;
            return;
        }
    };
    let _slot = match conn.shared.user_slot(conn.user.as_deref()) {
        Some(slot) => slot,
        None => {
            let why = "per-user session limit reached";
            conn.refuse(log, ReplyCode::NOT_ALLOWED, why).await;
            return;
        }
    };
    match asked {
        Asked::Socks {
            command: Command::Connect,
            address,
            ..
        } => connect(conn, address, log).await,
        // Boxed: their state is large and rare; inline, it would size every session's task.
        Asked::Socks {
            command: Command::Bind,
            address,
            ..
        } => Box::pin(crate::bind::bind(conn, address, log)).await,
        Asked::Socks {
            command: Command::UdpAssociate,
            address,
            ..
        } => Box::pin(crate::udp::associate(conn, address, log)).await,
        Asked::Ng(request) => Box::pin(crate::ng::serve(conn, request, log)).await,
    }
}

async fn connect(mut conn: Handshaken, address: Address, log: &mut SessionLog) {
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
        _ = client_gone(&conn.stream) => {
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
    if !conn.early_data.is_empty() {
        if let Err(e) = target.write_all(&conn.early_data).await {
            log.end(
                OutcomeKind::Broken,
                Side::Target,
                format!("target write failed: {e}"),
            );
            return;
        }
        log.add_up(conn.early_data.len() as u64);
        conn.early_data = Vec::new();
    }
    let end = relay(
        &mut conn.stream,
        &mut target,
        RelayTimeouts::from_config(&shared.cfg.timeouts),
        &log.up,
        &log.down,
    )
    .await;
    log.outcome = Some(end.outcome());
}
