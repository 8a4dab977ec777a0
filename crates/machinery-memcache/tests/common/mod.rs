//! Helpers shared by the memcache tests: the URL variable, raw protocol access and private
//! memcached processes on free ports.
#![allow(dead_code)] // each test file uses a part

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::Instant;

/// The variable that names the shared test memcached.
pub const URL_VAR: &str = "MACHINERY_TEST_MEMCACHE_URL";

/// `host:port` of the first server of a `memcache://` URL.
pub fn addr_of(url: &str) -> String {
    url.trim_start_matches("memcache://")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_owned()
}

pub use machinery_testkit::servers::free_port;

fn memcached_binary() -> PathBuf {
    for dir in std::env::var("PATH").unwrap_or_default().split(':').chain([
        "/usr/bin",
        "/usr/sbin",
        "/usr/local/bin",
    ]) {
        let p = PathBuf::from(dir).join("memcached");
        if p.is_file() {
            return p;
        }
    }
    panic!("memcached is not installed (bash scripts/services.sh start installs it)");
}

/// A memcached process of our own (for tests that kill or restart it), killed on drop.
pub struct OwnMemcached {
    pub port: u16,
    child: Option<Child>,
    args: Vec<String>,
    log: Option<PathBuf>,
}

impl OwnMemcached {
    /// Start one on a free port; `extra` are more memcached flags (e.g. `-I 2m`).
    pub async fn start(extra: &[&str]) -> Self {
        let port = free_port();
        let mut me = OwnMemcached {
            port,
            child: None,
            args: extra.iter().map(|s| (*s).to_owned()).collect(),
            log: None,
        };
        me.spawn().await;
        me
    }

    /// Start one with `-vv`, its log (every command line it receives) in `log`.
    pub async fn start_logged(log: PathBuf) -> Self {
        let mut me = OwnMemcached {
            port: free_port(),
            child: None,
            args: vec!["-vv".to_owned()],
            log: Some(log),
        };
        me.spawn().await;
        me
    }

    /// The command lines the server logged so far (`-vv`), without the connection prefix.
    pub fn logged_commands(&self) -> Vec<String> {
        let Some(log) = &self.log else {
            return Vec::new();
        };
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix('<'))
            .filter_map(|l| l.split_once(' ').map(|(_, c)| c.to_owned()))
            .collect()
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    async fn spawn(&mut self) {
        let mut cmd = Command::new(memcached_binary());
        cmd.args([
            "-l",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "0",
            "-m",
            "64",
        ])
        .args(&self.args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .kill_on_drop(true);
        match &self.log {
            Some(log) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(log)
                    .expect("open the memcached log");
                cmd.stderr(Stdio::from(file));
            }
            None => {
                cmd.stderr(Stdio::null());
            }
        }
        // memcached refuses to run as root without -u.
        if std::env::var("USER").as_deref() == Ok("root") || is_root() {
            cmd.args(["-u", "nobody"]);
        }
        self.child = Some(cmd.spawn().expect("spawn memcached"));
        wait_ready(&self.addr(), Duration::from_secs(20)).await;
    }

    /// Kill it (SIGKILL) and wait until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.expect("kill memcached");
        }
    }

    /// Start it again on the same port (empty, as after a real restart).
    pub async fn restart(&mut self) {
        self.kill().await;
        self.spawn().await;
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .map(|s| {
            s.lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Poll `version` until the server answers, up to `limit`.
pub async fn wait_ready(addr: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Ok(line)) =
            tokio::time::timeout(Duration::from_secs(1), command_line(addr, "version")).await
            && line.starts_with("VERSION")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "memcached on {addr} not ready within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn command_line(addr: &str, command: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(format!("{command}\r\n").as_bytes()).await?;
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).await?;
    Ok(line.trim_end().to_owned())
}

/// What the classic `gets <key>` protocol (Go's read) returns: flags, value, cas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub flags: u32,
    pub value: Vec<u8>,
}

/// `gets key` on `addr` with the classic text protocol, as gomemcache reads.
pub async fn gets(addr: &str, key: &str) -> Option<Item> {
    let s = TcpStream::connect(addr).await.expect("connect memcached");
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(format!("gets {key}\r\n").as_bytes())
        .await
        .expect("write gets");
    let mut line = String::new();
    r.read_line(&mut line).await.expect("read gets");
    if line.starts_with("END") {
        return None;
    }
    // VALUE <key> <flags> <bytes> <cas>
    let parts: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        parts.first(),
        Some(&"VALUE"),
        "unexpected gets answer {line:?}"
    );
    let flags: u32 = parts[2].parse().expect("flags");
    let len: usize = parts[3].parse().expect("bytes");
    let mut value = vec![0u8; len + 2];
    r.read_exact(&mut value).await.expect("read value");
    value.truncate(len);
    let mut end = String::new();
    r.read_line(&mut end).await.expect("read END");
    assert_eq!(end.trim_end(), "END");
    Some(Item { flags, value })
}

/// `set key flags exptime` with the classic protocol, as gomemcache writes.
pub async fn set(addr: &str, key: &str, flags: u32, exptime: i64, value: &[u8]) {
    let s = TcpStream::connect(addr).await.expect("connect memcached");
    let mut r = BufReader::new(s);
    let mut req = format!("set {key} {flags} {exptime} {}\r\n", value.len()).into_bytes();
    req.extend_from_slice(value);
    req.extend_from_slice(b"\r\n");
    r.get_mut().write_all(&req).await.expect("write set");
    let mut line = String::new();
    r.read_line(&mut line).await.expect("read set");
    assert_eq!(line.trim_end(), "STORED", "set {key}");
}

/// The seconds before `key` expires on `addr` (`mg <key> t`; -1 = never), or `None` when
/// it is missing. (`me` prints the value negated on memcached 1.6.18.)
pub async fn seconds_left(addr: &str, key: &str) -> Option<i64> {
    let line = command_line(addr, &format!("mg {key} t"))
        .await
        .expect("mg");
    if line.starts_with("EN") {
        return None;
    }
    line.split_whitespace()
        .skip(1)
        .find_map(|t| t.strip_prefix('t'))
        .and_then(|v| v.parse().ok())
}

/// Every key on a server (`lru_crawler metadump all`).
pub async fn all_keys(addr: &str) -> Vec<String> {
    let s = TcpStream::connect(addr).await.expect("connect memcached");
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"lru_crawler metadump all\r\n")
        .await
        .expect("write metadump");
    let mut keys = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.expect("read metadump") == 0 {
            break;
        }
        let line = line.trim_end();
        if line == "END" {
            break;
        }
        if line.starts_with("BUSY") {
            // Another crawl is running: try again.
            tokio::time::sleep(Duration::from_millis(50)).await;
            return Box::pin(all_keys(addr)).await;
        }
        if let Some(k) = line.strip_prefix("key=") {
            let k = k.split_whitespace().next().unwrap_or_default();
            keys.push(percent_decode(k));
        }
    }
    keys
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `flush_all` on a server of our own.
pub async fn flush_all(addr: &str) {
    let line = command_line(addr, "flush_all").await.expect("flush_all");
    assert_eq!(line, "OK", "flush_all on {addr}");
}

/// `stats` of a server: (name, value) pairs.
pub async fn stats(addr: &str) -> Vec<(String, String)> {
    let s = TcpStream::connect(addr).await.expect("connect memcached");
    let mut r = BufReader::new(s);
    r.get_mut()
        .write_all(b"stats\r\n")
        .await
        .expect("write stats");
    let mut out = Vec::new();
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).await.expect("read stats") == 0 {
            break;
        }
        let line = line.trim_end();
        if line == "END" {
            break;
        }
        let mut parts = line.splitn(3, ' ');
        if parts.next() == Some("STAT")
            && let (Some(k), Some(v)) = (parts.next(), parts.next())
        {
            out.push((k.to_owned(), v.to_owned()));
        }
    }
    out
}
