//! The machinery conformance suite on a real RabbitMQ (needs MACHINERY_TEST_AMQP_URL, e.g.
//! `amqp://guest:guest@127.0.0.1:5672/%2f`; unset = every case prints one skipped line).

mod common;

use std::sync::Arc;

use machinery_amqp::{AmqpBackend, AmqpBroker, AmqpConfig};
use machinery_core::{Backend, Broker, DeadLetter, Result, async_trait};
use machinery_testkit::{BackendSetup, BrokerSetup, BrokerUnderTest, Timing};

struct AmqpUnderTest {
    url: String,
    namespace: String,
    config: AmqpConfig,
    broker: Arc<AmqpBroker>,
}

#[async_trait]
impl BrokerUnderTest for AmqpUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(AmqpBroker::connect(self.config.clone()).await?))
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        // A direct exchange routes by queue name, as Go's producer does.
        self.broker.publish_raw(queue, body).await
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        self.broker.dead_letters(queue).await
    }

    fn timing(&self) -> Timing {
        Timing::default()
    }

    async fn teardown(&self) -> Result<()> {
        common::teardown_namespace(&self.url, &self.namespace).await;
        Ok(())
    }
}

async fn broker(setup: BrokerSetup) -> Option<Box<dyn BrokerUnderTest>> {
    let url = machinery_testkit::env_url(common::URL_VAR)?;
    let config = common::broker_config(&url, &setup.namespace);
    let broker = AmqpBroker::connect(config.clone())
        .await
        .expect("MACHINERY_TEST_AMQP_URL is set but RabbitMQ is unreachable");
    Some(Box::new(AmqpUnderTest {
        url,
        namespace: setup.namespace,
        config,
        broker: Arc::new(broker),
    }))
}

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    let url = machinery_testkit::env_url(common::URL_VAR)?;
    let results_expire_in = setup
        .results_expire_in
        .map_or(600, |d| d.as_secs_f64().ceil() as i64);
    let config = AmqpConfig {
        url,
        // One shared exchange: result queues are named by random UUIDs, and a durable
        // exchange per case would outlive it.
        exchange: "machinery_conformance_results".into(),
        results_expire_in,
        ..AmqpConfig::default()
    };
    let backend = AmqpBackend::connect(config)
        .await
        .expect("MACHINERY_TEST_AMQP_URL is set but RabbitMQ is unreachable");
    Some(Arc::new(backend))
}

machinery_testkit::broker_conformance!(broker);
machinery_testkit::backend_conformance!(backend);
