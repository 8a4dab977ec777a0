//! The infrastructure error type shared by every driver, and the task-outcome error type.

use std::time::Duration;

/// A boxed error kept as the `source` of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result alias used across machinery-rs.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in machinery-rs outside of a task's own outcome.
///
/// Messages are lowercase and never repeat their source; walk `source()` for the cause.
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
    /// Bytes could not be decoded into, or encoded from, the wire format.
    #[error("cannot decode {what}: {message}")]
    Decode {
        /// What was being decoded (`signature`, `task state`, ...).
        what: &'static str,
        /// Why it failed.
        message: String,
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

    /// Shorthand for a configuration error.
    pub fn config(key: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            key: key.into(),
            message: message.into(),
        }
    }

    /// Shorthand for a decode error.
    pub fn decode(what: &'static str, message: impl std::fmt::Display) -> Self {
        Error::Decode {
            what,
            message: message.to_string(),
        }
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
