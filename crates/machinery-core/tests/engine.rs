//! Worker and server behaviours on the memory drivers: state order, workflows, error paths,
//! concurrency, hooks, periodic tasks.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use machinery_core::{
    Backend, BackendCapabilities, Chord, Config, Error, Group, MemoryBackend, MemoryBroker,
    MemoryLock, Result, Server, Signature, State, TaskContext, TaskError, TaskOptions, TaskState,
    Variadic, async_trait,
};

use machinery_testkit::{wait_until, wait_until_sync};

const WAIT: Duration = Duration::from_secs(10);

/// Delegates to a MemoryBackend and records every state written, in order.
#[derive(Debug, Default)]
struct Recording {
    inner: MemoryBackend,
    log: Mutex<Vec<(String, State)>>,
}

impl Recording {
    fn states_of(&self, uuid: &str) -> Vec<State> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|(u, _)| u == uuid)
            .map(|(_, s)| *s)
            .collect()
    }
}

#[async_trait]
impl Backend for Recording {
    fn driver(&self) -> &'static str {
        "recording"
    }
    fn capabilities(&self) -> BackendCapabilities {
        self.inner.capabilities()
    }
    async fn set_state(&self, state: &TaskState) -> Result<()> {
        self.log
            .lock()
            .unwrap()
            .push((state.task_uuid.clone(), state.state));
        self.inner.set_state(state).await
    }
    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        self.inner.state(task_uuid).await
    }
    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        self.inner.init_group(group_uuid, task_uuids).await
    }
    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        self.inner.group_states(group_uuid).await
    }
    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        self.inner.trigger_chord(group_uuid).await
    }
    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        self.inner
            .mark_group_member_done(group_uuid, task_uuid)
            .await
    }
    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.inner.purge_state(task_uuid).await
    }
    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        self.inner.purge_group(group_uuid).await
    }
}

fn config() -> Config {
    let mut c = Config {
        no_unix_signals: true,
        ..Config::default()
    };
    c.worker.unknown_task_delay_ms = 300;
    c
}

async fn add(Variadic(v): Variadic<i64>) -> std::result::Result<i64, TaskError> {
    Ok(v.iter().sum())
}

fn setup() -> (Server, Arc<Recording>, MemoryBroker) {
    let backend = Arc::new(Recording::default());
    let broker = MemoryBroker::new();
    let server = Server::new(
        config(),
        broker.clone(),
        Arc::clone(&backend) as Arc<dyn Backend>,
    );
    server.register_task("add", add).unwrap();
    (server, backend, broker)
}

#[tokio::test]
async fn states_follow_gos_order() {
    let (server, rec, _) = setup();
    let w = server.new_worker("t", 1).launch();
    let r = server
        .send_task(Signature::new("add").arg(1i64).arg(2i64))
        .await
        .unwrap();
    assert_eq!(r.get_as::<i64>(WAIT).await.unwrap(), 3);
    assert_eq!(
        rec.states_of(r.uuid()),
        vec![
            State::Pending,
            State::Received,
            State::Started,
            State::Success
        ]
    );
    // Wrong argument types: RECEIVED then FAILURE with no STARTED (as Go), naming both types.
    let r = server
        .send_task(Signature::new("add").arg("x"))
        .await
        .unwrap();
    let err = r
        .get_with_timeout(WAIT, Duration::from_millis(2))
        .await
        .unwrap_err();
    let Error::TaskFailed(msg) = err else {
        panic!("{err:?}")
    };
    assert!(msg.contains("string") && msg.contains("i64"), "{msg}");
    assert_eq!(
        rec.states_of(r.uuid()),
        vec![State::Pending, State::Received, State::Failure]
    );
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn immutable_parent_does_not_pass_results() {
    let (server, _, _) = setup();
    let w = server.new_worker("t", 1).launch();
    let child = Signature::new("add").arg(10i64);
    let child_uuid = child.uuid.clone();
    let parent = Signature::new("add")
        .arg(1i64)
        .arg(1i64)
        .on_success(child.clone())
        .immutable(true);
    server.send_task(parent).await.unwrap();
    let child_result = machinery_core::AsyncResult::new(child, Arc::clone(server.backend()));
    assert_eq!(child_result.get_as::<i64>(WAIT).await.unwrap(), 10);
    assert!(child_uuid.starts_with("task_"));
    // Mutable parent: the child gets 2 appended.
    let child = Signature::new("add").arg(10i64);
    let parent = Signature::new("add")
        .arg(1i64)
        .arg(1i64)
        .on_success(child.clone());
    server.send_task(parent).await.unwrap();
    let child_result = machinery_core::AsyncResult::new(child, Arc::clone(server.backend()));
    assert_eq!(child_result.get_as::<i64>(WAIT).await.unwrap(), 12);
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn on_error_gets_the_error_prepended() {
    let (server, _, _) = setup();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let s2 = Arc::clone(&seen);
    server
        .register_task("fail", |n: i64| async move {
            Err::<(), _>(TaskError::failed(format!("boom [{n}]")))
        })
        .unwrap();
    server
        .register_task("record", move |msg: String, suffix: String| {
            let s = Arc::clone(&s2);
            async move {
                s.lock().unwrap().push(format!("{msg}{suffix}"));
                Ok::<_, TaskError>(())
            }
        })
        .unwrap();
    let w = server.new_worker("t", 1).launch();
    let handler = Signature::new("record").arg("!");
    server
        .send_task(Signature::new("fail").arg(7i64).on_error(handler.clone()))
        .await
        .unwrap();
    let r = machinery_core::AsyncResult::new(handler, Arc::clone(server.backend()));
    r.get_with_timeout(WAIT, Duration::from_millis(2))
        .await
        .unwrap();
    assert_eq!(*seen.lock().unwrap(), vec!["boom [7]!".to_owned()]);
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn unknown_task_is_requeued_without_spinning() {
    let (server, rec, broker) = setup();
    let pulls = Arc::new(AtomicUsize::new(0));
    let p2 = Arc::clone(&pulls);
    let mut worker = server.new_worker("t", 4);
    worker.set_pre_consume_handler(move || {
        p2.fetch_add(1, Ordering::SeqCst);
        true
    });
    let w = worker.launch();
    let r = server
        .send_task(Signature::new("nobody_knows"))
        .await
        .unwrap();
    let start = Instant::now();
    // Pull 1 waits for the first delivery, pull 2 follows it; pulls 3 and 4 follow the two
    // offers after 300 ms requeue delays each. A spinning worker gets there at once.
    wait_until_sync(WAIT, "the message offered again twice", || {
        pulls.load(Ordering::SeqCst) >= 4
    })
    .await;
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(550),
        "4 pulls after {took:?}: the worker does not wait 300 ms between offers"
    );
    assert_eq!(r.state().await.unwrap().state, State::Pending);
    assert_eq!(rec.states_of(r.uuid()), vec![State::Pending]);
    w.quit();
    w.join().await.unwrap();
    // Not lost: still in the broker (ready or delayed).
    let pending = machinery_core::Broker::pending_tasks(&broker, "machinery_tasks")
        .await
        .unwrap();
    let delayed = machinery_core::Broker::delayed_tasks(&broker)
        .await
        .unwrap();
    assert_eq!(pending.len() + delayed.len(), 1);
}

#[tokio::test]
async fn ignore_when_not_registered_drops_the_message() {
    let (server, _, broker) = setup();
    let w = server.new_worker("t", 1).launch();
    let r = server
        .send_task(Signature::new("nobody_knows").ignore_when_not_registered(true))
        .await
        .unwrap();
    wait_until_sync(WAIT, "the message taken and settled", || {
        broker.ready_len("machinery_tasks") == 0 && broker.unacked_len() == 0
    })
    .await;
    // Dropped as Go drops it, but the sender is told: FAILURE, not PENDING forever.
    let err = r
        .get_with_timeout(WAIT, Duration::from_millis(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed(m) if m.contains("task nobody_knows is not registered")),
        "{err:?}"
    );
    assert_eq!(broker.ready_len("machinery_tasks"), 0);
    assert!(broker.dead_letters("machinery_tasks").is_empty());
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn unregistered_task_ends_in_failure_after_max_attempts() {
    let backend = Arc::new(Recording::default());
    let broker = MemoryBroker::new();
    let mut c = config();
    c.worker.unknown_task_delay_ms = 20;
    c.worker.unknown_task_max_attempts = 3;
    let server = Server::new(c, broker.clone(), Arc::clone(&backend) as Arc<dyn Backend>);
    let w = server.new_worker("t", 2).launch();
    let r = server
        .send_task(Signature::new("nobody_knows"))
        .await
        .unwrap();
    let err = r
        .get_with_timeout(WAIT, Duration::from_millis(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed(m) if m == "task nobody_knows is not registered"),
        "{err:?}"
    );
    assert_eq!(
        backend.states_of(r.uuid()),
        vec![State::Pending, State::Failure]
    );
    wait_until_sync(WAIT, "the dead letter", || {
        !broker.dead_letters("machinery_tasks").is_empty()
    })
    .await;
    let dead = broker.dead_letters("machinery_tasks");
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert!(
        dead[0]
            .reason
            .contains("task nobody_knows is not registered")
            && dead[0].reason.contains("offered 3 times"),
        "{}",
        dead[0].reason
    );
    let sig = Signature::from_json(&dead[0].body).unwrap();
    assert_eq!(sig.uuid, r.uuid());
    w.quit();
    w.join().await.unwrap();
    assert_eq!(broker.ready_len("machinery_tasks"), 0);
    assert!(
        machinery_core::Broker::delayed_tasks(&broker)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn unregistered_task_ends_in_failure_after_max_wait() {
    let broker = MemoryBroker::new();
    let mut c = config();
    c.worker.unknown_task_delay_ms = 50;
    c.worker.unknown_task_max_attempts = 0; // no count limit: time only
    c.worker.unknown_task_max_wait_secs = 1;
    let server = Server::new(c, broker.clone(), MemoryBackend::new());
    let w = server.new_worker("t", 1).launch();
    let start = Instant::now();
    let r = server
        .send_task(Signature::new("nobody_knows"))
        .await
        .unwrap();
    let err = r
        .get_with_timeout(WAIT, Duration::from_millis(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed(m) if m.contains("not registered")),
        "{err:?}"
    );
    assert!(start.elapsed() >= Duration::from_secs(1), "gave up early");
    wait_until_sync(WAIT, "the dead letter", || {
        broker.dead_letters("machinery_tasks").len() == 1
    })
    .await;
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn task_registered_while_it_waits_runs_rolling_deploy() {
    let (server, _, broker) = setup();
    let w = server.new_worker("t", 1).launch();
    let r = server
        .send_task(Signature::new("late").arg(5i64))
        .await
        .unwrap();
    // The worker found it unregistered and offered it again later (it waits delayed).
    wait_until(WAIT, "the unregistered task offered again", || {
        let broker = broker.clone();
        async move {
            !machinery_core::Broker::delayed_tasks(&broker)
                .await
                .unwrap()
                .is_empty()
        }
    })
    .await;
    assert_eq!(r.state().await.unwrap().state, State::Pending);
    server
        .register_task("late", |x: i64| async move { Ok::<_, TaskError>(x * 2) })
        .unwrap();
    assert_eq!(r.get_as::<i64>(WAIT).await.unwrap(), 10);
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn null_and_nameless_bodies_are_malformed_at_once() {
    let (server, _, broker) = setup();
    let pulls = Arc::new(AtomicUsize::new(0));
    let p2 = Arc::clone(&pulls);
    let mut worker = server.new_worker("t", 1);
    worker.set_pre_consume_handler(move || {
        p2.fetch_add(1, Ordering::SeqCst);
        true
    });
    let w = worker.launch();
    let bodies: [&[u8]; 6] = [
        b"null",
        b" 5",
        b"\"add\"",
        b"{}",
        br#"{"Name":""}"#,
        br#"{"UUID":"task_x","Name":"add","OnSuccess":[null]}"#,
    ];
    for b in bodies {
        broker.inject_raw("machinery_tasks", b).unwrap();
    }
    let r = server
        .send_task(Signature::new("add").arg(2i64).arg(2i64))
        .await
        .unwrap();
    assert_eq!(r.get_as::<i64>(WAIT).await.unwrap(), 4);
    wait_until_sync(WAIT, "six dead letters", || {
        broker.dead_letters("machinery_tasks").len() == 6
    })
    .await;
    let dead = broker.dead_letters("machinery_tasks");
    assert!(
        dead[0].reason.contains("must be a JSON object, got null"),
        "{}",
        dead[0].reason
    );
    assert!(dead[3].reason.contains("has no Name"), "{}", dead[3].reason);
    assert!(
        dead[5]
            .reason
            .contains("in OnSuccess of task add (task_x) has no Name"),
        "{}",
        dead[5].reason
    );
    // Each was taken once: nothing was offered again.
    assert!(
        pulls.load(Ordering::SeqCst) <= 9,
        "{} pulls",
        pulls.load(Ordering::SeqCst)
    );
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn empty_task_name_is_refused_at_send() {
    let (server, rec, _) = setup();
    let err = server.send_task(Signature::new("")).await.unwrap_err();
    assert!(matches!(&err, Error::Config { .. }), "{err:?}");
    let nested = Signature::new("add").on_success(Signature::new(""));
    let err = server.send_task(nested).await.unwrap_err();
    assert!(err.to_string().contains("OnSuccess"), "{err}");
    let err = server
        .send_group(
            Group::new(vec![Signature::new("add"), Signature::new("")]),
            0,
        )
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Config { .. }), "{err:?}");
    assert!(rec.log.lock().unwrap().is_empty(), "nothing is stored");
}

#[tokio::test]
async fn too_large_task_is_refused_before_pending_is_stored() {
    let (server, rec, broker) = setup();
    broker.set_max_message_bytes(Some(2_000));
    let sig = Signature::new("add").arg("x".repeat(5_000));
    let uuid = sig.uuid.clone();
    let err = server.send_task(sig).await.unwrap_err();
    assert!(
        matches!(&err, Error::TooLarge { limit: 2_000, .. }),
        "{err:?}"
    );
    assert!(
        rec.states_of(&uuid).is_empty(),
        "a state was stored for a task never sent"
    );
    let r = server
        .send_task(Signature::new("add").arg(1i64))
        .await
        .unwrap();
    assert_eq!(rec.states_of(r.uuid()), vec![State::Pending]);
}

#[tokio::test]
async fn failed_publish_stores_failure_with_the_error() {
    let (server, rec, broker) = setup();
    machinery_core::Broker::close(&broker).await.unwrap();
    let sig = Signature::new("add").arg(1i64);
    let uuid = sig.uuid.clone();
    let err = server.send_task(sig).await.unwrap_err();
    assert!(matches!(&err, Error::Closed(_)), "{err:?}");
    assert_eq!(rec.states_of(&uuid), vec![State::Pending, State::Failure]);
    let st = server.backend().state(&uuid).await.unwrap().unwrap();
    assert!(
        st.error.contains("could not be sent") && st.error.contains("closed"),
        "{}",
        st.error
    );
    // A group: every member the broker refused ends FAILURE too.
    let g = Group::new(vec![Signature::new("add"), Signature::new("add")]);
    let uuids: Vec<String> = g.tasks.iter().map(|t| t.uuid.clone()).collect();
    server.send_group(g, 0).await.unwrap_err();
    for u in &uuids {
        assert_eq!(rec.states_of(u), vec![State::Pending, State::Failure]);
    }
}

#[tokio::test]
async fn huge_durations_from_the_wire_do_not_panic_the_worker() {
    let (server, rec, broker) = setup();
    server
        .register_task("always_fails", || async {
            Err::<(), _>(TaskError::failed("no"))
        })
        .unwrap();
    server
        .register_task("later_forever", || async {
            Err::<(), _>(TaskError::retry_later("later", Duration::MAX))
        })
        .unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let mut worker = server.new_worker("t", 1);
    worker.set_pre_task_handler(move |_| {
        c2.fetch_add(1, Ordering::SeqCst);
    });
    let w = worker.launch();
    // A RetryTimeout as large as the wire allows, a retry_later of Duration::MAX and a delay
    // of u64::MAX seconds: each is parked at the latest time instead of panicking.
    let a = server
        .send_task(Signature::new("always_fails").retries(1, i64::MAX))
        .await
        .unwrap();
    let b = server
        .send_task(Signature::new("later_forever"))
        .await
        .unwrap();
    let c = server
        .send_task(Signature::new("add").delay(Duration::from_secs(u64::MAX)))
        .await
        .unwrap();
    let d = server
        .send_task(Signature::new("add").arg(1i64).arg(1i64))
        .await
        .unwrap();
    assert_eq!(d.get_as::<i64>(WAIT).await.unwrap(), 2);
    // RETRY, then PENDING again as the retry is sent (as Go does).
    let retried = vec![
        State::Pending,
        State::Received,
        State::Started,
        State::Retry,
        State::Pending,
    ];
    wait_until_sync(WAIT, "both retries parked", || {
        rec.states_of(a.uuid()) == retried && rec.states_of(b.uuid()) == retried
    })
    .await;
    let delayed = machinery_core::Broker::delayed_tasks(&broker)
        .await
        .unwrap();
    assert_eq!(delayed.len(), 3, "{delayed:?}");
    for s in &delayed {
        assert_eq!(s.eta, Some(machinery_core::time::latest()), "{}", s.name);
    }
    assert_eq!(rec.states_of(c.uuid()), vec![State::Pending]);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "each task ran exactly once"
    );
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn a_panic_outside_the_task_is_failure_and_a_dead_letter_not_a_loop() {
    let (server, rec, broker) = setup();
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    let mut worker = server.new_worker("t", 1);
    worker.set_post_task_handler(move |sig, _| {
        c2.fetch_add(1, Ordering::SeqCst);
        if sig.args.len() == 3 {
            panic!("post-task hook exploded");
        }
    });
    let w = worker.launch();
    let bad = server
        .send_task(Signature::new("add").arg(1i64).arg(2i64).arg(3i64))
        .await
        .unwrap();
    let err = bad
        .get_with_timeout(WAIT, Duration::from_millis(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed(m) if m.contains("panicked") && m.contains("post-task hook exploded")),
        "{err:?}"
    );
    wait_until_sync(WAIT, "the dead letter", || {
        broker.dead_letters("machinery_tasks").len() == 1
    })
    .await;
    assert!(
        broker.dead_letters("machinery_tasks")[0]
            .reason
            .contains("post-task hook exploded")
    );
    // The worker goes on, and the message was not delivered again.
    let ok = server
        .send_task(Signature::new("add").arg(1i64).arg(1i64))
        .await
        .unwrap();
    assert_eq!(ok.get_as::<i64>(WAIT).await.unwrap(), 2);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        rec.states_of(bad.uuid()),
        vec![
            State::Pending,
            State::Received,
            State::Started,
            State::Success,
            State::Failure
        ]
    );
    w.quit();
    w.join().await.unwrap();
}

/// A final state the backend refuses for good (here the memory backend's size limit, as
/// DynamoDB's 400 KB item limit) ends the task FAILURE naming the refusal, acked once: no
/// requeue loop. A FAILURE too large to store (a huge error message) stores the refusal
/// instead. The worker goes on.
#[tokio::test]
async fn a_final_state_the_backend_refuses_ends_failure_not_a_requeue_loop() {
    let (server, rec, broker) = setup();
    rec.inner.set_max_state_bytes(Some(2_000));
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    server
        .register_task("big", move |fail: bool| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                let text = "x".repeat(10_000);
                if fail {
                    Err(TaskError::fatal(text))
                } else {
                    Ok(text)
                }
            }
        })
        .unwrap();
    let w = server.new_worker("t", 1).launch();
    for fail in [false, true] {
        let res = server
            .send_task(Signature::new("big").arg(fail))
            .await
            .unwrap();
        let err = res
            .get_with_timeout(WAIT, Duration::from_millis(5))
            .await
            .unwrap_err();
        let Error::TaskFailed(msg) = &err else {
            panic!("{err:?}")
        };
        let what = if fail { "FAILURE" } else { "result" };
        assert!(
            msg.contains(&format!("the {what} of task big cannot be stored"))
                && msg.contains("over the limit of 2000 bytes"),
            "{msg}"
        );
        let tried = if fail { State::Failure } else { State::Success };
        assert_eq!(
            rec.states_of(res.uuid()),
            vec![
                State::Pending,
                State::Received,
                State::Started,
                tried,
                State::Failure
            ]
        );
    }
    // The worker goes on; neither message came back nor is left anywhere.
    let ok = server
        .send_task(Signature::new("add").arg(1i64).arg(1i64))
        .await
        .unwrap();
    assert_eq!(ok.get_as::<i64>(WAIT).await.unwrap(), 2);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each ran once");
    assert_eq!(broker.ready_len("machinery_tasks"), 0);
    assert_eq!(broker.unacked_len(), 0);
    assert!(broker.dead_letters("machinery_tasks").is_empty());
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn malformed_message_is_dead_lettered_and_worker_keeps_going() {
    let (server, _, broker) = setup();
    let w = server.new_worker("t", 1).launch();
    broker.inject_raw("machinery_tasks", b"{not json").unwrap();
    broker.inject_raw("machinery_tasks", b"[1,2,3]").unwrap();
    let r = server
        .send_task(Signature::new("add").arg(2i64).arg(2i64))
        .await
        .unwrap();
    assert_eq!(r.get_as::<i64>(WAIT).await.unwrap(), 4);
    let dead = broker.dead_letters("machinery_tasks");
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!(dead[0].body, b"{not json");
    assert!(!dead[0].reason.is_empty());
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn time_limit_fails_the_task() {
    let (server, _, _) = setup();
    server
        .register_task_with(
            "slow",
            |ctx: TaskContext| async move {
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(30)) => Ok::<_, TaskError>(()),
                    _ = ctx.cancellation().cancelled() => Err(TaskError::fatal("cancelled")),
                }
            },
            TaskOptions::with_timeout(Duration::from_millis(100)),
        )
        .unwrap();
    let w = server.new_worker("t", 1).launch();
    let start = Instant::now();
    let r = server.send_task(Signature::new("slow")).await.unwrap();
    let err = r
        .get_with_timeout(WAIT, Duration::from_millis(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed(m) if m.contains("timed out")),
        "{err:?}"
    );
    assert!(start.elapsed() < Duration::from_secs(5));
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn retry_later_is_capped() {
    let mut c = config();
    c.worker.retry_later_max_attempts = 2;
    let server = Server::new(c, MemoryBroker::new(), MemoryBackend::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let c2 = Arc::clone(&calls);
    server
        .register_task("never_ready", move || {
            c2.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(TaskError::retry_later("not yet", Duration::from_millis(20))) }
        })
        .unwrap();
    let w = server.new_worker("t", 1).launch();
    let r = server
        .send_task(Signature::new("never_ready"))
        .await
        .unwrap();
    let err = r
        .get_with_timeout(WAIT, Duration::from_millis(2))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::TaskFailed(m) if m.contains("gave up after 2")),
        "{err:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    w.quit();
    w.join().await.unwrap();
}

async fn max_parallel(concurrency: usize, tasks: usize) -> usize {
    let server = Server::new(config(), MemoryBroker::new(), MemoryBackend::new());
    let now = Arc::new(AtomicUsize::new(0));
    let max = Arc::new(AtomicUsize::new(0));
    let (n2, m2) = (Arc::clone(&now), Arc::clone(&max));
    server
        .register_task("busy", move || {
            let (now, max) = (Arc::clone(&n2), Arc::clone(&m2));
            async move {
                let cur = now.fetch_add(1, Ordering::SeqCst) + 1;
                max.fetch_max(cur, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(400)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, TaskError>(())
            }
        })
        .unwrap();
    let w = server.new_worker("t", concurrency).launch();
    let mut results = Vec::new();
    for _ in 0..tasks {
        results.push(server.send_task(Signature::new("busy")).await.unwrap());
    }
    for r in results {
        r.get_with_timeout(WAIT, Duration::from_millis(5))
            .await
            .unwrap();
    }
    w.quit();
    w.join().await.unwrap();
    max.load(Ordering::SeqCst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_limits_hold() {
    assert_eq!(max_parallel(1, 4).await, 1);
    assert_eq!(max_parallel(2, 6).await, 2);
    assert_eq!(max_parallel(0, 6).await, 6);
}

#[tokio::test]
async fn pre_publish_hook_and_trace_headers_reach_the_task() {
    let (server, _, _) = setup();
    server.set_pre_publish_handler(|sig| {
        sig.headers
            .get_or_insert_with(Default::default)
            .insert("tenant".into(), "acme".into());
    });
    let seen = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let s2 = Arc::clone(&seen);
    server
        .register_task("who", move |ctx: TaskContext| {
            let s = Arc::clone(&s2);
            async move {
                let h = ctx.headers().cloned().unwrap_or_default();
                let tenant = h
                    .get("tenant")
                    .and_then(|v| v.as_str())
                    .unwrap_or("")
                    .to_owned();
                let trace = machinery_core::trace_id(Some(&h)).unwrap_or("").to_owned();
                s.lock().unwrap().push((tenant, trace));
                Ok::<_, TaskError>(())
            }
        })
        .unwrap();
    let w = server.new_worker("t", 1).launch();
    let child = Signature::new("who");
    let r = server
        .send_task(Signature::new("who").on_success(child.clone()))
        .await
        .unwrap();
    r.get_with_timeout(WAIT, Duration::from_millis(2))
        .await
        .unwrap();
    machinery_core::AsyncResult::new(child, Arc::clone(server.backend()))
        .get_with_timeout(WAIT, Duration::from_millis(2))
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 2);
    assert!(seen.iter().all(|(t, _)| t == "acme"), "{seen:?}");
    assert_eq!(seen[0].1.len(), 32);
    assert_eq!(seen[0].1, seen[1].1, "the follow-up keeps the trace id");
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chord_fires_exactly_once_with_results_in_group_order() {
    let (server, _, broker) = setup();
    let runs = Arc::new(AtomicUsize::new(0));
    let r2 = Arc::clone(&runs);
    server
        .register_task("collect", move |Variadic(v): Variadic<i64>| {
            r2.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, TaskError>(v) }
        })
        .unwrap();
    let w = server.new_worker("t", 8).launch();
    let members: Vec<Signature> = (0..60)
        .map(|i| Signature::new("add").arg(i as i64))
        .collect();
    let chord = Chord::new(Group::new(members), Signature::new("collect"));
    let r = server.send_chord(chord, 0).await.unwrap();
    let got: Vec<i64> = r.get_as(WAIT).await.unwrap();
    assert_eq!(got, (0..60).collect::<Vec<i64>>());
    // Once the worker has finished everything it took, a second callback would have run or
    // would still wait in the queue.
    w.quit();
    w.join().await.unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1);
    assert_eq!(
        broker.ready_len("machinery_tasks"),
        0,
        "a second callback waits"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn periodic_task_sends_once_per_tick_across_servers() {
    let broker = MemoryBroker::new();
    let backend = MemoryBackend::new();
    let lock = Arc::new(MemoryLock::new());
    let runs = Arc::new(AtomicUsize::new(0));
    let mut servers = Vec::new();
    for _ in 0..2 {
        let s = Server::new(config(), broker.clone(), backend.clone());
        s.set_lock(Arc::clone(&lock) as Arc<dyn machinery_core::Lock>);
        servers.push(s);
    }
    let r2 = Arc::clone(&runs);
    servers[0]
        .register_task("tick", move || {
            r2.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, TaskError>(()) }
        })
        .unwrap();
    let w = servers[0].new_worker("t", 2).launch();
    let start = Instant::now();
    for s in &servers {
        s.register_periodic_task("@every 300ms", "tick", Signature::new("tick"))
            .unwrap();
    }
    wait_until_sync(WAIT, "three runs", || runs.load(Ordering::SeqCst) >= 3).await;
    // Two servers, one lock: one send per tick, not two. Runs counted before the clock is
    // read can only come from ticks that have passed (one every 300 ms; one more allowed in
    // case a tick fires at registration).
    let n = runs.load(Ordering::SeqCst);
    let ticks = start.elapsed().as_millis() / 300;
    assert!(
        n as u128 <= ticks + 1,
        "{n} runs after {ticks} ticks: both servers sent"
    );
    assert!(
        servers[0]
            .register_periodic_task("61 * * * *", "bad", Signature::new("tick"))
            .is_err()
    );
    w.quit();
    w.join().await.unwrap();
}

#[tokio::test]
async fn member_of_an_unknown_group_is_not_requeued_forever() {
    let (server, _, broker) = setup();
    let w = server.new_worker("t", 1).launch();
    // A group this backend never recorded (a Go producer on a backend without group metas).
    let mut sig = Signature::new("add").arg(1i64).arg(1i64);
    sig.group_uuid = machinery_core::new_group_uuid();
    sig.group_task_count = 2;
    sig.chord_callback = Some(Box::new(Signature::new("add")));
    let r = server.send_task(sig).await.unwrap();
    assert_eq!(r.get_as::<i64>(WAIT).await.unwrap(), 2);
    // Settled (acked, or requeued with a delay) once nothing is unacked.
    wait_until_sync(WAIT, "the member settled", || broker.unacked_len() == 0).await;
    assert_eq!(broker.ready_len("machinery_tasks"), 0);
    let delayed = machinery_core::Broker::delayed_tasks(&broker)
        .await
        .unwrap();
    assert!(
        delayed.is_empty(),
        "the member must not be requeued: {delayed:?}"
    );
    w.quit();
    w.join().await.unwrap();
}
