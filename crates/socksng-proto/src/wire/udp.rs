//! The RFC 1928 section 7 UDP request header that prefixes every relayed datagram.

use super::{Address, DecodeError, Reader};

/// `RSV(2) FRAG(1) ATYP DST.ADDR DST.PORT`, followed by the payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpHeader {
    /// Fragment number; socksng does not reassemble, so anything but 0 is dropped.
    pub frag: u8,
    /// Destination (client to relay) or source (relay to client).
    pub address: Address,
}

impl UdpHeader {
    /// Decodes the header; the payload is `&buf[consumed..]`. RSV is not checked, since
    /// rejecting it buys nothing and some clients fill it.
    pub fn decode(buf: &[u8]) -> Result<(Self, usize), DecodeError> {
        let mut r = Reader::new(buf);
        let _rsv = r.array::<2>()?;
        let frag = r.u8()?;
        let address = Address::read(&mut r)?;
        Ok((UdpHeader { frag, address }, r.position()))
    }

    /// Appends the header.
    pub fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[0, 0, self.frag]);
        self.address.encode(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::testutil::assert_every_prefix_incomplete;

    #[test]
    fn header_forms() {
        for (addr, len) in [
            (Address::ip("127.0.0.1:53".parse().unwrap()), 10),
            (Address::ip("[::1]:53".parse().unwrap()), 22),
            (
                Address::domain("dns.example", 53).unwrap(),
                3 + 1 + 1 + 11 + 2,
            ),
        ] {
            let h = UdpHeader {
                frag: 0,
                address: addr,
            };
            let mut out = Vec::new();
            h.encode(&mut out);
            assert_eq!(out.len(), len);
            assert_every_prefix_incomplete(&out, UdpHeader::decode);
            out.extend_from_slice(b"payload");
            let (back, n) = UdpHeader::decode(&out).unwrap();
            assert_eq!(back, h);
            assert_eq!(&out[n..], b"payload");
        }
    }

    #[test]
    fn header_invalid() {
        assert_eq!(
            UdpHeader::decode(&[0, 0, 0, 7, 1]),
            Err(DecodeError::UnknownAddressType(7))
        );
        let (h, _) = UdpHeader::decode(&[0, 0, 0x81, 1, 1, 1, 1, 1, 0, 1]).unwrap();
        assert_eq!(h.frag, 0x81);
    }
}
