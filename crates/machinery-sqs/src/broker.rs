//! `SqsBroker`: Go Machinery's SQS layout (queue URL = prefix + `/` + routing key, body =
//! the signature JSON), with batched sends, deletes and visibility changes, long polling,
//! a visibility heartbeat, and ETAs of any length.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::timeout::TimeoutConfig;
use aws_sdk_sqs::config::{BehaviorVersion, Region};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry, Message,
    MessageAttributeValue, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use machinery_core::consumers::Consumers;
use machinery_core::{
    Acknowledger, Backoff, Broker, BrokerCapabilities, ConsumeOptions, DeadLetter, Delivery,
    DeliveryStream, Error, Nack, Payload, Result, Signature,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::config::{SQS_MAX_DELAY, SQS_MAX_VISIBILITY, SqsConfig};
use crate::error::{self, DRIVER};

/// Message attribute holding the reason of a dead-lettered message.
pub const DEAD_LETTER_REASON_ATTRIBUTE: &str = "machinery-dead-letter-reason";
/// Message attribute holding the queue a dead-lettered message came from.
pub const DEAD_LETTER_QUEUE_ATTRIBUTE: &str = "machinery-dead-letter-queue";

/// The largest body SQS accepts on any queue (the real limit is each queue's
/// `MaximumMessageSize`, read once per queue and checked before sending).
const SQS_MAX_MESSAGE_BYTES: usize = 1_048_576;
/// The most entries one batch request takes.
const BATCH_MAX: usize = 10;
/// A visibility change must stay under 12 hours from the receipt: keep a margin.
const HOLD_CAP: u32 = SQS_MAX_VISIBILITY - 60;

/// How many requests of each kind this broker made (the figure behind "requests per task").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SqsRequestCounts {
    /// `SendMessageBatch` and `SendMessage` calls.
    pub send: u64,
    /// `ReceiveMessage` calls.
    pub receive: u64,
    /// `ReceiveMessage` calls that returned nothing.
    pub receive_empty: u64,
    /// `DeleteMessageBatch` calls.
    pub delete: u64,
    /// `ChangeMessageVisibilityBatch` calls (requeue, hold until the ETA, heartbeat,
    /// give-back).
    pub change_visibility: u64,
    /// Everything else (queue attributes, create, purge).
    pub other: u64,
}

impl SqsRequestCounts {
    /// All requests.
    pub fn total(&self) -> u64 {
        self.send + self.receive + self.delete + self.change_visibility + self.other
    }
}

#[derive(Default)]
struct Counters {
    send: AtomicU64,
    receive: AtomicU64,
    receive_empty: AtomicU64,
    delete: AtomicU64,
    change_visibility: AtomicU64,
    other: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What the broker knows about one queue (read once).
#[derive(Debug)]
struct QueueInfo {
    name: String,
    url: String,
    fifo: bool,
    max_message_size: usize,
    /// The queue's own visibility timeout, seconds.
    visibility_timeout: u32,
    /// The redrive policy's dead-letter queue name, if any.
    redrive_target: Option<String>,
}

/// One entry for a batch request, with where its result goes.
struct Job {
    item: Item,
    done: oneshot::Sender<Result<()>>,
}

enum Item {
    Send {
        body: String,
        delay: Option<i32>,
        group_id: Option<String>,
        dedup_id: Option<String>,
    },
    Delete {
        receipt: String,
    },
    Visibility {
        receipt: String,
        seconds: i32,
    },
}

impl Item {
    fn size(&self) -> usize {
        match self {
            Item::Send { body, .. } => body.len(),
            _ => 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Send,
    Delete,
    Visibility,
}

/// The AWS SQS broker.
///
/// Cheap to share behind an `Arc`; every clone of the handle inside shares one SDK client,
/// the queue attribute cache and the batchers.
pub struct SqsBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqsBroker")
            .field("prefix", &self.inner.prefix)
            .field("default_queue", &self.inner.config.default_queue)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: SqsConfig,
    client: Client,
    prefix: String,
    queues: tokio::sync::Mutex<HashMap<String, Arc<QueueInfo>>>,
    batchers: Mutex<HashMap<(String, Kind), mpsc::UnboundedSender<Job>>>,
    consumers: Consumers,
    counters: Counters,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    closed: AtomicBool,
}

impl SqsBroker {
    /// Connect with the AWS SDK's default chain for credentials (and region, unless the
    /// prefix or the config names one). No request is made until the first publish or
    /// consume.
    ///
    /// # Errors
    /// [`Error::Config`] when the configuration is invalid.
    pub async fn connect(config: SqsConfig) -> Result<Self> {
        config.validate()?;
        let mut loader = aws_config::defaults(BehaviorVersion::latest());
        // A known region skips the SDK's region chain (which may ask IMDS).
        if let Some(region) = config.region.clone().or_else(|| config.region_from_url()) {
            loader = loader.region(Region::new(region));
        }
        let sdk = loader.load().await;
        Self::connect_with(config, &sdk)
    }

    /// Connect with an SDK configuration of your own (credentials provider, retry policy,
    /// HTTP client); the config's endpoint and region still win when set.
    ///
    /// # Errors
    /// [`Error::Config`] when the configuration is invalid.
    pub fn connect_with(config: SqsConfig, sdk: &aws_config::SdkConfig) -> Result<Self> {
        config.validate()?;
        let mut builder = aws_sdk_sqs::config::Builder::from(sdk);
        if let Some(endpoint) = config.effective_endpoint() {
            builder = builder.endpoint_url(endpoint);
        }
        let region = config
            .region
            .clone()
            .or_else(|| config.region_from_url())
            .or_else(|| sdk.region().map(|r| r.to_string()))
            .unwrap_or_else(|| "us-east-1".to_owned());
        builder = builder.region(Region::new(region));
        // A long poll lasts up to `wait_time_seconds`: each attempt may take that plus a
        // margin, and no call waits forever on a dead connection.
        builder = builder.timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5))
                .operation_attempt_timeout(Duration::from_secs(
                    config.wait_time_seconds as u64 + 10,
                ))
                .build(),
        );
        let client = Client::from_conf(builder.build());
        let prefix = config.prefix().to_owned();
        info!(prefix = %prefix, default_queue = %config.default_queue, "sqs broker ready");
        Ok(SqsBroker {
            inner: Arc::new(Inner {
                config,
                client,
                prefix,
                queues: tokio::sync::Mutex::new(HashMap::new()),
                batchers: Mutex::new(HashMap::new()),
                consumers: Consumers::default(),
                counters: Counters::default(),
                shutdown: CancellationToken::new(),
                tasks: TaskTracker::new(),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &SqsConfig {
        &self.inner.config
    }

    /// The SDK client (for tooling and tests: create queues, read attributes).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The URL of queue `name`: the prefix + `/` + `name`, as Go builds it.
    pub fn queue_url(&self, name: &str) -> String {
        format!("{}/{}", self.inner.prefix, name)
    }

    /// Requests made so far, by kind.
    pub fn request_counts(&self) -> SqsRequestCounts {
        let c = &self.inner.counters;
        SqsRequestCounts {
            send: c.send.load(Ordering::Relaxed),
            receive: c.receive.load(Ordering::Relaxed),
            receive_empty: c.receive_empty.load(Ordering::Relaxed),
            delete: c.delete.load(Ordering::Relaxed),
            change_visibility: c.change_visibility.load(Ordering::Relaxed),
            other: c.other.load(Ordering::Relaxed),
        }
    }

    /// Create queue `name` if it does not exist (FIFO when it ends in `.fifo`).
    ///
    /// # Errors
    /// When SQS refuses or cannot be reached.
    pub async fn ensure_queue(&self, name: &str) -> Result<()> {
        self.inner.queue_info(name, true).await.map(|_| ())
    }

    /// Send `body` to queue `name` as it is, as a foreign producer would (tests, tooling).
    /// FIFO queues get a random group and deduplication id.
    ///
    /// # Errors
    /// When SQS refuses or cannot be reached.
    pub async fn send_raw(&self, name: &str, body: &str) -> Result<()> {
        let info = self.inner.queue_info(name, false).await?;
        let (group_id, dedup_id) = if info.fifo {
            (
                Some("machinery-raw".to_owned()),
                Some(uuid::Uuid::new_v4().to_string()),
            )
        } else {
            (None, None)
        };
        self.inner
            .submit(
                &info.url,
                Kind::Send,
                Item::Send {
                    body: body.to_owned(),
                    delay: None,
                    group_id,
                    dedup_id,
                },
            )
            .await
    }

    /// The messages dead-lettered from queue `name` (in `<name>-dead` or its redrive target),
    /// read without removing them (each read hides them for a moment; order is SQS's).
    ///
    /// # Errors
    /// When SQS cannot be reached.
    pub async fn dead_letters(&self, name: &str) -> Result<Vec<DeadLetter>> {
        let info = self.inner.queue_info(name, false).await?;
        let dead = self.inner.dead_queue(&info).await?;
        let mut seen = HashSet::new();
        let mut out = Vec::new();
        for _ in 0..5 {
            bump(&self.inner.counters.receive);
            let got = self
                .inner
                .client
                .receive_message()
                .queue_url(&dead.url)
                .max_number_of_messages(10)
                .visibility_timeout(0)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| error::sdk(format!("read dead letters of `{name}`"), e))?;
            let mut new = 0;
            for m in got.messages() {
                let id = m.message_id().unwrap_or_default().to_owned();
                if !seen.insert(id) {
                    continue;
                }
                new += 1;
                let reason = m
                    .message_attributes()
                    .and_then(|a| a.get(DEAD_LETTER_REASON_ATTRIBUTE))
                    .and_then(|v| v.string_value())
                    .unwrap_or_default()
                    .to_owned();
                out.push(DeadLetter {
                    body: m.body().unwrap_or_default().as_bytes().to_vec(),
                    reason,
                });
            }
            if new == 0 {
                break;
            }
        }
        Ok(out)
    }
}

impl Inner {
    /// The queue's attributes, read once; a missing queue is created when `create` or
    /// `create_queues` says so.
    async fn queue_info(self: &Arc<Self>, name: &str, create: bool) -> Result<Arc<QueueInfo>> {
        let mut cache = self.queues.lock().await;
        if let Some(info) = cache.get(name) {
            return Ok(Arc::clone(info));
        }
        let url = format!("{}/{}", self.prefix, name);
        let info = match self.read_attributes(name, &url).await {
            Ok(info) => info,
            Err(e) if error::is_missing_queue(&e) => {
                if !(create || self.config.create_queues) {
                    return Err(error::other(
                        format!(
                            "queue `{name}` does not exist at {url} (create it, or set \
                             sqs.create_queues)"
                        ),
                        false,
                    ));
                }
                self.create_queue(name).await?;
                self.read_attributes(name, &url)
                    .await
                    .map_err(|e| error::sdk(format!("read the attributes of queue `{name}`"), e))?
            }
            Err(e) => {
                return Err(error::sdk(
                    format!("read the attributes of queue `{name}`"),
                    e,
                ));
            }
        };
        let info = Arc::new(info);
        cache.insert(name.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    async fn read_attributes(
        &self,
        name: &str,
        url: &str,
    ) -> std::result::Result<
        QueueInfo,
        aws_sdk_sqs::error::SdkError<
            aws_sdk_sqs::operation::get_queue_attributes::GetQueueAttributesError,
            aws_sdk_sqs::config::http::HttpResponse,
        >,
    > {
        bump(&self.counters.other);
        let out = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::MaximumMessageSize)
            .attribute_names(QueueAttributeName::VisibilityTimeout)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await?;
        let attrs = out.attributes();
        let get = |k: QueueAttributeName| attrs.and_then(|a| a.get(&k)).map(String::as_str);
        let max_message_size = get(QueueAttributeName::MaximumMessageSize)
            .and_then(|v| v.parse().ok())
            .unwrap_or(262_144);
        let visibility_timeout = get(QueueAttributeName::VisibilityTimeout)
            .and_then(|v| v.parse().ok())
            .unwrap_or(30);
        let redrive_target = get(QueueAttributeName::RedrivePolicy)
            .and_then(|p| serde_json::from_str::<serde_json::Value>(p).ok())
            .and_then(|p| {
                p.get("deadLetterTargetArn")
                    .and_then(|a| a.as_str())
                    .and_then(|arn| arn.rsplit(':').next())
                    .map(str::to_owned)
            });
        debug!(
            queue = name,
            max_message_size,
            visibility_timeout,
            ?redrive_target,
            "queue attributes"
        );
        Ok(QueueInfo {
            name: name.to_owned(),
            url: url.to_owned(),
            fifo: name.ends_with(".fifo"),
            max_message_size,
            visibility_timeout,
            redrive_target,
        })
    }

    async fn create_queue(&self, name: &str) -> Result<()> {
        bump(&self.counters.other);
        let mut req = self.client.create_queue().queue_name(name);
        if name.ends_with(".fifo") {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        req.send()
            .await
            .map_err(|e| error::sdk(format!("create queue `{name}`"), e))?;
        info!(queue = name, "created the SQS queue");
        Ok(())
    }

    /// The dead-letter queue of `info`: its redrive target, else `<queue>-dead`
    /// (`<stem>-dead.fifo` for a FIFO queue), created when missing.
    async fn dead_queue(self: &Arc<Self>, info: &QueueInfo) -> Result<Arc<QueueInfo>> {
        let name = match &info.redrive_target {
            Some(t) => t.clone(),
            None => dead_queue_name(&info.name),
        };
        self.queue_info(&name, true).await
    }

    /// Queue one entry for a batch request and wait for its own result.
    async fn submit(self: &Arc<Self>, url: &str, kind: Kind, item: Item) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.batcher(url, kind)?
            .send(Job { item, done: tx })
            .map_err(|_| Error::Closed("sqs broker"))?;
        rx.await.map_err(|_| Error::Closed("sqs broker"))?
    }

    /// Set the visibility timeout of the messages `receipts` (in the queue at `url`) to
    /// `seconds` from now (0: visible at once), through the batched
    /// `ChangeMessageVisibilityBatch`. The changes are queued when this is called; the
    /// future resolves once SQS answered for all of them, with the first error. Dropping it
    /// lets them go ahead unobserved (heartbeats, give-backs from `Drop`): a failure is then
    /// logged, and the message returns when its current visibility timeout ends.
    fn change_visibility(
        self: &Arc<Self>,
        url: &str,
        receipts: impl IntoIterator<Item = String>,
        seconds: i32,
    ) -> impl Future<Output = Result<()>> + Send + 'static {
        let queued: Result<Vec<oneshot::Receiver<Result<()>>>> =
            self.batcher(url, Kind::Visibility).and_then(|batcher| {
                receipts
                    .into_iter()
                    .map(|receipt| {
                        let (tx, rx) = oneshot::channel();
                        batcher
                            .send(Job {
                                item: Item::Visibility { receipt, seconds },
                                done: tx,
                            })
                            .map_err(|_| Error::Closed("sqs broker"))?;
                        Ok(rx)
                    })
                    .collect()
            });
        async move {
            let mut first_error = None;
            for rx in queued? {
                let r = rx.await.unwrap_or(Err(Error::Closed("sqs broker")));
                if let Err(e) = r {
                    first_error.get_or_insert(e);
                }
            }
            first_error.map_or(Ok(()), Err)
        }
    }

    fn batcher(self: &Arc<Self>, url: &str, kind: Kind) -> Result<mpsc::UnboundedSender<Job>> {
        let mut map = self.batchers.lock().expect("batchers poisoned");
        let key = (url.to_owned(), kind);
        if let Some(tx) = map.get(&key)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("sqs broker"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::clone(self);
        let url = url.to_owned();
        self.tasks
            .spawn(async move { this.batch_loop(url, kind, rx).await });
        map.insert(key, tx.clone());
        Ok(tx)
    }

    /// Collect entries for up to the linger time (or 10 entries, or the size limit), send
    /// them as one request, with at most `batch_concurrency` requests in flight.
    async fn batch_loop(
        self: Arc<Self>,
        url: String,
        kind: Kind,
        mut rx: mpsc::UnboundedReceiver<Job>,
    ) {
        let linger = match kind {
            Kind::Send => self.config.send_linger,
            _ => self.config.batch_linger,
        };
        let size_limit = self.size_limit_of_url(&url).await;
        let in_flight = Arc::new(Semaphore::new(self.config.batch_concurrency.max(1)));
        let mut carry: Option<Job> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv().await {
                    Some(j) => j,
                    None => break,
                },
            };
            let mut size = first.item.size();
            let mut batch = vec![first];
            let deadline = Instant::now() + linger;
            while batch.len() < BATCH_MAX {
                let next = match rx.try_recv() {
                    Ok(j) => Some(j),
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                    Err(mpsc::error::TryRecvError::Empty) => {
                        tokio::time::timeout_at(deadline, rx.recv())
                            .await
                            .ok()
                            .flatten()
                    }
                };
                let Some(j) = next else { break };
                if size + j.item.size() > size_limit {
                    carry = Some(j);
                    break;
                }
                size += j.item.size();
                batch.push(j);
            }
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .expect("never closed");
            let this = Arc::clone(&self);
            let url = url.clone();
            self.tasks.spawn(async move {
                this.flush(&url, kind, batch).await;
                drop(permit);
            });
        }
    }

    async fn size_limit_of_url(&self, url: &str) -> usize {
        let cache = self.queues.lock().await;
        cache
            .values()
            .find(|q| q.url == url)
            .map_or(262_144, |q| q.max_message_size)
    }

    /// One batch request; every entry gets its own result.
    async fn flush(&self, url: &str, kind: Kind, batch: Vec<Job>) {
        let results: Vec<Result<()>> = match kind {
            Kind::Send => self.flush_send(url, &batch).await,
            Kind::Delete => self.flush_delete(url, &batch).await,
            Kind::Visibility => self.flush_visibility(url, &batch).await,
        };
        for (job, result) in batch.into_iter().zip(results) {
            // Nobody waits for a heartbeat or a give-back: say when one failed.
            if let Err(Err(e)) = job.done.send(result) {
                warn!(error = %e, "sqs: a background request failed; a message whose visibility was to change returns when its visibility timeout ends");
            }
        }
    }

    async fn flush_send(&self, url: &str, batch: &[Job]) -> Vec<Result<()>> {
        let mut entries = Vec::with_capacity(batch.len());
        for (i, job) in batch.iter().enumerate() {
            let Item::Send {
                body,
                delay,
                group_id,
                dedup_id,
            } = &job.item
            else {
                unreachable!("send batcher got another kind")
            };
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(body)
                .set_delay_seconds(*delay)
                .set_message_group_id(group_id.clone())
                .set_message_deduplication_id(dedup_id.clone())
                .build()
                .expect("id and body are set");
            entries.push(entry);
        }
        bump(&self.counters.send);
        let out = self
            .client
            .send_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match out {
            Ok(out) => batch_results(
                batch.len(),
                out.failed()
                    .iter()
                    .map(|f| (f.id(), f.code(), f.message(), f.sender_fault())),
                "send a message",
            ),
            Err(e) => all_failed(
                batch.len(),
                error::sdk(format!("send messages to {url}"), e),
            ),
        }
    }

    async fn flush_delete(&self, url: &str, batch: &[Job]) -> Vec<Result<()>> {
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let Item::Delete { receipt } = &job.item else {
                    unreachable!("delete batcher got another kind")
                };
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        bump(&self.counters.delete);
        let out = self
            .client
            .delete_message_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match out {
            Ok(out) => batch_results(
                batch.len(),
                out.failed()
                    .iter()
                    // The message is gone already: it was delivered again (its visibility
                    // lapsed) and that copy was deleted first. The goal of the ack is met.
                    .filter(|f| {
                        let gone = f.code() == "ReceiptHandleIsInvalid";
                        if gone {
                            warn!(queue_url = url, "sqs: acked message already deleted through a later delivery (it ran twice)");
                        }
                        !gone
                    })
                    .map(|f| (f.id(), f.code(), f.message(), f.sender_fault())),
                "delete a message",
            ),
            Err(e) => all_failed(batch.len(), error::sdk(format!("delete messages from {url}"), e)),
        }
    }

    async fn flush_visibility(&self, url: &str, batch: &[Job]) -> Vec<Result<()>> {
        let entries = batch
            .iter()
            .enumerate()
            .map(|(i, job)| {
                let Item::Visibility { receipt, seconds } = &job.item else {
                    unreachable!("visibility batcher got another kind")
                };
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(*seconds)
                    .build()
                    .expect("id and receipt are set")
            })
            .collect();
        bump(&self.counters.change_visibility);
        let out = self
            .client
            .change_message_visibility_batch()
            .queue_url(url)
            .set_entries(Some(entries))
            .send()
            .await;
        match out {
            Ok(out) => batch_results(
                batch.len(),
                out.failed()
                    .iter()
                    .map(|f| (f.id(), f.code(), f.message(), f.sender_fault())),
                "change a message's visibility",
            ),
            Err(e) => all_failed(
                batch.len(),
                error::sdk(format!("change message visibility in {url}"), e),
            ),
        }
    }

    /// Send `body` to the dead-letter queue with the reason, then delete the original.
    async fn dead_letter(
        self: &Arc<Self>,
        info: &QueueInfo,
        receipt: &str,
        body: &str,
        group_id: Option<String>,
        reason: &str,
    ) -> Result<()> {
        let dead = self.dead_queue(info).await?;
        let attr = |v: &str| {
            MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .expect("data type is set")
        };
        let reason_value = if reason.is_empty() {
            "(no reason)"
        } else {
            reason
        };
        let mut req = self
            .client
            .send_message()
            .queue_url(&dead.url)
            .message_body(body)
            .message_attributes(DEAD_LETTER_REASON_ATTRIBUTE, attr(reason_value))
            .message_attributes(DEAD_LETTER_QUEUE_ATTRIBUTE, attr(&info.name));
        if dead.fifo {
            req = req
                .message_group_id(group_id.unwrap_or_else(|| "machinery-dead".to_owned()))
                .message_deduplication_id(uuid::Uuid::new_v4().to_string());
        }
        bump(&self.counters.send);
        req.send()
            .await
            .map_err(|e| error::sdk(format!("send a dead letter to `{}`", dead.name), e))?;
        warn!(queue = %info.name, dead_letter_queue = %dead.name, reason, "message dead-lettered");
        self.submit(
            &info.url,
            Kind::Delete,
            Item::Delete {
                receipt: receipt.to_owned(),
            },
        )
        .await
    }

    async fn publish(self: &Arc<Self>, sig: &Signature) -> Result<()> {
        let name = if sig.routing_key.is_empty() {
            self.config.default_queue.as_str()
        } else {
            sig.routing_key.as_str()
        };
        let fifo = name.ends_with(".fifo");
        if fifo && sig.broker_message_group_id.is_empty() {
            return Err(Error::config(
                "BrokerMessageGroupId",
                format!(
                    "task {} goes to the FIFO queue `{name}`: set the signature's \
                     BrokerMessageGroupId (SQS needs a MessageGroupId)",
                    sig.uuid
                ),
            ));
        }
        let body = String::from_utf8(sig.to_json()?).map_err(|e| Error::decode("signature", e))?;
        if body.len() > SQS_MAX_MESSAGE_BYTES {
            return Err(too_large(body.len(), SQS_MAX_MESSAGE_BYTES));
        }
        let info = self.queue_info(name, false).await?;
        if body.len() > info.max_message_size {
            return Err(too_large(body.len(), info.max_message_size));
        }
        // Standard queues: DelaySeconds rounded up (never early), at most 900 s; the rest
        // is held on receipt. FIFO queues take no per-message delay: held on receipt.
        let delay = if fifo {
            None
        } else {
            sig.future_eta().and_then(|eta| {
                let ms = (eta - machinery_core::time::now())
                    .num_milliseconds()
                    .max(0) as u64;
                let secs = ms.div_ceil(1000);
                let cap = u64::from(self.config.max_delay_seconds.min(SQS_MAX_DELAY));
                let d = secs.min(cap);
                (d > 0).then_some(d as i32)
            })
        };
        let (group_id, dedup_id) = if fifo {
            (
                Some(sig.broker_message_group_id.clone()),
                Some(uuid::Uuid::new_v4().to_string()),
            )
        } else {
            (None, None)
        };
        self.submit(
            &info.url,
            Kind::Send,
            Item::Send {
                body,
                delay,
                group_id,
                dedup_id,
            },
        )
        .await
    }
}

fn too_large(size: usize, limit: usize) -> Error {
    Error::TooLarge {
        what: "SQS message body (the queue's MaximumMessageSize)",
        size,
        limit,
    }
}

/// `<queue>-dead`, or `<stem>-dead.fifo` for a FIFO queue.
pub(crate) fn dead_queue_name(queue: &str) -> String {
    match queue.strip_suffix(".fifo") {
        Some(stem) => format!("{stem}-dead.fifo"),
        None => format!("{queue}-dead"),
    }
}

/// Per-entry results of a batch answer whose failed entries are listed.
fn batch_results<'a>(
    n: usize,
    failed: impl Iterator<Item = (&'a str, &'a str, Option<&'a str>, bool)>,
    what: &str,
) -> Vec<Result<()>> {
    let mut out: Vec<Result<()>> = (0..n).map(|_| Ok(())).collect();
    for (id, code, message, sender_fault) in failed {
        if let Some(slot) = id.parse::<usize>().ok().and_then(|i| out.get_mut(i)) {
            *slot = Err(error::batch_entry(what, code, message, sender_fault));
        }
    }
    out
}

/// The same failure for every entry of a request that failed as a whole.
fn all_failed(n: usize, e: Error) -> Vec<Result<()>> {
    let text = e.to_string();
    let temporary = e.is_temporary();
    let mut out = vec![Err(e)];
    out.extend((1..n).map(|_| Err(error::other(text.clone(), temporary))));
    out
}

/// Whole seconds, rounded up, within SQS's visibility range.
fn visibility_secs(d: Duration, cap: u32) -> i32 {
    let ms = d.as_millis();
    let secs = ms.div_ceil(1000);
    secs.min(u128::from(cap.min(HOLD_CAP))) as i32
}

#[async_trait]
impl Broker for SqsBroker {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> BrokerCapabilities {
        BrokerCapabilities {
            delayed_delivery: true,
            pending_tasks: false,
            delayed_tasks: false,
            priority: false,
            dead_letter: true,
            fifo: false,
            redelivers_unacked: true,
            max_message_bytes: Some(SQS_MAX_MESSAGE_BYTES),
        }
    }

    fn default_routing_key(&self) -> String {
        self.inner.config.default_queue.clone()
    }

    async fn publish(&self, sig: &Signature) -> Result<()> {
        self.inner.publish(sig).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<DeliveryStream> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("sqs broker"));
        }
        let info = self.inner.queue_info(queue, false).await?;
        let prefetch = usize::from(options.prefetch.max(1));
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer = self
            .inner
            .consumers
            .register(&options.consumer_tag, &self.inner.shutdown);
        let held = Arc::new(Held::default());
        let visibility = self
            .inner
            .config
            .visibility_timeout
            .map_or(info.visibility_timeout, |v| v as u32);
        if self.inner.config.visibility_heartbeat && visibility >= 2 {
            let inner = Arc::clone(&self.inner);
            let (info, held, stop) = (Arc::clone(&info), Arc::clone(&held), consumer.stop.clone());
            self.inner
                .tasks
                .spawn(async move { heartbeat(inner, info, held, stop, visibility).await });
        }
        let receiver = Receiver {
            inner: Arc::clone(&self.inner),
            info,
            prefetch: Arc::new(Semaphore::new(prefetch)),
            tx,
            held,
            stop: consumer.stop.clone(),
        };
        let finished = consumer.clone();
        self.inner.tasks.spawn(async move {
            receiver.run().await;
            finished.finished();
        });
        Ok(consumer.stream(rx))
    }

    async fn pending_tasks(&self, _queue: &str) -> Result<Vec<Signature>> {
        Err(Error::Unsupported {
            driver: DRIVER,
            operation: "pending_tasks",
        })
    }

    async fn delayed_tasks(&self) -> Result<Vec<Signature>> {
        Err(Error::Unsupported {
            driver: DRIVER,
            operation: "delayed_tasks",
        })
    }

    async fn stop_consuming(&self, consumer_tag: &str) -> Result<()> {
        self.inner.consumers.stop(consumer_tag).await;
        Ok(())
    }

    async fn purge_queue(&self, queue: &str) -> Result<()> {
        let info = self.inner.queue_info(queue, false).await?;
        bump(&self.inner.counters.other);
        match self
            .inner
            .client
            .purge_queue()
            .queue_url(&info.url)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if error::code(&e) == Some("AWS.SimpleQueueService.PurgeQueueInProgress") => {
                // One purge per minute: drain what is visible instead.
                self.drain(&info).await
            }
            Err(e) => Err(error::sdk(format!("purge queue `{queue}`"), e)),
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        // Stop the batchers once what they hold is sent.
        self.inner
            .batchers
            .lock()
            .expect("batchers poisoned")
            .clear();
        self.inner.tasks.close();
        Ok(())
    }
}

impl SqsBroker {
    async fn drain(&self, info: &QueueInfo) -> Result<()> {
        loop {
            bump(&self.inner.counters.receive);
            let got = self
                .inner
                .client
                .receive_message()
                .queue_url(&info.url)
                .max_number_of_messages(10)
                .send()
                .await
                .map_err(|e| error::sdk(format!("drain queue `{}`", info.name), e))?;
            if got.messages().is_empty() {
                return Ok(());
            }
            for m in got.messages() {
                if let Some(r) = m.receipt_handle() {
                    self.inner
                        .submit(
                            &info.url,
                            Kind::Delete,
                            Item::Delete {
                                receipt: r.to_owned(),
                            },
                        )
                        .await?;
                }
            }
        }
    }
}

/// Receipt handles of the messages a consumer holds (received, not settled).
#[derive(Default)]
struct Held {
    receipts: Mutex<HashSet<String>>,
}

impl Held {
    fn insert(&self, r: &str) {
        self.receipts
            .lock()
            .expect("held poisoned")
            .insert(r.to_owned());
    }
    fn remove(&self, r: &str) -> bool {
        self.receipts.lock().expect("held poisoned").remove(r)
    }
    fn snapshot(&self) -> Vec<String> {
        self.receipts
            .lock()
            .expect("held poisoned")
            .iter()
            .cloned()
            .collect()
    }
    fn is_empty(&self) -> bool {
        self.receipts.lock().expect("held poisoned").is_empty()
    }
}

/// Every third of the visibility timeout, extend the visibility of what the consumer holds.
async fn heartbeat(
    inner: Arc<Inner>,
    info: Arc<QueueInfo>,
    held: Arc<Held>,
    stop: CancellationToken,
    visibility: u32,
) {
    // A third of the timeout (Go: half), so that one slow request does not let it lapse.
    let period = Duration::from_millis(u64::from(visibility) * 1000 / 3);
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tick.tick().await;
        if stop.is_cancelled() && held.is_empty() {
            break;
        }
        if inner.tasks.is_closed() && inner.shutdown.is_cancelled() && held.is_empty() {
            break;
        }
        let receipts = held.snapshot();
        if receipts.is_empty() {
            continue;
        }
        debug!(queue = %info.name, messages = receipts.len(), visibility, "visibility heartbeat");
        drop(inner.change_visibility(&info.url, receipts, visibility as i32));
    }
}

/// The receive loop of one consumer.
struct Receiver {
    inner: Arc<Inner>,
    info: Arc<QueueInfo>,
    prefetch: Arc<Semaphore>,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    held: Arc<Held>,
    stop: CancellationToken,
}

impl Receiver {
    async fn run(self) {
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            self.inner.config.reconnect_max_delay,
        );
        loop {
            let first = tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                p = Arc::clone(&self.prefetch).acquire_owned() => p.expect("never closed"),
            };
            let mut permits = vec![first];
            while permits.len() < BATCH_MAX {
                match Arc::clone(&self.prefetch).try_acquire_owned() {
                    Ok(p) => permits.push(p),
                    Err(_) => break,
                }
            }
            // A receive in flight is never abandoned: the server would still hand out what
            // it finds. It ends within the wait time, and what it brings after a stop goes
            // back at once.
            match self.receive(permits.len()).await {
                Ok(messages) => {
                    backoff.reset();
                    let stopping = self.stop.is_cancelled() || self.tx.is_closed();
                    for m in messages {
                        if stopping {
                            self.give_back(&m);
                            continue;
                        }
                        let permit = permits.pop().expect("no more messages than permits");
                        self.handle(m, permit).await;
                    }
                    if stopping {
                        break;
                    }
                }
                Err(e) => {
                    let pause = backoff.next_delay();
                    warn!(queue = %self.info.name, error = %e, retry_in = ?pause, "sqs receive failed");
                    if self.tx.send(Err(e)).is_err() {
                        break;
                    }
                    tokio::select! {
                        _ = self.stop.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
        debug!(queue = %self.info.name, "sqs consumer stopped");
    }

    async fn receive(&self, n: usize) -> Result<Vec<Message>> {
        bump(&self.inner.counters.receive);
        let out = self
            .inner
            .client
            .receive_message()
            .queue_url(&self.info.url)
            .max_number_of_messages(n as i32)
            .wait_time_seconds(self.inner.config.wait_time_seconds)
            .set_visibility_timeout(self.inner.config.visibility_timeout)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .message_system_attribute_names(MessageSystemAttributeName::MessageGroupId)
            .message_attribute_names("All")
            .send()
            .await
            .map_err(|e| error::sdk(format!("receive from queue `{}`", self.info.name), e))?;
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            bump(&self.inner.counters.receive_empty);
        }
        Ok(messages)
    }

    fn give_back(&self, m: &Message) {
        let receipts = m.receipt_handle().map(str::to_owned);
        drop(self.inner.change_visibility(&self.info.url, receipts, 0));
    }

    async fn handle(&self, m: Message, permit: OwnedSemaphorePermit) {
        let Some(receipt) = m.receipt_handle().map(str::to_owned) else {
            warn!(queue = %self.info.name, "sqs message without a receipt handle ignored");
            return;
        };
        let body = m.body().unwrap_or_default().to_owned();
        let attrs = m.attributes();
        let receive_count: u64 = attrs
            .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
            .and_then(|v| v.parse().ok())
            .unwrap_or(1);
        let group_id = attrs
            .and_then(|a| a.get(&MessageSystemAttributeName::MessageGroupId))
            .cloned();
        let mut payload = Payload::decode(body.as_bytes());
        let mut keep_failed = false;
        if let Payload::Task(sig) = &mut payload {
            if let Some(eta) = sig.future_eta() {
                // Not due: keep it invisible until its ETA (held again when it shows up
                // early because of SQS's 12-hour cap), never hand it out early.
                let remaining = (eta - machinery_core::time::now())
                    .to_std()
                    .unwrap_or_default();
                let secs = visibility_secs(remaining, self.inner.config.max_hold_seconds).max(1);
                debug!(uuid = %sig.uuid, hold_secs = secs, "sqs message not due yet; held invisible");
                if let Err(e) = self
                    .inner
                    .change_visibility(&self.info.url, [receipt], secs)
                    .await
                {
                    warn!(uuid = %sig.uuid, error = %e, "cannot hold a message until its ETA; it shows up again after the visibility timeout");
                }
                drop(permit);
                return;
            }
            // Go fills SQSReceiptHandle on the consumer side.
            sig.sqs_receipt_handle = receipt.clone();
            keep_failed = sig.stop_task_deletion_on_error;
        }
        self.held.insert(&receipt);
        let acker = SqsAcker {
            inner: Arc::clone(&self.inner),
            info: Arc::clone(&self.info),
            receipt,
            body,
            group_id,
            keep_failed,
            held: Arc::clone(&self.held),
            settled: AtomicBool::new(false),
            permit: Mutex::new(Some(permit)),
        };
        let delivery = Delivery::new(payload, receive_count > 1, Box::new(acker));
        // A closed channel drops the delivery, which gives the message back.
        let _ = self.tx.send(Ok(delivery));
    }
}

/// The driver's side of one delivery: delete, change visibility, or dead-letter it.
struct SqsAcker {
    inner: Arc<Inner>,
    info: Arc<QueueInfo>,
    receipt: String,
    body: String,
    group_id: Option<String>,
    /// The signature's `StopTaskDeletionOnError`: a task that failed for good leaves its
    /// message to the queue's redrive policy.
    keep_failed: bool,
    held: Arc<Held>,
    settled: AtomicBool,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl SqsAcker {
    fn settle(&self) {
        self.settled.store(true, Ordering::Release);
        self.held.remove(&self.receipt);
        self.permit.lock().expect("permit poisoned").take();
    }
}

#[async_trait]
impl Acknowledger for SqsAcker {
    async fn ack(&self) -> Result<()> {
        // Settled before the request: no heartbeat for a message being deleted (it would race
        // the delete and fail with ReceiptHandleIsInvalid), and its prefetch slot goes to the
        // next message at once instead of after the batched delete. Should the delete fail,
        // the message returns after its visibility timeout.
        self.settle();
        self.inner
            .submit(
                &self.info.url,
                Kind::Delete,
                Item::Delete {
                    receipt: self.receipt.clone(),
                },
            )
            .await
    }

    async fn ack_failed(&self) -> Result<()> {
        if !self.keep_failed {
            return self.ack().await;
        }
        // Go's StopTaskDeletionOnError: not deleted, no longer extended. It shows up again
        // when its visibility timeout ends, and after `maxReceiveCount` receives the queue's
        // redrive policy moves it to its dead-letter queue.
        match &self.info.redrive_target {
            Some(dlq) => {
                info!(queue = %self.info.name, dead_letter_queue = %dlq, "task failed with StopTaskDeletionOnError: its message is left to the queue's redrive policy");
            }
            None => {
                warn!(queue = %self.info.name, "task failed with StopTaskDeletionOnError but the queue has no redrive policy: its message runs again after the visibility timeout");
            }
        }
        self.settle();
        Ok(())
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        let r = match nack {
            Nack::Requeue { delay } => {
                // Settled first as an ack is (the heartbeat would undo the delay).
                self.settle();
                let seconds = delay.map_or(0, |d| visibility_secs(d, SQS_MAX_VISIBILITY));
                self.inner
                    .change_visibility(&self.info.url, [self.receipt.clone()], seconds)
                    .await
            }
            Nack::DeadLetter { reason } => {
                self.inner
                    .dead_letter(
                        &self.info,
                        &self.receipt,
                        &self.body,
                        self.group_id.clone(),
                        &reason,
                    )
                    .await
            }
        };
        self.settle();
        r
    }
}

impl Drop for SqsAcker {
    fn drop(&mut self) {
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        // Neither acked nor nacked: give it back now rather than after the visibility
        // timeout (a killed process cannot, and SQS brings it back after the timeout).
        self.held.remove(&self.receipt);
        drop(
            self.inner
                .change_visibility(&self.info.url, [std::mem::take(&mut self.receipt)], 0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_queue_names() {
        assert_eq!(dead_queue_name("machinery_tasks"), "machinery_tasks-dead");
        assert_eq!(dead_queue_name("jobs.fifo"), "jobs-dead.fifo");
    }

    #[test]
    fn visibility_rounds_up_and_caps() {
        assert_eq!(visibility_secs(Duration::from_millis(1), 900), 1);
        assert_eq!(visibility_secs(Duration::from_millis(1500), 900), 2);
        assert_eq!(visibility_secs(Duration::from_secs(2), 900), 2);
        assert_eq!(visibility_secs(Duration::from_secs(5000), 900), 900);
        assert_eq!(
            visibility_secs(Duration::from_secs(100_000), SQS_MAX_VISIBILITY),
            HOLD_CAP as i32
        );
    }
}
