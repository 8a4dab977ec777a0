#![doc = include_str!("../README.md")]

mod broker;
mod config;
mod driver;
mod error;

pub use broker::{
    DEAD_LETTER_REASON_ATTRIBUTE, DEAD_LETTER_SUBSCRIPTION_ATTRIBUTE, MAX_MESSAGE_BYTES,
    NOT_BEFORE_ATTRIBUTE, PubSubApiCalls, PubSubBroker, api_calls,
};
pub use config::{EMULATOR_HOST_VAR, PubSubConfig};
pub use driver::{DRIVER, SCHEMES, connect_broker};
