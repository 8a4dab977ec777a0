//! One delivery from decoding to settling: the panic guard, the task call with its time limit
//! and the states before it runs. What follows the task's result is in [`super::outcome`].

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use super::outcome::{Ended, Settle};
use super::{Hooks, panic_message};
use crate::task::TaskContext;
use crate::{Delivery, Payload, Result, Server, Signature, State, TaskError, TaskState};

pub(super) struct Runner {
    pub(super) server: Server,
    pub(super) hooks: Hooks,
    pub(super) abort: CancellationToken,
}

impl Runner {
    pub(super) fn config(&self) -> &crate::Config {
        self.server.config()
    }

    pub(super) async fn process(&self, mut delivery: Delivery) {
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
            // Settling needs only the delivery: the decoded arguments (a second copy of a
            // big message) go first.
            drop(sig);
            settle.apply(delivery).await;
        }
        .instrument(span)
        .await;
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
            Ok(Ended::Failed) => Settle::AckFailed,
            Ok(Ended::Succeeded | Ended::Retrying) => Settle::Ack,
            Err(e) => Settle::after_store_error(&e),
        }
    }

    pub(super) async fn set_state(&self, state: TaskState) -> Result<TaskState> {
        self.server.backend().set_state(&state).await?;
        Ok(state)
    }

    async fn execute(&self, sig: &Arc<Signature>, task: &crate::task::Task) -> Result<Ended> {
        let received = TaskState::new(sig, State::Received);
        let cancel = self.abort.child_token();
        let ctx = TaskContext::new(Arc::clone(sig), cancel.clone());
        // Converting the arguments runs nothing of the task (the future is not polled yet).
        let fut = match task.call(ctx, &sig.args) {
            Ok(f) => f,
            Err(e) => {
                // Like Go: RECEIVED then FAILURE, no STARTED, no retries.
                self.set_state(received).await?;
                let err = TaskError::Fatal(format!("invalid arguments for task {}: {e}", sig.name));
                warn!(error = %err, "task arguments do not fit the function");
                return self.failed(sig, err).await;
            }
        };
        let started = TaskState::new(sig, State::Started);
        match &self.hooks.pre_task {
            // The hook runs between RECEIVED and STARTED, as in Go.
            Some(h) => {
                self.set_state(received).await?;
                h(sig);
                self.set_state(started).await?;
            }
            // Nothing runs between them: one call, which a backend may make one round trip.
            None => {
                self.server
                    .backend()
                    .set_states(&[received, started])
                    .await?;
            }
        }
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
}
