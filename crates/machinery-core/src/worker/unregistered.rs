//! A task no worker here knows: offered again for a while, then FAILURE and a dead letter.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::outcome::Settle;
use super::process::Runner;
use super::{UNREGISTERED_ATTEMPTS_HEADER, UNREGISTERED_SINCE_HEADER};
use crate::{Signature, TaskError};

impl Runner {
    /// No task of this name here. Offered again (a rolling deploy may bring a worker that
    /// knows it) until `worker.unknown_task_max_attempts` attempts or
    /// `worker.unknown_task_max_wait_secs` have passed; then FAILURE "task X is not
    /// registered" is stored (so a waiting sender gets an answer) and the message is
    /// dead-lettered. With `IgnoreWhenTaskNotRegistered` the message is dropped at once, as Go
    /// does, and FAILURE is stored too, so the state never stays PENDING.
    pub(super) async fn not_registered(&self, sig: &Arc<Signature>) -> Settle {
        let settings = &self.config().worker;
        let text = format!("task {} is not registered", sig.name);
        if sig.ignore_when_task_not_registered {
            info!(
                "task not registered here; dropping it (IgnoreWhenTaskNotRegistered) and storing FAILURE"
            );
            let err = TaskError::Fatal(format!("{text} (dropped: IgnoreWhenTaskNotRegistered)"));
            return match self.failed(sig, err).await {
                Ok(_) => Settle::Ack,
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
                Ok(_) => Settle::DeadLetter(reason),
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
}
