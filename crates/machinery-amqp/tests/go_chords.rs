//! Chords sent by Go on the AMQP result backend, run by Rust workers (needs
//! MACHINERY_TEST_AMQP_URL). Go's AMQP backend keeps no group meta (`InitGroup` does
//! nothing): each member's final state also goes to a queue named by the group UUID, and
//! the group is complete when that queue's message count equals the member's
//! `GroupTaskCount`. The members here are Go's own bytes (`signatures/chord_member_*.json`,
//! written by Go's `SendChord`), published as Go's producer publishes them, with this test's
//! queue and fresh UUIDs substituted so that runs never share queues.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machinery_amqp::{AmqpBackend, AmqpBroker, AmqpConfig};
use machinery_core::{Backend, Broker, Config, Server, State, TaskError, Variadic, new_task_uuid};

fn url() -> Option<String> {
    machinery_testkit::env_url(common::URL_VAR)
}

type Runs = Arc<Mutex<HashMap<String, Vec<(&'static str, Vec<i64>)>>>>;

/// One Rust "process": its own broker and backend connections, a worker on the default
/// queue; each run of the callback (`multiply`) is recorded with its worker and arguments.
async fn rust_worker(
    url: &str,
    config: &Config,
    name: &'static str,
    runs: &Runs,
) -> (Server, machinery_core::WorkerHandle) {
    let amqp = AmqpConfig::from_machinery(url, config);
    let broker = AmqpBroker::connect(amqp.clone()).await.expect("broker");
    let backend = AmqpBackend::connect(amqp).await.expect("backend");
    let server = Server::new(config.clone(), broker, backend);
    server
        .register_task("add", |a: i64, b: i64| async move {
            Ok::<i64, TaskError>(a + b)
        })
        .expect("register add");
    server
        .register_task("multiply", |args: Variadic<i64>| async move {
            Ok::<i64, TaskError>(args.0.iter().product())
        })
        .expect("register multiply");
    let mut worker = server.new_worker(format!("go-chords-{name}"), 4);
    let runs = Arc::clone(runs);
    worker.set_pre_task_handler(move |sig| {
        if sig.name == "multiply" {
            let args = sig
                .args
                .iter()
                .map(|a| a.get::<i64>().expect("int64 argument"))
                .collect();
            runs.lock()
                .unwrap()
                .entry(sig.uuid.clone())
                .or_default()
                .push((name, args));
        }
    });
    (server, worker.launch())
}

/// (ready messages, consumers) of `queue` on a channel of its own.
async fn inspect(conn: &lapin::Connection, queue: &str) -> Option<(u32, u32)> {
    let ch = conn.create_channel().await.expect("channel");
    let q = ch
        .queue_declare(
            queue.into(),
            lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            lapin::types::FieldTable::default(),
        )
        .await
        .ok()?;
    let _ = ch.close(200, "bye".into()).await;
    Some((q.message_count(), q.consumer_count()))
}

/// Ten chords sent as Go's `SendChord` sends them (PENDING stored per member, members
/// published, no group meta), run by two Rust workers with separate connections: every
/// callback runs exactly once, with Go's arguments (10 and the members' results 2 and 4),
/// and ends SUCCESS 80.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_chords_fire_once_on_rust_workers() {
    let Some(url) = url() else { return };
    const CHORDS: usize = 10;
    let ns = format!("gc{}", &new_task_uuid().replace(['-', '_'], "")[4..16]);
    let queue = format!("{ns}_tasks");
    let mut config = Config {
        default_queue: queue.clone(),
        ..Config::default()
    };
    config.amqp.exchange = format!("{ns}_exchange");
    config.amqp.prefetch_count = 4;

    let runs: Runs = Arc::default();
    let mut workers = Vec::new();
    for name in ["a", "b"] {
        workers.push(rust_worker(&url, &config, name, &runs).await);
    }
    let (conn, _) = common::raw(&url).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while inspect(&conn, &queue).await.map(|q| q.1) != Some(2) {
        assert!(Instant::now() < deadline, "the workers did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Go's producer: PENDING for each member through the backend, then each member
    // published with its routing key (the producer declares that queue, as Go's does).
    let sender = AmqpBroker::connect(AmqpConfig::from_machinery(&url, &config))
        .await
        .expect("sender broker");
    let sender_backend = AmqpBackend::connect(AmqpConfig::from_machinery(&url, &config))
        .await
        .expect("sender backend");
    let members_go = [
        String::from_utf8(machinery_testkit::fixtures::read(
            "signatures/chord_member_1.json",
        ))
        .expect("utf-8"),
        String::from_utf8(machinery_testkit::fixtures::read(
            "signatures/chord_member_2.json",
        ))
        .expect("utf-8"),
    ];
    let mut chords = Vec::new();
    for _ in 0..CHORDS {
        // Fresh UUIDs (same shape as Go's), this test's queue.
        let id = new_task_uuid();
        let prefix = &id[5..29]; // `xxxxxxxx-xxxx-4xxx-yxxx-`
        let mut group = String::new();
        let mut callback = String::new();
        let mut members = Vec::new();
        for body in &members_go {
            let body = body.replace("00000321-0000-4000-8000-", prefix).replace(
                "\"RoutingKey\":\"machinery_tasks\"",
                &format!("\"RoutingKey\":\"{queue}\""),
            );
            let sig = machinery_core::Signature::from_json(body.as_bytes()).expect("Go's body");
            assert_eq!(sig.group_task_count, 2);
            group = sig.group_uuid.clone();
            callback = sig.chord_callback.as_ref().expect("callback").uuid.clone();
            sender_backend
                .set_state(&machinery_core::TaskState::pending(&sig))
                .await
                .expect("PENDING as Go's SetStatePending");
            members.push((sig.uuid.clone(), body));
        }
        for (_, body) in &members {
            sender
                .publish_raw(&queue, body.as_bytes())
                .await
                .expect("publish as Go");
        }
        chords.push((group, callback, members));
    }

    // Every callback ends SUCCESS with Go's result.
    let deadline = Instant::now() + Duration::from_secs(90);
    for (_, callback, _) in &chords {
        loop {
            let st = sender_backend.state(callback).await.expect("state");
            if let Some(st) = st.filter(|s| s.state == State::Success) {
                let got: Vec<i64> = st
                    .results
                    .iter()
                    .flatten()
                    .map(|r| r.value.get().parse().expect("int"))
                    .collect();
                assert_eq!(got, vec![80], "10 * 2 * 4");
                break;
            }
            assert!(
                Instant::now() < deadline,
                "callback {callback} never succeeded (runs: {:?})",
                runs.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    // Stop both workers; then nothing may be left and no callback may have run twice.
    for (_, w) in &workers {
        w.quit();
    }
    for (_, w) in workers {
        w.join().await.expect("worker");
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    let left = loop {
        let left = inspect(&conn, &queue).await.map_or(0, |q| q.0);
        if left != 0 || Instant::now() >= deadline {
            break left;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(left, 0, "tasks left in the queue (a second callback?)");
    let runs = runs.lock().unwrap().clone();
    for (_, callback, _) in &chords {
        let got = runs.get(callback).cloned().unwrap_or_default();
        assert_eq!(
            got.len(),
            1,
            "callback {callback} ran {} times: {got:?}",
            got.len()
        );
        let mut args = got[0].1.clone();
        args.sort_unstable();
        assert_eq!(args, vec![2, 4, 10], "Go's callback arguments");
    }
    let callbacks_run: usize = runs.values().map(Vec::len).sum();
    assert_eq!(callbacks_run, CHORDS);

    for (group, callback, members) in &chords {
        sender_backend
            .purge_group(group)
            .await
            .expect("purge group");
        sender_backend.purge_state(callback).await.expect("purge");
        for (uuid, _) in members {
            sender_backend.purge_state(uuid).await.expect("purge");
        }
    }
    sender.close().await.expect("close");
    sender_backend.close().await;
    let _ = conn.close(200, "bye".into()).await;
    common::delete_all(
        &url,
        &[queue.clone(), format!("{queue}.dead")],
        &[format!("{ns}_exchange"), format!("{ns}_exchange.dead")],
    )
    .await;
}
