//! `MemcacheBackend`: task states and group metas under their UUID keys, in Go's JSON, on the
//! server Go's client picks for each key.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use machinery_core::{
    Backend, BackendCapabilities, Error, GroupMeta, Result, State, TaskState, TtlCache,
};
use memcache::exp::{Arithmetic, Delete, Get, GetResult, Meta, MutationStatus, Set, Ttl};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::client::Client;
use crate::config::MemcacheConfig;
use crate::error::{self, DRIVER};

/// The memcache result backend. Cheap to clone; clones share the connection pools.
///
/// Keys are Go's: the task UUID holds its `TaskState` JSON and the group UUID its
/// `GroupMeta` JSON, client flags 0, expiry an absolute Unix time (now +
/// `results_expire_in`), each on `servers[crc32(key) % servers.len()]` as gomemcache picks.
#[derive(Clone)]
pub struct MemcacheBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    ttl_secs: u64,
    cas_attempts: u32,
    member_claim_wait: Duration,
    url: String,
    /// What the store held for a task whose run this process is in (between RECEIVED and
    /// its final state): its name and creation time. STARTED and SUCCESS then become plain
    /// `set`s of the same bytes the read-merge-cas would write, one round trip instead of two.
    kept: TtlCache<(String, machinery_core::Timestamp)>,
}

/// How long a kept entry is trusted, and how many are kept at most.
const KEPT_FOR: Duration = Duration::from_secs(300);
const KEPT_MAX: usize = 100_000;

impl fmt::Debug for MemcacheBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcacheBackend")
            .field("url", &self.inner.url)
            .field("ttl_secs", &self.inner.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// Value of a member's done key while its caller has not counted it yet.
const COUNTING: &[u8] = b"counting";
/// Value of a member's done key once the group counter includes it.
const COUNTED: &[u8] = b"counted";

/// The keys next to Go's group meta that count a group's finished members.
fn counter_key(group_uuid: &str) -> String {
    format!("{group_uuid}.done")
}

/// The value of a hit, `None` for a miss.
fn hit_value(got: GetResult) -> Option<Vec<u8>> {
    if got.hit() { got.value } else { None }
}

fn member_key(group_uuid: &str, task_uuid: &str) -> String {
    format!("{group_uuid}.done.{task_uuid}")
}

impl MemcacheBackend {
    /// Connect to the servers named by `config.url`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL; [`Error::Backend`] naming the servers when none of
    /// them answers.
    pub async fn connect(config: MemcacheConfig) -> Result<Self> {
        let client = Client::connect(&config).await?;
        Ok(MemcacheBackend {
            inner: Arc::new(Inner {
                client,
                ttl_secs: config.results_ttl_secs(),
                cas_attempts: config.cas_attempts.max(1),
                member_claim_wait: config.member_claim_wait,
                url: config.url,
                kept: TtlCache::new(KEPT_MAX),
            }),
        })
    }

    /// Connect with the default settings to `url`.
    ///
    /// # Errors
    /// As [`MemcacheBackend::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(MemcacheConfig::from_url(url)).await
    }

    /// The servers, `host:port`, in URL order.
    pub fn servers(&self) -> &[String] {
        self.inner.client.servers()
    }

    /// The server (`host:port`) that holds `key`: the one Go's client picks.
    pub fn server_for(&self, key: &str) -> &str {
        self.inner.client.server_of(key.as_bytes())
    }

    /// The largest value (in bytes) that can be stored under `key` on its server:
    /// `item_size_max` from its `stats settings` less the item header and the key.
    pub fn value_limit(&self, key: &str) -> usize {
        self.inner.client.value_limit(key.as_bytes())
    }

    fn recall(&self, task_uuid: &str) -> Option<(String, machinery_core::Timestamp)> {
        self.inner.kept.get(task_uuid)
    }

    fn remember(&self, state: &TaskState) {
        self.inner.kept.insert(
            state.task_uuid.clone(),
            (state.task_name.clone(), state.created_at),
            KEPT_FOR,
        );
    }

    fn forget(&self, task_uuid: &str) {
        self.inner.kept.remove(task_uuid);
    }

    fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The absolute expiry Go sends: now + `results_expire_in`, as a Unix time, rounded up to
    /// the next whole second (memcached counts whole seconds: rounding down would let a 1 s
    /// expiry end at once).
    fn expiry(&self) -> Ttl {
        let at = SystemTime::now() + Duration::from_secs(self.inner.ttl_secs);
        let secs = at
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0))
            .unwrap_or(0);
        Ttl::at(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
    }

    fn set_op(&self, key: &str, value: &[u8]) -> Set {
        Set::new(key, value).ttl(self.expiry())
    }

    /// Check the key and value size, then `set` (Go's write).
    async fn put(&self, what: &'static str, key: &str, value: &[u8]) -> Result<()> {
        self.client().check_key(key)?;
        self.client().check_value(what, key, value.len())?;
        let result = self
            .client()
            .run(&format!("store {key}"), self.set_op(key, value), true)
            .await?;
        if result.applied() {
            Ok(())
        } else {
            Err(error::plain(
                format!("memcached did not store {key} ({:?})", result.status),
                true,
            ))
        }
    }

    async fn get(&self, key: &str, with_cas: bool) -> Result<GetResult> {
        self.client().check_key(key)?;
        let mut op = Get::new(key);
        if with_cas {
            op = op.meta(Meta::NONE.cas());
        }
        self.client().run(&format!("read {key}"), op, true).await
    }

    async fn group_meta(&self, group_uuid: &str, with_cas: bool) -> Result<(GroupMeta, u64)> {
        let got = self.get(group_uuid, with_cas).await?;
        let cas = got.item.cas.unwrap_or(0);
        let Some(bytes) = hit_value(got) else {
            return Err(Error::GroupNotFound(group_uuid.to_owned()));
        };
        let meta = GroupMeta::from_json(&bytes).inspect_err(|e| {
            warn!(group = group_uuid, error = %e, "stored group meta does not decode");
        })?;
        Ok((meta, cas))
    }

    /// The count of finished members by reading every member's state (O(group size)); for a
    /// group whose counter is missing (created by Go, or evicted) or whose keys are too long.
    async fn count_completed(&self, group_uuid: &str) -> Result<usize> {
        Ok(self
            .group_states(group_uuid)
            .await?
            .iter()
            .filter(|s| s.is_completed())
            .count())
    }

    /// `incr` the group counter (never creating it). `None` when it does not exist.
    async fn bump(&self, counter: &str) -> Result<Option<usize>> {
        let got = self
            .client()
            .run(
                &format!("count a member of {counter}"),
                Arithmetic::new(counter),
                false,
            )
            .await?;
        Ok(match got.status {
            MutationStatus::Applied => got.value.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            _ => None,
        })
    }

    async fn read_counter(&self, counter: &str) -> Result<Option<usize>> {
        let got = self.get(counter, false).await?;
        Ok(hit_value(got).and_then(|v| {
            std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<usize>().ok())
        }))
    }

    /// After this caller claimed `member` (its done key holds [`COUNTING`]): count it, mark it
    /// counted, return the count. Falls back to reading the states when the counter is gone.
    async fn count_claimed(&self, group_uuid: &str, counter: &str, member: &str) -> Result<usize> {
        match self.bump(counter).await {
            Ok(Some(n)) => {
                if let Err(e) = self.put("group member mark", member, COUNTED).await {
                    // Counted already: a waiting caller takes over after `member_claim_wait`
                    // and counts it again, which can only make the chord check read the
                    // states early, never miss it.
                    warn!(member, error = %e, "cannot mark a counted group member");
                }
                Ok(n)
            }
            Ok(None) => {
                self.forget_member(member).await;
                self.counter_missing(group_uuid).await
            }
            Err(e) => {
                // The member must be counted by whoever retries it (a redelivery).
                self.forget_member(member).await;
                Err(e)
            }
        }
    }

    async fn forget_member(&self, member: &str) {
        if let Err(e) = self
            .client()
            .run("delete a member mark", Delete::new(member), true)
            .await
        {
            warn!(member, error = %e, "cannot delete a group member mark");
        }
    }

    async fn counter_missing(&self, group_uuid: &str) -> Result<usize> {
        // No counter: the group is unknown (NotFound), or Go initialised it, or the counter
        // was evicted. Count the states instead.
        debug!(
            group = group_uuid,
            "no group counter; counting member states"
        );
        self.count_completed(group_uuid).await
    }
}

#[async_trait]
impl Backend for MemcacheBackend {
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
        let key = state.task_uuid.as_str();
        if state.state == State::Pending {
            // Go writes PENDING afresh (a retry gets a new CreatedAt).
            self.forget(key);
            let json = state.to_json()?;
            return self.put("task state", key, &json).await;
        }
        self.client().check_key(key)?;
        // The size as given, before any request; the merged size is checked again below.
        self.client()
            .check_value("task state", key, state.to_json()?.len())?;
        let run_ends = state.state.is_completed() || state.state == State::Retry;
        if let Some((name, created_at)) = self.recall(key) {
            let mut merged = state.clone();
            merged.created_at = created_at;
            if merged.task_name.is_empty() {
                merged.task_name = name;
            }
            if run_ends {
                self.forget(key);
            }
            return self.put("task state", key, &merged.to_json()?).await;
        }
        // Later states keep the stored CreatedAt / TaskName: gets, then cas (or add when
        // nothing is stored), again when another writer got in between.
        let what = format!("store the state of {key}");
        for _ in 0..self.inner.cas_attempts {
            let got = self.get(key, true).await?;
            let previous = got
                .value
                .as_deref()
                .filter(|_| got.hit())
                .map(|bytes| (TaskState::from_json(bytes), got.item.cas));
            let (op, merged) = match previous {
                Some((Ok(prev), Some(cas))) => {
                    let mut merged = state.clone();
                    merged.merge_previous(&prev);
                    let json = merged.to_json()?;
                    (self.set_op(key, &json).compare_cas(cas), json)
                }
                Some((Err(e), Some(cas))) => {
                    warn!(task = key, error = %e, "stored task state does not decode; replacing it");
                    let json = state.to_json()?;
                    (self.set_op(key, &json).compare_cas(cas), json)
                }
                _ => {
                    let json = state.to_json()?;
                    (self.set_op(key, &json).add(), json)
                }
            };
            self.client().check_value("task state", key, merged.len())?;
            let result = self.client().run(&what, op, false).await?;
            match result.status {
                MutationStatus::Applied => {
                    if !run_ends {
                        let kept = TaskState::from_json(&merged)?;
                        self.remember(&kept);
                    }
                    return Ok(());
                }
                MutationStatus::CasMismatch
                | MutationStatus::NotFound
                | MutationStatus::AlreadyExists => continue,
                other => {
                    return Err(error::plain(
                        format!("memcached did not store the state of {key} ({other:?})"),
                        true,
                    ));
                }
            }
        }
        Err(error::plain(
            format!(
                "cannot store the state of {key}: other writers changed it {} times in a row",
                self.inner.cas_attempts
            ),
            true,
        ))
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        let got = self.get(task_uuid, false).await?;
        hit_value(got)
            .map(|bytes| TaskState::from_json(&bytes))
            .transpose()
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        let meta = GroupMeta::new(group_uuid, task_uuids.to_vec()).to_json()?;
        self.client().check_key(group_uuid)?;
        self.client()
            .check_value("group meta", group_uuid, meta.len())?;
        let counter = counter_key(group_uuid);
        let mut ops = vec![self.set_op(group_uuid, &meta)];
        if self.client().check_key(&counter).is_ok() {
            ops.push(self.set_op(&counter, b"0"));
        }
        let results = self
            .client()
            .run_many(&format!("store group {group_uuid}"), ops, true)
            .await;
        for result in results {
            let result = result?;
            if !result.applied() {
                return Err(error::plain(
                    format!(
                        "memcached did not store group {group_uuid} ({:?})",
                        result.status
                    ),
                    true,
                ));
            }
        }
        Ok(())
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let (meta, _) = self.group_meta(group_uuid, false).await?;
        for uuid in &meta.task_uuids {
            self.client().check_key(uuid)?;
        }
        let ops: Vec<Get> = meta.task_uuids.iter().map(Get::new).collect();
        let results = self
            .client()
            .run_many(&format!("read the states of group {group_uuid}"), ops, true)
            .await;
        let mut states = Vec::with_capacity(results.len());
        let mut failed: Vec<Error> = Vec::new();
        for (uuid, result) in meta.task_uuids.iter().zip(results) {
            match result {
                Ok(got) => match hit_value(got) {
                    Some(bytes) => states.push(TaskState::from_json(&bytes)?),
                    None => states.push(TaskState {
                        task_uuid: uuid.clone(),
                        state: State::Pending,
                        ..TaskState::default()
                    }),
                },
                Err(e) => failed.push(e),
            }
        }
        match failed.len() {
            0 => Ok(states),
            1 => Err(failed.remove(0)),
            n => {
                let first = failed.remove(0);
                Err(error::plain(
                    format!("{n} member states of group {group_uuid} unreadable; first: {first}"),
                    first.is_temporary(),
                ))
            }
        }
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        let what = format!("trigger the chord of {group_uuid}");
        for _ in 0..self.inner.cas_attempts {
            let (mut meta, cas) = self.group_meta(group_uuid, true).await?;
            if meta.chord_triggered {
                return Ok(false);
            }
            meta.chord_triggered = true;
            let json = meta.to_json()?;
            self.client()
                .check_value("group meta", group_uuid, json.len())?;
            let op = self.set_op(group_uuid, &json).compare_cas(cas);
            let result = self.client().run(&what, op, false).await?;
            match result.status {
                MutationStatus::Applied => return Ok(true),
                MutationStatus::NotFound => {
                    return Err(Error::GroupNotFound(group_uuid.to_owned()));
                }
                _ => continue,
            }
        }
        Err(error::plain(
            format!(
                "cannot {what}: other writers changed the group meta {} times in a row",
                self.inner.cas_attempts
            ),
            true,
        ))
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let counter = counter_key(group_uuid);
        let member = member_key(group_uuid, task_uuid);
        if self.client().check_key(&member).is_err() {
            // UUIDs too long for the bookkeeping keys: count the states instead.
            return self.count_completed(group_uuid).await;
        }
        let started = Instant::now();
        let mut pause = Duration::from_millis(1);
        for _ in 0..self.inner.cas_attempts {
            let claim = self
                .client()
                .run(
                    &format!("mark {task_uuid} done in {group_uuid}"),
                    self.set_op(&member, COUNTING).add(),
                    false,
                )
                .await?;
            if claim.applied() {
                return self.count_claimed(group_uuid, &counter, &member).await;
            }
            // Someone marked this member already (a redelivery, or a concurrent call): wait
            // until it is counted, then read the count.
            loop {
                let got = self.get(&member, true).await?;
                let Some(value) = got.value.as_deref().filter(|_| got.hit()) else {
                    break; // The other caller gave up on it: claim it again.
                };
                if value == COUNTED {
                    return match self.read_counter(&counter).await? {
                        Some(n) => Ok(n),
                        None => self.counter_missing(group_uuid).await,
                    };
                }
                if started.elapsed() >= self.inner.member_claim_wait {
                    // The claimer died between its claim and its count: take over, once.
                    let take = self
                        .set_op(&member, COUNTING)
                        .compare_cas(got.item.cas.unwrap_or(0));
                    let took = self
                        .client()
                        .run(&format!("take over member {task_uuid}"), take, false)
                        .await?;
                    if took.applied() {
                        warn!(
                            group = group_uuid,
                            task = task_uuid,
                            "taking over the count of a member whose counter did not finish"
                        );
                        return self.count_claimed(group_uuid, &counter, &member).await;
                    }
                    continue;
                }
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_millis(50));
            }
        }
        Err(error::plain(
            format!(
                "cannot count member {task_uuid} of group {group_uuid}: its mark kept changing"
            ),
            true,
        ))
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.forget(task_uuid);
        self.client().check_key(task_uuid)?;
        self.client()
            .run(
                &format!("delete the state of {task_uuid}"),
                Delete::new(task_uuid),
                true,
            )
            .await
            .map(drop)
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        self.client().check_key(group_uuid)?;
        let mut keys = vec![group_uuid.to_owned(), counter_key(group_uuid)];
        match self.group_meta(group_uuid, false).await {
            Ok((meta, _)) => keys.extend(meta.task_uuids.iter().map(|t| member_key(group_uuid, t))),
            Err(Error::GroupNotFound(_)) => {}
            Err(e) => return Err(e),
        }
        keys.retain(|k| self.client().check_key(k).is_ok());
        let ops: Vec<Delete> = keys.iter().map(Delete::new).collect();
        for result in self
            .client()
            .run_many(&format!("delete group {group_uuid}"), ops, true)
            .await
        {
            result?;
        }
        Ok(())
    }
}
