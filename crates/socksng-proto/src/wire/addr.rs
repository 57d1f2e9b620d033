//! The SOCKS5 address: ATYP, DST/BND.ADDR and port, shared by requests, replies and UDP headers.

use super::{DecodeError, Reader};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Longest domain name a SOCKS5 address can carry (its length is one byte).
pub const MAX_DOMAIN_LEN: usize = 255;

const ATYP_IPV4: u8 = 0x01;
const ATYP_DOMAIN: u8 = 0x03;
const ATYP_IPV6: u8 = 0x04;

/// A domain name as a SOCKS address carries it: 1 to 255 bytes of UTF-8 without NUL or
/// control bytes. It can only be built through [`DomainName::new`] (or decoded), so a name that
/// cannot be encoded never exists.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DomainName(String);

impl DomainName {
    /// Validates `name`.
    pub fn new(name: &str) -> Result<Self, DecodeError> {
        validate_domain(name.as_bytes()).map(|n| DomainName(n.to_owned()))
    }

    /// Validates a name as it came off the wire.
    pub(crate) fn from_wire(name: &[u8]) -> Result<Self, DecodeError> {
        validate_domain(name).map(|n| DomainName(n.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::ops::Deref for DomainName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for DomainName {
    type Error = DecodeError;
    fn try_from(name: &str) -> Result<Self, DecodeError> {
        DomainName::new(name)
    }
}

/// The host part of a SOCKS address: an IP address or a name for the server to resolve.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    /// An IPv4 or IPv6 address.
    Ip(IpAddr),
    /// A validated domain name.
    Domain(DomainName),
}

/// A host and port as carried in SOCKS requests, replies and UDP headers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Address {
    /// Where.
    pub host: Host,
    /// Port, host byte order.
    pub port: u16,
}

impl Address {
    /// An address naming an IP and port.
    pub fn ip(addr: SocketAddr) -> Self {
        Address {
            host: Host::Ip(addr.ip()),
            port: addr.port(),
        }
    }

    /// An address naming a domain and port. Fails when the name could not be encoded.
    pub fn domain(name: &str, port: u16) -> Result<Self, DecodeError> {
        Ok(Address {
            host: Host::Domain(DomainName::new(name)?),
            port,
        })
    }

    /// 0.0.0.0:0, what a reply carries when there is no meaningful address.
    pub fn unspecified() -> Self {
        Address {
            host: Host::Ip(IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            port: 0,
        }
    }

    /// The socket address when the host is an IP.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match self.host {
            Host::Ip(ip) => Some(SocketAddr::new(ip, self.port)),
            Host::Domain(_) => None,
        }
    }

    /// Bytes this address takes on the wire.
    pub fn encoded_len(&self) -> usize {
        match &self.host {
            Host::Ip(IpAddr::V4(_)) => 1 + 4 + 2,
            Host::Ip(IpAddr::V6(_)) => 1 + 16 + 2,
            Host::Domain(d) => 1 + 1 + d.len() + 2,
        }
    }

    /// Appends ATYP, address and port.
    pub fn encode(&self, out: &mut Vec<u8>) {
        match &self.host {
            Host::Ip(IpAddr::V4(v4)) => {
                out.push(ATYP_IPV4);
                out.extend_from_slice(&v4.octets());
            }
            Host::Ip(IpAddr::V6(v6)) => {
                out.push(ATYP_IPV6);
                out.extend_from_slice(&v6.octets());
            }
            Host::Domain(d) => {
                out.push(ATYP_DOMAIN);
                // Constructors and the decoder keep names within 255 bytes.
                out.push(d.len() as u8);
                out.extend_from_slice(d.as_bytes());
            }
        }
        out.extend_from_slice(&self.port.to_be_bytes());
    }

    /// Decodes ATYP, address and port from the start of `buf`.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let a = Self::read(&mut r)?;
        Ok((a, r.position()))
    }

    pub(crate) fn read(r: &mut Reader<'_>) -> Result<Self, DecodeError> {
        let host = match r.u8()? {
            ATYP_IPV4 => Host::Ip(IpAddr::V4(Ipv4Addr::from(r.array::<4>()?))),
            ATYP_IPV6 => Host::Ip(IpAddr::V6(Ipv6Addr::from(r.array::<16>()?))),
            ATYP_DOMAIN => {
                let len = r.u8()? as usize;
                let name = r.take(len)?;
                Host::Domain(DomainName::from_wire(name)?)
            }
            other => return Err(DecodeError::UnknownAddressType(other)),
        };
        let port = r.u16()?;
        Ok(Address { host, port })
    }
}

/// Accepts a name a resolver can be asked about: 1..=255 bytes of UTF-8 without NUL or
/// control characters (a NUL would truncate the C string handed to getaddrinfo).
pub(crate) fn validate_domain(name: &[u8]) -> Result<&str, DecodeError> {
    if name.is_empty() {
        return Err(DecodeError::BadDomain);
    }
    if name.len() > MAX_DOMAIN_LEN {
        return Err(DecodeError::TooLong("domain name"));
    }
    if name.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(DecodeError::BadDomain);
    }
    std::str::from_utf8(name).map_err(|_| DecodeError::BadDomain)
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Ip(IpAddr::V6(v6)) => write!(f, "[{v6}]"),
            Host::Ip(IpAddr::V4(v4)) => write!(f, "{v4}"),
            Host::Domain(d) => f.write_str(d),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl From<SocketAddr> for Address {
    fn from(a: SocketAddr) -> Self {
        Address::ip(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::assert_every_prefix_incomplete;

    fn roundtrip(a: &Address, expect: &[u8]) {
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(out, expect);
        assert_eq!(a.encoded_len(), expect.len());
        assert_every_prefix_incomplete(expect, Address::decode);
        assert_eq!(&Address::decode(expect).unwrap().0, a);
    }

    #[test]
    fn ipv4() {
        roundtrip(
            &Address::ip("192.0.2.1:80".parse().unwrap()),
            &[1, 192, 0, 2, 1, 0, 80],
        );
    }

    #[test]
    fn ipv6() {
        let mut v = vec![4];
        v.extend_from_slice(&"2001:db8::1".parse::<Ipv6Addr>().unwrap().octets());
        v.extend_from_slice(&[0x01, 0xbb]);
        roundtrip(&Address::ip("[2001:db8::1]:443".parse().unwrap()), &v);
    }

    #[test]
    fn domain() {
        let mut v = vec![3, 11];
        v.extend_from_slice(b"example.com");
        v.extend_from_slice(&[0x1f, 0x90]);
        roundtrip(&Address::domain("example.com", 8080).unwrap(), &v);
    }

    #[test]
    fn domain_of_255_bytes() {
        let name = "a".repeat(255);
        let a = Address::domain(&name, 1).unwrap();
        let mut out = Vec::new();
        a.encode(&mut out);
        assert_eq!(out.len(), 1 + 1 + 255 + 2);
        assert_eq!(Address::decode(&out).unwrap().0, a);
    }

    #[test]
    fn invalid_fields() {
        assert_eq!(
            Address::decode(&[2, 1, 2, 3, 4, 0, 0]),
            Err(DecodeError::UnknownAddressType(2))
        );
        assert_eq!(
            Address::decode(&[0, 0]),
            Err(DecodeError::UnknownAddressType(0))
        );
        assert_eq!(Address::decode(&[3, 0, 0, 80]), Err(DecodeError::BadDomain));
        assert_eq!(
            Address::decode(&[3, 3, b'a', 0, b'b', 0, 80]),
            Err(DecodeError::BadDomain)
        );
        assert_eq!(
            Address::decode(&[3, 2, 0xff, 0xfe, 0, 80]),
            Err(DecodeError::BadDomain)
        );
        assert_eq!(
            Address::decode(&[3, 2, b'a', b'\n', 0, 80]),
            Err(DecodeError::BadDomain)
        );
        assert!(Address::domain(&"a".repeat(256), 1).is_err());
        assert!(Address::domain("", 1).is_err());
    }

    #[test]
    fn display() {
        assert_eq!(
            Address::ip("[::1]:5".parse().unwrap()).to_string(),
            "[::1]:5"
        );
        assert_eq!(Address::domain("a.b", 7).unwrap().to_string(), "a.b:7");
    }
}
