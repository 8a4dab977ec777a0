//! `amqps://` against a RabbitMQ node of this test with a TLS listener and a private CA
//! (needs MACHINERY_TEST_AMQP_URL set, `rabbitmq-server` and `openssl` on `PATH`; the node
//! listens on free ports the OS gives and is killed by its PID at the end; the machine's
//! RabbitMQ is not touched).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use futures::StreamExt;
use machinery_amqp::{AmqpBroker, AmqpConfig};
use machinery_core::{Broker, ConsumeOptions, Signature};

use machinery_testkit::servers::{RabbitNode as Node, find_tool, free_port};

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run a command");
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A private CA and a certificate for 127.0.0.1 / localhost signed by it.
fn make_certs(openssl: &Path, dir: &Path) {
    let p = |f: &str| dir.join(f);
    run(Command::new(openssl)
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        ])
        .args(["-subj", "/CN=machinery-test-ca", "-keyout"])
        .arg(p("ca.key"))
        .arg("-out")
        .arg(p("ca.pem")));
    run(Command::new(openssl)
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
    run(Command::new(openssl)
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

/// A task goes through `amqps://` when the private CA is trusted (`tls_ca_file`); without it
/// the connection is refused with an error, not a panic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqps_with_a_private_ca() {
    if machinery_testkit::env_url("MACHINERY_TEST_AMQP_URL").is_none() {
        return;
    }
    let Some(openssl) = find_tool("openssl") else {
        return;
    };
    let tls_port = free_port();
    let Some(node) = Node::start(
        "tls",
        &format!(
            "listeners.ssl.1 = 127.0.0.1:{tls_port}\n\
             ssl_options.cacertfile = {{dir}}/ca.pem\n\
             ssl_options.certfile = {{dir}}/server.pem\n\
             ssl_options.keyfile = {{dir}}/server.key\n\
             ssl_options.verify = verify_none\n\
             ssl_options.fail_if_no_peer_cert = false\n"
        ),
        |dir| make_certs(&openssl, dir),
    )
    .await
    else {
        return;
    };
    let start = Instant::now();
    while tokio::net::TcpStream::connect(("127.0.0.1", tls_port))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the TLS listener did not open"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let url = format!("amqps://guest:guest@127.0.0.1:{tls_port}/");
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
