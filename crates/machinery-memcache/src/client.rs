//! The connection to the memcached servers: Go's key spread, limits checked before a request,
//! and bounded retries (with back-off) of requests a server never received.

use std::time::Duration;

use machinery_core::{Error, Result};
use memcache::exp::{AsyncMetaClient, Error as McError, MAX_KEY_LENGTH, Operation};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tracing::warn;

use crate::config::MemcacheConfig;
use crate::error::{self, DRIVER};
use crate::route::{GoRouter, pick_server};

/// memcached's default `item_size_max` (`-I`), assumed when `stats settings` cannot be read.
pub(crate) const DEFAULT_ITEM_SIZE_MAX: usize = 1024 * 1024;

/// What memcached stores beside the value in one item: the item header (48 bytes on 64-bit
/// builds), the CAS (8), the key's terminating NUL, the value's trailing CRLF and the client
/// flags (4, only when non-zero), rounded up. A value fits when
/// `value + key + ITEM_OVERHEAD <= item_size_max`.
pub(crate) const ITEM_OVERHEAD: usize = 72;

const FIRST_PAUSE: Duration = Duration::from_millis(50);
const MAX_PAUSE: Duration = Duration::from_secs(1);

/// One client over every server of the URL. Cheap to clone.
#[derive(Clone)]
pub(crate) struct Client {
    meta: AsyncMetaClient,
    servers: Vec<String>,
    item_size_max: Vec<usize>,
    reconnect_for: Duration,
}

impl Client {
    /// Resolve the servers, read each one's `item_size_max`, and fail when none answers.
    pub(crate) async fn connect(config: &MemcacheConfig) -> Result<Self> {
        let servers = config.servers()?;
        let meta = AsyncMetaClient::builder()
            .router(GoRouter)
            .connect_timeout(Some(config.connect_timeout))
            .io_timeout(Some(config.io_timeout))
            .max_idle(config.max_idle)
            .connect_multiple_async(servers.iter())
            .await
            .map_err(|e| {
                Error::backend(
                    DRIVER,
                    format!("cannot resolve the servers of {}", config.url),
                    matches!(e, McError::Io(_)),
                    e,
                )
            })?;
        let probes = servers.iter().map(|s| {
            let timeout = config.connect_timeout + config.io_timeout;
            async move { tokio::time::timeout(timeout, read_item_size_max(s)).await }
        });
        let answers = futures::future::join_all(probes).await;
        let mut item_size_max = Vec::with_capacity(servers.len());
        let mut failures = Vec::new();
        for (server, answer) in servers.iter().zip(answers) {
            let size = match answer {
                Ok(Ok(size)) => size,
                Ok(Err(e)) => {
                    failures.push(format!("{server}: {e}"));
                    DEFAULT_ITEM_SIZE_MAX
                }
                Err(_) => {
                    failures.push(format!("{server}: no answer in time"));
                    DEFAULT_ITEM_SIZE_MAX
                }
            };
            item_size_max.push(size);
        }
        if failures.len() == servers.len() {
            return Err(error::plain(
                format!("cannot connect to memcached: {}", failures.join("; ")),
                true,
            ));
        }
        for failure in &failures {
            warn!(
                server = %failure,
                "memcached server unreachable at start; its keys fail until it answers (item size limit assumed 1 MiB)"
            );
        }
        Ok(Client {
            meta,
            servers,
            item_size_max,
            reconnect_for: config.reconnect_for,
        })
    }

    /// The servers, `host:port`, in URL order.
    pub(crate) fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The server (`host:port`) Go's client uses for `key`.
    pub(crate) fn server_of(&self, key: &[u8]) -> &str {
        &self.servers[pick_server(key, self.servers.len())]
    }

    /// The largest value that fits under `key` on its server.
    pub(crate) fn value_limit(&self, key: &[u8]) -> usize {
        self.item_size_max[pick_server(key, self.servers.len())]
            .saturating_sub(key.len() + ITEM_OVERHEAD)
    }

    /// A key memcached (and Go's client) accepts: at most 250 bytes, no space or control
    /// character. Checked before any request; the error names the key and the limit.
    pub(crate) fn check_key(&self, key: &str) -> Result<()> {
        if key.len() > MAX_KEY_LENGTH {
            warn!(
                key,
                limit = MAX_KEY_LENGTH,
                "memcache key over the protocol limit; nothing sent"
            );
            return Err(Error::TooLarge {
                what: "memcache key",
                size: key.len(),
                limit: MAX_KEY_LENGTH,
            });
        }
        if key.is_empty() || key.bytes().any(|b| b <= b' ' || b == 0x7f) {
            warn!(
                key,
                "memcache key empty or with a space or control character; nothing sent"
            );
            return Err(error::plain(
                format!(
                    "`{}` is not a valid memcache key (empty, or holds a space or control character)",
                    key.escape_debug()
                ),
                false,
            ));
        }
        Ok(())
    }

    /// A value that fits the server's item size (`item_size_max` from `stats settings`,
    /// less the item header). Checked before any request.
    pub(crate) fn check_value(&self, what: &'static str, key: &str, len: usize) -> Result<()> {
        let limit = self.value_limit(key.as_bytes());
        if len > limit {
            let server = self.server_of(key.as_bytes());
            warn!(
                key,
                server,
                size = len,
                limit,
                "{what} over the memcached item size; nothing sent"
            );
            return Err(Error::TooLarge {
                what,
                size: len,
                limit,
            });
        }
        Ok(())
    }

    /// Run one operation on its key's server. A request the server never received (refused,
    /// reset, timed out before it was written) is sent again after a pause that starts at
    /// 50 ms and doubles up to 1 s, for at most `reconnect_for`; an `idempotent` one is also
    /// sent again when its outcome is unknown. Errors name the server.
    pub(crate) async fn run<O>(&self, what: &str, op: O, idempotent: bool) -> Result<O::Output>
    where
        O: Operation + Clone + Send + Sync,
        O::Output: Send,
    {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        loop {
            match self.meta.run(op.clone()).await {
                Ok(out) => return Ok(out),
                Err(e) if self.again(&e, idempotent, started, pause) => {
                    warn!(server = self.server_of(op.key()), error = %e, ?pause, "memcached request not delivered; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                }
                Err(e) => return Err(self.fail(what, op.key(), e)),
            }
        }
    }

    /// Run several operations of one kind: one pipelined batch per server, the servers at
    /// once. Each result is in input order. Operations whose server could not be reached are
    /// retried like [`Client::run`]; the others keep their results.
    pub(crate) async fn run_many<O>(
        &self,
        what: &str,
        ops: Vec<O>,
        idempotent: bool,
    ) -> Vec<Result<O::Output>>
    where
        O: Operation + Clone + Send + Sync,
        O::Output: Send,
    {
        let started = Instant::now();
        let mut pause = FIRST_PAUSE;
        let mut outputs: Vec<Option<Result<O::Output>>> = (0..ops.len()).map(|_| None).collect();
        let mut todo: Vec<usize> = (0..ops.len()).collect();
        while !todo.is_empty() {
            let batch: Vec<O> = todo.iter().map(|&i| ops[i].clone()).collect();
            let results = match self.meta.run_many(batch).await {
                Ok(results) => results,
                Err(e) => {
                    // Validation failed: nothing was sent.
                    let text = e.to_string();
                    for &i in &todo {
                        outputs[i] =
                            Some(Err(error::plain(format!("cannot {what}: {text}"), false)));
                    }
                    break;
                }
            };
            let mut again = Vec::new();
            for (&i, result) in todo.iter().zip(results) {
                match result {
                    Ok(out) => outputs[i] = Some(Ok(out)),
                    Err(e) if self.again(&e, idempotent, started, pause) => {
                        warn!(server = self.server_of(ops[i].key()), error = %e, "memcached request not delivered; retrying");
                        again.push(i);
                    }
                    Err(e) => outputs[i] = Some(Err(self.fail(what, ops[i].key(), e))),
                }
            }
            if !again.is_empty() {
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
            todo = again;
        }
        outputs
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Err(error::plain(format!("cannot {what}"), true))))
            .collect()
    }

    fn again(&self, e: &McError, idempotent: bool, started: Instant, pause: Duration) -> bool {
        (error::is_retryable(e) || (idempotent && e.is_ambiguous()))
            && started.elapsed() + pause <= self.reconnect_for
    }

    fn fail(&self, what: &str, key: &[u8], e: McError) -> Error {
        let server = self.server_of(key);
        match &e {
            McError::Server(text) if text.contains("too large") => Error::backend(
                DRIVER,
                format!("cannot {what} on memcached {server}: the item is over its item size"),
                false,
                e,
            ),
            _ => error::map(what, server, e),
        }
    }
}

/// `item_size_max` from `stats settings` on `server`.
async fn read_item_size_max(server: &str) -> std::io::Result<usize> {
    let stream = TcpStream::connect(server).await?;
    let (read, mut write) = stream.into_split();
    write.write_all(b"stats settings\r\n").await?;
    let mut lines = BufReader::new(read).lines();
    let mut size = None;
    while let Some(line) = lines.next_line().await? {
        let line = line.trim_end();
        if line == "END" {
            break;
        }
        if line == "ERROR" || line.starts_with("CLIENT_ERROR") || line.starts_with("SERVER_ERROR") {
            return Err(std::io::Error::other(format!(
                "stats settings answered {line}"
            )));
        }
        if let Some(v) = line.strip_prefix("STAT item_size_max ") {
            size = v.trim().parse::<usize>().ok();
        }
    }
    Ok(size.unwrap_or(DEFAULT_ITEM_SIZE_MAX))
}
