//! The shared backend conformance suite on DynamoDB (moto in CI; needs
//! `MACHINERY_TEST_DYNAMODB_URL`). Every case gets its own two tables.

mod common;

use std::sync::Arc;

use machinery_core::Backend;
use machinery_testkit::BackendSetup;

async fn backend(setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    let url = common::url()?;
    let mut config = common::config(&url, &setup.namespace);
    if let Some(d) = setup.results_expire_in {
        config.results_expire_in = d.as_secs_f64().ceil() as i64;
    }
    let backend = machinery_dynamodb::DynamoBackend::connect(config)
        .await
        .unwrap_or_else(|e| panic!("{} is set but DynamoDB is unusable: {e}", common::URL_VAR));
    Some(Arc::new(backend))
}

machinery_testkit::backend_conformance!(backend);
