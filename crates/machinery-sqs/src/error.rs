//! Mapping of the AWS SDK's errors to machinery's [`Error`].
//!
//! `SdkError`'s `Display` says only "service error"; the text here comes from
//! `DisplayErrorContext`, which walks the whole chain (code, message, request id).

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use machinery_core::Error;

pub(crate) const DRIVER: &str = "sqs";

/// Error codes SQS answers when the request itself is wrong: trying again cannot help.
const PERMANENT_CODES: &[&str] = &[
    "AWS.SimpleQueueService.NonExistentQueue",
    "QueueDoesNotExist",
    "InvalidParameterValue",
    "MissingParameter",
    "InvalidMessageContents",
    "InvalidAttributeName",
    "InvalidAttributeValue",
    "UnsupportedOperation",
    "AccessDenied",
    "AccessDeniedException",
    "InvalidClientTokenId",
    "UnrecognizedClientException",
    "InvalidAddress",
    "InvalidSecurity",
    "KmsAccessDenied",
    "BatchRequestTooLong",
    "TooManyEntriesInBatchRequest",
    "EmptyBatchRequest",
    "InvalidBatchEntryId",
    "BatchEntryIdsNotDistinct",
    "ReceiptHandleIsInvalid",
    "MessageNotInflight",
];

/// The service's error code, if the error is a service answer.
pub(crate) fn code<E, R>(e: &SdkError<E, R>) -> Option<&str>
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(se) => se.err().code(),
        _ => None,
    }
}

/// Whether the queue does not exist (typed or by code: moto and SQS differ).
pub(crate) fn is_missing_queue<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    matches!(
        code(e),
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" | "NonExistentQueue")
    )
}

/// Whether a later attempt may succeed: network, timeouts, throttling, 5xx.
pub(crate) fn is_temporary<E, R>(e: &SdkError<E, R>) -> bool
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::ServiceError(_) => !code(e).is_some_and(|c| PERMANENT_CODES.contains(&c)),
        SdkError::ConstructionFailure(_) => false,
        _ => true,
    }
}

/// An SDK error while doing `what`.
pub(crate) fn sdk<E, R>(what: impl Into<String>, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let temporary = is_temporary(&e);
    let message = format!("{}: {}", what.into(), DisplayErrorContext(&e));
    Error::backend(DRIVER, message, temporary, e)
}

/// An entry of a batch request that SQS refused.
pub(crate) fn batch_entry(
    what: &str,
    code: &str,
    message: Option<&str>,
    sender_fault: bool,
) -> Error {
    Error::Backend {
        driver: DRIVER,
        message: format!("{what}: {code}: {}", message.unwrap_or("")),
        temporary: !sender_fault,
        source: None,
    }
}

/// A failure without an SDK error behind it.
pub(crate) fn other(message: impl Into<String>, temporary: bool) -> Error {
    Error::Backend {
        driver: DRIVER,
        message: message.into(),
        temporary,
        source: None,
    }
}
