//! Servers of one test: free ports from the OS, tools found on `PATH`, and (feature
//! `rabbitmq`) a private RabbitMQ node. The machine's own servers are never touched.
//!
//! Shared by the driver crates' and the CLI's tests, so that every test that stops or
//! restarts a server does it the same way: on ports the OS gave, with the server's binary from
//! `PATH`, killed by its own PID.

use std::path::PathBuf;

/// `tool` on `PATH`, `None` when absent: the caller skips, except under
/// `MACHINERY_REQUIRE_SERVICES=1` (CI), where a missing tool fails the test.
///
/// # Panics
/// When the tool is missing and `MACHINERY_REQUIRE_SERVICES=1`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|dir| dir.join(tool))
        .find(|p| p.is_file());
    if found.is_none() {
        assert!(
            std::env::var("MACHINERY_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{tool} is not on PATH but MACHINERY_REQUIRE_SERVICES=1"
        );
        println!("skipped: {tool} is not on PATH");
    }
    found
}

/// A TCP port that was free a moment ago (bound on 127.0.0.1:0, read, released).
///
/// # Panics
/// When no port can be bound on 127.0.0.1.
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local addr").port()
}

#[cfg(feature = "rabbitmq")]
pub use rabbit::RabbitNode;

#[cfg(feature = "rabbitmq")]
mod rabbit {
    //! A RabbitMQ node of one test: its own ports, data directory and configuration,
    //! `rabbitmq-server` found on `PATH`, killed by its PID when dropped.

    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::{find_tool, free_port};

    /// A running private node (its name is `rabbit_<label>_<port>@localhost`).
    pub struct RabbitNode {
        /// The node's directory (configuration, data, logs, PID file).
        pub dir: PathBuf,
        /// The plain AMQP port.
        pub port: u16,
        server: PathBuf,
        dist_port: u16,
        name: String,
    }

    impl RabbitNode {
        /// Start a node whose `rabbitmq.conf` is `listeners.tcp.local = 127.0.0.1:<port>`,
        /// `loopback_users = none` and `extra` (which may name `{dir}`, the node's directory);
        /// `prepare` runs first in the directory (certificates...). `None` when `rabbitmq-server`
        /// is not on `PATH`.
        pub async fn start(
            label: &str,
            extra: &str,
            prepare: impl FnOnce(&Path),
        ) -> Option<RabbitNode> {
            let server = find_tool("rabbitmq-server")?;
            let port = free_port();
            let dir = std::env::temp_dir().join(format!("machinery-amqp-{label}-{port}"));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("node dir");
            prepare(&dir);
            std::fs::write(
                dir.join("rabbitmq.conf"),
                format!(
                    "listeners.tcp.local = 127.0.0.1:{port}\nloopback_users = none\n{}",
                    extra.replace("{dir}", &dir.display().to_string())
                ),
            )
            .expect("node config");
            // The Debian wrapper runs the node as user rabbitmq.
            let _ = Command::new("chown")
                .args(["-R", "rabbitmq:rabbitmq"])
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let node = RabbitNode {
                dir,
                port,
                server,
                dist_port: free_port(),
                name: format!("rabbit_{label}_{port}@localhost"),
            };
            node.launch().await;
            Some(node)
        }

        fn pid(&self) -> Option<String> {
            std::fs::read_to_string(self.dir.join("pid"))
                .ok()
                .map(|s| s.trim().to_owned())
                .filter(|s| !s.is_empty())
        }

        /// Start the node (again, on the same ports and data) and wait until it accepts AMQP.
        pub async fn launch(&self) {
            let _ = std::fs::remove_file(self.dir.join("pid"));
            let status = Command::new(&self.server)
                .arg("-detached")
                .env("RABBITMQ_NODENAME", &self.name)
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", self.port.to_string())
                .env("RABBITMQ_DIST_PORT", self.dist_port.to_string())
                .env("RABBITMQ_CONFIG_FILE", self.dir.join("rabbitmq.conf"))
                .env("RABBITMQ_MNESIA_BASE", self.dir.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", self.dir.join("log"))
                .env("RABBITMQ_PID_FILE", self.dir.join("pid"))
                .env(
                    "RABBITMQ_ENABLED_PLUGINS_FILE",
                    self.dir.join("enabled_plugins"),
                )
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .current_dir(std::env::temp_dir())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("run rabbitmq-server");
            assert!(status.success(), "rabbitmq-server -detached failed");
            let start = Instant::now();
            loop {
                if self.pid().is_some() && amqp_ready(self.port).await {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(120),
                    "the private RabbitMQ node did not start (logs in {})",
                    self.dir.display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }

        /// Kill the node (SIGKILL, by its PID).
        pub fn kill(&self) {
            if let Some(pid) = self.pid() {
                let _ = Command::new("kill").args(["-9", &pid]).status();
                let _ = std::fs::remove_file(self.dir.join("pid"));
            }
        }

        /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
        pub fn url(&self) -> String {
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
        }
    }

    impl Drop for RabbitNode {
        fn drop(&mut self) {
            self.kill();
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Whether the node completes an AMQP connection (the listener opens before the default
    /// vhost is ready).
    async fn amqp_ready(port: u16) -> bool {
        let url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        match tokio::time::timeout(
            Duration::from_secs(5),
            lapin::Connection::connect(&url, lapin::ConnectionProperties::default()),
        )
        .await
        {
            Ok(Ok(conn)) => {
                let _ = conn.close(200, "ready".into()).await;
                true
            }
            _ => false,
        }
    }
}
