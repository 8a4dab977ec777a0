//! Fault tests of the SQS broker with real worker processes (`machinery worker`), Redis as the
//! result backend: a worker killed with SIGKILL in the middle of 1 000 tasks. (Not 5 000:
//! moto's SQS walks the whole queue for each receive, delete and visibility change, so its
//! cost grows with the queue's depth; on the shared 2-core machine a queue of 5 000 moved at
//! under one task a second.) Needs
//! `MACHINERY_TEST_SQS_URL` (moto in CI: the queue URL prefix) and `MACHINERY_TEST_REDIS_URL`
//! (unset = skipped).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use machinery::sqs::aws_sdk_sqs::types::QueueAttributeName;
use machinery::sqs::{SqsBroker, SqsConfig};
use machinery::{Config, Server, server_from_config};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

mod common;

use common::{Worker, redis_conn, send_adds, successes, wait_for_successes, worker_command};

const SQS_VAR: &str = "MACHINERY_TEST_SQS_URL";
const REDIS_VAR: &str = "MACHINERY_TEST_REDIS_URL";

/// The visibility timeout of these tests' receives: a killed worker's messages come back
/// this long after it last extended them. Not shorter: the heartbeat extends every held
/// message every third of it, and on a loaded machine moto answers slowly enough that a
/// shorter timeout lapses (tasks run twice) and the heartbeats crowd out the real work.
const VISIBILITY_SECS: u32 = 15;

fn namespace() -> String {
    format!("sf{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// The broker URL the facade routes to the SQS driver: `sqs+http://host:port/<account>` for
/// a local server such as moto, Go's `https://sqs.<region>.amazonaws.com/<account>` as is.
fn facade_url(prefix: &str) -> String {
    if prefix.contains("://sqs.") || prefix.starts_with("sqs+") {
        prefix.to_owned()
    } else {
        format!("sqs+{prefix}")
    }
}

struct Setup {
    sqs: String,
    redis: String,
    queue: String,
}

impl Setup {
    fn config(&self) -> Config {
        let mut config = Config {
            broker: self.sqs.clone(),
            result_backend: self.redis.clone(),
            default_queue: self.queue.clone(),
            ..Config::default()
        };
        // The default long poll (20 s) also gives each request an attempt timeout of 30 s,
        // which a loaded moto needs for a SendMessageBatch.
        config.sqs.create_queues = true;
        config.sqs.visibility_timeout = Some(i64::from(VISIBILITY_SECS));
        config
    }

    /// A `machinery worker` process on this queue, configured through Go's environment names.
    fn worker(&self, concurrency: usize) -> Worker {
        let mut cmd = worker_command(&self.sqs, &self.redis, &self.queue, concurrency);
        cmd.env("SQS_VISIBILITY_TIMEOUT", VISIBILITY_SECS.to_string());
        Worker::spawn(cmd)
    }

    async fn sender(&self) -> Server {
        server_from_config(self.config()).await.expect("sender")
    }

    async fn inspector(&self) -> SqsBroker {
        SqsBroker::connect(SqsConfig::from_machinery(&self.sqs, &self.config()))
            .await
            .expect("inspect")
    }
}

/// SQS's (moto's exact) counts of visible and in-flight messages of `queue`.
async fn counts(broker: &SqsBroker, queue: &str) -> (u64, u64) {
    let out = broker
        .client()
        .get_queue_attributes()
        .queue_url(broker.queue_url(queue))
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get = |name: QueueAttributeName| -> u64 {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

async fn delete_states(conn: &mut MultiplexedConnection, uuids: &[String]) {
    for chunk in uuids.chunks(1000) {
        let _: () = conn.del(chunk).await.expect("del");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_mid_run_loses_no_task() {
    let Some(sqs) = machinery_testkit::env_url(SQS_VAR) else {
        return;
    };
    let Some(redis_url) = machinery_testkit::env_url(REDIS_VAR) else {
        return;
    };
    const N: usize = 1_000;
    let setup = Setup {
        sqs: facade_url(&sqs),
        redis: redis_url.clone(),
        queue: format!("{}_tasks", namespace()),
    };
    let mut conn = redis_conn(&redis_url, REDIS_VAR).await;
    let inspector = setup.inspector().await;
    inspector.ensure_queue(&setup.queue).await.expect("queue");
    let server = setup.sender().await;
    let uuids = send_adds(&server, &setup.queue, 0, N).await;
    assert_eq!(uuids.iter().collect::<HashSet<_>>().len(), N);

    let mut first = setup.worker(64);
    wait_for_successes(
        &mut conn,
        &uuids,
        N / 4,
        Duration::from_secs(600),
        &mut first,
    )
    .await;
    first.kill();
    let killed_at = Instant::now();
    let done_at_kill = successes(&mut conn, &uuids).await;
    // What the dead worker held (received, not deleted) stays invisible until its
    // visibility timeout ends: the test really kills a worker holding messages.
    let (_, in_flight) = counts(&inspector, &setup.queue).await;
    assert!(
        done_at_kill < N,
        "the worker finished everything before the kill"
    );
    assert!(in_flight > 0, "the killed worker held no message");

    let mut second = setup.worker(64);
    wait_for_successes(&mut conn, &uuids, N, Duration::from_secs(900), &mut second).await;
    println!(
        "killed the worker (SIGKILL) at {done_at_kill}/{N} SUCCESS holding {in_flight} \
         unacked messages (visibility timeout {VISIBILITY_SECS} s); all {N} SUCCESS {:.1} s \
         after the kill, 0 lost",
        killed_at.elapsed().as_secs_f64()
    );
    // Every message is deleted once its task succeeded (the second worker's acks are
    // batched: give them a moment).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (visible, in_flight) = counts(&inspector, &setup.queue).await;
        if visible == 0 && in_flight == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after every task succeeded: {visible} visible, {in_flight} in flight"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    second.kill();
    let client = inspector.client();
    for q in [setup.queue.clone(), format!("{}-dead", setup.queue)] {
        let _ = client
            .delete_queue()
            .queue_url(inspector.queue_url(&q))
            .send()
            .await;
    }
    delete_states(&mut conn, &uuids).await;
}
