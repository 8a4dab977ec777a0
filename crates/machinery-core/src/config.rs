//! Configuration with Go Machinery's field names, YAML keys and environment variables
//! (WIRE.md section 10), plus a few settings of our own for the worker.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use tokio::sync::watch;

use crate::{Error, Result};

/// The whole configuration. Defaults are Go Machinery's.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct Config {
    /// Broker URL. Default `amqp://guest:guest@localhost:5672/` (Go's); the CLI defaults to
    /// `memory://`. YAML `broker`, env `BROKER`.
    pub broker: String,
    /// Lock URL for periodic tasks; empty = the broker's technology when it has one, else an
    /// in-process lock. YAML `lock`, env `LOCK`.
    pub lock: String,
    /// Separator for several broker URLs (failover). YAML `multiple_broker_separator`, env
    /// `MULTIPLE_BROKEN_SEPARATOR` (sic, Go's name).
    pub multiple_broker_separator: String,
    /// Default queue. Default `machinery_tasks`. YAML `default_queue`, env `DEFAULT_QUEUE`.
    pub default_queue: String,
    /// Result backend URL. Default `amqp://guest:guest@localhost:5672/`. YAML
    /// `result_backend`, env `RESULT_BACKEND`.
    pub result_backend: String,
    /// Seconds results are kept; 0 means 3600. YAML `results_expire_in`, env
    /// `RESULTS_EXPIRE_IN`.
    pub results_expire_in: i64,
    /// AMQP settings (YAML `amqp`).
    pub amqp: AmqpSettings,
    /// SQS settings (YAML `sqs`).
    pub sqs: SqsSettings,
    /// Redis settings (YAML `redis`).
    pub redis: RedisSettings,
    /// DynamoDB settings (YAML `dynamodb`).
    pub dynamodb: DynamoDbSettings,
    /// MongoDB settings (YAML `mongodb`).
    pub mongodb: MongoDbSettings,
    /// GCP Pub/Sub settings (Go's `GCPPubSub`, set from code in Go; YAML `gcp_pubsub` here).
    pub gcp_pubsub: GcpPubSubSettings,
    /// Do not install SIGINT / SIGTERM handlers in workers. YAML `no_unix_signals`, env
    /// `NO_UNIX_SIGNALS`. Default false.
    pub no_unix_signals: bool,
    /// Worker behaviour beyond Go's settings (YAML `worker`).
    pub worker: WorkerSettings,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            broker: "amqp://guest:guest@localhost:5672/".to_owned(),
            lock: String::new(),
            multiple_broker_separator: String::new(),
            default_queue: "machinery_tasks".to_owned(),
            result_backend: "amqp://guest:guest@localhost:5672/".to_owned(),
            results_expire_in: 3600,
            amqp: AmqpSettings::default(),
            sqs: SqsSettings::default(),
            redis: RedisSettings::default(),
            dynamodb: DynamoDbSettings::default(),
            mongodb: MongoDbSettings::default(),
            gcp_pubsub: GcpPubSubSettings::default(),
            no_unix_signals: false,
            worker: WorkerSettings::default(),
        }
    }
}

/// AMQP settings (Go's `AMQPConfig`).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct AmqpSettings {
    /// Exchange name. Default `machinery_exchange`. Env `AMQP_EXCHANGE`.
    pub exchange: String,
    /// Exchange type. Default `direct`. Env `AMQP_EXCHANGE_TYPE`.
    pub exchange_type: String,
    /// Extra `queue.declare` arguments. Env `AMQP_QUEUE_DECLARE_ARGS` (`k1:v1,k2:v2`).
    pub queue_declare_args: BTreeMap<String, serde_json::Value>,
    /// Extra `queue.bind` arguments. Env `AMQP_QUEUE_BINDING_ARGS` (`k1:v1,k2:v2`).
    pub queue_binding_args: BTreeMap<String, serde_json::Value>,
    /// Binding key of the default queue and default routing key. Default empty = `DefaultQueue`
    /// (Go's default `machinery_task` fills a queue nobody reads; set it to get Go's split).
    /// Env `AMQP_BINDING_KEY`.
    pub binding_key: String,
    /// `basic.qos` prefetch. Default 3. Env `AMQP_PREFETCH_COUNT`.
    pub prefetch_count: u16,
    /// Declare queues auto-delete. Default false. Env `AMQP_AUTO_DELETE`.
    pub auto_delete: bool,
    /// One delay queue for every delayed task instead of one per delay. Env
    /// `AMQP_DELAYED_QUEUE`.
    pub delayed_queue: String,
}

impl Default for AmqpSettings {
    fn default() -> Self {
        AmqpSettings {
            exchange: "machinery_exchange".to_owned(),
            exchange_type: "direct".to_owned(),
            queue_declare_args: BTreeMap::new(),
            queue_binding_args: BTreeMap::new(),
            binding_key: String::new(),
            prefetch_count: 3,
            auto_delete: false,
            delayed_queue: String::new(),
        }
    }
}

/// SQS settings (Go's `SQSConfig`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct SqsSettings {
    /// Long-poll wait. Default 0. YAML `receive_wait_time_seconds`, env
    /// `SQS_WAIT_TIME_SECONDS`.
    #[serde(rename = "receive_wait_time_seconds")]
    pub wait_time_seconds: i64,
    /// Visibility timeout; `None` = the queue's default. YAML `receive_visibility_timeout`,
    /// env `SQS_VISIBILITY_TIMEOUT`.
    #[serde(rename = "receive_visibility_timeout")]
    pub visibility_timeout: Option<i64>,
    /// Extend the visibility of running tasks (Go's `VisibilityHeartBeat`; machinery-sqs
    /// always does). YAML `visibility_hearth_beat` (sic), env `SQS_VISIBILITY_HEARTH_BEAT`.
    pub visibility_hearth_beat: bool,
    /// machinery-rs: where SQS requests go (moto, LocalStack); empty = the AWS SDK's choice
    /// (`AWS_ENDPOINT_URL_SQS`, `AWS_ENDPOINT_URL`). YAML `endpoint_url`, env
    /// `SQS_ENDPOINT_URL`.
    pub endpoint_url: String,
    /// machinery-rs: create missing queues on first use. YAML `create_queues`, env
    /// `SQS_CREATE_QUEUES`.
    pub create_queues: bool,
}

/// Redis settings (Go's `RedisConfig`). Durations are in seconds unless named `_period`
/// (milliseconds), as in Go. `Debug` hides `sentinel_password`.
#[derive(Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct RedisSettings {
    /// Idle connections kept. Default 3. Env `REDIS_MAX_IDLE`.
    pub max_idle: i64,
    /// Connection limit, 0 = none. Default 0. Env `REDIS_MAX_ACTIVE`.
    pub max_active: i64,
    /// Seconds before an idle connection closes. Default 240. YAML `idle_timeout` or Go's
    /// `max_idle_timeout`, env `REDIS_IDLE_TIMEOUT`.
    #[serde(alias = "max_idle_timeout")]
    pub idle_timeout: i64,
    /// Wait for a free connection. Default true. Env `REDIS_WAIT`.
    pub wait: bool,
    /// Read timeout, seconds. Default 15. Env `REDIS_READ_TIMEOUT`.
    pub read_timeout: i64,
    /// Write timeout, seconds. Default 15. Env `REDIS_WRITE_TIMEOUT`.
    pub write_timeout: i64,
    /// Connect timeout, seconds. Default 15. Env `REDIS_CONNECT_TIMEOUT`.
    pub connect_timeout: i64,
    /// Blocking pop timeout, milliseconds. Default 1000. Env
    /// `REDIS_NORMAL_TASKS_POLL_PERIOD`.
    pub normal_tasks_poll_period: i64,
    /// Delayed-task poll period, milliseconds. Default 100 (Go: 500). Env
    /// `REDIS_DELAYED_TASKS_POLL_PERIOD`.
    pub delayed_tasks_poll_period: i64,
    /// ZSET of delayed tasks. Default `delayed_tasks`. Env `REDIS_DELAYED_TASKS_KEY`.
    pub delayed_tasks_key: String,
    /// Sentinel master name: the URL's addresses are Sentinels. Env `REDIS_MASTER_NAME`.
    pub master_name: String,
    /// Password of the Sentinels (Go v2's `sentinel_password`). Env
    /// `REDIS_SENTINEL_PASSWORD`.
    pub sentinel_password: String,
    /// machinery-rs: replicas that must confirm each publish (`WAIT`); unset = 1 with Sentinel,
    /// 0 otherwise. Env `REDIS_WAIT_REPLICAS`.
    pub wait_replicas: Option<u32>,
    /// Use Redis Cluster. YAML `cluster_mode` or Go's `cluster_enabled`, env
    /// `REDIS_CLUSTER_MODE` or `REDIS_CLUSTER_ENABLED`.
    #[serde(alias = "cluster_enabled")]
    pub cluster_mode: bool,
}

impl fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisSettings")
            .field("max_idle", &self.max_idle)
            .field("max_active", &self.max_active)
            .field("idle_timeout", &self.idle_timeout)
            .field("wait", &self.wait)
            .field("read_timeout", &self.read_timeout)
            .field("write_timeout", &self.write_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .field("normal_tasks_poll_period", &self.normal_tasks_poll_period)
            .field("delayed_tasks_poll_period", &self.delayed_tasks_poll_period)
            .field("delayed_tasks_key", &self.delayed_tasks_key)
            .field("master_name", &self.master_name)
            .field(
                "sentinel_password",
                &if self.sentinel_password.is_empty() {
                    ""
                } else {
                    "***"
                },
            )
            .field("wait_replicas", &self.wait_replicas)
            .field("cluster_mode", &self.cluster_mode)
            .finish()
    }
}

impl Default for RedisSettings {
    fn default() -> Self {
        RedisSettings {
            max_idle: 3,
            max_active: 0,
            idle_timeout: 240,
            wait: true,
            read_timeout: 15,
            write_timeout: 15,
            connect_timeout: 15,
            normal_tasks_poll_period: 1000,
            delayed_tasks_poll_period: 100,
            delayed_tasks_key: "delayed_tasks".to_owned(),
            master_name: String::new(),
            sentinel_password: String::new(),
            wait_replicas: None,
            cluster_mode: false,
        }
    }
}

/// DynamoDB settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct DynamoDbSettings {
    /// Default `task_states`.
    pub task_states_table: String,
    /// Default `group_metas`.
    pub group_metas_table: String,
    /// Create missing tables at start (development; Go never does). Default false.
    pub create_tables: bool,
}

impl Default for DynamoDbSettings {
    fn default() -> Self {
        DynamoDbSettings {
            task_states_table: "task_states".to_owned(),
            group_metas_table: "group_metas".to_owned(),
            create_tables: false,
        }
    }
}

/// MongoDB settings.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct MongoDbSettings {
    /// Default `machinery`.
    pub database: String,
}

impl Default for MongoDbSettings {
    fn default() -> Self {
        MongoDbSettings {
            database: "machinery".to_owned(),
        }
    }
}

/// GCP Pub/Sub settings (Go's `GCPPubSubConfig`: `MaxExtension`; Go has no YAML or
/// environment names for it, these are machinery-rs's).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(default)]
pub struct GcpPubSubSettings {
    /// Longest time the lease of a message whose task is running is extended, seconds (Go's
    /// `MaxExtension`); after it the message is delivered again. 0 = 3600 (the Go client's
    /// default). YAML `max_extension`, env `GCP_PUBSUB_MAX_EXTENSION`.
    pub max_extension: u64,
    /// Ack deadline of the streaming pull, seconds, 10..=600: how long after a worker dies
    /// its messages come back. 0 = 60. YAML `ack_deadline`, env `GCP_PUBSUB_ACK_DEADLINE`.
    pub ack_deadline: u64,
    /// Create missing topics and subscriptions (development and tests; Go requires both to
    /// exist). Default false. YAML `create_missing`, env `GCP_PUBSUB_CREATE_MISSING`.
    pub create_missing: bool,
}

/// Worker behaviour that Go hard-codes or gets wrong.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default)]
pub struct WorkerSettings {
    /// Delay before a message for an unregistered task is offered again, milliseconds.
    /// Default 1000. Env `WORKER_UNKNOWN_TASK_DELAY_MS`.
    pub unknown_task_delay_ms: u64,
    /// How often a message for an unregistered task is offered before the worker gives up:
    /// FAILURE "task X is not registered" is stored and the message dead-lettered. 0 = no
    /// limit by count. Default 300. Env `WORKER_UNKNOWN_TASK_MAX_ATTEMPTS`.
    pub unknown_task_max_attempts: u64,
    /// How long, in seconds from the first worker that did not know the task, it is offered
    /// before the worker gives up as above (long enough for a rolling deploy). Default 300.
    /// Env `WORKER_UNKNOWN_TASK_MAX_WAIT_SECS`.
    pub unknown_task_max_wait_secs: u64,
    /// How often a task may ask to be retried later before it fails (Go: unlimited).
    /// Default 100. Env `WORKER_RETRY_LATER_MAX_ATTEMPTS`.
    pub retry_later_max_attempts: u32,
    /// Time limit for one task run in seconds, 0 = none. A task over it fails with a timeout
    /// error (and is retried while it has retries). Default 0. Env `WORKER_TASK_TIMEOUT`.
    pub task_timeout: u64,
    /// When a chord member fails, send the callback's `OnError` signatures (with the error
    /// prepended). Go never tells the chord; default true. Env `WORKER_CHORD_ERROR_CALLBACKS`.
    pub chord_error_callbacks: bool,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            unknown_task_delay_ms: 1000,
            unknown_task_max_attempts: 300,
            unknown_task_max_wait_secs: 300,
            retry_later_max_attempts: 100,
            task_timeout: 0,
            chord_error_callbacks: true,
        }
    }
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("broker", &redact_url(&self.broker))
            .field("lock", &redact_url(&self.lock))
            .field("multiple_broker_separator", &self.multiple_broker_separator)
            .field("default_queue", &self.default_queue)
            .field("result_backend", &redact_url(&self.result_backend))
            .field("results_expire_in", &self.results_expire_in)
            .field("amqp", &self.amqp)
            .field("sqs", &self.sqs)
            .field("redis", &self.redis)
            .field("dynamodb", &self.dynamodb)
            .field("mongodb", &self.mongodb)
            .field("gcp_pubsub", &self.gcp_pubsub)
            .field("no_unix_signals", &self.no_unix_signals)
            .field("worker", &self.worker)
            .finish()
    }
}

pub use crate::url::redact_url;

fn parse_env<T: std::str::FromStr>(key: &str, value: &str) -> Result<T>
where
    T::Err: fmt::Display,
{
    value
        .trim()
        .parse()
        .map_err(|e: T::Err| Error::config(key, format!("cannot parse {value:?}: {e}")))
}

fn parse_bool(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "t" | "true" | "yes" | "y" | "on" => Ok(true),
        "0" | "f" | "false" | "no" | "n" | "off" | "" => Ok(false),
        other => Err(Error::config(
            key,
            format!("cannot parse {other:?} as a boolean"),
        )),
    }
}

fn parse_kv_map(key: &str, value: &str) -> Result<BTreeMap<String, serde_json::Value>> {
    let mut map = BTreeMap::new();
    for pair in value.split(',').filter(|p| !p.trim().is_empty()) {
        let (k, v) = pair
            .split_once(':')
            .ok_or_else(|| Error::config(key, format!("expected k1:v1,k2:v2, got {pair:?}")))?;
        map.insert(k.trim().to_owned(), typed_env_value(v.trim()));
    }
    Ok(map)
}

/// A value from a `k1:v1,k2:v2` variable keeps its type, as it would in YAML: `10` is an
/// integer (RabbitMQ refuses `x-max-priority` as a string), `1.5` a float, `true` / `false`
/// booleans; `"10"` in double quotes stays the string `10`; anything else is a string.
fn typed_env_value(v: &str) -> serde_json::Value {
    if let Some(inner) = v.strip_prefix('"').and_then(|x| x.strip_suffix('"')) {
        return serde_json::Value::String(inner.to_owned());
    }
    if let Ok(i) = v.parse::<i64>() {
        return i.into();
    }
    if let Ok(u) = v.parse::<u64>() {
        return u.into();
    }
    match v {
        "true" => return true.into(),
        "false" => return false.into(),
        _ => {}
    }
    if let Ok(f) = v.parse::<f64>()
        && f.is_finite()
        && v.bytes()
            .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+' | b'e' | b'E'))
    {
        return f.into();
    }
    serde_json::Value::String(v.to_owned())
}

/// Every YAML key we read, by section (keep in step with the settings structs: a field
/// missing here makes its key an error) (`""` is the top level). The maps under
/// `amqp.queue_declare_args` and `amqp.queue_binding_args` take any key.
const KNOWN_KEYS: &[(&str, &[&str])] = &[
    (
        "",
        &[
            "broker",
            "lock",
            "multiple_broker_separator",
            "default_queue",
            "result_backend",
            "results_expire_in",
            "amqp",
            "sqs",
            "redis",
            "dynamodb",
            "mongodb",
            "gcp_pubsub",
            "no_unix_signals",
            "worker",
        ],
    ),
    (
        "amqp",
        &[
            "exchange",
            "exchange_type",
            "queue_declare_args",
            "queue_binding_args",
            "binding_key",
            "prefetch_count",
            "auto_delete",
            "delayed_queue",
        ],
    ),
    (
        "sqs",
        &[
            "receive_wait_time_seconds",
            "receive_visibility_timeout",
            "visibility_hearth_beat",
            "endpoint_url",
            "create_queues",
        ],
    ),
    (
        "redis",
        &[
            "max_idle",
            "max_active",
            "idle_timeout",
            "max_idle_timeout",
            "wait",
            "read_timeout",
            "write_timeout",
            "connect_timeout",
            "normal_tasks_poll_period",
            "delayed_tasks_poll_period",
            "delayed_tasks_key",
            "client_name",
            "master_name",
            "sentinel_password",
            "wait_replicas",
            "cluster_mode",
            "cluster_enabled",
        ],
    ),
    (
        "dynamodb",
        &["task_states_table", "group_metas_table", "create_tables"],
    ),
    ("mongodb", &["database"]),
    (
        "gcp_pubsub",
        &["max_extension", "ack_deadline", "create_missing"],
    ),
    (
        "worker",
        &[
            "unknown_task_delay_ms",
            "unknown_task_max_attempts",
            "unknown_task_max_wait_secs",
            "retry_later_max_attempts",
            "task_timeout",
            "chord_error_callbacks",
        ],
    ),
];

/// Go keys that are accepted so that a Go config file loads, but change nothing here (the
/// Redis driver manages its own connections).
pub const UNUSED_GO_KEYS: &[&str] = &[
    "redis.max_idle",
    "redis.max_active",
    "redis.idle_timeout",
    "redis.max_idle_timeout",
    "redis.wait",
    "redis.write_timeout",
    "redis.client_name",
];

/// The environment variables of [`UNUSED_GO_KEYS`].
const UNUSED_GO_ENV: &[&str] = &[
    "REDIS_MAX_IDLE",
    "REDIS_MAX_ACTIVE",
    "REDIS_IDLE_TIMEOUT",
    "REDIS_WAIT",
    "REDIS_WRITE_TIMEOUT",
    "REDIS_CLIENT_NAME",
];

/// Levenshtein distance (keys are short).
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Check the keys of a YAML document: an unknown key is an error naming it and the nearest
/// known key; the Go keys that change nothing here are returned (dotted paths).
///
/// # Errors
/// [`Error::Config`] naming the unknown key.
pub fn check_yaml_keys(yaml: &str) -> Result<Vec<String>> {
    let doc: serde_json::Value = serde_saphyr::from_str(yaml).map_err(|e| {
        let msg = e.to_string();
        Error::config(yaml_key_of(&msg), msg)
    })?;
    let mut unused = Vec::new();
    let serde_json::Value::Object(top) = &doc else {
        return Ok(unused);
    };
    let mut sections: Vec<(&str, &serde_json::Map<String, serde_json::Value>)> = vec![("", top)];
    while let Some((section, map)) = sections.pop() {
        let known = KNOWN_KEYS
            .iter()
            .find(|(s, _)| *s == section)
            .map_or(&[][..], |(_, k)| *k);
        for (key, value) in map {
            let path = if section.is_empty() {
                key.clone()
            } else {
                format!("{section}.{key}")
            };
            if !known.contains(&key.as_str()) {
                let nearest = known
                    .iter()
                    .min_by_key(|k| edit_distance(key, k))
                    .filter(|k| edit_distance(key, k) <= (k.len() / 2).max(2));
                let hint = match nearest {
                    Some(n) => format!(
                        "did you mean `{}`?",
                        if section.is_empty() {
                            (*n).to_owned()
                        } else {
                            format!("{section}.{n}")
                        }
                    ),
                    None => format!("known keys here: {}", known.join(", ")),
                };
                return Err(Error::config(
                    path,
                    format!("unknown configuration key ({hint})"),
                ));
            }
            if UNUSED_GO_KEYS.contains(&path.as_str()) {
                unused.push(path.clone());
            }
            if section.is_empty()
                && let serde_json::Value::Object(inner) = value
                && KNOWN_KEYS.iter().any(|(s, _)| *s == key.as_str())
            {
                let name = KNOWN_KEYS
                    .iter()
                    .find(|(s, _)| *s == key.as_str())
                    .map_or("", |(s, _)| *s);
                sections.push((name, inner));
            }
        }
    }
    unused.sort();
    Ok(unused)
}

impl Config {
    /// Go's defaults overridden by environment variables (names in WIRE.md section 10).
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable whose value does not parse.
    pub fn from_env() -> Result<Config> {
        Self::from_env_with(|k| std::env::var(k).ok())
    }

    /// Like [`Config::from_env`] with a custom lookup (for tests and embedding).
    ///
    /// # Errors
    /// [`Error::Config`] naming the variable whose value does not parse.
    pub fn from_env_with(lookup: impl Fn(&str) -> Option<String>) -> Result<Config> {
        let unused: Vec<&str> = UNUSED_GO_ENV
            .iter()
            .copied()
            .filter(|k| lookup(k).is_some())
            .collect();
        if !unused.is_empty() {
            tracing::warn!(
                variables = %unused.join(", "),
                "environment variables accepted for Go compatibility have no effect here: {}",
                unused.join(", ")
            );
        }
        let mut c = Config::default();
        macro_rules! set {
            ($key:literal, $field:expr, str) => {
                if let Some(v) = lookup($key) {
                    $field = v;
                }
            };
            ($key:literal, $field:expr, bool) => {
                if let Some(v) = lookup($key) {
                    $field = parse_bool($key, &v)?;
                }
            };
            ($key:literal, $field:expr, map) => {
                if let Some(v) = lookup($key) {
                    $field = parse_kv_map($key, &v)?;
                }
            };
            ($key:literal, $field:expr, opt) => {
                if let Some(v) = lookup($key) {
                    $field = Some(parse_env($key, &v)?);
                }
            };
            ($key:literal, $field:expr) => {
                if let Some(v) = lookup($key) {
                    $field = parse_env($key, &v)?;
                }
            };
        }
        set!("BROKER", c.broker, str);
        set!("LOCK", c.lock, str);
        set!(
            "MULTIPLE_BROKEN_SEPARATOR",
            c.multiple_broker_separator,
            str
        );
        set!("DEFAULT_QUEUE", c.default_queue, str);
        set!("RESULT_BACKEND", c.result_backend, str);
        set!("RESULTS_EXPIRE_IN", c.results_expire_in);
        set!("AMQP_EXCHANGE", c.amqp.exchange, str);
        set!("AMQP_EXCHANGE_TYPE", c.amqp.exchange_type, str);
        set!("AMQP_QUEUE_DECLARE_ARGS", c.amqp.queue_declare_args, map);
        set!("AMQP_QUEUE_BINDING_ARGS", c.amqp.queue_binding_args, map);
        set!("AMQP_BINDING_KEY", c.amqp.binding_key, str);
        set!("AMQP_PREFETCH_COUNT", c.amqp.prefetch_count);
        set!("AMQP_AUTO_DELETE", c.amqp.auto_delete, bool);
        set!("AMQP_DELAYED_QUEUE", c.amqp.delayed_queue, str);
        set!("SQS_WAIT_TIME_SECONDS", c.sqs.wait_time_seconds);
        set!("SQS_VISIBILITY_TIMEOUT", c.sqs.visibility_timeout, opt);
        set!(
            "SQS_VISIBILITY_HEARTH_BEAT",
            c.sqs.visibility_hearth_beat,
            bool
        );
        set!("SQS_ENDPOINT_URL", c.sqs.endpoint_url, str);
        set!("SQS_CREATE_QUEUES", c.sqs.create_queues, bool);
        set!("REDIS_MAX_IDLE", c.redis.max_idle);
        set!("REDIS_MAX_ACTIVE", c.redis.max_active);
        set!("REDIS_IDLE_TIMEOUT", c.redis.idle_timeout);
        set!("REDIS_WAIT", c.redis.wait, bool);
        set!("REDIS_READ_TIMEOUT", c.redis.read_timeout);
        set!("REDIS_WRITE_TIMEOUT", c.redis.write_timeout);
        set!("REDIS_CONNECT_TIMEOUT", c.redis.connect_timeout);
        set!(
            "REDIS_NORMAL_TASKS_POLL_PERIOD",
            c.redis.normal_tasks_poll_period
        );
        set!(
            "REDIS_DELAYED_TASKS_POLL_PERIOD",
            c.redis.delayed_tasks_poll_period
        );
        set!("REDIS_DELAYED_TASKS_KEY", c.redis.delayed_tasks_key, str);
        set!("REDIS_MASTER_NAME", c.redis.master_name, str);
        set!("REDIS_SENTINEL_PASSWORD", c.redis.sentinel_password, str);
        set!("REDIS_WAIT_REPLICAS", c.redis.wait_replicas, opt);
        set!("REDIS_CLUSTER_ENABLED", c.redis.cluster_mode, bool);
        set!("REDIS_CLUSTER_MODE", c.redis.cluster_mode, bool);
        set!("TASK_STATES_TABLE", c.dynamodb.task_states_table, str);
        set!("GROUP_METAS_TABLE", c.dynamodb.group_metas_table, str);
        set!("DYNAMODB_CREATE_TABLES", c.dynamodb.create_tables, bool);
        set!("GCP_PUBSUB_MAX_EXTENSION", c.gcp_pubsub.max_extension);
        set!("GCP_PUBSUB_ACK_DEADLINE", c.gcp_pubsub.ack_deadline);
        set!(
            "GCP_PUBSUB_CREATE_MISSING",
            c.gcp_pubsub.create_missing,
            bool
        );
        set!("NO_UNIX_SIGNALS", c.no_unix_signals, bool);
        set!(
            "WORKER_UNKNOWN_TASK_DELAY_MS",
            c.worker.unknown_task_delay_ms
        );
        set!(
            "WORKER_UNKNOWN_TASK_MAX_ATTEMPTS",
            c.worker.unknown_task_max_attempts
        );
        set!(
            "WORKER_UNKNOWN_TASK_MAX_WAIT_SECS",
            c.worker.unknown_task_max_wait_secs
        );
        set!(
            "WORKER_RETRY_LATER_MAX_ATTEMPTS",
            c.worker.retry_later_max_attempts
        );
        set!("WORKER_TASK_TIMEOUT", c.worker.task_timeout);
        set!(
            "WORKER_CHORD_ERROR_CALLBACKS",
            c.worker.chord_error_callbacks,
            bool
        );
        c.validate()?;
        Ok(c)
    }

    /// Parse YAML text (keys as in Go's YAML config). Missing keys keep Go's defaults.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key (and line) that is wrong.
    pub fn from_yaml_str(yaml: &str) -> Result<Config> {
        let unused = check_yaml_keys(yaml)?;
        if !unused.is_empty() {
            tracing::warn!(
                keys = %unused.join(", "),
                "configuration keys accepted for Go compatibility have no effect here: {}",
                unused.join(", ")
            );
        }
        let c: Config = serde_saphyr::from_str(yaml).map_err(|e| {
            let msg = e.to_string();
            // serde-saphyr names the field path in its message; keep it whole.
            Error::Config {
                key: yaml_key_of(&msg),
                message: msg,
                source: Some(Box::new(e)),
            }
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Read a YAML file completely (Go reads only its first 1000 bytes; we read it all).
    ///
    /// # Errors
    /// [`Error::Config`] when the file cannot be read or a key is invalid.
    pub fn from_yaml(path: impl AsRef<Path>) -> Result<Config> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::config_caused("<file>", format_args!("cannot read {}", path.display()), e)
        })?;
        Self::from_yaml_str(&text)
    }

    /// Check values that parse but make no sense.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.default_queue.is_empty() {
            return Err(Error::config("default_queue", "must not be empty"));
        }
        if self.results_expire_in < 0 {
            return Err(Error::config(
                "results_expire_in",
                format!("must be >= 0, got {}", self.results_expire_in),
            ));
        }
        if self.redis.delayed_tasks_key.is_empty() {
            return Err(Error::config(
                "redis.delayed_tasks_key",
                "must not be empty",
            ));
        }
        Ok(())
    }

    /// `ResultsExpireIn` as a duration (0 = 3600 s).
    pub fn results_ttl(&self) -> Duration {
        crate::results_ttl(self.results_expire_in)
    }

    /// The broker URLs in failover order (split by `multiple_broker_separator`).
    pub fn broker_urls(&self) -> Vec<String> {
        if self.multiple_broker_separator.is_empty() {
            vec![self.broker.clone()]
        } else {
            self.broker
                .split(self.multiple_broker_separator.as_str())
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
                .collect()
        }
    }
}

fn yaml_key_of(msg: &str) -> String {
    // Messages look like "... unknown field `x` ..." or name a path; fall back to "<yaml>".
    msg.split('`')
        .nth(1)
        .map_or_else(|| "<yaml>".to_owned(), str::to_owned)
}

/// A configuration loaded from a YAML file and re-read when the file changes (Go re-reads
/// every 10 s; we check every `interval`, default 10 s).
#[derive(Debug, Clone)]
pub struct LiveConfig {
    rx: watch::Receiver<Config>,
    path: PathBuf,
}

impl LiveConfig {
    /// Load `path` now and keep re-reading it every 10 s in the background.
    ///
    /// # Errors
    /// When the first load fails. Later failures are logged and the last good config stays.
    pub fn watch(path: impl AsRef<Path>) -> Result<LiveConfig> {
        Self::watch_every(path, Duration::from_secs(10))
    }

    /// Like [`LiveConfig::watch`] with a custom check interval. Must be called inside a tokio
    /// runtime.
    ///
    /// # Errors
    /// When the first load fails.
    pub fn watch_every(path: impl AsRef<Path>, interval: Duration) -> Result<LiveConfig> {
        let path = path.as_ref().to_path_buf();
        let text = std::fs::read_to_string(&path).map_err(|e| {
            Error::config_caused("<file>", format_args!("cannot read {}", path.display()), e)
        })?;
        let first = Config::from_yaml_str(&text)?;
        let (tx, rx) = watch::channel(first);
        let p = path.clone();
        let mut last_text = Some(text);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                if tx.is_closed() {
                    return;
                }
                let text = match std::fs::read_to_string(&p) {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "config reload: cannot read file; keeping the last good config");
                        continue;
                    }
                };
                if last_text.as_deref() == Some(text.as_str()) {
                    continue;
                }
                match Config::from_yaml_str(&text) {
                    Ok(c) => {
                        tracing::info!(path = %p.display(), "config reloaded");
                        tx.send_replace(c);
                    }
                    Err(e) => {
                        tracing::warn!(path = %p.display(), error = %e, "config reload: invalid file; keeping the last good config");
                    }
                }
                last_text = Some(text);
            }
        });
        Ok(LiveConfig { rx, path })
    }

    /// The current configuration.
    pub fn current(&self) -> Config {
        self.rx.borrow().clone()
    }

    /// A receiver that is notified on every reload.
    pub fn subscribe(&self) -> watch::Receiver<Config> {
        self.rx.clone()
    }

    /// The watched file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_gos() {
        let c = Config::default();
        assert_eq!(c.default_queue, "machinery_tasks");
        assert_eq!(c.amqp.exchange, "machinery_exchange");
        assert_eq!(c.amqp.binding_key, "", "unset: the default queue");
        assert_eq!(c.amqp.prefetch_count, 3);
        assert_eq!(c.results_expire_in, 3600);
    }

    #[test]
    fn go_sentinel_and_cluster_settings() {
        let env = |k: &str| match k {
            "REDIS_MASTER_NAME" => Some("mymaster".to_owned()),
            "REDIS_SENTINEL_PASSWORD" => Some("sentinelsecret".to_owned()),
            "REDIS_WAIT_REPLICAS" => Some("2".to_owned()),
            "REDIS_CLUSTER_ENABLED" => Some("true".to_owned()),
            _ => None,
        };
        let c = Config::from_env_with(env).unwrap();
        assert_eq!(c.redis.master_name, "mymaster");
        assert_eq!(c.redis.sentinel_password, "sentinelsecret");
        assert_eq!(c.redis.wait_replicas, Some(2));
        assert!(c.redis.cluster_mode);
        assert!(!format!("{c:?}").contains("sentinelsecret"));
        let yaml = "redis:\n  master_name: m\n  sentinel_password: s\n  wait_replicas: 0\n";
        let c = Config::from_yaml_str(yaml).unwrap();
        assert_eq!(c.redis.master_name, "m");
        assert_eq!(c.redis.sentinel_password, "s");
        assert_eq!(c.redis.wait_replicas, Some(0));
    }

    #[test]
    fn env_overrides_and_names_bad_keys() {
        let env = |k: &str| match k {
            "BROKER" => Some("redis://:pw@localhost:6379/1".to_owned()),
            "MULTIPLE_BROKEN_SEPARATOR" => Some(",".to_owned()),
            "AMQP_QUEUE_BINDING_ARGS" => Some("x-match:any,name:x".to_owned()),
            "REDIS_CLUSTER_MODE" => Some("true".to_owned()),
            _ => None,
        };
        let c = Config::from_env_with(env).unwrap();
        assert_eq!(c.broker, "redis://:pw@localhost:6379/1");
        assert_eq!(c.multiple_broker_separator, ",");
        assert_eq!(c.amqp.queue_binding_args.len(), 2);
        assert!(c.redis.cluster_mode);
        let err = Config::from_env_with(|k| (k == "RESULTS_EXPIRE_IN").then(|| "soon".into()))
            .unwrap_err();
        assert!(err.to_string().contains("RESULTS_EXPIRE_IN"), "{err}");
        let err = Config::from_env_with(|k| (k == "NO_UNIX_SIGNALS").then(|| "maybe".into()))
            .unwrap_err();
        assert!(err.to_string().contains("NO_UNIX_SIGNALS"), "{err}");
    }

    #[test]
    fn yaml_over_1000_bytes_loads_completely() {
        let mut yaml = String::from("broker: redis://localhost:6379\n");
        for i in 0..60 {
            yaml.push_str(&format!(
                "# padding comment line number {i:03} ..................\n"
            ));
        }
        yaml.push_str("default_queue: late_queue\nresults_expire_in: 42\namqp:\n  binding_key: bk\n  prefetch_count: 7\n  queue_declare_args:\n    x-max-priority: 10\n");
        assert!(yaml.len() > 1000);
        let c = Config::from_yaml_str(&yaml).unwrap();
        assert_eq!(c.default_queue, "late_queue");
        assert_eq!(c.results_expire_in, 42);
        assert_eq!(c.amqp.binding_key, "bk");
        assert_eq!(c.amqp.prefetch_count, 7);
        assert_eq!(c.amqp.exchange, "machinery_exchange");
        assert_eq!(c.amqp.queue_declare_args["x-max-priority"], 10);
    }

    #[test]
    fn yaml_errors_name_the_key() {
        let err = Config::from_yaml_str("results_expire_in: soon\n").unwrap_err();
        assert!(err.to_string().contains("results_expire_in"), "{err}");
        let err = Config::from_yaml_str("default_queue: ''\n").unwrap_err();
        assert!(err.to_string().contains("default_queue"), "{err}");
    }

    #[test]
    fn unknown_yaml_keys_are_errors_naming_the_nearest_key() {
        let err = Config::from_yaml_str("brokr: redis://localhost:6379\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("`brokr`") && text.contains("did you mean `broker`?"),
            "{text}"
        );
        let err = Config::from_yaml_str("redis:\n  delayed_task_key: x\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("redis.delayed_task_key")
                && text.contains("did you mean `redis.delayed_tasks_key`?"),
            "{text}"
        );
        let err = Config::from_yaml_str("worker:\n  zzzzzzzzzzzz: 1\n").unwrap_err();
        assert!(err.to_string().contains("known keys here"), "{err}");
        // Every settings field is a known key.
        Config::from_yaml_str(
            "sqs:\n  endpoint_url: http://h\n  create_queues: true\n  visibility_hearth_beat: true\n  receive_visibility_timeout: 5\n",
        )
        .unwrap();
        let c = Config::from_yaml_str(
            "gcp_pubsub:\n  max_extension: 120\n  ack_deadline: 20\n  create_missing: true\n",
        )
        .unwrap();
        assert_eq!(
            (c.gcp_pubsub.max_extension, c.gcp_pubsub.ack_deadline),
            (120, 20)
        );
        assert!(c.gcp_pubsub.create_missing);
        let c = Config::from_env_with(|k| match k {
            "GCP_PUBSUB_MAX_EXTENSION" => Some("90".into()),
            "GCP_PUBSUB_ACK_DEADLINE" => Some("10".into()),
            "GCP_PUBSUB_CREATE_MISSING" => Some("1".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(
            (c.gcp_pubsub.max_extension, c.gcp_pubsub.ack_deadline),
            (90, 10)
        );
        assert!(c.gcp_pubsub.create_missing);
        // Free-form maps take any key.
        let c = Config::from_yaml_str("amqp:\n  queue_declare_args:\n    x-anything: 1\n").unwrap();
        assert_eq!(c.amqp.queue_declare_args["x-anything"], 1);
    }

    #[test]
    fn go_keys_that_change_nothing_are_named_once() {
        let yaml = "redis:\n  max_idle: 5\n  max_idle_timeout: 30\n  wait: true\n  cluster_enabled: true\n  read_timeout: 3\n";
        assert_eq!(
            check_yaml_keys(yaml).unwrap(),
            ["redis.max_idle", "redis.max_idle_timeout", "redis.wait"]
        );
        // Go's YAML names are read into our fields.
        let c = Config::from_yaml_str(yaml).unwrap();
        assert_eq!(c.redis.idle_timeout, 30);
        assert!(c.redis.cluster_mode);
        // One warning line naming them all.
        let out = capture_logs(|| {
            Config::from_yaml_str(yaml).unwrap();
        });
        let lines: Vec<&str> = out
            .lines()
            .filter(|l| l.contains("have no effect"))
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        assert!(
            lines[0].contains("redis.max_idle, redis.max_idle_timeout, redis.wait"),
            "{out}"
        );
        let out = capture_logs(|| {
            Config::from_env_with(|k| (k == "REDIS_MAX_ACTIVE").then(|| "9".into())).unwrap();
        });
        assert_eq!(out.matches("have no effect").count(), 1, "{out}");
        assert!(out.contains("REDIS_MAX_ACTIVE"), "{out}");
        let out = capture_logs(|| {
            Config::from_yaml_str("broker: redis://h:1\n").unwrap();
        });
        assert!(!out.contains("have no effect"), "{out}");
    }

    fn capture_logs(f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let b2 = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || b2.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, f);
        let bytes = buf.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn typed_values_from_the_environment_keep_their_type() {
        let c = Config::from_env_with(|k| {
            (k == "AMQP_QUEUE_DECLARE_ARGS").then(|| {
                "x-max-priority:10,x-queue-type:quorum,x-lazy:true,x-ratio:0.5,x-id:\"10\"".into()
            })
        })
        .unwrap();
        let args = &c.amqp.queue_declare_args;
        assert_eq!(args["x-max-priority"], serde_json::json!(10));
        assert!(args["x-max-priority"].is_i64());
        assert_eq!(args["x-queue-type"], serde_json::json!("quorum"));
        assert_eq!(args["x-lazy"], serde_json::json!(true));
        assert_eq!(args["x-ratio"], serde_json::json!(0.5));
        assert_eq!(args["x-id"], serde_json::json!("10"));
        // The same as YAML gives.
        let y = Config::from_yaml_str("amqp:\n  queue_declare_args:\n    x-max-priority: 10\n")
            .unwrap();
        assert_eq!(
            y.amqp.queue_declare_args["x-max-priority"],
            args["x-max-priority"]
        );
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("amqp://guest:secret@localhost:5672/"),
            "amqp://guest:***@localhost:5672/"
        );
        assert_eq!(redact_url("redis://secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(
            redact_url("amqp://a:b@h1/,amqp://c:d@h2/"),
            "amqp://a:***@h1/,amqp://c:***@h2/"
        );
        assert_eq!(redact_url("memory://"), "memory://");
        let c = Config {
            broker: "redis://:topsecret@h:6379".into(),
            result_backend: "amqp://u:topsecret@h/".into(),
            ..Config::default()
        };
        assert!(!format!("{c:?}").contains("topsecret"));
    }

    #[tokio::test]
    async fn live_reload_picks_up_a_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.yml");
        std::fs::write(&path, "default_queue: one\n").unwrap();
        let live = LiveConfig::watch_every(&path, Duration::from_millis(50)).unwrap();
        assert_eq!(live.current().default_queue, "one");
        let mut rx = live.subscribe();
        std::fs::write(&path, "default_queue: two\n").unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .expect("reload within 5 s")
            .unwrap();
        assert_eq!(live.current().default_queue, "two");
        // An invalid file keeps the last good config.
        std::fs::write(&path, "results_expire_in: [\n").unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(live.current().default_queue, "two");
    }
}
