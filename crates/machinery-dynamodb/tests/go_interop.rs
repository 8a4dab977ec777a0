//! Go's DynamoDB item layout, read and written (needs `MACHINERY_TEST_DYNAMODB_URL`).
//!
//! The items under `testdata/go/dynamodb/` are what Go Machinery itself stored (see the README
//! there). They are put into fresh tables byte for byte (only `TTL` is moved into the future,
//! since the capture's expiry times have passed), then read through `DynamoBackend`.

mod common;

use std::collections::HashMap;

use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::AttributeValue as Av;
use machinery_core::{Backend, GoValue, Signature, State, TaskResult, TaskState, time};
use machinery_dynamodb::DynamoBackend;
use serde_json::Value;

/// The low-level attribute-value JSON (`{"S": ..}`, `{"L": [..]}`) as the SDK's type.
fn av(v: &Value) -> Av {
    let (kind, inner) = v
        .as_object()
        .and_then(|o| o.iter().next())
        .unwrap_or_else(|| panic!("not an attribute value: {v}"));
    match kind.as_str() {
        "S" => Av::S(inner.as_str().unwrap().to_owned()),
        "N" => Av::N(inner.as_str().unwrap().to_owned()),
        "BOOL" => Av::Bool(inner.as_bool().unwrap()),
        "NULL" => Av::Null(true),
        "L" => Av::L(inner.as_array().unwrap().iter().map(av).collect()),
        "M" => Av::M(
            inner
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), av(v)))
                .collect(),
        ),
        "SS" => Av::Ss(
            inner
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_str().unwrap().to_owned())
                .collect(),
        ),
        other => panic!("attribute type {other} not expected in Go's items"),
    }
}

fn item(v: &Value) -> HashMap<String, Av> {
    let mut it: HashMap<String, Av> = v
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), av(v)))
        .collect();
    // The capture's expiry times are in the past by now; keep Go's 0 ("never").
    if let Some(Av::N(t)) = it.get("TTL")
        && t != "0"
    {
        let later = time::now().timestamp() + 3600;
        it.insert("TTL".to_owned(), Av::N(later.to_string()));
    }
    it
}

fn table(ns: &str, which: &str) -> String {
    format!("{ns}_{which}")
}

async fn put(b: &DynamoBackend, table: &str, it: HashMap<String, Av>) {
    b.client()
        .put_item()
        .table_name(table)
        .set_item(Some(it))
        .send()
        .await
        .expect("put Go's item");
}

async fn raw_get(b: &DynamoBackend, table: &str, key: &str, uuid: &str) -> HashMap<String, Av> {
    b.client()
        .get_item()
        .table_name(table)
        .key(key, Av::S(uuid.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .expect("get item")
        .item
        .expect("the item exists")
}

async fn setup() -> Option<(DynamoBackend, String)> {
    let url = common::url()?;
    let ns = common::namespace();
    Some((common::backend(&url, &ns).await, ns))
}

async fn state(b: &DynamoBackend, uuid: &str) -> TaskState {
    b.state(uuid)
        .await
        .expect("state")
        .unwrap_or_else(|| panic!("no state for {uuid}"))
}

fn go_created(fixture: &Value) -> machinery_core::Timestamp {
    time::parse(fixture["item"]["CreatedAt"]["S"].as_str().unwrap()).unwrap()
}

#[tokio::test]
async fn go_task_states_read_back() {
    let Some((b, ns)) = setup().await else {
        return;
    };
    let states = table(&ns, "task_states");
    for (file, st) in [
        ("task_states-after-pending.json", State::Pending),
        ("task_states-after-received.json", State::Received),
        ("task_states-after-started.json", State::Started),
        ("task_states-after-success.json", State::Success),
        ("task_states-after-retry.json", State::Retry),
        ("task_states-after-failure-panic.json", State::Failure),
        ("task_states-after-failure-retried.json", State::Failure),
        ("task_states-chord-callback-failure.json", State::Failure),
    ] {
        let f = machinery_testkit::fixtures::json(&format!("dynamodb/{file}"));
        put(&b, &states, item(&f["item"])).await;
        let uuid = f["item"]["TaskUUID"]["S"].as_str().unwrap();
        let got = state(&b, uuid).await;
        assert_eq!(got.state, st, "{file}");
        assert_eq!(got.task_uuid, uuid, "{file}");
        assert_eq!(got.task_name, f["item"]["TaskName"]["S"].as_str().unwrap());
        assert_eq!(got.error, f["item"]["Error"]["S"].as_str().unwrap());
        assert_eq!(got.created_at, go_created(&f), "{file}");
        match st {
            State::Success => {
                let r = got.results.expect("results of Go's SUCCESS");
                assert_eq!(r.len(), 1);
                // Go wrote the int64 2 as the text "2"; it reads as the number.
                assert_eq!(r[0].type_name, "int64");
                assert_eq!(r[0].get::<i64>().unwrap(), 2);
            }
            _ => assert_eq!(got.results, None, "{file}"),
        }
    }
}

#[tokio::test]
async fn go_text_results_read_with_their_types() {
    let Some((b, ns)) = setup().await else {
        return;
    };
    let states = table(&ns, "task_states");
    let by_type = machinery_testkit::fixtures::json("dynamodb/task_states-results-by-type.json");
    let mut got: HashMap<String, TaskState> = HashMap::new();
    for entry in by_type.as_array().unwrap() {
        put(&b, &states, item(&entry["item"])).await;
        let uuid = entry["item"]["TaskUUID"]["S"].as_str().unwrap();
        got.insert(
            entry["task_name"].as_str().unwrap().to_owned(),
            state(&b, uuid).await,
        );
    }
    let results = |name: &str| -> Vec<TaskResult> {
        got[name]
            .results
            .clone()
            .unwrap_or_else(|| panic!("{name} has no results"))
    };
    let r = results("return_types");
    assert_eq!(r[0].get::<i64>().unwrap(), 42);
    assert_eq!(r[1].get::<f64>().unwrap(), 3.25);
    assert!(r[2].get::<bool>().unwrap());
    assert_eq!(r[3].get::<String>().unwrap(), "hello");
    assert_eq!(r[4].get::<Vec<String>>().unwrap(), vec!["a", "b"]);
    assert_eq!(r[5].get::<Vec<u8>>().unwrap(), b"hi\x00\xff".to_vec());

    let r = results("return_small_ints");
    assert_eq!(r[0].decode().unwrap(), GoValue::Int32(-7));
    assert_eq!(r[1].decode().unwrap(), GoValue::Uint8(255));
    assert_eq!(r[2].decode().unwrap(), GoValue::Uint64(u64::MAX));
    assert_eq!(r[3].decode().unwrap(), GoValue::Int(5));

    let r = results("return_float_whole");
    assert_eq!(r[0].decode().unwrap(), GoValue::Float64(3.0));
    assert_eq!(r[1].decode().unwrap(), GoValue::Float64(0.1));
    assert_eq!(r[2].decode().unwrap(), GoValue::Float32(1.5));

    let r = results("return_json_string");
    assert_eq!(
        r[0].get::<String>().unwrap(),
        r#"{"a":1,"b":"x","c":[1,2],"d":{"e":true}}"#
    );
    let r = results("return_json_array_string");
    assert_eq!(r[0].get::<String>().unwrap(), "[1,2]");
    assert_eq!(r[1].get::<String>().unwrap(), "123");

    // Go leaves Results NULL for a function that returns only an error.
    assert_eq!(got["return_error_only"].results, None);
    assert!(got["return_error_only"].is_success());

    let r = results("return_nil_slice");
    assert_eq!(r[0].get::<Vec<String>>().unwrap(), Vec::<String>::new());
    assert_eq!(r[1].get::<Vec<i64>>().unwrap(), Vec::<i64>::new());

    let r = results("return_map");
    assert_eq!(r[0].json(), serde_json::json!({"a": 1, "b": 2}));

    let r = results("return_small_ints_fit");
    let want = [
        GoValue::Int8(-8),
        GoValue::Int16(-16),
        GoValue::Int32(-7),
        GoValue::Int(5),
        GoValue::Uint8(255),
        GoValue::Uint16(65535),
        GoValue::Uint32(4_294_967_295),
        GoValue::Uint64(7),
    ];
    for (r, w) in r.iter().zip(want) {
        assert_eq!(r.decode().unwrap(), w);
    }
}

#[tokio::test]
async fn go_created_at_string_form_reads() {
    let Some((b, ns)) = setup().await else {
        return;
    };
    let states = table(&ns, "task_states");
    // Go's setTaskState writes `CreatedAt.String()` when an update carries a creation time.
    let uuid = machinery_core::new_task_uuid();
    let mut it = HashMap::new();
    it.insert("TaskUUID".to_owned(), Av::S(uuid.clone()));
    it.insert("TaskName".to_owned(), Av::S("add".to_owned()));
    it.insert("State".to_owned(), Av::S("STARTED".to_owned()));
    it.insert("Results".to_owned(), Av::Null(true));
    it.insert("Error".to_owned(), Av::S(String::new()));
    it.insert(
        "CreatedAt".to_owned(),
        Av::S("2026-11-30 03:10:33.592161119 +0000 UTC m=+0.012345678".to_owned()),
    );
    it.insert("TTL".to_owned(), Av::N("0".to_owned()));
    put(&b, &states, it).await;
    let got = state(&b, &uuid).await;
    assert_eq!(
        got.created_at,
        time::parse("2026-11-30T03:10:33.592161119Z").unwrap()
    );
    assert_eq!(got.state, State::Started);
}

#[tokio::test]
async fn go_group_metas_read_and_chord_triggers_once() {
    let Some((b, ns)) = setup().await else {
        return;
    };
    let (states, groups) = (table(&ns, "task_states"), table(&ns, "group_metas"));
    let scan = machinery_testkit::fixtures::json("dynamodb/task_states-scan-final.json");
    for it in scan.as_array().unwrap() {
        put(&b, &states, item(it)).await;
    }
    let init = machinery_testkit::fixtures::json("dynamodb/group_metas-after-init.json");
    put(&b, &groups, item(&init["item"])).await;
    let group = init["item"]["GroupUUID"]["S"].as_str().unwrap();
    let members = b.group_states(group).await.expect("group_states");
    let uuids: Vec<&str> = members.iter().map(|s| s.task_uuid.as_str()).collect();
    assert_eq!(
        uuids,
        [
            "task_00000009-0000-4000-8000-000000000009",
            "task_00000010-0000-4000-8000-000000000010",
            "task_00000011-0000-4000-8000-000000000011"
        ]
    );
    let sums: Vec<i64> = members
        .iter()
        .map(|s| s.results.as_ref().unwrap()[0].get::<i64>().unwrap())
        .collect();
    assert_eq!(sums, [2, 4, 11], "Go's text results read as int64");
    assert!(
        b.trigger_chord(group).await.unwrap(),
        "Go's meta: not yet triggered"
    );
    assert!(!b.trigger_chord(group).await.unwrap());

    // A meta Go already triggered stays triggered.
    let done = machinery_testkit::fixtures::json("dynamodb/group_metas-after-trigger-chord.json");
    put(&b, &groups, item(&done["item"])).await;
    assert!(!b.trigger_chord(group).await.unwrap());
}

/// Attribute name -> DynamoDB type letter, as the capture shows them.
fn shape(it: &HashMap<String, Av>) -> Vec<(String, &'static str)> {
    let mut v: Vec<(String, &'static str)> = it
        .iter()
        .map(|(k, v)| {
            let t = match v {
                Av::S(_) => "S",
                Av::N(_) => "N",
                Av::Bool(_) => "BOOL",
                Av::Null(_) => "NULL",
                Av::L(_) => "L",
                Av::M(_) => "M",
                Av::Ss(_) => "SS",
                Av::B(_) => "B",
                _ => "?",
            };
            (k.clone(), t)
        })
        .collect();
    v.sort();
    v
}

#[tokio::test]
async fn our_items_have_go_layout() {
    let Some((b, ns)) = setup().await else {
        return;
    };
    let (states, groups) = (table(&ns, "task_states"), table(&ns, "group_metas"));
    let sig = Signature::new("add").arg(1_i64).arg(1_i64);
    let fixture =
        |f: &str| item(&machinery_testkit::fixtures::json(&format!("dynamodb/{f}"))["item"]);

    b.set_state(&TaskState::pending(&sig)).await.unwrap();
    let pending = raw_get(&b, &states, "TaskUUID", &sig.uuid).await;
    assert_eq!(
        shape(&pending),
        shape(&fixture("task_states-after-pending.json"))
    );
    assert_eq!(
        pending["TTL"],
        Av::N("0".to_owned()),
        "PENDING never expires, as Go"
    );

    b.set_state(&TaskState::new(&sig, State::Started))
        .await
        .unwrap();
    let started = raw_get(&b, &states, "TaskUUID", &sig.uuid).await;
    assert_eq!(started["CreatedAt"], pending["CreatedAt"], "CreatedAt kept");
    assert_eq!(started["State"], Av::S("STARTED".to_owned()));

    b.set_state(&TaskState::success(&sig, vec![TaskResult::new(2_i64)]))
        .await
        .unwrap();
    let success = raw_get(&b, &states, "TaskUUID", &sig.uuid).await;
    assert_eq!(
        shape(&success),
        shape(&fixture("task_states-after-success.json"))
    );
    assert_eq!(success["CreatedAt"], pending["CreatedAt"]);
    // The result map is Go's {Type: S, Value}, with the value's own type instead of text.
    let Av::L(results) = &success["Results"] else {
        panic!("Results is not a list")
    };
    let Av::M(first) = &results[0] else {
        panic!("a result is not a map")
    };
    assert_eq!(first["Type"], Av::S("int64".to_owned()));
    assert_eq!(first["Value"], Av::N("2".to_owned()));
    let Av::N(ttl) = &success["TTL"] else {
        panic!("TTL is not a number")
    };
    let ttl: i64 = ttl.parse().unwrap();
    let now = time::now().timestamp();
    assert!(
        (now + 3590..=now + 3700).contains(&ttl),
        "TTL {ttl} is not now + 3600"
    );

    let failed = Signature::new("panic_task");
    b.set_state(&TaskState::pending(&failed)).await.unwrap();
    b.set_state(&TaskState::failure(&failed, "oops"))
        .await
        .unwrap();
    let failure = raw_get(&b, &states, "TaskUUID", &failed.uuid).await;
    assert_eq!(
        shape(&failure),
        shape(&fixture("task_states-after-failure-panic.json"))
    );
    assert_eq!(failure["Error"], Av::S("oops".to_owned()));

    let group = machinery_core::new_group_uuid();
    b.init_group(&group, &[sig.uuid.clone(), failed.uuid.clone()])
        .await
        .unwrap();
    let meta = raw_get(&b, &groups, "GroupUUID", &group).await;
    assert_eq!(shape(&meta), shape(&fixture("group_metas-after-init.json")));
    assert_eq!(
        meta["TaskUUIDs"],
        Av::L(vec![Av::S(sig.uuid.clone()), Av::S(failed.uuid.clone())])
    );
    // Bytes are B, not Go's "[104 105]" text.
    let bytes = Signature::new("bytes");
    b.set_state(&TaskState::success(
        &bytes,
        vec![TaskResult::new(b"hi".to_vec())],
    ))
    .await
    .unwrap();
    let it = raw_get(&b, &states, "TaskUUID", &bytes.uuid).await;
    let Av::L(results) = &it["Results"] else {
        panic!("Results is not a list")
    };
    let Av::M(first) = &results[0] else {
        panic!("a result is not a map")
    };
    assert_eq!(first["Value"], Av::B(Blob::new(b"hi".to_vec())));
}
