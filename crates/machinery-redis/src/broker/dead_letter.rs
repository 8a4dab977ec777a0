//! The dead-letter list `<queue>.dead`: one JSON entry per message set aside, with the reason.

use machinery_core::DeadLetter;
use serde::{Deserialize, Serialize};

/// One entry of `<queue>.dead`: a JSON object
/// `{"queue":"…","reason":"…","dead_at":"<RFC 3339>","consumer":"<consumer id>","body":"<message>"}`,
/// with `body_base64` instead of `body` when the message is not UTF-8.
#[derive(Serialize, Deserialize)]
pub(super) struct DeadLetterEntry {
    queue: String,
    reason: String,
    dead_at: String,
    consumer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

impl DeadLetterEntry {
    pub(super) fn encode(queue: &str, consumer: &str, reason: &str, raw: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let (body, body_base64) = match std::str::from_utf8(raw) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ),
        };
        let entry = DeadLetterEntry {
            queue: queue.to_owned(),
            reason: reason.to_owned(),
            dead_at: machinery_core::time::format(&machinery_core::time::now()),
            consumer: consumer.to_owned(),
            body,
            body_base64,
        };
        serde_json::to_vec(&entry).unwrap_or_default()
    }

    pub(super) fn decode(raw: &[u8]) -> DeadLetter {
        use base64::Engine as _;
        match serde_json::from_slice::<DeadLetterEntry>(raw) {
            Ok(e) => {
                let body = match (e.body, e.body_base64) {
                    (Some(b), _) => b.into_bytes(),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default(),
                    (None, None) => Vec::new(),
                };
                DeadLetter {
                    body,
                    reason: e.reason,
                }
            }
            Err(err) => DeadLetter {
                body: raw.to_vec(),
                reason: format!("unreadable dead-letter entry: {err}"),
            },
        }
    }
}
