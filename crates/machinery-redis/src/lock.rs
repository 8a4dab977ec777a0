//! `RedisLock`: the periodic-task lock, compatible with Go Machinery's.

use std::fmt;

use async_trait::async_trait;
use machinery_core::{Lock, Result};

use crate::client::Conn;
use crate::config::RedisConfig;
use crate::error;
use crate::scripts;

/// The distributed lock that lets one server send a periodic task per tick.
///
/// Same scheme as Go Machinery: the key (Go: `machinery_lock_<binary><task name><cron spec>`,
/// built by the caller) holds the deadline in Unix nanoseconds and expires at it
/// (`SET key <deadline> NX PX <ms>`); a key whose stored deadline has passed is taken over.
/// Check and take-over run in one script, so Go and Rust servers can compete for the same
/// key safely.
#[derive(Clone)]
pub struct RedisLock {
    conn: Conn,
    display: String,
}

impl fmt::Debug for RedisLock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLock")
            .field("url", &self.display)
            .finish_non_exhaustive()
    }
}

impl RedisLock {
    /// Connect to the server (or cluster) named by `config.url`.
    ///
    /// # Errors
    /// [`machinery_core::Error::Config`] for a bad URL; [`machinery_core::Error::Backend`]
    /// naming the server when it cannot be reached.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let (conn, target) = Conn::connect(&config).await?;
        Ok(Self::from_parts(conn, target.display))
    }

    /// Connect with the default settings to `url`.
    ///
    /// # Errors
    /// As [`RedisLock::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(RedisConfig::from_url(url)).await
    }

    pub(crate) fn from_parts(conn: Conn, display: String) -> Self {
        RedisLock { conn, display }
    }
}

#[async_trait]
impl Lock for RedisLock {
    async fn try_lock(&self, key: &str, expires_at_unix_nanos: i64) -> Result<bool> {
        let now = machinery_core::time::unix_nanos(&machinery_core::time::now());
        // Go: expiration = deadline + 1 - now, sent in whole milliseconds (at least 1).
        let ttl_ms =
            (expires_at_unix_nanos.saturating_add(1).saturating_sub(now) / 1_000_000).max(1);
        let mut conn = self.conn.clone();
        let held: i64 = scripts::LOCK
            .key(key)
            .arg(expires_at_unix_nanos)
            .arg(ttl_ms)
            .arg(now)
            .invoke_async(&mut conn)
            .await
            .map_err(|e| error::map(format!("cannot take lock {key}"), e))?;
        Ok(held == 1)
    }
}
