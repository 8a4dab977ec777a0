//! `MongoConfig`: the URL, Go's database setting and the client's tuning knobs.

use std::fmt;
use std::time::Duration;

use machinery_core::{Error, Result, redact_url};
use serde::Deserialize;

/// Configuration of the MongoDB result backend.
///
/// `database` and `results_expire_in` are Go Machinery's settings (`mongodb.database`,
/// `results_expire_in`); the others are machinery-rs additions. `Debug` never shows a
/// password.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct MongoConfig {
    /// Server URL: `mongodb://[user:password@]host[:port][,host...][/authdb][?options]` or
    /// `mongodb+srv://...`. Pool size, TLS, replica set, read / write concern and the rest
    /// come from the URL's options, as MongoDB's own drivers read them. Default
    /// `mongodb://127.0.0.1:27017`.
    pub url: String,
    /// Database holding the `tasks` and `group_metas` collections (Go's `mongodb.database`).
    /// As in Go, the URL's path names only the authentication database. Default `machinery`.
    pub database: String,
    /// Seconds a finished task state (and a group meta) is kept: `delete_at` = now + this.
    /// `0` means 3600 here; Go writes `delete_at` = now + 0, so its TTL monitor deletes a
    /// state as soon as it runs. Default 3600.
    pub results_expire_in: i64,
    /// Milliseconds an operation waits for a usable server before it fails with a temporary
    /// error (the driver's `serverSelectionTimeoutMS`; MongoDB's default is 30 000, which is
    /// how long a call blocks while the server is down). A `serverSelectionTimeoutMS` in the
    /// URL wins. Default 10 000.
    pub server_selection_timeout_ms: u64,
    /// Milliseconds allowed to open a connection (`connectTimeoutMS`; the URL's wins).
    /// Default 5000.
    pub connect_timeout_ms: u64,
}

impl Default for MongoConfig {
    fn default() -> Self {
        MongoConfig {
            url: "mongodb://127.0.0.1:27017".to_owned(),
            database: DEFAULT_DATABASE.to_owned(),
            results_expire_in: 3600,
            server_selection_timeout_ms: 10_000,
            connect_timeout_ms: 5000,
        }
    }
}

/// Go's database name when `mongodb.database` is empty.
pub(crate) const DEFAULT_DATABASE: &str = "machinery";

impl fmt::Debug for MongoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MongoConfig")
            .field("url", &self.redacted_url())
            .field("database", &self.database)
            .field("results_expire_in", &self.results_expire_in)
            .field(
                "server_selection_timeout_ms",
                &self.server_selection_timeout_ms,
            )
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .finish()
    }
}

impl MongoConfig {
    /// The defaults with this URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        MongoConfig {
            url: url.into(),
            ..MongoConfig::default()
        }
    }

    /// The settings a `machinery_core::Config` (Go's configuration names) gives for `url`:
    /// `results_expire_in` and `mongodb.database` (empty keeps `machinery`).
    pub fn from_machinery(url: &str, config: &machinery_core::Config) -> Self {
        let database = config.mongodb.database.trim();
        MongoConfig {
            url: url.to_owned(),
            database: if database.is_empty() {
                DEFAULT_DATABASE.to_owned()
            } else {
                database.to_owned()
            },
            results_expire_in: config.results_expire_in,
            ..MongoConfig::default()
        }
    }

    /// The URL with any password replaced by `***`, for logs and error messages.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    /// Check the settings that can be checked without connecting (the URL itself is parsed
    /// by the client at connect time).
    ///
    /// # Errors
    /// [`Error::Config`] naming the offending setting.
    pub fn validate(&self) -> Result<()> {
        let url = self.url.trim();
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("mongodb" | "mongodb+srv")) {
            return Err(Error::config(
                "result_backend",
                format!(
                    "`{}` is not a MongoDB URL (expected mongodb:// or mongodb+srv://)",
                    self.redacted_url()
                ),
            ));
        }
        validate_database(&self.database)?;
        if self.results_expire_in < 0 {
            return Err(Error::config(
                "results_expire_in",
                format!("must be >= 0, got {}", self.results_expire_in),
            ));
        }
        Ok(())
    }

    /// Seconds until a finished state expires (0 means 3600).
    pub(crate) fn results_ttl(&self) -> Duration {
        machinery_core::results_ttl(self.results_expire_in)
    }

    pub(crate) fn server_selection_timeout(&self) -> Duration {
        Duration::from_millis(self.server_selection_timeout_ms.max(100))
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(100))
    }
}

/// MongoDB's rules for database names: not empty, under 64 bytes, none of `/\. "$*<>:|?`
/// and no NUL.
fn validate_database(name: &str) -> Result<()> {
    let bad = |why: String| Err(Error::config("mongodb.database", why));
    if name.is_empty() {
        return bad("must not be empty".to_owned());
    }
    if name.len() >= 64 {
        return bad(format!("`{name}` is {} bytes, over 63", name.len()));
    }
    if let Some(c) = name.chars().find(|c| {
        matches!(
            c,
            '/' | '\\' | '.' | ' ' | '"' | '$' | '*' | '<' | '>' | ':' | '|' | '?' | '\0'
        )
    }) {
        return bad(format!(
            "`{name}` contains `{c}`, which MongoDB does not allow"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let c = MongoConfig::from_url("mongodb://user:s3cret@db.example:27017/admin");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("user:***@db.example"), "{shown}");
    }

    #[test]
    fn from_machinery_takes_gos_database_and_expiry() {
        let mut core = machinery_core::Config {
            results_expire_in: 42,
            ..machinery_core::Config::default()
        };
        core.mongodb.database = "jobs".to_owned();
        let c = MongoConfig::from_machinery("mongodb://h/", &core);
        assert_eq!(c.database, "jobs");
        assert_eq!(c.results_expire_in, 42);
        core.mongodb.database = String::new();
        let c = MongoConfig::from_machinery("mongodb://h/", &core);
        assert_eq!(c.database, "machinery");
    }

    #[test]
    fn zero_expiry_means_an_hour() {
        let c = MongoConfig {
            results_expire_in: 0,
            ..MongoConfig::default()
        };
        assert_eq!(c.results_ttl(), Duration::from_secs(3600));
    }

    #[test]
    fn validate_names_the_bad_setting() {
        let err = MongoConfig::from_url("redis://h").validate().unwrap_err();
        assert!(err.to_string().contains("not a MongoDB URL"), "{err}");
        let err = MongoConfig {
            database: "a.b".to_owned(),
            ..MongoConfig::default()
        }
        .validate()
        .unwrap_err();
        assert!(err.to_string().contains("mongodb.database"), "{err}");
        MongoConfig::from_url("mongodb+srv://u:p@cluster0.example/")
            .validate()
            .expect("an srv url is fine");
    }
}
