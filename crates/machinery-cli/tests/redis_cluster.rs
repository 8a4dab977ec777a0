//! `machinery worker` processes on a private local Redis Cluster (3 masters on free ports,
//! `redis-server --cluster-enabled yes` + `redis-cli --cluster create`), broker and backend
//! both on the cluster: a worker killed with SIGKILL in the middle of the run loses no task,
//! and `machinery bench e2e` runs there. Needs `MACHINERY_TEST_REDIS_URL` to be set (as the
//! other Redis tests; CI sets it) and `redis-server` / `redis-cli` on `PATH`.

use std::collections::HashSet;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use machinery::{Config, Signature, server_from_config};
use redis::AsyncCommands;
use redis::cluster_async::ClusterConnection;

mod common;

use common::{Worker, send_adds, successes, wait_for_successes};

const URL_VAR: &str = "MACHINERY_TEST_REDIS_URL";

/// A free port whose cluster bus port (+10000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        if p <= u16::MAX - 10_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
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

/// Three cluster nodes this test owns, killed by PID when dropped.
struct OwnCluster {
    children: Vec<Child>,
    url: String,
    dir: std::path::PathBuf,
}

impl OwnCluster {
    fn start() -> OwnCluster {
        let dir = std::env::temp_dir().join(format!(
            "rc{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ports: Vec<u16> = Vec::new();
        while ports.len() < 3 {
            let p = free_cluster_port();
            if !ports.contains(&p) {
                ports.push(p);
            }
        }
        let mut children = Vec::new();
        for &port in &ports {
            children.push(
                Command::new("redis-server")
                    .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                    .args(["--cluster-enabled", "yes"])
                    .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
                    .args(["--save", "", "--appendonly", "no"])
                    .arg("--dir")
                    .arg(&dir)
                    .stdout(Stdio::null())
                    .spawn()
                    .expect("redis-server must be on PATH"),
            );
        }
        for &port in &ports {
            wait_cli(port, &["ping"], "PONG");
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let status = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&nodes)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdout(Stdio::null())
            .status()
            .expect("redis-cli must be on PATH");
        assert!(status.success(), "redis-cli --cluster create");
        for &port in &ports {
            wait_cli(port, &["cluster", "info"], "cluster_state:ok");
        }
        OwnCluster {
            children,
            url: format!("redis://{}", nodes.join(",")),
            dir,
        }
    }

    async fn conn(&self) -> ClusterConnection {
        let nodes: Vec<String> = self
            .url
            .trim_start_matches("redis://")
            .split(',')
            .map(|n| format!("redis://{n}"))
            .collect();
        redis::cluster::ClusterClient::new(nodes)
            .unwrap()
            .get_async_connection()
            .await
            .expect("cluster connection")
    }
}

impl Drop for OwnCluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_a_worker_on_a_redis_cluster_loses_no_task() {
    if machinery_testkit::env_url(URL_VAR).is_none() {
        return;
    }
    const N: usize = 4000;
    let cluster = OwnCluster::start();
    let url = cluster.url.clone();
    let queue = "machinery_tasks";
    let mut conn = cluster.conn().await;
    let server = server_from_config(Config {
        broker: url.clone(),
        result_backend: url.clone(),
        ..Config::default()
    })
    .await
    .expect("sender on the cluster");
    let uuids = send_adds(&server, queue, 0, N).await;
    assert_eq!(uuids.iter().collect::<HashSet<_>>().len(), N);

    let mut first = Worker::start(&url, &url, queue, 16);
    wait_for_successes(
        &mut conn,
        &uuids,
        N / 4,
        Duration::from_secs(120),
        &mut first,
    )
    .await;
    first.kill();
    let killed_at = Instant::now();

    // What the dead worker held (its processing list is hash-tagged into the queue's slot).
    let lists: Vec<String> = {
        let registry: Vec<String> = conn
            .zrange("{machinery_tasks}.consumers", 0, -1)
            .await
            .unwrap();
        registry
            .iter()
            .map(|id| format!("{{machinery_tasks}}.processing.{id}"))
            .collect()
    };
    let mut held = Vec::new();
    for key in &lists {
        let msgs: Vec<Vec<u8>> = conn.lrange(key, 0, -1).await.unwrap();
        held.extend(msgs);
    }
    let held_uuids: Vec<String> = held
        .iter()
        .map(|m| Signature::from_json(m).expect("a signature").uuid)
        .collect();
    let done_at_kill = successes(&mut conn, &uuids).await;

    let mut second = Worker::start(&url, &url, queue, 16);
    wait_for_successes(&mut conn, &uuids, N, Duration::from_secs(180), &mut second).await;
    println!(
        "cluster: killed the worker at {done_at_kill}/{N} SUCCESS holding {} unacked; all {N} \
         SUCCESS {:.1} s after the kill, 0 lost",
        held_uuids.len(),
        killed_at.elapsed().as_secs_f64()
    );
    assert!(!held.is_empty(), "the killed worker held messages");
    let left: usize = conn.llen(queue).await.unwrap();
    assert_eq!(left, 0);
    second.kill();

    // The e2e benchmark runs on the cluster too (broker and backend), with small counts.
    let out = Command::new(env!("CARGO_BIN_EXE_machinery"))
        .args(["bench", "e2e", "--broker", &url, "--backend", &url])
        .args([
            "-n",
            "500",
            "--concurrency",
            "16",
            "--send-concurrency",
            "16",
        ])
        .env("MACHINERY_LOG", "warn")
        .output()
        .expect("machinery bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench e2e on the cluster failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{stdout}");
}
