//! Mapping of lapin's errors to machinery's [`Error`].

use lapin::ErrorKind;
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use machinery_core::Error;

pub(crate) const DRIVER: &str = "amqp";

/// The AMQP reply code of a server-side channel or connection error, if that is what it is.
pub(crate) fn reply_code(e: &lapin::Error) -> Option<AMQPErrorKind> {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => Some(amqp.kind().clone()),
        _ => None,
    }
}

/// Whether the server answered 404 NOT_FOUND (missing queue or exchange).
pub(crate) fn is_not_found(e: &lapin::Error) -> bool {
    matches!(
        reply_code(e),
        Some(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND))
    )
}

/// Whether the error is about the connection or a channel that went away (as opposed to the
/// server refusing this particular request): worth reconnecting and trying again.
pub(crate) fn is_temporary(e: &lapin::Error) -> bool {
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => match amqp.kind() {
            AMQPErrorKind::Hard(_) => true,
            AMQPErrorKind::Soft(soft) => matches!(soft, AMQPSoftError::RESOURCELOCKED),
        },
        ErrorKind::IOError(_)
        | ErrorKind::InvalidChannel(_)
        | ErrorKind::InvalidChannelState(..)
        | ErrorKind::InvalidConnectionState(_)
        | ErrorKind::MissingHeartbeatError
        | ErrorKind::ChannelsLimitReached => true,
        _ => false,
    }
}

/// A lapin error while doing `what`.
pub(crate) fn amqp(what: impl Into<String>, e: lapin::Error) -> Error {
    let mut message = what.into();
    if matches!(
        reply_code(&e),
        Some(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED))
    ) {
        message.push_str(
            " (406 PRECONDITION_FAILED: the server has it declared with other flags or \
             arguments; they must match Go Machinery's exactly, see the crate README)",
        );
    }
    let temporary = is_temporary(&e);
    Error::backend(DRIVER, message, temporary, e)
}

/// A temporary failure without a lapin error behind it.
pub(crate) fn temporary(message: impl Into<String>) -> Error {
    Error::Backend {
        driver: DRIVER,
        message: message.into(),
        temporary: true,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::protocol::{AMQPError, AMQPHardError};

    fn protocol(kind: AMQPErrorKind) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, "text".into())).into()
    }

    #[test]
    fn classification() {
        let nf = protocol(AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND));
        assert!(is_not_found(&nf));
        assert!(!is_temporary(&nf));
        let pf = protocol(AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED));
        let e = amqp("declare queue `q`", pf);
        assert!(!e.is_temporary());
        assert!(e.to_string().contains("406"), "{e}");
        let hard = protocol(AMQPErrorKind::Hard(AMQPHardError::CONNECTIONFORCED));
        assert!(is_temporary(&hard));
        let io: lapin::Error = std::io::Error::other("reset").into();
        assert!(amqp("publish", io).is_temporary());
    }
}
