//! Shared by the DynamoDB test files: the server URL and per-case tables.

#![allow(dead_code)]

use machinery_dynamodb::{DynamoBackend, DynamoConfig};

/// The variable naming the DynamoDB endpoint (moto in CI), e.g.
/// `dynamodb+http://test:test@127.0.0.1:4566?region=us-east-1`.
pub const URL_VAR: &str = "MACHINERY_TEST_DYNAMODB_URL";

/// The URL, or `None` (skipped) when unset outside CI.
pub fn url() -> Option<String> {
    machinery_testkit::env_url(URL_VAR)
}

/// A config whose two tables are `<namespace>_task_states` / `<namespace>_group_metas`,
/// created at connect.
pub fn config(url: &str, namespace: &str) -> DynamoConfig {
    DynamoConfig {
        task_states_table: format!("{namespace}_task_states"),
        group_metas_table: format!("{namespace}_group_metas"),
        create_tables: true,
        connect_timeout_ms: 2000,
        request_timeout_ms: 30_000,
        ..DynamoConfig::from_url(url)
    }
}

/// A connected backend on fresh tables.
pub async fn backend(url: &str, namespace: &str) -> DynamoBackend {
    DynamoBackend::connect(config(url, namespace))
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but DynamoDB is unusable: {e}"))
}

/// A fresh namespace (a letter, then letters and digits).
pub fn namespace() -> String {
    machinery_testkit::BackendSetup::random().namespace
}
