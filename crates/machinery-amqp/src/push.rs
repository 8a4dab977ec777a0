//! Result waiting by push. Every state (ours and Go's) is published to the results exchange
//! with the task UUID as routing key, which routes it to the task's queue. A waiter binds a
//! private queue (server-named, exclusive, auto-delete) to the exchange with the same key and
//! consumes it: each state stored from then on reaches the waiter as well, whoever wrote it,
//! and the task's own queue is left alone for every other reader (a consumer on the task's
//! queue itself would hold its messages away from Go's `GetState` and from our reads while it
//! waits). Closing the waiter's channel deletes its queue.
//!
//! Not with the default exchange (`amqp.exchange` empty): nothing can be bound to it, so
//! waiters poll.

use futures::StreamExt;
use lapin::Channel;
use lapin::options::{BasicConsumeOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use machinery_core::{Pushed, Result, StateWatch, TaskState};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::short;
use crate::connection::Session;
use crate::error;

/// Bind a private queue to `exchange` with `task_uuid` and consume it for one waiter.
pub(crate) async fn watch(
    session: &Session,
    exchange: &str,
    task_uuid: &str,
) -> Result<Option<StateWatch>> {
    if exchange.is_empty() {
        return Ok(None);
    }
    let ch = session.own_channel().await?;
    match subscribe(&ch, exchange, task_uuid).await {
        Ok(consumer) => {
            let (tx, rx) = mpsc::unbounded_channel();
            let stop = CancellationToken::new();
            let uuid = task_uuid.to_owned();
            let ended = stop.clone();
            tokio::spawn(async move {
                forward(consumer, &uuid, &tx, &ended).await;
                // The waiter is done (or the connection broke): closing the channel deletes
                // the private queue.
                let _ = ch.close(200, "result waiter done".into()).await;
            });
            Ok(Some(
                StateWatch::from_channel(rx).with_guard(stop.drop_guard()),
            ))
        }
        Err(e) => {
            let _ = ch.close(200, "result waiter done".into()).await;
            Err(e)
        }
    }
}

/// A waiter's queue is deleted when its consumer goes (auto-delete); should the consumer never
/// start (an error between declare and consume), it expires unused after a minute.
fn waiter_queue_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(60_000));
    t
}

async fn subscribe(ch: &Channel, exchange: &str, task_uuid: &str) -> Result<lapin::Consumer> {
    let queue = ch
        .queue_declare(
            short("queue name", "")?,
            QueueDeclareOptions {
                passive: false,
                durable: false,
                exclusive: true,
                auto_delete: true,
                nowait: false,
            },
            waiter_queue_args(),
        )
        .await
        .map_err(|e| error::amqp("declare a result waiter's queue", e))?;
    ch.queue_bind(
        queue.name().clone(),
        short("exchange", exchange)?,
        short("routing key", task_uuid)?,
        QueueBindOptions { nowait: false },
        FieldTable::default(),
    )
    .await
    .map_err(|e| error::amqp(format!("bind a result waiter's queue to `{exchange}`"), e))?;
    ch.basic_consume(
        queue.name().clone(),
        short("consumer tag", "")?,
        BasicConsumeOptions {
            no_local: false,
            no_ack: true,
            exclusive: true,
            nowait: false,
        },
        FieldTable::default(),
    )
    .await
    .map_err(|e| error::amqp("consume a result waiter's queue", e))
}

/// Pass each state of `task_uuid` to the waiter until it is gone or `stop` is cancelled.
async fn forward(
    mut consumer: lapin::Consumer,
    task_uuid: &str,
    tx: &mpsc::UnboundedSender<Pushed>,
    stop: &CancellationToken,
) {
    loop {
        let delivery = tokio::select! {
            _ = stop.cancelled() => return,
            _ = tx.closed() => return,
            d = consumer.next() => d,
        };
        let Some(Ok(delivery)) = delivery else {
            return; // the channel or connection ended: the waiter polls from now on
        };
        // A fanout or topic exchange may bring other tasks' states too.
        let pushed = match TaskState::from_json(&delivery.data) {
            Ok(state) if state.task_uuid == task_uuid => Pushed::State(Box::new(state)),
            Ok(_) => continue,
            Err(_) => Pushed::Changed,
        };
        if tx.send(pushed).is_err() {
            return;
        }
    }
}
