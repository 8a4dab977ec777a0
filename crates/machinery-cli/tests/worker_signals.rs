//! `machinery worker` as a process: the first SIGTERM lets the running long_running_task finish
//! and the process exits 0, having taken nothing new, given back every task it had prefetched
//! but not started, and left the consumer registry; a second SIGTERM makes it exit at once (status 130) without
//! finishing it (its message stays unacked, for the lease recovery to hand out again). Uses Redis so a separate process can send to the worker
//! (needs `MACHINERY_TEST_REDIS_URL`; unset = skipped).

use std::time::{Duration, Instant};

use machinery::{Config, Server, Signature, State, server_from_config};
use redis::AsyncCommands;

mod common;

use common::{Worker, redis_conn};

/// Every key matching `pattern`.
async fn scan(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut iter: redis::AsyncIter<'_, String> = conn.scan_match(pattern).await.expect("scan");
    let mut out = Vec::new();
    while let Some(k) = iter.next_item().await {
        out.push(k.expect("key"));
    }
    out
}

async fn wait_state(server: &Server, uuid: &str, want: State, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(st) = server.backend().state(uuid).await.expect("state")
            && st.state == want
        {
            return;
        }
        assert!(Instant::now() < deadline, "{uuid} never reached {want}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_the_running_task_and_a_second_one_exits_at_once() {
    let Some(url) = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL") else {
        return;
    };
    let queue = format!("sig_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let sender = server_from_config(Config {
        broker: url.clone(),
        result_backend: url.clone(),
        default_queue: queue.clone(),
        ..Config::default()
    })
    .await
    .unwrap_or_else(|e| panic!("MACHINERY_TEST_REDIS_URL is set but redis is unreachable: {e}"));

    let mut conn = redis_conn(&url, "MACHINERY_TEST_REDIS_URL").await;

    // First SIGTERM: the 10 s task runs to the end, then exit status 0. Tasks sent after the
    // signal are not run, and none is left in the stopped worker's processing list.
    let mut worker = Worker::start(&url, &url, &queue, 2);
    let r = sender
        .send_task(Signature::new("long_running_task"))
        .await
        .unwrap();
    wait_state(&sender, r.uuid(), State::Started, Duration::from_secs(20)).await;
    let signalled = Instant::now();
    worker.sigterm();
    let mut queued = Vec::new();
    for i in 0..3_i64 {
        let sig = Signature::new("add").arg(i).arg(1_i64);
        queued.push(sender.send_task(sig).await.unwrap());
    }
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "graceful stop must exit 0, got {status}");
    assert_eq!(r.state().await.unwrap().state, State::Success);
    assert!(
        signalled.elapsed() > Duration::from_secs(1),
        "exited before the running task could finish"
    );
    for q in &queued {
        assert_eq!(
            q.state().await.unwrap().state,
            State::Pending,
            "ran after the signal"
        );
    }
    let mut held = Vec::new();
    for key in scan(&mut conn, &format!("{queue}.processing.*")).await {
        let n: usize = conn.llen(&key).await.unwrap();
        held.push((key, n));
    }
    assert!(held.is_empty(), "left in processing lists: {held:?}");
    let registered: usize = conn.zcard(format!("{queue}.consumers")).await.unwrap();
    assert_eq!(registered, 0, "the stopped worker is still registered");
    let waiting: usize = conn.llen(&queue).await.unwrap();
    assert_eq!(
        waiting,
        queued.len(),
        "the tasks sent after the signal wait in the queue"
    );
    sender.broker().purge_queue(&queue).await.unwrap();

    // Two SIGTERMs: exit at once with 130, the task unfinished.
    let mut worker = Worker::start(&url, &url, &queue, 2);
    let r = sender
        .send_task(Signature::new("long_running_task"))
        .await
        .unwrap();
    wait_state(&sender, r.uuid(), State::Started, Duration::from_secs(20)).await;
    let signalled = Instant::now();
    worker.sigterm();
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.sigterm();
    let status = worker.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "second signal: {status}");
    assert!(signalled.elapsed() < Duration::from_secs(5));
    assert_ne!(r.state().await.unwrap().state, State::Success);
    sender.broker().purge_queue(&queue).await.unwrap();
}
