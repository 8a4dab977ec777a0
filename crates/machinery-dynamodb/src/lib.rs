#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod driver;
mod error;
mod item;

pub use backend::{DynamoBackend, RequestCounts};
pub use config::DynamoConfig;
pub use driver::{DRIVER, SCHEMES, connect_backend};
