//! Go's memcache layout (`testdata/go/memcache/`, captured from the real Go Machinery with
//! gomemcache on three memcached servers): server choice, value bytes, flags and expiry,
//! written by Rust and read back as Go reads them, and Go's entries read by Rust.
//!
//! The tests that write start memcached processes of their own on free ports (the Go keys
//! are fixed UUIDs, which must not collide with anyone else's).

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::OwnMemcached;
use machinery_core::{Backend, GroupMeta, State, TaskState};
use machinery_memcache::{MemcacheBackend, MemcacheConfig, crc32_ieee, pick_server};
use machinery_testkit::fixtures;
use serde_json::Value;

fn now_unix() -> i64 {
    i64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock after 1970")
            .as_secs(),
    )
    .expect("seconds fit i64")
}

fn rows(v: &Value) -> &Vec<Value> {
    v.as_array().expect("a JSON array")
}

fn text<'a>(v: &'a Value, field: &str) -> &'a str {
    v[field]
        .as_str()
        .unwrap_or_else(|| panic!("{field} missing in {v}"))
}

fn index(v: &Value, field: &str) -> usize {
    usize::try_from(
        v[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} missing in {v}")),
    )
    .expect("index fits")
}

async fn backend(url: &str, expire: i64) -> MemcacheBackend {
    MemcacheBackend::connect(MemcacheConfig {
        results_expire_in: expire,
        ..MemcacheConfig::from_url(url)
    })
    .await
    .expect("connect to our own memcached")
}

#[test]
fn server_selection_matches_gos_pickserver_table() {
    let table = fixtures::json("memcache/pickserver-50.json");
    let servers = table["servers_in_url_order"]
        .as_array()
        .expect("servers")
        .len();
    assert_eq!(servers, 3);
    let table_rows = rows(&table["rows"]);
    assert_eq!(table_rows.len(), 50, "Go's table has 50 keys");
    for row in table_rows {
        let key = text(row, "key");
        assert_eq!(
            u64::from(crc32_ieee(key.as_bytes())),
            row["crc32_ieee"].as_u64().expect("crc"),
            "crc32 of {key}"
        );
        assert_eq!(
            pick_server(key.as_bytes(), servers),
            index(row, "index"),
            "server of {key}"
        );
    }
    // Every key Go stored, and every write it made, sat on the server the rule names.
    let mut checked = 0;
    for file in ["memcache/keys-final.json", "memcache/events.json"] {
        for row in rows(&fixtures::json(file)) {
            let key = text(row, "key");
            assert_eq!(
                pick_server(key.as_bytes(), 3),
                index(row, "server_index"),
                "{file}: server of {key}"
            );
            checked += 1;
        }
    }
    assert!(checked > 100, "only {checked} rows checked");
}

#[test]
fn gos_values_decode_and_reencode_byte_for_byte() {
    let mut states = 0;
    let mut metas = 0;
    let events = fixtures::json("memcache/events.json");
    let values = rows(&events)
        .iter()
        .map(|e| text(e, "value").as_bytes().to_vec())
        .chain(
            fixtures::json_files("memcache/values")
                .into_iter()
                .map(|p| std::fs::read(p).expect("read a value")),
        );
    for bytes in values {
        if bytes.starts_with(b"{\"GroupUUID\"") {
            let meta = GroupMeta::from_json(&bytes).expect("Go's group meta decodes");
            assert_eq!(meta.to_json().expect("encode"), bytes);
            metas += 1;
        } else {
            let state = TaskState::from_json(&bytes).expect("Go's task state decodes");
            assert_eq!(
                String::from_utf8(state.to_json().expect("encode")).expect("utf-8"),
                String::from_utf8(bytes).expect("utf-8")
            );
            states += 1;
        }
    }
    assert!(states > 100 && metas >= 4, "{states} states, {metas} metas");
}

/// Rust writes Go's values: the same bytes under the same key, client flags 0 (no `F`
/// token), an absolute expiry of now + `results_expire_in` (memcached's own log of each
/// command), and keys sent as they are (no base64).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_writes_gos_bytes_flags_0_and_absolute_expiry() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = OwnMemcached::start_logged(dir.path().join("memcached.log")).await;
    let addr = server.addr();
    let backend = backend(&format!("memcache://{addr}"), 3600).await;

    let mut written = 0;
    for path in fixtures::json_files("memcache/values") {
        let bytes = std::fs::read(&path).expect("read a value");
        if bytes.starts_with(b"{\"GroupUUID\"") {
            continue; // group metas: below
        }
        let state = TaskState::from_json(&bytes).expect("Go's state decodes");
        let key = state.task_uuid.clone();
        backend.purge_state(&key).await.expect("purge");
        let before = now_unix();
        backend.set_state(&state).await.expect("set_state");
        let after = now_unix();

        let item = common::gets(&addr, &key)
            .await
            .unwrap_or_else(|| panic!("{key} not stored"));
        assert_eq!(item.flags, 0, "{}: client flags", path.display());
        assert_eq!(
            String::from_utf8(item.value).expect("utf-8"),
            String::from_utf8(bytes).expect("utf-8"),
            "{}: stored bytes differ from Go's",
            path.display()
        );
        let command = server
            .logged_commands()
            .into_iter()
            .rev()
            .find(|c| c.starts_with(&format!("ms {key} ")))
            .unwrap_or_else(|| {
                panic!(
                    "no ms command for {key} in memcached's log: {:?}",
                    server.logged_commands()
                )
            });
        let tokens: Vec<&str> = command.split_whitespace().collect();
        let exp: i64 = tokens
            .iter()
            .find_map(|t| t.strip_prefix('T'))
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("no T (expiry) in `{command}`"));
        assert!(
            // Rounded up to the next whole second, never early.
            (before + 3600..=after + 3601).contains(&exp),
            "expiry {exp} is not the absolute time now + 3600 ({before}..{after}): `{command}`"
        );
        assert!(
            !tokens.iter().any(|t| t.starts_with('F') || *t == "b"),
            "flags or base64 key sent: `{command}`"
        );
        let left = common::seconds_left(&addr, &key).await.expect("me");
        // The expiry is rounded up to the next whole second (up to 3601 s ahead), and
        // memcached's clock ticks once a second, so it may read one more second behind.
        assert!((3590..=3602).contains(&left), "{key}: {left} s left");
        written += 1;
    }
    assert!(written >= 15, "only {written} Go states written");

    // A Go group meta: triggering its chord writes Go's own final bytes.
    let init = fixtures::read("memcache/values/group_meta_init.json");
    let triggered = fixtures::read("memcache/values/group_meta_chord_triggered.json");
    let group = GroupMeta::from_json(&init).expect("meta").group_uuid;
    common::set(&addr, &group, 0, now_unix() + 3600, &init).await;
    assert!(backend.trigger_chord(&group).await.expect("trigger"));
    let item = common::gets(&addr, &group).await.expect("meta stored");
    assert_eq!(item.flags, 0);
    assert_eq!(
        String::from_utf8(item.value).expect("utf-8"),
        String::from_utf8(triggered).expect("utf-8")
    );
    assert!(!backend.trigger_chord(&group).await.expect("trigger again"));
}

/// Three memcached processes in URL order: every key Go stored lands on the server Go put
/// it on when Rust writes it; and what Go wrote there (its values on its servers) is what
/// Rust reads: states, group states in order, chords, completion counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_hold_gos_keys_where_go_puts_them() {
    let servers = [
        OwnMemcached::start(&[]).await,
        OwnMemcached::start(&[]).await,
        OwnMemcached::start(&[]).await,
    ];
    let addrs: Vec<String> = servers.iter().map(OwnMemcached::addr).collect();
    let url = format!("memcache://{}", addrs.join(","));
    let backend = backend(&url, 3600).await;
    assert_eq!(backend.servers(), addrs.as_slice());
    let finals = fixtures::json("memcache/keys-final.json");
    let finals = rows(&finals);
    assert!(finals.len() >= 29);

    // Rust writes.
    for row in finals {
        let key = text(row, "key");
        let value = text(row, "value").as_bytes();
        let at = index(row, "server_index");
        assert_eq!(backend.server_for(key), addrs[at]);
        if value.starts_with(b"{\"GroupUUID\"") {
            let meta = GroupMeta::from_json(value).expect("meta");
            backend
                .init_group(key, &meta.task_uuids)
                .await
                .expect("init_group");
        } else {
            let state = TaskState::from_json(value).expect("state");
            backend.set_state(&state).await.expect("set_state");
        }
    }
    for row in finals {
        let key = text(row, "key");
        let at = index(row, "server_index");
        for (i, addr) in addrs.iter().enumerate() {
            let item = common::gets(addr, key).await;
            if i != at {
                assert_eq!(item, None, "{key} also on server {i}");
                continue;
            }
            let item = item.unwrap_or_else(|| panic!("{key} missing on server {i}"));
            assert_eq!(item.flags, 0);
            if !key.starts_with("group_") {
                assert_eq!(
                    String::from_utf8(item.value).expect("utf-8"),
                    text(row, "value"),
                    "{key}"
                );
            }
        }
    }
    let mut on = [0usize; 3];
    for addr in &addrs {
        for key in common::all_keys(addr).await {
            if let Some(row) = finals.iter().find(|r| text(r, "key") == key) {
                on[index(row, "server_index")] += 1;
            }
        }
    }
    assert!(on.iter().all(|&n| n > 0), "keys not spread: {on:?}");

    // Go writes (`set <key> 0 <exptime>` on its server), Rust reads.
    for addr in &addrs {
        common::flush_all(addr).await;
    }
    let exp = now_unix() + 3600;
    for row in finals {
        let addr = &addrs[index(row, "server_index")];
        common::set(
            addr,
            text(row, "key"),
            0,
            exp,
            text(row, "value").as_bytes(),
        )
        .await;
    }
    for row in finals
        .iter()
        .filter(|r| !text(r, "key").starts_with("group_"))
    {
        let key = text(row, "key");
        let got = backend.state(key).await.expect("state").expect("stored");
        let want = TaskState::from_json(text(row, "value").as_bytes()).expect("state");
        assert_eq!(got, want, "{key}");
    }
    let group1 = "group_00000001-0000-4000-8000-000000000001";
    let group2 = "group_00000002-0000-4000-8000-000000000002";
    let states = backend.group_states(group1).await.expect("group_states");
    let order: Vec<&str> = states.iter().map(|s| s.task_uuid.as_str()).collect();
    assert_eq!(
        order,
        [
            "task_00000006-0000-4000-8000-000000000006",
            "task_00000007-0000-4000-8000-000000000007",
            "task_00000008-0000-4000-8000-000000000008"
        ]
    );
    assert!(states.iter().all(|s| s.state == State::Success));
    // Go initialised these groups: no counter, so the count comes from the states.
    assert_eq!(
        backend
            .mark_group_member_done(group1, order[0])
            .await
            .expect("mark"),
        3
    );
    assert!(
        !backend.trigger_chord(group2).await.expect("trigger"),
        "Go already triggered group 2's chord"
    );
    assert!(backend.trigger_chord(group1).await.expect("trigger"));
    assert!(!backend.trigger_chord(group1).await.expect("trigger again"));

    // A later Rust state keeps what Go's PENDING stored.
    let pending = fixtures::read("memcache/values/pending.json");
    let go_pending = TaskState::from_json(&pending).expect("pending");
    let key = go_pending.task_uuid.clone();
    common::set(
        &addrs[pick_server(key.as_bytes(), 3)],
        &key,
        0,
        exp,
        &pending,
    )
    .await;
    let received = TaskState {
        task_uuid: key.clone(),
        state: State::Received,
        ..TaskState::default()
    };
    backend.set_state(&received).await.expect("received");
    let got = backend.state(&key).await.expect("state").expect("stored");
    assert_eq!(got.state, State::Received);
    assert_eq!(got.task_name, "add");
    assert_eq!(got.created_at, go_pending.created_at);
    drop(servers);
    tokio::time::sleep(Duration::from_millis(10)).await;
}
