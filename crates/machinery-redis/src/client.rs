//! Opening connections: one shared, auto-pipelined connection per broker / backend, dedicated
//! connections for blocking pops, and the cluster client for the backend.

use std::time::Duration;

use machinery_core::{Backoff, Error, Result};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, TlsCertificates, Value};

use crate::config::{RedisConfig, Target};
use crate::error::{self, DRIVER};

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
    if target.cluster {
        return Err(Error::Unsupported {
            driver: DRIVER,
            operation: "a redis cluster as broker (its queue keys cannot share a hash slot)",
        });
    }
    if target.tls {
        install_crypto_provider();
    }
    let info = target.nodes[0].clone();
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

/// A dedicated connection for a consumer loop. Its response timeout covers the blocking pop.
pub(crate) async fn blocking_connection(
    config: &RedisConfig,
    client: &Client,
) -> redis::RedisResult<MultiplexedConnection> {
    let timeout = config.block_timeout() + config.response_timeout();
    client
        .get_multiplexed_async_connection_with_config(&connection_config(config, Some(timeout)))
        .await
}

/// The backend's and the lock's connection: one node or a cluster.
#[derive(Clone)]
pub(crate) enum Conn {
    /// A single node, reconnecting by itself.
    Single(ConnectionManager),
    /// A Redis Cluster (reconnects and follows slot moves by itself).
    Cluster(ClusterConnection),
}

impl Conn {
    /// Connect to what `config.url` names.
    pub(crate) async fn connect(config: &RedisConfig) -> Result<(Conn, Target)> {
        let target = config.target()?;
        if !target.cluster {
            let client = single_client(config, &target)?;
            let manager = shared_manager(config, &target, &client).await?;
            return Ok((Conn::Single(manager), target));
        }
        if target.tls {
            install_crypto_provider();
        }
        let mut builder = ClusterClientBuilder::new(target.nodes.clone())
            .connection_timeout(config.connect_timeout())
            .response_timeout(config.response_timeout())
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
        let client = builder.build().map_err(|e| {
            error::map(
                format!("invalid cluster settings for {}", target.display),
                e,
            )
        })?;
        let mut conn = client
            .get_async_connection()
            .await
            .map_err(|e| error::unreachable(&target.display, e))?;
        ping(&mut conn)
            .await
            .map_err(|e| error::unreachable(&target.display, e))?;
        Ok((Conn::Cluster(conn), target))
    }

    pub(crate) fn is_cluster(&self) -> bool {
        matches!(self, Conn::Cluster(_))
    }
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
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
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
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
