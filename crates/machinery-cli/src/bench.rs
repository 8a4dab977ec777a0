//! `machinery bench`: end-to-end figures for a broker / backend pair. Every run prints what
//! it measured and the settings, so the line can go straight into BENCHMARKS.md.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use machinery::{
    Backend, Broker, Chord, Config, Error, Group, Result, Server, Signature, TaskState,
    WaitStrategy, backend_from_url, broker_from_url, lock_from_url,
};
use machinery_cli::example_tasks;
use tokio::sync::{Notify, oneshot};

mod ceiling;
mod redis_cost;
mod rss;

/// What to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Kind {
    /// One sender and one worker at once: N `add` tasks, send of the first to SUCCESS of the last.
    E2e,
    /// Fill the queue with N tasks, then time one worker draining it.
    Drain,
    /// N tasks one at a time: send -> result stored, p50 / p99.
    Latency,
    /// N tasks all due at the same instant: time from the ETA until all are done.
    Delayed,
    /// A chord of N members (and of N/10, N/2 for linearity): send -> callback result.
    Chord,
    /// Go Machinery's Redis protocol by hand with no engine, on the --broker Redis (one node,
    /// redis:// only): `ceiling e2e` and `ceiling drain`, the figures e2e and drain can at best
    /// reach on that server with one connection per side.
    Ceiling,
    /// e2e, drain, latency, delayed and chord one after another (and ceiling after drain when
    /// the broker is a single Redis node).
    All,
    /// Memory of a separate `machinery worker` process (this executable) after N `add` tasks,
    /// and its peak growth for one 10 MB message (not part of `all`).
    Rss,
}

/// Options of `machinery bench`.
#[derive(Debug, Clone, Args)]
#[command(after_help = COST_HELP)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    kind: Kind,
    /// Number of tasks (chord: members).
    #[arg(short = 'n', long, default_value_t = 20_000)]
    n: usize,
    /// Worker concurrency.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Publishes in flight on the sender.
    #[arg(long, default_value_t = 64)]
    send_concurrency: usize,
    /// Latency runs (send -> result, one at a time).
    #[arg(long, default_value_t = 2_000)]
    latency_n: usize,
    /// Members of the chord bench.
    #[arg(long, default_value_t = 10_000)]
    chord_n: usize,
    /// Delayed tasks.
    #[arg(long, default_value_t = 10_000)]
    delayed_n: usize,
}

/// The Redis cost lines, for `--help`.
const COST_HELP: &str = "When the broker or the backend is a single Redis node (redis://; not rediss, Sentinel or Cluster), e2e, drain and ceiling each also print two lines read from that server with INFO cpu and INFO commandstats before and after the measured span: Redis CPU per task (used_cpu_sys + used_cpu_user), commands per task (commandstats calls, INFO left out) and this process's CPU per task (user + sys); then calls and usec per task by command, most usec first. They are the whole server's: other clients of a shared Redis count too. A script call (EVAL/EVALSHA) counts once and each redis.call() inside it counts again under its own name, and the script's usec includes theirs: do not add them up. drain (and ceiling drain) cover the worker alone, e2e both sides.";

type Waiters = Arc<Mutex<HashMap<String, oneshot::Sender<Instant>>>>;

/// What the worker finished: distinct task UUIDs that reached SUCCESS, and every post-task
/// call. A task run twice (a redelivery) counts once as a completion and shows up as an extra
/// run, so a figure never counts work that is still queued.
#[derive(Debug, Default)]
struct Completions {
    inner: Mutex<CompletionsInner>,
}

#[derive(Debug, Default)]
struct CompletionsInner {
    succeeded: HashSet<String>,
    runs: usize,
}

impl Completions {
    /// Record one post-task call; returns the number of distinct UUIDs at SUCCESS.
    fn record(&self, uuid: &str, state: &TaskState) -> usize {
        let mut c = self.inner.lock().expect("completions");
        c.runs += 1;
        if state.is_success() && !c.succeeded.contains(uuid) {
            c.succeeded.insert(uuid.to_owned());
        }
        c.succeeded.len()
    }

    /// Distinct task UUIDs at SUCCESS.
    fn done(&self) -> usize {
        self.inner.lock().expect("completions").succeeded.len()
    }

    /// Post-task calls beyond one per successful UUID (runs of a task that ran again, or
    /// failures).
    fn extra_runs(&self) -> usize {
        let c = self.inner.lock().expect("completions");
        c.runs - c.succeeded.len()
    }
}

/// A sender server and a worker server on separate connections (shared instances for memory).
struct Pair {
    sender: Server,
    worker: Server,
    done: Arc<Completions>,
    notify: Arc<Notify>,
    waiters: Waiters,
}

async fn connections(config: &Config) -> Result<(Arc<dyn Broker>, Arc<dyn Backend>)> {
    Ok((
        broker_from_url(&config.broker, config).await?,
        backend_from_url(&config.result_backend, config).await?,
    ))
}

async fn pair(config: &Config) -> Result<Pair> {
    let (b1, k1) = connections(config).await?;
    let in_process = |u: &str| u.starts_with("memory") || u == "eager";
    let b2 = if in_process(&config.broker) {
        Arc::clone(&b1)
    } else {
        broker_from_url(&config.broker, config).await?
    };
    let k2 = if in_process(&config.result_backend) {
        Arc::clone(&k1)
    } else {
        backend_from_url(&config.result_backend, config).await?
    };
    let sender = Server::new(config.clone(), b1, k1);
    let worker = Server::new(config.clone(), b2, k2);
    worker.set_lock(lock_from_url("", config).await?);
    example_tasks::register(&worker)?;
    Ok(Pair {
        sender,
        worker,
        done: Arc::new(Completions::default()),
        notify: Arc::new(Notify::new()),
        waiters: Arc::new(Mutex::new(HashMap::new())),
    })
}

impl Pair {
    fn launch(&self, concurrency: usize) -> machinery::WorkerHandle {
        let mut w = self
            .worker
            .new_worker("bench", concurrency)
            .no_unix_signals();
        let done = Arc::clone(&self.done);
        let notify = Arc::clone(&self.notify);
        let waiters = Arc::clone(&self.waiters);
        w.set_post_task_handler(move |sig: &Signature, state: &TaskState| {
            done.record(&sig.uuid, state);
            notify.notify_waiters();
            if let Some(tx) = waiters.lock().expect("waiters").remove(&sig.uuid) {
                let _ = tx.send(Instant::now());
            }
        });
        w.launch()
    }

    async fn wait_done(&self, target: usize, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.notify.notified();
            if self.done.done() >= target {
                return Ok(());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::Timeout(timeout));
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(100)), notified).await;
        }
    }

    async fn send_many(&self, sigs: Vec<Signature>, in_flight: usize) -> Result<()> {
        send_all(&self.sender, sigs, in_flight).await
    }
}

async fn send_all(server: &Server, sigs: Vec<Signature>, in_flight: usize) -> Result<()> {
    let sem = Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
    let mut set = tokio::task::JoinSet::new();
    for sig in sigs {
        let permit = Arc::clone(&sem)
            .acquire_owned()
            .await
            .expect("semaphore open");
        let server = server.clone();
        set.spawn(async move {
            let r = server.send_task(sig).await.map(drop);
            drop(permit);
            r
        });
        while let Some(r) = set.try_join_next() {
            r.expect("send task panicked")?;
        }
    }
    while let Some(r) = set.join_next().await {
        r.expect("send task panicked")?;
    }
    Ok(())
}

fn adds(n: usize) -> Vec<Signature> {
    (0..n)
        .map(|i| Signature::new("add").arg(i as i64).arg(1i64))
        .collect()
}

/// Commands the MongoDB backends of this process have sent so far (each a round trip,
/// counted by the driver from the client's command events), when the backend is MongoDB.
fn backend_round_trips(config: &Config) -> Option<u64> {
    config
        .result_backend
        .starts_with("mongodb")
        .then(machinery::mongo::round_trips)
}

/// Pub/Sub API calls the brokers of this process have made so far (counted by the driver),
/// when the broker is Pub/Sub.
fn broker_api_calls(config: &Config) -> Option<u64> {
    config
        .broker
        .to_ascii_lowercase()
        .starts_with("gcppubsub://")
        .then(machinery::pubsub::api_calls)
}

/// Start reading the Redis cost of a span (`INFO cpu` and `INFO commandstats` before and after)
/// on the broker's and the backend's Redis when they are single nodes.
async fn redis_probe(config: &Config) -> redis_cost::Probe {
    redis_cost::Probe::start(&[&config.broker, &config.result_backend], config).await
}

fn header(config: &Config, args: &BenchArgs) {
    println!(
        "# broker {} | backend {} | worker concurrency {} | send concurrency {} | {} cores",
        machinery::redact_url(&config.broker),
        machinery::redact_url(&config.result_backend),
        args.concurrency,
        args.send_concurrency,
        std::thread::available_parallelism().map_or(0, usize::from)
    );
}

/// Run the chosen benchmark(s).
///
/// # Errors
/// Connection errors, timeouts, or a wrong result.
pub async fn run(mut config: Config, args: &BenchArgs) -> Result<()> {
    config.no_unix_signals = true;
    // A fresh queue per run so old messages never skew a figure.
    config.default_queue = format!("{}_bench_{}", config.default_queue, std::process::id());
    // AMQP: the default routing key is the binding key; keep it on the bench queue
    // (otherwise every task is also copied to an orphan `machinery_task` queue).
    config.amqp.binding_key = config.default_queue.clone();
    // Pub/Sub: that fresh topic (and its subscription) must be created (Go's rule is that
    // they exist beforehand).
    config.gcp_pubsub.create_missing = true;
    // AMQP: prefetch as many tasks as the worker runs at once (Go's default of 3 would
    // leave a worker of concurrency 256 mostly idle); 256 for unlimited concurrency.
    config.amqp.prefetch_count = match args.concurrency {
        0 => 256,
        n => u16::try_from(n).unwrap_or(u16::MAX),
    };
    header(&config, args);
    let kinds = match args.kind {
        Kind::All => {
            let mut all = vec![Kind::E2e, Kind::Drain];
            if redis_cost::single_node_url(&config.broker, &config).is_some() {
                all.push(Kind::Ceiling);
            }
            all.extend([Kind::Latency, Kind::Delayed, Kind::Chord]);
            all
        }
        k => vec![k],
    };
    for k in kinds {
        match k {
            Kind::E2e => e2e(&config, args).await?,
            Kind::Drain => drain(&config, args).await?,
            Kind::Latency => latency(&config, args).await?,
            Kind::Delayed => delayed(&config, args).await?,
            Kind::Chord => chord(&config, args).await?,
            Kind::Ceiling => ceiling::ceiling(&config, args).await?,
            Kind::Rss => rss::rss(&config, args).await?,
            Kind::All => unreachable!("expanded above"),
        }
    }
    Ok(())
}

async fn verify_sample(server: &Server, uuids: &[String]) -> Result<()> {
    for uuid in uuids {
        let st = server
            .backend()
            .state(uuid)
            .await?
            .ok_or_else(|| Error::NotFound(uuid.clone()))?;
        if !st.is_success() {
            return Err(Error::TaskFailed(format!("{uuid} ended {}", st.state)));
        }
    }
    Ok(())
}

fn sample_uuids(sigs: &[Signature]) -> Vec<String> {
    let step = (sigs.len() / 50).max(1);
    sigs.iter().step_by(step).map(|s| s.uuid.clone()).collect()
}

async fn e2e(config: &Config, args: &BenchArgs) -> Result<()> {
    let p = pair(config).await?;
    let w = p.launch(args.concurrency);
    let sigs = adds(args.n);
    let sample = sample_uuids(&sigs);
    let trips_before = backend_round_trips(config);
    let calls_before = broker_api_calls(config);
    let probe = redis_probe(config).await;
    let start = Instant::now();
    p.send_many(sigs, args.send_concurrency).await?;
    let sent = start.elapsed();
    p.wait_done(args.n, Duration::from_secs(600)).await?;
    let total = start.elapsed();
    let cost = probe.finish().await;
    let trips = trips_before.zip(backend_round_trips(config));
    let calls = calls_before.zip(broker_api_calls(config));
    w.quit();
    w.join().await?;
    verify_sample(&p.sender, &sample).await?;
    println!(
        "e2e: {} tasks sent and completed (PENDING, RECEIVED, STARTED, SUCCESS stored; distinct UUIDs at SUCCESS) in {:.3} s = {:.0} tasks/s (sending alone took {:.3} s = {:.0} tasks/s; {} extra runs)",
        args.n,
        total.as_secs_f64(),
        args.n as f64 / total.as_secs_f64(),
        sent.as_secs_f64(),
        args.n as f64 / sent.as_secs_f64(),
        p.done.extra_runs()
    );
    if let Some((before, after)) = trips {
        println!(
            "e2e: {} backend round trips = {:.2} per completed task (sender and worker)",
            after - before,
            (after - before) as f64 / args.n as f64
        );
    }
    cost.print("e2e", args.n);
    if let Some((before, after)) = calls {
        println!(
            "e2e: {} Pub/Sub API calls = {:.3} per completed task (sender and worker: Publish, StreamingPull, Acknowledge, ModifyAckDeadline)",
            after - before,
            (after - before) as f64 / args.n as f64
        );
    }
    Ok(())
}

async fn drain(config: &Config, args: &BenchArgs) -> Result<()> {
    let mut config = config.clone();
    config.default_queue.push_str("_drain");
    config.amqp.binding_key = config.default_queue.clone(); // see `run`
    let p = pair(&config).await?;
    let sigs = adds(args.n);
    let sample = sample_uuids(&sigs);
    p.send_many(sigs, args.send_concurrency).await?;
    let probe = redis_probe(&config).await;
    let start = Instant::now();
    let w = p.launch(args.concurrency);
    p.wait_done(args.n, Duration::from_secs(600)).await?;
    let total = start.elapsed();
    let cost = probe.finish().await;
    w.quit();
    w.join().await?;
    verify_sample(&p.sender, &sample).await?;
    println!(
        "drain: {} queued tasks processed (distinct UUIDs at SUCCESS) in {:.3} s = {:.0} tasks/s ({} extra runs)",
        args.n,
        total.as_secs_f64(),
        args.n as f64 / total.as_secs_f64(),
        p.done.extra_runs()
    );
    cost.print("drain", args.n);
    Ok(())
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn latency(config: &Config, args: &BenchArgs) -> Result<()> {
    let mut config = config.clone();
    config.default_queue.push_str("_latency");
    config.amqp.binding_key = config.default_queue.clone(); // see `run`
    let p = pair(&config).await?;
    let w = p.launch(args.concurrency);
    let mut samples = Vec::with_capacity(args.latency_n);
    // Warm up connections and code paths.
    for i in 0..(args.latency_n / 10).max(10) {
        one_round_trip(&p, i).await?;
    }
    for i in 0..args.latency_n {
        samples.push(one_round_trip(&p, i).await?);
    }
    // The same round trip as a client waits for it: AsyncResult::get_as, which waits on the
    // backend's push where it has one and polls with a back-off elsewhere.
    let mut waited = Vec::with_capacity(args.latency_n);
    for i in 0..args.latency_n {
        waited.push(one_awaited_round_trip(&p, i).await?);
    }
    w.quit();
    w.join().await?;
    samples.sort();
    waited.sort();
    println!(
        "latency: {} round trips (send -> SUCCESS stored -> read back), p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        samples.len(),
        percentile(&samples, 0.50).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    let backend = p.sender.backend();
    let strategy = match (WaitStrategy::of(backend.as_ref()), backend.driver()) {
        (WaitStrategy::Push, "redis") => {
            "push (SUBSCRIBE to machinery_state:<uuid>, PUBLISHed with the final state's JSON right after it is stored, in the same round trip), fallback re-reads 10 ms doubling to 50 ms"
        }
        (WaitStrategy::Push, "amqp") => {
            "push (a private queue bound to the results exchange with the task UUID), fallback re-reads 10 ms doubling to 50 ms"
        }
        (WaitStrategy::Push, "memory") => {
            "push (in-process notification), fallback re-reads 10 ms doubling to 50 ms"
        }
        (WaitStrategy::Push, _) => "push, fallback re-reads 10 ms doubling to 50 ms",
        (WaitStrategy::PollWithBackoff, _) => "polling, back-off 1 ms doubling to 50 ms",
    };
    println!(
        "latency: {} round trips (send -> AsyncResult::get_as; {} backend waits by {strategy}), p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        waited.len(),
        p.sender.backend().driver(),
        percentile(&waited, 0.50).as_secs_f64() * 1e3,
        percentile(&waited, 0.99).as_secs_f64() * 1e3,
        waited.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    Ok(())
}

async fn one_awaited_round_trip(p: &Pair, i: usize) -> Result<Duration> {
    let sig = Signature::new("add").arg(i as i64).arg(1i64);
    let start = Instant::now();
    let sum: i64 = p
        .sender
        .send_task(sig)
        .await?
        .get_as(Duration::from_secs(30))
        .await?;
    let took = start.elapsed();
    if sum != i as i64 + 1 {
        return Err(Error::TaskFailed(format!("add({i}, 1) gave {sum}")));
    }
    Ok(took)
}

async fn one_round_trip(p: &Pair, i: usize) -> Result<Duration> {
    let sig = Signature::new("add").arg(i as i64).arg(1i64);
    let (tx, rx) = oneshot::channel();
    p.waiters
        .lock()
        .expect("waiters")
        .insert(sig.uuid.clone(), tx);
    let start = Instant::now();
    let r = p.sender.send_task(sig).await?;
    tokio::time::timeout(Duration::from_secs(30), rx)
        .await
        .map_err(|_| Error::Timeout(Duration::from_secs(30)))?
        .map_err(|_| Error::Closed("worker"))?;
    // The worker says it is stored; read it back as a client would.
    let st = r.state().await?;
    let took = start.elapsed();
    if !st.is_success() {
        return Err(Error::TaskFailed(format!(
            "{} ended {}",
            st.task_uuid, st.state
        )));
    }
    Ok(took)
}

async fn delayed(config: &Config, args: &BenchArgs) -> Result<()> {
    let mut config = config.clone();
    config.default_queue.push_str("_delayed");
    config.amqp.binding_key = config.default_queue.clone(); // see `run`
    let p = pair(&config).await?;
    let w = p.launch(args.concurrency);
    let n = args.delayed_n;
    // Leave enough time to publish everything before it is due.
    let lead = Duration::from_secs(3) + Duration::from_micros(200 * n as u64);
    let eta = machinery::time::after(lead);
    let due = Instant::now() + lead;
    let sigs: Vec<Signature> = adds(n).into_iter().map(|s| s.eta(eta)).collect();
    let sample = sample_uuids(&sigs);
    p.send_many(sigs, args.send_concurrency).await?;
    if Instant::now() > due {
        return Err(Error::Timeout(lead));
    }
    let early = p.done.done();
    p.wait_done(n, lead + Duration::from_secs(600)).await?;
    let after_due = Instant::now().saturating_duration_since(due);
    w.quit();
    w.join().await?;
    verify_sample(&p.sender, &sample).await?;
    println!(
        "delayed: {n} tasks due at the same instant, all done {:.3} s after their ETA ({early} ran early)",
        after_due.as_secs_f64()
    );
    if early > 0 {
        return Err(Error::TaskFailed(format!(
            "{early} delayed tasks ran before their ETA"
        )));
    }
    Ok(())
}

async fn chord(config: &Config, args: &BenchArgs) -> Result<()> {
    let mut sizes = vec![args.chord_n / 10, args.chord_n / 2, args.chord_n];
    sizes.retain(|n| *n > 0);
    sizes.dedup();
    for n in sizes {
        let mut config = config.clone();
        config.default_queue.push_str(&format!("_chord{n}"));
        config.amqp.binding_key = config.default_queue.clone(); // see `run`
        let p = pair(&config).await?;
        let w = p.launch(args.concurrency);
        let members: Vec<Signature> = (0..n).map(|_| Signature::new("add").arg(1i64)).collect();
        let chord = Chord::new(Group::new(members), Signature::new("add"));
        let trips_before = backend_round_trips(&config);
        let start = Instant::now();
        let r = p.sender.send_chord(chord, args.send_concurrency).await?;
        let sent = start.elapsed();
        let mut trips = None;
        if let Some(before) = trips_before {
            // Count before any result polling: wait until the members and the callback ran.
            p.wait_done(n + 1, Duration::from_secs(600)).await?;
            trips = backend_round_trips(&config).map(|after| after - before);
        }
        let sum: i64 = r.callback.get_as(Duration::from_secs(600)).await?;
        let total = start.elapsed();
        w.quit();
        w.join().await?;
        if sum != n as i64 {
            return Err(Error::TaskFailed(format!(
                "chord callback summed {sum}, expected {n}"
            )));
        }
        println!(
            "chord: {n} members -> callback in {:.3} s ({:.3} ms per 1000 members; sending took {:.3} s)",
            total.as_secs_f64(),
            total.as_secs_f64() * 1e3 / (n as f64 / 1000.0),
            sent.as_secs_f64()
        );
        if let Some(trips) = trips {
            println!(
                "chord: {trips} backend round trips for {n} members and the callback = {:.2} per member",
                trips as f64 / n as f64
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(uuid: &str, success: bool) -> TaskState {
        let sig = Signature {
            uuid: uuid.to_owned(),
            name: "add".to_owned(),
            ..Signature::default()
        };
        if success {
            TaskState::success(&sig, Vec::new())
        } else {
            TaskState::failure(&sig, "boom")
        }
    }

    #[test]
    fn a_task_run_twice_counts_once() {
        let c = Completions::default();
        assert_eq!(c.record("task_a", &state("task_a", true)), 1);
        // A redelivery of the same task runs it again: still one completion.
        assert_eq!(c.record("task_a", &state("task_a", true)), 1);
        assert_eq!(c.record("task_b", &state("task_b", false)), 1);
        assert_eq!(c.record("task_b", &state("task_b", true)), 2);
        assert_eq!(c.done(), 2);
        assert_eq!(c.extra_runs(), 2);
    }
}
