//! SOCKS5 messages (RFC 1928) and the username/password sub-negotiation (RFC 1929).

use super::{Address, DecodeError, EncodeError, Reader};
use std::fmt;

/// The SOCKS5 version byte.
pub const SOCKS5_VERSION: u8 = 0x05;
/// The RFC 1929 sub-negotiation version byte.
pub const AUTH_VERSION: u8 = 0x01;

/// An authentication method code (IANA "SOCKS Methods" registry).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u8);

impl Method {
    /// No authentication required.
    pub const NO_AUTH: Method = Method(0x00);
    /// GSS-API (RFC 1961); recognised, not offered.
    pub const GSSAPI: Method = Method(0x01);
    /// Username/password (RFC 1929).
    pub const USERNAME_PASSWORD: Method = Method(0x02);
    /// No acceptable methods: the client must close.
    pub const NO_ACCEPTABLE: Method = Method(0xff);
}

/// The client's greeting: the methods it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    /// Offered methods in the client's order, 1 to 255 of them.
    pub methods: Vec<Method>,
}

impl Greeting {
    /// Decodes `VER NMETHODS METHODS...`.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != SOCKS5_VERSION {
            return Err(DecodeError::Version(ver));
        }
        let n = r.u8()? as usize;
        if n == 0 {
            return Err(DecodeError::NoMethods);
        }
        let methods = r.take(n)?.iter().map(|&m| Method(m)).collect();
        Ok((Greeting { methods }, r.position()))
    }

    /// Appends the encoding. At most 255 methods are written.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let n = self.methods.len().min(255);
        out.extend_from_slice(&[SOCKS5_VERSION, n as u8]);
        out.extend(self.methods[..n].iter().map(|m| m.0));
    }

    /// Whether the client offered `m`.
    pub fn offers(&self, m: Method) -> bool {
        self.methods.contains(&m)
    }
}

/// The server's method choice: `VER METHOD`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSelection(pub Method);

impl MethodSelection {
    /// Appends the two bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS5_VERSION, self.0 .0]);
    }

    /// Decodes the two bytes.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != SOCKS5_VERSION {
            return Err(DecodeError::Version(ver));
        }
        Ok((MethodSelection(Method(r.u8()?)), 2))
    }
}

/// RFC 1929 request: `VER ULEN UNAME PLEN PASSWD`. Empty fields are accepted (as Tor does),
/// they just never match a user.
#[derive(Clone, PartialEq, Eq)]
pub struct AuthRequest {
    /// Raw username bytes (RFC 1929 defines no charset).
    pub username: Vec<u8>,
    /// Raw password bytes.
    pub password: Vec<u8>,
}

impl fmt::Debug for AuthRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthRequest")
            .field("username", &String::from_utf8_lossy(&self.username))
            .field("password", &"<redacted>")
            .finish()
    }
}

impl AuthRequest {
    /// Decodes the sub-negotiation request.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != AUTH_VERSION {
            return Err(DecodeError::Version(ver));
        }
        let ulen = r.u8()? as usize;
        let username = r.take(ulen)?.to_vec();
        let plen = r.u8()? as usize;
        let password = r.take(plen)?.to_vec();
        Ok((AuthRequest { username, password }, r.position()))
    }

    /// Appends the encoding; fails when a field exceeds 255 bytes.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        if self.username.len() > 255 {
            return Err(EncodeError::TooLong("username"));
        }
        if self.password.len() > 255 {
            return Err(EncodeError::TooLong("password"));
        }
        out.push(AUTH_VERSION);
        out.push(self.username.len() as u8);
        out.extend_from_slice(&self.username);
        out.push(self.password.len() as u8);
        out.extend_from_slice(&self.password);
        Ok(())
    }
}

/// RFC 1929 reply: `VER STATUS`, status 0 is success.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthReply {
    /// True for STATUS 0x00.
    pub success: bool,
}

impl AuthReply {
    /// Appends the two bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[AUTH_VERSION, if self.success { 0x00 } else { 0x01 }]);
    }

    /// Decodes the two bytes.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != AUTH_VERSION {
            return Err(DecodeError::Version(ver));
        }
        Ok((
            AuthReply {
                success: r.u8()? == 0,
            },
            2,
        ))
    }
}

/// A SOCKS5 command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Command {
    /// 0x01: open a TCP connection to the target.
    Connect,
    /// 0x02: accept one TCP connection from the target.
    Bind,
    /// 0x03: relay UDP datagrams.
    UdpAssociate,
}

impl Command {
    /// The wire code.
    pub fn code(self) -> u8 {
        match self {
            Command::Connect => 0x01,
            Command::Bind => 0x02,
            Command::UdpAssociate => 0x03,
        }
    }

    /// The command for a wire code.
    pub fn from_code(c: u8) -> Option<Self> {
        match c {
            0x01 => Some(Command::Connect),
            0x02 => Some(Command::Bind),
            0x03 => Some(Command::UdpAssociate),
            _ => None,
        }
    }

    /// Lower-case name used in logs and configuration.
    pub fn name(self) -> &'static str {
        match self {
            Command::Connect => "connect",
            Command::Bind => "bind",
            Command::UdpAssociate => "udp",
        }
    }
}

/// Where RSV sits in a request (`VER CMD RSV`); after SOCKS-NG negotiation it carries HOPS.
pub const REQUEST_RSV_OFFSET: usize = 2;

/// Writes HOPS (draft section 3.3) into the RSV of the request encoded at the start of
/// `request`; a slice too short to hold a request head is left alone.
pub fn set_request_hops(request: &mut [u8], hops: u8) {
    if let Some(rsv) = request.get_mut(REQUEST_RSV_OFFSET) {
        *rsv = hops;
    }
}

/// HOPS of the request at the start of `input`, once its head has arrived.
pub fn request_hops(input: &[u8]) -> Option<u8> {
    input.get(REQUEST_RSV_OFFSET).copied()
}

/// The fixed head of a request, `VER CMD RSV`, checked before the address so that an unknown
/// command can be answered with 0x07 even when the rest of the request is unparseable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHeader {
    /// The command.
    pub command: Command,
}

impl RequestHeader {
    /// Decodes `VER CMD RSV`. RSV is ignored: some clients send garbage there.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != SOCKS5_VERSION {
            return Err(DecodeError::Version(ver));
        }
        let cmd = r.u8()?;
        let command = Command::from_code(cmd).ok_or(DecodeError::UnknownCommand(cmd))?;
        let _rsv = r.u8()?;
        Ok((RequestHeader { command }, 3))
    }
}

/// A SOCKS5 request: `VER CMD RSV ATYP DST.ADDR DST.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub command: Command,
    /// The target (CONNECT), expected peer (BIND) or client's UDP source (UDP ASSOCIATE).
    pub address: Address,
}

impl Request {
    /// Decodes a whole request.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let (RequestHeader { command }, head) = RequestHeader::decode(buf)?;
        let (address, n) = Address::decode(&buf[head..])?;
        Ok((Request { command, address }, head + n))
    }

    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS5_VERSION, self.command.code(), 0x00]);
        self.address.encode(out);
    }
}

/// A reply code (REP). A newtype rather than an enum so that codes added by extensions and
/// codes sent by other servers both survive a decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ReplyCode(pub u8);

impl ReplyCode {
    /// 0x00 succeeded.
    pub const SUCCEEDED: ReplyCode = ReplyCode(0x00);
    /// 0x01 general SOCKS server failure.
    pub const GENERAL_FAILURE: ReplyCode = ReplyCode(0x01);
    /// 0x02 connection not allowed by ruleset.
    pub const NOT_ALLOWED: ReplyCode = ReplyCode(0x02);
    /// 0x03 network unreachable.
    pub const NETWORK_UNREACHABLE: ReplyCode = ReplyCode(0x03);
    /// 0x04 host unreachable.
    pub const HOST_UNREACHABLE: ReplyCode = ReplyCode(0x04);
    /// 0x05 connection refused.
    pub const CONNECTION_REFUSED: ReplyCode = ReplyCode(0x05);
    /// 0x06 TTL expired; socksng sends it when connecting times out.
    pub const TTL_EXPIRED: ReplyCode = ReplyCode(0x06);
    /// 0x07 command not supported.
    pub const COMMAND_NOT_SUPPORTED: ReplyCode = ReplyCode(0x07);
    /// 0x08 address type not supported.
    pub const ADDRESS_TYPE_NOT_SUPPORTED: ReplyCode = ReplyCode(0x08);

    /// Words for logs and client errors.
    pub fn description(self) -> &'static str {
        match self.0 {
            0x00 => "succeeded",
            0x01 => "general SOCKS server failure",
            0x02 => "connection not allowed by ruleset",
            0x03 => "network unreachable",
            0x04 => "host unreachable",
            0x05 => "connection refused",
            0x06 => "TTL expired",
            0x07 => "command not supported",
            0x08 => "address type not supported",
            // SOCKS 6's meaning, used by SOCKS-NG in CLOSING.
            0x09 => "timed out",
            // The SOCKS-NG codes (docs/draft-socksng.md, section 3.2).
            0x0A => "port in use",
            0x0B => "port reserved for another user",
            0x0C => "token not valid",
            0x0D => "limit reached",
            0x0E => "datagram too large",
            0x0F => "hop limit reached",
            // SOCKS4 codes, which a SOCKS4 reply maps to unchanged: they cannot collide.
            0x5B => "request rejected or failed (SOCKS4)",
            0x5C => "rejected: no identd on the client (SOCKS4)",
            0x5D => "rejected: identd says another user (SOCKS4)",
            _ => "unassigned reply code",
        }
    }
}

impl fmt::Display for ReplyCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:#04x})", self.description(), self.0)
    }
}

/// A SOCKS5 reply: `VER REP RSV ATYP BND.ADDR BND.PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// Outcome.
    pub code: ReplyCode,
    /// The bound address (CONNECT: the outgoing socket's local address; BIND: the listening
    /// address, then the peer's; UDP ASSOCIATE: where to send datagrams).
    pub bound: Address,
}

impl Reply {
    /// Appends the encoding.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS5_VERSION, self.code.0, 0x00]);
        self.bound.encode(out);
    }

    /// How many bytes the reply at the start of `buf` takes, as far as its first bytes tell:
    /// exact once ATYP (and a domain's length) has arrived, else 5, the bytes to read before
    /// asking again. `None` when ATYP is unknown and nothing more can be learnt. Lets a driver
    /// read a reply and not the target's bytes that may follow it.
    pub fn wanted_len(buf: &[u8]) -> Option<usize> {
        match (buf.get(3), buf.get(4)) {
            (None, _) | (Some(&0x03), None) => Some(5),
            (Some(&0x01), _) => Some(4 + 4 + 2),
            (Some(&0x04), _) => Some(4 + 16 + 2),
            (Some(&0x03), Some(&n)) => Some(4 + 1 + usize::from(n) + 2),
            _ => None,
        }
    }

    /// The code of a failure reply at the start of `buf`, even when the rest of it is
    /// malformed or missing: some servers send a short refusal and close.
    pub fn failure_code(buf: &[u8]) -> Option<ReplyCode> {
        match buf {
            [SOCKS5_VERSION, code, ..] if *code != 0 => Some(ReplyCode(*code)),
            _ => None,
        }
    }

    /// Decodes a reply. The address is parsed even for failures, since its length is needed
    /// to find the end of the message.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let ver = r.u8()?;
        if ver != SOCKS5_VERSION {
            return Err(DecodeError::Version(ver));
        }
        let code = ReplyCode(r.u8()?);
        let _rsv = r.u8()?;
        let bound = Address::read(&mut r)?;
        Ok((Reply { code, bound }, r.position()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::assert_every_prefix_incomplete;

    #[test]
    fn reply_lengths_and_short_refusals() {
        for reply in [
            Reply {
                code: ReplyCode::SUCCEEDED,
                bound: Address::ip("192.0.2.1:80".parse().unwrap()),
            },
            Reply {
                code: ReplyCode::SUCCEEDED,
                bound: Address::ip("[2001:db8::1]:80".parse().unwrap()),
            },
            Reply {
                code: ReplyCode::HOST_UNREACHABLE,
                bound: Address::domain("a.example", 443).unwrap(),
            },
        ] {
            let mut bytes = Vec::new();
            reply.encode(&mut bytes);
            // Every prefix asks for at most the whole reply, and the whole reply asks for itself.
            for cut in 0..bytes.len() {
                let want = Reply::wanted_len(&bytes[..cut]).unwrap();
                assert!(want > cut && want <= bytes.len(), "{reply:?} at {cut}");
            }
            assert_eq!(Reply::wanted_len(&bytes), Some(bytes.len()));
        }
        assert_eq!(Reply::wanted_len(&[5, 0, 0, 9, 1]), None);
        assert_eq!(
            Reply::failure_code(&[5, 4]),
            Some(ReplyCode::HOST_UNREACHABLE)
        );
        assert_eq!(Reply::failure_code(&[5, 0, 0, 1]), None);
        assert_eq!(Reply::failure_code(&[4, 91]), None);
        assert_eq!(Reply::failure_code(&[5]), None);
    }

    #[test]
    fn greeting() {
        let bytes = [5, 2, 0, 2];
        assert_every_prefix_incomplete(&bytes, Greeting::decode);
        let (g, n) = Greeting::decode(&bytes).unwrap();
        assert_eq!(n, 4);
        assert!(g.offers(Method::NO_AUTH) && g.offers(Method::USERNAME_PASSWORD));
        let mut out = Vec::new();
        g.encode(&mut out);
        assert_eq!(out, bytes);
        // Trailing pipelined bytes are left alone.
        assert_eq!(Greeting::decode(&[5, 1, 0, 1, 2, 3]).unwrap().1, 3);
    }

    #[test]
    fn greeting_invalid() {
        assert_eq!(Greeting::decode(&[4, 1, 0]), Err(DecodeError::Version(4)));
        assert_eq!(Greeting::decode(&[5, 0]), Err(DecodeError::NoMethods));
        assert_eq!(
            Greeting::decode(&[0x47, 0x45, 0x54]),
            Err(DecodeError::Version(0x47))
        );
        let mut all = vec![5, 255];
        all.extend(0..=254u8);
        assert_eq!(Greeting::decode(&all).unwrap().0.methods.len(), 255);
    }

    #[test]
    fn method_selection() {
        let mut out = Vec::new();
        MethodSelection(Method::NO_ACCEPTABLE).encode(&mut out);
        assert_eq!(out, [5, 0xff]);
        assert_every_prefix_incomplete(&out, MethodSelection::decode);
        assert_eq!(
            MethodSelection::decode(&[4, 0]),
            Err(DecodeError::Version(4))
        );
    }

    #[test]
    fn auth_request() {
        let bytes = [1, 5, b'a', b'l', b'i', b'c', b'e', 3, b'p', b'w', b'd'];
        assert_every_prefix_incomplete(&bytes, AuthRequest::decode);
        let (a, _) = AuthRequest::decode(&bytes).unwrap();
        assert_eq!(a.username, b"alice");
        assert_eq!(a.password, b"pwd");
        let mut out = Vec::new();
        a.encode(&mut out).unwrap();
        assert_eq!(out, bytes);
        assert!(!format!("{a:?}").contains("pwd"));
    }

    #[test]
    fn auth_request_edge_cases() {
        assert_eq!(
            AuthRequest::decode(&[5, 1, b'a', 1, b'b']),
            Err(DecodeError::Version(5))
        );
        let (a, n) = AuthRequest::decode(&[1, 0, 0]).unwrap();
        assert!(a.username.is_empty() && a.password.is_empty() && n == 3);
        let long = AuthRequest {
            username: vec![b'u'; 256],
            password: vec![],
        };
        assert!(long.encode(&mut Vec::new()).is_err());
        let long = AuthRequest {
            username: vec![],
            password: vec![b'p'; 256],
        };
        assert!(long.encode(&mut Vec::new()).is_err());
        let max = AuthRequest {
            username: vec![b'u'; 255],
            password: vec![b'p'; 255],
        };
        let mut out = Vec::new();
        max.encode(&mut out).unwrap();
        assert_eq!(AuthRequest::decode(&out).unwrap().0, max);
    }

    #[test]
    fn auth_reply() {
        let mut out = Vec::new();
        AuthReply { success: true }.encode(&mut out);
        AuthReply { success: false }.encode(&mut out);
        assert_eq!(out, [1, 0, 1, 1]);
        assert_every_prefix_incomplete(&out[..2], AuthReply::decode);
        assert!(!AuthReply::decode(&[1, 0x7f]).unwrap().0.success);
        assert_eq!(AuthReply::decode(&[5, 0]), Err(DecodeError::Version(5)));
    }

    #[test]
    fn request_every_command_and_type() {
        for cmd in [Command::Connect, Command::Bind, Command::UdpAssociate] {
            for addr in [
                Address::ip("10.1.2.3:22".parse().unwrap()),
                Address::ip("[fe80::1]:22".parse().unwrap()),
                Address::domain("host.example", 22).unwrap(),
            ] {
                let req = Request {
                    command: cmd,
                    address: addr,
                };
                let mut out = Vec::new();
                req.encode(&mut out);
                assert_eq!(out[..3], [5, cmd.code(), 0]);
                assert_every_prefix_incomplete(&out, Request::decode);
                assert_eq!(Request::decode(&out).unwrap().0, req);
            }
        }
    }

    #[test]
    fn request_invalid() {
        assert_eq!(Request::decode(&[4, 1, 0, 1]), Err(DecodeError::Version(4)));
        // An unknown command is reported as soon as its byte is seen.
        assert_eq!(
            Request::decode(&[5, 9]),
            Err(DecodeError::UnknownCommand(9))
        );
        assert_eq!(
            Request::decode(&[5, 0]),
            Err(DecodeError::UnknownCommand(0))
        );
        assert_eq!(
            Request::decode(&[5, 1, 0, 5, 0]),
            Err(DecodeError::UnknownAddressType(5))
        );
        assert_eq!(
            Request::decode(&[5, 1, 0, 3, 0, 0, 80]),
            Err(DecodeError::BadDomain)
        );
        // A non-zero RSV is tolerated.
        assert!(Request::decode(&[5, 1, 7, 1, 1, 2, 3, 4, 0, 80]).is_ok());
    }

    #[test]
    fn reply() {
        let rep = Reply {
            code: ReplyCode::HOST_UNREACHABLE,
            bound: Address::ip("[::1]:1080".parse().unwrap()),
        };
        let mut out = Vec::new();
        rep.encode(&mut out);
        assert_eq!(out.len(), 4 + 16 + 2);
        assert_eq!(out[..4], [5, 4, 0, 4]);
        assert_every_prefix_incomplete(&out, Reply::decode);
        assert_eq!(Reply::decode(&out).unwrap().0, rep);
        assert_eq!(Reply::decode(&[4, 0, 0, 1]), Err(DecodeError::Version(4)));
        assert_eq!(
            Reply::decode(&[5, 0, 0, 9]),
            Err(DecodeError::UnknownAddressType(9))
        );
    }

    #[test]
    fn reply_code_words() {
        assert_eq!(ReplyCode::TTL_EXPIRED.to_string(), "TTL expired (0x06)");
        assert_eq!(ReplyCode(0x42).description(), "unassigned reply code");
    }
}
