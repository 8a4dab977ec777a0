//! The broker, backend and lock behind Redis Sentinel: a private master, one replica and three
//! Sentinels (`redis-server --sentinel`) on free ports. A failover in the middle of 5 000
//! tasks — ordered with `SENTINEL FAILOVER`, or forced by killing the master with SIGKILL —
//! loses none. Needs `MACHINERY_TEST_REDIS_URL` to be set (as the other driver tests; CI sets
//! it) and `redis-server` / `redis-cli` on `PATH`.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_core::{Backend, Broker, ConsumeOptions, Lock, Signature, State, TaskState};
use machinery_redis::{RedisBackend, RedisBroker, RedisConfig, RedisLock};

const MASTER: &str = "mymaster";

/// A master, a replica and three Sentinels watching them, all killed when dropped.
struct Sentinels {
    master: common::RedisServer,
    master_port: u16,
    _replica: common::RedisServer,
    replica_port: u16,
    sentinel_ports: Vec<u16>,
    _sentinels: Vec<common::RedisServer>,
}

impl Sentinels {
    async fn start() -> Sentinels {
        let master_port = common::free_port();
        let master = common::RedisServer::start(
            &format!("redis://127.0.0.1:{master_port}/"),
            &["--port", &master_port.to_string()],
        )
        .await;
        let replica_port = common::free_port();
        let replica = common::RedisServer::start(
            &format!("redis://127.0.0.1:{replica_port}/"),
            &[
                "--port",
                &replica_port.to_string(),
                "--replicaof",
                "127.0.0.1",
                &master_port.to_string(),
            ],
        )
        .await;
        common::wait_cli(
            replica_port,
            &["info", "replication"],
            "master_link_status:up",
            Duration::from_secs(20),
        );
        let mut sentinel_ports = Vec::new();
        let mut sentinels = Vec::new();
        for _ in 0..3 {
            let port = common::free_port();
            let dir = std::env::temp_dir().join(common::namespace());
            std::fs::create_dir_all(&dir).unwrap();
            let conf = dir.join("sentinel.conf");
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\n\
                     sentinel monitor {MASTER} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER} 1000\n\
                     sentinel failover-timeout {MASTER} 10000\n\
                     sentinel parallel-syncs {MASTER} 1\n"
                ),
            )
            .unwrap();
            sentinels.push(
                common::RedisServer::start_sentinel(&format!("redis://127.0.0.1:{port}/"), &conf)
                    .await,
            );
            sentinel_ports.push(port);
        }
        // Each Sentinel must know the replica and the two other Sentinels before a failover
        // can be agreed on.
        for &port in &sentinel_ports {
            common::wait_cli(
                port,
                &["sentinel", "master", MASTER],
                "num-other-sentinels\n2",
                Duration::from_secs(30),
            );
            common::wait_cli(
                port,
                &["sentinel", "master", MASTER],
                "num-slaves\n1",
                Duration::from_secs(30),
            );
        }
        Sentinels {
            master,
            master_port,
            _replica: replica,
            replica_port,
            sentinel_ports,
            _sentinels: sentinels,
        }
    }

    /// Go's form: the Sentinels' addresses, the master name in `redis.master_name`.
    fn url(&self) -> String {
        let nodes: Vec<String> = self
            .sentinel_ports
            .iter()
            .map(|p| format!("127.0.0.1:{p}"))
            .collect();
        format!("redis://{}/0", nodes.join(","))
    }

    /// The port of the master the first Sentinel names now.
    fn current_master(&self) -> u16 {
        let out = common::cli(
            self.sentinel_ports[0],
            &["sentinel", "get-master-addr-by-name", MASTER],
        );
        out.lines().nth(1).unwrap().trim().parse().unwrap()
    }

    /// Wait until every Sentinel names `port` as the master and it answers as one.
    fn wait_master(&self, port: u16, limit: Duration) {
        for &s in &self.sentinel_ports {
            common::wait_cli(
                s,
                &["sentinel", "get-master-addr-by-name", MASTER],
                &format!("\n{port}"),
                limit,
            );
        }
        common::wait_cli(port, &["role"], "master", limit);
    }
}

fn config(url: &str, ns: &str) -> RedisConfig {
    RedisConfig {
        master_name: MASTER.to_owned(),
        connect_timeout: 1,
        read_timeout: 3,
        ..common::config(url, ns)
    }
}

/// Publish N tasks (retrying a publish that fails, as a sender would) while two consumers
/// take and ack them; run `disturb` once a fifth are published; every task must arrive.
async fn run_through_failover<F>(url: &str, what: &str, disturb: F)
where
    F: Future<Output = ()>,
{
    const N: usize = 5000;
    let ns = common::namespace();
    let cfg = config(url, &ns);
    let queue = cfg.default_queue.clone();
    let broker = RedisBroker::connect(cfg.clone())
        .await
        .expect("via sentinel");
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let b = RedisBroker::connect(cfg.clone()).await.unwrap();
        let mut stream = b
            .consume(
                &queue,
                ConsumeOptions {
                    prefetch: 32,
                    ..ConsumeOptions::default()
                },
            )
            .await
            .unwrap();
        let seen = Arc::clone(&seen);
        consumers.push(tokio::spawn(async move {
            while let Some(d) = stream.next().await {
                let Ok(d) = d else { continue };
                seen.lock()
                    .unwrap()
                    .insert(d.signature().unwrap().uuid.clone());
                let _ = d.ack().await;
            }
            drop(b);
        }));
    }
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let failed_publishes = Arc::new(Mutex::new(0usize));
    let producer = {
        let broker = broker.clone();
        let sent = Arc::clone(&sent);
        let failed = Arc::clone(&failed_publishes);
        let queue = queue.clone();
        tokio::spawn(async move {
            futures::stream::iter(0..N)
                .for_each_concurrent(8, |n| {
                    let broker = broker.clone();
                    let sent = Arc::clone(&sent);
                    let failed = Arc::clone(&failed);
                    let sig = Signature::new("add")
                        .routing_key(&queue)
                        .arg(n as i64)
                        .arg(1_i64);
                    async move {
                        let start = Instant::now();
                        while let Err(e) = broker.publish(&sig).await {
                            *failed.lock().unwrap() += 1;
                            assert!(
                                start.elapsed() < Duration::from_secs(60),
                                "publish keeps failing: {e}"
                            );
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        sent.lock().unwrap().push(sig.uuid.clone());
                    }
                })
                .await;
        })
    };
    common::eventually(Duration::from_secs(60), "a fifth published", || {
        let n = sent.lock().unwrap().len();
        async move { n >= N / 5 }
    })
    .await;
    let started = Instant::now();
    disturb.await;
    let disturbed = started.elapsed();
    producer.await.unwrap();
    let produced = started.elapsed();
    let want: HashSet<String> = sent.lock().unwrap().iter().cloned().collect();
    assert_eq!(want.len(), N);
    common::eventually(Duration::from_secs(90), "every task delivered", || {
        let missing = want
            .iter()
            .filter(|u| !seen.lock().unwrap().contains(*u))
            .count();
        async move { missing == 0 }
    })
    .await;
    println!(
        "{what}: failover done after {:.1} s, all {N} published after {:.1} s ({} publishes failed and were retried), all delivered after {:.1} s, none lost",
        disturbed.as_secs_f64(),
        produced.as_secs_f64(),
        failed_publishes.lock().unwrap(),
        started.elapsed().as_secs_f64(),
    );
    for c in consumers {
        c.abort();
    }
    broker.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_failover_mid_run_loses_no_task() {
    if common::url().is_none() {
        return;
    }
    let sentinels = Sentinels::start().await;
    assert_eq!(sentinels.current_master(), sentinels.master_port);

    // The backend and the lock find the master through the Sentinels too.
    let ns = common::namespace();
    let backend = RedisBackend::connect(config(&sentinels.url(), &ns))
        .await
        .unwrap();
    let sig = Signature::new("add");
    backend.set_state(&TaskState::pending(&sig)).await.unwrap();
    let lock = RedisLock::connect(config(&sentinels.url(), &ns))
        .await
        .unwrap();
    let deadline = machinery_core::time::unix_nanos(&machinery_core::time::now()) + 60_000_000_000;
    assert!(
        lock.try_lock(&format!("{ns}_lock"), deadline)
            .await
            .unwrap()
    );

    let sentinel_port = sentinels.sentinel_ports[0];
    run_through_failover(&sentinels.url(), "SENTINEL FAILOVER", async {
        common::cli(sentinel_port, &["sentinel", "failover", MASTER]);
        sentinels.wait_master(sentinels.replica_port, Duration::from_secs(30));
    })
    .await;

    // After the failover the same backend and lock objects write to the new master.
    backend
        .set_state(&TaskState::new(&sig, State::Success))
        .await
        .unwrap();
    assert_eq!(
        backend.state(&sig.uuid).await.unwrap().unwrap().state,
        State::Success
    );
    // The lock's connection was idle and closed by the failover: its first call may fail
    // (as with any reconnecting client); the next goes to the new master.
    let key = format!("{ns}_lock");
    let held = match lock.try_lock(&key, deadline).await {
        Ok(held) => held,
        Err(_) => lock.try_lock(&key, deadline).await.unwrap(),
    };
    assert!(!held, "the lock taken before the failover is still held");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn master_killed_mid_run_loses_no_task() {
    if common::url().is_none() {
        return;
    }
    let mut sentinels = Sentinels::start().await;
    let pid: u32 = common::cli(sentinels.master_port, &["info", "server"])
        .lines()
        .find_map(|l| l.strip_prefix("process_id:"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let url = sentinels.url();
    run_through_failover(
        &url,
        "master killed (SIGKILL), restarted as a replica",
        async {
            let ok = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status()
                .unwrap()
                .success();
            assert!(ok, "kill -KILL {pid}");
            sentinels.master.kill();
            sentinels.wait_master(sentinels.replica_port, Duration::from_secs(30));
            // With `wait_replicas` 1 (the default with Sentinel) publishes fail until the new
            // master has a replica again: the old one, restarted as a replica of the new
            // master (as an operator would; empty, it must not come back as a master).
            let new_master = sentinels.replica_port.to_string();
            sentinels
                .master
                .restart_with(&["--replicaof", "127.0.0.1", &new_master])
                .await;
            common::wait_cli(
                sentinels.master_port,
                &["info", "replication"],
                "master_link_status:up",
                Duration::from_secs(30),
            );
        },
    )
    .await;
}
