//! A fast path for decoding the task messages Go Machinery and this crate write: every field
//! in Go's order, no whitespace, no nested signatures, no ETA, strings without escapes.
//! Anything else (or anything this reader is not sure of) returns `None`, and the caller
//! decodes with serde_json's lenient path, which gives the same result for what this path
//! accepts (see the tests).

use serde_json::value::RawValue;

use crate::signature::{Arg, Headers, Signature};

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn lit(&mut self, s: &[u8]) -> Option<()> {
        let end = self.i + s.len();
        (self.b.get(self.i..end)? == s).then(|| self.i = end)
    }

    /// A string with no escape and no control byte, as borrowed UTF-8.
    fn str(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let start = self.i;
        let len = self.b[start..].iter().position(|&c| c == b'"')?;
        let s = &self.b[start..start + len];
        if s.iter().any(|&c| c < 0x20 || c == b'\\') {
            return None;
        }
        self.i = start + len + 1;
        std::str::from_utf8(s).ok()
    }

    fn string(&mut self) -> Option<String> {
        self.str().map(str::to_owned)
    }

    /// An integer as JSON writes it (`-?(0|[1-9][0-9]*)`), in i64 range.
    fn int(&mut self) -> Option<i64> {
        let start = self.i;
        if self.b.get(self.i) == Some(&b'-') {
            self.i += 1;
        }
        let digits = self.b[self.i..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        // No leading zero, and no `-0` (left to serde_json's own reading).
        if digits == 0 || (self.b[self.i] == b'0' && (digits > 1 || self.i > start)) {
            return None;
        }
        self.i += digits;
        if matches!(self.b.get(self.i), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        std::str::from_utf8(&self.b[start..self.i])
            .ok()?
            .parse()
            .ok()
    }

    fn bool(&mut self) -> Option<bool> {
        if self.lit(b"true").is_some() {
            Some(true)
        } else {
            self.lit(b"false").map(|()| false)
        }
    }

    fn null(&mut self) -> Option<()> {
        self.lit(b"null")
    }

    /// The extent of one JSON value (strings, objects and arrays matched; scalars up to the
    /// next `,` `]` `}`), unvalidated: the caller validates what it keeps.
    fn value_span(&mut self) -> Option<&'a [u8]> {
        let start = self.i;
        let (mut depth, mut in_str, mut escaped) = (0usize, false, false);
        while let Some(&c) = self.b.get(self.i) {
            if in_str {
                if escaped {
                    escaped = false;
                } else if c == b'\\' {
                    escaped = true;
                } else if c == b'"' {
                    in_str = false;
                    if depth == 0 {
                        self.i += 1;
                        return Some(&self.b[start..self.i]);
                    }
                }
                self.i += 1;
                continue;
            }
            match c {
                b'"' => in_str = true,
                b'{' | b'[' => depth += 1,
                b'}' | b']' if depth == 0 => break,
                b'}' | b']' => {
                    depth -= 1;
                    if depth == 0 {
                        self.i += 1;
                        return Some(&self.b[start..self.i]);
                    }
                }
                b',' if depth == 0 => break,
                _ => {}
            }
            self.i += 1;
        }
        (depth == 0 && !in_str && self.i > start).then(|| &self.b[start..self.i])
    }

    fn arg(&mut self) -> Option<Arg> {
        self.lit(b"{\"Name\":")?;
        let name = self.string()?;
        self.lit(b",\"Type\":")?;
        let type_name = self.string()?;
        self.lit(b",\"Value\":")?;
        let raw = std::str::from_utf8(self.value_span()?).ok()?;
        let value = RawValue::from_string(raw.to_owned()).ok()?;
        self.lit(b"}")?;
        Some(Arg {
            name,
            type_name,
            value,
        })
    }

    fn args(&mut self) -> Option<Vec<Arg>> {
        if self.null().is_some() {
            return Some(Vec::new());
        }
        self.lit(b"[")?;
        let mut args = Vec::new();
        if self.lit(b"]").is_some() {
            return Some(args);
        }
        loop {
            args.push(self.arg()?);
            if self.lit(b"]").is_some() {
                return Some(args);
            }
            self.lit(b",")?;
        }
    }

    fn headers(&mut self) -> Option<Option<Headers>> {
        if self.null().is_some() {
            return Some(None);
        }
        if self.b.get(self.i) != Some(&b'{') {
            return None;
        }
        let span = self.value_span()?;
        serde_json::from_slice(span).ok().map(Some)
    }
}

/// Decode a flat task message in Go's exact layout, or `None` (then use serde's path).
pub(crate) fn decode_flat_signature(bytes: &[u8]) -> Option<Signature> {
    let mut r = Reader { b: bytes, i: 0 };
    let mut s = Signature::default();
    r.lit(b"{\"UUID\":")?;
    s.uuid = r.string()?;
    r.lit(b",\"Name\":")?;
    s.name = r.string()?;
    r.lit(b",\"RoutingKey\":")?;
    s.routing_key = r.string()?;
    r.lit(b",\"ETA\":null,\"GroupUUID\":")?;
    s.group_uuid = r.string()?;
    r.lit(b",\"GroupTaskCount\":")?;
    s.group_task_count = r.int()?;
    r.lit(b",\"Args\":")?;
    s.args = r.args()?;
    r.lit(b",\"Headers\":")?;
    s.headers = r.headers()?;
    r.lit(b",\"Priority\":")?;
    s.priority = u8::try_from(r.int()?).ok()?;
    r.lit(b",\"Immutable\":")?;
    s.immutable = r.bool()?;
    r.lit(b",\"RetryCount\":")?;
    s.retry_count = r.int()?;
    r.lit(b",\"RetryTimeout\":")?;
    s.retry_timeout = r.int()?;
    r.lit(
        b",\"OnSuccess\":null,\"OnError\":null,\"ChordCallback\":null,\"BrokerMessageGroupId\":",
    )?;
    s.broker_message_group_id = r.string()?;
    r.lit(b",\"SQSReceiptHandle\":")?;
    s.sqs_receipt_handle = r.string()?;
    r.lit(b",\"StopTaskDeletionOnError\":")?;
    s.stop_task_deletion_on_error = r.bool()?;
    r.lit(b",\"IgnoreWhenTaskNotRegistered\":")?;
    s.ignore_when_task_not_registered = r.bool()?;
    r.lit(b"}")?;
    (r.i == bytes.len()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serde_path(bytes: &[u8]) -> Option<Signature> {
        serde_json::from_slice(bytes).ok()
    }

    /// What the fast path accepts, serde_json's path reads to the same signature.
    fn check(bytes: &[u8]) -> bool {
        match decode_flat_signature(bytes) {
            Some(fast) => {
                let slow = serde_path(bytes).unwrap_or_else(|| {
                    panic!(
                        "fast path accepted what serde refuses: {}",
                        String::from_utf8_lossy(bytes)
                    )
                });
                assert!(fast == slow, "{}", String::from_utf8_lossy(bytes));
                true
            }
            None => false,
        }
    }

    #[test]
    fn go_fixtures_read_the_same_both_ways() {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/go/signatures");
        let mut fast = 0;
        for entry in std::fs::read_dir(&dir).expect("fixtures") {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            let trimmed = bytes.trim_ascii_end();
            if check(trimmed) {
                fast += 1;
            }
        }
        assert!(fast >= 20, "only {fast} fixtures took the fast path");
    }

    #[test]
    fn encoded_signatures_read_the_same_both_ways() {
        let texts = ["", "add", "é ü 漢字 🦀", "a\"b", "<x>", "tab\there"];
        let mut fast = 0;
        for (i, text) in texts.iter().enumerate() {
            let mut sig = Signature::new(*text)
                .arg(i as i64)
                .arg(*text)
                .arg(vec![1.5_f64, -2.0])
                .arg(vec!["}]".to_owned(), "a,b\"{".to_owned()])
                .header("traceparent", *text)
                .header("n", serde_json::json!({"b": [1, null], "a": 2.5}));
            sig.routing_key = format!("q{i}");
            sig.group_task_count = -(i as i64) * 1_000_000_007;
            sig.priority = 200;
            sig.immutable = i % 2 == 0;
            sig.retry_count = i64::MAX - i as i64;
            sig.retry_timeout = i64::MIN + i as i64;
            sig.stop_task_deletion_on_error = i % 3 == 0;
            sig.ignore_when_task_not_registered = i % 2 == 1;
            let mut bare = Signature::new(*text);
            bare.headers = None;
            for s in [sig, bare] {
                let json = s.to_json().unwrap();
                assert_eq!(Signature::from_json(&json).unwrap(), s);
                if check(&json) {
                    fast += 1;
                }
            }
        }
        // Names with quotes, `<>` or a tab carry escapes: those six take serde's path.
        assert_eq!(fast, 6);
    }

    #[test]
    fn anything_unusual_takes_serde_path() {
        let base = String::from_utf8(Signature::new("add").arg(1_i64).to_json().unwrap()).unwrap();
        assert!(decode_flat_signature(base.as_bytes()).is_some());
        for (from, to) in [
            ("\"Priority\":0", "\"Priority\":256"),
            ("\"Priority\":0", "\"Priority\":-0"),
            ("\"Priority\":0", "\"Priority\":00"),
            ("\"RetryCount\":0", "\"RetryCount\":1.0"),
            ("\"RetryCount\":0", "\"RetryCount\":99999999999999999999"),
            ("\"ETA\":null", "\"ETA\":\"2030-01-01T00:00:00Z\""),
            ("\"OnSuccess\":null", "\"OnSuccess\":[]"),
            ("\"Name\":\"add\"", "\"Name\":\"a\\u0064d\""),
            ("\"Name\":\"add\"", "\"name\":\"add\""),
            ("\"Value\":1", "\"Value\":tru"),
            ("\"Value\":1", "\"Value\":[1,"),
            ("{\"UUID\"", " {\"UUID\""),
            ("\"Immutable\":false", "\"Immutable\":0"),
        ] {
            let changed = base.replacen(from, to, 1);
            assert_ne!(changed, base, "{from}");
            assert!(!check(changed.as_bytes()), "{changed}");
        }
        assert!(decode_flat_signature(format!("{base}x").as_bytes()).is_none());
        assert!(decode_flat_signature(format!("{base}\n").as_bytes()).is_none());
        assert!(decode_flat_signature(&base.as_bytes()[..base.len() - 1]).is_none());
    }
}
