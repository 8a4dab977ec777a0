//! Build brokers, backends and locks from URLs, through the table of drivers compiled in.

use std::sync::Arc;

use machinery_core::{
    Backend, Broker, Config, Driver, Error, Lock, MEMORY_DRIVER, Result, Server, redact_url,
};

/// The driver table: one line per driver crate, `"<cargo feature>" => <crate>`. The crate
/// exports `DRIVER: machinery_core::Driver`; the feature of the same name on this crate turns
/// it on (and `full` turns on all of them). See `docs/adding-a-driver.md`.
macro_rules! driver_table {
    ($($feature:literal => $krate:ident),* $(,)?) => {
        /// The drivers compiled into this build, in the order URLs are tried. The in-process
        /// driver (`memory://`, `eager`) is always first.
        pub static DRIVERS: &[Driver] = &[
            MEMORY_DRIVER,
            $(#[cfg(feature = $feature)] $krate::DRIVER,)*
        ];

        /// Cargo features of drivers that this build leaves out.
        const FEATURES_OFF: &[&str] = &[$(#[cfg(not(feature = $feature))] $feature,)*];
    };
}

driver_table! {
    "redis" => machinery_redis,
    "amqp" => machinery_amqp,
    "mongo" => machinery_mongo,
    "dynamodb" => machinery_dynamodb,
    "memcache" => machinery_memcache,
    "sqs" => machinery_sqs,
    "pubsub" => machinery_pubsub,
}

/// What is being connected, for picking the table column and for messages.
#[derive(Clone, Copy)]
enum Kind {
    Broker,
    Backend,
    Lock,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Broker => "broker",
            Kind::Backend => "result backend",
            Kind::Lock => "lock",
        }
    }

    fn has(self, driver: &Driver) -> bool {
        match self {
            Kind::Broker => driver.broker.is_some(),
            Kind::Backend => driver.backend.is_some(),
            Kind::Lock => driver.lock.is_some(),
        }
    }
}

fn scheme_of(url: &str) -> &str {
    let url = url.trim();
    match url.find("://") {
        Some(i) => &url[..i],
        None => url,
    }
}

/// The prefixes of `drivers` that can build a `kind`, comma-separated.
fn understood(drivers: &[Driver], kind: Kind) -> String {
    let prefixes: Vec<&str> = drivers
        .iter()
        .filter(|d| kind.has(d))
        .flat_map(|d| d.prefixes.iter().copied())
        .collect();
    prefixes.join(", ")
}

fn unknown(drivers: &[Driver], features_off: &[&str], kind: Kind, url: &str) -> Error {
    let mut hint = match drivers.iter().find(|d| d.accepts(url)) {
        Some(d) => format!(
            "the {} driver has no {}; this build's {} drivers understand: {}",
            d.name,
            kind.name(),
            kind.name(),
            understood(drivers, kind)
        ),
        None => format!(
            "no {} driver understands {}; this build understands: {}",
            kind.name(),
            redact_url(url),
            understood(drivers, kind)
        ),
    };
    if !features_off.is_empty() {
        hint.push_str(&format!(
            "; drivers not built in: {} (enable the cargo feature of that name on the `machinery` crate, or `full`)",
            features_off.join(", ")
        ));
    }
    Error::UnknownScheme {
        scheme: scheme_of(url).to_owned(),
        hint,
    }
}

/// The first driver of `drivers` that accepts `url` and can build a `kind`.
fn pick<'d>(drivers: &'d [Driver], kind: Kind, url: &str) -> Option<&'d Driver> {
    drivers.iter().find(|d| d.accepts(url) && kind.has(d))
}

async fn broker_in(
    drivers: &[Driver],
    off: &[&str],
    url: &str,
    c: &Config,
) -> Result<Arc<dyn Broker>> {
    match pick(drivers, Kind::Broker, url).and_then(|d| d.broker) {
        Some(connect) => connect(url, c).await,
        None => Err(unknown(drivers, off, Kind::Broker, url)),
    }
}

async fn backend_in(
    drivers: &[Driver],
    off: &[&str],
    url: &str,
    c: &Config,
) -> Result<Arc<dyn Backend>> {
    match pick(drivers, Kind::Backend, url).and_then(|d| d.backend) {
        Some(connect) => connect(url, c).await,
        None => Err(unknown(drivers, off, Kind::Backend, url)),
    }
}

async fn lock_in(drivers: &[Driver], off: &[&str], url: &str, c: &Config) -> Result<Arc<dyn Lock>> {
    if url.trim().is_empty() {
        return Ok(Arc::new(machinery_core::MemoryLock::new()));
    }
    match pick(drivers, Kind::Lock, url).and_then(|d| d.lock) {
        Some(connect) => connect(url, c).await,
        None => Err(unknown(drivers, off, Kind::Lock, url)),
    }
}

/// A broker for `url`, from the first driver of [`DRIVERS`] whose prefix `url` starts with:
/// `memory://` (or `eager`), `redis://` / `rediss://` / `redis+socket://` / `unix://`
/// (feature `redis`; a comma list of `host:port` is a Redis Cluster, or the Sentinels with
/// `redis.master_name` or `?master_name=NAME`), `amqp://` / `amqps://` (feature `amqp`).
///
/// # Errors
/// [`Error::UnknownScheme`] listing the prefixes this build understands (and the driver
/// features left out); the driver's connection error (URL redacted) when the server cannot
/// be reached.
pub async fn broker_from_url(url: &str, config: &Config) -> Result<Arc<dyn Broker>> {
    broker_in(DRIVERS, FEATURES_OFF, url, config).await
}

/// A result backend for `url`, picked from [`DRIVERS`] as [`broker_from_url`] does.
///
/// # Errors
/// As [`broker_from_url`].
pub async fn backend_from_url(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    backend_in(DRIVERS, FEATURES_OFF, url, config).await
}

/// A lock for periodic tasks: empty URL (in-process), or one picked from [`DRIVERS`] as
/// [`broker_from_url`] does (`memory://`, `redis://` ...).
///
/// # Errors
/// As [`broker_from_url`].
pub async fn lock_from_url(url: &str, config: &Config) -> Result<Arc<dyn Lock>> {
    lock_in(DRIVERS, FEATURES_OFF, url, config).await
}

/// The lock URL a server uses: `config.lock` when set, else the broker's URL when the
/// broker's driver has a lock, else empty (in-process).
fn default_lock_url(drivers: &[Driver], config: &Config) -> String {
    if !config.lock.is_empty() {
        return config.lock.clone();
    }
    match pick(drivers, Kind::Lock, &config.broker) {
        Some(_) => config.broker.clone(),
        None => String::new(),
    }
}

/// A server from a configuration: broker from `broker` (several URLs with
/// `multiple_broker_separator`), backend from `result_backend`, lock from `lock` (or, when
/// empty, the broker's technology if it has a lock, else in-process).
///
/// # Errors
/// As [`broker_from_url`].
pub async fn server_from_config(config: Config) -> Result<Server> {
    let broker = broker_from_url(&config.broker, &config).await?;
    let backend = backend_from_url(&config.result_backend, &config).await?;
    let lock = lock_from_url(&default_lock_url(DRIVERS, &config), &config).await?;
    let server = Server::new(config, broker, backend);
    server.set_lock(lock);
    Ok(server)
}

#[cfg(test)]
mod tests {
    use machinery_core::{BoxFuture, MemoryBroker};

    use super::*;

    #[tokio::test]
    async fn memory_and_unknown_schemes() {
        let c = Config::default();
        assert_eq!(
            broker_from_url("memory://", &c).await.unwrap().driver(),
            "memory"
        );
        assert_eq!(
            backend_from_url("eager", &c).await.unwrap().driver(),
            "memory"
        );
        let err = broker_from_url("kafka://u:secret@h/", &c)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("kafka"), "{err}");
        assert!(!err.contains("secret"), "{err}");
        assert!(err.contains("memory://, eager"), "{err}");
    }

    /// The error lists exactly the prefixes of the table, per kind: every driver's prefixes
    /// for a broker, only those of drivers with a lock for a lock.
    #[tokio::test]
    async fn unknown_scheme_lists_exactly_this_builds_prefixes() {
        let c = Config::default();
        for (kind, err) in [
            (Kind::Broker, broker_from_url("nope://h", &c).await.err()),
            (Kind::Backend, backend_from_url("nope://h", &c).await.err()),
            (Kind::Lock, lock_from_url("nope://h", &c).await.err()),
        ] {
            let err = err.expect("unknown scheme").to_string();
            let expected: Vec<&str> = DRIVERS
                .iter()
                .filter(|d| kind.has(d))
                .flat_map(|d| d.prefixes.iter().copied())
                .collect();
            assert!(
                err.contains(&format!("understands: {}", expected.join(", "))),
                "{err}"
            );
        }
        // An https URL is a driver's only by its prefix: SQS is no backend (Go's factory
        // would not take it either), whatever drivers are built in.
        let err = backend_from_url("https://sqs.eu-west-1.amazonaws.com/123/q", &c)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no result backend"), "{err}");
    }

    #[cfg(feature = "dynamodb")]
    #[test]
    fn go_dynamodb_urls_reach_the_dynamodb_driver() {
        for url in [
            "https://dynamodb.eu-west-1.amazonaws.com",
            "https://DynamoDB.eu-west-1.amazonaws.com/",
            "dynamodb://eu-west-1",
            "dynamodb+http://127.0.0.1:4566",
        ] {
            assert_eq!(
                pick(DRIVERS, Kind::Backend, url).unwrap().name,
                "dynamodb",
                "{url}"
            );
        }
        assert!(
            pick(
                DRIVERS,
                Kind::Backend,
                "https://sqs.eu-west-1.amazonaws.com"
            )
            .is_none()
        );
        assert!(
            pick(
                DRIVERS,
                Kind::Broker,
                "https://dynamodb.eu-west-1.amazonaws.com"
            )
            .is_none()
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn redis_lock_takes_every_redis_prefix_the_broker_takes() {
        let redis = DRIVERS.iter().find(|d| d.name == "redis").unwrap();
        assert!(redis.lock.is_some() && redis.broker.is_some());
        for url in [
            "unix:///tmp/r.sock",
            "redis+socket:///tmp/r.sock",
            "rediss://h",
        ] {
            assert_eq!(pick(DRIVERS, Kind::Lock, url).unwrap().name, "redis");
            assert_eq!(pick(DRIVERS, Kind::Broker, url).unwrap().name, "redis");
        }
        let c = Config {
            broker: "unix:///tmp/r.sock".into(),
            ..Config::default()
        };
        assert_eq!(default_lock_url(DRIVERS, &c), "unix:///tmp/r.sock");
    }

    #[cfg(feature = "pubsub")]
    #[test]
    fn gcppubsub_urls_reach_the_pubsub_broker_only() {
        let d = pick(DRIVERS, Kind::Broker, "gcppubsub://my-project/my_sub").unwrap();
        assert_eq!(d.name, "pubsub");
        assert!(pick(DRIVERS, Kind::Backend, "gcppubsub://my-project/my_sub").is_none());
        assert!(pick(DRIVERS, Kind::Lock, "gcppubsub://my-project/my_sub").is_none());
    }

    #[cfg(feature = "pubsub")]
    #[tokio::test]
    async fn a_bad_gcppubsub_url_is_a_config_error_before_any_connection() {
        let err = broker_from_url("gcppubsub://only-a-project", &Config::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config { key, .. } if key == "broker"),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("gcppubsub://<project>/<subscription>"),
            "{err}"
        );
    }

    #[cfg(feature = "amqp")]
    #[cfg(feature = "redis")]
    #[tokio::test]
    async fn malformed_sentinel_and_cluster_urls_are_clear_config_errors() {
        let mut sentinel = Config::default();
        sentinel.redis.master_name = "mymaster".to_owned();
        sentinel.redis.cluster_mode = true;
        for (url, config, says) in [
            (
                "redis://s1:26379?master_name=",
                Config::default(),
                "master_name",
            ),
            ("redis://s1:26379,s2:26379", sentinel.clone(), "not both"),
            ("redis+socket:///tmp/r.sock", sentinel, "Sentinel needs"),
            ("redis://h1:7000,h2:7001/2", Config::default(), "database 0"),
            (
                "redis://h1:7000,,h2:7001",
                Config::default(),
                "missing host",
            ),
        ] {
            let err = broker_from_url(url, &config)
                .await
                .expect_err(url)
                .to_string();
            assert!(err.contains(says), "{url}: {err}");
        }
    }

    #[tokio::test]
    async fn a_driver_without_a_lock_says_so() {
        let err = lock_from_url("amqp://guest:guest@localhost/", &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("the amqp driver has no lock"), "{err}");
        let c = Config {
            broker: "amqp://guest:guest@localhost/".into(),
            ..Config::default()
        };
        assert_eq!(default_lock_url(DRIVERS, &c), "");
    }

    fn stub_broker<'a>(
        url: &'a str,
        _config: &'a Config,
    ) -> BoxFuture<'a, Result<Arc<dyn Broker>>> {
        let queue = url.trim_start_matches("stub://").to_owned();
        Box::pin(
            async move { Ok(Arc::new(MemoryBroker::with_default_queue(queue)) as Arc<dyn Broker>) },
        )
    }

    /// A driver that has only a broker, as `docs/adding-a-driver.md` adds it.
    const STUB: Driver = Driver::new("stub", &["stub://"]).with_broker(stub_broker);

    /// A stub entry in the table is all a new driver needs: its URLs reach it, its prefix is
    /// listed in errors for the kinds it has and only those.
    #[tokio::test]
    async fn a_stub_table_entry_works() {
        let table = [MEMORY_DRIVER, STUB];
        let c = Config::default();
        let broker = broker_in(&table, &[], "stub://jobs", &c).await.unwrap();
        assert_eq!(broker.default_routing_key(), "jobs");
        let err = broker_in(&table, &[], "nope://", &c)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.ends_with("understands: memory://, eager, stub://"),
            "{err}"
        );
        let err = backend_in(&table, &[], "stub://jobs", &c)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the stub driver has no result backend"),
            "{err}"
        );
        assert!(err.ends_with("understand: memory://, eager"), "{err}");
        let err = backend_in(&table, &["kafka"], "nope://", &c)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("drivers not built in: kafka"), "{err}");
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn disabled_feature_is_named() {
        let err = broker_from_url("redis://localhost:6379", &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("drivers not built in: redis"), "{err}");
        assert!(err.contains("cargo feature"), "{err}");
    }

    #[cfg(not(feature = "amqp"))]
    #[tokio::test]
    async fn disabled_amqp_feature_is_named() {
        let err = backend_from_url("amqp://guest:guest@localhost/", &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("amqp"), "{err}");
        assert!(err.contains("cargo feature"), "{err}");
    }
}
