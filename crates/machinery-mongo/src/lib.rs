#![doc = include_str!("../README.md")]

mod backend;
mod codec;
mod config;
mod driver;
mod error;

pub use backend::{
    GROUP_METAS_COLLECTION, MAX_DOCUMENT_BYTES, MongoBackend, TASKS_COLLECTION, round_trips,
};
pub use config::MongoConfig;
pub use driver::{DRIVER, SCHEMES, connect_backend};
