//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{Backend, BoxFuture, Broker, Config, Driver, Result};

use crate::{AmqpBackend, AmqpBroker, AmqpConfig};

/// The URL prefixes this driver understands (Go's `amqp://` and `amqps://`).
pub const SCHEMES: &[&str] = &["amqp://", "amqps://"];

/// Connect an [`AmqpBroker`] to `url`, reading the AMQP keys of `config`.
///
/// # Errors
/// A bad URL or configuration, or a server that cannot be reached.
pub fn connect_broker<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
    Box::pin(async move {
        let broker = AmqpBroker::connect(AmqpConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

/// Connect an [`AmqpBackend`] to `url`, reading the AMQP keys of `config`.
///
/// # Errors
/// As [`connect_broker`].
pub fn connect_backend<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Backend>>> {
    Box::pin(async move {
        let backend = AmqpBackend::connect(AmqpConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
}

/// The AMQP entry of the driver table: broker and result backend (no lock).
pub const DRIVER: Driver = Driver::new("amqp", SCHEMES)
    .with_broker(connect_broker)
    .with_backend(connect_backend);
