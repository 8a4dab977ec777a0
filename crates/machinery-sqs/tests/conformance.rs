//! The machinery conformance suite on SQS (moto in CI; needs `MACHINERY_TEST_SQS_URL`, a
//! queue URL prefix such as `http://127.0.0.1:4566/123456789012`; unset = every case prints
//! one skipped line).

mod common;

use std::sync::Arc;
use std::time::Duration;

use machinery_core::{Broker, DeadLetter, Result, async_trait};
use machinery_sqs::{SqsBroker, SqsConfig};
use machinery_testkit::{BrokerSetup, BrokerUnderTest, Timing};

struct SqsUnderTest {
    namespace: String,
    config: SqsConfig,
    broker: Arc<SqsBroker>,
}

#[async_trait]
impl BrokerUnderTest for SqsUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::new(common::connect(self.config.clone()).await))
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        // SQS bodies are text: the suite sends only UTF-8 here (text_bodies_only).
        let body = std::str::from_utf8(body).expect("an SQS body is text");
        self.broker.send_raw(queue, body).await
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        self.broker.dead_letters(queue).await
    }

    fn text_bodies_only(&self) -> bool {
        true
    }

    fn timing(&self) -> Timing {
        Timing {
            receive_timeout: Duration::from_secs(15),
            quiet_period: Duration::from_millis(1500),
            // DelaySeconds and visibility are whole seconds, rounded up, plus a poll.
            delay_slack: Duration::from_millis(2500),
            // Dropped deliveries are given back at once; the receive loop of the dropped
            // stream finishes its (1 s) poll first.
            redelivery_after_drop: Duration::from_secs(6),
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
    Some(Box::new(SqsUnderTest {
        namespace: setup.namespace,
        config,
        broker: Arc::new(broker),
    }))
}

machinery_testkit::broker_conformance!(broker);
