//! Result waiting by push on a real RabbitMQ: a waiter binds a private queue to the results
//! exchange with the task's UUID and consumes it, so every state published for the task (ours
//! or a Go worker's) reaches it at once, while the task's own queue is left to other readers;
//! a state put into the task's queue without going through the exchange is still seen by the
//! waiter's fallback re-reads.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::BasicPublishOptions;
use machinery_amqp::{AmqpBackend, AmqpConfig};
use machinery_core::{AsyncResult, Backend, Pushed, Signature, State, TaskState, WaitStrategy};

const WAIT: Duration = Duration::from_secs(20);

fn url() -> Option<String> {
    machinery_testkit::env_url(common::URL_VAR)
}

fn namespace() -> String {
    let id = uuid_like();
    format!("mp{id}")
}

fn uuid_like() -> String {
    Signature::new("x").uuid.replace('-', "")[..12].to_owned()
}

async fn connect(url: &str, exchange: &str) -> Arc<dyn Backend> {
    Arc::new(
        AmqpBackend::connect(AmqpConfig {
            url: url.to_owned(),
            exchange: exchange.to_owned(),
            ..AmqpConfig::default()
        })
        .await
        .expect("connect"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_receives_every_state_published_for_its_task() {
    let Some(url) = url() else { return };
    let exchange = format!("{}_exchange", namespace());
    let waiter = connect(&url, &exchange).await;
    let writer = connect(&url, &exchange).await;
    assert_eq!(WaitStrategy::of(waiter.as_ref()), WaitStrategy::Push);
    let sig = Signature::new("add");
    let mut watch = waiter
        .watch_state(&sig.uuid)
        .await
        .unwrap()
        .expect("a named exchange pushes");
    for st in [State::Pending, State::Received, State::Started] {
        writer.set_state(&TaskState::new(&sig, st)).await.unwrap();
        let pushed = tokio::time::timeout(WAIT, watch.next())
            .await
            .unwrap_or_else(|_| panic!("{st} was not pushed"));
        match pushed {
            Some(Pushed::State(s)) => {
                assert_eq!((s.task_uuid.as_str(), s.state), (sig.uuid.as_str(), st))
            }
            other => panic!("{st}: {other:?}"),
        }
    }
    // The task's own queue still holds the state for every other reader.
    let read = writer.state(&sig.uuid).await.unwrap().expect("stored");
    assert_eq!(read.state, State::Started);
    drop(watch);
    common::delete_all(&url, std::slice::from_ref(&sig.uuid), &[exchange]).await;
}

/// With a five-second poll interval, a waiter whose fallback re-reads have backed off past a
/// second still sees SUCCESS within a fraction of that: it came with the push.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_wakes_on_the_push_long_before_its_next_poll() {
    let Some(url) = url() else { return };
    let exchange = format!("{}_exchange", namespace());
    let waiter = connect(&url, &exchange).await;
    let writer = connect(&url, &exchange).await;
    let sig = Signature::new("add");
    writer.set_state(&TaskState::pending(&sig)).await.unwrap();
    let res = AsyncResult::new(sig.clone(), Arc::clone(&waiter));
    let started = Instant::now();
    let waiting = tokio::spawn(async move {
        let r = res
            .get_with_timeout(Duration::from_secs(60), Duration::from_secs(5))
            .await;
        (r, Instant::now())
    });
    // Not a synchronisation: the fallback re-reads back off (10 ms doubling), so after 1.5 s
    // the next one is more than a second away (the waiter subscribes within that time too).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!waiting.is_finished(), "returned before SUCCESS was stored");
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
        "SUCCESS seen {latency:?} after it was stored ({:?} after the wait began): not woken by the push",
        woke_at.duration_since(started)
    );
    common::delete_all(&url, std::slice::from_ref(&sig.uuid), &[exchange]).await;
}

/// A state put straight into the task's queue (the default exchange, so no copy reaches the
/// waiter's queue) is found by the fallback re-reads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_sees_a_state_stored_without_push() {
    let Some(url) = url() else { return };
    let exchange = format!("{}_exchange", namespace());
    let waiter = connect(&url, &exchange).await;
    let sig = Signature::new("add");
    // Declares the task's queue as Go does.
    waiter.set_state(&TaskState::pending(&sig)).await.unwrap();
    let res = AsyncResult::new(sig.clone(), Arc::clone(&waiter));
    let waiting = tokio::spawn(async move {
        res.get_with_timeout(Duration::from_secs(60), Duration::from_millis(200))
            .await
    });
    let (conn, ch) = common::raw(&url).await;
    let body = TaskState::success(&sig, Vec::new()).to_json().unwrap();
    ch.basic_publish(
        "".into(),
        sig.uuid.as_str().into(),
        BasicPublishOptions::default(),
        &body,
        BasicProperties::default().with_content_type("application/json".into()),
    )
    .await
    .expect("publish")
    .await
    .expect("published");
    let got = tokio::time::timeout(WAIT, waiting)
        .await
        .expect("the waiter never saw the state stored without push")
        .unwrap();
    assert_eq!(got.unwrap(), Vec::new());
    let _ = conn.close(200, "bye".into()).await;
    common::delete_all(&url, std::slice::from_ref(&sig.uuid), &[exchange]).await;
}
