//! Result waiting by push: the backend stores a final state (SUCCESS / FAILURE) and publishes
//! the same JSON on the task's channel right after it, pipelined in the same round trip; a
//! waiter subscribes to that channel on one pub/sub connection that the backend shares between
//! all its waiters, and takes the state from the message (a message that is not a state, e.g.
//! the state name an earlier version published, only wakes it to read the state). Go workers publish nothing, so waiters also poll with a back-off (in core).
//!
//! Single node only: on a cluster every `PUBLISH` travels to every node, so the cluster
//! backend does not publish and its waiters poll.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{Pushed, StateWatch, TaskState};
use redis::Client;
use redis::aio::PubSubSink;
use tokio::sync::mpsc;

/// The channel a final state of `task_uuid` is announced on (the message is the state's JSON,
/// as stored).
pub(crate) fn channel(task_uuid: &str) -> String {
    format!("machinery_state:{task_uuid}")
}

/// The shared subscriber of one backend (and its clones).
pub(crate) struct StatePush {
    client: Client,
    connect_timeout: Duration,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Waiters per channel.
    waiters: Mutex<HashMap<String, Vec<Waiter>>>,
    /// The live subscription connection; `None` before the first waiter and after it broke.
    sink: Mutex<Option<PubSubSink>>,
    /// Serialises (re)connecting, so that concurrent first waiters open one connection.
    connecting: tokio::sync::Mutex<()>,
    next_id: std::sync::atomic::AtomicU64,
}

struct Waiter {
    id: u64,
    tx: mpsc::UnboundedSender<Pushed>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StatePush {
    pub(crate) fn new(client: Client, connect_timeout: Duration) -> Self {
        StatePush {
            client,
            connect_timeout,
            shared: Arc::default(),
        }
    }

    /// Subscribe a waiter to `task_uuid`'s channel; `None` when the subscription cannot be
    /// made (the waiter then polls).
    pub(crate) async fn watch(&self, task_uuid: &str) -> Option<StateWatch> {
        let channel = channel(task_uuid);
        let (tx, rx) = mpsc::unbounded_channel();
        let id = self
            .shared
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let first = {
            let mut waiters = lock(&self.shared.waiters);
            let list = waiters.entry(channel.clone()).or_default();
            list.push(Waiter { id, tx });
            list.len() == 1
        };
        let guard = Unsubscribe {
            shared: Arc::downgrade(&self.shared),
            channel: channel.clone(),
            id,
        };
        match self.subscribe(&channel, first).await {
            Ok(()) => Some(StateWatch::from_channel(rx).with_guard(guard)),
            Err(e) => {
                tracing::debug!(error = %e, "redis: cannot subscribe to state pushes; polling instead");
                None
            }
        }
    }

    async fn subscribe(&self, channel: &str, first: bool) -> redis::RedisResult<()> {
        let current = lock(&self.shared.sink).clone();
        if let Some(mut sink) = current {
            if !first {
                return Ok(());
            }
            match sink.subscribe(channel).await {
                Ok(()) => return Ok(()),
                Err(_) => {
                    // The connection broke: forget it and open a new one below.
                    *lock(&self.shared.sink) = None;
                }
            }
        }
        let _one = self.shared.connecting.lock().await;
        if lock(&self.shared.sink).is_some() {
            // Another waiter connected meanwhile, subscribing every channel then known
            // (ours included, since we registered before).
            let mut sink = lock(&self.shared.sink).clone().expect("checked");
            return sink.subscribe(channel).await;
        }
        let pubsub = tokio::time::timeout(self.connect_timeout, self.client.get_async_pubsub())
            .await
            .map_err(|_| {
                redis::RedisError::from((
                    redis::ErrorKind::Io,
                    "timed out connecting for state pushes",
                ))
            })??;
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<String> = lock(&self.shared.waiters).keys().cloned().collect();
        if !channels.is_empty() {
            sink.subscribe(&channels).await?;
        }
        *lock(&self.shared.sink) = Some(sink);
        let weak = Arc::downgrade(&self.shared);
        tokio::spawn(async move {
            while let Some(msg) = stream.next().await {
                let Some(shared) = weak.upgrade() else { return };
                let waiters = lock(&shared.waiters);
                if let Some(list) = waiters.get(msg.get_channel_name()) {
                    let pushed = match TaskState::from_json(msg.get_payload_bytes()) {
                        Ok(state) => Pushed::State(Box::new(state)),
                        Err(_) => Pushed::Changed,
                    };
                    for w in list {
                        let _ = w.tx.send(pushed.clone());
                    }
                }
            }
            // The connection ended: the next waiter opens a new one; the present ones are
            // told (their watch ends) and poll.
            if let Some(shared) = weak.upgrade() {
                *lock(&shared.sink) = None;
                lock(&shared.waiters).clear();
            }
        });
        Ok(())
    }
}

/// Dropped with a waiter's watch: leaves the channel's waiters, and unsubscribes when it was
/// the last one.
struct Unsubscribe {
    shared: Weak<Shared>,
    channel: String,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        let Some(shared) = self.shared.upgrade() else {
            return;
        };
        let last = {
            let mut waiters = lock(&shared.waiters);
            match waiters.get_mut(&self.channel) {
                Some(list) => {
                    list.retain(|w| w.id != self.id);
                    if list.is_empty() {
                        waiters.remove(&self.channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if !last {
            return;
        }
        let Some(mut sink) = lock(&shared.sink).clone() else {
            return;
        };
        let channel = std::mem::take(&mut self.channel);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let weak = Weak::clone(&self.shared);
            rt.spawn(async move {
                // A new waiter for the same task may have come meanwhile: keep it subscribed.
                let wanted = weak
                    .upgrade()
                    .is_some_and(|s| lock(&s.waiters).contains_key(&channel));
                if !wanted {
                    let _ = sink.unsubscribe(&channel).await;
                }
            });
        }
    }
}
