//! The shared conformance suite on a real Redis (needs `MACHINERY_TEST_REDIS_URL`).

mod common;

use std::sync::Arc;
use std::time::Duration;

use machinery_core::{Backend, Broker, DeadLetter, Result, async_trait};
use machinery_redis::{RedisBackend, RedisBroker, RedisConfig};
use machinery_testkit::{BackendSetup, BrokerSetup, BrokerUnderTest, Timing};
use redis::AsyncCommands;

struct RedisUnderTest {
    namespace: String,
    config: RedisConfig,
    broker: Arc<RedisBroker>,
}

#[async_trait]
impl BrokerUnderTest for RedisUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(RedisBroker::connect(self.config.clone()).await?))
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        let mut conn = common::raw(&self.config.url).await;
        let _: () = conn.rpush(queue, body).await.expect("rpush");
        Ok(())
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        self.broker.dead_letters(queue).await
    }

    fn timing(&self) -> Timing {
        // The lease is 1 s here; a dropped stream gives its messages back at once anyway.
        Timing {
            redelivery_after_drop: Duration::from_secs(3),
            ..Timing::default()
        }
    }

    async fn teardown(&self) -> Result<()> {
        self.broker.close().await?;
        let mut conn = common::raw(&self.config.url).await;
        common::delete_prefix(&mut conn, &self.namespace).await;
        Ok(())
    }
}

async fn broker(setup: BrokerSetup) -> Option<Box<dyn BrokerUnderTest>> {
    let url = machinery_testkit::env_url(common::URL_VAR)?;
    let config = RedisConfig {
        default_queue: setup.default_queue(),
        ..common::config(&url, &setup.namespace)
    };
    let broker = RedisBroker::connect(config.clone())
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    Some(Box::new(RedisUnderTest {
        namespace: setup.namespace,
        config,
        broker: Arc::new(broker),
    }))
}

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    let url = machinery_testkit::env_url(common::URL_VAR)?;
    let expire = setup
        .results_expire_in
        .map_or(0, |d| d.as_secs_f64().ceil() as i64);
    let config = RedisConfig {
        results_expire_in: expire,
        ..RedisConfig::from_url(url)
    };
    let backend = RedisBackend::connect(config)
        .await
        .expect("MACHINERY_TEST_REDIS_URL is set but redis is unreachable");
    Some(Arc::new(backend))
}

machinery_testkit::broker_conformance!(broker);
machinery_testkit::backend_conformance!(backend);
