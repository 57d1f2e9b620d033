//! The server side of the SOCKS handshake as a sans-IO state machine.
//!
//! One machine serves SOCKS5 and SOCKS4/4a on the same port, told apart by the first byte.
//! The driver appends received bytes to a buffer, calls [`ServerHandshake::handle_input`],
//! drops the consumed prefix, writes whatever the machine put into `out`, and acts on the
//! event: [`Event::Authenticate`] is answered with [`ServerHandshake::auth_result`], a request
//! with [`ServerHandshake::reply`]. Bytes left over after the request (pipelined data) belong
//! to the relay. On an error the machine may have written a final reply into `out`; the driver
//! flushes it and closes.

use crate::wire::ng::{welcome, NgAuth, NgHello, NgRequest, NgWelcome, NG_METHOD, NG_REVISION};
use crate::wire::{
    Address, AuthReply, AuthRequest, DecodeError, Greeting, Host, Method, MethodSelection, Reply,
    ReplyCode, Request, Socks4Command, Socks4Reply, Socks4Request, SOCKS4_GRANTED, SOCKS4_REJECTED,
};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

/// What the server is willing to do during the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandshakeConfig {
    /// Accept method 0x00 (no authentication).
    pub no_auth: bool,
    /// Accept method 0x02 (username/password).
    pub username_password: bool,
    /// Accept SOCKS4/4a requests (only meaningful when `no_auth` is set: SOCKS4 cannot log in).
    pub socks4: bool,
    /// Select the SOCKS-NG method when offered, and accept the NG commands after it.
    pub ng: bool,
}

/// Something the driver must decide or act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Verify these credentials, then call [`ServerHandshake::auth_result`].
    Authenticate(AuthRequest),
    /// Serve this SOCKS5 request, then call [`ServerHandshake::reply`].
    Request(Request),
    /// Serve this SOCKS4 CONNECT, then call [`ServerHandshake::reply`].
    Socks4Request(Socks4Request),
    /// Serve this SOCKS-NG request, then call [`ServerHandshake::reply`] (for CAPABILITIES the
    /// driver appends the capability block after the reply).
    NgRequest(NgRequest),
}

/// The result of feeding input: how much of it was used, and an event if one is ready.
/// `consumed == 0 && event.is_none()` means "read more".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that belong to handshake messages handled by this call.
    pub consumed: usize,
    /// The decision the driver must now make, if any.
    pub event: Option<Event>,
}

/// Why a handshake ended without success.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The first byte is neither 4 nor 5, or a later version byte is wrong.
    #[error("unsupported protocol version {0:#04x}")]
    UnsupportedVersion(u8),
    /// None of the offered methods is acceptable (X'FF' was sent).
    #[error("no acceptable authentication method offered")]
    NoAcceptableMethod,
    /// Username/password rejected (status 1 was sent).
    #[error("authentication failed")]
    AuthFailed,
    /// Unknown command (reply 0x07 was sent).
    #[error("command {0:#04x} not supported")]
    CommandNotSupported(u8),
    /// Unknown address type (reply 0x08 was sent).
    #[error("address type {0:#04x} not supported")]
    AddressTypeNotSupported(u8),
    /// SOCKS4 is disabled or cannot satisfy the authentication policy (reply 91 was sent).
    #[error("SOCKS4 request refused: {0}")]
    Socks4Refused(&'static str),
    /// A message is malformed.
    #[error("malformed {stage}: {source}")]
    Malformed {
        /// Which message.
        stage: &'static str,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// The driver called a decision method in the wrong state, or fed input after the end.
    #[error("handshake is not expecting this ({0})")]
    WrongState(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitGreeting,
    AwaitAuth,
    AwaitNgHello,
    AuthPending,
    AwaitRequest,
    RequestPending { socks4: bool, bind: bool },
    BindPending { socks4: bool },
    Done,
    Failed,
}

/// What one step of a handshake machine made of the input at hand: `Ok(None)` waits for more
/// input, `Ok(Some((n, event)))` used `n` bytes and may have produced an event.
pub(crate) type StepResult<Ev, E> = Result<Option<(usize, Option<Ev>)>, E>;

/// Runs a machine's steps over `input` until one yields an event, needs more input, or fails,
/// or `step` says the machine takes no input now (`None`). Returns the bytes used and the
/// event. Shared by the server and the client machine.
pub(crate) fn run_steps<Ev, E>(
    input: &[u8],
    mut step: impl FnMut(&[u8]) -> Option<StepResult<Ev, E>>,
) -> Result<(usize, Option<Ev>), E> {
    let mut consumed = 0;
    loop {
        match step(&input[consumed..]) {
            None | Some(Ok(None)) => return Ok((consumed, None)),
            Some(Ok(Some((n, event)))) => {
                consumed += n;
                if event.is_some() {
                    return Ok((consumed, event));
                }
            }
            Some(Err(e)) => return Err(e),
        }
    }
}

/// The server handshake. See the module documentation for the driving loop.
#[derive(Debug, Clone)]
pub struct ServerHandshake {
    config: HandshakeConfig,
    state: State,
    method: Option<Method>,
    /// The client's NG-HELLO VER, for the NG-WELCOME REV.
    ng_revision: u8,
    /// HOPS of a request after SOCKS-NG negotiation (its RSV).
    hops: u8,
}

fn ng_selected(method: Option<Method>) -> bool {
    method == Some(Method(NG_METHOD))
}

impl ServerHandshake {
    /// A machine waiting for the client's first byte.
    pub fn new(config: HandshakeConfig) -> Self {
        ServerHandshake {
            config,
            state: State::AwaitGreeting,
            method: None,
            ng_revision: NG_REVISION,
            hops: 0,
        }
    }

    /// The reply code a SOCKS5 request answered with `code` actually gets. Codes above X'08'
    /// are SOCKS-NG's (draft section 3.2): a plain SOCKS5 client, which may get one passed
    /// back from an upstream, hears general failure instead; a SOCKS-NG client hears only the
    /// codes a reply may carry (not X'09' or X'0E', nor an unassigned one). (A SOCKS4 client
    /// hears granted or rejected whatever the code; the code stays the reason.)
    pub fn code_as_sent(&self, code: ReplyCode) -> ReplyCode {
        let valid_for_ng = matches!(code.0, 0x00..=0x08 | 0x0A..=0x0D | 0x0F);
        match self.state {
            State::RequestPending { socks4: true, .. } | State::BindPending { socks4: true } => {
                code
            }
            _ if code.0 > 0x08 && !ng_selected(self.method) => ReplyCode::GENERAL_FAILURE,
            _ if !valid_for_ng => ReplyCode::GENERAL_FAILURE,
            _ => code,
        }
    }

    /// How many SOCKS servers the request passed through before this one: the request's RSV
    /// after SOCKS-NG negotiation (draft section 3.3), 0 otherwise (plain SOCKS5 clients may
    /// put anything in RSV).
    pub fn hops(&self) -> u8 {
        self.hops
    }

    /// The method chosen during negotiation (None for SOCKS4 or before the greeting).
    pub fn method(&self) -> Option<Method> {
        self.method
    }

    /// True once the final reply has been produced successfully.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds buffered input. Handles as many messages as it can without a decision from the
    /// driver: a greeting and an authentication request arriving together yield one call with
    /// both consumed and `Authenticate` as the event.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Progress, HandshakeError> {
        let (consumed, event) = run_steps(input, |rest| {
            let step = match self.state {
                State::AwaitGreeting => self.on_first_message(rest, out),
                State::AwaitAuth => self.on_auth(rest),
                State::AwaitNgHello => self.on_ng_hello(rest, out),
                State::AwaitRequest => self.on_request(rest, out),
                State::AuthPending | State::RequestPending { .. } | State::BindPending { .. } => {
                    return None
                }
                State::Done | State::Failed => {
                    return Some(Err(HandshakeError::WrongState(
                        "input after the handshake ended",
                    )))
                }
            };
            if step.is_err() {
                self.state = State::Failed;
            }
            Some(step)
        })?;
        Ok(Progress { consumed, event })
    }

    /// Answers an [`Event::Authenticate`].
    pub fn auth_result(&mut self, accepted: bool, out: &mut Vec<u8>) -> Result<(), HandshakeError> {
        if self.state != State::AuthPending {
            return Err(HandshakeError::WrongState("no authentication pending"));
        }
        if ng_selected(self.method) {
            let status = if accepted {
                welcome::OK
            } else {
                welcome::AUTH_FAILED
            };
            NgWelcome::for_client(status, self.ng_revision).encode(out);
        } else {
            AuthReply { success: accepted }.encode(out);
        }
        if accepted {
            self.state = State::AwaitRequest;
            Ok(())
        } else {
            self.state = State::Failed;
            Err(HandshakeError::AuthFailed)
        }
    }

    /// Answers a request. For BIND a successful first reply is followed by a second one (the
    /// connecting peer) through another call. For SOCKS4 the code maps to granted/rejected
    /// and an IPv6 or domain `bound` is sent as 0.0.0.0:0.
    pub fn reply(
        &mut self,
        code: ReplyCode,
        bound: &Address,
        out: &mut Vec<u8>,
    ) -> Result<(), HandshakeError> {
        let ok = code == ReplyCode::SUCCEEDED;
        match self.state {
            State::RequestPending { socks4: true, bind } => {
                socks4_reply(ok, bound, out);
                self.state = match (ok, bind) {
                    (true, true) => State::BindPending { socks4: true },
                    (true, false) => State::Done,
                    (false, _) => State::Failed,
                };
            }
            State::BindPending { socks4: true } => {
                socks4_reply(ok, bound, out);
                self.state = if ok { State::Done } else { State::Failed };
            }
            State::RequestPending {
                socks4: false,
                bind,
            } => {
                let code = self.code_as_sent(code);
                Reply {
                    code,
                    bound: bound.clone(),
                }
                .encode(out);
                self.state = match (ok, bind) {
                    (true, true) => State::BindPending { socks4: false },
                    (true, false) => State::Done,
                    (false, _) => State::Failed,
                };
            }
            State::BindPending { socks4: false } => {
                Reply {
                    code,
                    bound: bound.clone(),
                }
                .encode(out);
                self.state = if ok { State::Done } else { State::Failed };
            }
            _ => return Err(HandshakeError::WrongState("no request pending")),
        }
        Ok(())
    }

    fn on_first_message(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<(usize, Option<Event>)>, HandshakeError> {
        match input.first() {
            None => Ok(None),
            Some(4) => self.on_socks4(input, out),
            Some(5) => self.on_greeting(input, out),
            Some(&v) => Err(HandshakeError::UnsupportedVersion(v)),
        }
    }

    fn on_greeting(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<(usize, Option<Event>)>, HandshakeError> {
        let (greeting, n) = match Greeting::decode(input) {
            Ok(g) => g,
            Err(DecodeError::Incomplete) => return Ok(None),
            Err(DecodeError::NoMethods) => {
                MethodSelection(Method::NO_ACCEPTABLE).encode(out);
                return Err(HandshakeError::NoAcceptableMethod);
            }
            Err(source) => {
                return Err(HandshakeError::Malformed {
                    stage: "greeting",
                    source,
                })
            }
        };
        // SOCKS-NG first: a client offering it wants it, and it carries credentials too.
        // Then username/password when offered: knowing the user is worth more to policy and
        // logs than saving one round trip.
        let chosen = if self.config.ng && greeting.offers(Method(NG_METHOD)) {
            Method(NG_METHOD)
        } else if self.config.username_password && greeting.offers(Method::USERNAME_PASSWORD) {
            Method::USERNAME_PASSWORD
        } else if self.config.no_auth && greeting.offers(Method::NO_AUTH) {
            Method::NO_AUTH
        } else {
            MethodSelection(Method::NO_ACCEPTABLE).encode(out);
            return Err(HandshakeError::NoAcceptableMethod);
        };
        MethodSelection(chosen).encode(out);
        self.method = Some(chosen);
        self.state = match chosen {
            Method::USERNAME_PASSWORD => State::AwaitAuth,
            Method(NG_METHOD) => State::AwaitNgHello,
            _ => State::AwaitRequest,
        };
        Ok(Some((n, None)))
    }

    fn on_ng_hello(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<(usize, Option<Event>)>, HandshakeError> {
        let (hello, n) = match NgHello::decode(input) {
            Ok(h) => h,
            Err(source) => {
                let Some(status) = NgHello::refusal_status(&source) else {
                    return Ok(None);
                };
                NgWelcome::for_client(status, NG_REVISION).encode(out);
                return Err(match source {
                    DecodeError::Version(v) => HandshakeError::UnsupportedVersion(v),
                    source => HandshakeError::Malformed {
                        stage: "NG-HELLO",
                        source,
                    },
                });
            }
        };
        self.ng_revision = hello.revision;
        let refuse = |out: &mut Vec<u8>| {
            NgWelcome::for_client(welcome::AUTH_NOT_ACCEPTABLE, hello.revision).encode(out);
            Err(HandshakeError::NoAcceptableMethod)
        };
        // A server without logins takes credentials it does not need and serves the client
        // anonymously: a client with credentials then never loses a round trip.
        let anonymous = match &hello.auth {
            NgAuth::None => self.config.no_auth,
            NgAuth::Password { .. } => self.config.no_auth && !self.config.username_password,
            NgAuth::Unknown(_) => false,
        };
        match hello.auth {
            _ if anonymous => {
                NgWelcome::for_client(welcome::OK, hello.revision).encode(out);
                self.state = State::AwaitRequest;
                Ok(Some((n, None)))
            }
            NgAuth::Password { username, password } if self.config.username_password => {
                self.state = State::AuthPending;
                Ok(Some((
                    n,
                    Some(Event::Authenticate(AuthRequest { username, password })),
                )))
            }
            _ => refuse(out),
        }
    }

    fn on_auth(&mut self, input: &[u8]) -> Result<Option<(usize, Option<Event>)>, HandshakeError> {
        match AuthRequest::decode(input) {
            Ok((req, n)) => {
                self.state = State::AuthPending;
                Ok(Some((n, Some(Event::Authenticate(req)))))
            }
            Err(DecodeError::Incomplete) => Ok(None),
            Err(DecodeError::Version(v)) => Err(HandshakeError::UnsupportedVersion(v)),
            Err(source) => Err(HandshakeError::Malformed {
                stage: "authentication",
                source,
            }),
        }
    }

    fn on_request(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<(usize, Option<Event>)>, HandshakeError> {
        let ng = ng_selected(self.method) && input.len() >= 2 && NgRequest::is_ng_command(input[1]);
        if ng_selected(self.method) {
            if let Some(hops) = crate::wire::request_hops(input) {
                self.hops = hops;
            }
        }
        let decoded = if ng {
            NgRequest::decode(input).map(|(req, n)| (Event::NgRequest(req), false, n))
        } else {
            Request::decode(input).map(|(req, n)| {
                let bind = req.command == crate::wire::Command::Bind;
                (Event::Request(req), bind, n)
            })
        };
        // One mapping from decode failures to replies for both request kinds.
        let (code, err) = match decoded {
            Ok((event, bind, n)) => {
                self.state = State::RequestPending {
                    socks4: false,
                    bind,
                };
                return Ok(Some((n, Some(event))));
            }
            Err(DecodeError::Incomplete) => return Ok(None),
            Err(DecodeError::Version(v)) => return Err(HandshakeError::UnsupportedVersion(v)),
            Err(DecodeError::UnknownCommand(c)) => (
                ReplyCode::COMMAND_NOT_SUPPORTED,
                HandshakeError::CommandNotSupported(c),
            ),
            Err(DecodeError::UnknownAddressType(t)) => (
                ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED,
                HandshakeError::AddressTypeNotSupported(t),
            ),
            Err(source) => (
                ReplyCode::GENERAL_FAILURE,
                HandshakeError::Malformed {
                    stage: if ng { "NG request" } else { "request" },
                    source,
                },
            ),
        };
        Reply {
            code,
            bound: Address::unspecified(),
        }
        .encode(out);
        Err(err)
    }

    fn on_socks4(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<Option<(usize, Option<Event>)>, HandshakeError> {
        let reject = |out: &mut Vec<u8>| {
            Socks4Reply {
                code: SOCKS4_REJECTED,
                bound: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            }
            .encode(out)
        };
        let (req, n) = match Socks4Request::decode(input) {
            Ok(r) => r,
            Err(DecodeError::Incomplete) => return Ok(None),
            Err(source) => {
                reject(out);
                return Err(HandshakeError::Malformed {
                    stage: "SOCKS4 request",
                    source,
                });
            }
        };
        if !self.config.socks4 {
            reject(out);
            return Err(HandshakeError::Socks4Refused("SOCKS4 is disabled"));
        }
        if !self.config.no_auth {
            reject(out);
            return Err(HandshakeError::Socks4Refused("authentication is required"));
        }
        self.state = State::RequestPending {
            socks4: true,
            bind: req.command == Socks4Command::Bind,
        };
        Ok(Some((n, Some(Event::Socks4Request(req)))))
    }
}

/// A SOCKS4 reply: granted with `bound` (an IPv4 address; another kind of address is sent as
/// 0.0.0.0, which SOCKS4 clients replace with the server's, with the port kept), or rejected.
fn socks4_reply(ok: bool, bound: &Address, out: &mut Vec<u8>) {
    let bound = match (&bound.host, ok) {
        (Host::Ip(IpAddr::V4(v4)), true) => SocketAddrV4::new(*v4, bound.port),
        (_, true) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, bound.port),
        (_, false) => SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
    };
    let code = if ok { SOCKS4_GRANTED } else { SOCKS4_REJECTED };
    Socks4Reply { code, bound }.encode(out);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Command;

    const OPEN: HandshakeConfig = HandshakeConfig {
        no_auth: true,
        username_password: false,
        socks4: true,
        ng: false,
    };
    const AUTH: HandshakeConfig = HandshakeConfig {
        no_auth: false,
        username_password: true,
        socks4: true,
        ng: true,
    };
    const BOTH: HandshakeConfig = HandshakeConfig {
        no_auth: true,
        username_password: true,
        socks4: true,
        ng: true,
    };

    fn connect_req() -> Vec<u8> {
        vec![5, 1, 0, 1, 127, 0, 0, 1, 0, 80]
    }

    /// The code a client hears: a plain SOCKS5 client never a SOCKS-NG code, a SOCKS-NG
    /// client only the codes a reply may carry; what the server logs follows it.
    #[test]
    fn codes_passed_back_are_ones_the_client_may_hear() {
        let mut plain = ServerHandshake::new(OPEN);
        let (_, event, _) = drive(&mut plain, &[&[5, 1, 0][..], &connect_req()].concat(), 64);
        assert!(matches!(event, Ok(Some(Event::Request(_)))));
        for (code, heard) in [(0x02, 0x02), (0x08, 0x08), (0x0F, 0x01), (0x0A, 0x01)] {
            assert_eq!(
                plain.code_as_sent(ReplyCode(code)),
                ReplyCode(heard),
                "{code:#x}"
            );
        }
        let mut ng = ServerHandshake::new(BOTH);
        let hello = [5, 1, NG_METHOD, 1, 0, 0, 0];
        let (_, event, _) = drive(&mut ng, &[&hello[..], &connect_req()].concat(), 64);
        assert!(matches!(event, Ok(Some(Event::Request(_)))), "{event:?}");
        for (code, heard) in [
            (0x0F, 0x0F),
            (0x0A, 0x0A),
            (0x09, 0x01),
            (0x0E, 0x01),
            (0x5B, 0x01),
            (0x10, 0x01),
        ] {
            assert_eq!(
                ng.code_as_sent(ReplyCode(code)),
                ReplyCode(heard),
                "{code:#x}"
            );
        }
    }

    /// Feeds the input as a driver would, in chunks of `chunk` bytes, collecting events.
    fn drive(
        hs: &mut ServerHandshake,
        input: &[u8],
        chunk: usize,
    ) -> (Vec<u8>, Result<Option<Event>, HandshakeError>, usize) {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut fed = 0;
        let mut consumed_total = 0;
        loop {
            match hs.handle_input(&buf, &mut out) {
                Err(e) => return (out, Err(e), consumed_total),
                Ok(p) => {
                    buf.drain(..p.consumed);
                    consumed_total += p.consumed;
                    if let Some(ev) = p.event {
                        return (out, Ok(Some(ev)), consumed_total);
                    }
                }
            }
            if fed == input.len() {
                return (out, Ok(None), consumed_total);
            }
            let end = (fed + chunk).min(input.len());
            buf.extend_from_slice(&input[fed..end]);
            fed = end;
        }
    }

    #[test]
    fn no_auth_connect_pipelined_with_data() {
        let mut hs = ServerHandshake::new(OPEN);
        let mut input = vec![5, 1, 0];
        input.extend(connect_req());
        input.extend_from_slice(b"GET /");
        let mut out = Vec::new();
        let p = hs.handle_input(&input, &mut out).unwrap();
        assert_eq!(out, [5, 0]);
        assert_eq!(p.consumed, 3 + 10);
        assert_eq!(&input[p.consumed..], b"GET /");
        let Some(Event::Request(req)) = p.event else {
            panic!()
        };
        assert_eq!(req.command, Command::Connect);
        out.clear();
        hs.reply(
            ReplyCode::SUCCEEDED,
            &Address::ip("127.0.0.1:4000".parse().unwrap()),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [5, 0, 0, 1, 127, 0, 0, 1, 0x0f, 0xa0]);
        assert!(hs.is_done());
        assert!(hs.handle_input(b"x", &mut out).is_err());
    }

    #[test]
    fn one_byte_at_a_time_with_auth() {
        for chunk in [1, 2, 3, 7, 100] {
            let mut hs = ServerHandshake::new(AUTH);
            let mut input = vec![5, 2, 0, 2, 1, 1, b'u', 1, b'p'];
            let (out, ev, used) = drive(&mut hs, &input, chunk);
            assert_eq!(out, [5, 2]);
            assert_eq!(used, input.len());
            let Ok(Some(Event::Authenticate(a))) = ev else {
                panic!("{ev:?}")
            };
            assert_eq!(
                (a.username.as_slice(), a.password.as_slice()),
                (&b"u"[..], &b"p"[..])
            );
            let mut out = Vec::new();
            hs.auth_result(true, &mut out).unwrap();
            assert_eq!(out, [1, 0]);
            input = connect_req();
            let (_, ev, _) = drive(&mut hs, &input, chunk);
            assert!(matches!(ev, Ok(Some(Event::Request(_)))));
        }
    }

    #[test]
    fn prefers_password_when_both_offered() {
        let mut hs = ServerHandshake::new(BOTH);
        let mut out = Vec::new();
        let p = hs.handle_input(&[5, 2, 0, 2], &mut out).unwrap();
        assert_eq!(out, [5, 2]);
        assert_eq!(p.consumed, 4);
        assert_eq!(hs.method(), Some(Method::USERNAME_PASSWORD));
        let mut hs = ServerHandshake::new(BOTH);
        let mut out = Vec::new();
        hs.handle_input(&[5, 1, 0], &mut out).unwrap();
        assert_eq!(out, [5, 0]);
    }

    #[test]
    fn auth_rejected() {
        let mut hs = ServerHandshake::new(AUTH);
        let mut out = Vec::new();
        hs.handle_input(&[5, 1, 2, 1, 1, b'u', 1, b'x'], &mut out)
            .unwrap();
        out.clear();
        assert_eq!(
            hs.auth_result(false, &mut out),
            Err(HandshakeError::AuthFailed)
        );
        assert_eq!(out, [1, 1]);
    }

    #[test]
    fn no_acceptable_method() {
        let mut hs = ServerHandshake::new(AUTH);
        let mut out = Vec::new();
        assert_eq!(
            hs.handle_input(&[5, 1, 0], &mut out),
            Err(HandshakeError::NoAcceptableMethod)
        );
        assert_eq!(out, [5, 0xff]);
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        assert_eq!(
            hs.handle_input(&[5, 0], &mut out),
            Err(HandshakeError::NoAcceptableMethod)
        );
        assert_eq!(out, [5, 0xff]);
    }

    #[test]
    fn bad_versions_close_silently() {
        for first in [0u8, 1, 3, 6, b'G', 0x16, 0xff] {
            let mut hs = ServerHandshake::new(OPEN);
            let mut out = Vec::new();
            assert_eq!(
                hs.handle_input(&[first, 1, 0], &mut out),
                Err(HandshakeError::UnsupportedVersion(first))
            );
            assert!(out.is_empty());
        }
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let r = hs.handle_input(&[5, 1, 0, 4, 1, 0, 1], &mut out);
        assert_eq!(r, Err(HandshakeError::UnsupportedVersion(4)));
    }

    #[test]
    fn unknown_command_and_address_type() {
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let r = hs.handle_input(&[5, 1, 0, 5, 0x09, 0], &mut out);
        assert_eq!(r, Err(HandshakeError::CommandNotSupported(9)));
        assert_eq!(out, [5, 0, 5, 7, 0, 1, 0, 0, 0, 0, 0, 0]);
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let r = hs.handle_input(&[5, 1, 0, 5, 1, 0, 0x05, 1, 2], &mut out);
        assert_eq!(r, Err(HandshakeError::AddressTypeNotSupported(5)));
        assert_eq!(out[2..4], [5, 8]);
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let r = hs.handle_input(&[5, 1, 0, 5, 1, 0, 3, 0, 0, 80], &mut out);
        assert!(matches!(
            r,
            Err(HandshakeError::Malformed {
                stage: "request",
                ..
            })
        ));
        assert_eq!(out[2..4], [5, 1]);
    }

    #[test]
    fn bind_takes_two_replies() {
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        hs.handle_input(&[5, 1, 0, 5, 2, 0, 1, 10, 0, 0, 1, 0, 0], &mut out)
            .unwrap();
        let a = Address::ip("127.0.0.1:5000".parse().unwrap());
        hs.reply(ReplyCode::SUCCEEDED, &a, &mut out).unwrap();
        assert!(!hs.is_done());
        hs.reply(ReplyCode::SUCCEEDED, &a, &mut out).unwrap();
        assert!(hs.is_done());
        assert!(hs.reply(ReplyCode::SUCCEEDED, &a, &mut out).is_err());
    }

    #[test]
    fn socks4_connect_and_policy() {
        let req = [4, 1, 0, 80, 10, 0, 0, 1, b'u', 0, b'X'];
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let p = hs.handle_input(&req, &mut out).unwrap();
        assert_eq!(p.consumed, 10);
        assert!(matches!(p.event, Some(Event::Socks4Request(_))));
        hs.reply(
            ReplyCode::CONNECTION_REFUSED,
            &Address::unspecified(),
            &mut out,
        )
        .unwrap();
        assert_eq!(out, [0, 91, 0, 0, 0, 0, 0, 0]);

        let mut hs = ServerHandshake::new(AUTH);
        let mut out = Vec::new();
        assert!(matches!(
            hs.handle_input(&req, &mut out),
            Err(HandshakeError::Socks4Refused(_))
        ));
        assert_eq!(out, [0, 91, 0, 0, 0, 0, 0, 0]);

        let mut hs = ServerHandshake::new(HandshakeConfig {
            socks4: false,
            ..OPEN
        });
        let mut out = Vec::new();
        assert!(hs.handle_input(&req, &mut out).is_err());

        // BIND: the listening address, then the peer's; a failed wait is rejected.
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let p = hs
            .handle_input(&[4, 2, 0, 80, 10, 0, 0, 1, 0], &mut out)
            .unwrap();
        assert!(
            matches!(p.event, Some(Event::Socks4Request(ref r)) if r.command == Socks4Command::Bind)
        );
        let listening = Address::ip("192.0.2.1:4000".parse().unwrap());
        hs.reply(ReplyCode::SUCCEEDED, &listening, &mut out)
            .unwrap();
        assert_eq!(out, [0, 90, 0x0f, 0xa0, 192, 0, 2, 1]);
        assert!(!hs.is_done());
        out.clear();
        let peer = Address::ip("10.0.0.1:5555".parse().unwrap());
        hs.reply(ReplyCode::SUCCEEDED, &peer, &mut out).unwrap();
        assert_eq!(out, [0, 90, 0x15, 0xb3, 10, 0, 0, 1]);
        assert!(hs.is_done());

        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        hs.handle_input(&[4, 2, 0, 80, 10, 0, 0, 1, 0], &mut out)
            .unwrap();
        hs.reply(ReplyCode::SUCCEEDED, &listening, &mut out)
            .unwrap();
        out.clear();
        hs.reply(ReplyCode::TTL_EXPIRED, &Address::unspecified(), &mut out)
            .unwrap();
        assert_eq!(out, [0, 91, 0, 0, 0, 0, 0, 0]);
        // A listening address SOCKS4 cannot carry keeps its port (the client substitutes
        // the server's address for 0.0.0.0).
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        hs.handle_input(&[4, 2, 0, 80, 10, 0, 0, 1, 0], &mut out)
            .unwrap();
        let v6 = Address::ip("[2001:db8::1]:4000".parse().unwrap());
        hs.reply(ReplyCode::SUCCEEDED, &v6, &mut out).unwrap();
        assert_eq!(out, [0, 90, 0x0f, 0xa0, 0, 0, 0, 0]);
    }

    #[test]
    fn decisions_in_wrong_state() {
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        assert!(hs.auth_result(true, &mut out).is_err());
        assert!(hs
            .reply(ReplyCode::SUCCEEDED, &Address::unspecified(), &mut out)
            .is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn ng_negotiation_with_password_and_listen() {
        let mut hs = ServerHandshake::new(AUTH);
        let mut input = vec![5, 3, 0xa5, 2, 0];
        input.extend_from_slice(&[1, 2, 0, 5, 1, b'u', 2, b'p', b'w']);
        let mut out = Vec::new();
        let p = hs.handle_input(&input, &mut out).unwrap();
        assert_eq!(out, [5, 0xa5]);
        assert_eq!(p.consumed, input.len());
        let Some(Event::Authenticate(a)) = p.event else {
            panic!("{p:?}")
        };
        assert_eq!(
            (a.username.as_slice(), a.password.as_slice()),
            (&b"u"[..], &b"pw"[..])
        );
        out.clear();
        hs.auth_result(true, &mut out).unwrap();
        assert_eq!(out, [1, 0, 1], "NG-WELCOME, not an RFC 1929 reply");
        let listen = [5, 0x12, 0, 1, 0, 0, 0, 0, 0x1f, 0x90, 1, 0, 8];
        out.clear();
        let p = hs.handle_input(&listen, &mut out).unwrap();
        assert_eq!(p.consumed, listen.len());
        assert!(matches!(
            p.event,
            Some(Event::NgRequest(NgRequest::Listen {
                exact: true,
                backlog: 8,
                ..
            }))
        ));
        hs.reply(ReplyCode::SUCCEEDED, &Address::unspecified(), &mut out)
            .unwrap();
        assert!(hs.is_done());
    }

    #[test]
    fn ng_refusals() {
        // Failed login: NG-WELCOME with status 1.
        let mut hs = ServerHandshake::new(AUTH);
        let mut out = Vec::new();
        hs.handle_input(&[5, 1, 0xa5, 1, 2, 0, 3, 1, b'u', 0], &mut out)
            .unwrap();
        out.clear();
        assert_eq!(
            hs.auth_result(false, &mut out),
            Err(HandshakeError::AuthFailed)
        );
        assert_eq!(out, [1, 1, 1]);
        // AUTH none on a server that requires a login: status 2.
        let mut hs = ServerHandshake::new(AUTH);
        let mut out = Vec::new();
        let r = hs.handle_input(&[5, 1, 0xa5, 1, 0, 0, 0], &mut out);
        assert_eq!(r, Err(HandshakeError::NoAcceptableMethod));
        assert_eq!(out, [5, 0xa5, 1, 2, 1]);
        // Without NG the method is not selected, and NG commands are unknown commands.
        let mut hs = ServerHandshake::new(OPEN);
        let mut out = Vec::new();
        let r = hs.handle_input(&[5, 2, 0xa5, 0, 5, 0x11, 0], &mut out);
        assert_eq!(r, Err(HandshakeError::CommandNotSupported(0x11)));
        assert_eq!(out[..4], [5, 0, 5, 7]);
        // With NG and no authentication: AUTH none is welcome, and CAPABILITIES is a request.
        let mut hs = ServerHandshake::new(BOTH);
        let mut out = Vec::new();
        let p = hs
            .handle_input(&[5, 1, 0xa5, 1, 0, 0, 0, 5, 0x11, 0], &mut out)
            .unwrap();
        assert_eq!(out, [5, 0xa5, 1, 0, 1]);
        assert_eq!(p.event, Some(Event::NgRequest(NgRequest::Capabilities)));
    }
}
