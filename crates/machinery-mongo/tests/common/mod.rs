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

/// A plain client on the test server, for reading and writing documents the way Go (or a
/// person with a shell) would. Call `shutdown` on it at the end.
pub async fn raw_client(url: &str) -> mongodb::Client {
    let mut options = mongodb::options::ClientOptions::parse(url)
        .await
        .expect("parse the test url");
    options.server_selection_timeout = Some(std::time::Duration::from_secs(5));
    mongodb::Client::with_options(options).expect("a client")
}

/// A fixture of `testdata/go/mongodb/` (canonical Extended JSON) as BSON.
pub fn go_bson(value: serde_json::Value) -> mongodb::bson::Bson {
    mongodb::bson::Bson::try_from(value).expect("canonical extended json")
}

/// The BSON type of every field, recursively, as `path: type` lines (field order ignored),
/// so two documents with the same layout compare equal whatever their values.
pub fn layout(d: &mongodb::bson::Document) -> Vec<String> {
    fn walk(prefix: &str, b: &mongodb::bson::Bson, out: &mut Vec<String>) {
        out.push(format!("{prefix}: {:?}", b.element_type()));
        match b {
            mongodb::bson::Bson::Document(d) => {
                for (k, v) in d {
                    walk(&format!("{prefix}.{k}"), v, out);
                }
            }
            mongodb::bson::Bson::Array(items) => {
                for (i, v) in items.iter().enumerate() {
                    walk(&format!("{prefix}[{i}]"), v, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    for (k, v) in d {
        walk(k, v, &mut out);
    }
    out.sort();
    out
}
