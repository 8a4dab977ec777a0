//! One entry of the driver table: the URL prefixes a driver understands and how it connects.
//!
//! Every driver crate exports a `DRIVER: Driver` constant; the `machinery` facade keeps the
//! list of the drivers compiled in and picks the first whose prefix the URL starts with. An
//! unknown URL's error lists exactly the prefixes of that list, so the list is the one place
//! that says which schemes a build understands.
//!
//! ```
//! use std::sync::Arc;
//! use machinery_core::{Broker, BoxFuture, Config, Driver, MemoryBroker, Result};
//!
//! fn connect_broker<'a>(url: &'a str, config: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
//!     let _ = url;
//!     let queue = config.default_queue.clone();
//!     Box::pin(async move { Ok(Arc::new(MemoryBroker::with_default_queue(queue)) as Arc<dyn Broker>) })
//! }
//!
//! /// The table entry of a driver that only has a broker.
//! pub const DRIVER: Driver = Driver::new("stub", &["stub://"]).with_broker(connect_broker);
//!
//! assert!(DRIVER.accepts("stub://somewhere"));
//! assert!(DRIVER.broker.is_some() && DRIVER.backend.is_none());
//! ```

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{Backend, Broker, Config, Lock, MemoryBackend, MemoryBroker, MemoryLock, Result};

/// A boxed, `Send` future (what a driver's `connect_*` function returns).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Connect a broker to `url` with `config` (for the keys the driver reads).
pub type ConnectBroker = for<'a> fn(&'a str, &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>>>;
/// Connect a result backend to `url` with `config`.
pub type ConnectBackend =
    for<'a> fn(&'a str, &'a Config) -> BoxFuture<'a, Result<Arc<dyn Backend>>>;
/// Connect a lock (for periodic tasks) to `url` with `config`.
pub type ConnectLock = for<'a> fn(&'a str, &'a Config) -> BoxFuture<'a, Result<Arc<dyn Lock>>>;

/// A driver's entry in the facade's driver table.
///
/// Built with [`Driver::new`] and the `with_*` methods, so a new kind of component adds a
/// method here and edits no existing driver.
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Driver {
    /// The driver name, as its components report from `driver()` (e.g. `redis`).
    pub name: &'static str,
    /// URL prefixes this driver understands, as Go's factories test them (e.g. `redis://`,
    /// `https://sqs.`, `eager`). A URL is the driver's when it starts with one of them.
    pub prefixes: &'static [&'static str],
    /// How to connect a broker, if the driver has one.
    pub broker: Option<ConnectBroker>,
    /// How to connect a result backend, if the driver has one.
    pub backend: Option<ConnectBackend>,
    /// How to connect a lock, if the driver has one.
    pub lock: Option<ConnectLock>,
}

impl Driver {
    /// An entry with no components yet.
    pub const fn new(name: &'static str, prefixes: &'static [&'static str]) -> Self {
        Driver {
            name,
            prefixes,
            broker: None,
            backend: None,
            lock: None,
        }
    }

    /// This entry with a broker.
    pub const fn with_broker(mut self, connect: ConnectBroker) -> Self {
        self.broker = Some(connect);
        self
    }

    /// This entry with a result backend.
    pub const fn with_backend(mut self, connect: ConnectBackend) -> Self {
        self.backend = Some(connect);
        self
    }

    /// This entry with a lock.
    pub const fn with_lock(mut self, connect: ConnectLock) -> Self {
        self.lock = Some(connect);
        self
    }

    /// Whether `url` is this driver's (starts with one of its prefixes, ASCII case ignored).
    pub fn accepts(&self, url: &str) -> bool {
        let url = url.trim();
        self.prefixes.iter().any(|p| {
            url.len() >= p.len()
                && url.is_char_boundary(p.len())
                && url[..p.len()].eq_ignore_ascii_case(p)
        })
    }
}

impl fmt::Debug for Driver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Driver")
            .field("name", &self.name)
            .field("prefixes", &self.prefixes)
            .field("broker", &self.broker.is_some())
            .field("backend", &self.backend.is_some())
            .field("lock", &self.lock.is_some())
            .finish()
    }
}

fn memory_broker<'a>(_url: &'a str, config: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
    let queue = config.default_queue.clone();
    Box::pin(
        async move { Ok(Arc::new(MemoryBroker::with_default_queue(queue)) as Arc<dyn Broker>) },
    )
}

fn memory_backend<'a>(
    _url: &'a str,
    config: &'a Config,
) -> BoxFuture<'a, Result<Arc<dyn Backend>>> {
    let ttl = config.results_ttl();
    Box::pin(async move { Ok(Arc::new(MemoryBackend::with_ttl(ttl)) as Arc<dyn Backend>) })
}

fn memory_lock<'a>(_url: &'a str, _config: &'a Config) -> BoxFuture<'a, Result<Arc<dyn Lock>>> {
    Box::pin(async move { Ok(Arc::new(MemoryLock::new()) as Arc<dyn Lock>) })
}

/// The in-process driver: `memory://` and Go's `eager`, broker, backend and lock.
pub const MEMORY_DRIVER: Driver = Driver::new("memory", &["memory://", "eager"])
    .with_broker(memory_broker)
    .with_backend(memory_backend)
    .with_lock(memory_lock);
