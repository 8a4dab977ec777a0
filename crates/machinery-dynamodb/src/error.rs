//! Mapping of AWS SDK errors onto `machinery_core::Error`.

use std::error::Error as StdError;

use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use machinery_core::Error;

/// Driver name used in every error and capability report.
pub(crate) const DRIVER: &str = "dynamodb";

/// Error codes that say "slow down" or "the service is briefly unwell": the same call may
/// succeed later.
const TEMPORARY_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "LimitExceededException",
    "InternalServerError",
    "InternalFailure",
    "ServiceUnavailable",
    "TransactionInProgressException",
];

/// Whether the same call may succeed later: throttling, timeouts, connection trouble and
/// 5xx answers. Every other service error (validation, missing table, access denied) is
/// permanent.
pub(crate) fn is_temporary<E: ProvideErrorMetadata>(e: &SdkError<E, HttpResponse>) -> bool {
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(se) => {
            se.raw().status().as_u16() >= 500
                || se
                    .err()
                    .code()
                    .is_some_and(|c| TEMPORARY_CODES.contains(&c))
        }
        _ => false,
    }
}

/// `what` says what was being done (lowercase, no trailing period).
pub(crate) fn map<E>(what: impl Into<String>, e: SdkError<E, HttpResponse>) -> Error
where
    E: ProvideErrorMetadata + StdError + Send + Sync + 'static,
{
    let temporary = is_temporary(&e);
    let message = format!("{}: {}", what.into(), DisplayErrorContext(&e));
    Error::backend(DRIVER, message, temporary, e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_dynamodb::error::ErrorMetadata;
    use aws_sdk_dynamodb::operation::get_item::GetItemError;
    use aws_smithy_types::body::SdkBody;

    fn service_error(code: &str, status: u16) -> SdkError<GetItemError, HttpResponse> {
        let err = GetItemError::generic(ErrorMetadata::builder().code(code).message("m").build());
        let raw = HttpResponse::new(status.try_into().unwrap(), SdkBody::empty());
        SdkError::service_error(err, raw)
    }

    #[test]
    fn throttling_and_5xx_are_temporary_the_rest_permanent() {
        for code in [
            "ProvisionedThroughputExceededException",
            "ThrottlingException",
            "RequestLimitExceeded",
        ] {
            let e = map("read", service_error(code, 400));
            assert!(e.is_temporary(), "{code}");
            assert!(e.to_string().contains(code), "{e}");
        }
        assert!(map("read", service_error("InternalServerError", 500)).is_temporary());
        assert!(map("read", service_error("Whatever", 503)).is_temporary());
        for code in [
            "ValidationException",
            "ResourceNotFoundException",
            "AccessDeniedException",
        ] {
            assert!(
                !map("read", service_error(code, 400)).is_temporary(),
                "{code}"
            );
        }
    }
}
