//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{Backend, BoxFuture, Config, Driver, Result};

use crate::{DynamoBackend, DynamoConfig};

/// The URL prefixes this driver understands: Go's `https://dynamodb.<region>.amazonaws.com`
/// (and plain `http://dynamodb...`), `dynamodb://[region]`, and `dynamodb+http(s)://host:port`
/// for a local endpoint.
pub const SCHEMES: &[&str] = &[
    "https://dynamodb",
    "http://dynamodb",
    "dynamodb://",
    "dynamodb+http://",
    "dynamodb+https://",
];

/// Connect a [`DynamoBackend`] to `url`, reading the DynamoDB keys of `config`.
///
/// # Errors
/// A bad URL or configuration, or a service that cannot be reached.
pub fn connect_backend<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Backend>>> {
    Box::pin(async move {
        let backend = DynamoBackend::connect(DynamoConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
}

/// The DynamoDB entry of the driver table: result backend only.
pub const DRIVER: Driver = Driver::new("dynamodb", SCHEMES).with_backend(connect_backend);
