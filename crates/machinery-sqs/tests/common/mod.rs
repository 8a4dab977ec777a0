//! Helpers shared by the SQS integration tests (moto, or any SQS at
//! `MACHINERY_TEST_SQS_URL`, a queue URL prefix such as `http://127.0.0.1:4566/123456789012`).

#![allow(dead_code)]

use std::time::Duration;

use machinery_sqs::aws_config::{self, BehaviorVersion};
use machinery_sqs::aws_sdk_sqs::config::Credentials;
use machinery_sqs::{SqsBroker, SqsConfig};

/// The environment variable naming the SQS the tests use.
pub const URL_VAR: &str = "MACHINERY_TEST_SQS_URL";

/// The queue URL prefix, or `None` (skipped) when unset outside CI.
pub fn url() -> Option<String> {
    machinery_testkit::env_url(URL_VAR)
}

/// A fresh namespace for queue names.
pub fn namespace() -> String {
    machinery_testkit::BrokerSetup::random().namespace
}

/// A configuration isolated in namespace `ns`: default queue `{ns}_tasks`, queues created
/// on first use, short polls and visibility so that the tests stay quick.
pub fn config(url: &str, ns: &str) -> SqsConfig {
    SqsConfig {
        default_queue: format!("{ns}_tasks"),
        wait_time_seconds: 1,
        visibility_timeout: Some(4),
        create_queues: true,
        ..SqsConfig::from_url(url)
    }
}

/// The SDK configuration: the default chain, with moto's dummy credentials when the
/// environment has none (any key works on moto).
pub async fn sdk_config() -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        loader = loader.credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "machinery-sqs-tests",
        ));
    }
    loader.load().await
}

/// Connect a broker with [`sdk_config`].
pub async fn connect(config: SqsConfig) -> SqsBroker {
    SqsBroker::connect_with(config, &sdk_config().await).expect("connect the SQS broker")
}

/// Delete every queue whose name starts with `ns` (ignoring errors: clean-up only).
pub async fn teardown(broker: &SqsBroker, ns: &str) {
    let client = broker.client();
    let Ok(list) = client.list_queues().queue_name_prefix(ns).send().await else {
        return;
    };
    for url in list.queue_urls() {
        let _ = client.delete_queue().queue_url(url).send().await;
    }
}

/// Poll `f` until it returns `Some`, or panic after `limit`.
pub async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not reached within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
