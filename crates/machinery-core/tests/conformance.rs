//! The whole conformance suite on the memory broker and backend.

use std::sync::Arc;

use machinery_core::{
    Backend, Broker, DeadLetter, MemoryBackend, MemoryBroker, Result, async_trait,
};
use machinery_testkit::{BackendSetup, BrokerSetup, BrokerUnderTest, Timing};

struct MemoryUnderTest {
    broker: MemoryBroker,
}

#[async_trait]
impl BrokerUnderTest for MemoryUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::new(self.broker.clone())
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        // Clones share the queues, as two processes share a server.
        Ok(Arc::new(self.broker.clone()))
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.broker.inject_raw(queue, body)
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        Ok(self.broker.dead_letters(queue))
    }

    fn timing(&self) -> Timing {
        Timing::in_process()
    }

    async fn teardown(&self) -> Result<()> {
        Ok(())
    }
}

async fn broker(setup: BrokerSetup) -> Option<Box<dyn BrokerUnderTest>> {
    Some(Box::new(MemoryUnderTest {
        broker: MemoryBroker::with_default_queue(setup.default_queue()),
    }))
}

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    Some(Arc::new(match setup.results_expire_in {
        Some(ttl) => MemoryBackend::with_ttl(ttl),
        None => MemoryBackend::new(),
    }))
}

machinery_testkit::broker_conformance!(broker);
machinery_testkit::backend_conformance!(backend);
