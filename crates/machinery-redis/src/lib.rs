#![doc = include_str!("../README.md")]

mod backend;
mod broker;
mod client;
mod config;
mod driver;
mod error;
mod lock;
mod push;
mod scripts;

pub use backend::RedisBackend;
pub use broker::RedisBroker;
pub use config::RedisConfig;
pub use driver::{DRIVER, SCHEMES, connect_backend, connect_broker, connect_lock};
pub use lock::RedisLock;
