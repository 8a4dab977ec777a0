#![doc = include_str!("../README.md")]

mod backend;
mod client;
mod config;
mod driver;
mod error;
mod route;

pub use backend::MemcacheBackend;
pub use config::{DEFAULT_PORT, MemcacheConfig};
pub use driver::{DRIVER, SCHEMES, connect_backend};
pub use route::{crc32_ieee, pick_server};
