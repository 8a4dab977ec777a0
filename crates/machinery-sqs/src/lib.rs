#![doc = include_str!("../README.md")]

mod broker;
mod config;
mod driver;
mod error;

pub use broker::{
    DEAD_LETTER_QUEUE_ATTRIBUTE, DEAD_LETTER_REASON_ATTRIBUTE, SqsBroker, SqsRequestCounts,
};
pub use config::SqsConfig;

/// The AWS SDK crates this driver is built on, for `SqsBroker::connect_with`.
pub use aws_config;
pub use aws_sdk_sqs;
pub use driver::{DRIVER, SCHEMES, connect_broker};
