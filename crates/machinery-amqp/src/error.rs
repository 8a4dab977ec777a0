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

/// A lapin error while doing `what`. The message carries the server's reply text when the
/// server refused (RabbitMQ's own explanation, e.g. `PRECONDITION_FAILED - message size ...
/// is larger than configured max size ...`), and for a 406 about a declaration
/// (`inequivalent arg`) says that it must match Go Machinery's.
pub(crate) fn amqp(what: impl Into<String>, e: lapin::Error) -> Error {
    let mut message = what.into();
    match e.kind() {
        ErrorKind::ProtocolError(amqp) => {
            let text = amqp.get_message().as_str();
            if text.is_empty() {
                message.push_str(&format!(": the server answered {}", amqp.get_id()));
            } else {
                message.push_str(&format!(": the server answered {} `{text}`", amqp.get_id()));
            }
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) && text.contains("inequivalent arg")
            {
                message.push_str(
                    " (the server has it declared with other flags or arguments; they must \
                     match Go Machinery's exactly, see the crate README)",
                );
            }
        }
        _ => message.push_str(&format!(": {e}")),
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
        protocol_with(kind, "text")
    }

    fn protocol_with(kind: AMQPErrorKind, text: &str) -> lapin::Error {
        ErrorKind::ProtocolError(AMQPError::new(kind, text.into())).into()
    }

    #[test]
    fn a_406_shows_the_servers_reply() {
        let size = protocol_with(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - message size 2097152 is larger than configured max size 1048576",
        );
        let e = amqp("publish to `x` with `q`", size).to_string();
        assert!(
            e.contains("message size 2097152 is larger than configured max size 1048576"),
            "{e}"
        );
        assert!(!e.contains("declared with other flags"), "{e}");
        let declare = protocol_with(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - inequivalent arg 'durable' for queue 'q' in vhost '/': \
             received 'false' but current is 'true'",
        );
        let e = amqp("declare queue `q`", declare).to_string();
        assert!(e.contains("inequivalent arg 'durable'"), "{e}");
        assert!(e.contains("declared with other flags"), "{e}");
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
