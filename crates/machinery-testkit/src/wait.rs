//! Waiting on a condition with a deadline, for tests: poll instead of sleeping a fixed time.
//!
//! A fixed sleep is either too short on a loaded machine (a flaky failure) or longer than
//! needed everywhere else. These helpers check at once, then again after pauses from core's
//! [`Backoff`] (1 ms doubling to 20 ms), and fail with `what` once `limit` has passed. They
//! use tokio's clock, so they also work in tests with paused time.

use std::future::Future;
use std::time::Duration;

use machinery_core::Backoff;
use tokio::time::Instant;

/// The longest pause between two checks.
const MAX_PAUSE: Duration = Duration::from_millis(20);

/// Wait until `check` returns `Some`, and return what it gave.
///
/// # Panics
/// When `check` still gives `None` after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    let mut backoff = Backoff::new(Duration::from_millis(1), MAX_PAUSE);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        let now = Instant::now();
        assert!(
            now < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(backoff.next_delay().min(deadline - now)).await;
    }
}

/// Wait until `check` returns true.
///
/// # Panics
/// When `check` is still false after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    wait_for(limit, what, || {
        let fut = check();
        async move { fut.await.then_some(()) }
    })
    .await;
}

/// Wait until the synchronous condition `check` holds (a counter, a flag, a length).
///
/// # Panics
/// When `check` is still false after `limit`.
pub async fn wait_until_sync(limit: Duration, what: &str, mut check: impl FnMut() -> bool) {
    wait_for(limit, what, || std::future::ready(check().then_some(()))).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn returns_as_soon_as_the_condition_holds() {
        let calls = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&calls);
        let got = wait_for(Duration::from_secs(5), "the third call", || {
            let n = c.fetch_add(1, Ordering::SeqCst) + 1;
            async move { (n >= 3).then_some(n) }
        })
        .await;
        assert_eq!(got, 3);
    }

    #[tokio::test]
    #[should_panic(expected = "timed out after 30ms waiting for nothing")]
    async fn fails_after_the_limit() {
        wait_until_sync(Duration::from_millis(30), "nothing", || false).await;
    }

    #[tokio::test(start_paused = true)]
    async fn works_with_paused_time() {
        let start = Instant::now();
        wait_until(
            Duration::from_secs(3600),
            "an hour of virtual time",
            || async move { start.elapsed() >= Duration::from_secs(60) },
        )
        .await;
        assert!(start.elapsed() < Duration::from_secs(61));
    }
}
