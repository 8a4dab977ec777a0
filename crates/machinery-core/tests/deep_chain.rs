//! Long chains: Go's decoder accepts JSON nested up to 10 000 levels, and `Chain::new` builds
//! chains of any length. A chain of 10 000 links (about 20 000 JSON levels) decodes, encodes,
//! clones, compares and drops on a thread with the default 2 MiB test stack, and runs on the
//! memory broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use machinery_core::{
    Chain, Config, MemoryBackend, MemoryBroker, Payload, Server, Signature, State, TaskError,
};

const LINKS: usize = 10_000;
const STACK: usize = 2 * 1024 * 1024;

/// Run `f` on a thread with a 2 MiB stack (the default for test threads): a stack overflow
/// aborts the whole test binary, so passing proves the stack held.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(STACK)
        .spawn(f)
        .expect("spawn")
        .join()
        .expect("no panic")
}

/// The JSON of a chain of `n` `add` links as a Go producer writes it (not our encoder).
fn wire_chain(n: usize) -> String {
    let mut s = String::with_capacity(n * 120);
    for i in 0..n {
        s.push_str(&format!(
            r#"{{"UUID":"task_{i}","Name":"add","Args":[{{"Name":"","Type":"int64","Value":{i}}}],"Headers":{{"k":[1,{{"a":null}}]}},"OnSuccess":"#
        ));
        if i + 1 < n {
            s.push('[');
        } else {
            s.push_str("null");
        }
    }
    for i in (0..n).rev() {
        if i + 1 < n {
            s.push(']');
        }
        s.push('}');
    }
    s
}

fn links(head: &Signature) -> Vec<&Signature> {
    let mut out = Vec::new();
    let mut cur = Some(head);
    while let Some(s) = cur {
        out.push(s);
        cur = s.on_success.first();
    }
    out
}

#[test]
fn a_10000_link_chain_from_the_wire_decodes_and_encodes() {
    on_small_stack(|| {
        let json = wire_chain(LINKS);
        let Payload::Task(sig) = Payload::decode(json.as_bytes()) else {
            panic!("a 10 000-link chain was refused")
        };
        let chain = links(&sig);
        assert_eq!(chain.len(), LINKS);
        assert_eq!(chain[LINKS - 1].uuid, format!("task_{}", LINKS - 1));
        assert_eq!(chain[1234].args[0].get::<i64>().unwrap(), 1234);
        let bytes = sig.to_json().unwrap();
        let again = Signature::from_json(&bytes).unwrap();
        assert!(again == *sig, "decode(encode(x)) == x");
        assert_eq!(again.to_json().unwrap(), bytes, "encoding is stable");
        let copy = again.clone();
        assert!(copy == again);
        assert!(format!("{copy:?}").len() > LINKS * 100);
        drop((copy, again, sig));
    });
}

#[test]
fn a_10000_link_chain_built_in_rust_roundtrips() {
    on_small_stack(|| {
        let tasks: Vec<Signature> = (0..LINKS)
            .map(|i| Signature::new("add").arg(i as i64))
            .collect();
        let chain = Chain::new(tasks).unwrap();
        let bytes = chain.head.to_json().unwrap();
        let back = Signature::from_json(&bytes).unwrap();
        assert!(back == chain.head);
        assert_eq!(links(&back).len(), LINKS);
    });
}

#[test]
fn nesting_past_the_limit_is_malformed_with_the_reason() {
    on_small_stack(|| {
        let depth = machinery_core::MAX_JSON_NESTING + 10;
        let json = format!(
            r#"{{"Name":"add","Headers":{{"x":{}1{}}}}}"#,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        match Payload::decode(json.as_bytes()) {
            Payload::Malformed { reason, .. } => {
                assert!(reason.contains("levels deep"), "{reason}");
            }
            Payload::Task(_) => panic!("accepted JSON nested {depth} levels"),
        }
        // Deep header values (which are cloned and dropped recursively) are refused even
        // inside the limit, without overflowing while refusing them.
        let json = format!(
            r#"{{"Name":"add","Headers":{{"x":{}1{}}}}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        match Payload::decode(json.as_bytes()) {
            Payload::Malformed { reason, .. } => {
                assert!(reason.contains("header \"x\""), "{reason}");
            }
            Payload::Task(_) => panic!("accepted a header nested 5 000 levels"),
        }
        // A deep argument value is refused when converted, not parsed recursively.
        let json = format!(
            r#"{{"Name":"add","Args":[{{"Type":"int64","Value":{}1{}}}]}}"#,
            "[".repeat(5_000),
            "]".repeat(5_000)
        );
        let Payload::Task(sig) = Payload::decode(json.as_bytes()) else {
            panic!("refused")
        };
        let err = sig.args[0].get::<i64>().unwrap_err();
        assert!(err.message.contains("nested too deep"), "{err}");
    });
}

fn server() -> (Server, MemoryBroker) {
    let broker = MemoryBroker::new();
    let config = Config {
        no_unix_signals: true,
        ..Config::default()
    };
    let server = Server::new(config, broker.clone(), MemoryBackend::new());
    server
        .register_task(
            "add",
            |a: i64, b: i64| async move { Ok::<_, TaskError>(a + b) },
        )
        .unwrap();
    server
        .register_task("first", |a: i64| async move { Ok::<_, TaskError>(a) })
        .unwrap();
    (server, broker)
}

/// Runs `f` on a 2 MiB thread in a runtime whose worker threads have 2 MiB stacks (tokio's
/// default, set here explicitly).
fn run_small<F: std::future::Future<Output = ()> + 'static>(
    f: impl FnOnce() -> F + Send + 'static,
) {
    on_small_stack(move || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_stack_size(STACK)
            .enable_all()
            .build()
            .unwrap()
            .block_on(f());
    });
}

#[test]
fn a_300_link_chain_runs_to_the_end() {
    run_small(|| async {
        let (server, broker) = server();
        let w = server.new_worker("deep", 1).launch();
        let mut tasks = vec![Signature::new("first").arg(1i64)];
        tasks.extend((1..300).map(|_| Signature::new("add").arg(1i64)));
        let r = server.send_chain(Chain::new(tasks).unwrap()).await.unwrap();
        let sum: i64 = r.results[299]
            .get_as(Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(sum, 300);
        assert!(broker.dead_letters("machinery_tasks").is_empty());
        w.quit();
        w.join().await.unwrap();
    });
}

#[test]
fn a_10000_link_chain_runs_on_the_memory_broker() {
    // Each link carries the rest of the chain (as in Go), so running all 10 000 links would
    // move ~16 GB of JSON; the first two links prove the worker takes, runs and forwards a
    // 10 000-deep message, and takes the 9 999-deep one it sent, on 2 MiB stacks.
    run_small(|| async {
        let (server, broker) = server();
        let ran = Arc::new(AtomicUsize::new(0));
        let r2 = Arc::clone(&ran);
        let mut worker = server.new_worker("deep", 1);
        worker.set_post_task_handler(move |_, _| {
            r2.fetch_add(1, Ordering::SeqCst);
        });
        let w = worker.launch();
        let mut tasks = vec![Signature::new("first").arg(1i64)];
        tasks.extend((1..LINKS).map(|_| Signature::new("add").arg(1i64)));
        let r = server.send_chain(Chain::new(tasks).unwrap()).await.unwrap();
        assert_eq!(r.results.len(), LINKS);
        machinery_testkit::wait_until_sync(
            Duration::from_secs(120),
            "the chain to advance",
            || ran.load(Ordering::SeqCst) >= 2,
        )
        .await;
        w.quit();
        w.join().await.unwrap();
        for (i, res) in r.results.iter().take(2).enumerate() {
            let st = res.state().await.unwrap();
            assert_eq!(st.state, State::Success, "link {i}");
        }
        assert_eq!(
            r.results[1]
                .get_as::<i64>(Duration::from_secs(1))
                .await
                .unwrap(),
            2
        );
        assert!(broker.dead_letters("machinery_tasks").is_empty());
    });
}
