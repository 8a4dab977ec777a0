//! The machinery conformance suite on Pub/Sub (Google's emulator in CI; needs
//! `MACHINERY_TEST_PUBSUB_URL` and `PUBSUB_EMULATOR_HOST`; unset = every case prints one
//! skipped line). Every case gets fresh topics and subscriptions.

mod common;

use std::sync::Arc;
use std::time::Duration;

use machinery_core::{Broker, DeadLetter, Result, async_trait};
use machinery_pubsub::{PubSubBroker, PubSubConfig};
use machinery_testkit::{BrokerSetup, BrokerUnderTest, Timing};

struct PubSubUnderTest {
    namespace: String,
    config: PubSubConfig,
    broker: Arc<PubSubBroker>,
}

#[async_trait]
impl BrokerUnderTest for PubSubUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(common::connect(self.config.clone()).await))
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.broker.publish_raw(queue, body).await.map(drop)
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        self.broker.dead_letters(queue).await
    }

    fn timing(&self) -> Timing {
        Timing {
            receive_timeout: Duration::from_secs(15),
            quiet_period: Duration::from_millis(1500),
            // Deadlines are whole seconds, rounded up, and the emulator redelivers on its
            // own schedule.
            delay_slack: Duration::from_millis(3000),
            // Dropped deliveries are given back at once (ModifyAckDeadline 0).
            redelivery_after_drop: Duration::from_secs(5),
        }
    }

    async fn teardown(&self) -> Result<()> {
        common::teardown(&self.broker, &self.namespace).await;
        Ok(())
    }
}

async fn broker(setup: BrokerSetup) -> Option<Box<dyn BrokerUnderTest>> {
    let url = common::url()?;
    let config = common::config(&url, &setup.namespace);
    let broker = common::connect(config.clone()).await;
    Some(Box::new(PubSubUnderTest {
        namespace: setup.namespace,
        config,
        broker: Arc::new(broker),
    }))
}

machinery_testkit::broker_conformance!(broker);
