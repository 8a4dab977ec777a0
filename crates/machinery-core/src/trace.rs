//! W3C trace context (`traceparent`) carried in `Signature.Headers`, so a task and every
//! task it causes (chains, chords, retries, callbacks) share one trace id in the logs.

use crate::Headers;

/// The header name.
pub const TRACEPARENT: &str = "traceparent";

fn random_hex(bytes: usize) -> String {
    // One uuid4 gives 122 random bits: enough for a span id (64) and, as two, a trace id (128).
    let a = uuid::Uuid::new_v4().as_u128();
    if bytes <= 8 {
        format!("{:016x}", a as u64)
    } else {
        let b = uuid::Uuid::new_v4().as_u128();
        format!("{:016x}{:016x}", a as u64, b as u64)
    }
}

/// Add a `traceparent` when there is none (a new trace).
pub(crate) fn inject(headers: &mut Headers) {
    if !headers.contains_key(TRACEPARENT) {
        headers.insert(
            TRACEPARENT.to_owned(),
            format!("00-{}-{}-01", random_hex(16), random_hex(8)).into(),
        );
    }
}

/// The trace id of a `traceparent` header, if present and well formed.
pub fn trace_id(headers: Option<&Headers>) -> Option<&str> {
    let tp = headers?.get(TRACEPARENT)?.as_str()?;
    let mut parts = tp.split('-');
    let _version = parts.next()?;
    let id = parts.next()?;
    (id.len() == 32).then_some(id)
}

/// Headers for a task caused by a task with `parent` headers: same trace id, new span id.
pub(crate) fn child_of(parent: Option<&Headers>, child: &mut Signature) {
    if let Some(id) = trace_id(parent) {
        let headers = child.headers.get_or_insert_with(Headers::new);
        if !headers.contains_key(TRACEPARENT) {
            headers.insert(
                TRACEPARENT.to_owned(),
                format!("00-{id}-{}-01", random_hex(8)).into(),
            );
        }
    }
}

use crate::Signature;
