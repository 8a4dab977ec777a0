//! [`MemoryLock`]: the periodic-task lock for a single process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;

use crate::{Lock, Result, time};

/// An in-process [`Lock`]: a key is held until its deadline, then anyone may take it over.
///
/// Enough when every server shares one process (tests, the quickstart); use a networked lock
/// (Redis) when several processes schedule periodic tasks. Clones share the keys.
///
/// # Examples
///
/// ```
/// use machinery_core::{Lock, MemoryLock, time};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> machinery_core::Result<()> {
/// let lock = MemoryLock::new();
/// let until = time::unix_nanos(&time::now()) + 60_000_000_000;
/// assert!(lock.try_lock("periodic:report", until).await?);
/// assert!(!lock.clone().try_lock("periodic:report", until).await?);
/// # Ok(())
/// # }
/// ```
#[derive(Clone, Default)]
pub struct MemoryLock {
    held: Arc<Mutex<HashMap<String, i64>>>,
}

impl fmt::Debug for MemoryLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryLock").finish_non_exhaustive()
    }
}

impl MemoryLock {
    /// A lock with no key held.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Lock for MemoryLock {
    async fn try_lock(&self, key: &str, expires_at_unix_nanos: i64) -> Result<bool> {
        let now = time::unix_nanos(&time::now());
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        // Forget deadlines that passed so the map does not grow with old keys.
        held.retain(|_, deadline| *deadline > now);
        if held.contains_key(key) || expires_at_unix_nanos <= now {
            return Ok(false);
        }
        held.insert(key.to_owned(), expires_at_unix_nanos);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn held_until_the_deadline_then_taken_over() {
        let lock = MemoryLock::new();
        let now = time::unix_nanos(&time::now());
        let soon = now + 50_000_000;
        assert!(lock.try_lock("k", soon).await.unwrap());
        assert!(!lock.try_lock("k", soon + 1).await.unwrap());
        assert!(lock.try_lock("other", soon).await.unwrap());
        tokio::time::sleep(std::time::Duration::from_millis(60)).await;
        let later = time::unix_nanos(&time::now()) + 1_000_000_000;
        assert!(
            lock.try_lock("k", later).await.unwrap(),
            "expired key is taken over"
        );
        assert!(!lock.try_lock("k", later).await.unwrap());
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_takes_nothing() {
        let lock = MemoryLock::new();
        assert!(!lock.try_lock("k", 0).await.unwrap());
        let later = time::unix_nanos(&time::now()) + 1_000_000_000;
        assert!(lock.try_lock("k", later).await.unwrap());
    }
}
