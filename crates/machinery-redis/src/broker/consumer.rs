//! One consumer of a queue: its fetch loop (takes into its processing list, up to the
//! prefetch), its heartbeat, its deliveries' acks and nacks, the reconciliation after a lost
//! reply, and the give-back when it stops.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use futures::Stream;
use machinery_core::{
    Acknowledger, ConsumeOptions, Delivery, DeliveryStream, Error, Nack, Payload, Result, Signature,
};
use redis::{AsyncCommands, RedisResult};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tokio_util::task::task_tracker::TaskTrackerToken;

use super::dead_letter::DeadLetterEntry;
use super::{ConsumerHandle, QueueKeys, RedisBroker, UNLIMITED_PREFETCH};
use crate::client::{self, Conn, Connector, reconnect_backoff, retry_once};
use crate::config::RedisConfig;
use crate::{error, scripts};

/// Start one consumer of `queue` (see `Broker::consume`).
pub(super) async fn start(
    broker: &RedisBroker,
    queue: &str,
    options: ConsumeOptions,
) -> Result<DeliveryStream> {
    if queue.is_empty() {
        return Err(Error::config(
            "default_queue",
            "cannot consume an empty queue name",
        ));
    }
    let config = &broker.inner.config;
    let keys = QueueKeys::new(queue, broker.inner.cluster)?;
    let id = client::consumer_id();
    let processing = format!("{}{id}", keys.processing_prefix);
    let blocking = broker
        .inner
        .connector
        .blocking(config)
        .await
        .map_err(|e| error::unreachable(&broker.inner.target.display, e))?;
    let released = TaskTracker::new();
    released.close();
    let handle = ConsumerHandle {
        tag: options.consumer_tag.clone(),
        stop: broker.inner.cancel.child_token(),
        released: released.clone(),
    };
    let consumer = Arc::new(Consumer {
        keys,
        id,
        processing,
        conn: broker.inner.conn.clone(),
        cluster: broker.inner.cluster,
        delayed_key: config.delayed_tasks_key.clone(),
        default_queue: config.default_queue.clone(),
        acks: std::sync::Mutex::new(AckQueue::default()),
        ack_wake: Notify::new(),
        held: std::sync::Mutex::default(),
        tasks: broker.inner.tasks.clone(),
        released: Some(released.token()),
        release_limit: config.response_timeout() + config.connect_timeout(),
    });
    // Register before taking anything, so that a crash right after the first move is
    // recovered; recover dead consumers of this queue at once.
    consumer
        .tick(config.lease())
        .await
        .map_err(|e| error::map(format!("cannot register consumer on {queue}"), e))?;
    broker.start_delayed_mover();

    let prefetch = match options.prefetch {
        0 => UNLIMITED_PREFETCH,
        n => usize::from(n),
    };
    // Room for every delivery the permits allow, so handing one over never waits (the
    // fetch loop also carries acks and must not stall behind a consumer that is not polling).
    let (tx, rx) = mpsc::channel(prefetch + 1);
    let fetcher = Fetcher {
        consumer: Arc::clone(&consumer),
        connector: broker.inner.connector.clone(),
        config: config.clone(),
        conn: Some(blocking),
        tx,
        permits: Arc::new(Semaphore::new(prefetch)),
        max_batch: prefetch,
        stop: handle.stop.clone(),
        recheck: false,
        take_hint: MIN_TAKE,
    };
    {
        let mut consumers = broker
            .inner
            .consumers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        consumers.retain(|c| !c.released.is_empty());
        consumers.push(handle);
    }
    broker.inner.tasks.spawn(fetcher.run());
    // Tracked like the fetch loop: the heartbeat may hold the last reference to the
    // consumer for a moment, and the give-back on its drop must happen before `close`
    // returns.
    broker.inner.tasks.spawn(heartbeat(
        Arc::downgrade(&consumer),
        config.lease(),
        config.tick(),
        broker.inner.cancel.clone(),
    ));
    tracing::debug!(queue, consumer = %consumer.id, prefetch, "redis: consumer started");
    Ok(Box::pin(ConsumerStream { rx }))
}

/// One consumer stream's identity and its keys; shared by its fetch task and its deliveries.
/// When the last of them goes away, whatever is still in the processing list is given back.
struct Consumer {
    keys: QueueKeys,
    id: String,
    processing: String,
    conn: Conn,
    /// On a Redis Cluster a nack is a script (its keys share a slot) and a delayed requeue
    /// is two steps (the delayed set is in another slot).
    cluster: bool,
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

/// A message's bytes as taken: an ack removes exactly these from the processing list.
type Raw = Arc<Vec<u8>>;

/// What the consumer holds: the messages it handed out and that are not settled yet. After a
/// lost reply the processing list may hold more (a take or a pop that ran on the server, a
/// requeue that did not); the fetch loop then reconciles the list with this set and gives the
/// rest back.
#[derive(Default)]
struct Held {
    next_id: u64,
    out: HashMap<u64, Raw>,
    /// Acks that failed: removed from the processing list by the next reconciliation.
    failed_acks: Vec<Raw>,
    /// The processing list may hold messages nobody will settle.
    reconcile: bool,
}

/// Acks waiting to ride on the fetch loop's next round trip: the take pipeline removes them
/// from the processing list before it takes new messages, so a busy consumer settles and
/// refills in one round trip instead of one per message.
#[derive(Default)]
struct AckQueue {
    pending: Vec<PendingAck>,
    /// The fetch loop is blocked waiting for a message, or gone: ack directly.
    direct: bool,
}

struct PendingAck {
    raw: Raw,
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
    fn hold(&self, raw: Raw) -> u64 {
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
    async fn reconcile(&self, conn: &mut Conn) -> RedisResult<()> {
        let (held, failed) = {
            let mut h = self.held();
            if !h.reconcile {
                return Ok(());
            }
            h.reconcile = false;
            let held: Vec<Raw> = h.out.values().cloned().collect();
            (held, std::mem::take(&mut h.failed_acks))
        };
        let mut call = scripts::RECONCILE.prepare_invoke();
        call.key(&self.processing)
            .key(&self.keys.queue)
            .arg(held.len());
        for raw in held.iter().chain(&failed) {
            call.arg(raw.as_slice());
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
    connector: Connector,
    config: RedisConfig,
    conn: Option<Conn>,
    tx: mpsc::Sender<Result<Delivery>>,
    permits: Arc<Semaphore>,
    max_batch: usize,
    /// Cancelled when this consumer stops taking (its worker stops, or the broker closes).
    stop: CancellationToken,
    /// A command of this loop failed since the queue was last seen empty: reconcile once more
    /// when it is (see `fetch`).
    recheck: bool,
    /// How many `LMOVE`s the next take sends at most: doubles while takes come back full,
    /// falls to what the last one found otherwise, so a nearly empty queue costs few nil
    /// replies.
    take_hint: usize,
}

/// The first take's size, and the least one after a take that found the queue short.
const MIN_TAKE: usize = 4;

enum Step {
    Continue,
    Stop,
}

impl Fetcher {
    async fn run(mut self) {
        let mut backoff = reconnect_backoff(self.config.reconnect_max_delay());
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
                    self.recheck = true;
                    // The reply may be lost while the command ran: whatever it moved into the
                    // processing list is given back once connected again.
                    self.consumer.held().reconcile = true;
                    // Until the loop is connected again, acks go out on their own.
                    self.consumer.stop_batching_acks();
                    let err = error::map(format!("cannot consume {}", self.consumer.keys.queue), e);
                    if self.tx.send(Err(err)).await.is_err() {
                        break;
                    }
                    let pause = backoff.next_delay();
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
    /// take up to `permits.len()` messages in one pipelined round trip; when the queue is
    /// empty, block for one.
    async fn fetch(
        &mut self,
        mut permits: Vec<OwnedSemaphorePermit>,
        acks: Vec<PendingAck>,
    ) -> RedisResult<Step> {
        let conn = match &mut self.conn {
            Some(c) => c,
            None => match self.connector.blocking(&self.config).await {
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
        // Settle the acks and take up to `take` messages in one round trip of plain commands
        // (a Lua script doing the same cost Redis several µs more per task): `LREM` of each
        // acked message from the processing list, then one `LMOVE` per message wanted, each
        // atomic on its own, so a message is always in the queue or in this list. A reply
        // lost midway is handled like any other: the processing list is reconciled.
        let take = permits.len().min(self.take_hint);
        let mut pipe = redis::pipe();
        for ack in &acks {
            pipe.lrem(&self.consumer.processing, 1, ack.raw.as_slice());
        }
        for _ in 0..take {
            pipe.cmd("LMOVE")
                .arg(&self.consumer.keys.queue)
                .arg(&self.consumer.processing)
                .arg("LEFT")
                .arg("RIGHT");
        }
        // Never empty: with no permit there is an ack (checked above), and with one `take` is
        // at least 1.
        let reply: RedisResult<Vec<redis::Value>> = pipe.query_async(conn).await;
        let (missing, taken) = match reply.and_then(|r| take_reply(r, acks.len())) {
            Ok(r) => r,
            Err(e) => {
                for ack in acks {
                    let _ = ack.done.send(false);
                }
                return Err(e);
            }
        };
        self.take_hint = if take > 0 && taken.len() == take {
            (take * 2).min(self.max_batch).max(MIN_TAKE)
        } else {
            (taken.len() + 1).max(MIN_TAKE)
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
        match popped? {
            Some(raw) => {
                let permit = permits.pop().expect("one permit kept");
                if !self.deliver(raw, permit).await {
                    return Ok(Step::Stop);
                }
            }
            // The queue stayed empty for a whole poll period after an error of this loop:
            // reconcile once more now that things are quiet. The reconciliation right after
            // the reconnect compared the list with what was held while acks, nacks and
            // give-backs of that troubled time could still be in flight on the shared
            // connection (or their effects still to come); this second pass, off the hot
            // path and once per error episode, gives back whatever they left behind, so
            // nothing waits for a lease while the worker lives.
            None if self.recheck => {
                self.recheck = false;
                self.consumer.needs_reconcile();
            }
            None => {}
        }
        Ok(Step::Continue)
    }

    /// Hand one message to the stream; false when the stream is gone (the message stays in
    /// the processing list, given back when the consumer goes away).
    async fn deliver(&self, raw: Vec<u8>, permit: OwnedSemaphorePermit) -> bool {
        let payload = Payload::decode(&raw);
        // Shared with the held set without a copy (a big message is not held twice).
        let raw: Raw = Arc::new(raw);
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
    raw: Raw,
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
            conn.lrem::<_, _, i64>(&c.processing, 1, self.raw.as_slice())
                .await
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

/// Split the take pipeline's replies: how many acked messages were no longer in the
/// processing list (`LREM` replied 0), and the messages the `LMOVE`s took, oldest first (a
/// nil reply means the queue was empty at that moment).
fn take_reply(replies: Vec<redis::Value>, acks: usize) -> RedisResult<(usize, Vec<Vec<u8>>)> {
    use redis::FromRedisValue;
    let mut replies = replies.into_iter();
    let mut missing = 0;
    for reply in replies.by_ref().take(acks) {
        if i64::from_redis_value(reply).map_err(redis::RedisError::from)? == 0 {
            missing += 1;
        }
    }
    let mut taken = Vec::new();
    // Not only up to the first nil: another client may push between the pipelined commands,
    // and every message moved into the processing list must be delivered.
    for reply in replies {
        if let Some(raw) =
            Option::<Vec<u8>>::from_redis_value(reply).map_err(redis::RedisError::from)?
        {
            taken.push(raw);
        }
    }
    Ok((missing, taken))
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
        let raw = self.raw.as_slice();
        if c.cluster {
            return self.nack_on_cluster(nack).await;
        }
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

impl RedisAcker {
    /// A nack on a Redis Cluster: requeue and dead-letter are one script on the queue's slot;
    /// a delayed requeue first adds the message to the delayed set (another slot), then
    /// removes it from the processing list (a crash in between runs it twice, never zero
    /// times).
    async fn nack_on_cluster(&self, nack: Nack) -> Result<()> {
        let c = &self.consumer;
        let raw = self.raw.as_slice();
        let mut conn = c.conn.clone();
        let delayed = match &nack {
            Nack::Requeue { delay: Some(delay) } => c.delayed_member(raw).map(|m| (m, *delay)),
            _ => None,
        };
        let (what, result) = match (&nack, delayed) {
            (_, Some((member, delay))) => {
                let eta = machinery_core::time::after(delay);
                let score = machinery_core::time::unix_nanos(&eta);
                let r = async {
                    conn.zadd::<_, _, _, ()>(&c.delayed_key, &*member, score)
                        .await?;
                    conn.lrem::<_, _, ()>(&c.processing, 1, raw).await
                }
                .await;
                ("requeue with delay", r)
            }
            (Nack::Requeue { .. }, None) => {
                let r = scripts::NACK
                    .key(&c.processing)
                    .key(&c.keys.queue)
                    .arg(raw)
                    .arg(raw)
                    .invoke_async::<()>(&mut conn)
                    .await;
                ("requeue", r)
            }
            (Nack::DeadLetter { reason }, None) => {
                let entry = DeadLetterEntry::encode(&c.keys.queue, &c.id, reason, raw);
                let r = scripts::NACK
                    .key(&c.processing)
                    .key(&c.keys.dead)
                    .arg(raw)
                    .arg(entry)
                    .invoke_async::<()>(&mut conn)
                    .await;
                ("dead-letter", r)
            }
        };
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
