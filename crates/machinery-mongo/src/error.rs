//! Mapping of `mongodb` client errors onto `machinery_core::Error`.

use machinery_core::Error;
use mongodb::error::{
    Error as MongoError, ErrorKind, RETRYABLE_ERROR, RETRYABLE_WRITE_ERROR,
    SYSTEM_OVERLOADED_ERROR, TRANSIENT_TRANSACTION_ERROR, WriteFailure,
};

/// Driver name used in every error and capability report.
pub(crate) const DRIVER: &str = "mongodb";

/// Server codes after which the same call may succeed later: the node is not (or no longer)
/// the primary, is recovering or shutting down, the network or a time limit failed, or the
/// write conflicted with another.
const TEMPORARY_CODES: &[i32] = &[
    6,     // HostUnreachable
    7,     // HostNotFound
    24,    // LockTimeout
    46,    // LockBusy
    50,    // MaxTimeMSExpired
    89,    // NetworkTimeout
    91,    // ShutdownInProgress
    112,   // WriteConflict
    117,   // ConflictingOperationInProgress
    133,   // FailedToSatisfyReadPreference
    134,   // ReadConcernMajorityNotAvailableYet
    189,   // PrimarySteppedDown
    202,   // NetworkInterfaceExceededTimeLimit
    262,   // ExceededTimeLimit
    9001,  // SocketException
    10107, // NotWritablePrimary
    11600, // InterruptedAtShutdown
    11602, // InterruptedDueToReplStateChange
    13435, // NotPrimaryNoSecondaryOk
    13436, // NotPrimaryOrSecondary
    64,    // WriteConcernFailed (wtimeout)
];

/// Server codes for a document over the 16 MiB BSON limit.
pub(crate) const TOO_LARGE_CODES: &[i32] = &[10334, 17419, 17420, 2];

/// The server's error code, if the error came from the server.
pub(crate) fn code(e: &MongoError) -> Option<i32> {
    match e.kind.as_ref() {
        ErrorKind::Command(c) => Some(c.code),
        ErrorKind::Write(WriteFailure::WriteError(w)) => Some(w.code),
        ErrorKind::Write(WriteFailure::WriteConcernError(w)) => Some(w.code),
        _ => None,
    }
}

/// Whether the same call may succeed later (network, no primary, timeouts, server busy).
pub(crate) fn is_temporary(e: &MongoError) -> bool {
    let by_kind = matches!(
        e.kind.as_ref(),
        ErrorKind::Io(_)
            | ErrorKind::ConnectionPoolCleared { .. }
            | ErrorKind::ServerSelection { .. }
            | ErrorKind::DnsResolve { .. }
            | ErrorKind::Shutdown
    );
    by_kind
        || [
            RETRYABLE_WRITE_ERROR,
            RETRYABLE_ERROR,
            TRANSIENT_TRANSACTION_ERROR,
            SYSTEM_OVERLOADED_ERROR,
        ]
        .iter()
        .any(|l| e.contains_label(l))
        || code(e).is_some_and(|c| TEMPORARY_CODES.contains(&c))
}

/// `what` says what was being done (lowercase, no trailing period).
pub(crate) fn map(what: impl Into<String>, e: MongoError) -> Error {
    let temporary = is_temporary(&e);
    Error::backend(DRIVER, what, temporary, e)
}

/// A permanent error without a client error behind it.
pub(crate) fn permanent(what: impl Into<String>) -> Error {
    Error::Backend {
        driver: DRIVER,
        message: what.into(),
        temporary: false,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> MongoError {
        MongoError::from(std::io::Error::from(kind))
    }

    #[test]
    fn network_trouble_is_temporary() {
        assert!(is_temporary(&io(std::io::ErrorKind::ConnectionReset)));
        assert!(is_temporary(&io(std::io::ErrorKind::TimedOut)));
        assert!(map("x", io(std::io::ErrorKind::BrokenPipe)).is_temporary());
    }

    #[test]
    fn bad_input_is_permanent() {
        let e = MongoError::custom("a caller's mistake");
        assert!(!is_temporary(&e));
        assert!(!permanent("too large").is_temporary());
    }
}
