//! Every scenario with the MongoDB backend, on the Redis broker and on the AMQP broker (the
//! pairs Go tests; needs `MACHINERY_TEST_MONGODB_URL` and the broker's variable; unset =
//! skipped). Each case uses its own database.

use std::sync::Arc;

use machinery::Config;
use machinery_amqp::{AmqpBroker, AmqpConfig};
use machinery_integration_tests::Env;
use machinery_mongo::{MongoBackend, MongoConfig};
use machinery_redis::{RedisBroker, RedisConfig};

async fn mongo_backend(config: &Config) -> MongoBackend {
    MongoBackend::connect(MongoConfig::from_machinery(&config.result_backend, config))
        .await
        .expect("MACHINERY_TEST_MONGODB_URL is set but MongoDB is unreachable")
}

fn base(broker: String, mongo_url: String, ns: &str) -> Config {
    let mut config = Config {
        broker,
        result_backend: mongo_url,
        default_queue: format!("{ns}_tasks"),
        results_expire_in: 600,
        ..Config::default()
    };
    config.mongodb.database = ns.to_owned();
    config
}

async fn redis_mongo(ns: String) -> Option<Env> {
    let redis_url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let mongo_url = machinery_testkit::env_url("MACHINERY_TEST_MONGODB_URL")?;
    let config = base(redis_url.clone(), mongo_url, &ns);
    let redis = RedisConfig {
        delayed_tasks_key: format!("{ns}.delayed_tasks"),
        consumer_lease_ms: 2000,
        recovery_interval_ms: 500,
        ..RedisConfig::from_machinery(&redis_url, &config)
    };
    let broker = RedisBroker::connect(redis)
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    let backend = mongo_backend(&config).await;
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

/// One shared exchange for every case, as in `amqp.rs`; queues are namespaced and expire.
const EXCHANGE: &str = "machinery_integration_tests";

async fn amqp_mongo(ns: String) -> Option<Env> {
    let amqp_url = machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL")?;
    let mongo_url = machinery_testkit::env_url("MACHINERY_TEST_MONGODB_URL")?;
    let mut config = base(amqp_url.clone(), mongo_url, &ns);
    config.amqp.exchange = EXCHANGE.to_owned();
    config.amqp.binding_key = config.default_queue.clone();
    config
        .amqp
        .queue_declare_args
        .insert("x-expires".to_owned(), serde_json::json!(600_000));
    let broker = AmqpBroker::connect(AmqpConfig::from_machinery(&amqp_url, &config))
        .await
        .expect("MACHINERY_TEST_AMQP_URL is set but RabbitMQ is unreachable");
    let backend = mongo_backend(&config).await;
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

mod redis_x_mongo {
    machinery_integration_tests::integration_suite!(super::redis_mongo);
}

mod amqp_x_mongo {
    machinery_integration_tests::integration_suite!(super::amqp_mongo);
}
