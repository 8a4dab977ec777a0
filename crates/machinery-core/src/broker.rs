//! The broker contract: publish signatures, consume a stream of deliveries with explicit
//! acknowledgement.
//!
//! # Required behaviours
//!
//! Every broker passes the conformance suite in `machinery-testkit`; the case names are:
//!
//! - `publish_then_consume_roundtrips`: a published signature is consumed unchanged.
//! - `ack_removes_message`: an acked delivery is never delivered again.
//! - `nack_requeues`: `requeue` makes the message available again.
//! - `requeue_with_delay_is_not_early`: `requeue(Some(d))` is not delivered before `d`.
//! - `unacked_is_redelivered_after_consumer_dropped`: a delivery neither acked nor nacked
//!   when its consumer stream is dropped is delivered to another consumer.
//! - `eta_is_respected`: a signature with a future ETA is never delivered early.
//! - `pending_tasks_are_listed_in_order` (capability `pending_tasks`).
//! - `delayed_tasks_are_listed` (capability `delayed_tasks`).
//! - `competing_consumers_never_share_a_message`.
//! - `undecodable_body_surfaces_as_malformed_delivery`: bytes that are not a signature reach
//!   the consumer as [`Payload::Malformed`], never a panic nor a silent drop, and
//!   `dead_letter` keeps them with the reason.
//! - `fifo_order_is_kept`: messages of one queue are delivered in publish order to a single
//!   consumer (capability `fifo`).
//! - `purge_queue_empties_it`: `purge_queue` removes every waiting message.

use std::fmt;
use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use futures_core::Stream;

use crate::{Result, Signature};

/// What a broker can do. Drivers fill it in; core and the testkit check it instead of the type.
///
/// Every field defaults to "cannot"; a driver names what it can and ends with
/// `..Default::default()`, so a new capability edits no driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BrokerCapabilities {
    /// Honours a future ETA without blocking the sender.
    pub delayed_delivery: bool,
    /// `pending_tasks` is implemented.
    pub pending_tasks: bool,
    /// `delayed_tasks` is implemented.
    pub delayed_tasks: bool,
    /// Honours `Signature.priority`.
    pub priority: bool,
    /// Undecodable messages are kept in a dead-letter place with the reason.
    pub dead_letter: bool,
    /// A single consumer sees one queue's messages in publish order.
    pub fifo: bool,
    /// Deliveries a dead consumer held are delivered again.
    pub redelivers_unacked: bool,
    /// Largest message body the broker accepts, if it has a limit.
    pub max_message_bytes: Option<usize>,
}

/// Options for one consumer.
#[derive(Debug, Clone)]
pub struct ConsumeOptions {
    /// How many unacknowledged deliveries the broker may hand out ahead (AMQP prefetch).
    /// The worker sets it from its concurrency.
    pub prefetch: u16,
    /// A label for the consumer (shows up in server-side tooling).
    pub consumer_tag: String,
}

impl Default for ConsumeOptions {
    fn default() -> Self {
        ConsumeOptions {
            prefetch: 1,
            consumer_tag: "machinery".to_owned(),
        }
    }
}

/// The body of a delivery.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A decoded signature.
    Task(Box<Signature>),
    /// Bytes that are not a signature.
    Malformed {
        /// The body as received.
        raw: Vec<u8>,
        /// Why it could not be decoded.
        reason: String,
    },
}

impl Payload {
    /// Decode a message body; never fails, malformed bodies become [`Payload::Malformed`]:
    /// bytes that are not a JSON object, and signatures without a task name (at any depth).
    pub fn decode(raw: &[u8]) -> Payload {
        match Signature::from_json(raw) {
            Ok(sig) => match sig.check_names() {
                Ok(()) => Payload::Task(Box::new(sig)),
                Err(reason) => Payload::Malformed {
                    raw: raw.to_vec(),
                    reason: format!("cannot run this task message: {reason}"),
                },
            },
            Err(e) => Payload::Malformed {
                raw: raw.to_vec(),
                reason: e.to_string(),
            },
        }
    }
}

/// What to do with a delivery that was not processed to the end.
#[derive(Debug, Clone, PartialEq)]
pub enum Nack {
    /// Put it back, optionally no earlier than `delay` from now.
    Requeue {
        /// Minimum time before it is delivered again (best effort on brokers without delays).
        delay: Option<Duration>,
    },
    /// Keep it aside (dead-letter list / queue) with the reason; it is not delivered again.
    DeadLetter {
        /// Why.
        reason: String,
    },
}

/// The driver's side of one delivery.
#[async_trait]
pub trait Acknowledger: Send + Sync {
    /// The message was processed; remove it for good.
    async fn ack(&self) -> Result<()>;
    /// The message was not processed.
    async fn nack(&self, nack: Nack) -> Result<()>;
    /// The message was processed and its task failed for good (FAILURE is stored, its
    /// error callbacks are sent). The default removes it, as [`ack`](Self::ack) does; a
    /// broker with dead-lettering of its own for failed messages may leave it there instead
    /// (SQS, for a signature with `StopTaskDeletionOnError`: the queue's redrive policy
    /// then moves it to its dead-letter queue).
    async fn ack_failed(&self) -> Result<()> {
        self.ack().await
    }
}

/// One message handed to a consumer. It must be acked or nacked; a delivery that is dropped
/// without either is redelivered once its consumer goes away.
pub struct Delivery {
    /// The decoded body.
    pub payload: Payload,
    /// Whether the broker knows it was delivered before.
    pub redelivered: bool,
    acker: Box<dyn Acknowledger>,
}

impl fmt::Debug for Delivery {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Delivery")
            .field("payload", &self.payload)
            .field("redelivered", &self.redelivered)
            .finish_non_exhaustive()
    }
}

impl Delivery {
    /// A delivery with its driver-side acknowledger.
    pub fn new(payload: Payload, redelivered: bool, acker: Box<dyn Acknowledger>) -> Self {
        Delivery {
            payload,
            redelivered,
            acker,
        }
    }

    /// The signature, if the body decoded.
    pub fn signature(&self) -> Option<&Signature> {
        match &self.payload {
            Payload::Task(sig) => Some(sig),
            Payload::Malformed { .. } => None,
        }
    }

    /// Acknowledge: processing is complete and its outcome stored.
    ///
    /// # Errors
    /// When the broker cannot be reached; the message is then delivered again later.
    ///
    /// # Cancel safety
    /// Not cancel safe: if cancelled the ack may or may not have happened.
    pub async fn ack(self) -> Result<()> {
        self.acker.ack().await
    }

    /// Acknowledge a task that failed for good: its FAILURE is stored. Removes the message
    /// like [`ack`](Self::ack), except where the broker leaves failed messages to its own
    /// dead-lettering ([`Acknowledger::ack_failed`]).
    ///
    /// # Errors
    /// When the broker cannot be reached; the message is then delivered again later.
    pub async fn ack_failed(self) -> Result<()> {
        self.acker.ack_failed().await
    }

    /// Put the message back for another attempt, no earlier than `delay` from now.
    ///
    /// # Errors
    /// When the broker cannot be reached; the message is then delivered again later.
    pub async fn requeue(self, delay: Option<Duration>) -> Result<()> {
        self.acker.nack(Nack::Requeue { delay }).await
    }

    /// Set the message aside with a reason; it is not delivered again.
    ///
    /// # Errors
    /// When the broker cannot be reached; the message is then delivered again later.
    pub async fn dead_letter(self, reason: impl Into<String>) -> Result<()> {
        self.acker
            .nack(Nack::DeadLetter {
                reason: reason.into(),
            })
            .await
    }
}

/// A stream of deliveries. An `Err` item reports a (usually temporary) problem; the stream
/// keeps going after it. The stream ends when the broker is closed.
pub type DeliveryStream = Pin<Box<dyn Stream<Item = Result<Delivery>> + Send>>;

/// A message broker.
///
/// Object safe: the server holds an `Arc<dyn Broker>`. See the module docs for the required
/// behaviours.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// The driver name, e.g. `redis`.
    fn driver(&self) -> &'static str;

    /// What this broker can do.
    fn capabilities(&self) -> BrokerCapabilities;

    /// The routing key used when a signature has none (Go: the default queue for Redis, the
    /// binding key for an AMQP direct exchange).
    fn default_routing_key(&self) -> String;

    /// Publish one signature. A future ETA is handled by the broker's delay mechanism; the
    /// call never waits for the ETA.
    ///
    /// # Errors
    /// When the broker cannot be reached or refuses the message.
    async fn publish(&self, sig: &Signature) -> Result<()>;

    /// Start consuming `queue`. Deliveries are pulled lazily: the broker hands out at most
    /// `options.prefetch` unacknowledged deliveries ahead of the consumer.
    ///
    /// # Errors
    /// When the queue cannot be consumed at all (connection refused at start).
    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<DeliveryStream>;

    /// Messages waiting in `queue`, oldest first, without removing or reordering them.
    ///
    /// # Errors
    /// [`crate::Error::Unsupported`] when `capabilities().pending_tasks` is false.
    async fn pending_tasks(&self, queue: &str) -> Result<Vec<Signature>>;

    /// Messages waiting for their ETA, soonest first.
    ///
    /// # Errors
    /// [`crate::Error::Unsupported`] when `capabilities().delayed_tasks` is false.
    async fn delayed_tasks(&self) -> Result<Vec<Signature>>;

    /// Stop the consumers started with `consumer_tag` (a worker calls this when it stops):
    /// they take no new message, and what they took but did not hand out goes back. Settling
    /// a delivery already handed out still works. Resolves once each of them has given back
    /// what it still holds, which it does when its stream and every delivery it handed out
    /// are gone (so await this together with dropping the stream), or after the broker's own
    /// time limit. The default does nothing: for brokers whose server returns unsettled
    /// messages when the consumer goes away.
    ///
    /// # Errors
    /// When the give-back fails; the messages then return when the broker's lease ends.
    async fn stop_consuming(&self, consumer_tag: &str) -> Result<()> {
        let _ = consumer_tag;
        Ok(())
    }

    /// Remove every message from `queue` (tests and tooling).
    ///
    /// # Errors
    /// When the broker cannot be reached.
    async fn purge_queue(&self, queue: &str) -> Result<()>;

    /// Stop background work and close connections. Consumers' streams end.
    ///
    /// # Errors
    /// When closing fails; the broker is unusable either way.
    async fn close(&self) -> Result<()>;
}
