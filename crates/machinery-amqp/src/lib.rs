#![doc = include_str!("../README.md")]

mod backend;
mod broker;
mod config;
mod connection;
mod driver;
mod error;
mod push;
mod topology;

pub use backend::{AmqpBackend, GROUP_DONE_HEADER};
pub use broker::{
    AmqpBroker, DEAD_LETTER_QUEUE_HEADER, DEAD_LETTER_REASON_HEADER, DEAD_LETTER_TIME_HEADER,
};
pub use config::AmqpConfig;
pub use driver::{DRIVER, SCHEMES, connect_backend, connect_broker};
