//! Interoperability with Go Machinery on a real RabbitMQ (needs MACHINERY_TEST_AMQP_URL):
//! Go's message bodies, Go's declarations with their exact argument types (both start
//! orders, no 406), Go-written states, Go-style groups, dead letters.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use machinery_amqp::{AmqpBackend, AmqpBroker, AmqpConfig, DEAD_LETTER_REASON_HEADER};
use machinery_core::{
    Backend, Broker, ConsumeOptions, DeliveryStream, Payload, Signature, State, TaskState,
    new_group_uuid, new_task_uuid,
};

fn url() -> Option<String> {
    machinery_testkit::env_url(common::URL_VAR)
}

fn ns() -> String {
    format!("gi{}", &uuid_simple()[..12])
}

fn uuid_simple() -> String {
    new_task_uuid().replace(['-', '_'], "")[4..].to_owned()
}

fn options(prefetch: u16) -> ConsumeOptions {
    ConsumeOptions {
        prefetch,
        consumer_tag: "go-interop".into(),
    }
}

async fn next_delivery(stream: &mut DeliveryStream, within: Duration) -> machinery_core::Delivery {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), stream.next()).await
        {
            Ok(Some(Ok(d))) => return d,
            Ok(Some(Err(e))) => eprintln!("stream error (continuing): {e}"),
            Ok(None) => panic!("the consumer stream ended"),
            Err(_) => panic!("nothing delivered within {within:?}"),
        }
    }
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Go's `amqp.Table` of a result queue: `x-message-ttl` / `x-expires` as int32 (`I`).
fn go_result_args(ms: i32) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-message-ttl".into(), AMQPValue::LongInt(ms));
    t.insert("x-expires".into(), AMQPValue::LongInt(ms));
    t
}

/// Go's per-delay queue arguments: strings `S`, int64 `l`.
fn go_delay_args(exchange: &str, key: &str, ms: i64) -> FieldTable {
    let mut t = FieldTable::default();
    t.insert("x-dead-letter-exchange".into(), long(exchange));
    t.insert("x-dead-letter-routing-key".into(), long(key));
    t.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ms));
    t.insert("x-expires".into(), AMQPValue::LongLongInt(ms * 2));
    t
}

/// What Go's `AMQPConnector.Connect` sends: exchange.declare (durable direct), queue.declare,
/// queue.bind.
async fn go_declare(
    ch: &Channel,
    exchange: &str,
    queue: &str,
    durable: bool,
    auto_delete: bool,
    args: FieldTable,
    binding_key: &str,
) -> lapin::Result<()> {
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable,
            auto_delete,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await?;
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        binding_key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
}

/// Go's backend `updateState`: declare the task queue, publish the TaskState, wait for the
/// confirm.
async fn go_publish_state(ch: &Channel, exchange: &str, uuid: &str, body: &[u8]) {
    go_declare(
        ch,
        exchange,
        uuid,
        false,
        true,
        go_result_args(3_600_000),
        uuid,
    )
    .await
    .expect("Go's result queue declaration");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm mode");
    let confirm = ch
        .basic_publish(
            exchange.into(),
            uuid.into(),
            BasicPublishOptions::default(),
            body,
            BasicProperties::default()
                .with_content_type("application/json".into())
                .with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    assert!(confirm.is_ack());
}

use machinery_testkit::fixtures::read as fixture;

/// Every message body Go sent (the `signatures/` fixtures) is consumed, decodes, and encodes
/// back to the same bytes, in publish order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_message_bodies_are_consumed_byte_for_byte() {
    let Some(url) = url() else { return };
    let ns = ns();
    let broker = AmqpBroker::connect(common::broker_config(&url, &ns))
        .await
        .expect("connect");
    let queue = format!("{ns}_go");
    let mut files: Vec<_> = std::fs::read_dir(machinery_testkit::fixtures::path("signatures"))
        .expect("signatures dir")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.file_name().is_some_and(|n| n != "index.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 50, "fixtures missing: {}", files.len());
    let bodies: Vec<Vec<u8>> = files
        .iter()
        .map(|p| std::fs::read(p).expect("read"))
        .collect();
    for body in &bodies {
        broker.publish_raw(&queue, body).await.expect("publish raw");
    }
    let mut stream = broker.consume(&queue, options(10)).await.expect("consume");
    for (path, body) in files.iter().zip(&bodies) {
        let d = next_delivery(&mut stream, Duration::from_secs(10)).await;
        match &d.payload {
            Payload::Task(sig) => {
                let again = sig.to_json().expect("encode");
                assert_eq!(
                    String::from_utf8_lossy(&again),
                    String::from_utf8_lossy(body),
                    "{} does not re-encode to Go's bytes",
                    path.display()
                );
            }
            Payload::Malformed { reason, .. } => panic!("{}: malformed: {reason}", path.display()),
        }
        d.ack().await.expect("ack");
    }
    drop(stream);
    broker.close().await.expect("close");
    common::delete_all(
        &url,
        &[queue],
        &[format!("{ns}_exchange"), format!("{ns}_exchange.dead")],
    )
    .await;
}

/// The queues and exchange of Go's example configuration (binding key != default queue), for
/// namespace `ns`: (exchange, worker queue, binding key, delay queue, result queue, group).
struct GoTopology {
    exchange: String,
    worker_queue: String,
    binding_key: String,
    delay_queue: String,
    result_queue: String,
    group: String,
}

impl GoTopology {
    fn new(ns: &str) -> Self {
        let exchange = format!("{ns}_exchange");
        let binding_key = format!("{ns}_task");
        GoTopology {
            delay_queue: format!("delay.1482.{exchange}.{binding_key}"),
            worker_queue: format!("{ns}_tasks"),
            result_queue: new_task_uuid(),
            group: new_group_uuid(),
            exchange,
            binding_key,
        }
    }

    fn config(&self, url: &str) -> AmqpConfig {
        AmqpConfig {
            url: url.to_owned(),
            exchange: self.exchange.clone(),
            default_queue: self.worker_queue.clone(),
            binding_key: self.binding_key.clone(),
            ..AmqpConfig::default()
        }
    }

    /// Everything Go's worker, producer, delayed producer and backend declare.
    async fn declare_as_go(&self, ch: &Channel) -> lapin::Result<()> {
        let none = FieldTable::default;
        go_declare(
            ch,
            &self.exchange,
            &self.worker_queue,
            true,
            false,
            none(),
            &self.binding_key,
        )
        .await?;
        go_declare(
            ch,
            &self.exchange,
            &self.binding_key,
            true,
            false,
            none(),
            &self.binding_key,
        )
        .await?;
        go_declare(
            ch,
            &self.exchange,
            &self.delay_queue,
            true,
            false,
            go_delay_args(&self.exchange, &self.binding_key, 1482),
            &self.delay_queue,
        )
        .await?;
        go_declare(
            ch,
            &self.exchange,
            &self.result_queue,
            false,
            true,
            go_result_args(3_600_000),
            &self.result_queue,
        )
        .await?;
        go_declare(
            ch,
            &self.exchange,
            &self.group,
            false,
            true,
            go_result_args(3_600_000),
            &self.group,
        )
        .await
    }

    /// Our broker and backend use every one of those declarations: a task published and
    /// consumed, requeued through the 1482 ms delay queue, a state and a group stored.
    async fn use_as_rust(&self, url: &str) {
        let config = self.config(url);
        let broker = AmqpBroker::connect(config.clone())
            .await
            .expect("connect broker");
        let backend = AmqpBackend::connect(config).await.expect("connect backend");
        // The worker first: with this configuration a task published before the worker
        // queue exists reaches only the producer queue (the pitfall of the README).
        let mut stream = broker
            .consume(&self.worker_queue, options(3))
            .await
            .expect("consume with Go's worker queue");
        let sig = Signature::new("add").arg(2i64).arg(3i64);
        broker
            .publish(&sig)
            .await
            .expect("publish with Go's producer queue");
        let d = next_delivery(&mut stream, Duration::from_secs(10)).await;
        assert_eq!(d.signature().expect("decodes").uuid, sig.uuid);
        let requeued_at = Instant::now();
        d.requeue(Some(Duration::from_millis(1482)))
            .await
            .expect("requeue through Go's delay queue");
        let d = next_delivery(&mut stream, Duration::from_secs(10)).await;
        assert!(requeued_at.elapsed() >= Duration::from_millis(1482));
        assert_eq!(d.signature().expect("decodes").uuid, sig.uuid);
        d.ack().await.expect("ack");
        drop(stream);
        let state = TaskState {
            task_uuid: self.result_queue.clone(),
            ..TaskState::pending(&sig)
        };
        backend
            .set_state(&state)
            .await
            .expect("state in Go's result queue");
        assert_eq!(
            backend
                .state(&self.result_queue)
                .await
                .expect("read")
                .map(|s| s.state),
            Some(State::Pending)
        );
        backend
            .init_group(&self.group, std::slice::from_ref(&self.result_queue))
            .await
            .expect("group queue as Go declares it");
        broker.close().await.expect("close");
        backend.close().await;
    }

    async fn cleanup(&self, url: &str) {
        common::delete_all(
            url,
            &[
                self.worker_queue.clone(),
                self.binding_key.clone(),
                self.delay_queue.clone(),
                self.result_queue.clone(),
                self.group.clone(),
                format!("{}_meta", self.group),
                format!("{}_chord_token", self.group),
            ],
            std::slice::from_ref(&self.exchange),
        )
        .await;
    }
}

/// Go declares first (exact frames: flags, values, AMQP field types), then our broker and
/// backend reuse every queue without a 406.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_declared_topology_is_reused_without_406() {
    let Some(url) = url() else { return };
    let topo = GoTopology::new(&ns());
    let (conn, ch) = common::raw(&url).await;
    topo.declare_as_go(&ch).await.expect("Go's declarations");
    topo.use_as_rust(&url).await;
    // The check is sensitive: the same result queue declared with the TTL as a string, or
    // with another value, is refused (RabbitMQ 3.10 compares int32 and int64 by value).
    for wrong_ttl in [
        AMQPValue::LongString("3600000".into()),
        AMQPValue::LongInt(3_600_001),
    ] {
        let ch = conn.create_channel().await.expect("channel");
        let mut wrong = go_result_args(3_600_000);
        wrong.insert("x-message-ttl".into(), wrong_ttl.clone());
        let refused = ch
            .queue_declare(
                topo.result_queue.as_str().into(),
                QueueDeclareOptions {
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                wrong,
            )
            .await;
        assert!(
            refused.is_err(),
            "RabbitMQ accepted x-message-ttl {wrong_ttl:?}"
        );
    }
    let _ = conn.close(200, "bye".into()).await;
    topo.cleanup(&url).await;
}

/// Our broker and backend declare first, then Go's exact declarations are accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_declared_topology_is_accepted_by_go() {
    let Some(url) = url() else { return };
    let topo = GoTopology::new(&ns());
    topo.use_as_rust(&url).await;
    let (conn, ch) = common::raw(&url).await;
    topo.declare_as_go(&ch)
        .await
        .expect("Go's declarations after ours (a 406 means our topology differs)");
    let _ = conn.close(200, "bye".into()).await;
    topo.cleanup(&url).await;
}

/// Go's single `DelayedQueue` mode: Go's declaration of it is reused, and a task with a
/// future ETA goes through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_single_delayed_queue_is_reused() {
    let Some(url) = url() else { return };
    let ns = ns();
    let exchange = format!("{ns}_exchange");
    let queue = format!("{ns}_tasks");
    let delayed = format!("{ns}_delayed");
    let (conn, ch) = common::raw(&url).await;
    let mut args = FieldTable::default();
    args.insert("x-dead-letter-exchange".into(), long(&exchange));
    args.insert("x-dead-letter-routing-key".into(), long(&queue));
    go_declare(&ch, &exchange, &delayed, true, false, args, &delayed)
        .await
        .expect("Go's delayed queue");
    let config = AmqpConfig {
        delayed_queue: delayed.clone(),
        ..common::broker_config(&url, &ns)
    };
    let broker = AmqpBroker::connect(config).await.expect("connect");
    let mut stream = broker.consume(&queue, options(1)).await.expect("consume");
    let eta = machinery_core::time::now() + chrono::Duration::milliseconds(700);
    let sig = Signature::new("later").eta(eta);
    broker
        .publish(&sig)
        .await
        .expect("publish via the delayed queue");
    let d = next_delivery(&mut stream, Duration::from_secs(10)).await;
    assert!(
        machinery_core::time::now() >= eta,
        "delivered before its ETA"
    );
    assert_eq!(d.signature().expect("decodes").uuid, sig.uuid);
    d.ack().await.expect("ack");
    drop(stream);
    broker.close().await.expect("close");
    let _ = conn.close(200, "bye".into()).await;
    common::delete_all(&url, &[queue, delayed], &[exchange]).await;
}

/// States written by Go's backend (the `states/` fixtures, published as Go does) are read
/// back: the latest one, byte for byte; after our read Go's own reader (basic.get of the
/// oldest message) gets the latest too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_written_states_are_read_latest_first() {
    let Some(url) = url() else { return };
    let exchange = "machinery_interop_results";
    let uuid = "task_00000500-0000-4000-8000-000000000001";
    common::delete_all(&url, &[uuid.to_owned()], &[]).await;
    let (conn, ch) = common::raw(&url).await;
    let files = ["pending", "received", "started", "success"];
    for f in files {
        go_publish_state(&ch, exchange, uuid, &fixture(&format!("states/{f}.json"))).await;
    }
    let backend = AmqpBackend::connect(AmqpConfig {
        url: url.clone(),
        exchange: exchange.into(),
        ..AmqpConfig::default()
    })
    .await
    .expect("connect");
    let success = fixture("states/success.json");
    let got = backend.state(uuid).await.expect("read").expect("a state");
    assert_eq!(got.state, State::Success);
    assert_eq!(got.to_json().expect("encode"), success, "not Go's bytes");
    // Go's GetState: basic.get + ack of the oldest message.
    let ch2 = conn.create_channel().await.expect("channel");
    let m = ch2
        .basic_get(uuid.into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    assert_eq!(
        m.delivery.data, success,
        "Go's reader should now get the latest state"
    );
    backend.close().await;
    let _ = conn.close(200, "bye".into()).await;
    common::delete_all(&url, &[uuid.to_owned()], &[]).await;
}

/// Go reads what we write: the queue and message properties are Go's, each state is one
/// message, and the bodies decode with Go's field layout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_states_are_readable_by_go() {
    let Some(url) = url() else { return };
    let exchange = "machinery_interop_results";
    let backend = AmqpBackend::connect(AmqpConfig {
        url: url.clone(),
        exchange: exchange.into(),
        ..AmqpConfig::default()
    })
    .await
    .expect("connect");
    let sig = Signature::new("add");
    for st in [State::Pending, State::Received, State::Started] {
        backend
            .set_state(&TaskState::new(&sig, st))
            .await
            .expect("set_state");
    }
    let (conn, ch) = common::raw(&url).await;
    // Go redeclares the queue with its own arguments: accepted.
    go_declare(
        &ch,
        exchange,
        &sig.uuid,
        false,
        true,
        go_result_args(3_600_000),
        &sig.uuid,
    )
    .await
    .expect("Go's declaration of our result queue");
    let q = ch
        .queue_declare(
            sig.uuid.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("inspect");
    assert_eq!(q.message_count(), 3, "one message per state change");
    let m = ch
        .basic_get(sig.uuid.as_str().into(), BasicGetOptions { no_ack: false })
        .await
        .expect("get")
        .expect("a message");
    let props = &m.delivery.properties;
    assert_eq!(
        props.content_type().as_ref().map(|c| c.as_str()),
        Some("application/json")
    );
    assert_eq!(*props.delivery_mode(), Some(2));
    assert_eq!(*props.priority(), None);
    let text = String::from_utf8(m.delivery.data.clone()).expect("utf-8");
    assert!(
        text.starts_with(&format!(
            "{{\"TaskUUID\":\"{}\",\"TaskName\":\"add\",\"State\":\"PENDING\",\"Results\":null,\"Error\":\"\",\"CreatedAt\":\"",
            sig.uuid
        )),
        "{text}"
    );
    m.delivery
        .ack(BasicAckOptions::default())
        .await
        .expect("ack");
    backend.purge_state(&sig.uuid).await.expect("purge");
    backend.close().await;
    let _ = conn.close(200, "bye".into()).await;
}

/// A group sent by a Go producer has no meta of ours (Go's InitGroup writes nothing on AMQP):
/// once a Go worker has put a member into Go's group queue, our marks count there too,
/// `group_states` reads the members from there and exactly one of many concurrent callers
/// triggers the chord, leaving the marker queue Go's `TriggerChord` checks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_producer_groups_work_with_our_backend() {
    let Some(url) = url() else { return };
    let exchange = "machinery_interop_results";
    let backend = Arc::new(
        AmqpBackend::connect(AmqpConfig {
            url: url.clone(),
            exchange: exchange.into(),
            ..AmqpConfig::default()
        })
        .await
        .expect("connect"),
    );
    let group = new_group_uuid();
    let members: Vec<Signature> = (0..3).map(|i| Signature::new(format!("m{i}"))).collect();
    // Nothing known about the group yet: our worker cannot count for it.
    assert!(matches!(
        backend
            .mark_group_member_done(&group, &members[0].uuid)
            .await,
        Err(machinery_core::Error::GroupNotFound(_))
    ));
    // Member 2 ran on a Go worker: its final state in the member queue and the group queue.
    let (conn, ch) = common::raw(&url).await;
    let last = TaskState::success(&members[2], vec![]);
    let body = last.to_json().expect("encode");
    go_publish_state(&ch, exchange, &members[2].uuid, &body).await;
    let ch = conn.create_channel().await.expect("channel");
    go_publish_state(&ch, exchange, &group, &body).await;
    // Members 0 and 1 run on our workers.
    for (i, m) in members.iter().take(2).enumerate() {
        let state = TaskState::success(m, vec![machinery_core::TaskResult::new(i as i64)]);
        backend.set_state(&state).await.expect("set_state");
        assert_eq!(
            backend
                .mark_group_member_done(&group, &m.uuid)
                .await
                .expect("mark"),
            i + 2
        );
        // Marking again (a redelivered task) does not count twice.
        assert_eq!(
            backend
                .mark_group_member_done(&group, &m.uuid)
                .await
                .expect("mark again"),
            i + 2
        );
    }

    let states = backend.group_states(&group).await.expect("group_states");
    let mut got: Vec<String> = states.iter().map(|s| s.task_uuid.clone()).collect();
    got.sort();
    let mut want: Vec<String> = members.iter().map(|m| m.uuid.clone()).collect();
    want.sort();
    assert_eq!(got, want);
    assert!(states.iter().all(TaskState::is_success));

    let mut callers = Vec::new();
    for _ in 0..20 {
        let backend = Arc::clone(&backend);
        let group = group.clone();
        callers.push(tokio::spawn(
            async move { backend.trigger_chord(&group).await },
        ));
    }
    let mut winners = 0;
    for c in callers {
        if c.await.expect("task").expect("trigger_chord") {
            winners += 1;
        }
    }
    assert_eq!(winners, 1);
    assert!(!backend.trigger_chord(&group).await.expect("late caller"));
    let ch = conn.create_channel().await.expect("channel");
    ch.queue_declare(
        format!("{group}_chord_triggered").as_str().into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("Go's TriggerChord finds `<group>_chord_triggered` and does not fire again");

    backend.purge_group(&group).await.expect("purge group");
    for m in &members {
        backend.purge_state(&m.uuid).await.expect("purge state");
    }
    backend.close().await;
    let _ = conn.close(200, "bye".into()).await;
}

/// Bodies that are not signatures (garbage, an empty body) reach the consumer as
/// `Payload::Malformed`, are dead-lettered with the reason to `<queue>.dead`, and the
/// consumer goes on with the next message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_dead_lettered_and_the_consumer_keeps_going() {
    let Some(url) = url() else { return };
    let ns = ns();
    let broker = AmqpBroker::connect(common::broker_config(&url, &ns))
        .await
        .expect("connect");
    let queue = format!("{ns}_tasks");
    broker
        .publish_raw(&queue, b"not json")
        .await
        .expect("inject");
    broker.publish_raw(&queue, b"").await.expect("inject empty");
    let good = Signature::new("ok").routing_key(&queue);
    broker.publish(&good).await.expect("publish");

    let mut stream = broker.consume(&queue, options(3)).await.expect("consume");
    let mut processed = Vec::new();
    let mut dead = 0;
    while processed.is_empty() || dead < 2 {
        let d = next_delivery(&mut stream, Duration::from_secs(10)).await;
        match &d.payload {
            Payload::Task(sig) => {
                processed.push(sig.uuid.clone());
                d.ack().await.expect("ack");
            }
            Payload::Malformed { reason, .. } => {
                let reason = format!("undecodable: {reason}");
                d.dead_letter(reason).await.expect("dead_letter");
                dead += 1;
            }
        }
    }
    assert_eq!(processed, vec![good.uuid.clone()]);
    let letters = broker.dead_letters(&queue).await.expect("dead letters");
    assert_eq!(letters.len(), 2, "{letters:?}");
    assert_eq!(letters[0].body, b"not json");
    assert!(
        letters[0].reason.starts_with("undecodable: "),
        "{:?}",
        letters[0]
    );
    assert_eq!(letters[1].body, b"");
    // Listing does not remove them; a raw reader sees the reason header.
    let (conn, ch) = common::raw(&url).await;
    let m = ch
        .basic_get(
            broker.dead_letter_queue(&queue).as_str().into(),
            BasicGetOptions { no_ack: false },
        )
        .await
        .expect("get")
        .expect("still there");
    let headers = m.delivery.properties.headers().clone().expect("headers");
    assert!(headers.inner().contains_key(DEAD_LETTER_REASON_HEADER));
    drop(stream);
    broker.close().await.expect("close");
    let _ = conn.close(200, "bye".into()).await;
    common::teardown_namespace(&url, &ns).await;
}
