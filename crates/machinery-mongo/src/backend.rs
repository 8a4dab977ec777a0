//! `MongoBackend`: task states in `tasks`, group metas in `group_metas`, as Go stores them.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use machinery_core::time::{self, Timestamp};
use machinery_core::{Backend, BackendCapabilities, Error, Result, State, TaskState};
use mongodb::bson::{self, Bson, Document, doc};
use mongodb::event::EventHandler;
use mongodb::event::command::CommandEvent;
use mongodb::options::{ClientOptions, IndexOptions, ReturnDocument};
use mongodb::{Client, Collection, IndexModel};

use crate::codec;
use crate::config::MongoConfig;
use crate::error::{self, DRIVER};

/// Go's collection of task states.
pub const TASKS_COLLECTION: &str = "tasks";
/// Go's collection of group metas.
pub const GROUP_METAS_COLLECTION: &str = "group_metas";
/// The largest document MongoDB stores (BSON's 16 MiB).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024 * 1024;

/// The TTL index Go creates on `tasks` (and machinery-rs on `group_metas` too).
const DELETE_AT_INDEX: &str = "delete_at_1";
/// machinery-rs field in a group meta: the members that reached SUCCESS or FAILURE.
const DONE_FIELD: &str = "done_task_uuids";
/// machinery-rs field in a task state: nanoseconds past the millisecond that BSON's Date
/// keeps of `created_at` (written only when not zero).
const CREATED_AT_NANOS_FIELD: &str = "created_at_ns";

/// Commands sent by every `MongoBackend` of this process (see [`round_trips`]).
static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

/// How many commands (each one request and one reply: a round trip) every [`MongoBackend`]
/// of this process has sent to the server, counted from the client's command events: retries
/// and cursor `getMore`s count, the driver's own heartbeats do not.
pub fn round_trips() -> u64 {
    ROUND_TRIPS.load(Ordering::Relaxed)
}

/// The MongoDB result backend. Cheap to clone; clones share one client and its pool.
///
/// Documents are Go's: `tasks` `{_id, state, task_name, created_at, results, error,
/// delete_at}` written with upserts that `$set` the fields a state changes, and
/// `group_metas` `{_id, task_uuids, chord_triggered, lock, created_at}`.
#[derive(Clone)]
pub struct MongoBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    tasks: Collection<Document>,
    groups: Collection<Document>,
    config: MongoConfig,
    round_trips: Arc<AtomicU64>,
}

impl fmt::Debug for MongoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoBackend")
            .field("url", &self.inner.config.redacted_url())
            .field("database", &self.inner.config.database)
            .field("results_expire_in", &self.inner.config.results_expire_in)
            .finish_non_exhaustive()
    }
}

impl MongoBackend {
    /// Connect to the server(s) named by `config.url` and create the TTL index on
    /// `delete_at` (`expireAfterSeconds: 0`) in both collections, as Go does at first use.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL or database name; a temporary [`Error::Backend`]
    /// naming the server (password redacted) when no server answers within
    /// `server_selection_timeout_ms`.
    pub async fn connect(config: MongoConfig) -> Result<Self> {
        config.validate()?;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let shown = config.redacted_url();
        let mut options = ClientOptions::parse(config.url.trim()).await.map_err(|e| {
            if error::is_temporary(&e) {
                error::map(format!("cannot resolve {shown}"), e)
            } else {
                Error::config("result_backend", format!("`{shown}`: {e}"))
            }
        })?;
        if options.server_selection_timeout.is_none() {
            options.server_selection_timeout = Some(config.server_selection_timeout());
        }
        if options.connect_timeout.is_none() {
            options.connect_timeout = Some(config.connect_timeout());
        }
        if options.app_name.is_none() {
            options.app_name = Some("machinery-rs".to_owned());
        }
        let round_trips = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&round_trips);
        options.command_event_handler = Some(EventHandler::callback(move |ev: CommandEvent| {
            if matches!(ev, CommandEvent::Started(_)) {
                counter.fetch_add(1, Ordering::Relaxed);
                ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
            }
        }));
        let client = Client::with_options(options)
            .map_err(|e| Error::config("result_backend", format!("`{shown}`: {e}")))?;
        let db = client.database(&config.database);
        let backend = MongoBackend {
            inner: Arc::new(Inner {
                tasks: db.collection(TASKS_COLLECTION),
                groups: db.collection(GROUP_METAS_COLLECTION),
                client,
                config,
                round_trips,
            }),
        };
        for coll in [&backend.inner.tasks, &backend.inner.groups] {
            if let Err(e) = backend.ensure_ttl_index(coll).await {
                backend
                    .inner
                    .client
                    .clone()
                    .shutdown()
                    .immediate(true)
                    .await;
                return Err(e);
            }
        }
        tracing::debug!(url = %shown, database = %backend.inner.config.database, "mongodb result backend connected");
        Ok(backend)
    }

    /// Connect with the default settings to `url`.
    ///
    /// # Errors
    /// As [`MongoBackend::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(MongoConfig::from_url(url)).await
    }

    /// Commands this backend (and its clones) sent to the server: each is one round trip.
    pub fn round_trips(&self) -> u64 {
        self.inner.round_trips.load(Ordering::Relaxed)
    }

    /// The database holding `tasks` and `group_metas`.
    pub fn database(&self) -> &str {
        &self.inner.config.database
    }

    /// Close the client's connections and stop its monitoring tasks. Call it before the
    /// tokio runtime ends; calls on this backend or its clones fail afterwards.
    pub async fn close(&self) {
        self.inner.client.clone().shutdown().immediate(true).await;
    }

    async fn ensure_ttl_index(&self, coll: &Collection<Document>) -> Result<()> {
        let index = IndexModel::builder()
            .keys(doc! { "delete_at": 1 })
            .options(
                IndexOptions::builder()
                    .name(DELETE_AT_INDEX.to_owned())
                    .expire_after(std::time::Duration::ZERO)
                    .build(),
            )
            .build();
        match coll.create_index(index).await {
            Ok(_) => Ok(()),
            // An index of that name or key with other options (made by hand): keep it. The
            // read path hides expired documents whatever deletes them.
            Err(e) if matches!(error::code(&e), Some(85 | 86)) => {
                tracing::warn!(collection = coll.name(), error = %e, "an index on delete_at already exists with other options; kept as it is (expired documents are still hidden on read)");
                Ok(())
            }
            Err(e) => {
                let display = self.inner.config.redacted_url();
                Err(error::map(
                    format!(
                        "cannot connect to {display} (creating the TTL index on {}.{})",
                        self.inner.config.database,
                        coll.name()
                    ),
                    e,
                ))
            }
        }
    }

    fn delete_at(&self) -> bson::DateTime {
        to_bson_date(&time::after(self.inner.config.results_ttl())).0
    }

    /// The `$set` / `$setOnInsert` / `$unset` update for one state (Go's fields per state).
    fn state_update(state: &TaskState, delete_at: bson::DateTime) -> Document {
        let mut set = doc! { "state": state.state.as_str() };
        let mut unset = Document::new();
        if !state.task_name.is_empty() {
            set.insert("task_name", state.task_name.as_str());
        }
        match &state.results {
            Some(results) => {
                set.insert("results", codec::results_to_bson(results));
            }
            None => {
                unset.insert("results", "");
            }
        }
        if state.state == State::Failure || !state.error.is_empty() {
            set.insert("error", state.error.as_str());
        } else {
            unset.insert("error", "");
        }
        if state.is_completed() {
            set.insert("delete_at", delete_at);
        } else {
            // A redelivered task's RECEIVED must not keep an earlier SUCCESS's expiry.
            unset.insert("delete_at", "");
        }
        let (created, nanos) = to_bson_date(&state.created_at);
        // Core's state-merge rule (TaskState::merge_stored): PENDING starts afresh (Go's
        // SetStatePending also `$set`s created_at); later states keep the stored one.
        let mut update = if state.state == State::Pending {
            set.insert("created_at", created);
            if nanos != 0 {
                set.insert(CREATED_AT_NANOS_FIELD, nanos);
            } else {
                unset.insert(CREATED_AT_NANOS_FIELD, "");
            }
            doc! { "$set": set }
        } else {
            let mut on_insert = doc! { "created_at": created };
            if nanos != 0 {
                on_insert.insert(CREATED_AT_NANOS_FIELD, nanos);
            }
            doc! { "$set": set, "$setOnInsert": on_insert }
        };
        if !unset.is_empty() {
            update.insert("$unset", unset);
        }
        update
    }

    async fn group_meta(&self, group_uuid: &str, projection: Document) -> Result<Document> {
        let found = self
            .inner
            .groups
            .find_one(doc! { "_id": group_uuid })
            .projection(projection)
            .await
            .map_err(|e| error::map(format!("cannot read group {group_uuid}"), e))?;
        match found {
            Some(d) if !expired(&d) => Ok(d),
            _ => Err(Error::GroupNotFound(group_uuid.to_owned())),
        }
    }
}

/// A time as BSON's Date (milliseconds) and the nanoseconds past that millisecond.
fn to_bson_date(t: &Timestamp) -> (bson::DateTime, i32) {
    let millis = t.timestamp_millis();
    let nanos = t.timestamp_subsec_nanos() % 1_000_000;
    (
        bson::DateTime::from_millis(millis),
        i32::try_from(nanos).unwrap_or(0),
    )
}

fn from_bson_date(d: bson::DateTime, nanos: i64) -> Timestamp {
    let base = DateTime::<Utc>::from_timestamp_millis(d.timestamp_millis())
        .unwrap_or_else(|| time::zero().to_utc());
    let nanos = if (0..1_000_000).contains(&nanos) {
        nanos
    } else {
        0
    };
    (base + chrono::Duration::nanoseconds(nanos)).fixed_offset()
}

/// A document whose `delete_at` has passed: the TTL monitor (about once a minute) has not
/// removed it yet, and it reads as absent.
fn expired(d: &Document) -> bool {
    match d.get("delete_at") {
        Some(Bson::DateTime(at)) => at.timestamp_millis() <= Utc::now().timestamp_millis(),
        _ => false,
    }
}

/// A filter on `delete_at` that matches documents without one (Go's group metas) or whose
/// expiry has not passed.
fn not_expired() -> Document {
    doc! { "$not": { "$lte": bson::DateTime::now() } }
}

fn int_of(b: Option<&Bson>) -> Option<i64> {
    match b? {
        Bson::Int32(i) => Some(i64::from(*i)),
        Bson::Int64(i) => Some(*i),
        #[allow(clippy::cast_possible_truncation)]
        Bson::Double(f) if f.fract() == 0.0 => Some(*f as i64),
        _ => None,
    }
}

/// A stored `tasks` document as a `TaskState`.
fn decode_state(uuid: &str, d: &Document) -> Result<TaskState> {
    let bad = |msg: String| Error::decode("task state", format!("document {uuid}: {msg}"));
    let state = match d.get("state") {
        Some(Bson::String(s)) => {
            State::parse(s).ok_or_else(|| bad(format!("unknown state {s:?}")))?
        }
        Some(other) => return Err(bad(format!("`state` is {other}, not a string"))),
        None => return Err(bad("no `state` field".to_owned())),
    };
    let text = |field: &str| -> Result<String> {
        match d.get(field) {
            None | Some(Bson::Null) => Ok(String::new()),
            Some(Bson::String(s)) => Ok(s.clone()),
            Some(other) => Err(bad(format!("`{field}` is {other}, not a string"))),
        }
    };
    let created_at = match d.get("created_at") {
        Some(Bson::DateTime(t)) => {
            from_bson_date(*t, int_of(d.get(CREATED_AT_NANOS_FIELD)).unwrap_or(0))
        }
        None | Some(Bson::Null) => time::zero(),
        Some(other) => return Err(bad(format!("`created_at` is {other}, not a date"))),
    };
    let results = match d.get("results") {
        None => None,
        Some(r) => codec::results_from_bson(r).map_err(bad)?,
    };
    let ttl = match d.get("delete_at") {
        Some(Bson::DateTime(t)) => t.timestamp_millis().div_euclid(1000),
        _ => 0,
    };
    Ok(TaskState {
        task_uuid: uuid.to_owned(),
        task_name: text("task_name")?,
        state,
        results,
        error: text("error")?,
        created_at,
        ttl,
    })
}

/// The BSON size of `d`.
fn bson_len(d: &Document) -> usize {
    let mut buf = Vec::new();
    d.to_writer(&mut buf).map_or(usize::MAX, |()| buf.len())
}

#[async_trait]
impl Backend for MongoBackend {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    #[allow(
        clippy::needless_update,
        reason = "a capability added later defaults to `false` without editing this driver"
    )]
    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            expiry: true,
            keeps_created_at: true,
            batched_group_states: true,
            group_completion_counter: true,
            ..Default::default()
        }
    }

    async fn set_state(&self, state: &TaskState) -> Result<()> {
        let update = Self::state_update(state, self.delete_at());
        if state.results.is_some() {
            let size = bson_len(&update) + state.task_uuid.len() + 16;
            if size > MAX_DOCUMENT_BYTES {
                tracing::warn!(task = %state.task_uuid, name = %state.task_name, size, limit = MAX_DOCUMENT_BYTES, "task state over MongoDB's document limit, not stored");
                return Err(error::permanent(format!(
                    "cannot store {} state of task {} ({}): the document is {size} bytes, over MongoDB's limit of {MAX_DOCUMENT_BYTES} bytes (16 MiB)",
                    state.state, state.task_uuid, state.task_name
                )));
            }
        }
        self.inner
            .tasks
            .update_one(doc! { "_id": state.task_uuid.as_str() }, update)
            .upsert(true)
            .await
            .map_err(|e| {
                if error::code(&e).is_some_and(|c| error::TOO_LARGE_CODES.contains(&c)) {
                    tracing::warn!(task = %state.task_uuid, error = %e, "the server refused a task state as too large");
                }
                error::map(
                    format!(
                        "cannot store {} state of task {}",
                        state.state, state.task_uuid
                    ),
                    e,
                )
            })?;
        Ok(())
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        let found = self
            .inner
            .tasks
            .find_one(doc! { "_id": task_uuid })
            .await
            .map_err(|e| error::map(format!("cannot read the state of task {task_uuid}"), e))?;
        match found {
            Some(d) if !expired(&d) => decode_state(task_uuid, &d).map(Some),
            _ => Ok(None),
        }
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        let (created_at, _) = to_bson_date(&time::now());
        let meta = doc! {
            "_id": group_uuid,
            "task_uuids": task_uuids,
            "chord_triggered": false,
            "lock": false,
            "created_at": created_at,
            "delete_at": self.delete_at(),
        };
        let size = bson_len(&meta);
        if size > MAX_DOCUMENT_BYTES {
            return Err(error::permanent(format!(
                "cannot store group {group_uuid} of {} tasks: the document is {size} bytes, over MongoDB's limit of {MAX_DOCUMENT_BYTES} bytes (16 MiB)",
                task_uuids.len()
            )));
        }
        // Go inserts; replacing makes a repeated init (a retried send) harmless.
        self.inner
            .groups
            .replace_one(doc! { "_id": group_uuid }, meta)
            .upsert(true)
            .await
            .map_err(|e| error::map(format!("cannot store group {group_uuid}"), e))?;
        Ok(())
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let meta = self
            .group_meta(group_uuid, doc! { "task_uuids": 1, "delete_at": 1 })
            .await?;
        let uuids: Vec<String> = match meta.get("task_uuids") {
            Some(Bson::Array(items)) => items
                .iter()
                .map(|b| match b {
                    Bson::String(s) => Ok(s.clone()),
                    other => Err(Error::decode(
                        "group meta",
                        format!("group {group_uuid}: task uuid {other} is not a string"),
                    )),
                })
                .collect::<Result<_>>()?,
            None | Some(Bson::Null) => Vec::new(),
            Some(other) => {
                return Err(Error::decode(
                    "group meta",
                    format!("group {group_uuid}: `task_uuids` is {other}, not an array"),
                ));
            }
        };
        if uuids.is_empty() {
            return Ok(Vec::new());
        }
        let fail = |e| error::map(format!("cannot read the states of group {group_uuid}"), e);
        let docs: Vec<Document> = self
            .inner
            .tasks
            .find(doc! { "_id": { "$in": &uuids } })
            .await
            .map_err(fail)?
            .try_collect()
            .await
            .map_err(fail)?;
        let mut by_id: HashMap<String, Document> = docs
            .into_iter()
            .filter(|d| !expired(d))
            .filter_map(|d| match d.get("_id") {
                Some(Bson::String(id)) => Some((id.clone(), d)),
                _ => None,
            })
            .collect();
        uuids
            .into_iter()
            .map(|uuid| match by_id.remove(&uuid) {
                Some(d) => decode_state(&uuid, &d),
                // Not stored yet (or a duplicate member, already taken): PENDING.
                None => Ok(TaskState {
                    task_uuid: uuid,
                    ..TaskState::default()
                }),
            })
            .collect()
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        let fail = |e| error::map(format!("cannot trigger the chord of group {group_uuid}"), e);
        let r = self
            .inner
            .groups
            .update_one(
                doc! { "_id": group_uuid, "chord_triggered": false, "delete_at": not_expired() },
                doc! { "$set": { "chord_triggered": true } },
            )
            .await
            .map_err(fail)?;
        if r.modified_count == 1 {
            return Ok(true);
        }
        // Already triggered, or no such group.
        self.group_meta(group_uuid, doc! { "_id": 1, "delete_at": 1 })
            .await
            .map(|_| false)
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let found = self
            .inner
            .groups
            .find_one_and_update(
                doc! { "_id": group_uuid, "delete_at": not_expired() },
                doc! { "$addToSet": { DONE_FIELD: task_uuid } },
            )
            .return_document(ReturnDocument::After)
            .projection(doc! { "done": { "$size": format!("${DONE_FIELD}") } })
            .await
            .map_err(|e| {
                error::map(
                    format!("cannot count task {task_uuid} as done in group {group_uuid}"),
                    e,
                )
            })?;
        let Some(d) = found else {
            return Err(Error::GroupNotFound(group_uuid.to_owned()));
        };
        int_of(d.get("done"))
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| {
                Error::decode(
                    "group meta",
                    format!("group {group_uuid}: the done count is {:?}", d.get("done")),
                )
            })
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.inner
            .tasks
            .delete_one(doc! { "_id": task_uuid })
            .await
            .map_err(|e| error::map(format!("cannot delete the state of task {task_uuid}"), e))?;
        Ok(())
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        self.inner
            .groups
            .delete_one(doc! { "_id": group_uuid })
            .await
            .map_err(|e| error::map(format!("cannot delete group {group_uuid}"), e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_at_keeps_nanoseconds() {
        let t = time::parse("2026-11-30T03:04:05.123456789Z").unwrap();
        let (d, n) = to_bson_date(&t);
        assert_eq!(n, 456_789);
        assert_eq!(from_bson_date(d, i64::from(n)), t);
        let zero = time::zero();
        let (d, n) = to_bson_date(&zero);
        assert_eq!(from_bson_date(d, i64::from(n)), zero);
    }

    #[test]
    fn updates_set_only_what_the_state_has() {
        let sig = machinery_core::Signature::new("add");
        let at = bson::DateTime::now();
        let u = MongoBackend::state_update(&TaskState::new(&sig, State::Received), at);
        let set = u.get_document("$set").unwrap();
        assert_eq!(set.get_str("state").unwrap(), "RECEIVED");
        assert!(!set.contains_key("results") && !set.contains_key("delete_at"));
        let u = MongoBackend::state_update(&TaskState::failure(&sig, "boom"), at);
        let set = u.get_document("$set").unwrap();
        assert_eq!(set.get_str("error").unwrap(), "boom");
        assert_eq!(set.get_datetime("delete_at").unwrap(), &at);
        assert!(u.get_document("$unset").unwrap().contains_key("results"));
    }
}
