//! Datagrams through the proxy: SOCKS-NG UDP-TUNNEL (frames inside the TCP connection) or,
//! against a plain SOCKS5 server, RFC 1928 UDP ASSOCIATE with its relay socket.

use crate::Transport;
use crate::{Client, ClientError, ProtocolPath};
use socksng_proto::client::ClientRequest;
use socksng_proto::wire::ng::{NgRequest, TunnelFrame, MAX_UDP_PAYLOAD};
use socksng_proto::{Address, Command, DecodeError, Request, UdpHeader};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::UdpSocket;

/// The largest datagram either path carries (the UDP payload limit plus the RFC 1928 header).
const DATAGRAM_ROOM: usize = 65_536 + 262;

/// A datagram socket through the proxy, whichever way the proxy offers it. `split` gives a
/// sending and a receiving half that can be used from different tasks.
#[derive(Debug)]
pub struct ProxyUdp {
    path: ProtocolPath,
    relay: Option<SocketAddr>,
    tx: UdpSender,
    rx: UdpReceiver,
}

/// The sending half of a [`ProxyUdp`].
#[derive(Debug)]
pub struct UdpSender {
    client: Client,
    out: Outbound,
    scratch: Vec<u8>,
}

/// The receiving half of a [`ProxyUdp`]; it also notices the end of the tunnel or association.
#[derive(Debug)]
pub struct UdpReceiver {
    inbound: Inbound,
}

#[derive(Debug)]
enum Outbound {
    /// SOCKS-NG: length-prefixed frames in the TCP stream.
    Tunnel(WriteHalf<Transport>),
    /// RFC 1928: datagrams with the request header, to the relay.
    Associate(Arc<UdpSocket>),
}

#[derive(Debug)]
enum Inbound {
    Tunnel {
        stream: ReadHalf<Transport>,
        inbox: Vec<u8>,
        /// The TCP socket underneath (a duplicate), to close both directions on an error.
        socket: socket2::Socket,
    },
    /// The association lives as long as the control connection, which is watched here.
    Associate {
        control: Transport,
        socket: Arc<UdpSocket>,
        scratch: Vec<u8>,
    },
}

impl Client {
    /// Opens a datagram socket through the proxy: the SOCKS-NG UDP-TUNNEL when the proxy speaks
    /// SOCKS-NG, else RFC 1928 UDP ASSOCIATE ([`ProxyUdp::path`] tells which). Use
    /// [`Client::plain_socks5_only`] to force UDP ASSOCIATE.
    pub async fn udp(&self) -> Result<ProxyUdp, ClientError> {
        let mut negotiated = self.negotiate().await?;
        let path = negotiated.path;
        let (relay, out, inbound) = match path {
            ProtocolPath::Socks4 => return Err(ClientError::NotSupported("UDP over SOCKS4")),
            ProtocolPath::Ng => {
                negotiated
                    .request(ClientRequest::Ng(NgRequest::UdpTunnel))
                    .await?;
                let transport = negotiated.into_stream()?;
                let socket = socket2::SockRef::from(transport.tcp()).try_clone()?;
                let (read, write) = tokio::io::split(transport);
                let inbound = Inbound::Tunnel {
                    stream: read,
                    inbox: Vec::new(),
                    socket,
                };
                (None, Outbound::Tunnel(write), inbound)
            }
            ProtocolPath::Socks5 => {
                // The datagrams leave from the address the control connection uses, which is
                // the one the proxy can reach. The request names no address (all zeros, as RFC
                // 1928 allows): behind NAT the proxy sees another one, and a server that pinned
                // the association to ours would drop every datagram.
                let local = negotiated.stream.local_addr()?;
                let socket = UdpSocket::bind((local.ip(), 0)).await?;
                let unknown = match local {
                    SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
                    SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
                };
                let request = ClientRequest::Socks5(Request {
                    command: Command::UdpAssociate,
                    address: Address::ip(unknown),
                });
                let bound = negotiated.request(request).await?;
                let stream = negotiated.into_stream()?;
                let mut relay = bound.socket_addr().ok_or_else(|| {
                    ClientError::Protocol(format!("UDP relay given as a name: {bound}"))
                })?;
                if relay.ip().is_unspecified() {
                    // "0.0.0.0" means "the address you reached me at" in practice.
                    relay.set_ip(stream.peer_addr()?.ip());
                }
                socket.connect(relay).await?;
                let socket = Arc::new(socket);
                let inbound = Inbound::Associate {
                    control: stream,
                    socket: socket.clone(),
                    scratch: Vec::new(),
                };
                (Some(relay), Outbound::Associate(socket), inbound)
            }
        };
        Ok(ProxyUdp {
            path,
            relay,
            tx: UdpSender {
                client: self.clone(),
                out,
                scratch: Vec::new(),
            },
            rx: UdpReceiver { inbound },
        })
    }
}

impl ProxyUdp {
    /// UDP-TUNNEL (`Ng`) or UDP ASSOCIATE (`Socks5`).
    pub fn path(&self) -> ProtocolPath {
        self.path
    }

    /// The proxy's UDP relay address (UDP ASSOCIATE only).
    pub fn relay(&self) -> Option<SocketAddr> {
        self.relay
    }

    /// Sends one datagram (at most 65,507 bytes) to `to`, which may be a name (resolved here
    /// for a `socks5://` proxy, by the proxy for `socks5h://`).
    pub async fn send_to(&mut self, payload: &[u8], to: &Address) -> Result<(), ClientError> {
        self.tx.send_to(payload, to).await
    }

    /// Receives one datagram into `buf` (truncated if longer) and returns its length and
    /// source. Fails when the proxy ends the tunnel or association.
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SocketAddr), ClientError> {
        self.rx.recv_from(buf).await
    }

    /// The sending and receiving halves, for use from different tasks.
    pub fn split(self) -> (UdpSender, UdpReceiver) {
        (self.tx, self.rx)
    }
}

impl UdpSender {
    /// As [`ProxyUdp::send_to`].
    pub async fn send_to(&mut self, payload: &[u8], to: &Address) -> Result<(), ClientError> {
        if payload.len() > usize::from(MAX_UDP_PAYLOAD) {
            // As a UDP socket says EMSGSIZE: no proxy relays more than a datagram carries.
            return Err(ClientError::Io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "datagram of {} bytes, above {MAX_UDP_PAYLOAD}",
                    payload.len()
                ),
            )));
        }
        let to = self.client.resolve_target(to.clone()).await?;
        let datagram = &mut self.scratch;
        datagram.clear();
        match &mut self.out {
            Outbound::Tunnel(stream) => {
                TunnelFrame::encode_datagram(&to, payload, datagram)
                    .map_err(|e| ClientError::Protocol(e.to_string()))?;
                stream.write_all(datagram).await?;
            }
            Outbound::Associate(socket) => {
                UdpHeader {
                    frag: 0,
                    address: to,
                }
                .encode(datagram);
                datagram.extend_from_slice(payload);
                socket.send(datagram).await.map_err(relay_error)?;
            }
        }
        Ok(())
    }
}

impl UdpReceiver {
    /// As [`ProxyUdp::recv_from`].
    pub async fn recv_from(&mut self, buf: &mut [u8]) -> Result<(usize, SocketAddr), ClientError> {
        match &mut self.inbound {
            Inbound::Tunnel {
                stream,
                inbox,
                socket,
            } => {
                let got = tunnel_recv(stream, inbox, buf).await;
                if let Err(ClientError::Protocol(_)) = &got {
                    // A frame that cannot be understood ends the tunnel (the draft's MUST):
                    // both directions, so the sending half fails from now on too.
                    let _ = socket.shutdown(std::net::Shutdown::Both);
                }
                got
            }
            Inbound::Associate {
                control,
                socket,
                scratch,
            } => associate_recv(control, socket, scratch, buf).await,
        }
    }
}

/// An error on the socket connected to a UDP relay. "Refused" there is an ICMP port
/// unreachable, which a relay like Dante passes back from the target: the target's failure.
fn relay_error(e: std::io::Error) -> ClientError {
    if e.kind() == std::io::ErrorKind::ConnectionRefused {
        ClientError::Target(e)
    } else {
        ClientError::Io(e)
    }
}

fn source_of(address: &Address) -> Result<SocketAddr, ClientError> {
    address
        .socket_addr()
        .ok_or_else(|| ClientError::Protocol(format!("datagram source is a name: {address}")))
}

async fn tunnel_recv(
    stream: &mut ReadHalf<Transport>,
    inbox: &mut Vec<u8>,
    buf: &mut [u8],
) -> Result<(usize, SocketAddr), ClientError> {
    loop {
        let got = match TunnelFrame::decode(inbox) {
            Ok((TunnelFrame::Datagram { address, payload }, used)) => {
                let n = payload.len().min(buf.len());
                buf[..n].copy_from_slice(&payload[..n]);
                Some((used, source_of(&address).map(|from| (n, from))))
            }
            // The tunnel stays: only that datagram was lost, and the caller hears why.
            Ok((TunnelFrame::Error { code, address }, used)) => Some((
                used,
                Err(ClientError::DatagramRefused { code, to: address }),
            )),
            Err(DecodeError::Incomplete) => None,
            Err(e) => return Err(ClientError::Protocol(e.to_string())),
        };
        if let Some((used, result)) = got {
            inbox.drain(..used);
            return result;
        }
        inbox.reserve(DATAGRAM_ROOM);
        if stream.read_buf(inbox).await? == 0 {
            return Err(ClientError::Protocol("the proxy closed the tunnel".into()));
        }
    }
}

async fn associate_recv(
    control: &mut Transport,
    socket: &UdpSocket,
    scratch: &mut Vec<u8>,
    buf: &mut [u8],
) -> Result<(usize, SocketAddr), ClientError> {
    scratch.resize(DATAGRAM_ROOM, 0);
    let mut probe = [0u8; 64];
    loop {
        tokio::select! {
            got = socket.recv(scratch) => {
                let n = got.map_err(relay_error)?;
                // Fragments (FRAG != 0) are not reassembled and malformed headers are
                // dropped, as RFC 1928 allows; the socket is connected, so only the relay's
                // datagrams arrive here.
                match UdpHeader::decode(&scratch[..n]) {
                    Ok((h, head)) if h.frag == 0 => {
                        let payload = &scratch[head..n];
                        let len = payload.len().min(buf.len());
                        buf[..len].copy_from_slice(&payload[..len]);
                        return Ok((len, source_of(&h.address)?));
                    }
                    _ => continue,
                }
            }
            got = control.read(&mut probe) => match got {
                Ok(0) | Err(_) => {
                    return Err(ClientError::Protocol(
                        "the proxy ended the UDP association".into(),
                    ))
                }
                // Nothing is defined on the control connection after the reply.
                Ok(_) => continue,
            },
        }
    }
}
