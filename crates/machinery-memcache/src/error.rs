//! Mapping of `memcache` client errors onto `machinery_core::Error`.

use machinery_core::Error;
use memcache::exp::Error as McError;

/// Driver name used in every error and capability report.
pub(crate) const DRIVER: &str = "memcache";

/// Whether the same request can simply be sent again: it was definitely not applied
/// (the connection was refused, reset or timed out before the request was written).
pub(crate) fn is_retryable(e: &McError) -> bool {
    e.is_retryable()
}

/// Whether trying again later may succeed: connection trouble (including a request whose
/// outcome is unknown), a server error (out of memory) or lost CAS races.
pub(crate) fn is_temporary(e: &McError) -> bool {
    matches!(
        e,
        McError::Io(_)
            | McError::Timeout { .. }
            | McError::Ambiguous { .. }
            | McError::Server(_)
            | McError::Conflict
    )
}

/// `what` says what was being done (lowercase, no trailing period); `server` is the
/// `host:port` the key lives on.
pub(crate) fn map(what: &str, server: &str, e: McError) -> Error {
    let temporary = is_temporary(&e);
    Error::backend(
        DRIVER,
        format!("cannot {what} on memcached {server}"),
        temporary,
        e,
    )
}

/// A non-client failure (lost races, a server that answered nonsense), temporary or not.
pub(crate) fn plain(message: impl Into<String>, temporary: bool) -> Error {
    Error::Backend {
        driver: DRIVER,
        message: message.into(),
        temporary,
        source: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_trouble_is_temporary_and_names_the_server() {
        let io = McError::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert!(is_retryable(&io));
        let err = map("read a", "127.0.0.1:1", io);
        assert!(err.is_temporary());
        assert!(err.to_string().contains("127.0.0.1:1"), "{err}");
        let rejected = map("write b", "h:2", McError::Rejected("bad".into()));
        assert!(!rejected.is_temporary());
    }
}
