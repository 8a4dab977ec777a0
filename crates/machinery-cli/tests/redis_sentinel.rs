//! The `machinery` command behind Redis Sentinel: a private master, a replica and a Sentinel
//! on free ports; `machinery bench e2e` with the master name in the URL
//! (`redis://s1:p1?master_name=NAME`) and in Go's setting (`REDIS_MASTER_NAME`), and a clear
//! error for a malformed URL. Needs `MACHINERY_TEST_REDIS_URL` to be set (as the other Redis
//! tests; CI sets it) and `redis-server` / `redis-cli` on `PATH`. The failovers themselves are
//! tested in `crates/machinery-redis/tests/sentinel.rs`.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const URL_VAR: &str = "MACHINERY_TEST_REDIS_URL";

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be on PATH");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn wait_cli(port: u16, args: &[&str], want: &str) {
    let start = Instant::now();
    while !cli(port, args).contains(want) {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "redis-cli -p {port} {args:?}: no `{want}`"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Servers this test owns, killed by PID when dropped.
struct Servers(Vec<Child>, std::path::PathBuf);

impl Drop for Servers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

fn redis(dir: &std::path::Path, args: &[&str]) -> Child {
    Command::new("redis-server")
        .args(args)
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server must be on PATH")
}

fn bench(broker: &str, env: &[(&str, &str)]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_machinery"))
        .args(["bench", "e2e", "--broker", broker, "--backend", broker])
        .args(["-n", "300", "--concurrency", "8", "--send-concurrency", "8"])
        .env("MACHINERY_LOG", "warn")
        .envs(env.iter().copied())
        .output()
        .expect("machinery bench")
}

#[test]
fn machinery_bench_runs_behind_sentinel_in_both_url_forms() {
    if machinery_testkit::env_url(URL_VAR).is_none() {
        return;
    }
    let dir = std::env::temp_dir().join(format!(
        "rs{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let (master, replica, sentinel) = (free_port(), free_port(), free_port());
    let mut servers = Servers(Vec::new(), dir.clone());
    servers
        .0
        .push(redis(&dir, &["--port", &master.to_string()]));
    wait_cli(master, &["ping"], "PONG");
    servers.0.push(redis(
        &dir,
        &[
            "--port",
            &replica.to_string(),
            "--replicaof",
            "127.0.0.1",
            &master.to_string(),
        ],
    ));
    wait_cli(replica, &["info", "replication"], "master_link_status:up");
    let conf = dir.join("sentinel.conf");
    std::fs::write(
        &conf,
        format!("port {sentinel}\nbind 127.0.0.1\nsentinel monitor m 127.0.0.1 {master} 1\n"),
    )
    .unwrap();
    servers.0.push(
        Command::new("redis-server")
            .arg(&conf)
            .arg("--sentinel")
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH"),
    );
    wait_cli(
        sentinel,
        &["sentinel", "get-master-addr-by-name", "m"],
        &master.to_string(),
    );

    for (broker, env) in [
        (
            format!("redis://127.0.0.1:{sentinel}/0?master_name=m"),
            vec![],
        ),
        (
            format!("redis://127.0.0.1:{sentinel}/0"),
            vec![("REDIS_MASTER_NAME", "m")],
        ),
    ] {
        let out = bench(&broker, &env);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("300 tasks sent and completed"),
            "{broker} {env:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The tasks went to the master (the replica has them too).
    assert!(cli(master, &["dbsize"]).trim() != "0");

    let out = bench(&format!("redis://127.0.0.1:{sentinel}/0?master_name="), &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("master_name"), "{stderr}");
    drop(servers);
}
