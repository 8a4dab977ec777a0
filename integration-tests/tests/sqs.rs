//! Every scenario on the SQS broker (moto in CI; needs `MACHINERY_TEST_SQS_URL`, the queue URL
//! prefix) with the Redis, AMQP, MongoDB and DynamoDB backends (needs their
//! `MACHINERY_TEST_*_URL`; unset = skipped). Go tests these pairs; SQS x DynamoDB is the
//! all-AWS set-up (moto serves both in CI; each case gets its own two tables, created at
//! connect).

use std::sync::Arc;

use machinery::Config;
use machinery_amqp::{AmqpBackend, AmqpConfig};
use machinery_dynamodb::{DynamoBackend, DynamoConfig};
use machinery_integration_tests::Env;
use machinery_mongo::{MongoBackend, MongoConfig};
use machinery_redis::{RedisBackend, RedisConfig};
use machinery_sqs::aws_config::{self, BehaviorVersion};
use machinery_sqs::aws_sdk_sqs::config::Credentials;
use machinery_sqs::{SqsBroker, SqsConfig};

fn config(url: &str, ns: &str, backend: &str) -> Config {
    let mut config = Config {
        broker: url.to_owned(),
        result_backend: backend.to_owned(),
        default_queue: format!("{ns}_tasks"),
        results_expire_in: 600,
        ..Config::default()
    };
    config.sqs.create_queues = true;
    config.sqs.wait_time_seconds = 1;
    config.sqs.visibility_timeout = Some(10);
    config.amqp.exchange = "machinery_integration_tests".to_owned();
    config
}

async fn sqs_broker(url: &str, config: &Config) -> SqsBroker {
    let mut loader = aws_config::defaults(BehaviorVersion::latest());
    if std::env::var("AWS_ACCESS_KEY_ID").is_err() {
        // moto takes any key.
        loader = loader.credentials_provider(Credentials::new("test", "test", None, None, "it"));
    }
    SqsBroker::connect_with(SqsConfig::from_machinery(url, config), &loader.load().await)
        .expect("the SQS broker")
}

async fn sqs_redis(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_SQS_URL")?;
    let redis_url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let config = config(&url, &ns, &redis_url);
    let backend = RedisBackend::connect(RedisConfig::from_machinery(&redis_url, &config))
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    Some(Env {
        broker: Arc::new(sqs_broker(&url, &config).await),
        backend: Arc::new(backend),
        config,
    })
}

async fn sqs_amqp(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_SQS_URL")?;
    let amqp_url = machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL")?;
    let config = config(&url, &ns, &amqp_url);
    let backend = AmqpBackend::connect(AmqpConfig::from_machinery(&amqp_url, &config))
        .await
        .expect("MACHINERY_TEST_AMQP_URL is set but RabbitMQ is unreachable");
    Some(Env {
        broker: Arc::new(sqs_broker(&url, &config).await),
        backend: Arc::new(backend),
        config,
    })
}

async fn sqs_mongo(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_SQS_URL")?;
    let mongo_url = machinery_testkit::env_url("MACHINERY_TEST_MONGODB_URL")?;
    let mut config = config(&url, &ns, &mongo_url);
    config.mongodb.database = format!("{ns}_db");
    let backend = MongoBackend::connect(MongoConfig::from_machinery(&mongo_url, &config))
        .await
        .expect("MACHINERY_TEST_MONGODB_URL is set but the server is unreachable");
    Some(Env {
        broker: Arc::new(sqs_broker(&url, &config).await),
        backend: Arc::new(backend),
        config,
    })
}

async fn sqs_dynamodb(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_SQS_URL")?;
    let dynamo_url = machinery_testkit::env_url("MACHINERY_TEST_DYNAMODB_URL")?;
    let mut config = config(&url, &ns, &dynamo_url);
    // Table names: letters, digits, `_`, `-`, `.`.
    let tables = ns.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
    config.dynamodb.task_states_table = format!("{tables}_task_states");
    config.dynamodb.group_metas_table = format!("{tables}_group_metas");
    config.dynamodb.create_tables = true;
    let backend = DynamoBackend::connect(DynamoConfig {
        request_timeout_ms: 30_000,
        ..DynamoConfig::from_machinery(&dynamo_url, &config)
    })
    .await
    .expect("MACHINERY_TEST_DYNAMODB_URL is set but DynamoDB is unusable");
    Some(Env {
        broker: Arc::new(sqs_broker(&url, &config).await),
        backend: Arc::new(backend),
        config,
    })
}

mod sqs_x_redis {
    machinery_integration_tests::integration_suite!(super::sqs_redis);
}

mod sqs_x_amqp {
    machinery_integration_tests::integration_suite!(super::sqs_amqp);
}

mod sqs_x_mongo {
    machinery_integration_tests::integration_suite!(super::sqs_mongo);
}

mod sqs_x_dynamodb {
    machinery_integration_tests::integration_suite!(super::sqs_dynamodb);
}
