//! Every scenario on the GCP Pub/Sub broker (Google's emulator in CI; needs
//! `MACHINERY_TEST_PUBSUB_URL` and `PUBSUB_EMULATOR_HOST`) with the Redis backend (needs
//! `MACHINERY_TEST_REDIS_URL`; unset = skipped). Go tests this pair. Every scenario gets its
//! own topic and subscription.

use std::sync::Arc;

use machinery::Config;
use machinery_integration_tests::Env;
use machinery_pubsub::{PubSubBroker, PubSubConfig};
use machinery_redis::{RedisBackend, RedisConfig};

async fn pubsub_redis(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_PUBSUB_URL")?;
    let redis_url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    // The URL's subscription, per scenario, on the scenario's default topic.
    let url = format!(
        "{}/{ns}_sub",
        url.rsplit_once('/').expect("gcppubsub://p/s").0
    );
    let mut config = Config {
        broker: url.clone(),
        result_backend: redis_url.clone(),
        default_queue: format!("{ns}_tasks"),
        results_expire_in: 600,
        ..Config::default()
    };
    config.gcp_pubsub.create_missing = true;
    config.gcp_pubsub.ack_deadline = 10;
    let backend = RedisBackend::connect(RedisConfig::from_machinery(&redis_url, &config))
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    let broker = PubSubBroker::connect(PubSubConfig::from_machinery(&url, &config))
        .await
        .expect("MACHINERY_TEST_PUBSUB_URL is set but the Pub/Sub emulator is unreachable");
    Some(Env {
        broker: Arc::new(broker),
        backend: Arc::new(backend),
        config,
    })
}

mod pubsub_x_redis {
    machinery_integration_tests::integration_suite!(super::pubsub_redis);
}
