//! Wire compatibility with Go Machinery's Pub/Sub broker, whose message data is
//! `json.Marshal(signature)` with no attributes: the bodies the real Go library wrote
//! (`testdata/go/signatures/` and `testdata/go/sqs/bodies/`) published as Go publishes them
//! are consumed, and the decoded signatures published again are byte for byte Go's data.
//! On the emulator (needs `MACHINERY_TEST_PUBSUB_URL` and `PUBSUB_EMULATOR_HOST`).
//!
//! Go publishes to the topic named by the top-level `"RoutingKey"`; the fixtures' queue names
//! are moved under a fresh namespace by rewriting that value (only it), so the bytes are
//! exactly what Go's `SendTask` publishes for that topic.

mod common;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{Broker, ConsumeOptions, Payload, Signature};
use machinery_testkit::fixtures;

/// Go's bodies, namespaced, as (file, body); FIFO-queue bodies are left out (Pub/Sub has no
/// `.fifo` topics; Go sends those to SQS only).
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
    out.retain(|(_, body)| !queue_of(body, ns).ends_with(".fifo"));
    // Some fixtures are the same task written two ways (same UUID): keep the first.
    let mut seen = HashSet::new();
    out.retain(|(_, body)| seen.insert(uuid_of(body)));
    out
}

fn namespaced(raw: &[u8], ns: &str) -> String {
    let text = String::from_utf8(raw.to_vec()).expect("utf-8 fixture");
    let text = text.trim_end().to_owned();
    for from in [
        "machinery_tasks.fifo",
        "machinery_tasks",
        "custom_q",
        "custom_queue",
    ] {
        let to = if from.ends_with(".fifo") {
            format!("{ns}_tasks.fifo")
        } else {
            format!("{ns}_tasks")
        };
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

/// Go's bodies published as Go publishes them are consumed (a future ETA is held, not
/// delivered), and the decoded signatures published again are byte for byte Go's data, with
/// no attributes and no ordering key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_bodies_are_consumed_and_republished_byte_for_byte() {
    let Some(url) = common::url() else { return };
    let ns = common::namespace();
    let broker = common::connect(common::config(&url, &ns)).await;
    let q = format!("{ns}_tasks");
    let bodies = go_bodies(&ns);
    assert!(bodies.len() > 40, "fixtures found: {}", bodies.len());
    for (file, body) in &bodies {
        assert_eq!(
            queue_of(body, &ns),
            q,
            "{file}: not on the namespaced topic"
        );
        broker
            .publish_raw(&q, body.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("publish {file} as Go does: {e}"));
    }
    let (future, due): (Vec<_>, Vec<_>) = bodies.iter().partition(|(_, b)| is_future(b));
    assert!(
        !future.is_empty(),
        "the fixtures include ETAs in the future"
    );

    let mut decoded: HashMap<String, Signature> = HashMap::new();
    let mut stream = broker
        .consume(
            &q,
            ConsumeOptions {
                prefetch: 16,
                ..ConsumeOptions::default()
            },
        )
        .await
        .expect("consume");
    for _ in 0..due.len() {
        let d = tokio::time::timeout(Duration::from_secs(20), stream.next())
            .await
            .expect("not every Go body was delivered")
            .expect("stream open")
            .expect("delivery");
        let Payload::Task(sig) = &d.payload else {
            panic!("a Go body did not decode: {:?}", d.payload);
        };
        decoded.insert(sig.uuid.clone(), (**sig).clone());
        d.ack().await.expect("ack");
    }
    // The held ones (ETA years ahead) never show up.
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_secs(2), stream.next()).await {
        panic!("a message not due was delivered: {extra:?}");
    }
    drop(stream);
    broker.stop_consuming("machinery").await.expect("stop");
    assert_eq!(decoded.len(), due.len());

    // Published again by us, read raw from the subscription: Go's bytes.
    for sig in decoded.values() {
        broker.publish(sig).await.expect("republish");
    }
    let want: HashMap<String, &String> = due.iter().map(|(_, b)| (uuid_of(b), b)).collect();
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while got.len() < want.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {} of {} raw messages",
            got.len(),
            want.len()
        );
        got.extend(broker.pull_raw(&q, 100).await.expect("raw pull"));
    }
    for (data, attributes) in got {
        let body = String::from_utf8(data).expect("utf-8 data");
        let uuid = uuid_of(&body);
        let original = want
            .get(&uuid)
            .unwrap_or_else(|| panic!("unexpected message {uuid}"));
        assert_eq!(&body, *original, "{uuid}: bytes differ from Go's");
        assert!(
            attributes.is_empty(),
            "Go sends no attributes: {attributes:?}"
        );
    }
    common::teardown(&broker, &ns).await;
}
