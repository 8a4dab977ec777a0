//! Errors and logs that tell what happened (needs MACHINERY_TEST_AMQP_URL): a 406 shows the
//! server's reply text (on a private node with a small `max_message_size`), and a normal
//! wait for a chord's callback logs no server error.

mod common;

use std::time::{Duration, Instant};

use machinery_amqp::{AmqpBackend, AmqpBroker, AmqpConfig};
use machinery_core::{Backend, Broker, Signature, State, TaskState, new_task_uuid};

fn url() -> Option<String> {
    machinery_testkit::env_url(common::URL_VAR)
}

/// A message over the server's `max_message_size` is refused with RabbitMQ's own words
/// (406 "message size ... is larger than configured max size ..."), not a guess about
/// declarations, and the broker still publishes normal messages afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_406_shows_the_servers_reply_text() {
    if url().is_none() {
        return;
    }
    let Some(node) = machinery_testkit::servers::RabbitNode::start(
        "limits",
        "max_message_size = 1048576\n",
        |_| {},
    )
    .await
    else {
        return;
    };
    let config = AmqpConfig {
        url: node.url(),
        publish_retry_timeout_ms: 5_000,
        ..common::broker_config(&node.url(), "limits")
    };
    let broker = AmqpBroker::connect(config).await.expect("connect");
    let big = Signature::new("big")
        .arg("x".repeat(2 * 1024 * 1024))
        .routing_key("limits_tasks");
    let started = Instant::now();
    let err = broker
        .publish(&big)
        .await
        .expect_err("a message over max_message_size is refused");
    let text = err.to_string();
    println!("{text} (after {:?})", started.elapsed());
    assert!(
        text.contains("larger than configured max size"),
        "the server's reply is missing: {text}"
    );
    assert!(
        !text.contains("declared with other flags"),
        "misleading explanation: {text}"
    );
    assert!(!err.is_temporary(), "retrying cannot help: {text}");
    let small = Signature::new("small").routing_key("limits_tasks");
    broker
        .publish(&small)
        .await
        .expect("a normal message after the refusal");
    broker.close().await.expect("close");
    drop(node);
}

/// Waiting for a task whose state does not exist yet (a chord's callback before the last
/// member finishes) reads as "no state", without any server error in the logs (RabbitMQ
/// answers a read of a missing queue with 404 NOT_FOUND and closes the channel, which lapin
/// logs at ERROR).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_state_not_written_yet_logs_no_error() {
    let Some(url) = url() else { return };
    common::logs();
    let backend = AmqpBackend::connect(AmqpConfig {
        url: url.clone(),
        exchange: "machinery_errors_test".into(),
        ..AmqpConfig::default()
    })
    .await
    .expect("connect");
    let callback = format!("chord_{}", &new_task_uuid()[5..]);
    for _ in 0..3 {
        assert!(backend.state(&callback).await.expect("read").is_none());
    }
    let sig = Signature {
        uuid: callback.clone(),
        ..Signature::new("sum")
    };
    backend
        .set_state(&TaskState::pending(&sig))
        .await
        .expect("set_state");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = backend.state(&callback).await.expect("read");
        if st.is_some_and(|s| s.state == State::Pending) {
            break;
        }
        assert!(Instant::now() < deadline, "the state never appeared");
    }
    let logged = common::logs();
    let errors: Vec<&str> = logged
        .lines()
        .filter(|l| l.contains(&callback) && (l.contains("ERROR") || l.contains("NOT_FOUND")))
        .collect();
    assert!(errors.is_empty(), "errors logged:\n{}", errors.join("\n"));
    backend.purge_state(&callback).await.expect("purge");
    backend.close().await;
}
