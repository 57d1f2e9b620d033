//! Incoming connections through the proxy: SOCKS-NG LISTEN with token claims, and the
//! RFC 1928 BIND fallback (and explicit BIND) for plain SOCKS5 servers.

use crate::{read_message, Client, ClientError, ProtocolPath, ProxyStream};
use socksng_proto::wire::ng::{ControlMessage, NgRequest, Token};
use socksng_proto::{Address, Command, Host, Request};
use std::net::SocketAddr;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Limit for claiming one incoming connection over a new connection to the proxy.
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Client {
    /// Opens a listening socket on the proxy's outside: SOCKS-NG LISTEN (`port` 0 for any,
    /// `exact` to fail rather than take another port). Against a plain SOCKS5 server it falls
    /// back to BIND, which accepts a single connection from `peer_hint` (0.0.0.0: anyone).
    pub async fn listen(
        &self,
        port: u16,
        exact: bool,
        backlog: u16,
        peer_hint: Address,
    ) -> Result<ProxyListener, ClientError> {
        let (stream, buf, path) = self.negotiate().await?;
        self.open_listener(stream, buf, path, port, exact, backlog, peer_hint)
            .await
    }

    /// RFC 1928 BIND, also on a SOCKS-NG server: the proxy listens for one connection from
    /// `peer_hint` (the address the application expects it from; 0.0.0.0:0 for anyone, which
    /// some servers refuse). [`ProxyListener::local_addr`] is where the peer must connect.
    pub async fn bind(&self, peer_hint: Address) -> Result<ProxyListener, ClientError> {
        let (stream, buf, _) = self.negotiate().await?;
        self.open_listener(stream, buf, ProtocolPath::Socks5, 0, false, 1, peer_hint)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn open_listener(
        &self,
        mut stream: TcpStream,
        mut buf: Vec<u8>,
        path: ProtocolPath,
        port: u16,
        exact: bool,
        backlog: u16,
        peer_hint: Address,
    ) -> Result<ProxyListener, ClientError> {
        let mut out = Vec::with_capacity(64);
        if path == ProtocolPath::Ng {
            let family_any: SocketAddr = match &peer_hint.host {
                Host::Ip(ip) if ip.is_ipv6() => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
                _ => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            };
            NgRequest::Listen {
                address: Address::ip(family_any),
                exact,
                backlog,
            }
            .encode(&mut out);
        } else {
            Request {
                command: Command::Bind,
                address: peer_hint,
            }
            .encode(&mut out);
        }
        stream.write_all(&out).await?;
        let mut bound = Self::reply(&mut stream, &mut buf).await?;
        if let Some(mut at) = bound.socket_addr().filter(|a| a.ip().is_unspecified()) {
            // "Listening on every address": the peers reach it where we reached the proxy.
            at.set_ip(stream.peer_addr()?.ip());
            bound = Address::ip(at);
        }
        Ok(ProxyListener {
            client: self.clone(),
            control: Some(stream),
            inbox: buf,
            bound,
            path,
            pending: None,
        })
    }
}

/// A listening socket on the proxy's outside.
#[derive(Debug)]
pub struct ProxyListener {
    client: Client,
    /// The control connection; a BIND fallback hands it over as the accepted stream.
    control: Option<TcpStream>,
    inbox: Vec<u8>,
    bound: Address,
    path: ProtocolPath,
    /// An accept notice read but not yet claimed: kept here so that an `accept` future
    /// dropped mid-claim (a timeout around it, say) does not lose the connection.
    pending: Option<(Token, Address)>,
}

impl ProxyListener {
    /// Where peers connect (the address the proxy announced).
    pub fn local_addr(&self) -> &Address {
        &self.bound
    }

    /// SOCKS-NG listener, or a plain SOCKS5 BIND fallback (one connection only).
    pub fn path(&self) -> ProtocolPath {
        self.path
    }

    /// Waits for the next incoming connection and returns it with the peer's address. With
    /// SOCKS-NG the token is claimed over a new connection to the proxy; each claim is its own
    /// connection, so claimed streams are independent of each other and of the listener.
    /// Dropping the future (a timeout around it, say) loses no connection: a notice read but
    /// not yet claimed is claimed by the next call.
    pub async fn accept(&mut self) -> Result<(ProxyStream, Address), ClientError> {
        let Some(control) = self.control.as_mut() else {
            return Err(ClientError::NotSupported(
                "a plain SOCKS5 BIND accepts one connection",
            ));
        };
        if self.path == ProtocolPath::Socks5 {
            let peer = Client::reply(control, &mut self.inbox).await?;
            let stream = self.control.take().expect("checked above");
            let proxied = ProxyStream {
                stream,
                bound: peer.clone(),
                path: ProtocolPath::Socks5,
            };
            return Ok((proxied, peer));
        }
        loop {
            let (token, peer) = match self.pending.clone() {
                Some(notice) => notice,
                None => {
                    let control = self.control.as_mut().expect("checked above");
                    match read_message(control, &mut self.inbox, ControlMessage::decode).await? {
                        ControlMessage::AcceptNotice { token, peer } => {
                            self.pending = Some((token, peer.clone()));
                            (token, peer)
                        }
                        ControlMessage::Expired { .. } => continue,
                        ControlMessage::Refuse { .. } => {
                            return Err(ClientError::Protocol("REFUSE sent by the server".into()))
                        }
                    }
                }
            };
            // Bounded, so one stuck claim cannot hold up the peers queued behind it.
            let claimed = tokio::time::timeout(CLAIM_TIMEOUT, self.claim(token)).await;
            self.pending = None;
            match claimed
                .unwrap_or_else(|_| Err(ClientError::Io(std::io::ErrorKind::TimedOut.into())))
            {
                Ok(stream) => return Ok((stream, peer)),
                // Expired or refused meanwhile, or the claim connection failed: that peer is
                // lost, the listener is not; wait for the next one. A dead proxy shows up on
                // the control connection.
                Err(_) => continue,
            }
        }
    }

    async fn claim(&self, token: Token) -> Result<ProxyStream, ClientError> {
        let (mut stream, mut buf) = self
            .client
            .ng_request_keep(NgRequest::Accept { token })
            .await?;
        let bound = Client::reply(&mut stream, &mut buf).await?;
        Ok(ProxyStream {
            stream,
            bound,
            path: ProtocolPath::Ng,
        })
    }
}
