#![doc = include_str!("../README.md")]

mod backend;
mod client;
mod config;
mod error;
mod route;

pub use backend::MemcacheBackend;
pub use config::{DEFAULT_PORT, MemcacheConfig};
pub use route::{crc32_ieee, pick_server};
