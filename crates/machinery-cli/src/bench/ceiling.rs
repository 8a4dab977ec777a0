//! `bench ceiling`: Go Machinery's Redis protocol driven by hand, with no machinery engine —
//! what the Redis server and one multiplexed connection per side allow, to compare `e2e` and
//! `drain` with.
//!
//! Per task the sender runs `SET <uuid> <PENDING state> EX 3600` then `RPUSH <queue>
//! <signature>`; the worker takes with `LMOVE <queue> <processing> LEFT RIGHT` (non-blocking;
//! on nil it waits for the next tick of a 50 µs sleeper thread, ~0.1 ms with the kernel's
//! timer slack, and tries again), stores `RECEIVED`, `STARTED` and `SUCCESS` with `SET ... EX
//! 3600`, then `LREM <processing> 1 <msg>`. Each step waits for its reply before the next, as
//! a task's steps do. The JSON bodies are machinery's own (`Signature::to_json`,
//! `TaskState::to_json`), built once with a placeholder UUID that each task replaces.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machinery::{Config, Error, Result, Signature, State, TaskResult, TaskState};
use redis::aio::MultiplexedConnection;
use tokio::sync::Notify;

use super::BenchArgs;
use super::redis_cost::{self, Probe};

const EXPIRE_SECS: u64 = 3600;
/// A task UUID of the usual length (`task_` + 36), replaced in the bodies.
const PLACEHOLDER: &str = "task_00000000-0000-0000-0000-000000000000";
/// How long the sleeper thread sleeps between two wake-ups of idle worker callers.
const IDLE_TICK: Duration = Duration::from_micros(50);
/// Give up on a run after this long.
const RUN_TIMEOUT: Duration = Duration::from_secs(600);

fn redis_err(what: &'static str) -> impl FnOnce(redis::RedisError) -> Error {
    move |e| Error::backend("redis", what, true, e)
}

/// A body split at its placeholder UUIDs.
struct Template {
    parts: Vec<Vec<u8>>,
}

impl Template {
    fn new(body: &[u8]) -> Result<Template> {
        let text = std::str::from_utf8(body).map_err(|e| Error::decode("template", e))?;
        let parts: Vec<Vec<u8>> = text
            .split(PLACEHOLDER)
            .map(|p| p.as_bytes().to_vec())
            .collect();
        if parts.len() < 2 {
            return Err(Error::decode("template", "the body has no task UUID"));
        }
        Ok(Template { parts })
    }

    /// The body with `uuid` in place of each placeholder.
    fn fill(&self, uuid: &[u8]) -> Vec<u8> {
        let len =
            self.parts.iter().map(Vec::len).sum::<usize>() + uuid.len() * (self.parts.len() - 1);
        let mut out = Vec::with_capacity(len);
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.extend_from_slice(uuid);
            }
            out.extend_from_slice(part);
        }
        out
    }

    fn len(&self) -> usize {
        self.fill(PLACEHOLDER.as_bytes()).len()
    }
}

/// The five bodies of a task's life, and where the UUID sits in the signature.
struct Bodies {
    signature: Template,
    uuid_at: usize,
    pending: Template,
    received: Template,
    started: Template,
    success: Template,
}

impl Bodies {
    fn new(queue: &str) -> Result<Bodies> {
        let mut sig = Signature::new("add").arg(123_456i64).arg(1i64);
        sig.uuid = PLACEHOLDER.to_owned();
        sig.routing_key = queue.to_owned();
        let signature = sig.to_json()?;
        let uuid_at = signature
            .windows(PLACEHOLDER.len())
            .position(|w| w == PLACEHOLDER.as_bytes())
            .ok_or_else(|| Error::decode("signature", "no UUID in the body"))?;
        Ok(Bodies {
            signature: Template::new(&signature)?,
            uuid_at,
            pending: Template::new(&TaskState::pending(&sig).to_json()?)?,
            received: Template::new(&TaskState::new(&sig, State::Received).to_json()?)?,
            started: Template::new(&TaskState::new(&sig, State::Started).to_json()?)?,
            success: Template::new(
                &TaskState::success(&sig, vec![TaskResult::new(123_457i64)]).to_json()?,
            )?,
        })
    }

    fn sizes(&self) -> String {
        format!(
            "signature {} bytes, states {}/{}/{}/{} bytes",
            self.signature.len(),
            self.pending.len(),
            self.received.len(),
            self.started.len(),
            self.success.len()
        )
    }
}

/// Wakes the idle worker callers every [`IDLE_TICK`] (tokio's timer has 1 ms steps).
struct Ticker {
    notify: Arc<Notify>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Ticker {
    fn start() -> Ticker {
        let notify = Arc::new(Notify::new());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let notify = Arc::clone(&notify);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(IDLE_TICK);
                    notify.notify_waiters();
                }
            })
        };
        Ticker {
            notify,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One run's names: its queue, processing list and task UUIDs.
struct Run {
    id: u32,
    queue: String,
    processing: String,
    bodies: Bodies,
}

impl Run {
    fn new(id: u32, kind: &str) -> Result<Run> {
        let queue = format!("machinery_ceiling_{id:08x}_{kind}");
        Ok(Run {
            id,
            processing: format!("{queue}_processing"),
            bodies: Bodies::new(&queue)?,
            queue,
        })
    }

    fn uuid(&self, i: usize) -> String {
        format!("task_{:08x}-0000-4000-8000-{i:012x}", self.id)
    }

    /// Check a sample of states, then delete the lists and the states.
    async fn verify_and_clean(&self, con: &mut MultiplexedConnection, n: usize) -> Result<()> {
        for i in (0..n).step_by((n / 50).max(1)) {
            let uuid = self.uuid(i);
            let body: Option<Vec<u8>> = redis::cmd("GET")
                .arg(&uuid)
                .query_async(con)
                .await
                .map_err(redis_err("GET"))?;
            let st = TaskState::from_json(&body.ok_or_else(|| Error::NotFound(uuid.clone()))?)?;
            if !st.is_success() {
                return Err(Error::TaskFailed(format!("{uuid} ended {}", st.state)));
            }
        }
        let left: (usize, usize) = redis::pipe()
            .llen(&self.queue)
            .llen(&self.processing)
            .query_async(con)
            .await
            .map_err(redis_err("LLEN"))?;
        let uuids: Vec<String> = (0..n).map(|i| self.uuid(i)).collect();
        for chunk in uuids.chunks(1000) {
            redis::cmd("UNLINK")
                .arg(chunk)
                .query_async::<()>(con)
                .await
                .map_err(redis_err("UNLINK"))?;
        }
        redis::cmd("DEL")
            .arg(&self.queue)
            .arg(&self.processing)
            .query_async::<()>(con)
            .await
            .map_err(redis_err("DEL"))?;
        if left != (0, 0) {
            return Err(Error::TaskFailed(format!(
                "{} messages left in the queue and {} in the processing list",
                left.0, left.1
            )));
        }
        Ok(())
    }
}

/// `callers` callers on clones of `con` send tasks `0..n`: SET PENDING, then RPUSH.
async fn send(con: &MultiplexedConnection, run: &Arc<Run>, n: usize, callers: usize) -> Result<()> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..callers.max(1) {
        let mut con = con.clone();
        let run = Arc::clone(run);
        let next = Arc::clone(&next);
        set.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, Error>(());
                }
                let uuid = run.uuid(i);
                redis::cmd("SET")
                    .arg(&uuid)
                    .arg(run.bodies.pending.fill(uuid.as_bytes()))
                    .arg("EX")
                    .arg(EXPIRE_SECS)
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(redis_err("SET"))?;
                redis::cmd("RPUSH")
                    .arg(&run.queue)
                    .arg(run.bodies.signature.fill(uuid.as_bytes()))
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(redis_err("RPUSH"))?;
            }
        });
    }
    while let Some(r) = set.join_next().await {
        r.expect("ceiling sender panicked")?;
    }
    Ok(())
}

/// What the worker callers saw.
#[derive(Default)]
struct Worked {
    done: AtomicUsize,
    empty_takes: AtomicUsize,
    last_success: Mutex<Option<Instant>>,
}

impl Worked {
    /// From `start` to the last SUCCESS written (to now if none was).
    fn elapsed_since(&self, start: Instant) -> Duration {
        self.last_success
            .lock()
            .expect("last success")
            .map_or_else(|| start.elapsed(), |t| t - start)
    }
}

/// `callers` callers on clones of `con` run tasks until `n` reached SUCCESS.
async fn work(
    con: &MultiplexedConnection,
    run: &Arc<Run>,
    n: usize,
    callers: usize,
    worked: &Arc<Worked>,
    ticker: &Ticker,
) -> Result<()> {
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..callers.max(1) {
        let mut con = con.clone();
        let run = Arc::clone(run);
        let worked = Arc::clone(worked);
        let tick = Arc::clone(&ticker.notify);
        set.spawn(async move {
            let set_state = |uuid: &[u8], body: &Template| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(uuid)
                    .arg(body.fill(uuid))
                    .arg("EX")
                    .arg(EXPIRE_SECS);
                cmd
            };
            while worked.done.load(Ordering::Acquire) < n {
                let msg: Option<Vec<u8>> = redis::cmd("LMOVE")
                    .arg(&run.queue)
                    .arg(&run.processing)
                    .arg("LEFT")
                    .arg("RIGHT")
                    .query_async(&mut con)
                    .await
                    .map_err(redis_err("LMOVE"))?;
                let Some(msg) = msg else {
                    worked.empty_takes.fetch_add(1, Ordering::Relaxed);
                    tick.notified().await;
                    continue;
                };
                let uuid = msg
                    .get(run.bodies.uuid_at..run.bodies.uuid_at + PLACEHOLDER.len())
                    .ok_or_else(|| Error::decode("signature", "too short"))?;
                for body in [
                    &run.bodies.received,
                    &run.bodies.started,
                    &run.bodies.success,
                ] {
                    set_state(uuid, body)
                        .query_async::<()>(&mut con)
                        .await
                        .map_err(redis_err("SET"))?;
                }
                if worked.done.fetch_add(1, Ordering::AcqRel) + 1 == n {
                    *worked.last_success.lock().expect("last success") = Some(Instant::now());
                }
                redis::cmd("LREM")
                    .arg(&run.processing)
                    .arg(1)
                    .arg(&msg)
                    .query_async::<()>(&mut con)
                    .await
                    .map_err(redis_err("LREM"))?;
            }
            Ok::<_, Error>(())
        });
    }
    let all = async {
        while let Some(r) = set.join_next().await {
            r.expect("ceiling worker panicked")?;
        }
        Ok::<_, Error>(())
    };
    tokio::time::timeout(RUN_TIMEOUT, all)
        .await
        .map_err(|_| Error::Timeout(RUN_TIMEOUT))?
}

fn run_id() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    std::process::id().rotate_left(16) ^ nanos
}

/// `ceiling e2e` and `ceiling drain` on the broker's Redis.
///
/// # Errors
/// The broker is not a single Redis node, a Redis error, or a wrong end state.
pub(super) async fn ceiling(config: &Config, args: &BenchArgs) -> Result<()> {
    let url = redis_cost::single_node_url(&config.broker, config).ok_or_else(|| {
        Error::config(
            "broker",
            "`bench ceiling` speaks Go Machinery's Redis protocol by hand: give --broker redis://host:port/db (one Redis node; not rediss, Sentinel or Cluster)",
        )
    })?;
    let sender = redis_cost::connect(&url).await?;
    let worker = redis_cost::connect(&url).await?;
    let mut admin = redis_cost::connect(&url).await?;
    let id = run_id();
    let n = args.n;

    // e2e: the worker callers wait on the empty queue, then the sender starts.
    let run = Arc::new(Run::new(id, "e2e")?);
    let sizes = run.bodies.sizes();
    let ticker = Ticker::start();
    let worked = Arc::new(Worked::default());
    let probe = Probe::start(&[&config.broker], config).await;
    let worker_task = {
        let (worker, run, worked) = (worker.clone(), Arc::clone(&run), Arc::clone(&worked));
        let callers = args.concurrency;
        async move { work(&worker, &run, n, callers, &worked, &ticker).await }
    };
    let start = Instant::now();
    let sending = async {
        send(&sender, &run, n, args.send_concurrency).await?;
        Ok::<_, Error>(start.elapsed())
    };
    let (sent, worked_res) = tokio::join!(sending, worker_task);
    let sent = sent?;
    worked_res?;
    let cost = probe.finish().await;
    let total = worked.elapsed_since(start);
    run.verify_and_clean(&mut admin, n).await?;
    println!(
        "ceiling e2e: {n} tasks sent and completed by Go Machinery's Redis protocol with no engine (SET PENDING, RPUSH; LMOVE, SET RECEIVED, STARTED, SUCCESS, LREM) in {:.3} s = {:.0} tasks/s (sending alone took {:.3} s = {:.0} tasks/s; {} empty LMOVEs; {sizes})",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        sent.as_secs_f64(),
        n as f64 / sent.as_secs_f64(),
        worked.empty_takes.load(Ordering::Relaxed),
    );
    cost.print("ceiling e2e", n);

    // drain: fill the queue, then time the worker alone.
    let run = Arc::new(Run::new(id.wrapping_add(1), "drain")?);
    send(&sender, &run, n, args.send_concurrency).await?;
    let ticker = Ticker::start();
    let worked = Arc::new(Worked::default());
    let probe = Probe::start(&[&config.broker], config).await;
    let start = Instant::now();
    work(&worker, &run, n, args.concurrency, &worked, &ticker).await?;
    let cost = probe.finish().await;
    drop(ticker);
    let total = worked.elapsed_since(start);
    run.verify_and_clean(&mut admin, n).await?;
    println!(
        "ceiling drain: {n} queued tasks processed by Go Machinery's Redis protocol with no engine (LMOVE, SET RECEIVED, STARTED, SUCCESS, LREM) in {:.3} s = {:.0} tasks/s ({} empty LMOVEs)",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64(),
        worked.empty_takes.load(Ordering::Relaxed),
    );
    cost.print("ceiling drain", n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_carry_the_task_uuid_where_the_worker_reads_it() {
        let run = Run::new(0xabcd, "e2e").unwrap();
        let uuid = run.uuid(7);
        assert_eq!(uuid.len(), PLACEHOLDER.len());
        let msg = run.bodies.signature.fill(uuid.as_bytes());
        let at = run.bodies.uuid_at;
        assert_eq!(&msg[at..at + uuid.len()], uuid.as_bytes());
        let sig = Signature::from_json(&msg).unwrap();
        assert_eq!(sig.uuid, uuid);
        assert_eq!(sig.routing_key, run.queue);
        let st = TaskState::from_json(&run.bodies.success.fill(uuid.as_bytes())).unwrap();
        assert!(st.is_success());
        assert_eq!(st.task_uuid, uuid);
    }
}
