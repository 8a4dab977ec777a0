//! The backend cases. Each takes a [`BackendFactory`], prepares a backend in a fresh
//! namespace and asserts one behaviour of the [`Backend`] contract; the names match the list
//! in `machinery_core`'s backend module docs.

use std::sync::Arc;
use std::time::Duration;

use machinery_core::{
    Backend, Error, Signature, State, TaskState, new_group_uuid, new_task_uuid, time,
};
use tokio::sync::Barrier;
use tokio::time::Instant;

use crate::util::result;
use crate::{BackendFactory, BackendSetup};

async fn start(factory: &impl BackendFactory, setup: BackendSetup) -> Option<Arc<dyn Backend>> {
    factory.create(setup).await
}

async fn set(backend: &dyn Backend, state: &TaskState) {
    backend
        .set_state(state)
        .await
        .unwrap_or_else(|e| panic!("set_state {} {}: {e}", state.task_uuid, state.state));
}

async fn get(backend: &dyn Backend, uuid: &str) -> TaskState {
    backend
        .state(uuid)
        .await
        .unwrap_or_else(|e| panic!("state {uuid}: {e}"))
        .unwrap_or_else(|| panic!("no state stored for {uuid}"))
}

/// Compare everything but `TTL` (which backends fill in their own way).
fn assert_same_state(got: &TaskState, want: &TaskState) {
    let mut got = got.clone();
    got.ttl = want.ttl;
    assert_eq!(&got, want, "the stored state does not read back unchanged");
}

/// `state_lifecycle_roundtrips`: PENDING → RECEIVED → STARTED → SUCCESS are each read back
/// exactly as written.
pub async fn state_lifecycle_roundtrips(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let sig = Signature::new("conformance.lifecycle");
    let created_at = time::now();
    for st in [State::Pending, State::Received, State::Started] {
        let state = TaskState {
            created_at,
            ..TaskState::new(&sig, st)
        };
        set(&*backend, &state).await;
        assert_same_state(&get(&*backend, &sig.uuid).await, &state);
    }
    let success = TaskState {
        created_at,
        ..TaskState::success(&sig, vec![result("int64", "3")])
    };
    set(&*backend, &success).await;
    let got = get(&*backend, &sig.uuid).await;
    assert_same_state(&got, &success);
    assert!(got.is_success() && got.is_completed());
}

/// `set_state_keeps_created_at` (capability `keeps_created_at`): the backend follows core's
/// state-merge rule ([`TaskState::merge_stored`]): a later state keeps the stored
/// `CreatedAt`, and the stored `TaskName` when it has none; a PENDING state (a retry's
/// re-creation) starts afresh.
pub async fn set_state_keeps_created_at(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let sig = Signature::new("conformance.keep");
    let created_at = time::now() - chrono::Duration::hours(1);
    let pending = TaskState {
        created_at,
        ..TaskState::pending(&sig)
    };
    set(&*backend, &pending).await;
    let started = TaskState {
        task_uuid: sig.uuid.clone(),
        task_name: String::new(),
        state: State::Started,
        created_at: time::now(),
        ..TaskState::default()
    };
    set(&*backend, &started).await;
    let got = get(&*backend, &sig.uuid).await;
    assert_eq!(got.state, State::Started, "the later state was not stored");
    let keeps = backend.capabilities().keeps_created_at;
    if keeps {
        let mut expected = started.clone();
        expected.merge_stored(Some(&pending));
        assert_eq!(
            got.created_at, expected.created_at,
            "CreatedAt was not kept"
        );
        assert_eq!(got.created_at, created_at, "CreatedAt was not kept");
        assert_eq!(got.task_name, expected.task_name, "TaskName was not kept");
        assert_eq!(got.task_name, sig.name, "TaskName was not kept");
    } else {
        eprintln!("note: capability keeps_created_at is false; checked only the state");
    }
    // A retry stores PENDING again: it starts afresh, with its own CreatedAt.
    let retried_at = time::now() + chrono::Duration::hours(1);
    let again = TaskState {
        created_at: retried_at,
        ..TaskState::pending(&sig)
    };
    set(&*backend, &again).await;
    let got = get(&*backend, &sig.uuid).await;
    assert_eq!(
        got.state,
        State::Pending,
        "the retry's PENDING was not stored"
    );
    if keeps {
        let mut expected = again.clone();
        expected.merge_stored(Some(&started));
        assert_eq!(expected.created_at, retried_at);
        assert_eq!(
            got.created_at, expected.created_at,
            "PENDING must start afresh (a retry's new CreatedAt), not keep the stored one"
        );
    }
}

/// `unknown_task_has_no_state`: `state` of a UUID never written is `Ok(None)`.
pub async fn unknown_task_has_no_state(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let got = backend
        .state(&new_task_uuid())
        .await
        .expect("state of an unknown task");
    assert_eq!(got, None);
}

/// `results_preserve_types`: results come back with their Go type names and exact values,
/// an error-only task's `Some(vec![])` stays `Some(vec![])`, and `None` stays `None`.
pub async fn results_preserve_types(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let results = vec![
        result("int64", "-9223372036854775808"),
        result("uint64", "18446744073709551615"),
        result("float64", "3.14"),
        result("float64", "1e+21"),
        result("string", r#""a\u003cb\u003e \u0026 \"q\" é \\ \n""#),
        result("[]string", r#"["x","","z"]"#),
        result("[]uint8", r#""AQID""#),
        result("bool", "true"),
        result("[]int64", "[]"),
    ];
    let sig = Signature::new("conformance.types");
    let success = TaskState::success(&sig, results.clone());
    set(&*backend, &success).await;
    let got = get(&*backend, &sig.uuid).await;
    let got_results = got.results.expect("results of a SUCCESS");
    assert_eq!(got_results.len(), results.len());
    for (g, w) in got_results.iter().zip(&results) {
        assert_eq!(g.type_name, w.type_name, "result type changed");
        let gv: serde_json::Value = serde_json::from_str(g.value.get()).expect("stored json");
        let wv: serde_json::Value = serde_json::from_str(w.value.get()).expect("literal json");
        assert_eq!(
            gv, wv,
            "{} value changed: {} vs {}",
            w.type_name, g.value, w.value
        );
    }

    let error_only = Signature::new("conformance.error_only");
    set(&*backend, &TaskState::success(&error_only, vec![])).await;
    let got = get(&*backend, &error_only.uuid).await;
    assert_eq!(
        got.results,
        Some(vec![]),
        "Some(vec![]) must not become None"
    );

    let pending = Signature::new("conformance.no_results");
    set(&*backend, &TaskState::pending(&pending)).await;
    let got = get(&*backend, &pending.uuid).await;
    assert_eq!(got.results, None, "None must not become Some");
}

/// `failure_keeps_error_text`: a FAILURE's error text reads back byte for byte.
pub async fn failure_keeps_error_text(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let sig = Signature::new("conformance.failure");
    let text = "boom: <b>&\"quoted\" ünïcode\nsecond line\t\\";
    let failure = TaskState::failure(&sig, text);
    set(&*backend, &failure).await;
    let got = get(&*backend, &sig.uuid).await;
    assert_eq!(got.state, State::Failure);
    assert_eq!(got.error, text);
    assert!(got.is_failure() && got.is_completed());
    assert_same_state(&got, &failure);
}

/// `group_states_are_in_group_order`: one state per member in `init_group` order; members
/// with nothing stored appear as PENDING with their UUID.
pub async fn group_states_are_in_group_order(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let sigs: Vec<Signature> = (0..4)
        .map(|i| Signature::new(format!("conformance.group.{i}")))
        .collect();
    let uuids: Vec<String> = sigs.iter().map(|s| s.uuid.clone()).collect();
    let group = new_group_uuid();
    backend
        .init_group(&group, &uuids)
        .await
        .expect("init_group");
    // Written out of order; member 1 has nothing stored.
    set(
        &*backend,
        &TaskState::success(&sigs[3], vec![result("int64", "3")]),
    )
    .await;
    set(&*backend, &TaskState::new(&sigs[0], State::Started)).await;
    set(&*backend, &TaskState::failure(&sigs[2], "two failed")).await;

    let states = backend.group_states(&group).await.expect("group_states");
    let got: Vec<(&str, State)> = states
        .iter()
        .map(|s| (s.task_uuid.as_str(), s.state))
        .collect();
    assert_eq!(
        got,
        vec![
            (uuids[0].as_str(), State::Started),
            (uuids[1].as_str(), State::Pending),
            (uuids[2].as_str(), State::Failure),
            (uuids[3].as_str(), State::Success),
        ]
    );
    assert_eq!(states[2].error, "two failed");
    assert_eq!(states[3].results, Some(vec![result("int64", "3")]));
}

/// `trigger_chord_fires_exactly_once_under_contention`: of 100 concurrent callers exactly
/// one gets `true`; later callers get `false`; another group is independent.
pub async fn trigger_chord_fires_exactly_once_under_contention(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    const CALLERS: usize = 100;
    let group = new_group_uuid();
    let other_group = new_group_uuid();
    for g in [&group, &other_group] {
        backend
            .init_group(g, &[new_task_uuid(), new_task_uuid()])
            .await
            .expect("init_group");
    }
    let barrier = Arc::new(Barrier::new(CALLERS));
    let mut callers = Vec::new();
    for _ in 0..CALLERS {
        let backend = Arc::clone(&backend);
        let barrier = Arc::clone(&barrier);
        let group = group.clone();
        callers.push(tokio::spawn(async move {
            barrier.wait().await;
            backend.trigger_chord(&group).await
        }));
    }
    let mut winners = 0;
    for c in callers {
        if c.await.expect("caller task").expect("trigger_chord") {
            winners += 1;
        }
    }
    assert_eq!(
        winners, 1,
        "{winners} of {CALLERS} callers triggered the chord"
    );
    assert!(
        !backend.trigger_chord(&group).await.expect("trigger again"),
        "a late caller triggered the chord again"
    );
    assert!(
        backend
            .trigger_chord(&other_group)
            .await
            .expect("trigger the other group"),
        "triggering one group must not trigger another"
    );
    assert!(
        !backend
            .trigger_chord(&other_group)
            .await
            .expect("trigger the other group again")
    );
}

/// `group_member_done_counts_each_member_once`: `mark_group_member_done` (called after a
/// member's final state is stored) counts distinct members: a repeated call for the same
/// member does not count twice, concurrent members always let one caller see the full
/// count, groups are independent, and an unknown group is [`Error::GroupNotFound`].
pub async fn group_member_done_counts_each_member_once(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let sigs: Vec<Signature> = (0..3)
        .map(|i| Signature::new(format!("conformance.done.{i}")))
        .collect();
    let group = new_group_uuid();
    let uuids: Vec<String> = sigs.iter().map(|s| s.uuid.clone()).collect();
    backend
        .init_group(&group, &uuids)
        .await
        .expect("init_group");
    let mark = |uuid: &str| {
        let backend = Arc::clone(&backend);
        let (group, uuid) = (group.clone(), uuid.to_owned());
        async move {
            backend
                .mark_group_member_done(&group, &uuid)
                .await
                .unwrap_or_else(|e| panic!("mark_group_member_done {uuid}: {e}"))
        }
    };

    set(&*backend, &TaskState::success(&sigs[0], vec![])).await;
    assert_eq!(mark(&uuids[0]).await, 1);
    assert_eq!(
        mark(&uuids[0]).await,
        1,
        "a redelivered member counted twice"
    );
    set(&*backend, &TaskState::failure(&sigs[1], "failed")).await;
    assert_eq!(mark(&uuids[1]).await, 2, "a FAILURE member counts as done");
    set(&*backend, &TaskState::success(&sigs[2], vec![])).await;
    let repeated: Vec<usize> = futures::future::join_all((0..10).map(|_| mark(&uuids[2]))).await;
    assert!(
        repeated.iter().all(|&n| n == 3),
        "concurrent repeats of the last member: {repeated:?}"
    );

    // Members finishing at once: whoever is last sees the whole group.
    const MEMBERS: usize = 20;
    let big: Vec<Signature> = (0..MEMBERS)
        .map(|i| Signature::new(format!("conformance.done.big.{i}")))
        .collect();
    let big_group = new_group_uuid();
    let big_uuids: Vec<String> = big.iter().map(|s| s.uuid.clone()).collect();
    backend
        .init_group(&big_group, &big_uuids)
        .await
        .expect("init_group");
    let barrier = Arc::new(Barrier::new(MEMBERS));
    let mut members = Vec::new();
    for sig in big {
        let backend = Arc::clone(&backend);
        let barrier = Arc::clone(&barrier);
        let group = big_group.clone();
        members.push(tokio::spawn(async move {
            barrier.wait().await;
            set(&*backend, &TaskState::success(&sig, vec![])).await;
            backend
                .mark_group_member_done(&group, &sig.uuid)
                .await
                .expect("mark_group_member_done")
        }));
    }
    let mut counts = Vec::new();
    for m in members {
        counts.push(m.await.expect("member task"));
    }
    assert!(
        counts.iter().all(|&n| (1..=MEMBERS).contains(&n)),
        "counts out of range: {counts:?}"
    );
    assert!(
        counts.contains(&MEMBERS),
        "no member saw the group complete: {counts:?}"
    );
    assert_eq!(
        mark(&uuids[0]).await,
        3,
        "another group's members leaked in"
    );

    match backend
        .mark_group_member_done(&new_group_uuid(), &uuids[0])
        .await
    {
        Err(Error::GroupNotFound(_)) => {}
        other => {
            panic!(
                "mark_group_member_done of an unknown group: expected Error::GroupNotFound, got {other:?}"
            )
        }
    }
}

/// `trigger_chord_unknown_group_errors`: `trigger_chord` and `group_states` of a group never
/// initialised are [`Error::GroupNotFound`] (whose message says "group").
pub async fn trigger_chord_unknown_group_errors(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let group = new_group_uuid();
    match backend.trigger_chord(&group).await {
        Err(e @ Error::GroupNotFound(_)) => {
            assert!(e.to_string().contains("group"), "{e}");
        }
        other => panic!(
            "trigger_chord of an unknown group: expected Error::GroupNotFound, got {other:?}"
        ),
    }
    match backend.group_states(&group).await {
        Err(Error::GroupNotFound(_)) => {}
        other => {
            panic!("group_states of an unknown group: expected Error::GroupNotFound, got {other:?}")
        }
    }
}

/// `purge_removes_state_and_group`: `purge_state` deletes a state, `purge_group` deletes
/// the group's bookkeeping but not its members' states.
pub async fn purge_removes_state_and_group(factory: impl BackendFactory) {
    let Some(backend) = start(&factory, BackendSetup::random()).await else {
        return;
    };
    let a = Signature::new("conformance.purge.a");
    let b = Signature::new("conformance.purge.b");
    set(&*backend, &TaskState::pending(&a)).await;
    set(&*backend, &TaskState::pending(&b)).await;
    let group = new_group_uuid();
    backend
        .init_group(&group, &[a.uuid.clone(), b.uuid.clone()])
        .await
        .expect("init_group");

    backend.purge_state(&a.uuid).await.expect("purge_state");
    assert_eq!(backend.state(&a.uuid).await.expect("state"), None);
    assert!(
        backend.state(&b.uuid).await.expect("state").is_some(),
        "purge_state removed another task's state"
    );
    backend
        .purge_state(&a.uuid)
        .await
        .expect("purge_state twice");

    backend.purge_group(&group).await.expect("purge_group");
    assert!(
        matches!(
            backend.group_states(&group).await,
            Err(Error::GroupNotFound(_))
        ),
        "group_states after purge_group must be GroupNotFound"
    );
    assert!(
        matches!(
            backend.trigger_chord(&group).await,
            Err(Error::GroupNotFound(_))
        ),
        "trigger_chord after purge_group must be GroupNotFound"
    );
    assert!(
        backend.state(&b.uuid).await.expect("state").is_some(),
        "purge_group must not remove member states"
    );
}

/// `results_expire` (capability `expiry`): with results set to expire after 1 s, a state
/// and a group are readable at first and gone within a few seconds. Without the capability
/// they must still be there after the expiry time.
pub async fn results_expire(factory: impl BackendFactory) {
    let ttl = Duration::from_secs(1);
    let Some(backend) = start(&factory, BackendSetup::random().expiring_in(ttl)).await else {
        return;
    };
    let sig = Signature::new("conformance.expire");
    set(
        &*backend,
        &TaskState::success(&sig, vec![result("bool", "true")]),
    )
    .await;
    let group = new_group_uuid();
    backend
        .init_group(&group, std::slice::from_ref(&sig.uuid))
        .await
        .expect("init_group");
    assert!(backend.state(&sig.uuid).await.expect("state").is_some());
    backend.group_states(&group).await.expect("group_states");

    if !backend.capabilities().expiry {
        tokio::time::sleep(ttl + Duration::from_millis(500)).await;
        assert!(
            backend.state(&sig.uuid).await.expect("state").is_some(),
            "a backend without the expiry capability lost a state"
        );
        return;
    }
    let deadline = Instant::now() + ttl + Duration::from_secs(3);
    loop {
        let state_gone = backend.state(&sig.uuid).await.expect("state").is_none();
        let group_gone = matches!(
            backend.group_states(&group).await,
            Err(Error::GroupNotFound(_))
        );
        if state_gone && group_gone {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not expired {ttl:?} after writing (state gone: {state_gone}, group gone: {group_gone})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
