//! This driver's entry in the facade's driver table.

use std::sync::Arc;

use machinery_core::{Backend, BoxFuture, Broker, Config, Driver, Lock, Result};

use crate::{RedisBackend, RedisBroker, RedisConfig, RedisLock};

/// The URL prefixes this driver understands (Go's `redis://`, `rediss://`,
/// `redis+socket://`, and the `unix://` / `redis+unix://` socket forms).
pub const SCHEMES: &[&str] = &[
    "redis://",
    "rediss://",
    "redis+socket://",
    "redis+unix://",
    "unix://",
];

/// Connect a [`RedisBroker`] to `url`, reading the Redis keys of `config`.
///
/// # Errors
/// A bad URL, or a server that cannot be reached.
pub fn connect_broker<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
    Box::pin(async move {
        let broker = RedisBroker::connect(RedisConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(broker) as Arc<dyn Broker>)
    })
}

/// Connect a [`RedisBackend`] to `url`, reading the Redis keys of `config`.
///
/// # Errors
/// As [`connect_broker`].
pub fn connect_backend<'a>(
    url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Backend>>> {
    Box::pin(async move {
        let backend = RedisBackend::connect(RedisConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(backend) as Arc<dyn Backend>)
    })
}

/// Connect a [`RedisLock`] to `url`, reading the Redis keys of `config`.
///
/// # Errors
/// As [`connect_broker`].
pub fn connect_lock<'a>(url: &'a str, config: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Lock>>> {
    Box::pin(async move {
        let lock = RedisLock::connect(RedisConfig::from_machinery(url, config)).await?;
        Ok(Arc::new(lock) as Arc<dyn Lock>)
    })
}

/// The Redis entry of the driver table: broker, result backend and lock.
pub const DRIVER: Driver = Driver::new("redis", SCHEMES)
    .with_broker(connect_broker)
    .with_backend(connect_backend)
    .with_lock(connect_lock);
