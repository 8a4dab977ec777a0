//! What only the SQS driver has: ETAs beyond SQS's 15 minutes, the visibility heartbeat, the
//! queue's size limit, batching (requests per task), recovery from a cut connection. On moto
//! (needs `MACHINERY_TEST_SQS_URL`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{Broker, ConsumeOptions, Error, Signature, time};
use machinery_sqs::aws_sdk_sqs::types::QueueAttributeName;
use machinery_sqs::{SqsBroker, SqsConfig};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Mutex;
use tokio::task::JoinHandle;

fn opts(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        ..ConsumeOptions::default()
    }
}

async fn setup(tune: impl FnOnce(&mut SqsConfig)) -> Option<(SqsBroker, String, String)> {
    let url = common::url()?;
    let ns = common::namespace();
    let mut config = common::config(&url, &ns);
    tune(&mut config);
    let broker = common::connect(config).await;
    let q = format!("{ns}_tasks");
    broker.ensure_queue(&q).await.expect("create the queue");
    Some((broker, ns, q))
}

/// An ETA of 2 s goes out as DelaySeconds and arrives no earlier than its ETA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_of_two_seconds_is_not_early() {
    let Some((broker, ns, q)) = setup(|_| {}).await else {
        return;
    };
    let eta = time::now() + chrono::Duration::seconds(2);
    broker
        .publish(&Signature::new("t").routing_key(&q).eta(eta))
        .await
        .expect("publish");
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    let now = time::now();
    assert!(now >= eta, "delivered {} early", eta - now);
    assert!(
        now <= eta + chrono::Duration::seconds(4),
        "delivered {} late",
        now - eta
    );
    d.ack().await.expect("ack");
    assert_eq!(
        broker.request_counts().change_visibility,
        0,
        "a 2 s ETA needs no hold"
    );
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// An ETA beyond the largest DelaySeconds (shortened to 1 s here, 900 s on SQS) is held
/// invisible on receipt, as many times as needed, and delivered at its ETA, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn eta_beyond_the_delay_limit_is_held_until_due() {
    let Some((broker, ns, q)) = setup(|c| {
        c.max_delay_seconds = 1;
        c.max_hold_seconds = 2;
    })
    .await
    else {
        return;
    };
    let eta = time::now() + chrono::Duration::seconds(6);
    let sig = Signature::new("t").routing_key(&q).eta(eta);
    broker.publish(&sig).await.expect("publish");
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(25), stream.next())
        .await
        .expect("delivered in time")
        .expect("open")
        .expect("delivery");
    let now = time::now();
    assert_eq!(d.signature().unwrap().uuid, sig.uuid);
    assert!(now >= eta, "delivered {} early", eta - now);
    assert!(
        broker.request_counts().change_visibility >= 1,
        "held on receipt: {:?}",
        broker.request_counts()
    );
    d.ack().await.expect("ack");
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// A 20-minute ETA with the check clock shortened (delay 1 s, holds of 2 s): the message
/// keeps coming back to the consumer, which keeps hiding it, and never hands it out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_minute_eta_is_never_delivered_early() {
    let Some((broker, ns, q)) = setup(|c| {
        c.max_delay_seconds = 1;
        c.max_hold_seconds = 2;
    })
    .await
    else {
        return;
    };
    let sig = Signature::new("t")
        .routing_key(&q)
        .eta(time::now() + chrono::Duration::minutes(20));
    broker.publish(&sig).await.expect("publish");
    let soon = Signature::new("t.now").routing_key(&q);
    broker.publish(&soon).await.expect("publish");
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("the due message arrives")
        .expect("open")
        .expect("delivery");
    assert_eq!(d.signature().unwrap().uuid, soon.uuid);
    d.ack().await.expect("ack");
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(8), stream.next()).await {
        panic!("a message due in 20 minutes was delivered: {item:?}");
    }
    let held = broker.request_counts().change_visibility;
    assert!(
        held >= 2,
        "the message came back and was held again: {:?}",
        broker.request_counts()
    );
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// A task running longer than the visibility timeout keeps its message invisible (the
/// heartbeat extends it): another consumer never gets it; once acked it is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_task_keeps_its_message_invisible() {
    let Some((broker, ns, q)) = setup(|c| c.visibility_timeout = Some(2)).await else {
        return;
    };
    let sig = Signature::new("long").routing_key(&q);
    broker.publish(&sig).await.expect("publish");
    let mut stream = broker.consume(&q, opts(1)).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("delivered")
        .expect("open")
        .expect("delivery");
    let url = common::url().unwrap();
    let mut other_config = common::config(&url, &ns);
    other_config.visibility_timeout = Some(2);
    let other = common::connect(other_config).await;
    let mut other_stream = other.consume(&q, opts(1)).await.expect("consume");
    // Three visibility timeouts.
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(7), other_stream.next()).await
    {
        panic!("a running task's message was delivered again: {item:?}");
    }
    assert!(
        broker.request_counts().change_visibility >= 2,
        "heartbeats: {:?}",
        broker.request_counts()
    );
    d.ack().await.expect("ack");
    if let Ok(Some(item)) = tokio::time::timeout(Duration::from_secs(4), other_stream.next()).await
    {
        panic!("an acked message came back: {item:?}");
    }
    drop(other_stream);
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// The queue's MaximumMessageSize is read and checked before sending: the error names both
/// sizes and no send is made.
#[tokio::test]
async fn message_over_the_queue_limit_is_refused_before_sending() {
    let Some((broker, ns, _)) = setup(|_| {}).await else {
        return;
    };
    let q = format!("{ns}_small");
    broker
        .client()
        .create_queue()
        .queue_name(&q)
        .attributes(QueueAttributeName::MaximumMessageSize, "1024")
        .send()
        .await
        .expect("create a small queue");
    let sig = Signature::new("big").routing_key(&q).arg("x".repeat(2000));
    let before = broker.request_counts();
    let e = broker.publish(&sig).await.expect_err("too large");
    match &e {
        Error::TooLarge { size, limit, .. } => {
            assert_eq!(*limit, 1024);
            assert!(*size > 2000);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains("1024") && text.contains("bytes"), "{text}");
    assert_eq!(broker.request_counts().send, before.send, "nothing sent");
    // A small one still goes.
    broker
        .publish(&Signature::new("small").routing_key(&q))
        .await
        .expect("a small message");
    common::teardown(&broker, &ns).await;
}

/// A missing queue is a clear, permanent error when queues are not created.
#[tokio::test]
async fn missing_queue_is_a_clear_error() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let mut config = common::config(&url, &ns);
    config.create_queues = false;
    let broker = common::connect(config).await;
    let e = broker
        .publish(&Signature::new("t").routing_key(format!("{ns}_nowhere")))
        .await
        .expect_err("missing queue");
    assert!(!e.is_temporary(), "{e}");
    assert!(e.to_string().contains("does not exist"), "{e}");
}

/// Batching: 200 tasks published concurrently (as a group is), received 10 at a time and
/// acked in batches cost at most 0.5 requests per task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_task_are_batched() {
    let Some((broker, ns, q)) = setup(|c| {
        c.wait_time_seconds = 2;
        c.visibility_timeout = Some(20);
    })
    .await
    else {
        return;
    };
    const N: usize = 200;
    let base = broker.request_counts();
    let sigs: Vec<Signature> = (0..N)
        .map(|i| Signature::new(format!("t{i}")).routing_key(&q))
        .collect();
    futures::future::try_join_all(sigs.iter().map(|s| broker.publish(s)))
        .await
        .expect("publish all");
    let mut stream = broker.consume(&q, opts(50)).await.expect("consume");
    let mut acks = futures::stream::FuturesUnordered::new();
    let mut seen = std::collections::HashSet::new();
    while seen.len() < N {
        tokio::select! {
            item = stream.next() => {
                let d = item.expect("open").expect("delivery");
                seen.insert(d.signature().unwrap().uuid.clone());
                acks.push(d.ack());
            }
            Some(r) = acks.next(), if !acks.is_empty() => r.expect("ack"),
        }
    }
    while let Some(r) = acks.next().await {
        r.expect("ack");
    }
    let c = broker.request_counts();
    let used = c.total() - base.total();
    let per_task = used as f64 / N as f64;
    println!("requests per task: {per_task:.3} ({c:?})");
    assert!(per_task <= 0.5, "{per_task} requests per task: {c:?}");
    drop(stream);
    common::teardown(&broker, &ns).await;
}

/// A TCP proxy between the broker and SQS that can cut every connection and refuse new
/// ones, then come back on the same port.
struct Proxy {
    port: u16,
    target: String,
    up: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: Mutex<Option<JoinHandle<()>>>,
}

impl Proxy {
    async fn start(target: String) -> Arc<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let p = Arc::new(Proxy {
            port,
            target,
            up: Arc::new(AtomicBool::new(true)),
            conns: Arc::new(Mutex::new(Vec::new())),
            accept: Mutex::new(None),
        });
        p.serve(listener).await;
        p
    }

    async fn serve(self: &Arc<Self>, listener: TcpListener) {
        let this = Arc::clone(self);
        let h = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = this.target.clone();
                let h = tokio::spawn(async move {
                    if let Ok(mut outbound) = TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                this.conns.lock().await.push(h);
            }
        });
        *self.accept.lock().await = Some(h);
    }

    async fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Some(h) = self.accept.lock().await.take() {
            h.abort();
        }
        for h in self.conns.lock().await.drain(..) {
            h.abort();
        }
    }

    async fn restore(self: &Arc<Self>) {
        let listener = TcpListener::bind(("127.0.0.1", self.port))
            .await
            .expect("rebind the proxy port");
        self.up.store(true, Ordering::SeqCst);
        self.serve(listener).await;
    }
}

/// The connection to SQS is cut mid-run (every connection dropped, new ones refused for a
/// few seconds): the consumer reports errors, recovers by itself, and every task published
/// before and after the cut is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_cut_mid_run_recovers() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let prefix = machinery_sqs::SqsConfig::from_url(&url);
    let target = {
        let rest = url.split_once("://").unwrap().1;
        rest.split('/').next().unwrap().to_owned()
    };
    let proxy = Proxy::start(target).await;
    let mut config = common::config(&url, &ns);
    config.endpoint_url = Some(format!("http://127.0.0.1:{}", proxy.port));
    config.reconnect_max_delay = Duration::from_secs(1);
    let _ = prefix;
    let broker = common::connect(config).await;
    let q = format!("{ns}_tasks");
    broker.ensure_queue(&q).await.expect("queue");
    let mut stream = broker.consume(&q, opts(4)).await.expect("consume");
    let mut want = std::collections::HashSet::new();
    for i in 0..5 {
        let s = Signature::new(format!("before{i}")).routing_key(&q);
        want.insert(s.uuid.clone());
        broker.publish(&s).await.expect("publish before the cut");
    }
    let mut got = std::collections::HashSet::new();
    while got.len() < 3 {
        let d = tokio::time::timeout(Duration::from_secs(15), stream.next())
            .await
            .expect("deliveries before the cut")
            .expect("open");
        if let Ok(d) = d {
            got.insert(d.signature().unwrap().uuid.clone());
            d.ack().await.expect("ack before the cut");
        }
    }
    proxy.cut().await;
    let failed = broker
        .publish(&Signature::new("during").routing_key(&q))
        .await;
    assert!(failed.is_err(), "a publish during the cut fails");
    assert!(failed.unwrap_err().is_temporary(), "and is temporary");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore().await;
    for i in 0..5 {
        let s = Signature::new(format!("after{i}")).routing_key(&q);
        want.insert(s.uuid.clone());
        broker.publish(&s).await.expect("publish after the cut");
    }
    let mut errors = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while !want.is_subset(&got) {
        let item = tokio::time::timeout_at(deadline, stream.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "after the cut only {} of {} tasks arrived",
                    got.intersection(&want).count(),
                    want.len()
                )
            })
            .expect("the stream stays open");
        match item {
            Ok(d) => {
                got.insert(d.signature().unwrap().uuid.clone());
                // An ack whose request was cut may fail; the message then comes back.
                let _ = d.ack().await;
            }
            Err(e) => {
                assert!(e.is_temporary(), "{e}");
                errors += 1;
            }
        }
    }
    println!("errors reported during the cut: {errors}");
    drop(stream);
    common::teardown(&broker, &ns).await;
}
