//! [`Worker`]: consumes deliveries, runs tasks, stores outcomes, sends follow-ups, and acks
//! only after all of that is done.
//!
//! - `mod.rs` (here): the [`Worker`] builder, its hooks and [`WorkerHandle`];
//! - [`consume`]: the consume loop (concurrency limit, pre-consume hook, signals, graceful and
//!   immediate shutdown);
//! - [`process`]: one delivery from decoding to settling (panic guard, task call, time limit);
//! - [`unregistered`]: what happens to a task no worker here knows;
//! - [`outcome`]: the outcome rules — which state is stored for a task's result, retries,
//!   follow-up sends, chord bookkeeping, and how the delivery is settled (ack, requeue,
//!   dead letter), including after a failed store or a panic.

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::{Error, Result, Server, Signature, TaskError, TaskState};

mod consume;
mod outcome;
mod process;
mod unregistered;

/// Header counting "retry later" attempts, so that they can be capped (Go loops forever).
pub const RETRY_LATER_HEADER: &str = "machinery_retry_later_attempts";

/// Header counting how often a task no worker knows was offered again (Go loops forever).
pub const UNREGISTERED_ATTEMPTS_HEADER: &str = "machinery_unregistered_attempts";

/// Header holding when a worker first found the task's name unregistered (RFC 3339).
pub const UNREGISTERED_SINCE_HEADER: &str = "machinery_unregistered_since";

type ErrorHook = dyn Fn(&Signature, &TaskError) + Send + Sync;
type PreTaskHook = dyn Fn(&Signature) + Send + Sync;
type PostTaskHook = dyn Fn(&Signature, &TaskState) + Send + Sync;
type PreConsumeHook = dyn Fn() -> bool + Send + Sync;

#[derive(Default, Clone)]
struct Hooks {
    error: Option<Arc<ErrorHook>>,
    pre_task: Option<Arc<PreTaskHook>>,
    post_task: Option<Arc<PostTaskHook>>,
    pre_consume: Option<Arc<PreConsumeHook>>,
}

/// Consumes one queue and runs tasks.
///
/// Build it with [`Server::new_worker`], add hooks, then [`Worker::run`] it (until a signal)
/// or [`Worker::launch`] it in the background.
pub struct Worker {
    server: Server,
    tag: String,
    concurrency: usize,
    queue: Option<String>,
    handle_signals: bool,
    hooks: Hooks,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("tag", &self.tag)
            .field("concurrency", &self.concurrency)
            .field("queue", &self.queue())
            .finish_non_exhaustive()
    }
}

/// A handle on a worker running in the background, from [`Worker::launch`].
///
/// `launch` does not block (unlike Go's `worker.Launch()`): the program must keep the handle
/// and `join().await` it (or `.await` [`Worker::run`] instead), else `main` returns and the
/// worker ends with it. Dropping the handle leaves the worker running in the background.
#[derive(Debug)]
#[must_use = "launch() returns at once: keep the handle and `.join().await` it (or use `run().await`, which blocks like Go's Launch)"]
pub struct WorkerHandle {
    stop: CancellationToken,
    abort: CancellationToken,
    join: tokio::task::JoinHandle<Result<()>>,
}

impl WorkerHandle {
    /// Stop taking new tasks; running ones finish. Does not wait: see [`WorkerHandle::join`].
    pub fn quit(&self) {
        self.stop.cancel();
    }

    /// Stop at once: running tasks are dropped and their messages delivered again later.
    pub fn abort(&self) {
        self.stop.cancel();
        self.abort.cancel();
    }

    /// Wait for the worker to end.
    ///
    /// # Errors
    /// What the worker ended with ([`Error::Aborted`] after an abort).
    pub async fn join(self) -> Result<()> {
        match self.join.await {
            Ok(r) => r,
            Err(e) => Err(Error::Backend {
                driver: "worker",
                message: format!("worker task ended abnormally: {e}"),
                temporary: false,
                source: Some(Box::new(e)),
            }),
        }
    }
}

impl Worker {
    pub(crate) fn new(
        server: Server,
        tag: String,
        concurrency: usize,
        queue: Option<String>,
    ) -> Self {
        let handle_signals = !server.config().no_unix_signals;
        Worker {
            server,
            tag,
            concurrency,
            queue,
            handle_signals,
            hooks: Hooks::default(),
        }
    }

    /// The queue this worker consumes.
    pub fn queue(&self) -> String {
        self.queue
            .clone()
            .unwrap_or_else(|| self.server.config().default_queue.clone())
    }

    /// The consumer tag.
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Do not react to SIGINT / SIGTERM (also set by the `no_unix_signals` config).
    pub fn no_unix_signals(mut self) -> Self {
        self.handle_signals = false;
        self
    }

    /// Called for every task error (each failed attempt, including retried ones).
    pub fn set_error_handler(
        &mut self,
        f: impl Fn(&Signature, &TaskError) + Send + Sync + 'static,
    ) {
        self.hooks.error = Some(Arc::new(f));
    }

    /// Called before a task function runs.
    pub fn set_pre_task_handler(&mut self, f: impl Fn(&Signature) + Send + Sync + 'static) {
        self.hooks.pre_task = Some(Arc::new(f));
    }

    /// Called after a task's outcome was stored.
    pub fn set_post_task_handler(
        &mut self,
        f: impl Fn(&Signature, &TaskState) + Send + Sync + 'static,
    ) {
        self.hooks.post_task = Some(Arc::new(f));
    }

    /// Called before each message is taken; while it returns false the worker takes nothing.
    pub fn set_pre_consume_handler(&mut self, f: impl Fn() -> bool + Send + Sync + 'static) {
        self.hooks.pre_consume = Some(Arc::new(f));
    }
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else if let Some(e) = payload.downcast_ref::<TaskError>() {
        e.message().to_owned()
    } else {
        "task panicked".to_owned()
    }
}
