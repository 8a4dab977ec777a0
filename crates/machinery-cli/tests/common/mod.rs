//! What the process-level tests share: a `machinery worker` child process, and counting stored
//! SUCCESS states in Redis.
#![allow(dead_code)] // each test binary uses a different part

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery::{Server, Signature};
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

/// `machinery worker --broker B --backend K --queue Q -c N`, logging warnings only.
pub fn worker_command(broker: &str, backend: &str, queue: &str, concurrency: usize) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_machinery"));
    cmd.args(["worker", "--broker", broker, "--backend", backend])
        .args(["--queue", queue, "-c", &concurrency.to_string()])
        .env("MACHINERY_LOG", "warn")
        .stdout(Stdio::null());
    cmd
}

/// A `machinery worker` process, killed (SIGKILL) when dropped.
pub struct Worker(Option<Child>);

impl Worker {
    pub fn spawn(mut cmd: Command) -> Worker {
        Worker(Some(cmd.spawn().expect("spawn machinery worker")))
    }

    pub fn start(broker: &str, backend: &str, queue: &str, concurrency: usize) -> Worker {
        Self::spawn(worker_command(broker, backend, queue, concurrency))
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&mut self) -> bool {
        self.0
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }

    pub fn sigterm(&self) {
        let pid = self.0.as_ref().expect("worker running").id();
        let ok = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill")
            .success();
        assert!(ok, "kill -TERM failed");
    }

    /// Wait for the process to exit by itself; kill it and fail after `limit`.
    pub fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let child = self.0.as_mut().expect("worker running");
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.0 = None;
                return status;
            }
            if Instant::now() > deadline {
                self.kill();
                panic!("worker did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A raw Redis connection; `var` names the variable the URL came from, for the panic. Replies
/// may take up to 30 s (the client's default of 0.5 s is too short for an MGET of 1 000
/// states on a loaded machine).
pub async fn redis_conn(url: &str, var: &str) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_connection_timeout(Some(Duration::from_secs(10)));
    redis::Client::open(url)
        .expect("url")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .unwrap_or_else(|e| panic!("{var} is set but redis is unreachable: {e}"))
}

/// Send `add(i, 1)` for `i` in `from..from + n` to `queue`, 64 at a time; their UUIDs.
pub async fn send_adds(server: &Server, queue: &str, from: usize, n: usize) -> Vec<String> {
    let send = futures::stream::iter(from..from + n)
        .map(|i| {
            let sig = Signature::new("add")
                .routing_key(queue)
                .arg(i as i64)
                .arg(1_i64);
            async move { server.send_task(sig).await.expect("send").uuid().to_owned() }
        })
        .buffer_unordered(64)
        .collect();
    // A broker that stops confirming publishes (RabbitMQ under a memory or disk alarm blocks
    // publishers without an error) fails the test with the reason instead of hanging it.
    const LIMIT: std::time::Duration = std::time::Duration::from_secs(300);
    tokio::time::timeout(LIMIT, send).await.unwrap_or_else(|_| {
        panic!(
            "sending {n} tasks to {queue} took more than {LIMIT:?}: the broker stopped \
             confirming publishes (RabbitMQ: see the alarms in `rabbitmqctl status`)"
        )
    })
}

/// How many of `uuids` have a SUCCESS state stored.
pub async fn successes<C>(conn: &mut C, uuids: &[String]) -> usize
where
    C: AsyncCommands,
{
    let mut n = 0;
    for chunk in uuids.chunks(1000) {
        let states: Vec<Option<String>> = conn.mget(chunk).await.expect("mget");
        n += states
            .iter()
            .flatten()
            .filter(|s| s.contains("\"State\":\"SUCCESS\""))
            .count();
    }
    n
}

/// Wait until `want` of `uuids` are SUCCESS, failing if the worker exits or `limit` passes.
pub async fn wait_for_successes<C: AsyncCommands>(
    conn: &mut C,
    uuids: &[String],
    want: usize,
    limit: Duration,
    worker: &mut Worker,
) {
    let start = Instant::now();
    loop {
        let done = successes(conn, uuids).await;
        if done >= want {
            return;
        }
        assert!(worker.is_running(), "the worker process exited");
        assert!(
            start.elapsed() < limit,
            "only {done} of {want} tasks succeeded after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
