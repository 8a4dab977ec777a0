//! The delayed mover: brings due tasks from the delayed set to their queues.

use std::sync::Weak;
use std::time::Duration;

use machinery_core::Result;
use redis::aio::ConnectionManager;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::client::reconnect_backoff;
use crate::config::RedisConfig;
use crate::{error, scripts};

/// One sweep: move every due delayed task, batch by batch.
pub(super) async fn move_due(conn: &ConnectionManager, config: &RedisConfig) -> Result<usize> {
    let batch = config.delayed_batch();
    let mut total = 0;
    loop {
        let now = machinery_core::time::unix_nanos(&machinery_core::time::now());
        let mut c = conn.clone();
        let moved: usize = scripts::MOVE_DUE
            .key(&config.delayed_tasks_key)
            .arg(now)
            .arg(batch)
            .arg(&config.default_queue)
            .invoke_async(&mut c)
            .await
            .map_err(|e| {
                error::map(
                    format!("cannot move due tasks out of {}", config.delayed_tasks_key),
                    e,
                )
            })?;
        total += moved;
        if moved < batch {
            return Ok(total);
        }
    }
}

pub(super) async fn delayed_mover(weak: Weak<Inner>, cancel: CancellationToken) {
    let mut backoff = reconnect_backoff(Duration::from_secs(5));
    loop {
        let pause = {
            let Some(inner) = weak.upgrade() else { return };
            match move_due(&inner.conn, &inner.config).await {
                Ok(_) => {
                    backoff.reset();
                    inner.config.delayed_poll()
                }
                Err(e) => {
                    tracing::warn!(error = %e, "redis: moving due delayed tasks failed");
                    backoff.next_delay().max(inner.config.delayed_poll())
                }
            }
        };
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}
