//! `RedisBroker`: Go Machinery's queue layout with per-consumer processing lists and leases.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use machinery_core::{
    Broker, BrokerCapabilities, ConsumeOptions, DeadLetter, DeliveryStream, Error, Result,
    Signature,
};
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

mod consumer;
mod dead_letter;
mod delayed;

use crate::client::{Conn, Connector, retry_once};
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
    /// Opens the consumers' blocking connections.
    connector: Connector,
    conn: Conn,
    /// A Redis Cluster: keys of a queue carry its hash tag, the delayed mover works in steps.
    cluster: bool,
    /// Replicas each publish waits for (`WAIT`), 0 = none.
    wait_replicas: u32,
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
    /// On a single node: `<queue>.consumers`, `<queue>.processing.<id>`, `<queue>.dead`. On a
    /// Redis Cluster the same with the queue's hash tag (`{<queue>}.consumers`, ...), so that
    /// every key a script touches is in the queue's slot; the queue keeps Go's name.
    fn new(queue: &str, cluster: bool) -> Result<Self> {
        let base = if cluster {
            slot_prefix(queue)?
        } else {
            queue.to_owned()
        };
        Ok(QueueKeys {
            queue: queue.to_owned(),
            registry: format!("{base}.consumers"),
            processing_prefix: format!("{base}.processing."),
            dead: format!("{base}.dead"),
        })
    }
}

/// A prefix that hashes to the same Redis Cluster slot as the key `name`: `name` itself when
/// it has a hash tag already (`a{b}c`: keys that start with it hash `b` too), else `{name}`.
/// A name with a `}` but no hash tag cannot be wrapped; it is a configuration error.
fn slot_prefix(name: &str) -> Result<String> {
    if let Some(open) = name.find('{')
        && let Some(len) = name[open + 1..].find('}')
        && len > 0
    {
        return Ok(name.to_owned());
    }
    if name.contains('}') {
        return Err(Error::config(
            "default_queue",
            format!(
                "`{name}` has a `}}` but no hash tag: on a Redis Cluster its keys cannot share its slot"
            ),
        ));
    }
    Ok(format!("{{{name}}}"))
}

impl RedisBroker {
    /// Connect to the server named by `config.url`.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL or a queue name that cannot get a hash tag on a
    /// cluster; [`Error::Backend`] naming the server (password redacted) when it cannot be
    /// reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let target = config.target()?;
        let cluster = target.cluster;
        if cluster {
            slot_prefix(&config.default_queue)?;
            slot_prefix(&config.delayed_tasks_key).map_err(|_| {
                Error::config(
                    "redis.delayed_tasks_key",
                    "has a `}` but no hash tag: cannot be used on a Redis Cluster",
                )
            })?;
        }
        let connector = Connector::new(&config, &target)?;
        let conn = connector.shared(&config, &target).await?;
        let wait_replicas = config.wait_replicas(&target);
        Ok(RedisBroker {
            inner: Arc::new(Inner {
                config,
                target,
                connector,
                conn,
                cluster,
                wait_replicas,
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

    /// A result backend sharing this broker's connection and settings.
    pub fn backend(&self) -> RedisBackend {
        RedisBackend::from_parts(
            self.inner.conn.clone(),
            &self.inner.config,
            self.inner.target.display.clone(),
            crate::client::single_client(&self.inner.config, &self.inner.target).ok(),
        )
    }

    /// A periodic-task lock sharing this broker's connection.
    pub fn lock(&self) -> RedisLock {
        RedisLock::from_parts(self.inner.conn.clone(), self.inner.target.display.clone())
    }

    /// The dead-letter list of `queue` (`<queue>.dead`), oldest first: each message byte for
    /// byte with the reason it was set aside.
    ///
    /// # Errors
    /// When the server cannot be reached.
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        let key = QueueKeys::new(queue, self.inner.cluster)?.dead;
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
        delayed::move_due(&self.inner).await
    }

    fn queue_for<'a>(&'a self, sig: &'a Signature) -> &'a str {
        if sig.routing_key.is_empty() {
            &self.inner.config.default_queue
        } else {
            &sig.routing_key
        }
    }

    /// Publish and wait until `wait_replicas` replicas have the write (`WAIT`, in the same
    /// round trip). Fewer confirmations is an error: the message may still be delivered (at
    /// least once), but a failover could lose it.
    async fn publish_replicated(
        &self,
        body: &[u8],
        queue: &str,
        eta: Option<machinery_core::Timestamp>,
    ) -> Result<()> {
        let delayed_key = &self.inner.config.delayed_tasks_key;
        let target = if eta.is_some() { delayed_key } else { queue };
        let wanted = self.inner.wait_replicas;
        let timeout_ms = self.inner.config.wait_replicas_timeout().as_millis() as u64;
        let mut pipe = redis::pipe();
        match eta {
            Some(eta) => {
                let score = machinery_core::time::unix_nanos(&eta);
                pipe.zadd(delayed_key, body, score).ignore();
            }
            None => {
                pipe.rpush(queue, body).ignore();
            }
        }
        pipe.cmd("WAIT").arg(wanted).arg(timeout_ms);
        let mut conn = self.inner.conn.clone();
        let (acked,): (u32,) = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| error::map(format!("cannot publish to {target}"), e))?;
        if acked < wanted {
            return Err(Error::backend(
                DRIVER,
                format!(
                    "published to {target}, but only {acked} of {wanted} replica(s) confirmed it within {timeout_ms} ms (redis.wait_replicas): a failover now could lose it"
                ),
                true,
                std::io::Error::other("not replicated"),
            ));
        }
        Ok(())
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
        let target = if eta.is_some() { delayed_key } else { queue };
        if self.inner.wait_replicas > 0 {
            return self.publish_replicated(&body, queue, eta).await;
        }
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
        .map_err(|e| error::map(format!("cannot publish to {target}"), e))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_keys_share_the_queues_slot() {
        assert_eq!(slot_prefix("machinery_tasks").unwrap(), "{machinery_tasks}");
        assert_eq!(slot_prefix("a{b}c").unwrap(), "a{b}c");
        assert_eq!(slot_prefix("a{c").unwrap(), "{a{c}");
        assert!(slot_prefix("a{}c{").is_err());
        assert!(slot_prefix("a}b").is_err());
        assert!(slot_prefix("a{}b}").is_err());
        let k = QueueKeys::new("machinery_tasks", true).unwrap();
        assert_eq!(k.queue, "machinery_tasks");
        assert_eq!(k.registry, "{machinery_tasks}.consumers");
        assert_eq!(k.processing_prefix, "{machinery_tasks}.processing.");
        assert_eq!(k.dead, "{machinery_tasks}.dead");
        let k = QueueKeys::new("machinery_tasks", false).unwrap();
        assert_eq!(k.registry, "machinery_tasks.consumers");
        assert_eq!(k.processing_prefix, "machinery_tasks.processing.");
        assert_eq!(k.dead, "machinery_tasks.dead");
        assert_eq!(
            delayed::claims_key("delayed_tasks").unwrap(),
            "{delayed_tasks}.claimed"
        );
    }
}
