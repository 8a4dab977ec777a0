//! A core worker on the SQS broker: what the worker's outcome does to the message. Go's
//! `StopTaskDeletionOnError` leaves a task that failed for good to the queue's redrive policy
//! (which moves it to the queue's dead-letter queue after `maxReceiveCount` receives);
//! without it the message is deleted once FAILURE is stored. On moto (needs
//! `MACHINERY_TEST_SQS_URL`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use machinery_core::{Config, MemoryBackend, Server, Signature, State, TaskError};
use machinery_sqs::aws_sdk_sqs::types::QueueAttributeName;
use machinery_sqs::{SqsBroker, SqsConfig};

/// SQS's (moto's exact) counts of visible and in-flight messages of the queue at `url`.
async fn counts(broker: &SqsBroker, url: &str) -> (u64, u64) {
    let out = broker
        .client()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
        .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
        .send()
        .await
        .expect("queue attributes");
    let get = |name: QueueAttributeName| -> u64 {
        out.attributes()
            .and_then(|a| a.get(&name))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (
        get(QueueAttributeName::ApproximateNumberOfMessages),
        get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
    )
}

/// Task queue `{ns}_tasks` whose redrive policy sends a message to `{ns}_redrive` once it
/// was received `max_receive` times. Made with the raw client, before any broker reads the
/// queue's attributes. Returns the two queue URLs.
async fn queue_with_redrive(broker: &SqsBroker, ns: &str, max_receive: u32) -> (String, String) {
    let client = broker.client();
    let dlq = client
        .create_queue()
        .queue_name(format!("{ns}_redrive"))
        .send()
        .await
        .expect("create the redrive queue")
        .queue_url
        .expect("its url");
    let arn = client
        .get_queue_attributes()
        .queue_url(&dlq)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .expect("its arn")
        .attributes
        .and_then(|mut a| a.remove(&QueueAttributeName::QueueArn))
        .expect("an arn");
    let policy = serde_json::json!({
        "deadLetterTargetArn": arn,
        "maxReceiveCount": max_receive.to_string(),
    })
    .to_string();
    let queue = client
        .create_queue()
        .queue_name(format!("{ns}_tasks"))
        .attributes(QueueAttributeName::RedrivePolicy, policy)
        .send()
        .await
        .expect("create the task queue")
        .queue_url
        .expect("its url");
    (queue, dlq)
}

/// The task UUIDs of every message in the queue at `url` (received, then made visible again).
async fn uuids_in(broker: &SqsBroker, url: &str) -> Vec<String> {
    let out = broker
        .client()
        .receive_message()
        .queue_url(url)
        .max_number_of_messages(10)
        .visibility_timeout(0)
        .send()
        .await
        .expect("receive");
    out.messages()
        .iter()
        .map(|m| {
            Signature::from_json(m.body().unwrap_or_default().as_bytes())
                .expect("a signature")
                .uuid
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_task_deletion_on_error_leaves_a_failed_message_to_the_redrive_policy() {
    let Some(url) = common::url() else {
        return;
    };
    let ns = common::namespace();
    let admin = common::connect(common::config(&url, &ns)).await;
    let (queue_url, dlq_url) = queue_with_redrive(&admin, &ns, 1).await;

    // A worker on that queue: visibility 2 s, so a message left undeleted returns quickly.
    let config = SqsConfig {
        visibility_timeout: Some(2),
        create_queues: false,
        ..common::config(&url, &ns)
    };
    let broker = common::connect(config).await;
    let server = Server::new(
        Config {
            default_queue: format!("{ns}_tasks"),
            ..Config::default()
        },
        broker,
        MemoryBackend::new(),
    );
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    server
        .register_task("fail", move || {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(TaskError::fatal("boom"))
            }
        })
        .unwrap();
    let worker = server.new_worker("redrive", 2).no_unix_signals().launch();
    let kept = server
        .send_task(Signature::new("fail").stop_task_deletion_on_error(true))
        .await
        .unwrap();
    let deleted = server.send_task(Signature::new("fail")).await.unwrap();
    for r in [&kept, &deleted] {
        let uuid = r.uuid().to_owned();
        let backend = Arc::clone(server.backend());
        common::wait_for(Duration::from_secs(20), "FAILURE stored", || {
            let backend = Arc::clone(&backend);
            let uuid = uuid.clone();
            async move {
                let s = backend.state(&uuid).await.unwrap()?;
                (s.state == State::Failure).then_some(s)
            }
        })
        .await;
    }

    // The kept message returns after its visibility timeout; on the next receive SQS (its
    // maxReceiveCount of 1 reached) moves it to the redrive queue instead of handing it out.
    let in_dlq = common::wait_for(Duration::from_secs(30), "the redrive queue", || {
        let admin = &admin;
        let dlq_url = dlq_url.clone();
        async move {
            let found = uuids_in(admin, &dlq_url).await;
            (!found.is_empty()).then_some(found)
        }
    })
    .await;
    assert_eq!(in_dlq, vec![kept.uuid().to_owned()]);
    // The other one was deleted once its FAILURE was stored: nothing is left behind.
    common::wait_for(Duration::from_secs(10), "an empty task queue", || {
        let admin = &admin;
        let queue_url = queue_url.clone();
        async move { (counts(admin, &queue_url).await == (0, 0)).then_some(()) }
    })
    .await;
    assert_eq!(
        uuids_in(&admin, &dlq_url).await,
        vec![kept.uuid().to_owned()],
        "only the kept message is in the redrive queue"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each task ran once");
    worker.quit();
    worker.join().await.unwrap();
    common::teardown(&admin, &ns).await;
}
