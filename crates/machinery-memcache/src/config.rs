//! `MemcacheConfig`: the server list and the tuning knobs of the backend.

use std::fmt;
use std::time::Duration;

use machinery_core::{Error, Result};

/// The port used when a server in the URL has none (memcached's default).
pub const DEFAULT_PORT: u16 = 11211;

/// Configuration of [`MemcacheBackend`](crate::MemcacheBackend).
///
/// Go Machinery has no `memcache` section: only the URL (`ResultBackend`) and
/// `results_expire_in` come from Go's configuration; the rest are machinery-rs additions.
/// memcached has no authentication in the text protocol, so there is nothing secret to hide:
/// `Debug` shows the URL as written.
#[derive(Clone, PartialEq, Eq)]
pub struct MemcacheConfig {
    /// `memcache://host1:port1[,host2:port2...]` (Go's form; the port defaults to 11211).
    /// Keys are spread over the servers as Go's client spreads them, in this order.
    pub url: String,
    /// Seconds a task state or group meta is kept (`0` = 3600, as in Go). Sent as an absolute
    /// Unix time (now + this), as Go does. Default 3600.
    pub results_expire_in: i64,
    /// Time allowed to open a connection to one server. Default 1 s.
    pub connect_timeout: Duration,
    /// Time allowed for one request (or one pipelined batch) and its reply. Default 5 s.
    pub io_timeout: Duration,
    /// How long one operation keeps retrying a server it cannot reach (refused, reset, timed
    /// out before the request was written) before it fails, naming the server. The pause
    /// between attempts starts at 50 ms and doubles up to 1 s. Default 5 s.
    pub reconnect_for: Duration,
    /// Idle connections kept per server. Default 64.
    pub max_idle: usize,
    /// How many times a read-check-and-set (`gets` + `cas`) is tried when other writers keep
    /// changing the item in between. Default 64.
    pub cas_attempts: u32,
    /// How long a caller that finds another caller counting the same group member waits for
    /// it before taking over (a crashed caller must not block the group). Default 5 s.
    pub member_claim_wait: Duration,
}

impl Default for MemcacheConfig {
    fn default() -> Self {
        MemcacheConfig {
            url: format!("memcache://127.0.0.1:{DEFAULT_PORT}"),
            results_expire_in: 3600,
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(5),
            reconnect_for: Duration::from_secs(5),
            max_idle: 64,
            cas_attempts: 64,
            member_claim_wait: Duration::from_secs(5),
        }
    }
}

impl fmt::Debug for MemcacheConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemcacheConfig")
            .field("url", &self.url)
            .field("results_expire_in", &self.results_expire_in)
            .field("connect_timeout", &self.connect_timeout)
            .field("io_timeout", &self.io_timeout)
            .field("reconnect_for", &self.reconnect_for)
            .field("max_idle", &self.max_idle)
            .field("cas_attempts", &self.cas_attempts)
            .field("member_claim_wait", &self.member_claim_wait)
            .finish()
    }
}

impl MemcacheConfig {
    /// The defaults with this URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        MemcacheConfig {
            url: url.into(),
            ..MemcacheConfig::default()
        }
    }

    /// The settings a `machinery_core::Config` (Go's names) gives for `url`:
    /// `results_expire_in`; everything else keeps this crate's defaults.
    pub fn from_machinery(url: &str, config: &machinery_core::Config) -> Self {
        MemcacheConfig {
            url: url.to_owned(),
            results_expire_in: config.results_expire_in,
            ..MemcacheConfig::default()
        }
    }

    /// Seconds until a written entry expires (`results_expire_in`, 0 or less = 3600).
    pub fn results_ttl_secs(&self) -> u64 {
        machinery_core::results_ttl(self.results_expire_in).as_secs()
    }

    /// The servers of the URL as `host:port`, in URL order (Go's order for the key spread).
    ///
    /// # Errors
    /// [`Error::Config`] (key `result_backend`) when the URL is not
    /// `memcache://host[:port][,host[:port]...]`.
    pub fn servers(&self) -> Result<Vec<String>> {
        parse_servers(&self.url)
    }
}

fn bad(url: &str, why: impl fmt::Display) -> Error {
    Error::config(
        "result_backend",
        format!("`{url}` is not memcache://host:port[,host:port...]: {why}"),
    )
}

fn parse_servers(url: &str) -> Result<Vec<String>> {
    let rest = url
        .strip_prefix("memcache://")
        .ok_or_else(|| bad(url, "the scheme must be memcache://"))?;
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad(
            url,
            "a path, query, fragment or user name has no meaning here",
        ));
    }
    let mut servers = Vec::new();
    for part in rest.split(',') {
        let part = part.trim();
        if part.is_empty() {
            return Err(bad(url, "empty server in the list"));
        }
        let (host, port) = split_host_port(part).map_err(|why| bad(url, why))?;
        servers.push(if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        });
    }
    Ok(servers)
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
fn split_host_port(s: &str) -> std::result::Result<(&str, u16), String> {
    let (host, port) = if let Some(v6) = s.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: unclosed ["))?;
        match after {
            "" => (host, None),
            p => (
                host,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("`{s}`: junk after ]"))?,
                ),
            ),
        }
    } else {
        match s.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err(format!("`{s}`: empty host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(p) => p
            .parse::<u16>()
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| format!("`{s}`: bad port `{p}`"))?,
    };
    Ok((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_url_forms() {
        let servers = |u: &str| MemcacheConfig::from_url(u).servers().unwrap();
        assert_eq!(servers("memcache://127.0.0.1:11211"), ["127.0.0.1:11211"]);
        assert_eq!(
            servers("memcache://10.0.0.1:11311,10.0.0.2:11312,cache:11313"),
            ["10.0.0.1:11311", "10.0.0.2:11312", "cache:11313"]
        );
        assert_eq!(servers("memcache://cache"), ["cache:11211"]);
        assert_eq!(
            servers("memcache://[::1]:5,[::1]"),
            ["[::1]:5", "[::1]:11211"]
        );
    }

    #[test]
    fn bad_urls_name_the_setting() {
        for url in [
            "redis://127.0.0.1:6379",
            "memcache://",
            "memcache://a:1,,b:2",
            "memcache://a:x",
            "memcache://a:0",
            "memcache://a:1/db",
            "memcache://user@a:1",
            "memcache://[::1",
        ] {
            let err = MemcacheConfig::from_url(url).servers().unwrap_err();
            let text = err.to_string();
            assert!(text.contains("result_backend"), "{url}: {text}");
        }
    }

    #[test]
    fn expiry_zero_means_an_hour() {
        let mut c = MemcacheConfig::from_url("memcache://a");
        c.results_expire_in = 0;
        assert_eq!(c.results_ttl_secs(), 3600);
        c.results_expire_in = 60;
        assert_eq!(c.results_ttl_secs(), 60);
    }

    #[test]
    fn from_machinery_takes_the_expiry() {
        let config = machinery_core::Config {
            results_expire_in: 42,
            ..machinery_core::Config::default()
        };
        let c = MemcacheConfig::from_machinery("memcache://a:1", &config);
        assert_eq!(c.results_expire_in, 42);
        assert_eq!(c.url, "memcache://a:1");
    }
}
