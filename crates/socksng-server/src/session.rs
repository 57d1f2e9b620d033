//! One client connection from accept to close: client-network check, the handshake driven
//! through the sans-IO machine under the handshake timeout, authentication, the session and
//! per-user limits, and dispatch to the module of each command (CONNECT, BIND, UDP
//! ASSOCIATE, the SOCKS-NG commands).

use crate::admission::{NotChecked, StageSlot};
use crate::conn::{linger_close, Handshaken, SessionLog};
use crate::dial::canonical_addr;
use crate::outcome::{OutcomeKind, SessionOutcome, Side};
use crate::shared::{Held, Shared};
use crate::stream::Plaintext;
use socksng_proto::wire::ng::{rep, NgRequest};
use socksng_proto::{Address, Command, Event, ReplyCode, ServerHandshake};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Largest handshake input buffered before a complete message; every SOCKS4/5 handshake
/// message fits well within it, so reaching it means the client is misbehaving.
const MAX_HANDSHAKE_BUFFER: usize = 4096;

/// How a listener takes its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Intake {
    /// Plain SOCKS only.
    Plain,
    /// Plain SOCKS or SOCKS over TLS, told apart by the first byte.
    PlainOrTls,
    /// SOCKS over TLS only.
    Tls,
}

/// Who the client is, as far as its connection says.
struct Origin {
    peer: SocketAddr,
    local: SocketAddr,
    /// The user its TLS client certificate names.
    cert_user: Option<String>,
}

/// Serves one accepted connection to its end and logs it. `handshake_slot` is its place among
/// the connections still in their handshake, given back when the handshake ends.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    handshake_slot: StageSlot,
    intake: Intake,
    live: Arc<crate::admin::LiveSession>,
) {
    let peer = canonical_addr(peer);
    let mut log = SessionLog::new(peer);
    log.up = live.up.clone();
    log.down = live.down.clone();
    log.live = Some(live);
    log.audit = shared.audit.clone();
    if !shared.policy.client_allowed(peer.ip()) {
        log.end(
            OutcomeKind::Refused,
            Side::Policy,
            "client network not allowed",
        );
        return;
    }
    let local = match stream.local_addr() {
        Ok(a) => canonical_addr(a),
        Err(e) => return log.end(OutcomeKind::Broken, Side::Client, e.to_string()),
    };
    // Nodelay and keepalive came with the accepted socket from the listener (server.rs).
    #[cfg(not(target_os = "linux"))]
    crate::dial::tune_stream(&stream, shared.cfg.timeouts.tcp_keepalive);
    // One deadline for the TLS handshake and the SOCKS handshake together.
    let deadline = Instant::now() + shared.cfg.timeouts.handshake;
    let tls = match (intake, &shared.tls) {
        (Intake::Plain, _) | (_, None) => false,
        (Intake::Tls, Some(_)) => true,
        (Intake::PlainOrTls, Some(_)) => match timeout_at(deadline, first_byte(&stream)).await {
            Ok(Ok(b)) => b == crate::tls::TLS_HANDSHAKE_RECORD,
            // Nothing to tell apart: the SOCKS handshake reports the closed connection.
            Ok(Err(_)) => false,
            Err(_) => {
                return log.end(
                    OutcomeKind::TimedOut,
                    Side::Client,
                    handshake_timed_out(&shared),
                )
            }
        },
    };
    let mut origin = Origin {
        peer,
        local,
        cert_user: None,
    };
    let Some(service) = shared.tls.as_ref().filter(|_| tls) else {
        let client = Plaintext::Tcp(stream);
        return serve_client(shared, client, origin, handshake_slot, deadline, log).await;
    };
    let accepted = match timeout_at(deadline, service.accept(stream)).await {
        Err(_) => {
            return log.end(
                OutcomeKind::TimedOut,
                Side::Client,
                handshake_timed_out(&shared),
            )
        }
        Ok(Err(e)) => {
            let why = format!("TLS handshake failed: {e}");
            return log.end(OutcomeKind::HandshakeFailed, Side::Client, why);
        }
        Ok(Ok(accepted)) => accepted,
    };
    let (tls_stream, cert_user) = accepted;
    origin.cert_user = cert_user;
    let tcp_fd = std::os::fd::AsRawFd::as_raw_fd(tls_stream.get_ref().0);
    let drain = shared.cfg.timeouts.half_close;
    let (client, carry) = match crate::tls::bridge(tls_stream, tcp_fd, drain) {
        Ok(pair) => pair,
        Err(e) => {
            let why = format!("socket pair for TLS: {e}");
            return log.end(OutcomeKind::Broken, Side::Internal, why);
        }
    };
    tokio::join!(
        serve_client(shared, client, origin, handshake_slot, deadline, log),
        carry,
    );
}

fn handshake_timed_out(shared: &Shared) -> String {
    format!(
        "handshake timed out after {:?}",
        shared.cfg.timeouts.handshake
    )
}

/// The first byte the client sends, left in the socket.
async fn first_byte(stream: &TcpStream) -> std::io::Result<u8> {
    let mut byte = [0u8; 1];
    match stream.peek(&mut byte).await? {
        0 => Err(std::io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(byte[0]),
    }
}

/// Runs the SOCKS handshake and the session on the client's (plain or decrypted) stream.
async fn serve_client(
    shared: Arc<Shared>,
    stream: Plaintext,
    origin: Origin,
    handshake_slot: StageSlot,
    deadline: Instant,
    mut log: SessionLog,
) {
    log.tls = stream.is_tls();
    // The transient phases are boxed so that a long-lived relay's task is not sized for them.
    let result = Box::pin(timeout_at(
        deadline,
        handshake(shared.clone(), stream, origin, &mut log),
    ))
    .await;
    let (conn, asked) = match result {
        Err(_) => {
            return log.end(
                OutcomeKind::TimedOut,
                Side::Client,
                handshake_timed_out(&shared),
            );
        }
        Ok(Err(outcome)) => {
            log.outcome = Some(outcome);
            return;
        }
        Ok(Ok(x)) => x,
    };
    drop(handshake_slot);
    crate::metrics::metrics().handshake_done(log.age());
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
    mut stream: Plaintext,
    origin: Origin,
    log: &mut SessionLog,
) -> Result<(Handshaken, Asked), SessionOutcome> {
    let peer = origin.peer;
    let (config, passwords_refused) =
        shared.handshake_config_for(stream.is_tls(), peer.ip(), origin.cert_user.is_some());
    // Why a client that only offered a password login got X'FF'.
    let note = if passwords_refused {
        " (password logins need TLS from this address)"
    } else {
        ""
    };
    let mut hs = ServerHandshake::new(config);
    let mut buf: Vec<u8> = Vec::with_capacity(512);
    let mut out = Vec::with_capacity(16);
    let mut user = None;
    let mut password_login = false;
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
                return Err(failed(format!("handshake failed: {e}{note}")));
            }
        };
        buf.drain(..progress.consumed);
        let asked = match progress.event {
            Some(Event::Authenticate(auth)) => {
                let name = String::from_utf8_lossy(&auth.username).into_owned();
                let (ok, unchecked) = match &origin.cert_user {
                    // A login beside a certificate must be the certificate's user.
                    Some(cert_user) if *cert_user != name => {
                        (false, " (the login is not the client certificate's user)")
                    }
                    _ => match shared.authenticate(peer.ip(), &name, auth.password).await {
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
                    },
                };
                log.user = Some(name.clone());
                if !ok {
                    crate::metrics::metrics().auth_failed();
                    shared.audit(|| {
                        let why = match unchecked {
                            "" => "wrong user name or password",
                            other => other.trim_start_matches(" (").trim_end_matches(')'),
                        };
                        crate::audit::Record::new("login-failed")
                            .with("session", log.id())
                            .with("user", name.clone())
                            .with("client", peer.to_string())
                            .with("tls", stream.is_tls())
                            .with("reason", why)
                    });
                }
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
                password_login = true;
                continue;
            }
            Some(Event::Request(r)) => Asked::Socks {
                command: r.command,
                address: r.address,
                socks4: false,
            },
            Some(Event::NgRequest(r)) => Asked::Ng(r),
            Some(Event::Socks4Request(r)) => Asked::Socks {
                command: match r.command {
                    socksng_proto::Socks4Command::Connect => Command::Connect,
                    socksng_proto::Socks4Command::Bind => Command::Bind,
                },
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
        // Without a login of its own, a client with a certificate is the certificate's user
        // (where the certificate logs in alone; else the configuration admits anonymous
        // clients and the client chose to be one).
        if user.is_none() && shared.cert_logs_in_alone() {
            user = origin.cert_user;
        }
        let conn = Handshaken {
            stream,
            local: origin.local,
            hs,
            early_data,
            user,
            password_login,
            peer,
            shared,
            paces: Default::default(),
            outgoing: Default::default(),
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
                (Command::Bind, true) => "socks4-bind",
                (c, _) => c.name(),
            };
            log.target = Some(address.clone());
        }
        Asked::Ng(request) => log.command = crate::ng::command_name(request),
    }
    // The user the session runs as (a certificate's user, too).
    log.user = conn.user.clone();
    log.authenticated = conn.user.is_some();
    if let Some(live) = &log.live {
        let target = log
            .target
            .as_ref()
            .map_or_else(|| "-".into(), |t| t.to_string());
        let request = crate::admin::Request {
            user: conn.user.clone(),
            password_login: conn.password_login,
            command: match &asked {
                Asked::Socks { command, .. } => Some(*command),
                Asked::Ng(r) => crate::ng::rule_command(r),
            },
            target: match &asked {
                Asked::Socks { address, .. } => Some(address.clone()),
                Asked::Ng(_) => None,
            },
        };
        live.describe(request, log.command, target);
    }
    let max_hops = conn.shared.cfg.forwarding.max_hops;
    if conn.hs.hops() >= max_hops {
        let why = format!(
            "the request passed through {} servers already (limit {max_hops}): a forwarding loop?",
            conn.hs.hops()
        );
        return conn.refuse(log, rep::HOP_LIMIT_REACHED, why).await;
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
    let shared = conn.shared.clone();
    let class = shared.cfg.class_of(conn.user.as_deref());
    log.class = Some(class.name.clone());
    if let Some(live) = &log.live {
        live.set_class(&class.name);
    }
    let limit = class
        .max_sessions
        .unwrap_or(shared.cfg.limits.max_sessions_per_user);
    let holder = crate::shared::Holder::of(conn.user.as_deref(), conn.peer.ip());
    let Some(_slot) = shared.user_slot(Held::Sessions, holder, limit) else {
        let why = "per-user session limit reached";
        return conn.refuse(log, ReplyCode::NOT_ALLOWED, why).await;
    };
    // Shaping is accounted to the user, or an anonymous client to its address.
    let flow = match &conn.user {
        Some(u) => u.clone(),
        None => conn.peer.ip().to_string(),
    };
    conn.paces = shared.shaper.paces(&shared.cfg, class, &flow);
    conn.outgoing = crate::dial::Outgoing {
        external: shared.cfg.external.clone(),
        keepalive: shared.cfg.timeouts.tcp_keepalive,
        mark: class.mark,
        dscp: class.dscp,
    };
    let _active = crate::metrics::metrics().session_started(log.command);
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
