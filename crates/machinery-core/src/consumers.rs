//! The consumers of a broker whose `consume` runs one receive loop per call (SQS, Pub/Sub):
//! registered under their consumer tag, stopped by [`Broker::stop_consuming`], and read
//! through a stream whose drop stops the loop.
//!
//! [`Broker::stop_consuming`]: crate::Broker::stop_consuming

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::{CancellationToken, DropGuard};

use crate::{Delivery, DeliveryStream, Result};

/// The running consumers of one broker, by consumer tag.
#[derive(Debug, Default)]
pub struct Consumers {
    by_tag: Mutex<HashMap<String, Vec<Consumer>>>,
}

/// One registered consumer: its receive loop watches `stop` and calls [`Consumer::finished`]
/// when it has ended.
#[derive(Debug, Clone)]
pub struct Consumer {
    /// Cancelled when the consumer must stop (its stream dropped, `stop_consuming`, or the
    /// broker's shutdown token it was registered under).
    pub stop: CancellationToken,
    done: CancellationToken,
}

impl Consumers {
    /// Register a consumer under `tag`; its stop token is a child of `shutdown`.
    ///
    /// # Panics
    /// When the registry's lock is poisoned.
    pub fn register(&self, tag: &str, shutdown: &CancellationToken) -> Consumer {
        let consumer = Consumer {
            stop: shutdown.child_token(),
            done: CancellationToken::new(),
        };
        self.by_tag
            .lock()
            .expect("consumers poisoned")
            .entry(tag.to_owned())
            .or_default()
            .push(consumer.clone());
        consumer
    }

    /// Stop every consumer registered under `tag` and wait until their loops have ended.
    ///
    /// # Panics
    /// When the registry's lock is poisoned.
    pub async fn stop(&self, tag: &str) {
        let consumers = self
            .by_tag
            .lock()
            .expect("consumers poisoned")
            .remove(tag)
            .unwrap_or_default();
        for c in &consumers {
            c.stop.cancel();
        }
        for c in consumers {
            c.done.cancelled().await;
        }
    }
}

impl Consumer {
    /// Say that the receive loop has ended (what [`Consumers::stop`] waits for).
    pub fn finished(&self) {
        self.done.cancel();
    }

    /// The stream of this consumer's deliveries; dropping it stops the consumer.
    pub fn stream(&self, rx: mpsc::UnboundedReceiver<Result<Delivery>>) -> DeliveryStream {
        Box::pin(ConsumerStream {
            rx,
            _stop: self.stop.clone().drop_guard(),
        })
    }
}

/// The stream a consumer reads; dropping it stops the receive loop.
struct ConsumerStream {
    rx: mpsc::UnboundedReceiver<Result<Delivery>>,
    _stop: DropGuard,
}

impl Stream for ConsumerStream {
    type Item = Result<Delivery>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}
