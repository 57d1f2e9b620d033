//! How a session ended, as one typed value: what kind of end, which side caused it (the
//! client, the target or peer, the policy, or the server itself), the reply code sent if any,
//! and the cause in words. The session's log line, its reply and the metrics and audit records
//! to come are all read from this one value, in the manner of pingora's error type.

use socksng_proto::wire::ng::rep;
use socksng_proto::ReplyCode;
use std::fmt;

/// Who an end is down to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The client: it closed, reset, went silent or broke the protocol.
    Client,
    /// The target (or for BIND and LISTEN, the incoming peer): it refused, was unreachable,
    /// reset or went silent.
    Target,
    /// The server's rules or limits.
    Policy,
    /// The server itself (a socket it could not open, a shutdown).
    Internal,
}

impl Side {
    /// The word for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Target => "target",
            Side::Policy => "policy",
            Side::Internal => "internal",
        }
    }

    /// The side a failure reply code blames.
    pub fn of_reply(code: ReplyCode) -> Side {
        match code {
            ReplyCode::NOT_ALLOWED | rep::PORT_RESERVED | rep::LIMIT_REACHED => Side::Policy,
            ReplyCode::NETWORK_UNREACHABLE
            | ReplyCode::HOST_UNREACHABLE
            | ReplyCode::CONNECTION_REFUSED
            | ReplyCode::TTL_EXPIRED => Side::Target,
            ReplyCode::COMMAND_NOT_SUPPORTED
            | ReplyCode::ADDRESS_TYPE_NOT_SUPPORTED
            | rep::TOKEN_NOT_VALID => Side::Client,
            _ => Side::Internal,
        }
    }
}

/// What kind of end a session came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeKind {
    /// The session did its work and ended as its protocol ends (both sides closed, the
    /// client closed its tunnel or listener, the capabilities were sent).
    Completed,
    /// The request was refused (with a failure reply where the protocol has one).
    Refused,
    /// The handshake failed: a malformed message, no acceptable method, a wrong login.
    HandshakeFailed,
    /// The client broke the protocol after the handshake.
    ProtocolError,
    /// A timer ended it: handshake, idle, half-close.
    TimedOut,
    /// A connection broke: a reset, a failed write, a peer gone mid-way.
    Broken,
    /// The server shut down around it.
    Cut,
}

impl OutcomeKind {
    /// The word for logs and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::Refused => "refused",
            OutcomeKind::HandshakeFailed => "handshake-failed",
            OutcomeKind::ProtocolError => "protocol-error",
            OutcomeKind::TimedOut => "timed-out",
            OutcomeKind::Broken => "broken",
            OutcomeKind::Cut => "cut",
        }
    }
}

/// How one session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionOutcome {
    /// What kind of end.
    pub kind: OutcomeKind,
    /// Whose doing.
    pub side: Side,
    /// The failure reply sent, if one was.
    pub reply: Option<ReplyCode>,
    /// The cause, in words.
    pub detail: String,
}

impl SessionOutcome {
    /// An end without a reply code.
    pub fn new(kind: OutcomeKind, side: Side, detail: impl Into<String>) -> Self {
        SessionOutcome {
            kind,
            side,
            reply: None,
            detail: detail.into(),
        }
    }

    /// A request refused with `code`; the side is the one the code blames.
    pub fn refused(code: ReplyCode, why: impl fmt::Display) -> Self {
        SessionOutcome {
            kind: OutcomeKind::Refused,
            side: Side::of_reply(code),
            reply: Some(code),
            detail: why.to_string(),
        }
    }

    /// The same end with more words after it (counters, say).
    pub fn with_note(mut self, note: impl fmt::Display) -> Self {
        self.detail = format!("{}; {note}", self.detail);
        self
    }
}

/// The words of the log line's `outcome`: a refusal starts with its reply code's meaning.
impl fmt::Display for SessionOutcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.reply {
            Some(code) => write!(f, "{}: {}", code.description(), self.detail),
            None => f.write_str(&self.detail),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_gives_the_words_the_side_and_the_code() {
        let o = SessionOutcome::refused(ReplyCode::NOT_ALLOWED, "denied by rules[0]");
        assert_eq!(
            o.to_string(),
            "connection not allowed by ruleset: denied by rules[0]"
        );
        assert_eq!(
            (o.kind, o.side, o.reply),
            (
                OutcomeKind::Refused,
                Side::Policy,
                Some(ReplyCode::NOT_ALLOWED)
            )
        );
        assert_eq!(Side::of_reply(ReplyCode::CONNECTION_REFUSED), Side::Target);
        assert_eq!(Side::of_reply(rep::TOKEN_NOT_VALID), Side::Client);
        assert_eq!(Side::of_reply(ReplyCode::GENERAL_FAILURE), Side::Internal);
        let o = SessionOutcome::new(OutcomeKind::Completed, Side::Client, "client closed")
            .with_note("datagrams up 1 down 1 dropped 0");
        assert_eq!(
            o.to_string(),
            "client closed; datagrams up 1 down 1 dropped 0"
        );
    }
}
