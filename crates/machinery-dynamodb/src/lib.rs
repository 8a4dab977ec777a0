#![doc = include_str!("../README.md")]

mod backend;
mod config;
mod error;
mod item;

pub use backend::{DynamoBackend, RequestCounts};
pub use config::DynamoConfig;
