//! socksng-client: an async (tokio) client for SOCKS5 and SOCKS-NG proxies, built on the
//! sans-IO codec of `socksng-proto`.
//!
//! A [`Client`] talks to one proxy given as a [`ProxyUrl`]. Every connection first offers
//! SOCKS-NG together with the plain methods; against a plain SOCKS5 server it falls back with
//! no extra round trip, and `path()` on what it returns tells which protocol was used.
//!
//! - [`Client::connect`]: CONNECT to an address or a name (resolved by the proxy for
//!   `socks5h://`, locally for `socks5://`);
//! - [`Client::listen`]: a listener on the proxy's outside (SOCKS-NG LISTEN, or BIND for one
//!   connection on a plain server); [`Client::bind`] for RFC 1928 BIND itself;
//! - [`Client::udp`]: a datagram socket (SOCKS-NG UDP-TUNNEL, or UDP ASSOCIATE);
//! - [`Client::capabilities`]: the SOCKS-NG capabilities and served ranges;
//! - [`Router`]: several proxies and direct, routed by the ranges each serves; built from a
//!   [`ClientConfig`] file or ALL_PROXY/NO_PROXY.
//!
//! Errors are [`ClientError`]s; a refusal carries the SOCKS reply code.
//!
//! ```
//! use socksng_client::{ProxyUrl, Resolve};
//! let url = ProxyUrl::parse("socks5h://al%40ice:pw@[2001:db8::1]:1081").unwrap();
//! assert_eq!((url.host.as_str(), url.port), ("2001:db8::1", 1081));
//! assert_eq!(url.credentials, Some(("al@ice".into(), "pw".into())));
//! assert_eq!(url.resolve, Resolve::Remote); // the proxy resolves names
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), socksng_client::ClientError> {
//! use socksng_client::{Address, Client, ProxyUrl};
//! use tokio::io::AsyncWriteExt;
//! let client = Client::new(ProxyUrl::parse("socks5h://alice:secret@127.0.0.1:1080")?);
//!
//! // A TCP connection, by name.
//! let stream = client.connect(Address::domain("example.org", 80)?).await?;
//! println!("connected via {:?}, proxy bound {}", stream.path(), stream.bound());
//!
//! // A port on the proxy's outside: every incoming connection, claimed for us.
//! let mut listener = client.listen(8080, false, 64, Address::unspecified()).await?;
//! println!("published at {}", listener.local_addr());
//! let (incoming, from) = listener.accept().await?;
//! incoming.into_inner().write_all(b"hello\n").await?;
//!
//! // Datagrams.
//! let mut udp = client.udp().await?;
//! udp.send_to(b"ping", &Address::domain("echo.example", 7)?).await?;
//! let mut buf = [0u8; 1500];
//! let (n, source) = udp.recv_from(&mut buf).await?;
//! # let _ = (from, n, source);
//! # Ok(()) }
//! ```

pub mod config;
pub mod discover;
pub mod forward;
mod listen;
pub mod route;
mod transport;
mod udp;
mod url;

pub use config::ClientConfig;
pub use listen::ProxyListener;
pub use route::{RoutedStream, Router};
pub use udp::{ProxyUdp, UdpReceiver, UdpSender};

pub use socksng_proto::wire::ng::{Capabilities, ServedRange};
pub use socksng_proto::{Address, ReplyCode};
pub use transport::{spki_sha256, TlsSettings, Transport, ALPN_SOCKS};
pub use url::{
    env_all_proxy, env_no_proxy, no_proxy_matches, redact, ProxyUrl, Resolve, SocksVersion,
};

use socksng_proto::client::{ClientEvent, ClientHandshake, ClientHandshakeError, ClientRequest};
use socksng_proto::wire::ng::NgRequest;
use socksng_proto::{Command, DecodeError, Host, Reply, Request};
use std::io;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What went wrong, in words and with the SOCKS reply code where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting to or talking with the proxy failed. (The cause is in the message, not a
    /// source, so a chain of errors prints it once.)
    #[error("proxy connection: {0}")]
    Io(io::Error),
    /// A name could not be resolved here (for a `socks5://` proxy, or to route by address).
    #[error("cannot resolve {name}: {cause}")]
    Resolve {
        /// The name.
        name: String,
        /// Why (not an error source: it is in the message already).
        cause: io::Error,
    },
    /// A target reached directly (or a UDP target behind a plain SOCKS5 relay) failed.
    #[error("the target: {0}")]
    Target(io::Error),
    /// The proxy URL cannot be used.
    #[error("bad proxy URL: {0}")]
    BadUrl(String),
    /// SOCKS over TLS failed: which check (unknown CA, name mismatch, expired, pin mismatch).
    #[error("TLS: {0}")]
    Tls(String),
    /// The proxy accepts none of the authentication methods offered.
    #[error("the proxy accepts none of the offered authentication methods")]
    NoAcceptableMethod,
    /// The proxy rejected the username or password.
    #[error("the proxy rejected the username or password")]
    AuthFailed,
    /// The proxy answered the request with a failure reply.
    #[error("the proxy refused: {code}")]
    Refused {
        /// The reply code (0x01 to 0x08 from RFC 1928, 0x0A to 0x0D from SOCKS-NG).
        code: ReplyCode,
    },
    /// A datagram sent through a UDP-TUNNEL was not delivered (a SOCKS-NG ERROR frame); the
    /// tunnel stays open, as a UDP socket does after an ICMP error.
    #[error("datagram to {to} not sent: {code}")]
    DatagramRefused {
        /// X'02' refused by rule, X'03' network unreachable, X'04' name not resolved, X'0E'
        /// too large.
        code: ReplyCode,
        /// The destination as it was given.
        to: Address,
    },
    /// The proxy sent something that is not SOCKS.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The proxy took the request and closed the connection without a reply, as `ssh -D`
    /// does for a target it cannot reach: the request failed, the proxy works.
    #[error("the proxy closed the connection without a reply to the request")]
    NoReply,
    /// The target cannot be expressed in SOCKS (an empty or overlong name, say).
    #[error("bad target: {0}")]
    BadTarget(DecodeError),
    /// The proxy does not offer what was asked for (for example SOCKS-NG).
    #[error("not supported by this proxy: {0}")]
    NotSupported(&'static str),
    /// A client configuration or route cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// No usable proxy for the destination: the server routed for it is out of the table.
    #[error("no usable proxy: {0}")]
    Unavailable(String),
    /// The one proxy meant for the destination failed, as `cause` says.
    #[error("proxy {name}: {}", .cause.words())]
    Proxy {
        /// The server's name (its address when unnamed).
        name: String,
        /// What went wrong with it.
        cause: Box<ClientError>,
    },
}

impl ClientError {
    /// The message without the "proxy connection" label, for a context that names the proxy.
    fn words(&self) -> String {
        match self {
            ClientError::Io(e) => e.to_string(),
            other => other.to_string(),
        }
    }

    /// The SOCKS reply code, when the proxy refused a request.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            ClientError::Refused { code } | ClientError::DatagramRefused { code, .. } => {
                Some(*code)
            }
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    /// A TLS failure (in the handshake, or an alert later) says which check failed.
    fn from(e: io::Error) -> Self {
        match transport::describe_tls_error(&e) {
            Some(words) => ClientError::Tls(words),
            None => ClientError::Io(e),
        }
    }
}

impl From<DecodeError> for ClientError {
    fn from(e: DecodeError) -> Self {
        ClientError::BadTarget(e)
    }
}

impl From<ClientHandshakeError> for ClientError {
    fn from(e: ClientHandshakeError) -> Self {
        match e {
            ClientHandshakeError::NoAcceptableMethod => ClientError::NoAcceptableMethod,
            ClientHandshakeError::AuthFailed => ClientError::AuthFailed,
            // NG-WELCOME X'02': this login kind is not acceptable (a login is required).
            ClientHandshakeError::NgRefused(0x02) => ClientError::NoAcceptableMethod,
            ClientHandshakeError::NgNotSelected => ClientError::NotSupported("SOCKS-NG"),
            ClientHandshakeError::NotInSocks4(what) => ClientError::NotSupported(what),
            ClientHandshakeError::BadCredentials(e) => ClientError::BadUrl(e.to_string()),
            other => ClientError::Protocol(other.to_string()),
        }
    }
}

/// Which protocol a connection ended up speaking: `Ng` when SOCKS-NG was negotiated,
/// `Socks5` when the proxy did not select it.
pub use socksng_proto::client::Path as ProtocolPath;

/// A connection to the proxy through method selection and login, driven by the protocol's
/// client machine, waiting for its one request.
#[derive(Debug)]
pub(crate) struct Negotiated {
    pub(crate) stream: Transport,
    machine: ClientHandshake,
    /// Bytes read and not yet taken by the machine.
    inbox: Vec<u8>,
    pub(crate) path: ProtocolPath,
}

impl Negotiated {
    /// Sends `request` and waits for its reply: the bound address, or the refusal.
    pub(crate) async fn request(&mut self, request: ClientRequest) -> Result<Address, ClientError> {
        let mut out = Vec::with_capacity(300);
        self.machine.request(request, &mut out)?;
        self.stream.write_all(&out).await?;
        match self.next_event().await {
            Ok(ClientEvent::Reply(reply)) => bound_or_refusal(reply),
            Ok(other) => Err(unexpected(other)),
            Err(ClientError::Protocol(why)) if why == CLOSED => Err(ClientError::NoReply),
            Err(e) => Err(e),
        }
    }

    /// Drives the machine to its next event (BIND's second reply, the CAPABILITIES block).
    /// Cancel-safe: bytes are kept once read.
    pub(crate) async fn next_event(&mut self) -> Result<ClientEvent, ClientError> {
        drive(&mut self.stream, &mut self.machine, &mut self.inbox).await
    }

    /// The stream once the last reply is in; the machine never reads past it.
    pub(crate) fn into_stream(self) -> Result<Transport, ClientError> {
        if !self.inbox.is_empty() {
            return Err(ClientError::Protocol(
                "data before the relay started".into(),
            ));
        }
        Ok(self.stream)
    }
}

fn bound_or_refusal(reply: Reply) -> Result<Address, ClientError> {
    if reply.code != ReplyCode::SUCCEEDED {
        return Err(ClientError::Refused { code: reply.code });
    }
    Ok(reply.bound)
}

fn unexpected(event: ClientEvent) -> ClientError {
    ClientError::Protocol(format!("unexpected {event:?}"))
}

/// Resolves `name` on this host: every address, or the lookup's failure as a local one
/// ([`ClientError::Resolve`]).
pub async fn resolve_here(name: &str, port: u16) -> Result<Vec<std::net::SocketAddr>, ClientError> {
    let failed = |cause| ClientError::Resolve {
        name: name.to_string(),
        cause,
    };
    let addrs: Vec<_> = tokio::net::lookup_host((name, port))
        .await
        .map_err(failed)?
        .collect();
    if addrs.is_empty() {
        return Err(failed(io::Error::new(
            io::ErrorKind::NotFound,
            "no address",
        )));
    }
    Ok(addrs)
}

/// Runs the client machine over `stream` until it has an event, reading no byte past the
/// message it waits for.
/// Why a machine got no more bytes: the proxy closed the connection.
const CLOSED: &str = "the proxy closed the connection";

async fn drive(
    stream: &mut Transport,
    machine: &mut ClientHandshake,
    inbox: &mut Vec<u8>,
) -> Result<ClientEvent, ClientError> {
    let mut out = Vec::new();
    loop {
        let progress = machine.handle_input(inbox, &mut out)?;
        inbox.drain(..progress.consumed);
        if !out.is_empty() {
            stream.write_all(&out).await?;
            out.clear();
        }
        if let Some(event) = progress.event {
            return Ok(event);
        }
        let want = machine.next_read_len(inbox);
        if want == 0 {
            return Err(ClientError::Protocol("nothing more expected".into()));
        }
        let mut more = vec![0u8; want];
        let n = stream.read(&mut more).await?;
        if n == 0 {
            if let Some(code) = machine.refusal_at_eof(inbox) {
                return Err(ClientError::Refused { code });
            }
            return Err(ClientError::Protocol(CLOSED.into()));
        }
        inbox.extend_from_slice(&more[..n]);
    }
}

/// A connection through the proxy, ready for data.
#[derive(Debug)]
pub struct ProxyStream {
    stream: Transport,
    bound: Address,
    path: ProtocolPath,
}

impl ProxyStream {
    /// The address the proxy reported (for CONNECT: its outgoing socket's local address).
    pub fn bound(&self) -> &Address {
        &self.bound
    }

    /// Which protocol was negotiated.
    pub fn path(&self) -> ProtocolPath {
        self.path
    }

    /// The underlying TCP stream to the proxy, now relayed to the target.
    pub fn into_inner(self) -> Transport {
        self.stream
    }
}

/// A client for one proxy.
#[derive(Debug, Clone)]
pub struct Client {
    proxy: ProxyUrl,
    offer_ng: bool,
    hops: u8,
    sources: Vec<std::net::IpAddr>,
}

impl Client {
    /// A client for `proxy`; SOCKS-NG is offered on every connection.
    pub fn new(proxy: ProxyUrl) -> Client {
        Client {
            proxy,
            offer_ng: true,
            hops: 0,
            sources: Vec::new(),
        }
    }

    /// Connect to the proxy from these addresses (the first of the proxy's family; the
    /// kernel chooses for a family none is of): a server's `external` addresses.
    pub fn with_sources(mut self, sources: Vec<std::net::IpAddr>) -> Client {
        self.sources = sources;
        self
    }

    /// The TCP connection to the proxy, from a configured source address where one fits.
    async fn connect_to_proxy(&self) -> Result<TcpStream, ClientError> {
        let target = (self.proxy.host.as_str(), self.proxy.port);
        if self.sources.is_empty() {
            return Ok(TcpStream::connect(target).await?);
        }
        let mut last = None;
        for addr in tokio::net::lookup_host(target).await? {
            let source = self.sources.iter().find(|s| s.is_ipv4() == addr.is_ipv4());
            let attempt = async {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                if let Some(ip) = source {
                    socket.bind(std::net::SocketAddr::new(*ip, 0))?;
                }
                socket.connect(addr).await
            };
            match attempt.await {
                Ok(s) => return Ok(s),
                Err(e) => last = Some(e),
            }
        }
        Err(last
            .unwrap_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no address"))
            .into())
    }

    /// For a server passing requests on: the HOPS its requests carry to a SOCKS-NG server
    /// (one above what the server received; draft section 3.3).
    pub fn with_hops(mut self, hops: u8) -> Client {
        self.hops = hops;
        self
    }

    /// Offer only plain SOCKS5 methods (to talk to servers that mishandle unknown methods).
    pub fn plain_socks5_only(mut self) -> Client {
        self.offer_ng = false;
        self
    }

    /// Connects to the proxy and authenticates with the protocol's client machine; the
    /// request is chosen afterwards, by the path the proxy settled on.
    pub(crate) async fn negotiate(&self) -> Result<Negotiated, ClientError> {
        let tcp = self.connect_to_proxy().await?;
        let _ = tcp.set_nodelay(true);
        let mut stream = match &self.proxy.tls {
            None => Transport::Tcp(tcp),
            Some(settings) => Transport::Tls(Box::new(self.tls_handshake(settings, tcp).await?)),
        };
        let config = socksng_proto::ClientConfig {
            socks4: self.proxy.version == SocksVersion::Socks4,
            offer_ng: self.offer_ng,
            credentials: self
                .proxy
                .credentials
                .clone()
                .map(|(u, p)| (u.into_bytes(), p.into_bytes())),
            hops: self.hops,
        };
        let mut out = Vec::with_capacity(64);
        let mut machine = ClientHandshake::negotiate(config, &mut out);
        let mut inbox = Vec::new();
        if machine.awaits_request() {
            // SOCKS4: nothing to negotiate.
            let path = machine.path().unwrap_or(ProtocolPath::Socks4);
            return Ok(Negotiated {
                stream,
                machine,
                inbox,
                path,
            });
        }
        stream.write_all(&out).await?;
        match drive(&mut stream, &mut machine, &mut inbox).await? {
            ClientEvent::Negotiated(path) => Ok(Negotiated {
                stream,
                machine,
                inbox,
                path,
            }),
            other => Err(unexpected(other)),
        }
    }

    /// SOCKS over TLS: the handshake, the server's name (or address) checked as configured.
    async fn tls_handshake(
        &self,
        settings: &TlsSettings,
        tcp: TcpStream,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ClientError> {
        let name = rustls::pki_types::ServerName::try_from(self.proxy.host.clone())
            .map_err(|e| ClientError::BadUrl(format!("{}: {e}", self.proxy.host)))?;
        transport::connector(settings)?
            .connect(name, tcp)
            .await
            .map_err(ClientError::from)
    }

    /// Opens a connection to `target` through the proxy.
    pub async fn connect(&self, target: Address) -> Result<ProxyStream, ClientError> {
        let target = self.resolve_target(target).await?;
        let negotiated = self.negotiate().await?;
        Self::connect_negotiated(negotiated, target).await
    }

    /// CONNECT on a negotiated connection.
    pub(crate) async fn connect_negotiated(
        mut negotiated: Negotiated,
        target: Address,
    ) -> Result<ProxyStream, ClientError> {
        let request = ClientRequest::Socks5(Request {
            command: Command::Connect,
            address: target,
        });
        let bound = negotiated.request(request).await?;
        let path = negotiated.path;
        Ok(ProxyStream {
            stream: negotiated.into_stream()?,
            bound,
            path,
        })
    }

    /// The target as it goes on the wire: names are resolved here for a `socks5://` proxy.
    pub(crate) async fn resolve_target(&self, target: Address) -> Result<Address, ClientError> {
        match (&target.host, self.proxy.resolve) {
            (Host::Domain(name), Resolve::Local) => {
                // SOCKS4 carries IPv4 only.
                let v4_only = self.proxy.version == SocksVersion::Socks4;
                let addr = resolve_here(name, target.port)
                    .await?
                    .into_iter()
                    .find(|a| !v4_only || a.is_ipv4())
                    .ok_or_else(|| ClientError::Resolve {
                        name: name.to_string(),
                        cause: io::Error::new(io::ErrorKind::NotFound, "no IPv4 address"),
                    })?;
                Ok(Address::ip(addr))
            }
            _ => Ok(target),
        }
    }

    /// The proxy this client talks to.
    pub fn proxy(&self) -> &ProxyUrl {
        &self.proxy
    }

    /// Negotiates SOCKS-NG and sends `request`; the connection with the reply read.
    pub(crate) async fn ng_request(
        &self,
        request: NgRequest,
    ) -> Result<(Negotiated, Address), ClientError> {
        let mut negotiated = self.negotiate().await?;
        if negotiated.path != ProtocolPath::Ng {
            return Err(ClientError::NotSupported("SOCKS-NG"));
        }
        let bound = negotiated.request(ClientRequest::Ng(request)).await?;
        Ok((negotiated, bound))
    }

    /// Asks the proxy what it offers and which ranges it serves (SOCKS-NG only).
    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        let (mut negotiated, _) = self.ng_request(NgRequest::Capabilities).await?;
        match negotiated.next_event().await? {
            ClientEvent::Capabilities(caps) => Ok(caps),
            other => Err(unexpected(other)),
        }
    }
}
