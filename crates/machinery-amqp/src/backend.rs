//! [`AmqpBackend`]: Go Machinery's queue-per-task result layout on long-lived connections,
//! with reads that return the latest state and a chord trigger that fires once.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use machinery_core::{
    Backend, BackendCapabilities, Backoff, Error, GroupMeta, Result, State, StateWatch, TaskState,
    Timestamp, TtlCache, time,
};

use crate::config::{AmqpConfig, short};
use crate::connection::{Link, PooledChannel, Session};
use crate::error::{self, DRIVER};
use crate::topology::{
    self, Published, QueueSpec, header_string, header_text, json_properties, result_queue,
};

/// Header on the copy of a member's final state that records it was counted for its group.
pub const GROUP_DONE_HEADER: &str = "x-machinery-group-done";

/// Copies of the group meta message: readers hold one while reading, so several copies let
/// that many readers in at once.
const META_COPIES: usize = 4;
/// Pauses before reading an existing but empty queue again (someone else may be holding its
/// messages for the instant of a read).
const EMPTY_RETRY_MS: [u64; 5] = [2, 5, 10, 20, 40];
/// The same for the group meta, which must be found if it exists.
const META_RETRY_MS: [u64; 8] = [2, 5, 10, 20, 40, 80, 160, 320];
/// How long `group_states` waits for a member's final state to be readable when the group
/// queue says every member has finished.
const FINAL_STATE_WAIT: Duration = Duration::from_secs(2);
/// How long `mark_group_member_done` waits for the member's final state to be readable.
const MARK_WAIT: Duration = Duration::from_secs(1);
/// Members read at once by `group_states`.
const GROUP_READ_CONCURRENCY: usize = 8;
/// Most entries of each in-memory cache.
const CACHE_MAX: usize = 50_000;
/// Most state messages one read drains.
const DRAIN_MAX: usize = 10_000;

/// The AMQP result backend, with Go Machinery's layout so that Go and Rust read each other's
/// states. See the crate README for the queues it uses and why.
#[derive(Clone)]
pub struct AmqpBackend {
    inner: Arc<BackendInner>,
}

struct BackendInner {
    config: Arc<AmqpConfig>,
    link: Link,
    ttl_ms: i32,
    /// Group members by group, until the group expires.
    metas: TtlCache<Arc<Vec<String>>>,
    /// `CreatedAt` / `TaskName` of tasks this process wrote or read, to keep them in later
    /// states without reading the queue each time.
    origins: TtlCache<(Timestamp, String)>,
    /// Groups found to have no meta of ours (a Go producer's groups), until they expire.
    foreign: TtlCache<()>,
    /// The largest completion count this process saw per foreign group: `group_states`
    /// reads Go's group queue until it has at least that many members.
    foreign_done: TtlCache<usize>,
    /// Striped locks serialising this process's marks of one member, so that concurrent
    /// repeats see each other's marker.
    marking: Vec<tokio::sync::Mutex<()>>,
}

/// Number of [`BackendInner::marking`] stripes.
const MARK_STRIPES: usize = 64;

impl fmt::Debug for AmqpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBackend")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn meta_queue(group: &str) -> String {
    format!("{group}_meta")
}

fn chord_token_queue(group: &str) -> String {
    format!("{group}_chord_token")
}

fn chord_once_queue(group: &str) -> String {
    format!("{group}_chord_once")
}

fn chord_triggered_queue(group: &str) -> String {
    format!("{group}_chord_triggered")
}

impl AmqpBackend {
    /// Connect to `config.url` (split by `config.multiple_broker_separator`, tried in order).
    ///
    /// # Errors
    /// [`Error::UnknownScheme`] / [`Error::Config`] for a bad URL or configuration
    /// (including a `results_expire_in` over the int32 milliseconds Go declares); a
    /// temporary [`Error::Backend`] when no URL can be reached.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        config.validate()?;
        let ttl_ms = config.results_ttl_ms()?;
        let parsed = config.urls()?;
        let config = Arc::new(config);
        let link = Link::new("backend", parsed, Arc::clone(&config))?;
        link.session().await?;
        Ok(AmqpBackend {
            inner: Arc::new(BackendInner {
                config,
                link,
                ttl_ms,
                metas: TtlCache::new(CACHE_MAX),
                origins: TtlCache::new(CACHE_MAX),
                foreign: TtlCache::new(CACHE_MAX),
                foreign_done: TtlCache::new(CACHE_MAX),
                marking: (0..MARK_STRIPES)
                    .map(|_| tokio::sync::Mutex::new(()))
                    .collect(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Close the connection; later calls fail with [`Error::Closed`].
    pub async fn close(&self) {
        self.inner.link.close().await;
    }
}

/// Keep the channel for reuse: every delivery taken on it was settled.
fn reusable(mut ch: PooledChannel) {
    ch.keep();
}

/// A state read from a task queue, with the properties of its message.
struct Latest {
    state: TaskState,
    properties: BasicProperties,
}

impl BackendInner {
    fn exchange(&self) -> &str {
        &self.config.exchange
    }

    fn ttl(&self) -> Duration {
        Duration::from_millis(u64::try_from(self.ttl_ms).unwrap_or(0))
    }

    /// A queue of ours (meta, token, chord markers): Go's result-queue flags, no binding (we
    /// publish to it through the default exchange).
    fn private_queue(&self, name: String) -> QueueSpec {
        let mut spec = result_queue(&name, "", self.ttl_ms);
        spec.bind = None;
        spec
    }

    fn group_queue(&self, group: &str) -> QueueSpec {
        result_queue(group, self.exchange(), self.ttl_ms)
    }

    fn cache_members(&self, meta: &GroupMeta) -> Arc<Vec<String>> {
        let members = Arc::new(meta.task_uuids.clone());
        let expires_at = meta.created_at + chrono::Duration::milliseconds(i64::from(self.ttl_ms));
        if let Ok(left) = expires_at.signed_duration_since(time::now()).to_std() {
            self.metas
                .insert(meta.group_uuid.clone(), Arc::clone(&members), left);
        }
        members
    }

    /// The members of `group` in order, or `None` when the group has no meta of ours (it
    /// was not initialised by this backend, e.g. a Go producer's group, or it expired).
    async fn members(&self, group: &str) -> Result<Option<Arc<Vec<String>>>> {
        if let Some(m) = self.metas.get(group) {
            return Ok(Some(m));
        }
        if self.foreign.get(group).is_some() {
            return Ok(None);
        }
        let spec = self.private_queue(meta_queue(group));
        let spec = &spec;
        let meta = self
            .link
            .retrying("read group meta", |session| async move {
                read_meta(&session, group, spec).await
            })
            .await?;
        match meta {
            Some(m) => Ok(Some(self.cache_members(&m))),
            None => {
                // Our producers write the meta before sending any member: a member whose
                // group has none belongs to a group sent without one (Go's).
                self.foreign.insert(group.to_owned(), (), self.ttl());
                Ok(None)
            }
        }
    }

    /// Whether `group`, which has no meta of ours, is a group being tracked from Go's group
    /// queue: adopted here, or with members counted there already (by any worker).
    async fn foreign_known(&self, group: &str) -> Result<bool> {
        if self.foreign_done.get(group).is_some() {
            return Ok(true);
        }
        let count = self.done_count(group).await?;
        if count > 0 {
            self.saw_foreign_done(group, count as usize);
        }
        Ok(count > 0)
    }

    /// Record `count` as seen for the foreign group `group` (kept as the maximum).
    fn saw_foreign_done(&self, group: &str, count: usize) {
        let seen = self.foreign_done.get(group);
        if seen.is_none_or(|seen| count > seen) {
            self.foreign_done
                .insert(group.to_owned(), count, self.ttl());
        }
    }

    /// How many final member states the group queue holds (Go's `GroupCompleted` count),
    /// declaring it with Go's flags and arguments when missing (as Go's `GroupCompleted`
    /// does; a passive check of a missing queue is a 404 that closes the channel and that
    /// lapin logs as an error). Messages another reader holds for the instant of a listing
    /// are not counted.
    async fn done_count(&self, group: &str) -> Result<u32> {
        let spec = self.group_queue(group);
        let spec = &spec;
        self.link
            .retrying("inspect group queue", |session| async move {
                let ch = session.channel().await?;
                let q = ch
                    .queue_declare(
                        short("queue name", group)?,
                        QueueDeclareOptions {
                            passive: false,
                            durable: spec.durable,
                            exclusive: false,
                            auto_delete: spec.auto_delete,
                            nowait: false,
                        },
                        spec.args.clone(),
                    )
                    .await
                    .map_err(|e| error::amqp(format!("inspect queue `{group}`"), e))?;
                reusable(ch);
                Ok(q.message_count())
            })
            .await
    }

    async fn read_latest(&self, task_uuid: &str) -> Result<Option<Latest>> {
        let spec = result_queue(task_uuid, self.exchange(), self.ttl_ms);
        let spec = &spec;
        let latest = self
            .link
            .retrying("read state", |session| async move {
                read_latest(&session, spec).await
            })
            .await?;
        if let Some(l) = &latest {
            self.remember_origin(&l.state);
        }
        Ok(latest)
    }

    /// Read until the state is final or `wait` has passed.
    async fn read_final(&self, task_uuid: &str, wait: Duration) -> Result<Option<Latest>> {
        let deadline = Instant::now() + wait;
        let mut backoff = Backoff::new(Duration::from_millis(5), Duration::from_millis(200));
        loop {
            let latest = self.read_latest(task_uuid).await?;
            if latest.as_ref().is_some_and(|l| l.state.is_completed()) || Instant::now() >= deadline
            {
                return Ok(latest);
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    fn remember_origin(&self, state: &TaskState) {
        self.origins.insert(
            state.task_uuid.clone(),
            (state.created_at, state.task_name.clone()),
            self.ttl(),
        );
    }

    /// `CreatedAt` and `TaskName` of the task's stored state.
    async fn origin(&self, task_uuid: &str) -> Result<Option<(Timestamp, String)>> {
        if let Some(o) = self.origins.get(task_uuid) {
            return Ok(Some(o));
        }
        Ok(self
            .read_latest(task_uuid)
            .await?
            .map(|l| (l.state.created_at, l.state.task_name)))
    }

    /// Publish one message for `task_uuid`'s queue (declared first, as Go does).
    async fn write_state(
        &self,
        body: &[u8],
        uuid: &str,
        properties: BasicProperties,
    ) -> Result<()> {
        let spec = result_queue(uuid, self.exchange(), self.ttl_ms);
        self.publish_to(&spec, uuid, body, properties).await
    }

    /// Declare `spec`, publish with `routing_key` (mandatory), declare again and retry once
    /// when it comes back unroutable.
    async fn publish_to(
        &self,
        spec: &QueueSpec,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let exchange = self.exchange();
        let properties = &properties;
        self.link
            .retrying("store state", |session| async move {
                let published = topology::publish_to_declared(
                    &session,
                    spec,
                    exchange,
                    routing_key,
                    body,
                    properties,
                )
                .await?;
                if published == Published::Stored {
                    return Ok(());
                }
                Err(error::temporary(format!(
                    "the message for `{routing_key}` could not be routed to queue `{}`",
                    spec.name
                )))
            })
            .await
    }

    /// Members' states of a group with no meta of ours: the final states in Go's group
    /// queue, in arrival order (what Go's `GroupTaskStates` gives), read without removing
    /// them. Another process listing the queue at the same instant holds some of its
    /// messages, so the listing is repeated (briefly) until it has at least as many members
    /// as this process has seen counted.
    async fn go_group_states(&self, group: &str) -> Result<Vec<TaskState>> {
        let want = self.foreign_done.get(group).unwrap_or(0);
        let deadline = Instant::now() + FINAL_STATE_WAIT;
        let mut backoff = Backoff::new(Duration::from_millis(2), Duration::from_millis(100));
        loop {
            let listed = self
                .link
                .retrying("read group queue", |session| async move {
                    topology::list_queue(&session, group).await
                })
                .await?;
            let mut seen = std::collections::HashSet::new();
            let mut states = Vec::new();
            for d in listed {
                let state = TaskState::from_json(&d.data)?;
                if seen.insert(state.task_uuid.clone()) {
                    states.push(state);
                }
            }
            if states.len() >= want || Instant::now() >= deadline {
                return Ok(states);
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    /// The chord trigger for a group without our token (a Go producer's group): one
    /// publish into `<group>_chord_once`, a queue that holds one message and refuses the
    /// rest (`x-max-length` 1, `x-overflow` `reject-publish`): the server confirms exactly
    /// one publisher's message and nacks every later one, for as long as the queue lives
    /// (`x-expires` = the result expiry). The winner also declares `<group>_chord_triggered`,
    /// the queue Go's `TriggerChord` looks for. No request here can be answered 404.
    async fn trigger_once(&self, group: &str) -> Result<bool> {
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        args.insert("x-expires".into(), AMQPValue::LongInt(self.ttl_ms));
        let once = QueueSpec {
            name: chord_once_queue(group),
            durable: false,
            auto_delete: false,
            args,
            bind: None,
            trust_for: Some(topology::trust_window(self.ttl_ms)),
        };
        let triggered = self.private_queue(chord_triggered_queue(group));
        let (once, triggered) = (&once, &triggered);
        self.link
            .retrying("trigger chord", |session| async move {
                topology::ensure_queue(&session, once).await?;
                let confirm = topology::send(
                    &session,
                    "",
                    &once.name,
                    group.as_bytes(),
                    json_properties(0, None),
                    true,
                )
                .await?;
                let won = match confirm.await {
                    Ok(lapin::Confirmation::Ack(None)) => true,
                    Ok(lapin::Confirmation::Nack(_)) => false,
                    Ok(lapin::Confirmation::Ack(Some(_))) => {
                        // Unroutable: the queue expired since we declared it.
                        topology::forget_queue(&session, &once.name);
                        return Err(error::temporary(format!(
                            "the chord queue of `{group}` vanished; trying again"
                        )));
                    }
                    Ok(lapin::Confirmation::NotRequested) => {
                        return Err(error::temporary("the publishing channel lost confirm mode"));
                    }
                    Err(e) => {
                        return Err(error::amqp(format!("trigger the chord of `{group}`"), e));
                    }
                };
                if won {
                    topology::ensure_queue(&session, triggered).await?;
                }
                Ok(won)
            })
            .await
    }
}

/// A member's state for `group_states`; PENDING when nothing is stored.
async fn member_state(inner: &BackendInner, uuid: String, wait: Duration) -> Result<TaskState> {
    Ok(match inner.read_final(&uuid, wait).await? {
        Some(latest) => latest.state,
        None => TaskState {
            task_uuid: uuid,
            state: State::Pending,
            ..TaskState::default()
        },
    })
}

/// The group meta from `<group>_meta`, put back after reading; `None` when there is none.
/// The queue is declared first (with the flags `init_group` declares it with), so that a
/// group without meta (a Go producer's) is an empty queue, not a 404 logged as an error.
async fn read_meta(
    session: &Arc<Session>,
    group: &str,
    spec: &QueueSpec,
) -> Result<Option<GroupMeta>> {
    topology::ensure_queue(session, spec).await?;
    let queue = spec.name.as_str();
    let ch = session.channel().await?;
    let name = short("queue name", queue)?;
    for pause in std::iter::once(0).chain(META_RETRY_MS) {
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        match ch
            .basic_get(name.clone(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(m)) => {
                let meta = GroupMeta::from_json(&m.delivery.data);
                ch.basic_nack(
                    m.delivery.delivery_tag,
                    BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    },
                )
                .await
                .map_err(|e| error::amqp(format!("put back the meta of `{group}`"), e))?;
                reusable(ch);
                return meta.map(Some);
            }
            Ok(None) => {}
            Err(e) if error::is_not_found(&e) => {
                topology::forget_queue(session, queue);
                return Ok(None);
            }
            Err(e) => return Err(error::amqp(format!("read the meta of `{group}`"), e)),
        }
    }
    reusable(ch);
    Ok(None)
}

/// The latest state in `spec`'s queue: take every message, acknowledge all but the newest
/// and put the newest back (so the queue then holds only the latest state, which Go's
/// reader, that takes the oldest, then gets too). The queue is declared first, as Go's
/// `GetState` does: reading a task that has no state yet (a chord's callback, a task not
/// sent yet) finds an empty queue, not a 404 that closes the channel and that lapin logs as
/// an error. An existing empty queue is read again a few times, since another reader may
/// hold its messages for the instant of its own read.
async fn read_latest(session: &Arc<Session>, spec: &QueueSpec) -> Result<Option<Latest>> {
    let queue = spec.name.as_str();
    let name = short("queue name", queue)?;
    topology::ensure_queue(session, spec).await?;
    let ch = session.channel().await?;
    for pause in std::iter::once(0).chain(EMPTY_RETRY_MS) {
        if pause > 0 {
            tokio::time::sleep(Duration::from_millis(pause)).await;
        }
        let mut taken = Vec::new();
        loop {
            match ch
                .basic_get(name.clone(), BasicGetOptions { no_ack: false })
                .await
            {
                Ok(Some(m)) => {
                    let more = m.message_count > 0;
                    taken.push(m.delivery);
                    if !more || taken.len() >= DRAIN_MAX {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) if error::is_not_found(&e) => {
                    // Deleted since we declared it.
                    topology::forget_queue(session, queue);
                    return Ok(None);
                }
                Err(e) => return Err(error::amqp(format!("read states of `{queue}`"), e)),
            }
        }
        let Some(latest) = taken.pop() else {
            continue;
        };
        for older in &taken {
            ch.basic_ack(older.delivery_tag, BasicAckOptions { multiple: false })
                .await
                .map_err(|e| error::amqp(format!("drop older states of `{queue}`"), e))?;
        }
        ch.basic_nack(
            latest.delivery_tag,
            BasicNackOptions {
                multiple: false,
                requeue: true,
            },
        )
        .await
        .map_err(|e| error::amqp(format!("put back the state of `{queue}`"), e))?;
        reusable(ch);
        let state = TaskState::from_json(&latest.data)?;
        return Ok(Some(Latest {
            state,
            properties: latest.properties,
        }));
    }
    reusable(ch);
    Ok(None)
}

#[async_trait]
impl Backend for AmqpBackend {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            expiry: true,
            keeps_created_at: true,
            group_completion_counter: true,
            pushes_states: !self.inner.exchange().is_empty(),
            ..Default::default()
        }
    }

    async fn set_state(&self, state: &TaskState) -> Result<()> {
        let inner = &*self.inner;
        short("task uuid", &state.task_uuid)?;
        let mut state = state.clone();
        // PENDING starts a (new) life of the task; later states keep its CreatedAt and name.
        if state.state != State::Pending
            && let Some((created_at, task_name)) = inner.origin(&state.task_uuid).await?
        {
            state.created_at = created_at;
            if state.task_name.is_empty() {
                state.task_name = task_name;
            }
        }
        let body = state.to_json()?;
        inner
            .write_state(&body, &state.task_uuid, json_properties(0, None))
            .await?;
        if state.is_completed() {
            inner.origins.remove(&state.task_uuid);
        } else {
            inner.remember_origin(&state);
        }
        Ok(())
    }

    async fn watch_state(&self, task_uuid: &str) -> Result<Option<StateWatch>> {
        let inner = &*self.inner;
        if inner.exchange().is_empty() {
            return Ok(None);
        }
        let session = inner.link.session().await?;
        crate::push::watch(&session, inner.exchange(), task_uuid).await
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        Ok(self.inner.read_latest(task_uuid).await?.map(|l| l.state))
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        let inner = &*self.inner;
        let meta = GroupMeta::new(group_uuid, task_uuids.to_vec());
        let body = meta.to_json()?;
        let group_queue = inner.group_queue(group_uuid);
        let meta_spec = inner.private_queue(meta_queue(group_uuid));
        let token_spec = inner.private_queue(chord_token_queue(group_uuid));
        let (body, group_queue, meta_spec, token_spec) =
            (&body, &group_queue, &meta_spec, &token_spec);
        inner
            .link
            .retrying("init group", |session| async move {
                let mut ch = session.channel().await?;
                topology::declare_on(&ch, group_queue).await?;
                for spec in [meta_spec, token_spec] {
                    topology::declare_on(&ch, spec).await?;
                    // Idempotent when retried: never two sets of metas nor two tokens.
                    topology::purge_on(&ch, &spec.name).await?;
                }
                ch.keep();
                drop(ch);
                let mut confirms = Vec::new();
                for _ in 0..META_COPIES {
                    confirms.push(
                        topology::send(
                            &session,
                            "",
                            &meta_spec.name,
                            body,
                            json_properties(0, None),
                            true,
                        )
                        .await?,
                    );
                }
                confirms.push(
                    topology::send(
                        &session,
                        "",
                        &token_spec.name,
                        b"{}",
                        json_properties(0, None),
                        true,
                    )
                    .await?,
                );
                for c in confirms {
                    if topology::confirmed(c, group_uuid).await? != Published::Stored {
                        return Err(error::temporary(format!(
                            "the bookkeeping of group `{group_uuid}` vanished while being written"
                        )));
                    }
                }
                Ok(())
            })
            .await?;
        inner.cache_members(&meta);
        Ok(())
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let inner = &*self.inner;
        let Some(members) = inner.members(group_uuid).await? else {
            // Not ours: a Go producer's group has only Go's group queue.
            return if inner.foreign_known(group_uuid).await? {
                inner.go_group_states(group_uuid).await
            } else {
                Err(Error::GroupNotFound(group_uuid.to_owned()))
            };
        };
        let done = inner.done_count(group_uuid).await?;
        let all_done = !members.is_empty() && done as usize >= members.len();
        let wait = if all_done {
            FINAL_STATE_WAIT
        } else {
            Duration::ZERO
        };
        let reads = members
            .iter()
            .cloned()
            .map(|uuid| member_state(inner, uuid, wait));
        let states: Vec<Result<TaskState>> = futures::stream::iter(reads)
            .buffered(GROUP_READ_CONCURRENCY)
            .collect()
            .await;
        states.into_iter().collect()
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        let inner = &*self.inner;
        if inner.members(group_uuid).await?.is_none() {
            // No meta and so no token: a Go producer's group, tracked in Go's group queue.
            return if inner.foreign_known(group_uuid).await? {
                inner.trigger_once(group_uuid).await
            } else {
                Err(Error::GroupNotFound(group_uuid.to_owned()))
            };
        }
        let token = chord_token_queue(group_uuid);
        let triggered = inner.private_queue(chord_triggered_queue(group_uuid));
        let (token, triggered) = (&token, &triggered);
        let taken = inner
            .link
            .retrying("trigger chord", |session| async move {
                let ch = session.channel().await?;
                let got = ch
                    .basic_get(
                        short("queue name", token)?,
                        BasicGetOptions { no_ack: false },
                    )
                    .await;
                match got {
                    Ok(Some(m)) => {
                        // Acknowledged before answering: if the connection is lost first,
                        // the token goes back and the retry (or another caller) takes it.
                        ch.basic_ack(m.delivery.delivery_tag, BasicAckOptions { multiple: false })
                            .await
                            .map_err(|e| error::amqp("take the chord token", e))?;
                        // Go's TriggerChord answers "already triggered" once this exists.
                        if let Err(e) = topology::declare_on(&ch, triggered).await {
                            tracing::warn!(group = group_uuid, error = %e, "amqp: could not create the chord-triggered marker for Go workers");
                        } else {
                            reusable(ch);
                        }
                        Ok(Some(true))
                    }
                    Ok(None) => {
                        reusable(ch);
                        Ok(Some(false))
                    }
                    Err(e) if error::is_not_found(&e) => Ok(None),
                    Err(e) => Err(error::amqp(format!("take the chord token of `{group_uuid}`"), e)),
                }
            })
            .await?;
        // No token queue: purged or expired since the meta was read.
        taken.ok_or_else(|| Error::GroupNotFound(group_uuid.to_owned()))
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let inner = &*self.inner;
        let ours = inner.members(group_uuid).await?.is_some();
        // Known: initialised here, or a Go producer's group adopted here or already counted
        // in Go's group queue by some worker.
        if !ours && !inner.foreign_known(group_uuid).await? {
            return Err(Error::GroupNotFound(group_uuid.to_owned()));
        }
        let counted = |n: u32| {
            if !ours {
                inner.saw_foreign_done(group_uuid, n as usize);
            }
            n as usize
        };
        let stripe = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            task_uuid.hash(&mut h);
            (h.finish() % MARK_STRIPES as u64) as usize
        };
        let _serial = inner.marking[stripe].lock().await;
        let Some(latest) = inner.read_final(task_uuid, MARK_WAIT).await? else {
            return Ok(counted(inner.done_count(group_uuid).await?));
        };
        let already =
            header_text(&latest.properties, GROUP_DONE_HEADER).as_deref() == Some(group_uuid);
        if already || !latest.state.is_completed() {
            return Ok(counted(inner.done_count(group_uuid).await?));
        }
        let body = latest.state.to_json()?;
        // Go's layout: the member's final state in the queue named by the group.
        let group_queue = inner.group_queue(group_uuid);
        inner
            .publish_to(&group_queue, group_uuid, &body, json_properties(0, None))
            .await?;
        // Remember it was counted: a copy of the same state, marked, becomes the latest
        // message of the task's queue (the next read drops the unmarked one).
        let mut headers = FieldTable::default();
        headers.insert(GROUP_DONE_HEADER.into(), header_string(group_uuid));
        inner
            .write_state(&body, task_uuid, json_properties(0, Some(headers)))
            .await?;
        Ok(counted(inner.done_count(group_uuid).await?))
    }

    async fn adopt_group(&self, group_uuid: &str, group_task_count: usize) -> Result<bool> {
        let inner = &*self.inner;
        if group_task_count == 0 || inner.members(group_uuid).await?.is_some() {
            return Ok(false);
        }
        // Go's layout for a group Go's producer sent: its group queue (declared here by
        // `done_count`) collects the members' final states.
        let count = inner.done_count(group_uuid).await?;
        inner.saw_foreign_done(group_uuid, count as usize);
        tracing::debug!(
            group = group_uuid,
            group_task_count,
            "amqp: tracking a group sent without group meta (Go's AMQP backend keeps none) in its group queue"
        );
        Ok(true)
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.inner.origins.remove(task_uuid);
        self.inner
            .link
            .retrying("purge state", |session| async move {
                topology::delete(&session, task_uuid).await
            })
            .await
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        self.inner.metas.remove(group_uuid);
        self.inner.foreign.remove(group_uuid);
        self.inner.foreign_done.remove(group_uuid);
        let queues = [
            group_uuid.to_owned(),
            meta_queue(group_uuid),
            chord_token_queue(group_uuid),
            chord_triggered_queue(group_uuid),
            chord_once_queue(group_uuid),
        ];
        let queues = &queues;
        self.inner
            .link
            .retrying("purge group", |session| async move {
                for q in queues {
                    topology::delete(&session, q).await?;
                }
                Ok(())
            })
            .await
    }
}
