//! Fault tests of the Redis driver with real worker processes (`machinery worker`): a worker
//! killed with SIGKILL in the middle of 10 000 tasks, a Redis restart during a run, every
//! connection dropped again and again during a run, and malformed messages. Needs
//! `MACHINERY_TEST_REDIS_URL` (unset = skipped); the restart and connection-drop tests start
//! their own `redis-server` (found on `PATH`) on a free port the OS gives.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use machinery::{Config, Server, Signature, server_from_config};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

mod common;

use common::{Worker, redis_conn, send_adds, successes, wait_for_successes};

const URL_VAR: &str = "MACHINERY_TEST_REDIS_URL";

fn namespace() -> String {
    format!("rf{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

async fn sender(url: &str, queue: &str) -> Server {
    let config = Config {
        broker: url.to_owned(),
        result_backend: url.to_owned(),
        default_queue: queue.to_owned(),
        ..Config::default()
    };
    server_from_config(config).await.expect("sender")
}

async fn keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut iter: redis::AsyncIter<'_, String> = conn
        .scan_options(
            redis::ScanOptions::default()
                .with_pattern(pattern)
                .with_count(5000),
        )
        .await
        .expect("scan");
    let mut out = Vec::new();
    while let Some(k) = iter.next_item().await {
        out.push(k.expect("key"));
    }
    out
}

async fn cleanup(conn: &mut MultiplexedConnection, ns: &str, uuids: &[String]) {
    let mut all = keys(conn, &format!("{ns}*")).await;
    all.extend(uuids.iter().cloned());
    for chunk in all.chunks(1000) {
        let _: () = conn.del(chunk).await.expect("del");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_mid_run_loses_no_task() {
    let Some(url) = machinery_testkit::env_url(URL_VAR) else {
        return;
    };
    const N: usize = 10_000;
    let ns = namespace();
    let queue = format!("{ns}_tasks");
    let mut conn = redis_conn(&url, URL_VAR).await;
    let server = sender(&url, &queue).await;
    let uuids = send_adds(&server, &queue, 0, N).await;
    assert_eq!(uuids.iter().collect::<HashSet<_>>().len(), N);

    let mut first = Worker::start(&url, &url, &queue, 16);
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

    // What the dead worker held: those already stored as SUCCESS will run a second time.
    let mut held = Vec::new();
    for key in keys(&mut conn, &format!("{queue}.processing.*")).await {
        let msgs: Vec<Vec<u8>> = conn.lrange(&key, 0, -1).await.unwrap();
        held.extend(msgs);
    }
    let held_uuids: Vec<String> = held
        .iter()
        .map(|m| Signature::from_json(m).expect("a signature").uuid)
        .collect();
    let duplicates = successes(&mut conn, &held_uuids).await;
    let done_at_kill = successes(&mut conn, &uuids).await;

    let mut second = Worker::start(&url, &url, &queue, 16);
    wait_for_successes(&mut conn, &uuids, N, Duration::from_secs(180), &mut second).await;
    println!(
        "killed the worker at {done_at_kill}/{N} SUCCESS holding {} unacked ({duplicates} of them \
         already SUCCESS, so run twice); all {N} SUCCESS {:.1} s after the kill, 0 lost",
        held.len(),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(!held.is_empty(), "the killed worker held messages");
    let left: usize = conn.llen(&queue).await.unwrap();
    assert_eq!(left, 0);
    second.kill();
    cleanup(&mut conn, &ns, &uuids).await;
}

async fn ping(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    let Ok(mut c) = client.get_multiplexed_async_connection().await else {
        return false;
    };
    redis::cmd("PING")
        .query_async::<String>(&mut c)
        .await
        .is_ok()
}

/// A port nothing listens on now (the OS picks it; the listener is dropped at once).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A redis-server this test owns, killed by PID when dropped.
struct OwnRedis {
    child: Option<Child>,
    port: u16,
    dir: std::path::PathBuf,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let dir = std::env::temp_dir().join(namespace());
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = OwnRedis {
            child: None,
            port,
            dir,
        };
        r.restart().await;
        r
    }

    async fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        self.child = Some(child);
        let start = Instant::now();
        let url = format!("redis://127.0.0.1:{}/", self.port);
        loop {
            if ping(&url).await {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "redis did not start"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_resumes_by_itself_after_a_redis_restart() {
    if machinery_testkit::env_url(URL_VAR).is_none() {
        return;
    }
    let mut redis_server = OwnRedis::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}/", redis_server.port);
    let ns = namespace();
    let queue = format!("{ns}_tasks");
    let mut worker = Worker::start(&url, &url, &queue, 8);
    let mut conn = redis_conn(&url, URL_VAR).await;
    let server = sender(&url, &queue).await;
    let before = send_adds(&server, &queue, 0, 500).await;
    wait_for_successes(
        &mut conn,
        &before,
        500,
        Duration::from_secs(60),
        &mut worker,
    )
    .await;

    redis_server.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker.is_running(), "the worker survives the outage");
    redis_server.restart().await;

    // Same worker process, same sender: both reconnect by themselves.
    let mut conn = redis_conn(&url, URL_VAR).await;
    let start = Instant::now();
    let after = loop {
        let sig = Signature::new("add")
            .routing_key(&queue)
            .arg(1_i64)
            .arg(2_i64);
        match server.send_task(sig).await {
            Ok(r) => break vec![r.uuid().to_owned()],
            Err(e) => {
                assert!(start.elapsed() < Duration::from_secs(20), "send: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    let more = send_adds(&server, &queue, 1000, 500).await;
    let all: Vec<String> = after.into_iter().chain(more).collect();
    wait_for_successes(
        &mut conn,
        &all,
        all.len(),
        Duration::from_secs(60),
        &mut worker,
    )
    .await;
    println!(
        "worker resumed {:.1} s after redis came back",
        start.elapsed().as_secs_f64()
    );
    worker.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_the_worker_stays_up() {
    let Some(url) = machinery_testkit::env_url(URL_VAR) else {
        return;
    };
    let ns = namespace();
    let queue = format!("{ns}_tasks");
    let mut conn = redis_conn(&url, URL_VAR).await;
    let mut worker = Worker::start(&url, &url, &queue, 4);
    let garbage: [&[u8]; 3] = [b"{not json", b"[1,2,3]", b"\"just a string\""];
    for body in garbage {
        let _: () = conn.rpush(&queue, body).await.unwrap();
    }
    let server = sender(&url, &queue).await;
    let good = send_adds(&server, &queue, 0, 10).await;
    wait_for_successes(&mut conn, &good, 10, Duration::from_secs(30), &mut worker).await;
    let dead_key = format!("{queue}.dead");
    let start = Instant::now();
    loop {
        let n: usize = conn.llen(&dead_key).await.unwrap();
        if n == garbage.len() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{n} dead letters"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let entries: Vec<String> = conn.lrange(&dead_key, 0, -1).await.unwrap();
    let bodies: HashSet<String> = entries
        .iter()
        .map(|e| {
            let v: serde_json::Value = serde_json::from_str(e).unwrap();
            assert!(!v["reason"].as_str().unwrap().is_empty());
            v["body"].as_str().unwrap().to_owned()
        })
        .collect();
    let want: HashSet<String> = garbage
        .iter()
        .map(|b| String::from_utf8(b.to_vec()).unwrap())
        .collect();
    assert_eq!(bodies, want);
    assert!(worker.is_running());
    worker.kill();
    cleanup(&mut conn, &ns, &good).await;
}

/// The processing lists of `queue` that hold something, with their lengths.
async fn held(conn: &mut MultiplexedConnection, queue: &str) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for key in keys(conn, &format!("{queue}.processing.*")).await {
        let n: usize = conn.llen(&key).await.unwrap();
        if n > 0 {
            out.push((key, n));
        }
    }
    out
}

/// Rounds of the connection-drop scenario: the stranding it looks for depends on when the
/// kills land (a flake seen once in five single runs under load), so one test run plays it
/// several times, each on a fresh server.
const DROP_ROUNDS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_connections_strand_no_task_in_a_live_worker() {
    if machinery_testkit::env_url(URL_VAR).is_none() {
        return;
    }
    for round in 1..=DROP_ROUNDS {
        println!("round {round} of {DROP_ROUNDS}");
        drop_connections_round().await;
    }
}

async fn drop_connections_round() {
    const N: usize = 10_000;
    // A private server: CLIENT KILL must never touch the shared one.
    let redis_server = OwnRedis::start(free_port()).await;
    let url = format!("redis://127.0.0.1:{}/", redis_server.port);
    let ns = namespace();
    let queue = format!("{ns}_tasks");
    // Our own connection survives the kills (CLIENT KILL skips the caller).
    let mut conn = redis_conn(&url, URL_VAR).await;
    let server = sender(&url, &queue).await;
    let uuids = send_adds(&server, &queue, 0, N).await;
    let mut workers = [
        Worker::start(&url, &url, &queue, 8),
        Worker::start(&url, &url, &queue, 8),
    ];
    wait_for_successes(
        &mut conn,
        &uuids,
        N / 20,
        Duration::from_secs(60),
        &mut workers[0],
    )
    .await;

    // Drop every other connection every 50 ms until 90% are done: takes, pops, acks and
    // requeues lose their replies, some after the server ran them.
    let mut drops = 0;
    let mut killed = 0;
    let started = Instant::now();
    while successes(&mut conn, &uuids).await < N * 9 / 10 {
        assert!(
            started.elapsed() < Duration::from_secs(180),
            "the workers made no progress under the connection drops"
        );
        let n: usize = redis::cmd("CLIENT")
            .arg("KILL")
            .arg("TYPE")
            .arg("normal")
            .query_async(&mut conn)
            .await
            .expect("client kill");
        drops += 1;
        killed += n;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last_drop = Instant::now();
    for w in &mut workers {
        assert!(w.is_running(), "a worker exited under the connection drops");
    }

    // Nothing waits for a lease (15 s, and the workers live on): everything is done soon.
    wait_for_successes(
        &mut conn,
        &uuids,
        N,
        Duration::from_secs(30),
        &mut workers[0],
    )
    .await;
    let all_done = last_drop.elapsed();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = held(&mut conn, &queue).await;
        let queued: usize = conn.llen(&queue).await.unwrap();
        if left.is_empty() && queued == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "after every task succeeded: {queued} queued, held {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "{drops} connection drops ({killed} connections killed) during {N} tasks; all SUCCESS \
         {:.1} s after the last drop, nothing left in processing lists",
        all_done.as_secs_f64()
    );
    for w in &mut workers {
        w.kill();
    }
}
