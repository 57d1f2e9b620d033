//! The client side of the SOCKS5 and SOCKS-NG handshake as a sans-IO state machine: the
//! counterpart of [`crate::handshake::ServerHandshake`], for the async client, upstream
//! chaining and the blocking socksify shim alike.
//!
//! [`ClientHandshake::new`] writes the greeting into `out`. The driver sends what the machine
//! puts in `out`, appends what it receives to a buffer, calls
//! [`ClientHandshake::handle_input`], drops the consumed prefix, and acts on the events:
//! [`ClientEvent::Reply`] carries the reply to the request (for BIND the first one, with the
//! listening address), [`ClientEvent::BindPeer`] the second BIND reply, and
//! [`ClientEvent::Capabilities`] the block that follows a successful CAPABILITIES reply. Bytes
//! left over once [`ClientHandshake::is_done`] belong to the stream (the target's first bytes).
//! A refusal (any reply code but success) ends the machine with the reply as its event.

use crate::handshake::{run_steps, StepResult};
use crate::wire::ng::{
    welcome, Capabilities, NgAuth, NgHello, NgRequest, NgWelcome, NG_METHOD, NG_REVISION,
};
use crate::wire::{
    AuthReply, AuthRequest, Command, DecodeError, EncodeError, Greeting, Method, MethodSelection,
    Reply, ReplyCode, Request, Socks4Command, Socks4Reply, Socks4Request,
};

/// What the client asks for once the handshake is through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientRequest {
    /// A SOCKS5 command (CONNECT, BIND, UDP ASSOCIATE), valid on both paths.
    Socks5(Request),
    /// A SOCKS-NG command; it needs the server to select the SOCKS-NG method.
    Ng(NgRequest),
}

/// How the client negotiates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientConfig {
    /// Speak SOCKS4/4a instead of SOCKS5 (no greeting, no login, no SOCKS-NG).
    pub socks4: bool,
    /// Offer the SOCKS-NG method (X'A5') beside the plain ones.
    pub offer_ng: bool,
    /// Username and password (RFC 1929, or inside NG-HELLO); `None` offers no login.
    pub credentials: Option<(Vec<u8>, Vec<u8>)>,
    /// How many SOCKS servers the request has already passed through: 0 for a client that is
    /// not a server; a server forwarding a request sends the HOPS it received plus one. Sent
    /// in the request's RSV once SOCKS-NG is negotiated (draft section 3.3).
    pub hops: u8,
}

/// Which protocol the server settled on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// SOCKS-NG (method X'A5', NG-HELLO and NG-WELCOME).
    Ng,
    /// Plain SOCKS5.
    Socks5,
    /// SOCKS4, or SOCKS4a for a name: no greeting, CONNECT and BIND only, the username as
    /// USERID.
    Socks4,
}

/// Something the driver learns from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// A machine made with [`ClientHandshake::negotiate`] got through method selection and
    /// login: give it the request with [`ClientHandshake::request`].
    Negotiated(Path),
    /// The reply to the request (BIND: the first reply, with the listening address).
    Reply(Reply),
    /// The second BIND reply: the peer that connected.
    BindPeer(Reply),
    /// The block after a successful CAPABILITIES reply.
    Capabilities(Capabilities),
}

/// How much input a call used, and an event if one is ready. `consumed == 0 && event ==
/// None` means "read more".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientProgress {
    /// Bytes of the input that belonged to handshake messages.
    pub consumed: usize,
    /// What arrived, if anything.
    pub event: Option<ClientEvent>,
}

/// Why a client handshake ended without a reply to the request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientHandshakeError {
    /// The server accepted none of the offered methods (X'FF').
    #[error("the proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    /// The server selected a method that was not offered.
    #[error("the proxy selected method {0:#04x}, which was not offered")]
    UnexpectedMethod(u8),
    /// The request is a SOCKS-NG one and the server chose plain SOCKS5.
    #[error("the proxy does not speak SOCKS-NG")]
    NgNotSelected,
    /// The username/password was rejected.
    #[error("the proxy refused the login")]
    AuthFailed,
    /// NG-WELCOME with a status other than success or a failed login.
    #[error("the proxy refused SOCKS-NG (status {0:#04x})")]
    NgRefused(u8),
    /// The server settled on a revision this client does not implement.
    #[error("the proxy speaks SOCKS-NG revision {0}, which this client does not")]
    UnsupportedRevision(u8),
    /// Credentials that cannot be encoded (over 255 bytes).
    #[error("credentials cannot be sent: {0}")]
    BadCredentials(EncodeError),
    /// A message from the server is malformed.
    #[error("malformed {stage} from the proxy: {source}")]
    Malformed {
        /// Which message.
        stage: &'static str,
        /// What is wrong with it.
        source: DecodeError,
    },
    /// Input after the end, or after a failure.
    #[error("handshake is not expecting this ({0})")]
    WrongState(&'static str),
    /// SOCKS4 cannot carry this request (UDP, an IPv6 target, a SOCKS-NG command).
    #[error("SOCKS4 cannot carry this request: {0}")]
    NotInSocks4(&'static str),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    AwaitSelection,
    AwaitAuthReply,
    AwaitWelcome,
    AwaitRequest,
    AwaitReply,
    AwaitBindPeer,
    AwaitSocks4Reply,
    AwaitSocks4BindPeer,
    AwaitCapabilities,
    Done,
    Failed,
}

/// The client handshake. See the module documentation for the driving loop.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    config: ClientConfig,
    request: Option<ClientRequest>,
    state: State,
    path: Option<Path>,
}

type Step = StepResult<ClientEvent, ClientHandshakeError>;

fn decoded<T>(
    stage: &'static str,
    r: Result<(T, usize), DecodeError>,
) -> Result<Option<(T, usize)>, ClientHandshakeError> {
    match r {
        Ok(x) => Ok(Some(x)),
        Err(DecodeError::Incomplete) => Ok(None),
        Err(source) => Err(ClientHandshakeError::Malformed { stage, source }),
    }
}

impl ClientHandshake {
    /// A machine for one request; the greeting is appended to `out`.
    /// With SOCKS4 the request goes out at once; one SOCKS4 cannot carry leaves the machine
    /// failed (use [`ClientHandshake::negotiate`] and [`ClientHandshake::request`] to hear why).
    pub fn new(config: ClientConfig, request: ClientRequest, out: &mut Vec<u8>) -> Self {
        let mut machine = Self::negotiate(config, out);
        if machine.path == Some(Path::Socks4) {
            if machine.send_socks4(request, out).is_err() {
                machine.state = State::Failed;
            }
            return machine;
        }
        machine.request = Some(request);
        machine
    }

    /// A machine that negotiates first and stops with [`ClientEvent::Negotiated`], so the
    /// request can depend on the path (LISTEN on SOCKS-NG, BIND on a plain server); the
    /// greeting is appended to `out`.
    pub fn negotiate(config: ClientConfig, out: &mut Vec<u8>) -> Self {
        if config.socks4 {
            // SOCKS4 has no negotiation: the request is the first message.
            return ClientHandshake {
                config,
                request: None,
                state: State::AwaitRequest,
                path: Some(Path::Socks4),
            };
        }
        let mut methods = Vec::with_capacity(3);
        if config.offer_ng {
            methods.push(Method(NG_METHOD));
        }
        if config.credentials.is_some() {
            methods.push(Method::USERNAME_PASSWORD);
        }
        methods.push(Method::NO_AUTH);
        Greeting { methods }.encode(out);
        ClientHandshake {
            config,
            request: None,
            state: State::AwaitSelection,
            path: None,
        }
    }

    /// Sends the request of a machine made with [`ClientHandshake::negotiate`], after its
    /// [`ClientEvent::Negotiated`].
    pub fn request(
        &mut self,
        request: ClientRequest,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientHandshakeError> {
        if self.state != State::AwaitRequest {
            return Err(ClientHandshakeError::WrongState("no request expected"));
        }
        if matches!(request, ClientRequest::Ng(_)) && self.path != Some(Path::Ng) {
            return Err(ClientHandshakeError::NgNotSelected);
        }
        if self.path == Some(Path::Socks4) {
            return self.send_socks4(request, out);
        }
        self.request = Some(request);
        self.send_request(out);
        Ok(())
    }

    /// Whether the machine waits for its request (a SOCKS4 machine does from the start).
    pub fn awaits_request(&self) -> bool {
        self.state == State::AwaitRequest
    }

    fn send_socks4(
        &mut self,
        request: ClientRequest,
        out: &mut Vec<u8>,
    ) -> Result<(), ClientHandshakeError> {
        let ClientRequest::Socks5(Request { command, address }) = &request else {
            return Err(ClientHandshakeError::NotInSocks4("a SOCKS-NG command"));
        };
        let (command, next) = match command {
            Command::Connect => (Socks4Command::Connect, State::AwaitSocks4Reply),
            Command::Bind => (Socks4Command::Bind, State::AwaitSocks4Reply),
            _ => return Err(ClientHandshakeError::NotInSocks4("UDP")),
        };
        let user_id = self
            .config
            .credentials
            .as_ref()
            .map(|(user, _)| user.clone())
            .unwrap_or_default();
        Socks4Request {
            command,
            address: address.clone(),
            user_id,
        }
        .encode(out)
        .map_err(|_| ClientHandshakeError::NotInSocks4("an IPv6 target"))?;
        self.request = Some(request);
        self.state = next;
        Ok(())
    }

    /// A SOCKS4 reply as a SOCKS5 one: 90 is success, the refusals keep their codes
    /// (0x5B to 0x5D, which no SOCKS5 code uses).
    fn on_socks4_reply(&mut self, input: &[u8]) -> Step {
        let Some((reply, n)) = decoded("SOCKS4 reply", Socks4Reply::decode(input))? else {
            return Ok(None);
        };
        // 90 is success; 91 to 93 keep their codes; anything else is no success either and
        // reads as 91, "rejected or failed".
        let code = match reply.code {
            crate::wire::SOCKS4_GRANTED => ReplyCode::SUCCEEDED,
            c @ 0x5B..=0x5D => ReplyCode(c),
            _ => ReplyCode(crate::wire::SOCKS4_REJECTED),
        };
        let reply = Reply {
            code,
            bound: crate::wire::Address::ip(reply.bound.into()),
        };
        let first = self.state == State::AwaitSocks4Reply;
        let bind =
            matches!(&self.request, Some(ClientRequest::Socks5(r)) if r.command == Command::Bind);
        self.state = if first && bind && code == ReplyCode::SUCCEEDED {
            State::AwaitSocks4BindPeer
        } else {
            State::Done
        };
        let event = if first {
            ClientEvent::Reply(reply)
        } else {
            ClientEvent::BindPeer(reply)
        };
        Ok(Some((n, Some(event))))
    }

    /// How many bytes to read next without reading past the message the machine waits for,
    /// so bytes the target sends right after the last reply stay in the socket. `buffered`
    /// is what the driver holds unconsumed; 0 once the machine waits for nothing.
    pub fn next_read_len(&self, buffered: &[u8]) -> usize {
        let whole = match self.state {
            State::AwaitSelection | State::AwaitAuthReply => 2,
            State::AwaitWelcome => 3,
            State::AwaitReply | State::AwaitBindPeer => Reply::wanted_len(buffered).unwrap_or(0),
            State::AwaitSocks4Reply | State::AwaitSocks4BindPeer => 8,
            State::AwaitCapabilities => match buffered {
                [hi, lo, ..] => 2 + usize::from(u16::from_be_bytes([*hi, *lo])),
                _ => 2,
            },
            State::AwaitRequest | State::Done | State::Failed => 0,
        };
        whole.saturating_sub(buffered.len())
    }

    /// The reply code when the server closed the connection in the middle of a failure
    /// reply (some servers send a short refusal and close): the refusal still counts.
    pub fn refusal_at_eof(&self, buffered: &[u8]) -> Option<ReplyCode> {
        match self.state {
            State::AwaitReply | State::AwaitBindPeer => Reply::failure_code(buffered),
            State::AwaitSocks4Reply | State::AwaitSocks4BindPeer => match buffered {
                [0, code, ..] if *code != crate::wire::SOCKS4_GRANTED => Some(ReplyCode(*code)),
                _ => None,
            },
            _ => None,
        }
    }

    /// The protocol settled on, once the method is selected.
    pub fn path(&self) -> Option<Path> {
        self.path
    }

    /// True once the last reply (and, for CAPABILITIES, its block) has arrived.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds received bytes; handles as many messages as are complete, stopping at the
    /// first event.
    pub fn handle_input(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<ClientProgress, ClientHandshakeError> {
        let (consumed, event) = run_steps(input, |rest| {
            let step = match self.state {
                State::AwaitSelection => self.on_selection(rest, out),
                State::AwaitAuthReply => self.on_auth_reply(rest, out),
                State::AwaitWelcome => self.on_welcome(rest, out),
                State::AwaitReply => self.on_reply(rest),
                State::AwaitBindPeer => self.on_bind_peer(rest),
                State::AwaitSocks4Reply | State::AwaitSocks4BindPeer => self.on_socks4_reply(rest),
                State::AwaitCapabilities => self.on_capabilities(rest),
                State::AwaitRequest | State::Done | State::Failed => return None,
            };
            if step.is_err() {
                self.state = State::Failed;
            }
            Some(step)
        })?;
        Ok(ClientProgress { consumed, event })
    }

    /// Sends the request, or with none given yet stops for it with the path settled on.
    fn send_request(&mut self, out: &mut Vec<u8>) -> Option<ClientEvent> {
        let start = out.len();
        match &self.request {
            Some(ClientRequest::Socks5(r)) => r.encode(out),
            Some(ClientRequest::Ng(r)) => r.encode(out),
            None => {
                self.state = State::AwaitRequest;
                return self.path.map(ClientEvent::Negotiated);
            }
        }
        // A plain SOCKS5 server gets RSV X'00', as RFC 1928 asks.
        if self.path == Some(Path::Ng) {
            crate::wire::set_request_hops(&mut out[start..], self.config.hops);
        }
        self.state = State::AwaitReply;
        None
    }

    fn on_selection(&mut self, input: &[u8], out: &mut Vec<u8>) -> Step {
        let Some((MethodSelection(m), n)) =
            decoded("method selection", MethodSelection::decode(input))?
        else {
            return Ok(None);
        };
        let ng_request = matches!(self.request, Some(ClientRequest::Ng(_)));
        match m {
            Method(NG_METHOD) if self.config.offer_ng => {
                self.path = Some(Path::Ng);
                let auth = match &self.config.credentials {
                    Some((username, password)) => NgAuth::Password {
                        username: username.clone(),
                        password: password.clone(),
                    },
                    None => NgAuth::None,
                };
                NgHello::new(auth)
                    .encode(out)
                    .map_err(ClientHandshakeError::BadCredentials)?;
                self.state = State::AwaitWelcome;
            }
            Method::NO_AUTH | Method::USERNAME_PASSWORD if ng_request => {
                return Err(ClientHandshakeError::NgNotSelected)
            }
            Method::USERNAME_PASSWORD if self.config.credentials.is_some() => {
                self.path = Some(Path::Socks5);
                let (username, password) = self.config.credentials.clone().unwrap_or_default();
                AuthRequest { username, password }
                    .encode(out)
                    .map_err(ClientHandshakeError::BadCredentials)?;
                self.state = State::AwaitAuthReply;
            }
            Method::NO_AUTH => {
                self.path = Some(Path::Socks5);
                return Ok(Some((n, self.send_request(out))));
            }
            Method::NO_ACCEPTABLE => return Err(ClientHandshakeError::NoAcceptableMethod),
            Method(other) => return Err(ClientHandshakeError::UnexpectedMethod(other)),
        }
        Ok(Some((n, None)))
    }

    fn on_auth_reply(&mut self, input: &[u8], out: &mut Vec<u8>) -> Step {
        let Some((reply, n)) = decoded("login reply", AuthReply::decode(input))? else {
            return Ok(None);
        };
        if !reply.success {
            return Err(ClientHandshakeError::AuthFailed);
        }
        Ok(Some((n, self.send_request(out))))
    }

    fn on_welcome(&mut self, input: &[u8], out: &mut Vec<u8>) -> Step {
        let Some((w, n)) = decoded("NG-WELCOME", NgWelcome::decode(input))? else {
            return Ok(None);
        };
        match w.status {
            welcome::OK if w.revision != NG_REVISION => {
                Err(ClientHandshakeError::UnsupportedRevision(w.revision))
            }
            welcome::OK => Ok(Some((n, self.send_request(out)))),
            welcome::AUTH_FAILED => Err(ClientHandshakeError::AuthFailed),
            other => Err(ClientHandshakeError::NgRefused(other)),
        }
    }

    fn on_reply(&mut self, input: &[u8]) -> Step {
        let (reply, n) = match Reply::decode(input) {
            Ok(r) => r,
            Err(DecodeError::Incomplete) => return Ok(None),
            // A failure reply with an address that cannot be read is still a failure reply;
            // nothing after it can be trusted, so it takes the rest of the input.
            Err(source) => match Reply::failure_code(input) {
                Some(code) => (
                    Reply {
                        code,
                        bound: crate::wire::Address::unspecified(),
                    },
                    input.len(),
                ),
                None => {
                    return Err(ClientHandshakeError::Malformed {
                        stage: "reply",
                        source,
                    })
                }
            },
        };
        let ok = reply.code == ReplyCode::SUCCEEDED;
        self.state = match (&self.request, ok) {
            (_, false) => State::Done,
            (Some(ClientRequest::Socks5(r)), true) if r.command == Command::Bind => {
                State::AwaitBindPeer
            }
            (Some(ClientRequest::Ng(NgRequest::Capabilities)), true) => State::AwaitCapabilities,
            _ => State::Done,
        };
        Ok(Some((n, Some(ClientEvent::Reply(reply)))))
    }

    fn on_bind_peer(&mut self, input: &[u8]) -> Step {
        let Some((reply, n)) = decoded("second BIND reply", Reply::decode(input))? else {
            return Ok(None);
        };
        self.state = State::Done;
        Ok(Some((n, Some(ClientEvent::BindPeer(reply)))))
    }

    fn on_capabilities(&mut self, input: &[u8]) -> Step {
        let Some((caps, n)) = decoded("CAPABILITIES block", Capabilities::decode(input))? else {
            return Ok(None);
        };
        // REVISION repeats the NG-WELCOME REV, which this client accepted only as its own.
        if caps.revision != NG_REVISION {
            return Err(ClientHandshakeError::Malformed {
                stage: "CAPABILITIES block",
                source: DecodeError::Invalid("REVISION differs from NG-WELCOME REV"),
            });
        }
        self.state = State::Done;
        Ok(Some((n, Some(ClientEvent::Capabilities(caps)))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handshake::{Event, HandshakeConfig, ServerHandshake};
    use crate::wire::ng::ServedRange;
    use crate::wire::Address;
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const USER: &[u8] = b"alice";
    const PASS: &[u8] = b"s3cret";

    /// What the server side of a pair does with each decision.
    struct Server {
        hs: ServerHandshake,
        bind_peer: Address,
        caps: Capabilities,
    }

    impl Server {
        fn new(config: HandshakeConfig) -> Self {
            Server {
                hs: ServerHandshake::new(config),
                bind_peer: Address::ip("192.0.2.7:4000".parse().unwrap()),
                caps: Capabilities {
                    revision: 1,
                    commands: vec![1, 2, 3],
                    max_udp_payload: Some(1400),
                    token_lifetime: Some(30),
                    ranges: vec![ServedRange {
                        prefixes: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8)],
                        ..Default::default()
                    }],
                },
            }
        }

        /// Feeds the server's input, answering every event; returns whether it is done.
        fn step(&mut self, input: &mut Vec<u8>, out: &mut Vec<u8>) -> bool {
            loop {
                let Ok(p) = self.hs.handle_input(input, out) else {
                    return true;
                };
                input.drain(..p.consumed);
                let bound = Address::ip("198.51.100.1:1080".parse().unwrap());
                match p.event {
                    None => return self.hs.is_done(),
                    Some(Event::Authenticate(a)) => {
                        let ok = a.username == USER && a.password == PASS;
                        if self.hs.auth_result(ok, out).is_err() {
                            return true;
                        }
                    }
                    Some(Event::Request(r)) => {
                        self.hs.reply(ReplyCode::SUCCEEDED, &bound, out).unwrap();
                        if r.command == Command::Bind {
                            self.hs
                                .reply(ReplyCode::SUCCEEDED, &self.bind_peer, out)
                                .unwrap();
                        }
                        return true;
                    }
                    Some(Event::NgRequest(r)) => {
                        self.hs.reply(ReplyCode::SUCCEEDED, &bound, out).unwrap();
                        if r == NgRequest::Capabilities {
                            self.caps.encode(out).unwrap();
                        }
                        return true;
                    }
                    Some(Event::Socks4Request(r)) => {
                        // USERID carries the username.
                        assert_eq!(r.user_id, USER);
                        self.hs.reply(ReplyCode::SUCCEEDED, &bound, out).unwrap();
                        return true;
                    }
                }
            }
        }
    }

    /// Runs a client and a server machine against each other, delivering bytes in chunks of
    /// `chunk`; returns the client's events, its path, and its final error if any.
    fn pair(
        config: ClientConfig,
        request: ClientRequest,
        server: HandshakeConfig,
        chunk: usize,
    ) -> (Vec<ClientEvent>, Option<Path>, Option<ClientHandshakeError>) {
        let mut to_server = Vec::new();
        let mut client = ClientHandshake::new(config, request, &mut to_server);
        let mut server = Server::new(server);
        let (mut server_in, mut client_in, mut to_client) = (Vec::new(), Vec::new(), Vec::new());
        let mut events = Vec::new();
        let mut server_done = false;
        for _ in 0..10_000 {
            if !to_server.is_empty() {
                let n = chunk.min(to_server.len());
                server_in.extend(to_server.drain(..n));
            }
            if !server_done {
                server_done = server.step(&mut server_in, &mut to_client);
            }
            if !to_client.is_empty() {
                let n = chunk.min(to_client.len());
                client_in.extend(to_client.drain(..n));
            }
            match client.handle_input(&client_in, &mut to_server) {
                Ok(p) => {
                    client_in.drain(..p.consumed);
                    events.extend(p.event);
                }
                Err(e) => return (events, client.path(), Some(e)),
            }
            if client.is_done() {
                assert!(
                    client_in.is_empty() && to_client.is_empty(),
                    "bytes left over"
                );
                return (events, client.path(), None);
            }
            if server_done && to_client.is_empty() && to_server.is_empty() && client_in.is_empty() {
                return (events, client.path(), None);
            }
        }
        panic!("the pair did not finish");
    }

    fn connect() -> ClientRequest {
        ClientRequest::Socks5(Request {
            command: Command::Connect,
            address: Address::domain("example.test", 443).unwrap(),
        })
    }

    fn server(no_auth: bool, password: bool, ng: bool) -> HandshakeConfig {
        HandshakeConfig {
            no_auth,
            username_password: password,
            socks4: false,
            ng,
        }
    }

    fn creds() -> Option<(Vec<u8>, Vec<u8>)> {
        Some((USER.to_vec(), PASS.to_vec()))
    }

    /// A client offering SOCKS-NG, with or without a login.
    fn ng_config(credentials: Option<(Vec<u8>, Vec<u8>)>) -> ClientConfig {
        ClientConfig {
            offer_ng: true,
            credentials,
            ..ClientConfig::default()
        }
    }

    /// Feeds `client` everything `server` answers until the client has an event.
    fn until_event(
        client: &mut ClientHandshake,
        server: &mut Server,
        to_server: &mut Vec<u8>,
        client_in: &mut Vec<u8>,
    ) -> ClientEvent {
        for _ in 0..100 {
            let mut to_client = Vec::new();
            server.step(to_server, &mut to_client);
            // The driver reads no more than the machine asks for.
            assert!(client.next_read_len(client_in) > 0 || !client_in.is_empty());
            client_in.extend_from_slice(&to_client);
            let p = client.handle_input(client_in, to_server).unwrap();
            client_in.drain(..p.consumed);
            if let Some(e) = p.event {
                return e;
            }
        }
        panic!("no event");
    }

    #[test]
    fn negotiate_first_then_choose_the_request_by_path() {
        for (ng, path) in [(true, Path::Ng), (false, Path::Socks5)] {
            let mut to_server = Vec::new();
            let config = ng_config(creds());
            let mut client = ClientHandshake::negotiate(config, &mut to_server);
            let mut server = Server::new(server(false, true, ng));
            let mut client_in = Vec::new();
            let e = until_event(&mut client, &mut server, &mut to_server, &mut client_in);
            assert_eq!(e, ClientEvent::Negotiated(path));
            assert_eq!(client.next_read_len(&client_in), 0, "waits for the request");
            if path == Path::Socks5 {
                assert_eq!(
                    client.request(ClientRequest::Ng(NgRequest::UdpTunnel), &mut to_server),
                    Err(ClientHandshakeError::NgNotSelected)
                );
            }
            client.request(connect(), &mut to_server).unwrap();
            assert_eq!(
                client.next_read_len(&[]),
                5,
                "VER REP RSV ATYP and one more"
            );
            assert_eq!(client.next_read_len(&[5, 0, 0, 1]), 6);
            let e = until_event(&mut client, &mut server, &mut to_server, &mut client_in);
            assert!(matches!(e, ClientEvent::Reply(r) if r.code == ReplyCode::SUCCEEDED));
            assert!(client.is_done());
            assert!(
                client.request(connect(), &mut to_server).is_err(),
                "one request per connection"
            );
        }
    }

    #[test]
    fn socks4_and_4a_against_the_server_machine() {
        let config = ClientConfig {
            socks4: true,
            credentials: creds(),
            ..ClientConfig::default()
        };
        let mut server_config = server(true, false, false);
        server_config.socks4 = true;
        for address in [
            Address::ip("192.0.2.7:80".parse().unwrap()),
            Address::domain("example.test", 443).unwrap(),
        ] {
            let request = ClientRequest::Socks5(Request {
                command: Command::Connect,
                address: address.clone(),
            });
            for chunk in [1, 3, usize::MAX] {
                let (events, path, error) =
                    pair(config.clone(), request.clone(), server_config, chunk);
                assert_eq!((path, error), (Some(Path::Socks4), None), "{address}");
                assert!(
                    matches!(&events[..], [ClientEvent::Reply(r)] if r.code == ReplyCode::SUCCEEDED),
                    "{events:?}"
                );
            }
        }
        // What SOCKS4 cannot say is refused before anything is sent.
        let mut out = Vec::new();
        let mut machine = ClientHandshake::negotiate(config, &mut out);
        assert!(machine.awaits_request() && out.is_empty());
        let v6 = ClientRequest::Socks5(Request {
            command: Command::Connect,
            address: Address::ip("[2001:db8::1]:80".parse().unwrap()),
        });
        assert!(matches!(
            machine.request(v6, &mut out),
            Err(ClientHandshakeError::NotInSocks4(_))
        ));
        assert_eq!(
            ReplyCode(0x5B).description(),
            "request rejected or failed (SOCKS4)"
        );
        // Replies: 90 is success; 91 to 93 keep their codes; anything else is 91.
        let config4 = ClientConfig {
            socks4: true,
            ..ClientConfig::default()
        };
        for (cd, want) in [(90u8, 0x00u8), (92, 0x5C), (0, 0x5B), (5, 0x5B)] {
            let mut out = Vec::new();
            let mut m = ClientHandshake::new(config4.clone(), connect(), &mut out);
            let p = m
                .handle_input(&[0, cd, 0, 0, 0, 0, 0, 0], &mut out)
                .unwrap();
            assert!(
                matches!(p.event, Some(ClientEvent::Reply(r)) if r.code == ReplyCode(want)),
                "CD {cd}"
            );
        }
        // A refusal cut short still counts.
        let mut out = Vec::new();
        let m = ClientHandshake::new(config4.clone(), connect(), &mut out);
        assert_eq!(m.refusal_at_eof(&[0, 0x5B]), Some(ReplyCode(0x5B)));
        // Nothing half-written for what SOCKS4 cannot carry.
        let mut out = Vec::new();
        let v6 = ClientRequest::Socks5(Request {
            command: Command::Connect,
            address: Address::ip("[2001:db8::1]:80".parse().unwrap()),
        });
        let _ = ClientHandshake::new(config4, v6, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn a_refusal_cut_short_is_still_a_refusal() {
        let mut out = Vec::new();
        let mut client = ClientHandshake::new(ClientConfig::default(), connect(), &mut out);
        client.handle_input(&[5, 0], &mut out).unwrap();
        assert_eq!(client.refusal_at_eof(&[5, 5, 0]), Some(ReplyCode(5)));
        // With an address type nobody knows, the code still comes through.
        let p = client.handle_input(&[5, 2, 0, 9, 1, 2], &mut out).unwrap();
        assert_eq!(p.consumed, 6);
        assert!(matches!(p.event, Some(ClientEvent::Reply(r)) if r.code == ReplyCode::NOT_ALLOWED));
    }

    #[test]
    fn every_method_and_command_in_every_segmentation() {
        let bound = |e: &ClientEvent| match e {
            ClientEvent::Reply(r) | ClientEvent::BindPeer(r) => r.code == ReplyCode::SUCCEEDED,
            ClientEvent::Capabilities(c) => c.ranges.len() == 1,
            ClientEvent::Negotiated(_) => false,
        };
        let bind = ClientRequest::Socks5(Request {
            command: Command::Bind,
            address: Address::ip(SocketAddr::from(([192, 0, 2, 7], 0))),
        });
        let udp = ClientRequest::Socks5(Request {
            command: Command::UdpAssociate,
            address: Address::ip(SocketAddr::from(([0, 0, 0, 0], 0))),
        });
        let cases = [
            // (client config, request, server config, path, events)
            (
                ClientConfig::default(),
                connect(),
                server(true, false, false),
                Path::Socks5,
                1,
            ),
            (
                ClientConfig {
                    socks4: false,
                    offer_ng: false,
                    credentials: creds(),
                    ..Default::default()
                },
                connect(),
                server(false, true, false),
                Path::Socks5,
                1,
            ),
            (
                ng_config(None),
                connect(),
                server(true, false, true),
                Path::Ng,
                1,
            ),
            (
                ng_config(creds()),
                bind.clone(),
                server(false, true, true),
                Path::Ng,
                2,
            ),
            (
                ClientConfig::default(),
                bind,
                server(true, false, false),
                Path::Socks5,
                2,
            ),
            (
                ClientConfig::default(),
                udp,
                server(true, false, false),
                Path::Socks5,
                1,
            ),
            (
                ng_config(creds()),
                ClientRequest::Ng(NgRequest::Capabilities),
                server(false, true, true),
                Path::Ng,
                2,
            ),
            (
                ng_config(None),
                ClientRequest::Ng(NgRequest::UdpTunnel),
                server(true, false, true),
                Path::Ng,
                1,
            ),
            // An NG-capable client against a plain server falls back to SOCKS5.
            (
                ng_config(creds()),
                connect(),
                server(false, true, false),
                Path::Socks5,
                1,
            ),
        ];
        for (i, (config, request, srv, path, n)) in cases.into_iter().enumerate() {
            for chunk in [1, 2, 3, 7, 64, 4096] {
                let (events, got_path, err) = pair(config.clone(), request.clone(), srv, chunk);
                assert_eq!(err, None, "case {i}, chunk {chunk}");
                assert_eq!(got_path, Some(path), "case {i}, chunk {chunk}");
                assert_eq!(events.len(), n, "case {i}, chunk {chunk}: {events:?}");
                assert!(events.iter().all(bound), "case {i}: {events:?}");
            }
        }
    }

    #[test]
    fn failures_are_typed() {
        let plain = ClientConfig::default();
        let with_creds = ClientConfig {
            socks4: false,
            offer_ng: false,
            credentials: Some((USER.to_vec(), b"wrong".to_vec())),
            ..Default::default()
        };
        let ng_wrong = ClientConfig {
            socks4: false,
            offer_ng: true,
            credentials: Some((USER.to_vec(), b"wrong".to_vec())),
            ..Default::default()
        };
        for chunk in [1, 4096] {
            assert_eq!(
                pair(plain.clone(), connect(), server(false, true, false), chunk).2,
                Some(ClientHandshakeError::NoAcceptableMethod)
            );
            assert_eq!(
                pair(
                    with_creds.clone(),
                    connect(),
                    server(false, true, false),
                    chunk
                )
                .2,
                Some(ClientHandshakeError::AuthFailed)
            );
            assert_eq!(
                pair(
                    ng_wrong.clone(),
                    connect(),
                    server(false, true, true),
                    chunk
                )
                .2,
                Some(ClientHandshakeError::AuthFailed)
            );
            assert_eq!(
                pair(
                    ClientConfig {
                        socks4: false,
                        offer_ng: true,
                        credentials: None,
                        ..Default::default()
                    },
                    ClientRequest::Ng(NgRequest::Capabilities),
                    server(true, false, false),
                    chunk
                )
                .2,
                Some(ClientHandshakeError::NgNotSelected)
            );
        }
    }

    #[test]
    fn refusals_and_pipelined_target_bytes() {
        // A refusal is the reply event, and the machine ends.
        let mut out = Vec::new();
        let mut c = ClientHandshake::new(ClientConfig::default(), connect(), &mut out);
        assert_eq!(out, [5, 1, 0]);
        out.clear();
        let p = c.handle_input(&[5, 0], &mut out).unwrap();
        assert_eq!((p.consumed, p.event), (2, None));
        let mut reply = vec![5, 5, 0, 1, 0, 0, 0, 0, 0, 0];
        reply.extend_from_slice(b"target bytes");
        let p = c.handle_input(&reply, &mut out).unwrap();
        assert_eq!(p.consumed, 10, "the target's bytes stay in the stream");
        assert!(matches!(
            p.event,
            Some(ClientEvent::Reply(Reply {
                code: ReplyCode::CONNECTION_REFUSED,
                ..
            }))
        ));
        assert!(c.is_done());
        // A selected method that was never offered, and garbage.
        let mut c = ClientHandshake::new(ClientConfig::default(), connect(), &mut out);
        assert_eq!(
            c.handle_input(&[5, 2], &mut out).unwrap_err(),
            ClientHandshakeError::UnexpectedMethod(2)
        );
        let mut c = ClientHandshake::new(ClientConfig::default(), connect(), &mut out);
        assert!(matches!(
            c.handle_input(&[4, 0], &mut out),
            Err(ClientHandshakeError::Malformed { .. })
        ));
        // Credentials that cannot be encoded are an error, not a panic.
        let long = ClientConfig {
            socks4: false,
            offer_ng: false,
            credentials: Some((vec![b'a'; 300], PASS.to_vec())),
            ..Default::default()
        };
        let mut c = ClientHandshake::new(long, connect(), &mut out);
        assert!(matches!(
            c.handle_input(&[5, 2], &mut out),
            Err(ClientHandshakeError::BadCredentials(_))
        ));
    }

    /// A small deterministic generator (xorshift), so a failing seed can be replayed.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    /// A fault injected into the bytes between the machines.
    #[derive(Debug, Clone, Copy)]
    enum Fault {
        None,
        /// Flip one bit of the `at`-th byte sent in that direction.
        Flip {
            to_server: bool,
            at: usize,
            bit: u8,
        },
        /// Insert a byte before the `at`-th byte.
        Insert {
            to_server: bool,
            at: usize,
            byte: u8,
        },
        /// The connection ends after `at` bytes towards the client.
        Cut {
            at: usize,
        },
    }

    /// Moves up to `chunk` bytes from `from` to `to`, applying `fault` to that direction.
    fn carry(
        from: &mut Vec<u8>,
        to: &mut Vec<u8>,
        chunk: usize,
        sent: &mut usize,
        fault: Fault,
        to_server: bool,
    ) {
        let n = chunk.min(from.len());
        for b in from.drain(..n) {
            match fault {
                Fault::Flip {
                    to_server: d,
                    at,
                    bit,
                } if d == to_server && at == *sent => to.push(b ^ (1 << bit)),
                Fault::Insert {
                    to_server: d,
                    at,
                    byte,
                } if d == to_server && at == *sent => to.extend_from_slice(&[byte, b]),
                Fault::Cut { at } if !to_server && *sent >= at => {}
                _ => to.push(b),
            }
            *sent += 1;
        }
    }

    /// The client and server machines against each other over a link that delivers random
    /// chunk sizes each way and may corrupt, insert or cut. Returns the client's events and
    /// error, or `None` for an error when the link was cut before the client finished (what
    /// a driver sees as EOF), with the refusal the machine reads from what it holds.
    fn random_pair(
        config: ClientConfig,
        request: ClientRequest,
        server_config: HandshakeConfig,
        rng: &mut Rng,
        fault: Fault,
    ) -> (Vec<ClientEvent>, Option<ClientHandshakeError>) {
        let mut to_server = Vec::new();
        let mut client = ClientHandshake::new(config, request, &mut to_server);
        let mut server = Server::new(server_config);
        let (mut server_in, mut client_in, mut to_client) = (Vec::new(), Vec::new(), Vec::new());
        let (mut sent_up, mut sent_down) = (0, 0);
        let mut events = Vec::new();
        let mut server_done = false;
        let mut stalled = 0;
        for _ in 0..100_000 {
            let up = rng.below(16) as usize + 1;
            carry(
                &mut to_server,
                &mut server_in,
                up,
                &mut sent_up,
                fault,
                true,
            );
            if !server_done {
                server_done = server.step(&mut server_in, &mut to_client);
            }
            let down = rng.below(16) as usize + 1;
            carry(
                &mut to_client,
                &mut client_in,
                down,
                &mut sent_down,
                fault,
                false,
            );
            // The machine stops at each event: feed it until it has nothing more to say.
            loop {
                let before = client_in.len();
                match client.handle_input(&client_in, &mut to_server) {
                    Ok(p) => {
                        assert!(p.consumed <= before);
                        client_in.drain(..p.consumed);
                        let Some(event) = p.event else { break };
                        events.push(event);
                    }
                    Err(e) => return (events, Some(e)),
                }
            }
            if client.is_done() {
                return (events, None);
            }
            let quiet = to_client.is_empty() && to_server.is_empty();
            if quiet {
                // Nothing in flight: either the server is finished (the driver reads EOF)
                // or both wait for bytes that never come (the handshake timeout ends it).
                stalled += 1;
                if server_done || stalled > 2 {
                    let _ = client.refusal_at_eof(&client_in);
                    return (events, None);
                }
            } else {
                stalled = 0;
            }
        }
        panic!("the pair never settled ({fault:?})");
    }

    /// HOPS rides in the request's RSV once SOCKS-NG is negotiated, and only then: a plain
    /// SOCKS5 server gets X'00' there, as RFC 1928 asks.
    #[test]
    fn hops_ride_in_rsv_after_ng_negotiation_only() {
        for (offer_ng, ng_server, want) in [(true, true, 3u8), (true, false, 0), (false, true, 0)] {
            let config = ClientConfig {
                offer_ng,
                hops: 3,
                ..ClientConfig::default()
            };
            let mut to_server = Vec::new();
            let mut client = ClientHandshake::new(config, connect(), &mut to_server);
            let mut server = Server::new(server(true, false, ng_server));
            let (mut server_in, mut client_in, mut sent) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..20 {
                sent.extend_from_slice(&to_server);
                server_in.append(&mut to_server);
                let mut to_client = Vec::new();
                server.step(&mut server_in, &mut to_client);
                client_in.append(&mut to_client);
                let p = client.handle_input(&client_in, &mut to_server).unwrap();
                client_in.drain(..p.consumed);
                if matches!(p.event, Some(ClientEvent::Reply(_))) {
                    break;
                }
            }
            // The request is the last thing the client sent.
            let ClientRequest::Socks5(request) = connect() else {
                unreachable!()
            };
            let mut encoded = Vec::new();
            request.encode(&mut encoded);
            let start = sent.len() - encoded.len();
            let request_rsv = sent.get(start + crate::wire::REQUEST_RSV_OFFSET).copied();
            assert_eq!(
                server.hs.hops(),
                want,
                "offer_ng {offer_ng}, ng server {ng_server}"
            );
            assert_eq!(request_rsv, Some(want), "RSV on the wire");
        }
    }

    fn random_case(rng: &mut Rng) -> (ClientConfig, ClientRequest, HandshakeConfig) {
        let credentials = match rng.below(3) {
            0 => None,
            1 => creds(),
            _ => Some((USER.to_vec(), b"wrong".to_vec())),
        };
        let config = ClientConfig {
            socks4: false,
            offer_ng: rng.below(2) == 0,
            credentials,
            hops: rng.below(3) as u8,
        };
        let requests = [
            connect(),
            ClientRequest::Socks5(Request {
                command: Command::Connect,
                address: Address::ip("[2001:db8::1]:443".parse().unwrap()),
            }),
            ClientRequest::Socks5(Request {
                command: Command::Bind,
                address: Address::ip("192.0.2.7:0".parse().unwrap()),
            }),
            ClientRequest::Socks5(Request {
                command: Command::UdpAssociate,
                address: Address::ip("0.0.0.0:0".parse().unwrap()),
            }),
            ClientRequest::Ng(NgRequest::Capabilities),
            ClientRequest::Ng(NgRequest::UdpTunnel),
            ClientRequest::Ng(NgRequest::Listen {
                address: Address::ip("0.0.0.0:0".parse().unwrap()),
                exact: false,
                backlog: 0,
            }),
        ];
        let request = requests[rng.below(requests.len() as u64) as usize].clone();
        let mut server_config = server(rng.below(2) == 0, rng.below(2) == 0, rng.below(2) == 0);
        if !server_config.no_auth && !server_config.username_password {
            server_config.no_auth = true;
        }
        (config, request, server_config)
    }

    /// Thousands of random pairs: without a fault, any segmentation gives exactly what one
    /// whole delivery gives; with a fault, the machines end (an error, a refusal, or a
    /// result) without a panic and without taking bytes they were not given.
    #[test]
    fn random_pairs_with_fault_injection() {
        let mut rng = Rng(0x005e_ed0f_50c5_0001);
        for round in 0..3_000 {
            let (config, request, server_config) = random_case(&mut rng);
            let whole = pair(config.clone(), request.clone(), server_config, usize::MAX);
            let fault = match rng.below(4) {
                0 => Fault::Flip {
                    to_server: rng.below(2) == 0,
                    at: rng.below(40) as usize,
                    bit: rng.below(8) as u8,
                },
                1 => Fault::Insert {
                    to_server: rng.below(2) == 0,
                    at: rng.below(40) as usize,
                    byte: rng.next() as u8,
                },
                2 => Fault::Cut {
                    at: rng.below(30) as usize,
                },
                _ => Fault::None,
            };
            let (events, error) = random_pair(config, request, server_config, &mut rng, fault);
            if let Fault::None = fault {
                assert_eq!(
                    (&events, &error),
                    (&whole.0, &whole.2),
                    "round {round}: segmentation changed the outcome"
                );
            }
            // Whatever happened, the first event is always the reply.
            if let Some(first) = events.first() {
                assert!(
                    matches!(first, ClientEvent::Reply(_)),
                    "round {round}: {first:?}"
                );
            }
        }
    }

    /// Random proxy bytes at random segmentations: never a panic (the fuzz target's entry
    /// point, run here on a fixed pseudo-random sample in every test run).
    #[test]
    fn random_proxy_bytes_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let len = (next() % 64) as usize;
            let mut data: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Mostly well-formed beginnings, so the machine gets past its first message.
            if len > 3 && next() % 2 == 0 {
                data[1] = 5;
                data[2] = [0u8, 2, 0xa5][(next() % 3) as usize];
            }
            crate::fuzzing::client_handshake(&data);
        }
    }
}
