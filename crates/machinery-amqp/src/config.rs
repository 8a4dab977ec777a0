//! [`AmqpConfig`]: Go Machinery's AMQP settings plus the connection knobs of this driver, URL
//! parsing (several URLs, Go's vhost rules) and the conversion of configuration values into
//! AMQP field tables with the field types Go writes.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPScheme, AMQPUri};
use machinery_core::{Config, Error, Result, redact_url};
use serde::Deserialize;

/// Go's default `DefaultQueue`.
const GO_DEFAULT_QUEUE: &str = "machinery_tasks";
/// Go's default `AMQP.BindingKey`.
const GO_DEFAULT_BINDING_KEY: &str = "machinery_task";

/// Settings of the AMQP broker and result backend.
///
/// Field names follow Go Machinery's `Config` / `AMQPConfig` (see
/// [`AmqpConfig::from_machinery`]); the last group of fields are this driver's own
/// connection settings. `Debug` and logs never show a password.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct AmqpConfig {
    /// Broker URL(s): `amqp://user:password@host:port/vhost` or `amqps://...`; several
    /// separated by `multiple_broker_separator` are tried in order (failover). Go's rules:
    /// a path of `/` or none is vhost `/`, `%2f` is `/`. Default
    /// `amqp://guest:guest@localhost:5672/`.
    pub url: String,
    /// Separator between several broker URLs (failover, tried in order); empty = one URL.
    /// Go's `MultipleBrokerSeparator`. Default empty.
    pub multiple_broker_separator: String,
    /// The worker queue when the worker names none, and the default routing key of a
    /// non-direct exchange. Go's `DefaultQueue`. Default `machinery_tasks`.
    pub default_queue: String,
    /// Seconds task states are kept by the result backend (`x-message-ttl` / `x-expires` of
    /// the result queues); 0 means 3600. Go's `ResultsExpireIn`. Default 3600.
    pub results_expire_in: i64,
    /// Exchange every task and state is published to. Go's `AMQP.Exchange`. Default
    /// `machinery_exchange`.
    pub exchange: String,
    /// Exchange type (`direct`, `topic`, `fanout`, `headers`). Go's `AMQP.ExchangeType`.
    /// Default `direct`.
    pub exchange_type: String,
    /// Extra arguments of every task queue declaration (e.g. `x-max-priority: 10`). Go's
    /// `AMQP.QueueDeclareArgs`. Integers are sent as AMQP `I` (int32) like Go's `int`, larger
    /// ones as `l`, strings as `S`. Default none.
    pub queue_declare_args: BTreeMap<String, serde_json::Value>,
    /// Extra arguments of every task queue binding. Go's `AMQP.QueueBindingArgs`. Default
    /// none.
    pub queue_binding_args: BTreeMap<String, serde_json::Value>,
    /// Binding key of the default queue, and the default routing key of a direct exchange.
    /// Go's `AMQP.BindingKey`. Default empty, meaning `default_queue`: a task sent without a
    /// routing key goes to the queue the workers read. A value other than `default_queue`
    /// (Go's example configuration sets `machinery_task`) gets Go's split, with a warning at
    /// start-up; see the README.
    pub binding_key: String,
    /// `auto_delete` flag of the delay queues. Go's `AMQP.AutoDelete`. Default false.
    pub auto_delete: bool,
    /// One delay queue for every delayed task (per-message expiration) instead of one queue
    /// per delay. Go's `AMQP.DelayedQueue`. Default empty (one queue per delay).
    pub delayed_queue: String,
    /// Extra trusted root certificates (PEM file) for `amqps://`, on top of the system roots.
    /// Default none.
    pub tls_ca_file: Option<PathBuf>,
    /// Heartbeat asked of the server, seconds, when the URL has no `heartbeat` parameter
    /// (Go asks 10). Default 10.
    pub heartbeat: u16,
    /// Time limit for opening one connection, milliseconds. Default 10 000.
    pub connect_timeout_ms: u64,
    /// Largest pause between two reconnection attempts, milliseconds (the pause doubles from
    /// 100 ms up to this). Default 5 000.
    pub reconnect_max_delay_ms: u64,
    /// How long a publish (task, state, dead letter) keeps retrying through reconnections
    /// before it fails, milliseconds. Default 30 000.
    pub publish_retry_timeout_ms: u64,
    /// Connection name shown by RabbitMQ's tooling. Default `machinery-rs`.
    pub connection_name: String,
    /// The consumer's `basic.qos` prefetch: how many unacknowledged tasks RabbitMQ hands one
    /// worker ahead, whatever its concurrency (as Go does; 0 = no limit). Go's
    /// `AMQP.PrefetchCount`, which [`AmqpConfig::from_machinery`] copies (default 3). `None`
    /// (the default of this struct) = the `prefetch` of the consumer's `ConsumeOptions`.
    pub prefetch_count: Option<u16>,
}

impl Default for AmqpConfig {
    fn default() -> Self {
        AmqpConfig {
            url: "amqp://guest:guest@localhost:5672/".to_owned(),
            multiple_broker_separator: String::new(),
            default_queue: "machinery_tasks".to_owned(),
            results_expire_in: 3600,
            exchange: "machinery_exchange".to_owned(),
            exchange_type: "direct".to_owned(),
            queue_declare_args: BTreeMap::new(),
            queue_binding_args: BTreeMap::new(),
            binding_key: String::new(),
            auto_delete: false,
            delayed_queue: String::new(),
            tls_ca_file: None,
            heartbeat: 10,
            connect_timeout_ms: 10_000,
            reconnect_max_delay_ms: 5_000,
            publish_retry_timeout_ms: 30_000,
            connection_name: "machinery-rs".to_owned(),
            prefetch_count: None,
        }
    }
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpConfig")
            .field("url", &redact_url(&self.url))
            .field("multiple_broker_separator", &self.multiple_broker_separator)
            .field("default_queue", &self.default_queue)
            .field("results_expire_in", &self.results_expire_in)
            .field("exchange", &self.exchange)
            .field("exchange_type", &self.exchange_type)
            .field("queue_declare_args", &self.queue_declare_args)
            .field("queue_binding_args", &self.queue_binding_args)
            .field("binding_key", &self.binding_key)
            .field("auto_delete", &self.auto_delete)
            .field("delayed_queue", &self.delayed_queue)
            .field("tls_ca_file", &self.tls_ca_file)
            .field("heartbeat", &self.heartbeat)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("reconnect_max_delay_ms", &self.reconnect_max_delay_ms)
            .field("publish_retry_timeout_ms", &self.publish_retry_timeout_ms)
            .field("connection_name", &self.connection_name)
            .field("prefetch_count", &self.prefetch_count)
            .finish()
    }
}

impl AmqpConfig {
    /// The settings for `url` (the broker or the result backend URL) from a machinery
    /// [`Config`] (Go's names: `DefaultQueue`, `MultipleBrokerSeparator`, `ResultsExpireIn`,
    /// `AMQP.*`); this driver's own fields keep their defaults. `AMQP.PrefetchCount` is not
    /// here: the worker passes it to `consume` in its `ConsumeOptions`.
    pub fn from_machinery(url: &str, config: &Config) -> Self {
        let amqp = &config.amqp;
        AmqpConfig {
            url: url.to_owned(),
            multiple_broker_separator: config.multiple_broker_separator.clone(),
            default_queue: config.default_queue.clone(),
            results_expire_in: config.results_expire_in,
            exchange: amqp.exchange.clone(),
            exchange_type: amqp.exchange_type.clone(),
            queue_declare_args: amqp.queue_declare_args.clone(),
            queue_binding_args: amqp.queue_binding_args.clone(),
            binding_key: amqp.binding_key.clone(),
            auto_delete: amqp.auto_delete,
            delayed_queue: amqp.delayed_queue.clone(),
            prefetch_count: Some(amqp.prefetch_count),
            ..AmqpConfig::default()
        }
    }

    /// Whether the exchange type is `direct` (Go compares the exact string).
    pub fn is_direct(&self) -> bool {
        self.exchange_type == "direct"
    }

    /// The binding key in effect: `binding_key`, or `default_queue` when it is empty.
    pub fn effective_binding_key(&self) -> &str {
        if self.binding_key.is_empty() {
            &self.default_queue
        } else {
            &self.binding_key
        }
    }

    /// The routing key of a signature that has none: the binding key for a direct exchange,
    /// the default queue otherwise (Go's `AdjustRoutingKey`). With the default (empty)
    /// binding key that is `default_queue` either way.
    pub fn default_routing_key(&self) -> &str {
        if self.is_direct() {
            self.effective_binding_key()
        } else {
            &self.default_queue
        }
    }

    /// The routing keys the worker queue `queue` is bound with.
    ///
    /// - Direct exchange, the default queue: the binding key in effect (Go's binding), and
    ///   when no binding key is configured and the default queue is Go's `machinery_tasks`,
    ///   also Go's default binding key `machinery_task`, so that a Go producer left on Go's
    ///   defaults reaches workers left on ours.
    /// - Direct exchange, any other (custom) queue: its own name only, the routing key its
    ///   tasks are sent with, so that it never also receives the default queue's tasks (Go
    ///   binds it with the binding key too, so a Go custom-queue worker runs every default
    ///   task a second time).
    /// - Other exchange types: the binding key in effect, as Go does (their routing is the
    ///   user's pattern or header design).
    pub fn worker_binding_keys(&self, queue: &str) -> Vec<String> {
        if !self.is_direct() {
            return vec![self.effective_binding_key().to_owned()];
        }
        if queue != self.default_queue {
            return vec![queue.to_owned()];
        }
        let mut keys = vec![self.effective_binding_key().to_owned()];
        if self.binding_key.is_empty() && queue == GO_DEFAULT_QUEUE {
            keys.push(GO_DEFAULT_BINDING_KEY.to_owned());
        }
        keys
    }

    /// Bindings of a custom queue (direct exchange) that send it the default queue's tasks:
    /// the ones Go's worker (or an earlier version of this driver) adds, removed when a
    /// worker of ours starts on it.
    pub fn stale_binding_keys(&self, queue: &str) -> Vec<String> {
        if !self.is_direct() || queue == self.default_queue {
            return Vec::new();
        }
        let mut keys = vec![self.effective_binding_key().to_owned()];
        if self.binding_key.is_empty() {
            keys.push(GO_DEFAULT_BINDING_KEY.to_owned());
        }
        keys.retain(|k| k != queue);
        keys.dedup();
        keys
    }

    /// When the configuration makes publishers fill a queue that no worker reads, the
    /// warning to log at start-up (the binding key / default queue pitfall, see the README).
    pub fn unread_queue_warning(&self) -> Option<String> {
        if self.is_direct() && self.effective_binding_key() != self.default_queue {
            Some(format!(
                "amqp: binding_key `{bk}` differs from default_queue `{dq}` (Go's split): with a \
                 direct exchange a task sent without a routing key is published with routing key \
                 `{bk}`, and (as Go Machinery does) the publisher declares a queue `{bk}` bound \
                 with `{bk}`; workers read `{dq}` (also bound with `{bk}`), so `{bk}` keeps a \
                 copy of every such task that nobody consumes. Leave binding_key unset (or set \
                 it to default_queue, on the Go side too) unless something reads `{bk}`",
                bk = self.binding_key,
                dq = self.default_queue
            ))
        } else {
            None
        }
    }

    /// `ResultsExpireIn` in milliseconds as the AMQP int32 Go declares result queues with.
    pub(crate) fn results_ttl_ms(&self) -> Result<i32> {
        let ms = machinery_core::results_ttl(self.results_expire_in).as_millis();
        i32::try_from(ms).map_err(|_| {
            Error::config(
                "results_expire_in",
                format!(
                    "{} s does not fit the AMQP int32 milliseconds of x-message-ttl",
                    self.results_expire_in
                ),
            )
        })
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    pub(crate) fn reconnect_max_delay(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_delay_ms.max(100))
    }

    pub(crate) fn publish_retry_timeout(&self) -> Duration {
        Duration::from_millis(self.publish_retry_timeout_ms)
    }

    /// The exchange kind lapin declares.
    pub(crate) fn exchange_kind(&self) -> lapin::ExchangeKind {
        match self.exchange_type.as_str() {
            "direct" => lapin::ExchangeKind::Direct,
            "fanout" => lapin::ExchangeKind::Fanout,
            "topic" => lapin::ExchangeKind::Topic,
            "headers" => lapin::ExchangeKind::Headers,
            other => lapin::ExchangeKind::Custom(other.to_owned()),
        }
    }

    /// The broker URLs, parsed.
    pub(crate) fn urls(&self) -> Result<Vec<BrokerUrl>> {
        parse_urls(&self.url, &self.multiple_broker_separator, self.heartbeat)
    }

    /// Check what cannot work before connecting.
    pub(crate) fn validate(&self) -> Result<()> {
        if self.exchange_type.is_empty() {
            return Err(Error::config("amqp.exchange_type", "must not be empty"));
        }
        short("amqp.exchange", &self.exchange)?;
        short("amqp.binding_key", &self.binding_key)?;
        short("default_queue", &self.default_queue)?;
        short("amqp.delayed_queue", &self.delayed_queue)?;
        field_table("amqp.queue_declare_args", &self.queue_declare_args)?;
        field_table("amqp.queue_binding_args", &self.queue_binding_args)?;
        Ok(())
    }
}

/// One broker URL, parsed, with its printable (redacted) form.
#[derive(Clone)]
pub(crate) struct BrokerUrl {
    pub(crate) uri: AMQPUri,
    pub(crate) redacted: String,
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Split `urls` by `separator` (when not empty) and parse each as Go would.
///
/// Go's rules kept: `amqp://host/` and `amqp://host` both mean vhost `/` (amqp091-go ignores
/// a path of a single slash); `%2f` is `/`. The heartbeat defaults to `heartbeat` seconds.
pub(crate) fn parse_urls(urls: &str, separator: &str, heartbeat: u16) -> Result<Vec<BrokerUrl>> {
    let parts: Vec<&str> = if separator.is_empty() {
        vec![urls]
    } else {
        urls.split(separator).collect()
    };
    let mut out = Vec::new();
    for part in parts {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        out.push(parse_url(part, heartbeat)?);
    }
    if out.is_empty() {
        return Err(Error::config("broker", "no amqp url given"));
    }
    Ok(out)
}

/// Largest frame asked of the server when the URL has no `frame_max` parameter (RabbitMQ's
/// default is 128 KiB). lapin keeps a send and a receive ring of 32 frames per connection,
/// written through: 8 MiB per connection at 128 KiB, 1 MiB at this size. A bigger message
/// only takes more frames.
pub(crate) const FRAME_MAX: u32 = 16 * 1024;

fn parse_url(url: &str, heartbeat: u16) -> Result<BrokerUrl> {
    let redacted = redact_url(url);
    let scheme = url.split_once("://").map(|(s, _)| s).unwrap_or("");
    if !scheme.eq_ignore_ascii_case("amqp") && !scheme.eq_ignore_ascii_case("amqps") {
        return Err(Error::UnknownScheme {
            scheme: scheme.to_owned(),
            hint: "the amqp driver accepts amqp:// and amqps:// urls".to_owned(),
        });
    }
    let mut uri: AMQPUri = url
        .parse()
        .map_err(|e: String| Error::config("broker", format!("invalid url {redacted}: {e}")))?;
    // amq-protocol-uri only keeps DNS names and falls back to `localhost` for IP addresses.
    if let Some(host) = raw_host(url) {
        uri.authority.host = host;
    }
    if uri.vhost.is_empty() {
        uri.vhost = "/".to_owned();
    }
    if uri.query.heartbeat.is_none() {
        uri.query.heartbeat = Some(heartbeat);
    }
    if uri.query.frame_max.is_none() {
        uri.query.frame_max = Some(FRAME_MAX);
    }
    debug_assert!(matches!(uri.scheme, AMQPScheme::AMQP | AMQPScheme::AMQPS));
    Ok(BrokerUrl { uri, redacted })
}

/// The host of `scheme://[userinfo@]host[:port][/...]`, brackets of an IPv6 address removed.
fn raw_host(url: &str) -> Option<String> {
    let (_, rest) = url.split_once("://")?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let (_, hostport) = machinery_core::url::split_userinfo(authority);
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        &v6[..v6.find(']')?]
    } else {
        hostport.split(':').next().unwrap_or("")
    };
    (!host.is_empty()).then(|| host.to_owned())
}

/// A short string (exchange, queue, routing key), or a clear error when over 255 bytes.
pub(crate) fn short(what: &str, s: &str) -> Result<ShortString> {
    ShortString::try_new(s).map_err(|_| {
        Error::config(
            what,
            format!(
                "`{}…` is {} bytes, over AMQP's 255",
                s.chars().take(40).collect::<String>(),
                s.len()
            ),
        )
    })
}

/// A configuration map as an AMQP table, with the field types Go's amqp091 writes for the
/// values Go's configuration loaders produce (see [`json_to_amqp`]).
pub(crate) fn field_table(
    what: &str,
    map: &BTreeMap<String, serde_json::Value>,
) -> Result<FieldTable> {
    let mut table = FieldTable::default();
    for (k, v) in map {
        table.insert(short(what, k)?, json_to_amqp(v));
    }
    Ok(table)
}

/// A JSON value as an AMQP field: string `S`, integer `I` when it fits 32 bits (Go `int`)
/// else `l`, float `d`, bool `t`, null `V`, array `A`, object `F`.
pub(crate) fn json_to_amqp(v: &serde_json::Value) -> AMQPValue {
    use serde_json::Value;
    match v {
        Value::Null => AMQPValue::Void,
        Value::Bool(b) => AMQPValue::Boolean(*b),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                match i32::try_from(i) {
                    Ok(i) => AMQPValue::LongInt(i),
                    Err(_) => AMQPValue::LongLongInt(i),
                }
            } else {
                AMQPValue::Double(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Value::String(s) => AMQPValue::LongString(LongString::from(s.as_str())),
        Value::Array(items) => {
            let mut arr = FieldArray::default();
            for item in items {
                arr.push(json_to_amqp(item));
            }
            AMQPValue::FieldArray(arr)
        }
        Value::Object(map) => {
            let mut table = FieldTable::default();
            for (k, v) in map {
                if let Ok(k) = ShortString::try_new(k.as_str()) {
                    table.insert(k, json_to_amqp(v));
                }
            }
            AMQPValue::FieldTable(table)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_gos() {
        let c = AmqpConfig::default();
        assert_eq!(c.default_queue, "machinery_tasks");
        assert_eq!(c.exchange, "machinery_exchange");
        assert_eq!(c.exchange_type, "direct");
        assert_eq!(c.binding_key, "", "unset: the default queue");
        assert_eq!(c.results_expire_in, 3600);
        assert_eq!(
            c.default_routing_key(),
            "machinery_tasks",
            "the defaults route to the queue workers read"
        );
        assert_eq!(c.prefetch_count, None);
        assert_eq!(c.results_ttl_ms().unwrap(), 3_600_000);
    }

    #[test]
    fn from_config_maps_go_names() {
        let mut cfg = Config {
            default_queue: "q".into(),
            multiple_broker_separator: ",".into(),
            results_expire_in: 0,
            ..Config::default()
        };
        cfg.amqp.exchange = "ex".into();
        cfg.amqp.exchange_type = "topic".into();
        cfg.amqp.binding_key = "bk".into();
        cfg.amqp.delayed_queue = "dq".into();
        cfg.amqp.auto_delete = true;
        cfg.amqp
            .queue_declare_args
            .insert("x-max-priority".into(), serde_json::json!(10));
        let c = AmqpConfig::from_machinery("amqp://u:pw@h/", &cfg);
        assert_eq!(c.url, "amqp://u:pw@h/");
        assert_eq!(c.default_queue, "q");
        assert_eq!(c.multiple_broker_separator, ",");
        assert_eq!(c.exchange, "ex");
        assert!(!c.is_direct());
        assert_eq!(c.default_routing_key(), "q");
        assert_eq!(c.delayed_queue, "dq");
        assert!(c.auto_delete);
        assert_eq!(c.results_ttl_ms().unwrap(), 3_600_000, "0 means 3600 s");
        assert_eq!(c.queue_declare_args.len(), 1);
        assert_eq!(c.heartbeat, 10);
        assert_eq!(c.prefetch_count, Some(3), "Go's AMQP.PrefetchCount default");
    }

    #[test]
    fn pitfall_warning_only_when_it_applies() {
        assert!(
            AmqpConfig::default().unread_queue_warning().is_none(),
            "the defaults do not fill an unread queue"
        );
        // Go's example configuration, explicitly: the split, with a warning.
        let go = AmqpConfig {
            binding_key: "machinery_task".into(),
            ..AmqpConfig::default()
        };
        assert_eq!(go.default_routing_key(), "machinery_task");
        let w = go
            .unread_queue_warning()
            .expect("Go's split is warned about");
        assert!(w.contains("`machinery_task`") && w.contains("`machinery_tasks`"));
        let fixed = AmqpConfig {
            binding_key: "machinery_tasks".into(),
            ..AmqpConfig::default()
        };
        assert!(fixed.unread_queue_warning().is_none());
        let topic = AmqpConfig {
            exchange_type: "topic".into(),
            binding_key: "machinery_task".into(),
            ..AmqpConfig::default()
        };
        assert!(topic.unread_queue_warning().is_none());
    }

    #[test]
    fn each_queue_is_bound_only_with_its_own_routing_key() {
        let c = AmqpConfig::default();
        assert_eq!(
            c.worker_binding_keys("machinery_tasks"),
            ["machinery_tasks", "machinery_task"],
            "the default queue also takes Go's default routing key"
        );
        assert_eq!(c.worker_binding_keys("images"), ["images"]);
        assert_eq!(
            c.stale_binding_keys("images"),
            ["machinery_tasks", "machinery_task"]
        );
        assert!(c.stale_binding_keys("machinery_tasks").is_empty());
        let go = AmqpConfig {
            binding_key: "machinery_task".into(),
            ..AmqpConfig::default()
        };
        assert_eq!(
            go.worker_binding_keys("machinery_tasks"),
            ["machinery_task"]
        );
        assert_eq!(go.worker_binding_keys("images"), ["images"]);
        assert_eq!(go.stale_binding_keys("images"), ["machinery_task"]);
        assert!(
            go.stale_binding_keys("machinery_task").is_empty(),
            "a queue keeps the binding with its own name"
        );
        let own = AmqpConfig {
            default_queue: "q".into(),
            ..AmqpConfig::default()
        };
        assert_eq!(own.worker_binding_keys("q"), ["q"]);
        assert_eq!(own.default_routing_key(), "q");
        let topic = AmqpConfig {
            exchange_type: "topic".into(),
            binding_key: "tasks.#".into(),
            ..AmqpConfig::default()
        };
        assert_eq!(topic.worker_binding_keys("images"), ["tasks.#"]);
        assert!(topic.stale_binding_keys("images").is_empty());
    }

    #[test]
    fn urls_follow_go_vhost_rules() {
        let u = parse_urls("amqp://guest:guest@localhost:5672/", "", 10).unwrap();
        assert_eq!(u.len(), 1);
        assert_eq!(u[0].uri.vhost, "/");
        assert_eq!(u[0].uri.authority.host, "localhost");
        assert_eq!(u[0].uri.authority.port, 5672);
        assert_eq!(u[0].uri.authority.userinfo.password, "guest");
        assert_eq!(u[0].uri.query.heartbeat, Some(10));
        let u = parse_urls("amqp://127.0.0.1:5673/%2f", "", 10).unwrap();
        assert_eq!(u[0].uri.vhost, "/");
        assert_eq!(
            u[0].uri.authority.host, "127.0.0.1",
            "an IP address is kept"
        );
        assert_eq!(u[0].uri.authority.port, 5673);
        let u = parse_urls("amqp://h/vh?heartbeat=3", "", 10).unwrap();
        assert_eq!(u[0].uri.vhost, "vh");
        assert_eq!(u[0].uri.query.heartbeat, Some(3));
        assert_eq!(u[0].uri.query.frame_max, Some(FRAME_MAX));
        let u = parse_urls("amqp://h/vh?frame_max=131072", "", 10).unwrap();
        assert_eq!(
            u[0].uri.query.frame_max,
            Some(131_072),
            "the URL's frame_max is kept"
        );
        let u = parse_urls("amqp://u:p@[::1]:5000/", "", 10).unwrap();
        assert_eq!(u[0].uri.authority.host, "::1");
        assert_eq!(u[0].uri.authority.port, 5000);
        let u = parse_urls("amqps://u:p@rabbit.example.com/", "", 10).unwrap();
        assert!(matches!(u[0].uri.scheme, AMQPScheme::AMQPS));
        assert_eq!(u[0].uri.authority.port, 5671);
    }

    #[test]
    fn several_urls_are_split_in_order_and_redacted() {
        let u = parse_urls(
            "amqp://a:secret1@h1:5672/ | amqp://b:secret2@h2:5673/",
            "|",
            10,
        )
        .unwrap();
        assert_eq!(u.len(), 2);
        assert_eq!(u[0].uri.authority.host, "h1");
        assert_eq!(u[1].uri.authority.host, "h2");
        assert_eq!(u[0].redacted, "amqp://a:***@h1:5672/");
        let dbg = format!("{u:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }

    #[test]
    fn bad_urls_are_errors_not_panics() {
        assert!(matches!(
            parse_urls("redis://localhost:6379", "", 10),
            Err(Error::UnknownScheme { .. })
        ));
        assert!(matches!(parse_urls("", "", 10), Err(Error::Config { .. })));
        assert!(parse_urls("amqp://h:notaport/", "", 10).is_err());
        assert!(matches!(
            parse_urls("localhost", "", 10),
            Err(Error::UnknownScheme { .. })
        ));
    }

    #[test]
    fn field_types_are_gos() {
        assert_eq!(
            json_to_amqp(&serde_json::json!(10)),
            AMQPValue::LongInt(10),
            "Go int -> I"
        );
        assert_eq!(
            json_to_amqp(&serde_json::json!(5_000_000_000i64)),
            AMQPValue::LongLongInt(5_000_000_000)
        );
        assert_eq!(
            json_to_amqp(&serde_json::json!("quorum")),
            AMQPValue::LongString("quorum".into())
        );
        assert_eq!(
            json_to_amqp(&serde_json::json!(true)),
            AMQPValue::Boolean(true)
        );
        assert_eq!(
            json_to_amqp(&serde_json::json!(1.5)),
            AMQPValue::Double(1.5)
        );
        let mut m = BTreeMap::new();
        m.insert("x-queue-type".to_owned(), serde_json::json!("classic"));
        let t = field_table("amqp.queue_declare_args", &m).unwrap();
        assert_eq!(
            t.inner().get("x-queue-type"),
            Some(&AMQPValue::LongString("classic".into()))
        );
    }

    #[test]
    fn long_names_are_config_errors() {
        let c = AmqpConfig {
            default_queue: "q".repeat(300),
            ..AmqpConfig::default()
        };
        assert!(matches!(c.validate(), Err(Error::Config { .. })));
        assert!(AmqpConfig::default().validate().is_ok());
    }

    #[test]
    fn debug_redacts_the_password() {
        let c = AmqpConfig {
            url: "amqp://user:s3cret@h1/,amqp://user:s3cret@h2/".into(),
            multiple_broker_separator: ",".into(),
            ..AmqpConfig::default()
        };
        let dbg = format!("{c:?}");
        assert!(dbg.contains("machinery_exchange"));
        assert!(dbg.contains("user:***@h1"), "{dbg}");
        assert!(!dbg.contains("s3cret"), "{dbg}");
    }
}
