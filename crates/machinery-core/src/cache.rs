//! One small expiring map for what drivers remember to save round trips (a task's name and
//! creation time while it runs, group metas, queues already declared).

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// A map from `String` keys to values that each expire after their own time to live, with at
/// most `capacity` entries: when it is full, expired entries are dropped first and, if it is
/// still full, everything is (a cache: a miss only costs a round trip). Safe to share between
/// threads; values are cloned out.
pub struct TtlCache<V> {
    entries: Mutex<HashMap<String, Entry<V>>>,
    capacity: usize,
}

struct Entry<V> {
    value: V,
    until: Instant,
}

impl<V> std::fmt::Debug for TtlCache<V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TtlCache")
            .field("len", &self.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl<V: Clone> TtlCache<V> {
    /// An empty cache holding at most `capacity` entries (at least one).
    pub fn new(capacity: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
        }
    }

    /// The value under `key` if it has not expired (an expired one is removed).
    pub fn get(&self, key: &str) -> Option<V> {
        let mut entries = self.lock();
        match entries.get(key) {
            Some(e) if e.until > Instant::now() => Some(e.value.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Whether `key` holds a value that has not expired.
    pub fn contains(&self, key: &str) -> bool {
        self.get(key).is_some()
    }

    /// Keep `value` under `key` for `ttl` (a huge `ttl` saturates: the entry then lives as
    /// long as the process, unless evicted).
    pub fn insert(&self, key: String, value: V, ttl: Duration) {
        let until = far_instant(ttl);
        let mut entries = self.lock();
        if entries.len() >= self.capacity && !entries.contains_key(&key) {
            let now = Instant::now();
            entries.retain(|_, e| e.until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, Entry { value, until });
    }

    /// Forget `key`.
    pub fn remove(&self, key: &str) {
        self.lock().remove(key);
    }

    /// Forget every key for which `keep` returns false.
    pub fn retain_keys(&self, mut keep: impl FnMut(&str) -> bool) {
        self.lock().retain(|k, _| keep(k));
    }

    /// The number of entries held, expired ones included until they are dropped.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}

impl<V> TtlCache<V> {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry<V>>> {
        // A panic while holding the lock leaves a consistent map (every operation is one
        // HashMap call or a retain): keep using it.
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// `now + d`, or about a hundred years from now when that overflows.
fn far_instant(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_after_their_own_ttl() {
        let c = TtlCache::new(10);
        c.insert("short".into(), 1, Duration::ZERO);
        c.insert("long".into(), 2, Duration::from_secs(3600));
        c.insert("forever".into(), 3, Duration::MAX);
        assert_eq!(c.get("short"), None);
        assert_eq!(c.get("long"), Some(2));
        assert_eq!(c.get("forever"), Some(3));
        assert_eq!(c.len(), 2, "the expired entry was removed when read");
        c.remove("long");
        assert!(!c.contains("long"));
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_then_everything() {
        let c = TtlCache::new(3);
        c.insert("a".into(), 1, Duration::ZERO);
        c.insert("b".into(), 2, Duration::from_secs(60));
        c.insert("c".into(), 3, Duration::from_secs(60));
        c.insert("d".into(), 4, Duration::from_secs(60));
        assert_eq!(
            (c.get("b"), c.get("c"), c.get("d")),
            (Some(2), Some(3), Some(4))
        );
        // Full of live entries: the next new key starts afresh.
        c.insert("e".into(), 5, Duration::from_secs(60));
        assert_eq!((c.len(), c.get("e"), c.get("b")), (1, Some(5), None));
        // Overwriting a key never evicts.
        c.insert("f".into(), 6, Duration::from_secs(60));
        c.insert("g".into(), 7, Duration::from_secs(60));
        c.insert("g".into(), 8, Duration::from_secs(60));
        assert_eq!(c.len(), 3);
        assert_eq!(c.get("g"), Some(8));
    }

    #[test]
    fn retain_keys_forgets_by_key() {
        let c = TtlCache::new(10);
        for k in ["grp_a", "grp_b", "task"] {
            c.insert(k.into(), (), Duration::from_secs(60));
        }
        c.retain_keys(|k| !k.starts_with("grp_"));
        assert!(c.contains("task") && !c.contains("grp_a") && !c.contains("grp_b"));
    }
}
