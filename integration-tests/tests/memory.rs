//! Every scenario on memory broker x memory backend (no server needed).

use std::sync::Arc;

use machinery::{Config, MemoryBackend, MemoryBroker};
use machinery_integration_tests::Env;

async fn memory_pair(ns: String) -> Option<Env> {
    let config = Config {
        broker: "memory://".into(),
        result_backend: "memory://".into(),
        default_queue: format!("{ns}_tasks"),
        ..Config::default()
    };
    Some(Env {
        broker: Arc::new(MemoryBroker::with_default_queue(
            config.default_queue.clone(),
        )),
        backend: Arc::new(MemoryBackend::new()),
        config,
    })
}

machinery_integration_tests::integration_suite!(memory_pair);
