//! Fault test of the Pub/Sub driver with real worker processes (`machinery worker`): a worker
//! killed with SIGKILL in the middle of 3 000 tasks loses none (its messages come back when
//! their ack deadline ends). Needs `MACHINERY_TEST_PUBSUB_URL` and `PUBSUB_EMULATOR_HOST`
//! (Google's emulator) and `MACHINERY_TEST_REDIS_URL` for the results (unset = skipped).
//! The emulator restart test is in `crates/machinery-pubsub/tests/driver.rs`.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use machinery::pubsub::{PubSubBroker, PubSubConfig};
use machinery::{Config, server_from_config};
use redis::AsyncCommands;

mod common;

use common::{Worker, redis_conn, send_adds, successes, wait_for_successes, worker_command};

const PUBSUB_VAR: &str = "MACHINERY_TEST_PUBSUB_URL";
const REDIS_VAR: &str = "MACHINERY_TEST_REDIS_URL";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_mid_run_loses_no_task() {
    let Some(pubsub) = machinery_testkit::env_url(PUBSUB_VAR) else {
        return;
    };
    let Some(redis_url) = machinery_testkit::env_url(REDIS_VAR) else {
        return;
    };
    const N: usize = 3_000;
    let ns = format!("pf{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let queue = format!("{ns}_tasks");
    // The URL's subscription, on the test's topic; both exist beforehand, as Go requires.
    let project = pubsub
        .trim_start_matches("gcppubsub://")
        .split('/')
        .next()
        .expect("gcppubsub://<project>/<subscription>");
    let url = format!("gcppubsub://{project}/{ns}_sub");
    let admin = PubSubBroker::connect(PubSubConfig {
        default_queue: queue.clone(),
        create_missing: true,
        ..PubSubConfig::from_url(&url)
    })
    .await
    .expect("create the topic and the subscription on the emulator");

    let mut conn = redis_conn(&redis_url, REDIS_VAR).await;
    let server = server_from_config(Config {
        broker: url.clone(),
        result_backend: redis_url.clone(),
        default_queue: queue.clone(),
        ..Config::default()
    })
    .await
    .expect("sender");
    let sent = Instant::now();
    let uuids = send_adds(&server, &queue, 0, N).await;
    let send_secs = sent.elapsed().as_secs_f64();
    assert_eq!(uuids.iter().collect::<HashSet<_>>().len(), N);

    // Ack deadline 10 s (the shortest): the dead worker's messages come back quickly.
    let worker = |c: usize| {
        let mut cmd = worker_command(&url, &redis_url, &queue, c);
        cmd.env("GCP_PUBSUB_ACK_DEADLINE", "10");
        Worker::spawn(cmd)
    };
    let mut first = worker(16);
    wait_for_successes(
        &mut conn,
        &uuids,
        N / 4,
        Duration::from_secs(120),
        &mut first,
    )
    .await;
    first.kill();
    let killed_at = Instant::now();
    let done_at_kill = successes(&mut conn, &uuids).await;
    assert!(done_at_kill < N, "the worker was killed mid-run");

    let mut second = worker(16);
    wait_for_successes(&mut conn, &uuids, N, Duration::from_secs(180), &mut second).await;
    println!(
        "sent {N} in {send_secs:.1} s; killed the worker at {done_at_kill}/{N} SUCCESS; all {N} \
         SUCCESS {:.1} s after the kill, 0 lost",
        killed_at.elapsed().as_secs_f64()
    );
    second.kill();
    for chunk in uuids.chunks(1000) {
        let _: () = conn.del(chunk).await.expect("del");
    }
    admin.delete_prefixed(&ns).await;
}
