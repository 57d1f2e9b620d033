//! Incoming connections through the proxy: SOCKS-NG LISTEN with token claims, and the
//! RFC 1928 BIND fallback (and explicit BIND) for plain SOCKS5 servers.

use crate::{Client, ClientError, Negotiated, ProtocolPath, ProxyStream, Transport};
use socksng_proto::client::{ClientEvent, ClientRequest};
use socksng_proto::listener::{ClientListener, ClientListenerEvent, ListenerGrant};
use socksng_proto::wire::ng::{NgRequest, Token};
use socksng_proto::{Address, Command, Host, Request};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Limit for claiming one incoming connection over a new connection to the proxy.
const CLAIM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

impl Client {
    /// Opens a listening socket on the proxy's outside: SOCKS-NG LISTEN (`port` 0 for any,
    /// `exact` to fail rather than take another port, `backlog` 0 for the proxy's default).
    /// Against a plain SOCKS5 server it falls back to BIND, which accepts a single connection
    /// from `peer_hint` (0.0.0.0: anyone).
    pub async fn listen(
        &self,
        port: u16,
        exact: bool,
        backlog: u16,
        peer_hint: Address,
    ) -> Result<ProxyListener, ClientError> {
        let negotiated = self.negotiate().await?;
        let ng = negotiated.path == ProtocolPath::Ng;
        let request = if ng {
            let family_any: SocketAddr = match &peer_hint.host {
                Host::Ip(ip) if ip.is_ipv6() => (std::net::Ipv6Addr::UNSPECIFIED, port).into(),
                _ => (std::net::Ipv4Addr::UNSPECIFIED, port).into(),
            };
            ClientRequest::Ng(NgRequest::Listen {
                address: Address::ip(family_any),
                exact,
                backlog,
            })
        } else {
            bind_request(peer_hint)
        };
        self.open_listener(negotiated, request).await
    }

    /// RFC 1928 BIND, also on a SOCKS-NG server: the proxy listens for one connection from
    /// `peer_hint` (the address the application expects it from; 0.0.0.0:0 for anyone, which
    /// some servers refuse). [`ProxyListener::local_addr`] is where the peer must connect.
    pub async fn bind(&self, peer_hint: Address) -> Result<ProxyListener, ClientError> {
        let negotiated = self.negotiate().await?;
        self.open_listener(negotiated, bind_request(peer_hint))
            .await
    }

    async fn open_listener(
        &self,
        mut negotiated: Negotiated,
        request: ClientRequest,
    ) -> Result<ProxyListener, ClientError> {
        let ng = matches!(request, ClientRequest::Ng(_));
        // A BIND is plain SOCKS whatever was negotiated: SOCKS4's, or SOCKS5's.
        let path = match negotiated.path {
            ProtocolPath::Socks4 => ProtocolPath::Socks4,
            _ => ProtocolPath::Socks5,
        };
        let mut bound = negotiated.request(request).await?;
        if let Some(mut at) = bound.socket_addr().filter(|a| a.ip().is_unspecified()) {
            // Plain servers may say "every address": the peers reach it where we reached
            // the proxy. (A SOCKS-NG server always names a concrete address.)
            at.set_ip(negotiated.stream.peer_addr()?.ip());
            bound = Address::ip(at);
        }
        let control = if ng {
            Control::Ng {
                stream: negotiated.into_stream()?,
                machine: ClientListener::new(Instant::now().into_std()),
                out: Vec::new(),
            }
        } else {
            Control::Bind(Some(negotiated))
        };
        Ok(ProxyListener {
            client: self.clone(),
            control,
            bound,
            pending: None,
            path,
        })
    }
}

fn bind_request(peer_hint: Address) -> ClientRequest {
    ClientRequest::Socks5(Request {
        command: Command::Bind,
        address: peer_hint,
    })
}

#[derive(Debug)]
enum Control {
    /// A SOCKS-NG listener: the control connection and the protocol's control machine, with
    /// the bytes it still has to send.
    Ng {
        stream: Transport,
        machine: ClientListener,
        out: Vec<u8>,
    },
    /// A BIND: the connection waits for its second reply, then becomes the accepted stream.
    Bind(Option<Negotiated>),
    /// The control connection was closed (a protocol error or the proxy's CLOSING), and why.
    Closed(String),
}

impl Control {
    fn path(&self, negotiated_path: ProtocolPath) -> ProtocolPath {
        match self {
            Control::Ng { .. } | Control::Closed(_) => ProtocolPath::Ng,
            Control::Bind(_) => negotiated_path,
        }
    }
}

/// A listening socket on the proxy's outside.
#[derive(Debug)]
pub struct ProxyListener {
    client: Client,
    control: Control,
    bound: Address,
    /// An accept notice read but not yet claimed: kept here so that an `accept` future
    /// dropped mid-claim (a timeout around it, say) does not lose the connection.
    pending: Option<(Token, Address)>,
    /// The protocol the proxy spoke (SOCKS5 or SOCKS4 for a BIND).
    path: ProtocolPath,
}

impl ProxyListener {
    /// Where peers connect (the address the proxy announced).
    pub fn local_addr(&self) -> &Address {
        &self.bound
    }

    /// SOCKS-NG listener, or a plain SOCKS5 BIND fallback (one connection only).
    pub fn path(&self) -> ProtocolPath {
        self.control.path(self.path)
    }

    /// What the proxy granted a SOCKS-NG listener (backlog, token lifetime, idle time), once
    /// its LISTENING message has been read (by the first `accept`).
    pub fn grant(&self) -> Option<ListenerGrant> {
        match &self.control {
            Control::Ng { machine, .. } => machine.grant(),
            Control::Bind(_) | Control::Closed(_) => None,
        }
    }

    /// Waits for the next incoming connection and returns it with the peer's address. With
    /// SOCKS-NG the token is claimed over a new connection to the proxy; each claim is its own
    /// connection, so claimed streams are independent of each other and of the listener.
    /// While waiting, the listener answers the proxy's PINGs and keeps itself alive with its
    /// own. Dropping the future (a timeout around it, say) loses no connection: a notice read
    /// but not yet claimed is claimed by the next call.
    pub async fn accept(&mut self) -> Result<(ProxyStream, Address), ClientError> {
        if let Control::Closed(why) = &self.control {
            return Err(ClientError::Protocol(format!(
                "the listener is closed: {why}"
            )));
        }
        if let Control::Bind(slot) = &mut self.control {
            let Some(negotiated) = slot.as_mut() else {
                return Err(ClientError::NotSupported(
                    "a plain SOCKS5 BIND accepts one connection",
                ));
            };
            let peer = match negotiated.next_event().await? {
                ClientEvent::BindPeer(reply) if reply.code == crate::ReplyCode::SUCCEEDED => {
                    reply.bound
                }
                ClientEvent::BindPeer(reply) => {
                    return Err(ClientError::Refused { code: reply.code })
                }
                other => return Err(ClientError::Protocol(format!("unexpected {other:?}"))),
            };
            let negotiated = slot.take().expect("checked above");
            let proxied = ProxyStream {
                stream: negotiated.into_stream()?,
                bound: peer.clone(),
                path: self.path,
            };
            return Ok((proxied, peer));
        }
        loop {
            let (token, peer) = match self.pending.clone() {
                Some(notice) => notice,
                None => {
                    let notice = match self.next_notice().await {
                        Ok(notice) => notice,
                        Err(e) => {
                            // A protocol error or the proxy's CLOSING ends the listener: the
                            // control connection is dropped, which closes it.
                            if !matches!(e, ClientError::Io(_)) {
                                self.control = Control::Closed(e.to_string());
                            }
                            return Err(e);
                        }
                    };
                    self.pending = Some(notice.clone());
                    notice
                }
            };
            // Bounded, so one stuck claim cannot hold up the peers queued behind it.
            let claimed = tokio::time::timeout(CLAIM_TIMEOUT, self.claim(token)).await;
            self.pending = None;
            match claimed
                .unwrap_or_else(|_| Err(ClientError::Io(std::io::ErrorKind::TimedOut.into())))
            {
                Ok(stream) => return Ok((stream, peer)),
                // Expired, refused or gone meanwhile, or the claim connection failed: that
                // peer is lost, the listener is not; wait for the next one. A dead proxy
                // shows up on the control connection.
                Err(_) => continue,
            }
        }
    }

    /// Runs the control connection until the next ACCEPT-NOTICE. Cancel-safe: bytes read
    /// go straight into the machine, and what it has to send stays queued until written.
    async fn next_notice(&mut self) -> Result<(Token, Address), ClientError> {
        let Control::Ng {
            stream,
            machine,
            out,
        } = &mut self.control
        else {
            unreachable!("only SOCKS-NG listeners get notices");
        };
        let mut chunk = [0u8; 512];
        loop {
            while let Some(event) = machine.poll_event() {
                match event {
                    ClientListenerEvent::Incoming { token, peer } => return Ok((token, peer)),
                    ClientListenerEvent::Listening(_) | ClientListenerEvent::Expired(_) => {}
                    ClientListenerEvent::Closing(code) => {
                        return Err(ClientError::Refused { code })
                    }
                }
            }
            machine.poll_transmit(out);
            while !out.is_empty() {
                let n = stream.write(out).await?;
                out.drain(..n);
            }
            let keepalive = machine.poll_timeout().map(Instant::from_std);
            tokio::select! {
                got = stream.read(&mut chunk) => {
                    let n = got?;
                    if n == 0 {
                        return Err(ClientError::Protocol("the proxy closed the listener".into()));
                    }
                    machine
                        .handle_input(&chunk[..n], Instant::now().into_std())
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                }
                _ = tokio::time::sleep_until(keepalive.unwrap_or_else(Instant::now)), if keepalive.is_some() => {
                    machine.handle_timeout(Instant::now().into_std());
                }
            }
        }
    }

    async fn claim(&self, token: Token) -> Result<ProxyStream, ClientError> {
        let (negotiated, bound) = self.client.ng_request(NgRequest::Accept { token }).await?;
        Ok(ProxyStream {
            stream: negotiated.into_stream()?,
            bound,
            path: ProtocolPath::Ng,
        })
    }
}
