//! Fault tests of the AMQP broker with real worker processes (`machinery worker`), Redis as
//! the result backend: a worker killed with SIGKILL in the middle of 10 000 tasks, a RabbitMQ
//! restart during a run (on a private RabbitMQ node this test starts on free ports the OS
//! gives, with `rabbitmq-server` from `PATH`; the machine's RabbitMQ is never touched), and
//! malformed messages. Needs
//! `MACHINERY_TEST_AMQP_URL` and `MACHINERY_TEST_REDIS_URL` (unset = skipped).

use std::collections::HashSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use machinery::Broker as _;
use machinery::amqp::{AmqpBroker, AmqpConfig};
use machinery::{Config, Server, server_from_config};
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
    tokio::time::sleep(Duration::from_millis(500)).await;
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

/// `tool` on `PATH`.
fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file())
}

/// A TCP port that was free a moment ago (bound on 127.0.0.1:0, read, released).
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

/// A RabbitMQ node of this test (free ports), restarted by killing its process (SIGKILL, by
/// the PID it wrote) and starting it again on the same ports and data directory.
struct OwnRabbit {
    dir: PathBuf,
    port: u16,
    dist_port: u16,
    server: PathBuf,
}

impl OwnRabbit {
    async fn start() -> Option<OwnRabbit> {
        let Some(server) = find_tool("rabbitmq-server") else {
            assert!(
                std::env::var("MACHINERY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "rabbitmq-server is not on PATH but MACHINERY_REQUIRE_SERVICES=1"
            );
            println!("skipped: rabbitmq-server is not on PATH");
            return None;
        };
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("machinery-amqp-faults-{port}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node dir");
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!("listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n"),
        )
        .expect("node config");
        // The Debian wrapper runs the node as user rabbitmq.
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let node = OwnRabbit {
            dir,
            port,
            dist_port: free_port(),
            server,
        };
        node.launch().await;
        Some(node)
    }

    fn node_name(&self) -> String {
        format!("rabbit_amqpfaults_{}@localhost", self.port)
    }

    fn pid(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    }

    async fn launch(&self) {
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let status = Command::new(&self.server)
            .arg("-detached")
            .env("RABBITMQ_NODENAME", self.node_name())
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", self.port.to_string())
            .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
            .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
            .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
            .env(
                "RABBITMQ_ENABLED_PLUGINS_FILE",
                self.dir.join("enabled_plugins"),
            )
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let start = Instant::now();
        loop {
            let up = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok();
            if up && self.pid().is_some() {
                // The listener opens late in the boot: a moment more for the vhost.
                tokio::time::sleep(Duration::from_millis(500)).await;
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the private RabbitMQ node did not start"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn kill(&self) {
        if let Some(pid) = self.pid() {
            let _ = Command::new("kill").args(["-9", &pid]).status();
            let _ = std::fs::remove_file(self.dir.join("pid"));
        }
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

impl Drop for OwnRabbit {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_sender_resume_after_a_rabbitmq_restart() {
    let Some((_, redis_url)) = urls() else {
        return;
    };
    let Some(node) = OwnRabbit::start().await else {
        return;
    };
    let setup = Setup::new(&node.url(), &redis_url);
    let mut conn = redis_conn(&redis_url, REDIS_VAR).await;
    let mut worker = setup.worker(8);
    tokio::time::sleep(Duration::from_millis(500)).await;
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
