//! `RedisBroker`: Go Machinery's queue layout with per-consumer processing lists and leases.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use machinery_core::{
    Acknowledger, Broker, BrokerCapabilities, ConsumeOptions, DeadLetter, Delivery, DeliveryStream,
    Error, Nack, Payload, Result, Signature,
};
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::{AsyncCommands, Client, RedisResult};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use crate::client::{self, Backoff, retry_once};
use crate::config::{RedisConfig, Target};
use crate::error::{self, DRIVER};
use crate::scripts;
use crate::{RedisBackend, RedisLock};

/// Most deliveries handed out ahead when `ConsumeOptions::prefetch` is 0 ("no limit").
const UNLIMITED_PREFETCH: usize = 1000;

/// Redis string values are limited to 512 MiB.
const MAX_MESSAGE_BYTES: usize = 512 * 1024 * 1024;

/// The Redis broker. Cheap to clone; clones share one connection.
///
/// See the crate documentation for the key layout and the delivery guarantees.
#[derive(Clone)]
pub struct RedisBroker {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    target: Target,
    client: Client,
    conn: ConnectionManager,
    cancel: CancellationToken,
    mover_started: AtomicBool,
    /// Fetch loops and give-backs of stopped consumers, awaited by `close`.
    tasks: TaskTracker,
    /// The consumers started, by consumer tag, for `stop_consuming`.
    consumers: std::sync::Mutex<Vec<ConsumerHandle>>,
}

/// How `stop_consuming` reaches one consumer.
struct ConsumerHandle {
    tag: String,
    /// Stops its fetch loop.
    stop: CancellationToken,
    /// Empty once the consumer has given back what it held.
    released: TaskTracker,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("url", &self.inner.target.display)
            .field("default_queue", &self.inner.config.default_queue)
            .field("delayed_tasks_key", &self.inner.config.delayed_tasks_key)
            .finish_non_exhaustive()
    }
}

/// One entry of `<queue>.dead`: a JSON object
/// `{"queue":"…","reason":"…","dead_at":"<RFC 3339>","consumer":"<consumer id>","body":"<message>"}`,
/// with `body_base64` instead of `body` when the message is not UTF-8.
#[derive(Serialize, Deserialize)]
struct DeadLetterEntry {
    queue: String,
    reason: String,
    dead_at: String,
    consumer: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    body_base64: Option<String>,
}

impl DeadLetterEntry {
    fn encode(queue: &str, consumer: &str, reason: &str, raw: &[u8]) -> Vec<u8> {
        use base64::Engine as _;
        let (body, body_base64) = match std::str::from_utf8(raw) {
            Ok(s) => (Some(s.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(raw)),
            ),
        };
        let entry = DeadLetterEntry {
            queue: queue.to_owned(),
            reason: reason.to_owned(),
            dead_at: machinery_core::time::format(&machinery_core::time::now()),
            consumer: consumer.to_owned(),
            body,
            body_base64,
        };
        serde_json::to_vec(&entry).unwrap_or_default()
    }

    fn decode(raw: &[u8]) -> DeadLetter {
        use base64::Engine as _;
        match serde_json::from_slice::<DeadLetterEntry>(raw) {
            Ok(e) => {
                let body = match (e.body, e.body_base64) {
                    (Some(b), _) => b.into_bytes(),
                    (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                        .decode(b64)
                        .unwrap_or_default(),
                    (None, None) => Vec::new(),
                };
                DeadLetter {
                    body,
                    reason: e.reason,
                }
            }
            Err(err) => DeadLetter {
                body: raw.to_vec(),
                reason: format!("unreadable dead-letter entry: {err}"),
            },
        }
    }
}

/// The keys that belong to one queue.
#[derive(Debug, Clone)]
struct QueueKeys {
    queue: String,
    registry: String,
    processing_prefix: String,
    dead: String,
}

impl QueueKeys {
    fn new(queue: &str) -> Self {
        QueueKeys {
            queue: queue.to_owned(),
            registry: format!("{queue}.consumers"),
            processing_prefix: format!("{queue}.processing."),
            dead: format!("{queue}.dead"),
        }
    }
}

impl RedisBroker {
    /// Connect to the server named by `config.url`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL; [`Error::Unsupported`] for a cluster URL (the broker
    /// needs a single node); [`Error::Backend`] naming the server (password redacted) when it
    /// cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let target = config.target()?;
        let client = client::single_client(&config, &target)?;
        let conn = client::shared_manager(&config, &target, &client).await?;
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                config,
                target,
                client,
                conn,
                cancel: CancellationToken::new(),
                mover_started: AtomicBool::new(false),
                tasks: TaskTracker::new(),
                consumers: std::sync::Mutex::default(),
            }),
        })
    }

    /// Connect with the default settings to `url`.
    ///
    /// # Errors
    /// As [`RedisBroker::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(RedisConfig::from_url(url)).await
    }

    /// The configuration in use.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// A result backend sharing this broker's connection and settings (single node only).
    pub fn backend(&self) -> RedisBackend {
        RedisBackend::from_parts(
            crate::client::Conn::Single(self.inner.conn.clone()),
            &self.inner.config,
            self.inner.target.display.clone(),
        )
    }

    /// A periodic-task lock sharing this broker's connection.
    pub fn lock(&self) -> RedisLock {
        RedisLock::from_parts(
            crate::client::Conn::Single(self.inner.conn.clone()),
            self.inner.target.display.clone(),
        )
    }

    /// The dead-letter list of `queue` (`<queue>.dead`), oldest first: each message byte for
    /// byte with the reason it was set aside.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        let key = QueueKeys::new(queue).dead;
        let mut conn = self.inner.conn.clone();
        let raw: Vec<Vec<u8>> = conn
            .lrange(&key, 0, -1)
            .await
            .map_err(|e| error::map(format!("cannot read {key}"), e))?;
        Ok(raw.iter().map(|r| DeadLetterEntry::decode(r)).collect())
    }

    /// Move every due delayed task to its queue now (the consumers do this on their own every
    /// `delayed_tasks_poll_period`). Returns how many were moved.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn move_due_delayed_tasks(&self) -> Result<usize> {
        move_due(&self.inner.conn, &self.inner.config).await
    }

    fn queue_for<'a>(&'a self, sig: &'a Signature) -> &'a str {
        if sig.routing_key.is_empty() {
            &self.inner.config.default_queue
        } else {
            &sig.routing_key
        }
    }

    fn start_delayed_mover(&self) {
        if self.inner.mover_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let cancel = self.inner.cancel.clone();
        tokio::spawn(delayed_mover(weak, cancel));
    }
}

/// One sweep: move every due delayed task, batch by batch.
async fn move_due(conn: &ConnectionManager, config: &RedisConfig) -> Result<usize> {
    let batch = config.delayed_batch();
    let mut total = 0;
    loop {
        let now = machinery_core::time::unix_nanos(&machinery_core::time::now());
        let mut c = conn.clone();
        let moved: usize = scripts::MOVE_DUE
            .key(&config.delayed_tasks_key)
            .arg(now)
            .arg(batch)
            .arg(&config.default_queue)
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                error::map(
                    format!("cannot move due tasks out of {}", config.delayed_tasks_key),
                    e,
                )
            })?;
        total += moved;
        if moved < batch {
            return Ok(total);
        }
    }
}

async fn delayed_mover(weak: Weak<Inner>, cancel: CancellationToken) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    loop {
        let pause = {
            let Some(inner) = weak.upgrade() else { return };
            match move_due(&inner.conn, &inner.config).await {
                Ok(_) => {
                    backoff.reset();
                    inner.config.delayed_poll()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis: moving due delayed tasks failed");
                    backoff.step().max(inner.config.delayed_poll())
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> BrokerCapabilities {
        BrokerCapabilities {
            delayed_delivery: true,
            pending_tasks: true,
            delayed_tasks: true,
            priority: false,
            dead_letter: true,
            fifo: true,
            redelivers_unacked: true,
            max_message_bytes: Some(MAX_MESSAGE_BYTES),
        }
    }

    fn default_routing_key(&self) -> String {
        self.inner.config.default_queue.clone()
    }

    async fn publish(&self, sig: &Signature) -> Result<()> {
        // Go's Redis broker writes the queue it used into the message.
        let filled;
        let sig = if sig.routing_key.is_empty() {
            let mut s = sig.clone();
            s.routing_key.clone_from(&self.inner.config.default_queue);
            filled = s;
            &filled
        } else {
            sig
        };
        let body = sig.to_json()?;
        if body.len() > MAX_MESSAGE_BYTES {
            return Err(Error::TooLarge {
                what: "message",
                size: body.len(),
                limit: MAX_MESSAGE_BYTES,
            });
        }
        let queue = self.queue_for(sig);
        let delayed_key = &self.inner.config.delayed_tasks_key;
        let eta = sig.future_eta();
        retry_once(&self.inner.conn, |mut c| {
            let body = &body;
            async move {
                match eta {
                    Some(eta) => {
                        let score = machinery_core::time::unix_nanos(&eta);
                        c.zadd::<_, _, _, ()>(delayed_key, body, score).await
                    }
                    None => c.rpush::<_, _, ()>(queue, body).await,
                }
            }
        })
        .await
        .map_err(|e| {
            let target = if eta.is_some() { delayed_key } else { queue };
            error::map(format!("cannot publish to {target}"), e)
        })
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<DeliveryStream> {
        if queue.is_empty() {
            return Err(Error::config(
                "default_queue",
                "cannot consume an empty queue name",
            ));
        }
        let config = &self.inner.config;
        let keys = QueueKeys::new(queue);
        let id = client::consumer_id();
        let processing = format!("{}{id}", keys.processing_prefix);
        let blocking = client::blocking_connection(config, &self.inner.client)
            .await
            .map_err(|e| error::unreachable(&self.inner.target.display, e))?;
        let released = TaskTracker::new();
        released.close();
        let handle = ConsumerHandle {
            tag: options.consumer_tag.clone(),
            stop: self.inner.cancel.child_token(),
            released: released.clone(),
        };
        let consumer = Arc::new(Consumer {
            keys,
            id,
            processing,
            conn: self.inner.conn.clone(),
            delayed_key: config.delayed_tasks_key.clone(),
            default_queue: config.default_queue.clone(),
            acks: std::sync::Mutex::new(AckQueue::default()),
            ack_wake: Notify::new(),
            held: std::sync::Mutex::default(),
            tasks: self.inner.tasks.clone(),
            released: Some(released.token()),
            release_limit: config.response_timeout() + config.connect_timeout(),
        });
        // Register before taking anything, so that a crash right after the first move is
        // recovered; recover dead consumers of this queue at once.
        consumer
            .tick(config.lease())
            .await
            .map_err(|e| error::map(format!("cannot register consumer on {queue}"), e))?;
        self.start_delayed_mover();

        let prefetch = match options.prefetch {
            0 => UNLIMITED_PREFETCH,
            n => usize::from(n),
        };
        // Room for every delivery the permits allow, so handing one over never waits (the
        // fetch loop also carries acks and must not stall behind a consumer that is not polling).
        let (tx, rx) = mpsc::channel(prefetch + 1);
        let fetcher = Fetcher {
            consumer: Arc::clone(&consumer),
            client: self.inner.client.clone(),
            config: config.clone(),
            conn: Some(blocking),
            tx,
            permits: Arc::new(Semaphore::new(prefetch)),
            max_batch: prefetch,
            stop: handle.stop.clone(),
        };
        {
            let mut consumers = self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            consumers.retain(|c| !c.released.is_empty());
            consumers.push(handle);
        }
        self.inner.tasks.spawn(fetcher.run());
        // Tracked like the fetch loop: the heartbeat may hold the last reference to the
        // consumer for a moment, and the give-back on its drop must happen before `close`
        // returns.
        self.inner.tasks.spawn(heartbeat(
            Arc::downgrade(&consumer),
            config.lease(),
            config.tick(),
            self.inner.cancel.clone(),
        ));
        tracing::debug!(queue, consumer = %consumer.id, prefetch, "redis: consumer started");
        Ok(Box::pin(ConsumerStream { rx }))
    }

    async fn pending_tasks(&self, queue: &str) -> Result<Vec<Signature>> {
        let mut conn = self.inner.conn.clone();
        let raw: Vec<Vec<u8>> = conn
            .lrange(queue, 0, -1)
            .await
            .map_err(|e| error::map(format!("cannot list {queue}"), e))?;
        Ok(decode_all(&raw, queue))
    }

    async fn delayed_tasks(&self) -> Result<Vec<Signature>> {
        let key = &self.inner.config.delayed_tasks_key;
        let mut conn = self.inner.conn.clone();
        let raw: Vec<Vec<u8>> = conn
            .zrange(key, 0, -1)
            .await
            .map_err(|e| error::map(format!("cannot list {key}"), e))?;
        Ok(decode_all(&raw, key))
    }

    async fn purge_queue(&self, queue: &str) -> Result<()> {
        let mut conn = self.inner.conn.clone();
        conn.del::<_, ()>(queue)
            .await
            .map_err(|e| error::map(format!("cannot purge {queue}"), e))
    }

    async fn stop_consuming(&self, consumer_tag: &str) -> Result<()> {
        let stopping: Vec<ConsumerHandle> = {
            let mut consumers = self
                .inner
                .consumers
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let (stopping, keep) = std::mem::take(&mut *consumers)
                .into_iter()
                .partition(|c| c.tag == consumer_tag);
            *consumers = keep;
            stopping
        };
        for c in &stopping {
            c.stop.cancel();
        }
        // Each gives back what it holds once its stream and deliveries are gone (the
        // give-back itself has a time limit).
        for c in stopping {
            c.released.wait().await;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.cancel.cancel();
        // Let the fetch loops finish their current pop and stopped consumers give back what
        // they hold, so nothing waits for a lease to end after a clean shutdown.
        let tasks = &self.inner.tasks;
        tasks.close();
        let limit = self.inner.config.block_timeout() + self.inner.config.response_timeout();
        if tokio::time::timeout(limit, tasks.wait()).await.is_err() {
            tracing::warn!("redis: consumers did not stop within {limit:?}");
        }
        Ok(())
    }
}

/// Undecodable entries are skipped (and logged): inspection must not fail because of one
/// bad message, which a consumer will dead-letter anyway.
fn decode_all(raw: &[Vec<u8>], key: &str) -> Vec<Signature> {
    raw.iter()
        .filter_map(|r| match Signature::from_json(r) {
            Ok(sig) => Some(sig),
            Err(e) => {
                tracing::warn!(key, error = %e, "redis: skipping an undecodable message");
                None
            }
        })
        .collect()
}

/// One consumer stream's identity and its keys; shared by its fetch task and its deliveries.
/// When the last of them goes away, whatever is still in the processing list is given back.
struct Consumer {
    keys: QueueKeys,
    id: String,
    processing: String,
    conn: ConnectionManager,
    delayed_key: String,
    default_queue: String,
    acks: std::sync::Mutex<AckQueue>,
    ack_wake: Notify,
    held: std::sync::Mutex<Held>,
    tasks: TaskTracker,
    /// Counts this consumer until its give-back is done (see `RedisBroker::stop_consuming`).
    released: Option<TaskTrackerToken>,
    /// How long the give-back may take.
    release_limit: Duration,
}

/// What the consumer holds: the messages it handed out and that are not settled yet. After a
/// lost reply the processing list may hold more (a take or a pop that ran on the server, a
/// requeue that did not); the fetch loop then reconciles the list with this set and gives the
/// rest back.
#[derive(Default)]
struct Held {
    next_id: u64,
    out: HashMap<u64, Arc<[u8]>>,
    /// Acks that failed: removed from the processing list by the next reconciliation.
    failed_acks: Vec<Arc<[u8]>>,
    /// The processing list may hold messages nobody will settle.
    reconcile: bool,
}

/// Acks waiting to ride on the fetch loop's next round trip: the take script removes them
/// from the processing list before it takes new messages, so a busy consumer settles and
/// refills in one command instead of one `LREM` per message.
#[derive(Default)]
struct AckQueue {
    pending: Vec<PendingAck>,
    /// The fetch loop is blocked waiting for a message, or gone: ack directly.
    direct: bool,
}

struct PendingAck {
    raw: Arc<[u8]>,
    /// `true` once removed; `false` means "not done, do it yourself".
    done: oneshot::Sender<bool>,
}

impl Consumer {
    fn ack_queue(&self) -> std::sync::MutexGuard<'_, AckQueue> {
        self.acks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn held(&self) -> std::sync::MutexGuard<'_, Held> {
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Hand the pending acks back to their callers, which then ack directly; until the fetch
    /// loop batches again, every ack is direct.
    fn stop_batching_acks(&self) {
        let pending = {
            let mut q = self.ack_queue();
            q.direct = true;
            std::mem::take(&mut q.pending)
        };
        for ack in pending {
            let _ = ack.done.send(false);
        }
    }

    /// Record a message handed out; its id settles it.
    fn hold(&self, raw: Arc<[u8]>) -> u64 {
        let mut held = self.held();
        held.next_id += 1;
        let id = held.next_id;
        held.out.insert(id, raw);
        id
    }

    /// The message `id` is settled (or given up): no longer held.
    fn unhold(&self, id: u64) {
        self.held().out.remove(&id);
    }

    /// The processing list may not match what is held: reconcile it soon.
    fn needs_reconcile(&self) {
        self.held().reconcile = true;
        self.ack_wake.notify_one();
    }

    /// Make the processing list hold exactly the messages handed out and not settled: remove
    /// the acks that failed, and give everything else back to the head of the queue.
    async fn reconcile(&self, conn: &mut MultiplexedConnection) -> RedisResult<()> {
        let (held, failed) = {
            let mut h = self.held();
            if !h.reconcile {
                return Ok(());
            }
            h.reconcile = false;
            let held: Vec<Arc<[u8]>> = h.out.values().cloned().collect();
            (held, std::mem::take(&mut h.failed_acks))
        };
        let mut call = scripts::RECONCILE.prepare_invoke();
        call.key(&self.processing)
            .key(&self.keys.queue)
            .arg(held.len());
        for raw in held.iter().chain(&failed) {
            call.arg(&**raw);
        }
        match call.invoke_async::<(usize, usize)>(conn).await {
            Ok((returned, removed)) => {
                if returned > 0 || removed > 0 {
                    tracing::info!(
                        queue = %self.keys.queue,
                        consumer = %self.id,
                        returned,
                        acked = removed,
                        "redis: reconciled the processing list after a lost reply"
                    );
                }
                Ok(())
            }
            Err(e) => {
                let mut h = self.held();
                h.reconcile = true;
                h.failed_acks.extend(failed);
                Err(e)
            }
        }
    }

    /// What to put in the delayed set so that the delayed mover brings the message back to
    /// this queue: the bytes as they are when their `RoutingKey` already names it, else the
    /// signature re-encoded with it. `None` for a body that is not a signature (it cannot be
    /// routed by the mover, so it is requeued at once instead).
    fn delayed_member<'a>(&self, raw: &'a [u8]) -> Option<std::borrow::Cow<'a, [u8]>> {
        let mut sig = Signature::from_json(raw).ok()?;
        let routed_to = if sig.routing_key.is_empty() {
            &self.default_queue
        } else {
            &sig.routing_key
        };
        if *routed_to == self.keys.queue {
            return Some(std::borrow::Cow::Borrowed(raw));
        }
        sig.routing_key.clone_from(&self.keys.queue);
        sig.to_json().ok().map(std::borrow::Cow::Owned)
    }

    async fn tick(&self, lease: Duration) -> RedisResult<usize> {
        let mut c = self.conn.clone();
        let moved: usize = scripts::TICK
            .key(&self.keys.registry)
            .key(&self.keys.queue)
            .arg(&self.id)
            .arg(lease.as_millis() as u64)
            .arg(&self.keys.processing_prefix)
            .invoke_async(&mut c)
            .await?;
        if moved > 0 {
            tracing::info!(
                queue = %self.keys.queue,
                moved,
                "redis: put back messages held by dead consumers"
            );
        }
        Ok(moved)
    }
}

impl Drop for Consumer {
    fn drop(&mut self) {
        let released = self.released.take();
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let mut conn = self.conn.clone();
        let keys = self.keys.clone();
        let processing = std::mem::take(&mut self.processing);
        let id = std::mem::take(&mut self.id);
        let limit = self.release_limit;
        self.tasks.spawn_on(
            async move {
                let mut call = scripts::RELEASE.prepare_invoke();
                call.key(&processing)
                    .key(&keys.queue)
                    .key(&keys.registry)
                    .arg(&id);
                let release = call.invoke_async::<usize>(&mut conn);
                match tokio::time::timeout(limit, release).await {
                    Ok(Ok(n)) => tracing::debug!(queue = %keys.queue, consumer = %id, released = n, "redis: consumer stopped"),
                    Ok(Err(e)) => tracing::warn!(
                        queue = %keys.queue,
                        error = %e,
                        "redis: could not give back unacknowledged messages; they return once the lease ends"
                    ),
                    Err(_) => tracing::warn!(
                        queue = %keys.queue,
                        "redis: giving back unacknowledged messages took longer than {limit:?}; they return once the lease ends"
                    ),
                }
                drop(released);
            },
            &handle,
        );
    }
}

/// Keeps the consumer's lease alive and recovers dead consumers of the same queue, until the
/// consumer is gone.
async fn heartbeat(
    consumer: Weak<Consumer>,
    lease: Duration,
    tick: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(tick) => {}
        }
        let Some(consumer) = consumer.upgrade() else {
            return;
        };
        if let Err(e) = consumer.tick(lease).await {
            tracing::debug!(queue = %consumer.keys.queue, error = %e, "redis: heartbeat failed");
        }
    }
}

/// The consumer loop: takes messages into the processing list, never more than the permits
/// (prefetch) allow, and hands them to the stream.
struct Fetcher {
    consumer: Arc<Consumer>,
    client: Client,
    config: RedisConfig,
    conn: Option<MultiplexedConnection>,
    tx: mpsc::Sender<Result<Delivery>>,
    permits: Arc<Semaphore>,
    max_batch: usize,
    /// Cancelled when this consumer stops taking (its worker stops, or the broker closes).
    stop: CancellationToken,
}

enum Step {
    Continue,
    Stop,
}

impl Fetcher {
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.reconnect_max_delay());
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                _ = self.tx.closed() => break,
                _ = self.consumer.ack_wake.notified() => None,
                p = Arc::clone(&self.permits).acquire_owned() => match p {
                    Ok(p) => Some(p),
                    Err(_) => break,
                },
            };
            let mut permits: Vec<_> = first.into_iter().collect();
            while permits.len() < self.max_batch {
                match Arc::clone(&self.permits).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            let acks = std::mem::take(&mut self.consumer.ack_queue().pending);
            if permits.is_empty() && acks.is_empty() && !self.consumer.held().reconcile {
                continue;
            }
            let step = match self.fetch(permits, acks).await {
                Ok(step) => {
                    backoff.reset();
                    step
                }
                Err(e) => {
                    self.conn = None;
                    // The reply may be lost while the command ran: whatever it moved into the
                    // processing list is given back once connected again.
                    self.consumer.held().reconcile = true;
                    // Until the loop is connected again, acks go out on their own.
                    self.consumer.stop_batching_acks();
                    let err = error::map(format!("cannot consume {}", self.consumer.keys.queue), e);
                    if self.tx.send(Err(err)).await.is_err() {
                        break;
                    }
                    let pause = backoff.step();
                    tokio::select! {
                        _ = self.stop.cancelled() => Step::Stop,
                        _ = self.tx.closed() => Step::Stop,
                        _ = tokio::time::sleep(pause) => Step::Continue,
                    }
                }
            };
            if matches!(step, Step::Stop) {
                break;
            }
        }
        // From now on acks go out on their own: none rides a take that grabs new messages.
        self.consumer.stop_batching_acks();
    }

    /// Reconcile the processing list when a reply may have been lost, then settle `acks` and
    /// take up to `permits.len()` messages in one script call; when the queue is empty, block
    /// for one.
    async fn fetch(
        &mut self,
        mut permits: Vec<OwnedSemaphorePermit>,
        acks: Vec<PendingAck>,
    ) -> RedisResult<Step> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => match client::blocking_connection(&self.config, &self.client).await {
                Ok(c) => {
                    self.consumer.ack_queue().direct = false;
                    self.conn.insert(c)
                }
                Err(e) => {
                    for ack in acks {
                        let _ = ack.done.send(false);
                    }
                    return Err(e);
                }
            },
        };
        if let Err(e) = self.consumer.reconcile(conn).await {
            for ack in acks {
                let _ = ack.done.send(false);
            }
            return Err(e);
        }
        if permits.is_empty() && acks.is_empty() {
            return Ok(Step::Continue);
        }
        let mut call = scripts::TAKE.prepare_invoke();
        call.key(&self.consumer.keys.queue)
            .key(&self.consumer.processing)
            .arg(permits.len());
        for ack in &acks {
            call.arg(&*ack.raw);
        }
        let reply: RedisResult<(i64, Vec<Vec<u8>>)> = call.invoke_async(conn).await;
        let (missing, taken) = match reply {
            Ok(r) => r,
            Err(e) => {
                for ack in acks {
                    let _ = ack.done.send(false);
                }
                return Err(e);
            }
        };
        for ack in acks {
            let _ = ack.done.send(true);
        }
        if missing > 0 {
            warn_not_held(&self.consumer.keys.queue);
        }
        if !taken.is_empty() {
            permits.truncate(taken.len());
            for (raw, permit) in taken.into_iter().zip(permits) {
                if !self.deliver(raw, permit).await {
                    return Ok(Step::Stop);
                }
            }
            return Ok(Step::Continue);
        }
        if permits.is_empty() || self.stop.is_cancelled() {
            return Ok(Step::Continue);
        }
        // Nothing waiting: block on one message, acking directly meanwhile (unless acks
        // arrived since the take, which go out first). The pop is never cancelled half-way,
        // so a message it moves always has a live (or recoverable) owner.
        {
            let mut q = self.consumer.ack_queue();
            if !q.pending.is_empty() {
                return Ok(Step::Continue);
            }
            q.direct = true;
        }
        permits.truncate(1);
        let timeout = self.config.block_timeout().as_secs_f64();
        let popped: RedisResult<Option<Vec<u8>>> = redis::cmd("BLMOVE")
            .arg(&self.consumer.keys.queue)
            .arg(&self.consumer.processing)
            .arg("LEFT")
            .arg("RIGHT")
            .arg(timeout)
            .query_async(conn)
            .await;
        self.consumer.ack_queue().direct = false;
        if let Some(raw) = popped? {
            let permit = permits.pop().expect("one permit kept");
            if !self.deliver(raw, permit).await {
                return Ok(Step::Stop);
            }
        }
        Ok(Step::Continue)
    }

    /// Hand one message to the stream; false when the stream is gone (the message stays in
    /// the processing list, given back when the consumer goes away).
    async fn deliver(&self, raw: Vec<u8>, permit: OwnedSemaphorePermit) -> bool {
        let payload = Payload::decode(&raw);
        let raw: Arc<[u8]> = raw.into();
        let id = self.consumer.hold(Arc::clone(&raw));
        let acker = RedisAcker {
            consumer: Arc::clone(&self.consumer),
            raw,
            id,
            settled: AtomicBool::new(false),
            permit: std::sync::Mutex::new(Some(permit)),
        };
        let delivery = Delivery::new(payload, false, Box::new(acker));
        self.tx.send(Ok(delivery)).await.is_ok()
    }
}

/// The stream side of a consumer.
struct ConsumerStream {
    rx: mpsc::Receiver<Result<Delivery>>,
}

impl Stream for ConsumerStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

/// Settles one delivery: its bytes are removed from the consumer's processing list.
struct RedisAcker {
    consumer: Arc<Consumer>,
    raw: Arc<[u8]>,
    /// Its entry in the consumer's held set.
    id: u64,
    /// An ack or nack was attempted.
    settled: AtomicBool,
    /// Released as soon as the delivery is settled (or dropped), so the consumer may take the
    /// next message in the same round trip that settles this one.
    permit: std::sync::Mutex<Option<OwnedSemaphorePermit>>,
}

impl RedisAcker {
    fn release_permit(&self) {
        self.permit
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
    }

    async fn ack_directly(&self) -> Result<()> {
        let c = &self.consumer;
        let removed = retry_once(&c.conn, |mut conn| async move {
            conn.lrem::<_, _, i64>(&c.processing, 1, &*self.raw).await
        })
        .await;
        match removed {
            Ok(removed) => {
                c.unhold(self.id);
                if removed == 0 {
                    warn_not_held(&c.keys.queue);
                }
                Ok(())
            }
            Err(e) => {
                // Not dropped: the next reconciliation removes it from the processing list.
                {
                    let mut h = c.held();
                    h.out.remove(&self.id);
                    h.failed_acks.push(Arc::clone(&self.raw));
                }
                c.needs_reconcile();
                Err(error::map(format!("cannot ack on {}", c.keys.queue), e))
            }
        }
    }
}

fn warn_not_held(queue: &str) {
    tracing::warn!(
        queue,
        "redis: acked a message that was no longer held (its lease had ended; it may run again)"
    );
}

#[async_trait]
impl Acknowledger for RedisAcker {
    async fn ack(&self) -> Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        let c = &self.consumer;
        let (done, applied) = oneshot::channel();
        let queued = {
            let mut q = c.ack_queue();
            if !q.direct {
                q.pending.push(PendingAck {
                    raw: Arc::clone(&self.raw),
                    done,
                });
            }
            !q.direct
        };
        if !queued {
            return self.ack_directly().await;
        }
        self.release_permit();
        c.ack_wake.notify_one();
        match applied.await {
            Ok(true) => {
                c.unhold(self.id);
                Ok(())
            }
            _ => self.ack_directly().await,
        }
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        self.settled.store(true, Ordering::SeqCst);
        let c = &self.consumer;
        let raw = &*self.raw;
        let mut pipe = redis::pipe();
        pipe.atomic().lrem(&c.processing, 1, raw).ignore();
        let what = match &nack {
            Nack::Requeue { delay: None } => {
                pipe.rpush(&c.keys.queue, raw).ignore();
                "requeue"
            }
            Nack::Requeue { delay: Some(delay) } => match c.delayed_member(raw) {
                Some(member) => {
                    let eta = machinery_core::time::after(*delay);
                    let score = machinery_core::time::unix_nanos(&eta);
                    pipe.zadd(&c.delayed_key, member, score).ignore();
                    "requeue with delay"
                }
                None => {
                    pipe.rpush(&c.keys.queue, raw).ignore();
                    "requeue"
                }
            },
            Nack::DeadLetter { reason } => {
                let entry = DeadLetterEntry::encode(&c.keys.queue, &c.id, reason, raw);
                pipe.rpush(&c.keys.dead, entry).ignore();
                "dead-letter"
            }
        };
        let mut conn = c.conn.clone();
        let result = pipe.query_async::<()>(&mut conn).await;
        // Settled either way: when the reply was lost, the next reconciliation gives the
        // message back if the nack did not happen.
        c.unhold(self.id);
        result.map_err(|e| {
            c.needs_reconcile();
            error::map(format!("cannot {what} on {}", c.keys.queue), e)
        })
    }
}

impl Drop for RedisAcker {
    fn drop(&mut self) {
        if !self.settled.load(Ordering::SeqCst) {
            // Dropped without an ack or a nack: give it back (as the memory broker does).
            self.consumer.unhold(self.id);
            self.consumer.needs_reconcile();
        }
    }
}
