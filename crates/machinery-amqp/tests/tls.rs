//! `amqps://` against a RabbitMQ node of this test with a TLS listener and a private CA
//! (needs MACHINERY_TEST_AMQP_URL set, `rabbitmq-server` and `openssl` installed; the node
//! listens on 127.0.0.1:5696 (TLS) / 5697 and is killed by its PID at the end; the machine's
//! RabbitMQ is not touched).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_amqp::{AmqpBroker, AmqpConfig};
use machinery_core::{Broker, ConsumeOptions, Signature};

const TLS_PORT: u16 = 5696;
const TCP_PORT: u16 = 5697;
const NODE: &str = "rabbit_amqptls@localhost";

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a certificate for 127.0.0.1 / localhost signed by it.
fn make_certs(dir: &Path) {
    let p = |f: &str| dir.join(f);
    run(Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=machinery-test-ca", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new("openssl")
        .args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
        ])
        .arg(p("server.key"))
        .arg("-out")
        .arg(p("server.csr")));
    std::fs::write(
        p("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write san.ext");
    run(Command::new("openssl")
        .args(["x509", "-req", "-days", "2", "-CAcreateserial", "-in"])
        .arg(p("server.csr"))
        .arg("-CA")
        .arg(p("ca.pem"))
        .arg("-CAkey")
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("server.pem"))
        .arg("-extfile")
        .arg(p("san.ext")));
}

/// The TLS node, killed by its PID when dropped.
struct TlsNode {
    dir: PathBuf,
}

impl TlsNode {
    async fn start() -> TlsNode {
        let dir = std::env::temp_dir().join(format!("machinery-amqp-tls-{TLS_PORT}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("node dir");
        make_certs(&dir);
        std::fs::write(
            dir.join("rabbitmq.conf"),
            format!(
                "listeners.tcp.local = 127.0.0.1:{TCP_PORT}\n\
                 listeners.ssl.1 = 127.0.0.1:{TLS_PORT}\n\
                 ssl_options.cacertfile = {d}/ca.pem\n\
                 ssl_options.certfile = {d}/server.pem\n\
                 ssl_options.keyfile = {d}/server.key\n\
                 ssl_options.verify = verify_none\n\
                 ssl_options.fail_if_no_peer_cert = false\n\
                 loopback_users = none\n",
                d = dir.display()
            ),
        )
        .expect("node config");
        let _ = Command::new("chown")
            .args(["-R", "rabbitmq:rabbitmq"])
            .arg(&dir)
            .status();
        let status = Command::new("rabbitmq-server")
            .arg("-detached")
            .env("RABBITMQ_NODENAME", NODE)
            .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
            .env("RABBITMQ_NODE_PORT", TCP_PORT.to_string())
            .env("RABBITMQ_DIST_PORT", (TCP_PORT + 20000).to_string())
            .env("RABBITMQ_CONFIG_FILE", dir.join("rabbitmq.conf"))
            .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
            .env("RABBITMQ_LOG_BASE", dir.join("log"))
            .env("RABBITMQ_PID_FILE", dir.join("pid"))
            .env("RABBITMQ_ENABLED_PLUGINS_FILE", dir.join("enabled_plugins"))
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .current_dir(std::env::temp_dir())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("run rabbitmq-server");
        assert!(status.success(), "rabbitmq-server -detached failed");
        let node = TlsNode { dir };
        let start = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", TLS_PORT))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "the TLS node did not start"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        node
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("pid")) {
            let _ = Command::new("kill").args(["-9", pid.trim()]).status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A task goes through `amqps://` when the private CA is trusted (`tls_ca_file`); without it
/// the connection is refused with an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca() {
    if machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL").is_none() {
        return;
    }
    for tool in ["/usr/sbin/rabbitmq-server", "/usr/bin/openssl"] {
        if !Path::new(tool).exists() {
            assert!(
                std::env::var("MACHINERY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{tool} is not installed but MACHINERY_REQUIRE_SERVICES=1"
            );
            println!("skipped: {tool} is not installed");
            return;
        }
    }
    let node = TlsNode::start().await;
    let url = format!("amqps://guest:guest@127.0.0.1:{TLS_PORT}/");
    let config = AmqpConfig {
        url: url.clone(),
        default_queue: "tls_tasks".into(),
        binding_key: "tls_tasks".into(),
        tls_ca_file: Some(node.dir.join("ca.pem")),
        ..AmqpConfig::default()
    };

    let untrusted = AmqpBroker::connect(AmqpConfig {
        tls_ca_file: None,
        ..config.clone()
    })
    .await;
    assert!(
        untrusted.is_err(),
        "a certificate of an unknown CA was accepted"
    );

    let broker = AmqpBroker::connect(config).await.expect("connect over TLS");
    let mut stream = broker
        .consume(
            "tls_tasks",
            ConsumeOptions {
                prefetch: 1,
                consumer_tag: "tls".into(),
            },
        )
        .await
        .expect("consume");
    let sig = Signature::new("over_tls").arg(1i64);
    broker.publish(&sig).await.expect("publish over TLS");
    let d = tokio::time::timeout(Duration::from_secs(10), stream.next())
        .await
        .expect("delivery")
        .expect("stream")
        .expect("delivery");
    assert_eq!(d.signature().expect("task").uuid, sig.uuid);
    d.ack().await.expect("ack");
    drop(stream);
    broker.close().await.expect("close");
    drop(node);
}
