//! [`StateWatch`]: how a backend that can push tells a result waiter that a task's state
//! changed, so that [`crate::AsyncResult`] waits on the push instead of polling.

use tokio::sync::{mpsc, watch};

use crate::TaskState;

/// What a push said.
#[derive(Debug, Clone, PartialEq)]
pub enum Pushed {
    /// The state may have changed: read it again.
    Changed,
    /// This state was stored (the push carried it; no read needed).
    State(Box<TaskState>),
}

/// Notifications that one task's state may have changed, from [`crate::Backend::watch_state`].
///
/// Built from a counter that the backend bumps on every stored state
/// ([`StateWatch::from_counter`]) or from a channel of [`Pushed`] notices
/// ([`StateWatch::from_channel`]); a guard, dropped with the watch, ends the backend's
/// subscription.
pub struct StateWatch {
    source: Source,
    _guard: Option<Box<dyn Send + Sync>>,
}

enum Source {
    Counter(watch::Receiver<u64>),
    Channel(mpsc::UnboundedReceiver<Pushed>),
}

impl std::fmt::Debug for StateWatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.source {
            Source::Counter(_) => "counter",
            Source::Channel(_) => "channel",
        };
        f.debug_struct("StateWatch")
            .field("source", &kind)
            .finish_non_exhaustive()
    }
}

impl StateWatch {
    /// A watch on a counter the backend bumps after every stored state (of any task).
    pub fn from_counter(changes: watch::Receiver<u64>) -> Self {
        StateWatch {
            source: Source::Counter(changes),
            _guard: None,
        }
    }

    /// A watch on a channel of notices for this task.
    pub fn from_channel(notices: mpsc::UnboundedReceiver<Pushed>) -> Self {
        StateWatch {
            source: Source::Channel(notices),
            _guard: None,
        }
    }

    /// Keep `guard` alive as long as the watch (e.g. what unsubscribes when dropped).
    #[must_use]
    pub fn with_guard(mut self, guard: impl Send + Sync + 'static) -> Self {
        self._guard = Some(Box::new(guard));
        self
    }

    /// Forget notices received so far: called before reading the state, so that a state
    /// stored after the read still wakes the next [`StateWatch::next`].
    pub fn mark_seen(&mut self) {
        match &mut self.source {
            Source::Counter(rx) => {
                rx.borrow_and_update();
            }
            Source::Channel(rx) => while rx.try_recv().is_ok() {},
        }
    }

    /// The next notice; `None` once the backend can no longer push to this watch (the
    /// waiter then falls back to polling).
    pub async fn next(&mut self) -> Option<Pushed> {
        match &mut self.source {
            Source::Counter(rx) => rx.changed().await.ok().map(|()| Pushed::Changed),
            Source::Channel(rx) => rx.recv().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_counter_wakes_after_mark_seen_only_for_later_changes() {
        let (tx, rx) = watch::channel(0u64);
        let mut w = StateWatch::from_counter(rx);
        tx.send_modify(|n| *n += 1);
        w.mark_seen();
        let early = tokio::time::timeout(std::time::Duration::from_millis(20), w.next()).await;
        assert!(
            early.is_err(),
            "a change seen before the read must not wake"
        );
        tx.send_modify(|n| *n += 1);
        assert_eq!(w.next().await, Some(Pushed::Changed));
        drop(tx);
        assert_eq!(w.next().await, None);
    }

    #[tokio::test]
    async fn a_channel_gives_notices_and_ends_with_none() {
        struct Flag(std::sync::Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx, rx) = mpsc::unbounded_channel();
        let mut w = StateWatch::from_channel(rx).with_guard(Flag(std::sync::Arc::clone(&dropped)));
        tx.send(Pushed::Changed).unwrap();
        w.mark_seen();
        tx.send(Pushed::Changed).unwrap();
        assert_eq!(w.next().await, Some(Pushed::Changed));
        drop(tx);
        assert_eq!(w.next().await, None);
        drop(w);
        assert!(dropped.load(std::sync::atomic::Ordering::SeqCst));
    }
}
