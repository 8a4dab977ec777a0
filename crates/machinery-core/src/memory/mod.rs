//! In-process drivers: [`MemoryBroker`], [`MemoryBackend`] and [`MemoryLock`].
//!
//! They need no server, pass the whole conformance suite of `machinery-testkit`, and are what
//! the quickstart and most unit tests run on.

/// A message set aside by `Delivery::dead_letter` (or a driver's equivalent): the body as it
/// was received and the reason given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The message body, byte for byte.
    pub body: Vec<u8>,
    /// Why it was set aside.
    pub reason: String,
}

mod backend;
mod broker;
mod lock;

pub use backend::MemoryBackend;
pub use broker::MemoryBroker;
pub use lock::MemoryLock;
