//! The shared conformance suite on a real memcached (needs `MACHINERY_TEST_MEMCACHE_URL`).

mod common;

use std::sync::Arc;

use machinery_core::Backend;
use machinery_memcache::{MemcacheBackend, MemcacheConfig};
use machinery_testkit::BackendSetup;

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    let url = machinery_testkit::env_url(common::URL_VAR)?;
    let expire = setup
        .results_expire_in
        .map_or(0, |d| d.as_secs_f64().ceil() as i64);
    let config = MemcacheConfig {
        results_expire_in: expire,
        ..MemcacheConfig::from_url(url)
    };
    let backend = MemcacheBackend::connect(config)
        .await
        .expect("MACHINERY_TEST_MEMCACHE_URL is set but memcached is unreachable");
    Some(Arc::new(backend))
}

machinery_testkit::backend_conformance!(backend);
