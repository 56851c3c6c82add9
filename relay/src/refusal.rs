//! Telling a refusal of one message from a failure of the broker or the network.

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};

use crate::metrics::FailureReason;

/// The broker refused a message by closing the channel it was published on.
///
/// The relay's channels only publish, so a channel-level (soft) close on one can
/// only answer something a message asked for: an exchange that does not exist
/// (404), one the relay's user may not write to (403), a body over the broker's
/// `max_message_size` (406). Which message it was is not said; the relay finds it
/// by publishing the unconfirmed rows again in smaller groups (`isolate`).
/// Connection-level (hard) errors, I/O errors and timeouts are never refusals:
/// they say nothing about any one message.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub(crate) reason: FailureReason,
    /// The broker's words, e.g. `404 NOT_FOUND - no exchange 'x' in vhost '/'`.
    pub(crate) text: String,
}

impl Refusal {
    /// The refusal `error` carries, if it is one.
    pub(crate) fn of(error: &lapin::Error) -> Option<Self> {
        let ErrorKind::ProtocolError(amqp) = error.kind() else {
            return None;
        };
        let AMQPErrorKind::Soft(soft) = amqp.kind() else {
            return None;
        };
        let reason = match soft {
            AMQPSoftError::NOTFOUND => FailureReason::NotFound,
            AMQPSoftError::ACCESSREFUSED => FailureReason::AccessRefused,
            AMQPSoftError::PRECONDITIONFAILED => FailureReason::PreconditionFailed,
            _ => FailureReason::Refused,
        };
        let text = format!("{} {}", amqp.get_id(), amqp.get_message());
        Some(Self { reason, text })
    }
}

/// True when `error` only says the channel is gone (closed under a publish, or
/// before it): on its own it blames no message.
pub(crate) fn is_channel_gone(error: &lapin::Error) -> bool {
    matches!(
        error.kind(),
        ErrorKind::InvalidChannelState(..) | ErrorKind::InvalidChannel(_)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPHardError};

    fn protocol_error(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn a_soft_close_is_a_refusal_with_its_reason() {
        let error = protocol_error(
            AMQPSoftError::NOTFOUND.into(),
            "NOT_FOUND - no exchange 'typo' in vhost '/'",
        );
        let refusal = Refusal::of(&error).expect("a refusal");
        assert_eq!(refusal.reason, FailureReason::NotFound);
        assert_eq!(
            refusal.text,
            "404 NOT_FOUND - no exchange 'typo' in vhost '/'"
        );
        let error = protocol_error(AMQPSoftError::ACCESSREFUSED.into(), "ACCESS_REFUSED");
        assert_eq!(
            Refusal::of(&error).unwrap().reason,
            FailureReason::AccessRefused
        );
        let error = protocol_error(AMQPSoftError::PRECONDITIONFAILED.into(), "too big");
        assert_eq!(
            Refusal::of(&error).unwrap().reason,
            FailureReason::PreconditionFailed
        );
    }

    #[test]
    fn hard_closes_and_io_errors_blame_no_message() {
        let hard = protocol_error(AMQPHardError::CONNECTIONFORCED.into(), "CONNECTION_FORCED");
        assert!(Refusal::of(&hard).is_none());
        let io: lapin::Error = std::io::Error::from(std::io::ErrorKind::ConnectionReset).into();
        assert!(Refusal::of(&io).is_none());
        assert!(!is_channel_gone(&io));
    }
}
