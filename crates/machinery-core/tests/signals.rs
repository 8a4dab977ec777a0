//! First SIGTERM: the worker stops taking tasks, finishes the running one and returns Ok.
//! Second SIGTERM: it returns at once with `Error::Aborted`. (Own test binary: it signals
//! its own process.)

use std::time::{Duration, Instant};

use machinery_core::{
    Config, Error, MemoryBackend, MemoryBroker, Server, Signature, State, TaskError,
};

fn sigterm_self() {
    let status = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(std::process::id().to_string())
        .status()
        .expect("run kill");
    assert!(status.success());
}

async fn wait_state(server: &Server, uuid: &str, want: State) {
    let what = format!("{uuid} to reach {want}");
    machinery_testkit::wait_until(Duration::from_secs(10), &what, || async move {
        server
            .backend()
            .state(uuid)
            .await
            .unwrap()
            .is_some_and(|st| st.state == want)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_signal_drains_second_aborts() {
    let server = Server::new(Config::default(), MemoryBroker::new(), MemoryBackend::new());
    server
        .register_task("long", |ms: i64| async move {
            tokio::time::sleep(Duration::from_millis(ms as u64)).await;
            Ok::<_, TaskError>(ms)
        })
        .unwrap();

    // 1. Graceful: the running task finishes, a queued one is not started, run() is Ok.
    let worker = tokio::spawn(server.new_worker("sig", 1).run());
    let running = server
        .send_task(Signature::new("long").arg(1500i64))
        .await
        .unwrap();
    let queued = server
        .send_task(Signature::new("long").arg(10i64))
        .await
        .unwrap();
    wait_state(&server, running.uuid(), State::Started).await;
    sigterm_self();
    let result = tokio::time::timeout(Duration::from_secs(10), worker)
        .await
        .expect("worker returns after the running task")
        .unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(running.state().await.unwrap().state, State::Success);
    assert_eq!(queued.state().await.unwrap().state, State::Pending);

    // 2. At once: a second signal returns Aborted without waiting for the 5 s task.
    let worker = tokio::spawn(server.new_worker("sig2", 1).run());
    // The queued task from above runs first (10 ms), then the long one.
    let long = server
        .send_task(Signature::new("long").arg(5000i64))
        .await
        .unwrap();
    wait_state(&server, long.uuid(), State::Started).await;
    let start = Instant::now();
    sigterm_self();
    // Two signals sent back to back may be delivered as one; instead of guessing how long the
    // listener needs, signal again until the worker has returned (the long task would keep a
    // drained worker busy for 5 s, so only the abort path returns within the limit).
    let mut worker = worker;
    let result = loop {
        sigterm_self();
        match tokio::time::timeout(Duration::from_millis(50), &mut worker).await {
            Ok(joined) => break joined.unwrap(),
            Err(_) => assert!(
                start.elapsed() < Duration::from_secs(3),
                "the worker did not return after repeated signals"
            ),
        }
    };
    assert!(matches!(result, Err(Error::Aborted)), "{result:?}");
    assert!(start.elapsed() < Duration::from_secs(3));
    assert_eq!(queued.state().await.unwrap().state, State::Success);
    // The aborted task was not acked: it is delivered again to the next worker.
    assert_eq!(long.state().await.unwrap().state, State::Started);
    let again = server.new_worker("sig3", 1).no_unix_signals().launch();
    wait_state(&server, long.uuid(), State::Success).await;
    again.quit();
    again.join().await.unwrap();
}
