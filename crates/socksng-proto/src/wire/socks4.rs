//! SOCKS4 and SOCKS4a requests and replies, served on the same port as SOCKS5.

use super::{Address, DecodeError, DomainName, EncodeError, Host, Reader};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

/// Longest USERID or 4a hostname accepted; a request that runs on past it is refused rather
/// than buffered without bound.
const MAX_FIELD: usize = 255;

/// Reply code: request granted.
pub const SOCKS4_GRANTED: u8 = 90;
/// Reply code: request rejected or failed.
pub const SOCKS4_REJECTED: u8 = 91;

/// A SOCKS4 command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Socks4Command {
    /// CD = 1.
    Connect,
    /// CD = 2: a listening socket for one connection from the given host.
    Bind,
}

/// `VN=4 CD DSTPORT DSTIP USERID NUL [HOSTNAME NUL]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Socks4Request {
    /// The command.
    pub command: Socks4Command,
    /// Target: an IPv4 address, or with SOCKS4a (DSTIP 0.0.0.x, x != 0) a hostname.
    pub address: Address,
    /// The USERID field (not a password; logged, never trusted).
    pub user_id: Vec<u8>,
}

impl Socks4Request {
    /// Decodes a SOCKS4/4a request.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let vn = r.u8()?;
        if vn != 4 {
            return Err(DecodeError::Version(vn));
        }
        let command = match r.u8()? {
            1 => Socks4Command::Connect,
            2 => Socks4Command::Bind,
            other => return Err(DecodeError::UnknownCommand(other)),
        };
        let port = r.u16()?;
        let ip = Ipv4Addr::from(r.array::<4>()?);
        let user_id = r.cstring(MAX_FIELD, "SOCKS4 user id")?.to_vec();
        let o = ip.octets();
        let host = if o[0] == 0 && o[1] == 0 && o[2] == 0 && o[3] != 0 {
            let name = r.cstring(MAX_FIELD, "SOCKS4a hostname")?;
            Host::Domain(DomainName::from_wire(name)?)
        } else {
            Host::Ip(IpAddr::V4(ip))
        };
        Ok((
            Socks4Request {
                command,
                address: Address { host, port },
                user_id,
            },
            r.position(),
        ))
    }

    /// Appends the encoding (4a form for domain targets). IPv6 targets cannot be expressed.
    pub fn encode(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        // Checked first, so a request SOCKS4 cannot carry leaves nothing half-written.
        if let Host::Ip(IpAddr::V6(_)) = self.address.host {
            return Err(EncodeError::AddressFamily("SOCKS4 request"));
        }
        let cd = match self.command {
            Socks4Command::Connect => 1,
            Socks4Command::Bind => 2,
        };
        out.extend_from_slice(&[4, cd]);
        out.extend_from_slice(&self.address.port.to_be_bytes());
        match &self.address.host {
            Host::Ip(IpAddr::V4(v4)) => out.extend_from_slice(&v4.octets()),
            Host::Ip(IpAddr::V6(_)) => return Err(EncodeError::AddressFamily("SOCKS4 request")),
            Host::Domain(_) => out.extend_from_slice(&[0, 0, 0, 1]),
        }
        out.extend_from_slice(&self.user_id);
        out.push(0);
        if let Host::Domain(d) = &self.address.host {
            out.extend_from_slice(d.as_bytes());
            out.push(0);
        }
        Ok(())
    }
}

/// `VN=0 CD DSTPORT DSTIP`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Socks4Reply {
    /// 90 granted, 91 rejected.
    pub code: u8,
    /// Bound address; 0.0.0.0:0 when there is nothing meaningful to say.
    pub bound: SocketAddrV4,
}

impl Socks4Reply {
    /// Appends the eight bytes.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, self.code]);
        out.extend_from_slice(&self.bound.port().to_be_bytes());
        out.extend_from_slice(&self.bound.ip().octets());
    }

    /// Decodes the eight bytes.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let vn = r.u8()?;
        if vn != 0 {
            return Err(DecodeError::Version(vn));
        }
        let code = r.u8()?;
        let port = r.u16()?;
        let ip = Ipv4Addr::from(r.array::<4>()?);
        Ok((
            Socks4Reply {
                code,
                bound: SocketAddrV4::new(ip, port),
            },
            8,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::assert_every_prefix_incomplete;

    #[test]
    fn socks4_connect() {
        let bytes = [4, 1, 0, 80, 192, 0, 2, 7, b'b', b'o', b'b', 0];
        assert_every_prefix_incomplete(&bytes, Socks4Request::decode);
        let (req, _) = Socks4Request::decode(&bytes).unwrap();
        assert_eq!(req.command, Socks4Command::Connect);
        assert_eq!(req.address, Address::ip("192.0.2.7:80".parse().unwrap()));
        assert_eq!(req.user_id, b"bob");
        let mut out = Vec::new();
        req.encode(&mut out).unwrap();
        assert_eq!(out, bytes);
    }

    #[test]
    fn socks4a_hostname() {
        let mut bytes = vec![4, 1, 1, 187, 0, 0, 0, 9, 0];
        bytes.extend_from_slice(b"example.org\0");
        assert_every_prefix_incomplete(&bytes, Socks4Request::decode);
        let (req, n) = Socks4Request::decode(&bytes).unwrap();
        assert_eq!(n, bytes.len());
        assert_eq!(req.address, Address::domain("example.org", 443).unwrap());
        // 0.0.0.0 is a plain (if useless) SOCKS4 address, not the 4a marker.
        let (req, _) = Socks4Request::decode(&[4, 1, 0, 80, 0, 0, 0, 0, 0]).unwrap();
        assert_eq!(req.address, Address::ip("0.0.0.0:80".parse().unwrap()));
    }

    #[test]
    fn socks4_invalid() {
        assert_eq!(Socks4Request::decode(&[5, 1]), Err(DecodeError::Version(5)));
        assert_eq!(
            Socks4Request::decode(&[4, 3]),
            Err(DecodeError::UnknownCommand(3))
        );
        let mut long = vec![4, 1, 0, 80, 1, 2, 3, 4];
        long.extend(std::iter::repeat_n(b'x', 300));
        assert_eq!(
            Socks4Request::decode(&long),
            Err(DecodeError::TooLong("SOCKS4 user id"))
        );
        let mut long = vec![4, 1, 0, 80, 0, 0, 0, 1, 0];
        long.extend(std::iter::repeat_n(b'x', 256));
        long.push(0);
        assert_eq!(
            Socks4Request::decode(&long),
            Err(DecodeError::TooLong("SOCKS4a hostname"))
        );
        assert_eq!(
            Socks4Request::decode(&[4, 1, 0, 80, 0, 0, 0, 1, 0, 0]),
            Err(DecodeError::BadDomain)
        );
    }

    #[test]
    fn socks4_reply() {
        let rep = Socks4Reply {
            code: SOCKS4_GRANTED,
            bound: "10.0.0.1:1234".parse().unwrap(),
        };
        let mut out = Vec::new();
        rep.encode(&mut out);
        assert_eq!(out, [0, 90, 4, 210, 10, 0, 0, 1]);
        assert_every_prefix_incomplete(&out, Socks4Reply::decode);
        assert_eq!(Socks4Reply::decode(&out).unwrap().0, rep);
        assert_eq!(
            Socks4Reply::decode(&[4, 90, 0, 0, 0, 0, 0, 0]),
            Err(DecodeError::Version(4))
        );
    }
}
