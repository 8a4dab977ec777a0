//! Every scenario on the AMQP broker with the AMQP backend, the Redis backend, the memcache
//! backend and the memory backend (needs `MACHINERY_TEST_AMQP_URL`, and
//! `MACHINERY_TEST_REDIS_URL` / `MACHINERY_TEST_MEMCACHE_URL` for those pairs; unset =
//! skipped).

use std::sync::Arc;

use machinery::{Config, MemoryBackend};
use machinery_amqp::{AmqpBackend, AmqpBroker, AmqpConfig};
use machinery_integration_tests::Env;
use machinery_memcache::{MemcacheBackend, MemcacheConfig};
use machinery_redis::{RedisBackend, RedisConfig};

/// One shared exchange for every case (a durable exchange per case would outlive it); the
/// queues and routing keys are namespaced, task queues delete themselves when unused.
const EXCHANGE: &str = "machinery_integration_tests";

fn config(url: &str, ns: &str) -> Config {
    let mut config = Config {
        broker: url.to_owned(),
        result_backend: url.to_owned(),
        default_queue: format!("{ns}_tasks"),
        ..Config::default()
    };
    config.amqp.exchange = EXCHANGE.to_owned();
    // No orphan producer queue: the default routing key is the worker queue.
    config.amqp.binding_key = config.default_queue.clone();
    config
        .amqp
        .queue_declare_args
        .insert("x-expires".to_owned(), serde_json::json!(600_000));
    config.results_expire_in = 600;
    config
}

async fn amqp_broker(url: &str, config: &Config) -> AmqpBroker {
    AmqpBroker::connect(AmqpConfig::from_machinery(url, config))
        .await
        .expect("MACHINERY_TEST_AMQP_URL is set but RabbitMQ is unreachable")
}

async fn amqp_amqp(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL")?;
    let config = config(&url, &ns);
    let broker = amqp_broker(&url, &config).await;
    let backend = AmqpBackend::connect(AmqpConfig::from_machinery(&url, &config))
        .await
        .expect("MACHINERY_TEST_AMQP_URL is set but RabbitMQ is unreachable");
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

async fn amqp_redis(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL")?;
    let redis_url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let mut config = config(&url, &ns);
    config.result_backend = redis_url.clone();
    let broker = amqp_broker(&url, &config).await;
    let backend = RedisBackend::connect(RedisConfig::from_machinery(&redis_url, &config))
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

async fn amqp_memcache(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL")?;
    let memcache_url = machinery_testkit::env_url("MACHINERY_TEST_MEMCACHE_URL")?;
    let mut config = config(&url, &ns);
    config.result_backend = memcache_url.clone();
    let broker = amqp_broker(&url, &config).await;
    let backend = MemcacheBackend::connect(MemcacheConfig::from_machinery(&memcache_url, &config))
        .await
        .expect("MACHINERY_TEST_MEMCACHE_URL is set but memcached is unreachable");
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

async fn amqp_memory(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL")?;
    let mut config = config(&url, &ns);
    config.result_backend = "memory://".to_owned();
    let broker = amqp_broker(&url, &config).await;
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(MemoryBackend::new()),
    })
}

mod amqp_x_amqp {
    machinery_integration_tests::integration_suite!(super::amqp_amqp);
}

mod amqp_x_redis {
    machinery_integration_tests::integration_suite!(super::amqp_redis);
}

mod amqp_x_memcache {
    machinery_integration_tests::integration_suite!(super::amqp_memcache);
}

mod amqp_x_memory {
    machinery_integration_tests::integration_suite!(super::amqp_memory);
}
