//! SOCKS-NG messages (docs/draft-socksng.md): the NG-HELLO/NG-WELCOME sub-negotiation, the
//! requests only valid after it (CAPABILITIES, LISTEN, ACCEPT, UDP-TUNNEL), the capability
//! block with served ranges, the listener's control messages and the UDP-in-stream frame.

use super::{Address, DecodeError, Reader, SOCKS5_VERSION};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The method code that offers and selects SOCKS-NG (private range; see the draft's IANA
/// section).
pub const NG_METHOD: u8 = 0xA5;
/// Revision of the NG sub-negotiation and protocol described by the draft.
pub const NG_REVISION: u8 = 0x01;
/// Largest AUTHDATA accepted in an NG-HELLO.
pub const MAX_AUTHDATA: usize = 1023;
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
        }
    }
}

/// NG-HELLO: `VER AUTH ALEN(2) AUTHDATA`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NgHello {
    /// The credentials.
    pub auth: NgAuth,
}

impl NgHello {
    /// Decodes an NG-HELLO.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != NG_REVISION {
            return Err(DecodeError::Version(ver));
        }
        let auth = r.u8()?;
        let alen = r.u16()? as usize;
        if alen > MAX_AUTHDATA {
            return Err(DecodeError::TooLong("NG-HELLO AUTHDATA"));
        }
        let data = r.take(alen)?;
        let auth = match auth {
            0x00 if data.is_empty() => NgAuth::None,
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
            _ => return Err(DecodeError::UnknownCommand(auth)),
        };
        Ok((NgHello { auth }, r.position()))
    }

    /// Appends the encoding; fails when a credential exceeds 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        out.push(NG_REVISION);
        match &self.auth {
            NgAuth::None => out.extend_from_slice(&[0x00, 0, 0]),
            NgAuth::Password { username, password } => {
                if username.len() > 255 || password.len() > 255 {
                    return Err(DecodeError::TooLong("credential"));
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
    /// The AUTH kind is not acceptable here.
    pub const AUTH_NOT_ACCEPTABLE: u8 = 0x02;
}

/// NG-WELCOME: `VER STATUS REV`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NgWelcome {
    /// See [`welcome`].
    pub status: u8,
    /// Highest revision the server implements.
    pub revision: u8,
}

impl NgWelcome {
    /// Appends the three bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[NG_REVISION, self.status, self.revision]);
    }

    /// Decodes the three bytes.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != NG_REVISION {
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
    /// Server to client: the token expired unclaimed and its connection was closed.
    Expired {
        /// The token.
        token: Token,
    },
    /// Client to server: close the connection behind `token`.
    Refuse {
        /// The token.
        token: Token,
    },
}

impl ControlMessage {
    /// Decodes one control message.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let kind = r.u8()?;
        let token: Token = match kind {
            1..=3 => r.array()?,
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        let msg = match kind {
            1 => ControlMessage::AcceptNotice {
                token,
                peer: Address::read(&mut r)?,
            },
            2 => ControlMessage::Expired { token },
            _ => ControlMessage::Refuse { token },
        };
        Ok((msg, r.position()))
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            ControlMessage::AcceptNotice { token, peer } => {
                out.push(1);
                out.extend_from_slice(token);
                peer.encode(out);
            }
            ControlMessage::Expired { token } => {
                out.push(2);
                out.extend_from_slice(token);
            }
            ControlMessage::Refuse { token } => {
                out.push(3);
                out.extend_from_slice(token);
            }
        }
    }
}

/// The head of a UDP-TUNNEL frame, `LEN(2) ADDR`; `LEN` payload bytes follow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFrameHeader {
    /// Payload length.
    pub len: u16,
    /// Destination (client to server) or source (server to client).
    pub address: Address,
}

impl UdpFrameHeader {
    /// Decodes the head; the payload is the next `len` bytes.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let len = r.u16()?;
        let address = Address::read(&mut r)?;
        Ok((UdpFrameHeader { len, address }, r.position()))
    }

    /// Appends a whole frame: head and payload (at most 65,535 bytes).
    pub fn encode_frame(
        address: &Address,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), DecodeError> {
        let len = u16::try_from(payload.len()).map_err(|_| DecodeError::TooLong("UDP payload"))?;
        out.extend_from_slice(&len.to_be_bytes());
        address.encode(out);
        out.extend_from_slice(payload);
        Ok(())
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

/// The capability block appended to a CAPABILITIES reply.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// Protocol revision.
    pub revision: u8,
    /// Accepted command bytes.
    pub commands: Vec<u8>,
    /// Largest relayed UDP payload.
    pub max_udp_payload: u16,
    /// Token lifetime in seconds, when listeners are offered.
    pub token_lifetime: Option<u32>,
    /// Served ranges.
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

fn push_item(out: &mut Vec<u8>, kind: u8, value: &[u8]) -> Result<(), DecodeError> {
    let len = u16::try_from(value.len()).map_err(|_| DecodeError::TooLong("capability item"))?;
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(value);
    Ok(())
}

impl ServedRange {
    fn encode_fields(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        for (ip, len) in &self.prefixes {
            match ip {
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
            let len = u8::try_from(d.len()).map_err(|_| DecodeError::TooLong("domain suffix"))?;
            out.push(FIELD_DOMAIN);
            out.push(len);
            out.extend_from_slice(d.as_bytes());
        }
        for (lo, hi) in &self.ports {
            out.push(FIELD_PORTS);
            out.extend_from_slice(&lo.to_be_bytes());
            out.extend_from_slice(&hi.to_be_bytes());
        }
        Ok(())
    }

    /// `None` when a field type is unknown: its length cannot be known, so the range is skipped.
    fn decode_fields(value: &[u8]) -> Result<Option<ServedRange>, DecodeError> {
        let mut r = Reader::new(value);
        let mut range = ServedRange::default();
        while r.position() < value.len() {
            match r.u8()? {
                FIELD_V4 => {
                    let ip = IpAddr::V4(Ipv4Addr::from(r.array::<4>()?));
                    let len = r.u8()?;
                    if len > 32 {
                        return Err(DecodeError::Reserved);
                    }
                    range.prefixes.push((ip, len));
                }
                FIELD_V6 => {
                    let ip = IpAddr::V6(Ipv6Addr::from(r.array::<16>()?));
                    let len = r.u8()?;
                    if len > 128 {
                        return Err(DecodeError::Reserved);
                    }
                    range.prefixes.push((ip, len));
                }
                FIELD_DOMAIN => {
                    let len = r.u8()? as usize;
                    let name = super::addr::validate_domain(r.take(len)?)?;
                    range.domains.push(name.to_owned());
                }
                FIELD_PORTS => {
                    let lo = r.u16()?;
                    let hi = r.u16()?;
                    range.ports.push((lo, hi));
                }
                _ => return Ok(None),
            }
        }
        Ok(Some(range))
    }
}

impl Capabilities {
    /// Appends `BLEN(2)` and the items.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), DecodeError> {
        let mut items = Vec::new();
        push_item(&mut items, CAP_REVISION, &[self.revision])?;
        push_item(&mut items, CAP_COMMANDS, &self.commands)?;
        push_item(&mut items, CAP_MAX_UDP, &self.max_udp_payload.to_be_bytes())?;
        if let Some(t) = self.token_lifetime {
            push_item(&mut items, CAP_TOKEN_LIFETIME, &t.to_be_bytes())?;
        }
        for range in &self.ranges {
            let mut fields = Vec::new();
            range.encode_fields(&mut fields)?;
            push_item(&mut items, CAP_RANGE, &fields)?;
        }
        let blen =
            u16::try_from(items.len()).map_err(|_| DecodeError::TooLong("capability block"))?;
        out.extend_from_slice(&blen.to_be_bytes());
        out.extend_from_slice(&items);
        Ok(())
    }

    /// Decodes a capability block; unknown items are skipped by their length.
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
        let mut b = Reader::new(block);
        while b.position() < block.len() {
            let kind = b.u8()?;
            let len = b.u16()? as usize;
            let value = b.take(len)?;
            match kind {
                CAP_REVISION => caps.revision = *value.first().ok_or(DecodeError::Incomplete)?,
                CAP_COMMANDS => caps.commands = value.to_vec(),
                CAP_MAX_UDP => {
                    let v: [u8; 2] = value.try_into().map_err(|_| DecodeError::Reserved)?;
                    caps.max_udp_payload = u16::from_be_bytes(v);
                }
                CAP_TOKEN_LIFETIME => {
                    let v: [u8; 4] = value.try_into().map_err(|_| DecodeError::Reserved)?;
                    caps.token_lifetime = Some(u32::from_be_bytes(v));
                }
                CAP_RANGE => {
                    if let Some(range) = ServedRange::decode_fields(value)? {
                        caps.ranges.push(range);
                    }
                }
                _ => {}
            }
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
        // BLEN 3: one REVISION item whose LEN is 0, then one with LEN past the block.
        for block in [
            &[0x00, 0x03, CAP_REVISION, 0x00, 0x00][..],
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
            max_udp_payload: 65535,
            token_lifetime: None,
            ranges: vec![ServedRange {
                prefixes: vec![
                    (IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0),
                    (IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0),
                ],
                ..Default::default()
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
            "hello-none" => NgHello { auth: NgAuth::None }.encode(&mut out).unwrap(),
            "hello-password" => NgHello {
                auth: NgAuth::Password {
                    username: b"alice".to_vec(),
                    password: b"pass".to_vec(),
                },
            }
            .encode(&mut out)
            .unwrap(),
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
            "udp-frame-v4" => UdpFrameHeader::encode_frame(
                &Address::ip("192.0.2.1:53".parse().unwrap()),
                &[0xde, 0xad, 0xbe, 0xef],
                &mut out,
            )
            .unwrap(),
            "udp-frame-domain" => UdpFrameHeader::encode_frame(
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
        assert!(vectors.len() >= 19, "vectors missing from the draft");
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
                "hello-none" | "hello-password" => NgHello::decode(&bytes).map(|x| x.1),
                "welcome-ok" | "welcome-auth-failed" => NgWelcome::decode(&bytes).map(|x| x.1),
                n if n.starts_with("request-") => {
                    assert_every_prefix_incomplete(&bytes, NgRequest::decode);
                    NgRequest::decode(&bytes).map(|x| x.1)
                }
                n if n.starts_with("notice-") || n == "refuse" => {
                    assert_every_prefix_incomplete(&bytes, ControlMessage::decode);
                    ControlMessage::decode(&bytes).map(|x| x.1)
                }
                n if n.starts_with("udp-frame") => {
                    let (h, head) = UdpFrameHeader::decode(&bytes).unwrap();
                    Ok(head + h.len as usize)
                }
                "capabilities-gateway" => {
                    let (_, head) = Reply::decode(&bytes).unwrap();
                    let (caps, n) = Capabilities::decode(&bytes[head..]).unwrap();
                    assert_eq!(caps, gateway_capabilities());
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
        assert_eq!(NgHello::decode(&[2, 0, 0, 0]), Err(DecodeError::Version(2)));
        assert_eq!(
            NgHello::decode(&[1, 7, 0, 0]),
            Err(DecodeError::UnknownCommand(7))
        );
        assert_eq!(
            NgHello::decode(&[1, 0, 4, 0]),
            Err(DecodeError::TooLong("NG-HELLO AUTHDATA"))
        );
        // AUTHDATA whose RFC 1929 body disagrees with ALEN.
        assert_eq!(
            NgHello::decode(&[1, 2, 0, 3, 1, b'u', 5]),
            Err(DecodeError::Reserved)
        );
        assert_eq!(
            NgHello::decode(&[1, 2, 0, 4, 1, b'u', 0, 9]),
            Err(DecodeError::Reserved)
        );
        // AUTH none with data.
        assert_eq!(
            NgHello::decode(&[1, 0, 0, 1, 0]),
            Err(DecodeError::UnknownCommand(0))
        );
        let h = NgHello {
            auth: NgAuth::Password {
                username: b"u".to_vec(),
                password: b"secret".to_vec(),
            },
        };
        assert!(!format!("{h:?}").contains("secret"));
        let mut out = Vec::new();
        h.encode(&mut out).unwrap();
        assert_every_prefix_incomplete(&out, NgHello::decode);
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
            ControlMessage::decode(&[4]),
            Err(DecodeError::UnknownCommand(4))
        );
    }

    #[test]
    fn capabilities_skip_unknown_items_and_ranges() {
        let mut out = Vec::new();
        let caps = Capabilities {
            revision: 1,
            commands: vec![1],
            max_udp_payload: 1200,
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
        // A prefix length out of range is malformed.
        let bad = [0, 9, CAP_RANGE, 0, 6, FIELD_V4, 10, 0, 0, 0, 33];
        assert_eq!(Capabilities::decode(&bad), Err(DecodeError::Reserved));
    }

    #[test]
    fn udp_frame_limits() {
        let mut out = Vec::new();
        let big = vec![0u8; 65_536];
        assert!(UdpFrameHeader::encode_frame(&Address::unspecified(), &big, &mut out).is_err());
        UdpFrameHeader::encode_frame(&Address::unspecified(), &big[..65_535], &mut out).unwrap();
        let (h, head) = UdpFrameHeader::decode(&out).unwrap();
        assert_eq!((h.len as usize, head), (65_535, 2 + 7));
        assert_every_prefix_incomplete(&out[..head], UdpFrameHeader::decode);
    }
}
