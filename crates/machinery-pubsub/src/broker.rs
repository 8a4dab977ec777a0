//! `PubSubBroker`: Go Machinery's Pub/Sub layout (topic = routing key, the URL's subscription
//! consumed, message data = the signature JSON), with batched confirmed publishes, one
//! streaming pull per consumer with flow control, batched acks and deadline changes, lease
//! extension, and ETAs that never block the sender.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use gcloud_gax::conn::{Channel, ConnectionOptions, Environment};
use gcloud_gax::grpc::metadata::AsciiMetadataValue;
use gcloud_gax::grpc::{Code, Request, Status, Streaming};
use gcloud_googleapis::pubsub::v1::publisher_client::PublisherClient;
use gcloud_googleapis::pubsub::v1::subscriber_client::SubscriberClient;
use gcloud_googleapis::pubsub::v1::{
    AcknowledgeRequest, DeleteSubscriptionRequest, DeleteTopicRequest, GetSubscriptionRequest,
    GetTopicRequest, ListSubscriptionsRequest, ListTopicsRequest, ModifyAckDeadlineRequest,
    PublishRequest, PubsubMessage, PullRequest, ReceivedMessage, SeekRequest, StreamingPullRequest,
    StreamingPullResponse, Subscription, Topic, seek_request,
};
use gcloud_pubsub::apiv1::conn_pool::{ConnectionManager, PUBSUB};
use gcloud_pubsub::client::ClientConfig;
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

use crate::config::PubSubConfig;
use crate::error::{self, DRIVER};

/// Message attribute holding the reason of a dead-lettered message.
pub const DEAD_LETTER_REASON_ATTRIBUTE: &str = "machinery-dead-letter-reason";
/// Message attribute holding the subscription a dead-lettered message came from.
pub const DEAD_LETTER_SUBSCRIPTION_ATTRIBUTE: &str = "machinery-dead-letter-subscription";
/// Message attribute (milliseconds since the Unix epoch) before which a message is not
/// handed out: set when a requeue's delay is longer than one ModifyAckDeadline can hold.
pub const NOT_BEFORE_ATTRIBUTE: &str = "machinery-not-before-ms";

/// The largest message Pub/Sub accepts (data plus attributes): 10 MB.
pub const MAX_MESSAGE_BYTES: usize = 10_000_000;
/// The most messages and bytes one Publish request carries.
const PUBLISH_BATCH_MAX: usize = 1000;
const PUBLISH_BATCH_BYTES: usize = 9_000_000;
/// The most ack ids one Acknowledge / ModifyAckDeadline request carries.
const ACK_BATCH_MAX: usize = 1000;
/// Keep a stream alive through proxies (the Go client pings every 30 s too).
const KEEPALIVE: Duration = Duration::from_secs(30);

/// Pub/Sub API calls made by every broker of this process (the figure behind "API calls
/// per completed task"; `machinery bench` prints it).
static API_CALLS: AtomicU64 = AtomicU64::new(0);

/// Pub/Sub API calls made by every [`PubSubBroker`] of this process so far.
pub fn api_calls() -> u64 {
    API_CALLS.load(Ordering::Relaxed)
}

/// How many API calls of each kind one broker made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PubSubApiCalls {
    /// `Publish` calls (each carries up to 1000 messages).
    pub publish: u64,
    /// `StreamingPull` calls (one per consumer, again after the stream breaks).
    pub streaming_pull: u64,
    /// `Acknowledge` calls.
    pub acknowledge: u64,
    /// `ModifyAckDeadline` calls (lease extension, hold until the ETA, requeue, give-back).
    pub modify_ack_deadline: u64,
    /// `Pull` calls (dead-letter reads and purges only; consumers stream).
    pub pull: u64,
    /// Everything else (get / create / delete topic and subscription, seek).
    pub admin: u64,
}

impl PubSubApiCalls {
    /// All calls.
    pub fn total(&self) -> u64 {
        self.publish
            + self.streaming_pull
            + self.acknowledge
            + self.modify_ack_deadline
            + self.pull
            + self.admin
    }
}

#[derive(Default)]
struct Counters {
    publish: AtomicU64,
    streaming_pull: AtomicU64,
    acknowledge: AtomicU64,
    modify_ack_deadline: AtomicU64,
    pull: AtomicU64,
    admin: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
    API_CALLS.fetch_add(1, Ordering::Relaxed);
}

/// A topic known to exist, and whether its messages carry ordering keys.
#[derive(Debug)]
struct TopicInfo {
    id: String,
    ordering: bool,
}

/// A subscription known to exist.
#[derive(Debug)]
struct SubInfo {
    id: String,
    path: String,
    /// The topic it is attached to (its id, without `projects/../topics/`).
    topic: String,
    ordering: bool,
}

/// One message waiting for a Publish request.
struct PubJob {
    message: PubsubMessage,
    size: usize,
    done: oneshot::Sender<Result<String>>,
}

/// What to do with one ack id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Settle {
    Ack,
    /// ModifyAckDeadline to this many seconds (0 = give back now).
    Deadline(i32),
}

struct SettleJob {
    ack_id: String,
    settle: Settle,
    done: Option<oneshot::Sender<Result<()>>>,
}

/// The GCP Pub/Sub broker.
///
/// Cheap to share behind an `Arc`; all handles share the gRPC channels, the topic and
/// subscription cache and the batchers.
pub struct PubSubBroker {
    inner: Arc<Inner>,
}

impl fmt::Debug for PubSubBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubBroker")
            .field("project", &self.inner.config.project)
            .field("subscription", &self.inner.config.subscription)
            .field("default_queue", &self.inner.config.default_queue)
            .field("emulator", &self.inner.config.emulator_host.is_some())
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: PubSubConfig,
    unary: ConnectionManager,
    streaming: ConnectionManager,
    /// The URL's subscription (checked, or created, at connect).
    url_sub: Arc<SubInfo>,
    topics: tokio::sync::Mutex<HashMap<String, Arc<TopicInfo>>>,
    subs: tokio::sync::Mutex<HashMap<String, Arc<SubInfo>>>,
    dead: tokio::sync::Mutex<HashMap<String, Arc<TopicInfo>>>,
    publishers: Mutex<HashMap<String, mpsc::UnboundedSender<PubJob>>>,
    settlers: Mutex<HashMap<String, mpsc::UnboundedSender<SettleJob>>>,
    consumers: Consumers,
    counters: Counters,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    closed: AtomicBool,
}

/// A request with Google's routing header.
fn routed<T>(message: T, param: &str, value: &str) -> Request<T> {
    let mut r = Request::new(message);
    if let Ok(v) = AsciiMetadataValue::try_from(format!("{param}={value}")) {
        r.metadata_mut().insert("x-goog-request-params", v);
    }
    r
}

/// The last segment of `projects/p/topics/t`.
fn short_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whole seconds, rounded up, within `1..=cap`.
fn deadline_secs(d: Duration, cap: u32) -> i32 {
    let secs = d.as_millis().div_ceil(1000).max(1);
    secs.min(u128::from(cap)) as i32
}

impl PubSubBroker {
    /// Connect: open the gRPC channels (the emulator without credentials when
    /// [`PubSubConfig::emulator_host`] is set, Google's default credentials otherwise) and
    /// check that the URL's subscription and the default topic exist, creating them when
    /// [`PubSubConfig::create_missing`] says so.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad configuration; a backend error naming what is missing, or
    /// when Pub/Sub cannot be reached.
    pub async fn connect(config: PubSubConfig) -> Result<Self> {
        config.validate()?;
        let environment = match &config.emulator_host {
            Some(host) => Environment::Emulator(host.clone()),
            None => {
                let cc = ClientConfig {
                    environment: Environment::GoogleCloud(Box::new(
                        token_source::NoopTokenSourceProvider {},
                    )),
                    project_id: Some(config.project.clone()),
                    ..ClientConfig::default()
                };
                cc.with_auth()
                    .await
                    .map_err(|e| {
                        error::other(
                            format!("load Google's default credentials for Pub/Sub: {e}"),
                            false,
                        )
                    })?
                    .environment
            }
        };
        let options = ConnectionOptions {
            timeout: None,
            connect_timeout: Some(Duration::from_secs(5)),
            http2_keep_alive_interval: Some(Duration::from_secs(10)),
            keep_alive_timeout: Some(Duration::from_secs(5)),
            keep_alive_while_idle: Some(true),
        };
        let where_ = match &config.emulator_host {
            Some(h) => format!("the Pub/Sub emulator at {h}"),
            None => "Pub/Sub".to_owned(),
        };
        let channel = |pool| {
            let (environment, options, where_) = (&environment, &options, &where_);
            async move {
                ConnectionManager::new(pool, PUBSUB, environment, options)
                    .await
                    .map_err(|e| error::other(format!("connect to {where_}: {e}"), true))
            }
        };
        let unary = channel(4).await?;
        let streaming = channel(2).await?;
        let inner = Inner {
            unary,
            streaming,
            url_sub: Arc::new(SubInfo {
                id: config.subscription.clone(),
                path: config.subscription_path(&config.subscription),
                topic: config.default_queue.clone(),
                ordering: false,
            }),
            config,
            topics: tokio::sync::Mutex::new(HashMap::new()),
            subs: tokio::sync::Mutex::new(HashMap::new()),
            dead: tokio::sync::Mutex::new(HashMap::new()),
            publishers: Mutex::new(HashMap::new()),
            settlers: Mutex::new(HashMap::new()),
            consumers: Consumers::default(),
            counters: Counters::default(),
            shutdown: CancellationToken::new(),
            tasks: TaskTracker::new(),
            closed: AtomicBool::new(false),
        };
        // Go's contract: the subscription and the topic exist beforehand.
        let default_topic = inner.config.default_queue.clone();
        let create = inner.config.create_missing;
        inner.ensure_topic(&default_topic, create).await?;
        let url_sub = inner
            .ensure_subscription(&inner.config.subscription, &default_topic, create)
            .await
            .map_err(|e| match e {
                Error::Backend { message, .. } if message.contains("does not exist") => {
                    error::other(
                        format!(
                            "{message} (create it on topic `{default_topic}`, or set \
                             gcp_pubsub.create_missing)"
                        ),
                        false,
                    )
                }
                e => e,
            })?;
        let mut inner = inner;
        inner.url_sub = url_sub;
        info!(
            project = %inner.config.project,
            subscription = %inner.url_sub.id,
            topic = %inner.url_sub.topic,
            default_queue = %inner.config.default_queue,
            emulator = inner.config.emulator_host.is_some(),
            ordering = inner.url_sub.ordering,
            "pubsub broker ready"
        );
        if inner.url_sub.topic != inner.config.default_queue {
            warn!(
                subscription = %inner.url_sub.id,
                topic = %inner.url_sub.topic,
                default_queue = %inner.config.default_queue,
                "the URL's subscription is attached to another topic than the default queue; \
                 the default queue is consumed through the subscription named after it"
            );
        }
        Ok(PubSubBroker {
            inner: Arc::new(inner),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &PubSubConfig {
        &self.inner.config
    }

    /// API calls made so far by this broker, by kind.
    pub fn api_call_counts(&self) -> PubSubApiCalls {
        let c = &self.inner.counters;
        PubSubApiCalls {
            publish: c.publish.load(Ordering::Relaxed),
            streaming_pull: c.streaming_pull.load(Ordering::Relaxed),
            acknowledge: c.acknowledge.load(Ordering::Relaxed),
            modify_ack_deadline: c.modify_ack_deadline.load(Ordering::Relaxed),
            pull: c.pull.load(Ordering::Relaxed),
            admin: c.admin.load(Ordering::Relaxed),
        }
    }

    /// The subscription that consumes `queue` (a topic): the URL's subscription when it is
    /// attached to `queue`, else the subscription named like the topic.
    pub fn subscription_for(&self, queue: &str) -> String {
        self.inner.subscription_id_for(queue)
    }

    /// Create topic `queue` and its subscription (see [`PubSubBroker::subscription_for`]) if
    /// they do not exist.
    ///
    /// # Errors
    /// When Pub/Sub refuses or cannot be reached.
    pub async fn ensure_queue(&self, queue: &str) -> Result<()> {
        self.inner.sub_for_queue(queue, true).await.map(|_| ())
    }

    /// Publish `data` to topic `queue` as it is, as a foreign producer would (tests,
    /// tooling); returns the message id.
    ///
    /// # Errors
    /// When Pub/Sub refuses or cannot be reached, or the topic does not exist.
    pub async fn publish_raw(&self, queue: &str, data: &[u8]) -> Result<String> {
        let topic = self.inner.topic_info(queue).await?;
        let message = PubsubMessage {
            data: data.to_vec(),
            ..PubsubMessage::default()
        };
        self.inner.submit_publish(&topic, message).await
    }

    /// Pull up to `max` messages waiting in `queue`'s subscription and acknowledge them,
    /// returning their data byte for byte and attributes (tests, tooling).
    ///
    /// # Errors
    /// When Pub/Sub cannot be reached or the subscription does not exist.
    pub async fn pull_raw(
        &self,
        queue: &str,
        max: usize,
    ) -> Result<Vec<(Vec<u8>, HashMap<String, String>)>> {
        let sub = self.inner.sub_for_queue(queue, false).await?;
        let got = self.inner.pull(&sub.path, max, true).await?;
        let ids: Vec<String> = got.iter().map(|m| m.ack_id.clone()).collect();
        self.inner.acknowledge(&sub.path, ids).await?;
        Ok(got
            .into_iter()
            .filter_map(|m| m.message)
            .map(|m| (m.data, m.attributes))
            .collect())
    }

    /// The messages dead-lettered from `queue` (in topic `<topic>.dead`, read through its
    /// subscription of the same name) without removing them.
    ///
    /// # Errors
    /// When Pub/Sub cannot be reached.
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        let sub = self.inner.sub_for_queue(queue, false).await?;
        let dead = self.inner.dead_topic(&sub.topic).await?;
        let path = self.inner.config.subscription_path(&dead.id);
        let mut out = Vec::new();
        let mut ids = Vec::new();
        for _ in 0..5 {
            let got = self.inner.pull(&path, 100, true).await?;
            if got.is_empty() {
                break;
            }
            for m in got {
                ids.push(m.ack_id);
                if let Some(msg) = m.message {
                    out.push(DeadLetter {
                        reason: msg
                            .attributes
                            .get(DEAD_LETTER_REASON_ATTRIBUTE)
                            .cloned()
                            .unwrap_or_default(),
                        body: msg.data,
                    });
                }
            }
        }
        // Leave them there.
        if !ids.is_empty() {
            self.inner.modify_deadline(&path, ids, 0).await?;
        }
        Ok(out)
    }

    /// Delete every topic and subscription of this project whose name starts with `prefix`
    /// (tests and tooling; errors are ignored).
    pub async fn delete_prefixed(&self, prefix: &str) {
        let inner = &self.inner;
        let project = format!("projects/{}", inner.config.project);
        bump(&inner.counters.admin);
        let subs = inner
            .sub_client()
            .list_subscriptions(routed(
                ListSubscriptionsRequest {
                    project: project.clone(),
                    page_size: 1000,
                    ..Default::default()
                },
                "project",
                &project,
            ))
            .await;
        if let Ok(subs) = subs {
            for s in subs.into_inner().subscriptions {
                if short_name(&s.name).starts_with(prefix) {
                    bump(&inner.counters.admin);
                    let _ = inner
                        .sub_client()
                        .delete_subscription(routed(
                            DeleteSubscriptionRequest {
                                subscription: s.name.clone(),
                            },
                            "subscription",
                            &s.name,
                        ))
                        .await;
                }
            }
        }
        bump(&inner.counters.admin);
        let topics = inner
            .pub_client()
            .list_topics(routed(
                ListTopicsRequest {
                    project: project.clone(),
                    page_size: 1000,
                    ..Default::default()
                },
                "project",
                &project,
            ))
            .await;
        if let Ok(topics) = topics {
            for t in topics.into_inner().topics {
                if short_name(&t.name).starts_with(prefix) {
                    bump(&inner.counters.admin);
                    let _ = inner
                        .pub_client()
                        .delete_topic(routed(
                            DeleteTopicRequest {
                                topic: t.name.clone(),
                            },
                            "topic",
                            &t.name,
                        ))
                        .await;
                }
            }
        }
    }
}

/// Run one unary call with the request timeout.
async fn call<T>(
    inner: &Inner,
    what: impl FnOnce() -> String,
    fut: impl Future<Output = std::result::Result<gcloud_gax::grpc::Response<T>, Status>>,
) -> std::result::Result<T, CallError> {
    match tokio::time::timeout(inner.config.request_timeout, fut).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(s)) => Err(CallError::Status(what(), s)),
        Err(_) => Err(CallError::Timeout(what(), inner.config.request_timeout)),
    }
}

/// A failed call, before it becomes an [`Error`] (so that `NotFound` can be matched).
enum CallError {
    Status(String, Status),
    Timeout(String, Duration),
}

impl CallError {
    fn code(&self) -> Option<Code> {
        match self {
            CallError::Status(_, s) => Some(s.code()),
            CallError::Timeout(..) => None,
        }
    }
    fn is(&self, code: Code) -> bool {
        self.code() == Some(code)
    }
    fn into_error(self) -> Error {
        match self {
            CallError::Status(what, s) => error::status(what, s),
            CallError::Timeout(what, after) => error::timeout(what, after),
        }
    }
}

impl Inner {
    fn pub_client(&self) -> PublisherClient<Channel> {
        PublisherClient::new(self.unary.conn())
            .max_decoding_message_size(2 * MAX_MESSAGE_BYTES)
            .max_encoding_message_size(2 * MAX_MESSAGE_BYTES)
    }

    fn sub_client(&self) -> SubscriberClient<Channel> {
        SubscriberClient::new(self.unary.conn())
            .max_decoding_message_size(2 * MAX_MESSAGE_BYTES)
            .max_encoding_message_size(2 * MAX_MESSAGE_BYTES)
    }

    fn streaming_client(&self) -> SubscriberClient<Channel> {
        SubscriberClient::new(self.streaming.conn())
            .max_decoding_message_size(2 * MAX_MESSAGE_BYTES)
            .max_encoding_message_size(2 * MAX_MESSAGE_BYTES)
    }

    fn subscription_id_for(&self, queue: &str) -> String {
        if queue == self.url_sub.topic {
            self.url_sub.id.clone()
        } else {
            queue.to_owned()
        }
    }

    /// Check that topic `id` exists; create it when `create`.
    async fn ensure_topic(&self, id: &str, create: bool) -> Result<()> {
        let path = self.config.topic_path(id);
        bump(&self.counters.admin);
        let got = call(
            self,
            || format!("get topic `{path}`"),
            self.pub_client().get_topic(routed(
                GetTopicRequest {
                    topic: path.clone(),
                },
                "topic",
                &path,
            )),
        )
        .await;
        match got {
            Ok(_) => Ok(()),
            Err(e) if e.is(Code::NotFound) => {
                if !create {
                    return Err(error::other(
                        format!(
                            "topic `{path}` does not exist (create it, or set \
                             gcp_pubsub.create_missing)"
                        ),
                        false,
                    ));
                }
                bump(&self.counters.admin);
                match call(
                    self,
                    || format!("create topic `{path}`"),
                    self.pub_client().create_topic(routed(
                        Topic {
                            name: path.clone(),
                            ..Default::default()
                        },
                        "name",
                        &path,
                    )),
                )
                .await
                {
                    Ok(_) => {
                        info!(topic = %path, "created the Pub/Sub topic");
                        Ok(())
                    }
                    Err(e) if e.is(Code::AlreadyExists) => Ok(()),
                    Err(e) => Err(e.into_error()),
                }
            }
            Err(e) => Err(e.into_error()),
        }
    }

    /// Subscription `id` (attached to topic `topic` when it has to be created).
    async fn ensure_subscription(
        &self,
        id: &str,
        topic: &str,
        create: bool,
    ) -> Result<Arc<SubInfo>> {
        let path = self.config.subscription_path(id);
        let get = || async {
            bump(&self.counters.admin);
            call(
                self,
                || format!("get subscription `{path}`"),
                self.sub_client().get_subscription(routed(
                    GetSubscriptionRequest {
                        subscription: path.clone(),
                    },
                    "subscription",
                    &path,
                )),
            )
            .await
        };
        let info = |s: Subscription| {
            Arc::new(SubInfo {
                id: id.to_owned(),
                path: path.clone(),
                topic: short_name(&s.topic).to_owned(),
                ordering: s.enable_message_ordering,
            })
        };
        match get().await {
            Ok(s) => return Ok(info(s)),
            Err(e) if e.is(Code::NotFound) && create => {}
            Err(e) if e.is(Code::NotFound) => {
                return Err(error::other(
                    format!("subscription `{path}` does not exist"),
                    false,
                ));
            }
            Err(e) => return Err(e.into_error()),
        }
        self.ensure_topic(topic, true).await?;
        let topic_path = self.config.topic_path(topic);
        bump(&self.counters.admin);
        let created = call(
            self,
            || format!("create subscription `{path}`"),
            self.sub_client().create_subscription(routed(
                Subscription {
                    name: path.clone(),
                    topic: topic_path.clone(),
                    ack_deadline_seconds: self.config.ack_deadline_seconds as i32,
                    enable_message_ordering: self.config.create_with_ordering,
                    ..Default::default()
                },
                "name",
                &path,
            )),
        )
        .await;
        match created {
            Ok(s) => {
                info!(subscription = %path, topic = %topic_path, "created the Pub/Sub subscription");
                Ok(info(s))
            }
            Err(e) if e.is(Code::AlreadyExists) => {
                get().await.map(info).map_err(CallError::into_error)
            }
            Err(e) => Err(e.into_error()),
        }
    }

    /// The subscription consuming `queue`, checked once (created when `create` or
    /// `create_missing`).
    async fn sub_for_queue(&self, queue: &str, create: bool) -> Result<Arc<SubInfo>> {
        if queue == self.url_sub.topic {
            return Ok(Arc::clone(&self.url_sub));
        }
        let mut cache = self.subs.lock().await;
        if let Some(s) = cache.get(queue) {
            return Ok(Arc::clone(s));
        }
        let create = create || self.config.create_missing;
        let sub = self
            .ensure_subscription(queue, queue, create)
            .await
            .map_err(|e| match e {
                Error::Backend { message, .. } if message.contains("does not exist") => {
                    error::other(
                        format!(
                            "queue `{queue}` has no subscription: {message} (the URL's \
                             subscription `{}` consumes topic `{}`; another queue is consumed \
                             through the subscription named after it; create it, or set \
                             gcp_pubsub.create_missing)",
                            self.url_sub.id, self.url_sub.topic
                        ),
                        false,
                    )
                }
                e => e,
            })?;
        cache.insert(queue.to_owned(), Arc::clone(&sub));
        Ok(sub)
    }

    /// Topic `id` for publishing, checked once. With `create_missing` its subscription is
    /// created too, so that nothing published before the first consumer is dropped.
    async fn topic_info(&self, id: &str) -> Result<Arc<TopicInfo>> {
        let mut cache = self.topics.lock().await;
        if let Some(t) = cache.get(id) {
            return Ok(Arc::clone(t));
        }
        let info = self.load_topic(id).await?;
        cache.insert(id.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    async fn load_topic(&self, id: &str) -> Result<Arc<TopicInfo>> {
        let create = self.config.create_missing;
        self.ensure_topic(id, create).await?;
        let ordering = if id == self.url_sub.topic {
            if create {
                // After a restart of the emulator the URL's subscription is gone too: make
                // sure it exists before publishing, or the messages would have no reader.
                self.ensure_subscription(&self.url_sub.id, id, true).await?;
            }
            self.url_sub.ordering
        } else if create {
            self.sub_for_queue(id, true).await?.ordering
        } else {
            match self.sub_for_queue(id, false).await {
                Ok(s) => s.ordering,
                Err(_) => false,
            }
        };
        Ok(Arc::new(TopicInfo {
            id: id.to_owned(),
            ordering,
        }))
    }

    /// `<topic>.dead` and its subscription of the same name, created when missing.
    async fn dead_topic(&self, topic: &str) -> Result<Arc<TopicInfo>> {
        let mut cache = self.dead.lock().await;
        if let Some(t) = cache.get(topic) {
            return Ok(Arc::clone(t));
        }
        let id = dead_topic_name(topic);
        self.ensure_subscription(&id, &id, true).await?;
        let info = Arc::new(TopicInfo {
            id,
            ordering: false,
        });
        cache.insert(topic.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    /// Forget what is known about topic `id` and its subscription (after a `NotFound`: the
    /// emulator restarted, or someone deleted them) and check them again.
    async fn reload_topic(&self, id: &str) -> Result<Arc<TopicInfo>> {
        self.subs.lock().await.remove(id);
        let info = self.load_topic(id).await?;
        self.topics
            .lock()
            .await
            .insert(id.to_owned(), Arc::clone(&info));
        Ok(info)
    }

    async fn publish(self: &Arc<Self>, sig: &Signature) -> Result<()> {
        let topic_id = if sig.routing_key.is_empty() {
            self.config.default_queue.as_str()
        } else {
            sig.routing_key.as_str()
        };
        let data = sig.to_json()?;
        // Checked before anything is sent (the ordering key counts too).
        let size = data.len() + sig.broker_message_group_id.len().max(topic_id.len());
        if size > MAX_MESSAGE_BYTES {
            return Err(too_large(size));
        }
        let topic = self.topic_info(topic_id).await?;
        // A future ETA is published at once and held on receipt (never early, never blocking
        // the sender: Go blocks it until the ETA).
        // On an ordered subscription every message has a key, so that one consumer sees the
        // topic's messages in publish order (per BrokerMessageGroupId when set).
        let ordering_key = match (topic.ordering, sig.broker_message_group_id.is_empty()) {
            (false, _) => String::new(),
            (true, true) => topic.id.clone(),
            (true, false) => sig.broker_message_group_id.clone(),
        };
        let message = PubsubMessage {
            data,
            ordering_key,
            ..PubsubMessage::default()
        };
        self.submit_publish(&topic, message).await.map(drop)
    }

    /// Queue one message for its topic's Publish batch; resolves with the message id.
    async fn submit_publish(
        self: &Arc<Self>,
        topic: &TopicInfo,
        message: PubsubMessage,
    ) -> Result<String> {
        let size = message.data.len()
            + message.ordering_key.len()
            + message
                .attributes
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        if size > MAX_MESSAGE_BYTES {
            return Err(too_large(size));
        }
        let (tx, rx) = oneshot::channel();
        self.publisher(topic)?
            .send(PubJob {
                message,
                size,
                done: tx,
            })
            .map_err(|_| Error::Closed("pubsub broker"))?;
        rx.await.map_err(|_| Error::Closed("pubsub broker"))?
    }

    fn publisher(self: &Arc<Self>, topic: &TopicInfo) -> Result<mpsc::UnboundedSender<PubJob>> {
        let mut map = self.publishers.lock().expect("publishers poisoned");
        if let Some(tx) = map.get(&topic.id)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("pubsub broker"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::clone(self);
        let (id, ordering) = (topic.id.clone(), topic.ordering);
        self.tasks
            .spawn(async move { this.publish_loop(id, ordering, rx).await });
        map.insert(topic.id.clone(), tx.clone());
        Ok(tx)
    }

    /// Collect messages for up to the linger time (or 1000 messages, or 9 MB) and publish
    /// them in one request, with up to `batch_concurrency` requests in flight (one when the
    /// topic carries ordering keys, so that their order holds).
    async fn publish_loop(
        self: Arc<Self>,
        topic: String,
        ordering: bool,
        mut rx: mpsc::UnboundedReceiver<PubJob>,
    ) {
        let concurrency = if ordering {
            1
        } else {
            self.config.batch_concurrency.max(1)
        };
        let in_flight = Arc::new(Semaphore::new(concurrency));
        let mut carry: Option<PubJob> = None;
        loop {
            let first = match carry.take() {
                Some(j) => j,
                None => match rx.recv().await {
                    Some(j) => j,
                    None => break,
                },
            };
            let mut size = first.size;
            let mut batch = vec![first];
            let deadline = Instant::now() + self.config.publish_linger;
            while batch.len() < PUBLISH_BATCH_MAX {
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
                if size + j.size > PUBLISH_BATCH_BYTES {
                    carry = Some(j);
                    break;
                }
                size += j.size;
                batch.push(j);
            }
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .expect("never closed");
            let this = Arc::clone(&self);
            let topic = topic.clone();
            self.tasks.spawn(async move {
                this.flush_publish(&topic, batch).await;
                drop(permit);
            });
        }
    }

    /// One Publish request (retried a few times while the error is temporary; after a
    /// `NotFound` with `create_missing`, once more after creating the topic again).
    async fn flush_publish(&self, topic: &str, batch: Vec<PubJob>) {
        let (messages, dones): (Vec<PubsubMessage>, Vec<_>) =
            batch.into_iter().map(|j| (j.message, j.done)).unzip();
        let path = self.config.topic_path(topic);
        let mut attempt = 0u32;
        let mut recreated = false;
        let result = loop {
            attempt += 1;
            bump(&self.counters.publish);
            let r = call(
                self,
                || format!("publish {} messages to `{path}`", messages.len()),
                self.pub_client().publish(routed(
                    PublishRequest {
                        topic: path.clone(),
                        messages: messages.clone(),
                    },
                    "topic",
                    &path,
                )),
            )
            .await;
            match r {
                Ok(r) => break Ok(r.message_ids),
                Err(e) if e.is(Code::NotFound) && self.config.create_missing && !recreated => {
                    recreated = true;
                    warn!(topic = %path, "topic gone; creating it again");
                    if let Err(e) = self.reload_topic(topic).await {
                        break Err(e);
                    }
                }
                Err(e) => {
                    let temporary = e.code().is_none_or(error::is_temporary);
                    if !temporary || attempt >= 3 || self.shutdown.is_cancelled() {
                        break Err(e.into_error());
                    }
                    tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
                }
            }
        };
        match result {
            Ok(ids) => {
                for (i, done) in dones.into_iter().enumerate() {
                    let r = ids.get(i).cloned().ok_or_else(|| {
                        error::other("Publish answered fewer message ids than it was sent", true)
                    });
                    let _ = done.send(r);
                }
            }
            Err(e) => {
                let (text, temporary) = (e.to_string(), e.is_temporary());
                let mut first = Some(e);
                for done in dones {
                    let e = first
                        .take()
                        .unwrap_or_else(|| error::other(text.clone(), temporary));
                    let _ = done.send(Err(e));
                }
            }
        }
    }

    /// Queue one ack or deadline change and wait for its request's answer.
    async fn settle(self: &Arc<Self>, sub: &str, ack_id: String, settle: Settle) -> Result<()> {
        let (tx, rx) = oneshot::channel();
        self.settler(sub)?
            .send(SettleJob {
                ack_id,
                settle,
                done: Some(tx),
            })
            .map_err(|_| Error::Closed("pubsub broker"))?;
        rx.await.map_err(|_| Error::Closed("pubsub broker"))?
    }

    /// Queue one without waiting (give-backs from `Drop`, lease extension, holds).
    fn settle_detached(self: &Arc<Self>, sub: &str, ack_id: String, settle: Settle) {
        if let Ok(s) = self.settler(sub) {
            let _ = s.send(SettleJob {
                ack_id,
                settle,
                done: None,
            });
        }
    }

    fn settler(self: &Arc<Self>, sub: &str) -> Result<mpsc::UnboundedSender<SettleJob>> {
        let mut map = self.settlers.lock().expect("settlers poisoned");
        if let Some(tx) = map.get(sub)
            && !tx.is_closed()
        {
            return Ok(tx.clone());
        }
        if self.closed.load(Ordering::Acquire) && self.tasks.is_closed() {
            return Err(Error::Closed("pubsub broker"));
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let this = Arc::clone(self);
        let sub_path = sub.to_owned();
        self.tasks
            .spawn(async move { this.settle_loop(sub_path, rx).await });
        map.insert(sub.to_owned(), tx.clone());
        Ok(tx)
    }

    async fn settle_loop(self: Arc<Self>, sub: String, mut rx: mpsc::UnboundedReceiver<SettleJob>) {
        let in_flight = Arc::new(Semaphore::new(self.config.batch_concurrency.max(1)));
        while let Some(first) = rx.recv().await {
            let mut batch = vec![first];
            let deadline = Instant::now() + self.config.ack_linger;
            while batch.len() < ACK_BATCH_MAX {
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
                batch.push(j);
            }
            let permit = Arc::clone(&in_flight)
                .acquire_owned()
                .await
                .expect("never closed");
            let this = Arc::clone(&self);
            let sub = sub.clone();
            self.tasks.spawn(async move {
                this.flush_settle(&sub, batch).await;
                drop(permit);
            });
        }
    }

    /// One request per kind of settlement in the batch; give-backs (deadline 0) go last so
    /// that an extension in the same batch cannot undo them.
    async fn flush_settle(&self, sub: &str, batch: Vec<SettleJob>) {
        let mut groups: HashMap<Settle, Vec<SettleJob>> = HashMap::new();
        for j in batch {
            groups.entry(j.settle).or_default().push(j);
        }
        let give_back = groups.remove(&Settle::Deadline(0));
        let first = groups
            .into_iter()
            .map(|(settle, jobs)| self.flush_group(sub, settle, jobs));
        futures::future::join_all(first).await;
        if let Some(jobs) = give_back {
            self.flush_group(sub, Settle::Deadline(0), jobs).await;
        }
    }

    async fn flush_group(&self, sub: &str, settle: Settle, jobs: Vec<SettleJob>) {
        let ids: Vec<String> = jobs.iter().map(|j| j.ack_id.clone()).collect();
        let r = match settle {
            Settle::Ack => self.acknowledge(sub, ids).await,
            Settle::Deadline(secs) => self.modify_deadline(sub, ids, secs).await,
        };
        let (text, temporary) = match &r {
            Ok(()) => (String::new(), false),
            Err(e) => (e.to_string(), e.is_temporary()),
        };
        for j in jobs {
            let r = match &r {
                Ok(()) => Ok(()),
                Err(_) => Err(error::other(text.clone(), temporary)),
            };
            match j.done {
                Some(done) => {
                    let _ = done.send(r);
                }
                None => {
                    if let Err(e) = r {
                        warn!(error = %e, "pubsub: a background ack deadline change failed; the message comes back when its deadline ends");
                    }
                }
            }
        }
    }

    async fn acknowledge(&self, sub: &str, ack_ids: Vec<String>) -> Result<()> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        bump(&self.counters.acknowledge);
        let n = ack_ids.len();
        call(
            self,
            || format!("acknowledge {n} messages of `{sub}`"),
            self.sub_client().acknowledge(routed(
                AcknowledgeRequest {
                    subscription: sub.to_owned(),
                    ack_ids,
                },
                "subscription",
                sub,
            )),
        )
        .await
        .map_err(CallError::into_error)
    }

    async fn modify_deadline(&self, sub: &str, ack_ids: Vec<String>, secs: i32) -> Result<()> {
        if ack_ids.is_empty() {
            return Ok(());
        }
        bump(&self.counters.modify_ack_deadline);
        let n = ack_ids.len();
        call(
            self,
            || format!("modify the ack deadline of {n} messages of `{sub}` to {secs} s"),
            self.sub_client().modify_ack_deadline(routed(
                ModifyAckDeadlineRequest {
                    subscription: sub.to_owned(),
                    ack_ids,
                    ack_deadline_seconds: secs,
                },
                "subscription",
                sub,
            )),
        )
        .await
        .map_err(CallError::into_error)
    }

    async fn pull(&self, sub: &str, max: usize, immediately: bool) -> Result<Vec<ReceivedMessage>> {
        bump(&self.counters.pull);
        #[allow(deprecated)]
        let request = PullRequest {
            subscription: sub.to_owned(),
            return_immediately: immediately,
            max_messages: i32::try_from(max).unwrap_or(i32::MAX),
        };
        call(
            self,
            || format!("pull from `{sub}`"),
            self.sub_client().pull(routed(request, "subscription", sub)),
        )
        .await
        .map(|r| r.received_messages)
        .map_err(CallError::into_error)
    }

    /// Publish the message to `<topic>.dead` with the reason, then acknowledge it.
    async fn dead_letter(
        self: &Arc<Self>,
        sub: &SubInfo,
        ack_id: &str,
        message: &PubsubMessage,
        reason: &str,
    ) -> Result<()> {
        let dead = self.dead_topic(&sub.topic).await?;
        let mut attributes = message.attributes.clone();
        attributes.insert(
            DEAD_LETTER_REASON_ATTRIBUTE.to_owned(),
            if reason.is_empty() {
                "(no reason)".to_owned()
            } else {
                reason.to_owned()
            },
        );
        attributes.insert(
            DEAD_LETTER_SUBSCRIPTION_ATTRIBUTE.to_owned(),
            sub.id.clone(),
        );
        let letter = PubsubMessage {
            data: message.data.clone(),
            attributes,
            ..PubsubMessage::default()
        };
        self.submit_publish(&dead, letter).await?;
        warn!(subscription = %sub.id, dead_letter_topic = %dead.id, reason, "message dead-lettered");
        self.settle(&sub.path, ack_id.to_owned(), Settle::Ack).await
    }
}

fn too_large(size: usize) -> Error {
    Error::TooLarge {
        what: "Pub/Sub message (data, attributes and ordering key)",
        size,
        limit: MAX_MESSAGE_BYTES,
    }
}

/// `<topic>.dead`.
pub(crate) fn dead_topic_name(topic: &str) -> String {
    format!("{topic}.dead")
}

#[async_trait]
impl Broker for PubSubBroker {
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
            // Ordering keys keep one key's messages in order on a subscription with message
            // ordering enabled.
            fifo: self.inner.url_sub.ordering,
            redelivers_unacked: true,
            max_message_bytes: Some(MAX_MESSAGE_BYTES),
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
            return Err(Error::Closed("pubsub broker"));
        }
        let sub = self.inner.sub_for_queue(queue, false).await?;
        let prefetch = usize::from(options.prefetch.max(1));
        let (tx, rx) = mpsc::unbounded_channel();
        let consumer = self
            .inner
            .consumers
            .register(&options.consumer_tag, &self.inner.shutdown);
        let leases = Arc::new(Leases::default());
        {
            let inner = Arc::clone(&self.inner);
            let (sub, leases, stop) =
                (Arc::clone(&sub), Arc::clone(&leases), consumer.stop.clone());
            self.inner
                .tasks
                .spawn(async move { extend_leases(inner, sub, leases, stop).await });
        }
        let receiver = Receiver {
            inner: Arc::clone(&self.inner),
            sub,
            prefetch: Arc::new(Semaphore::new(prefetch)),
            max_outstanding: prefetch + self.inner.config.max_held,
            client_id: uuid::Uuid::new_v4().to_string(),
            tx,
            leases,
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
        let sub = self.inner.sub_for_queue(queue, false).await?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        bump(&self.inner.counters.admin);
        let seek = call(
            &self.inner,
            || format!("seek `{}` to now", sub.path),
            self.inner.sub_client().seek(routed(
                SeekRequest {
                    subscription: sub.path.clone(),
                    target: Some(seek_request::Target::Time(prost_types::Timestamp {
                        seconds: now.as_secs() as i64,
                        nanos: now.subsec_nanos() as i32,
                    })),
                },
                "subscription",
                &sub.path,
            )),
        )
        .await;
        match seek {
            Ok(_) => Ok(()),
            Err(e) if e.is(Code::Unimplemented) || e.is(Code::InvalidArgument) => {
                // No seek here: drain what is waiting instead.
                loop {
                    let got = self.inner.pull(&sub.path, 1000, true).await?;
                    if got.is_empty() {
                        return Ok(());
                    }
                    let ids = got.into_iter().map(|m| m.ack_id).collect();
                    self.inner.acknowledge(&sub.path, ids).await?;
                }
            }
            Err(e) => Err(e.into_error()),
        }
    }

    async fn close(&self) -> Result<()> {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.shutdown.cancel();
        // The batchers stop once what they hold is sent.
        self.inner
            .publishers
            .lock()
            .expect("publishers poisoned")
            .clear();
        self.inner
            .settlers
            .lock()
            .expect("settlers poisoned")
            .clear();
        self.inner.tasks.close();
        Ok(())
    }
}

/// The ack ids a consumer holds (received and due, not settled), with when each came.
#[derive(Default)]
struct Leases {
    ids: Mutex<HashMap<String, Instant>>,
}

impl Leases {
    fn insert(&self, id: &str) {
        self.ids
            .lock()
            .expect("leases poisoned")
            .insert(id.to_owned(), Instant::now());
    }
    fn remove(&self, id: &str) -> bool {
        self.ids
            .lock()
            .expect("leases poisoned")
            .remove(id)
            .is_some()
    }
    fn is_empty(&self) -> bool {
        self.ids.lock().expect("leases poisoned").is_empty()
    }
    /// The ids to extend; those held longer than `max` are dropped (they come back).
    fn due_for_extension(&self, max: Duration) -> (Vec<String>, usize) {
        let mut ids = self.ids.lock().expect("leases poisoned");
        let before = ids.len();
        ids.retain(|_, since| since.elapsed() < max);
        (ids.keys().cloned().collect(), before - ids.len())
    }
}

/// Lease management: every third of the ack deadline, extend the deadline of every message
/// the consumer holds, up to `max_extension` per message.
async fn extend_leases(
    inner: Arc<Inner>,
    sub: Arc<SubInfo>,
    leases: Arc<Leases>,
    stop: CancellationToken,
) {
    let deadline = inner.config.ack_deadline_seconds;
    let period = Duration::from_millis(u64::from(deadline) * 1000 / 3);
    let mut tick = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tick.tick().await;
        if stop.is_cancelled() && leases.is_empty() {
            break;
        }
        let (ids, expired) = leases.due_for_extension(inner.config.max_extension);
        if expired > 0 {
            warn!(subscription = %sub.id, messages = expired, max_extension = ?inner.config.max_extension, "lease no longer extended (max extension reached); the message will be delivered again");
        }
        if ids.is_empty() {
            continue;
        }
        debug!(subscription = %sub.id, messages = ids.len(), deadline, "extending leases");
        for id in ids {
            inner.settle_detached(&sub.path, id, Settle::Deadline(deadline as i32));
        }
    }
}

/// A due message waiting for a prefetch permit.
struct Ready {
    ack_id: String,
    message: PubsubMessage,
    payload: Payload,
    redelivered: bool,
}

/// The streaming pull of one consumer.
struct Receiver {
    inner: Arc<Inner>,
    sub: Arc<SubInfo>,
    prefetch: Arc<Semaphore>,
    max_outstanding: usize,
    client_id: String,
    tx: mpsc::UnboundedSender<Result<Delivery>>,
    leases: Arc<Leases>,
    stop: CancellationToken,
}

impl Receiver {
    async fn open(
        &self,
    ) -> std::result::Result<
        (
            futures::channel::mpsc::UnboundedSender<StreamingPullRequest>,
            Streaming<StreamingPullResponse>,
        ),
        CallError,
    > {
        let (req_tx, req_rx) = futures::channel::mpsc::unbounded();
        let first = StreamingPullRequest {
            subscription: self.sub.path.clone(),
            stream_ack_deadline_seconds: self.inner.config.ack_deadline_seconds as i32,
            client_id: self.client_id.clone(),
            max_outstanding_messages: self.max_outstanding as i64,
            ..Default::default()
        };
        let _ = req_tx.unbounded_send(first);
        bump(&self.inner.counters.streaming_pull);
        let responses = call(
            &self.inner,
            || format!("open a streaming pull on `{}`", self.sub.path),
            self.inner.streaming_client().streaming_pull(routed(
                req_rx,
                "subscription",
                &self.sub.path,
            )),
        )
        .await?;
        Ok((req_tx, responses))
    }

    async fn run(self) {
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            self.inner.config.reconnect_max_delay,
        );
        let mut ready: VecDeque<Ready> = VecDeque::new();
        'outer: while !self.stop.is_cancelled() && !self.tx.is_closed() {
            // The server may answer the call only with its first messages: a stop must not
            // wait for that.
            let opened = tokio::select! {
                _ = self.stop.cancelled() => break,
                r = self.open() => r,
            };
            let (req_tx, mut responses) = match opened {
                Ok(s) => s,
                Err(e) => {
                    if !self.failed(e, &mut backoff).await {
                        break;
                    }
                    continue;
                }
            };
            debug!(subscription = %self.sub.id, "streaming pull open");
            let mut keepalive = tokio::time::interval_at(Instant::now() + KEEPALIVE, KEEPALIVE);
            loop {
                tokio::select! {
                    biased;
                    _ = self.stop.cancelled() => {
                        // Half-close, then give back what still arrives.
                        drop(req_tx);
                        let until = Instant::now() + Duration::from_secs(2);
                        while let Ok(Some(Ok(r))) = tokio::time::timeout_at(until, responses.next()).await {
                            for m in r.received_messages {
                                self.give_back(m.ack_id);
                            }
                        }
                        break 'outer;
                    }
                    permit = Arc::clone(&self.prefetch).acquire_owned(), if !ready.is_empty() => {
                        let permit = permit.expect("never closed");
                        let r = ready.pop_front().expect("not empty");
                        self.hand_out(r, permit);
                    }
                    _ = keepalive.tick() => {
                        let _ = req_tx.unbounded_send(StreamingPullRequest::default());
                    }
                    item = responses.next() => match item {
                        Some(Ok(r)) => {
                            backoff.reset();
                            for m in r.received_messages {
                                if let Some(r) = self.accept(m) {
                                    ready.push_back(r);
                                }
                            }
                        }
                        Some(Err(s)) => {
                            let e = CallError::Status(format!("streaming pull on `{}`", self.sub.path), s);
                            if !self.failed(e, &mut backoff).await {
                                break 'outer;
                            }
                            break;
                        }
                        None => {
                            debug!(subscription = %self.sub.id, "streaming pull ended by the server; opening it again");
                            break;
                        }
                    }
                }
            }
        }
        for r in ready {
            self.leases.remove(&r.ack_id);
            self.give_back(r.ack_id);
        }
        debug!(subscription = %self.sub.id, "pubsub consumer stopped");
    }

    /// Report a stream failure and wait before the next attempt; false when the consumer is
    /// stopping.
    async fn failed(&self, e: CallError, backoff: &mut Backoff) -> bool {
        if e.is(Code::NotFound) && self.inner.config.create_missing {
            // The emulator restarted (or the subscription was deleted): create it again.
            warn!(subscription = %self.sub.path, "subscription gone; creating it again");
            if let Err(e) = self
                .inner
                .ensure_subscription(&self.sub.id, &self.sub.topic, true)
                .await
            {
                warn!(error = %e, "cannot create the subscription again");
            }
        }
        let e = e.into_error();
        let pause = backoff.next_delay();
        warn!(subscription = %self.sub.id, error = %e, retry_in = ?pause, "pubsub streaming pull failed");
        if self.tx.send(Err(e)).is_err() {
            return false;
        }
        tokio::select! {
            _ = self.stop.cancelled() => return false,
            _ = tokio::time::sleep(pause) => {}
        }
        true
    }

    fn give_back(&self, ack_id: String) {
        self.inner
            .settle_detached(&self.sub.path, ack_id, Settle::Deadline(0));
    }

    /// A message from the stream: held back when not due, else leased and queued.
    fn accept(&self, m: ReceivedMessage) -> Option<Ready> {
        let Some(message) = m.message else {
            self.give_back(m.ack_id);
            return None;
        };
        let payload = Payload::decode(&message.data);
        let now = machinery_core::time::now();
        let eta = match &payload {
            Payload::Task(sig) => sig.future_eta(),
            Payload::Malformed { .. } => None,
        };
        let not_before = message
            .attributes
            .get(NOT_BEFORE_ATTRIBUTE)
            .and_then(|v| v.parse::<i64>().ok())
            .and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.fixed_offset())
            .filter(|t| *t > now);
        if let Some(due) = eta.into_iter().chain(not_before).max() {
            // Not due: hold it back with ModifyAckDeadline (rounded up: never early; a later
            // ETA is held again when it comes back), and do not hand it out.
            let remaining = (due - now).to_std().unwrap_or_default();
            let secs = deadline_secs(remaining, self.inner.config.max_hold_seconds);
            debug!(message_id = %message.message_id, hold_secs = secs, "pubsub message not due yet; held back");
            self.inner
                .settle_detached(&self.sub.path, m.ack_id, Settle::Deadline(secs));
            return None;
        }
        self.leases.insert(&m.ack_id);
        Some(Ready {
            ack_id: m.ack_id,
            message,
            payload,
            redelivered: m.delivery_attempt > 1,
        })
    }

    fn hand_out(&self, r: Ready, permit: OwnedSemaphorePermit) {
        let acker = PubSubAcker {
            inner: Arc::clone(&self.inner),
            sub: Arc::clone(&self.sub),
            ack_id: r.ack_id,
            message: r.message,
            leases: Arc::clone(&self.leases),
            settled: AtomicBool::new(false),
            permit: Mutex::new(Some(permit)),
        };
        let delivery = Delivery::new(r.payload, r.redelivered, Box::new(acker));
        // A closed channel drops the delivery, which gives the message back.
        let _ = self.tx.send(Ok(delivery));
    }
}

/// The driver's side of one delivery: acknowledge, change its deadline, or dead-letter it.
struct PubSubAcker {
    inner: Arc<Inner>,
    sub: Arc<SubInfo>,
    ack_id: String,
    message: PubsubMessage,
    leases: Arc<Leases>,
    settled: AtomicBool,
    permit: Mutex<Option<OwnedSemaphorePermit>>,
}

impl PubSubAcker {
    /// No more lease extension (before the request, so that an extension cannot undo a
    /// give-back), and the prefetch slot is free once the request is answered.
    fn begin(&self) {
        self.settled.store(true, Ordering::Release);
        self.leases.remove(&self.ack_id);
    }
    fn end(&self) {
        self.permit.lock().expect("permit poisoned").take();
    }
}

#[async_trait]
impl Acknowledger for PubSubAcker {
    async fn ack(&self) -> Result<()> {
        self.begin();
        let r = self
            .inner
            .settle(&self.sub.path, self.ack_id.clone(), Settle::Ack)
            .await;
        self.end();
        r
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        self.begin();
        let r = match nack {
            Nack::Requeue { delay: None } => {
                self.inner
                    .settle(&self.sub.path, self.ack_id.clone(), Settle::Deadline(0))
                    .await
            }
            Nack::Requeue { delay: Some(d) }
                if d.as_millis() <= u128::from(self.inner.config.max_hold_seconds) * 1000 =>
            {
                let secs = deadline_secs(d, self.inner.config.max_hold_seconds);
                self.inner
                    .settle(&self.sub.path, self.ack_id.clone(), Settle::Deadline(secs))
                    .await
            }
            Nack::Requeue { delay: Some(d) } => {
                // Longer than one deadline change can hold: publish it again with a
                // not-before attribute (held on receipt), then acknowledge this copy.
                let not_before = machinery_core::time::after(d).timestamp_millis();
                let mut message = PubsubMessage {
                    data: self.message.data.clone(),
                    attributes: self.message.attributes.clone(),
                    ordering_key: self.message.ordering_key.clone(),
                    ..PubsubMessage::default()
                };
                message
                    .attributes
                    .insert(NOT_BEFORE_ATTRIBUTE.to_owned(), not_before.to_string());
                match self.inner.topic_info(&self.sub.topic).await {
                    Ok(topic) => match self.inner.submit_publish(&topic, message).await {
                        Ok(_) => {
                            self.inner
                                .settle(&self.sub.path, self.ack_id.clone(), Settle::Ack)
                                .await
                        }
                        Err(e) => Err(e),
                    },
                    Err(e) => Err(e),
                }
            }
            Nack::DeadLetter { reason } => {
                self.inner
                    .dead_letter(&self.sub, &self.ack_id, &self.message, &reason)
                    .await
            }
        };
        self.end();
        r
    }
}

impl Drop for PubSubAcker {
    fn drop(&mut self) {
        if self.settled.load(Ordering::Acquire) {
            return;
        }
        // Neither acked nor nacked: give it back now rather than after the deadline (a
        // killed process cannot, and Pub/Sub brings it back after the ack deadline).
        self.leases.remove(&self.ack_id);
        self.inner.settle_detached(
            &self.sub.path,
            std::mem::take(&mut self.ack_id),
            Settle::Deadline(0),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MAX_ACK_DEADLINE;

    #[test]
    fn deadlines_round_up_and_cap() {
        assert_eq!(deadline_secs(Duration::from_millis(1), 600), 1);
        assert_eq!(deadline_secs(Duration::ZERO, 600), 1);
        assert_eq!(deadline_secs(Duration::from_millis(1500), 600), 2);
        assert_eq!(deadline_secs(Duration::from_secs(2), 600), 2);
        assert_eq!(deadline_secs(Duration::from_secs(5000), 600), 600);
        assert_eq!(MAX_ACK_DEADLINE, 600);
    }

    #[test]
    fn names() {
        assert_eq!(dead_topic_name("machinery_tasks"), "machinery_tasks.dead");
        assert_eq!(short_name("projects/p/topics/t1"), "t1");
        assert_eq!(short_name("t1"), "t1");
    }
}
