//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{Backend, BoxFuture, Config, Driver, Result};

use crate::{MongoBackend, MongoConfig};

/// The URL prefixes this driver understands (Go's `mongodb://` and `mongodb+srv://`).
pub const SCHEMES: &[&str] = &["mongodb://", "mongodb+srv://"];

/// Connect a [`MongoBackend`] to `url`, reading the MongoDB keys of `config`.
///
/// # Errors
/// A bad URL, or a server that cannot be reached.
pub fn connect_backend<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Backend>>> {
    Box::pin(async move {
        let backend = MongoBackend::connect(MongoConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
}

/// The MongoDB entry of the driver table: result backend only.
pub const DRIVER: Driver = Driver::new("mongodb", SCHEMES).with_backend(connect_backend);
