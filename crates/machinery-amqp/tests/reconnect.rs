//! Connection loss and failover (needs MACHINERY_TEST_AMQP_URL). The broker talks to
//! RabbitMQ through a TCP proxy of this test, which can cut every connection and refuse new
//! ones for a while: what a RabbitMQ restart or a network failure looks like to a client.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_amqp::{AmqpBackend, AmqpBroker, AmqpConfig};
use machinery_core::{Backend, Broker, ConsumeOptions, Signature, State, TaskState};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy to RabbitMQ that can be taken down.
struct Proxy {
    port: u16,
    down: Arc<AtomicBool>,
    cut: watch::Sender<u64>,
    accepted: Arc<AtomicUsize>,
}

impl Proxy {
    async fn start(upstream: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let down = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (cut, _) = watch::channel(0u64);
        let (down2, accepted2, cut2) = (Arc::clone(&down), Arc::clone(&accepted), cut.clone());
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if down2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                accepted2.fetch_add(1, Ordering::SeqCst);
                let upstream = upstream.clone();
                let mut cut = cut2.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    tokio::select! {
                        _ = tokio::io::copy(&mut cr, &mut sw) => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            down,
            cut,
            accepted,
        }
    }

    /// Cut every open connection and refuse new ones until [`Proxy::up`].
    fn down(&self) {
        self.down.store(true, Ordering::SeqCst);
        self.cut.send_modify(|g| *g += 1);
    }

    fn up(&self) {
        self.down.store(false, Ordering::SeqCst);
    }

    fn url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }
}

/// `host:port` of the RabbitMQ behind `MACHINERY_TEST_AMQP_URL`.
fn upstream(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or(rest);
    let hostport = authority.rsplit('@').next().unwrap_or(authority);
    if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:5672")
    }
}

fn options() -> ConsumeOptions {
    ConsumeOptions {
        prefetch: 4,
        consumer_tag: "reconnect-test".into(),
    }
}

/// The publisher and a consumer resume by themselves after every connection was cut and the
/// server was unreachable for a while; the delivery that was not acked comes back; the
/// stream reports the outage with a bounded number of error items (one per back-off step).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publisher_and_consumer_resume_after_an_outage() {
    let Some(url) = machinery_testkit::env_url(common::URL_VAR) else {
        return;
    };
    let proxy = Proxy::start(upstream(&url)).await;
    let ns = format!("rc{}", &uuid_part());
    let config = common::broker_config(&proxy.url(), &ns);
    let broker = AmqpBroker::connect(config.clone()).await.expect("connect");
    let queue = config.default_queue.clone();
    let mut stream = broker.consume(&queue, options()).await.expect("consume");

    let a = Signature::new("a");
    broker.publish(&a).await.expect("publish a");
    let first = stream.next().await.expect("item").expect("delivery");
    assert_eq!(first.signature().expect("task").uuid, a.uuid);

    proxy.down();
    let outage = Duration::from_millis(1500);
    let b = Signature::new("b");
    let publisher = {
        let broker = broker.clone();
        let b = b.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            broker.publish(&b).await.map(|()| started.elapsed())
        })
    };
    let up_at = Instant::now() + outage;
    tokio::time::sleep(outage).await;
    proxy.up();

    // The delivery taken before the outage cannot be acked any more.
    assert!(
        first.ack().await.is_err(),
        "an ack on a dead channel must fail"
    );

    let took = publisher
        .await
        .expect("publisher task")
        .expect("publish through the outage");
    assert!(took >= outage - Duration::from_millis(100), "{took:?}");

    let mut errors = 0;
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.len() < 2 {
        let item = tokio::time::timeout_at(deadline.into(), stream.next())
            .await
            .expect("deliveries after the outage")
            .expect("the stream goes on");
        match item {
            Ok(d) => {
                let sig = d.signature().expect("task").clone();
                if sig.uuid == a.uuid {
                    assert!(
                        d.redelivered,
                        "the unacked delivery comes back as redelivered"
                    );
                }
                got.push(sig.uuid);
                d.ack().await.expect("ack after the outage");
            }
            Err(e) => {
                assert!(e.is_temporary(), "{e}");
                errors += 1;
            }
        }
    }
    got.sort();
    let mut want = vec![a.uuid.clone(), b.uuid.clone()];
    want.sort();
    assert_eq!(got, want);
    assert!(errors >= 1, "the outage was not reported on the stream");
    assert!(
        errors <= 8,
        "{errors} error items for a {outage:?} outage: not backing off"
    );
    assert!(Instant::now() >= up_at);
    drop(stream);
    broker.close().await.expect("close");
    common::teardown_namespace(&url, &ns).await;
}

/// The result backend reconnects by itself too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_resumes_after_an_outage() {
    let Some(url) = machinery_testkit::env_url(common::URL_VAR) else {
        return;
    };
    let proxy = Proxy::start(upstream(&url)).await;
    let backend = AmqpBackend::connect(AmqpConfig {
        url: proxy.url(),
        exchange: "machinery_conformance_results".into(),
        results_expire_in: 600,
        ..AmqpConfig::default()
    })
    .await
    .expect("connect");
    let sig = Signature::new("x");
    backend
        .set_state(&TaskState::pending(&sig))
        .await
        .expect("pending");
    proxy.down();
    let writer = {
        let backend = backend.clone();
        let state = TaskState::new(&sig, State::Started);
        tokio::spawn(async move { backend.set_state(&state).await })
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    proxy.up();
    writer
        .await
        .expect("task")
        .expect("set_state through the outage");
    let got = backend
        .state(&sig.uuid)
        .await
        .expect("read")
        .expect("state");
    assert_eq!(got.state, State::Started);
    backend.purge_state(&sig.uuid).await.expect("purge");
    backend.close().await;
}

/// Several URLs are tried in order: an unreachable first one is skipped, and when the one in
/// use goes away the next one takes over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_urls_fail_over_in_order() {
    let Some(url) = machinery_testkit::env_url(common::URL_VAR) else {
        return;
    };
    // A regression (an await on a dead connection that never ends) fails instead of hanging.
    tokio::time::timeout(Duration::from_secs(90), fail_over_in_order(url))
        .await
        .expect("the failover test hung");
}

async fn fail_over_in_order(url: String) {
    let first = Proxy::start(upstream(&url)).await;
    let second = Proxy::start(upstream(&url)).await;
    // Nothing listens on a port we just bound and released.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let ns = format!("fo{}", &uuid_part());
    let urls = format!(
        "amqp://guest:guest@127.0.0.1:{dead}/%2f|{}|{}",
        first.url(),
        second.url()
    );
    let config = AmqpConfig {
        multiple_broker_separator: "|".into(),
        ..common::broker_config(&urls, &ns)
    };
    let dbg = format!("{config:?}");
    assert!(!dbg.contains("guest:guest"), "password in Debug: {dbg}");
    let broker = AmqpBroker::connect(config.clone()).await.expect("connect");
    assert_eq!(
        first.accepted.load(Ordering::SeqCst),
        1,
        "the first live url is used"
    );
    assert_eq!(second.accepted.load(Ordering::SeqCst), 0);
    let queue = config.default_queue.clone();
    let mut stream = broker.consume(&queue, options()).await.expect("consume");

    first.down();
    let sig = Signature::new("after-failover");
    broker.publish(&sig).await.expect("publish after failover");
    let d = loop {
        match tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("delivery after failover")
            .expect("stream goes on")
        {
            Ok(d) => break d,
            Err(e) => assert!(e.is_temporary(), "{e}"),
        }
    };
    assert_eq!(d.signature().expect("task").uuid, sig.uuid);
    d.ack().await.expect("ack");
    assert!(
        second.accepted.load(Ordering::SeqCst) >= 2,
        "publisher and consumer moved over"
    );
    drop(stream);
    broker.close().await.expect("close");
    common::teardown_namespace(&url, &ns).await;
}

fn uuid_part() -> String {
    machinery_core::new_task_uuid().replace('-', "")[5..17].to_owned()
}
