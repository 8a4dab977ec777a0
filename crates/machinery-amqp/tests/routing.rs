//! Routing on a real RabbitMQ (needs MACHINERY_TEST_AMQP_URL): a task reaches exactly the
//! queue it was routed to, with a default-queue worker and a custom-queue worker up at once
//! (also when the custom queue was first declared by a Go worker, which binds it with the
//! binding key); the defaults route to the queue the workers read; `prefetch_count` is the
//! consumer's prefetch whatever the concurrency.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use machinery_amqp::{AmqpBroker, AmqpConfig};
use machinery_core::{
    Broker, Config, MemoryBackend, Server, Signature, State, TaskError, new_task_uuid,
};

fn url() -> Option<String> {
    machinery_testkit::env_url(common::URL_VAR)
}

fn ns() -> String {
    format!("rt{}", &new_task_uuid().replace(['-', '_'], "")[4..16])
}

/// `x-expires` of the test queues (10 minutes), as the conformance suite declares them.
fn expiring_args() -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-expires".into(), AMQPValue::LongInt(600_000));
    t
}

/// (ready messages, consumers) of `queue`, `None` when it does not exist (on a channel of
/// its own: a 404 closes it).
async fn inspect(conn: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = ch.close(200, "bye".into()).await;
    Some((q.message_count(), q.consumer_count()))
}

type Runs = Arc<Mutex<HashMap<String, Vec<&'static str>>>>;

/// Two workers, one on the default queue and one on a custom queue that a Go worker declared
/// first (bound with the binding key, and with Go's default one): every task runs once, on
/// its own queue's worker; a task with one retry runs twice there, its `on_error` callback
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_and_custom_queue_workers_each_run_only_their_tasks() {
    let Some(url) = url() else { return };
    let ns = ns();
    let exchange = format!("{ns}_exchange");
    let default_queue = format!("{ns}_tasks");
    let custom_queue = format!("{ns}_images");
    let mut queue_args = std::collections::BTreeMap::new();
    queue_args.insert("x-expires".to_owned(), serde_json::json!(600_000));
    let amqp = AmqpConfig {
        url: url.clone(),
        exchange: exchange.clone(),
        default_queue: default_queue.clone(),
        queue_declare_args: queue_args,
        ..AmqpConfig::default()
    };

    // A Go worker on the custom queue declared it first: durable, Go's arguments, bound with
    // the binding key (here the default queue, as the binding key is unset) and Go's default.
    let (conn, ch) = common::raw(&url).await;
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Direct,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("Go's exchange");
    ch.queue_declare(
        custom_queue.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        expiring_args(),
    )
    .await
    .expect("Go's custom queue");
    for key in [default_queue.as_str(), "machinery_task"] {
        ch.queue_bind(
            custom_queue.as_str().into(),
            exchange.as_str().into(),
            key.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("Go's binding");
    }

    let broker = AmqpBroker::connect(amqp).await.expect("connect");
    let config = Config {
        default_queue: default_queue.clone(),
        ..Config::default()
    };
    let server = Server::new(config, broker.clone(), MemoryBackend::new());
    server
        .register_task("add", |a: i64, b: i64| async move {
            Ok::<i64, TaskError>(a + b)
        })
        .expect("register add");
    server
        .register_task("flaky", || async move {
            Err::<(), _>(TaskError::failed("always fails"))
        })
        .expect("register flaky");
    server
        .register_task("record", |error: String| async move {
            assert_eq!(error, "always fails");
            Ok::<(), TaskError>(())
        })
        .expect("register record");

    let runs: Runs = Arc::default();
    let start = |name: &'static str, mut worker: machinery_core::Worker| {
        let runs = Arc::clone(&runs);
        worker.set_pre_task_handler(move |sig| {
            runs.lock()
                .unwrap()
                .entry(sig.uuid.clone())
                .or_default()
                .push(name);
        });
        worker.launch()
    };
    let default_worker = start("default", server.new_worker("default", 4));
    let custom_worker = start(
        "custom",
        server.new_custom_queue_worker("custom", 4, custom_queue.clone()),
    );
    // Both consumers are up (their queues are declared and bound) before anything is sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let consumers = (
            inspect(&conn, &default_queue).await.map(|q| q.1),
            inspect(&conn, &custom_queue).await.map(|q| q.1),
        );
        if consumers == (Some(1), Some(1)) {
            break;
        }
        assert!(Instant::now() < deadline, "the workers did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // (uuid, queue of its worker, expected runs)
    let mut expected: Vec<(String, &'static str, usize)> = Vec::new();
    for i in 0..20i64 {
        let r = server
            .send_task(Signature::new("add").arg(i).arg(1i64))
            .await
            .expect("send default");
        expected.push((r.uuid().to_owned(), "default", 1));
        let r = server
            .send_task(
                Signature::new("add")
                    .arg(i)
                    .arg(2i64)
                    .routing_key(&custom_queue),
            )
            .await
            .expect("send custom");
        expected.push((r.uuid().to_owned(), "custom", 1));
    }
    for (queue, name) in [(None, "default"), (Some(&custom_queue), "custom")] {
        let mut callback = Signature::new("record");
        let mut flaky = Signature::new("flaky").retries(1, 0);
        if let Some(q) = queue {
            callback = callback.routing_key(q);
            flaky = flaky.routing_key(q);
        }
        let flaky = flaky.on_error(callback.clone());
        expected.push((flaky.uuid.clone(), name, 2));
        expected.push((callback.uuid.clone(), name, 1));
        server.send_task(flaky).await.expect("send flaky");
    }

    // Wait for every expected run and every final state.
    let backend = Arc::clone(server.backend());
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen_all = {
            let runs = runs.lock().unwrap();
            expected
                .iter()
                .all(|(uuid, _, n)| runs.get(uuid).map_or(0, Vec::len) >= *n)
        };
        let mut final_all = seen_all;
        if seen_all {
            for (uuid, _, _) in &expected {
                let st = backend.state(uuid).await.expect("state");
                if !st.is_some_and(|s| matches!(s.state, State::Success | State::Failure)) {
                    final_all = false;
                    break;
                }
            }
        }
        if final_all {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not every task ran: {:?}",
            runs.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Stop both workers (what they prefetched goes back to their queues), then nothing may
    // be left: a copy routed to the wrong queue either ran (counted below) or waits there.
    default_worker.quit();
    custom_worker.quit();
    default_worker.join().await.expect("default worker");
    custom_worker.join().await.expect("custom worker");
    // Watch the queues for a moment: requeued deliveries reappear as the channels close.
    let deadline = Instant::now() + Duration::from_secs(2);
    let left = loop {
        let left = (
            inspect(&conn, &default_queue).await.map_or(0, |q| q.0),
            inspect(&conn, &custom_queue).await.map_or(0, |q| q.0),
        );
        if left != (0, 0) || Instant::now() >= deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let runs = runs.lock().unwrap().clone();
    let mut wrong = Vec::new();
    for (uuid, queue, n) in &expected {
        let got = runs.get(uuid).cloned().unwrap_or_default();
        if got.len() != *n || got.iter().any(|w| w != queue) {
            wrong.push(format!(
                "{uuid}: expected {n} run(s) on {queue}, got {got:?}"
            ));
        }
    }
    let per_worker = |w: &str| runs.values().flatten().filter(|x| **x == w).count();
    let want = |w: &str| {
        expected
            .iter()
            .filter(|(_, q, _)| *q == w)
            .map(|(_, _, n)| n)
            .sum::<usize>()
    };
    assert!(wrong.is_empty(), "tasks ran wrongly:\n{}", wrong.join("\n"));
    assert_eq!(
        per_worker("default"),
        want("default"),
        "runs on the default worker"
    );
    assert_eq!(
        per_worker("custom"),
        want("custom"),
        "runs on the custom worker"
    );
    assert_eq!(runs.len(), expected.len(), "unexpected tasks ran");
    assert_eq!(left, (0, 0), "messages left in (default, custom) queue");

    broker.close().await.expect("close");
    let _ = conn.close(200, "bye".into()).await;
    let mut queues = vec![default_queue, custom_queue];
    queues.extend(
        queues
            .clone()
            .into_iter()
            .map(|q| format!("{q}.dead"))
            .collect::<Vec<_>>(),
    );
    common::delete_all(
        &url,
        &queues,
        &[exchange.clone(), format!("{exchange}.dead")],
    )
    .await;
}

/// With the defaults (no binding key configured) a task sent without a routing key is
/// published with the default queue's name and lands only there: no second queue fills up,
/// and no warning is logged. Go's explicit split (`binding_key` != `default_queue`) still
/// gets Go's topology (the publisher's `<binding key>` queue receives a copy), with one
/// warning at start-up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn defaults_route_to_the_consumed_queue_and_gos_split_is_warned_about() {
    let Some(url) = url() else { return };
    common::logs();
    let ns = ns();
    let exchange = format!("{ns}_exchange");
    let default_queue = format!("{ns}_tasks");
    let go_key = format!("{ns}_task");
    let mut config = Config {
        default_queue: default_queue.clone(),
        ..Config::default()
    };
    config.amqp.exchange = exchange.clone();

    // Defaults (as a user who configures nothing but the queue and exchange names).
    let broker = AmqpBroker::connect(AmqpConfig::from_machinery(&url, &config))
        .await
        .expect("connect");
    assert_eq!(broker.default_routing_key(), default_queue);
    let sig = Signature::new("add").arg(1i64).arg(2i64);
    broker.publish(&sig).await.expect("publish");
    let (conn, _) = common::raw(&url).await;
    assert_eq!(
        inspect(&conn, &default_queue).await.map(|q| q.0),
        Some(1),
        "the task is in the queue workers read"
    );
    let mut stream = broker
        .consume(
            &default_queue,
            machinery_core::ConsumeOptions {
                prefetch: 1,
                consumer_tag: "routing".into(),
            },
        )
        .await
        .expect("consume");
    let d = futures::StreamExt::next(&mut stream)
        .await
        .expect("a delivery")
        .expect("ok");
    assert_eq!(d.signature().expect("task").uuid, sig.uuid);
    d.ack().await.expect("ack");
    drop(stream);
    broker.close().await.expect("close");
    let logged = common::logs();
    assert!(
        !logged.contains(&format!("differs from default_queue `{default_queue}`")),
        "the defaults were warned about:\n{logged}"
    );

    // Go's split, asked for explicitly.
    config.amqp.binding_key = go_key.clone();
    let broker = AmqpBroker::connect(AmqpConfig::from_machinery(&url, &config))
        .await
        .expect("connect");
    assert_eq!(broker.default_routing_key(), go_key);
    let mut stream = broker
        .consume(
            &default_queue,
            machinery_core::ConsumeOptions {
                prefetch: 1,
                consumer_tag: "routing".into(),
            },
        )
        .await
        .expect("consume");
    let sig = Signature::new("add").arg(3i64).arg(4i64);
    broker.publish(&sig).await.expect("publish");
    let d = futures::StreamExt::next(&mut stream)
        .await
        .expect("a delivery")
        .expect("ok");
    assert_eq!(d.signature().expect("task").uuid, sig.uuid);
    d.ack().await.expect("ack");
    drop(stream);
    assert_eq!(
        inspect(&conn, &go_key).await.map(|q| q.0),
        Some(1),
        "Go's publisher queue keeps its copy, as Go does"
    );
    broker.close().await.expect("close");
    let logged = common::logs();
    let warnings = logged
        .lines()
        .filter(|l| {
            l.contains("WARN")
                && l.contains(&format!(
                    "binding_key `{go_key}` differs from default_queue `{default_queue}`"
                ))
        })
        .count();
    assert_eq!(warnings, 1, "one warning at start-up:\n{logged}");

    let _ = conn.close(200, "bye".into()).await;
    common::delete_all(
        &url,
        &[default_queue, go_key],
        &[exchange.clone(), format!("{exchange}.dead")],
    )
    .await;
}

/// `amqp.prefetch_count` is the consumer's `basic.qos`, as in Go: a worker of unlimited
/// concurrency (0) with Go's default prefetch of 3 holds 3 unacknowledged tasks, not 256,
/// and the rest stay ready in the queue for other workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefetch_count_is_the_consumers_prefetch() {
    let Some(url) = url() else { return };
    let ns = ns();
    let exchange = format!("{ns}_exchange");
    let queue = format!("{ns}_tasks");
    let mut config = Config {
        default_queue: queue.clone(),
        ..Config::default()
    };
    config.amqp.exchange = exchange.clone();
    assert_eq!(config.amqp.prefetch_count, 3, "Go's default");
    let broker = AmqpBroker::connect(AmqpConfig::from_machinery(&url, &config))
        .await
        .expect("connect");
    let server = Server::new(config, broker.clone(), MemoryBackend::new());
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    {
        let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
        server
            .register_task("block", move || {
                let (gate, started) = (Arc::clone(&gate), Arc::clone(&started));
                async move {
                    started.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    gate.acquire().await.expect("gate").forget();
                    Ok::<(), TaskError>(())
                }
            })
            .expect("register");
    }
    const N: usize = 8;
    let mut sent = Vec::new();
    for _ in 0..N {
        sent.push(
            server
                .send_task(Signature::new("block"))
                .await
                .expect("send"),
        );
    }
    let worker = server.new_worker("prefetch", 0).launch();
    let (conn, _) = common::raw(&url).await;
    let count = || started.load(std::sync::atomic::Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    while count() < 3 || inspect(&conn, &queue).await.map(|q| q.0) != Some((N - 3) as u32) {
        assert!(
            Instant::now() < deadline,
            "{} started, queue {:?}",
            count(),
            inspect(&conn, &queue).await
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Held for a while: no fourth task arrives while the three are unacknowledged.
    let watch = Instant::now();
    while watch.elapsed() < Duration::from_millis(700) {
        assert_eq!(
            count(),
            3,
            "a worker of concurrency 0 took more than prefetch_count"
        );
        assert_eq!(
            inspect(&conn, &queue).await.map(|q| q.0),
            Some((N - 3) as u32)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    gate.add_permits(N);
    for r in &sent {
        r.get_with_timeout(Duration::from_secs(30), Duration::from_millis(20))
            .await
            .expect("every task completes");
    }
    assert_eq!(count(), N);
    worker.quit();
    worker.join().await.expect("worker");
    broker.close().await.expect("close");
    let _ = conn.close(200, "bye".into()).await;
    common::delete_all(
        &url,
        &[queue.clone(), format!("{queue}.dead")],
        &[exchange.clone(), format!("{exchange}.dead")],
    )
    .await;
}
