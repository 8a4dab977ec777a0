//! Helpers shared by the cases.

use std::time::Duration;

use futures::StreamExt;
use machinery_core::{
    Arg, ConsumeOptions, Delivery, DeliveryStream, Error, Payload, Signature, TaskResult,
};
use serde_json::value::RawValue;
use tokio::time::Instant;

/// A raw JSON value from text that is known to be valid.
pub(crate) fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).expect("valid json literal")
}

/// An argument with a Go type and a JSON literal.
pub(crate) fn arg(type_name: &str, json: &str) -> Arg {
    Arg::raw(type_name, raw(json))
}

/// A result with a Go type and a JSON literal.
pub(crate) fn result(type_name: &str, json: &str) -> TaskResult {
    TaskResult {
        type_name: type_name.to_owned(),
        value: raw(json),
    }
}

/// Consumer options with this prefetch.
pub(crate) fn options(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        consumer_tag: "machinery-testkit".to_owned(),
    }
}

/// A plain task signature for `queue`.
pub(crate) fn task(queue: &str, name: &str) -> Signature {
    Signature::new(name).routing_key(queue)
}

/// The next delivery, skipping (and reporting) transient stream errors.
///
/// # Panics
/// When nothing arrives within `within` or the stream ends.
pub(crate) async fn recv(stream: &mut DeliveryStream, within: Duration, what: &str) -> Delivery {
    let deadline = Instant::now() + within;
    let mut last_error: Option<Error> = None;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(d))) => return d,
            Ok(Some(Err(e))) => {
                eprintln!("{what}: consumer stream reported an error (continuing): {e}");
                last_error = Some(e);
            }
            Ok(None) => panic!("{what}: the consumer stream ended"),
            Err(_) => panic!(
                "{what}: nothing was delivered within {within:?} (last stream error: {last_error:?})"
            ),
        }
    }
}

/// Like [`recv`], and the delivery must be a decoded signature.
pub(crate) async fn recv_task(
    stream: &mut DeliveryStream,
    within: Duration,
    what: &str,
) -> (Delivery, Signature) {
    let d = recv(stream, within, what).await;
    match &d.payload {
        Payload::Task(sig) => {
            let sig = (**sig).clone();
            (d, sig)
        }
        Payload::Malformed { reason, .. } => {
            panic!("{what}: expected a signature, got a malformed body ({reason})")
        }
    }
}

/// Watch the stream for `quiet` and fail if anything is delivered.
pub(crate) async fn expect_nothing(stream: &mut DeliveryStream, quiet: Duration, what: &str) {
    let deadline = Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, stream.next()).await {
            Ok(Some(Ok(d))) => panic!("{what}: unexpected delivery {:?}", d.payload),
            Ok(Some(Err(e))) => eprintln!("{what}: consumer stream reported an error: {e}"),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Assert that `result` is [`Error::Unsupported`], the answer a driver gives for a capability
/// it reports as false.
pub(crate) fn assert_unsupported<T: std::fmt::Debug>(
    result: machinery_core::Result<T>,
    operation: &str,
) {
    match result {
        Err(Error::Unsupported { .. }) => {}
        other => panic!(
            "{operation}: the capability is false, so the call must return Error::Unsupported, got {other:?}"
        ),
    }
}
