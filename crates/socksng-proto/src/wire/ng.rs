//! SOCKS-NG messages (docs/draft-socksng.md): the NG-HELLO/NG-WELCOME sub-negotiation, the
//! requests only valid after it (CAPABILITIES, LISTEN, ACCEPT, UDP-TUNNEL), the capability
//! block with served ranges, the listener's control messages and the UDP-in-stream frame.

use super::{Address, DecodeError, EncodeError, Reader, ReplyCode, SOCKS5_VERSION};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The method code that offers and selects SOCKS-NG (private range; see the draft's IANA
/// section).
pub const NG_METHOD: u8 = 0xA5;
/// The highest protocol revision this implementation speaks (the draft's revision 1). The
/// revision used on a connection is the lower of this and the client's NG-HELLO VER.
pub const NG_REVISION: u8 = 0x01;
/// The NG-WELCOME VER byte: the layouts of NG-HELLO and NG-WELCOME never change.
pub const WELCOME_VERSION: u8 = 0x01;
/// Largest valid AUTHDATA in an NG-HELLO: ULEN(1) + 255 + PLEN(1) + 255.
pub const MAX_AUTHDATA: usize = 2 + 255 + 255;
/// Largest UDP payload a datagram can carry (over IPv4: 65535 - 20 - 8); the most a server
/// may announce as MAX-UDP-PAYLOAD.
pub const MAX_UDP_PAYLOAD: u16 = 65507;
/// The LEN value that marks a UDP-TUNNEL ERROR frame (above every valid payload length).
pub const ERROR_FRAME_LEN: u16 = 0xFFFF;
/// Token length in bytes (128 bits).
pub const TOKEN_LEN: usize = 16;

/// An accept token: opaque, single use, bound to a user and a listener.
pub type Token = [u8; TOKEN_LEN];

/// NG command codes.
pub mod cmd {
    /// CAPABILITIES.
    pub const CAPABILITIES: u8 = 0x11;
    /// LISTEN.
    pub const LISTEN: u8 = 0x12;
    /// ACCEPT (claim a token).
    pub const ACCEPT: u8 = 0x13;
    /// UDP-TUNNEL.
    pub const UDP_TUNNEL: u8 = 0x14;
}

/// NG reply codes (only sent to clients that negotiated SOCKS-NG).
pub mod rep {
    use crate::wire::ReplyCode;
    /// LISTEN asked for a port exactly and it is taken.
    pub const PORT_IN_USE: ReplyCode = ReplyCode(0x0A);
    /// The port is reserved for another user or group.
    pub const PORT_RESERVED: ReplyCode = ReplyCode(0x0B);
    /// The token is unknown, expired, used, or another user's.
    pub const TOKEN_NOT_VALID: ReplyCode = ReplyCode(0x0C);
    /// Too many listeners, tunnels or pending connections.
    pub const LIMIT_REACHED: ReplyCode = ReplyCode(0x0D);
    /// A UDP-TUNNEL datagram above MAX-UDP-PAYLOAD (ERROR frames only).
    pub const DATAGRAM_TOO_LARGE: ReplyCode = ReplyCode(0x0E);
    /// The request passed through as many servers as this one allows (a forwarding loop).
    pub const HOP_LIMIT_REACHED: ReplyCode = ReplyCode(0x0F);
    /// X'09' "timed out" as SOCKS 6 defines it; SOCKS-NG uses it as a CLOSING reason.
    pub const TIMED_OUT: ReplyCode = ReplyCode(0x09);
}

/// Credentials carried in an NG-HELLO.
#[derive(Clone, PartialEq, Eq)]
pub enum NgAuth {
    /// AUTH X'00'.
    None,
    /// AUTH X'02' with RFC 1929 fields.
    Password {
        /// Raw username.
        username: Vec<u8>,
        /// Raw password.
        password: Vec<u8>,
    },
    /// An AUTH value this revision does not define; its AUTHDATA was skipped.
    Unknown(u8),
}

impl std::fmt::Debug for NgAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NgAuth::None => f.write_str("None"),
            NgAuth::Password { username, .. } => f
                .debug_struct("Password")
                .field("username", &String::from_utf8_lossy(username))
                .field("password", &"<redacted>")
                .finish(),
            NgAuth::Unknown(code) => write!(f, "Unknown({code:#04x})"),
        }
    }
}

/// NG-HELLO: `VER AUTH ALEN(2) AUTHDATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgHello {
    /// The highest revision the client speaks (VER); never 0 once decoded.
    pub revision: u8,
    /// The credentials.
    pub auth: NgAuth,
}

impl NgHello {
    /// A hello of this implementation's revision.
    pub fn new(auth: NgAuth) -> Self {
        NgHello {
            revision: NG_REVISION,
            auth,
        }
    }

    /// Decodes an NG-HELLO. The errors map to NG-WELCOME statuses through
    /// [`NgHello::refusal_status`]; an unknown AUTH decodes (its data skipped) as
    /// [`NgAuth::Unknown`].
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver == 0 {
            return Err(DecodeError::Version(ver));
        }
        let auth = r.u8()?;
        let alen = r.u16()? as usize;
        // Refused before the data arrives: the server never waits for 64 KiB it will not read.
        if alen > MAX_AUTHDATA {
            return Err(DecodeError::TooLong("NG-HELLO AUTHDATA"));
        }
        let data = r.take(alen)?;
        let auth = match auth {
            0x00 if data.is_empty() => NgAuth::None,
            0x00 => return Err(DecodeError::Reserved),
            0x02 => {
                let mut d = Reader::new(data);
                let parse = |d: &mut Reader<'_>| -> Result<NgAuth, DecodeError> {
                    let ulen = d.u8()? as usize;
                    let username = d.take(ulen)?.to_vec();
                    let plen = d.u8()? as usize;
                    let password = d.take(plen)?.to_vec();
                    Ok(NgAuth::Password { username, password })
                };
                match parse(&mut d) {
                    Ok(a) if d.position() == data.len() => a,
                    // AUTHDATA is complete by ALEN, so a short or long body is malformed.
                    _ => return Err(DecodeError::Reserved),
                }
            }
            other => NgAuth::Unknown(other),
        };
        Ok((
            NgHello {
                revision: ver,
                auth,
            },
            r.position(),
        ))
    }

    /// The NG-WELCOME status that answers an NG-HELLO that failed to decode, `None` for
    /// [`DecodeError::Incomplete`] (wait for more).
    pub fn refusal_status(err: &DecodeError) -> Option<u8> {
        match err {
            DecodeError::Incomplete => None,
            DecodeError::Version(_) => Some(welcome::REVISION_NOT_SUPPORTED),
            _ => Some(welcome::MALFORMED),
        }
    }

    /// Appends the encoding; fails when a credential exceeds 255 bytes or VER is 0.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.revision == 0 {
            return Err(EncodeError::OutOfRange("NG-HELLO VER"));
        }
        out.push(self.revision);
        match &self.auth {
            NgAuth::None => out.extend_from_slice(&[0x00, 0, 0]),
            NgAuth::Unknown(code) => out.extend_from_slice(&[*code, 0, 0]),
            NgAuth::Password { username, password } => {
                if username.len() > 255 || password.len() > 255 {
                    return Err(EncodeError::TooLong("credential"));
                }
                let alen = 2 + username.len() + password.len();
                out.push(0x02);
                out.extend_from_slice(&(alen as u16).to_be_bytes());
                out.push(username.len() as u8);
                out.extend_from_slice(username);
                out.push(password.len() as u8);
                out.extend_from_slice(password);
            }
        }
        Ok(())
    }
}

/// NG-WELCOME status values.
pub mod welcome {
    /// Success.
    pub const OK: u8 = 0x00;
    /// Authentication failed.
    pub const AUTH_FAILED: u8 = 0x01;
    /// The AUTH kind is not acceptable here (or unknown).
    pub const AUTH_NOT_ACCEPTABLE: u8 = 0x02;
    /// The NG-HELLO is malformed (ALEN above 512, lengths that disagree, data with AUTH 0).
    pub const MALFORMED: u8 = 0x03;
    /// The NG-HELLO VER is 0.
    pub const REVISION_NOT_SUPPORTED: u8 = 0x04;
}

/// NG-WELCOME: `VER STATUS REV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgWelcome {
    /// See [`welcome`].
    pub status: u8,
    /// The revision used on this connection: the lower of the client's VER and the server's
    /// highest.
    pub revision: u8,
}

impl NgWelcome {
    /// The welcome a server speaking up to `NG_REVISION` gives a client speaking up to
    /// `client_revision`.
    pub fn for_client(status: u8, client_revision: u8) -> Self {
        NgWelcome {
            status,
            revision: client_revision.clamp(1, NG_REVISION),
        }
    }

    /// Appends the three bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[WELCOME_VERSION, self.status, self.revision]);
    }

    /// Decodes the three bytes.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != WELCOME_VERSION {
            return Err(DecodeError::Version(ver));
        }
        Ok((
            NgWelcome {
                status: r.u8()?,
                revision: r.u8()?,
            },
            3,
        ))
    }
}

/// LISTEN flag: this port exactly, or fail.
pub const LISTEN_EXACT: u8 = 0x01;

/// A request only valid after SOCKS-NG negotiation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NgRequest {
    /// `05 11 00`.
    Capabilities,
    /// `05 12 00 ADDR FLAGS BACKLOG`.
    Listen {
        /// Family, address (unspecified: server's choice) and wanted port (0: any).
        address: Address,
        /// The port exactly or fail.
        exact: bool,
        /// Unclaimed connections allowed to wait.
        backlog: u16,
    },
    /// `05 13 00 TOKEN`.
    Accept {
        /// The token from an ACCEPT-NOTICE.
        token: Token,
    },
    /// `05 14 00`.
    UdpTunnel,
}

impl NgRequest {
    /// Whether `cmd` is one of the NG commands.
    pub fn is_ng_command(cmd: u8) -> bool {
        (cmd::CAPABILITIES..=cmd::UDP_TUNNEL).contains(&cmd)
    }

    /// Decodes an NG request (VER CMD RSV and the command's body).
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != SOCKS5_VERSION {
            return Err(DecodeError::Version(ver));
        }
        let c = r.u8()?;
        if !Self::is_ng_command(c) {
            return Err(DecodeError::UnknownCommand(c));
        }
        let _rsv = r.u8()?;
        let req = match c {
            cmd::CAPABILITIES => NgRequest::Capabilities,
            cmd::LISTEN => {
                let address = Address::read(&mut r)?;
                let flags = r.u8()?;
                let backlog = r.u16()?;
                NgRequest::Listen {
                    address,
                    exact: flags & LISTEN_EXACT != 0,
                    backlog,
                }
            }
            cmd::ACCEPT => NgRequest::Accept { token: r.array()? },
            _ => NgRequest::UdpTunnel,
        };
        Ok((req, r.position()))
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            NgRequest::Capabilities => out.extend_from_slice(&[5, cmd::CAPABILITIES, 0]),
            NgRequest::Listen {
                address,
                exact,
                backlog,
            } => {
                out.extend_from_slice(&[5, cmd::LISTEN, 0]);
                address.encode(out);
                out.push(if *exact { LISTEN_EXACT } else { 0 });
                out.extend_from_slice(&backlog.to_be_bytes());
            }
            NgRequest::Accept { token } => {
                out.extend_from_slice(&[5, cmd::ACCEPT, 0]);
                out.extend_from_slice(token);
            }
            NgRequest::UdpTunnel => out.extend_from_slice(&[5, cmd::UDP_TUNNEL, 0]),
        }
    }
}

/// Control-message TYPE bytes.
pub mod control {
    /// ACCEPT-NOTICE, server to client.
    pub const ACCEPT_NOTICE: u8 = 0x01;
    /// EXPIRED, server to client.
    pub const EXPIRED: u8 = 0x02;
    /// REFUSE, client to server.
    pub const REFUSE: u8 = 0x03;
    /// LISTENING, server to client, once, first.
    pub const LISTENING: u8 = 0x04;
    /// PING, either way.
    pub const PING: u8 = 0x05;
    /// PONG, either way.
    pub const PONG: u8 = 0x06;
    /// CLOSING, server to client, last.
    pub const CLOSING: u8 = 0x07;
}

/// Messages on a listener's control connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlMessage {
    /// Server to client: a connection arrived from `peer`; claim it with `token`.
    AcceptNotice {
        /// The claim token.
        token: Token,
        /// The connecting peer.
        peer: Address,
    },
    /// Server to client: the token can no longer be claimed (expired, or its peer went away)
    /// and its connection was closed.
    Expired {
        /// The token.
        token: Token,
    },
    /// Client to server: close the connection behind `token`.
    Refuse {
        /// The token.
        token: Token,
    },
    /// Server to client, first and once: what the listener was granted.
    Listening {
        /// Unclaimed connections that may wait.
        backlog: u16,
        /// Seconds a token stays claimable.
        token_lifetime: u32,
        /// Seconds of silence after which the server closes the control connection (0: never).
        idle: u32,
    },
    /// Either way: answer with a PONG carrying the same bytes.
    Ping([u8; 4]),
    /// Either way: the answer to a PING.
    Pong([u8; 4]),
    /// Server to client, last: the listener closes, for the reason a reply code names.
    Closing {
        /// X'01' the listener failed, X'07' a message was not understood, X'09' idle.
        reason: ReplyCode,
    },
}

impl ControlMessage {
    /// Decodes one control message. An unknown TYPE is [`DecodeError::UnknownCommand`]: its
    /// length cannot be known, so the stream cannot be resynchronised.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let msg = match r.u8()? {
            control::ACCEPT_NOTICE => ControlMessage::AcceptNotice {
                token: r.array()?,
                peer: Address::read(&mut r)?,
            },
            control::EXPIRED => ControlMessage::Expired { token: r.array()? },
            control::REFUSE => ControlMessage::Refuse { token: r.array()? },
            control::LISTENING => ControlMessage::Listening {
                backlog: r.u16()?,
                token_lifetime: u32::from_be_bytes(r.array()?),
                idle: u32::from_be_bytes(r.array()?),
            },
            control::PING => ControlMessage::Ping(r.array()?),
            control::PONG => ControlMessage::Pong(r.array()?),
            control::CLOSING => ControlMessage::Closing {
                reason: ReplyCode(r.u8()?),
            },
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        Ok((msg, r.position()))
    }

    /// Whether only a server may send this message.
    pub fn is_from_server(&self) -> bool {
        !matches!(
            self,
            ControlMessage::Refuse { .. } | ControlMessage::Ping(_) | ControlMessage::Pong(_)
        )
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ControlMessage::AcceptNotice { token, peer } => {
                out.push(control::ACCEPT_NOTICE);
                out.extend_from_slice(token);
                peer.encode(out);
            }
            ControlMessage::Expired { token } => {
                out.push(control::EXPIRED);
                out.extend_from_slice(token);
            }
            ControlMessage::Refuse { token } => {
                out.push(control::REFUSE);
                out.extend_from_slice(token);
            }
            ControlMessage::Listening {
                backlog,
                token_lifetime,
                idle,
            } => {
                out.push(control::LISTENING);
                out.extend_from_slice(&backlog.to_be_bytes());
                out.extend_from_slice(&token_lifetime.to_be_bytes());
                out.extend_from_slice(&idle.to_be_bytes());
            }
            ControlMessage::Ping(opaque) => {
                out.push(control::PING);
                out.extend_from_slice(opaque);
            }
            ControlMessage::Pong(opaque) => {
                out.push(control::PONG);
                out.extend_from_slice(opaque);
            }
            ControlMessage::Closing { reason } => {
                out.extend_from_slice(&[control::CLOSING, reason.0])
            }
        }
    }
}

/// One UDP-TUNNEL frame, borrowing its payload from the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TunnelFrame<'a> {
    /// `LEN(2) ADDR DATA`: a datagram to (from the client) or from (from the server) `address`.
    /// `payload` may exceed MAX-UDP-PAYLOAD: the receiver decides.
    Datagram {
        /// Destination or source.
        address: Address,
        /// The datagram.
        payload: &'a [u8],
    },
    /// `FF FF REP ADDR`, server to client: a datagram to `address` (as the client gave it)
    /// was not sent.
    Error {
        /// Why: X'02' refused, X'03' network unreachable, X'04' name not resolved, X'0E' too large.
        code: ReplyCode,
        /// The destination.
        address: Address,
    },
}

impl<'a> TunnelFrame<'a> {
    /// Decodes one frame. A frame from the client must not be an ERROR frame: the server
    /// treats [`TunnelFrame::Error`] from a client as malformed.
    pub fn decode(buf: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let len = r.u16()?;
        if len == ERROR_FRAME_LEN {
            let code = ReplyCode(r.u8()?);
            let address = Address::read(&mut r)?;
            return Ok((TunnelFrame::Error { code, address }, r.position()));
        }
        let address = Address::read(&mut r)?;
        let payload = r.take(usize::from(len))?;
        Ok((TunnelFrame::Datagram { address, payload }, r.position()))
    }

    /// Decodes one frame sent by a client, for which an ERROR frame is malformed: refused as
    /// soon as its LEN is read, without waiting for the rest.
    pub fn decode_from_client(buf: &'a [u8]) -> Result<(Self, usize), DecodeError> {
        if buf.starts_with(&ERROR_FRAME_LEN.to_be_bytes()) {
            return Err(DecodeError::Invalid("an ERROR frame from the client"));
        }
        Self::decode(buf)
    }

    /// Appends a datagram frame; fails when `payload` is longer than the largest UDP payload.
    pub fn encode_datagram(
        address: &Address,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), EncodeError> {
        let len = u16::try_from(payload.len())
            .ok()
            .filter(|&l| l < ERROR_FRAME_LEN)
            .ok_or(EncodeError::TooLong("UDP-TUNNEL payload"))?;
        out.extend_from_slice(&len.to_be_bytes());
        address.encode(out);
        out.extend_from_slice(payload);
        Ok(())
    }

    /// Appends an ERROR frame.
    pub fn encode_error(code: ReplyCode, address: &Address, out: &mut Vec<u8>) {
        out.extend_from_slice(&ERROR_FRAME_LEN.to_be_bytes());
        out.push(code.0);
        address.encode(out);
    }
}

/// One served range: the destinations inside it match every kind of field it has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServedRange {
    /// IPv4 and IPv6 prefixes (address, prefix length).
    pub prefixes: Vec<(IpAddr, u8)>,
    /// Domain suffixes.
    pub domains: Vec<String>,
    /// Inclusive port ranges.
    pub ports: Vec<(u16, u16)>,
}

/// The capability block appended to a successful CAPABILITIES reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// The revision used on this connection (the NG-WELCOME REV).
    pub revision: u8,
    /// Accepted command bytes.
    pub commands: Vec<u8>,
    /// Largest relayed UDP payload (1 to [`MAX_UDP_PAYLOAD`]); present whenever `commands`
    /// holds UDP ASSOCIATE or UDP-TUNNEL.
    pub max_udp_payload: Option<u16>,
    /// Token lifetime in seconds; present whenever `commands` holds LISTEN.
    pub token_lifetime: Option<u32>,
    /// Served ranges; none means no destination is served for this client.
    pub ranges: Vec<ServedRange>,
}

const CAP_REVISION: u8 = 0x01;
const CAP_COMMANDS: u8 = 0x02;
const CAP_MAX_UDP: u8 = 0x03;
const CAP_TOKEN_LIFETIME: u8 = 0x04;
const CAP_RANGE: u8 = 0x10;
const FIELD_V4: u8 = 0x01;
const FIELD_V6: u8 = 0x02;
const FIELD_DOMAIN: u8 = 0x03;
const FIELD_PORTS: u8 = 0x04;

fn push_item(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(value.len()).map_err(|_| EncodeError::TooLong("capability item"))?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

/// `ip` with the bits past `len` cleared.
fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(v4) & mask))
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & mask))
        }
    }
}

impl ServedRange {
    fn encode_fields(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        for (ip, len) in &self.prefixes {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if *len > max {
                return Err(EncodeError::OutOfRange("prefix length"));
            }
            match masked(*ip, *len) {
                IpAddr::V4(v4) => {
                    out.push(FIELD_V4);
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.push(FIELD_V6);
                    out.extend_from_slice(&v6.octets());
                }
            }
            out.push(*len);
        }
        for d in &self.domains {
            let len = u8::try_from(d.len())
                .ok()
                .filter(|&l| l > 0)
                .ok_or(EncodeError::OutOfRange("domain suffix length"))?;
            out.push(FIELD_DOMAIN);
            out.push(len);
            out.extend_from_slice(d.as_bytes());
        }
        for (lo, hi) in &self.ports {
            if lo > hi {
                return Err(EncodeError::OutOfRange("port range"));
            }
            out.push(FIELD_PORTS);
            out.extend_from_slice(&lo.to_be_bytes());
            out.extend_from_slice(&hi.to_be_bytes());
        }
        Ok(())
    }

    /// `None` when the RANGE must be ignored as a whole: no field at all, an unknown field type (whose length
    /// cannot be known), a prefix length out of range, an empty or invalid domain, a port
    /// range backwards, or a field cut short by the item's end.
    fn decode_fields(value: &[u8]) -> Option<ServedRange> {
        let mut r = Reader::new(value);
        let mut range = ServedRange::default();
        while r.position() < value.len() {
            match r.u8().ok()? {
                FIELD_V4 => {
                    let ip = IpAddr::V4(Ipv4Addr::from(r.array::<4>().ok()?));
                    let len = r.u8().ok().filter(|&l| l <= 32)?;
                    range.prefixes.push((masked(ip, len), len));
                }
                FIELD_V6 => {
                    let ip = IpAddr::V6(Ipv6Addr::from(r.array::<16>().ok()?));
                    let len = r.u8().ok().filter(|&l| l <= 128)?;
                    range.prefixes.push((masked(ip, len), len));
                }
                FIELD_DOMAIN => {
                    let len = r.u8().ok()? as usize;
                    let name = super::addr::validate_domain(r.take(len).ok()?).ok()?;
                    range.domains.push(name.to_owned());
                }
                FIELD_PORTS => {
                    let lo = r.u16().ok()?;
                    let hi = r.u16().ok().filter(|&hi| hi >= lo)?;
                    range.ports.push((lo, hi));
                }
                _ => return None,
            }
        }
        // A RANGE without fields says nothing; it must not read as "everything".
        (!value.is_empty()).then_some(range)
    }
}

impl Capabilities {
    /// Appends `BLEN(2)` and the items, REVISION first. Fails when a rule of the draft would
    /// be broken: revision 0, a missing MAX-UDP-PAYLOAD or TOKEN-LIFETIME that the commands
    /// call for, a MAX-UDP-PAYLOAD outside 1 to 65507, a range field out of range.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.revision == 0 {
            return Err(EncodeError::OutOfRange("REVISION"));
        }
        if self.needs_max_udp() && self.max_udp_payload.is_none() {
            return Err(EncodeError::OutOfRange("MAX-UDP-PAYLOAD missing"));
        }
        if self.commands.contains(&cmd::LISTEN) && self.token_lifetime.is_none() {
            return Err(EncodeError::OutOfRange("TOKEN-LIFETIME missing"));
        }
        let mut items = Vec::new();
        push_item(&mut items, CAP_REVISION, &[self.revision])?;
        push_item(&mut items, CAP_COMMANDS, &self.commands)?;
        if let Some(max) = self.max_udp_payload {
            if max == 0 || max > MAX_UDP_PAYLOAD {
                return Err(EncodeError::OutOfRange("MAX-UDP-PAYLOAD"));
            }
            push_item(&mut items, CAP_MAX_UDP, &max.to_be_bytes())?;
        }
        if let Some(t) = self.token_lifetime {
            push_item(&mut items, CAP_TOKEN_LIFETIME, &t.to_be_bytes())?;
        }
        for range in &self.ranges {
            let mut fields = Vec::new();
            range.encode_fields(&mut fields)?;
            push_item(&mut items, CAP_RANGE, &fields)?;
        }
        let blen =
            u16::try_from(items.len()).map_err(|_| EncodeError::TooLong("capability block"))?;
        out.extend_from_slice(&blen.to_be_bytes());
        out.extend_from_slice(&items);
        Ok(())
    }

    fn needs_max_udp(&self) -> bool {
        self.commands
            .iter()
            .any(|&c| c == 0x03 || c == cmd::UDP_TUNNEL)
    }

    /// Decodes a capability block: unknown items are skipped by their length, a RANGE that
    /// cannot be read whole is ignored, and a block that breaks the item rules is an error.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let blen = r.u16()? as usize;
        let block = r.take(blen)?;
        let caps = Self::decode_items(block).map_err(|e| match e {
            DecodeError::Incomplete => DecodeError::Truncated("capability item"),
            other => other,
        })?;
        Ok((caps, r.position()))
    }

    /// The items of a block that has arrived whole.
    fn decode_items(block: &[u8]) -> Result<Self, DecodeError> {
        let mut caps = Capabilities::default();
        let (mut seen_commands, mut first) = (false, true);
        let mut b = Reader::new(block);
        while b.position() < block.len() {
            let kind = b.u8()?;
            let len = b.u16()? as usize;
            let value = b.take(len)?;
            if first != (kind == CAP_REVISION) {
                // REVISION is first, and only first.
                return Err(DecodeError::Invalid(
                    "REVISION not the first item, or repeated",
                ));
            }
            first = false;
            match kind {
                CAP_REVISION => match value {
                    [rev] if *rev > 0 => caps.revision = *rev,
                    _ => return Err(DecodeError::Invalid("REVISION")),
                },
                CAP_COMMANDS if seen_commands => {
                    return Err(DecodeError::Invalid("COMMANDS repeated"))
                }
                CAP_COMMANDS => {
                    caps.commands = value.to_vec();
                    seen_commands = true;
                }
                CAP_MAX_UDP => {
                    let v: [u8; 2] = value
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("MAX-UDP-PAYLOAD length"))?;
                    let max = u16::from_be_bytes(v);
                    if caps.max_udp_payload.is_some() || max == 0 || max > MAX_UDP_PAYLOAD {
                        return Err(DecodeError::Invalid("MAX-UDP-PAYLOAD"));
                    }
                    caps.max_udp_payload = Some(max);
                }
                CAP_TOKEN_LIFETIME => {
                    let v: [u8; 4] = value
                        .try_into()
                        .map_err(|_| DecodeError::Invalid("TOKEN-LIFETIME length"))?;
                    if caps.token_lifetime.replace(u32::from_be_bytes(v)).is_some() {
                        return Err(DecodeError::Invalid("TOKEN-LIFETIME repeated"));
                    }
                }
                CAP_RANGE => caps.ranges.extend(ServedRange::decode_fields(value)),
                _ => {}
            }
        }
        if first || !seen_commands {
            return Err(DecodeError::Invalid("REVISION or COMMANDS missing"));
        }
        if caps.needs_max_udp() && caps.max_udp_payload.is_none() {
            return Err(DecodeError::Invalid("MAX-UDP-PAYLOAD missing"));
        }
        if caps.commands.contains(&cmd::LISTEN) && caps.token_lifetime.is_none() {
            return Err(DecodeError::Invalid("TOKEN-LIFETIME missing"));
        }
        Ok(caps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::assert_every_prefix_incomplete;
    use crate::wire::{Greeting, Method, MethodSelection, Reply, ReplyCode};

    const DRAFT: &str = include_str!("../../../../docs/draft-socksng.md");

    /// The `vector NAME HEX` lines of the draft's appendix.
    fn vectors() -> Vec<(String, Vec<u8>)> {
        DRAFT
            .lines()
            .filter_map(|l| l.strip_prefix("vector "))
            .map(|l| {
                let mut parts = l.split_whitespace();
                let name = parts.next().expect("vector name").to_owned();
                let bytes = parts
                    .map(|h| u8::from_str_radix(h, 16).expect("hex byte"))
                    .collect();
                (name, bytes)
            })
            .collect()
    }

    #[test]
    fn a_short_item_inside_a_whole_block_is_an_error_not_a_wait() {
        // BLEN 3: an item whose LEN runs past the block.
        for block in [
            &[0x00, 0x03, CAP_REVISION, 0x00, 0x05][..],
            &[0x00, 0x03, 0x7f, 0x00, 0x09],
        ] {
            assert_eq!(
                Capabilities::decode(block),
                Err(DecodeError::Truncated("capability item"))
            );
        }
    }

    const TOKEN: Token = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    fn gateway_capabilities() -> Capabilities {
        Capabilities {
            revision: 1,
            commands: vec![0x01, 0x02, 0x03, 0x11, 0x12, 0x13, 0x14],
            max_udp_payload: Some(MAX_UDP_PAYLOAD),
            token_lifetime: Some(60),
            ranges: vec![ServedRange {
                prefixes: vec![
                    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                ],
                ..Default::default()
            }],
        }
    }

    /// An AUTH X'02' hello whose body says ULEN 1 and PLEN 3 but ALEN is 5 (not 2 + 1 + 3).
    const HELLO_LENGTHS_DISAGREE: [u8; 9] = [1, 2, 0, 5, 1, b'a', 3, b'b', b'c'];

    fn failure(code: ReplyCode, out: &mut Vec<u8>) {
        Reply {
            code,
            bound: Address::unspecified(),
        }
        .encode(out)
    }

    fn vpn_capabilities() -> Capabilities {
        Capabilities {
            revision: 1,
            commands: vec![0x01, 0x11, 0x12, 0x13],
            max_udp_payload: None,
            token_lifetime: Some(30),
            ranges: vec![ServedRange {
                prefixes: vec![(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 0)), 8)],
                domains: vec!["corp.example".into()],
                ports: vec![(22, 22), (443, 443)],
            }],
        }
    }

    /// What the reference codec produces for each vector name.
    fn expected(name: &str) -> Vec<u8> {
        let mut out = Vec::new();
        match name {
            "greeting-ng" => Greeting {
                methods: vec![
                    Method(NG_METHOD),
                    Method::USERNAME_PASSWORD,
                    Method::NO_AUTH,
                ],
            }
            .encode(&mut out),
            "method-ng" => MethodSelection(Method(NG_METHOD)).encode(&mut out),
            "hello-none" => NgHello::new(NgAuth::None).encode(&mut out).unwrap(),
            "hello-password" => NgHello::new(NgAuth::Password {
                username: b"alice".to_vec(),
                password: b"pass".to_vec(),
            })
            .encode(&mut out)
            .unwrap(),
            "hello-unknown-auth" => NgHello::new(NgAuth::Unknown(7)).encode(&mut out).unwrap(),
            // Malformed hellos cannot be encoded by the codec: their bytes are the draft's.
            "hello-version-zero" => out.extend_from_slice(&[0, 0, 0, 0]),
            "hello-alen-too-big" => out.extend_from_slice(&[1, 2, 0x02, 0x01]),
            "hello-none-with-data" => out.extend_from_slice(&[1, 0, 0, 1, 0xff]),
            "hello-lengths-disagree" => out.extend_from_slice(&HELLO_LENGTHS_DISAGREE),
            "welcome-malformed" => NgWelcome::for_client(welcome::MALFORMED, 1).encode(&mut out),
            "welcome-revision-not-supported" => {
                NgWelcome::for_client(welcome::REVISION_NOT_SUPPORTED, 1).encode(&mut out)
            }
            "welcome-not-acceptable" => {
                NgWelcome::for_client(welcome::AUTH_NOT_ACCEPTABLE, 1).encode(&mut out)
            }
            "reply-command-not-supported" => failure(ReplyCode::COMMAND_NOT_SUPPORTED, &mut out),
            "reply-address-type-not-supported" => {
                failure(ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED, &mut out)
            }
            "reply-not-allowed" | "reply-capabilities-refused" => {
                failure(ReplyCode::NOT_ALLOWED, &mut out)
            }
            "reply-port-reserved" => failure(rep::PORT_RESERVED, &mut out),
            "reply-token-not-valid" => failure(rep::TOKEN_NOT_VALID, &mut out),
            "reply-limit-reached" => failure(rep::LIMIT_REACHED, &mut out),
            "listening" => ControlMessage::Listening {
                backlog: 16,
                token_lifetime: 60,
                idle: 300,
            }
            .encode(&mut out),
            "ping" => ControlMessage::Ping([0xde, 0xad, 0xbe, 0xef]).encode(&mut out),
            "pong" => ControlMessage::Pong([0xde, 0xad, 0xbe, 0xef]).encode(&mut out),
            "closing-unknown-message" => ControlMessage::Closing {
                reason: ReplyCode::COMMAND_NOT_SUPPORTED,
            }
            .encode(&mut out),
            "closing-idle" => ControlMessage::Closing {
                reason: rep::TIMED_OUT,
            }
            .encode(&mut out),
            "notice-accept-v6" => ControlMessage::AcceptNotice {
                token: TOKEN,
                peer: Address::ip("[2001:db8::7]:443".parse().unwrap()),
            }
            .encode(&mut out),
            "udp-error-refused" => TunnelFrame::encode_error(
                ReplyCode::NOT_ALLOWED,
                &Address::ip("192.0.2.1:53".parse().unwrap()),
                &mut out,
            ),
            "udp-error-unresolved" => TunnelFrame::encode_error(
                ReplyCode::HOST_UNREACHABLE,
                &Address::domain("nothere.test", 53).unwrap(),
                &mut out,
            ),
            "udp-error-too-large" => TunnelFrame::encode_error(
                rep::DATAGRAM_TOO_LARGE,
                &Address::ip("192.0.2.1:53".parse().unwrap()),
                &mut out,
            ),
            "capabilities-vpn" => {
                failure(ReplyCode::SUCCEEDED, &mut out);
                vpn_capabilities().encode(&mut out).unwrap();
            }
            "welcome-ok" => NgWelcome {
                status: welcome::OK,
                revision: 1,
            }
            .encode(&mut out),
            "welcome-auth-failed" => NgWelcome {
                status: welcome::AUTH_FAILED,
                revision: 1,
            }
            .encode(&mut out),
            "request-capabilities" => NgRequest::Capabilities.encode(&mut out),
            "request-listen-v4-any" => NgRequest::Listen {
                address: Address::ip("0.0.0.0:0".parse().unwrap()),
                exact: false,
                backlog: 16,
            }
            .encode(&mut out),
            "request-listen-v6-exact" => NgRequest::Listen {
                address: Address::ip("[::]:8080".parse().unwrap()),
                exact: true,
                backlog: 64,
            }
            .encode(&mut out),
            "request-accept" => NgRequest::Accept { token: TOKEN }.encode(&mut out),
            "request-udp-tunnel" => NgRequest::UdpTunnel.encode(&mut out),
            "request-connect-hops" => {
                crate::wire::Request {
                    command: crate::wire::Command::Connect,
                    address: Address::ip("192.0.2.1:80".parse().unwrap()),
                }
                .encode(&mut out);
                crate::wire::set_request_hops(&mut out, 2);
            }
            "reply-hop-limit-reached" => failure(rep::HOP_LIMIT_REACHED, &mut out),
            "reply-listen-bound" => Reply {
                code: ReplyCode::SUCCEEDED,
                bound: Address::ip("192.0.2.1:8080".parse().unwrap()),
            }
            .encode(&mut out),
            "reply-port-in-use" => Reply {
                code: rep::PORT_IN_USE,
                bound: Address::unspecified(),
            }
            .encode(&mut out),
            "notice-accept" => ControlMessage::AcceptNotice {
                token: TOKEN,
                peer: Address::ip("198.51.100.7:50000".parse().unwrap()),
            }
            .encode(&mut out),
            "notice-expired" => ControlMessage::Expired { token: TOKEN }.encode(&mut out),
            "refuse" => ControlMessage::Refuse { token: TOKEN }.encode(&mut out),
            "udp-frame-v4" => TunnelFrame::encode_datagram(
                &Address::ip("192.0.2.1:53".parse().unwrap()),
                &[0xde, 0xad, 0xbe, 0xef],
                &mut out,
            )
            .unwrap(),
            "udp-frame-domain" => TunnelFrame::encode_datagram(
                &Address::domain("example.com", 53).unwrap(),
                b"hi",
                &mut out,
            )
            .unwrap(),
            "capabilities-gateway" => {
                Reply {
                    code: ReplyCode::SUCCEEDED,
                    bound: Address::unspecified(),
                }
                .encode(&mut out);
                gateway_capabilities().encode(&mut out).unwrap();
            }
            other => panic!("the draft has a vector this test does not know: {other}"),
        }
        out
    }

    #[test]
    fn draft_vectors_match_the_codec() {
        let vectors = vectors();
        assert!(vectors.len() >= 43, "vectors missing from the draft");
        for (name, bytes) in &vectors {
            let produced = expected(name);
            let hex: Vec<String> = produced.iter().map(|b| format!("{b:02x}")).collect();
            assert_eq!(
                &produced,
                bytes,
                "vector {name}: the codec gives {}",
                hex.join(" ")
            );
        }
    }

    #[test]
    fn draft_vectors_decode_back() {
        for (name, bytes) in vectors() {
            let used = match name.as_str() {
                "hello-none" | "hello-password" | "hello-unknown-auth" => {
                    assert_every_prefix_incomplete(&bytes, NgHello::decode);
                    NgHello::decode(&bytes).map(|x| x.1)
                }
                "hello-version-zero" => {
                    let e = NgHello::decode(&bytes).unwrap_err();
                    assert_eq!(
                        NgHello::refusal_status(&e),
                        Some(welcome::REVISION_NOT_SUPPORTED)
                    );
                    continue;
                }
                n if n.starts_with("hello-") => {
                    let e = NgHello::decode(&bytes).unwrap_err();
                    assert_eq!(NgHello::refusal_status(&e), Some(welcome::MALFORMED), "{n}");
                    continue;
                }
                n if n.starts_with("welcome-") => NgWelcome::decode(&bytes).map(|x| x.1),
                n if n.starts_with("reply-") => Reply::decode(&bytes).map(|x| x.1),
                "request-connect-hops" => {
                    assert_eq!(crate::wire::request_hops(&bytes), Some(2));
                    crate::wire::Request::decode(&bytes).map(|x| x.1)
                }
                n if n.starts_with("request-") => {
                    assert_every_prefix_incomplete(&bytes, NgRequest::decode);
                    NgRequest::decode(&bytes).map(|x| x.1)
                }
                n if n.starts_with("notice-")
                    || n.starts_with("closing-")
                    || ["refuse", "listening", "ping", "pong"].contains(&n) =>
                {
                    assert_every_prefix_incomplete(&bytes, ControlMessage::decode);
                    ControlMessage::decode(&bytes).map(|x| x.1)
                }
                n if n.starts_with("udp-") => {
                    assert_every_prefix_incomplete(&bytes, |b| {
                        TunnelFrame::decode(b).map(|x| ((), x.1))
                    });
                    let (frame, n) = TunnelFrame::decode(&bytes).unwrap();
                    assert_eq!(
                        matches!(frame, TunnelFrame::Error { .. }),
                        name.starts_with("udp-error")
                    );
                    Ok(n)
                }
                "capabilities-gateway" | "capabilities-vpn" => {
                    let (_, head) = Reply::decode(&bytes).unwrap();
                    let (caps, n) = Capabilities::decode(&bytes[head..]).unwrap();
                    let want = if name == "capabilities-vpn" {
                        vpn_capabilities()
                    } else {
                        gateway_capabilities()
                    };
                    assert_eq!(caps, want);
                    assert_every_prefix_incomplete(&bytes[head..], Capabilities::decode);
                    Ok(head + n)
                }
                _ => continue,
            };
            assert_eq!(used, Ok(bytes.len()), "vector {name}");
        }
    }

    #[test]
    fn hello_invalid_fields() {
        assert_eq!(NgHello::decode(&[0]), Err(DecodeError::Version(0)));
        // A later revision decodes: the layout never changes.
        assert_eq!(
            NgHello::decode(&[2, 0, 0, 0]),
            Ok((
                NgHello {
                    revision: 2,
                    auth: NgAuth::None
                },
                4
            ))
        );
        // An unknown AUTH has its data skipped.
        assert_eq!(
            NgHello::decode(&[1, 7, 0, 2, 9, 9]),
            Ok((
                NgHello {
                    revision: 1,
                    auth: NgAuth::Unknown(7)
                },
                6
            ))
        );
        // 512 is the largest ALEN; 513 is refused before any data arrives.
        assert_eq!(
            NgHello::decode(&[1, 2, 0x02, 0x01]),
            Err(DecodeError::TooLong("NG-HELLO AUTHDATA"))
        );
        let mut longest = vec![1, 2, 0x02, 0x00, 255];
        longest.extend_from_slice(&[b'u'; 255]);
        longest.push(255);
        longest.extend_from_slice(&[b'p'; 255]);
        assert_eq!(NgHello::decode(&longest).map(|x| x.1), Ok(516));
        // AUTHDATA whose RFC 1929 body disagrees with ALEN.
        for bad in [
            &[1, 2, 0, 3, 1, b'u', 5][..],
            &[1, 2, 0, 4, 1, b'u', 0, 9],
            &HELLO_LENGTHS_DISAGREE,
            // AUTH none with data.
            &[1, 0, 0, 1, 0],
        ] {
            let e = NgHello::decode(bad).unwrap_err();
            assert_eq!(
                NgHello::refusal_status(&e),
                Some(welcome::MALFORMED),
                "{bad:?}"
            );
        }
        let h = NgHello::new(NgAuth::Password {
            username: b"u".to_vec(),
            password: b"secret".to_vec(),
        });
        assert!(!format!("{h:?}").contains("secret"));
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        assert_every_prefix_incomplete(&out, NgHello::decode);
        assert_eq!(
            NgHello::new(NgAuth::Password {
                username: vec![b'u'; 256],
                password: vec![],
            })
            .encode(&mut out),
            Err(EncodeError::TooLong("credential"))
        );
    }

    #[test]
    fn welcome_settles_on_the_lower_revision() {
        assert_eq!(NgWelcome::for_client(welcome::OK, 7).revision, NG_REVISION);
        assert_eq!(NgWelcome::for_client(welcome::OK, 1).revision, 1);
        assert_eq!(NgWelcome::decode(&[2, 0, 1]), Err(DecodeError::Version(2)));
    }

    #[test]
    fn requests_invalid_fields() {
        assert_eq!(
            NgRequest::decode(&[5, 0x01, 0]),
            Err(DecodeError::UnknownCommand(1))
        );
        assert_eq!(
            NgRequest::decode(&[5, 0x15, 0]),
            Err(DecodeError::UnknownCommand(0x15))
        );
        assert_eq!(
            NgRequest::decode(&[4, 0x11, 0]),
            Err(DecodeError::Version(4))
        );
        assert_eq!(
            NgRequest::decode(&[5, 0x12, 0, 9, 0, 0]),
            Err(DecodeError::UnknownAddressType(9))
        );
        assert_eq!(
            ControlMessage::decode(&[8]),
            Err(DecodeError::UnknownCommand(8))
        );
        assert_eq!(
            ControlMessage::decode(&[4, 0]),
            Err(DecodeError::Incomplete)
        );
    }

    #[test]
    fn capabilities_skip_unknown_items_and_ranges() {
        let mut out = Vec::new();
        let caps = Capabilities {
            revision: 1,
            commands: vec![1],
            max_udp_payload: Some(1200),
            token_lifetime: Some(30),
            ranges: vec![ServedRange {
                prefixes: vec![
                    ("10.0.0.0".parse().unwrap(), 8),
                    ("fd00::".parse().unwrap(), 8),
                ],
                domains: vec!["corp.example".into()],
                ports: vec![(1, 1024)],
            }],
        };
        caps.encode(&mut out).unwrap();
        assert_eq!(Capabilities::decode(&out).unwrap().0, caps);
        // An unknown item (type 0x7f) and a RANGE with an unknown field (0x09) are skipped.
        let mut block = out[2..].to_vec();
        block.extend_from_slice(&[0x7f, 0, 2, 0xaa, 0xbb]);
        block.extend_from_slice(&[CAP_RANGE, 0, 2, 0x09, 0x00]);
        let mut again = (block.len() as u16).to_be_bytes().to_vec();
        again.extend_from_slice(&block);
        assert_eq!(Capabilities::decode(&again).unwrap().0, caps);
        // A RANGE with a prefix length out of range, an empty domain or a backwards port
        // range is ignored; the rest of the block stays.
        for range in [
            &[FIELD_V4, 10, 0, 0, 0, 33][..],
            &[FIELD_DOMAIN, 0],
            &[FIELD_PORTS, 0, 9, 0, 8],
            &[FIELD_V4, 10, 0, 0],
        ] {
            let mut block = out[2..].to_vec();
            block.extend_from_slice(&[CAP_RANGE, 0, range.len() as u8]);
            block.extend_from_slice(range);
            let mut again = (block.len() as u16).to_be_bytes().to_vec();
            again.extend_from_slice(&block);
            assert_eq!(Capabilities::decode(&again).unwrap().0, caps, "{range:?}");
        }
        // Host bits past the prefix length are ignored (cleared).
        let sloppy = [
            0,
            16,
            CAP_REVISION,
            0,
            1,
            1,
            CAP_COMMANDS,
            0,
            0,
            CAP_RANGE,
            0,
            6,
            FIELD_V4,
            10,
            1,
            2,
            3,
            8,
        ];
        let caps = Capabilities::decode(&sloppy[..]).unwrap().0;
        assert_eq!(
            caps.ranges[0].prefixes,
            vec![("10.0.0.0".parse().unwrap(), 8)]
        );
    }

    fn block(items: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = items.concat();
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn capabilities_item_rules() {
        let rev = &[CAP_REVISION, 0, 1, 1][..];
        let cmds = &[CAP_COMMANDS, 0, 1, 0x01][..];
        let cmds_udp = &[CAP_COMMANDS, 0, 1, 0x14][..];
        let cmds_listen = &[CAP_COMMANDS, 0, 1, 0x12][..];
        let max = &[CAP_MAX_UDP, 0, 2, 0x05, 0xdc][..];
        let life = &[CAP_TOKEN_LIFETIME, 0, 4, 0, 0, 0, 30][..];
        assert!(Capabilities::decode(&block(&[rev, cmds])).is_ok());
        assert!(Capabilities::decode(&block(&[rev, cmds_udp, max])).is_ok());
        assert!(Capabilities::decode(&block(&[rev, cmds_listen, life])).is_ok());
        for (bad, why) in [
            (block(&[cmds, rev]), "REVISION not first"),
            (block(&[rev, rev, cmds]), "REVISION twice"),
            (block(&[rev]), "COMMANDS missing"),
            (block(&[rev, cmds, cmds]), "COMMANDS twice"),
            (block(&[rev, cmds_udp]), "MAX-UDP-PAYLOAD missing"),
            (block(&[rev, cmds_listen]), "TOKEN-LIFETIME missing"),
            (block(&[rev, cmds, max, max]), "MAX-UDP-PAYLOAD twice"),
            (
                block(&[rev, cmds, &[CAP_MAX_UDP, 0, 2, 0xff, 0xe4]]),
                "MAX-UDP-PAYLOAD 65508",
            ),
            (
                block(&[rev, cmds, &[CAP_MAX_UDP, 0, 2, 0, 0]]),
                "MAX-UDP-PAYLOAD 0",
            ),
            (
                block(&[rev, cmds, &[CAP_MAX_UDP, 0, 1, 5]]),
                "MAX-UDP-PAYLOAD length",
            ),
            (block(&[&[CAP_REVISION, 0, 1, 0], cmds]), "REVISION 0"),
            (block(&[]), "empty block"),
        ] {
            assert!(
                matches!(Capabilities::decode(&bad), Err(DecodeError::Invalid(_))),
                "{why}"
            );
        }
        // A failing encode: the commands call for items that are missing or out of range.
        let mut caps = vpn_capabilities();
        caps.token_lifetime = None;
        assert!(caps.encode(&mut Vec::new()).is_err());
        let mut caps = gateway_capabilities();
        caps.max_udp_payload = Some(65_535);
        assert_eq!(
            caps.encode(&mut Vec::new()),
            Err(EncodeError::OutOfRange("MAX-UDP-PAYLOAD"))
        );
    }

    #[test]
    fn udp_frame_limits() {
        let mut out = Vec::new();
        let big = vec![0u8; 65_535];
        // LEN X'FFFF' marks an ERROR frame, so 65,534 is the longest a datagram frame can say.
        assert!(TunnelFrame::encode_datagram(&Address::unspecified(), &big, &mut out).is_err());
        TunnelFrame::encode_datagram(&Address::unspecified(), &big[..65_534], &mut out).unwrap();
        let (frame, n) = TunnelFrame::decode(&out).unwrap();
        assert_eq!(n, 2 + 7 + 65_534);
        assert!(matches!(frame, TunnelFrame::Datagram { payload, .. } if payload.len() == 65_534));
        assert_every_prefix_incomplete(&out, |b| TunnelFrame::decode(b).map(|x| ((), x.1)));
        // A pipelined frame stays in the buffer.
        let mut two = out.clone();
        two.extend_from_slice(&[0, 0, 1, 1, 2, 3, 4, 0, 5]);
        assert_eq!(TunnelFrame::decode(&two).map(|x| x.1), Ok(n));
    }
}
