//! [`MemoryBackend`]: task states and groups in process memory, with expiry.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use crate::{
    Backend, BackendCapabilities, Error, GroupMeta, Result, State, StateWatch, TaskState,
    results_ttl,
};

const DRIVER: &str = "memory";

/// Sweep expired entries after this many writes (reads drop expired entries they meet).
const SWEEP_EVERY: u32 = 1024;

/// An in-process result backend: no server, nothing persisted.
///
/// States and groups are stored as Go's JSON (so the codec is exercised) and expire after
/// `ResultsExpireIn` (default 3600 s). `set_state` keeps the stored `CreatedAt` and
/// `TaskName`; `trigger_chord` returns `true` exactly once per group. The handle is cheap to
/// clone; clones share the data. All capabilities are true.
///
/// # Examples
///
/// ```
/// use machinery_core::{Backend, MemoryBackend, Signature, TaskState};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> machinery_core::Result<()> {
/// let backend = MemoryBackend::new();
/// let sig = Signature::new("add");
/// backend.set_state(&TaskState::pending(&sig)).await?;
/// let stored = backend.state(&sig.uuid).await?.expect("stored");
/// assert_eq!(stored.task_name, "add");
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBackend {
    inner: Arc<Inner>,
}

struct Inner {
    ttl: Duration,
    /// Largest stored task state (its JSON) accepted; 0 = no limit.
    max_state_bytes: AtomicUsize,
    data: Mutex<Data>,
    /// Bumped after every stored state: waiters on results wake on it instead of polling.
    changes: tokio::sync::watch::Sender<u64>,
}

#[derive(Default)]
struct Data {
    states: HashMap<String, Entry>,
    groups: HashMap<String, Entry>,
    /// Members of each group that reached SUCCESS or FAILURE (lives as long as the group).
    done: HashMap<String, HashSet<String>>,
    writes: u32,
}

struct Entry {
    json: Vec<u8>,
    expires: Instant,
}

impl Data {
    fn live<'a>(map: &'a mut HashMap<String, Entry>, key: &str) -> Option<&'a mut Entry> {
        let now = Instant::now();
        if map.get(key).is_some_and(|e| e.expires <= now) {
            map.remove(key);
        }
        map.get_mut(key)
    }

    fn wrote(&mut self) {
        self.writes += 1;
        if self.writes >= SWEEP_EVERY {
            self.writes = 0;
            let now = Instant::now();
            self.states.retain(|_, e| e.expires > now);
            self.groups.retain(|_, e| e.expires > now);
            let groups = &self.groups;
            self.done.retain(|g, _| groups.contains_key(g));
        }
    }
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBackend")
            .field("ttl", &self.inner.ttl)
            .finish_non_exhaustive()
    }
}

impl MemoryBackend {
    /// A backend whose results expire after Go's default of 3600 s.
    pub fn new() -> Self {
        Self::with_ttl(results_ttl(0))
    }

    /// A backend configured like Go's `ResultsExpireIn` (seconds; 0 or less = 3600).
    pub fn with_results_expire_in(seconds: i64) -> Self {
        Self::with_ttl(results_ttl(seconds))
    }

    /// A backend whose states and groups expire `ttl` after they were last written (tests use
    /// sub-second values).
    pub fn with_ttl(ttl: Duration) -> Self {
        MemoryBackend {
            inner: Arc::new(Inner {
                ttl,
                max_state_bytes: AtomicUsize::new(0),
                data: Mutex::new(Data::default()),
                changes: tokio::sync::watch::Sender::new(0),
            }),
        }
    }

    /// Refuse task states whose JSON is over `limit` bytes with [`Error::TooLarge`] (not
    /// temporary), as a networked backend with an item size limit does (DynamoDB: 400 KB);
    /// `None` = no limit (the default).
    pub fn set_max_state_bytes(&self, limit: Option<usize>) {
        self.inner
            .max_state_bytes
            .store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    fn data(&self) -> MutexGuard<'_, Data> {
        self.inner
            .data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn entry(&self, json: Vec<u8>) -> Entry {
        Entry {
            json,
            // A TTL from the config can be anything; past ~a century it is "never".
            expires: Instant::now()
                .checked_add(self.inner.ttl)
                .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400)),
        }
    }

    fn group(data: &mut Data, group_uuid: &str) -> Result<GroupMeta> {
        let entry = Data::live(&mut data.groups, group_uuid)
            .ok_or_else(|| Error::GroupNotFound(group_uuid.to_owned()))?;
        GroupMeta::from_json(&entry.json)
    }
}

#[async_trait]
impl Backend for MemoryBackend {
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
            pushes_states: true,
            ..Default::default()
        }
    }

    async fn set_state(&self, state: &TaskState) -> Result<()> {
        let mut data = self.data();
        let mut state = state.clone();
        if state.state != State::Pending
            && let Some(prev) = Data::live(&mut data.states, &state.task_uuid)
        {
            state.merge_stored(Some(&TaskState::from_json(&prev.json)?));
        }
        let json = state.to_json()?;
        let limit = self.inner.max_state_bytes.load(Ordering::Relaxed);
        if limit > 0 && json.len() > limit {
            return Err(Error::TooLarge {
                what: "the task state",
                size: json.len(),
                limit,
            });
        }
        let entry = self.entry(json);
        data.states.insert(state.task_uuid, entry);
        data.wrote();
        drop(data);
        self.inner.changes.send_modify(|n| *n = n.wrapping_add(1));
        Ok(())
    }

    async fn watch_state(&self, _task_uuid: &str) -> Result<Option<StateWatch>> {
        Ok(Some(StateWatch::from_counter(
            self.inner.changes.subscribe(),
        )))
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        let mut data = self.data();
        Data::live(&mut data.states, task_uuid)
            .map(|e| TaskState::from_json(&e.json))
            .transpose()
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        let meta = GroupMeta::new(group_uuid, task_uuids.to_vec());
        let entry = self.entry(meta.to_json()?);
        let mut data = self.data();
        data.groups.insert(group_uuid.to_owned(), entry);
        data.wrote();
        Ok(())
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let mut data = self.data();
        let meta = Self::group(&mut data, group_uuid)?;
        meta.task_uuids
            .iter()
            .map(|uuid| match Data::live(&mut data.states, uuid) {
                Some(e) => TaskState::from_json(&e.json),
                None => Ok(TaskState {
                    task_uuid: uuid.clone(),
                    state: State::Pending,
                    ..TaskState::default()
                }),
            })
            .collect()
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        let mut data = self.data();
        let mut meta = Self::group(&mut data, group_uuid)?;
        if meta.chord_triggered {
            return Ok(false);
        }
        meta.chord_triggered = true;
        let json = meta.to_json()?;
        if let Some(entry) = data.groups.get_mut(group_uuid) {
            // Keep the expiry set by init_group.
            entry.json = json;
        }
        Ok(true)
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let mut data = self.data();
        if Data::live(&mut data.groups, group_uuid).is_none() {
            data.done.remove(group_uuid);
            return Err(Error::GroupNotFound(group_uuid.to_owned()));
        }
        let members = data.done.entry(group_uuid.to_owned()).or_default();
        members.insert(task_uuid.to_owned());
        Ok(members.len())
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.data().states.remove(task_uuid);
        Ok(())
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        let mut data = self.data();
        data.groups.remove(group_uuid);
        data.done.remove(group_uuid);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Signature;

    #[tokio::test]
    async fn set_state_merges_previous() {
        let b = MemoryBackend::new();
        let sig = Signature::new("t");
        let pending = TaskState::pending(&sig);
        b.set_state(&pending).await.unwrap();
        let started = TaskState {
            task_uuid: sig.uuid.clone(),
            state: State::Started,
            ..TaskState::default()
        };
        b.set_state(&started).await.unwrap();
        let got = b.state(&sig.uuid).await.unwrap().unwrap();
        assert_eq!(got.created_at, pending.created_at);
        assert_eq!(got.task_name, "t");
        assert_eq!(got.state, State::Started);
    }

    #[tokio::test(start_paused = true)]
    async fn entries_expire_after_the_ttl() {
        let b = MemoryBackend::with_ttl(Duration::from_secs(10));
        let sig = Signature::new("t");
        b.set_state(&TaskState::pending(&sig)).await.unwrap();
        b.init_group("g", std::slice::from_ref(&sig.uuid))
            .await
            .unwrap();
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(b.state(&sig.uuid).await.unwrap().is_some());
        assert!(b.trigger_chord("g").await.unwrap());
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(b.state(&sig.uuid).await.unwrap().is_none());
        assert!(matches!(
            b.trigger_chord("g").await,
            Err(Error::GroupNotFound(_))
        ));
        // An expired previous state is not merged into a new one.
        let later = TaskState {
            task_uuid: sig.uuid.clone(),
            state: State::Started,
            ..TaskState::default()
        };
        b.set_state(&later).await.unwrap();
        assert_eq!(b.state(&sig.uuid).await.unwrap().unwrap().task_name, "");
    }

    #[tokio::test]
    async fn a_huge_ttl_does_not_panic() {
        let b = MemoryBackend::with_results_expire_in(i64::MAX);
        let sig = Signature::new("t");
        b.set_state(&TaskState::pending(&sig)).await.unwrap();
        assert!(b.state(&sig.uuid).await.unwrap().is_some());
    }

    #[test]
    fn expire_in_follows_go_defaults() {
        assert_eq!(MemoryBackend::new().inner.ttl, Duration::from_secs(3600));
        assert_eq!(
            MemoryBackend::with_results_expire_in(5).inner.ttl,
            Duration::from_secs(5)
        );
    }
}
