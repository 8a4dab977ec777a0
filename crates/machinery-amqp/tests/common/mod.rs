//! Helpers shared by the AMQP integration tests: configuration per namespace, raw lapin
//! access for declaring and cleaning up as another client would.

#![allow(dead_code)]

use std::collections::BTreeMap;

use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
use lapin::{Channel, Connection, ConnectionProperties};
use machinery_amqp::AmqpConfig;

/// The environment variable naming the RabbitMQ the tests use.
pub const URL_VAR: &str = "MACHINERY_TEST_AMQP_URL";

/// Queue names the conformance cases use (`{ns}_{name}`), for clean-up.
pub const SUITE_QUEUES: &[&str] = &[
    "tasks",
    "roundtrip",
    "ack",
    "nack",
    "requeue_delay",
    "unacked",
    "eta",
    "pending",
    "delayed",
    "competing",
    "fifo",
    "malformed",
    "purge",
    "purge_other",
];

/// A broker configuration isolated in namespace `ns`: its own exchange, default queue =
/// binding key (no orphan queue), task queues that delete themselves 10 minutes after their
/// last use (so an aborted run leaves nothing for long).
pub fn broker_config(url: &str, ns: &str) -> AmqpConfig {
    let mut args = BTreeMap::new();
    args.insert("x-expires".to_owned(), serde_json::json!(600_000));
    AmqpConfig {
        url: url.to_owned(),
        default_queue: format!("{ns}_tasks"),
        binding_key: format!("{ns}_tasks"),
        exchange: format!("{ns}_exchange"),
        queue_declare_args: args,
        ..AmqpConfig::default()
    }
}

/// A raw connection and channel, as a foreign client (Go) would have.
pub async fn raw(url: &str) -> (Connection, Channel) {
    let conn = Connection::connect(url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but RabbitMQ is unreachable: {e}"));
    let ch = conn.create_channel().await.expect("open a channel");
    (conn, ch)
}

/// Delete queues and exchanges by name, ignoring missing ones.
pub async fn delete_all(url: &str, queues: &[String], exchanges: &[String]) {
    let (conn, _) = raw(url).await;
    for q in queues {
        // A 404 closes the channel: one channel per deletion.
        let ch = conn.create_channel().await.expect("open a channel");
        let _ = ch
            .queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for x in exchanges {
        let ch = conn.create_channel().await.expect("open a channel");
        let _ = ch
            .exchange_delete(x.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
    let _ = conn.close(200, "bye".into()).await;
}

/// Every queue and exchange the conformance suite can create in namespace `ns`.
pub async fn teardown_namespace(url: &str, ns: &str) {
    let mut queues = Vec::new();
    for name in SUITE_QUEUES {
        queues.push(format!("{ns}_{name}"));
        queues.push(format!("{ns}_{name}.dead"));
    }
    delete_all(
        url,
        &queues,
        &[format!("{ns}_exchange"), format!("{ns}_exchange.dead")],
    )
    .await;
}

/// Every log line of this test binary at INFO and above (lapin's included), as text: installs a
/// global subscriber writing into memory on first use. Tests of one binary run in parallel,
/// so a test looks only for lines naming its own queues.
pub fn logs() -> String {
    use std::sync::{Mutex, OnceLock};
    static BUF: OnceLock<&'static Mutex<Vec<u8>>> = OnceLock::new();
    let buf = *BUF.get_or_init(|| {
        let buf: &'static Mutex<Vec<u8>> = Box::leak(Box::new(Mutex::new(Vec::new())));
        let writer = move || Sink(buf);
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_ansi(false)
            .with_writer(writer)
            .try_init()
            .expect("install the log capture");
        buf
    });
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
}

struct Sink(&'static std::sync::Mutex<Vec<u8>>);

impl std::io::Write for Sink {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
