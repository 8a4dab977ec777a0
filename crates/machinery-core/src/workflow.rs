//! Groups, chords and chains (Go's `tasks.NewGroup`, `NewChord`, `NewChain`), the Fibonacci
//! retry back-off, and the handles for waiting on results.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::types::{ArgError, FromResults};
use crate::{
    Backend, Backoff, Error, Pushed, Result, Signature, State, TaskResult, TaskState,
    new_chord_uuid, new_group_uuid, new_task_uuid,
};

/// Tasks run in parallel; their results can feed a chord callback.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    /// `group_<uuid4>`.
    pub group_uuid: String,
    /// The members; each carries the group UUID and size.
    pub tasks: Vec<Signature>,
}

impl Group {
    /// A group with a fresh UUID; members get UUIDs if they have none.
    pub fn new(tasks: Vec<Signature>) -> Self {
        let group_uuid = new_group_uuid();
        let count = tasks.len() as i64;
        let tasks = tasks
            .into_iter()
            .map(|mut t| {
                if t.uuid.is_empty() {
                    t.uuid = new_task_uuid();
                }
                t.group_uuid.clone_from(&group_uuid);
                t.group_task_count = count;
                t
            })
            .collect();
        Group { group_uuid, tasks }
    }

    /// The members' UUIDs in group order.
    pub fn task_uuids(&self) -> Vec<String> {
        self.tasks.iter().map(|t| t.uuid.clone()).collect()
    }
}

/// A group whose members' results, in group order, are appended to a callback's arguments
/// once every member succeeded.
#[derive(Debug, Clone, PartialEq)]
pub struct Chord {
    /// The group.
    pub group: Group,
    /// The callback (UUID prefix `chord_`).
    pub callback: Signature,
}

impl Chord {
    /// Attach `callback` to every member of `group`. A callback without a UUID, or with an
    /// automatically made `task_` one, gets a `chord_<uuid4>` UUID as in Go.
    pub fn new(mut group: Group, mut callback: Signature) -> Self {
        if callback.uuid.is_empty() || callback.uuid.starts_with("task_") {
            callback.uuid = new_chord_uuid();
        }
        for t in &mut group.tasks {
            t.chord_callback = Some(Box::new(callback.clone()));
        }
        Chord { group, callback }
    }
}

/// Tasks run one after another; each one's results are appended to the next one's
/// arguments (unless it is immutable).
#[derive(Debug, Clone, PartialEq)]
pub struct Chain {
    /// The head, with the rest nested in `on_success`.
    pub head: Signature,
    /// The UUIDs of every task in order (for waiting on the last one).
    pub task_uuids: Vec<String>,
}

impl Chain {
    /// Nest `tasks` into one another's `on_success`.
    ///
    /// # Errors
    /// [`Error::Config`] when `tasks` is empty.
    pub fn new(tasks: Vec<Signature>) -> Result<Self> {
        let mut tasks: Vec<Signature> = tasks
            .into_iter()
            .map(|mut t| {
                if t.uuid.is_empty() {
                    t.uuid = new_task_uuid();
                }
                t
            })
            .collect();
        let task_uuids = tasks.iter().map(|t| t.uuid.clone()).collect();
        let mut next: Option<Signature> = None;
        while let Some(mut t) = tasks.pop() {
            if let Some(n) = next.take() {
                t.on_success = vec![n];
            }
            next = Some(t);
        }
        let head = next.ok_or_else(|| Error::config("chain", "a chain needs at least one task"))?;
        Ok(Chain { head, task_uuids })
    }
}

/// Go's `retry.FibonacciNext`: the next Fibonacci number greater than `n`
/// (0 → 1, 1 → 2, 2 → 3, 3 → 5, 5 → 8, ...).
pub fn fibonacci_next(n: i64) -> i64 {
    let (mut a, mut b) = (1i64, 2i64);
    if n < 1 {
        return 1;
    }
    while b <= n {
        let c = a.saturating_add(b);
        a = b;
        b = c;
        if b == i64::MAX {
            break;
        }
    }
    b
}

/// A handle on one sent task's state.
#[derive(Debug, Clone)]
pub struct AsyncResult {
    /// The task's signature as sent.
    pub signature: Signature,
    backend: Arc<dyn Backend>,
}

impl AsyncResult {
    /// A handle for `signature` on `backend`.
    pub fn new(signature: Signature, backend: Arc<dyn Backend>) -> Self {
        AsyncResult { signature, backend }
    }

    /// The task's UUID.
    pub fn uuid(&self) -> &str {
        &self.signature.uuid
    }

    /// The latest stored state (PENDING when nothing is stored yet).
    ///
    /// # Errors
    /// When the backend cannot be reached.
    pub async fn state(&self) -> Result<TaskState> {
        Ok(self
            .backend
            .state(&self.signature.uuid)
            .await?
            .unwrap_or_else(|| TaskState {
                task_uuid: self.signature.uuid.clone(),
                task_name: self.signature.name.clone(),
                state: State::Pending,
                ..TaskState::default()
            }))
    }

    /// Wait for the task to complete: on a backend that pushes state changes (memory) the
    /// wait wakes on the push; on the others it reads the state again after a pause that
    /// starts at 1 ms and doubles up to `poll` (see [`WaitStrategy`]).
    ///
    /// # Errors
    /// [`Error::TaskFailed`] with the task's error when it ended in FAILURE; backend errors.
    pub async fn get(&self, poll: Duration) -> Result<Vec<TaskResult>> {
        wait_for(&self.backend, &self.signature.uuid, None, poll).await
    }

    /// Like [`AsyncResult::get`], giving up after `timeout`.
    ///
    /// # Errors
    /// [`Error::Timeout`] when the task is not complete in time.
    pub async fn get_with_timeout(
        &self,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Vec<TaskResult>> {
        wait_for(&self.backend, &self.signature.uuid, Some(timeout), poll).await
    }

    /// Wait and convert the results to Rust types (`i64`, `(String, String)`, `()`, ...).
    ///
    /// # Errors
    /// As [`AsyncResult::get_with_timeout`]; [`Error::Decode`] when the results do not fit `T`.
    pub async fn get_as<T: FromResults>(&self, timeout: Duration) -> Result<T> {
        let results = self.get_with_timeout(timeout, default_poll()).await?;
        convert_results(&results)
    }
}

/// The longest pause between two reads of a backend that cannot push (the back-off of
/// [`wait_for`] starts at 1 ms and doubles up to it).
pub(crate) fn default_poll() -> Duration {
    Duration::from_millis(50)
}

pub(crate) fn convert_results<T: FromResults>(results: &[TaskResult]) -> Result<T> {
    T::from_results(results).map_err(|e: ArgError| Error::decode_caused("task results", e))
}

/// How result waiting (`AsyncResult::get` and friends) learns that a state changed, for a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitStrategy {
    /// The backend pushes ([`Backend::watch_state`]): the waiter reads the state when woken,
    /// and re-reads after a pause that starts at 10 ms and doubles up to the poll interval,
    /// for states stored without a push (e.g. by Go workers).
    Push,
    /// The backend is read again after a pause that starts at 1 ms and doubles up to the
    /// poll interval.
    PollWithBackoff,
}

impl WaitStrategy {
    /// The strategy result waiting uses on `backend` (from its `pushes_states` capability).
    pub fn of(backend: &dyn Backend) -> Self {
        if backend.capabilities().pushes_states {
            WaitStrategy::Push
        } else {
            WaitStrategy::PollWithBackoff
        }
    }
}

/// The first re-read pause while a push is watched: the push wakes the waiter for states
/// stored by this library, the re-reads catch those stored without one.
const PUSH_FALLBACK_FIRST: Duration = Duration::from_millis(10);

/// A final state's outcome: its results, or the task's failure.
fn finished(state: TaskState) -> Option<Result<Vec<TaskResult>>> {
    match state.state {
        State::Success => Some(Ok(state.results.unwrap_or_default())),
        State::Failure => Some(Err(Error::TaskFailed(state.error))),
        _ => None,
    }
}

async fn wait_for(
    backend: &Arc<dyn Backend>,
    uuid: &str,
    timeout: Option<Duration>,
    poll: Duration,
) -> Result<Vec<TaskResult>> {
    let start = Instant::now();
    let mut watch = match backend.watch_state(uuid).await {
        Ok(w) => w,
        Err(e) => {
            tracing::debug!(error = %e, "cannot watch the state for pushes; polling");
            None
        }
    };
    let first = if watch.is_some() {
        PUSH_FALLBACK_FIRST.min(poll)
    } else {
        Duration::from_millis(1)
    };
    let mut backoff = Backoff::new(first, poll);
    let mut read = true;
    loop {
        if read {
            if let Some(w) = &mut watch {
                // Forget what was pushed before the read, so a write after it wakes us.
                w.mark_seen();
            }
            if let Some(done) = backend.state(uuid).await?.and_then(finished) {
                return done;
            }
        }
        let left = match timeout {
            Some(t) if start.elapsed() >= t => return Err(Error::Timeout(t)),
            Some(t) => t - start.elapsed(),
            None => Duration::MAX,
        };
        let pause = backoff.next_delay().min(left);
        read = true;
        let Some(w) = &mut watch else {
            tokio::time::sleep(pause).await;
            continue;
        };
        tokio::select! {
            pushed = w.next() => match pushed {
                Some(Pushed::Changed) => {}
                Some(Pushed::State(state)) => {
                    if state.task_uuid == uuid {
                        if let Some(done) = finished(*state) {
                            return done;
                        }
                        // Not final yet, and the push said all there is to know.
                        read = false;
                    }
                }
                // The push source is gone: poll from now on.
                None => {
                    watch = None;
                    backoff = Backoff::new(Duration::from_millis(1), poll);
                }
            },
            () = tokio::time::sleep(pause) => {}
        }
    }
}

/// A handle on a sent chain: waits for every task in turn and gives the last one's results.
#[derive(Debug, Clone)]
pub struct ChainAsyncResult {
    /// One handle per task in chain order.
    pub results: Vec<AsyncResult>,
}

impl ChainAsyncResult {
    /// Wait for the whole chain; the last task's results.
    ///
    /// # Errors
    /// The first failure in the chain; [`Error::Timeout`].
    pub async fn get_with_timeout(
        &self,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Vec<TaskResult>> {
        let start = Instant::now();
        let mut last = Vec::new();
        for r in &self.results {
            let left = timeout.saturating_sub(start.elapsed());
            last = r.get_with_timeout(left, poll).await?;
        }
        Ok(last)
    }

    /// Wait and convert the last task's results.
    ///
    /// # Errors
    /// As [`ChainAsyncResult::get_with_timeout`].
    pub async fn get_as<T: FromResults>(&self, timeout: Duration) -> Result<T> {
        convert_results(&self.get_with_timeout(timeout, default_poll()).await?)
    }
}

/// A handle on a sent chord: the group members and the callback.
#[derive(Debug, Clone)]
pub struct ChordAsyncResult {
    /// The group members.
    pub group: Vec<AsyncResult>,
    /// The callback.
    pub callback: AsyncResult,
}

impl ChordAsyncResult {
    /// Wait for every member, then for the callback; the callback's results.
    ///
    /// # Errors
    /// The first member failure (the callback never runs then); [`Error::Timeout`].
    pub async fn get_with_timeout(
        &self,
        timeout: Duration,
        poll: Duration,
    ) -> Result<Vec<TaskResult>> {
        let start = Instant::now();
        for r in &self.group {
            let left = timeout.saturating_sub(start.elapsed());
            r.get_with_timeout(left, poll).await?;
        }
        let left = timeout.saturating_sub(start.elapsed());
        self.callback.get_with_timeout(left, poll).await
    }

    /// Wait and convert the callback's results.
    ///
    /// # Errors
    /// As [`ChordAsyncResult::get_with_timeout`].
    pub async fn get_as<T: FromResults>(&self, timeout: Duration) -> Result<T> {
        convert_results(&self.get_with_timeout(timeout, default_poll()).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryBackend;

    /// A backend that hides the memory backend's push, as a polling-only driver would.
    #[derive(Debug)]
    struct NoPush(MemoryBackend);

    #[async_trait::async_trait]
    impl Backend for NoPush {
        fn driver(&self) -> &'static str {
            "no-push"
        }
        fn capabilities(&self) -> crate::BackendCapabilities {
            crate::BackendCapabilities {
                pushes_states: false,
                ..self.0.capabilities()
            }
        }
        async fn set_state(&self, state: &TaskState) -> Result<()> {
            self.0.set_state(state).await
        }
        async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
            self.0.state(task_uuid).await
        }
        async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
            self.0.init_group(group_uuid, task_uuids).await
        }
        async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
            self.0.group_states(group_uuid).await
        }
        async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
            self.0.trigger_chord(group_uuid).await
        }
        async fn purge_state(&self, task_uuid: &str) -> Result<()> {
            self.0.purge_state(task_uuid).await
        }
        async fn purge_group(&self, group_uuid: &str) -> Result<()> {
            self.0.purge_group(group_uuid).await
        }
    }

    /// Store SUCCESS for `sig` once `ready` fires.
    fn succeed_later(
        backend: Arc<dyn Backend>,
        sig: Signature,
        ready: tokio::sync::oneshot::Receiver<()>,
    ) {
        tokio::spawn(async move {
            let _ = ready.await;
            let ok = TaskState::success(&sig, Vec::new());
            backend.set_state(&ok).await.expect("store success");
        });
    }

    /// On the memory backend a waiter wakes on the push: with a poll interval of an hour it
    /// still sees SUCCESS at once (a polling waiter would sleep the hour).
    #[tokio::test]
    async fn waiting_on_a_pushing_backend_wakes_on_the_push() {
        let backend: Arc<dyn Backend> = Arc::new(MemoryBackend::new());
        assert_eq!(WaitStrategy::of(backend.as_ref()), WaitStrategy::Push);
        let sig = Signature::new("t");
        backend.set_state(&TaskState::pending(&sig)).await.unwrap();
        let res = AsyncResult::new(sig.clone(), Arc::clone(&backend));
        let (tx, rx) = tokio::sync::oneshot::channel();
        succeed_later(Arc::clone(&backend), sig, rx);
        let waiting = tokio::spawn(async move { res.get(Duration::from_secs(3600)).await });
        // Let the waiter read PENDING and go to sleep on the push, then store SUCCESS.
        tokio::task::yield_now().await;
        tx.send(()).unwrap();
        let got = tokio::time::timeout(Duration::from_secs(30), waiting)
            .await
            .expect("the waiter did not wake on the push")
            .unwrap();
        assert_eq!(got.unwrap(), Vec::new());
    }

    /// Without a push the waiter polls with a back-off capped by `poll`, and still times out
    /// on time.
    #[tokio::test(start_paused = true)]
    async fn waiting_without_push_backs_off_and_times_out() {
        let backend: Arc<dyn Backend> = Arc::new(NoPush(MemoryBackend::new()));
        assert_eq!(
            WaitStrategy::of(backend.as_ref()),
            WaitStrategy::PollWithBackoff
        );
        let sig = Signature::new("t");
        let res = AsyncResult::new(sig.clone(), Arc::clone(&backend));
        let err = res
            .get_with_timeout(Duration::from_millis(200), Duration::from_millis(50))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Timeout(_)), "{err}");
        let (tx, rx) = tokio::sync::oneshot::channel();
        succeed_later(Arc::clone(&backend), sig, rx);
        tx.send(()).unwrap();
        let got = res
            .get_with_timeout(Duration::from_secs(5), Duration::from_millis(50))
            .await;
        assert_eq!(got.unwrap(), Vec::new());
    }

    #[test]
    fn fibonacci_matches_go() {
        let seq: Vec<i64> = [0, 1, 2, 3, 5, 8, 13, 4, 100]
            .into_iter()
            .map(fibonacci_next)
            .collect();
        assert_eq!(seq, vec![1, 2, 3, 5, 8, 13, 21, 5, 144]);
    }

    #[test]
    fn chain_nests_on_success() {
        let c = Chain::new(vec![
            Signature::new("a"),
            Signature::new("b"),
            Signature::new("c"),
        ])
        .unwrap();
        assert_eq!(c.head.name, "a");
        assert_eq!(c.head.on_success[0].name, "b");
        assert_eq!(c.head.on_success[0].on_success[0].name, "c");
        assert_eq!(c.task_uuids.len(), 3);
        assert!(Chain::new(vec![]).is_err());
    }

    #[test]
    fn chord_embeds_callback() {
        let g = Group::new(vec![Signature::new("a"), Signature::new("b")]);
        let ch = Chord::new(g, Signature::new("cb"));
        assert!(ch.callback.uuid.starts_with("chord_"));
        for t in &ch.group.tasks {
            assert_eq!(t.group_task_count, 2);
            assert_eq!(t.chord_callback.as_deref(), Some(&ch.callback));
        }
    }
}
