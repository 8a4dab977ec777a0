//! Every scenario on the Redis broker with the Redis backend, the memcache backend and the
//! memory backend (needs `MACHINERY_TEST_REDIS_URL`, and `MACHINERY_TEST_MEMCACHE_URL` for the
//! memcache pair; unset = skipped).

use std::sync::Arc;

use machinery::{Config, MemoryBackend};
use machinery_integration_tests::Env;
use machinery_memcache::{MemcacheBackend, MemcacheConfig};
use machinery_redis::{RedisBackend, RedisBroker, RedisConfig};

fn config(url: &str, ns: &str) -> (Config, RedisConfig) {
    let config = Config {
        broker: url.to_owned(),
        result_backend: url.to_owned(),
        default_queue: format!("{ns}_tasks"),
        ..Config::default()
    };
    let redis = RedisConfig {
        delayed_tasks_key: format!("{ns}.delayed_tasks"),
        consumer_lease_ms: 2000,
        recovery_interval_ms: 500,
        ..RedisConfig::from_machinery(url, &config)
    };
    (config, redis)
}

async fn redis_broker(redis: &RedisConfig) -> RedisBroker {
    RedisBroker::connect(redis.clone())
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable")
}

async fn redis_pair(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let (config, redis) = config(&url, &ns);
    let broker = redis_broker(&redis).await;
    let backend = RedisBackend::connect(redis)
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

async fn redis_memory_pair(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let (mut config, redis) = config(&url, &ns);
    config.result_backend = "memory://".to_owned();
    let broker = redis_broker(&redis).await;
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(MemoryBackend::new()),
    })
}

async fn redis_memcache_pair(ns: String) -> Option<Env> {
    let url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;
    let memcache_url = machinery_testkit::env_url("MACHINERY_TEST_MEMCACHE_URL")?;
    let (mut config, redis) = config(&url, &ns);
    config.result_backend = memcache_url.clone();
    let broker = redis_broker(&redis).await;
    let backend = MemcacheBackend::connect(MemcacheConfig::from_machinery(&memcache_url, &config))
        .await
        .expect("MACHINERY_TEST_MEMCACHE_URL is set but memcached is unreachable");
    Some(Env {
        config,
        broker: Arc::new(broker),
        backend: Arc::new(backend),
    })
}

mod redis_x_redis {
    machinery_integration_tests::integration_suite!(super::redis_pair);
}

mod redis_x_memory {
    machinery_integration_tests::integration_suite!(super::redis_memory_pair);
}

mod redis_x_memcache {
    machinery_integration_tests::integration_suite!(super::redis_memcache_pair);
}
