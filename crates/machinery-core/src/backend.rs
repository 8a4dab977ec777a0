//! The result backend contract: task states and group bookkeeping.
//!
//! # Required behaviours
//!
//! Conformance case names (see `machinery-testkit`):
//!
//! - `state_lifecycle_roundtrips`: PENDING → RECEIVED → STARTED → SUCCESS are each read back.
//! - `set_state_keeps_created_at`: a later state keeps the stored `CreatedAt` and `TaskName`
//!   (capability `keeps_created_at`).
//! - `unknown_task_has_no_state`: `state` of an unknown UUID is `Ok(None)`.
//! - `results_preserve_types`: results come back with their Go type names and exact values.
//! - `failure_keeps_error_text`.
//! - `group_states_are_in_group_order`: one state per member, in `init_group` order; members
//!   with nothing stored yet appear as PENDING.
//! - `trigger_chord_fires_exactly_once_under_contention`: of 100 concurrent callers exactly
//!   one gets `true`.
//! - `trigger_chord_unknown_group_errors`: `trigger_chord` on a group never initialised is
//!   `Error::GroupNotFound`, not a silent `true`.
//! - `purge_removes_state_and_group`.
//! - `results_expire` (capability `expiry`).
//! - `group_member_done_counts_each_member_once` (`mark_group_member_done` is idempotent).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::{Result, StateWatch, TaskState};

/// What a result backend can do.
///
/// Every field defaults to "cannot"; a driver names what it can and ends with
/// `..Default::default()`, so a new capability edits no driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackendCapabilities {
    /// Stored states expire after `ResultsExpireIn`.
    pub expiry: bool,
    /// `set_state` keeps the stored `CreatedAt` / `TaskName`.
    pub keeps_created_at: bool,
    /// `group_states` costs one round trip whatever the group size.
    pub batched_group_states: bool,
    /// `mark_group_member_done` is O(1) (an atomic set / counter), not the default scan.
    pub group_completion_counter: bool,
    /// `watch_state` can tell a result waiter that a task's state changed (a push), so that
    /// [`crate::AsyncResult`] need not poll.
    pub pushes_states: bool,
}

/// A result backend.
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// The driver name, e.g. `redis`.
    fn driver(&self) -> &'static str;

    /// What this backend can do.
    fn capabilities(&self) -> BackendCapabilities;

    /// Store a state, keeping the earlier `CreatedAt` and (when `state.task_name` is empty)
    /// `TaskName`, as Go's Redis backend does.
    ///
    /// # Errors
    /// When the backend cannot be reached.
    async fn set_state(&self, state: &TaskState) -> Result<()>;

    /// Store several states of one task, in order, as [`Backend::set_state`] each (the worker
    /// stores RECEIVED and STARTED together when nothing runs between them). A backend may
    /// write them in one round trip; the last one is what stays stored.
    ///
    /// # Errors
    /// As [`Backend::set_state`]; the states before the failing one may be stored.
    async fn set_states(&self, states: &[TaskState]) -> Result<()> {
        for state in states {
            self.set_state(state).await?;
        }
        Ok(())
    }

    /// The latest state of a task, `None` when nothing is stored (or it expired).
    ///
    /// # Errors
    /// When the backend cannot be reached or the stored bytes do not decode.
    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>>;

    /// Record a group and its members in order.
    ///
    /// # Errors
    /// When the backend cannot be reached.
    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()>;

    /// The states of a group's members in group order; members without a stored state appear
    /// as PENDING.
    ///
    /// # Errors
    /// [`crate::Error::GroupNotFound`] when the group is unknown.
    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>>;

    /// Mark the group's chord as triggered. Returns `true` to exactly one caller per group,
    /// atomically, however many call at once.
    ///
    /// # Errors
    /// [`crate::Error::GroupNotFound`] when the group is unknown.
    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool>;

    /// Record that `task_uuid`, a member of `group_uuid`, reached SUCCESS or FAILURE, and return
    /// how many distinct members have. Idempotent per member (a redelivered task counts once).
    /// The worker calls it after storing a member's final state and reads `group_states` only
    /// when the count reaches the group size, so chord bookkeeping stays linear in the group
    /// size (Go reads every member's state after each member: quadratic).
    ///
    /// The default counts completed states via `group_states` (correct, but O(group size) per
    /// call); drivers override it with an atomic set and say so with the
    /// `group_completion_counter` capability.
    ///
    /// # Errors
    /// When the backend cannot be reached; [`crate::Error::GroupNotFound`] when the group is
    /// unknown.
    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let _ = task_uuid;
        Ok(self
            .group_states(group_uuid)
            .await?
            .iter()
            .filter(|s| s.is_completed())
            .count())
    }

    /// Start tracking a group that `mark_group_member_done` answered
    /// [`crate::Error::GroupNotFound`] for, from what its member carries (its `GroupTaskCount`):
    /// a group whose producer recorded nothing (Go's AMQP backend keeps no group meta).
    /// `Ok(true)` when the backend tracks it from now on (the worker marks the member
    /// again); the default tracks nothing.
    ///
    /// # Errors
    /// When the backend cannot be reached.
    async fn adopt_group(&self, group_uuid: &str, group_task_count: usize) -> Result<bool> {
        let _ = (group_uuid, group_task_count);
        Ok(false)
    }

    /// Start watching `task_uuid`'s state for a result waiter ([`crate::AsyncResult`]), on a
    /// backend that can push (capability `pushes_states`): the waiter reads the state when
    /// the watch says it changed instead of polling. Since not every writer pushes (Go
    /// workers do not), the waiter still re-reads with a back-off. `Ok(None)` (the default):
    /// no push; waiters poll with a back-off.
    ///
    /// # Errors
    /// When the backend cannot be reached (the waiter then polls).
    async fn watch_state(&self, task_uuid: &str) -> Result<Option<StateWatch>> {
        let _ = task_uuid;
        Ok(None)
    }

    /// Delete a task's state.
    ///
    /// # Errors
    /// When the backend cannot be reached.
    async fn purge_state(&self, task_uuid: &str) -> Result<()>;

    /// Delete a group's bookkeeping (not its members' states).
    ///
    /// # Errors
    /// When the backend cannot be reached.
    async fn purge_group(&self, group_uuid: &str) -> Result<()>;
}

/// The distributed lock used so that only one server sends a periodic task per tick.
#[async_trait]
pub trait Lock: Send + Sync + fmt::Debug + 'static {
    /// Try to take `key` until `expires_at_unix_nanos`; `true` when this caller holds it.
    /// A holder's key whose deadline has passed may be taken over.
    ///
    /// # Errors
    /// When the lock service cannot be reached.
    async fn try_lock(&self, key: &str, expires_at_unix_nanos: i64) -> Result<bool>;
}

/// Convert `ResultsExpireIn` seconds to a duration (0 means Go's default of 3600 s).
pub fn results_ttl(results_expire_in: i64) -> Duration {
    if results_expire_in <= 0 {
        Duration::from_secs(3600)
    } else {
        Duration::from_secs(results_expire_in.unsigned_abs())
    }
}
