//! Mapping of gRPC statuses to machinery's [`Error`].

use gcloud_gax::grpc::{Code, Status};
use machinery_core::Error;

pub(crate) const DRIVER: &str = "pubsub";

/// Whether a later attempt may succeed: unavailable, timeouts, throttling, internal errors.
pub(crate) fn is_temporary(code: Code) -> bool {
    matches!(
        code,
        Code::Unavailable
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Aborted
            | Code::Internal
            | Code::Unknown
            | Code::Cancelled
    )
}

/// A gRPC status while doing `what`.
pub(crate) fn status(what: impl Into<String>, s: Status) -> Error {
    let temporary = is_temporary(s.code());
    let message = format!("{}: {:?}: {}", what.into(), s.code(), s.message());
    Error::backend(DRIVER, message, temporary, s)
}

/// A call that did not answer within the request timeout.
pub(crate) fn timeout(what: impl Into<String>, after: std::time::Duration) -> Error {
    other(format!("{}: no answer within {after:?}", what.into()), true)
}

/// A failure without a status behind it.
pub(crate) fn other(message: impl Into<String>, temporary: bool) -> Error {
    Error::Backend {
        driver: DRIVER,
        message: message.into(),
        temporary,
        source: None,
    }
}
