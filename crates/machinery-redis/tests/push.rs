//! Result waiting by push on a real Redis: a final state stored by this backend is announced on
//! `machinery_state:<uuid>` in the same round trip (the message is the state itself), a waiter
//! subscribed there wakes at once, and a state stored without an announcement (a Go worker's plain `SET`) is still seen by the
//! waiter's fallback re-reads.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_core::{AsyncResult, Backend, Pushed, Signature, TaskState, WaitStrategy};
use machinery_redis::RedisBackend;
use redis::AsyncCommands;

const WAIT: Duration = Duration::from_secs(20);

async fn connect(url: &str) -> Arc<dyn Backend> {
    Arc::new(RedisBackend::from_url(url).await.expect("connect"))
}

/// How many subscribers `channel` has on the server.
async fn subscribers(url: &str, channel: &str) -> i64 {
    let mut raw = common::raw(url).await;
    let reply: Vec<(String, i64)> = redis::cmd("PUBSUB")
        .arg("NUMSUB")
        .arg(channel)
        .query_async(&mut raw)
        .await
        .expect("PUBSUB NUMSUB");
    reply.first().map_or(0, |(_, n)| *n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_state_is_announced_in_the_same_call() {
    let Some(url) = common::url() else { return };
    let backend = connect(&url).await;
    assert_eq!(WaitStrategy::of(backend.as_ref()), WaitStrategy::Push);
    let sig = Signature::new("add");
    let channel = format!("machinery_state:{}", sig.uuid);
    let mut pubsub = redis::Client::open(url.as_str())
        .unwrap()
        .get_async_pubsub()
        .await
        .expect("pubsub");
    pubsub.subscribe(&channel).await.expect("subscribe");
    let mut messages = pubsub.on_message();
    // Non-final states are not announced; the final one is, once.
    for st in [
        TaskState::pending(&sig),
        TaskState::new(&sig, machinery_core::State::Received),
        TaskState::new(&sig, machinery_core::State::Started),
        TaskState::success(&sig, Vec::new()),
    ] {
        backend.set_state(&st).await.expect("set_state");
    }
    let msg = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("no announcement")
        .expect("pubsub ended");
    // The message is the stored state itself, so a waiter needs no read.
    let pushed = TaskState::from_json(msg.get_payload_bytes()).expect("a state");
    assert!(pushed.is_success());
    let mut conn = common::raw(&url).await;
    let raw: Vec<u8> = conn.get(&sig.uuid).await.unwrap();
    assert_eq!(msg.get_payload_bytes(), &raw[..]);
    let more = tokio::time::timeout(Duration::from_millis(200), messages.next()).await;
    assert!(more.is_err(), "announced more than once: {more:?}");
    // The stored bytes are a normal state (Go reads them with GET).
    let stored = backend.state(&sig.uuid).await.unwrap().expect("stored");
    assert!(stored.is_success());

    // A state whose origin is unknown here (another process wrote RECEIVED) goes through
    // Go's merge (GET, then SET): announced too.
    let other = connect(&url).await;
    let sig2 = Signature::new("add");
    let channel2 = format!("machinery_state:{}", sig2.uuid);
    drop(messages);
    pubsub.subscribe(&channel2).await.expect("subscribe");
    let mut messages = pubsub.on_message();
    other
        .set_state(&TaskState::new(&sig2, machinery_core::State::Received))
        .await
        .unwrap();
    backend
        .set_state(&TaskState::failure(&sig2, "boom"))
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, messages.next())
        .await
        .expect("no announcement from the merging script")
        .expect("pubsub ended");
    assert_eq!(msg.get_channel_name(), channel2);
    let pushed = TaskState::from_json(msg.get_payload_bytes()).expect("a state");
    assert_eq!(
        (pushed.state, pushed.error.as_str()),
        (machinery_core::State::Failure, "boom")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_is_woken_by_another_processs_final_state() {
    let Some(url) = common::url() else { return };
    let waiter = connect(&url).await;
    let writer = connect(&url).await;
    let sig = Signature::new("add");
    let mut watch = waiter
        .watch_state(&sig.uuid)
        .await
        .unwrap()
        .expect("a single node pushes");
    assert_eq!(
        subscribers(&url, &format!("machinery_state:{}", sig.uuid)).await,
        1
    );
    writer
        .set_state(&TaskState::success(&sig, Vec::new()))
        .await
        .unwrap();
    let pushed = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the watch was not woken");
    // The push carries the state: the watcher needs no read.
    match pushed {
        Some(Pushed::State(state)) => {
            assert!(state.is_success());
            assert_eq!(state.task_uuid, sig.uuid);
        }
        other => panic!("expected the pushed state, got {other:?}"),
    }
    // A message that is not a state (what an earlier version published) still wakes it.
    let mut raw = common::raw(&url).await;
    let _: () = raw
        .publish(format!("machinery_state:{}", sig.uuid), "SUCCESS")
        .await
        .unwrap();
    let pushed = tokio::time::timeout(WAIT, watch.next())
        .await
        .expect("the watch was not woken by a plain message");
    assert_eq!(pushed, Some(Pushed::Changed));
    // Dropping the watch unsubscribes.
    drop(watch);
    machinery_testkit::wait_until(WAIT, "the unsubscription", || {
        let url = url.clone();
        let channel = format!("machinery_state:{}", sig.uuid);
        async move { subscribers(&url, &channel).await == 0 }
    })
    .await;
}

/// With a five-second poll interval, a waiter whose fallback re-reads have backed off past a
/// second still sees SUCCESS within a fraction of that: it was woken by the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_on_the_push_long_before_its_next_poll() {
    let Some(url) = common::url() else { return };
    let waiter = connect(&url).await;
    let writer = connect(&url).await;
    let sig = Signature::new("add");
    writer.set_state(&TaskState::pending(&sig)).await.unwrap();
    let res = AsyncResult::new(sig.clone(), Arc::clone(&waiter));
    let waiting = tokio::spawn(async move {
        let r = res
            .get_with_timeout(Duration::from_secs(60), Duration::from_secs(5))
            .await;
        (r, Instant::now())
    });
    let channel = format!("machinery_state:{}", sig.uuid);
    machinery_testkit::wait_until(WAIT, "the waiter's subscription", || {
        let (url, channel) = (url.clone(), channel.clone());
        async move { subscribers(&url, &channel).await == 1 }
    })
    .await;
    // Not a synchronisation: the fallback re-reads back off (10 ms doubling), so after 1.5 s
    // the next one is more than a second away.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let stored_at = Instant::now();
    writer
        .set_state(&TaskState::success(&sig, Vec::new()))
        .await
        .unwrap();
    let (got, woke_at) = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiter never returned")
        .unwrap();
    assert_eq!(got.unwrap(), Vec::new());
    let latency = woke_at.duration_since(stored_at);
    assert!(
        latency < Duration::from_millis(500),
        "SUCCESS seen {latency:?} after it was stored: not woken by the push"
    );
}

/// A Go worker stores its states with a plain `SET` and announces nothing: the waiter's
/// fallback re-reads find the state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sees_a_state_stored_without_push() {
    let Some(url) = common::url() else { return };
    let waiter = connect(&url).await;
    let sig = Signature::new("add");
    let mut raw = common::raw(&url).await;
    let pending = TaskState::pending(&sig).to_json().unwrap();
    let _: () = raw.set_ex(&sig.uuid, pending, 60).await.unwrap();
    let res = AsyncResult::new(sig.clone(), Arc::clone(&waiter));
    let waiting = tokio::spawn(async move {
        res.get_with_timeout(Duration::from_secs(60), Duration::from_millis(200))
            .await
    });
    let channel = format!("machinery_state:{}", sig.uuid);
    machinery_testkit::wait_until(WAIT, "the waiter's subscription", || {
        let (url, channel) = (url.clone(), channel.clone());
        async move { subscribers(&url, &channel).await == 1 }
    })
    .await;
    let success = TaskState::success(&sig, Vec::new()).to_json().unwrap();
    let _: () = raw.set_ex(&sig.uuid, success, 60).await.unwrap();
    let got = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiter never saw the state stored without push")
        .unwrap();
    assert_eq!(got.unwrap(), Vec::new());
}
