//! What only the Pub/Sub driver has: ETAs held back on receipt (the sender never waits),
//! lease extension up to the maximum, ordering keys, the 10 MB limit, batching (API calls
//! per task), dead letters from a worker, the connect-time check, and an emulator restart.
//! On Google's emulator (needs `MACHINERY_TEST_PUBSUB_URL` and `PUBSUB_EMULATOR_HOST`); the
//! restart test starts its own emulator on a port the OS gives.

mod common;

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_core::{
    Broker, BrokerCapabilities, ConsumeOptions, Error, MemoryBackend, Server, Signature, time,
};
use machinery_pubsub::{PubSubBroker, PubSubConfig};
use machinery_testkit::{BrokerSetup, BrokerUnderTest, Timing};

fn opts(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        ..ConsumeOptions::default()
    }
}

async fn setup(tune: impl FnOnce(&mut PubSubConfig)) -> Option<(PubSubBroker, String, String)> {
    let url = common::url()?;
    let ns = common::namespace();
    let mut config = common::config(&url, &ns);
    tune(&mut config);
    let broker = common::connect(config).await;
    let q = format!("{ns}_tasks");
    Some((broker, ns, q))
}

async fn next(
    stream: &mut machinery_core::DeliveryStream,
    limit: Duration,
) -> machinery_core::Delivery {
    tokio::time::timeout(limit, stream.next())
        .await
        .expect("delivered in time")
        .expect("stream open")
        .expect("delivery")
}

/// An ETA of 2 s: the sender returns at once (Go's sender waits until the ETA), and the
/// message is held back on receipt and delivered no earlier than its ETA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_of_two_seconds_is_never_early_and_the_sender_returns_at_once() {
    let Some((broker, ns, q)) = setup(|_| {}).await else {
        return;
    };
    // The topic is known before timing the publish (the first publish checks it once).
    broker.ensure_queue(&q).await.expect("queue");
    let eta = time::now() + chrono::Duration::seconds(2);
    let started = Instant::now();
    broker
        .publish(&Signature::new("t").routing_key(&q).eta(eta))
        .await
        .expect("publish");
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(1),
        "publish took {took:?} (the ETA is 2 s away)"
    );
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = next(&mut stream, Duration::from_secs(20)).await;
    let now = time::now();
    assert!(now >= eta, "delivered {} early", eta - now);
    assert!(
        now <= eta + chrono::Duration::seconds(4),
        "delivered {} late",
        now - eta
    );
    d.ack().await.expect("ack");
    let calls = broker.api_call_counts();
    assert!(
        calls.modify_ack_deadline >= 1,
        "held with ModifyAckDeadline: {calls:?}"
    );
    println!(
        "eta 2 s: publish returned in {took:?}, delivered {} after the ETA",
        now - eta
    );
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// An ETA beyond the longest single hold (shortened to 1 s here, 600 s on Pub/Sub) is held
/// again each time it comes back, and delivered at its ETA, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eta_beyond_one_hold_is_held_again_until_due() {
    let Some((broker, ns, q)) = setup(|c| c.max_hold_seconds = 1).await else {
        return;
    };
    let eta = time::now() + chrono::Duration::milliseconds(3500);
    broker
        .publish(&Signature::new("t").routing_key(&q).eta(eta))
        .await
        .expect("publish");
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = next(&mut stream, Duration::from_secs(20)).await;
    let now = time::now();
    assert!(now >= eta, "delivered {} early", eta - now);
    d.ack().await.expect("ack");
    let calls = broker.api_call_counts();
    assert!(
        calls.modify_ack_deadline >= 3,
        "held several times for 1 s: {calls:?}"
    );
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// `requeue(d)` with `d` beyond the longest single hold publishes the message again with
/// the not-before attribute and acknowledges this copy: it comes back after `d`, not before,
/// with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requeue_longer_than_one_hold_is_not_early() {
    let Some((broker, ns, q)) = setup(|c| c.max_hold_seconds = 1).await else {
        return;
    };
    let sig = Signature::new("t").routing_key(&q);
    broker.publish(&sig).await.expect("publish");
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = next(&mut stream, Duration::from_secs(15)).await;
    let delay = Duration::from_millis(2500);
    let at = Instant::now();
    d.requeue(Some(delay)).await.expect("requeue");
    let again = next(&mut stream, Duration::from_secs(20)).await;
    assert!(at.elapsed() >= delay, "back after {:?}", at.elapsed());
    assert_eq!(again.signature().expect("a task").uuid, sig.uuid);
    again.ack().await.expect("ack");
    if let Ok(Some(x)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        panic!("the requeued message came twice: {x:?}");
    }
    assert!(broker.api_call_counts().publish >= 2, "published again");
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// A task that runs longer than the ack deadline (10 s) keeps its message: its lease is
/// extended, so a second consumer never sees it, and once acked it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_task_keeps_its_message_past_the_ack_deadline() {
    let Some((broker, ns, q)) = setup(|_| {}).await else {
        return;
    };
    let url = common::url().expect("set");
    let other = common::connect(common::config(&url, &ns)).await;
    let sig = Signature::new("long").routing_key(&q);
    broker.publish(&sig).await.expect("publish");
    let mut a = broker.consume(&q, opts(1)).await.expect("consume a");
    let d = next(&mut a, Duration::from_secs(15)).await;
    let mut b = other.consume(&q, opts(1)).await.expect("consume b");
    // 2.5 ack deadlines.
    if let Ok(Some(x)) = tokio::time::timeout(Duration::from_secs(25), b.next()).await {
        panic!("the running task's message was delivered again: {x:?}");
    }
    d.ack().await.expect("ack after 25 s");
    if let Ok(Some(x)) = tokio::time::timeout(Duration::from_secs(3), b.next()).await {
        panic!("an acked message came back: {x:?}");
    }
    let calls = broker.api_call_counts();
    assert!(
        calls.modify_ack_deadline >= 2,
        "the lease was extended: {calls:?}"
    );
    drop((a, b));
    common::teardown(&broker, &ns).await;
}

/// Past `max_extension` (Go's `MaxExtension`) the lease is no longer extended: the message
/// is delivered again after the ack deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lease_is_extended_no_longer_than_max_extension() {
    let Some((broker, ns, q)) = setup(|c| c.max_extension = Duration::from_secs(2)).await else {
        return;
    };
    let sig = Signature::new("stuck").routing_key(&q);
    broker.publish(&sig).await.expect("publish");
    let mut a = broker.consume(&q, opts(2)).await.expect("consume");
    let first = next(&mut a, Duration::from_secs(15)).await;
    let at = Instant::now();
    let again = next(&mut a, Duration::from_secs(30)).await;
    assert_eq!(again.signature().unwrap().uuid, sig.uuid);
    assert!(
        at.elapsed() >= Duration::from_secs(8),
        "came back after {:?}, before the 10 s deadline",
        at.elapsed()
    );
    again.ack().await.expect("ack");
    drop(first);
    drop(a);
    common::teardown(&broker, &ns).await;
}

/// A message over Pub/Sub's 10 MB is refused before anything is sent, naming both sizes.
#[tokio::test]
async fn a_message_over_10_mb_is_refused_before_publishing() {
    let Some((broker, ns, q)) = setup(|_| {}).await else {
        return;
    };
    broker.ensure_queue(&q).await.expect("queue");
    let before = broker.api_call_counts();
    let big = "x".repeat(10_000_001);
    let sig = Signature::new("big").routing_key(&q).arg(big);
    let e = broker.publish(&sig).await.expect_err("too large");
    assert!(
        matches!(
            e,
            Error::TooLarge {
                limit: 10_000_000,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("10000000"), "{e}");
    assert_eq!(broker.api_call_counts(), before, "nothing was sent");
    common::teardown(&broker, &ns).await;
}

/// Go requires the subscription and the topic to exist: without `create_missing` the
/// connect fails naming what is missing and the key that creates it.
#[tokio::test]
async fn a_missing_subscription_is_an_error_naming_it() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let mut config = common::config(&url, &ns);
    config.create_missing = false;
    let e = PubSubBroker::connect(config.clone())
        .await
        .expect_err("missing");
    let text = e.to_string();
    assert!(text.contains(&format!("topics/{ns}_tasks")), "{text}");
    assert!(text.contains("gcp_pubsub.create_missing"), "{text}");
    // The topic exists, the subscription does not.
    let created = common::connect(PubSubConfig {
        subscription: format!("{ns}_other"),
        create_missing: true,
        ..config.clone()
    })
    .await;
    let e = PubSubBroker::connect(config).await.expect_err("missing");
    let text = e.to_string();
    assert!(text.contains(&format!("subscriptions/{ns}_sub")), "{text}");
    assert!(text.contains("gcp_pubsub.create_missing"), "{text}");
    common::teardown(&created, &ns).await;
}

/// 300 tasks published concurrently (as a group's members are), consumed by one consumer
/// with prefetch 50 and acked: publishes share requests, the stream needs no request per
/// message, acks share requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_per_task_are_batched() {
    let Some((broker, ns, q)) = setup(|_| {}).await else {
        return;
    };
    const N: usize = 300;
    let broker = Arc::new(broker);
    let sigs: Vec<Signature> = (0..N)
        .map(|i| Signature::new("add").routing_key(&q).arg(i as i64))
        .collect();
    let mut stream = broker.consume(&q, opts(50)).await.expect("consume");
    futures::stream::iter(sigs.iter())
        .map(|s| {
            let b = Arc::clone(&broker);
            async move { b.publish(s).await.expect("publish") }
        })
        .buffer_unordered(64)
        .collect::<Vec<()>>()
        .await;
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut got = 0;
    while got < N {
        tokio::select! {
            d = next(&mut stream, Duration::from_secs(30)) => {
                got += 1;
                acks.push(d.ack());
            }
            Some(r) = acks.next(), if !acks.is_empty() => r.expect("ack"),
        }
    }
    while let Some(r) = acks.next().await {
        r.expect("ack");
    }
    let calls = broker.api_call_counts();
    let per_task = calls.total() as f64 / N as f64;
    println!("Pub/Sub API calls per task: {per_task:.3} ({calls:?})");
    assert!(per_task < 0.5, "{per_task} calls per task: {calls:?}");
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// A worker hands a body that is not a signature to the dead-letter topic `<topic>.dead`
/// with the reason as an attribute, and goes on with the next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_dead_letters_a_body_that_is_not_a_signature() {
    let Some((broker, ns, q)) = setup(|_| {}).await else {
        return;
    };
    let broker = Arc::new(broker);
    let config = machinery_core::Config {
        default_queue: q.clone(),
        ..machinery_core::Config::default()
    };
    let server = Server::new(
        config,
        Arc::clone(&broker) as Arc<dyn Broker>,
        MemoryBackend::new(),
    );
    server.register_task("add", add).expect("register");
    let worker = server.new_worker("dl", 2).launch();
    let garbage = b"{\"UUID\": not a signature".to_vec();
    broker.publish_raw(&q, &garbage).await.expect("inject");
    let sum: i64 = server
        .send_task(Signature::new("add").arg(2i64).arg(3i64))
        .await
        .expect("send")
        .get_as(Duration::from_secs(20))
        .await
        .expect("result");
    assert_eq!(sum, 5);
    let letter = common::wait_for(Duration::from_secs(20), "the dead letter", || async {
        broker
            .dead_letters(&q)
            .await
            .expect("read dead letters")
            .into_iter()
            .find(|l| l.body == garbage)
    })
    .await;
    assert!(!letter.reason.is_empty(), "the reason attribute is set");
    println!("dead letter reason: {}", letter.reason);
    worker.quit();
    worker.join().await.expect("worker");
    common::teardown(&broker, &ns).await;
}

async fn add(a: i64, b: i64) -> Result<i64, String> {
    Ok(a + b)
}

/// On a subscription with message ordering (`create_with_ordering`), the broker reports the
/// `fifo` capability and the conformance case `fifo_order_is_kept` holds.
#[test]
fn fifo_order_is_kept_on_an_ordered_subscription() {
    machinery_testkit::run(machinery_testkit::broker::fifo_order_is_kept(ordered));
}

struct Ordered {
    ns: String,
    broker: Arc<PubSubBroker>,
}

#[machinery_core::async_trait]
impl BrokerUnderTest for Ordered {
    fn broker(&self) -> Arc<dyn Broker> {
        let caps: BrokerCapabilities = self.broker.capabilities();
        assert!(
            caps.fifo,
            "an ordered subscription gives the fifo capability"
        );
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }
    async fn another(&self) -> machinery_core::Result<Arc<dyn Broker>> {
        unreachable!("not used by the fifo case")
    }
    async fn inject_raw(&self, queue: &str, body: &[u8]) -> machinery_core::Result<()> {
        self.broker.publish_raw(queue, body).await.map(drop)
    }
    async fn dead_letters(
        &self,
        queue: &str,
    ) -> machinery_core::Result<Vec<machinery_core::DeadLetter>> {
        self.broker.dead_letters(queue).await
    }
    fn timing(&self) -> Timing {
        Timing {
            receive_timeout: Duration::from_secs(15),
            quiet_period: Duration::from_millis(1500),
            ..Timing::default()
        }
    }
    async fn teardown(&self) -> machinery_core::Result<()> {
        common::teardown(&self.broker, &self.ns).await;
        Ok(())
    }
}

async fn ordered(setup: BrokerSetup) -> Option<Box<dyn BrokerUnderTest>> {
    let url = common::url()?;
    let mut config = common::config(&url, &setup.namespace);
    config.create_with_ordering = true;
    Some(Box::new(Ordered {
        broker: Arc::new(common::connect(config).await),
        ns: setup.namespace,
    }))
}

/// The emulator of this test, killed by PID when dropped.
struct OwnEmulator {
    child: Option<Child>,
    port: u16,
}

impl OwnEmulator {
    fn binary() -> String {
        std::env::var("PUBSUB_EMULATOR").unwrap_or_else(|_| {
            "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator".into()
        })
    }

    async fn start(port: u16) -> OwnEmulator {
        let mut e = OwnEmulator { child: None, port };
        e.restart().await;
        e
    }

    async fn restart(&mut self) {
        let child = Command::new(Self::binary())
            .arg("--host=127.0.0.1")
            .arg(format!("--port={}", self.port))
            .env("CLOUD_PUBSUB_EMULATOR_OPTS", "-Xmx256m")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn the Pub/Sub emulator {}: {e}", Self::binary()));
        self.child = Some(child);
        let start = Instant::now();
        while !self.ready().await {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the emulator did not start"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn ready(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            .await
            .is_err()
        {
            return false;
        }
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
        String::from_utf8_lossy(&buf).contains("Ok")
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for OwnEmulator {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private emulator killed (SIGKILL) and started again on the same port mid-run: the
/// worker's stream and the sender come back by themselves (with `create_missing` the
/// topic and subscription, lost with the emulator's memory, are created again), and every
/// task sent after the restart completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_resumes_by_itself_after_an_emulator_restart() {
    let Some(url) = common::url() else { return };
    let mut emulator = OwnEmulator::start(machinery_testkit::servers::free_port()).await;
    let ns = common::namespace();
    let mut config = common::config(&url, &ns);
    config.emulator_host = Some(format!("127.0.0.1:{}", emulator.port));
    config.reconnect_max_delay = Duration::from_secs(1);
    config.request_timeout = Duration::from_secs(5);
    let broker: Arc<dyn Broker> = Arc::new(common::connect(config.clone()).await);
    let q = config.default_queue.clone();
    let server = Server::new(
        machinery_core::Config {
            default_queue: q.clone(),
            ..machinery_core::Config::default()
        },
        broker,
        MemoryBackend::new(),
    );
    server.register_task("add", add).expect("register");
    let worker = server.new_worker("restart", 4).launch();
    for i in 0..20i64 {
        let r: i64 = server
            .send_task(Signature::new("add").arg(i).arg(1i64))
            .await
            .expect("send")
            .get_as(Duration::from_secs(20))
            .await
            .expect("result before the restart");
        assert_eq!(r, i + 1);
    }

    emulator.kill();
    tokio::time::sleep(Duration::from_secs(2)).await;
    emulator.restart().await;
    let back = Instant::now();

    let mut results = Vec::new();
    for i in 0..20i64 {
        let sig = Signature::new("add").arg(i).arg(2i64);
        let r = loop {
            match server.send_task(sig.clone()).await {
                Ok(r) => break r,
                Err(e) => {
                    assert!(
                        back.elapsed() < Duration::from_secs(30),
                        "send after the restart: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        results.push((i, r));
    }
    for (i, r) in results {
        let v: i64 = r
            .get_as(Duration::from_secs(60))
            .await
            .unwrap_or_else(|e| panic!("task {i} after the restart: {e}"));
        assert_eq!(v, i + 2);
    }
    println!(
        "all 20 tasks sent after the restart done {:.1} s after the emulator came back",
        back.elapsed().as_secs_f64()
    );
    worker.quit();
    worker.join().await.expect("worker");
}
