//! What only the memcache backend has: a dead server among several, a restarted server,
//! limits checked before the request, eviction, a crashed member counter. Each test starts
//! memcached processes of its own on free ports (it kills or fills them).

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::OwnMemcached;
use machinery_core::{Backend, Error, Signature, State, TaskState, new_group_uuid};
use machinery_memcache::{MemcacheBackend, MemcacheConfig, pick_server};
use tokio::time::Instant;

async fn connect(config: MemcacheConfig) -> MemcacheBackend {
    MemcacheBackend::connect(config)
        .await
        .expect("connect to our own memcached")
}

/// A task UUID that Go's rule puts on server `server` of `servers`.
fn uuid_on(server: usize, servers: usize) -> String {
    loop {
        let uuid = machinery_core::new_task_uuid();
        if pick_server(uuid.as_bytes(), servers) == server {
            return uuid;
        }
    }
}

fn pending(uuid: &str) -> TaskState {
    TaskState {
        task_uuid: uuid.to_owned(),
        task_name: "driver.test".to_owned(),
        state: State::Pending,
        created_at: machinery_core::time::now(),
        ..TaskState::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_fails_only_its_keys_and_is_named() {
    let mut servers = [
        OwnMemcached::start(&[]).await,
        OwnMemcached::start(&[]).await,
        OwnMemcached::start(&[]).await,
    ];
    let addrs: Vec<String> = servers.iter().map(OwnMemcached::addr).collect();
    let backend = connect(MemcacheConfig {
        reconnect_for: Duration::from_millis(300),
        ..MemcacheConfig::from_url(format!("memcache://{}", addrs.join(",")))
    })
    .await;
    let on: Vec<String> = (0..3).map(|i| uuid_on(i, 3)).collect();
    for uuid in &on {
        backend.set_state(&pending(uuid)).await.expect("all up");
    }
    // A group whose meta is on server 0 and whose members live on servers 0 and 2 only.
    let group = loop {
        let g = new_group_uuid();
        if pick_server(g.as_bytes(), 3) == 0 {
            break g;
        }
    };
    let healthy = vec![on[0].clone(), on[2].clone()];
    backend.init_group(&group, &healthy).await.expect("init");
    let mixed_group = loop {
        let g = new_group_uuid();
        if pick_server(g.as_bytes(), 3) == 2 {
            break g;
        }
    };
    backend
        .init_group(&mixed_group, &on)
        .await
        .expect("init mixed");

    servers[1].kill().await;

    let started = Instant::now();
    let err = backend
        .set_state(&pending(&on[1]))
        .await
        .expect_err("server 1 is dead");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "failing took {:?}",
        started.elapsed()
    );
    let text = format!("{err}");
    assert!(
        text.contains(&addrs[1]),
        "the dead server is not named: {text}"
    );
    assert!(
        err.is_temporary(),
        "a dead server is a temporary error: {text}"
    );
    let err = backend.state(&on[1]).await.expect_err("read on server 1");
    assert!(err.to_string().contains(&addrs[1]), "{err}");
    let err = backend
        .group_states(&mixed_group)
        .await
        .expect_err("a member on server 1");
    assert!(err.to_string().contains(&addrs[1]), "{err}");

    // Keys on the live servers keep working.
    for uuid in [&on[0], &on[2]] {
        let mut state = pending(uuid);
        state.state = State::Started;
        backend.set_state(&state).await.expect("live server");
        assert_eq!(
            backend
                .state(uuid)
                .await
                .expect("read")
                .expect("stored")
                .state,
            State::Started
        );
    }
    let states = backend.group_states(&group).await.expect("healthy group");
    assert_eq!(states.len(), 2);
    assert!(backend.trigger_chord(&group).await.expect("trigger"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_is_reconnected_and_nothing_waits_forever() {
    let mut server = OwnMemcached::start(&[]).await;
    let backend = Arc::new(
        connect(MemcacheConfig {
            reconnect_for: Duration::from_secs(20),
            ..MemcacheConfig::from_url(format!("memcache://{}", server.addr()))
        })
        .await,
    );
    // A writer that keeps going while the server restarts under it.
    let writer = {
        let backend = Arc::clone(&backend);
        tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut written = Vec::new();
            for i in 0..400 {
                let uuid = machinery_core::new_task_uuid();
                match backend.set_state(&pending(&uuid)).await {
                    Ok(()) => written.push(uuid),
                    Err(e) => failures.push(format!("{i}: {e}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (written, failures)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    server.restart().await;
    let (written, failures) = writer.await.expect("writer");
    assert!(
        failures.is_empty(),
        "writes failed across the restart: {failures:?}"
    );
    assert_eq!(written.len(), 400);
    // The last writes went to the new process and read back.
    let last = written.last().expect("written");
    assert!(backend.state(last).await.expect("read").is_some());
    let mut state = pending(last);
    state.state = State::Success;
    backend.set_state(&state).await.expect("cas after restart");

    // Down for good: an operation gives up after `reconnect_for`, naming the server.
    let short = connect(MemcacheConfig {
        reconnect_for: Duration::from_millis(500),
        ..MemcacheConfig::from_url(format!("memcache://{}", server.addr()))
    })
    .await;
    server.kill().await;
    let started = Instant::now();
    let err = short.state(last).await.expect_err("server gone");
    assert!(err.to_string().contains(&server.addr()), "{err}");
    assert!(err.is_temporary(), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "gave up after {:?}",
        started.elapsed()
    );
}

async fn stat(addr: &str, name: &str) -> u64 {
    common::stats(addr)
        .await
        .into_iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or_else(|| panic!("no stat {name}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_are_clear_errors_before_any_request() {
    for (flags, item_size_max) in [(&[][..], 1024 * 1024), (&["-I", "2m"][..], 2 * 1024 * 1024)] {
        let server = OwnMemcached::start(flags).await;
        let addr = server.addr();
        let backend = connect(MemcacheConfig::from_url(format!("memcache://{addr}"))).await;
        let sig = Signature::new("driver.limits");
        let limit = backend.value_limit(&sig.uuid);
        assert_eq!(limit, item_size_max - sig.uuid.len() - 72, "{flags:?}");

        let sets = stat(&addr, "cmd_set").await;
        let gets = stat(&addr, "cmd_get").await;
        let long_key = "k".repeat(251);
        match backend.set_state(&pending(&long_key)).await {
            Err(Error::TooLarge { size, limit, .. }) => assert_eq!((size, limit), (251, 250)),
            other => panic!("251-byte key: {other:?}"),
        }
        let err = backend.state(&long_key).await.expect_err("251-byte key");
        assert!(err.to_string().contains("250"), "{err}");
        let err = backend
            .state("has space")
            .await
            .expect_err("a key with a space");
        assert!(
            err.to_string().contains("not a valid memcache key"),
            "{err}"
        );

        // A state one byte over the limit; then one exactly at it, which memcached takes.
        let mut state = TaskState::failure(&sig, "");
        let base = state.to_json().expect("json").len();
        state.error = "x".repeat(limit + 1 - base);
        match backend.set_state(&state).await {
            Err(Error::TooLarge { size, limit: l, .. }) => {
                assert_eq!((size, l), (limit + 1, limit));
                let text = Error::TooLarge {
                    what: "task state",
                    size,
                    limit: l,
                }
                .to_string();
                assert!(text.contains(&limit.to_string()), "{text}");
            }
            other => panic!("a state over the item size: {other:?}"),
        }
        let pending_over = TaskState {
            error: format!("{}{}", state.error, "y".repeat(16)),
            ..pending(&sig.uuid)
        };
        assert!(matches!(
            backend.set_state(&pending_over).await,
            Err(Error::TooLarge { .. })
        ));
        assert_eq!(stat(&addr, "cmd_set").await, sets, "a request was sent");
        assert_eq!(stat(&addr, "cmd_get").await, gets, "a request was sent");

        state.error.pop();
        assert_eq!(state.to_json().expect("json").len(), limit);
        backend
            .set_state(&state)
            .await
            .expect("a state exactly at the limit is stored");
        let got = backend
            .state(&sig.uuid)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(got.error.len(), state.error.len());
    }
}

/// memcached evicts under memory pressure: an evicted state reads as unknown (`None`), and
/// as PENDING in its group — never as something it was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evicted_states_are_unknown_never_invented() {
    let server = OwnMemcached::start(&["-m", "2"]).await;
    let addr = server.addr();
    let backend = connect(MemcacheConfig::from_url(format!("memcache://{addr}"))).await;
    let first = machinery_core::new_task_uuid();
    let mut done = TaskState {
        state: State::Success,
        results: Some(vec![]),
        ..pending(&first)
    };
    backend.set_state(&done).await.expect("first");
    let group = new_group_uuid();
    backend
        .init_group(&group, std::slice::from_ref(&first))
        .await
        .expect("init");
    // Fill the server with states of the same size (the same slab class: memcached evicts
    // per class, least recently used first) until the first one is evicted.
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut n = 0;
    // (Nothing reads the first state meanwhile: a read would make it recently used.)
    while stat(&addr, "evictions").await < 100 {
        for _ in 0..200 {
            done.task_uuid = machinery_core::new_task_uuid();
            backend.set_state(&done).await.expect("filler");
            n += 1;
        }
        assert!(
            Instant::now() < deadline,
            "nothing evicted after {n} writes"
        );
    }
    assert_eq!(backend.state(&first).await.expect("read"), None);
    if let Ok(states) = backend.group_states(&group).await {
        // The meta survived: the member is PENDING, not SUCCESS.
        assert_eq!(states.len(), 1);
        assert_eq!(states[0].state, State::Pending);
        assert_eq!(states[0].task_uuid, first);
    }
}

/// A caller that claimed a member and died before counting it is taken over after
/// `member_claim_wait`, so the group still completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_counter_died_is_taken_over() {
    let server = OwnMemcached::start(&[]).await;
    let addr = server.addr();
    let backend = connect(MemcacheConfig {
        member_claim_wait: Duration::from_millis(300),
        ..MemcacheConfig::from_url(format!("memcache://{addr}"))
    })
    .await;
    let members = [
        machinery_core::new_task_uuid(),
        machinery_core::new_task_uuid(),
    ];
    let group = new_group_uuid();
    backend.init_group(&group, &members).await.expect("init");
    assert_eq!(
        backend
            .mark_group_member_done(&group, &members[0])
            .await
            .expect("first"),
        1
    );
    // The crashed caller: its claim is there, its count never happened.
    common::set(
        &addr,
        &format!("{group}.done.{}", members[1]),
        0,
        0,
        b"counting",
    )
    .await;
    let started = Instant::now();
    let n = backend
        .mark_group_member_done(&group, &members[1])
        .await
        .expect("second");
    assert_eq!(n, 2);
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        backend
            .mark_group_member_done(&group, &members[1])
            .await
            .expect("again"),
        2,
        "counted twice"
    );
}

/// A worker's run: RECEIVED reads and merges once (gets + cas); STARTED and SUCCESS reuse
/// what it read (plain sets, no read), and every state keeps PENDING's name and CreatedAt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_reads_the_stored_state_once() {
    let server = OwnMemcached::start(&[]).await;
    let addr = server.addr();
    let sender = connect(MemcacheConfig::from_url(format!("memcache://{addr}"))).await;
    let worker = connect(MemcacheConfig::from_url(format!("memcache://{addr}"))).await;
    let sig = Signature::new("driver.run");
    let pending = TaskState::pending(&sig);
    let created_at = pending.created_at;
    sender.set_state(&pending).await.expect("pending");
    // Later states are made later: their own CreatedAt differs from PENDING's.
    tokio::time::sleep(Duration::from_millis(5)).await;
    let gets = stat(&addr, "cmd_get").await;
    for st in [State::Received, State::Started, State::Success] {
        let state = TaskState {
            task_name: String::new(),
            ..TaskState::new(&sig, st)
        };
        worker.set_state(&state).await.expect("state");
        let got = sender
            .state(&sig.uuid)
            .await
            .expect("read")
            .expect("stored");
        assert_eq!(got.state, st);
        assert_eq!(got.task_name, sig.name, "{st}: name lost");
        assert_eq!(got.created_at, created_at, "{st}: CreatedAt lost");
    }
    // One read by the worker (RECEIVED), three by the checks above.
    assert_eq!(stat(&addr, "cmd_get").await - gets, 4);
}
