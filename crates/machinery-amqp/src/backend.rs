//! [`AmqpBackend`]: Go Machinery's queue-per-task result layout on long-lived connections,
//! with reads that return the latest state and a chord trigger that fires once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicAckOptions, BasicGetOptions, BasicNackOptions, QueueDeclareOptions};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ErrorKind};
use machinery_core::{
    Backend, BackendCapabilities, Error, GroupMeta, Result, State, TaskState, Timestamp, time,
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
    metas: Mutex<HashMap<String, Cached<Arc<Vec<String>>>>>,
    /// `CreatedAt` / `TaskName` of tasks this process wrote or read, to keep them in later
    /// states without reading the queue each time.
    origins: Mutex<HashMap<String, Cached<(Timestamp, String)>>>,
    /// Serialises this process's callers of the fallback chord trigger (an exclusive queue
    /// excludes other connections, not callers sharing ours).
    claim: tokio::sync::Mutex<()>,
    /// Striped locks serialising this process's marks of one member, so that concurrent
    /// repeats see each other's marker.
    marking: Vec<tokio::sync::Mutex<()>>,
}

/// Number of [`BackendInner::marking`] stripes.
const MARK_STRIPES: usize = 64;

#[derive(Clone)]
struct Cached<T> {
    value: T,
    until: Instant,
}

fn cache_get<T: Clone>(m: &Mutex<HashMap<String, Cached<T>>>, key: &str) -> Option<T> {
    let mut map = lock(m);
    match map.get(key) {
        Some(c) if c.until > Instant::now() => Some(c.value.clone()),
        Some(_) => {
            map.remove(key);
            None
        }
        None => None,
    }
}

fn cache_put<T>(m: &Mutex<HashMap<String, Cached<T>>>, key: String, value: T, ttl: Duration) {
    let mut map = lock(m);
    if map.len() >= CACHE_MAX {
        let now = Instant::now();
        map.retain(|_, c| c.until > now);
        if map.len() >= CACHE_MAX {
            map.clear();
        }
    }
    map.insert(
        key,
        Cached {
            value,
            until: Instant::now() + ttl,
        },
    );
}

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

fn chord_claim_queue(group: &str) -> String {
    format!("{group}_chord_claim")
}

fn chord_triggered_queue(group: &str) -> String {
    format!("{group}_chord_triggered")
}

fn is_resource_locked(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(p)
        if matches!(p.kind(), AMQPErrorKind::Soft(AMQPSoftError::RESOURCELOCKED | AMQPSoftError::ACCESSREFUSED)))
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
                metas: Mutex::new(HashMap::new()),
                origins: Mutex::new(HashMap::new()),
                claim: tokio::sync::Mutex::new(()),
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
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
            cache_put(
                &self.metas,
                meta.group_uuid.clone(),
                Arc::clone(&members),
                left,
            );
        }
        members
    }

    /// The members of `group` in order, or `None` when the group has no meta of ours (it
    /// was not initialised by this backend, e.g. a Go producer's group, or it expired).
    async fn members(&self, group: &str) -> Result<Option<Arc<Vec<String>>>> {
        if let Some(m) = cache_get(&self.metas, group) {
            return Ok(Some(m));
        }
        let queue = meta_queue(group);
        let meta = self
            .link
            .retrying("read group meta", |session| {
                let queue = &queue;
                async move { read_meta(&session, group, queue).await }
            })
            .await?;
        Ok(meta.map(|m| self.cache_members(&m)))
    }

    /// How many final member states the group queue holds (Go's `GroupCompleted` count), or
    /// `None` when there is no group queue.
    async fn done_count(&self, group: &str) -> Result<Option<u32>> {
        self.link
            .retrying("inspect group queue", |session| async move {
                let ch = session.channel().await?;
                match ch
                    .queue_declare(
                        short("queue name", group)?,
                        QueueDeclareOptions {
                            passive: true,
                            ..QueueDeclareOptions::default()
                        },
                        FieldTable::default(),
                    )
                    .await
                {
                    Ok(q) => {
                        reusable(ch);
                        Ok(Some(q.message_count()))
                    }
                    Err(e) if error::is_not_found(&e) => Ok(None),
                    Err(e) => Err(error::amqp(format!("inspect queue `{group}`"), e)),
                }
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
        let mut pause = Duration::from_millis(5);
        loop {
            let latest = self.read_latest(task_uuid).await?;
            if latest.as_ref().is_some_and(|l| l.state.is_completed()) || Instant::now() >= deadline
            {
                return Ok(latest);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    fn remember_origin(&self, state: &TaskState) {
        cache_put(
            &self.origins,
            state.task_uuid.clone(),
            (state.created_at, state.task_name.clone()),
            self.ttl(),
        );
    }

    /// `CreatedAt` and `TaskName` of the task's stored state.
    async fn origin(&self, task_uuid: &str) -> Result<Option<(Timestamp, String)>> {
        if let Some(o) = cache_get(&self.origins, task_uuid) {
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
    /// them.
    async fn go_group_states(&self, group: &str) -> Result<Vec<TaskState>> {
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
        Ok(states)
    }

    /// The chord trigger for a group without our token (a Go producer's group): one winner
    /// through an exclusive claim queue (one connection at a time may declare it), recorded
    /// in `<group>_chord_triggered` (the queue Go's `TriggerChord` looks for).
    async fn trigger_by_claim(&self, group: &str) -> Result<bool> {
        let _local = self.claim.lock().await;
        let triggered = self.private_queue(chord_triggered_queue(group));
        let claim = chord_claim_queue(group);
        let (triggered, claim) = (&triggered, &claim);
        self.link
            .retrying("trigger chord", |session| async move {
                if queue_exists(&session, &triggered.name).await? {
                    return Ok(false);
                }
                let mut ch = session.channel().await?;
                let claimed = ch
                    .queue_declare(
                        short("queue name", claim)?,
                        QueueDeclareOptions {
                            passive: false,
                            durable: false,
                            exclusive: true,
                            auto_delete: true,
                            nowait: false,
                        },
                        FieldTable::default(),
                    )
                    .await;
                match claimed {
                    Ok(_) => {}
                    Err(e) if is_resource_locked(&e) => return Ok(false),
                    Err(e) => return Err(error::amqp(format!("claim the chord of `{group}`"), e)),
                }
                // Someone may have won and released the claim since the first check.
                let won = !queue_exists(&session, &triggered.name).await?;
                if won {
                    topology::declare_on(&ch, triggered).await?;
                }
                topology::delete_on(&ch, claim).await?;
                ch.keep();
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

/// Whether `queue` exists (passive declaration on a throw-away channel: a 404 closes it).
async fn queue_exists(session: &Arc<Session>, queue: &str) -> Result<bool> {
    let ch = session.channel().await?;
    match ch
        .queue_declare(
            short("queue name", queue)?,
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
    {
        Ok(_) => {
            reusable(ch);
            Ok(true)
        }
        Err(e) if error::is_not_found(&e) => Ok(false),
        Err(e) => Err(error::amqp(format!("inspect queue `{queue}`"), e)),
    }
}

/// The group meta from `<group>_meta`, put back after reading; `None` when there is none.
async fn read_meta(session: &Arc<Session>, group: &str, queue: &str) -> Result<Option<GroupMeta>> {
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
            Err(e) if error::is_not_found(&e) => return Ok(None),
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
            batched_group_states: false,
            group_completion_counter: true,
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
            lock(&inner.origins).remove(&state.task_uuid);
        } else {
            inner.remember_origin(&state);
        }
        Ok(())
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
            return match inner.done_count(group_uuid).await? {
                Some(n) if n > 0 => inner.go_group_states(group_uuid).await,
                _ => Err(Error::NotFound(group_uuid.to_owned())),
            };
        };
        let done = inner.done_count(group_uuid).await?.unwrap_or(0);
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
        match taken {
            Some(won) => Ok(won),
            // No token: a group we did not initialise. Go's group queue proves it exists.
            None => match inner.done_count(group_uuid).await? {
                Some(_) => inner.trigger_by_claim(group_uuid).await,
                None => Err(Error::NotFound(group_uuid.to_owned())),
            },
        }
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let inner = &*self.inner;
        let counted = |n: Option<u32>| n.unwrap_or(0) as usize;
        // Known: initialised here, or a Go producer's group that a Go worker already marked.
        if inner.members(group_uuid).await?.is_none()
            && inner.done_count(group_uuid).await?.is_none()
        {
            return Err(Error::NotFound(group_uuid.to_owned()));
        }
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

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        lock(&self.inner.origins).remove(task_uuid);
        self.inner
            .link
            .retrying("purge state", |session| async move {
                topology::delete(&session, task_uuid).await
            })
            .await
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        lock(&self.inner.metas).remove(group_uuid);
        let queues = [
            group_uuid.to_owned(),
            meta_queue(group_uuid),
            chord_token_queue(group_uuid),
            chord_triggered_queue(group_uuid),
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
