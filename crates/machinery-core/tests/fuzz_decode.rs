//! Property tests of the wire decoder and of the worker's handling of whatever it decodes.
//!
//! - Any bytes: `Payload::decode` never panics; a decoded signature re-encodes to bytes that
//!   decode to the same signature.
//! - Any signature built from hostile field values (huge or negative durations and counts,
//!   extreme ETAs, unknown names, arguments of every type with mismatched values, nested
//!   follow-ups): the worker settles its delivery (a final state, a parked retry or a dead
//!   letter), never panics and never loops, and keeps serving other tasks.
//!
//! `CORPUS` keeps the inputs that once broke the worker; proptest keeps shrunk failures in
//! `proptest-regressions/fuzz_decode.txt` (checked in when a failure is found).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use machinery_core::{
    Arg, Config, MemoryBackend, MemoryBroker, Payload, Server, Signature, State, TaskError,
};
use proptest::prelude::*;
use serde_json::value::RawValue;

/// Bodies that broke a worker before: each must be settled without a panic or a loop.
const CORPUS: &[&str] = &[
    "null",
    "5",
    "\"add\"",
    "[]",
    "{}",
    r#"{"Name":""}"#,
    r#"{"Name":"add","OnSuccess":[null]}"#,
    r#"{"UUID":"task_rt","Name":"fail","RetryCount":1,"RetryTimeout":9223372036854775807}"#,
    r#"{"UUID":"task_rtn","Name":"fail","RetryCount":3,"RetryTimeout":-9223372036854775808}"#,
    r#"{"UUID":"task_rc","Name":"fail","RetryCount":-5}"#,
    r#"{"UUID":"task_late","Name":"later","Args":[{"Type":"uint64","Value":18446744073709551615}]}"#,
    r#"{"UUID":"task_eta","Name":"add","ETA":"9999-12-31T23:59:59.999999999Z","Args":[{"Type":"int64","Value":1},{"Type":"int64","Value":2}]}"#,
    r#"{"UUID":"task_eta0","Name":"add","ETA":"0001-01-01T00:00:00Z","Args":[{"Type":"int64","Value":1},{"Type":"int64","Value":2}]}"#,
    r#"{"UUID":"task_eta1","Name":"add","ETA":"2030-01-01T00:00:00-23:59","Args":[{"Type":"int64","Value":1},{"Type":"int64","Value":2}]}"#,
    r#"{"UUID":"task_args","Name":"add","Args":[{"Type":"[]int64","Value":"x"},{"Type":"int128","Value":1}]}"#,
    r#"{"UUID":"task_nil","Name":"add","Args":[null,null]}"#,
    r#"{"UUID":"task_deep","Name":"add","Args":[{"Type":"int64","Value":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}]}"#,
    r#"{"UUID":"task_unknown","Name":"nobody","IgnoreWhenTaskNotRegistered":true}"#,
    r#"{"UUID":"task_unknown2","Name":"nobody"}"#,
    r#"{"UUID":"task_panic","Name":"panic"}"#,
    r#"{"UUID":"task_group","Name":"add","GroupUUID":"group_x","GroupTaskCount":-1,"ChordCallback":{"Name":"add"},"Args":[{"Type":"int64","Value":1},{"Type":"int64","Value":1}]}"#,
    r#"{"UUID":"task_prio","Name":"add","Priority":300}"#,
];

fn config() -> Config {
    let mut c = Config {
        no_unix_signals: true,
        ..Config::default()
    };
    c.worker.unknown_task_delay_ms = 1;
    c.worker.unknown_task_max_attempts = 1;
    c.worker.retry_later_max_attempts = 2;
    c
}

fn server(broker: &MemoryBroker) -> Server {
    let server = Server::new(config(), broker.clone(), MemoryBackend::new());
    server
        .register_task("add", |a: i64, b: i64| async move {
            Ok::<_, TaskError>(a.wrapping_add(b))
        })
        .unwrap();
    server
        .register_task("fail", || async { Err::<(), _>(TaskError::failed("no")) })
        .unwrap();
    server
        .register_task("later", |secs: u64| async move {
            Err::<(), _>(TaskError::retry_later("later", Duration::from_secs(secs)))
        })
        .unwrap();
    server
        .register_task("panic", || async {
            panic!("task panicked on purpose");
            #[allow(unreachable_code)]
            Ok::<(), TaskError>(())
        })
        .unwrap();
    server
}

/// Inject `bodies`, run a worker, and check that every body is settled and that the worker
/// still serves a normal task afterwards.
fn settles(bodies: &[Vec<u8>]) -> Result<(), TestCaseError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let broker = MemoryBroker::new();
        let server = server(&broker);
        let taken = Arc::new(AtomicUsize::new(0));
        let t2 = Arc::clone(&taken);
        let mut worker = server.new_worker("fuzz", 4);
        worker.set_pre_consume_handler(move || {
            t2.fetch_add(1, Ordering::SeqCst);
            true
        });
        let w = worker.launch();
        for b in bodies {
            broker.inject_raw("machinery_tasks", b).unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while broker.ready_len("machinery_tasks") > 0 || broker.unacked_len() > 0 {
            prop_assert!(Instant::now() < deadline, "not settled in 20 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let probe = server
            .send_task(Signature::new("add").arg(2i64).arg(3i64))
            .await
            .unwrap();
        let sum: i64 = probe.get_as(Duration::from_secs(20)).await.unwrap();
        prop_assert_eq!(sum, 5);
        w.quit();
        w.join().await.unwrap();
        // Re-offers are bounded (unknown tasks give up after one attempt here, retries are
        // parked): a loop would take thousands.
        let n = taken.load(Ordering::SeqCst);
        prop_assert!(
            n <= 8 * bodies.len() + 16,
            "{} takes for {} bodies",
            n,
            bodies.len()
        );
        for b in bodies {
            if let Payload::Task(sig) = Payload::decode(b)
                && !sig.uuid.is_empty()
                && !sig.ignore_when_task_not_registered
            {
                let st = server.backend().state(&sig.uuid).await.unwrap();
                if let Some(st) = st {
                    prop_assert!(
                        matches!(
                            st.state,
                            State::Success | State::Failure | State::Retry | State::Pending
                        ),
                        "{} ended {:?}",
                        sig.uuid,
                        st.state
                    );
                }
            }
        }
        Ok(())
    })
}

#[test]
fn the_corpus_is_settled() {
    let bodies: Vec<Vec<u8>> = CORPUS.iter().map(|s| s.as_bytes().to_vec()).collect();
    settles(&bodies).unwrap();
    for body in CORPUS {
        // Each alone too, so one cannot hide behind another.
        settles(&[body.as_bytes().to_vec()]).unwrap();
    }
}

fn arg() -> impl Strategy<Value = Arg> {
    let types = prop::sample::select(vec![
        "int64",
        "int",
        "int8",
        "uint8",
        "uint64",
        "float32",
        "float64",
        "bool",
        "string",
        "[]int64",
        "[]uint8",
        "[]string",
        "[]float64",
        "int128",
        "",
    ]);
    let values = prop_oneof![
        any::<i64>().prop_map(|v| v.to_string()),
        any::<u64>().prop_map(|v| v.to_string()),
        any::<f64>().prop_map(|v| serde_json::to_string(&v).unwrap_or_else(|_| "null".into())),
        any::<bool>().prop_map(|v| v.to_string()),
        any::<String>().prop_map(|v| serde_json::to_string(&v).unwrap()),
        prop::collection::vec(any::<i64>(), 0..4).prop_map(|v| serde_json::to_string(&v).unwrap()),
        Just("null".to_owned()),
        Just("[[[1]]]".to_owned()),
        Just(r#"{"a":[1,{"b":null}]}"#.to_owned()),
    ];
    (types, values).prop_map(|(t, v)| Arg::raw(t, RawValue::from_string(v).unwrap()))
}

fn eta() -> impl Strategy<Value = Option<machinery_core::Timestamp>> {
    prop_oneof![
        Just(None),
        Just(Some(machinery_core::time::latest())),
        Just(Some(machinery_core::time::zero())),
        (-86_400i64..86_400).prop_map(|s| Some(machinery_core::time::now() + chrono_secs(s))),
    ]
}

fn chrono_secs(s: i64) -> chrono::TimeDelta {
    chrono::TimeDelta::seconds(s)
}

fn signature() -> impl Strategy<Value = Signature> {
    let name = prop::sample::select(vec!["add", "fail", "later", "panic", "nobody", ""]);
    let leaf = (
        name,
        prop::collection::vec(arg(), 0..3),
        any::<i64>(),
        any::<i64>(),
        eta(),
        any::<bool>(),
        any::<u8>(),
    )
        .prop_map(
            |(name, args, retry_count, retry_timeout, eta, ignore, priority)| {
                let mut s = Signature::new(name).with_args(args);
                // Keep retries few (each is a real re-send), the timeout anything.
                s.retry_count = retry_count.rem_euclid(3) - i64::from(retry_count < 0);
                s.retry_timeout = retry_timeout;
                s.eta = eta;
                s.ignore_when_task_not_registered = ignore;
                s.priority = priority;
                s
            },
        );
    leaf.prop_recursive(3, 8, 2, |inner| {
        (
            inner.clone(),
            prop::collection::vec(inner.clone(), 0..2),
            prop::collection::vec(inner, 0..2),
        )
            .prop_map(|(mut s, ok, err)| {
                s.on_success = ok;
                s.on_error = err;
                s
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        ..ProptestConfig::default()
    })]

    #[test]
    fn decoding_any_bytes_never_panics_and_roundtrips(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        if let Payload::Task(sig) = Payload::decode(&bytes) {
            let again = sig.to_json().unwrap();
            match Payload::decode(&again) {
                Payload::Task(back) => prop_assert!(back == sig),
                Payload::Malformed { reason, .. } => prop_assert!(false, "re-encoded form refused: {}", reason),
            }
        }
    }

    #[test]
    fn decoding_mutated_signatures_never_panics(sig in signature(), cut in any::<prop::sample::Index>(), byte in any::<u8>()) {
        let mut bytes = sig.to_json().unwrap();
        let i = cut.index(bytes.len());
        bytes[i] = byte;
        let _ = Payload::decode(&bytes);
        bytes.truncate(i);
        let _ = Payload::decode(&bytes);
    }

    #[test]
    fn signatures_roundtrip(sig in signature()) {
        let bytes = sig.to_json().unwrap();
        let back = Signature::from_json(&bytes).unwrap();
        prop_assert!(back == sig);
        prop_assert_eq!(back.to_json().unwrap(), bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 24,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_worker_settles_any_decoded_signature(sigs in prop::collection::vec(signature(), 1..4)) {
        let bodies: Vec<Vec<u8>> = sigs.iter().map(|s| s.to_json().unwrap()).collect();
        settles(&bodies)?;
    }
}
