//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{BoxFuture, Broker, Config, Driver, Result};

use crate::{SqsBroker, SqsConfig};

/// The URL prefixes this driver understands: Go's queue URL prefix
/// `https://sqs.<region>.amazonaws.com/<account>` (and `http://sqs...`), and
/// `sqs+http(s)://host:port/<account>` for a local endpoint.
pub const SCHEMES: &[&str] = &["https://sqs", "http://sqs", "sqs+http://", "sqs+https://"];

/// Connect an [`SqsBroker`] to `url`, reading the SQS keys of `config`.
///
/// # Errors
/// A bad URL or configuration, or a service that cannot be reached.
pub fn connect_broker<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
    Box::pin(async move {
        let broker = SqsBroker::connect(SqsConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

/// The SQS entry of the driver table: broker only.
pub const DRIVER: Driver = Driver::new("sqs", SCHEMES).with_broker(connect_broker);
