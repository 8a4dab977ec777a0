//! Wire compatibility with Go Machinery's SQS broker (`testdata/go/sqs/`, what the real Go
//! library sent to moto, and `testdata/go/signatures/`), on moto (needs
//! `MACHINERY_TEST_SQS_URL`).
//!
//! Queue names in Go's bodies are moved under a fresh namespace by rewriting the top-level
//! `"RoutingKey"` value: the bytes are then exactly what Go's `SendTask` sends for that queue.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{Broker, ConsumeOptions, Error, Payload, Signature, time};
use machinery_testkit::fixtures;

/// Go's bodies, namespaced, as (file, body).
fn go_bodies(ns: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for path in fixtures::json_files("sqs/bodies") {
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let raw = fixtures::read(&format!("sqs/bodies/{name}"));
        out.push((format!("sqs/{name}"), namespaced(&raw, ns)));
    }
    let index = fixtures::json("signatures/index.json");
    for entry in index.as_array().expect("index is an array") {
        let file = entry["file"].as_str().expect("file name");
        let raw = fixtures::read(&format!("signatures/{file}"));
        out.push((format!("signatures/{file}"), namespaced(&raw, ns)));
    }
    // Some fixtures are the same task written two ways (same UUID): keep the first.
    let mut seen = std::collections::HashSet::new();
    out.retain(|(_, body)| seen.insert(uuid_of(body)));
    out
}

fn namespaced(raw: &[u8], ns: &str) -> String {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 fixture");
    let text = text.trim_end().to_owned();
    for (from, to) in [
        ("machinery_tasks.fifo", format!("{ns}_tasks.fifo")),
        ("machinery_tasks", format!("{ns}_tasks")),
        ("custom_q", format!("{ns}_tasks")),
        ("custom_queue", format!("{ns}_tasks")),
    ] {
        let needle = format!("\"RoutingKey\":\"{from}\"");
        // Only the top-level key: it is the first one in Go's field order.
        if text.find(&needle) == text.find("\"RoutingKey\":") {
            return text.replacen(&needle, &format!("\"RoutingKey\":\"{to}\""), 1);
        }
    }
    text
}

fn uuid_of(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("fixture is JSON");
    v["UUID"].as_str().expect("UUID").to_owned()
}

fn queue_of(body: &str, ns: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("fixture is JSON");
    match v["RoutingKey"].as_str().unwrap_or_default() {
        "" => format!("{ns}_tasks"),
        q => q.to_owned(),
    }
}

fn is_future(body: &str) -> bool {
    Signature::from_json(body.as_bytes())
        .expect("fixture decodes")
        .future_eta()
        .is_some()
}

/// Read every raw message of `queue_url` until `n` arrived (deleting them).
async fn raw_bodies(
    broker: &machinery_sqs::SqsBroker,
    queue_url: &str,
    n: usize,
) -> Vec<machinery_sqs::aws_sdk_sqs::types::Message> {
    let client = broker.client();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {n} raw messages in {queue_url}",
            got.len()
        );
        let out = client
            .receive_message()
            .queue_url(queue_url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_system_attribute_names(
                machinery_sqs::aws_sdk_sqs::types::MessageSystemAttributeName::All,
            )
            .message_attribute_names("All")
            .send()
            .await
            .expect("raw receive");
        for m in out.messages() {
            client
                .delete_message()
                .queue_url(queue_url)
                .receipt_handle(m.receipt_handle().unwrap())
                .send()
                .await
                .expect("raw delete");
            got.push(m.clone());
        }
    }
    got
}

/// Go's bodies sent as Go sends them are consumed (a future ETA is held, not delivered), and
/// the decoded signatures published again are byte for byte Go's bodies, with Go's FIFO
/// attributes and no message attributes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_bodies_are_consumed_and_republished_byte_for_byte() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let broker = common::connect(common::config(&url, &ns)).await;
    let bodies = go_bodies(&ns);
    assert!(bodies.len() > 50, "fixtures found: {}", bodies.len());
    broker
        .ensure_queue(&format!("{ns}_tasks.fifo"))
        .await
        .expect("fifo queue");
    for (file, body) in &bodies {
        let q = queue_of(body, &ns);
        assert!(q.starts_with(&ns), "{file}: queue {q} not namespaced");
        broker
            .send_raw(&q, body)
            .await
            .unwrap_or_else(|e| panic!("send {file} as Go does: {e}"));
    }
    let (future, due): (Vec<_>, Vec<_>) = bodies.iter().partition(|(_, b)| is_future(b));
    assert!(
        !future.is_empty(),
        "the fixtures include ETAs in the future"
    );

    let mut decoded: HashMap<String, Signature> = HashMap::new();
    for q in [format!("{ns}_tasks"), format!("{ns}_tasks.fifo")] {
        let want = due.iter().filter(|(_, b)| queue_of(b, &ns) == q).count();
        let mut stream = broker
            .consume(
                &q,
                ConsumeOptions {
                    prefetch: 10,
                    ..ConsumeOptions::default()
                },
            )
            .await
            .expect("consume");
        for _ in 0..want {
            let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
                .await
                .unwrap_or_else(|_| panic!("not every Go body of {q} was delivered"))
                .expect("stream open")
                .expect("delivery");
            let Payload::Task(sig) = &d.payload else {
                panic!("a Go body did not decode: {:?}", d.payload);
            };
            assert!(
                sig.sqs_receipt_handle.len() > 10,
                "the consumer fills SQSReceiptHandle as Go does"
            );
            let mut sig = (**sig).clone();
            sig.sqs_receipt_handle.clear();
            decoded.insert(sig.uuid.clone(), sig);
            d.ack().await.expect("ack");
        }
        // The held ones (ETA in 2030) never show up.
        if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
            panic!("a message not due was delivered: {extra:?}");
        }
    }
    assert_eq!(decoded.len(), due.len());

    // Published again by us: Go's bytes.
    for sig in decoded.values() {
        broker.publish(sig).await.expect("republish");
    }
    for q in [format!("{ns}_tasks"), format!("{ns}_tasks.fifo")] {
        let want: HashMap<String, &String> = due
            .iter()
            .filter(|(_, b)| queue_of(b, &ns) == q)
            .map(|(_, b)| (uuid_of(b), b))
            .collect();
        let got = raw_bodies(&broker, &broker.queue_url(&q), want.len()).await;
        for m in got {
            let body = m.body().unwrap();
            let uuid = uuid_of(body);
            let original = want
                .get(&uuid)
                .unwrap_or_else(|| panic!("unexpected message {uuid}"));
            assert_eq!(body, original.as_str(), "{uuid}: bytes differ from Go's");
            assert!(
                m.message_attributes().is_none_or(|a| a.is_empty()),
                "Go sends no message attributes"
            );
            if q.ends_with(".fifo") {
                use machinery_sqs::aws_sdk_sqs::types::MessageSystemAttributeName as A;
                let attrs = m.attributes().expect("fifo attributes");
                assert_eq!(
                    attrs.get(&A::MessageGroupId).map(String::as_str),
                    Some("mg-1")
                );
                let dedup = attrs.get(&A::MessageDeduplicationId).expect("dedup id");
                assert!(
                    uuid::Uuid::parse_str(dedup).is_ok(),
                    "dedup id {dedup} is a UUID"
                );
            }
        }
    }
    common::teardown(&broker, &ns).await;
}

/// Go's `fifo_no_group_id` case: a FIFO queue without `BrokerMessageGroupId` is a clear
/// error, and no request is made.
#[tokio::test]
async fn fifo_without_group_id_fails_before_any_request() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let broker = common::connect(common::config(&url, &ns)).await;
    let sig = Signature::new("add")
        .routing_key(format!("{ns}_tasks.fifo"))
        .arg(2i64);
    let e = broker.publish(&sig).await.expect_err("must fail");
    assert!(matches!(e, Error::Config { .. }), "{e:?}");
    assert!(e.to_string().contains("BrokerMessageGroupId"), "{e}");
    assert_eq!(broker.request_counts().total(), 0, "no request was made");
}

/// Go truncates DelaySeconds (ETA +1.5 s -> 1, up to a second early); ours rounds up: a
/// message due in 1.5 s is never delivered before its ETA.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delay_is_rounded_up_never_early() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let broker = common::connect(common::config(&url, &ns)).await;
    let q = format!("{ns}_tasks");
    broker.ensure_queue(&q).await.expect("queue");
    let eta = time::now() + chrono::Duration::milliseconds(1500);
    let sig = Signature::new("add").routing_key(&q).eta(eta);
    broker.publish(&sig).await.expect("publish");
    let mut stream = broker
        .consume(&q, ConsumeOptions::default())
        .await
        .expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(15), stream.next())
        .await
        .expect("delivered")
        .expect("open")
        .expect("delivery");
    let now = time::now();
    assert!(now >= eta, "delivered {} early", eta - now);
    d.ack().await.expect("ack");
    drop(stream);
    common::teardown(&broker, &ns).await;
}
