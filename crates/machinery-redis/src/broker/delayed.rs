//! The delayed mover: brings due tasks from the delayed set to their queues.

use std::sync::Weak;
use std::time::Duration;

use machinery_core::Result;
use redis::AsyncCommands;
use tokio_util::sync::CancellationToken;

use super::Inner;
use crate::client::reconnect_backoff;
use crate::{error, scripts};

/// One sweep: move every due delayed task, batch by batch.
pub(super) async fn move_due(inner: &Inner) -> Result<usize> {
    if inner.cluster {
        return move_due_cluster(inner).await;
    }
    let config = &inner.config;
    let batch = config.delayed_batch();
    let mut total = 0;
    loop {
        let now = machinery_core::time::unix_nanos(&machinery_core::time::now());
        let mut c = inner.conn.clone();
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

/// How long a cluster sweeper may take between claiming due tasks and pushing them before
/// another sweeper pushes them again.
const CLAIM_MS: u64 = 30_000;

/// The key of the claims set: `{<delayed key>}.claimed` (same slot as the delayed set).
pub(super) fn claims_key(delayed_key: &str) -> Result<String> {
    Ok(format!("{}.claimed", super::slot_prefix(delayed_key)?))
}

/// On a Redis Cluster the queues live in other slots than the delayed set, so no single
/// script can move a task: due tasks are claimed atomically (each by one sweeper), pushed to
/// their queue, then their claim is removed. A sweeper that dies in between leaves a claim
/// that ends after 30 s; the next sweep pushes those tasks again (at least once).
async fn move_due_cluster(inner: &Inner) -> Result<usize> {
    let config = &inner.config;
    let key = &config.delayed_tasks_key;
    let claims = claims_key(key)?;
    let batch = config.delayed_batch();
    let fail = |what: String| move |e| error::map(what, e);
    let mut total = 0;
    loop {
        let now = machinery_core::time::unix_nanos(&machinery_core::time::now());
        let mut c = inner.conn.clone();
        let claimed: Vec<Vec<u8>> = scripts::CLAIM_DUE
            .key(key)
            .key(&claims)
            .arg(now)
            .arg(batch)
            .arg(CLAIM_MS)
            .invoke_async(&mut c)
            .await
            .map_err(fail(format!("cannot move due tasks out of {key}")))?;
        if claimed.is_empty() {
            return Ok(total);
        }
        let mut by_queue: Vec<(String, Vec<&[u8]>)> = Vec::new();
        for m in &claimed {
            let queue = machinery_core::Signature::from_json(m)
                .ok()
                .map(|s| s.routing_key)
                .filter(|q| !q.is_empty())
                .unwrap_or_else(|| config.default_queue.clone());
            match by_queue.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, list)) => list.push(m),
                None => by_queue.push((queue, vec![m])),
            }
        }
        for (queue, members) in &by_queue {
            c.rpush::<_, _, ()>(queue, members)
                .await
                .map_err(fail(format!("cannot move due tasks to {queue}")))?;
        }
        c.zrem::<_, _, ()>(&claims, &claimed)
            .await
            .map_err(fail(format!("cannot clear claims in {claims}")))?;
        total += claimed.len();
        if claimed.len() < batch {
            return Ok(total);
        }
    }
}

pub(super) async fn delayed_mover(weak: Weak<Inner>, cancel: CancellationToken) {
    let mut backoff = reconnect_backoff(Duration::from_secs(5));
    loop {
        let pause = {
            let Some(inner) = weak.upgrade() else { return };
            match move_due(&inner).await {
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
