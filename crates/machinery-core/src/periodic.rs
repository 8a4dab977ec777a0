//! Periodic tasks: cron specs (5 fields, or `@hourly`-style descriptors, or `@every <d>`),
//! one send per tick across all servers thanks to the [`crate::Lock`].

use std::str::FromStr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::{debug, info, warn};

use crate::server::ServerInner;
use crate::workflow::{Chain, Chord, Group};
use crate::{Error, Result, Server, Signature};

/// When a periodic task fires.
#[derive(Debug, Clone)]
pub enum Schedule {
    /// A cron schedule.
    Cron(Box<cron::Schedule>),
    /// A fixed interval (`@every 10s`).
    Every(Duration),
}

impl Schedule {
    /// Parse a spec: 5-field cron (`*/5 * * * *`, `?` = `*`), a descriptor (`@yearly`,
    /// `@annually`, `@monthly`, `@weekly`, `@daily`, `@midnight`, `@hourly`) or
    /// `@every <duration>` with Go's units (`ns`, `us`, `ms`, `s`, `m`, `h`, combinable: `1h30m`).
    ///
    /// # Errors
    /// [`Error::Config`] naming the spec.
    pub fn parse(spec: &str) -> Result<Schedule> {
        let spec = spec.trim();
        let bad = |m: String| Error::config("periodic spec", format!("{spec:?}: {m}"));
        if let Some(d) = spec.strip_prefix("@every") {
            let d = parse_go_duration(d.trim()).map_err(bad)?;
            if d.is_zero() {
                return Err(bad("interval must be positive".to_owned()));
            }
            return Ok(Schedule::Every(d));
        }
        let six = match spec {
            "@yearly" | "@annually" => "0 0 0 1 1 *".to_owned(),
            "@monthly" => "0 0 0 1 * *".to_owned(),
            "@weekly" => "0 0 0 * * Sun".to_owned(),
            "@daily" | "@midnight" => "0 0 0 * * *".to_owned(),
            "@hourly" => "0 0 * * * *".to_owned(),
            s if s.starts_with('@') => return Err(bad("unknown descriptor".to_owned())),
            s => {
                let fields: Vec<&str> = s.split_whitespace().collect();
                if fields.len() != 5 {
                    return Err(bad(format!(
                        "expected 5 fields (minute hour day-of-month month day-of-week), got {}",
                        fields.len()
                    )));
                }
                // Go's cron: Sunday = 0 (or 7); the `cron` crate: 1 = Sunday. Convert
                // numeric days of week.
                let dow = convert_dow(fields[4]).map_err(bad)?;
                format!(
                    "0 {} {} {} {} {}",
                    fields[0], fields[1], fields[2], fields[3], dow
                )
                .replace('?', "*")
            }
        };
        cron::Schedule::from_str(&six)
            .map(|s| Schedule::Cron(Box::new(s)))
            .map_err(|e| bad(e.to_string()))
    }

    /// The first tick strictly after `after`.
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match self {
            Schedule::Cron(s) => s.after(&after).next(),
            Schedule::Every(d) => after.checked_add_signed(chrono::Duration::from_std(*d).ok()?),
        }
    }
}

fn convert_dow(field: &str) -> std::result::Result<String, String> {
    // Map 0-7 (0 and 7 = Sunday) to names so both conventions agree.
    const NAMES: [&str; 8] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    let mut out = String::new();
    let mut num = String::new();
    let flush = |num: &mut String,
                 out: &mut String,
                 after_slash: bool|
     -> std::result::Result<(), String> {
        if num.is_empty() {
            return Ok(());
        }
        if after_slash {
            out.push_str(num);
        } else {
            let n: usize = num
                .parse()
                .map_err(|_| format!("bad day of week {num:?}"))?;
            out.push_str(
                NAMES
                    .get(n)
                    .ok_or_else(|| format!("day of week {n} out of range 0-7"))?,
            );
        }
        num.clear();
        Ok(())
    };
    let mut after_slash = false;
    for c in field.chars() {
        if c.is_ascii_digit() {
            num.push(c);
        } else {
            flush(&mut num, &mut out, after_slash)?;
            after_slash = c == '/';
            out.push(c);
        }
    }
    flush(&mut num, &mut out, after_slash)?;
    Ok(out)
}

/// Parse Go's `time.ParseDuration` format (`300ms`, `1.5h`, `2h45m`).
fn parse_go_duration(s: &str) -> std::result::Result<Duration, String> {
    if s.is_empty() {
        return Err("missing duration".to_owned());
    }
    let mut total = 0f64;
    let mut rest = s;
    while !rest.is_empty() {
        let num_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("missing unit in {s:?}"))?;
        let value: f64 = rest[..num_end]
            .parse()
            .map_err(|_| format!("bad number in {s:?}"))?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            u => return Err(format!("unknown unit {u:?} in {s:?}")),
        };
        total += value * scale;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).map_err(|e| e.to_string())
}

/// What a periodic registration sends each tick.
#[derive(Debug, Clone)]
enum Periodic {
    Task(Signature),
    Group(Vec<Signature>, usize),
    Chain(Vec<Signature>),
    Chord(Vec<Signature>, Signature, usize),
}

fn fresh(sig: &Signature) -> Signature {
    let mut s = sig.clone();
    s.uuid = crate::new_task_uuid();
    s
}

impl Periodic {
    async fn send(&self, server: &Server) -> Result<()> {
        match self {
            Periodic::Task(sig) => {
                server.send_task(fresh(sig)).await?;
            }
            Periodic::Group(sigs, c) => {
                let group = Group::new(sigs.iter().map(fresh).collect());
                server.send_group(group, *c).await?;
            }
            Periodic::Chain(sigs) => {
                let chain = Chain::new(sigs.iter().map(fresh).collect())?;
                server.send_chain(chain).await?;
            }
            Periodic::Chord(sigs, cb, c) => {
                let group = Group::new(sigs.iter().map(fresh).collect());
                let mut cb = cb.clone();
                cb.uuid.clear();
                server.send_chord(Chord::new(group, cb), *c).await?;
            }
        }
        Ok(())
    }
}

/// Go's lock name: `machinery_lock_` + binary name + task name + spec.
fn lock_name(name: &str, spec: &str) -> String {
    let bin = std::env::args()
        .next()
        .and_then(|a| {
            std::path::Path::new(&a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    format!("machinery_lock_{bin}{name}{spec}")
}

impl Server {
    /// Send `sig` (with a fresh UUID) on every tick of `spec`. Only one server holding the
    /// same lock sends per tick. Runs until the last `Server` handle is dropped.
    /// Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// [`Error::Config`] when the spec does not parse.
    pub fn register_periodic_task(&self, spec: &str, name: &str, sig: Signature) -> Result<()> {
        self.spawn_periodic(spec, name, Periodic::Task(sig))
    }

    /// Send a group on every tick.
    ///
    /// # Errors
    /// [`Error::Config`] when the spec does not parse.
    pub fn register_periodic_group(
        &self,
        spec: &str,
        name: &str,
        send_concurrency: usize,
        sigs: Vec<Signature>,
    ) -> Result<()> {
        self.spawn_periodic(spec, name, Periodic::Group(sigs, send_concurrency))
    }

    /// Send a chain on every tick.
    ///
    /// # Errors
    /// [`Error::Config`] when the spec does not parse or the chain is empty.
    pub fn register_periodic_chain(
        &self,
        spec: &str,
        name: &str,
        sigs: Vec<Signature>,
    ) -> Result<()> {
        if sigs.is_empty() {
            return Err(Error::config("chain", "a chain needs at least one task"));
        }
        self.spawn_periodic(spec, name, Periodic::Chain(sigs))
    }

    /// Send a chord on every tick.
    ///
    /// # Errors
    /// [`Error::Config`] when the spec does not parse.
    pub fn register_periodic_chord(
        &self,
        spec: &str,
        name: &str,
        send_concurrency: usize,
        sigs: Vec<Signature>,
        callback: Signature,
    ) -> Result<()> {
        self.spawn_periodic(
            spec,
            name,
            Periodic::Chord(sigs, callback, send_concurrency),
        )
    }

    fn spawn_periodic(&self, spec: &str, name: &str, what: Periodic) -> Result<()> {
        let schedule = Schedule::parse(spec)?;
        let weak: Weak<ServerInner> = Arc::downgrade(&self.inner);
        let shutdown = self.inner.shutdown.clone();
        let key = lock_name(name, spec);
        let name = name.to_owned();
        info!(periodic = %name, spec, "periodic task registered");
        tokio::spawn(async move {
            loop {
                let now = Utc::now();
                let Some(tick) = schedule.next_after(now) else {
                    warn!(periodic = %name, "schedule has no further ticks");
                    return;
                };
                let wait = (tick - now).to_std().unwrap_or_default();
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
                let Some(inner) = weak.upgrade() else { return };
                let server = Server { inner };
                // Hold the lock until just before the following tick, as Go does.
                let until = schedule
                    .next_after(tick)
                    .and_then(|t| t.timestamp_nanos_opt())
                    .map_or(i64::MAX, |n| n - 1);
                let lock = Arc::clone(&*server.inner.lock.read().expect("lock poisoned"));
                match lock.try_lock(&key, until).await {
                    Ok(true) => {
                        if let Err(e) = what.send(&server).await {
                            warn!(periodic = %name, error = %e, "periodic send failed");
                        } else {
                            debug!(periodic = %name, "periodic task sent");
                        }
                    }
                    Ok(false) => debug!(periodic = %name, "another server sent this tick"),
                    Err(e) => warn!(periodic = %name, error = %e, "periodic lock failed"),
                }
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert!(
            matches!(Schedule::parse("@every 1h30m").unwrap(), Schedule::Every(d) if d == Duration::from_secs(5400))
        );
        assert!(
            matches!(Schedule::parse("@every 250ms").unwrap(), Schedule::Every(d) if d == Duration::from_millis(250))
        );
        // An interval past the calendar has no next tick instead of panicking.
        assert_eq!(
            Schedule::Every(Duration::from_secs(u64::MAX / 4)).next_after(Utc::now()),
            None
        );
        assert_eq!(
            Schedule::Every(Duration::from_secs(9_000_000_000_000)).next_after(Utc::now()),
            None
        );
        for s in [
            "*/5 * * * *",
            "0 12 * * 1-5",
            "0 0 1 * ?",
            "@hourly",
            "@daily",
            "@weekly",
            "30 2 * * 0",
            "0 0 * * 7",
        ] {
            Schedule::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        for s in [
            "* * * *",
            "@sometimes",
            "@every",
            "@every 5x",
            "61 * * * *",
            "* * * * 8",
        ] {
            let err = Schedule::parse(s).unwrap_err().to_string();
            assert!(err.contains("periodic spec"), "{s}: {err}");
        }
    }

    #[test]
    fn sunday_is_zero_as_in_go() {
        let s = Schedule::parse("0 0 * * 0").unwrap();
        // 2026-11-28 is a Saturday; the next Sunday midnight is 2026-11-29.
        let from = DateTime::parse_from_rfc3339("2026-11-28T12:00:00Z")
            .unwrap()
            .to_utc();
        let next = s.next_after(from).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-29T00:00:00+00:00");
        let hourly = Schedule::parse("@hourly").unwrap();
        assert_eq!(
            hourly.next_after(from).unwrap().to_rfc3339(),
            "2026-11-28T13:00:00+00:00"
        );
    }
}
