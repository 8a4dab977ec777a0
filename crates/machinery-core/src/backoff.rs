//! One exponential back-off for every wait-and-try-again in machinery-rs: reconnection
//! attempts in the drivers, result polling in [`crate::AsyncResult`].

use std::time::Duration;

/// Pauses that start at `first` and double up to `max`; optionally with jitter (each pause
/// drawn from its upper half) so that many clients do not retry in step.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    next: Duration,
    max: Duration,
    jitter: bool,
}

impl Backoff {
    /// Pauses `first`, `2 * first`, `4 * first`, ... capped at `max` (never below `first`).
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            next: first,
            max: max.max(first),
            jitter: false,
        }
    }

    /// The same pauses, each scaled by a factor drawn uniformly from `[0.5, 1)`.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The pause to take now; the following one is twice as long, up to the maximum.
    pub fn next_delay(&mut self) -> Duration {
        let now = self.next;
        self.next = (self.next * 2).min(self.max);
        if self.jitter {
            now.mul_f64(0.5 + jitter_fraction() / 2.0)
        } else {
            now
        }
    }

    /// Start again from the first pause (after a success).
    pub fn reset(&mut self) {
        self.next = self.first;
    }
}

/// A fraction in `[0, 1)` from the clock's nanoseconds and a counter: enough to spread
/// retries apart, no RNG dependency in core.
fn jitter_fraction() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut x = u64::from(nanos) ^ COUNTER.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
    // splitmix64 finaliser
    x ^= x >> 30;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 27;
    x = x.wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_max_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(1), Duration::from_millis(5));
        let got: Vec<u128> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(got, [1, 2, 4, 5, 5]);
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_millis(1));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let mut b =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(100)).with_jitter();
        for _ in 0..100 {
            let d = b.next_delay();
            assert!(
                d >= Duration::from_millis(50) && d < Duration::from_millis(100),
                "{d:?}"
            );
        }
    }
}
