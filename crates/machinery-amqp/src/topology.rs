//! Declarations and publishing with exactly Go Machinery's flags, arguments and AMQP field
//! types (RabbitMQ answers 406 PRECONDITION_FAILED to any difference), shared by the broker
//! and the backend.

use std::time::Duration;

use lapin::options::{
    BasicGetOptions, BasicNackOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions, QueuePurgeOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use machinery_core::Result;

use crate::config::short;
use crate::connection::Session;
use crate::error;

/// Content type of every message Go Machinery publishes.
pub(crate) const CONTENT_TYPE: &str = "application/json";
/// AMQP delivery mode "persistent".
pub(crate) const PERSISTENT: u8 = 2;

/// One queue declaration and its binding to an exchange.
#[derive(Debug, Clone)]
pub(crate) struct QueueSpec {
    pub(crate) name: String,
    pub(crate) durable: bool,
    pub(crate) auto_delete: bool,
    pub(crate) args: FieldTable,
    /// Exchange and routing key to bind with; `None` (or an empty exchange, which cannot be
    /// bound) = no binding.
    pub(crate) bind: Option<(String, String, FieldTable)>,
    /// How long the declaration may be trusted without declaring again: `None` = as long as
    /// the connection lives (durable queues), `Some` for queues that expire.
    pub(crate) trust_for: Option<Duration>,
}

/// `x-message-ttl` and `x-expires` as AMQP int32 (`I`), Go's result queues.
pub(crate) fn result_queue_args(ttl_ms: i32) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(ttl_ms));
    t.insert("x-expires".into(), AMQPValue::LongInt(ttl_ms));
    t
}

/// A result queue as Go's AMQP backend declares it: not durable, auto-delete, TTL args,
/// bound to `exchange` with its own name.
pub(crate) fn result_queue(name: &str, exchange: &str, ttl_ms: i32) -> QueueSpec {
    QueueSpec {
        name: name.to_owned(),
        durable: false,
        auto_delete: true,
        args: result_queue_args(ttl_ms),
        bind: Some((exchange.to_owned(), name.to_owned(), FieldTable::default())),
        trust_for: Some(trust_window(ttl_ms)),
    }
}

/// Half the queue's expiry (it may vanish when unused that long), at most five minutes.
pub(crate) fn trust_window(expires_ms: i32) -> Duration {
    Duration::from_millis(u64::try_from(expires_ms / 2).unwrap_or(0)).min(Duration::from_secs(300))
}

/// The per-delay queue Go declares: dead-lettering to `exchange` / `routing_key`,
/// `x-message-ttl` and `x-expires` as AMQP int64 (`l`).
pub(crate) fn delay_queue_args(exchange: &str, routing_key: &str, delay_ms: i64) -> FieldTable {
    let mut t = dead_letter_args(exchange, routing_key);
    t.insert("x-message-ttl".into(), AMQPValue::LongLongInt(delay_ms));
    t.insert(
        "x-expires".into(),
        AMQPValue::LongLongInt(delay_ms.saturating_mul(2)),
    );
    t
}

/// `x-dead-letter-exchange` and `x-dead-letter-routing-key` as long strings (`S`).
pub(crate) fn dead_letter_args(exchange: &str, routing_key: &str) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from(exchange)),
    );
    t.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(routing_key)),
    );
    t
}

/// Message properties of a task or state: JSON, persistent; priority only when not 0 and
/// headers only when not empty, as Go writes them.
pub(crate) fn json_properties(priority: u8, headers: Option<FieldTable>) -> BasicProperties {
    let mut p = BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_delivery_mode(PERSISTENT);
    if let Some(h) = headers.filter(|h| !h.inner().is_empty()) {
        p = p.with_headers(h);
    }
    if priority != 0 {
        p = p.with_priority(priority);
    }
    p
}

/// Declare (and bind) `spec` on a pooled channel unless this connection already did and
/// the declaration can still be trusted.
pub(crate) async fn ensure_queue(
    session: &std::sync::Arc<Session>,
    spec: &QueueSpec,
) -> Result<()> {
    let key = declared_key(spec);
    if session.is_declared(&key) {
        return Ok(());
    }
    let _once = session.declaring(&key).await;
    if session.is_declared(&key) {
        return Ok(());
    }
    let mut ch = session.channel().await?;
    declare_on(&ch, spec).await?;
    ch.keep();
    session.mark_declared(key, spec.trust_for);
    Ok(())
}

fn declared_key(spec: &QueueSpec) -> String {
    match &spec.bind {
        Some((ex, rk, _)) => format!("q:{}\u{1}{}\u{1}{}", spec.name, ex, rk),
        None => format!("q:{}", spec.name),
    }
}

/// The declaration-memory key of a queue name (to forget all its bindings at once).
pub(crate) fn declared_prefix(queue: &str) -> String {
    format!("q:{queue}\u{1}")
}

/// Forget every declaration of `queue` this session remembers (it was deleted, or expired).
pub(crate) fn forget_queue(session: &Session, queue: &str) {
    session.forget_prefix(&declared_prefix(queue));
    session.forget(&format!("q:{queue}"));
}

/// Declare and bind on `ch`, waiting for the server's answers.
pub(crate) async fn declare_on(ch: &Channel, spec: &QueueSpec) -> Result<()> {
    ch.queue_declare(
        short("queue name", &spec.name)?,
        QueueDeclareOptions {
            passive: false,
            durable: spec.durable,
            exclusive: false,
            auto_delete: spec.auto_delete,
            nowait: false,
        },
        spec.args.clone(),
    )
    .await
    .map_err(|e| error::amqp(format!("declare queue `{}`", spec.name), e))?;
    bind_on(ch, spec).await
}

/// Bind `spec`'s queue as its `bind` says (nothing without one or with the empty exchange).
pub(crate) async fn bind_on(ch: &Channel, spec: &QueueSpec) -> Result<()> {
    if let Some((exchange, routing_key, args)) = &spec.bind
        && !exchange.is_empty()
    {
        ch.queue_bind(
            short("queue name", &spec.name)?,
            short("exchange", exchange)?,
            short("routing key", routing_key)?,
            QueueBindOptions { nowait: false },
            args.clone(),
        )
        .await
        .map_err(|e| {
            error::amqp(
                format!(
                    "bind queue `{}` to `{exchange}` with `{routing_key}`",
                    spec.name
                ),
                e,
            )
        })?;
    }
    Ok(())
}

/// Remove the binding of `queue` to `exchange` with `routing_key` and `args` (RabbitMQ
/// answers a missing binding with success).
pub(crate) async fn unbind_on(
    ch: &Channel,
    queue: &str,
    exchange: &str,
    routing_key: &str,
    args: FieldTable,
) -> Result<()> {
    ch.queue_unbind(
        short("queue name", queue)?,
        short("exchange", exchange)?,
        short("routing key", routing_key)?,
        args,
    )
    .await
    .map_err(|e| {
        error::amqp(
            format!("unbind queue `{queue}` from `{exchange}` with `{routing_key}`"),
            e,
        )
    })
}

/// What became of a confirmed publish.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Published {
    /// The server took it (and stored it, for persistent messages on durable queues).
    Stored,
    /// Mandatory and no queue matched: the server gave it back.
    Unroutable,
}

/// Send one message on the session's confirm channel. The returned future waits for the
/// confirm; several of them can be awaited together (pipelining).
pub(crate) async fn send(
    session: &Session,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<lapin::PublisherConfirm> {
    session
        .confirm_channel()
        .basic_publish(
            short("exchange", exchange)?,
            short("routing key", routing_key)?,
            BasicPublishOptions {
                mandatory,
                immediate: false,
            },
            body,
            properties,
        )
        .await
        .map_err(|e| error::amqp(format!("publish to `{exchange}` with `{routing_key}`"), e))
}

/// Wait for a publisher confirm.
pub(crate) async fn confirmed(
    confirm: lapin::PublisherConfirm,
    routing_key: &str,
) -> Result<Published> {
    match confirm.await {
        Ok(Confirmation::Ack(None)) | Ok(Confirmation::NotRequested) => Ok(Published::Stored),
        Ok(Confirmation::Ack(Some(_))) => Ok(Published::Unroutable),
        Ok(Confirmation::Nack(_)) => Err(error::temporary(format!(
            "the server refused the message for `{routing_key}` (publisher nack)"
        ))),
        Err(e) => Err(error::amqp(
            format!("wait for the confirm of `{routing_key}`"),
            e,
        )),
    }
}

/// Publish and wait for the confirm.
pub(crate) async fn publish(
    session: &Session,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<Published> {
    let confirm = send(session, exchange, routing_key, body, properties, mandatory).await?;
    confirmed(confirm, routing_key).await
}

/// Declare `spec` (if this session has not), publish mandatory, and when the message comes
/// back unroutable (the queue expired or was deleted behind our back) forget the declaration,
/// declare again and publish once more. `Unroutable` means the second try failed too.
pub(crate) async fn publish_to_declared(
    session: &std::sync::Arc<Session>,
    spec: &QueueSpec,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: &BasicProperties,
) -> Result<Published> {
    for attempt in 0..2 {
        ensure_queue(session, spec).await?;
        let published = publish(
            session,
            exchange,
            routing_key,
            body,
            properties.clone(),
            true,
        )
        .await?;
        if published == Published::Stored || attempt == 1 {
            return Ok(published);
        }
        forget_queue(session, &spec.name);
    }
    Ok(Published::Unroutable)
}

/// Every message of `queue` in order, without removing or reordering them: `basic.get`
/// each one unacknowledged on a channel of our own, then requeue them all at once
/// (RabbitMQ puts requeued messages back at their original positions). A missing queue
/// is empty. Listed messages are marked redelivered by the server.
pub(crate) async fn list_queue(
    session: &std::sync::Arc<Session>,
    queue: &str,
) -> Result<Vec<lapin::message::Delivery>> {
    let name = short("queue name", queue)?;
    let mut ch = session.channel().await?;
    let first = match ch
        .basic_get(name.clone(), BasicGetOptions { no_ack: false })
        .await
    {
        Ok(Some(m)) => m,
        Ok(None) => {
            ch.keep();
            return Ok(Vec::new());
        }
        Err(e) if error::is_not_found(&e) => return Ok(Vec::new()),
        Err(e) => return Err(error::amqp(format!("read queue `{queue}`"), e)),
    };
    // The count at the first get bounds the listing: messages published meanwhile are not
    // chased.
    let remaining = first.message_count;
    let mut out = vec![first.delivery];
    for _ in 0..remaining {
        match ch
            .basic_get(name.clone(), BasicGetOptions { no_ack: false })
            .await
        {
            Ok(Some(m)) => out.push(m.delivery),
            Ok(None) => break,
            Err(e) => return Err(error::amqp(format!("read queue `{queue}`"), e)),
        }
    }
    if let Some(last) = out.last() {
        ch.basic_nack(
            last.delivery_tag,
            BasicNackOptions {
                multiple: true,
                requeue: true,
            },
        )
        .await
        .map_err(|e| error::amqp(format!("requeue the listing of `{queue}`"), e))?;
    }
    ch.keep();
    Ok(out)
}

/// Empty `queue`; a missing queue is already empty.
pub(crate) async fn purge(session: &std::sync::Arc<Session>, queue: &str) -> Result<()> {
    let mut ch = session.channel().await?;
    if purge_on(&ch, queue).await? {
        ch.keep();
    }
    Ok(())
}

/// Empty `queue` on `ch`; `Ok(false)` when it does not exist (the channel is then closed).
pub(crate) async fn purge_on(ch: &Channel, queue: &str) -> Result<bool> {
    match ch
        .queue_purge(
            short("queue name", queue)?,
            QueuePurgeOptions { nowait: false },
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if error::is_not_found(&e) => Ok(false),
        Err(e) => Err(error::amqp(format!("purge queue `{queue}`"), e)),
    }
}

/// Delete `queue`; a missing queue is fine.
pub(crate) async fn delete(session: &std::sync::Arc<Session>, queue: &str) -> Result<()> {
    forget_queue(session, queue);
    let mut ch = session.channel().await?;
    if delete_on(&ch, queue).await? {
        ch.keep();
    }
    Ok(())
}

/// Delete `queue` on `ch`; `Ok(false)` when it did not exist (the channel is then closed).
pub(crate) async fn delete_on(ch: &Channel, queue: &str) -> Result<bool> {
    match ch
        .queue_delete(
            short("queue name", queue)?,
            QueueDeleteOptions {
                if_unused: false,
                if_empty: false,
                nowait: false,
            },
        )
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if error::is_not_found(&e) => Ok(false),
        Err(e) => Err(error::amqp(format!("delete queue `{queue}`"), e)),
    }
}

/// A header value as a long string (`S`), the type Go writes for strings.
pub(crate) fn header_string(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// The text of a string header, if present.
pub(crate) fn header_text(properties: &BasicProperties, key: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        _ => None,
    }
}

/// Insert a header into (a copy of) a message's headers.
pub(crate) fn with_header(headers: Option<&FieldTable>, key: &str, value: AMQPValue) -> FieldTable {
    let mut h = headers.cloned().unwrap_or_default();
    h.insert(ShortString::from(key), value);
    h
}
