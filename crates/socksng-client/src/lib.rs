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
pub mod forward;
mod listen;
pub mod route;
mod udp;
mod url;

pub use config::ClientConfig;
pub use listen::ProxyListener;
pub use route::{RoutedStream, Router};
pub use udp::{ProxyUdp, UdpReceiver, UdpSender};

pub use socksng_proto::wire::ng::{Capabilities, ServedRange};
pub use socksng_proto::{Address, ReplyCode};
pub use url::{no_proxy_matches, ProxyUrl, Resolve};

use socksng_proto::wire::ng::{welcome, NgAuth, NgHello, NgRequest, NgWelcome, NG_METHOD};
use socksng_proto::wire::MethodSelection;
use socksng_proto::{
    AuthReply, AuthRequest, Command, DecodeError, Greeting, Host, Method, Reply, Request,
};
use std::io;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What went wrong, in words and with the SOCKS reply code where there is one.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// Connecting to or talking with the proxy failed.
    #[error("proxy connection: {0}")]
    Io(#[from] io::Error),
    /// The proxy URL cannot be used.
    #[error("bad proxy URL: {0}")]
    BadUrl(String),
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
    /// The proxy sent something that is not SOCKS.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The target cannot be expressed in SOCKS (an empty or overlong name, say).
    #[error("bad target: {0}")]
    BadTarget(#[from] DecodeError),
    /// The proxy does not offer what was asked for (for example SOCKS-NG).
    #[error("not supported by this proxy: {0}")]
    NotSupported(&'static str),
    /// A client configuration or route cannot be used.
    #[error("configuration: {0}")]
    Config(String),
    /// No usable proxy for the destination: the server routed for it is out of the table.
    #[error("no usable proxy: {0}")]
    Unavailable(String),
}

impl ClientError {
    /// The SOCKS reply code, when the proxy refused a request.
    pub fn reply_code(&self) -> Option<ReplyCode> {
        match self {
            ClientError::Refused { code } => Some(*code),
            _ => None,
        }
    }
}

/// Which protocol a connection ended up speaking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProtocolPath {
    /// SOCKS-NG was negotiated.
    Ng,
    /// Plain SOCKS5 (the proxy did not select SOCKS-NG).
    Socks5,
}

/// A connection through the proxy, ready for data.
#[derive(Debug)]
pub struct ProxyStream {
    stream: TcpStream,
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
    pub fn into_inner(self) -> TcpStream {
        self.stream
    }
}

/// A client for one proxy.
#[derive(Debug, Clone)]
pub struct Client {
    proxy: ProxyUrl,
    offer_ng: bool,
}

/// Reads from `stream` into `buf` until `decode` yields a message, which is removed from `buf`.
async fn read_message<T, R: AsyncRead + Unpin>(
    stream: &mut R,
    buf: &mut Vec<u8>,
    decode: impl Fn(&[u8]) -> Result<(T, usize), DecodeError>,
) -> Result<T, ClientError> {
    loop {
        match decode(buf) {
            Ok((msg, used)) => {
                buf.drain(..used);
                return Ok(msg);
            }
            Err(DecodeError::Incomplete) => {}
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        }
        let mut chunk = [0u8; 512];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the proxy closed the connection".into(),
            ));
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

impl Client {
    /// A client for `proxy`; SOCKS-NG is offered on every connection.
    pub fn new(proxy: ProxyUrl) -> Client {
        Client {
            proxy,
            offer_ng: true,
        }
    }

    /// Offer only plain SOCKS5 methods (to talk to servers that mishandle unknown methods).
    pub fn plain_socks5_only(mut self) -> Client {
        self.offer_ng = false;
        self
    }

    /// Connects to the proxy and authenticates; returns the stream and the negotiated path.
    pub(crate) async fn negotiate(
        &self,
    ) -> Result<(TcpStream, Vec<u8>, ProtocolPath), ClientError> {
        let mut stream = TcpStream::connect((self.proxy.host.as_str(), self.proxy.port)).await?;
        let _ = stream.set_nodelay(true);
        let mut methods = Vec::with_capacity(3);
        if self.offer_ng {
            methods.push(Method(NG_METHOD));
        }
        if self.proxy.credentials.is_some() {
            methods.push(Method::USERNAME_PASSWORD);
        }
        methods.push(Method::NO_AUTH);
        let mut out = Vec::with_capacity(64);
        Greeting { methods }.encode(&mut out);
        stream.write_all(&out).await?;
        let mut buf = Vec::new();
        let MethodSelection(chosen) =
            read_message(&mut stream, &mut buf, MethodSelection::decode).await?;
        let credentials = || {
            let (u, p) = self.proxy.credentials.clone().unwrap_or_default();
            (u.into_bytes(), p.into_bytes())
        };
        let path = match chosen {
            Method(NG_METHOD) if self.offer_ng => {
                let auth = match &self.proxy.credentials {
                    Some(_) => {
                        let (username, password) = credentials();
                        NgAuth::Password { username, password }
                    }
                    None => NgAuth::None,
                };
                out.clear();
                NgHello { auth }
                    .encode(&mut out)
                    .map_err(|e| ClientError::BadUrl(e.to_string()))?;
                stream.write_all(&out).await?;
                let w = read_message(&mut stream, &mut buf, NgWelcome::decode).await?;
                match w.status {
                    welcome::OK => ProtocolPath::Ng,
                    welcome::AUTH_FAILED => return Err(ClientError::AuthFailed),
                    _ => return Err(ClientError::NoAcceptableMethod),
                }
            }
            Method::USERNAME_PASSWORD if self.proxy.credentials.is_some() => {
                let (username, password) = credentials();
                out.clear();
                AuthRequest { username, password }
                    .encode(&mut out)
                    .map_err(|e| ClientError::BadUrl(e.to_string()))?;
                stream.write_all(&out).await?;
                let r = read_message(&mut stream, &mut buf, AuthReply::decode).await?;
                if !r.success {
                    return Err(ClientError::AuthFailed);
                }
                ProtocolPath::Socks5
            }
            Method::NO_AUTH => ProtocolPath::Socks5,
            _ => return Err(ClientError::NoAcceptableMethod),
        };
        Ok((stream, buf, path))
    }

    pub(crate) async fn reply(
        stream: &mut TcpStream,
        buf: &mut Vec<u8>,
    ) -> Result<Address, ClientError> {
        // Read exactly the reply: the target's first bytes may follow it at once, and they
        // belong to the stream, not to this buffer. Bytes go into `buf` only once read, so a
        // caller that gives up (a timeout around `accept`, say) leaves it consistent.
        // An unknown address type: nothing more to read, and the decode below says why.
        while let Some(want) = Reply::wanted_len(buf) {
            if buf.len() >= want {
                break;
            }
            let mut more = vec![0u8; want - buf.len()];
            let n = stream.read(&mut more).await?;
            if n == 0 {
                // A refusal may come without a usable address, and then a close.
                if let Some(code) = Reply::failure_code(buf) {
                    return Err(ClientError::Refused { code });
                }
                return Err(ClientError::Protocol(
                    "the proxy closed the connection".into(),
                ));
            }
            buf.extend_from_slice(&more[..n]);
        }
        let reply = match Reply::decode(buf) {
            Ok((reply, used)) => {
                buf.drain(..used);
                reply
            }
            // A failure reply with an odd address is still a failure reply.
            Err(e) => {
                return Err(match Reply::failure_code(buf) {
                    Some(code) => ClientError::Refused { code },
                    None => ClientError::Protocol(e.to_string()),
                })
            }
        };
        if reply.code != ReplyCode::SUCCEEDED {
            return Err(ClientError::Refused { code: reply.code });
        }
        Ok(reply.bound)
    }

    /// Opens a connection to `target` through the proxy.
    pub async fn connect(&self, target: Address) -> Result<ProxyStream, ClientError> {
        let target = self.resolve_target(target).await?;
        let (stream, buf, path) = self.negotiate().await?;
        Self::connect_negotiated(stream, buf, path, target).await
    }

    /// The CONNECT request and reply on a negotiated connection; `target` as it goes on the
    /// wire. Kept apart so that the router can tell a failing proxy (negotiation) from a
    /// failing target (the reply).
    pub(crate) async fn connect_negotiated(
        mut stream: TcpStream,
        mut buf: Vec<u8>,
        path: ProtocolPath,
        target: Address,
    ) -> Result<ProxyStream, ClientError> {
        let mut out = Vec::with_capacity(300);
        Request {
            command: Command::Connect,
            address: target,
        }
        .encode(&mut out);
        stream.write_all(&out).await?;
        let bound = Self::reply(&mut stream, &mut buf).await?;
        if !buf.is_empty() {
            return Err(ClientError::Protocol(
                "data before the relay started".into(),
            ));
        }
        Ok(ProxyStream {
            stream,
            bound,
            path,
        })
    }

    /// The target as it goes on the wire: names are resolved here for a `socks5://` proxy.
    pub(crate) async fn resolve_target(&self, target: Address) -> Result<Address, ClientError> {
        match (&target.host, self.proxy.resolve) {
            (Host::Domain(name), Resolve::Local) => {
                let addr = tokio::net::lookup_host((name.as_str(), target.port))
                    .await?
                    .next()
                    .ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, format!("{name} has no address"))
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

    async fn ng_request(&self, request: NgRequest) -> Result<(TcpStream, Vec<u8>), ClientError> {
        let (mut stream, mut buf) = self.ng_request_keep(request).await?;
        Self::reply(&mut stream, &mut buf).await?;
        Ok((stream, buf))
    }

    /// Negotiates SOCKS-NG and sends `request`, leaving the reply unread.
    pub(crate) async fn ng_request_keep(
        &self,
        request: NgRequest,
    ) -> Result<(TcpStream, Vec<u8>), ClientError> {
        let (mut stream, buf, path) = self.negotiate().await?;
        if path != ProtocolPath::Ng {
            return Err(ClientError::NotSupported("SOCKS-NG"));
        }
        let mut out = Vec::with_capacity(32);
        request.encode(&mut out);
        stream.write_all(&out).await?;
        Ok((stream, buf))
    }

    /// Asks the proxy what it offers and which ranges it serves (SOCKS-NG only).
    pub async fn capabilities(&self) -> Result<Capabilities, ClientError> {
        let (mut stream, mut buf) = self.ng_request(NgRequest::Capabilities).await?;
        read_message(&mut stream, &mut buf, Capabilities::decode).await
    }
}
