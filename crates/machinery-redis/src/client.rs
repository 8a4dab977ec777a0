//! Opening connections: one shared, auto-pipelined connection per broker / backend, dedicated
//! connections for blocking pops; one node, the master named by Sentinels, or a Cluster.

use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use machinery_core::{Backoff, Error, Result};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind,
    IntoConnectionInfo, Pipeline, RedisConnectionInfo, RedisFuture, ServerErrorKind,
    TlsCertificates, Value,
};

use crate::config::{RedisConfig, Target};
use crate::error;

/// rustls needs one process-wide crypto provider; install aws-lc-rs unless someone already did.
fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn tls_certificates(config: &RedisConfig) -> Result<Option<TlsCertificates>> {
    let Some(path) = &config.tls_ca_file else {
        return Ok(None);
    };
    let pem = std::fs::read(path).map_err(|e| {
        Error::config(
            "redis.tls_ca_file",
            format!("cannot read `{}`: {e}", path.display()),
        )
    })?;
    Ok(Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem),
    }))
}

/// A client for a single node (plain, TLS or unix socket).
pub(crate) fn single_client(config: &RedisConfig, target: &Target) -> Result<Client> {
    node_client(config, target, target.nodes[0].clone())
}

fn node_client(config: &RedisConfig, target: &Target, info: ConnectionInfo) -> Result<Client> {
    if target.tls {
        install_crypto_provider();
    }
    let client = match tls_certificates(config)? {
        Some(certs) if target.tls => Client::build_with_tls(info, certs),
        _ => Client::open(info),
    };
    client.map_err(|e| {
        error::map(
            format!("invalid connection settings for {}", target.display),
            e,
        )
    })
}

/// Options of a multiplexed connection; `response_timeout` None means "no limit".
fn connection_config(
    config: &RedisConfig,
    response_timeout: Option<Duration>,
) -> AsyncConnectionConfig {
    AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_response_timeout(response_timeout)
}

/// Connect once (to fail fast, naming the server) and then build the reconnecting manager that
/// every non-blocking command shares.
pub(crate) async fn shared_manager(
    config: &RedisConfig,
    target: &Target,
    client: &Client,
) -> Result<ConnectionManager> {
    // Probe first: the manager itself would retry for seconds before reporting anything. The
    // PING finds a missing password now rather than at the first command (NOAUTH).
    let mut probe = client
        .get_multiplexed_async_connection_with_config(&connection_config(
            config,
            Some(config.response_timeout()),
        ))
        .await
        .map_err(|e| error::unreachable(&target.display, e))?;
    ping(&mut probe)
        .await
        .map_err(|e| error::unreachable(&target.display, e))?;
    drop(probe);
    let manager_config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout()))
        .set_response_timeout(Some(config.response_timeout()))
        .set_min_delay(Duration::from_millis(100))
        .set_max_delay(config.reconnect_max_delay())
        .set_number_of_retries(6);
    ConnectionManager::new_with_config(client.clone(), manager_config)
        .await
        .map_err(|e| error::unreachable(&target.display, e))
}

async fn ping(conn: &mut impl ConnectionLike) -> redis::RedisResult<()> {
    redis::cmd("PING").query_async::<()>(conn).await
}

/// How to open connections to what the URL names: one node, the master named by Sentinels,
/// or a Redis Cluster.
#[derive(Clone)]
pub(crate) enum Connector {
    /// One node.
    Single(Box<Client>),
    /// The master the Sentinels name, asked again for every new connection.
    Sentinel(Arc<SentinelResolver>),
    /// A Redis Cluster.
    Cluster(Arc<ClusterClients>),
}

/// The two cluster clients: `shared` with the ordinary response timeout, `blocking` with one
/// that covers a blocking pop.
pub(crate) struct ClusterClients {
    shared: ClusterClient,
    blocking: ClusterClient,
}

impl Connector {
    pub(crate) fn new(config: &RedisConfig, target: &Target) -> Result<Connector> {
        if target.sentinel.is_some() {
            return Ok(Connector::Sentinel(Arc::new(SentinelResolver::new(
                config, target,
            )?)));
        }
        if target.cluster {
            let blocking_timeout = config.block_timeout() + config.response_timeout();
            return Ok(Connector::Cluster(Arc::new(ClusterClients {
                shared: cluster_client(config, target, config.response_timeout())?,
                blocking: cluster_client(config, target, blocking_timeout)?,
            })));
        }
        Ok(Connector::Single(Box::new(single_client(config, target)?)))
    }

    /// The shared, auto-pipelined connection that reconnects by itself (found reachable now).
    pub(crate) async fn shared(&self, config: &RedisConfig, target: &Target) -> Result<Conn> {
        match self {
            Connector::Single(client) => {
                Ok(Conn::Single(shared_manager(config, target, client).await?))
            }
            Connector::Sentinel(resolver) => {
                // Ask the Sentinels once first: no master now is an error at once, not after
                // the wait a command allows for a failover.
                resolver
                    .master()
                    .await
                    .map_err(|e| error::unreachable(&target.display, e))?;
                let conn = SentinelConn::new(Arc::clone(resolver), config);
                let mut probe = conn.clone();
                ping(&mut probe)
                    .await
                    .map_err(|e| error::unreachable(&target.display, e))?;
                Ok(Conn::Sentinel(conn))
            }
            Connector::Cluster(clients) => {
                let mut conn = clients
                    .shared
                    .get_async_connection()
                    .await
                    .map_err(|e| error::unreachable(&target.display, e))?;
                ping(&mut conn)
                    .await
                    .map_err(|e| error::unreachable(&target.display, e))?;
                Ok(Conn::Cluster(conn))
            }
        }
    }

    /// A dedicated connection for a consumer loop. Its response timeout covers the blocking
    /// pop. With Sentinel it goes to the master the Sentinels name now.
    pub(crate) async fn blocking(&self, config: &RedisConfig) -> redis::RedisResult<Conn> {
        let timeout = config.block_timeout() + config.response_timeout();
        match self {
            Connector::Single(client) => Ok(Conn::Plain(
                client
                    .get_multiplexed_async_connection_with_config(&connection_config(
                        config,
                        Some(timeout),
                    ))
                    .await?,
            )),
            Connector::Sentinel(resolver) => {
                let client = resolver.master().await?;
                Ok(Conn::Plain(
                    client
                        .get_multiplexed_async_connection_with_config(&connection_config(
                            config,
                            Some(timeout),
                        ))
                        .await?,
                ))
            }
            Connector::Cluster(clients) => Ok(Conn::Cluster(
                clients.blocking.get_async_connection().await?,
            )),
        }
    }
}

fn cluster_client(
    config: &RedisConfig,
    target: &Target,
    response_timeout: Duration,
) -> Result<ClusterClient> {
    if target.tls {
        install_crypto_provider();
    }
    let mut builder = ClusterClientBuilder::new(target.nodes.clone())
        .connection_timeout(config.connect_timeout())
        .response_timeout(response_timeout)
        .retries(6)
        .max_retry_wait(config.reconnect_max_delay().as_millis() as u64)
        .min_retry_wait(100);
    if let Some(user) = &target.username {
        builder = builder.username(user);
    }
    if let Some(pass) = &target.password {
        builder = builder.password(pass);
    }
    if target.tls {
        builder = builder.tls(if target.tls_insecure {
            redis::cluster::TlsMode::Insecure
        } else {
            redis::cluster::TlsMode::Secure
        });
        if let Some(certs) = tls_certificates(config)? {
            builder = builder.certs(certs);
        }
    }
    builder.build().map_err(|e| {
        error::map(
            format!("invalid cluster settings for {}", target.display),
            e,
        )
    })
}

/// Finds the current master through the Sentinels: asks each in turn (the one that answered
/// last first) for `SENTINEL get-master-addr-by-name`, and checks with `ROLE` that the node
/// named is a master (right after a failover a Sentinel may still name the old one).
pub(crate) struct SentinelResolver {
    sentinels: Vec<ConnectionInfo>,
    next: AtomicUsize,
    master_name: String,
    master_settings: RedisConnectionInfo,
    tls: Option<bool>,
    certs: Option<TlsCertificates>,
    connect_timeout: Duration,
    response_timeout: Duration,
    /// Longest wait of a command for a master (during a failover).
    max_wait: Duration,
    max_delay: Duration,
}

fn not_connected(message: String) -> redis::RedisError {
    std::io::Error::new(std::io::ErrorKind::NotConnected, message).into()
}

impl SentinelResolver {
    fn new(config: &RedisConfig, target: &Target) -> Result<Self> {
        let sentinel = target.sentinel.as_ref().expect("a sentinel target");
        let mut sentinel_settings = RedisConnectionInfo::default();
        if let Some(pass) = &sentinel.password {
            sentinel_settings = sentinel_settings.set_password(pass);
        }
        if target.tls {
            install_crypto_provider();
        }
        Ok(SentinelResolver {
            sentinels: target
                .nodes
                .iter()
                .map(|n| n.clone().set_redis_settings(sentinel_settings.clone()))
                .collect(),
            next: AtomicUsize::new(0),
            master_name: sentinel.master_name.clone(),
            master_settings: target.nodes[0].redis_settings().clone(),
            tls: target.tls.then_some(target.tls_insecure),
            certs: tls_certificates(config)?,
            connect_timeout: config.connect_timeout(),
            response_timeout: config.response_timeout(),
            max_wait: config.connect_timeout() + config.reconnect_max_delay(),
            max_delay: config.reconnect_max_delay(),
        })
    }

    fn client(&self, info: ConnectionInfo) -> redis::RedisResult<Client> {
        match (&self.certs, self.tls) {
            (Some(certs), Some(_)) => Client::build_with_tls(info, certs.clone()),
            _ => Client::open(info),
        }
    }

    fn conn_config(&self) -> AsyncConnectionConfig {
        AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout))
    }

    /// A client for the current master.
    pub(crate) async fn master(&self) -> redis::RedisResult<Client> {
        let n = self.sentinels.len();
        let first = self.next.load(Ordering::Relaxed) % n;
        let mut errors = Vec::new();
        for i in 0..n {
            let idx = (first + i) % n;
            match self.ask(idx).await {
                Ok(client) => {
                    self.next.store(idx, Ordering::Relaxed);
                    return Ok(client);
                }
                Err(e) if error::is_auth_error(&e) => return Err(e),
                Err(e) => errors.push(e.to_string()),
            }
        }
        Err(not_connected(format!(
            "no master `{}` found through {n} sentinel(s): {}",
            self.master_name,
            errors.join("; ")
        )))
    }

    async fn ask(&self, idx: usize) -> redis::RedisResult<Client> {
        let sentinel = &self.sentinels[idx];
        let mut conn = self
            .client(sentinel.clone())?
            .get_multiplexed_async_connection_with_config(&self.conn_config())
            .await?;
        let addr: Option<(String, u16)> = redis::cmd("SENTINEL")
            .arg("get-master-addr-by-name")
            .arg(&self.master_name)
            .query_async(&mut conn)
            .await?;
        let Some((host, port)) = addr else {
            return Err(not_connected(format!(
                "sentinel {} knows no master named `{}`",
                sentinel.addr(),
                self.master_name
            )));
        };
        let addr = match self.tls {
            Some(insecure) => ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                tls_params: None,
            },
            None => ConnectionAddr::Tcp(host, port),
        };
        let info = addr
            .clone()
            .into_connection_info()?
            .set_redis_settings(self.master_settings.clone());
        let client = self.client(info)?;
        let mut master = client
            .get_multiplexed_async_connection_with_config(&self.conn_config())
            .await?;
        let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut master).await?;
        match role.first() {
            Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(client),
            Some(Value::SimpleString(r)) if r == "master" => Ok(client),
            _ => Err(not_connected(format!(
                "{addr}, named master `{}` by sentinel {}, is not a master (yet)",
                self.master_name,
                sentinel.addr()
            ))),
        }
    }
}

/// The shared connection to the master named by the Sentinels. It connects on first use and
/// again after a connection error or a `READONLY` / `UNBLOCKED` reply (the node was demoted),
/// asking the Sentinels each time, so it follows a failover by itself. A command waits (up to
/// `connect_timeout + reconnect_max_delay`) for a master during a failover; a command refused
/// with `READONLY` did not run and is sent once more to the new master.
#[derive(Clone)]
pub(crate) struct SentinelConn {
    inner: Arc<SentinelShared>,
}

struct SentinelShared {
    resolver: Arc<SentinelResolver>,
    current: std::sync::Mutex<Option<(MultiplexedConnection, u64)>>,
    generation: AtomicU64,
    connecting: tokio::sync::Mutex<()>,
    conn_config: AsyncConnectionConfig,
    db: i64,
}

/// The node answering is not (or no longer) the master.
fn demoted(e: &redis::RedisError) -> bool {
    matches!(
        e.kind(),
        ErrorKind::Server(ServerErrorKind::ReadOnly | ServerErrorKind::MasterDown)
    ) || matches!(e.code(), Some("READONLY" | "UNBLOCKED" | "MASTERDOWN"))
}

impl SentinelConn {
    fn new(resolver: Arc<SentinelResolver>, config: &RedisConfig) -> Self {
        SentinelConn {
            inner: Arc::new(SentinelShared {
                db: resolver.master_settings.db(),
                resolver,
                current: std::sync::Mutex::new(None),
                generation: AtomicU64::new(0),
                connecting: tokio::sync::Mutex::new(()),
                conn_config: connection_config(config, Some(config.response_timeout())),
            }),
        }
    }
}

impl SentinelShared {
    fn cached(&self) -> Option<(MultiplexedConnection, u64)> {
        self.current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    async fn get(&self) -> redis::RedisResult<(MultiplexedConnection, u64)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let _one_at_a_time = self.connecting.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let deadline = tokio::time::Instant::now() + self.resolver.max_wait;
        let mut backoff = reconnect_backoff(self.resolver.max_delay);
        loop {
            let attempt = async {
                let client = self.resolver.master().await?;
                client
                    .get_multiplexed_async_connection_with_config(&self.conn_config)
                    .await
            };
            match attempt.await {
                Ok(conn) => {
                    let generation = self.generation.fetch_add(1, Ordering::SeqCst) + 1;
                    *self
                        .current
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) =
                        Some((conn.clone(), generation));
                    return Ok((conn, generation));
                }
                Err(e) if error::is_auth_error(&e) => return Err(e),
                Err(e) => {
                    let pause = backoff.next_delay();
                    if tokio::time::Instant::now() + pause > deadline {
                        return Err(e);
                    }
                    tracing::debug!(error = %e, "redis: waiting for a master from the sentinels");
                    tokio::time::sleep(pause).await;
                }
            }
        }
    }

    /// Forget connection `generation` (unless a newer one replaced it already).
    fn drop_connection(&self, generation: u64) {
        let mut current = self
            .current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if matches!(&*current, Some((_, g)) if *g == generation) {
            *current = None;
        }
    }

    fn check<T>(&self, generation: u64, result: &redis::RedisResult<T>) {
        if let Err(e) = result
            && (error::is_connection_lost(e) || demoted(e))
        {
            self.drop_connection(generation);
        }
    }
}

impl ConnectionLike for SentinelConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        Box::pin(async move {
            let shared = &self.inner;
            let (mut conn, generation) = shared.get().await?;
            let result = conn.req_packed_command(cmd).await;
            match result {
                // Refused by a demoted node: it did not run; send it to the new master.
                Err(e) if demoted(&e) => {
                    shared.drop_connection(generation);
                    let (mut conn, generation) = shared.get().await?;
                    let result = conn.req_packed_command(cmd).await;
                    shared.check(generation, &result);
                    result
                }
                other => {
                    shared.check(generation, &other);
                    other
                }
            }
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        Box::pin(async move {
            let shared = &self.inner;
            let (mut conn, generation) = shared.get().await?;
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            shared.check(generation, &result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}

/// A connection of the broker, the backend or the lock.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single node, reconnecting by itself.
    Single(ConnectionManager),
    /// One plain connection (a consumer's blocking connection; replaced on error).
    Plain(MultiplexedConnection),
    /// The master named by Sentinels (follows failovers by itself).
    Sentinel(SentinelConn),
    /// A Redis Cluster (reconnects and follows slot moves by itself).
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connect to what `config.url` names.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<(Conn, Target)> {
        let target = config.target()?;
        let conn = Connector::new(config, &target)?
            .shared(config, &target)
            .await?;
        Ok((conn, target))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Plain(c) => c.req_packed_command(cmd),
            Conn::Sentinel(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Plain(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Plain(c) => c.get_db(),
            Conn::Sentinel(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// Run a command, once more if the connection had dropped (the connection reconnects in
/// between), so that a server restart is invisible to calls that may safely run twice.
pub(crate) async fn retry_once<C, T, F, Fut>(conn: &C, f: F) -> redis::RedisResult<T>
where
    C: Clone + Sync,
    F: Fn(C) -> Fut + Send,
    Fut: Future<Output = redis::RedisResult<T>> + Send,
{
    match f(conn.clone()).await {
        Err(e) if error::is_connection_lost(&e) => f(conn.clone()).await,
        other => other,
    }
}

/// Pauses between reconnection attempts: 100 ms doubling up to `max`.
pub(crate) fn reconnect_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_millis(100), max)
}

/// `hostname:pid:random`, unique per consumer stream.
pub(crate) fn consumer_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "localhost".to_owned());
    let random: u64 = rand::random();
    format!("{host}:{}:{random:016x}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_from_100_ms_up_to_max() {
        let mut b = reconnect_backoff(Duration::from_millis(500));
        let steps: Vec<_> = (0..5).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(steps, [100, 200, 400, 500, 500]);
        b.reset();
        assert_eq!(b.next_delay().as_millis(), 100);
    }

    #[test]
    fn consumer_ids_are_unique() {
        let a = consumer_id();
        let b = consumer_id();
        assert_ne!(a, b);
        assert!(a.contains(&format!(":{}:", std::process::id())));
    }
}
