//! The broker on a private local Redis Cluster (3 masters on free ports, started by the tests
//! with `redis-server --cluster-enabled yes` and `redis-cli --cluster create`): the shared
//! conformance suite, Go's key names with hash-tagged keys of our own, and a resharding of
//! the queue's slot while tasks flow. Needs `MACHINERY_TEST_REDIS_URL` to be set (as the other
//! driver tests; CI sets it) and `redis-server` / `redis-cli` on `PATH`.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{Backend, Broker, ConsumeOptions, DeadLetter, Result, Signature, async_trait};
use machinery_redis::{RedisBackend, RedisBroker, RedisConfig};
use machinery_testkit::{BackendSetup, BrokerSetup, BrokerUnderTest, Timing};
use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

async fn cluster_conn(url: &str) -> ClusterConnection {
    let nodes: Vec<String> = url
        .trim_start_matches("redis://")
        .split(',')
        .map(|n| format!("redis://{n}"))
        .collect();
    redis::cluster::ClusterClient::new(nodes)
        .expect("cluster client")
        .get_async_connection()
        .await
        .expect("cluster connection")
}

struct ClusterUnderTest {
    config: RedisConfig,
    broker: Arc<RedisBroker>,
}

#[async_trait]
impl BrokerUnderTest for ClusterUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(RedisBroker::connect(self.config.clone()).await?))
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        let mut conn = cluster_conn(&self.config.url).await;
        let _: () = conn.rpush(queue, body).await.expect("rpush");
        Ok(())
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        self.broker.dead_letters(queue).await
    }

    fn timing(&self) -> Timing {
        Timing {
            redelivery_after_drop: Duration::from_secs(3),
            ..Timing::default()
        }
    }

    async fn teardown(&self) -> Result<()> {
        // The cluster is private to this test binary and dies with it.
        self.broker.close().await
    }
}

async fn broker(setup: BrokerSetup) -> Option<Box<dyn BrokerUnderTest>> {
    common::url()?;
    let url = common::shared_cluster();
    let config = RedisConfig {
        default_queue: setup.default_queue(),
        ..common::config(url, &setup.namespace)
    };
    let broker = RedisBroker::connect(config.clone())
        .await
        .expect("the private cluster");
    Some(Box::new(ClusterUnderTest {
        config,
        broker: Arc::new(broker),
    }))
}

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    common::url()?;
    let expire = setup
        .results_expire_in
        .map_or(0, |d| d.as_secs_f64().ceil() as i64);
    let config = RedisConfig {
        results_expire_in: expire,
        ..RedisConfig::from_url(common::shared_cluster())
    };
    Some(Arc::new(
        RedisBackend::connect(config)
            .await
            .expect("the private cluster"),
    ))
}

machinery_testkit::broker_conformance!(broker);
machinery_testkit::backend_conformance!(backend);

fn task(queue: &str, n: usize) -> Signature {
    Signature::new("add")
        .routing_key(queue)
        .arg(n as i64)
        .arg(1_i64)
}

/// Go's names for the queue and the delayed set; our own keys carry the queue's hash tag.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_keeps_gos_key_names_and_tags_its_own() {
    if common::url().is_none() {
        return;
    }
    let url = common::shared_cluster();
    // Go's default names, on a cluster of our own.
    let config = RedisConfig {
        consumer_lease_ms: 1000,
        recovery_interval_ms: 200,
        delayed_tasks_poll_period: 50,
        ..RedisConfig::from_url(url)
    };
    let broker = RedisBroker::connect(config).await.expect("cluster broker");
    let mut conn = cluster_conn(url).await;
    let sig = task("", 1);
    broker.publish(&sig).await.unwrap();
    let later = task("", 2).eta(machinery_core::time::after(Duration::from_millis(300)));
    broker.publish(&later).await.unwrap();
    let queued: usize = conn.llen("machinery_tasks").await.unwrap();
    assert_eq!(queued, 1);
    let delayed: usize = conn.zcard("delayed_tasks").await.unwrap();
    assert_eq!(delayed, 1);

    let mut stream = broker
        .consume("machinery_tasks", ConsumeOptions::default())
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("a delivery")
        .unwrap()
        .unwrap();
    // The consumer registry and processing list are in the queue's slot.
    let registered: usize = conn.zcard("{machinery_tasks}.consumers").await.unwrap();
    assert_eq!(registered, 1);
    assert_eq!(first.signature().unwrap().uuid, sig.uuid);
    first
        .dead_letter("testing dead letters on a cluster")
        .await
        .unwrap();
    let second = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("the delayed task")
        .unwrap()
        .unwrap();
    assert_eq!(second.signature().unwrap().uuid, later.uuid);
    second.ack().await.unwrap();
    let dead = broker.dead_letters("machinery_tasks").await.unwrap();
    assert_eq!(dead.len(), 1);
    let dead_len: usize = conn.llen("{machinery_tasks}.dead").await.unwrap();
    assert_eq!(dead_len, 1);
    drop(stream);
    broker.close().await.unwrap();
    let _: () = conn
        .del(&["{machinery_tasks}.dead", "machinery_tasks", "delayed_tasks"])
        .await
        .unwrap_or(());
}

/// The slot of the queue moves to another master, key by key (MIGRATE and SETSLOT, as
/// `redis-cli --cluster reshard` does) while a producer publishes and two consumers take,
/// ack and requeue: the clients follow MOVED / ASK, and every task is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_the_queues_slot_mid_run_loses_no_task() {
    if common::url().is_none() {
        return;
    }
    const N: usize = 3000;
    let cluster = common::Cluster::start().await;
    let ns = common::namespace();
    let config = common::config(&cluster.url, &ns);
    let queue = config.default_queue.clone();
    let broker = RedisBroker::connect(config.clone()).await.unwrap();
    let seen: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut consumers = Vec::new();
    for _ in 0..2 {
        let b = RedisBroker::connect(config.clone()).await.unwrap();
        let mut stream = b
            .consume(
                &queue,
                ConsumeOptions {
                    prefetch: 16,
                    ..ConsumeOptions::default()
                },
            )
            .await
            .unwrap();
        let seen = Arc::clone(&seen);
        consumers.push(tokio::spawn(async move {
            let mut requeued = 0;
            while let Some(d) = stream.next().await {
                let Ok(d) = d else { continue };
                let uuid = d.signature().unwrap().uuid.clone();
                // Every 50th delivery is requeued once first.
                if requeued < 40
                    && uuid.ends_with('7')
                    && !seen.lock().unwrap().contains(&format!("r{uuid}"))
                {
                    seen.lock().unwrap().insert(format!("r{uuid}"));
                    requeued += 1;
                    let _ = d.requeue(None).await;
                    continue;
                }
                seen.lock().unwrap().insert(uuid);
                let _ = d.ack().await;
            }
            drop(b);
        }));
    }
    let sent: Arc<Mutex<Vec<String>>> = Arc::default();
    let producer = {
        let broker = broker.clone();
        let sent = Arc::clone(&sent);
        let queue = queue.clone();
        tokio::spawn(async move {
            for n in 0..N {
                let sig = task(&queue, n);
                let mut tries = 0;
                while let Err(e) = broker.publish(&sig).await {
                    tries += 1;
                    assert!(tries < 200, "publish keeps failing: {e}");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                sent.lock().unwrap().push(sig.uuid.clone());
                if n % 10 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        })
    };
    // Move the queue's slot once a third of the tasks are out.
    common::eventually(Duration::from_secs(60), "a third published", || {
        let n = sent.lock().unwrap().len();
        async move { n >= N / 3 }
    })
    .await;
    let port = cluster.ports[0];
    let slot: u16 = common::cli(port, &["cluster", "keyslot", &queue])
        .trim()
        .parse()
        .unwrap();
    let moved = tokio::task::spawn_blocking({
        let ports = cluster.ports.clone();
        move || move_slot(&ports, slot)
    })
    .await
    .unwrap();
    producer.await.unwrap();
    let want: HashSet<String> = sent.lock().unwrap().iter().cloned().collect();
    assert_eq!(want.len(), N);
    common::eventually(Duration::from_secs(60), "every task delivered", || {
        let missing = want
            .iter()
            .filter(|u| !seen.lock().unwrap().contains(*u))
            .count();
        async move { missing == 0 }
    })
    .await;
    println!("moved slot {slot} ({moved} keys) mid-run; {N} tasks delivered, none lost");
    for c in consumers {
        c.abort();
    }
    broker.close().await.unwrap();
}

/// Move `slot` from the node that serves it to another, key by key, as `redis-cli --cluster
/// reshard` does: SETSLOT IMPORTING / MIGRATING, MIGRATE in small batches, SETSLOT NODE on
/// every node. Returns how many keys moved.
fn move_slot(ports: &[u16], slot: u16) -> usize {
    let node_id = |port: u16| common::cli(port, &["cluster", "myid"]).trim().to_owned();
    let nodes = common::cli(ports[0], &["cluster", "nodes"]);
    let owner: u16 = nodes
        .lines()
        .find(|l| serves(l, slot))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|addr| addr.split(['@', ',']).next())
        .and_then(|addr| addr.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .expect("a node serves the slot");
    let target = *ports.iter().find(|&&p| p != owner).unwrap();
    let (owner_id, target_id) = (node_id(owner), node_id(target));
    let s = slot.to_string();
    common::cli(target, &["cluster", "setslot", &s, "importing", &owner_id]);
    common::cli(owner, &["cluster", "setslot", &s, "migrating", &target_id]);
    let mut moved = 0;
    loop {
        let keys = common::cli(owner, &["cluster", "getkeysinslot", &s, "2"]);
        let keys: Vec<&str> = keys.lines().filter(|l| !l.is_empty()).collect();
        if keys.is_empty() {
            break;
        }
        let mut args = vec![
            "migrate".to_owned(),
            "127.0.0.1".to_owned(),
            target.to_string(),
            String::new(),
            "0".to_owned(),
            "5000".to_owned(),
            "keys".to_owned(),
        ];
        args.extend(keys.iter().map(|k| (*k).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::cli(owner, &args);
        moved += keys.len();
        // Give the clients time to meet ASK redirects while the slot is half moved.
        std::thread::sleep(Duration::from_millis(100));
    }
    for &p in ports {
        common::cli(p, &["cluster", "setslot", &s, "node", &target_id]);
    }
    moved
}

fn serves(nodes_line: &str, slot: u16) -> bool {
    nodes_line.split_whitespace().skip(8).any(|range| {
        let mut it = range.split('-');
        match (it.next().and_then(|a| a.parse::<u16>().ok()), it.next()) {
            (Some(a), None) => a == slot,
            (Some(a), Some(b)) => b.parse::<u16>().is_ok_and(|b| (a..=b).contains(&slot)),
            _ => false,
        }
    })
}
