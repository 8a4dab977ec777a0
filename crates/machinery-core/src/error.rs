//! The infrastructure error type shared by every driver, and the task-outcome error type.

use std::time::Duration;

/// A boxed error kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across machinery-rs.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in machinery-rs outside of a task's own outcome.
///
/// Messages are lowercase. Each variant is a kind (in the manner of OpenDAL's error kinds):
/// match on it to decide what to do, read `source()` for the typed cause (the client's error,
/// `serde_json::Error`, `std::io::Error`, a task's `JoinError`). Decode, encode and config
/// messages include their cause's text so that a single `Display` line is enough to act on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A configuration value is missing or invalid.
    #[error("invalid configuration `{key}`: {message}")]
    Config {
        /// The configuration key (YAML name) that is wrong.
        key: String,
        /// What is wrong with it.
        message: String,
        /// The underlying error (file read, YAML or number parse), when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A URL names a scheme that no enabled driver understands.
    #[error("unsupported url scheme `{scheme}`: {hint}")]
    UnknownScheme {
        /// The scheme as written.
        scheme: String,
        /// What to do about it (for example which cargo feature to enable).
        hint: String,
    },
    /// The driver cannot do this operation at all (see its capability struct).
    #[error("{driver} does not support {operation}")]
    Unsupported {
        /// Driver name, e.g. `redis`.
        driver: &'static str,
        /// Operation name, e.g. `pending_tasks`.
        operation: &'static str,
    },
    /// Talking to the server failed (network, protocol, server error).
    #[error("{driver}: {message}")]
    Backend {
        /// Driver name.
        driver: &'static str,
        /// What was being done.
        message: String,
        /// Whether trying again later may succeed.
        temporary: bool,
        /// The client's error.
        #[source]
        source: Option<BoxError>,
    },
    /// Bytes could not be decoded from the wire format (a message, a stored state).
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded (`signature`, `task state`, ...).
        what: &'static str,
        /// Why it failed.
        message: String,
        /// The decoder's error (e.g. `serde_json::Error` with line and column), when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A value could not be encoded to the wire format.
    #[error("cannot encode {what}: {message}")]
    Encode {
        /// What was being encoded.
        what: &'static str,
        /// Why it failed.
        message: String,
        /// The encoder's error, when there is one.
        #[source]
        source: Option<BoxError>,
    },
    /// A message exceeds a size limit.
    #[error("{what} is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// A task name is not registered with this server.
    #[error("task `{0}` is not registered")]
    TaskNotRegistered(String),
    /// No state was found for a task that was expected to have one.
    #[error("no state stored for `{0}`")]
    NotFound(String),
    /// A group is unknown to the result backend (never initialised, purged or expired).
    #[error(
        "group `{0}` is not stored in the result backend (never initialised, purged or expired)"
    )]
    GroupNotFound(String),
    /// Waiting for something took longer than allowed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The task ended in FAILURE; the text is the task's error.
    #[error("task failed: {0}")]
    TaskFailed(String),
    /// The worker was told to quit at once (second signal or `WorkerHandle::abort`).
    #[error("worker aborted")]
    Aborted,
    /// The component was closed or shut down.
    #[error("{0} is closed")]
    Closed(&'static str),
}

impl Error {
    /// Whether trying the same operation again later may succeed (connection lost, timeout).
    pub fn is_temporary(&self) -> bool {
        match self {
            Error::Backend { temporary, .. } => *temporary,
            Error::Timeout(_) => true,
            _ => false,
        }
    }

    /// Shorthand for a driver I/O error.
    pub fn backend(
        driver: &'static str,
        message: impl Into<String>,
        temporary: bool,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            driver,
            message: message.into(),
            temporary,
            source: Some(source.into()),
        }
    }

    /// Shorthand for a configuration error with no underlying error.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
            source: None,
        }
    }

    /// A configuration error caused by `source` (its text is appended to `message`).
    pub fn config_caused(
        key: impl Into<String>,
        message: impl std::fmt::Display,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Config {
            key: key.into(),
            message: format!("{message}: {source}"),
            source: Some(Box::new(source)),
        }
    }

    /// A decode error described by `message` alone (no underlying error).
    pub fn decode(what: &'static str, message: impl std::fmt::Display) -> Self {
        Error::Decode {
            what,
            message: message.to_string(),
            source: None,
        }
    }

    /// A decode error caused by `source` (e.g. a `serde_json::Error`), kept as `source()`.
    pub fn decode_caused(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Decode {
            what,
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// An encode error caused by `source`, kept as `source()`.
    pub fn encode_caused(
        what: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        Error::Encode {
            what,
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// Whether this says that a task state or a group is not stored.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_) | Error::GroupNotFound(_))
    }
}

/// The outcome of a task that did not succeed. Kept apart from [`Error`]: it is the task's
/// business, not the infrastructure's.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TaskError {
    /// An ordinary failure: retried while `RetryCount` > 0, then FAILURE.
    #[error("{0}")]
    Failed(String),
    /// Ask to run the task again after `after` (Go's `ErrRetryTaskLater`).
    #[error("{message}")]
    RetryLater {
        /// The error text (kept out of the RETRY state, as Go does).
        message: String,
        /// How long to wait before the next attempt.
        after: Duration,
    },
    /// A failure that must not be retried whatever `RetryCount` says.
    #[error("{0}")]
    Fatal(String),
}

impl TaskError {
    /// A plain failure with this text.
    pub fn failed(message: impl std::fmt::Display) -> Self {
        TaskError::Failed(message.to_string())
    }

    /// Run again after `after`.
    pub fn retry_later(message: impl std::fmt::Display, after: Duration) -> Self {
        TaskError::RetryLater {
            message: message.to_string(),
            after,
        }
    }

    /// Fail without retrying.
    pub fn fatal(message: impl std::fmt::Display) -> Self {
        TaskError::Fatal(message.to_string())
    }

    /// The error text stored in the FAILURE state.
    pub fn message(&self) -> &str {
        match self {
            TaskError::Failed(m) | TaskError::Fatal(m) => m,
            TaskError::RetryLater { message, .. } => message,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn decode_keeps_its_cause() {
        let cause = serde_json::from_slice::<serde_json::Value>(b"{oops").unwrap_err();
        let line = cause.line();
        let err = Error::decode_caused("signature", cause);
        assert!(
            err.to_string().starts_with("cannot decode signature: "),
            "{err}"
        );
        let source = err.source().expect("decode keeps its source");
        let json = source
            .downcast_ref::<serde_json::Error>()
            .expect("the source is the serde_json error");
        assert_eq!(json.line(), line);
    }

    #[test]
    fn encode_is_not_decode() {
        let err = Error::encode_caused("task state", std::fmt::Error);
        assert!(
            err.to_string().starts_with("cannot encode task state"),
            "{err}"
        );
        assert!(matches!(err, Error::Encode { .. }));
        assert!(err.source().is_some());
    }

    #[test]
    fn config_keeps_its_cause() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let err = Error::config_caused("<file>", "cannot read machinery.yml", io);
        assert_eq!(
            err.to_string(),
            "invalid configuration `<file>`: cannot read machinery.yml: no such file"
        );
        let io = err
            .source()
            .and_then(|s| s.downcast_ref::<std::io::Error>());
        assert_eq!(
            io.map(std::io::Error::kind),
            Some(std::io::ErrorKind::NotFound)
        );
    }

    #[test]
    fn an_unknown_group_says_group() {
        let err = Error::GroupNotFound("group_1".into());
        assert!(
            err.to_string().starts_with("group `group_1` is not stored"),
            "{err}"
        );
        assert!(err.is_not_found());
        assert!(!err.to_string().contains("no state stored"), "{err}");
    }
}
