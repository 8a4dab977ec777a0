//! `RedisConfig`: the URL and the tuning knobs shared by the broker, the backend and the lock.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use machinery_core::url::{
    Credentials, parse_userinfo, percent_decode, redact_url, split_userinfo,
};
use machinery_core::{Error, Result};
use redis::{ConnectionAddr, ConnectionInfo, IntoConnectionInfo, RedisConnectionInfo};
use serde::Deserialize;

/// Configuration of the Redis broker, backend and lock.
///
/// Field names follow Go Machinery's YAML names where Go has the setting (`redis.*`,
/// `default_queue`, `results_expire_in`); the others are machinery-rs additions. `Debug`
/// never shows a password.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct RedisConfig {
    /// Server URL: `redis://[[user]:password@]host[:port][/db]`, `redis://password@host`,
    /// `rediss://...` (TLS; append `#insecure` to skip certificate checks),
    /// `redis+socket://[password@]/path/to.sock[:/db]`, or a comma list of `host:port`: a
    /// Redis Cluster, or the Sentinels when `master_name` is set (or given in the URL as
    /// `?master_name=NAME`). Default `redis://127.0.0.1:6379`.
    pub url: String,
    /// Queue used when a signature has no routing key. Default `machinery_tasks`.
    pub default_queue: String,
    /// Seconds a task state or group meta is kept (`0` = 3600, as in Go). Default 3600.
    pub results_expire_in: i64,
    /// Key of the sorted set that holds tasks with a future ETA. Default `delayed_tasks`.
    pub delayed_tasks_key: String,
    /// Milliseconds between two sweeps of due delayed tasks (Go polls every 500 ms and moves
    /// one task; we move every due task on each sweep). Default 100.
    pub delayed_tasks_poll_period: u64,
    /// How many due delayed tasks one atomic script call moves. Default 1000.
    pub delayed_tasks_batch: usize,
    /// Milliseconds a consumer blocks waiting for a message before checking whether it was
    /// stopped (Go's `BLPOP` timeout). Default 1000.
    pub normal_tasks_poll_period: u64,
    /// Milliseconds after its last heartbeat that a consumer is considered dead and its
    /// unacknowledged messages are put back at the head of their queue. Default 15000.
    pub consumer_lease_ms: u64,
    /// Milliseconds between two heartbeats / dead-consumer checks of a consumer. Default 2000
    /// (capped at a third of `consumer_lease_ms`).
    pub recovery_interval_ms: u64,
    /// Seconds allowed to open a connection. Default 5.
    pub connect_timeout: u64,
    /// Seconds allowed for a reply to an ordinary (non-blocking) command. Default 15.
    pub read_timeout: u64,
    /// Largest pause, in milliseconds, between reconnection attempts while the server is
    /// unreachable (the pause starts at 100 ms and doubles). Default 5000.
    pub reconnect_max_delay_ms: u64,
    /// Treat a single host as a Redis Cluster node (Go's `redis.cluster_mode` /
    /// `redis.cluster_enabled`). Default false.
    pub cluster_mode: bool,
    /// Redis Sentinel master name (Go's `redis.master_name`): the URL's addresses are then
    /// Sentinels, asked for the current master (again after every failover). Default empty.
    pub master_name: String,
    /// Password of the Sentinels themselves (Go's `redis.sentinel_password`); the URL's
    /// password is the master's. Default empty (Sentinels without a password).
    pub sentinel_password: String,
    /// How many replicas must confirm a publish (`WAIT n`) before it returns `Ok`; a publish
    /// that fewer replicas confirm within `wait_replicas_timeout_ms` is an error (the message
    /// may still be delivered). `None` = 1 with Sentinel (so that a failover loses no
    /// published task), 0 otherwise (no `WAIT`).
    pub wait_replicas: Option<u32>,
    /// Milliseconds a publish waits for `wait_replicas` replicas. Default 2000.
    pub wait_replicas_timeout_ms: u64,
    /// PEM file with the certificate authority to trust for `rediss://` instead of the
    /// system's roots. Default none.
    pub tls_ca_file: Option<PathBuf>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".to_owned(),
            default_queue: "machinery_tasks".to_owned(),
            results_expire_in: 3600,
            delayed_tasks_key: "delayed_tasks".to_owned(),
            delayed_tasks_poll_period: 100,
            delayed_tasks_batch: 1000,
            normal_tasks_poll_period: 1000,
            consumer_lease_ms: 15_000,
            recovery_interval_ms: 2000,
            connect_timeout: 5,
            read_timeout: 15,
            reconnect_max_delay_ms: 5000,
            cluster_mode: false,
            master_name: String::new(),
            sentinel_password: String::new(),
            wait_replicas: None,
            wait_replicas_timeout_ms: 2000,
            tls_ca_file: None,
        }
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("default_queue", &self.default_queue)
            .field("results_expire_in", &self.results_expire_in)
            .field("delayed_tasks_key", &self.delayed_tasks_key)
            .field("delayed_tasks_poll_period", &self.delayed_tasks_poll_period)
            .field("delayed_tasks_batch", &self.delayed_tasks_batch)
            .field("normal_tasks_poll_period", &self.normal_tasks_poll_period)
            .field("consumer_lease_ms", &self.consumer_lease_ms)
            .field("recovery_interval_ms", &self.recovery_interval_ms)
            .field("connect_timeout", &self.connect_timeout)
            .field("read_timeout", &self.read_timeout)
            .field("reconnect_max_delay_ms", &self.reconnect_max_delay_ms)
            .field("cluster_mode", &self.cluster_mode)
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
            .field("wait_replicas_timeout_ms", &self.wait_replicas_timeout_ms)
            .field("tls_ca_file", &self.tls_ca_file)
            .finish()
    }
}

impl RedisConfig {
    /// The defaults with this URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            ..RedisConfig::default()
        }
    }

    /// The settings a `machinery_core::Config` (Go's configuration names) gives for `url`:
    /// `default_queue`, `results_expire_in` and the `redis.*` section. Values that are 0 or
    /// empty keep this crate's defaults.
    pub fn from_machinery(url: &str, config: &machinery_core::Config) -> Self {
        let r = &config.redis;
        let d = RedisConfig::default();
        let positive =
            |v: i64, default: u64| u64::try_from(v).ok().filter(|v| *v > 0).unwrap_or(default);
        RedisConfig {
            url: url.to_owned(),
            default_queue: if config.default_queue.is_empty() {
                d.default_queue.clone()
            } else {
                config.default_queue.clone()
            },
            results_expire_in: config.results_expire_in,
            delayed_tasks_key: if r.delayed_tasks_key.is_empty() {
                d.delayed_tasks_key.clone()
            } else {
                r.delayed_tasks_key.clone()
            },
            delayed_tasks_poll_period: positive(
                r.delayed_tasks_poll_period,
                d.delayed_tasks_poll_period,
            ),
            normal_tasks_poll_period: positive(
                r.normal_tasks_poll_period,
                d.normal_tasks_poll_period,
            ),
            connect_timeout: positive(r.connect_timeout, d.connect_timeout),
            read_timeout: positive(r.read_timeout, d.read_timeout),
            cluster_mode: r.cluster_mode,
            master_name: r.master_name.clone(),
            sentinel_password: r.sentinel_password.clone(),
            wait_replicas: r.wait_replicas,
            ..d
        }
    }

    /// The URL with any password replaced by `***`, for logs and error messages.
    pub fn redacted_url(&self) -> String {
        match parse_url(&self.url) {
            Ok(parsed) => parsed.display,
            Err(_) => redact_url(&self.url),
        }
    }

    /// Check the URL and settings without connecting.
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<()> {
        self.target().map(|_| ())
    }

    pub(crate) fn target(&self) -> Result<Target> {
        let mut target = parse_url(&self.url)?;
        let master_name = match (&target.master_name, self.master_name.trim()) {
            (Some(url), cfg) if !cfg.is_empty() && url != cfg => {
                return Err(Error::config(
                    "redis.master_name",
                    format!("the url names master `{url}` and redis.master_name `{cfg}`; give one"),
                ));
            }
            (Some(url), _) => url.clone(),
            (None, cfg) => cfg.to_owned(),
        };
        if !master_name.is_empty() {
            if target.unix {
                return Err(Error::config(
                    "redis.master_name",
                    "Sentinel needs host:port addresses, not a unix socket",
                ));
            }
            if self.cluster_mode {
                return Err(Error::config(
                    "redis.master_name",
                    "set either redis.master_name (Sentinel) or redis.cluster_mode (Cluster), not both",
                ));
            }
            target.cluster = false;
            target.sentinel = Some(SentinelTarget {
                master_name,
                password: (!self.sentinel_password.is_empty())
                    .then(|| self.sentinel_password.clone()),
            });
        } else if self.cluster_mode && !target.unix {
            target.cluster = true;
        }
        if target.cluster && target.db != 0 {
            return Err(bad_url(format!(
                "a Redis Cluster has only database 0 (the url asks for {})",
                target.db
            )));
        }
        if self.default_queue.is_empty() {
            return Err(Error::config("default_queue", "must not be empty"));
        }
        if self.delayed_tasks_key.is_empty() {
            return Err(Error::config(
                "redis.delayed_tasks_key",
                "must not be empty",
            ));
        }
        Ok(target)
    }

    /// Replicas a publish waits for (`WAIT`), 0 = none.
    pub(crate) fn wait_replicas(&self, target: &Target) -> u32 {
        self.wait_replicas
            .unwrap_or(u32::from(target.sentinel.is_some()))
    }

    pub(crate) fn wait_replicas_timeout(&self) -> Duration {
        Duration::from_millis(self.wait_replicas_timeout_ms.max(1))
    }

    pub(crate) fn results_ttl_secs(&self) -> u64 {
        machinery_core::results_ttl(self.results_expire_in).as_secs()
    }

    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.consumer_lease_ms.max(100))
    }

    /// How often a consumer heartbeats and looks for dead consumers.
    pub(crate) fn tick(&self) -> Duration {
        let third = self.lease() / 3;
        Duration::from_millis(self.recovery_interval_ms.max(10)).min(third)
    }

    pub(crate) fn block_timeout(&self) -> Duration {
        Duration::from_millis(self.normal_tasks_poll_period.clamp(10, 60_000))
    }

    pub(crate) fn delayed_poll(&self) -> Duration {
        Duration::from_millis(self.delayed_tasks_poll_period.max(1))
    }

    pub(crate) fn delayed_batch(&self) -> usize {
        self.delayed_tasks_batch.clamp(1, 5000)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_secs(self.connect_timeout.max(1))
    }

    pub(crate) fn response_timeout(&self) -> Duration {
        Duration::from_secs(self.read_timeout.max(1))
    }

    pub(crate) fn reconnect_max_delay(&self) -> Duration {
        Duration::from_millis(self.reconnect_max_delay_ms.max(100))
    }
}

/// Sentinel settings: the master's name and the Sentinels' own password.
#[derive(Debug, Clone)]
pub(crate) struct SentinelTarget {
    pub(crate) master_name: String,
    pub(crate) password: Option<String>,
}

/// Where to connect, parsed from the URL.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// One entry per node (a single entry unless it is a cluster).
    pub(crate) nodes: Vec<ConnectionInfo>,
    /// Connect with the cluster client.
    pub(crate) cluster: bool,
    /// Ask these Sentinels for the master (`nodes` are then the Sentinels).
    pub(crate) sentinel: Option<SentinelTarget>,
    /// The master name given in the URL (`?master_name=`).
    pub(crate) master_name: Option<String>,
    /// The database number.
    pub(crate) db: i64,
    /// A unix socket.
    pub(crate) unix: bool,
    /// `rediss://`.
    pub(crate) tls: bool,
    /// `#insecure` was given.
    pub(crate) tls_insecure: bool,
    /// Username, if any (needed separately by the cluster builder).
    pub(crate) username: Option<String>,
    /// Password, if any.
    pub(crate) password: Option<String>,
    /// The URL with the password redacted.
    pub(crate) display: String,
}

fn bad_url(message: impl Into<String>) -> Error {
    Error::config("url", message)
}

/// Parse a Redis URL the way Go Machinery reads it (see [`RedisConfig::url`]).
pub(crate) fn parse_url(url: &str) -> Result<Target> {
    let url = url.trim();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(bad_url(format!(
            "`{}` is not a redis url (expected redis://, rediss:// or redis+socket://)",
            redact_url(url)
        )));
    };
    match scheme.to_ascii_lowercase().as_str() {
        "redis" => parse_tcp(rest, false),
        "rediss" => parse_tcp(rest, true),
        "redis+socket" | "unix" | "redis+unix" => parse_socket(rest),
        other => Err(bad_url(format!(
            "unsupported scheme `{other}` (expected redis://, rediss:// or redis+socket://)"
        ))),
    }
}

struct UserInfo {
    username: Option<String>,
    password: Option<String>,
}

/// Go's rule: `user:password` is a user and a password, a lone `word` is a password.
fn parse_redis_userinfo(raw: &str) -> Result<UserInfo> {
    let c = parse_userinfo(raw)?;
    let (user, pass) = match c.password {
        Some(p) => (c.user, p),
        None => (String::new(), c.user),
    };
    Ok(UserInfo {
        username: (!user.is_empty()).then_some(user),
        password: (!pass.is_empty()).then_some(pass),
    })
}

fn redacted_userinfo(info: &UserInfo) -> String {
    Credentials {
        user: info.username.clone().unwrap_or_default(),
        password: info.password.clone(),
    }
    .redacted()
}

fn parse_tcp(rest: &str, tls: bool) -> Result<Target> {
    let (rest, fragment) = match rest.split_once('#') {
        Some((r, f)) => (r, Some(f)),
        None => (rest, None),
    };
    let tls_insecure = match fragment {
        None | Some("") => false,
        Some("insecure") if tls => true,
        Some(other) => {
            return Err(bad_url(format!(
                "unknown url fragment `#{other}` (only `#insecure`, with rediss://)"
            )));
        }
    };
    // Query parameters: `master_name` names a Sentinel master; others are accepted and
    // ignored (Go ignores them too).
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, q),
        None => (rest, ""),
    };
    let mut master_name = None;
    for pair in query.split('&') {
        if let Some(v) = pair.strip_prefix("master_name=") {
            let v = percent_decode(v)?;
            if v.is_empty() {
                return Err(bad_url("`master_name=` needs a name"));
            }
            master_name = Some(v);
        }
    }
    // The authority ends at the first `/` after the userinfo; passwords with `/` must be
    // percent-encoded, as in any URL.
    let (authority, path) = match rest.rfind('@') {
        Some(at) => match rest[at..].find('/') {
            Some(slash) => (&rest[..at + slash], &rest[at + slash..]),
            None => (rest, ""),
        },
        None => match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, ""),
        },
    };
    let (userinfo, hosts) = split_userinfo(authority);
    let info = match userinfo {
        Some(raw) => parse_redis_userinfo(raw)?,
        None => UserInfo {
            username: None,
            password: None,
        },
    };
    let db = parse_db(path.strip_prefix('/').unwrap_or(path))?;
    let mut addrs = Vec::new();
    for host in hosts.split(',') {
        let host = host.trim();
        if host.is_empty() {
            return Err(bad_url("missing host (expected host[:port])"));
        }
        addrs.push(parse_host_port(host)?);
    }
    let cluster = addrs.len() > 1;
    let nodes = addrs
        .iter()
        .map(|(host, port)| {
            let addr = if tls {
                ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: tls_insecure,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host.clone(), *port)
            };
            connection_info(addr, &info, db)
        })
        .collect::<Result<Vec<_>>>()?;
    let scheme = if tls { "rediss" } else { "redis" };
    let host_list = addrs
        .iter()
        .map(|(h, p)| {
            if h.contains(':') {
                format!("[{h}]:{p}")
            } else {
                format!("{h}:{p}")
            }
        })
        .collect::<Vec<_>>()
        .join(",");
    let display = format!(
        "{scheme}://{}{host_list}/{db}{}{}",
        redacted_userinfo(&info),
        master_name
            .as_ref()
            .map(|m| format!("?master_name={m}"))
            .unwrap_or_default(),
        if tls_insecure { "#insecure" } else { "" }
    );
    Ok(Target {
        nodes,
        cluster,
        sentinel: None,
        master_name,
        db,
        unix: false,
        tls,
        tls_insecure,
        username: info.username,
        password: info.password,
        display,
    })
}

/// Go's socket form: `redis+socket://[[user:]password@]/path/to.sock[:/db]`.
fn parse_socket(rest: &str) -> Result<Target> {
    let (info, remainder) = match rest.split_once('@') {
        Some((raw, r)) => (parse_redis_userinfo(raw)?, r),
        None => (
            UserInfo {
                username: None,
                password: None,
            },
            rest,
        ),
    };
    let (path, db) = match remainder.split_once(':') {
        Some((p, db)) => (p, parse_db(db.strip_prefix('/').unwrap_or(db))?),
        None => (remainder, 0),
    };
    if path.is_empty() {
        return Err(bad_url(
            "missing socket path (expected redis+socket://[password@]/path/to.sock[:/db])",
        ));
    }
    let node = connection_info(ConnectionAddr::Unix(PathBuf::from(path)), &info, db)?;
    let display = format!("redis+socket://{}{path}:/{db}", redacted_userinfo(&info));
    Ok(Target {
        nodes: vec![node],
        cluster: false,
        sentinel: None,
        master_name: None,
        db,
        unix: true,
        tls: false,
        tls_insecure: false,
        username: info.username,
        password: info.password,
        display,
    })
}

fn connection_info(addr: ConnectionAddr, info: &UserInfo, db: i64) -> Result<ConnectionInfo> {
    let mut redis = RedisConnectionInfo::default().set_db(db);
    if let Some(user) = &info.username {
        redis = redis.set_username(user);
    }
    if let Some(pass) = &info.password {
        redis = redis.set_password(pass);
    }
    let conn = addr
        .into_connection_info()
        .map_err(|e| bad_url(e.to_string()))?;
    Ok(conn.set_redis_settings(redis))
}

fn parse_db(raw: &str) -> Result<i64> {
    let raw = raw.trim_end_matches('/');
    if raw.is_empty() {
        return Ok(0);
    }
    raw.parse::<i64>()
        .ok()
        .filter(|db| *db >= 0)
        .ok_or_else(|| bad_url(format!("database `{raw}` is not a non-negative number")))
}

fn parse_host_port(raw: &str) -> Result<(String, u16)> {
    let (host, port) = if let Some(rest) = raw.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err(bad_url(format!("unclosed `[` in host `{raw}`")));
        };
        (host, after.strip_prefix(':'))
    } else {
        match raw.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (raw, None),
        }
    };
    if host.is_empty() {
        return Err(bad_url(format!("missing host in `{raw}`")));
    }
    let port = match port {
        None | Some("") => 6379,
        Some(p) => p
            .parse::<u16>()
            .map_err(|_| bad_url(format!("port `{p}` is not a number between 0 and 65535")))?,
    };
    Ok((host.to_owned(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(node: &ConnectionInfo) -> (String, u16) {
        match node.addr() {
            ConnectionAddr::Tcp(h, p) => (h.clone(), *p),
            ConnectionAddr::TcpTls { host, port, .. } => (host.clone(), *port),
            ConnectionAddr::Unix(p) => (p.display().to_string(), 0),
            _ => unreachable!("no other address kind is produced"),
        }
    }

    #[test]
    fn plain_host_port() {
        let t = parse_url("redis://127.0.0.1:6379").unwrap();
        assert_eq!(t.nodes.len(), 1);
        assert_eq!(tcp(&t.nodes[0]), ("127.0.0.1".to_owned(), 6379));
        assert_eq!(t.nodes[0].redis_settings().db(), 0);
        assert!(t.nodes[0].redis_settings().password().is_none());
        assert!(!t.cluster && !t.tls && !t.unix);
        assert_eq!(t.display, "redis://127.0.0.1:6379/0");
    }

    #[test]
    fn default_port_and_trailing_slash() {
        let t = parse_url("redis://localhost/").unwrap();
        assert_eq!(tcp(&t.nodes[0]), ("localhost".to_owned(), 6379));
        assert_eq!(t.nodes[0].redis_settings().db(), 0);
    }

    #[test]
    fn password_only_userinfo_is_a_password() {
        let t = parse_url("redis://s3cret@redis.example:6380/2").unwrap();
        let s = t.nodes[0].redis_settings();
        assert_eq!(s.password(), Some("s3cret"));
        assert_eq!(s.username(), None);
        assert_eq!(s.db(), 2);
        assert_eq!(t.display, "redis://***@redis.example:6380/2");
    }

    #[test]
    fn user_and_password() {
        let t = parse_url("redis://alice:p%40ss@h:1/3").unwrap();
        let s = t.nodes[0].redis_settings();
        assert_eq!(s.username(), Some("alice"));
        assert_eq!(s.password(), Some("p@ss"));
        assert_eq!(s.db(), 3);
        assert_eq!(t.display, "redis://alice:***@h:1/3");
    }

    #[test]
    fn empty_user_and_password() {
        let t = parse_url("redis://:pw@h:1").unwrap();
        let s = t.nodes[0].redis_settings();
        assert_eq!(s.username(), None);
        assert_eq!(s.password(), Some("pw"));
    }

    #[test]
    fn password_with_unencoded_at_uses_last_at() {
        let t = parse_url("redis://p@ss@h:7/1").unwrap();
        assert_eq!(t.nodes[0].redis_settings().password(), Some("p@ss"));
        assert_eq!(tcp(&t.nodes[0]), ("h".to_owned(), 7));
        assert!(!t.display.contains("p@ss"));
    }

    #[test]
    fn tls_and_insecure() {
        let t = parse_url("rediss://pw@h:6380/0").unwrap();
        assert!(t.tls && !t.tls_insecure);
        assert!(matches!(
            t.nodes[0].addr(),
            ConnectionAddr::TcpTls {
                insecure: false,
                ..
            }
        ));
        let t = parse_url("rediss://h:6380#insecure").unwrap();
        assert!(t.tls_insecure);
        assert!(matches!(
            t.nodes[0].addr(),
            ConnectionAddr::TcpTls { insecure: true, .. }
        ));
        assert!(parse_url("redis://h#insecure").is_err());
    }

    #[test]
    fn unix_socket_forms() {
        let t = parse_url("redis+socket:///var/run/redis.sock").unwrap();
        assert!(t.unix);
        assert_eq!(tcp(&t.nodes[0]).0, "/var/run/redis.sock");
        assert_eq!(t.nodes[0].redis_settings().db(), 0);
        let t = parse_url("redis+socket://pw@/tmp/r.sock:/4").unwrap();
        assert_eq!(tcp(&t.nodes[0]).0, "/tmp/r.sock");
        assert_eq!(t.nodes[0].redis_settings().db(), 4);
        assert_eq!(t.nodes[0].redis_settings().password(), Some("pw"));
        assert_eq!(t.display, "redis+socket://***@/tmp/r.sock:/4");
        let t = parse_url("redis+socket://u:pw@/tmp/r.sock").unwrap();
        assert_eq!(t.nodes[0].redis_settings().username(), Some("u"));
        assert!(parse_url("redis+socket://pw@").is_err());
    }

    #[test]
    fn unix_scheme_aliases() {
        for url in ["unix:///tmp/r.sock", "redis+unix:///tmp/r.sock"] {
            let t = parse_url(url).unwrap();
            assert!(t.unix);
            assert_eq!(tcp(&t.nodes[0]).0, "/tmp/r.sock");
        }
    }

    #[test]
    fn from_machinery_maps_go_names() {
        let mut go = machinery_core::Config {
            default_queue: "q".to_owned(),
            results_expire_in: 60,
            ..machinery_core::Config::default()
        };
        go.redis.delayed_tasks_key = "dk".to_owned();
        go.redis.delayed_tasks_poll_period = 250;
        go.redis.normal_tasks_poll_period = 0;
        go.redis.read_timeout = 7;
        let cfg = RedisConfig::from_machinery("redis://h:1", &go);
        assert_eq!(cfg.url, "redis://h:1");
        assert_eq!(cfg.default_queue, "q");
        assert_eq!(cfg.results_ttl_secs(), 60);
        assert_eq!(cfg.delayed_tasks_key, "dk");
        assert_eq!(cfg.delayed_tasks_poll_period, 250);
        assert_eq!(cfg.normal_tasks_poll_period, 1000);
        assert_eq!(cfg.read_timeout, 7);
        go.redis.master_name = "mymaster".to_owned();
        go.redis.sentinel_password = "sentinelsecret".to_owned();
        let cfg = RedisConfig::from_machinery("redis://pw@s1:26379,s2:26380/2", &go);
        let t = cfg.target().unwrap();
        let sentinel = t.sentinel.expect("a sentinel target");
        assert_eq!(sentinel.master_name, "mymaster");
        assert_eq!(sentinel.password.as_deref(), Some("sentinelsecret"));
        assert!(!t.cluster);
        assert_eq!(t.nodes.len(), 2);
        assert_eq!(t.db, 2);
        assert_eq!(cfg.wait_replicas(&cfg.target().unwrap()), 1);
        assert!(!format!("{cfg:?}").contains("sentinelsecret"));
        // Go's single address with a master name is a Sentinel too (go-redis' rule).
        let one = RedisConfig::from_machinery("redis://s1:26379", &go);
        assert!(one.target().unwrap().sentinel.is_some());
    }

    #[test]
    fn sentinel_in_the_url() {
        let cfg = RedisConfig::from_url("redis://:pw@s1:26379,s2:26379/1?master_name=my%20master");
        let t = cfg.target().unwrap();
        assert_eq!(t.sentinel.unwrap().master_name, "my master");
        assert!(!t.cluster);
        assert_eq!(t.nodes[0].redis_settings().password(), Some("pw"));
        assert_eq!(
            t.display,
            "redis://***@s1:26379,s2:26379/1?master_name=my master"
        );
        assert_eq!(
            RedisConfig::from_url("redis://h:1").wait_replicas(&parse_url("redis://h:1").unwrap()),
            0
        );
        // Conflicting or impossible combinations are configuration errors.
        let both = RedisConfig {
            master_name: "other".to_owned(),
            ..RedisConfig::from_url("redis://s1:1?master_name=m")
        };
        assert!(matches!(both.validate(), Err(Error::Config { .. })));
        let with_cluster = RedisConfig {
            cluster_mode: true,
            ..RedisConfig::from_url("redis://s1:1?master_name=m")
        };
        assert!(matches!(with_cluster.validate(), Err(Error::Config { .. })));
        let socket = RedisConfig {
            master_name: "m".to_owned(),
            ..RedisConfig::from_url("redis+socket:///tmp/r.sock")
        };
        assert!(matches!(socket.validate(), Err(Error::Config { .. })));
        assert!(matches!(
            RedisConfig::from_url("redis://s1:1?master_name=").validate(),
            Err(Error::Config { .. })
        ));
        assert!(matches!(
            RedisConfig::from_url("redis://h1:1,h2:2/3").validate(),
            Err(Error::Config { .. })
        ));
    }

    #[test]
    fn comma_list_is_a_cluster() {
        let t = parse_url("redis://pw@h1:7000,h2:7001,[::1]:7002/0").unwrap();
        assert!(t.cluster);
        assert_eq!(t.nodes.len(), 3);
        assert_eq!(tcp(&t.nodes[1]), ("h2".to_owned(), 7001));
        assert_eq!(tcp(&t.nodes[2]), ("::1".to_owned(), 7002));
        for n in &t.nodes {
            assert_eq!(n.redis_settings().password(), Some("pw"));
        }
        assert_eq!(t.display, "redis://***@h1:7000,h2:7001,[::1]:7002/0");
    }

    #[test]
    fn cluster_mode_flag() {
        let cfg = RedisConfig {
            cluster_mode: true,
            ..RedisConfig::from_url("redis://h:7000")
        };
        assert!(cfg.target().unwrap().cluster);
    }

    #[test]
    fn errors_are_config_errors() {
        for bad in [
            "http://h:1",
            "h:6379",
            "redis://",
            "redis://h:notaport",
            "redis://h:1/x",
            "redis://h:1/-1",
            "redis://h1:1,,h2:2",
            "redis://%zz@h",
            "redis://[::1:6379",
        ] {
            match parse_url(bad) {
                Err(Error::Config { key, .. }) => assert_eq!(key, "url", "{bad}"),
                other => panic!("{bad}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        for url in [
            "redis://topsecret@h:1/0",
            "redis://u:topsecret@h:1/0",
            "rediss://u:topsecret@h:1/0",
            "redis+socket://topsecret@/tmp/x.sock",
            "redis://topsecret@h1:1,h2:2",
            "bogus://u:topsecret@h",
            "redis://topsecret@h:bad",
        ] {
            let cfg = RedisConfig::from_url(url);
            let dbg = format!("{cfg:?}");
            assert!(!dbg.contains("topsecret"), "{dbg}");
            assert!(!cfg.redacted_url().contains("topsecret"));
        }
    }

    #[test]
    fn defaults() {
        let cfg = RedisConfig::default();
        assert_eq!(cfg.default_queue, "machinery_tasks");
        assert_eq!(cfg.delayed_tasks_key, "delayed_tasks");
        assert_eq!(cfg.results_ttl_secs(), 3600);
        let zero = RedisConfig {
            results_expire_in: 0,
            ..RedisConfig::default()
        };
        assert_eq!(zero.results_ttl_secs(), 3600);
        assert!(cfg.tick() <= cfg.lease() / 3);
        assert!(cfg.lease() <= Duration::from_secs(30));
    }
}
