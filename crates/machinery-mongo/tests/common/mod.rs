//! Shared helpers of the MongoDB driver tests (need `MACHINERY_TEST_MONGODB_URL`).

#![allow(dead_code)]

use machinery_mongo::{MongoBackend, MongoConfig};

/// The variable `scripts/services.sh` writes.
pub const URL_VAR: &str = "MACHINERY_TEST_MONGODB_URL";

/// The server URL, or `None` (test skipped) when it is not set outside CI.
pub fn url() -> Option<String> {
    machinery_testkit::env_url(URL_VAR)
}

/// A config for a fresh database named `namespace`, failing fast when the server is gone.
pub fn config(url: &str, namespace: &str) -> MongoConfig {
    MongoConfig {
        database: namespace.to_owned(),
        server_selection_timeout_ms: 5000,
        ..MongoConfig::from_url(url)
    }
}

/// A backend on a fresh database.
pub async fn backend(url: &str, namespace: &str) -> MongoBackend {
    MongoBackend::connect(config(url, namespace))
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but MongoDB is unreachable: {e}"))
}
