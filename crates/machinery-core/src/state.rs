//! Stored task states ([`TaskState`], [`TaskResult`]) and group bookkeeping ([`GroupMeta`]).

use std::fmt;

use serde::Serialize;
use serde_json::value::RawValue;

use crate::gostruct::go_deserialize;
use crate::time::{self, Timestamp};
use crate::types::{ArgError, FromGoValue, GoValue, IntoGoValue};
use crate::{Error, Result, json};

/// The life-cycle state of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum State {
    /// Stored by the sender before publishing.
    #[default]
    Pending,
    /// A worker took the message.
    Received,
    /// The task function is running.
    Started,
    /// The task failed and will run again.
    Retry,
    /// Finished with results.
    Success,
    /// Finished with an error.
    Failure,
}

impl State {
    /// Go's name: `PENDING`, `RECEIVED`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            State::Pending => "PENDING",
            State::Received => "RECEIVED",
            State::Started => "STARTED",
            State::Retry => "RETRY",
            State::Success => "SUCCESS",
            State::Failure => "FAILURE",
        }
    }

    /// Parse Go's name (case-insensitive).
    pub fn parse(s: &str) -> Option<State> {
        [
            State::Pending,
            State::Received,
            State::Started,
            State::Retry,
            State::Success,
            State::Failure,
        ]
        .into_iter()
        .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// SUCCESS or FAILURE.
    pub fn is_completed(self) -> bool {
        matches!(self, State::Success | State::Failure)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for State {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for State {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = std::borrow::Cow::<'de, str>::deserialize(d)?;
        State::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown state {s:?}")))
    }
}

/// One result value: a Go type name and its JSON value.
#[derive(Debug, Clone, Serialize)]
pub struct TaskResult {
    /// Go type name, e.g. `int64`, `[]string`, `map[string]int64`.
    #[serde(rename = "Type")]
    pub type_name: String,
    /// The JSON value, exactly as stored.
    #[serde(rename = "Value")]
    pub value: Box<RawValue>,
}

impl PartialEq for TaskResult {
    fn eq(&self, other: &Self) -> bool {
        self.type_name == other.type_name && self.value.get() == other.value.get()
    }
}

impl Default for TaskResult {
    fn default() -> Self {
        TaskResult {
            type_name: String::new(),
            value: json::raw_null(),
        }
    }
}

impl TaskResult {
    /// A result from a Rust value.
    pub fn new(value: impl IntoGoValue) -> Self {
        let v = value.into_go_value();
        TaskResult {
            type_name: v.type_name().to_owned(),
            value: v.to_raw(),
        }
    }

    /// Convert by the `Type` string with Go's rules.
    ///
    /// # Errors
    /// When the type is unsupported (maps, structs) or the value does not fit it.
    pub fn decode(&self) -> Result<GoValue, ArgError> {
        GoValue::decode(&self.type_name, &self.value)
    }

    /// Convert to a plain Rust type.
    ///
    /// # Errors
    /// See [`TaskResult::decode`]; also when the value does not fit `T`.
    pub fn get<T: FromGoValue>(&self) -> Result<T, ArgError> {
        T::from_go_value(self.decode()?)
    }

    /// The value as an untyped JSON value (for types Rust has no mapping for, like Go maps).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.value.get()).unwrap_or(serde_json::Value::Null)
    }

    /// This result as an argument for a follow-up task (chains, chords).
    pub fn to_arg(&self) -> crate::Arg {
        crate::Arg::raw(self.type_name.clone(), self.value.clone())
    }
}

impl<'de> serde::Deserialize<'de> for TaskResult {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let arg = crate::Arg::deserialize(d)?;
        Ok(TaskResult {
            type_name: arg.type_name,
            value: arg.value,
        })
    }
}

/// What the result backend stores for one task.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskState {
    /// The task's UUID (the storage key).
    #[serde(rename = "TaskUUID")]
    pub task_uuid: String,
    /// The task's name.
    #[serde(rename = "TaskName")]
    pub task_name: String,
    /// The state.
    #[serde(rename = "State")]
    pub state: State,
    /// Results: `None` except for SUCCESS; `Some(vec![])` for a task that returns only an error.
    #[serde(rename = "Results")]
    pub results: Option<Vec<TaskResult>>,
    /// The error text of a FAILURE (empty otherwise).
    #[serde(rename = "Error")]
    pub error: String,
    /// When the PENDING state was written; Go's zero time when unknown.
    #[serde(rename = "CreatedAt", serialize_with = "crate::time::serialize")]
    pub created_at: Timestamp,
    /// Expiry (Unix seconds) for backends that store it; 0 otherwise.
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

impl Default for TaskState {
    fn default() -> Self {
        TaskState {
            task_uuid: String::new(),
            task_name: String::new(),
            state: State::Pending,
            results: None,
            error: String::new(),
            created_at: time::zero(),
            ttl: 0,
        }
    }
}

go_deserialize!(TaskState, "a TaskState object", {
    task_uuid => "TaskUUID",
    task_name => "TaskName",
    state => "State",
    results => "Results",
    error => "Error",
    created_at => "CreatedAt",
    ttl => "TTL",
});

impl TaskState {
    /// A state for the task `sig` with `CreatedAt` = now.
    pub fn new(sig: &crate::Signature, state: State) -> Self {
        TaskState {
            task_uuid: sig.uuid.clone(),
            task_name: sig.name.clone(),
            state,
            created_at: time::now(),
            ..TaskState::default()
        }
    }

    /// PENDING, as the sender writes it.
    pub fn pending(sig: &crate::Signature) -> Self {
        Self::new(sig, State::Pending)
    }

    /// SUCCESS with results.
    pub fn success(sig: &crate::Signature, results: Vec<TaskResult>) -> Self {
        TaskState {
            results: Some(results),
            ..Self::new(sig, State::Success)
        }
    }

    /// FAILURE with the error text.
    pub fn failure(sig: &crate::Signature, error: impl Into<String>) -> Self {
        TaskState {
            error: error.into(),
            ..Self::new(sig, State::Failure)
        }
    }

    /// SUCCESS or FAILURE.
    pub fn is_completed(&self) -> bool {
        self.state.is_completed()
    }

    /// State is SUCCESS.
    pub fn is_success(&self) -> bool {
        self.state == State::Success
    }

    /// State is FAILURE.
    pub fn is_failure(&self) -> bool {
        self.state == State::Failure
    }

    /// Keep what Go keeps from the earlier stored state: `CreatedAt`, and `TaskName` when this
    /// one has none. Prefer [`TaskState::merge_stored`], which also applies the PENDING rule.
    pub fn merge_previous(&mut self, previous: &TaskState) {
        self.created_at = previous.created_at;
        if self.task_name.is_empty() {
            self.task_name.clone_from(&previous.task_name);
        }
    }

    /// **The state-merge rule**, the one place it is stated: a PENDING state starts afresh (a
    /// retry's PENDING is a re-creation with a new `CreatedAt`, as in Go); a later state keeps
    /// the stored `CreatedAt`, and the stored `TaskName` when its own is empty. Backends apply
    /// it when they store (in their own atomic way: a Lua script, an upsert), and the
    /// conformance case `set_state_keeps_created_at` checks every backend against this
    /// function.
    ///
    /// ```
    /// use machinery_core::{Signature, State, TaskState};
    ///
    /// let sig = Signature::new("add");
    /// let stored = TaskState::pending(&sig);
    /// let mut started = TaskState { state: State::Started, task_name: String::new(), ..stored.clone() };
    /// started.created_at = machinery_core::time::now() + chrono::Duration::hours(1);
    /// started.merge_stored(Some(&stored));
    /// assert_eq!((started.created_at, started.task_name.as_str()), (stored.created_at, "add"));
    /// ```
    pub fn merge_stored(&mut self, stored: Option<&TaskState>) {
        if self.state == State::Pending {
            return;
        }
        if let Some(stored) = stored {
            self.merge_previous(stored);
        }
    }

    /// Encode to Go's JSON.
    ///
    /// # Errors
    /// Never for well-formed values; kept fallible for symmetry.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        // Written field by field (the bytes `json::to_vec(self)` gives, at a fraction of the
        // cost: a worker encodes four states per task); see `fast_encoding_matches_serde`.
        let results_len: usize = self.results.as_deref().map_or(4, |r| {
            r.iter()
                .map(|x| x.type_name.len() + x.value.get().len() + 24)
                .sum()
        });
        let mut out = Vec::with_capacity(
            120 + self.task_uuid.len() + self.task_name.len() + self.error.len() + results_len,
        );
        out.extend_from_slice(b"{\"TaskUUID\":");
        json::push_str(&mut out, &self.task_uuid);
        out.extend_from_slice(b",\"TaskName\":");
        json::push_str(&mut out, &self.task_name);
        out.extend_from_slice(b",\"State\":\"");
        out.extend_from_slice(self.state.as_str().as_bytes());
        out.extend_from_slice(b"\",\"Results\":");
        match &self.results {
            None => out.extend_from_slice(b"null"),
            Some(results) => {
                out.push(b'[');
                for (i, r) in results.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    out.extend_from_slice(b"{\"Type\":");
                    json::push_str(&mut out, &r.type_name);
                    out.extend_from_slice(b",\"Value\":");
                    out.extend_from_slice(r.value.get().as_bytes());
                    out.push(b'}');
                }
                out.push(b']');
            }
        }
        out.extend_from_slice(b",\"Error\":");
        json::push_str(&mut out, &self.error);
        out.extend_from_slice(b",\"CreatedAt\":");
        json::push_str(&mut out, &crate::time::format(&self.created_at));
        out.extend_from_slice(b",\"TTL\":");
        json::push_int(&mut out, self.ttl);
        out.push(b'}');
        Ok(out)
    }

    /// Decode Go's JSON (leniently).
    ///
    /// # Errors
    /// [`Error::Decode`] when the bytes are not a task state.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::decode_caused("task state", e))
    }
}

/// Group bookkeeping stored by `init_group`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupMeta {
    /// `group_<uuid4>`.
    #[serde(rename = "GroupUUID")]
    pub group_uuid: String,
    /// Members in group order (the order of results given to a chord callback).
    #[serde(rename = "TaskUUIDs")]
    pub task_uuids: Vec<String>,
    /// Set once the chord callback was sent.
    #[serde(rename = "ChordTriggered")]
    pub chord_triggered: bool,
    /// Go's lock flag (unused by Go itself; kept for the wire).
    #[serde(rename = "Lock")]
    pub lock: bool,
    /// When the group was initialised.
    #[serde(rename = "CreatedAt", serialize_with = "crate::time::serialize")]
    pub created_at: Timestamp,
    /// Expiry (Unix seconds) for backends that store it; 0 otherwise.
    #[serde(rename = "TTL")]
    pub ttl: i64,
}

impl Default for GroupMeta {
    fn default() -> Self {
        GroupMeta {
            group_uuid: String::new(),
            task_uuids: Vec::new(),
            chord_triggered: false,
            lock: false,
            created_at: time::zero(),
            ttl: 0,
        }
    }
}

go_deserialize!(GroupMeta, "a GroupMeta object", {
    group_uuid => "GroupUUID",
    task_uuids => "TaskUUIDs",
    chord_triggered => "ChordTriggered",
    lock => "Lock",
    created_at => "CreatedAt",
    ttl => "TTL",
});

impl GroupMeta {
    /// A fresh, untriggered group created now.
    pub fn new(group_uuid: impl Into<String>, task_uuids: Vec<String>) -> Self {
        GroupMeta {
            group_uuid: group_uuid.into(),
            task_uuids,
            created_at: time::now(),
            ..GroupMeta::default()
        }
    }

    /// Encode to Go's JSON.
    ///
    /// # Errors
    /// Never for well-formed values.
    pub fn to_json(&self) -> Result<Vec<u8>> {
        json::to_vec(self).map_err(|e| Error::encode_caused("group meta", e))
    }

    /// Decode Go's JSON (leniently).
    ///
    /// # Errors
    /// [`Error::Decode`] when the bytes are not a group meta.
    pub fn from_json(bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|e| Error::decode_caused("group meta", e))
    }
}
