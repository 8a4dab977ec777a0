//! The shared conformance suite on a MongoDB server (needs `MACHINERY_TEST_MONGODB_URL`;
//! CI runs it on SecantusDB). Each case gets its own database.

mod common;

use std::sync::Arc;

use machinery_core::Backend;
use machinery_mongo::MongoBackend;
use machinery_testkit::BackendSetup;

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    let url = common::url()?;
    let expire = setup
        .results_expire_in
        .map_or(0, |d| d.as_secs_f64().ceil() as i64);
    let config = machinery_mongo::MongoConfig {
        results_expire_in: expire,
        ..common::config(&url, &setup.namespace)
    };
    let backend = MongoBackend::connect(config)
        .await
        .expect("MACHINERY_TEST_MONGODB_URL is set but MongoDB is unreachable");
    Some(Arc::new(backend))
}

machinery_testkit::backend_conformance!(backend);
