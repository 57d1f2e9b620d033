//! Wire formats: pure encode/decode of every SOCKS message socksng speaks.
//!
//! Every decoder has the shape `decode(&[u8]) -> Result<(T, consumed), DecodeError>` and never
//! reads past the message it decodes, so pipelined input (greeting, auth and request in one
//! segment, data right after the request) stays in the caller's buffer. `Incomplete` is the
//! normal answer to a partial message; `Invalid` means the peer broke the protocol.

mod addr;
pub mod discovery;
pub mod ng;
mod socks4;
mod socks5;
mod udp;

pub use addr::{Address, DomainName, Host, MAX_DOMAIN_LEN};
pub use socks4::{Socks4Command, Socks4Reply, Socks4Request, SOCKS4_GRANTED, SOCKS4_REJECTED};
pub use socks5::{
    request_hops, set_request_hops, AuthReply, AuthRequest, Command, Greeting, Method,
    MethodSelection, Reply, ReplyCode, Request, RequestHeader, AUTH_VERSION, REQUEST_RSV_OFFSET,
    SOCKS5_VERSION,
};
pub use udp::UdpHeader;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The buffer ends before the message does; read more and try again.
    #[error("message incomplete")]
    Incomplete,
    /// The version byte is not the one this message requires.
    #[error("unsupported protocol version {0:#04x}")]
    Version(u8),
    /// The greeting lists no authentication method.
    #[error("greeting offers no authentication method")]
    NoMethods,
    /// The command byte is not one this message knows.
    #[error("unknown command {0:#04x}")]
    UnknownCommand(u8),
    /// The address type byte is not IPv4 (1), domain (3) or IPv6 (4).
    #[error("unknown address type {0:#04x}")]
    UnknownAddressType(u8),
    /// A domain name is empty, contains a NUL or control byte, or is not UTF-8.
    #[error("invalid domain name")]
    BadDomain,
    /// A field is longer than this implementation accepts.
    #[error("{0} too long")]
    TooLong(&'static str),
    /// A reserved field that must be zero is not (only where tolerance would be unsafe).
    #[error("reserved field is not zero")]
    Reserved,
    /// A message breaks a rule of its protocol in a way no other variant names.
    #[error("invalid: {0}")]
    Invalid(&'static str),
    /// An item's length runs past the end of the block that has fully arrived around it:
    /// waiting for more bytes would never help.
    #[error("{0} truncated inside a complete block")]
    Truncated(&'static str),
}

/// Why a value could not be encoded: it does not fit the field the wire gives it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// A variable-length field is longer than its length byte(s) can say.
    #[error("{0} too long to encode")]
    TooLong(&'static str),
    /// A value lies outside the range the protocol allows for its field.
    #[error("{0} out of range")]
    OutOfRange(&'static str),
    /// The message cannot express this address family (an IPv6 target in SOCKS4).
    #[error("{0} cannot carry this address")]
    AddressFamily(&'static str),
}

/// A bounds-checked cursor over a byte slice; every read that runs out yields `Incomplete`.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf, pos: 0 }
    }

    pub(crate) fn position(&self) -> usize {
        self.pos
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        let b = *self.buf.get(self.pos).ok_or(DecodeError::Incomplete)?;
        self.pos += 1;
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.pos.checked_add(n).ok_or(DecodeError::Incomplete)?;
        let s = self.buf.get(self.pos..end).ok_or(DecodeError::Incomplete)?;
        self.pos = end;
        Ok(s)
    }

    pub(crate) fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    /// Bytes up to (not including) a NUL terminator, consuming the terminator; at most `max`.
    pub(crate) fn cstring(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<&'a [u8], DecodeError> {
        let rest = &self.buf[self.pos..];
        match rest.iter().position(|&b| b == 0) {
            Some(n) if n > max => Err(DecodeError::TooLong(what)),
            Some(n) => {
                self.pos += n + 1;
                Ok(&rest[..n])
            }
            None if rest.len() > max => Err(DecodeError::TooLong(what)),
            None => Err(DecodeError::Incomplete),
        }
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::DecodeError;

    /// Every strict prefix of a valid encoding must decode as `Incomplete`, never as a value
    /// or another error, so a message split at any byte boundary is simply waited for.
    pub(crate) fn assert_every_prefix_incomplete<T: std::fmt::Debug>(
        bytes: &[u8],
        decode: impl Fn(&[u8]) -> Result<(T, usize), DecodeError>,
    ) {
        for cut in 0..bytes.len() {
            match decode(&bytes[..cut]) {
                Err(DecodeError::Incomplete) => {}
                other => panic!("prefix of {cut}/{} bytes gave {other:?}", bytes.len()),
            }
        }
        let (_, used) = decode(bytes).expect("whole message decodes");
        assert_eq!(used, bytes.len());
    }
}
