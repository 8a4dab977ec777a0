#![doc = include_str!("../README.md")]

pub use machinery_core::*;

mod connect;

pub use connect::{DRIVERS, backend_from_url, broker_from_url, lock_from_url, server_from_config};

/// The Redis driver (feature `redis`).
#[cfg(feature = "redis")]
pub use machinery_redis as redis;

/// The AMQP driver (feature `amqp`).
#[cfg(feature = "amqp")]
pub use machinery_amqp as amqp;

/// The Memcache result backend (feature `memcache`).
#[cfg(feature = "memcache")]
pub use machinery_memcache as memcache;
/// The MongoDB result backend (feature `mongo`).
#[cfg(feature = "mongo")]
pub use machinery_mongo as mongo;

/// The DynamoDB result backend (feature `dynamodb`).
#[cfg(feature = "dynamodb")]
pub use machinery_dynamodb as dynamodb;

/// The AWS SQS broker (feature `sqs`).
#[cfg(feature = "sqs")]
pub use machinery_sqs as sqs;

/// The GCP Pub/Sub broker (feature `pubsub`).
#[cfg(feature = "pubsub")]
pub use machinery_pubsub as pubsub;

/// How to add a driver (`docs/adding-a-driver.md`; its snippets compile as doctests).
#[doc = include_str!("../../../docs/adding-a-driver.md")]
pub mod adding_a_driver {}

/// The user guide (`docs/guide.md`): every feature of Go Machinery's README in its Rust form.
/// Its snippets compile (and, on the memory driver, run) as doctests.
#[doc = include_str!("../../../docs/guide.md")]
pub mod guide {}

/// The repository's README; its "Use it" snippet compiles as a doctest.
#[doc = include_str!("../../../README.md")]
pub mod readme {}
