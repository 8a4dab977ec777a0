//! [`AmqpBroker`]: publish with pipelined publisher confirms, consume with manual acks,
//! delays through dead-lettering queues, dead letters in a queue of their own.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicQosOptions, ExchangeDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use machinery_core::{
    Acknowledger, Broker, BrokerCapabilities, ConsumeOptions, DeadLetter, Delivery, DeliveryStream,
    Error, Nack, Payload, Result, Signature, time,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, field_table, json_to_amqp, short};
use crate::connection::{Link, Session, reconnect_backoff};
use crate::error::{self, DRIVER};
use crate::topology::{
    self, Published, QueueSpec, dead_letter_args, delay_queue_args, header_string, header_text,
    json_properties, with_header,
};

/// Header carrying the reason of a dead-lettered message.
pub const DEAD_LETTER_REASON_HEADER: &str = "x-machinery-dead-letter-reason";
/// Header carrying the queue a dead-lettered message was consumed from.
pub const DEAD_LETTER_QUEUE_HEADER: &str = "x-machinery-dead-letter-queue";
/// Header carrying when the message was dead-lettered (RFC 3339).
pub const DEAD_LETTER_TIME_HEADER: &str = "x-machinery-dead-lettered-at";

/// A consumer that lived this long before failing starts its reconnection back-off afresh.
const STABLE_CONSUMER: Duration = Duration::from_secs(10);

/// The AMQP (RabbitMQ) broker, wire- and topology-compatible with Go Machinery.
///
/// Publishing uses one long-lived connection whose channel is in confirm mode: concurrent
/// `publish` calls are pipelined on it and each waits only for its own confirm. Every
/// consumer has its own channel on a second long-lived connection. Both reconnect by
/// themselves (failing over across the configured URLs in order) with back-off.
///
/// # Examples
///
/// ```no_run
/// # async fn example() -> machinery_core::Result<()> {
/// use machinery_amqp::{AmqpBroker, AmqpConfig};
/// use machinery_core::{Broker, Signature};
///
/// let config = AmqpConfig {
///     url: "amqp://guest:guest@localhost:5672/".into(),
///     ..AmqpConfig::default()
/// };
/// let broker = AmqpBroker::connect(config).await?;
/// broker.publish(&Signature::new("add")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AmqpBroker {
    inner: Arc<BrokerInner>,
}

struct BrokerInner {
    config: Arc<AmqpConfig>,
    declare_args: FieldTable,
    bind_args: FieldTable,
    urls: String,
    publisher: Link,
    consumer: Link,
    shutdown: CancellationToken,
}

impl fmt::Debug for AmqpBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpBroker")
            .field("urls", &self.inner.urls)
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl AmqpBroker {
    /// Connect to `config.url` (several URLs split by `config.multiple_broker_separator`,
    /// tried in order) and declare the exchange. Logs a warning when the configuration makes
    /// publishers fill a queue no worker reads (see the README).
    ///
    /// # Errors
    /// [`Error::UnknownScheme`] / [`Error::Config`] for a bad URL or configuration; a
    /// temporary [`Error::Backend`] when no URL can be reached; a permanent one when the
    /// exchange exists with another type (406).
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        config.validate()?;
        let parsed = config.urls()?;
        let redacted = parsed
            .iter()
            .map(|u| u.redacted.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        if let Some(warning) = config.unread_queue_warning() {
            tracing::warn!("{warning}");
        }
        let config = Arc::new(config);
        let publisher = Link::new("publisher", parsed.clone(), Arc::clone(&config))?;
        let consumer = Link::new("consumer", parsed, Arc::clone(&config))?;
        publisher.session().await?;
        Ok(AmqpBroker {
            inner: Arc::new(BrokerInner {
                declare_args: field_table("amqp.queue_declare_args", &config.queue_declare_args)?,
                bind_args: field_table("amqp.queue_binding_args", &config.queue_binding_args)?,
                config,
                urls: redacted,
                publisher,
                consumer,
                shutdown: CancellationToken::new(),
            }),
        })
    }

    /// The configuration in use.
    pub fn config(&self) -> &AmqpConfig {
        &self.inner.config
    }

    /// Publish `body` byte for byte with `routing_key`, declaring the producer queue as Go
    /// does: what a foreign (Go) producer, or a broken one, puts on the wire. For tooling
    /// and tests.
    ///
    /// # Errors
    /// When the broker cannot be reached within the publish retry timeout.
    pub async fn publish_raw(&self, routing_key: &str, body: &[u8]) -> Result<()> {
        self.inner
            .publish_now(routing_key, body, json_properties(0, None))
            .await
    }

    /// The messages dead-lettered from `queue` (kept in queue `<queue>.dead`), oldest first,
    /// with their reasons, without removing them.
    ///
    /// # Errors
    /// When the broker cannot be reached.
    pub async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        let dlq = dead_letter_queue(queue);
        let session = self.inner.publisher.session().await?;
        let listed = session
            .guard(
                "a dead-letter listing",
                topology::list_queue(&session, &dlq),
            )
            .await?;
        Ok(listed
            .into_iter()
            .map(|d| DeadLetter {
                reason: header_text(&d.properties, DEAD_LETTER_REASON_HEADER).unwrap_or_default(),
                body: d.data,
            })
            .collect())
    }

    /// The dead-letter exchange: `<exchange>.dead` (direct, durable).
    pub fn dead_letter_exchange(&self) -> String {
        self.inner.dead_letter_exchange()
    }

    /// The dead-letter queue of `queue`: `<queue>.dead` (durable, bound to the dead-letter
    /// exchange with routing key `<queue>`).
    pub fn dead_letter_queue(&self, queue: &str) -> String {
        dead_letter_queue(queue)
    }
}

fn dead_letter_queue(queue: &str) -> String {
    format!("{queue}.dead")
}

/// Milliseconds until `eta` rounded up (plus one so that a server clock read at millisecond
/// precision never lets it out early), then up to a step of at most a tenth of the delay and
/// at most one second, so that tasks due at nearly the same time share one delay queue (Go
/// declares one queue per distinct millisecond, which makes a burst of delayed tasks create
/// thousands of queues); `None` when it is not in the future.
fn delay_until(eta: &machinery_core::Timestamp) -> Option<i64> {
    let micros = eta.signed_duration_since(time::now()).num_microseconds()?;
    (micros > 0).then(|| quantize((micros + 999) / 1000 + 1))
}

fn quantize(ms: i64) -> i64 {
    let step = match ms {
        ..=99 => 1,
        100..=999 => 10,
        1000..=9999 => 100,
        _ => 1000,
    };
    (ms + step - 1) / step * step
}

fn duration_ms(d: Duration) -> i64 {
    i64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(i64::MAX)
}

impl BrokerInner {
    fn exchange(&self) -> &str {
        &self.config.exchange
    }

    fn dead_letter_exchange(&self) -> String {
        if self.config.exchange.is_empty() {
            "machinery.dead".to_owned()
        } else {
            format!("{}.dead", self.config.exchange)
        }
    }

    fn bind_args(&self) -> FieldTable {
        self.bind_args.clone()
    }

    fn declare_args(&self) -> FieldTable {
        self.declare_args.clone()
    }

    /// The queue a Go producer declares before publishing with `routing_key`: for a direct
    /// exchange a queue named after the routing key bound with it, otherwise the default
    /// queue bound with the binding key.
    fn producer_queue(&self, routing_key: &str) -> QueueSpec {
        let (name, key) = if self.config.is_direct() {
            (routing_key, routing_key)
        } else {
            (
                self.config.default_queue.as_str(),
                self.config.effective_binding_key(),
            )
        };
        QueueSpec {
            name: name.to_owned(),
            durable: true,
            auto_delete: false,
            args: self.declare_args(),
            bind: Some((self.exchange().to_owned(), key.to_owned(), self.bind_args())),
            trust_for: None,
        }
    }

    /// Declare the worker queue `queue` with Go's flags and arguments (so that a queue Go
    /// declared is reused), bind it with exactly the routing keys of the tasks sent to it
    /// ([`AmqpConfig::worker_binding_keys`]), and remove the bindings that would also send it
    /// the default queue's tasks ([`AmqpConfig::stale_binding_keys`]).
    async fn declare_worker_queue(&self, channel: &Channel, queue: &str) -> Result<()> {
        let keys = self.config.worker_binding_keys(queue);
        let mut spec = QueueSpec {
            name: queue.to_owned(),
            durable: true,
            auto_delete: false,
            args: self.declare_args(),
            bind: None,
            trust_for: None,
        };
        for (i, key) in keys.iter().enumerate() {
            spec.bind = Some((self.exchange().to_owned(), key.clone(), self.bind_args()));
            if i == 0 {
                topology::declare_on(channel, &spec).await?;
            } else {
                topology::bind_on(channel, &spec).await?;
            }
        }
        if self.exchange().is_empty() {
            return Ok(());
        }
        for key in self.config.stale_binding_keys(queue) {
            topology::unbind_on(channel, queue, self.exchange(), &key, self.bind_args()).await?;
            tracing::debug!(
                queue,
                routing_key = %key,
                "amqp: custom queue not bound with the default routing key (a Go worker binds it so)"
            );
        }
        Ok(())
    }

    /// Declare `spec` then publish; when the message comes back unroutable (the queue was
    /// deleted behind our back), declare again and publish once more.
    async fn publish_declared(
        &self,
        spec: &QueueSpec,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: &BasicProperties,
    ) -> Result<()> {
        self.publisher
            .retrying("publish", |session| async move {
                match topology::publish_to_declared(
                    &session,
                    spec,
                    exchange,
                    routing_key,
                    body,
                    properties,
                )
                .await?
                {
                    Published::Stored => Ok(()),
                    Published::Unroutable => Err(Error::Backend {
                        driver: DRIVER,
                        message: format!(
                            "no queue is bound to exchange `{exchange}` with routing key \
                             `{routing_key}`; the message was not stored"
                        ),
                        temporary: false,
                        source: None,
                    }),
                }
            })
            .await
    }

    async fn publish_now(
        &self,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<()> {
        let spec = self.producer_queue(routing_key);
        self.publish_declared(&spec, self.exchange(), routing_key, body, &properties)
            .await
    }

    /// Park a message for `delay_ms` in a queue that dead-letters it to `target_exchange` /
    /// `target_key` afterwards: Go's `delay.<ms>.<exchange>.<routing key>` queue, or the
    /// single `DelayedQueue` with a per-message expiration.
    async fn publish_delayed(
        &self,
        target_exchange: &str,
        target_key: &str,
        body: &[u8],
        properties: BasicProperties,
        delay_ms: i64,
    ) -> Result<()> {
        let (spec, properties) = if self.config.delayed_queue.is_empty() {
            let name = format!("delay.{delay_ms}.{target_exchange}.{target_key}");
            short("delay queue name", &name)?;
            let trust = Duration::from_millis(u64::try_from(delay_ms / 2).unwrap_or(0));
            (
                QueueSpec {
                    bind: Some((self.exchange().to_owned(), name.clone(), self.bind_args())),
                    name,
                    durable: true,
                    auto_delete: self.config.auto_delete,
                    args: delay_queue_args(target_exchange, target_key, delay_ms),
                    trust_for: Some(trust),
                },
                properties,
            )
        } else {
            let name = self.config.delayed_queue.clone();
            (
                QueueSpec {
                    bind: Some((self.exchange().to_owned(), name.clone(), self.bind_args())),
                    name,
                    durable: true,
                    auto_delete: self.config.auto_delete,
                    args: dead_letter_args(target_exchange, target_key),
                    trust_for: None,
                },
                properties.with_expiration(delay_ms.to_string().into()),
            )
        };
        // Without an exchange the default exchange routes by queue name.
        let routing_key = spec.name.clone();
        self.publish_declared(&spec, self.exchange(), &routing_key, body, &properties)
            .await
    }

    async fn ensure_dead_letter_exchange(&self, session: &Arc<Session>) -> Result<()> {
        let dlx = self.dead_letter_exchange();
        let key = format!("x:{dlx}");
        if session.is_declared(&key) {
            return Ok(());
        }
        let ch = session.channel().await?;
        ch.exchange_declare(
            short("dead-letter exchange", &dlx)?,
            lapin::ExchangeKind::Direct,
            ExchangeDeclareOptions {
                passive: false,
                durable: true,
                auto_delete: false,
                internal: false,
                nowait: false,
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| error::amqp(format!("declare exchange `{dlx}`"), e))?;
        session.mark_declared(key, None);
        Ok(())
    }

    /// Keep `body` in `<queue>.dead` with the reason in a header.
    async fn dead_letter(
        &self,
        queue: &str,
        body: &[u8],
        properties: &BasicProperties,
        reason: &str,
    ) -> Result<()> {
        let dlx = self.dead_letter_exchange();
        let spec = QueueSpec {
            name: dead_letter_queue(queue),
            durable: true,
            auto_delete: false,
            args: FieldTable::default(),
            bind: Some((dlx.clone(), queue.to_owned(), FieldTable::default())),
            trust_for: None,
        };
        let mut headers = with_header(
            properties.headers().as_ref(),
            DEAD_LETTER_REASON_HEADER,
            header_string(reason),
        );
        headers.insert(DEAD_LETTER_QUEUE_HEADER.into(), header_string(queue));
        headers.insert(
            DEAD_LETTER_TIME_HEADER.into(),
            header_string(&time::format(&time::now())),
        );
        let properties = properties.clone().with_headers(headers);
        self.publisher
            .retrying("dead-letter exchange declaration", |session| async move {
                self.ensure_dead_letter_exchange(&session).await
            })
            .await?;
        self.publish_declared(&spec, &dlx, queue, body, &properties)
            .await
    }

    /// One attempt at opening a consumer on `queue`: declare it as Go's worker does, set the
    /// prefetch, start consuming.
    async fn start_consumer(&self, queue: &str, options: &ConsumeOptions) -> Result<Active> {
        let session = self.consumer.session().await?;
        let channel = session.own_channel().await?;
        let prefetch = self.config.prefetch_count.unwrap_or(options.prefetch);
        let attempt = async {
            self.declare_worker_queue(&channel, queue).await?;
            channel
                .basic_qos(prefetch, BasicQosOptions { global: false })
                .await
                .map_err(|e| error::amqp("set the prefetch (basic.qos)", e))?;
            channel
                .basic_consume(
                    short("queue name", queue)?,
                    short("consumer tag", &options.consumer_tag)?,
                    BasicConsumeOptions {
                        no_local: false,
                        no_ack: false,
                        exclusive: false,
                        nowait: false,
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| error::amqp(format!("consume `{queue}`"), e))
        };
        match session.guard("the consumer set-up", attempt).await {
            Ok(consumer) => Ok(Active {
                session_id: session.id,
                session,
                channel,
                consumer,
            }),
            Err(e) => {
                if !session.healthy() {
                    self.consumer.invalidate(session.id);
                }
                Err(e)
            }
        }
    }
}

/// A running consumer: its channel and lapin's stream of deliveries.
struct Active {
    session_id: u64,
    session: Arc<Session>,
    channel: Channel,
    consumer: Consumer,
}

/// The driver's side of one delivery.
struct AmqpAcker {
    acker: lapin::Acker,
    // Keeps the channel open while the delivery is outstanding, even after its consumer
    // stream is gone; once every such delivery is settled or dropped the channel closes
    // and RabbitMQ requeues whatever was not acknowledged.
    _channel: Channel,
    /// The session's [`Session::dead`]: a settlement gives up when the connection is gone.
    dead: CancellationToken,
    broker: Arc<BrokerInner>,
    queue: Arc<str>,
    exchange: String,
    routing_key: String,
    properties: BasicProperties,
    body: Vec<u8>,
}

impl AmqpAcker {
    fn settled(&self, what: &str, done: std::result::Result<bool, lapin::Error>) -> Result<()> {
        match done {
            Ok(true) => Ok(()),
            Ok(false) => Err(error::temporary(format!(
                "cannot {what}: the channel closed, the message will be delivered again"
            ))),
            Err(e) => Err(error::amqp(what.to_owned(), e)),
        }
    }

    /// `done`, or a temporary error as soon as the connection is gone.
    async fn settle(
        &self,
        what: &str,
        done: impl std::future::Future<Output = std::result::Result<bool, lapin::Error>>,
    ) -> Result<()> {
        tokio::select! {
            biased;
            done = done => self.settled(what, done),
            _ = self.dead.cancelled() => Err(error::temporary(format!(
                "cannot {what}: the connection was lost, the message will be delivered again"
            ))),
        }
    }

    async fn ack_now(&self) -> Result<()> {
        self.settle(
            "ack",
            self.acker
                .ack(lapin::options::BasicAckOptions { multiple: false }),
        )
        .await
    }
}

#[async_trait]
impl Acknowledger for AmqpAcker {
    async fn ack(&self) -> Result<()> {
        self.ack_now().await
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        match nack {
            Nack::Requeue { delay } if delay.is_some_and(|d| d >= Duration::from_millis(1)) => {
                let delay_ms = duration_ms(delay.unwrap_or_default());
                // The same message again, minus what the trip through the delay queue must
                // not carry (an expiration of its own).
                let original = &self.properties;
                let mut properties = BasicProperties::default()
                    .with_content_type(
                        original
                            .content_type()
                            .clone()
                            .unwrap_or_else(|| topology::CONTENT_TYPE.into()),
                    )
                    .with_delivery_mode(topology::PERSISTENT);
                if let Some(headers) = original.headers().clone() {
                    properties = properties.with_headers(headers);
                }
                if let Some(priority) = *original.priority() {
                    properties = properties.with_priority(priority);
                }
                self.broker
                    .publish_delayed(
                        &self.exchange,
                        &self.routing_key,
                        &self.body,
                        properties,
                        delay_ms,
                    )
                    .await?;
                self.ack_now().await
            }
            Nack::Requeue { .. } => {
                self.settle(
                    "requeue (basic.nack)",
                    self.acker.nack(lapin::options::BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    }),
                )
                .await
            }
            Nack::DeadLetter { reason } => {
                self.broker
                    .dead_letter(&self.queue, &self.body, &self.properties, &reason)
                    .await?;
                tracing::warn!(queue = %self.queue, %reason, "amqp: message dead-lettered");
                self.ack_now().await
            }
        }
    }
}

/// Drive one consumer: forward deliveries, and when the channel or connection fails, report
/// it once on the stream, pause (doubling), reconnect and resume.
async fn run_consumer(
    broker: Arc<BrokerInner>,
    queue: Arc<str>,
    options: ConsumeOptions,
    first: Active,
    tx: mpsc::Sender<Result<Delivery>>,
) {
    let mut backoff = reconnect_backoff(&broker.config);
    let mut current = Some(first);
    loop {
        let active = match current.take() {
            Some(a) => a,
            None => match broker.start_consumer(&queue, &options).await {
                Ok(a) => {
                    tracing::info!(queue = %queue, "amqp consumer resumed");
                    a
                }
                Err(e) => {
                    if !report_and_pause(&broker, &queue, &tx, e, &mut backoff).await {
                        return;
                    }
                    continue;
                }
            },
        };
        let started = Instant::now();
        let Some(e) = forward(&broker, &queue, active, &tx).await else {
            return;
        };
        if started.elapsed() >= STABLE_CONSUMER {
            backoff.reset();
        }
        if !report_and_pause(&broker, &queue, &tx, e, &mut backoff).await {
            return;
        }
    }
}

/// Send the error to the stream and sleep; false when the consumer must stop.
async fn report_and_pause(
    broker: &BrokerInner,
    queue: &str,
    tx: &mpsc::Sender<Result<Delivery>>,
    e: Error,
    backoff: &mut machinery_core::Backoff,
) -> bool {
    let pause = backoff.next_delay();
    tracing::warn!(queue, error = %e, retry_in = ?pause, "amqp consumer interrupted");
    tokio::select! {
        sent = tx.send(Err(e)) => if sent.is_err() { return false },
        _ = broker.shutdown.cancelled() => return false,
    }
    tokio::select! {
        _ = tokio::time::sleep(pause) => true,
        _ = tx.closed() => false,
        _ = broker.shutdown.cancelled() => false,
    }
}

/// Forward deliveries until the consumer fails (`Some(error)`) or must stop (`None`).
async fn forward(
    broker: &Arc<BrokerInner>,
    queue: &Arc<str>,
    mut active: Active,
    tx: &mpsc::Sender<Result<Delivery>>,
) -> Option<Error> {
    loop {
        let item = tokio::select! {
            biased;
            _ = broker.shutdown.cancelled() => return None,
            _ = tx.closed() => return None,
            item = active.consumer.next() => item,
            // lapin may not end the stream of a consumer whose connection died.
            _ = active.session.dead().cancelled() => {
                broker.consumer.invalidate(active.session_id);
                return Some(error::temporary(format!(
                    "the connection of the consumer of `{queue}` was lost"
                )));
            }
        };
        let failure = match item {
            Some(Ok(d)) => {
                let payload = Payload::decode(&d.data);
                let acker = AmqpAcker {
                    acker: d.acker,
                    _channel: active.channel.clone(),
                    dead: active.session.dead().clone(),
                    broker: Arc::clone(broker),
                    queue: Arc::clone(queue),
                    exchange: d.exchange.to_string(),
                    routing_key: d.routing_key.to_string(),
                    properties: d.properties,
                    body: d.data,
                };
                let delivery = Delivery::new(payload, d.redelivered, Box::new(acker));
                tokio::select! {
                    sent = tx.send(Ok(delivery)) => if sent.is_err() { return None },
                    _ = broker.shutdown.cancelled() => return None,
                }
                continue;
            }
            Some(Err(e)) => error::amqp(format!("consume `{queue}`"), e),
            None => error::temporary(format!(
                "the consumer of `{queue}` was cancelled (channel closed or queue deleted)"
            )),
        };
        if !active.session.healthy() {
            broker.consumer.invalidate(active.session_id);
        }
        return Some(failure);
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> BrokerCapabilities {
        BrokerCapabilities {
            delayed_delivery: true,
            pending_tasks: true,
            priority: self
                .inner
                .config
                .queue_declare_args
                .contains_key("x-max-priority"),
            dead_letter: true,
            fifo: true,
            redelivers_unacked: true,
            // max_message_bytes: the server's max_message_size (RabbitMQ 3.x: 128 MiB,
            // 4.x: 16 MiB) applies; delayed_tasks: not listable.
            ..Default::default()
        }
    }

    fn default_routing_key(&self) -> String {
        self.inner.config.default_routing_key().to_owned()
    }

    async fn publish(&self, sig: &Signature) -> Result<()> {
        let mut owned;
        let sig = if sig.routing_key.is_empty() {
            owned = sig.clone();
            owned.routing_key = self.default_routing_key();
            &owned
        } else {
            sig
        };
        let body = sig.to_json()?;
        let headers = sig.headers.as_ref().map(|h| {
            let mut t = FieldTable::default();
            for (k, v) in h {
                if let Ok(k) = lapin::types::ShortString::try_new(k.as_str()) {
                    t.insert(k, json_to_amqp(v));
                }
            }
            t
        });
        let properties = json_properties(sig.priority, headers);
        match sig.eta.as_ref().and_then(delay_until) {
            Some(delay_ms) => {
                self.inner
                    .publish_delayed(
                        self.inner.exchange(),
                        &sig.routing_key,
                        &body,
                        properties,
                        delay_ms,
                    )
                    .await
            }
            None => {
                self.inner
                    .publish_now(&sig.routing_key, &body, properties)
                    .await
            }
        }
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<DeliveryStream> {
        if self.inner.shutdown.is_cancelled() {
            return Err(Error::Closed("amqp broker"));
        }
        short("queue name", queue)?;
        let first = self.inner.start_consumer(queue, &options).await?;
        let (tx, rx) = mpsc::channel(1);
        tokio::spawn(run_consumer(
            Arc::clone(&self.inner),
            Arc::from(queue),
            options,
            first,
            tx,
        ));
        Ok(Box::pin(futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })))
    }

    async fn pending_tasks(&self, queue: &str) -> Result<Vec<Signature>> {
        let session = self.inner.publisher.session().await?;
        let listed = session
            .guard("a queue listing", topology::list_queue(&session, queue))
            .await?;
        Ok(listed
            .into_iter()
            .filter_map(|d| match Payload::decode(&d.data) {
                Payload::Task(sig) => Some(*sig),
                Payload::Malformed { reason, .. } => {
                    tracing::warn!(queue, %reason, "amqp: undecodable message in the queue");
                    None
                }
            })
            .collect())
    }

    async fn delayed_tasks(&self) -> Result<Vec<Signature>> {
        Err(Error::Unsupported {
            driver: DRIVER,
            operation: "delayed_tasks",
        })
    }

    async fn purge_queue(&self, queue: &str) -> Result<()> {
        let session = self.inner.publisher.session().await?;
        session
            .guard("a queue purge", topology::purge(&session, queue))
            .await
    }

    async fn close(&self) -> Result<()> {
        self.inner.shutdown.cancel();
        self.inner.publisher.close().await;
        self.inner.consumer.close().await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eta_delay_rounds_up_and_ignores_the_past() {
        let past = time::now() - chrono::Duration::seconds(1);
        assert_eq!(delay_until(&past), None);
        let soon = time::now() + chrono::Duration::milliseconds(1500);
        let ms = delay_until(&soon).unwrap();
        assert!((1490..=1600).contains(&ms), "{ms}");
        assert_eq!(ms % 100, 0);
        assert_eq!(quantize(99), 99);
        assert_eq!(quantize(101), 110);
        assert_eq!(quantize(1001), 1100);
        assert_eq!(quantize(10_001), 11_000);
        assert_eq!(quantize(3_600_000), 3_600_000);
        assert_eq!(duration_ms(Duration::from_micros(1001)), 2);
        assert_eq!(duration_ms(Duration::from_secs(1)), 1000);
    }
}
