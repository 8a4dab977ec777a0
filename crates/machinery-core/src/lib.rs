#![doc = include_str!("../README.md")]

mod backend;
mod backoff;
mod broker;
mod cache;
pub mod config;
pub mod consumers;
mod driver;
mod error;
mod fastjson;
mod gostruct;
pub mod json;
mod memory;
mod periodic;
mod push;
mod server;
mod signature;
mod state;
pub mod task;
pub mod time;
mod trace;
pub mod types;
pub mod url;
mod worker;
mod workflow;

pub use backend::{Backend, BackendCapabilities, Lock, results_ttl};
pub use backoff::Backoff;
pub use broker::{
    Acknowledger, Broker, BrokerCapabilities, ConsumeOptions, Delivery, DeliveryStream, Nack,
    Payload,
};
pub use cache::TtlCache;
pub use config::{Config, LiveConfig, redact_url};
pub use driver::{BoxFuture, ConnectBackend, ConnectBroker, ConnectLock, Driver, MEMORY_DRIVER};
pub use error::{BoxError, Error, Result, TaskError};
pub use memory::{DeadLetter, MemoryBackend, MemoryBroker, MemoryLock};
pub use push::{Pushed, StateWatch};
pub use server::{IntoBackend, IntoBroker, Server};
pub use signature::{
    Arg, Headers, MAX_JSON_NESTING, Signature, new_chord_uuid, new_group_uuid, new_task_uuid,
};
pub use state::{GroupMeta, State, TaskResult, TaskState};
pub use task::{Task, TaskContext, TaskOptions, Variadic, task};
pub use time::Timestamp;
pub use trace::{TRACEPARENT, trace_id};
pub use types::{ArgError, FromGoValue, FromResults, GoValue, IntoGoValue, IntoResults};
pub use worker::{
    RETRY_LATER_HEADER, UNREGISTERED_ATTEMPTS_HEADER, UNREGISTERED_SINCE_HEADER, Worker,
    WorkerHandle,
};
pub use workflow::{
    AsyncResult, Chain, ChainAsyncResult, Chord, ChordAsyncResult, Group, WaitStrategy,
    fibonacci_next,
};

pub use async_trait::async_trait;
