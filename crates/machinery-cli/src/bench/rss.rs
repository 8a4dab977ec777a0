//! `machinery bench rss`: the memory of a worker process. The bench starts this executable as
//! a separate `machinery worker` (so the figures are the worker's alone, not the sender's),
//! sends it N `add` tasks and one task with a ~10 MB argument, and reads the child's
//! `/proc/<pid>/status` (`VmRSS`, `VmHWM`) and `/proc/<pid>/smaps_rollup`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use machinery::{Config, Error, Result, Server, Signature};

use super::{BenchArgs, adds, connections, send_all};

/// Size of the big message's argument: 10 MB (MiB, as every figure of this bench).
const BIG: usize = 10 << 20;

/// How long the worker may take for everything.
const TIMEOUT: Duration = Duration::from_secs(600);

/// The worker child; stopped with SIGTERM by [`WorkerChild::stop`], killed if dropped
/// before (an error of the bench never leaves it running).
struct WorkerChild {
    child: Option<Child>,
}

impl WorkerChild {
    fn spawn(config: &Config, concurrency: usize) -> Result<WorkerChild> {
        let exe = std::env::current_exe()
            .map_err(|e| Error::backend("bench", "cannot find the current executable", false, e))?;
        let child = Command::new(exe)
            .arg("worker")
            .args(["--broker", &config.broker])
            .args(["--backend", &config.result_backend])
            .args(["--queue", &config.default_queue])
            .args(["--concurrency", &concurrency.to_string()])
            .args(["--tag", "bench_rss"])
            .args(["--log", "warn"])
            // AMQP: bind the worker's queue with its own name, as the sender routes (see `run`).
            .env("AMQP_BINDING_KEY", &config.amqp.binding_key)
            // AMQP: prefetch as many tasks as the worker runs at once (see `run`).
            .env(
                "AMQP_PREFETCH_COUNT",
                config.amqp.prefetch_count.to_string(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::backend("bench", "cannot start the worker process", false, e))?;
        Ok(WorkerChild { child: Some(child) })
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Fails when the worker has exited (e.g. it could not connect).
    fn check_alive(&mut self) -> Result<()> {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.child = None;
            return Err(Error::TaskFailed(format!(
                "the worker process exited early ({status})"
            )));
        }
        Ok(())
    }

    /// SIGTERM (graceful: the worker finishes what it runs), then wait for it to exit.
    async fn stop(mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match child.try_wait() {
                Ok(Some(status)) if status.success() => return Ok(()),
                Ok(Some(status)) => {
                    return Err(Error::TaskFailed(format!(
                        "the worker process ended with {status} after SIGTERM"
                    )));
                }
                Ok(None) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error::Timeout(Duration::from_secs(30)));
                }
            }
        }
    }
}

impl Drop for WorkerChild {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// What `/proc/<pid>` says about the worker's memory, in kB.
#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    hwm: u64,
    anon: u64,
    anon_huge: u64,
    file: u64,
    threads: u64,
}

fn field(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn read_mem(pid: u32) -> Result<Mem> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|e| Error::backend("bench", "cannot read the worker's /proc status", false, e))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    Ok(Mem {
        rss: field(&status, "VmRSS"),
        hwm: field(&status, "VmHWM"),
        anon: field(&status, "RssAnon"),
        file: field(&status, "RssFile") + field(&status, "RssShmem"),
        anon_huge: field(&rollup, "AnonHugePages"),
        threads: field(&status, "Threads"),
    })
}

/// Reset the peak (`VmHWM`) to the current RSS; false where the kernel does not allow it.
fn reset_peak(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// MB as `ps` and `top` count them (MiB).
fn mb(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

fn breakdown(m: &Mem) -> String {
    format!(
        "anonymous {:.1} MB (transparent huge pages {:.1} MB), file-backed {:.1} MB, {} threads",
        mb(m.anon),
        mb(m.anon_huge),
        mb(m.file),
        m.threads
    )
}

/// Wait until every task of `uuids` is SUCCESS in the backend (a FAILURE ends the bench).
async fn wait_success(server: &Server, uuids: Vec<String>, in_flight: usize) -> Result<()> {
    let deadline = Instant::now() + TIMEOUT;
    let mut pending = uuids;
    while !pending.is_empty() {
        let mut still = Vec::new();
        for chunk in pending.chunks(in_flight.max(1)) {
            let mut set = tokio::task::JoinSet::new();
            for uuid in chunk {
                let backend = std::sync::Arc::clone(server.backend());
                let uuid = uuid.clone();
                set.spawn(async move {
                    let st = backend.state(&uuid).await;
                    (uuid, st)
                });
            }
            while let Some(r) = set.join_next().await {
                let (uuid, st) = r.expect("state read panicked");
                match st? {
                    Some(st) if st.is_success() => {}
                    Some(st) if st.is_failure() => {
                        return Err(Error::TaskFailed(format!("{uuid} ended {}", st.state)));
                    }
                    _ => still.push(uuid),
                }
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(TIMEOUT));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Worker memory after N tasks and for one ~10 MB message (see the module docs).
///
/// # Errors
/// Connection errors, timeouts, a failed task, or a worker process that exits early.
pub(super) async fn rss(config: &Config, args: &BenchArgs) -> Result<()> {
    let mut config = config.clone();
    config.default_queue.push_str("_rss");
    config.amqp.binding_key = config.default_queue.clone(); // see `run`
    let (broker, backend) = connections(&config).await?;
    let sender = Server::new(config.clone(), broker, backend);
    let mut worker = WorkerChild::spawn(&config, args.concurrency)?;
    let pid = worker.pid();

    // One task first: once it is done the worker is up and consuming.
    let warm = Signature::new("add").arg(1i64).arg(1i64);
    let warm_uuid = warm.uuid.clone();
    send_all(&sender, vec![warm], 1).await?;
    wait_success(&sender, vec![warm_uuid], 1).await?;
    worker.check_alive()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = read_mem(pid)?;

    let sigs = adds(args.n);
    let uuids: Vec<String> = sigs.iter().map(|s| s.uuid.clone()).collect();
    let start = Instant::now();
    send_all(&sender, sigs, args.send_concurrency).await?;
    wait_success(&sender, uuids, args.send_concurrency).await?;
    let took = start.elapsed();
    worker.check_alive()?;
    let after = read_mem(pid)?;
    println!(
        "rss: worker after {} tasks: VmRSS {:.1} MB, VmHWM {:.1} MB (idle before tasks: {:.1} MB)",
        args.n,
        mb(after.rss),
        mb(after.hwm),
        mb(idle.rss)
    );
    println!(
        "rss: after {} tasks ({:.1} s): {}; idle before: {}",
        args.n,
        took.as_secs_f64(),
        breakdown(&after),
        breakdown(&idle)
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    let settled = read_mem(pid)?;
    println!(
        "rss: 3 s later: VmRSS {:.1} MB ({})",
        mb(settled.rss),
        breakdown(&settled)
    );

    // One big message: its argument is a ~10 MB string, its result the length.
    let reset = reset_peak(pid);
    let before = read_mem(pid)?;
    let base = if reset { before.rss } else { before.hwm };
    let big = Signature::new("length").arg("x".repeat(BIG));
    let result = sender.send_task(big).await?;
    let len: i64 = result.get_as(TIMEOUT).await?;
    if len != BIG as i64 {
        return Err(Error::TaskFailed(format!(
            "length of the big message gave {len}, expected {BIG}"
        )));
    }
    worker.check_alive()?;
    let peak = read_mem(pid)?;
    let grew = peak.hwm.saturating_sub(base);
    println!(
        "rss: one {} MB message: peak grew by {:.1} MB = {:.1} x the message (VmRSS {:.1} MB after it; peak {})",
        BIG >> 20,
        mb(grew),
        (grew * 1024) as f64 / BIG as f64,
        mb(peak.rss),
        if reset {
            "reset before the message"
        } else {
            "not resettable here: growth over the earlier peak"
        }
    );
    worker.stop().await
}
