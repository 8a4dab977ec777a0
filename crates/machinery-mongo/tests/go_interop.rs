//! Go Machinery's MongoDB layout (`testdata/go/mongodb/`, written by the real Go library):
//! Go's documents read back with their types, and ours written in Go's fields and BSON types.
//! Needs `MACHINERY_TEST_MONGODB_URL`.

mod common;

use std::collections::BTreeMap;

use chrono::{TimeZone, Utc};
use machinery_core::{Backend, Signature, State, TaskResult, TaskState, time};
use machinery_mongo::{GROUP_METAS_COLLECTION, TASKS_COLLECTION};
use machinery_testkit::{fixtures, run};
use mongodb::bson::{Bson, Document, doc};
use mongodb::options::IndexOptions;
use mongodb::{Database, IndexModel};
use serde_json::{Value, json};

fn namespace() -> String {
    format!("gi{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

/// Go's final `tasks` documents, `delete_at` moved an hour ahead (the capture's has passed).
fn go_tasks() -> Vec<Document> {
    let future = mongodb::bson::DateTime::from_millis(Utc::now().timestamp_millis() + 3_600_000);
    fixtures::json("mongodb/tasks-final.json")
        .as_array()
        .expect("an array of documents")
        .iter()
        .map(|v| {
            let Bson::Document(mut d) = common::go_bson(v.clone()) else {
                panic!("not a document: {v}");
            };
            if d.contains_key("delete_at") {
                d.insert("delete_at", future);
            }
            d
        })
        .collect()
}

fn go_groups() -> Vec<Document> {
    fixtures::json("mongodb/group_metas-final.json")
        .as_array()
        .expect("an array of documents")
        .iter()
        .map(|v| match common::go_bson(v.clone()) {
            Bson::Document(d) => d,
            other => panic!("not a document: {other}"),
        })
        .collect()
}

/// Go's index on `tasks`, with Go's options (`background: true` included).
async fn create_gos_index(db: &Database) {
    #[allow(deprecated)]
    let options = IndexOptions::builder()
        .name("delete_at_1".to_owned())
        .background(true)
        .expire_after(std::time::Duration::ZERO)
        .build();
    db.collection::<Document>(TASKS_COLLECTION)
        .create_index(
            IndexModel::builder()
                .keys(doc! { "delete_at": 1 })
                .options(options)
                .build(),
        )
        .await
        .expect("create Go's index");
}

/// The results of `uuid` as `(type, JSON value)` pairs.
fn results_of(state: &TaskState) -> Vec<(String, Value)> {
    state
        .results
        .as_ref()
        .expect("results")
        .iter()
        .map(|r| (r.type_name.clone(), r.json()))
        .collect()
}

/// Every document Go wrote reads back: states, names, times, errors and every result type,
/// with Go's `json` special case and Int32 values for 64-bit types; the groups' states come
/// in group order and Go's triggered chord is not triggered again.
#[test]
fn go_documents_read_back() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let raw = common::raw_client(&url).await;
        let db = raw.database(&ns);
        create_gos_index(&db).await;
        let tasks = go_tasks();
        db.collection::<Document>(TASKS_COLLECTION)
            .insert_many(tasks.clone())
            .await
            .expect("insert Go's tasks");
        db.collection::<Document>(GROUP_METAS_COLLECTION)
            .insert_many(go_groups())
            .await
            .expect("insert Go's groups");
        // Go's index is already there: connecting must accept it.
        let backend = common::backend(&url, &ns).await;

        let mut by_name: BTreeMap<String, TaskState> = BTreeMap::new();
        for d in &tasks {
            let id = d.get_str("_id").unwrap();
            let st = backend
                .state(id)
                .await
                .unwrap_or_else(|e| panic!("read Go's {id}: {e}"))
                .unwrap_or_else(|| panic!("Go's {id} reads as absent"));
            assert_eq!(st.task_uuid, id);
            assert_eq!(st.task_name, d.get_str("task_name").unwrap());
            let created = d.get_datetime("created_at").unwrap().timestamp_millis();
            assert_eq!(st.created_at.timestamp_millis(), created, "{id} created_at");
            by_name.entry(st.task_name.clone()).or_insert(st);
        }

        let add = &by_name["add"];
        assert_eq!(add.state, State::Success);
        assert_eq!(add.results.as_ref().unwrap()[0].get::<i64>().unwrap(), 2);
        assert!(add.ttl > Utc::now().timestamp(), "TTL comes from delete_at");
        assert_eq!(
            by_name["sum_floats"].results.as_ref().unwrap()[0]
                .get::<f64>()
                .unwrap(),
            4.2
        );
        assert_eq!(
            by_name["split"].results.as_ref().unwrap()[0]
                .get::<Vec<String>>()
                .unwrap(),
            vec!["f", "o", "o"]
        );

        let panic = &by_name["panic_task"];
        assert_eq!(
            (panic.state, panic.error.as_str()),
            (State::Failure, "oops")
        );
        assert_eq!(panic.results, None, "Go's FAILURE has no results field");
        assert_eq!(by_name["fail"].error, "boom [7]");
        assert_eq!(
            by_name["return_small_ints"].state,
            State::Started,
            "Go's failed SetStateSuccess left the document STARTED"
        );

        let types = &by_name["return_types"].results.as_ref().unwrap();
        assert_eq!(types[0].get::<i64>().unwrap(), 42);
        assert_eq!(types[1].get::<f64>().unwrap(), 3.25);
        assert!(types[2].get::<bool>().unwrap());
        assert_eq!(types[3].get::<String>().unwrap(), "hello");
        assert_eq!(types[4].get::<Vec<String>>().unwrap(), vec!["a", "b"]);
        assert_eq!(types[5].type_name, "[]uint8");
        assert_eq!(
            types[5].get::<Vec<u8>>().unwrap(),
            b"hi\x00\xff",
            "Go's Binary reads as the bytes (Go itself panics on it)"
        );

        // Int32 where Go's type is 64-bit (`int`), and narrow ints, all convert.
        let small = &by_name["return_small_ints_fit"].results.as_ref().unwrap();
        let got: Vec<(String, Value)> = small
            .iter()
            .map(|r| (r.type_name.clone(), r.json()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("int8".into(), json!(-8)),
                ("int16".into(), json!(-16)),
                ("int32".into(), json!(-7)),
                ("int".into(), json!(5)),
                ("uint8".into(), json!(255)),
                ("uint16".into(), json!(65535)),
                ("uint32".into(), json!(4_294_967_295_u64)),
                ("uint64".into(), json!(7)),
            ]
        );
        assert_eq!(
            small[0].get::<i8>().unwrap(),
            -8,
            "Go fails: -8 is not int8"
        );
        assert_eq!(small[3].get::<i64>().unwrap(), 5);

        let whole = results_of(&by_name["return_float_whole"]);
        assert_eq!(whole[0], ("float64".into(), json!(3)));
        assert_eq!(
            by_name["return_float_whole"].results.as_ref().unwrap()[0]
                .value
                .get(),
            "3"
        );
        assert_eq!(whole[2], ("float32".into(), json!(1.5)));

        // Go's special case: the string result held a JSON object, stored as {type: "json"}.
        let j = &by_name["return_json_string"].results.as_ref().unwrap()[0];
        assert_eq!(j.type_name, "string");
        let text: String = j.get().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"a": 1, "b": "x", "c": [1, 2], "d": {"e": true}}),
            "{text}"
        );
        assert_eq!(
            results_of(&by_name["return_json_array_string"]),
            vec![
                ("string".into(), json!("[1,2]")),
                ("string".into(), json!("123"))
            ]
        );
        assert_eq!(by_name["return_error_only"].results, Some(vec![]));
        assert_eq!(
            results_of(&by_name["return_nil_slice"]),
            vec![
                ("[]string".into(), Value::Null),
                ("[]int64".into(), json!([]))
            ]
        );
        assert_eq!(
            results_of(&by_name["return_map"]),
            vec![("map[string]int64".into(), json!({"a": 1, "b": 2}))]
        );

        // Go's groups: states in group order; Go's chord group was triggered already.
        let states = backend
            .group_states("group_00000002-0000-4000-8000-000000000002")
            .await
            .expect("Go's chord group");
        let sums: Vec<i64> = states
            .iter()
            .map(|s| s.results.as_ref().unwrap()[0].get::<i64>().unwrap())
            .collect();
        assert_eq!(sums, vec![2, 4, 11]);
        assert!(
            !backend
                .trigger_chord("group_00000002-0000-4000-8000-000000000002")
                .await
                .unwrap(),
            "Go's triggered chord must not fire again (Go's own backend answers true)"
        );
        assert!(
            backend
                .trigger_chord("group_00000001-0000-4000-8000-000000000001")
                .await
                .unwrap()
        );
        backend.close().await;
        raw.shutdown().await;
    });
}

/// Documents built by hand in Go's exact form (Int32 for an `int64` result, the `json` type,
/// no `error` after SUCCESS, a `created_at` with no name) read back.
#[test]
fn hand_built_go_documents_read_back() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let raw = common::raw_client(&url).await;
        let db = raw.database(&ns);
        let created = mongodb::bson::DateTime::from_millis(1_796_007_770_198);
        let delete_at =
            mongodb::bson::DateTime::from_millis(Utc::now().timestamp_millis() + 60_000);
        db.collection::<Document>(TASKS_COLLECTION)
            .insert_many([
                doc! {
                    "_id": "task_int32", "created_at": created, "state": "SUCCESS",
                    "task_name": "count", "delete_at": delete_at,
                    "results": [
                        { "type": "int64", "value": 7_i32 },
                        { "type": "uint64", "value": 9_i32 },
                        { "type": "[]int64", "value": [1_i32, 2_i64] },
                        { "type": "float64", "value": 2_i32 },
                    ],
                },
                doc! {
                    "_id": "task_json", "state": "SUCCESS", "delete_at": delete_at,
                    "results": [{ "type": "json", "value": { "n": 1.5, "s": "t", "l": [] } }],
                },
                doc! { "_id": "task_received", "state": "RECEIVED" },
            ])
            .await
            .expect("insert");
        let backend = common::backend(&url, &ns).await;
        let st = backend.state("task_int32").await.unwrap().unwrap();
        assert_eq!(
            st.created_at,
            Utc.timestamp_millis_opt(1_796_007_770_198)
                .unwrap()
                .fixed_offset()
        );
        let r = st.results.unwrap();
        assert_eq!(r[0].get::<i64>().unwrap(), 7);
        assert_eq!(r[1].get::<u64>().unwrap(), 9);
        assert_eq!(r[2].get::<Vec<i64>>().unwrap(), vec![1, 2]);
        assert_eq!(r[3].get::<f64>().unwrap(), 2.0);
        assert_eq!(st.error, "");

        let st = backend.state("task_json").await.unwrap().unwrap();
        assert_eq!(st.task_name, "");
        assert!(
            time::is_zero(&st.created_at),
            "no created_at = Go's zero time"
        );
        let text: String = st.results.unwrap()[0].get().unwrap();
        assert_eq!(
            serde_json::from_str::<Value>(&text).unwrap(),
            json!({"n": 1.5, "s": "t", "l": []})
        );

        let st = backend.state("task_received").await.unwrap().unwrap();
        assert_eq!((st.state, st.results), (State::Received, None));
        backend.close().await;
        raw.shutdown().await;
    });
}

/// Go's writes for `add(1,1)`, `fail(7)` and `panic_task`, in order (events.json).
fn go_events_of(key: &str) -> Vec<(String, Document)> {
    fixtures::json("mongodb/events.json")
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["key"] == key && e["collection"] == "tasks")
        .map(|e| {
            let Bson::Document(d) = common::go_bson(e["document_after"].clone()) else {
                panic!("document_after is not a document");
            };
            (e["state_or_result"].as_str().unwrap().to_owned(), d)
        })
        .collect()
}

/// A time whose nanoseconds are whole milliseconds, like Go's `time.Now().UTC()` in BSON.
fn ms_now() -> time::Timestamp {
    Utc.timestamp_millis_opt(Utc::now().timestamp_millis())
        .unwrap()
        .fixed_offset()
}

/// Our writes leave, after each state, a document with exactly Go's fields and BSON types
/// (the same state sequences as Go's capture), Go's index, and Go's group meta fields.
#[test]
fn writes_have_gos_layout() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let raw = common::raw_client(&url).await;
        let db = raw.database(&ns);
        let backend = common::backend(&url, &ns).await;
        let tasks = db.collection::<Document>(TASKS_COLLECTION);
        let read = |id: String| {
            let tasks = tasks.clone();
            async move {
                tasks
                    .find_one(doc! { "_id": &id })
                    .await
                    .unwrap()
                    .unwrap_or_else(|| panic!("{id} not stored"))
            }
        };

        for (go_key, name) in [
            ("task_00000001-0000-4000-8000-000000000001", "add"),
            ("task_00000018-0000-4000-8000-000000000018", "fail"),
            ("task_00000017-0000-4000-8000-000000000017", "panic_task"),
        ] {
            let sig = Signature::new(name);
            let created_at = ms_now();
            let events = go_events_of(go_key);
            assert!(events.len() >= 4, "{go_key}: {} events", events.len());
            for (state, go_doc) in events {
                let st = State::parse(&state).unwrap();
                let mut ours = TaskState {
                    created_at,
                    ..TaskState::new(&sig, st)
                };
                if st != State::Pending {
                    ours.task_name = String::new(); // Go sets the name only on PENDING
                }
                match st {
                    State::Success => {
                        ours.results = Some(vec![TaskResult::new(2_i64)]);
                    }
                    State::Failure => ours.error = go_doc.get_str("error").unwrap().to_owned(),
                    _ => {}
                }
                backend.set_state(&ours).await.unwrap();
                let mine = read(sig.uuid.clone()).await;
                assert_eq!(
                    common::layout(&mine),
                    common::layout(&go_doc),
                    "{name} after {state}: ours {mine} vs Go's {go_doc}"
                );
                assert_eq!(mine.get_str("state").unwrap(), state);
                assert_eq!(mine.get_str("task_name").unwrap(), name);
            }
        }

        // Every result type: Go's results, read by us and written again, are Go's BSON,
        // except where Go loses the type (documented): `int` is Int64, `json` a string.
        for go_doc in go_tasks() {
            let Ok(go_results) = go_doc.get_array("results") else {
                continue;
            };
            let id = go_doc.get_str("_id").unwrap().to_owned();
            let name = go_doc.get_str("task_name").unwrap().to_owned();
            raw.database(&format!("{ns}_src"))
                .collection::<Document>(TASKS_COLLECTION)
                .insert_one(go_doc.clone())
                .await
                .unwrap();
            let source = common::backend(&url, &format!("{ns}_src")).await;
            let st = source.state(&id).await.unwrap().unwrap();
            source.close().await;
            let copy = TaskState {
                task_uuid: format!("copy_{id}"),
                ..st
            };
            backend.set_state(&copy).await.unwrap();
            let mine = read(copy.task_uuid.clone()).await;
            let mine_results = mine.get_array("results").unwrap();
            assert_eq!(mine_results.len(), go_results.len(), "{name}");
            for (m, g) in mine_results.iter().zip(go_results) {
                let (Bson::Document(m), Bson::Document(g)) = (m, g) else {
                    panic!("{name}: a result is not a document");
                };
                match g.get_str("type").unwrap() {
                    "int" => {
                        assert_eq!(
                            m.get("value"),
                            Some(&Bson::Int64(5)),
                            "{name}: int is Int64"
                        );
                    }
                    "json" => {
                        assert_eq!(m.get_str("type").unwrap(), "string", "{name}");
                        assert!(
                            m.get_str("value").is_ok(),
                            "{name}: json is kept as its text"
                        );
                    }
                    _ => assert_eq!(m, g, "{name}: our result BSON differs from Go's"),
                }
            }
        }

        // Go's index, made at connect.
        let indexes: Vec<Document> = {
            use futures::TryStreamExt;
            tasks
                .list_indexes()
                .await
                .unwrap()
                .map_ok(|m| {
                    let mut d = doc! { "key": m.keys };
                    if let Some(o) = m.options {
                        d.insert("name", o.name.unwrap_or_default());
                        if let Some(e) = o.expire_after {
                            d.insert("expireAfterSeconds", e.as_secs() as i64);
                        }
                    }
                    d
                })
                .try_collect()
                .await
                .unwrap()
        };
        assert!(
            indexes.contains(&doc! { "key": { "delete_at": 1 }, "name": "delete_at_1", "expireAfterSeconds": 0_i64 }),
            "{indexes:?}"
        );

        // Group metas: Go's fields with Go's types, plus our expiry; TriggerChord sets only
        // chord_triggered.
        let go_init = fixtures::json("mongodb/group_metas-after-init.json");
        let Bson::Document(go_init) = common::go_bson(go_init["document"].clone()) else {
            panic!()
        };
        let members: Vec<String> = (0..3).map(|i| format!("member_{i}")).collect();
        backend.init_group("group_x", &members).await.unwrap();
        let groups = db.collection::<Document>(GROUP_METAS_COLLECTION);
        let mut mine = groups
            .find_one(doc! { "_id": "group_x" })
            .await
            .unwrap()
            .unwrap();
        assert!(matches!(mine.remove("delete_at"), Some(Bson::DateTime(_))));
        assert_eq!(
            common::layout(&mine),
            common::layout(&go_init),
            "{mine} vs {go_init}"
        );
        assert_eq!(mine.get_array("task_uuids").unwrap().len(), 3);
        assert!(backend.trigger_chord("group_x").await.unwrap());
        let mine = groups
            .find_one(doc! { "_id": "group_x" })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                mine.get_bool("chord_triggered").unwrap(),
                mine.get_bool("lock").unwrap()
            ),
            (true, false)
        );
        backend.close().await;
        raw.shutdown().await;
    });
}
