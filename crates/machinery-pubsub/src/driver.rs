//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{BoxFuture, Broker, Config, Driver, Result};

use crate::{PubSubBroker, PubSubConfig};

/// The URL prefix this driver understands: Go's `gcppubsub://<project>/<subscription>`.
pub const SCHEMES: &[&str] = &["gcppubsub://"];

/// Connect a [`PubSubBroker`] to `url`, reading the `gcp_pubsub` keys of `config`.
///
/// # Errors
/// A bad URL or configuration, Pub/Sub unreachable, or a missing topic or subscription.
pub fn connect_broker<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
    Box::pin(async move {
        let broker = PubSubBroker::connect(PubSubConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

/// The Pub/Sub entry of the driver table: broker only.
pub const DRIVER: Driver = Driver::new("pubsub", SCHEMES).with_broker(connect_broker);
