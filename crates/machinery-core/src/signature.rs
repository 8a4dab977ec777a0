//! The task message: [`Signature`] and its [`Arg`]s, encoded exactly as Go Machinery does.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::gostruct::go_deserialize;
use crate::time::Timestamp;
use crate::types::{ArgError, FromGoValue, GoValue, IntoGoValue};
use crate::{Error, Result, json};

/// Trace and user headers carried with a task (`Signature.Headers`). Keys are kept sorted,
/// as Go writes them.
pub type Headers = BTreeMap<String, serde_json::Value>;

/// A new task UUID: `task_` + uuid4.
pub fn new_task_uuid() -> String {
    format!("task_{}", uuid::Uuid::new_v4())
}

/// A new group UUID: `group_` + uuid4.
pub fn new_group_uuid() -> String {
    format!("group_{}", uuid::Uuid::new_v4())
}

/// A new chord callback UUID: `chord_` + uuid4.
pub fn new_chord_uuid() -> String {
    format!("chord_{}", uuid::Uuid::new_v4())
}

/// One task argument: a Go type name and a JSON value.
///
/// The value is kept as the exact JSON text it arrived as, so a message decoded from Go and
/// encoded again is byte-identical, and conversion follows Go's rules for the `Type`.
#[derive(Debug, Clone, Serialize)]
pub struct Arg {
    /// Optional argument name (carried on the wire, unused by Go).
    #[serde(rename = "Name")]
    pub name: String,
    /// Go type name, e.g. `int64`, `[]string`.
    #[serde(rename = "Type")]
    pub type_name: String,
    /// The JSON value, exactly as written.
    #[serde(rename = "Value")]
    pub value: Box<RawValue>,
}

impl PartialEq for Arg {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.type_name == other.type_name
            && self.value.get() == other.value.get()
    }
}

impl Default for Arg {
    fn default() -> Self {
        Arg {
            name: String::new(),
            type_name: String::new(),
            value: json::raw_null(),
        }
    }
}

impl Arg {
    /// An unnamed argument from a Rust value (`1i64`, `"text"`, `vec![1.5f64]`, ...).
    pub fn new(value: impl IntoGoValue) -> Self {
        let v = value.into_go_value();
        Arg {
            name: String::new(),
            type_name: v.type_name().to_owned(),
            value: v.to_raw(),
        }
    }

    /// An argument with a Go type name and a raw JSON value, unchecked.
    pub fn raw(type_name: impl Into<String>, value: Box<RawValue>) -> Self {
        Arg {
            name: String::new(),
            type_name: type_name.into(),
            value,
        }
    }

    /// Set the argument's name.
    pub fn named(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Convert by the `Type` string with Go's acceptance rules.
    ///
    /// # Errors
    /// When the type is unsupported or the value does not fit it.
    pub fn decode(&self) -> Result<GoValue, ArgError> {
        GoValue::decode(&self.type_name, &self.value)
    }

    /// Convert to a plain Rust type.
    ///
    /// # Errors
    /// When the value does not convert (see [`Arg::decode`]) or does not fit `T`.
    pub fn get<T: FromGoValue>(&self) -> Result<T, ArgError> {
        T::from_go_value(self.decode()?)
    }
}

impl<'de> serde::Deserialize<'de> for Arg {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Arg;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an Arg object")
            }
            fn visit_unit<E: serde::de::Error>(self) -> std::result::Result<Arg, E> {
                Ok(Arg::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Arg, A::Error> {
                let mut out = Arg::default();
                while let Some(key) = map.next_key::<crate::gostruct::Key<'de>>()? {
                    let key = key.as_str();
                    if key.eq_ignore_ascii_case("Name") {
                        if let Some(v) = map.next_value::<Option<String>>()? {
                            out.name = v;
                        }
                    } else if key.eq_ignore_ascii_case("Type") {
                        if let Some(v) = map.next_value::<Option<String>>()? {
                            out.type_name = v;
                        }
                    } else if key.eq_ignore_ascii_case("Value") {
                        out.value = map.next_value::<Box<RawValue>>()?;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(out)
            }
        }
        d.deserialize_any(V)
    }
}

/// A task message: what to run, with which arguments, and what follows it.
///
/// Field order and JSON names are Go Machinery's `tasks.Signature`; see WIRE.md section 1.
///
/// Every operation on a signature (decode, encode, clone, compare, drop, `Debug`) works at
/// any nesting depth without overflowing the thread's stack: a chain of 10 000 links is
/// 10 000 nested `OnSuccess` levels.
#[derive(Default, Serialize)]
pub struct Signature {
    /// `task_<uuid4>` (or `chord_<uuid4>` for chord callbacks); generated when empty.
    #[serde(rename = "UUID")]
    pub uuid: String,
    /// The registered task name.
    #[serde(rename = "Name")]
    pub name: String,
    /// Queue / routing key; empty = the broker's default.
    #[serde(rename = "RoutingKey")]
    pub routing_key: String,
    /// Run no earlier than this; `None` or past = now.
    #[serde(rename = "ETA", serialize_with = "crate::time::serialize_opt")]
    pub eta: Option<Timestamp>,
    /// `group_<uuid4>` for group members.
    #[serde(rename = "GroupUUID")]
    pub group_uuid: String,
    /// Size of the group this task belongs to.
    #[serde(rename = "GroupTaskCount")]
    pub group_task_count: i64,
    /// Positional arguments.
    #[serde(rename = "Args", serialize_with = "nil_if_empty")]
    pub args: Vec<Arg>,
    /// Headers (trace context); `None` is Go's nil map.
    #[serde(rename = "Headers")]
    pub headers: Option<Headers>,
    /// AMQP priority, 0..=255.
    #[serde(rename = "Priority")]
    pub priority: u8,
    /// When false, this task's results are appended to each `on_success` signature's args.
    #[serde(rename = "Immutable")]
    pub immutable: bool,
    /// Retries left.
    #[serde(rename = "RetryCount")]
    pub retry_count: i64,
    /// Seconds; seed of the Fibonacci back-off.
    #[serde(rename = "RetryTimeout")]
    pub retry_timeout: i64,
    /// Sent after success (a chain is nested `on_success`).
    #[serde(rename = "OnSuccess", serialize_with = "nil_if_empty")]
    pub on_success: Vec<Signature>,
    /// Sent after the final failure with the error text prepended as a `string` arg.
    #[serde(rename = "OnError", serialize_with = "nil_if_empty")]
    pub on_error: Vec<Signature>,
    /// The chord callback, embedded in every member of a chord's group.
    #[serde(rename = "ChordCallback", serialize_with = "grow_opt")]
    pub chord_callback: Option<Box<Signature>>,
    /// SQS FIFO MessageGroupId.
    #[serde(rename = "BrokerMessageGroupId")]
    pub broker_message_group_id: String,
    /// Filled by the SQS consumer.
    #[serde(rename = "SQSReceiptHandle")]
    pub sqs_receipt_handle: String,
    /// SQS: leave the message on final failure (redrive / DLQ).
    #[serde(rename = "StopTaskDeletionOnError")]
    pub stop_task_deletion_on_error: bool,
    /// Unknown task name: drop instead of requeue.
    #[serde(rename = "IgnoreWhenTaskNotRegistered")]
    pub ignore_when_task_not_registered: bool,
}

fn nil_if_empty<S: serde::Serializer, T: Serialize>(
    v: &[T],
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    if v.is_empty() {
        s.serialize_none()
    } else {
        grow(|| v.serialize(s))
    }
}

fn grow_opt<S: serde::Serializer>(
    v: &Option<Box<Signature>>,
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    match v {
        None => s.serialize_none(),
        Some(v) => grow(|| v.serialize(s)),
    }
}

/// JSON nesting accepted in a task message: a chain of 10 000 links nests about 20 000
/// levels (an object and its `OnSuccess` array per link). Go's decoder stops at 10 000
/// levels; deeper messages are malformed here, with the depth in the reason.
pub const MAX_JSON_NESTING: usize = 20_100;

/// Run `f` on a stack with at least 64 KiB left, switching to a new 1 MiB heap segment when
/// the thread's own stack runs low: recursion over nested signatures never overflows.
pub(crate) fn grow<R>(f: impl FnOnce() -> R) -> R {
    stacker::maybe_grow(64 * 1024, 1024 * 1024, f)
}

/// The deepest nesting of arrays and objects in JSON text (strings are skipped).
pub(crate) fn json_nesting(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_str, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

impl Clone for Signature {
    fn clone(&self) -> Self {
        grow(|| Signature {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            routing_key: self.routing_key.clone(),
            eta: self.eta,
            group_uuid: self.group_uuid.clone(),
            group_task_count: self.group_task_count,
            args: self.args.clone(),
            headers: self.headers.clone(),
            priority: self.priority,
            immutable: self.immutable,
            retry_count: self.retry_count,
            retry_timeout: self.retry_timeout,
            on_success: self.on_success.clone(),
            on_error: self.on_error.clone(),
            chord_callback: self.chord_callback.clone(),
            broker_message_group_id: self.broker_message_group_id.clone(),
            sqs_receipt_handle: self.sqs_receipt_handle.clone(),
            stop_task_deletion_on_error: self.stop_task_deletion_on_error,
            ignore_when_task_not_registered: self.ignore_when_task_not_registered,
        })
    }
}

impl PartialEq for Signature {
    fn eq(&self, other: &Self) -> bool {
        self.uuid == other.uuid
            && self.name == other.name
            && self.routing_key == other.routing_key
            && self.eta == other.eta
            && self.group_uuid == other.group_uuid
            && self.group_task_count == other.group_task_count
            && self.args == other.args
            && self.headers == other.headers
            && self.priority == other.priority
            && self.immutable == other.immutable
            && self.retry_count == other.retry_count
            && self.retry_timeout == other.retry_timeout
            && self.broker_message_group_id == other.broker_message_group_id
            && self.sqs_receipt_handle == other.sqs_receipt_handle
            && self.stop_task_deletion_on_error == other.stop_task_deletion_on_error
            && self.ignore_when_task_not_registered == other.ignore_when_task_not_registered
            && grow(|| {
                self.on_success == other.on_success
                    && self.on_error == other.on_error
                    && self.chord_callback == other.chord_callback
            })
    }
}

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        grow(|| {
            f.debug_struct("Signature")
                .field("uuid", &self.uuid)
                .field("name", &self.name)
                .field("routing_key", &self.routing_key)
                .field("eta", &self.eta)
                .field("group_uuid", &self.group_uuid)
                .field("group_task_count", &self.group_task_count)
                .field("args", &self.args)
                .field("headers", &self.headers)
                .field("priority", &self.priority)
                .field("immutable", &self.immutable)
                .field("retry_count", &self.retry_count)
                .field("retry_timeout", &self.retry_timeout)
                .field("on_success", &self.on_success)
                .field("on_error", &self.on_error)
                .field("chord_callback", &self.chord_callback)
                .field("broker_message_group_id", &self.broker_message_group_id)
                .field("sqs_receipt_handle", &self.sqs_receipt_handle)
                .field(
                    "stop_task_deletion_on_error",
                    &self.stop_task_deletion_on_error,
                )
                .field(
                    "ignore_when_task_not_registered",
                    &self.ignore_when_task_not_registered,
                )
                .finish()
        })
    }
}

go_deserialize!(Signature, "a Signature object", {
    uuid => "UUID",
    name => "Name",
    routing_key => "RoutingKey",
    eta => "ETA",
    group_uuid => "GroupUUID",
    group_task_count => "GroupTaskCount",
    args => "Args",
    headers => "Headers",
    priority => "Priority",
    immutable => "Immutable",
    retry_count => "RetryCount",
    retry_timeout => "RetryTimeout",
    on_success => "OnSuccess",
    on_error => "OnError",
    chord_callback => "ChordCallback",
    broker_message_group_id => "BrokerMessageGroupId",
    sqs_receipt_handle => "SQSReceiptHandle",
    stop_task_deletion_on_error => "StopTaskDeletionOnError",
    ignore_when_task_not_registered => "IgnoreWhenTaskNotRegistered",
});

impl Signature {
    /// A signature for task `name` with a fresh `task_` UUID and no arguments.
    pub fn new(name: impl Into<String>) -> Self {
        Signature {
            uuid: new_task_uuid(),
            name: name.into(),
            ..Signature::default()
        }
    }

    /// Append an argument converted from a Rust value.
    pub fn arg(mut self, value: impl IntoGoValue) -> Self {
        self.args.push(Arg::new(value));
        self
    }

    /// Replace the arguments.
    pub fn with_args(mut self, args: Vec<Arg>) -> Self {
        self.args = args;
        self
    }

    /// Set the routing key (queue).
    pub fn routing_key(mut self, key: impl Into<String>) -> Self {
        self.routing_key = key.into();
        self
    }

    /// Run no earlier than `eta`.
    pub fn eta(mut self, eta: Timestamp) -> Self {
        self.eta = Some(eta);
        self
    }

    /// Run no earlier than `delay` from now (saturating at [`crate::time::latest`]).
    pub fn delay(self, delay: Duration) -> Self {
        self.eta(crate::time::after(delay))
    }

    /// Retry up to `count` times with a Fibonacci back-off seeded by `timeout_secs`.
    pub fn retries(mut self, count: i64, timeout_secs: i64) -> Self {
        self.retry_count = count;
        self.retry_timeout = timeout_secs;
        self
    }

    /// Set the AMQP priority.
    pub fn priority(mut self, priority: u8) -> Self {
        self.priority = priority;
        self
    }

    /// Do not append this task's results to its `on_success` signatures.
    pub fn immutable(mut self, immutable: bool) -> Self {
        self.immutable = immutable;
        self
    }

    /// Set one header.
    pub fn header(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.headers
            .get_or_insert_with(Headers::new)
            .insert(key.into(), value.into());
        self
    }

    /// Add a signature to send after success.
    pub fn on_success(mut self, sig: Signature) -> Self {
        self.on_success.push(sig);
        self
    }

    /// Add a signature to send after the final failure.
    pub fn on_error(mut self, sig: Signature) -> Self {
        self.on_error.push(sig);
        self
    }

    /// Drop the task instead of requeueing it when no worker knows its name.
    pub fn ignore_when_not_registered(mut self, ignore: bool) -> Self {
        self.ignore_when_task_not_registered = ignore;
        self
    }

    /// Go's `StopTaskDeletionOnError`: when the task fails for good, leave its message to
    /// the broker's own dead-lettering instead of removing it (SQS: the queue's redrive
    /// policy moves it to its dead-letter queue after `maxReceiveCount` receives; brokers
    /// without such a policy remove it as usual).
    pub fn stop_task_deletion_on_error(mut self, stop: bool) -> Self {
        self.stop_task_deletion_on_error = stop;
        self
    }

    /// Encode to Go's JSON bytes.
    ///
    /// # Errors
    /// Only if a header value cannot be encoded (never for plain JSON values).
    pub fn to_json(&self) -> Result<Vec<u8>> {
        let fail = |e| Error::encode_caused("signature", e);
        if !self.on_success.is_empty() || !self.on_error.is_empty() || self.chord_callback.is_some()
        {
            // Nested signatures (possibly thousands deep): serde's path, which grows the stack.
            return json::to_vec(self).map_err(fail);
        }
        // A flat signature, written field by field (the bytes `json::to_vec(self)` gives, at a
        // fraction of the cost); see `fast_encoding_matches_serde`.
        let args_len: usize = self
            .args
            .iter()
            .map(|a| a.name.len() + a.type_name.len() + a.value.get().len() + 32)
            .sum();
        let mut out = Vec::with_capacity(
            420 + self.uuid.len() + self.name.len() + self.routing_key.len() + args_len,
        );
        out.extend_from_slice(b"{\"UUID\":");
        json::push_str(&mut out, &self.uuid);
        out.extend_from_slice(b",\"Name\":");
        json::push_str(&mut out, &self.name);
        out.extend_from_slice(b",\"RoutingKey\":");
        json::push_str(&mut out, &self.routing_key);
        out.extend_from_slice(b",\"ETA\":");
        match &self.eta {
            None => out.extend_from_slice(b"null"),
            Some(t) => json::push_str(&mut out, &crate::time::format(t)),
        }
        out.extend_from_slice(b",\"GroupUUID\":");
        json::push_str(&mut out, &self.group_uuid);
        out.extend_from_slice(b",\"GroupTaskCount\":");
        json::push_int(&mut out, self.group_task_count);
        out.extend_from_slice(b",\"Args\":");
        if self.args.is_empty() {
            out.extend_from_slice(b"null");
        } else {
            out.push(b'[');
            for (i, a) in self.args.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"Name\":");
                json::push_str(&mut out, &a.name);
                out.extend_from_slice(b",\"Type\":");
                json::push_str(&mut out, &a.type_name);
                out.extend_from_slice(b",\"Value\":");
                out.extend_from_slice(a.value.get().as_bytes());
                out.push(b'}');
            }
            out.push(b']');
        }
        out.extend_from_slice(b",\"Headers\":");
        match &self.headers {
            None => out.extend_from_slice(b"null"),
            Some(h) => json::push_value(&mut out, h).map_err(fail)?,
        }
        out.extend_from_slice(b",\"Priority\":");
        json::push_int(&mut out, i64::from(self.priority));
        out.extend_from_slice(b",\"Immutable\":");
        json::push_bool(&mut out, self.immutable);
        out.extend_from_slice(b",\"RetryCount\":");
        json::push_int(&mut out, self.retry_count);
        out.extend_from_slice(b",\"RetryTimeout\":");
        json::push_int(&mut out, self.retry_timeout);
        out.extend_from_slice(b",\"OnSuccess\":null,\"OnError\":null,\"ChordCallback\":null");
        out.extend_from_slice(b",\"BrokerMessageGroupId\":");
        json::push_str(&mut out, &self.broker_message_group_id);
        out.extend_from_slice(b",\"SQSReceiptHandle\":");
        json::push_str(&mut out, &self.sqs_receipt_handle);
        out.extend_from_slice(b",\"StopTaskDeletionOnError\":");
        json::push_bool(&mut out, self.stop_task_deletion_on_error);
        out.extend_from_slice(b",\"IgnoreWhenTaskNotRegistered\":");
        json::push_bool(&mut out, self.ignore_when_task_not_registered);
        out.push(b'}');
        Ok(out)
    }

    /// Decode from JSON as leniently as Go does.
    ///
    /// # Errors
    /// [`Error::Decode`] when the bytes are not JSON or not a signature object.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        // Go's own layout (what Go Machinery and this crate write) is read directly; anything
        // else goes through serde_json below, which reads the same values the same way.
        if let Some(sig) = crate::fastjson::decode_flat_signature(bytes) {
            return Ok(sig);
        }
        // Go decodes `null` into a zero Signature and then loops on a task named "": a
        // message must be an object.
        match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => {}
            Some(_) => {
                return Err(Error::Decode {
                    what: "signature",
                    message: format!(
                        "a task message must be a JSON object, got {}",
                        json_kind(bytes)
                    ),
                    source: None,
                });
            }
            None => {
                return Err(Error::Decode {
                    what: "signature",
                    message: "empty message".to_owned(),
                    source: None,
                });
            }
        }
        // The common case first: serde_json's own nesting limit (128) is not reached, and
        // nothing deeper than that limit exists to check. Only a message that hits the limit
        // is measured and, when a long chain, decoded again without it.
        let e = match serde_json::from_slice(bytes) {
            Ok(sig) => return Ok(sig),
            Err(e) => e,
        };
        if !e.to_string().starts_with("recursion limit exceeded") {
            return Err(Error::decode_caused("signature", e));
        }
        let depth = json_nesting(bytes);
        if depth > MAX_JSON_NESTING {
            return Err(Error::decode(
                "signature",
                format!(
                    "JSON nested {depth} levels deep; at most {MAX_JSON_NESTING} are accepted \
                     (a chain of 10 000 links)"
                ),
            ));
        }
        // A long chain: no recursion limit, and the stack grows on the heap as needed.
        let mut de = serde_json::Deserializer::from_slice(bytes);
        de.disable_recursion_limit();
        let sig =
            grow(|| serde::Deserialize::deserialize(serde_stacker::Deserializer::new(&mut de)))
                .map_err(|e| Error::decode_caused("signature", e))?;
        de.end().map_err(|e| Error::decode_caused("signature", e))?;
        check_header_nesting(sig)
    }

    /// Check that this signature and every signature it carries (`OnSuccess`, `OnError`,
    /// `ChordCallback`, at any depth) names a task: a task without a name can never run.
    ///
    /// # Errors
    /// A text saying which signature has no name.
    pub fn check_names(&self) -> std::result::Result<(), String> {
        // Iterative: a chain nests thousands of levels deep.
        let mut stack: Vec<(&Signature, Option<(&Signature, &'static str)>)> = vec![(self, None)];
        while let Some((sig, parent)) = stack.pop() {
            if sig.name.is_empty() {
                return Err(match parent {
                    None => "the task has no Name".to_owned(),
                    Some((p, field)) => format!(
                        "a signature in {field} of task {} ({}) has no Name",
                        p.name, p.uuid
                    ),
                });
            }
            stack.extend(sig.on_success.iter().map(|s| (s, Some((sig, "OnSuccess")))));
            stack.extend(sig.on_error.iter().map(|s| (s, Some((sig, "OnError")))));
            if let Some(cb) = &sig.chord_callback {
                stack.push((cb, Some((sig, "ChordCallback"))));
            }
        }
        Ok(())
    }

    /// A copy without `OnSuccess`, `OnError` and `ChordCallback` (cheap at any chain length).
    pub fn without_follow_ups(&self) -> Signature {
        Signature {
            uuid: self.uuid.clone(),
            name: self.name.clone(),
            routing_key: self.routing_key.clone(),
            eta: self.eta,
            group_uuid: self.group_uuid.clone(),
            group_task_count: self.group_task_count,
            args: self.args.clone(),
            headers: self.headers.clone(),
            priority: self.priority,
            immutable: self.immutable,
            retry_count: self.retry_count,
            retry_timeout: self.retry_timeout,
            on_success: Vec::new(),
            on_error: Vec::new(),
            chord_callback: None,
            broker_message_group_id: self.broker_message_group_id.clone(),
            sqs_receipt_handle: self.sqs_receipt_handle.clone(),
            stop_task_deletion_on_error: self.stop_task_deletion_on_error,
            ignore_when_task_not_registered: self.ignore_when_task_not_registered,
        }
    }

    /// The ETA if it is in the future.
    pub fn future_eta(&self) -> Option<Timestamp> {
        self.eta.filter(|eta| *eta > crate::time::now())
    }
}

/// Header values nested deeper than this are refused: `serde_json::Value` clones, encodes
/// and drops recursively, so only the signature structure itself may be deep.
const MAX_HEADER_NESTING: usize = 64;

/// Refuse a (deeply nested) signature whose header values nest too deep, taking it apart
/// without recursion.
fn check_header_nesting(mut sig: Signature) -> Result<Signature> {
    let mut too_deep = None;
    {
        let mut stack: Vec<&Signature> = vec![&sig];
        while let Some(s) = stack.pop() {
            if let Some(h) = &s.headers
                && let Some((k, _)) = h
                    .iter()
                    .find(|(_, v)| value_nesting(v) > MAX_HEADER_NESTING)
            {
                too_deep = Some(format!("header {k:?} of task {} ({})", s.name, s.uuid));
                break;
            }
            stack.extend(s.on_success.iter());
            stack.extend(s.on_error.iter());
            stack.extend(s.chord_callback.as_deref());
        }
    }
    let Some(what) = too_deep else {
        return Ok(sig);
    };
    let mut stack: Vec<&mut Signature> = vec![&mut sig];
    while let Some(s) = stack.pop() {
        if let Some(h) = s.headers.take() {
            h.into_values().for_each(drop_value);
        }
        let Signature {
            on_success,
            on_error,
            chord_callback,
            ..
        } = s;
        stack.extend(on_success.iter_mut());
        stack.extend(on_error.iter_mut());
        stack.extend(chord_callback.as_deref_mut());
    }
    Err(Error::Decode {
        what: "signature",
        message: format!("{what} is nested more than {MAX_HEADER_NESTING} levels deep"),
        source: None,
    })
}

/// Nesting depth of a JSON value, without recursion.
fn value_nesting(v: &serde_json::Value) -> usize {
    let mut max = 0;
    let mut stack = vec![(v, 0usize)];
    while let Some((v, d)) = stack.pop() {
        max = max.max(d);
        match v {
            serde_json::Value::Array(a) => stack.extend(a.iter().map(|x| (x, d + 1))),
            serde_json::Value::Object(m) => stack.extend(m.values().map(|x| (x, d + 1))),
            _ => {}
        }
    }
    max
}

/// Drop a JSON value without recursion.
fn drop_value(v: serde_json::Value) {
    let mut stack = vec![v];
    while let Some(mut v) = stack.pop() {
        match &mut v {
            serde_json::Value::Array(a) => stack.append(a),
            serde_json::Value::Object(m) => {
                stack.extend(std::mem::take(m).into_iter().map(|(_, x)| x));
            }
            _ => {}
        }
    }
}

/// `null`, `a number`, ... for error messages.
fn json_kind(bytes: &[u8]) -> &'static str {
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'n') => "null",
        Some(b't' | b'f') => "a boolean",
        Some(b'"') => "a string",
        Some(b'[') => "an array",
        Some(b'-' | b'0'..=b'9') => "a number",
        _ => "something that is not JSON",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written encoders of `Signature::to_json` and `TaskState::to_json` give the
    /// bytes of the serde path (`json::to_vec`), which the Go fixtures pin down.
    #[test]
    fn fast_encoding_matches_serde() {
        use crate::state::{State, TaskResult, TaskState};
        let odd = [
            "",
            "add",
            "a\"b\\c",
            "<x&y>",
            "line\nbreak\ttab\u{8}\u{c}\r\u{1}\u{1f}\u{7f}",
            "é ü 漢字 🦀",
            "\u{2028}\u{2029}\u{2027}\u{20ac}",
        ];
        let eta = crate::time::parse("2030-01-02T05:34:05.1234+02:30").unwrap();
        let mut n = 0;
        for (i, text) in odd.iter().enumerate() {
            let mut sig = Signature::new(*text)
                .arg(i as i64)
                .arg(*text)
                .arg(vec![1.5_f64, -0.0, 1e21])
                .header("traceparent", *text)
                .header("n", serde_json::json!({"b": [1, null, "<"], "a": 2.5}));
            sig.uuid = format!("task_{text}");
            sig.routing_key = (*text).to_owned();
            sig.group_uuid = (*text).to_owned();
            sig.group_task_count = -(i as i64) * 1_000_000_007;
            sig.priority = 255;
            sig.immutable = i % 2 == 0;
            sig.retry_count = i as i64 * 11;
            sig.retry_timeout = i64::MIN + i as i64;
            sig.broker_message_group_id = (*text).to_owned();
            sig.sqs_receipt_handle = (*text).to_owned();
            sig.stop_task_deletion_on_error = i % 3 == 0;
            sig.ignore_when_task_not_registered = i % 2 == 1;
            if i % 2 == 0 {
                sig = sig.eta(eta);
            }
            let mut bare = Signature::new(*text);
            bare.headers = None;
            for s in [&sig, &bare] {
                assert_eq!(
                    String::from_utf8(s.to_json().unwrap()).unwrap(),
                    crate::json::to_string(s).unwrap()
                );
                for state in [State::Pending, State::Started, State::Failure] {
                    let mut st = TaskState::new(s, state);
                    st.error = (*text).to_owned();
                    st.ttl = i as i64 * 7 - 3;
                    assert_eq!(
                        String::from_utf8(st.to_json().unwrap()).unwrap(),
                        crate::json::to_string(&st).unwrap()
                    );
                }
                let results = vec![
                    TaskResult::new(*text),
                    TaskResult::new(i as i64),
                    TaskResult::new(vec![*text, "x"]),
                ];
                for rs in [vec![], results] {
                    let st = TaskState::success(s, rs);
                    assert_eq!(
                        String::from_utf8(st.to_json().unwrap()).unwrap(),
                        crate::json::to_string(&st).unwrap()
                    );
                }
                n += 1;
            }
        }
        // Nested signatures keep serde's path; check it is still the same bytes too.
        let nested = Signature::new("a").on_success(Signature::new("b<"));
        assert_eq!(
            nested.to_json().unwrap(),
            crate::json::to_vec(&nested).unwrap()
        );
        assert_eq!(n, 2 * odd.len());
    }

    #[test]
    fn lenient_decoding() {
        let s = Signature::from_json(
            br#"{"uuid":"task_1","NAME":"add","Args":null,"Headers":null,"Unknown":{"x":[1]},"ETA":null,"Priority":null}"#,
        )
        .unwrap();
        assert_eq!(s.uuid, "task_1");
        assert_eq!(s.name, "add");
        assert!(s.args.is_empty());
        assert!(s.headers.is_none());
        assert!(Signature::from_json(b"[1]").is_err());
        assert!(Signature::from_json(b"{\"ETA\":\"yesterday\"}").is_err());
        assert_eq!(Signature::from_json(b" {}").unwrap(), Signature::default());
        for (body, kind) in [
            (&b"null"[..], "null"),
            (b" 5", "a number"),
            (b"\"x\"", "a string"),
            (b"true", "a boolean"),
            (b"[]", "an array"),
        ] {
            let err = Signature::from_json(body).unwrap_err().to_string();
            assert!(
                err.contains(&format!("must be a JSON object, got {kind}")),
                "{err}"
            );
        }
        assert!(
            Signature::from_json(b"  ")
                .unwrap_err()
                .to_string()
                .contains("empty")
        );
    }

    #[test]
    fn uuids_have_prefixes() {
        assert!(new_task_uuid().starts_with("task_"));
        assert_eq!(new_group_uuid().len(), "group_".len() + 36);
        assert!(new_chord_uuid().starts_with("chord_"));
    }
}
