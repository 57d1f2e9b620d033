//! One client connection from accept to close: client-network check, the handshake driven
//! through the sans-IO machine under the handshake timeout, authentication, the session and
//! per-user limits, and dispatch to the module of each command (CONNECT, BIND, UDP
//! ASSOCIATE, the SOCKS-NG commands).

use crate::admission::{NotChecked, StageSlot};
use crate::conn::{linger_close, Handshaken, SessionLog};
use crate::dial::canonical_addr;
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
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
    crate::dial::tune_stream(&stream, shared.cfg.timeouts.tcp_keepalive);
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
        } => crate::connect::connect(conn, address, log).await,
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
