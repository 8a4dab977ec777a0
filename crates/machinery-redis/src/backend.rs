//! `RedisBackend`: task states and group metas under their UUID keys, in Go's JSON.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use machinery_core::{
    Backend, BackendCapabilities, Error, GroupMeta, Result, State, StateWatch, TaskState, TtlCache,
    json,
};
use redis::AsyncCommands;

use crate::client::{Conn, retry_once};
use crate::config::RedisConfig;
use crate::error::{self, DRIVER};
use crate::push::{self, StatePush};
use crate::scripts;

/// The Redis result backend. Cheap to clone; clones share one connection.
///
/// Keys are Go's: `SET <task uuid> <TaskState json> EX <ttl>` and
/// `SET <group uuid> <GroupMeta json> EX <ttl>`.
#[derive(Clone)]
pub struct RedisBackend {
    inner: Arc<Inner>,
}

struct Inner {
    conn: Conn,
    ttl_secs: u64,
    display: String,
    /// What the store holds for a task whose run this process is in (between RECEIVED and
    /// its final state): the task name and creation time JSON. It saves a read-merge-write per
    /// state: STARTED and SUCCESS become plain `SET`s with the same bytes the merge would give.
    kept: TtlCache<(Vec<u8>, Vec<u8>)>,
    /// Result waiters' subscriptions; `None` on a cluster (final states are not announced).
    push: Option<StatePush>,
}

/// How long a kept entry is trusted, and how many are kept at most.
const KEPT_FOR: Duration = Duration::from_secs(300);
const KEPT_MAX: usize = 100_000;

impl fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.inner.display)
            .field("cluster", &self.inner.conn.is_cluster())
            .field("ttl_secs", &self.inner.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connect to the server (or cluster) named by `config.url`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL; [`Error::Backend`] naming the server (password
    /// redacted) when it cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let (conn, target) = Conn::connect(&config).await?;
        let push_client = if target.cluster {
            None
        } else {
            Some(crate::client::single_client(&config, &target)?)
        };
        Ok(Self::from_parts(conn, &config, target.display, push_client))
    }

    /// Connect with the default settings to `url`.
    ///
    /// # Errors
    /// As [`RedisBackend::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(RedisConfig::from_url(url)).await
    }

    /// `push_client` (single node only) opens the connection result waiters subscribe on.
    pub(crate) fn from_parts(
        conn: Conn,
        config: &RedisConfig,
        display: String,
        push_client: Option<redis::Client>,
    ) -> Self {
        let push = push_client
            .filter(|_| !conn.is_cluster())
            .map(|c| StatePush::new(c, config.connect_timeout()));
        RedisBackend {
            inner: Arc::new(Inner {
                conn,
                ttl_secs: config.results_ttl_secs(),
                display,
                kept: TtlCache::new(KEPT_MAX),
                push,
            }),
        }
    }

    fn conn(&self) -> Conn {
        self.inner.conn.clone()
    }

    /// A final state: `SET key body EX ttl` and, without a cluster, `PUBLISH` of the same
    /// body on the task's channel right after it, pipelined in one round trip (plain
    /// commands: a script per task cost Redis ~8 µs more than the two), once more after a
    /// dropped connection. A waiter takes the state from the message without reading it
    /// back; the `PUBLISH` follows the `SET` on the same connection, so a waiter that reads
    /// anyway finds it, and a push lost with the connection is covered by the re-reads.
    async fn put_final(&self, key: &str, body: &[u8]) -> redis::RedisResult<()> {
        if self.inner.push.is_none() {
            return self.put(key, body).await;
        }
        let ttl = self.inner.ttl_secs;
        let channel = push::channel(key);
        let channel = &channel;
        retry_once(&self.inner.conn, |mut c| async move {
            let mut pipe = redis::pipe();
            pipe.set_ex(key, body, ttl)
                .publish(channel, body)
                .ignore_errors();
            // Only the SET's outcome counts: a refused PUBLISH (an ACL without channels) only
            // loses the push, and the waiters' re-reads find the state.
            let mut replies: Vec<redis::RedisResult<redis::Value>> =
                pipe.query_async(&mut c).await?;
            if replies.is_empty() {
                return Ok(());
            }
            replies.swap_remove(0).map(drop)
        })
        .await
    }

    /// `SET key body EX ttl`, once more after a dropped connection (same bytes, same key).
    async fn put(&self, key: &str, body: &[u8]) -> redis::RedisResult<()> {
        let ttl = self.inner.ttl_secs;
        retry_once(&self.inner.conn, |mut c| async move {
            c.set_ex::<_, _, ()>(key, body, ttl).await
        })
        .await
    }

    /// The task name and creation time JSON a non-PENDING state of `key` keeps: what this
    /// process remembers of the run, else Go's merge: read the stored state and keep its
    /// `CreatedAt` (and `TaskName`, used when ours is empty), as Go's GET-then-SET does (two
    /// plain commands; the later states of the run come from `kept` without a read).
    async fn name_and_created(
        &self,
        key: &str,
        p: &StatePieces<'_>,
    ) -> redis::RedisResult<(Vec<u8>, Vec<u8>)> {
        if let Some(kept) = self.recall(key) {
            return Ok(kept);
        }
        let old: Option<Vec<u8>> =
            retry_once(&self.inner.conn, |mut c| async move { c.get(key).await }).await?;
        let stored = old.as_deref().map(stored_name_and_created);
        let created = stored
            .and_then(|(_, c)| c)
            .map_or_else(|| p.created.to_vec(), <[u8]>::to_vec);
        let name = stored
            .and_then(|(n, _)| n)
            .map_or_else(|| p.name.to_vec(), <[u8]>::to_vec);
        Ok((name, created))
    }

    fn recall(&self, task_uuid: &str) -> Option<(Vec<u8>, Vec<u8>)> {
        self.inner.kept.get(task_uuid)
    }

    fn remember(&self, task_uuid: &str, name: Vec<u8>, created: Vec<u8>) {
        self.inner
            .kept
            .insert(task_uuid.to_owned(), (name, created), KEPT_FOR);
    }

    fn forget(&self, task_uuid: &str) {
        self.inner.kept.remove(task_uuid);
    }

    async fn group_raw(&self, group_uuid: &str) -> Result<(GroupMeta, Vec<Option<Vec<u8>>>)> {
        let fail = |e| error::map(format!("cannot read group {group_uuid}"), e);
        let mut conn = self.conn();
        if conn.is_cluster() {
            // Member keys live on other nodes: read the meta, then one MGET that the cluster
            // client splits per node.
            let meta: Option<Vec<u8>> = conn.get(group_uuid).await.map_err(fail)?;
            let meta = meta.ok_or_else(|| Error::GroupNotFound(group_uuid.to_owned()))?;
            let meta = GroupMeta::from_json(&meta)?;
            if meta.task_uuids.is_empty() {
                return Ok((meta, Vec::new()));
            }
            let states: Vec<Option<Vec<u8>>> = redis::cmd("MGET")
                .arg(&meta.task_uuids)
                .query_async(&mut conn)
                .await
                .map_err(fail)?;
            return Ok((meta, states));
        }
        let reply: Option<Vec<Option<Vec<u8>>>> = scripts::GROUP_STATES
            .key(group_uuid)
            .invoke_async(&mut conn)
            .await
            .map_err(fail)?;
        let mut reply = reply.ok_or_else(|| Error::GroupNotFound(group_uuid.to_owned()))?;
        if reply.is_empty() {
            return Err(Error::GroupNotFound(group_uuid.to_owned()));
        }
        let meta = reply.remove(0).unwrap_or_default();
        let meta = GroupMeta::from_json(&meta)?;
        Ok((meta, reply))
    }
}

/// The keys that count a group's finished members (next to Go's group meta key).
struct GroupKeys {
    done: String,
    waiting: String,
}

impl GroupKeys {
    fn new(group_uuid: &str) -> Self {
        GroupKeys {
            done: format!("{group_uuid}.done"),
            waiting: format!("{group_uuid}.waiting"),
        }
    }
}

/// The new state's JSON cut around the task name and the creation time, to splice in the
/// stored ones.
struct StatePieces<'a> {
    head: &'a [u8],
    name: &'a [u8],
    middle: &'a [u8],
    created: &'a [u8],
    tail: &'a [u8],
}

impl StatePieces<'_> {
    /// Our task name, or `stored` when ours is empty.
    fn chosen_name<'a>(&'a self, stored: &'a [u8]) -> &'a [u8] {
        if self.name == b"\"\"" {
            stored
        } else {
            self.name
        }
    }

    /// The state's JSON with the chosen name and the stored creation time spliced in.
    fn join(&self, stored_name: &[u8], created: &[u8]) -> Vec<u8> {
        [
            self.head,
            self.chosen_name(stored_name),
            self.middle,
            created,
            self.tail,
        ]
        .concat()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// The stored state's task name JSON (only the first `"TaskName":` is the key: only the task
/// UUID, a string, precedes it) and creation time JSON (the last `,"CreatedAt":` is the key:
/// it is the last-but-one field, and only `Results` before it may hold nested objects), each
/// with its quotes, when found.
fn stored_name_and_created(old: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    const NAME_KEY: &[u8] = b"\"TaskName\":\"";
    const CREATED_KEY: &[u8] = b",\"CreatedAt\":\"";
    let created = rfind(old, CREATED_KEY).and_then(|i| {
        let open = i + CREATED_KEY.len() - 1;
        let close = open + 1 + old[open + 1..].iter().position(|&b| b == b'"')?;
        Some(&old[open..=close])
    });
    let name = find(old, NAME_KEY).and_then(|i| {
        let open = i + NAME_KEY.len() - 1;
        let mut j = open + 1;
        while j < old.len() {
            match old[j] {
                b'\\' => j += 2,
                b'"' => return Some(&old[open..=j]),
                _ => j += 1,
            }
        }
        None
    });
    (name, created)
}

/// Cut Go's `{"TaskUUID":…,"TaskName":<name>,…,"CreatedAt":<time>,"TTL":…}`. The first
/// `"TaskName":` and the last `,"CreatedAt":` are the keys themselves: a key cannot occur
/// inside a string value, whose quotes are escaped, and only `Results` (before `CreatedAt`)
/// may hold nested objects.
fn split_state<'a>(json: &'a [u8], state: &TaskState) -> Result<StatePieces<'a>> {
    let bad = || Error::decode("task state", "unexpected layout of the encoded state");
    const NAME_KEY: &[u8] = b",\"TaskName\":";
    const CREATED_KEY: &[u8] = b",\"CreatedAt\":";
    const TTL_KEY: &[u8] = b",\"TTL\":";
    let name_start = find(json, NAME_KEY).ok_or_else(bad)? + NAME_KEY.len();
    let name_json =
        json::to_vec(&state.task_name).map_err(|e| Error::encode_caused("task state", e))?;
    let name_end = name_start + name_json.len();
    if json.get(name_start..name_end) != Some(&name_json[..]) {
        return Err(bad());
    }
    let created_start = rfind(json, CREATED_KEY).ok_or_else(bad)? + CREATED_KEY.len();
    let created_end = rfind(json, TTL_KEY).ok_or_else(bad)?;
    if created_start < name_end || created_end <= created_start {
        return Err(bad());
    }
    Ok(StatePieces {
        head: &json[..name_start],
        name: &json[name_start..name_end],
        middle: &json[name_end..created_start],
        created: &json[created_start..created_end],
        tail: &json[created_end..],
    })
}

#[async_trait]
impl Backend for RedisBackend {
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
            batched_group_states: !self.inner.conn.is_cluster(),
            group_completion_counter: !self.inner.conn.is_cluster(),
            pushes_states: self.inner.push.is_some(),
            ..Default::default()
        }
    }

    async fn set_state(&self, state: &TaskState) -> Result<()> {
        let json = state.to_json()?;
        let key = &state.task_uuid;
        let fail = |e| error::map(format!("cannot store the state of {key}"), e);
        if state.state == State::Pending {
            // Go writes PENDING afresh (a retry gets a new CreatedAt).
            self.forget(key);
            return self.put(key, &json).await.map_err(fail);
        }
        let p = split_state(&json, state)?;
        let run_ends = state.state.is_completed() || state.state == State::Retry;
        let (name, created) = self.name_and_created(key, &p).await.map_err(fail)?;
        let body = p.join(&name, &created);
        if run_ends {
            self.forget(key);
        } else {
            self.remember(key, p.chosen_name(&name).to_vec(), created);
        }
        if state.state.is_completed() {
            return self.put_final(key, &body).await.map_err(fail);
        }
        self.put(key, &body).await.map_err(fail)
    }

    /// RECEIVED and STARTED of one run (what the worker passes) go out in one round trip,
    /// after the one read of the merge: `SET … EX` each, pipelined in order. Anything else is
    /// stored state by state.
    async fn set_states(&self, states: &[TaskState]) -> Result<()> {
        let Some(first) = states.first() else {
            return Ok(());
        };
        let key = &first.task_uuid;
        let mid_run = |s: &TaskState| {
            s.task_uuid == *key && matches!(s.state, State::Received | State::Started)
        };
        if states.len() < 2 || !states.iter().all(mid_run) {
            for state in states {
                self.set_state(state).await?;
            }
            return Ok(());
        }
        let fail = |e| error::map(format!("cannot store the state of {key}"), e);
        let jsons = states
            .iter()
            .map(TaskState::to_json)
            .collect::<Result<Vec<_>>>()?;
        let pieces = jsons
            .iter()
            .zip(states)
            .map(|(j, s)| split_state(j, s))
            .collect::<Result<Vec<_>>>()?;
        let (name, created) = self.name_and_created(key, &pieces[0]).await.map_err(fail)?;
        let bodies: Vec<Vec<u8>> = pieces.iter().map(|p| p.join(&name, &created)).collect();
        let last = pieces.last().expect("two or more");
        self.remember(key, last.chosen_name(&name).to_vec(), created);
        let ttl = self.inner.ttl_secs;
        let bodies = &bodies;
        retry_once(&self.inner.conn, |mut c| async move {
            let mut pipe = redis::pipe();
            for body in bodies {
                pipe.set_ex(key, body, ttl).ignore();
            }
            pipe.query_async::<()>(&mut c).await
        })
        .await
        .map_err(fail)
    }

    async fn watch_state(&self, task_uuid: &str) -> Result<Option<StateWatch>> {
        Ok(match &self.inner.push {
            Some(push) => push.watch(task_uuid).await,
            None => None,
        })
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        let raw: Option<Vec<u8>> =
            retry_once(
                &self.inner.conn,
                |mut c| async move { c.get(task_uuid).await },
            )
            .await
            .map_err(|e| error::map(format!("cannot read the state of {task_uuid}"), e))?;
        raw.map(|r| TaskState::from_json(&r)).transpose()
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        let meta = GroupMeta::new(group_uuid, task_uuids.to_vec()).to_json()?;
        let ttl = self.inner.ttl_secs;
        retry_once(&self.inner.conn, |mut c| {
            let meta = &meta;
            async move { c.set_ex::<_, _, ()>(group_uuid, meta, ttl).await }
        })
        .await
        .map_err(|e| error::map(format!("cannot store group {group_uuid}"), e))
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let (meta, raw) = self.group_raw(group_uuid).await?;
        let mut raw = raw.into_iter();
        meta.task_uuids
            .into_iter()
            .map(|uuid| match raw.next().flatten() {
                Some(bytes) => TaskState::from_json(&bytes),
                None => Ok(TaskState {
                    task_uuid: uuid,
                    state: State::Pending,
                    ..TaskState::default()
                }),
            })
            .collect()
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        let mut conn = self.conn();
        // Go reads and rewrites the meta under its `TriggerChordMutex`: flip inside it too, so
        // that a Go worker never sees `false` between our flip and its write.
        let token = go_chord_mutex_lock(&mut conn).await?;
        let flipped: redis::RedisResult<i64> = scripts::TRIGGER_CHORD
            .key(group_uuid)
            .invoke_async(&mut conn)
            .await;
        go_chord_mutex_unlock(&mut conn, &token).await;
        let outcome = flipped
            .map_err(|e| error::map(format!("cannot trigger the chord of {group_uuid}"), e))?;
        match outcome {
            1 => Ok(true),
            0 => Ok(false),
            _ => Err(Error::GroupNotFound(group_uuid.to_owned())),
        }
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let mut conn = self.conn();
        if conn.is_cluster() {
            // The bookkeeping keys cannot share the group's hash slot: count the states.
            let states = self.group_states(group_uuid).await?;
            return Ok(states.iter().filter(|s| s.is_completed()).count());
        }
        let keys = GroupKeys::new(group_uuid);
        let done: i64 = scripts::MARK_DONE
            .key(group_uuid)
            .key(&keys.done)
            .key(&keys.waiting)
            .arg(task_uuid)
            .arg(self.inner.ttl_secs)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| error::map(format!("cannot count the members of {group_uuid}"), e))?;
        usize::try_from(done).map_err(|_| Error::GroupNotFound(group_uuid.to_owned()))
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.forget(task_uuid);
        let mut conn = self.conn();
        conn.del::<_, ()>(task_uuid)
            .await
            .map_err(|e| error::map(format!("cannot delete the state of {task_uuid}"), e))
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        let keys = GroupKeys::new(group_uuid);
        let mut conn = self.conn();
        // The cluster client splits a multi-key DEL per slot by itself.
        conn.del::<_, ()>(&[group_uuid, &keys.done, &keys.waiting][..])
            .await
            .map_err(|e| error::map(format!("cannot delete group {group_uuid}"), e))
    }
}

/// Go's chord mutex (redsync, one key for every group): `SET TriggerChordMutex <random token>
/// NX PX 8000`, released by a compare-and-delete script.
const GO_CHORD_MUTEX: &str = "TriggerChordMutex";
const GO_CHORD_MUTEX_TTL_MS: u64 = 8000;

/// Take Go's chord mutex, retrying (after short random pauses) while someone else holds it,
/// for a little longer than its expiry, so that a holder that died does not fail us. Returns
/// the token to release it with.
async fn go_chord_mutex_lock(conn: &mut Conn) -> Result<String> {
    use base64::Engine as _;
    let token =
        base64::engine::general_purpose::STANDARD.encode(rand::random::<[u8; 16]>().as_slice());
    let give_up = Instant::now() + Duration::from_millis(GO_CHORD_MUTEX_TTL_MS + 2000);
    loop {
        let taken: Option<String> = redis::cmd("SET")
            .arg(GO_CHORD_MUTEX)
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(GO_CHORD_MUTEX_TTL_MS)
            .query_async(conn)
            .await
            .map_err(|e| error::map(format!("cannot take {GO_CHORD_MUTEX}"), e))?;
        if taken.is_some() {
            return Ok(token);
        }
        if Instant::now() > give_up {
            return Err(Error::Backend {
                driver: DRIVER,
                message: format!(
                    "cannot take {GO_CHORD_MUTEX}: held by someone else for more than its {GO_CHORD_MUTEX_TTL_MS} ms expiry"
                ),
                temporary: true,
                source: None,
            });
        }
        let pause = Duration::from_micros(500 + rand::random::<u64>() % 4500);
        tokio::time::sleep(pause).await;
    }
}

/// Release Go's chord mutex if we still hold it (Go's own compare-and-delete script). A
/// failure is logged: the mutex then expires by itself.
async fn go_chord_mutex_unlock(conn: &mut Conn, token: &str) {
    let released: redis::RedisResult<i64> = scripts::UNLOCK
        .key(GO_CHORD_MUTEX)
        .arg(token)
        .invoke_async(conn)
        .await;
    if let Err(e) = released {
        tracing::warn!(error = %e, "redis: cannot release {GO_CHORD_MUTEX}; it expires within {GO_CHORD_MUTEX_TTL_MS} ms");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use machinery_core::{Signature, TaskResult};

    fn rejoin(p: &StatePieces<'_>) -> Vec<u8> {
        [p.head, p.name, p.middle, p.created, p.tail].concat()
    }

    #[test]
    fn split_state_cuts_around_name_and_created_at() {
        let sig = Signature::new("add");
        let mut st = TaskState::success(&sig, vec![TaskResult::new(5_i64)]);
        st.error = "\",\"CreatedAt\":\"x".to_owned();
        let json = st.to_json().unwrap();
        let p = split_state(&json, &st).unwrap();
        assert_eq!(rejoin(&p), json);
        assert_eq!(p.name, b"\"add\"");
        assert!(p.head.ends_with(b"\"TaskName\":"));
        assert!(p.middle.ends_with(b",\"CreatedAt\":"));
        assert!(p.created.starts_with(b"\"") && p.created.ends_with(b"Z\""));
        assert!(p.tail.starts_with(b",\"TTL\":"));
    }

    #[test]
    fn split_state_with_odd_names() {
        for name in ["", "a\"b", "<x&y>", "é\\"] {
            let sig = Signature::new(name);
            let st = TaskState::new(&sig, State::Started);
            let json = st.to_json().unwrap();
            let p = split_state(&json, &st).unwrap();
            assert_eq!(rejoin(&p), json);
            assert_eq!(p.name, &json::to_vec(name).unwrap()[..]);
        }
    }

    #[test]
    fn split_state_of_go_fixtures() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/go/states");
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("Go fixtures missing at {}: {e}", dir.display()));
        let mut seen = 0;
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let Ok(st) = TaskState::from_json(&bytes) else {
                continue; // group metas
            };
            let json = st.to_json().unwrap();
            let p = split_state(&json, &st).unwrap();
            assert_eq!(rejoin(&p), json, "{}", path.display());
            seen += 1;
        }
        assert!(
            seen > 10,
            "only {seen} Go states read from {}",
            dir.display()
        );
    }
}
