//! What only the DynamoDB backend has: table checks at connect, typed results on the real
//! server, expiry filtered on read, the 400 KB item limit (and a worker whose result is over
//! it), BatchGetItem paging, requests per task, and recovery after the connection is cut (needs `MACHINERY_TEST_DYNAMODB_URL`).

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue as Av;
use machinery_core::{
    Backend, Config, Error, MemoryBroker, Server, Signature, State, TaskError, TaskResult,
    TaskState, time,
};
use machinery_dynamodb::{DynamoBackend, DynamoConfig, RequestCounts};
use serde_json::value::RawValue;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

fn result(type_name: &str, value: &str) -> TaskResult {
    TaskResult {
        type_name: type_name.to_owned(),
        value: RawValue::from_string(value.to_owned()).unwrap(),
    }
}

#[tokio::test]
async fn missing_table_names_it_and_how_to_create_it() {
    let Some(url) = common::url() else {
        return;
    };
    let ns = common::namespace();
    let config = DynamoConfig {
        create_tables: false,
        ..common::config(&url, &ns)
    };
    match DynamoBackend::connect(config).await {
        Err(Error::Config { key, message, .. }) => {
            assert_eq!(key, "dynamodb.task_states_table");
            assert!(message.contains(&format!("{ns}_task_states")), "{message}");
            assert!(message.contains("create-table"), "{message}");
            assert!(message.contains("TaskUUID"), "{message}");
            assert!(message.contains("create_tables"), "{message}");
        }
        other => panic!("expected a config error naming the table, got {other:?}"),
    }
}

#[tokio::test]
async fn created_tables_have_ttl_on_the_ttl_attribute() {
    let Some(url) = common::url() else {
        return;
    };
    let ns = common::namespace();
    let b = common::backend(&url, &ns).await;
    for table in [format!("{ns}_task_states"), format!("{ns}_group_metas")] {
        let ttl = b
            .client()
            .describe_time_to_live()
            .table_name(&table)
            .send()
            .await
            .expect("describe_time_to_live");
        let d = ttl.time_to_live_description().expect("a TTL description");
        assert_eq!(d.attribute_name(), Some("TTL"), "{table}");
        assert_eq!(
            d.time_to_live_status().map(|s| s.as_str()),
            Some("ENABLED"),
            "{table}"
        );
    }
    // A second connect finds the tables and creates nothing.
    let again = common::backend(&url, &ns).await;
    assert_eq!(
        again.request_counts().admin,
        2,
        "{:?}",
        again.request_counts()
    );
}

#[tokio::test]
async fn every_result_type_round_trips() {
    let Some(url) = common::url() else {
        return;
    };
    let b = common::backend(&url, &common::namespace()).await;
    let values = [
        ("bool", "false"),
        ("int", "-9223372036854775808"),
        ("int8", "-128"),
        ("int16", "-32768"),
        ("int32", "2147483647"),
        ("int64", "9223372036854775807"),
        ("uint", "18446744073709551615"),
        ("uint8", "0"),
        ("uint16", "65535"),
        ("uint32", "4294967295"),
        ("uint64", "18446744073709551615"),
        ("float32", "3.4028235e+38"),
        ("float32", "1e-45"),
        ("float64", "0.1"),
        ("float64", "-2.5e-8"),
        ("float64", "1e+21"),
        ("float64", "1.7976931348623157e+308"),
        ("float64", "5e-324"),
        ("float64", "-0"),
        ("float64", "0"),
        ("string", r#""""#),
        (
            "string",
            r#""tab\t \u003c\u003e\u0026 ünï \ud83d\ude00 \"q\"""#,
        ),
        ("[]bool", "[true,false]"),
        ("[]int", "[1,-1]"),
        ("[]int8", "[-128,127]"),
        ("[]int16", "[]"),
        ("[]int32", "[7]"),
        ("[]int64", "[-9223372036854775808,0]"),
        ("[]uint", "[0]"),
        ("[]uint8", r#""aGkA/w==""#),
        ("[]uint8", r#""""#),
        ("[]byte", r#""AQID""#),
        ("[]uint16", r#""AAE=""#),
        ("[]uint32", "[4294967295]"),
        ("[]uint64", "[18446744073709551615,1]"),
        ("[]float32", "[1.5,0.1]"),
        ("[]float64", "[1e+300,2.5,1e-300]"),
        ("[]string", r#"["a b","","é"]"#),
        ("[]string", "null"),
        ("[][]int64", "[[1,2],[],[3]]"),
        ("map[string]int64", r#"{"a":1,"b":2}"#),
        ("float64", "1.0"),
    ];
    let results: Vec<TaskResult> = values.iter().map(|(t, v)| result(t, v)).collect();
    let sig = Signature::new("types");
    b.set_state(&TaskState::success(&sig, results.clone()))
        .await
        .unwrap();
    let got = b.state(&sig.uuid).await.unwrap().unwrap();
    let got = got.results.unwrap();
    assert_eq!(got.len(), results.len());
    for (g, w) in got.iter().zip(&results) {
        assert_eq!(g.type_name, w.type_name);
        assert_eq!(
            g.value.get(),
            w.value.get(),
            "{} changed on the way through DynamoDB",
            w.type_name
        );
    }
    // And the Rust values.
    let typed = Signature::new("typed");
    b.set_state(&TaskState::success(
        &typed,
        vec![
            TaskResult::new(u64::MAX),
            TaskResult::new(0.1_f64),
            TaskResult::new(vec![0_u8, 255]),
            TaskResult::new(vec!["x".to_owned()]),
        ],
    ))
    .await
    .unwrap();
    let r = b
        .state(&typed.uuid)
        .await
        .unwrap()
        .unwrap()
        .results
        .unwrap();
    assert_eq!(r[0].get::<u64>().unwrap(), u64::MAX);
    assert_eq!(r[1].get::<f64>().unwrap(), 0.1);
    assert_eq!(r[2].get::<Vec<u8>>().unwrap(), vec![0, 255]);
    assert_eq!(r[3].get::<Vec<String>>().unwrap(), vec!["x"]);
}

#[tokio::test]
async fn expired_items_read_as_absent() {
    let Some(url) = common::url() else {
        return;
    };
    let ns = common::namespace();
    let b = common::backend(&url, &ns).await;
    let past = (time::now().timestamp() - 10).to_string();
    // moto (like DynamoDB, for up to days) still holds items past their TTL.
    let uuid = machinery_core::new_task_uuid();
    b.client()
        .put_item()
        .table_name(format!("{ns}_task_states"))
        .item("TaskUUID", Av::S(uuid.clone()))
        .item("TaskName", Av::S("add".to_owned()))
        .item("State", Av::S("SUCCESS".to_owned()))
        .item("Results", Av::Null(true))
        .item("Error", Av::S(String::new()))
        .item("CreatedAt", Av::S("2026-11-30T03:10:33Z".to_owned()))
        .item("TTL", Av::N(past.clone()))
        .send()
        .await
        .unwrap();
    assert_eq!(b.state(&uuid).await.unwrap(), None);
    let group = machinery_core::new_group_uuid();
    b.client()
        .put_item()
        .table_name(format!("{ns}_group_metas"))
        .item("GroupUUID", Av::S(group.clone()))
        .item("TaskUUIDs", Av::L(vec![Av::S(uuid.clone())]))
        .item("ChordTriggered", Av::Bool(false))
        .item("Lock", Av::Bool(false))
        .item("CreatedAt", Av::S("2026-11-30T03:10:33Z".to_owned()))
        .item("TTL", Av::N(past))
        .send()
        .await
        .unwrap();
    assert!(matches!(
        b.group_states(&group).await,
        Err(Error::GroupNotFound(_))
    ));
    assert!(matches!(
        b.trigger_chord(&group).await,
        Err(Error::GroupNotFound(_))
    ));
    assert!(matches!(
        b.mark_group_member_done(&group, &uuid).await,
        Err(Error::GroupNotFound(_))
    ));
    // A TTL of 0 (Go's PENDING) never expires.
    let sig = Signature::new("pending");
    b.set_state(&TaskState::pending(&sig)).await.unwrap();
    assert!(b.state(&sig.uuid).await.unwrap().is_some());
}

#[tokio::test]
async fn item_over_400kb_is_refused_before_the_request() {
    let Some(url) = common::url() else {
        return;
    };
    let b = common::backend(&url, &common::namespace()).await;
    let sig = Signature::new("big");
    b.set_state(&TaskState::new(&sig, State::Started))
        .await
        .unwrap();
    let before = b.request_counts();
    let huge = TaskResult::new("x".repeat(450 * 1024));
    match b.set_state(&TaskState::success(&sig, vec![huge])).await {
        Err(e @ Error::Backend { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&sig.uuid), "{text}");
            assert!(text.contains("409600"), "{text}");
            assert!(text.contains(" is 46"), "the size is named: {text}");
            assert!(!e.is_temporary());
        }
        other => panic!("expected an item-size error, got {other:?}"),
    }
    assert_eq!(b.request_counts(), before, "a request was sent");
    assert_eq!(
        b.state(&sig.uuid).await.unwrap().unwrap().state,
        State::Started
    );
    // Just under the limit is stored.
    let fits = TaskResult::new("y".repeat(390 * 1024));
    b.set_state(&TaskState::success(&sig, vec![fits]))
        .await
        .unwrap();
    assert!(b.state(&sig.uuid).await.unwrap().unwrap().is_success());
}

/// A worker whose task returns over 400 KB: DynamoDB cannot hold its SUCCESS, so the task ends
/// FAILURE naming the size (a small item that fits), the message is acked once (no requeue
/// every 10 s forever), and the worker goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_result_over_400kb_ends_failure_and_the_worker_goes_on() {
    let Some(url) = common::url() else {
        return;
    };
    let backend = common::backend(&url, &common::namespace()).await;
    let broker = MemoryBroker::new();
    let server = Server::new(Config::default(), broker.clone(), backend);
    let runs = Arc::new(AtomicUsize::new(0));
    let r = Arc::clone(&runs);
    server
        .register_task("big", move |kb: i64| {
            let r = Arc::clone(&r);
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<_, TaskError>("x".repeat(usize::try_from(kb).unwrap() * 1024))
            }
        })
        .unwrap();
    let worker = server.new_worker("big", 2).no_unix_signals().launch();
    let big = server
        .send_task(Signature::new("big").arg(450_i64))
        .await
        .unwrap();
    let err = big
        .get_with_timeout(Duration::from_secs(30), Duration::from_millis(20))
        .await
        .unwrap_err();
    let Error::TaskFailed(reason) = &err else {
        panic!("expected FAILURE, got {err:?}")
    };
    assert!(
        reason.contains("the result of task big cannot be stored")
            && reason.contains("409600")
            && reason.contains(" is 46"),
        "the reason names the size and the limit: {reason}"
    );
    // The worker goes on: a small result is stored.
    let small = server
        .send_task(Signature::new("big").arg(1_i64))
        .await
        .unwrap();
    let text: String = small.get_as(Duration::from_secs(30)).await.unwrap();
    assert_eq!(text.len(), 1024);
    // Acked once: nothing waits to run again, and after a requeue delay it did not run again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(broker.ready_len("machinery_tasks"), 0);
    assert_eq!(broker.unacked_len(), 0);
    assert_eq!(runs.load(Ordering::SeqCst), 2, "each task ran once");
    worker.quit();
    worker.join().await.unwrap();
}

#[tokio::test]
async fn group_states_page_by_100_in_group_order() {
    let Some(url) = common::url() else {
        return;
    };
    let b = common::backend(&url, &common::namespace()).await;
    let sigs: Vec<Signature> = (0..250)
        .map(|i| Signature::new(format!("member{i}")))
        .collect();
    let mut uuids: Vec<String> = sigs.iter().map(|s| s.uuid.clone()).collect();
    uuids.push(uuids[3].clone()); // a repeated member (BatchGetItem refuses duplicate keys)
    let group = machinery_core::new_group_uuid();
    b.init_group(&group, &uuids).await.unwrap();
    for s in sigs.iter().step_by(2) {
        b.set_state(&TaskState::success(s, vec![TaskResult::new(1_i64)]))
            .await
            .unwrap();
    }
    let before = b.request_counts();
    let states = b.group_states(&group).await.unwrap();
    let spent = b.request_counts().since(&before);
    assert_eq!(spent.get_item, 1);
    assert_eq!(spent.batch_get_item, 3, "{spent:?}");
    assert_eq!(states.len(), 251);
    for (i, st) in states.iter().enumerate() {
        assert_eq!(st.task_uuid, uuids[i]);
        let member = if i == 250 { 3 } else { i };
        let want = if member % 2 == 0 {
            State::Success
        } else {
            State::Pending
        };
        assert_eq!(st.state, want, "member {i}");
    }
}

/// Requests per completed task and per chord member, as the worker makes them.
#[tokio::test]
async fn requests_per_task_and_chord_member() {
    let Some(url) = common::url() else {
        return;
    };
    let b = common::backend(&url, &common::namespace()).await;
    let lifecycle = |sig: Signature| {
        let b = b.clone();
        async move {
            b.set_state(&TaskState::pending(&sig)).await.unwrap();
            b.set_state(&TaskState::new(&sig, State::Received))
                .await
                .unwrap();
            b.set_state(&TaskState::new(&sig, State::Started))
                .await
                .unwrap();
            b.set_state(&TaskState::success(&sig, vec![TaskResult::new(2_i64)]))
                .await
                .unwrap();
        }
    };
    let before = b.request_counts();
    lifecycle(Signature::new("add")).await;
    let task = b.request_counts().since(&before);
    assert_eq!(
        task,
        RequestCounts {
            put_item: 1,
            update_item: 3,
            ..RequestCounts::default()
        }
    );

    // A chord of N members: InitGroup, each member's life cycle plus one ADD to the done
    // set, one conditional update when the last member is done, one group read for the
    // callback's arguments.
    const N: usize = 10;
    let sigs: Vec<Signature> = (0..N).map(|i| Signature::new(format!("m{i}"))).collect();
    let uuids: Vec<String> = sigs.iter().map(|s| s.uuid.clone()).collect();
    let group = machinery_core::new_group_uuid();
    let before = b.request_counts();
    b.init_group(&group, &uuids).await.unwrap();
    let mut last = 0;
    for s in sigs {
        let uuid = s.uuid.clone();
        lifecycle(s).await;
        last = b.mark_group_member_done(&group, &uuid).await.unwrap();
    }
    assert_eq!(last, N);
    assert!(b.trigger_chord(&group).await.unwrap());
    assert_eq!(b.group_states(&group).await.unwrap().len(), N);
    let chord = b.request_counts().since(&before);
    assert_eq!(chord.data(), 1 + (N as u64) * 5 + 1 + 2, "{chord:?}");
    println!(
        "dynamodb requests: per task {} ({task:?}); chord of {N}: {} = {:.1} per member ({chord:?})",
        task.data(),
        chord.data(),
        chord.data() as f64 / N as f64
    );
}

/// A TCP proxy on a free port that forwards to `target` and can cut every connection and
/// refuse new ones.
struct Proxy {
    port: u16,
    cut: Arc<Notify>,
    down: Arc<AtomicBool>,
}

impl Proxy {
    async fn start(target: String) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(Notify::new());
        let down = Arc::new(AtomicBool::new(false));
        let (c, d) = (Arc::clone(&cut), Arc::clone(&down));
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(Ordering::SeqCst) {
                    let _ = client.shutdown().await;
                    continue;
                }
                let target = target.clone();
                let cut = Arc::clone(&c);
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy { port, cut, down }
    }

    fn cut_all(&self) {
        self.cut.notify_waiters();
    }
}

#[tokio::test]
async fn connection_cut_through_a_proxy_recovers() {
    let Some(url) = common::url() else {
        return;
    };
    let ns = common::namespace();
    // Tables through the direct endpoint, then a backend that talks through the proxy.
    let direct = common::backend(&url, &ns).await;
    let endpoint = direct_endpoint(&url);
    let proxy = Proxy::start(endpoint).await;
    let config = DynamoConfig {
        endpoint: Some(format!("http://127.0.0.1:{}", proxy.port)),
        max_attempts: 2,
        connect_timeout_ms: 1000,
        request_timeout_ms: 3000,
        ..common::config(&url, &ns)
    };
    let b = DynamoBackend::connect(config)
        .await
        .expect("connect through the proxy");
    let sig = Signature::new("through");
    b.set_state(&TaskState::pending(&sig)).await.unwrap();

    // Cut every open connection: the next calls reconnect by themselves.
    proxy.cut_all();
    b.set_state(&TaskState::new(&sig, State::Started))
        .await
        .expect("a write after the cut");
    assert_eq!(
        b.state(&sig.uuid).await.unwrap().unwrap().state,
        State::Started
    );

    // Down: calls fail, temporarily and within a bound, never hang.
    proxy.down.store(true, Ordering::SeqCst);
    proxy.cut_all();
    let t0 = Instant::now();
    let err = b
        .state(&sig.uuid)
        .await
        .expect_err("the server is unreachable");
    assert!(err.is_temporary(), "{err:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t0.elapsed()
    );

    // Back: the same backend carries on.
    proxy.down.store(false, Ordering::SeqCst);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match b
            .set_state(&TaskState::success(&sig, vec![TaskResult::new(1_i64)]))
            .await
        {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "no recovery: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(b.state(&sig.uuid).await.unwrap().unwrap().is_success());
    assert!(direct.state(&sig.uuid).await.unwrap().unwrap().is_success());
}

/// `host:port` of the test URL (`dynamodb+http://key:secret@host:port?...`).
fn direct_endpoint(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    rest.split(['/', '?']).next().unwrap().to_owned()
}
