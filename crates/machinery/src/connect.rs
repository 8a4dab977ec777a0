//! Build brokers, backends and locks from URLs, by scheme.

use std::sync::Arc;

use machinery_core::{
    Backend, Broker, Config, Error, Lock, MemoryBackend, MemoryBroker, MemoryLock, Result, Server,
    redact_url,
};

fn scheme_of(url: &str) -> &str {
    match url.find("://") {
        Some(i) => &url[..i],
        None => url.trim(),
    }
}

#[cfg(not(all(
    feature = "redis",
    feature = "amqp",
    feature = "mongo",
    feature = "dynamodb",
    feature = "memcache",
    feature = "sqs"
)))]
fn feature_off(scheme: &str, feature: &str) -> Error {
    Error::UnknownScheme {
        scheme: scheme.to_owned(),
        hint: format!(
            "this build has no {feature} driver; enable the `{feature}` cargo feature of the `machinery` crate (or `full`)"
        ),
    }
}

fn not_available(scheme: &str, what: &str) -> Error {
    Error::UnknownScheme {
        scheme: scheme.to_owned(),
        hint: format!("the {what} driver is not available in machinery-rs yet"),
    }
}

fn unknown(scheme: &str, kind: &str, url: &str) -> Error {
    Error::UnknownScheme {
        scheme: scheme.to_owned(),
        hint: format!(
            "no {kind} driver understands {}; known schemes: memory://, eager, redis://, rediss://, redis+socket://, amqp://, amqps://, mongodb://, mongodb+srv://, https://dynamodb.<region>.amazonaws.com, dynamodb://, dynamodb+http(s)://, memcache://, https://sqs.<region>.amazonaws.com/<account>, sqs+http(s)://",
            redact_url(url)
        ),
    }
}

/// A broker for `url`: `memory://` (or `eager`), `redis://` / `rediss://` /
/// `redis+socket://` (feature `redis`), `amqp://` / `amqps://` (feature `amqp`).
///
/// # Errors
/// [`Error::UnknownScheme`] naming the cargo feature to enable when the driver is not built
/// in; the driver's connection error (URL redacted) when the server cannot be reached.
pub async fn broker_from_url(url: &str, config: &Config) -> Result<Arc<dyn Broker>> {
    let scheme = scheme_of(url);
    match scheme {
        "memory" | "eager" => Ok(Arc::new(MemoryBroker::with_default_queue(
            config.default_queue.clone(),
        ))),
        "redis" | "rediss" | "redis+socket" | "unix" => redis_broker(url, config).await,
        "amqp" | "amqps" => amqp_broker(url, config).await,
        // Go: a broker starting with `https://sqs` is the SQS queue URL prefix; `sqs+http://`
        // names a local SQS (moto, LocalStack) the same way.
        "https" | "http" if url.starts_with("https://sqs") || url.starts_with("http://sqs") => {
            sqs_broker(url, config).await
        }
        "sqs+http" | "sqs+https" => sqs_broker(url, config).await,
        "gcppubsub" => Err(not_available(scheme, "gcp-pubsub")),
        _ => Err(unknown(scheme, "broker", url)),
    }
}

/// A result backend for `url`: `memory://` (or `eager`), `redis://` ... (feature `redis`),
/// `amqp://` ... (feature `amqp`), `mongodb://` / `mongodb+srv://` (feature `mongo`),
/// Go's `https://dynamodb.<region>.amazonaws.com`, `dynamodb://` and
/// `dynamodb+http://host:port` (feature `dynamodb`), `memcache://h1:p1[,h2:p2...]` (feature
/// `memcache`).
///
/// # Errors
/// As [`broker_from_url`].
pub async fn backend_from_url(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    let scheme = scheme_of(url);
    match scheme {
        "memory" | "eager" => Ok(Arc::new(MemoryBackend::with_ttl(config.results_ttl()))),
        "redis" | "rediss" | "redis+socket" | "unix" => redis_backend(url, config).await,
        "amqp" | "amqps" => amqp_backend(url, config).await,
        "memcache" => memcache_backend(url, config).await,
        "mongodb" | "mongodb+srv" => mongo_backend(url, config).await,
        "dynamodb" | "dynamodb+http" | "dynamodb+https" => dynamodb_backend(url, config).await,
        "https" | "http" if is_dynamodb_url(url) => dynamodb_backend(url, config).await,
        _ => Err(unknown(scheme, "result backend", url)),
    }
}

/// A lock for periodic tasks: `memory://` / empty (in-process), `redis://` ... (feature
/// `redis`).
///
/// # Errors
/// As [`broker_from_url`].
pub async fn lock_from_url(url: &str, config: &Config) -> Result<Arc<dyn Lock>> {
    let _ = config;
    let scheme = scheme_of(url);
    match scheme {
        "" | "memory" | "eager" => Ok(Arc::new(MemoryLock::new())),
        "redis" | "rediss" | "redis+socket" | "unix" => redis_lock(url, config).await,
        _ => Err(unknown(scheme, "lock", url)),
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
    let lock_url = if config.lock.is_empty() {
        match scheme_of(&config.broker) {
            "redis" | "rediss" | "redis+socket" => config.broker.clone(),
            _ => String::new(),
        }
    } else {
        config.lock.clone()
    };
    let lock = lock_from_url(&lock_url, &config).await?;
    let server = Server::new(config, broker, backend);
    server.set_lock(lock);
    Ok(server)
}

#[cfg(feature = "redis")]
async fn redis_broker(url: &str, config: &Config) -> Result<Arc<dyn Broker>> {
    Ok(Arc::new(
        machinery_redis::RedisBroker::connect(machinery_redis::RedisConfig::from_machinery(
            url, config,
        ))
        .await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn redis_broker(url: &str, _config: &Config) -> Result<Arc<dyn Broker>> {
    Err(feature_off(scheme_of(url), "redis"))
}

#[cfg(feature = "redis")]
async fn redis_backend(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        machinery_redis::RedisBackend::connect(machinery_redis::RedisConfig::from_machinery(
            url, config,
        ))
        .await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn redis_backend(url: &str, _config: &Config) -> Result<Arc<dyn Backend>> {
    Err(feature_off(scheme_of(url), "redis"))
}

#[cfg(feature = "redis")]
async fn redis_lock(url: &str, config: &Config) -> Result<Arc<dyn Lock>> {
    Ok(Arc::new(
        machinery_redis::RedisLock::connect(machinery_redis::RedisConfig::from_machinery(
            url, config,
        ))
        .await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn redis_lock(url: &str, _config: &Config) -> Result<Arc<dyn Lock>> {
    Err(feature_off(scheme_of(url), "redis"))
}

#[cfg(feature = "mongo")]
async fn mongo_backend(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        machinery_mongo::MongoBackend::connect(machinery_mongo::MongoConfig::from_machinery(
            url, config,
        ))
        .await?,
    ))
}

#[cfg(not(feature = "mongo"))]
async fn mongo_backend(url: &str, _config: &Config) -> Result<Arc<dyn Backend>> {
    Err(feature_off(scheme_of(url), "mongo"))
}

#[cfg(feature = "sqs")]
async fn sqs_broker(url: &str, config: &Config) -> Result<Arc<dyn Broker>> {
    Ok(Arc::new(
        machinery_sqs::SqsBroker::connect(machinery_sqs::SqsConfig::from_machinery(url, config))
            .await?,
    ))
}

#[cfg(not(feature = "sqs"))]
async fn sqs_broker(url: &str, _config: &Config) -> Result<Arc<dyn Broker>> {
    Err(feature_off(scheme_of(url), "sqs"))
}

#[cfg(feature = "amqp")]
async fn amqp_broker(url: &str, config: &Config) -> Result<Arc<dyn Broker>> {
    Ok(Arc::new(
        machinery_amqp::AmqpBroker::connect(machinery_amqp::AmqpConfig::from_machinery(
            url, config,
        ))
        .await?,
    ))
}

#[cfg(not(feature = "amqp"))]
async fn amqp_broker(url: &str, _config: &Config) -> Result<Arc<dyn Broker>> {
    Err(feature_off(scheme_of(url), "amqp"))
}

#[cfg(feature = "amqp")]
async fn amqp_backend(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        machinery_amqp::AmqpBackend::connect(machinery_amqp::AmqpConfig::from_machinery(
            url, config,
        ))
        .await?,
    ))
}

#[cfg(not(feature = "amqp"))]
async fn amqp_backend(url: &str, _config: &Config) -> Result<Arc<dyn Backend>> {
    Err(feature_off(scheme_of(url), "amqp"))
}

/// Go picks its DynamoDB backend for any result backend starting with `https://dynamodb`.
fn is_dynamodb_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, r)| r);
    rest.get(..8)
        .is_some_and(|h| h.eq_ignore_ascii_case("dynamodb"))
}

#[cfg(feature = "memcache")]
async fn memcache_backend(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        machinery_memcache::MemcacheBackend::connect(
            machinery_memcache::MemcacheConfig::from_machinery(url, config),
        )
        .await?,
    ))
}

#[cfg(not(feature = "memcache"))]
async fn memcache_backend(url: &str, _config: &Config) -> Result<Arc<dyn Backend>> {
    Err(feature_off(scheme_of(url), "memcache"))
}

#[cfg(feature = "dynamodb")]
async fn dynamodb_backend(url: &str, config: &Config) -> Result<Arc<dyn Backend>> {
    Ok(Arc::new(
        machinery_dynamodb::DynamoBackend::connect(
            machinery_dynamodb::DynamoConfig::from_machinery(url, config),
        )
        .await?,
    ))
}

#[cfg(not(feature = "dynamodb"))]
async fn dynamodb_backend(url: &str, _config: &Config) -> Result<Arc<dyn Backend>> {
    Err(feature_off(scheme_of(url), "dynamodb"))
}

#[cfg(test)]
mod tests {
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
        let err = broker_from_url("gcppubsub://h/q", &c)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("not available"), "{err}");
    }

    #[cfg(not(feature = "memcache"))]
    #[tokio::test]
    async fn disabled_memcache_feature_is_named() {
        let err = backend_from_url("memcache://127.0.0.1:11211", &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("`memcache` cargo feature"), "{err}");
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn disabled_feature_is_named() {
        let err = broker_from_url("redis://localhost:6379", &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("`redis` cargo feature"), "{err}");
    }

    #[cfg(not(feature = "dynamodb"))]
    #[tokio::test]
    async fn disabled_dynamodb_feature_is_named() {
        for url in [
            "https://dynamodb.us-east-1.amazonaws.com",
            "dynamodb+http://127.0.0.1:4566",
        ] {
            let err = backend_from_url(url, &Config::default())
                .await
                .unwrap_err()
                .to_string();
            assert!(err.contains("`dynamodb` cargo feature"), "{err}");
        }
    }

    #[test]
    fn go_dynamodb_urls_are_recognised() {
        assert!(is_dynamodb_url("https://dynamodb.eu-west-1.amazonaws.com"));
        assert!(is_dynamodb_url("https://DynamoDB.eu-west-1.amazonaws.com/"));
        assert!(!is_dynamodb_url("https://sqs.eu-west-1.amazonaws.com"));
        assert!(!is_dynamodb_url("https://dynamo"));
    }

    #[cfg(not(feature = "amqp"))]
    #[tokio::test]
    async fn disabled_amqp_feature_is_named() {
        let err = backend_from_url("amqp://guest:guest@localhost/", &Config::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("`amqp` cargo feature"), "{err}");
    }

    #[cfg(not(feature = "sqs"))]
    #[tokio::test]
    async fn disabled_sqs_feature_is_named() {
        let err = broker_from_url(
            "https://sqs.us-east-1.amazonaws.com/123456789012",
            &Config::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("`sqs` cargo feature"), "{err}");
    }

    #[cfg(feature = "sqs")]
    #[tokio::test]
    async fn sqs_urls_select_the_sqs_broker() {
        for url in [
            "https://sqs.us-east-1.amazonaws.com/123456789012",
            "sqs+http://127.0.0.1:4566/123456789012",
        ] {
            let b = broker_from_url(url, &Config::default()).await.unwrap();
            assert_eq!(b.driver(), "sqs", "{url}");
            assert_eq!(b.default_routing_key(), "machinery_tasks");
        }
    }

    #[cfg(not(feature = "mongo"))]
    #[tokio::test]
    async fn disabled_mongo_feature_is_named() {
        let err = backend_from_url(
            "mongodb+srv://u:secret@cluster0.example/",
            &Config::default(),
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("`mongo` cargo feature"), "{err}");
        assert!(!err.contains("secret"), "{err}");
    }
}
