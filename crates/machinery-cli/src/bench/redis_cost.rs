//! What a bench cost the Redis server and this process: `INFO cpu` and `INFO commandstats`
//! read on a separate plain connection before and after the measured span, and this process's
//! CPU time. Printed beside `e2e`, `drain` and `ceiling` when the broker or the backend is a
//! single Redis node (`redis://`; TLS, Sentinel and Cluster are skipped).
//!
//! The server figures are the whole server's: other clients of a shared Redis add to them.
//! `INFO` itself (these probes, and any other client's) is left out of the command counts.
//! A script call (`EVAL`/`EVALSHA`/`FCALL`) is counted once as itself and every `redis.call()`
//! inside it counts again under its own name (Redis 7 counts them in commandstats), and the
//! script's usec includes those inner commands' usec: the command count per task is what
//! commandstats says, not the round trips.

use std::collections::BTreeMap;
use std::time::Duration;

use machinery::{Config, Error, Result};
use redis::aio::MultiplexedConnection;

/// How long a plain connection waits for a reply (the `redis` crate's default is 500 ms, too
/// short for a loaded 2-core machine).
pub(super) const RESPONSE_TIMEOUT: Duration = Duration::from_secs(15);

/// One commandstats entry.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct CmdStat {
    /// `calls=`
    pub(super) calls: u64,
    /// `usec=`
    pub(super) usec: u64,
}

/// Parse `INFO commandstats`: `cmdstat_<name>:calls=10,usec=20,usec_per_call=2.00,...` per
/// line (subcommands as `cmdstat_client|setname`). Other lines are ignored.
pub(super) fn parse_commandstats(info: &str) -> BTreeMap<String, CmdStat> {
    let mut out = BTreeMap::new();
    for line in info.lines() {
        let Some((name, fields)) = line
            .trim()
            .strip_prefix("cmdstat_")
            .and_then(|rest| rest.split_once(':'))
        else {
            continue;
        };
        let mut stat = CmdStat::default();
        for field in fields.split(',') {
            match field.split_once('=') {
                Some(("calls", v)) => stat.calls = v.parse().unwrap_or(0),
                Some(("usec", v)) => stat.usec = v.parse().unwrap_or(0),
                _ => {}
            }
        }
        out.insert(name.to_ascii_lowercase(), stat);
    }
    out
}

/// `used_cpu_sys + used_cpu_user` (seconds, the whole server process) from `INFO cpu`.
pub(super) fn parse_cpu(info: &str) -> Option<f64> {
    let mut sys = None;
    let mut user = None;
    for line in info.lines() {
        match line.trim().split_once(':') {
            Some(("used_cpu_sys", v)) => sys = v.trim().parse::<f64>().ok(),
            Some(("used_cpu_user", v)) => user = v.trim().parse::<f64>().ok(),
            _ => {}
        }
    }
    Some(sys? + user?)
}

/// This process's user + system CPU time, from `/proc/self/stat` (`utime` and `stime`: the
/// same accounting as `getrusage(RUSAGE_SELF)`, in clock ticks of 10 ms — the workspace
/// forbids the `unsafe` a direct `getrusage` call needs). `None` off Linux.
pub(super) fn process_cpu() -> Option<Duration> {
    parse_proc_stat(&std::fs::read_to_string("/proc/self/stat").ok()?)
}

/// `utime + stime` of a `/proc/<pid>/stat` line (fields 14 and 15, counted after the
/// parenthesised command name, which may contain spaces), at USER_HZ = 100.
pub(super) fn parse_proc_stat(stat: &str) -> Option<Duration> {
    let after_comm = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after_comm.split_whitespace().collect();
    // fields[0] is field 3 (state), so field k is fields[k - 3].
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(Duration::from_millis((utime + stime) * 10))
}

/// The URL of a plain connection to the single Redis node `url` names, or `None` when it is
/// not `redis://` or names a Cluster or Sentinels. Go's `redis://password@host` (a password
/// without a user) becomes `redis://:password@host`; the query and fragment are dropped.
pub(super) fn single_node_url(url: &str, config: &Config) -> Option<String> {
    if config.redis.cluster_mode || !config.redis.master_name.trim().is_empty() {
        return None;
    }
    let scheme = url.get(..8)?;
    if !scheme.eq_ignore_ascii_case("redis://") {
        return None;
    }
    let rest = &url[8..];
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if authority.contains(',') || tail.contains("master_name") {
        return None;
    }
    let path = &tail[..tail.find(['?', '#']).unwrap_or(tail.len())];
    let (userinfo, host) = machinery::url::split_userinfo(authority);
    if host.is_empty() {
        return None;
    }
    let authority = match userinfo {
        Some(u) if !u.is_empty() && !u.contains(':') => format!(":{u}@{host}"),
        Some(u) if !u.is_empty() => format!("{u}@{host}"),
        _ => host.to_owned(),
    };
    Some(format!("redis://{authority}{path}"))
}

/// The `host:port` part of a [`single_node_url`], to tell servers apart and name them.
fn server_name(url: &str) -> String {
    let rest = url.strip_prefix("redis://").unwrap_or(url);
    let authority = &rest[..rest.find('/').unwrap_or(rest.len())];
    machinery::url::split_userinfo(authority).1.to_owned()
}

/// A plain connection with a reply timeout that survives a busy machine.
pub(super) async fn connect(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url)
        .map_err(|e| Error::config_caused("broker", "not a usable redis:// URL", e))?;
    let config = redis::AsyncConnectionConfig::new().set_response_timeout(Some(RESPONSE_TIMEOUT));
    client
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .map_err(|e| Error::backend("redis", "cannot connect", true, e))
}

#[derive(Debug, Clone)]
struct Snapshot {
    cpu_secs: f64,
    commands: BTreeMap<String, CmdStat>,
}

async fn snapshot(con: &mut MultiplexedConnection) -> Result<Snapshot> {
    let cpu: String = redis::cmd("INFO")
        .arg("cpu")
        .query_async(con)
        .await
        .map_err(|e| Error::backend("redis", "INFO cpu", true, e))?;
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(con)
        .await
        .map_err(|e| Error::backend("redis", "INFO commandstats", true, e))?;
    Ok(Snapshot {
        cpu_secs: parse_cpu(&cpu)
            .ok_or_else(|| Error::decode("INFO cpu", "no used_cpu_sys / used_cpu_user"))?,
        commands: parse_commandstats(&stats),
    })
}

/// Commands run between two snapshots, INFO left out, most usec first.
pub(super) fn command_deltas(
    before: &BTreeMap<String, CmdStat>,
    after: &BTreeMap<String, CmdStat>,
) -> Vec<(String, CmdStat)> {
    let mut out: Vec<(String, CmdStat)> = after
        .iter()
        .filter(|(name, _)| name.as_str() != "info")
        .map(|(name, a)| {
            let b = before.get(name).copied().unwrap_or_default();
            (
                name.clone(),
                CmdStat {
                    calls: a.calls.saturating_sub(b.calls),
                    usec: a.usec.saturating_sub(b.usec),
                },
            )
        })
        .filter(|(_, d)| d.calls > 0)
        .collect();
    out.sort_by(|a, b| b.1.usec.cmp(&a.1.usec).then(b.1.calls.cmp(&a.1.calls)));
    out
}

struct Server {
    name: String,
    con: MultiplexedConnection,
    before: Snapshot,
}

/// Snapshots taken at the start of a measured span.
pub(super) struct Probe {
    servers: Vec<Server>,
    client_before: Option<Duration>,
}

/// What a span cost one server.
struct ServerCost {
    name: String,
    cpu_secs: f64,
    commands: Vec<(String, CmdStat)>,
}

/// What a span cost, ready to print.
pub(super) struct Cost {
    servers: Vec<ServerCost>,
    client: Option<Duration>,
}

impl Probe {
    /// Start measuring on the single Redis nodes among `urls` (each server once). A server
    /// that cannot be read is reported on stderr and skipped.
    pub(super) async fn start(urls: &[&str], config: &Config) -> Probe {
        let mut servers: Vec<Server> = Vec::new();
        for url in urls.iter().filter_map(|u| single_node_url(u, config)) {
            let name = server_name(&url);
            if servers.iter().any(|s| s.name == name) {
                continue;
            }
            let read = async {
                let mut con = connect(&url).await?;
                let before = snapshot(&mut con).await?;
                Ok::<_, Error>((con, before))
            };
            match read.await {
                Ok((con, before)) => servers.push(Server { name, con, before }),
                Err(e) => eprintln!("bench: no Redis cost figures for {name}: {e}"),
            }
        }
        Probe {
            servers,
            client_before: process_cpu(),
        }
    }

    /// End the span: read the servers again.
    pub(super) async fn finish(self) -> Cost {
        let client = self
            .client_before
            .zip(process_cpu())
            .map(|(b, a)| a.saturating_sub(b));
        let mut servers = Vec::new();
        for mut s in self.servers {
            match snapshot(&mut s.con).await {
                Ok(after) => servers.push(ServerCost {
                    name: s.name,
                    cpu_secs: (after.cpu_secs - s.before.cpu_secs).max(0.0),
                    commands: command_deltas(&s.before.commands, &after.commands),
                }),
                Err(e) => eprintln!("bench: no Redis cost figures for {}: {e}", s.name),
            }
        }
        Cost { servers, client }
    }
}

impl Cost {
    /// Print two lines per server for `n` tasks: the totals, then the top commands by usec.
    pub(super) fn print(&self, kind: &str, n: usize) {
        let n = n.max(1) as f64;
        let client = self.client.map_or_else(
            || "client CPU unknown".to_owned(),
            |c| {
                format!(
                    "client {:.1} µs CPU per task (this process, user+sys, 10 ms ticks)",
                    c.as_secs_f64() * 1e6 / n
                )
            },
        );
        for ServerCost {
            name,
            cpu_secs,
            commands,
        } in &self.servers
        {
            let calls: u64 = commands.iter().map(|(_, d)| d.calls).sum();
            println!(
                "{kind}: redis {name} (whole server, any other client included) {:.1} µs CPU per task (used_cpu_sys+used_cpu_user), {:.2} commands per task (commandstats calls without INFO; a script and each redis.call() inside it both count), {client}",
                cpu_secs * 1e6 / n,
                calls as f64 / n,
            );
            let top: Vec<String> = commands
                .iter()
                .take(8)
                .map(|(cmd, d)| {
                    format!(
                        "{cmd} {:.2} calls {:.2} µs",
                        d.calls as f64 / n,
                        d.usec as f64 / n
                    )
                })
                .collect();
            println!(
                "{kind}: redis {name} per task by command, most usec first (a script's usec includes its redis.call()s): {}",
                top.join(", ")
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commandstats_lines_are_parsed() {
        let info = "# Commandstats\r\n\
            cmdstat_set:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_client|setname:calls=3,usec=4,usec_per_call=1.33,rejected_calls=0,failed_calls=0\r\n\
            cmdstat_EVALSHA:calls=7,usec=700,usec_per_call=100.00\r\n\
            used_cpu_sys:1.5\r\n\
            \r\n";
        let stats = parse_commandstats(info);
        assert_eq!(stats.len(), 3);
        assert_eq!(
            stats["set"],
            CmdStat {
                calls: 10,
                usec: 20
            }
        );
        assert_eq!(stats["client|setname"].calls, 3);
        assert_eq!(stats["evalsha"].usec, 700);
    }

    #[test]
    fn cpu_is_sys_plus_user_of_the_server_only() {
        let info = "# CPU\r\nused_cpu_sys:1.250000\r\nused_cpu_user:2.500000\r\n\
            used_cpu_sys_children:9.0\r\nused_cpu_user_children:9.0\r\n\
            used_cpu_sys_main_thread:1.0\r\nused_cpu_user_main_thread:2.0\r\n";
        assert!((parse_cpu(info).unwrap() - 3.75).abs() < 1e-9);
        assert_eq!(parse_cpu("# CPU\r\nused_cpu_sys:1.0\r\n"), None);
    }

    #[test]
    fn deltas_leave_out_info_and_idle_commands_and_sort_by_usec() {
        let before = parse_commandstats(
            "cmdstat_set:calls=10,usec=20\ncmdstat_info:calls=5,usec=500\ncmdstat_get:calls=1,usec=1\n",
        );
        let after = parse_commandstats(
            "cmdstat_set:calls=30,usec=60\ncmdstat_info:calls=7,usec=900\ncmdstat_get:calls=1,usec=1\ncmdstat_lmove:calls=4,usec=100\n",
        );
        let d = command_deltas(&before, &after);
        let names: Vec<&str> = d.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["lmove", "set"]);
        assert_eq!(
            d[1].1,
            CmdStat {
                calls: 20,
                usec: 40
            }
        );
    }

    #[test]
    fn proc_stat_gives_utime_plus_stime() {
        // pid (comm with ") spaces") state ppid ... utime=250 stime=40 ...
        let line = "1234 (tokio (x) y) R 1 1234 1234 0 -1 4194304 100 0 0 0 250 40 0 0 20 0 9 0";
        assert_eq!(parse_proc_stat(line), Some(Duration::from_millis(2900)));
        assert_eq!(parse_proc_stat("garbage"), None);
    }

    #[test]
    fn only_single_redis_nodes_are_probed() {
        let c = Config::default();
        assert_eq!(
            single_node_url("redis://127.0.0.1:6379/7", &c).as_deref(),
            Some("redis://127.0.0.1:6379/7")
        );
        assert_eq!(
            single_node_url("redis://secret@host:6380/2?x=1", &c).as_deref(),
            Some("redis://:secret@host:6380/2")
        );
        assert_eq!(
            single_node_url("REDIS://u:p@host", &c).as_deref(),
            Some("redis://u:p@host")
        );
        assert_eq!(single_node_url("rediss://host", &c), None);
        assert_eq!(single_node_url("redis://a:1,b:2", &c), None);
        assert_eq!(single_node_url("redis://h:1/0?master_name=m", &c), None);
        assert_eq!(single_node_url("amqp://guest:guest@h/", &c), None);
        assert_eq!(single_node_url("memory://", &c), None);
        let mut cluster = Config::default();
        cluster.redis.cluster_mode = true;
        assert_eq!(single_node_url("redis://h:1", &cluster), None);
        assert_eq!(server_name("redis://:secret@host:6380/2"), "host:6380");
    }
}
