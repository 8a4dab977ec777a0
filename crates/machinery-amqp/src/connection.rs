//! Long-lived connections: failover over several URLs, reconnection with back-off, one
//! confirm-mode channel for publishing and a small pool of plain channels for everything
//! that may fail at channel level (a 404 closes the channel it happened on).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use lapin::options::{ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::FieldTable;
use lapin::{Channel, Connection, ConnectionProperties};
use machinery_core::{Backoff, Error, Result, TtlCache};
use tokio_util::sync::CancellationToken;

use crate::config::{AmqpConfig, BrokerUrl, short};
use crate::error;

/// Most channels kept open for reuse per connection.
const POOL_MAX: usize = 32;
/// Most declarations remembered per connection before the memory is cleared.
const DECLARED_MAX: usize = 20_000;
/// How often a session's watcher looks at the connection state, in case lapin reports the
/// loss of the connection through no event.
const WATCH_EVERY: Duration = Duration::from_millis(100);
/// Longest wait for the server's answer to `connection.close`.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Doubling pauses between reconnection attempts, from 100 ms up to
/// `reconnect_max_delay`, with jitter so that many workers do not reconnect in step after a
/// server restart.
pub(crate) fn reconnect_backoff(config: &AmqpConfig) -> Backoff {
    Backoff::new(Duration::from_millis(100), config.reconnect_max_delay()).with_jitter()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// One open connection and what lives on it.
pub(crate) struct Session {
    pub(crate) id: u64,
    pub(crate) url: String,
    conn: Connection,
    confirm: Channel,
    pool: Mutex<Vec<Channel>>,
    declared: TtlCache<()>,
    declaring: Vec<tokio::sync::Mutex<()>>,
    /// Cancelled as soon as the connection or its publishing channel is gone (see
    /// [`Session::guard`]), and when the session is dropped.
    dead: CancellationToken,
}

/// Stripes of [`Session::declaring`].
const DECLARE_STRIPES: usize = 64;

impl Session {
    /// Both the connection and the publishing channel are usable.
    pub(crate) fn healthy(&self) -> bool {
        !self.dead.is_cancelled()
            && self.conn.status().connected()
            && self.confirm.status().connected()
    }

    /// Cancelled when this session's connection (or its publishing channel) is gone.
    pub(crate) fn dead(&self) -> &CancellationToken {
        &self.dead
    }

    /// Run `fut`, an operation on this session, but give up with a temporary error as soon
    /// as the connection dies. lapin does not answer every request that races with the loss
    /// of its connection (a channel open, a declaration or a publisher confirm issued just as
    /// the socket closes can wait for ever), so no wait on a session may go unguarded.
    pub(crate) async fn guard<T>(
        &self,
        what: &str,
        fut: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        guarded(&self.dead, &self.url, what, fut).await
    }

    /// The channel in confirm mode, shared by all publishers of this connection; publishes
    /// are pipelined on it and each caller awaits its own confirm.
    pub(crate) fn confirm_channel(&self) -> &Channel {
        &self.confirm
    }

    /// A plain channel for this caller alone (see [`PooledChannel`]).
    pub(crate) async fn channel(self: &Arc<Self>) -> Result<PooledChannel> {
        loop {
            let pooled = lock(&self.pool).pop();
            match pooled {
                Some(ch) if ch.status().connected() => {
                    return Ok(PooledChannel {
                        session: Arc::clone(self),
                        channel: Some(ch),
                        keep: false,
                    });
                }
                Some(_) => continue,
                None => break,
            }
        }
        let ch = self
            .guard("a channel open", async {
                self.conn
                    .create_channel()
                    .await
                    .map_err(|e| error::amqp("open a channel", e))
            })
            .await?;
        Ok(PooledChannel {
            session: Arc::clone(self),
            channel: Some(ch),
            keep: false,
        })
    }

    /// A channel that is not returned to the pool (consumers own theirs).
    pub(crate) async fn own_channel(&self) -> Result<Channel> {
        self.guard("a channel open", async {
            self.conn
                .create_channel()
                .await
                .map_err(|e| error::amqp("open a channel", e))
        })
        .await
    }

    /// Whether `key` was declared on this connection and is still known to exist.
    pub(crate) fn is_declared(&self, key: &str) -> bool {
        self.declared.contains(key)
    }

    /// Remember a declaration, for ever or for `valid_for` (queues that expire).
    pub(crate) fn mark_declared(&self, key: String, valid_for: Option<Duration>) {
        self.declared
            .insert(key, (), valid_for.unwrap_or(Duration::MAX));
    }

    /// A lock shared by every declaration of `key` on this connection (and a few others), so
    /// that concurrent publishers to a new queue declare it once.
    pub(crate) async fn declaring(&self, key: &str) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut h);
        self.declaring[(h.finish() % DECLARE_STRIPES as u64) as usize]
            .lock()
            .await
    }

    /// Forget a declaration (the queue was deleted or a message to it came back unroutable).
    pub(crate) fn forget(&self, key: &str) {
        self.declared.remove(key);
    }

    /// Forget every declaration whose key starts with `prefix`.
    pub(crate) fn forget_prefix(&self, prefix: &str) {
        self.declared.retain_keys(|k| !k.starts_with(prefix));
    }

    /// Close the connection politely, waiting a bounded time for the server's answer.
    async fn close(&self) {
        // Also when only the publishing channel died: the connection must not be leaked.
        if self.conn.status().connected() {
            let closing = self.conn.close(200, "bye".into());
            if tokio::time::timeout(CLOSE_TIMEOUT, closing).await.is_err() {
                tracing::debug!(url = %self.url, "amqp connection.close got no answer");
            }
        }
        self.dead.cancel();
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        // Stops the watcher.
        self.dead.cancel();
    }
}

/// [`Session::guard`] for a connection that is not a session yet.
async fn guarded<T>(
    dead: &CancellationToken,
    url: &str,
    what: &str,
    fut: impl Future<Output = Result<T>>,
) -> Result<T> {
    tokio::select! {
        biased;
        out = fut => out,
        _ = dead.cancelled() => Err(error::temporary(format!(
            "the connection to {url} was lost during {what}"
        ))),
    }
}

/// Cancel `dead` once the connection is no longer connected or the publishing channel (when
/// there is one yet) is closed, looking at each connection event and every [`WATCH_EVERY`];
/// the task ends when `dead` is cancelled.
fn watch(conn: &Connection, confirm: Option<&Channel>, dead: CancellationToken) {
    use futures::StreamExt;
    let mut events = conn.events_listener();
    let status = conn.status().clone();
    let channel = confirm.map(|c| c.status().clone());
    let gone = move || !status.connected() || channel.as_ref().is_some_and(|c| !c.connected());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(WATCH_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut listening = true;
        loop {
            tokio::select! {
                _ = dead.cancelled() => return,
                // Channel errors (a 404 on a pooled channel) are events too: the state
                // tells whether the connection itself is gone.
                event = events.next(), if listening => listening = event.is_some(),
                _ = tick.tick() => {}
            }
            if gone() {
                break;
            }
        }
        dead.cancel();
    });
}

/// A channel checked out of a session's pool. It goes back to the pool only when the user
/// called [`PooledChannel::keep`] (every delivery taken on it was settled); otherwise it is
/// closed on drop, so that RabbitMQ requeues whatever an interrupted operation still held.
pub(crate) struct PooledChannel {
    session: Arc<Session>,
    channel: Option<Channel>,
    keep: bool,
}

impl PooledChannel {
    /// Return the channel to the pool when dropped.
    pub(crate) fn keep(&mut self) {
        self.keep = true;
    }
}

impl std::ops::Deref for PooledChannel {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        self.channel.as_ref().expect("channel present until drop")
    }
}

impl Drop for PooledChannel {
    fn drop(&mut self) {
        if let Some(ch) = self.channel.take()
            && self.keep
            && ch.status().connected()
        {
            let mut pool = lock(&self.session.pool);
            if pool.len() < POOL_MAX {
                pool.push(ch);
            }
        }
    }
}

/// A connection that reconnects itself: the current [`Session`], replaced when it dies.
pub(crate) struct Link {
    role: &'static str,
    urls: Vec<BrokerUrl>,
    config: Arc<AmqpConfig>,
    tls: OwnedTLSConfig,
    current: Mutex<Option<Arc<Session>>>,
    reconnect: tokio::sync::Mutex<()>,
    /// When and why the last connection attempt failed: callers arriving right after it fail
    /// at once instead of queueing for attempts of their own (a black-holed host would make
    /// each one wait for the connect timeout).
    last_failure: Mutex<Option<(Instant, String)>>,
    ids: AtomicU64,
    closed: CancellationToken,
}

/// How long a failed connection attempt answers for the callers that waited for it.
const FAILURE_MEMORY: Duration = Duration::from_millis(250);

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("role", &self.role)
            .field("urls", &self.urls)
            .finish_non_exhaustive()
    }
}

impl Link {
    /// A link that connects on first use. `role` names it in logs and in the connection
    /// name (`publisher`, `consumer`, `backend`).
    pub(crate) fn new(
        role: &'static str,
        urls: Vec<BrokerUrl>,
        config: Arc<AmqpConfig>,
    ) -> Result<Self> {
        let cert_chain = match &config.tls_ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| {
                Error::config(
                    "amqp.tls_ca_file",
                    format!("cannot read {}: {e}", path.display()),
                )
            })?),
            None => None,
        };
        Ok(Link {
            role,
            urls,
            config,
            tls: OwnedTLSConfig {
                identity: None,
                cert_chain,
            },
            current: Mutex::new(None),
            reconnect: tokio::sync::Mutex::new(()),
            last_failure: Mutex::new(None),
            ids: AtomicU64::new(1),
            closed: CancellationToken::new(),
        })
    }

    fn check_open(&self) -> Result<()> {
        if self.closed.is_cancelled() {
            Err(Error::Closed("amqp connection"))
        } else {
            Ok(())
        }
    }

    /// The current session, connecting (trying every URL in order) when there is none or
    /// it died. One attempt: the caller decides about retrying.
    pub(crate) async fn session(&self) -> Result<Arc<Session>> {
        self.check_open()?;
        if let Some(s) = lock(&self.current).as_ref()
            && s.healthy()
        {
            return Ok(Arc::clone(s));
        }
        let _guard = self.reconnect.lock().await;
        self.check_open()?;
        let stale = {
            let current = lock(&self.current);
            match current.as_ref() {
                Some(s) if s.healthy() => return Ok(Arc::clone(s)),
                other => other.cloned(),
            }
        };
        if let Some((at, why)) = lock(&self.last_failure).as_ref()
            && at.elapsed() < FAILURE_MEMORY
        {
            return Err(error::temporary(why.clone()));
        }
        if let Some(stale) = stale {
            tracing::warn!(role = self.role, url = %stale.url, "amqp connection lost, reconnecting");
            stale.close().await;
        }
        match self.connect().await {
            Ok(session) => {
                let session = Arc::new(session);
                *lock(&self.current) = Some(Arc::clone(&session));
                *lock(&self.last_failure) = None;
                Ok(session)
            }
            Err(e) => {
                if e.is_temporary() {
                    *lock(&self.last_failure) = Some((Instant::now(), e.to_string()));
                }
                Err(e)
            }
        }
    }

    /// Drop session `id` if it is still the current one (after a failure that left it
    /// unusable); the next [`Link::session`] reconnects.
    pub(crate) fn invalidate(&self, id: u64) {
        let mut current = lock(&self.current);
        if current.as_ref().is_some_and(|s| s.id == id)
            && let Some(s) = current.take()
        {
            tokio::spawn(async move { s.close().await });
        }
    }

    async fn connect(&self) -> Result<Session> {
        let mut last: Option<Error> = None;
        for url in &self.urls {
            match self.connect_one(url).await {
                Ok(s) => {
                    tracing::debug!(role = self.role, url = %url.redacted, "amqp connected");
                    return Ok(s);
                }
                Err(e) if e.is_temporary() => {
                    tracing::warn!(role = self.role, url = %url.redacted, error = %e, "amqp connection failed");
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| error::temporary("no broker url")))
    }

    async fn connect_one(&self, url: &BrokerUrl) -> Result<Session> {
        if matches!(url.uri.scheme, lapin::uri::AMQPScheme::AMQPS) {
            // One crypto provider for the process (several crates bring rustls).
            let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        }
        let props = ConnectionProperties::default()
            .with_connection_name(format!("{} {}", self.config.connection_name, self.role).into());
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| error::amqp("find the tokio runtime", e))?;
        let conn = tokio::time::timeout(
            self.config.connect_timeout(),
            Connection::connect_uri_with_config(url.uri.clone(), props, self.tls.clone(), runtime),
        )
        .await
        .map_err(|_| {
            error::temporary(format!(
                "connecting to {} timed out after {:?}",
                url.redacted,
                self.config.connect_timeout()
            ))
        })?
        .map_err(|e| error::amqp(format!("connect to {}", url.redacted), e))?;
        // Opening the publishing channel and declaring the exchange give up when the new
        // connection dies under them, and take at most the connect timeout.
        let dead = CancellationToken::new();
        watch(&conn, None, dead.clone());
        let setup = tokio::time::timeout(
            self.config.connect_timeout(),
            guarded(
                &dead,
                &url.redacted,
                "the publishing channel set-up",
                self.setup(&conn),
            ),
        )
        .await
        .map_err(|_| {
            error::temporary(format!(
                "setting up the connection to {} timed out after {:?}",
                url.redacted,
                self.config.connect_timeout()
            ))
        });
        let confirm = match setup {
            Ok(Ok(confirm)) => confirm,
            Ok(Err(e)) | Err(e) => {
                dead.cancel();
                if conn.status().connected() {
                    let _ =
                        tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, "bye".into())).await;
                }
                return Err(e);
            }
        };
        // The watcher of the session proper also follows the publishing channel.
        dead.cancel();
        let dead = CancellationToken::new();
        watch(&conn, Some(&confirm), dead.clone());
        Ok(Session {
            id: self.ids.fetch_add(1, Ordering::Relaxed),
            url: url.redacted.clone(),
            conn,
            confirm,
            pool: Mutex::new(Vec::new()),
            declared: TtlCache::new(DECLARED_MAX),
            declaring: (0..DECLARE_STRIPES)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            dead,
        })
    }

    /// Open the publishing channel of a new connection: declare the exchange on it and put
    /// it in confirm mode.
    async fn setup(&self, conn: &Connection) -> Result<Channel> {
        let confirm = conn
            .create_channel()
            .await
            .map_err(|e| error::amqp("open a channel", e))?;
        if !self.config.exchange.is_empty() {
            confirm
                .exchange_declare(
                    short("amqp.exchange", &self.config.exchange)?,
                    self.config.exchange_kind(),
                    ExchangeDeclareOptions {
                        passive: false,
                        durable: true,
                        auto_delete: false,
                        internal: false,
                        nowait: false,
                    },
                    FieldTable::default(),
                )
                .await
                .map_err(|e| {
                    error::amqp(format!("declare exchange `{}`", self.config.exchange), e)
                })?;
        }
        confirm
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| error::amqp("enable publisher confirms", e))?;
        Ok(confirm)
    }

    /// Run `op` on the current session, reconnecting and retrying temporary failures with
    /// back-off until `publish_retry_timeout` has passed. An attempt gives up as soon as its
    /// connection dies, and after the retry timeout (at least the connect timeout) even on a
    /// connection that looks alive: it then fails with a temporary error and the connection
    /// is replaced, so that no caller waits for ever for an answer that will not come.
    pub(crate) async fn retrying<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T>
    where
        F: FnMut(Arc<Session>) -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let deadline = Instant::now() + self.config.publish_retry_timeout();
        let mut backoff = reconnect_backoff(&self.config);
        loop {
            let attempt = match self.session().await {
                Ok(session) => {
                    let id = session.id;
                    let healthy_before = session.healthy();
                    let bound = deadline
                        .saturating_duration_since(Instant::now())
                        .max(self.config.connect_timeout());
                    let attempt = session.guard(what, op(Arc::clone(&session)));
                    let out = match tokio::time::timeout(bound, attempt).await {
                        Ok(out) => out,
                        Err(_) => {
                            tracing::warn!(role = self.role, url = %session.url, "amqp {what} got no answer within {bound:?}, reconnecting");
                            self.invalidate(id);
                            Err(error::temporary(format!(
                                "{what} got no answer from {} within {bound:?}",
                                session.url
                            )))
                        }
                    };
                    if out.as_ref().is_err_and(Error::is_temporary) && !session.healthy() {
                        if healthy_before {
                            tracing::debug!(role = self.role, "amqp session broke during {what}");
                        }
                        self.invalidate(id);
                    }
                    out
                }
                Err(e) => Err(e),
            };
            match attempt {
                Ok(v) => return Ok(v),
                Err(e) if e.is_temporary() && Instant::now() < deadline => {
                    let pause = backoff.next_delay();
                    tracing::warn!(role = self.role, error = %e, retry_in = ?pause, "amqp {what} failed, retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(pause) => {}
                        _ = self.closed.cancelled() => return Err(Error::Closed("amqp connection")),
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Close the connection; every later call fails with [`Error::Closed`].
    pub(crate) async fn close(&self) {
        self.closed.cancel();
        let _guard = self.reconnect.lock().await;
        let current = lock(&self.current).take();
        if let Some(s) = current {
            s.close().await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}
