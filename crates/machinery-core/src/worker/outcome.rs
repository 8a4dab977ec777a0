//! The outcome rules: which state is stored for a task's result (SUCCESS, RETRY, FAILURE),
//! retries and retry-later, follow-up sends (OnSuccess / OnError), chord bookkeeping, and how
//! the delivery is settled afterwards — including when storing the outcome failed or
//! processing panicked.

use std::panic::AssertUnwindSafe;
use std::time::Duration;

use futures::FutureExt;
use tracing::{debug, error, info, warn};

use super::RETRY_LATER_HEADER;
use super::process::Runner;
use crate::types::GoValue;
use crate::{Arg, Delivery, Error, Result, Signature, State, TaskError, TaskResult, TaskState};

/// How a task ended, once its outcome is stored and its follow-ups are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Ended {
    /// SUCCESS.
    Succeeded,
    /// RETRY: it was published again.
    Retrying,
    /// FAILURE, for good.
    Failed,
}

/// How to settle a delivery once its processing ended.
pub(super) enum Settle {
    Ack,
    /// The task failed for good: remove the message, unless the broker leaves failed
    /// messages to its own dead-lettering (SQS with `StopTaskDeletionOnError`).
    AckFailed,
    Requeue(Duration),
    DeadLetter(String),
    /// Neither: the worker is aborting; the broker delivers it again.
    Leave,
}

impl Settle {
    pub(super) async fn apply(self, delivery: Delivery) {
        match self {
            Settle::Ack => {
                if let Err(e) = delivery.ack().await {
                    warn!(error = %e, "ack failed; the task may run again");
                }
            }
            Settle::AckFailed => {
                if let Err(e) = delivery.ack_failed().await {
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

    /// Storing the outcome (or a state before it) failed: how to settle the delivery.
    pub(super) fn after_store_error(e: &Error) -> Self {
        // Temporary (connection) problems are retried soon; anything else slowly, so a
        // persistent fault does not spin but the task is never dropped. (A final state the
        // backend refuses for good does not get here: FAILURE naming the refusal is stored.)
        let delay = if e.is_temporary() { 1 } else { 10 };
        error!(error = %e, temporary = e.is_temporary(), "cannot record the task's outcome; requeueing it");
        Settle::Requeue(Duration::from_secs(delay))
    }
}

impl Runner {
    /// Processing panicked: store FAILURE with the reason and dead-letter the message.
    pub(super) async fn panicked(&self, sig: &Signature, panic: String) -> Settle {
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

    pub(super) async fn succeeded(&self, sig: &Signature, values: Vec<GoValue>) -> Result<Ended> {
        let results: Vec<TaskResult> = values.into_iter().map(TaskResult::new).collect();
        debug!(results = results.len(), "task succeeded");
        let state = match self
            .set_state(TaskState::success(sig, results.clone()))
            .await
        {
            Ok(state) => state,
            // Refused for good (e.g. a result over the backend's item size limit): storing it
            // again would fail again, so the task fails, with the refusal as its reason.
            Err(e) if !e.is_temporary() => {
                let err = TaskError::Fatal(format!(
                    "the result of task {} cannot be stored: {e}",
                    sig.name
                ));
                error!(error = %e, "the backend refused the task's SUCCESS for good; storing FAILURE instead");
                if let Some(h) = &self.hooks.error {
                    h(sig, &err);
                }
                return self.failed(sig, err).await;
            }
            Err(e) => return Err(e),
        };
        self.send_follow_ups(sig, &sig.on_success, |next| {
            if !sig.immutable {
                next.args.extend(results.iter().map(TaskResult::to_arg));
            }
        })
        .await?;
        self.completed(sig, &state).await?;
        Ok(Ended::Succeeded)
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

    pub(super) async fn errored(&self, sig: &Signature, err: TaskError) -> Result<Ended> {
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
                Ok(Ended::Retrying)
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
                Ok(Ended::Retrying)
            }
            err => self.failed(sig, err).await,
        }
    }

    pub(super) async fn failed(&self, sig: &Signature, err: TaskError) -> Result<Ended> {
        error!(error = %err, "task failed");
        let mut reason = err.message().to_owned();
        let state = match self.set_state(TaskState::failure(sig, &reason)).await {
            Ok(state) => state,
            // Refused for good (e.g. an error message over the backend's item size limit):
            // the refusal is short, store it as the reason instead. Should that fail too, the
            // backend itself is at fault and the delivery is requeued as for any store error.
            Err(e) if !e.is_temporary() => {
                reason = format!("the FAILURE of task {} cannot be stored: {e}", sig.name);
                error!(error = %e, "the backend refused the task's FAILURE for good; storing the refusal as its reason");
                self.set_state(TaskState::failure(sig, &reason)).await?
            }
            Err(e) => return Err(e),
        };
        self.send_follow_ups(sig, &sig.on_error, |next| {
            next.args.insert(0, Arg::new(reason.clone()));
        })
        .await?;
        self.completed(sig, &state).await?;
        Ok(Ended::Failed)
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
