//! The broker cases. Each takes a [`BrokerFactory`], prepares a broker in a fresh namespace
//! and asserts one behaviour of the [`Broker`] contract; the names match the list in
//! `machinery_core`'s broker module docs.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{
    Broker, BrokerCapabilities, Payload, Signature, new_group_uuid, new_task_uuid, time,
};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::util::{arg, assert_unsupported, expect_nothing, options, recv, recv_task, task};
use crate::{BrokerFactory, BrokerSetup, BrokerUnderTest, Timing};

/// One case's broker and what the case needs to know about it.
struct Harness {
    setup: BrokerSetup,
    under_test: Box<dyn BrokerUnderTest>,
    broker: Arc<dyn Broker>,
    timing: Timing,
    caps: BrokerCapabilities,
}

impl Harness {
    async fn start(factory: &impl BrokerFactory) -> Option<Harness> {
        let setup = BrokerSetup::random();
        let under_test = factory.create(setup.clone()).await?;
        let broker = under_test.broker();
        Some(Harness {
            timing: under_test.timing(),
            caps: broker.capabilities(),
            setup,
            under_test,
            broker,
        })
    }

    fn queue(&self, name: &str) -> String {
        self.setup.queue(name)
    }

    async fn publish(&self, sig: &Signature) {
        self.broker
            .publish(sig)
            .await
            .unwrap_or_else(|e| panic!("publish {}: {e}", sig.uuid));
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> machinery_core::DeliveryStream {
        self.broker
            .consume(queue, options(prefetch))
            .await
            .unwrap_or_else(|e| panic!("consume {queue}: {e}"))
    }

    async fn finish(self) {
        self.broker.close().await.expect("close the broker");
        self.under_test
            .teardown()
            .await
            .expect("teardown of the namespace");
    }
}

fn chrono_dur(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).expect("duration fits")
}

/// A signature using every field the wire carries, so that a driver that rewrites or loses
/// any of them fails.
fn rich_signature(queue: &str) -> Signature {
    let callback = Signature::new("conformance.callback")
        .routing_key(queue)
        .with_args(vec![arg("[]int64", "[1,2,3]")]);
    let mut sig = Signature::new("conformance.roundtrip")
        .routing_key(queue)
        .with_args(vec![
            arg("int64", "-42").named("a"),
            arg("uint64", "18446744073709551615"),
            arg("float64", "3.25"),
            arg("string", r#""a\u003cb\u003e \u0026 \"q\" é""#),
            arg("[]string", r#"["x","y"]"#),
            arg("[]uint8", r#""AQID""#),
            arg("bool", "true"),
        ])
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .header("n", 7)
        .retries(3, 2)
        .priority(5)
        .on_success(callback.clone())
        .on_error(Signature::new("conformance.on_error").routing_key(queue))
        .eta(time::now() - chrono::Duration::hours(1));
    sig.group_uuid = new_group_uuid();
    sig.group_task_count = 3;
    sig.chord_callback = Some(Box::new(callback));
    sig.broker_message_group_id = "conformance-group".to_owned();
    sig.ignore_when_task_not_registered = true;
    sig
}

/// `publish_then_consume_roundtrips`: a published signature (every wire field set, ETA in
/// the past) is delivered promptly, unchanged, and not flagged as redelivered.
pub async fn publish_then_consume_roundtrips(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("roundtrip");
    let sig = rich_signature(&q);
    h.publish(&sig).await;
    let mut stream = h.consume(&q, 1).await;
    let (d, mut got) = recv_task(&mut stream, h.timing.receive_timeout, "roundtrip").await;
    assert!(
        !d.redelivered,
        "a first delivery must not be flagged redelivered"
    );
    got.sqs_receipt_handle.clear();
    assert_eq!(
        got, sig,
        "the consumed signature differs from the published one"
    );
    d.ack().await.expect("ack");
    expect_nothing(&mut stream, h.timing.quiet_period, "after the only message").await;
    drop(stream);
    h.finish().await;
}

/// `ack_removes_message`: an acked delivery is not delivered again, not even to a new
/// consumer on another broker instance after the first consumer is gone.
pub async fn ack_removes_message(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("ack");
    let sig = task(&q, "conformance.ack");
    h.publish(&sig).await;
    let mut stream = h.consume(&q, 1).await;
    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "the message").await;
    assert_eq!(got.uuid, sig.uuid);
    d.ack().await.expect("ack");
    drop(stream);

    if h.caps.pending_tasks {
        let pending = h.broker.pending_tasks(&q).await.expect("pending_tasks");
        assert!(
            pending.is_empty(),
            "acked message still pending: {pending:?}"
        );
    }
    let other = h.under_test.another().await.expect("another broker");
    let mut stream = other.consume(&q, options(1)).await.expect("consume again");
    expect_nothing(
        &mut stream,
        h.timing.redelivery_after_drop + h.timing.quiet_period,
        "an acked message came back",
    )
    .await;
    // The new consumer does work, so the silence above means something.
    let next = task(&q, "conformance.ack.next");
    h.publish(&next).await;
    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "the next message").await;
    assert_eq!(got.uuid, next.uuid);
    d.ack().await.expect("ack");
    drop(stream);
    other.close().await.expect("close the other broker");
    h.finish().await;
}

/// `nack_requeues`: `requeue(None)` makes the message available again, and once acked it is
/// gone.
pub async fn nack_requeues(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("nack");
    let sig = task(&q, "conformance.nack");
    h.publish(&sig).await;
    let mut stream = h.consume(&q, 1).await;
    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "first delivery").await;
    assert_eq!(got.uuid, sig.uuid);
    d.requeue(None).await.expect("requeue");
    let (d, again) = recv_task(
        &mut stream,
        h.timing.receive_timeout,
        "the requeued message",
    )
    .await;
    assert_eq!(again.uuid, sig.uuid, "a different message came back");
    assert_eq!(again.name, sig.name);
    d.ack().await.expect("ack");
    expect_nothing(&mut stream, h.timing.quiet_period, "after ack").await;
    drop(stream);
    h.finish().await;
}

/// `requeue_with_delay_is_not_early`: `requeue(Some(d))` hides the message for at least `d`
/// (and at most `d` + the driver's slack), while other messages keep flowing.
pub async fn requeue_with_delay_is_not_early(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let delay = Duration::from_secs(1);
    let q = h.queue("requeue_delay");
    let sig = task(&q, "conformance.requeue_delay");
    h.publish(&sig).await;
    let mut stream = h.consume(&q, 1).await;
    let (d, _) = recv_task(&mut stream, h.timing.receive_timeout, "first delivery").await;
    let before = Instant::now();
    d.requeue(Some(delay)).await.expect("requeue with delay");
    let other = task(&q, "conformance.requeue_delay.other");
    h.publish(&other).await;

    if !h.caps.delayed_delivery {
        // Best effort without a delay mechanism: both must still arrive.
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (d, got) = recv_task(
                &mut stream,
                h.timing.receive_timeout + delay,
                "after requeue",
            )
            .await;
            seen.push(got.uuid);
            d.ack().await.expect("ack");
        }
        seen.sort();
        let mut want = vec![sig.uuid.clone(), other.uuid.clone()];
        want.sort();
        assert_eq!(seen, want);
        drop(stream);
        h.finish().await;
        return;
    }

    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "the other message").await;
    assert_eq!(
        got.uuid, other.uuid,
        "the delayed requeue must not block or precede other messages"
    );
    d.ack().await.expect("ack");
    let (d, got) = recv_task(
        &mut stream,
        delay + h.timing.delay_slack + h.timing.receive_timeout,
        "the delayed requeue",
    )
    .await;
    let elapsed = before.elapsed();
    assert_eq!(got.uuid, sig.uuid);
    assert!(
        elapsed >= delay,
        "requeued with a delay of {delay:?} but delivered after {elapsed:?}"
    );
    assert!(
        elapsed <= delay + h.timing.delay_slack,
        "requeued with a delay of {delay:?} but delivered only after {elapsed:?} (slack {:?})",
        h.timing.delay_slack
    );
    d.ack().await.expect("ack");
    expect_nothing(&mut stream, h.timing.quiet_period, "after ack").await;
    drop(stream);
    h.finish().await;
}

/// `unacked_is_redelivered_after_consumer_dropped`: a delivery neither acked nor nacked when
/// its consumer stream is dropped (a worker that died) reaches a consumer of another broker
/// instance (capability `redelivers_unacked`).
pub async fn unacked_is_redelivered_after_consumer_dropped(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("unacked");
    let sig = task(&q, "conformance.unacked");
    h.publish(&sig).await;
    let mut stream = h.consume(&q, 1).await;
    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "first delivery").await;
    assert_eq!(got.uuid, sig.uuid);
    // The "worker" dies: neither ack nor nack.
    drop(d);
    drop(stream);

    let other = h.under_test.another().await.expect("another broker");
    let mut stream = other
        .consume(&q, options(1))
        .await
        .expect("consume on another broker");
    if h.caps.redelivers_unacked {
        let (d, again) = recv_task(
            &mut stream,
            h.timing.redelivery_after_drop + h.timing.receive_timeout,
            "the unacked message after its consumer was dropped",
        )
        .await;
        assert_eq!(again.uuid, sig.uuid);
        d.ack().await.expect("ack");
        expect_nothing(&mut stream, h.timing.quiet_period, "after ack").await;
    } else {
        eprintln!(
            "note: capability redelivers_unacked is false; checking only that the new consumer works"
        );
    }
    let next = task(&q, "conformance.unacked.next");
    h.publish(&next).await;
    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "a fresh message").await;
    assert_eq!(got.uuid, next.uuid);
    d.ack().await.expect("ack");
    drop(stream);
    other.close().await.expect("close the other broker");
    h.finish().await;
}

/// `eta_is_respected`: a signature with a future ETA is never delivered before it, is
/// delivered within the driver's slack after it, and does not hold up messages behind it;
/// `publish` does not wait for the ETA.
pub async fn eta_is_respected(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let delay = Duration::from_secs(1);
    let q = h.queue("eta");
    let eta = time::now() + chrono_dur(delay);
    let delayed = task(&q, "conformance.eta").eta(eta);
    let started = Instant::now();
    h.publish(&delayed).await;
    assert!(
        started.elapsed() < delay,
        "publish must not wait for the ETA (took {:?})",
        started.elapsed()
    );
    let now_task = task(&q, "conformance.eta.now");
    h.publish(&now_task).await;
    let mut stream = h.consume(&q, 1).await;

    if !h.caps.delayed_delivery {
        let mut seen = Vec::new();
        for _ in 0..2 {
            let (d, got) =
                recv_task(&mut stream, h.timing.receive_timeout + delay, "eta message").await;
            seen.push(got.uuid);
            d.ack().await.expect("ack");
        }
        assert!(seen.contains(&delayed.uuid) && seen.contains(&now_task.uuid));
        drop(stream);
        h.finish().await;
        return;
    }

    let (d, got) = recv_task(
        &mut stream,
        h.timing.receive_timeout,
        "the immediate message",
    )
    .await;
    assert_eq!(
        got.uuid, now_task.uuid,
        "the message without ETA must come first"
    );
    d.ack().await.expect("ack");
    let (d, got) = recv_task(
        &mut stream,
        delay + h.timing.delay_slack + h.timing.receive_timeout,
        "the ETA message",
    )
    .await;
    let arrived = time::now();
    assert_eq!(got.uuid, delayed.uuid);
    assert_eq!(
        got.eta,
        Some(eta),
        "the ETA must survive the delay mechanism"
    );
    assert!(
        arrived >= eta,
        "delivered {} early",
        eta.signed_duration_since(arrived)
    );
    assert!(
        arrived <= eta + chrono_dur(h.timing.delay_slack),
        "delivered {} after its ETA (slack {:?})",
        arrived.signed_duration_since(eta),
        h.timing.delay_slack
    );
    d.ack().await.expect("ack");
    drop(stream);
    h.finish().await;
}

/// `pending_tasks_are_listed_in_order` (capability `pending_tasks`): waiting messages are
/// listed oldest first, listing neither removes nor reorders them.
pub async fn pending_tasks_are_listed_in_order(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("pending");
    if !h.caps.pending_tasks {
        assert_unsupported(h.broker.pending_tasks(&q).await, "pending_tasks");
        h.finish().await;
        return;
    }
    assert!(
        h.broker
            .pending_tasks(&q)
            .await
            .expect("pending_tasks of an empty queue")
            .is_empty()
    );
    let sigs: Vec<Signature> = (0..5)
        .map(|i| task(&q, &format!("conformance.pending.{i}")))
        .collect();
    for sig in &sigs {
        h.publish(sig).await;
    }
    let want: Vec<&str> = sigs.iter().map(|s| s.uuid.as_str()).collect();
    for round in 0..2 {
        let listed = h.broker.pending_tasks(&q).await.expect("pending_tasks");
        let got: Vec<&str> = listed.iter().map(|s| s.uuid.as_str()).collect();
        assert_eq!(got, want, "listing #{round} is not the publish order");
        assert_eq!(
            listed[2], sigs[2],
            "listed signatures must decode unchanged"
        );
    }
    let mut stream = h.consume(&q, 1).await;
    let (d, got) = recv_task(&mut stream, h.timing.receive_timeout, "first pending").await;
    assert_eq!(
        got.uuid, sigs[0].uuid,
        "listing must not have reordered the queue"
    );
    d.ack().await.expect("ack");
    drop(stream);
    h.finish().await;
}

/// `delayed_tasks_are_listed` (capability `delayed_tasks`): messages waiting for their ETA
/// are listed soonest first; immediate ones are not.
pub async fn delayed_tasks_are_listed(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("delayed");
    if !h.caps.delayed_tasks {
        assert_unsupported(h.broker.delayed_tasks().await, "delayed_tasks");
        h.finish().await;
        return;
    }
    let now = time::now();
    let in_secs = |s: i64| now + chrono::Duration::seconds(s);
    let late = task(&q, "conformance.delayed.late").eta(in_secs(300));
    let soon = task(&q, "conformance.delayed.soon").eta(in_secs(100));
    let middle = task(&q, "conformance.delayed.middle").eta(in_secs(200));
    let immediate = task(&q, "conformance.delayed.immediate");
    for sig in [&late, &soon, &immediate, &middle] {
        h.publish(sig).await;
    }
    let listed = h.broker.delayed_tasks().await.expect("delayed_tasks");
    let got: Vec<&str> = listed.iter().map(|s| s.uuid.as_str()).collect();
    assert_eq!(
        got,
        vec![soon.uuid.as_str(), middle.uuid.as_str(), late.uuid.as_str()],
        "delayed tasks must be exactly this namespace's, soonest first"
    );
    assert_eq!(listed[0], soon, "listed signatures must decode unchanged");
    h.finish().await;
}

/// `competing_consumers_never_share_a_message`: 200 messages, 4 consumers on two broker
/// instances: every message is delivered exactly once.
pub async fn competing_consumers_never_share_a_message(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    const MESSAGES: usize = 200;
    const CONSUMERS: usize = 4;
    let q = h.queue("competing");
    let other = h.under_test.another().await.expect("another broker");
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, String)>();
    let mut workers = Vec::new();
    for i in 0..CONSUMERS {
        let broker = if i % 2 == 0 {
            Arc::clone(&h.broker)
        } else {
            Arc::clone(&other)
        };
        let mut stream = broker.consume(&q, options(4)).await.expect("consume");
        let tx = tx.clone();
        workers.push(tokio::spawn(async move {
            while let Some(item) = stream.next().await {
                let Ok(d) = item else { continue };
                let uuid = d.signature().map(|s| s.uuid.clone()).unwrap_or_default();
                d.ack().await.expect("ack");
                if tx.send((i, uuid)).is_err() {
                    break;
                }
            }
        }));
    }
    drop(tx);
    let sigs: Vec<Signature> = (0..MESSAGES)
        .map(|i| task(&q, &format!("conformance.competing.{i}")))
        .collect();
    for sig in &sigs {
        h.publish(sig).await;
    }

    let mut seen: HashMap<String, Vec<usize>> = HashMap::new();
    let deadline = Instant::now() + h.timing.receive_timeout * 3;
    let mut received = 0;
    while received < MESSAGES {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some((consumer, uuid))) => {
                seen.entry(uuid).or_default().push(consumer);
                received += 1;
            }
            Ok(None) => panic!("every consumer stopped after {received} deliveries"),
            Err(_) => panic!("only {received} of {MESSAGES} deliveries arrived in time"),
        }
    }
    // Anything more is a duplicate.
    let quiet_until = Instant::now() + h.timing.quiet_period;
    while let Ok(Some((consumer, uuid))) = tokio::time::timeout_at(quiet_until, rx.recv()).await {
        seen.entry(uuid).or_default().push(consumer);
    }
    for w in &workers {
        w.abort();
    }
    for sig in &sigs {
        match seen.remove(&sig.uuid) {
            Some(by) if by.len() == 1 => {}
            Some(by) => panic!(
                "{} was delivered {} times (consumers {by:?})",
                sig.uuid,
                by.len()
            ),
            None => panic!("{} was never delivered", sig.uuid),
        }
    }
    assert!(seen.is_empty(), "unexpected deliveries: {seen:?}");
    other.close().await.expect("close the other broker");
    h.finish().await;
}

/// `fifo_order_is_kept` (capability `fifo`): one consumer sees one queue's messages in
/// publish order. Without the capability every message must still arrive once.
pub async fn fifo_order_is_kept(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("fifo");
    let sigs: Vec<Signature> = (0..20)
        .map(|i| task(&q, &format!("conformance.fifo.{i}")))
        .collect();
    for sig in &sigs {
        h.publish(sig).await;
    }
    let mut stream = h.consume(&q, 1).await;
    let mut got = Vec::new();
    for i in 0..sigs.len() {
        let (d, sig) = recv_task(
            &mut stream,
            h.timing.receive_timeout,
            &format!("message {i}"),
        )
        .await;
        got.push(sig.uuid);
        d.ack().await.expect("ack");
    }
    let mut want: Vec<String> = sigs.iter().map(|s| s.uuid.clone()).collect();
    if !h.caps.fifo {
        got.sort();
        want.sort();
    }
    assert_eq!(got, want, "messages were not delivered in publish order");
    expect_nothing(&mut stream, h.timing.quiet_period, "after the last message").await;
    drop(stream);
    h.finish().await;
}

/// `undecodable_body_surfaces_as_malformed_delivery`: bytes that are not a signature reach
/// the consumer as [`Payload::Malformed`] with the raw bytes and a reason; `dead_letter`
/// keeps them with its reason (capability `dead_letter`) and they are not delivered again.
/// A valid body written by a foreign producer decodes normally.
pub async fn undecodable_body_surfaces_as_malformed_delivery(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("malformed");
    let body = if h.under_test.text_bodies_only() {
        "{\"UUID\": \"task_broken\", not json at all \u{ff}"
            .as_bytes()
            .to_vec()
    } else {
        b"{\"UUID\": \"task_broken\", not json at all \xff".to_vec()
    };
    h.under_test
        .inject_raw(&q, &body)
        .await
        .expect("inject a raw body");
    let mut stream = h.consume(&q, 1).await;
    let d = recv(&mut stream, h.timing.receive_timeout, "the malformed body").await;
    match &d.payload {
        Payload::Malformed { raw, reason } => {
            assert_eq!(raw, &body, "the raw bytes must be kept as received");
            assert!(!reason.is_empty(), "a malformed delivery needs a reason");
        }
        Payload::Task(sig) => panic!("garbage decoded as a signature: {sig:?}"),
    }
    let reason = "conformance: undecodable body";
    d.dead_letter(reason).await.expect("dead_letter");
    expect_nothing(&mut stream, h.timing.quiet_period, "after dead_letter").await;

    if h.caps.dead_letter {
        let deadline = Instant::now() + h.timing.receive_timeout;
        loop {
            let letters = h
                .under_test
                .dead_letters(&q)
                .await
                .expect("read dead letters");
            if let Some(l) = letters.iter().find(|l| l.body == body) {
                assert!(
                    l.reason.contains(reason),
                    "dead letter reason {:?} does not contain {reason:?}",
                    l.reason
                );
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the dead-lettered body is not in the dead-letter store: {letters:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // A foreign producer's valid message (Go's field layout) decodes.
    let uuid = new_task_uuid();
    let foreign = format!(
        r#"{{"UUID":"{uuid}","Name":"conformance.foreign","RoutingKey":"{q}","ETA":null,"GroupUUID":"","GroupTaskCount":0,"Args":[{{"Name":"","Type":"int64","Value":7}}],"Headers":{{}},"Priority":0,"Immutable":false,"RetryCount":0,"RetryTimeout":0,"OnSuccess":null,"OnError":null,"ChordCallback":null,"BrokerMessageGroupId":"","SQSReceiptHandle":"","StopTaskDeletionOnError":false,"IgnoreWhenTaskNotRegistered":false}}"#
    );
    h.under_test
        .inject_raw(&q, foreign.as_bytes())
        .await
        .expect("inject a foreign body");
    let (d, sig) = recv_task(&mut stream, h.timing.receive_timeout, "the foreign message").await;
    assert_eq!(sig.uuid, uuid);
    assert_eq!(sig.name, "conformance.foreign");
    assert_eq!(sig.args.len(), 1);
    assert_eq!(sig.args[0].value.get(), "7");
    d.ack().await.expect("ack");
    drop(stream);
    h.finish().await;
}

/// `purge_queue_empties_it`: after `purge_queue` the queue delivers nothing of what it held,
/// other queues are untouched, and new messages flow again.
pub async fn purge_queue_empties_it(factory: impl BrokerFactory) {
    let Some(h) = Harness::start(&factory).await else {
        return;
    };
    let q = h.queue("purge");
    let kept_q = h.queue("purge_other");
    for i in 0..3 {
        h.publish(&task(&q, &format!("conformance.purge.{i}")))
            .await;
    }
    let kept = task(&kept_q, "conformance.purge.kept");
    h.publish(&kept).await;
    h.broker.purge_queue(&q).await.expect("purge_queue");
    if h.caps.pending_tasks {
        let pending = h.broker.pending_tasks(&q).await.expect("pending_tasks");
        assert!(pending.is_empty(), "purged queue still lists {pending:?}");
    }
    let mut stream = h.consume(&q, 1).await;
    expect_nothing(&mut stream, h.timing.quiet_period, "a purged message").await;
    let fresh = task(&q, "conformance.purge.fresh");
    h.publish(&fresh).await;
    let (d, got) = recv_task(
        &mut stream,
        h.timing.receive_timeout,
        "a message after purge",
    )
    .await;
    assert_eq!(got.uuid, fresh.uuid);
    d.ack().await.expect("ack");
    drop(stream);

    let mut stream = h.consume(&kept_q, 1).await;
    let (d, got) = recv_task(
        &mut stream,
        h.timing.receive_timeout,
        "the other queue's message",
    )
    .await;
    assert_eq!(got.uuid, kept.uuid, "purge_queue touched another queue");
    d.ack().await.expect("ack");
    drop(stream);
    h.finish().await;
}
