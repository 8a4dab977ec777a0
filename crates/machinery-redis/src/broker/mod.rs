//! `RedisBroker`: Go Machinery's queue layout with per-consumer processing lists and leases.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use machinery_core::{
    Broker, BrokerCapabilities, ConsumeOptions, DeadLetter, DeliveryStream, Error, Result,
    Signature,
};
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Client};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod consumer;
mod dead_letter;
mod delayed;

use crate::client::{self, retry_once};
use crate::config::{RedisConfig, Target};
use crate::error::{self, DRIVER};
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
        Ok(raw
            .iter()
            .map(|r| dead_letter::DeadLetterEntry::decode(r))
            .collect())
    }

    /// Move every due delayed task to its queue now (the consumers do this on their own every
    /// `delayed_tasks_poll_period`). Returns how many were moved.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn move_due_delayed_tasks(&self) -> Result<usize> {
        delayed::move_due(&self.inner.conn, &self.inner.config).await
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
        tokio::spawn(delayed::delayed_mover(weak, cancel));
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
        consumer::start(self, queue, options).await
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
