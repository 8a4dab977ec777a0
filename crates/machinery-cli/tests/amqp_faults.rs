//! Fault tests of the AMQP broker with real worker processes (`machinery worker`), Redis as
//! the result backend: a worker killed with SIGKILL in the middle of 10 000 tasks, a RabbitMQ
//! restart during a run (on a private RabbitMQ node this test starts on free ports the OS
//! gives, with `rabbitmq-server` from `PATH`; the machine's RabbitMQ is never touched), and
//! malformed messages. Needs
//! `MACHINERY_TEST_AMQP_URL` and `MACHINERY_TEST_REDIS_URL` (unset = skipped).

use std::collections::HashSet;
use std::time::{Duration, Instant};

use machinery::Broker as _;
use machinery::amqp::{AmqpBroker, AmqpConfig};
use machinery::{Config, Server, server_from_config};
use machinery_testkit::servers::RabbitNode;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

mod common;

use common::{Worker, redis_conn, send_adds, successes, wait_for_successes, worker_command};

const AMQP_VAR: &str = "MACHINERY_TEST_AMQP_URL";
const REDIS_VAR: &str = "MACHINERY_TEST_REDIS_URL";

fn namespace() -> String {
    format!("af{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Where one test's tasks go: exchange and queue of its own (binding key = queue).
#[derive(Clone)]
struct Setup {
    amqp: String,
    redis: String,
    exchange: String,
    queue: String,
}

impl Setup {
    fn new(amqp: &str, redis: &str) -> Setup {
        let ns = namespace();
        Setup {
            amqp: amqp.to_owned(),
            redis: redis.to_owned(),
            exchange: format!("{ns}_exchange"),
            queue: format!("{ns}_tasks"),
        }
    }

    fn config(&self) -> Config {
        let mut config = Config {
            broker: self.amqp.clone(),
            result_backend: self.redis.clone(),
            default_queue: self.queue.clone(),
            ..Config::default()
        };
        config.amqp.exchange = self.exchange.clone();
        config.amqp.binding_key = self.queue.clone();
        config
    }

    /// A `machinery worker` process on this setup.
    fn worker(&self, concurrency: usize) -> Worker {
        let mut cmd = worker_command(&self.amqp, &self.redis, &self.queue, concurrency);
        cmd.env("DEFAULT_QUEUE", &self.queue)
            .env("AMQP_EXCHANGE", &self.exchange)
            .env("AMQP_BINDING_KEY", &self.queue)
            .env("AMQP_PREFETCH_COUNT", concurrency.to_string());
        Worker::spawn(cmd)
    }

    async fn sender(&self) -> Server {
        server_from_config(self.config()).await.expect("sender")
    }

    /// Wait until the worker process has declared this setup's queue (a passive declare
    /// succeeds), so that what is published next is routed to it.
    async fn wait_for_queue(&self) {
        let conn = lapin::Connection::connect(&self.amqp, lapin::ConnectionProperties::default())
            .await
            .expect("connect to wait for the queue");
        machinery_testkit::wait_until(Duration::from_secs(60), "the worker's queue", || async {
            let Ok(ch) = conn.create_channel().await else {
                return false;
            };
            let passive = lapin::options::QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.queue_declare(self.queue.as_str().into(), passive, Default::default())
                .await
                .is_ok()
        })
        .await;
        let _ = conn.close(200, "bye".into()).await;
    }

    /// Delete the queues and exchanges of this setup.
    async fn cleanup(&self) {
        let conn = lapin::Connection::connect(&self.amqp, lapin::ConnectionProperties::default())
            .await
            .expect("connect for clean-up");
        for q in [self.queue.clone(), format!("{}.dead", self.queue)] {
            let ch = conn.create_channel().await.expect("channel");
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        }
        for x in [self.exchange.clone(), format!("{}.dead", self.exchange)] {
            let ch = conn.create_channel().await.expect("channel");
            let _ = ch
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
        }
        let _ = conn.close(200, "bye".into()).await;
    }
}

async fn delete_states(conn: &mut MultiplexedConnection, uuids: &[String]) {
    for chunk in uuids.chunks(1000) {
        let _: () = conn.del(chunk).await.expect("del");
    }
}

fn urls() -> Option<(String, String)> {
    let amqp = machinery_testkit::env_url(AMQP_VAR)?;
    let redis = machinery_testkit::env_url(REDIS_VAR)?;
    Some((amqp, redis))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_mid_run_loses_no_task() {
    let Some((amqp, redis_url)) = urls() else {
        return;
    };
    const N: usize = 10_000;
    let setup = Setup::new(&amqp, &redis_url);
    let mut conn = redis_conn(&redis_url, REDIS_VAR).await;
    let server = setup.sender().await;
    // The queue must exist before the tasks are published (the worker declares it too).
    let mut first = setup.worker(16);
    setup.wait_for_queue().await;
    first.kill();
    let uuids = send_adds(&server, &setup.queue, 0, N).await;
    assert_eq!(uuids.iter().collect::<HashSet<_>>().len(), N);

    let mut first = setup.worker(16);
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

    let mut second = setup.worker(16);
    wait_for_successes(&mut conn, &uuids, N, Duration::from_secs(180), &mut second).await;
    println!(
        "killed the worker (SIGKILL) at {done_at_kill}/{N} SUCCESS; all {N} SUCCESS {:.1} s \
         after the kill, 0 lost",
        killed_at.elapsed().as_secs_f64()
    );
    second.kill();
    let broker = AmqpBroker::connect(AmqpConfig::from_machinery(&amqp, &setup.config()))
        .await
        .expect("inspect");
    assert!(
        broker
            .pending_tasks(&setup.queue)
            .await
            .expect("pending")
            .is_empty(),
        "tasks left in the queue"
    );
    broker.close().await.expect("close");
    setup.cleanup().await;
    delete_states(&mut conn, &uuids).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_sender_resume_after_a_rabbitmq_restart() {
    let Some((_, redis_url)) = urls() else {
        return;
    };
    let Some(node) = RabbitNode::start("amqpfaults", "", |_| {}).await else {
        return;
    };
    let setup = Setup::new(&node.url(), &redis_url);
    let mut conn = redis_conn(&redis_url, REDIS_VAR).await;
    let mut worker = setup.worker(8);
    setup.wait_for_queue().await;
    let server = setup.sender().await;
    let mut all = send_adds(&server, &setup.queue, 0, 500).await;
    wait_for_successes(&mut conn, &all, 500, Duration::from_secs(60), &mut worker).await;

    // A run in progress: 2 000 tasks queued, RabbitMQ killed while the worker drains them,
    // and a sender that keeps sending through the outage.
    all.extend(send_adds(&server, &setup.queue, 1000, 2000).await);
    tokio::time::sleep(Duration::from_millis(300)).await;
    node.kill();
    let killed_at = Instant::now();
    let during = {
        let server = server.clone();
        let queue = setup.queue.clone();
        tokio::spawn(async move { send_adds(&server, &queue, 5000, 200).await })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(worker.is_running(), "the worker survives the outage");
    node.launch().await;
    let back_at = Instant::now();
    all.extend(during.await.expect("sender during the outage"));
    all.extend(send_adds(&server, &setup.queue, 9000, 300).await);
    let total = all.len();
    wait_for_successes(
        &mut conn,
        &all,
        total,
        Duration::from_secs(120),
        &mut worker,
    )
    .await;
    println!(
        "RabbitMQ killed (SIGKILL) mid-run and restarted after {:.1} s; sender and worker \
         resumed by themselves; all {total} tasks SUCCESS {:.1} s after it came back, 0 lost",
        back_at.duration_since(killed_at).as_secs_f64(),
        back_at.elapsed().as_secs_f64()
    );
    worker.kill();
    delete_states(&mut conn, &all).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_the_worker_stays_up() {
    let Some((amqp, redis_url)) = urls() else {
        return;
    };
    let setup = Setup::new(&amqp, &redis_url);
    let mut conn = redis_conn(&redis_url, REDIS_VAR).await;
    let mut worker = setup.worker(4);
    let broker = AmqpBroker::connect(AmqpConfig::from_machinery(&amqp, &setup.config()))
        .await
        .expect("connect");
    let garbage: [&[u8]; 3] = [b"{not json", b"[1,2,3]", b""];
    for body in garbage {
        broker
            .publish_raw(&setup.queue, body)
            .await
            .expect("publish garbage");
    }
    let server = setup.sender().await;
    let good = send_adds(&server, &setup.queue, 0, 10).await;
    wait_for_successes(&mut conn, &good, 10, Duration::from_secs(30), &mut worker).await;
    let start = Instant::now();
    let letters = loop {
        let letters = broker
            .dead_letters(&setup.queue)
            .await
            .expect("dead letters");
        if letters.len() == garbage.len() {
            break letters;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{} dead letters",
            letters.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let bodies: HashSet<Vec<u8>> = letters.iter().map(|l| l.body.clone()).collect();
    let want: HashSet<Vec<u8>> = garbage.iter().map(|b| b.to_vec()).collect();
    assert_eq!(bodies, want);
    assert!(letters.iter().all(|l| !l.reason.is_empty()));
    assert!(worker.is_running());
    worker.kill();
    broker.close().await.expect("close");
    setup.cleanup().await;
    delete_states(&mut conn, &good).await;
}
