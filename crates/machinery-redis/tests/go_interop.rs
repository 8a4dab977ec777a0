//! Wire compatibility with Go Machinery on a real Redis (needs `MACHINERY_TEST_REDIS_URL`),
//! using the messages and states the real Go library wrote (`testdata/go/`).
//!
//! Queue names in Go's messages are moved under a fresh namespace by rewriting the top-level
//! `"RoutingKey"` value: the bytes are then exactly what Go's `SendTask` writes for that queue.

mod common;

use std::time::Duration;

use futures::StreamExt;
use machinery_core::{Backend, Broker, ConsumeOptions, Payload, Signature, State, TaskState};
use machinery_redis::{RedisBackend, RedisBroker};
use redis::AsyncCommands;

use machinery_testkit::fixtures::{dir as interop_dir, read as fixture};

/// Every Go message file in index order, with its queue moved under `ns`.
fn go_messages(ns: &str) -> Vec<(String, Vec<u8>)> {
    let index: serde_json::Value =
        serde_json::from_slice(&fixture("signatures/index.json")).expect("index.json");
    index
        .as_array()
        .expect("index is an array")
        .iter()
        .map(|entry| {
            let file = entry["file"].as_str().expect("file name");
            let raw = fixture(&format!("signatures/{file}"));
            (file.to_owned(), namespaced(&raw, ns))
        })
        .collect()
}

fn namespaced(raw: &[u8], ns: &str) -> Vec<u8> {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 fixture");
    text.replacen(
        "\"RoutingKey\":\"machinery_tasks\"",
        &format!("\"RoutingKey\":\"{ns}_tasks\""),
        1,
    )
    .replacen(
        "\"RoutingKey\":\"custom_queue\"",
        &format!("\"RoutingKey\":\"{ns}_tasks\""),
        1,
    )
    .into_bytes()
}

#[tokio::test]
async fn go_messages_pushed_to_the_list_are_consumed_and_acked() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;
    let messages = go_messages(&ns);
    for (_, body) in &messages {
        let _: () = raw.rpush(&queue, body).await.expect("rpush like Go");
    }
    let mut stream = broker
        .consume(
            &queue,
            ConsumeOptions {
                prefetch: 8,
                ..ConsumeOptions::default()
            },
        )
        .await
        .expect("consume");
    for (file, body) in &messages {
        let d = tokio::time::timeout(Duration::from_secs(5), stream.next())
            .await
            .unwrap_or_else(|_| panic!("{file} was not delivered"))
            .expect("stream open")
            .expect("delivery");
        let Payload::Task(sig) = &d.payload else {
            panic!("{file} did not decode: {:?}", d.payload);
        };
        assert_eq!(
            Signature::from_json(body).expect("decode"),
            **sig,
            "{file} arrives unchanged and in order"
        );
        assert_eq!(
            &sig.to_json().unwrap(),
            body,
            "{file} re-encodes to Go's bytes"
        );
        d.ack().await.expect("ack");
    }
    let left: usize = raw.llen(&queue).await.unwrap();
    assert_eq!(left, 0);
    let held = processing_lists(&mut raw, &queue).await;
    assert!(held.is_empty(), "acked messages are gone: {held:?}");
    drop(stream);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

/// Processing lists that hold something.
async fn processing_lists(
    raw: &mut redis::aio::MultiplexedConnection,
    queue: &str,
) -> Vec<(String, usize)> {
    let mut lists = common::processing_lists(raw, queue).await;
    lists.retain(|(_, n)| *n > 0);
    lists
}

#[tokio::test]
async fn our_publish_writes_what_go_sendtask_writes() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let delayed_key = config.delayed_tasks_key.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;

    // An empty routing key is filled with the default queue, as Go's SendTask does.
    let go = namespaced(&fixture("signatures/add_int64.json"), &ns);
    let mut sig = Signature::from_json(&go).unwrap();
    sig.routing_key.clear();
    broker.publish(&sig).await.expect("publish");
    let listed: Vec<Vec<u8>> = raw.lrange(&queue, 0, -1).await.unwrap();
    assert_eq!(listed, vec![go]);

    // A future ETA goes to the delayed set with Go's score (ETA in Unix nanoseconds).
    let go = namespaced(&fixture("signatures/eta_offset.json"), &ns);
    let sig = Signature::from_json(&go).unwrap();
    broker.publish(&sig).await.expect("publish delayed");
    let members: Vec<(Vec<u8>, f64)> = raw.zrange_withscores(&delayed_key, 0, -1).await.unwrap();
    assert_eq!(members.len(), 1);
    assert_eq!(members[0].0, go, "the member is Go's signature JSON");
    assert_eq!(
        members[0].1, 1.893_553_445_123_456_8e18,
        "Go's stored score"
    );
    let delayed = broker.delayed_tasks().await.unwrap();
    assert_eq!(delayed, vec![sig]);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn go_delayed_members_move_to_their_queue_byte_for_byte() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let delayed_key = config.delayed_tasks_key.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;
    let utc = namespaced(&fixture("signatures/eta_utc.json"), &ns);
    let offset = namespaced(&fixture("signatures/eta_offset.json"), &ns);
    // Go's scores (2030) are not due: nothing moves.
    for m in [&utc, &offset] {
        let _: () = raw
            .zadd(&delayed_key, m, "1893553445123456789")
            .await
            .unwrap();
    }
    assert_eq!(broker.move_due_delayed_tasks().await.unwrap(), 0);
    // Make them due (as if 2030 had come): both move, unchanged, to the routing key's queue.
    let _: () = raw.zadd(&delayed_key, &utc, 1).await.unwrap();
    let _: () = raw.zadd(&delayed_key, &offset, 2).await.unwrap();
    assert_eq!(broker.move_due_delayed_tasks().await.unwrap(), 2);
    let listed: Vec<Vec<u8>> = raw.lrange(&queue, 0, -1).await.unwrap();
    assert_eq!(listed, vec![utc, offset]);
    let left: usize = raw.zcard(&delayed_key).await.unwrap();
    assert_eq!(left, 0);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn go_written_states_are_read() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .expect("connect");
    let mut raw = common::raw(&url).await;
    let mut count = 0;
    for entry in std::fs::read_dir(interop_dir().join("states")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        if name.starts_with("group_meta") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let key = format!("{ns}_{name}");
        let _: () = raw.set_ex(&key, &bytes, 60).await.unwrap();
        let got = backend
            .state(&key)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"))
            .expect("stored");
        assert_eq!(got, TaskState::from_json(&bytes).unwrap(), "{name}");
        count += 1;
    }
    assert!(count >= 30, "only {count} state fixtures found");
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn states_we_write_are_gos_bytes() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .expect("connect");
    let mut raw = common::raw(&url).await;

    // add(2,3) through PENDING, RECEIVED, STARTED, SUCCESS, as Go's worker wrote it. Each
    // later state is written with a fresh CreatedAt; the stored one must win.
    let pending = fixture("states/pending.json");
    let first = TaskState::from_json(&pending).unwrap();
    let key = first.task_uuid.clone();
    backend.set_state(&first).await.unwrap();
    let stored: Vec<u8> = raw.get(&key).await.unwrap();
    assert_eq!(stored, pending);
    for file in ["received", "started", "success"] {
        let go = fixture(&format!("states/{file}.json"));
        let mut state = TaskState::from_json(&go).unwrap();
        state.created_at = machinery_core::time::now();
        backend.set_state(&state).await.unwrap();
        let stored: Vec<u8> = raw.get(&key).await.unwrap();
        assert_eq!(
            String::from_utf8_lossy(&stored),
            String::from_utf8_lossy(&go),
            "{file}"
        );
    }
    let ttl: i64 = raw.ttl(&key).await.unwrap();
    assert!((3590..=3600).contains(&ttl), "EX 3600, got {ttl}");

    // Go's RECEIVED without an earlier state: empty TaskName, zero CreatedAt.
    let go = fixture("states/received_without_pending.json");
    let mut state = TaskState::from_json(&go).unwrap();
    state.task_uuid = format!("{ns}_task_panic");
    backend.set_state(&state).await.unwrap();
    let stored: Vec<u8> = raw.get(&state.task_uuid).await.unwrap();
    assert_eq!(stored, state.to_json().unwrap());
    assert_eq!(state.state, State::Received);

    let _: () = raw.del(&key).await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn trigger_chord_on_a_go_group_meta_writes_gos_bytes() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .expect("connect");
    let mut raw = common::raw(&url).await;
    let init = fixture("states/group_meta_init.json");
    let triggered = fixture("states/group_meta_chord_triggered.json");
    let meta = machinery_core::GroupMeta::from_json(&init).unwrap();
    let group = meta.group_uuid.clone();
    let _: () = raw.set_ex(&group, &init, 3600).await.unwrap();

    // The members' states as Go's worker left them; group_states reads them in order.
    let member = fixture("states/chord_member_success.json");
    let member_state = TaskState::from_json(&member).unwrap();
    for uuid in &meta.task_uuids {
        let mut s = member_state.clone();
        s.task_uuid.clone_from(uuid);
        let _: () = raw.set_ex(uuid, s.to_json().unwrap(), 60).await.unwrap();
    }
    let states = backend.group_states(&group).await.unwrap();
    let uuids: Vec<&str> = states.iter().map(|s| s.task_uuid.as_str()).collect();
    assert_eq!(
        uuids,
        meta.task_uuids
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    assert!(states.iter().all(|s| s.state == State::Success));

    assert!(backend.trigger_chord(&group).await.unwrap());
    let stored: Vec<u8> = raw.get(&group).await.unwrap();
    assert_eq!(stored, triggered, "Go's bytes after TriggerChord");
    assert!(!backend.trigger_chord(&group).await.unwrap());
    let ttl: i64 = raw.ttl(&group).await.unwrap();
    assert!(ttl > 3500, "expiry kept, got {ttl}");

    // A group we create ourselves is Go's GroupMeta too.
    let ours = format!("{ns}_group");
    let members = vec![format!("{ns}_a"), format!("{ns}_b")];
    backend.init_group(&ours, &members).await.unwrap();
    let stored: Vec<u8> = raw.get(&ours).await.unwrap();
    let decoded = machinery_core::GroupMeta::from_json(&stored).unwrap();
    assert_eq!(stored, decoded.to_json().unwrap());
    assert_eq!(decoded.task_uuids, members);
    assert!(backend.trigger_chord(&ours).await.unwrap());
    let stored: Vec<u8> = raw.get(&ours).await.unwrap();
    let mut flipped = decoded.clone();
    flipped.chord_triggered = true;
    assert_eq!(stored, flipped.to_json().unwrap());
    assert!(
        String::from_utf8_lossy(&stored).contains("\"ChordTriggered\":true"),
        "{}",
        String::from_utf8_lossy(&stored)
    );

    let _: () = raw.del(&group).await.unwrap();
    for uuid in &meta.task_uuids {
        let _: () = raw.del(uuid).await.unwrap();
    }
    common::delete_prefix(&mut raw, &ns).await;
}

/// Go's `TriggerChord` on its Redis backend, command for command: take the redsync mutex
/// `TriggerChordMutex` (`SET <token> NX PX 8000`, retried), `GET` the group meta, and when
/// `ChordTriggered` is false `SET` it back with `true` (`EX` ttl) and send the callback; then
/// release the mutex with redsync's compare-and-delete script. Returns whether it sent.
async fn go_trigger_chord(conn: &mut redis::aio::MultiplexedConnection, group: &str) -> bool {
    let token = format!("go-{}", uuid::Uuid::new_v4().simple());
    loop {
        let taken: Option<String> = redis::cmd("SET")
            .arg("TriggerChordMutex")
            .arg(&token)
            .arg("NX")
            .arg("PX")
            .arg(8000)
            .query_async(conn)
            .await
            .unwrap();
        if taken.is_some() {
            break;
        }
        // redsync pauses 50-250 ms; shorter here so that the run stays short.
        tokio::time::sleep(Duration::from_millis(1 + rand_ms())).await;
    }
    let raw: Vec<u8> = conn.get(group).await.unwrap();
    let mut meta = machinery_core::GroupMeta::from_json(&raw).unwrap();
    let send = !meta.chord_triggered;
    if send {
        meta.chord_triggered = true;
        let _: () = conn
            .set_ex(group, meta.to_json().unwrap(), 3600)
            .await
            .unwrap();
    }
    let _: i64 = redis::cmd("EVAL")
        .arg(r#"if redis.call("GET", KEYS[1]) == ARGV[1] then return redis.call("DEL", KEYS[1]) else return 0 end"#)
        .arg(1)
        .arg("TriggerChordMutex")
        .arg(&token)
        .query_async(conn)
        .await
        .unwrap();
    send
}

fn rand_ms() -> u64 {
    rand::random::<u64>() % 4
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chords_fire_once_when_gos_mutex_sequence_races_rust_workers() {
    if common::url().is_none() {
        return;
    }
    // A private server: the mutex is one key for every group on a server.
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let _server = common::RedisServer::start(&url, &["--port", &port.to_string()]).await;
    let ns = common::namespace();
    let rust_a = RedisBackend::connect(common::config(&url, &ns))
        .await
        .unwrap();
    let rust_b = RedisBackend::connect(common::config(&url, &ns))
        .await
        .unwrap();
    let mut go = common::raw(&url).await;
    const CHORDS: usize = 1000;
    let groups: Vec<String> = (0..CHORDS).map(|i| format!("{ns}_group_{i}")).collect();
    for g in &groups {
        rust_a
            .init_group(g, &[format!("{g}_a"), format!("{g}_b")])
            .await
            .unwrap();
    }
    // Each chord's last members finish at once on a Go worker and on two Rust workers.
    let mut sent = vec![0_usize; CHORDS];
    let mut go_sent = 0;
    for (i, g) in groups.iter().enumerate() {
        let (by_go, a, b) = tokio::join!(
            go_trigger_chord(&mut go, g),
            rust_a.trigger_chord(g),
            rust_b.trigger_chord(g)
        );
        go_sent += usize::from(by_go);
        sent[i] = usize::from(by_go) + usize::from(a.unwrap()) + usize::from(b.unwrap());
    }
    let twice: Vec<usize> = (0..CHORDS).filter(|i| sent[*i] > 1).collect();
    let never: Vec<usize> = (0..CHORDS).filter(|i| sent[*i] == 0).collect();
    println!(
        "{CHORDS} chords: {go_sent} callbacks sent by the Go sequence, {} by Rust",
        CHORDS - go_sent
    );
    assert!(
        twice.is_empty() && never.is_empty(),
        "callbacks sent twice for {} chords, never for {}",
        twice.len(),
        never.len()
    );
    let mut raw = common::raw(&url).await;
    for g in &groups {
        let stored: Vec<u8> = raw.get(g).await.unwrap();
        assert!(
            machinery_core::GroupMeta::from_json(&stored)
                .unwrap()
                .chord_triggered
        );
    }
    let held: bool = raw.exists("TriggerChordMutex").await.unwrap();
    assert!(!held, "the mutex is released");
}
