//! Helpers shared by the Pub/Sub integration tests (Google's emulator: `PUBSUB_EMULATOR_HOST`
//! and `MACHINERY_TEST_PUBSUB_URL`, `gcppubsub://<project>/<subscription>`, both written by
//! `scripts/services.sh`).

#![allow(dead_code)]

use std::time::Duration;

use machinery_pubsub::{PubSubBroker, PubSubConfig};

/// The environment variable naming the broker URL the tests use.
pub const URL_VAR: &str = "MACHINERY_TEST_PUBSUB_URL";

/// The broker URL, or `None` (skipped) when unset outside CI. The emulator must be named by
/// `PUBSUB_EMULATOR_HOST` too: the tests never talk to Google.
pub fn url() -> Option<String> {
    let url = machinery_testkit::env_url(URL_VAR)?;
    assert!(
        std::env::var(machinery_pubsub::EMULATOR_HOST_VAR).is_ok_and(|h| !h.is_empty()),
        "{URL_VAR} is set but PUBSUB_EMULATOR_HOST is not: the tests run on the emulator only"
    );
    Some(url)
}

/// A fresh namespace for topic and subscription names.
pub fn namespace() -> String {
    machinery_testkit::BrokerSetup::random().namespace
}

/// A configuration isolated in namespace `ns`: subscription `{ns}_sub` on the default topic
/// `{ns}_tasks`, both created, the shortest ack deadline so that the tests stay quick.
pub fn config(url: &str, ns: &str) -> PubSubConfig {
    let base = PubSubConfig::from_url(url);
    PubSubConfig {
        subscription: format!("{ns}_sub"),
        default_queue: format!("{ns}_tasks"),
        create_missing: true,
        ack_deadline_seconds: 10,
        ..base
    }
}

/// Connect a broker.
pub async fn connect(config: PubSubConfig) -> PubSubBroker {
    PubSubBroker::connect(config)
        .await
        .expect("connect the Pub/Sub broker")
}

/// Delete every topic and subscription of namespace `ns`.
pub async fn teardown(broker: &PubSubBroker, ns: &str) {
    broker.delete_prefixed(ns).await;
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
