//! Every scenario on the Redis broker with the DynamoDB result backend (needs
//! `MACHINERY_TEST_REDIS_URL` and `MACHINERY_TEST_DYNAMODB_URL`; unset = skipped). Each case
//! gets its own two tables, created at connect.

use std::sync::Arc;

use machinery::Config;
use machinery_dynamodb::{DynamoBackend, DynamoConfig};
use machinery_integration_tests::Env;
use machinery_redis::{RedisBroker, RedisConfig};

async fn redis_dynamodb(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let dynamo_url = machinery_testkit::env_url("MACHINERY_TEST_DYNAMODB_URL")?;
    // Table names: letters, digits, `_`, `-`, `.`.
    let tables = ns.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    let mut config = Config {
        broker: url.clone(),
        result_backend: dynamo_url.clone(),
        default_queue: format!("{ns}_tasks"),
        results_expire_in: 600,
        ..Config::default()
    };
    config.dynamodb.task_states_table = format!("{tables}_task_states");
    config.dynamodb.group_metas_table = format!("{tables}_group_metas");
    config.dynamodb.create_tables = true;
    let redis = RedisConfig {
        delayed_tasks_key: format!("{ns}.delayed_tasks"),
        consumer_lease_ms: 2000,
        recovery_interval_ms: 500,
        ..RedisConfig::from_machinery(&url, &config)
    };
    let broker = RedisBroker::connect(redis)
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    let backend = DynamoBackend::connect(DynamoConfig {
        request_timeout_ms: 30_000,
        ..DynamoConfig::from_machinery(&dynamo_url, &config)
    })
    .await
    .expect("MACHINERY_TEST_DYNAMODB_URL is set but DynamoDB is unusable");
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

mod redis_x_dynamodb {
    machinery_integration_tests::integration_suite!(super::redis_dynamodb);
}
