//! [`Worker`]: consumes deliveries, runs tasks, stores outcomes, sends follow-ups, and acks
//! only after all of that is done.

use std::fmt;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::task::TaskContext;
use crate::types::GoValue;
use crate::{
    Arg, ConsumeOptions, Delivery, Error, Payload, Result, Server, Signature, State, TaskError,
    TaskResult, TaskState,
};

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

    /// Run until stopped; this call blocks (awaits) like Go's `worker.Launch()`.
    /// The first SIGINT / SIGTERM stops taking tasks and waits for running
    /// ones (returns `Ok`), a second one returns [`Error::Aborted`] at once.
    ///
    /// # Errors
    /// When the queue cannot be consumed, or on abort.
    pub async fn run(self) -> Result<()> {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        if self.handle_signals {
            spawn_signal_listener(stop.clone(), abort.clone())?;
        }
        let result = self.run_until(stop, abort.clone()).await;
        // Ends the signal listener too: a later signal is not this worker's business.
        abort.cancel();
        result
    }

    /// Run in the background and return at once; the handle quits, aborts or joins it.
    /// This call does **not** block: Go's blocking `worker.Launch()` is
    /// `worker.run().await`; `launch()` is Go's `LaunchAsync`.
    pub fn launch(self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        if self.handle_signals
            && let Err(e) = spawn_signal_listener(stop.clone(), abort.clone())
        {
            warn!(error = %e, "cannot install signal handlers");
        }
        let (stop2, abort2) = (stop.clone(), abort.clone());
        let join = tokio::spawn(async move {
            let result = self.run_until(stop2, abort2.clone()).await;
            abort2.cancel();
            result
        });
        WorkerHandle { stop, abort, join }
    }

    /// Run until `stop` (graceful) or `abort` (at once) is cancelled.
    ///
    /// # Errors
    /// When the queue cannot be consumed, or on abort.
    pub async fn run_until(self, stop: CancellationToken, abort: CancellationToken) -> Result<()> {
        let queue = self.queue();
        let prefetch = match self.concurrency {
            0 => 256,
            n => n.min(u16::MAX as usize) as u16,
        };
        let broker = Arc::clone(self.server.broker());
        info!(
            worker = %self.tag,
            queue = %queue,
            concurrency = self.concurrency,
            broker = broker.driver(),
            backend = self.server.backend().driver(),
            tasks = ?self.server.registered_task_names(),
            "worker starting"
        );
        let mut stream = broker
            .consume(
                &queue,
                ConsumeOptions {
                    prefetch,
                    consumer_tag: self.tag.clone(),
                },
            )
            .await?;
        let semaphore = (self.concurrency > 0).then(|| Arc::new(Semaphore::new(self.concurrency)));
        let this = Arc::new(Runner {
            server: self.server.clone(),
            hooks: self.hooks.clone(),
            abort: abort.clone(),
        });
        let mut running = JoinSet::new();
        loop {
            while let Some(r) = running.try_join_next() {
                report_join(&self.tag, r);
            }
            if let Some(hook) = &this.hooks.pre_consume
                && !hook()
            {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let permit = match &semaphore {
                Some(s) => tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    p = Arc::clone(s).acquire_owned() => Some(p.expect("semaphore never closed")),
                },
                None => None,
            };
            let item = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                item = stream.next() => item,
            };
            match item {
                None => {
                    info!(worker = %self.tag, "broker closed the consumer; worker stopping");
                    break;
                }
                Some(Err(e)) => {
                    warn!(worker = %self.tag, error = %e, temporary = e.is_temporary(), "consuming failed; the broker reconnects");
                    if !e.is_temporary() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Some(Ok(delivery)) => {
                    let runner = Arc::clone(&this);
                    running.spawn(async move {
                        runner.process(delivery).await;
                        drop(permit);
                    });
                }
            }
        }
        info!(worker = %self.tag, running = running.len(), "worker stopping: waiting for running tasks");
        // The broker takes nothing more for this worker while the running tasks finish (their
        // acks still go out), and gives back what it prefetched once the stream is dropped.
        let finish = async {
            tokio::select! {
                // An abort also ends the running tasks at once, so both branches can be ready
                // together: the abort must win, and is checked again below.
                biased;
                _ = abort.cancelled() => {}
                _ = async {
                    while let Some(r) = running.join_next().await {
                        report_join(&self.tag, r);
                    }
                } => {}
            }
            if abort.is_cancelled() {
                running.abort_all();
                while let Some(r) = running.join_next().await {
                    if !r.as_ref().is_err_and(tokio::task::JoinError::is_cancelled) {
                        report_join(&self.tag, r);
                    }
                }
            }
            drop(stream);
        };
        let (stopped, ()) = tokio::join!(broker.stop_consuming(&self.tag), finish);
        if let Err(e) = stopped {
            warn!(worker = %self.tag, error = %e, "the broker could not give back the prefetched tasks; they return when its lease ends");
        }
        if abort.is_cancelled() {
            warn!(worker = %self.tag, "worker aborted; unfinished tasks will be delivered again");
            return Err(Error::Aborted);
        }
        info!(worker = %self.tag, "worker stopped");
        Ok(())
    }
}

/// A delivery's task ended: processing catches panics itself, so an error here is a bug
/// worth a loud line (the delivery goes back to the broker when its handle is dropped).
fn report_join(worker: &str, r: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            let msg = panic_message(e.into_panic().as_ref());
            error!(worker = %worker, panic = %msg, "processing a delivery panicked outside its guard");
        } else {
            error!(worker = %worker, error = %e, "processing a delivery ended abnormally");
        }
    }
}

fn spawn_signal_listener(stop: CancellationToken, abort: CancellationToken) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let map =
            |e: std::io::Error| Error::backend("worker", "cannot install signal handler", false, e);
        let mut term = signal(SignalKind::terminate()).map_err(map)?;
        let mut int = signal(SignalKind::interrupt()).map_err(map)?;
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                    _ = abort.cancelled() => return,
                }
                seen += 1;
                if seen == 1 {
                    warn!(
                        "signal received: no new tasks; waiting for running ones (send again to quit at once)"
                    );
                    stop.cancel();
                } else {
                    warn!("second signal received: quitting at once");
                    abort.cancel();
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
            let _ = tokio::signal::ctrl_c().await;
            abort.cancel();
        });
    }
    Ok(())
}

/// How to settle a delivery once its processing ended.
enum Settle {
    Ack,
    Requeue(Duration),
    DeadLetter(String),
    /// Neither: the worker is aborting; the broker delivers it again.
    Leave,
}

impl Settle {
    async fn apply(self, delivery: Delivery) {
        match self {
            Settle::Ack => {
                if let Err(e) = delivery.ack().await {
                    warn!(error = %e, "ack failed; the task may run again");
                }
            }
            Settle::Requeue(delay) => {
                if let Err(e) = delivery.requeue(Some(delay)).await {
                    warn!(error = %e, "requeue failed; the message will be delivered again");
                }
            }
            Settle::DeadLetter(reason) => {
                if let Err(e) = delivery.dead_letter(reason).await {
                    error!(error = %e, "cannot dead-letter the message; it will be delivered again");
                }
            }
            Settle::Leave => drop(delivery),
        }
    }
}

struct Runner {
    server: Server,
    hooks: Hooks,
    abort: CancellationToken,
}

impl Runner {
    fn config(&self) -> &crate::Config {
        self.server.config()
    }

    async fn process(&self, mut delivery: Delivery) {
        let sig = match &mut delivery.payload {
            Payload::Malformed { raw, reason } => {
                let reason = reason.clone();
                error!(bytes = raw.len(), reason = %reason, "malformed message: dead-lettering it");
                if let Err(e) = delivery.dead_letter(reason).await {
                    error!(error = %e, "cannot dead-letter a malformed message; it will be delivered again");
                }
                return;
            }
            Payload::Task(sig) => Arc::new(std::mem::take(&mut **sig)),
        };
        let span = info_span!(
            "task",
            uuid = %sig.uuid,
            name = %sig.name,
            trace_id = crate::trace::trace_id(sig.headers.as_ref()).unwrap_or(""),
        );
        async move {
            // Everything done for this delivery (task call, hooks, states, follow-ups) runs
            // under one unwind guard: a panic anywhere becomes FAILURE plus a dead letter with
            // the reason, never a redelivery loop.
            let settle = match AssertUnwindSafe(self.handle(&sig)).catch_unwind().await {
                Ok(settle) => settle,
                Err(panic) => self.panicked(&sig, panic_message(panic.as_ref())).await,
            };
            settle.apply(delivery).await;
        }
        .instrument(span)
        .await;
    }

    /// Processing panicked: store FAILURE with the reason and dead-letter the message.
    async fn panicked(&self, sig: &Signature, panic: String) -> Settle {
        let reason = format!(
            "the worker panicked while processing task {} ({}): {panic}",
            sig.name, sig.uuid
        );
        error!(reason = %reason, "processing panicked: storing FAILURE and dead-lettering the message");
        let stored = AssertUnwindSafe(
            self.server
                .backend()
                .set_state(&TaskState::failure(sig, &reason)),
        )
        .catch_unwind()
        .await;
        match stored {
            Ok(Ok(())) => {}
            Ok(Err(e)) => error!(error = %e, "cannot store FAILURE after a panic"),
            Err(_) => error!("storing FAILURE after a panic panicked too"),
        }
        Settle::DeadLetter(reason)
    }

    /// Run one decoded delivery to its end and say how to settle the message.
    async fn handle(&self, sig: &Arc<Signature>) -> Settle {
        let Some(task) = self.server.task(&sig.name) else {
            return self.not_registered(sig).await;
        };
        let outcome = tokio::select! {
            r = self.execute(sig, &task) => r,
            _ = self.abort.cancelled() => return Settle::Leave, // delivered again
        };
        match outcome {
            Ok(()) => Settle::Ack,
            Err(e) => {
                // Temporary (connection) problems are retried soon; anything else slowly,
                // so a persistent fault does not spin but the task is never dropped.
                let delay = if e.is_temporary() { 1 } else { 10 };
                error!(error = %e, temporary = e.is_temporary(), "cannot record the task's outcome; requeueing it");
                Settle::Requeue(Duration::from_secs(delay))
            }
        }
    }

    /// No task of this name here. Offered again (a rolling deploy may bring a worker that
    /// knows it) until `worker.unknown_task_max_attempts` attempts or
    /// `worker.unknown_task_max_wait_secs` have passed; then FAILURE "task X is not
    /// registered" is stored (so a waiting sender gets an answer) and the message is
    /// dead-lettered. With `IgnoreWhenTaskNotRegistered` the message is dropped at once, as Go
    /// does, and FAILURE is stored too, so the state never stays PENDING.
    async fn not_registered(&self, sig: &Arc<Signature>) -> Settle {
        let settings = &self.config().worker;
        let text = format!("task {} is not registered", sig.name);
        if sig.ignore_when_task_not_registered {
            info!(
                "task not registered here; dropping it (IgnoreWhenTaskNotRegistered) and storing FAILURE"
            );
            let err = TaskError::Fatal(format!("{text} (dropped: IgnoreWhenTaskNotRegistered)"));
            return match self.failed(sig, err).await {
                Ok(()) => Settle::Ack,
                Err(e) => {
                    warn!(error = %e, "cannot store FAILURE for an unregistered task; requeueing it");
                    Settle::Requeue(Duration::from_secs(1))
                }
            };
        }
        let now = crate::time::now();
        let headers = sig.headers.as_ref();
        let attempts = headers
            .and_then(|h| h.get(UNREGISTERED_ATTEMPTS_HEADER))
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0)
            .saturating_add(1);
        let since = headers
            .and_then(|h| h.get(UNREGISTERED_SINCE_HEADER))
            .and_then(serde_json::Value::as_str)
            .and_then(|s| crate::time::parse(s).ok())
            .filter(|t| *t <= now)
            .unwrap_or(now);
        let waited = (now - since).to_std().unwrap_or_default();
        let max_attempts = settings.unknown_task_max_attempts;
        let max_wait = Duration::from_secs(settings.unknown_task_max_wait_secs);
        if (max_attempts > 0 && attempts >= max_attempts) || waited >= max_wait {
            let reason = format!(
                "{text} (offered {attempts} times over {:.0} s; no worker knows it)",
                waited.as_secs_f64()
            );
            error!(reason = %reason, "giving up on an unregistered task: storing FAILURE and dead-lettering it");
            return match self.failed(sig, TaskError::Fatal(text)).await {
                Ok(()) => Settle::DeadLetter(reason),
                Err(e) => {
                    warn!(error = %e, "cannot store FAILURE for an unregistered task; requeueing it");
                    Settle::Requeue(Duration::from_secs(1))
                }
            };
        }
        // Offer it again later with the count and the first sighting carried in its headers,
        // so every worker of the fleet counts the same attempts.
        let delay = Duration::from_millis(settings.unknown_task_delay_ms);
        warn!(
            ?delay,
            attempts,
            waited_s = waited.as_secs(),
            "task not registered here; offering it again later"
        );
        let mut again = Signature::clone(sig);
        let h = again.headers.get_or_insert_with(Default::default);
        h.insert(UNREGISTERED_ATTEMPTS_HEADER.to_owned(), attempts.into());
        h.insert(
            UNREGISTERED_SINCE_HEADER.to_owned(),
            crate::time::format(&since).into(),
        );
        again.eta = Some(crate::time::after(delay));
        match self.server.broker().publish(&again).await {
            Ok(()) => Settle::Ack,
            Err(e) => {
                warn!(error = %e, "cannot publish the unregistered task again; requeueing it");
                Settle::Requeue(delay)
            }
        }
    }

    async fn set_state(&self, state: TaskState) -> Result<TaskState> {
        self.server.backend().set_state(&state).await?;
        Ok(state)
    }

    async fn execute(&self, sig: &Arc<Signature>, task: &crate::task::Task) -> Result<()> {
        self.set_state(TaskState::new(sig, State::Received)).await?;
        let cancel = self.abort.child_token();
        let ctx = TaskContext::new(Arc::clone(sig), cancel.clone());
        let fut = match task.call(ctx, &sig.args) {
            Ok(f) => f,
            Err(e) => {
                // Like Go: RECEIVED then FAILURE, no STARTED, no retries.
                let err = TaskError::Fatal(format!("invalid arguments for task {}: {e}", sig.name));
                warn!(error = %err, "task arguments do not fit the function");
                return self.failed(sig, err).await;
            }
        };
        if let Some(h) = &self.hooks.pre_task {
            h(sig);
        }
        self.set_state(TaskState::new(sig, State::Started)).await?;
        let limit = task.options().timeout.or_else(|| {
            let t = self.config().worker.task_timeout;
            (t > 0).then(|| Duration::from_secs(t))
        });
        let run = AssertUnwindSafe(fut).catch_unwind();
        let result = match limit {
            Some(limit) => match tokio::time::timeout(limit, run).await {
                Ok(r) => r,
                Err(_) => {
                    cancel.cancel();
                    Ok(Err(TaskError::Failed(format!(
                        "task timed out after {limit:?}"
                    ))))
                }
            },
            None => run.await,
        };
        let result = result.unwrap_or_else(|panic| {
            let msg = panic_message(panic.as_ref());
            error!(panic = %msg, "task panicked");
            Err(TaskError::Failed(msg))
        });
        match result {
            Ok(values) => self.succeeded(sig, values).await,
            Err(err) => self.errored(sig, err).await,
        }
    }

    async fn succeeded(&self, sig: &Signature, values: Vec<GoValue>) -> Result<()> {
        let results: Vec<TaskResult> = values.into_iter().map(TaskResult::new).collect();
        debug!(results = results.len(), "task succeeded");
        let state = self
            .set_state(TaskState::success(sig, results.clone()))
            .await?;
        self.send_follow_ups(sig, &sig.on_success, |next| {
            if !sig.immutable {
                next.args.extend(results.iter().map(TaskResult::to_arg));
            }
        })
        .await?;
        self.completed(sig, &state).await
    }

    /// Send `follow_ups` as tasks caused by `parent` (same trace id), each adjusted first.
    async fn send_follow_ups(
        &self,
        parent: &Signature,
        follow_ups: &[Signature],
        adjust: impl Fn(&mut Signature),
    ) -> Result<()> {
        for next in follow_ups {
            let mut next = next.clone();
            adjust(&mut next);
            crate::trace::child_of(parent.headers.as_ref(), &mut next);
            self.server.send_task(next).await?;
        }
        Ok(())
    }

    /// After the final state is stored and follow-ups sent: chord bookkeeping, post-task hook.
    async fn completed(&self, sig: &Signature, state: &TaskState) -> Result<()> {
        self.group_member_done(sig).await?;
        if let Some(h) = &self.hooks.post_task {
            h(sig, state);
        }
        Ok(())
    }

    async fn errored(&self, sig: &Signature, err: TaskError) -> Result<()> {
        if let Some(h) = &self.hooks.error {
            h(sig, &err);
        }
        match err {
            TaskError::RetryLater { message, after } => {
                let attempts = retry_later_attempts(sig) + 1;
                let max = self.config().worker.retry_later_max_attempts;
                if attempts > max {
                    let err = TaskError::Failed(format!(
                        "{message} (gave up after {max} retry-later attempts)"
                    ));
                    return self.failed(sig, err).await;
                }
                info!(?after, attempts, "task asked to be retried later");
                self.set_state(TaskState::new(sig, State::Retry)).await?;
                let mut again = sig.clone();
                again
                    .headers
                    .get_or_insert_with(Default::default)
                    .insert(RETRY_LATER_HEADER.to_owned(), attempts.into());
                again.eta = Some(eta_after(after));
                self.server.send_task(again).await?;
                Ok(())
            }
            TaskError::Failed(message) if sig.retry_count > 0 => {
                let mut again = sig.clone();
                again.retry_count -= 1;
                again.retry_timeout = crate::workflow::fibonacci_next(sig.retry_timeout);
                let wait = Duration::from_secs(again.retry_timeout.max(0).unsigned_abs());
                again.eta = Some(eta_after(wait));
                warn!(error = %message, retries_left = again.retry_count, ?wait, "task failed; retrying");
                self.set_state(TaskState::new(sig, State::Retry)).await?;
                self.server.send_task(again).await?;
                Ok(())
            }
            err => self.failed(sig, err).await,
        }
    }

    async fn failed(&self, sig: &Signature, err: TaskError) -> Result<()> {
        error!(error = %err, "task failed");
        let state = self
            .set_state(TaskState::failure(sig, err.message()))
            .await?;
        self.send_follow_ups(sig, &sig.on_error, |next| {
            next.args.insert(0, Arg::new(err.message().to_owned()));
        })
        .await?;
        self.completed(sig, &state).await
    }

    /// Chord bookkeeping after a member reached SUCCESS or FAILURE.
    async fn group_member_done(&self, sig: &Signature) -> Result<()> {
        if sig.group_uuid.is_empty() {
            return Ok(());
        }
        let Some(callback) = sig.chord_callback.as_deref() else {
            return Ok(());
        };
        let backend = self.server.backend();
        let done = match backend
            .mark_group_member_done(&sig.group_uuid, &sig.uuid)
            .await
        {
            Ok(done) => done,
            Err(e) if e.is_not_found() => {
                // A group this backend never recorded (e.g. sent by a Go producer whose
                // backend keeps no group meta): the backend may track it from what the
                // member carries; otherwise nothing to track; do not requeue forever.
                let count = usize::try_from(sig.group_task_count).unwrap_or(0);
                if backend.adopt_group(&sig.group_uuid, count).await? {
                    backend
                        .mark_group_member_done(&sig.group_uuid, &sig.uuid)
                        .await?
                } else {
                    warn!(group = %sig.group_uuid, "group unknown to the result backend; its chord cannot be tracked here");
                    return Ok(());
                }
            }
            Err(e) => return Err(e),
        };
        if i64::try_from(done).unwrap_or(i64::MAX) < sig.group_task_count {
            return Ok(());
        }
        let states = backend.group_states(&sig.group_uuid).await?;
        if !states.iter().all(TaskState::is_completed) {
            return Ok(());
        }
        let failed: Vec<&TaskState> = states.iter().filter(|s| s.is_failure()).collect();
        if !failed.is_empty() && !self.config().worker.chord_error_callbacks {
            // Go's behaviour: a chord with a failed member never fires.
            return Ok(());
        }
        if !backend.trigger_chord(&sig.group_uuid).await? {
            return Ok(());
        }
        if let Some(first) = failed.first() {
            let text = format!(
                "chord group {} has {} failed member(s); first {}: {}",
                sig.group_uuid,
                failed.len(),
                first.task_uuid,
                first.error
            );
            warn!(group = %sig.group_uuid, "chord not fired: {text}");
            return self
                .send_follow_ups(sig, &callback.on_error, |next| {
                    next.args.insert(0, Arg::new(text.clone()));
                })
                .await;
        }
        info!(group = %sig.group_uuid, callback = %callback.uuid, "chord complete: sending its callback");
        self.send_follow_ups(sig, std::slice::from_ref(callback), |cb| {
            if !cb.immutable {
                for s in &states {
                    cb.args
                        .extend(s.results.iter().flatten().map(TaskResult::to_arg));
                }
            }
        })
        .await
    }
}

fn retry_later_attempts(sig: &Signature) -> u32 {
    sig.headers
        .as_ref()
        .and_then(|h| h.get(RETRY_LATER_HEADER))
        .and_then(serde_json::Value::as_u64)
        .map_or(0, |n| u32::try_from(n).unwrap_or(u32::MAX))
}

fn eta_after(d: Duration) -> crate::Timestamp {
    crate::time::after(d)
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
