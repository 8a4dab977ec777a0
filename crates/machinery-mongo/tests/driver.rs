//! What only the MongoDB backend has: every result type in BSON, expiry read as absence, the
//! 16 MiB limit, round trips per operation, error mapping, and a server restarted mid-run.
//! Needs `MACHINERY_TEST_MONGODB_URL`; the restart test starts its own SecantusDB.

mod common;

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use chrono::Utc;
use machinery_core::{Backend, Error, Signature, State, TaskResult, TaskState, new_group_uuid};
use machinery_mongo::{
    GROUP_METAS_COLLECTION, MAX_DOCUMENT_BYTES, MongoBackend, MongoConfig, TASKS_COLLECTION,
};
use machinery_testkit::run;
use mongodb::bson::{Bson, Document, doc};
use serde_json::Value;
use tokio::time::Instant;

fn namespace() -> String {
    format!("dr{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
}

fn result(t: &str, v: &str) -> TaskResult {
    TaskResult {
        type_name: t.to_owned(),
        value: serde_json::value::RawValue::from_string(v.to_owned()).unwrap(),
    }
}

/// Every type of WIRE.md section 2 (scalars at their limits, every slice, bytes both ways
/// Go writes them), each with the BSON type it must be stored as.
fn every_type() -> Vec<(TaskResult, &'static str)> {
    let i64s = "[-9223372036854775808,0,9223372036854775807]";
    [
        ("bool", "true", "Boolean"),
        ("int", "-9223372036854775808", "Int64"),
        ("int8", "-128", "Int32"),
        ("int16", "32767", "Int32"),
        ("int32", "-2147483648", "Int32"),
        ("int64", "9223372036854775807", "Int64"),
        ("uint", "18446744073709551615", "String"),
        ("uint8", "255", "Int32"),
        ("uint16", "65535", "Int32"),
        ("uint32", "4294967295", "Int64"),
        ("uint64", "18446744073709551615", "String"),
        ("uint64", "9223372036854775807", "Int64"),
        ("float32", "1.5", "Double"),
        ("float64", "-2.5e-300", "Double"),
        ("float64", "3", "Double"),
        ("string", r#""héllo <b>&\n""#, "String"),
        ("[]bool", "[true,false]", "Array"),
        ("[]int", "[1,-2]", "Array"),
        ("[]int8", "[-128,127]", "Array"),
        ("[]int16", "[-32768]", "Array"),
        ("[]int32", "[2147483647]", "Array"),
        ("[]int64", i64s, "Array"),
        ("[]uint", "[18446744073709551615,1]", "Array"),
        ("[]uint8", r#""AAEC/w==""#, "Binary"),
        ("[]uint16", "[65535]", "Array"),
        ("[]uint32", "[4294967295]", "Array"),
        ("[]uint64", "[18446744073709551615,0]", "Array"),
        ("[]float32", "[0.25]", "Array"),
        ("[]float64", "[1e+21,0.1]", "Array"),
        ("[]string", r#"["a",""]"#, "Array"),
        ("[]string", "null", "Null"),
        ("[]int64", "[]", "Array"),
        ("map[string]int64", r#"{"a":1,"b":2}"#, "EmbeddedDocument"),
    ]
    .into_iter()
    .map(|(t, v, b)| (result(t, v), b))
    .collect()
}

/// Every result type stored and read back with its type and value, in the BSON type Go
/// uses (Int64 for 64-bit types, Int32 for narrow ones, Binary for bytes).
#[test]
fn every_result_type_round_trips() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let backend = common::backend(&url, &ns).await;
        let cases = every_type();
        let results: Vec<TaskResult> = cases.iter().map(|(r, _)| r.clone()).collect();
        let sig = Signature::new("types");
        backend
            .set_state(&TaskState::success(&sig, results.clone()))
            .await
            .unwrap();
        let got = backend.state(&sig.uuid).await.unwrap().unwrap();
        let got = got.results.unwrap();
        assert_eq!(got.len(), results.len());
        for (g, w) in got.iter().zip(&results) {
            assert_eq!(g.type_name, w.type_name);
            let gv: Value = serde_json::from_str(g.value.get()).unwrap();
            let wv: Value = serde_json::from_str(w.value.get()).unwrap();
            assert_eq!(
                gv, wv,
                "{}: {} read back as {}",
                w.type_name, w.value, g.value
            );
            if w.type_name != "map[string]int64" && wv != Value::Null {
                assert_eq!(
                    g.decode().unwrap(),
                    w.decode().unwrap(),
                    "{} converts differently",
                    w.type_name
                );
            }
        }

        let raw = common::raw_client(&url).await;
        let stored = raw
            .database(&ns)
            .collection::<Document>(TASKS_COLLECTION)
            .find_one(doc! { "_id": &sig.uuid })
            .await
            .unwrap()
            .unwrap();
        let stored = stored.get_array("results").unwrap();
        for ((r, want), s) in cases.iter().zip(stored) {
            let Bson::Document(s) = s else { panic!() };
            let value = s.get("value").unwrap();
            assert_eq!(
                format!("{:?}", value.element_type()),
                *want,
                "{} {} stored as {value:?}",
                r.type_name,
                r.value
            );
            if let Bson::Array(items) = value {
                let narrow = ["[]int8", "[]int16", "[]int32", "[]uint16"];
                let want_elem = if narrow.contains(&r.type_name.as_str()) {
                    Some("Int32")
                } else if ["[]int", "[]int64", "[]uint32"].contains(&r.type_name.as_str()) {
                    Some("Int64")
                } else {
                    None
                };
                if let Some(want_elem) = want_elem {
                    for item in items {
                        assert_eq!(
                            format!("{:?}", item.element_type()),
                            want_elem,
                            "{}",
                            r.type_name
                        );
                    }
                }
            }
        }
        backend.close().await;
        raw.shutdown().await;
    });
}

/// A document whose `delete_at` has passed reads as absent before the TTL monitor (about
/// once a minute) deletes it; so does an expired group. `results_expire_in: 0` keeps results
/// an hour (Go deletes them at the next TTL pass).
#[test]
fn expired_documents_read_as_absent() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let raw = common::raw_client(&url).await;
        let db = raw.database(&ns);
        let past = mongodb::bson::DateTime::from_millis(Utc::now().timestamp_millis() - 1000);
        let future = mongodb::bson::DateTime::from_millis(Utc::now().timestamp_millis() + 60_000);
        db.collection::<Document>(TASKS_COLLECTION)
            .insert_many([
                doc! { "_id": "old", "state": "SUCCESS", "results": [], "delete_at": past },
                doc! { "_id": "fresh", "state": "SUCCESS", "results": [], "delete_at": future },
            ])
            .await
            .unwrap();
        db.collection::<Document>(GROUP_METAS_COLLECTION)
            .insert_one(doc! {
                "_id": "group_old", "task_uuids": ["fresh"], "chord_triggered": false,
                "lock": false, "delete_at": past,
            })
            .await
            .unwrap();
        let backend = MongoBackend::connect(MongoConfig {
            results_expire_in: 0,
            ..common::config(&url, &ns)
        })
        .await
        .unwrap();
        assert_eq!(
            backend.state("old").await.unwrap(),
            None,
            "expired must read as absent"
        );
        assert!(backend.state("fresh").await.unwrap().is_some());
        assert!(matches!(
            backend.group_states("group_old").await,
            Err(Error::GroupNotFound(_))
        ));
        assert!(matches!(
            backend.trigger_chord("group_old").await,
            Err(Error::GroupNotFound(_))
        ));
        assert!(matches!(
            backend.mark_group_member_done("group_old", "fresh").await,
            Err(Error::GroupNotFound(_))
        ));
        // The expired document is still stored (the TTL monitor has not run): hidden, not gone.
        assert!(
            db.collection::<Document>(TASKS_COLLECTION)
                .find_one(doc! { "_id": "old" })
                .await
                .unwrap()
                .is_some()
        );

        // results_expire_in 0 = an hour.
        let sig = Signature::new("zero");
        backend
            .set_state(&TaskState::success(&sig, vec![]))
            .await
            .unwrap();
        let st = backend.state(&sig.uuid).await.unwrap().unwrap();
        let left = st.ttl - Utc::now().timestamp();
        assert!((3590..=3600).contains(&left), "expires in {left} s");
        // A later non-final state drops the expiry again (a redelivered task).
        backend
            .set_state(&TaskState::new(&sig, State::Received))
            .await
            .unwrap();
        let st = backend.state(&sig.uuid).await.unwrap().unwrap();
        assert_eq!((st.state, st.ttl, st.results), (State::Received, 0, None));
        backend.close().await;
        raw.shutdown().await;
    });
}

/// A state over 16 MiB is refused before any I/O with a permanent error naming the task and
/// the size; what was stored before stays.
#[test]
fn state_over_16_mib_is_a_clear_error() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let backend = common::backend(&url, &ns).await;
        let sig = Signature::new("big");
        backend
            .set_state(&TaskState::new(&sig, State::Started))
            .await
            .unwrap();
        let before = backend.round_trips();
        let big = "x".repeat(MAX_DOCUMENT_BYTES);
        let err = backend
            .set_state(&TaskState::success(&sig, vec![TaskResult::new(big)]))
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(!err.is_temporary(), "{text}");
        assert!(text.contains(&sig.uuid), "names the task: {text}");
        assert!(
            text.contains("16777216") && text.contains("16 MiB"),
            "{text}"
        );
        let size: usize = text
            .split("the document is ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("names the size: {text}"));
        assert!(size > MAX_DOCUMENT_BYTES, "{text}");
        assert_eq!(backend.round_trips(), before, "refused before any I/O");
        let st = backend.state(&sig.uuid).await.unwrap().unwrap();
        assert_eq!(st.state, State::Started);
        // Just under the limit is stored.
        let fits = "y".repeat(MAX_DOCUMENT_BYTES - 4096);
        backend
            .set_state(&TaskState::success(&sig, vec![TaskResult::new(fits)]))
            .await
            .unwrap();
        assert_eq!(
            backend.state(&sig.uuid).await.unwrap().unwrap().state,
            State::Success
        );
        backend.close().await;
    });
}

/// Round trips as counted from the client's command events: one per state write, one per
/// member done, one per chord trigger, two per group read whatever the group size.
#[test]
fn round_trips_per_operation() {
    let Some(url) = common::url() else { return };
    run(async move {
        let ns = namespace();
        let backend = common::backend(&url, &ns).await;
        let count = |b: &MongoBackend| b.round_trips();
        let sig = Signature::new("rt");
        let n0 = count(&backend);
        for st in [State::Pending, State::Received, State::Started] {
            backend.set_state(&TaskState::new(&sig, st)).await.unwrap();
        }
        backend
            .set_state(&TaskState::success(&sig, vec![TaskResult::new(1_i64)]))
            .await
            .unwrap();
        assert_eq!(count(&backend) - n0, 4, "one round trip per state");
        let uuids: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
        let group = new_group_uuid();
        let n0 = count(&backend);
        backend.init_group(&group, &uuids).await.unwrap();
        for u in &uuids {
            backend.mark_group_member_done(&group, u).await.unwrap();
        }
        assert_eq!(count(&backend) - n0, 51, "one per member");
        let n0 = count(&backend);
        assert_eq!(backend.group_states(&group).await.unwrap().len(), 50);
        assert_eq!(count(&backend) - n0, 2, "group states: meta + one find");
        let n0 = count(&backend);
        assert!(backend.trigger_chord(&group).await.unwrap());
        assert_eq!(count(&backend) - n0, 1);
        assert!(machinery_mongo::round_trips() >= count(&backend));
        backend.close().await;
    });
}

/// No server at the address: a temporary error naming the server without its password,
/// after `server_selection_timeout_ms`, not the client's 30 s.
#[test]
fn unreachable_server_is_a_temporary_error() {
    if common::url().is_none() {
        return;
    }
    run(async {
        let port = free_port();
        let start = Instant::now();
        let err = MongoBackend::connect(MongoConfig {
            server_selection_timeout_ms: 500,
            ..MongoConfig::from_url(format!(
                "mongodb://u:hunter2@127.0.0.1:{port}/?directConnection=true"
            ))
        })
        .await
        .unwrap_err();
        let text = err.to_string();
        assert!(err.is_temporary(), "{text}");
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{:?}",
            start.elapsed()
        );
        let err = MongoBackend::from_url("redis://127.0.0.1/")
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Config { .. }), "{err}");
    });
}

use machinery_testkit::servers::free_port;

/// A SecantusDB of this test's own, on a free port, with a real storage folder.
struct OwnServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl OwnServer {
    fn start() -> Option<OwnServer> {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let has = Command::new(&python)
            .args(["-c", "import secantus"])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !has {
            assert!(
                std::env::var("MACHINERY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "SecantusDB (python3 -m secantus) is not installed: run scripts/services.sh start"
            );
            println!("skipped: python3 -m secantus not available");
            return None;
        }
        let mut s = OwnServer {
            port: free_port(),
            dir: tempfile::tempdir().expect("a storage folder"),
            child: None,
        };
        s.launch();
        Some(s)
    }

    fn launch(&mut self) {
        let python = std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let child = Command::new(python)
            .args(["-m", "secantus", "--host", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--storage-path")
            .arg(self.dir.path().join("data"))
            .args(["--cache-size", "64M", "--log-level", "WARNING"])
            .current_dir(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start SecantusDB");
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    /// Stop it as `systemctl restart` would: SIGTERM, then SIGKILL after 10 s.
    fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill").arg(child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if child.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Retry `f` until it succeeds or `limit` passes.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = machinery_core::Result<T>>,
{
    let start = Instant::now();
    loop {
        match f().await {
            Ok(v) => return v,
            Err(e) => {
                assert!(
                    start.elapsed() < limit,
                    "{what}: still failing after {limit:?}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

/// The server restarted mid-run: calls fail with temporary errors within the selection
/// timeout while it is down, nothing hangs, and the same backend works again afterwards,
/// with what was stored before still there.
#[test]
fn server_restarted_mid_run_resumes() {
    if common::url().is_none() {
        return;
    }
    let Some(mut server) = OwnServer::start() else {
        return;
    };
    run(async move {
        let config = MongoConfig {
            server_selection_timeout_ms: 1000,
            ..common::config(&server.url(), "restart")
        };
        let backend = eventually(Duration::from_secs(60), "first connect", || {
            MongoBackend::connect(config.clone())
        })
        .await;
        let before = Signature::new("before");
        backend
            .set_state(&TaskState::success(&before, vec![TaskResult::new(1_i64)]))
            .await
            .unwrap();
        let group = new_group_uuid();
        backend
            .init_group(&group, &[before.uuid.clone(), "second".to_owned()])
            .await
            .unwrap();
        assert_eq!(
            backend
                .mark_group_member_done(&group, &before.uuid)
                .await
                .unwrap(),
            1
        );

        server.stop();
        let start = Instant::now();
        let err = backend.state(&before.uuid).await.unwrap_err();
        assert!(err.is_temporary(), "{err}");
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "a call hung {:?}",
            start.elapsed()
        );
        let during = Signature::new("during");
        let err = backend
            .set_state(&TaskState::pending(&during))
            .await
            .unwrap_err();
        assert!(err.is_temporary(), "{err}");

        server.launch();
        let after = Signature::new("after");
        let pending = TaskState::pending(&after);
        eventually(Duration::from_secs(60), "write after the restart", || {
            backend.set_state(&pending)
        })
        .await;
        let st = backend
            .state(&before.uuid)
            .await
            .unwrap()
            .expect("kept across the restart");
        assert_eq!(st.results.unwrap()[0].get::<i64>().unwrap(), 1);
        assert_eq!(
            backend.state(&after.uuid).await.unwrap().unwrap().state,
            State::Pending
        );
        assert_eq!(
            backend
                .mark_group_member_done(&group, "second")
                .await
                .unwrap(),
            2
        );
        assert!(backend.trigger_chord(&group).await.unwrap());
        backend.close().await;
        server.stop();
    });
}
