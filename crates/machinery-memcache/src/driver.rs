//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{Backend, BoxFuture, Config, Driver, Result};

use crate::{MemcacheBackend, MemcacheConfig};

/// The URL prefixes this driver understands (Go's `memcache://`).
pub const SCHEMES: &[&str] = &["memcache://"];

/// Connect a [`MemcacheBackend`] to `url`, reading the Memcache keys of `config`.
///
/// # Errors
/// A bad URL, or servers that cannot be reached.
pub fn connect_backend<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Backend>>> {
    Box::pin(async move {
        let backend = MemcacheBackend::connect(MemcacheConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
}

/// The Memcache entry of the driver table: result backend only.
pub const DRIVER: Driver = Driver::new("memcache", SCHEMES).with_backend(connect_backend);
