//! Redis-specific behaviour beyond the shared suite: crash recovery, server restarts, dead
//! letters, prefetch, delayed-task sweeps, the lock, and the connection forms. Needs
//! `MACHINERY_TEST_REDIS_URL`; the restart, password, socket, TLS and cluster tests start their
//! own `redis-server` (and `openssl`, `redis-cli`), found on `PATH`, on free ports the OS gives.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_core::{
    Backend, Broker, ConsumeOptions, DeliveryStream, Lock, Payload, Signature, State, TaskState,
};
use machinery_redis::{RedisBackend, RedisBroker, RedisConfig, RedisLock};
use redis::AsyncCommands;

fn opts(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        ..ConsumeOptions::default()
    }
}

fn task(queue: &str, n: usize) -> Signature {
    Signature::new("test.add")
        .routing_key(queue)
        .arg(n as i64)
        .arg(1_i64)
}

async fn next_task(stream: &mut DeliveryStream, within: Duration) -> machinery_core::Delivery {
    loop {
        let item = tokio::time::timeout(within, stream.next())
            .await
            .expect("a delivery in time")
            .expect("stream open");
        match item {
            Ok(d) => return d,
            Err(e) => eprintln!("stream reported: {e}"),
        }
    }
}

#[tokio::test]
async fn unreachable_server_is_a_clear_error_without_the_password() {
    let url = "redis://:supersecret@127.0.0.1:1/0";
    let err = RedisBroker::from_url(url)
        .await
        .expect_err("nothing listens on port 1");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1"), "{text}");
    assert!(!text.contains("supersecret"), "{text}");
    assert!(err.is_temporary());
    let err = RedisBackend::from_url(url).await.expect_err("backend too");
    assert!(err.to_string().contains("127.0.0.1:1"));
    assert!(!format!("{err:?}").contains("supersecret"));
    // A cluster (or Sentinels) nobody runs: an error naming every node.
    let err = RedisBroker::from_url("redis://:supersecret@127.0.0.1:1,127.0.0.1:2")
        .await
        .expect_err("cluster");
    let text = err.to_string();
    assert!(text.contains("127.0.0.1:1,127.0.0.1:2"), "{text}");
    assert!(!text.contains("supersecret"), "{text}");
    let err = RedisBroker::from_url("redis://127.0.0.1:1,127.0.0.1:2?master_name=m")
        .await
        .expect_err("sentinels");
    assert!(err.to_string().contains("master_name=m"), "{err}");
    let err = RedisBroker::from_url("amqp://h").await.expect_err("scheme");
    assert!(matches!(err, machinery_core::Error::Config { .. }), "{err}");
}

#[tokio::test]
async fn malformed_messages_are_dead_lettered_and_the_consumer_keeps_going() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;
    let garbage: &[u8] = b"{not json";
    let array: &[u8] = b"[1,2,3]";
    let binary: &[u8] = &[0xff, 0x00, 0xfe];
    for body in [garbage, array, binary] {
        let _: () = raw.rpush(&queue, body).await.unwrap();
    }
    let good = task(&queue, 1);
    broker.publish(&good).await.unwrap();

    let mut stream = broker.consume(&queue, opts(2)).await.unwrap();
    for body in [garbage, array, binary] {
        let d = next_task(&mut stream, Duration::from_secs(5)).await;
        let Payload::Malformed { raw: got, reason } = &d.payload else {
            panic!("expected a malformed delivery, got {:?}", d.payload);
        };
        assert_eq!(got, body);
        let reason = format!("not a signature: {reason}");
        d.dead_letter(reason).await.expect("dead-letter");
    }
    let d = next_task(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(d.signature().expect("a task").uuid, good.uuid);
    d.ack().await.unwrap();
    let after = task(&queue, 2);
    broker.publish(&after).await.unwrap();
    let d = next_task(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(d.signature().unwrap().uuid, after.uuid, "still consuming");
    d.ack().await.unwrap();

    let dead = broker.dead_letters(&queue).await.unwrap();
    assert_eq!(dead.len(), 3);
    for (entry, body) in dead.iter().zip([garbage, array, binary]) {
        assert_eq!(entry.body, body);
        assert!(
            entry.reason.starts_with("not a signature: "),
            "{}",
            entry.reason
        );
    }
    // The stored entry format (documented in the README).
    let stored: Vec<String> = raw.lrange(format!("{queue}.dead"), 0, 0).await.unwrap();
    let entry: serde_json::Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(entry["queue"], queue.as_str());
    assert_eq!(entry["body"], "{not json");
    assert!(entry["dead_at"].as_str().unwrap().ends_with('Z'));
    assert!(entry["consumer"].as_str().unwrap().contains(':'));
    let stored: Vec<String> = raw.lrange(format!("{queue}.dead"), 2, 2).await.unwrap();
    let entry: serde_json::Value = serde_json::from_str(&stored[0]).unwrap();
    assert_eq!(entry["body_base64"], "/wD+");
    let pending: usize = raw.llen(&queue).await.unwrap();
    assert_eq!(pending, 0);
    drop(stream);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn prefetch_bounds_what_a_consumer_holds() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;
    for n in 0..50 {
        broker.publish(&task(&queue, n)).await.unwrap();
    }
    let mut stream = broker.consume(&queue, opts(5)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_task(&mut stream, Duration::from_secs(5)).await);
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "a sixth delivery before any ack"
    );
    let lists = common::processing_lists(&mut raw, &queue).await;
    assert_eq!(lists.iter().map(|(_, n)| n).sum::<usize>(), 5, "{lists:?}");
    let left: usize = raw.llen(&queue).await.unwrap();
    assert_eq!(left, 45);
    held.remove(0).ack().await.unwrap();
    held.push(next_task(&mut stream, Duration::from_secs(5)).await);
    for d in held {
        d.ack().await.unwrap();
    }
    drop(stream);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn a_dead_consumers_messages_return_to_the_head_of_the_queue() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let mut raw = common::raw(&url).await;
    // A consumer that died holding two messages: registered with an ended lease.
    let dead_id = "deadhost:1:0000000000000000";
    let held = [task(&queue, 1), task(&queue, 2)];
    for sig in &held {
        let _: () = raw
            .rpush(
                format!("{queue}.processing.{dead_id}"),
                sig.to_json().unwrap(),
            )
            .await
            .unwrap();
    }
    let _: () = raw
        .zadd(format!("{queue}.consumers"), dead_id, 1)
        .await
        .unwrap();
    let waiting = task(&queue, 3);
    let _: () = raw.rpush(&queue, waiting.to_json().unwrap()).await.unwrap();

    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut stream = broker.consume(&queue, opts(1)).await.unwrap();
    for want in held.iter().chain([&waiting]) {
        let d = next_task(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(
            d.signature().unwrap().uuid,
            want.uuid,
            "recovered first, in order"
        );
        d.ack().await.unwrap();
    }
    let registered: Vec<String> = raw
        .zrange(format!("{queue}.consumers"), 0, -1)
        .await
        .unwrap();
    assert!(!registered.iter().any(|id| id == dead_id), "{registered:?}");
    drop(stream);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

const CRASH_CHILD_VAR: &str = "MACHINERY_REDIS_CRASH_CHILD";

/// Runs only as the child process of `killed_consumer_loses_nothing` (otherwise it returns
/// at once): takes five messages without acking them, then waits to be killed.
#[tokio::test]
async fn helper_process_for_the_crash_test() {
    let Ok(spec) = std::env::var(CRASH_CHILD_VAR) else {
        return;
    };
    let (url, ns) = spec.split_once(' ').expect("url and namespace");
    let config = common::config(url, ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut stream = broker.consume(&queue, opts(5)).await.unwrap();
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(next_task(&mut stream, Duration::from_secs(10)).await);
    }
    println!("holding 5");
    tokio::time::sleep(Duration::from_secs(60)).await;
    unreachable!("the parent kills this process");
}

#[tokio::test]
async fn killed_consumer_loses_nothing() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config.clone()).await.expect("connect");
    let mut raw = common::raw(&url).await;
    let sent: Vec<Signature> = (0..20).map(|n| task(&queue, n)).collect();
    for sig in &sent {
        broker.publish(sig).await.unwrap();
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process_for_the_crash_test",
            "--nocapture",
        ])
        .env(CRASH_CHILD_VAR, format!("{url} {ns}"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn the child consumer");
    let start = Instant::now();
    loop {
        let held: usize = common::processing_lists(&mut raw, &queue)
            .await
            .iter()
            .map(|(_, n)| n)
            .sum();
        if held == 5 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "child never took 5"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill -9 the child");
    child.wait().unwrap();
    let killed_at = Instant::now();

    let mut stream = broker.consume(&queue, opts(4)).await.unwrap();
    let mut seen = HashSet::new();
    while seen.len() < sent.len() {
        let d = next_task(&mut stream, Duration::from_secs(10)).await;
        seen.insert(d.signature().unwrap().uuid.clone());
        d.ack().await.unwrap();
    }
    let recovered_after = killed_at.elapsed();
    let want: HashSet<String> = sent.iter().map(|s| s.uuid.clone()).collect();
    assert_eq!(seen, want);
    // Lease 1 s + one check interval, with margin.
    assert!(
        recovered_after < Duration::from_secs(4),
        "{recovered_after:?}"
    );
    let lists = common::processing_lists(&mut raw, &queue).await;
    assert!(lists.iter().all(|(_, n)| *n == 0), "{lists:?}");
    drop(stream);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delayed_sweep_moves_every_due_task_once_with_racing_movers() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let mut raw = common::raw(&url).await;
    const N: usize = 10_000;
    let past = machinery_core::time::now() - chrono::Duration::seconds(1);
    let mut pipe = redis::pipe();
    let mut want = HashSet::new();
    for n in 0..N {
        let sig = task(&queue, n).eta(past);
        want.insert(sig.uuid.clone());
        pipe.zadd(
            &config.delayed_tasks_key,
            sig.to_json().unwrap(),
            machinery_core::time::unix_nanos(&past),
        )
        .ignore();
    }
    let _: () = pipe.query_async(&mut raw).await.unwrap();
    // Not yet due: one in the future stays.
    let future = task(&queue, N).delay(Duration::from_secs(3600));
    let brokers = futures::future::try_join_all((0..3).map(|_| {
        RedisBroker::connect(RedisConfig {
            delayed_tasks_poll_period: 3_600_000,
            ..config.clone()
        })
    }))
    .await
    .unwrap();
    brokers[0].publish(&future).await.unwrap();
    let start = Instant::now();
    let moved = futures::future::try_join_all(brokers.iter().map(|b| b.move_due_delayed_tasks()))
        .await
        .unwrap();
    let took = start.elapsed();
    println!("moved {N} due delayed tasks in {took:?} ({moved:?} per mover)");
    assert_eq!(moved.iter().sum::<usize>(), N);
    let listed: Vec<Vec<u8>> = raw.lrange(&queue, 0, -1).await.unwrap();
    assert_eq!(listed.len(), N);
    let got: HashSet<String> = listed
        .iter()
        .map(|b| Signature::from_json(b).unwrap().uuid)
        .collect();
    assert_eq!(got, want, "each exactly once");
    let delayed = brokers[0].delayed_tasks().await.unwrap();
    assert_eq!(delayed, vec![future]);
    assert!(took < Duration::from_secs(3), "{took:?}");
    for b in &brokers {
        b.close().await.unwrap();
    }
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn requeue_with_delay_goes_back_to_the_consumed_queue() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let other_queue = format!("{ns}_other");
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;
    // A foreign message without a routing key, in a queue that is not the default one.
    let mut sig = task("", 1);
    sig.routing_key.clear();
    let _: () = raw
        .rpush(&other_queue, sig.to_json().unwrap())
        .await
        .unwrap();
    let mut stream = broker.consume(&other_queue, opts(1)).await.unwrap();
    let d = next_task(&mut stream, Duration::from_secs(5)).await;
    let start = Instant::now();
    d.requeue(Some(Duration::from_millis(300))).await.unwrap();
    let d = next_task(&mut stream, Duration::from_secs(5)).await;
    assert!(start.elapsed() >= Duration::from_millis(300));
    let got = d.signature().unwrap();
    assert_eq!(got.uuid, sig.uuid);
    assert_eq!(got.routing_key, other_queue);
    d.ack().await.unwrap();
    drop(stream);
    broker.close().await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn lock_follows_gos_scheme_and_take_over_rule() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let lock = RedisLock::connect(common::config(&url, &ns)).await.unwrap();
    let mut raw = common::raw(&url).await;
    let key = format!("{ns}machinery_lock_binaryperiodic.task*/5 * * * *");
    let now = machinery_core::time::unix_nanos(&machinery_core::time::now());
    let deadline = now + 2_000_000_000 - 1;
    assert!(lock.try_lock(&key, deadline).await.unwrap());
    assert!(!lock.try_lock(&key, deadline).await.unwrap(), "held");
    let stored: String = raw.get(&key).await.unwrap();
    assert_eq!(stored, deadline.to_string());
    let pttl: i64 = raw.pttl(&key).await.unwrap();
    assert!((1..=2000).contains(&pttl), "{pttl}");
    // A stale key without expiry (left by a crashed Go server) is taken over.
    let _: () = raw
        .set(&key, (now - 1_000_000_000).to_string())
        .await
        .unwrap();
    assert!(lock.try_lock(&key, deadline).await.unwrap());
    let stored: String = raw.get(&key).await.unwrap();
    assert_eq!(stored, deadline.to_string());
    // Go never takes over a zero deadline.
    let _: () = raw.set(&key, "0").await.unwrap();
    assert!(!lock.try_lock(&key, deadline).await.unwrap());
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_and_publisher_recover_after_a_redis_restart() {
    if common::url().is_none() {
        return;
    }
    let port = common::free_port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut server = common::RedisServer::start(&url, &["--port", &port.to_string()]).await;
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let backend = broker.backend();
    let mut stream = broker.consume(&queue, opts(2)).await.unwrap();
    let first = task(&queue, 1);
    broker.publish(&first).await.unwrap();
    let d = next_task(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(d.signature().unwrap().uuid, first.uuid);
    d.ack().await.unwrap();

    server.kill();
    // While the server is down the stream reports errors, one per back-off step at most.
    let start = Instant::now();
    let mut errors = 0;
    while start.elapsed() < Duration::from_secs(3) {
        match tokio::time::timeout(Duration::from_millis(200), stream.next()).await {
            Ok(Some(Err(_))) => errors += 1,
            Ok(Some(Ok(d))) => panic!("delivery while redis is down: {d:?}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => {}
        }
    }
    assert!((1..=10).contains(&errors), "{errors} errors in 3 s");
    assert!(broker.publish(&task(&queue, 2)).await.is_err());

    server.restart().await;
    // The publisher recovers by itself (no new broker).
    let second = task(&queue, 3);
    let start = Instant::now();
    loop {
        match broker.publish(&second).await {
            Ok(()) => break,
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(15), "publish: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    // And so does the consumer.
    let d = next_task(&mut stream, Duration::from_secs(15)).await;
    assert_eq!(d.signature().unwrap().uuid, second.uuid);
    d.ack().await.unwrap();
    // The backend shares the connection and works again too.
    let state = TaskState::new(&second, State::Success);
    backend.set_state(&state).await.unwrap();
    assert_eq!(
        backend.state(&second.uuid).await.unwrap().unwrap().state,
        State::Success
    );
    drop(stream);
    broker.close().await.unwrap();
}

#[tokio::test]
async fn unix_socket_url_works() {
    if common::url().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(common::namespace());
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("redis.sock");
    let probe = format!("redis+unix://{}?pass=sockpw", sock.display());
    let _server = common::RedisServer::start(
        &probe,
        &[
            "--port",
            "0",
            "--unixsocket",
            sock.to_str().unwrap(),
            "--requirepass",
            "sockpw",
        ],
    )
    .await;
    let ns = common::namespace();
    let url = format!("redis+socket://sockpw@{}:/3", sock.display());
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config)
        .await
        .expect("connect over the socket");
    let mut stream = broker.consume(&queue, opts(1)).await.unwrap();
    let sig = task(&queue, 7);
    broker.publish(&sig).await.unwrap();
    let d = next_task(&mut stream, Duration::from_secs(5)).await;
    assert_eq!(d.signature().unwrap().uuid, sig.uuid);
    d.ack().await.unwrap();
    drop(stream);
    broker.close().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn group_member_done_counts_once_and_sees_members_go_finished() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .unwrap();
    assert!(backend.capabilities().group_completion_counter);
    let mut raw = common::raw(&url).await;
    let group = format!("{ns}_group");
    let members: Vec<String> = ["a", "b", "c", "d"]
        .iter()
        .map(|m| format!("{ns}_{m}"))
        .collect();
    backend.init_group(&group, &members).await.unwrap();
    // A Go worker finished b and d: it stores their states and keeps no counter.
    for (m, state) in [(&members[1], State::Success), (&members[3], State::Failure)] {
        let mut sig = Signature::new("add");
        sig.uuid.clone_from(m);
        let st = TaskState::new(&sig, state);
        let _: () = raw.set_ex(m, st.to_json().unwrap(), 60).await.unwrap();
    }
    assert_eq!(
        backend
            .mark_group_member_done(&group, &members[0])
            .await
            .unwrap(),
        2
    );
    assert_eq!(
        backend
            .mark_group_member_done(&group, &members[0])
            .await
            .unwrap(),
        2,
        "idempotent"
    );
    assert_eq!(
        backend
            .mark_group_member_done(&group, &members[2])
            .await
            .unwrap(),
        4,
        "the last member completes the count"
    );
    let ttl: i64 = raw.ttl(format!("{group}.done")).await.unwrap();
    assert!(ttl > 3000, "{ttl}");
    backend.purge_group(&group).await.unwrap();
    let left: usize = raw
        .exists(&[
            group.clone(),
            format!("{group}.done"),
            format!("{group}.waiting"),
        ])
        .await
        .unwrap();
    assert_eq!(left, 0);
    let err = backend
        .mark_group_member_done(&group, &members[0])
        .await
        .expect_err("unknown group");
    assert!(
        matches!(err, machinery_core::Error::GroupNotFound(_)),
        "{err}"
    );
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_member_done_is_linear_for_a_big_chord() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .unwrap();
    let mut raw = common::raw(&url).await;
    const N: usize = 10_000;
    let group = format!("{ns}_big");
    let members: Vec<String> = (0..N).map(|i| format!("{ns}_m{i}")).collect();
    backend.init_group(&group, &members).await.unwrap();
    let start = Instant::now();
    let counts: Vec<usize> = futures::stream::iter(members.iter())
        .map(|m| backend.mark_group_member_done(&group, m))
        .buffer_unordered(64)
        .map(|r| r.unwrap())
        .collect()
        .await;
    let took = start.elapsed();
    println!("marked {N} members done in {took:?}");
    assert_eq!(counts.iter().max(), Some(&N));
    assert_eq!(
        counts.iter().filter(|c| **c == N).count(),
        1,
        "exactly one sees the end"
    );
    assert!(took < Duration::from_secs(10), "{took:?}");
    let states = backend.group_states(&group).await.unwrap();
    assert_eq!(states.len(), N);
    backend.purge_group(&group).await.unwrap();
    common::delete_prefix(&mut raw, &ns).await;
}

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let status = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("run openssl");
    assert!(status.success(), "openssl {args:?}");
}

#[tokio::test]
async fn tls_url_works_with_a_private_ca_and_insecure() {
    if common::url().is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(common::namespace());
    std::fs::create_dir_all(&dir).unwrap();
    // A CA and a server certificate for localhost / 127.0.0.1 signed by it.
    openssl(
        &dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=machinery test ca",
        ],
    );
    openssl(
        &dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    openssl(
        &dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
    let port = common::free_port();
    let path = |f: &str| dir.join(f).to_string_lossy().into_owned();
    let probe = format!("rediss://127.0.0.1:{port}/#insecure");
    let _server = common::RedisServer::start(
        &probe,
        &[
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            &path("server.pem"),
            "--tls-key-file",
            &path("server.key"),
            "--tls-ca-cert-file",
            &path("ca.pem"),
            "--tls-auth-clients",
            "no",
        ],
    )
    .await;
    let ns = common::namespace();
    for (url, ca) in [
        (
            format!("rediss://localhost:{port}/0"),
            Some(dir.join("ca.pem")),
        ),
        (format!("rediss://127.0.0.1:{port}/0#insecure"), None),
    ] {
        let config = RedisConfig {
            tls_ca_file: ca,
            ..common::config(&url, &ns)
        };
        let queue = config.default_queue.clone();
        let broker = RedisBroker::connect(config)
            .await
            .expect("connect over tls");
        let mut stream = broker.consume(&queue, opts(1)).await.unwrap();
        let sig = task(&queue, 9);
        broker.publish(&sig).await.unwrap();
        let d = next_task(&mut stream, Duration::from_secs(5)).await;
        assert_eq!(d.signature().unwrap().uuid, sig.uuid);
        d.ack().await.unwrap();
        drop(stream);
        broker.close().await.unwrap();
    }
    // Without the CA the server's certificate is refused, with a clear error.
    let err = RedisBroker::from_url(&format!("rediss://localhost:{port}/0"))
        .await
        .expect_err("untrusted certificate");
    assert!(
        err.to_string().contains(&format!("localhost:{port}")),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_and_lock_work_on_a_redis_cluster() {
    if common::url().is_none() {
        return;
    }
    let mut ports = Vec::new();
    while ports.len() < 3 {
        let p = common::free_cluster_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    let mut servers = Vec::new();
    for &port in &ports {
        let url = format!("redis://127.0.0.1:{port}/");
        let p = port.to_string();
        servers.push(
            common::RedisServer::start(
                &url,
                &[
                    "--port",
                    &p,
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &format!("nodes-{port}.conf"),
                ],
            )
            .await,
        );
    }
    let mut create = std::process::Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for port in &ports {
        create.arg(format!("127.0.0.1:{port}"));
    }
    let status = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli --cluster create");
    assert!(status.success());
    // Wait until every slot is served.
    let start = Instant::now();
    loop {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &ports[0].to_string(), "cluster", "info"])
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(20), "cluster not ok");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let url = format!("redis://127.0.0.1:{},127.0.0.1:{}", ports[0], ports[1]);
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .expect("cluster");
    let caps = backend.capabilities();
    assert!(caps.expiry && caps.keeps_created_at);
    assert!(!caps.batched_group_states && !caps.group_completion_counter);
    let members: Vec<Signature> = (0..20).map(|n| task("q", n)).collect();
    let uuids: Vec<String> = members.iter().map(|s| s.uuid.clone()).collect();
    let group = format!("group_{ns}");
    backend.init_group(&group, &uuids).await.unwrap();
    for sig in &members[..10] {
        backend.set_state(&TaskState::pending(sig)).await.unwrap();
        backend
            .set_state(&TaskState::new(sig, State::Success))
            .await
            .unwrap();
    }
    let states = backend.group_states(&group).await.unwrap();
    assert_eq!(states.len(), 20);
    assert!(states[..10].iter().all(|s| s.state == State::Success));
    assert!(states[10..].iter().all(|s| s.state == State::Pending));
    assert_eq!(
        backend
            .mark_group_member_done(&group, &uuids[0])
            .await
            .unwrap(),
        10
    );
    let flips = futures::future::join_all((0..20).map(|_| backend.trigger_chord(&group))).await;
    assert_eq!(
        flips.into_iter().filter(|r| *r.as_ref().unwrap()).count(),
        1
    );
    backend.purge_group(&group).await.unwrap();
    assert!(matches!(
        backend.group_states(&group).await,
        Err(machinery_core::Error::GroupNotFound(_))
    ));
    let lock = RedisLock::connect(common::config(&url, &ns)).await.unwrap();
    let deadline = machinery_core::time::unix_nanos(&machinery_core::time::now()) + 1_000_000_000;
    assert!(
        lock.try_lock(&format!("{ns}_lock"), deadline)
            .await
            .unwrap()
    );
    assert!(
        !lock
            .try_lock(&format!("{ns}_lock"), deadline)
            .await
            .unwrap()
    );
    // The broker works on a cluster too (see tests/cluster.rs); a cluster has only db 0.
    let err = RedisBroker::from_url(&format!("{url}/1"))
        .await
        .expect_err("db 1 on a cluster");
    assert!(matches!(err, machinery_core::Error::Config { .. }), "{err}");
    drop(servers);
}

#[tokio::test]
async fn close_gives_back_what_stopped_consumers_held() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let config = common::config(&url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config).await.expect("connect");
    let mut raw = common::raw(&url).await;
    let sigs: Vec<Signature> = (0..3).map(|n| task(&queue, n)).collect();
    for sig in &sigs {
        broker.publish(sig).await.unwrap();
    }
    let mut stream = broker.consume(&queue, opts(3)).await.unwrap();
    let first = next_task(&mut stream, Duration::from_secs(5)).await;
    first.ack().await.unwrap();
    let held = next_task(&mut stream, Duration::from_secs(5)).await;
    drop(held);
    drop(stream);
    broker.close().await.unwrap();
    // No lease to wait for: the two unsettled messages are back at the head, in order.
    let listed: Vec<Vec<u8>> = raw.lrange(&queue, 0, -1).await.unwrap();
    let uuids: Vec<String> = listed
        .iter()
        .map(|b| Signature::from_json(b).unwrap().uuid)
        .collect();
    assert_eq!(uuids, vec![sigs[1].uuid.clone(), sigs[2].uuid.clone()]);
    let registered: usize = raw.zcard(format!("{queue}.consumers")).await.unwrap();
    assert_eq!(registered, 0);
    common::delete_prefix(&mut raw, &ns).await;
}

#[tokio::test]
async fn a_wrong_or_missing_password_is_a_permanent_error_at_connect() {
    if common::url().is_none() {
        return;
    }
    let port = common::free_port();
    let good = format!("redis://:rightpw@127.0.0.1:{port}/");
    let _server = common::RedisServer::start(
        &good,
        &["--port", &port.to_string(), "--requirepass", "rightpw"],
    )
    .await;
    for url in [
        format!("redis://:wrongpw@127.0.0.1:{port}/"),
        format!("redis://127.0.0.1:{port}/"),
    ] {
        let errors = [
            RedisBroker::from_url(&url).await.expect_err("broker"),
            RedisBackend::from_url(&url).await.expect_err("backend"),
            RedisLock::connect(RedisConfig::from_url(&url))
                .await
                .expect_err("lock"),
        ];
        for err in errors {
            let text = err.to_string();
            assert!(!err.is_temporary(), "{url}: {text}");
            assert!(text.contains("refused the credentials"), "{url}: {text}");
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
            assert!(!format!("{err:?}").contains("wrongpw"), "{err:?}");
        }
    }
    let broker = RedisBroker::from_url(&good)
        .await
        .expect("the right password");
    broker.close().await.unwrap();
}

/// The worker stores RECEIVED and STARTED with one `set_states` call: one read of the stored
/// state (a Go sender's PENDING here), then both writes in one round trip, each keeping the
/// stored `CreatedAt` and, when ours is empty, `TaskName`; the last one stays stored.
#[tokio::test]
async fn received_and_started_together_keep_the_stored_created_at_and_name() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let backend = RedisBackend::connect(common::config(&url, &ns))
        .await
        .unwrap();
    let mut raw = common::raw(&url).await;
    let mut sig = Signature::new("");
    sig.uuid = format!("{ns}task_merge");
    let go_pending = format!(
        r#"{{"TaskUUID":"{}","TaskName":"go_name","State":"PENDING","Results":null,"Error":"","CreatedAt":"2020-01-02T03:04:05.5Z","TTL":0}}"#,
        sig.uuid
    );
    let _: () = raw.set_ex(&sig.uuid, &go_pending, 60).await.unwrap();
    backend
        .set_states(&[
            TaskState::new(&sig, State::Received),
            TaskState::new(&sig, State::Started),
        ])
        .await
        .unwrap();
    let stored: String = raw.get(&sig.uuid).await.unwrap();
    assert_eq!(
        stored,
        format!(
            r#"{{"TaskUUID":"{}","TaskName":"go_name","State":"STARTED","Results":null,"Error":"","CreatedAt":"2020-01-02T03:04:05.5Z","TTL":0}}"#,
            sig.uuid
        )
    );
    let ttl: i64 = raw.ttl(&sig.uuid).await.unwrap();
    assert!(ttl > 60, "the backend's expiry, not the Go writer's: {ttl}");
    // The final state of the run comes from what the backend remembers, without a read.
    let _: () = raw.set_ex(&sig.uuid, &go_pending, 60).await.unwrap();
    backend
        .set_state(&TaskState::success(&sig, vec![]))
        .await
        .unwrap();
    let done = backend.state(&sig.uuid).await.unwrap().unwrap();
    assert_eq!(done.state, State::Success);
    assert_eq!(done.task_name, "go_name");
    assert_eq!(
        machinery_core::time::format(&done.created_at),
        "2020-01-02T03:04:05.5Z"
    );
    // Nothing stored before: our own creation time and name stay.
    let mut fresh = Signature::new("fresh");
    fresh.uuid = format!("{ns}task_fresh");
    let received = TaskState::new(&fresh, State::Received);
    backend
        .set_states(&[received.clone(), TaskState::new(&fresh, State::Started)])
        .await
        .unwrap();
    let st = backend.state(&fresh.uuid).await.unwrap().unwrap();
    assert_eq!((st.state, st.task_name.as_str()), (State::Started, "fresh"));
    assert_eq!(st.created_at, received.created_at);
    common::delete_prefix(&mut raw, &ns).await;
}
