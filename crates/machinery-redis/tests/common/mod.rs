//! Helpers shared by the Redis test binaries.
#![allow(dead_code)]

use std::time::Duration;

use machinery_redis::RedisConfig;
use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;

/// The variable that points the tests at a Redis server.
pub const URL_VAR: &str = "MACHINERY_TEST_REDIS_URL";

/// The test server's URL, or `None` after printing one "skipped" line (a failure instead when
/// `MACHINERY_REQUIRE_SERVICES=1`, as in CI).
pub fn url() -> Option<String> {
    machinery_testkit::env_url(URL_VAR)
}

/// A fresh key namespace: a letter, then hex digits.
pub fn namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("mr{}", &id[..12])
}

/// Settings for tests: everything under `ns`, short leases and polls.
pub fn config(url: &str, ns: &str) -> RedisConfig {
    RedisConfig {
        default_queue: format!("{ns}_tasks"),
        delayed_tasks_key: format!("{ns}.delayed_tasks"),
        consumer_lease_ms: 1000,
        recovery_interval_ms: 200,
        delayed_tasks_poll_period: 50,
        reconnect_max_delay_ms: 1000,
        ..RedisConfig::from_url(url)
    }
}

/// A plain connection for looking at (or writing) keys directly.
pub async fn raw(url: &str) -> MultiplexedConnection {
    redis::Client::open(url)
        .expect("valid url")
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("{URL_VAR} is set but redis is unreachable: {e}"))
}

/// Delete every key that starts with `prefix`.
pub async fn delete_prefix(conn: &mut MultiplexedConnection, prefix: &str) {
    let keys = scan_keys(conn, &format!("{prefix}*")).await;
    if !keys.is_empty() {
        let _: () = conn.del(keys).await.expect("del");
    }
}

/// Every key matching `pattern` (SCAN, so it does not block the server).
pub async fn scan_keys(conn: &mut MultiplexedConnection, pattern: &str) -> Vec<String> {
    let mut iter: redis::AsyncIter<'_, String> = conn
        .scan_options(
            redis::ScanOptions::default()
                .with_pattern(pattern)
                .with_count(5000),
        )
        .await
        .expect("scan");
    let mut keys = Vec::new();
    while let Some(k) = iter.next_item().await {
        keys.push(k.expect("scan item"));
    }
    keys
}

/// The processing lists of `queue`'s consumers with their lengths.
pub async fn processing_lists(
    conn: &mut MultiplexedConnection,
    queue: &str,
) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    for k in scan_keys(conn, &format!("{queue}.processing.*")).await {
        let n: usize = conn.llen(&k).await.expect("llen");
        out.push((k, n));
    }
    out
}

/// Waiting on a condition: the one helper every test shares.
pub use machinery_testkit::wait_until as eventually;

/// A port nothing listens on now: the OS picks it, and the listener is dropped at once.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A free port `p` whose cluster bus port `p + 10000` is free too.
pub fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p <= u16::MAX - 10_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok()
        {
            return p;
        }
    }
}

/// A redis-server this test started; killed (SIGKILL, by PID) when dropped.
pub struct RedisServer {
    child: Option<std::process::Child>,
    args: Vec<String>,
    /// A Sentinel (started from a config file, without the data options).
    sentinel: bool,
    /// Where it is reachable, as a URL.
    pub url: String,
    /// Its working directory.
    pub dir: std::path::PathBuf,
}

impl RedisServer {
    /// Start `redis-server` with `args` (plus no persistence, in a fresh directory) and wait
    /// until `url` answers PING.
    pub async fn start(url: &str, args: &[&str]) -> RedisServer {
        let dir = std::env::temp_dir().join(namespace());
        std::fs::create_dir_all(&dir).expect("temp dir");
        let mut server = RedisServer {
            child: None,
            sentinel: false,
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            url: url.to_owned(),
            dir,
        };
        server.restart().await;
        server
    }

    /// Start `redis-server <conf> --sentinel` (the config file must be writable: the
    /// Sentinel rewrites it) and wait until `url` answers PING.
    pub async fn start_sentinel(url: &str, conf: &std::path::Path) -> RedisServer {
        let dir = conf.parent().expect("a directory").to_owned();
        let mut server = RedisServer {
            child: None,
            sentinel: true,
            args: vec![conf.display().to_string(), "--sentinel".to_owned()],
            url: url.to_owned(),
            dir,
        };
        server.restart().await;
        server
    }

    /// Start it again (after [`RedisServer::kill`]).
    pub async fn restart(&mut self) {
        self.restart_with(&[]).await;
    }

    /// Start it again with `extra` arguments added.
    pub async fn restart_with(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let mut cmd = std::process::Command::new("redis-server");
        cmd.args(&self.args).args(extra);
        if !self.sentinel {
            cmd.args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
                .arg("--dir")
                .arg(&self.dir);
        }
        let child = cmd
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server must be on PATH");
        self.child = Some(child);
        self.wait_ready().await;
    }

    async fn wait_ready(&self) {
        let what = format!("redis-server at {} to start", self.url);
        eventually(Duration::from_secs(10), &what, || self.ping()).await;
    }

    async fn ping(&self) -> bool {
        // A TLS server is up when its port accepts connections (the probe stays plain).
        if let Some(rest) = self.url.strip_prefix("rediss://") {
            let addr = rest.split(['/', '#']).next().unwrap_or(rest);
            return tokio::net::TcpStream::connect(addr).await.is_ok();
        }
        let Ok(client) = redis::Client::open(self.url.as_str()) else {
            return false;
        };
        let Ok(Ok(mut c)) = tokio::time::timeout(
            Duration::from_millis(500),
            client.get_multiplexed_async_connection(),
        )
        .await
        else {
            return false;
        };
        let pong: redis::RedisResult<String> = redis::cmd("PING").query_async(&mut c).await;
        pong.is_ok()
    }

    /// SIGKILL it by PID and wait for it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Wait (blocking) until `redis-cli -p port <args>` prints something containing `want`.
pub fn wait_cli(port: u16, args: &[&str], want: &str, limit: Duration) {
    let start = std::time::Instant::now();
    loop {
        let out = std::process::Command::new("redis-cli")
            .args(["-p", &port.to_string()])
            .args(args)
            .output()
            .expect("redis-cli must be on PATH");
        if String::from_utf8_lossy(&out.stdout).contains(want) {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "redis-cli -p {port} {args:?} did not show `{want}` within {limit:?}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `redis-cli -p port <args>`, its output (fails the test when redis-cli fails).
pub fn cli(port: u16, args: &[&str]) -> String {
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli must be on PATH");
    assert!(out.status.success(), "redis-cli -p {port} {args:?} failed");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `n` distinct free ports usable as cluster nodes (their bus ports are free too).
pub fn cluster_ports(n: usize) -> Vec<u16> {
    let mut ports = Vec::new();
    while ports.len() < n {
        let p = free_cluster_port();
        if !ports.contains(&p) {
            ports.push(p);
        }
    }
    ports
}

/// The arguments of a cluster node on `port`.
pub fn cluster_node_args(port: u16) -> Vec<String> {
    vec![
        "--port".to_owned(),
        port.to_string(),
        "--cluster-enabled".to_owned(),
        "yes".to_owned(),
        "--cluster-config-file".to_owned(),
        format!("nodes-{port}.conf"),
        "--cluster-node-timeout".to_owned(),
        "5000".to_owned(),
    ]
}

/// Join the nodes on `ports` into one cluster (slots split evenly, no replicas) and wait until
/// every node reports `cluster_state:ok`.
pub fn create_cluster(ports: &[u16]) {
    let mut create = std::process::Command::new("redis-cli");
    create.args(["--cluster", "create"]);
    for port in ports {
        create.arg(format!("127.0.0.1:{port}"));
    }
    let status = create
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(std::process::Stdio::null())
        .status()
        .expect("redis-cli must be on PATH");
    assert!(status.success(), "redis-cli --cluster create failed");
    for &port in ports {
        wait_cli(
            port,
            &["cluster", "info"],
            "cluster_state:ok",
            Duration::from_secs(30),
        );
    }
}

/// The URL of a cluster: every node, comma-separated.
pub fn cluster_url(ports: &[u16]) -> String {
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    format!("redis://{}", nodes.join(","))
}

/// A private 3-master Redis Cluster on free ports, killed when dropped.
pub struct Cluster {
    pub ports: Vec<u16>,
    pub url: String,
    pub servers: Vec<RedisServer>,
}

impl Cluster {
    pub async fn start() -> Cluster {
        let ports = cluster_ports(3);
        let mut servers = Vec::new();
        for &port in &ports {
            let args = cluster_node_args(port);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            servers.push(RedisServer::start(&format!("redis://127.0.0.1:{port}/"), &args).await);
        }
        create_cluster(&ports);
        Cluster {
            url: cluster_url(&ports),
            ports,
            servers,
        }
    }
}

/// One private 3-master cluster for the whole test binary, started on first use; its servers
/// are killed when the test process exits (a watchdog shell per server), even though this
/// value is never dropped. Returns its URL.
#[allow(clippy::zombie_processes)] // each watchdog shell outlives this process by design
pub fn shared_cluster() -> &'static str {
    static CLUSTER: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CLUSTER.get_or_init(|| {
        // Fail loudly (not with a timeout) when the binaries are missing.
        for bin in ["redis-server", "redis-cli"] {
            std::process::Command::new(bin)
                .arg("--version")
                .output()
                .unwrap_or_else(|e| panic!("{bin} must be on PATH: {e}"));
        }
        let ports = cluster_ports(3);
        let dir = std::env::temp_dir().join(namespace());
        std::fs::create_dir_all(&dir).expect("temp dir");
        for &port in &ports {
            let mut args = cluster_node_args(port);
            args.extend(
                ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"].map(str::to_owned),
            );
            args.push("--dir".to_owned());
            args.push(dir.display().to_string());
            // The shell's parent is this test process: once it is gone, the server goes too.
            std::process::Command::new("sh")
                .arg("-c")
                .arg(
                    r#"redis-server "$@" >/dev/null & r=$!
while kill -0 $PPID 2>/dev/null && kill -0 $r 2>/dev/null; do sleep 0.5; done
kill -9 $r 2>/dev/null"#,
                )
                .arg("sh")
                .args(&args)
                .spawn()
                .expect("sh");
            wait_cli(port, &["ping"], "PONG", Duration::from_secs(10));
        }
        create_cluster(&ports);
        cluster_url(&ports)
    })
}
