//! [`MemoryBroker`]: named FIFO queues in process memory, with delays, priorities,
//! redelivery of unacknowledged messages and a dead-letter store.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::DeadLetter;
use crate::broker::{Acknowledger, Nack};
use crate::{
    Broker, BrokerCapabilities, ConsumeOptions, Delivery, DeliveryStream, Error, Payload, Result,
    Signature, time,
};

const DRIVER: &str = "memory";

/// The queue used for signatures without a routing key unless configured otherwise.
const DEFAULT_QUEUE: &str = "machinery_tasks";

/// An in-process broker: no server, nothing persisted.
///
/// It behaves like the networked brokers where it matters to a worker: messages are JSON
/// bytes (so the wire codec is exercised), a delivery must be acked or nacked, a delivery
/// dropped without either goes back to the head of its queue flagged `redelivered`, and when
/// a consumer stream is dropped every delivery it still has out goes back too (acking one of
/// those afterwards fails with [`Error::Closed`], as on an AMQP channel that was closed).
/// A future ETA or a delayed requeue is held by a timer and is never delivered early.
///
/// The handle is cheap to clone; clones share the queues (useful as "another process" in
/// tests). All capabilities are true; there is no size limit unless
/// [`MemoryBroker::set_max_message_bytes`] sets one.
///
/// # Examples
///
/// ```
/// use futures::StreamExt;
/// use machinery_core::{Broker, ConsumeOptions, MemoryBroker, Signature};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> machinery_core::Result<()> {
/// let broker = MemoryBroker::new();
/// broker.publish(&Signature::new("add").arg(1i64).arg(2i64)).await?;
///
/// let mut deliveries = broker.consume("machinery_tasks", ConsumeOptions::default()).await?;
/// let delivery = deliveries.next().await.expect("a delivery")?;
/// assert_eq!(delivery.signature().map(|s| s.name.as_str()), Some("add"));
/// delivery.ack().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct MemoryBroker {
    inner: Arc<Inner>,
}

struct Inner {
    default_queue: String,
    state: Mutex<State>,
    /// Woken on every change a consumer may be waiting for.
    changed: Notify,
    closed: CancellationToken,
    /// Largest body accepted; 0 = no limit.
    max_message_bytes: AtomicUsize,
}

#[derive(Default)]
struct State {
    queues: HashMap<String, VecDeque<Message>>,
    /// Messages waiting for their due time, by (due Unix nanos, sequence).
    delayed: BTreeMap<(i64, u64), Delayed>,
    dead: HashMap<String, Vec<DeadLetter>>,
    /// Deliveries handed out and not settled, per live consumer.
    outstanding: HashMap<u64, HashMap<u64, Outstanding>>,
    next_id: u64,
}

#[derive(Clone)]
struct Message {
    /// Publish sequence; keeps requeued messages in their original order.
    id: u64,
    body: Arc<[u8]>,
    priority: u8,
    redelivered: bool,
}

struct Delayed {
    queue: String,
    message: Message,
}

struct Outstanding {
    queue: String,
    message: Message,
}

fn lock(m: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that matters.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl State {
    fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Append behind every message of the same or higher priority.
    fn push_back(&mut self, queue: &str, message: Message) {
        let q = self.queues.entry(queue.to_owned()).or_default();
        let mut at = q.len();
        while at > 0 && q[at - 1].priority < message.priority {
            at -= 1;
        }
        q.insert(at, message);
    }

    /// Return messages to the head of their queue, oldest first.
    fn push_front(&mut self, mut returned: Vec<Outstanding>) {
        returned.sort_by_key(|o| std::cmp::Reverse(o.message.id));
        for mut o in returned {
            o.message.redelivered = true;
            self.queues
                .entry(o.queue)
                .or_default()
                .push_front(o.message);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // The last handle is gone: stop the delay timers.
        self.closed.cancel();
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("default_queue", &self.inner.default_queue)
            .field("closed", &self.inner.closed.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl MemoryBroker {
    /// A broker whose default queue is `machinery_tasks` (Go's default).
    pub fn new() -> Self {
        Self::with_default_queue(DEFAULT_QUEUE)
    }

    /// A broker whose default queue (for signatures without a routing key) is `queue`.
    pub fn with_default_queue(queue: impl Into<String>) -> Self {
        MemoryBroker {
            inner: Arc::new(Inner {
                default_queue: queue.into(),
                state: Mutex::new(State::default()),
                changed: Notify::new(),
                closed: CancellationToken::new(),
                max_message_bytes: AtomicUsize::new(0),
            }),
        }
    }

    /// Refuse bodies over `limit` bytes at publish, as a networked broker with a size limit
    /// does (and report it in the capabilities); `None` = no limit (the default).
    pub fn set_max_message_bytes(&self, limit: Option<usize>) {
        self.inner
            .max_message_bytes
            .store(limit.unwrap_or(0), Ordering::Relaxed);
    }

    fn max_message_bytes(&self) -> Option<usize> {
        match self.inner.max_message_bytes.load(Ordering::Relaxed) {
            0 => None,
            n => Some(n),
        }
    }

    /// Put `body` at the tail of `queue` byte for byte, as a foreign producer would; bytes
    /// that are not a signature reach the consumer as [`Payload::Malformed`].
    ///
    /// # Errors
    /// [`Error::Closed`] after [`Broker::close`].
    pub fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.ensure_open()?;
        let mut st = lock(&self.inner.state);
        let message = Message {
            id: st.next_id(),
            body: body.into(),
            priority: 0,
            redelivered: false,
        };
        st.push_back(queue, message);
        drop(st);
        self.inner.changed.notify_waiters();
        Ok(())
    }

    /// What was dead-lettered from `queue`, oldest first.
    pub fn dead_letters(&self, queue: &str) -> Vec<DeadLetter> {
        lock(&self.inner.state)
            .dead
            .get(queue)
            .cloned()
            .unwrap_or_default()
    }

    /// How many messages are ready in `queue` (not counting delayed or unacked ones).
    pub fn ready_len(&self, queue: &str) -> usize {
        lock(&self.inner.state)
            .queues
            .get(queue)
            .map_or(0, VecDeque::len)
    }

    /// How many deliveries are out with consumers and not yet settled.
    pub fn unacked_len(&self) -> usize {
        lock(&self.inner.state)
            .outstanding
            .values()
            .map(HashMap::len)
            .sum()
    }

    fn ensure_open(&self) -> Result<()> {
        if self.inner.closed.is_cancelled() {
            Err(Error::Closed("memory broker"))
        } else {
            Ok(())
        }
    }

    /// Hold `message` until `due_nanos` (Unix nanoseconds), then append it to `queue`.
    fn schedule(
        inner: &Arc<Inner>,
        st: &mut State,
        queue: String,
        message: Message,
        due_nanos: i64,
    ) {
        let key = (due_nanos, st.next_id());
        st.delayed.insert(key, Delayed { queue, message });
        // A weak handle: a pending timer must not keep a dropped broker alive.
        let weak = Arc::downgrade(inner);
        let closed = inner.closed.clone();
        tokio::spawn(async move {
            loop {
                // Wall clock, as the ETA is; tokio's timer alone could wake a hair early.
                let left = due_nanos.saturating_sub(time::unix_nanos(&time::now()));
                if left <= 0 {
                    break;
                }
                let sleep = Duration::from_nanos(left.unsigned_abs());
                tokio::select! {
                    () = closed.cancelled() => return,
                    () = tokio::time::sleep(sleep) => {}
                }
            }
            let Some(inner) = weak.upgrade() else {
                return;
            };
            let mut st = lock(&inner.state);
            if let Some(d) = st.delayed.remove(&key) {
                st.push_back(&d.queue, d.message);
                drop(st);
                inner.changed.notify_waiters();
            }
        });
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    #[allow(
        clippy::needless_update,
        reason = "a capability added later defaults to `false` without editing this driver"
    )]
    fn capabilities(&self) -> BrokerCapabilities {
        BrokerCapabilities {
            delayed_delivery: true,
            pending_tasks: true,
            delayed_tasks: true,
            priority: true,
            dead_letter: true,
            fifo: true,
            redelivers_unacked: true,
            max_message_bytes: self.max_message_bytes(),
            ..Default::default()
        }
    }

    fn default_routing_key(&self) -> String {
        self.inner.default_queue.clone()
    }

    async fn publish(&self, sig: &Signature) -> Result<()> {
        self.ensure_open()?;
        let body: Arc<[u8]> = sig.to_json()?.into();
        if let Some(limit) = self.max_message_bytes()
            && body.len() > limit
        {
            return Err(Error::TooLarge {
                what: "message",
                size: body.len(),
                limit,
            });
        }
        let queue = if sig.routing_key.is_empty() {
            self.inner.default_queue.clone()
        } else {
            sig.routing_key.clone()
        };
        let mut st = lock(&self.inner.state);
        let message = Message {
            id: st.next_id(),
            body,
            priority: sig.priority,
            redelivered: false,
        };
        match sig.future_eta() {
            Some(eta) => {
                Self::schedule(&self.inner, &mut st, queue, message, time::unix_nanos(&eta))
            }
            None => {
                st.push_back(&queue, message);
                drop(st);
                self.inner.changed.notify_waiters();
            }
        }
        Ok(())
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<DeliveryStream> {
        self.ensure_open()?;
        let consumer = {
            let mut st = lock(&self.inner.state);
            let id = st.next_id();
            st.outstanding.insert(id, HashMap::new());
            id
        };
        let guard = ConsumerGuard {
            inner: Arc::clone(&self.inner),
            consumer,
            queue: queue.to_owned(),
            prefetch: usize::from(options.prefetch),
        };
        Ok(Box::pin(futures::stream::unfold(
            guard,
            |guard| async move {
                let delivery = guard.next().await?;
                Some((Ok(delivery), guard))
            },
        )))
    }

    async fn pending_tasks(&self, queue: &str) -> Result<Vec<Signature>> {
        let st = lock(&self.inner.state);
        Ok(st
            .queues
            .get(queue)
            .into_iter()
            .flatten()
            .filter_map(|m| Signature::from_json(&m.body).ok())
            .collect())
    }

    async fn delayed_tasks(&self) -> Result<Vec<Signature>> {
        let st = lock(&self.inner.state);
        Ok(st
            .delayed
            .values()
            .filter_map(|d| Signature::from_json(&d.message.body).ok())
            .collect())
    }

    async fn purge_queue(&self, queue: &str) -> Result<()> {
        lock(&self.inner.state).queues.remove(queue);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.cancel();
        self.inner.changed.notify_waiters();
        Ok(())
    }
}

/// The state of one consumer stream; dropping it returns the consumer's unsettled
/// deliveries to their queue.
struct ConsumerGuard {
    inner: Arc<Inner>,
    consumer: u64,
    queue: String,
    /// 0 = no limit.
    prefetch: usize,
}

impl ConsumerGuard {
    /// The next delivery, waiting for one; `None` once the broker is closed.
    async fn next(&self) -> Option<Delivery> {
        loop {
            let changed = self.inner.changed.notified();
            tokio::pin!(changed);
            // Register before looking, so a change between the look and the wait is not lost.
            changed.as_mut().enable();
            if self.inner.closed.is_cancelled() {
                return None;
            }
            if let Some(d) = self.take() {
                return Some(d);
            }
            tokio::select! {
                () = self.inner.closed.cancelled() => return None,
                () = changed => {}
            }
        }
    }

    fn take(&self) -> Option<Delivery> {
        let mut st = lock(&self.inner.state);
        let out = st.outstanding.get(&self.consumer).map_or(0, HashMap::len);
        if self.prefetch != 0 && out >= self.prefetch {
            return None;
        }
        let message = st.queues.get_mut(&self.queue)?.pop_front()?;
        st.outstanding.entry(self.consumer).or_default().insert(
            message.id,
            Outstanding {
                queue: self.queue.clone(),
                message: message.clone(),
            },
        );
        drop(st);
        let acker = MemoryAcker {
            inner: Arc::clone(&self.inner),
            consumer: self.consumer,
            message: message.id,
            settled: AtomicBool::new(false),
        };
        Some(Delivery::new(
            Payload::decode(&message.body),
            message.redelivered,
            Box::new(acker),
        ))
    }
}

impl Drop for ConsumerGuard {
    fn drop(&mut self) {
        let mut st = lock(&self.inner.state);
        if let Some(out) = st.outstanding.remove(&self.consumer)
            && !out.is_empty()
        {
            st.push_front(out.into_values().collect());
            drop(st);
            self.inner.changed.notify_waiters();
        }
    }
}

/// Settles one delivery.
struct MemoryAcker {
    inner: Arc<Inner>,
    consumer: u64,
    message: u64,
    settled: AtomicBool,
}

impl MemoryAcker {
    /// Remove the delivery from its consumer's outstanding set.
    fn take(&self, st: &mut State) -> Result<Outstanding> {
        st.outstanding
            .get_mut(&self.consumer)
            .and_then(|out| out.remove(&self.message))
            .ok_or(Error::Closed("memory broker consumer"))
    }
}

#[async_trait]
impl Acknowledger for MemoryAcker {
    async fn ack(&self) -> Result<()> {
        let mut st = lock(&self.inner.state);
        self.take(&mut st)?;
        self.settled.store(true, Ordering::Release);
        drop(st);
        // A slot under the prefetch limit is free again.
        self.inner.changed.notify_waiters();
        Ok(())
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        let mut st = lock(&self.inner.state);
        let out = self.take(&mut st)?;
        self.settled.store(true, Ordering::Release);
        match nack {
            Nack::Requeue { delay: None } => st.push_front(vec![out]),
            Nack::Requeue { delay: Some(delay) } => {
                let mut message = out.message;
                message.redelivered = true;
                let due = time::unix_nanos(&time::now())
                    .saturating_add(i64::try_from(delay.as_nanos()).unwrap_or(i64::MAX));
                MemoryBroker::schedule(&self.inner, &mut st, out.queue, message, due);
            }
            Nack::DeadLetter { reason } => {
                let letter = DeadLetter {
                    body: out.message.body.to_vec(),
                    reason,
                };
                st.dead.entry(out.queue).or_default().push(letter);
            }
        }
        drop(st);
        self.inner.changed.notify_waiters();
        Ok(())
    }
}

impl Drop for MemoryAcker {
    fn drop(&mut self) {
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        let mut st = lock(&self.inner.state);
        if let Ok(out) = self.take(&mut st) {
            st.push_front(vec![out]);
            drop(st);
            self.inner.changed.notify_waiters();
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::StreamExt;

    use super::*;

    fn opts(prefetch: u16) -> ConsumeOptions {
        ConsumeOptions {
            prefetch,
            ..ConsumeOptions::default()
        }
    }

    async fn next(s: &mut DeliveryStream) -> Delivery {
        tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .expect("a delivery in time")
            .expect("stream open")
            .expect("no error")
    }

    async fn nothing(s: &mut DeliveryStream) {
        assert!(
            tokio::time::timeout(Duration::from_millis(50), s.next())
                .await
                .is_err(),
            "unexpected delivery"
        );
    }

    #[tokio::test]
    async fn empty_routing_key_goes_to_the_default_queue() {
        let b = MemoryBroker::with_default_queue("dq");
        assert_eq!(b.default_routing_key(), "dq");
        b.publish(&Signature::new("t")).await.unwrap();
        assert_eq!(b.ready_len("dq"), 1);
        assert_eq!(MemoryBroker::new().default_routing_key(), DEFAULT_QUEUE);
    }

    #[tokio::test]
    async fn dropped_delivery_goes_back_to_the_head_flagged_redelivered() {
        let b = MemoryBroker::new();
        let first = Signature::new("first");
        b.publish(&first).await.unwrap();
        b.publish(&Signature::new("second")).await.unwrap();
        let mut s = b.consume(DEFAULT_QUEUE, opts(1)).await.unwrap();
        let d = next(&mut s).await;
        assert!(!d.redelivered);
        drop(d);
        let d = next(&mut s).await;
        assert_eq!(d.signature().unwrap().uuid, first.uuid);
        assert!(d.redelivered);
        d.ack().await.unwrap();
    }

    #[tokio::test]
    async fn prefetch_limits_unacked_deliveries() {
        let b = MemoryBroker::new();
        for i in 0..3 {
            b.publish(&Signature::new(format!("t{i}"))).await.unwrap();
        }
        let mut s = b.consume(DEFAULT_QUEUE, opts(2)).await.unwrap();
        let d1 = next(&mut s).await;
        let d2 = next(&mut s).await;
        nothing(&mut s).await;
        assert_eq!(b.unacked_len(), 2);
        d1.ack().await.unwrap();
        let d3 = next(&mut s).await;
        assert_eq!(d3.signature().unwrap().name, "t2");
        d2.ack().await.unwrap();
        d3.ack().await.unwrap();
        assert_eq!(b.unacked_len(), 0);
    }

    #[tokio::test]
    async fn dropping_the_stream_returns_unacked_deliveries_in_order() {
        let b = MemoryBroker::new();
        let sigs: Vec<Signature> = (0..3).map(|i| Signature::new(format!("t{i}"))).collect();
        for s in &sigs {
            b.publish(s).await.unwrap();
        }
        let mut s = b.consume(DEFAULT_QUEUE, opts(0)).await.unwrap();
        let held: Vec<Delivery> = vec![next(&mut s).await, next(&mut s).await];
        drop(s);
        assert_eq!(b.ready_len(DEFAULT_QUEUE), 3);
        for d in held {
            assert!(matches!(d.ack().await, Err(Error::Closed(_))));
        }
        let mut s = b.consume(DEFAULT_QUEUE, opts(0)).await.unwrap();
        for (i, sig) in sigs.iter().enumerate() {
            let d = next(&mut s).await;
            assert_eq!(d.signature().unwrap().uuid, sig.uuid);
            assert_eq!(d.redelivered, i < 2);
            d.ack().await.unwrap();
        }
    }

    #[tokio::test]
    async fn higher_priority_goes_first_fifo_within_a_priority() {
        let b = MemoryBroker::new();
        for (name, p) in [("a", 0), ("b", 5), ("c", 0), ("d", 5), ("e", 9)] {
            b.publish(&Signature::new(name).priority(p)).await.unwrap();
        }
        let names: Vec<String> = b
            .pending_tasks(DEFAULT_QUEUE)
            .await
            .unwrap()
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(names, ["e", "b", "d", "a", "c"]);
    }

    #[tokio::test]
    async fn close_ends_streams_and_refuses_publish() {
        let b = MemoryBroker::new();
        let mut s = b.consume(DEFAULT_QUEUE, opts(1)).await.unwrap();
        let waiter = tokio::spawn(async move { s.next().await.is_none() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        b.close().await.unwrap();
        assert!(waiter.await.unwrap(), "the stream must end on close");
        assert!(matches!(
            b.publish(&Signature::new("t")).await,
            Err(Error::Closed(_))
        ));
        assert!(b.consume(DEFAULT_QUEUE, opts(1)).await.is_err());
    }

    #[tokio::test]
    async fn dead_letter_keeps_body_and_reason() {
        let b = MemoryBroker::new();
        b.inject_raw("q", b"nope").unwrap();
        let mut s = b.consume("q", opts(1)).await.unwrap();
        let d = next(&mut s).await;
        assert!(matches!(d.payload, Payload::Malformed { .. }));
        d.dead_letter("bad").await.unwrap();
        assert_eq!(
            b.dead_letters("q"),
            vec![DeadLetter {
                body: b"nope".to_vec(),
                reason: "bad".to_owned()
            }]
        );
        nothing(&mut s).await;
    }
}
