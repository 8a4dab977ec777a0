//! Mapping of `redis` client errors onto `machinery_core::Error`.

use machinery_core::Error;
use redis::{ErrorKind, RedisError, ServerErrorKind};

/// Driver name used in every error and capability report.
pub(crate) const DRIVER: &str = "redis";

/// Whether the server refused the credentials (a wrong password, or none where one is
/// required): retrying cannot help.
pub(crate) fn is_auth_error(e: &RedisError) -> bool {
    matches!(e.kind(), ErrorKind::AuthenticationFailed)
        || matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
}

/// Whether the same call may succeed later (connection trouble, server busy or failing over).
/// A refused password is not temporary, although the client would reconnect for it.
pub(crate) fn is_temporary(e: &RedisError) -> bool {
    if is_auth_error(e) {
        return false;
    }
    e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_unrecoverable_error()
        || e.is_cluster_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::BusyLoading
                    | ServerErrorKind::TryAgain
                    | ServerErrorKind::ClusterDown
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::ReadOnly
            ) | ErrorKind::ClusterConnectionNotFound
        )
}

/// Whether the connection the error came from is unusable and must be replaced.
pub(crate) fn is_connection_lost(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// `what` says what was being done (lowercase, no trailing period).
pub(crate) fn map(what: impl Into<String>, e: RedisError) -> Error {
    let temporary = is_temporary(&e);
    Error::backend(DRIVER, what, temporary, e)
}

/// The error for a server that cannot be reached at start, naming it without its password.
pub(crate) fn unreachable(display: &str, e: RedisError) -> Error {
    if is_auth_error(&e) {
        return Error::backend(
            DRIVER,
            format!(
                "cannot connect to {display}: the server refused the credentials (wrong password, or a password is required; give it in the URL, e.g. redis://:password@host:6379)"
            ),
            false,
            e,
        );
    }
    let temporary = is_temporary(&e);
    Error::backend(DRIVER, format!("cannot connect to {display}"), temporary, e)
}
