//! The consume loop: takes deliveries from the broker within the concurrency limit, hands
//! each to [`Runner::process`], and shuts down gracefully or at once.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::process::Runner;
use super::{Worker, WorkerHandle, panic_message};
use crate::{ConsumeOptions, Error, Result};

impl Worker {
    /// Run until stopped; this call blocks (awaits) like Go's `worker.Launch()`.
    /// The first SIGINT / SIGTERM stops taking tasks and waits for running
    /// ones (returns `Ok`), a second one returns [`Error::Aborted`] at once.
    ///
    /// # Errors
    /// When the queue cannot be consumed, or on abort.
    pub async fn run(self) -> Result<()> {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        if self.handle_signals {
            spawn_signal_listener(stop.clone(), abort.clone())?;
        }
        let result = self.run_until(stop, abort.clone()).await;
        // Ends the signal listener too: a later signal is not this worker's business.
        abort.cancel();
        result
    }

    /// Run in the background and return at once; the handle quits, aborts or joins it.
    /// This call does **not** block: Go's blocking `worker.Launch()` is
    /// `worker.run().await`; `launch()` is Go's `LaunchAsync`.
    pub fn launch(self) -> WorkerHandle {
        let stop = CancellationToken::new();
        let abort = CancellationToken::new();
        if self.handle_signals
            && let Err(e) = spawn_signal_listener(stop.clone(), abort.clone())
        {
            warn!(error = %e, "cannot install signal handlers");
        }
        let (stop2, abort2) = (stop.clone(), abort.clone());
        let join = tokio::spawn(async move {
            let result = self.run_until(stop2, abort2.clone()).await;
            abort2.cancel();
            result
        });
        WorkerHandle { stop, abort, join }
    }

    /// Run until `stop` (graceful) or `abort` (at once) is cancelled.
    ///
    /// # Errors
    /// When the queue cannot be consumed, or on abort.
    pub async fn run_until(self, stop: CancellationToken, abort: CancellationToken) -> Result<()> {
        let queue = self.queue();
        let prefetch = match self.concurrency {
            0 => 256,
            n => n.min(u16::MAX as usize) as u16,
        };
        let broker = Arc::clone(self.server.broker());
        info!(
            worker = %self.tag,
            queue = %queue,
            concurrency = self.concurrency,
            broker = broker.driver(),
            backend = self.server.backend().driver(),
            tasks = ?self.server.registered_task_names(),
            "worker starting"
        );
        let mut stream = broker
            .consume(
                &queue,
                ConsumeOptions {
                    prefetch,
                    consumer_tag: self.tag.clone(),
                },
            )
            .await?;
        let semaphore = (self.concurrency > 0).then(|| Arc::new(Semaphore::new(self.concurrency)));
        let this = Arc::new(Runner {
            server: self.server.clone(),
            hooks: self.hooks.clone(),
            abort: abort.clone(),
        });
        let mut running = JoinSet::new();
        loop {
            while let Some(r) = running.try_join_next() {
                report_join(&self.tag, r);
            }
            if let Some(hook) = &this.hooks.pre_consume
                && !hook()
            {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => continue,
                }
            }
            let permit = match &semaphore {
                Some(s) => tokio::select! {
                    biased;
                    _ = stop.cancelled() => break,
                    p = Arc::clone(s).acquire_owned() => Some(p.expect("semaphore never closed")),
                },
                None => None,
            };
            let item = tokio::select! {
                biased;
                _ = stop.cancelled() => break,
                item = stream.next() => item,
            };
            match item {
                None => {
                    info!(worker = %self.tag, "broker closed the consumer; worker stopping");
                    break;
                }
                Some(Err(e)) => {
                    warn!(worker = %self.tag, error = %e, temporary = e.is_temporary(), "consuming failed; the broker reconnects");
                    if !e.is_temporary() {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                Some(Ok(delivery)) => {
                    let runner = Arc::clone(&this);
                    running.spawn(async move {
                        runner.process(delivery).await;
                        drop(permit);
                    });
                }
            }
        }
        info!(worker = %self.tag, running = running.len(), "worker stopping: waiting for running tasks");
        // The broker takes nothing more for this worker while the running tasks finish (their
        // acks still go out), and gives back what it prefetched once the stream is dropped.
        let finish = async {
            tokio::select! {
                // An abort also ends the running tasks at once, so both branches can be ready
                // together: the abort must win, and is checked again below.
                biased;
                _ = abort.cancelled() => {}
                _ = async {
                    while let Some(r) = running.join_next().await {
                        report_join(&self.tag, r);
                    }
                } => {}
            }
            if abort.is_cancelled() {
                running.abort_all();
                while let Some(r) = running.join_next().await {
                    if !r.as_ref().is_err_and(tokio::task::JoinError::is_cancelled) {
                        report_join(&self.tag, r);
                    }
                }
            }
            drop(stream);
        };
        let (stopped, ()) = tokio::join!(broker.stop_consuming(&self.tag), finish);
        if let Err(e) = stopped {
            warn!(worker = %self.tag, error = %e, "the broker could not give back the prefetched tasks; they return when its lease ends");
        }
        if abort.is_cancelled() {
            warn!(worker = %self.tag, "worker aborted; unfinished tasks will be delivered again");
            return Err(Error::Aborted);
        }
        info!(worker = %self.tag, "worker stopped");
        Ok(())
    }
}

/// A delivery's task ended: processing catches panics itself, so an error here is a bug
/// worth a loud line (the delivery goes back to the broker when its handle is dropped).
fn report_join(worker: &str, r: std::result::Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        if e.is_panic() {
            let msg = panic_message(e.into_panic().as_ref());
            error!(worker = %worker, panic = %msg, "processing a delivery panicked outside its guard");
        } else {
            error!(worker = %worker, error = %e, "processing a delivery ended abnormally");
        }
    }
}

fn spawn_signal_listener(stop: CancellationToken, abort: CancellationToken) -> Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let map =
            |e: std::io::Error| Error::backend("worker", "cannot install signal handler", false, e);
        let mut term = signal(SignalKind::terminate()).map_err(map)?;
        let mut int = signal(SignalKind::interrupt()).map_err(map)?;
        tokio::spawn(async move {
            let mut seen = 0;
            loop {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = int.recv() => {},
                    _ = abort.cancelled() => return,
                }
                seen += 1;
                if seen == 1 {
                    warn!(
                        "signal received: no new tasks; waiting for running ones (send again to quit at once)"
                    );
                    stop.cancel();
                } else {
                    warn!("second signal received: quitting at once");
                    abort.cancel();
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            stop.cancel();
            let _ = tokio::signal::ctrl_c().await;
            abort.cancel();
        });
    }
    Ok(())
}
