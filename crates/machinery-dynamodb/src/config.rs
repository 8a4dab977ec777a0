//! `DynamoConfig`: where the tables are and how to reach them.

use std::fmt;
use std::time::Duration;

use machinery_core::url::{parse_userinfo, redact_secret, redact_url, split_userinfo};
use machinery_core::{Error, Result};
use serde::Deserialize;

/// Configuration of the DynamoDB result backend.
///
/// Field names follow Go Machinery's YAML names where Go has the setting
/// (`dynamodb.task_states_table`, `dynamodb.group_metas_table`, `results_expire_in`); the
/// others are machinery-rs additions. `Debug` never shows the secret key.
#[derive(Clone, Deserialize)]
#[serde(default)]
pub struct DynamoConfig {
    /// The backend URL: Go's `https://dynamodb.<region>.amazonaws.com`, `dynamodb://[region]`,
    /// or `dynamodb+http://host:port` / `dynamodb+https://host:port` for a local server
    /// (moto, DynamoDB Local, LocalStack). Each form takes `?region=<region>` and
    /// `access_key:secret@` credentials. Default `dynamodb://`.
    pub url: String,
    /// Table of task states (hash key `TaskUUID`, S). Default `task_states`.
    pub task_states_table: String,
    /// Table of group metas (hash key `GroupUUID`, S). Default `group_metas`.
    pub group_metas_table: String,
    /// Seconds a final state or a group meta is kept (`0` = 3600, as in Go). Default 3600.
    pub results_expire_in: i64,
    /// Create missing tables at connect (pay-per-request, TTL enabled on `TTL`). Meant for
    /// development; Go never creates tables. Default false.
    pub create_tables: bool,
    /// Region; overrides the URL's. Default: the URL's, else the AWS environment's
    /// (`AWS_REGION`, profile), else `us-east-1`.
    pub region: Option<String>,
    /// Endpoint URL; overrides the URL's. Default: the URL's for `dynamodb+http(s)://`, else
    /// the AWS SDK's (which honours `AWS_ENDPOINT_URL_DYNAMODB` / `AWS_ENDPOINT_URL`).
    pub endpoint: Option<String>,
    /// Access key id; with `secret_access_key` replaces the AWS credential chain.
    pub access_key_id: Option<String>,
    /// Secret access key (never shown by `Debug`).
    pub secret_access_key: Option<String>,
    /// Attempts per request, the first included, for throttling and transient errors
    /// (exponential back-off with jitter, by the AWS SDK). Default 5.
    pub max_attempts: u32,
    /// Milliseconds allowed to open a connection. Default 3000.
    pub connect_timeout_ms: u64,
    /// Milliseconds allowed for one attempt of one request. Default 10 000.
    pub request_timeout_ms: u64,
    /// Rounds of `BatchGetItem` for keys DynamoDB returned as unprocessed before giving up
    /// with a temporary error (back-off 50 ms doubling, at most 2 s). Default 8.
    pub batch_get_rounds: u32,
}

impl Default for DynamoConfig {
    fn default() -> Self {
        DynamoConfig {
            url: "dynamodb://".to_owned(),
            task_states_table: "task_states".to_owned(),
            group_metas_table: "group_metas".to_owned(),
            results_expire_in: 3600,
            create_tables: false,
            region: None,
            endpoint: None,
            access_key_id: None,
            secret_access_key: None,
            max_attempts: 5,
            connect_timeout_ms: 3000,
            request_timeout_ms: 10_000,
            batch_get_rounds: 8,
        }
    }
}

impl fmt::Debug for DynamoConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoConfig")
            .field("url", &self.redacted_url())
            .field("task_states_table", &self.task_states_table)
            .field("group_metas_table", &self.group_metas_table)
            .field("results_expire_in", &self.results_expire_in)
            .field("create_tables", &self.create_tables)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &redact_secret(self.secret_access_key.as_ref()),
            )
            .field("max_attempts", &self.max_attempts)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("batch_get_rounds", &self.batch_get_rounds)
            .finish()
    }
}

/// What a URL says: region, endpoint and credentials, each optional.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Target {
    pub region: Option<String>,
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
}

impl DynamoConfig {
    /// The defaults with `url`.
    pub fn from_url(url: impl Into<String>) -> Self {
        DynamoConfig {
            url: url.into(),
            ..DynamoConfig::default()
        }
    }

    /// From a machinery [`Config`](machinery_core::Config) with Go's names: the tables from
    /// `dynamodb.task_states_table` / `dynamodb.group_metas_table` (env `TASK_STATES_TABLE`,
    /// `GROUP_METAS_TABLE`), `dynamodb.create_tables`, and `results_expire_in`.
    pub fn from_machinery(url: &str, config: &machinery_core::Config) -> Self {
        DynamoConfig {
            url: url.to_owned(),
            task_states_table: config.dynamodb.task_states_table.clone(),
            group_metas_table: config.dynamodb.group_metas_table.clone(),
            create_tables: config.dynamodb.create_tables,
            results_expire_in: config.results_expire_in,
            ..DynamoConfig::default()
        }
    }

    /// Seconds a final state or group meta lives (`results_expire_in`, 0 = 3600).
    pub fn results_ttl_secs(&self) -> u64 {
        machinery_core::results_ttl(self.results_expire_in).as_secs()
    }

    /// The URL with any secret key replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }

    pub(crate) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms.max(1))
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms.max(1))
    }

    /// Check the settings and resolve the URL with the explicit fields on top.
    pub(crate) fn target(&self) -> Result<Target> {
        for (key, table) in [
            ("dynamodb.task_states_table", &self.task_states_table),
            ("dynamodb.group_metas_table", &self.group_metas_table),
        ] {
            check_table_name(key, table)?;
        }
        if self.task_states_table == self.group_metas_table {
            return Err(Error::config(
                "dynamodb.group_metas_table",
                format!(
                    "must differ from dynamodb.task_states_table (both are `{}`)",
                    self.task_states_table
                ),
            ));
        }
        if self.results_expire_in < 0 {
            return Err(Error::config("results_expire_in", "must be >= 0"));
        }
        let mut t = parse_url(&self.url)?;
        if let Some(r) = &self.region {
            t.region = Some(r.clone());
        }
        if let Some(e) = &self.endpoint {
            t.endpoint = Some(e.clone());
        }
        if let Some(k) = &self.access_key_id {
            t.access_key_id = Some(k.clone());
        }
        if let Some(s) = &self.secret_access_key {
            t.secret_access_key = Some(s.clone());
        }
        if t.access_key_id.is_some() != t.secret_access_key.is_some() {
            return Err(Error::config(
                "url",
                "give both an access key id and a secret access key, or neither",
            ));
        }
        Ok(t)
    }
}

fn check_table_name(key: &str, name: &str) -> Result<()> {
    let ok_len = (3..=255).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if ok_len && ok_chars {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!(
                "`{name}` is not a DynamoDB table name (3 to 255 characters of a-z A-Z 0-9 _ - .)"
            ),
        ))
    }
}

fn bad_url(message: impl Into<String>) -> Error {
    Error::config("url", message.into())
}

/// Parse the URL forms listed on [`DynamoConfig::url`].
pub(crate) fn parse_url(url: &str) -> Result<Target> {
    let url = url.trim();
    let (scheme, rest) = url.split_once("://").ok_or_else(|| {
        bad_url(format!(
            "`{}` is not a DynamoDB URL (expected https://dynamodb.<region>.amazonaws.com, dynamodb://[region] or dynamodb+http://host:port)",
            redact_url(url)
        ))
    })?;
    let (rest, query) = match rest.split_once('?') {
        Some((r, q)) => (r, Some(q)),
        None => (rest, None),
    };
    let (authority, _path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    let (userinfo, host) = split_userinfo(authority);
    let mut t = Target::default();
    if let Some(info) = userinfo {
        let c = parse_userinfo(info)?;
        match c.password {
            Some(secret) if !c.user.is_empty() && !secret.is_empty() => {
                t.access_key_id = Some(c.user);
                t.secret_access_key = Some(secret);
            }
            _ => return Err(bad_url("credentials in the URL must be access_key:secret")),
        }
    }
    match scheme.to_ascii_lowercase().as_str() {
        "https" | "http" => {
            let name = host
                .split(':')
                .next()
                .unwrap_or_default()
                .to_ascii_lowercase();
            if !name.starts_with("dynamodb") {
                return Err(bad_url(format!(
                    "`{}` does not name DynamoDB (Go's form is https://dynamodb.<region>.amazonaws.com)",
                    redact_url(url)
                )));
            }
            let labels: Vec<&str> = name.split('.').collect();
            let aws = name.ends_with(".amazonaws.com") || name.ends_with(".amazonaws.com.cn");
            if aws && labels.len() >= 4 {
                t.region = Some(labels[1].to_owned());
            } else {
                t.endpoint = Some(format!("{scheme}://{host}"));
            }
        }
        "dynamodb" => {
            if !host.is_empty() {
                t.region = Some(host.to_owned());
            }
        }
        "dynamodb+http" | "dynamodb+https" => {
            if host.is_empty() {
                return Err(bad_url("missing host:port of the DynamoDB endpoint"));
            }
            let proto = &scheme["dynamodb+".len()..];
            t.endpoint = Some(format!("{proto}://{host}"));
        }
        other => {
            return Err(bad_url(format!(
                "scheme `{other}` is not DynamoDB's (expected https://dynamodb..., dynamodb:// or dynamodb+http://)"
            )));
        }
    }
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "region" if !v.is_empty() => t.region = Some(v.to_owned()),
            _ => {
                return Err(bad_url(format!(
                    "unknown URL parameter `{k}` (only region=<region> is understood)"
                )));
            }
        }
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_form_gives_the_region() {
        let t = parse_url("https://dynamodb.eu-west-1.amazonaws.com").unwrap();
        assert_eq!(t.region.as_deref(), Some("eu-west-1"));
        assert_eq!(t.endpoint, None);
        let t = parse_url("https://dynamodb.us-east-1.amazonaws.com/").unwrap();
        assert_eq!(t.region.as_deref(), Some("us-east-1"));
    }

    #[test]
    fn other_https_hosts_are_endpoints() {
        let t = parse_url("https://dynamodb-local:8000").unwrap();
        assert_eq!(t.endpoint.as_deref(), Some("https://dynamodb-local:8000"));
        assert!(parse_url("https://example.com").is_err());
    }

    #[test]
    fn local_endpoint_forms() {
        let t = parse_url("dynamodb+http://test:s%40cret@127.0.0.1:4566?region=eu-west-2").unwrap();
        assert_eq!(t.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(t.region.as_deref(), Some("eu-west-2"));
        assert_eq!(t.access_key_id.as_deref(), Some("test"));
        assert_eq!(t.secret_access_key.as_deref(), Some("s@cret"));
        let t = parse_url("dynamodb+https://h:1").unwrap();
        assert_eq!(t.endpoint.as_deref(), Some("https://h:1"));
        let t = parse_url("dynamodb://ap-south-1").unwrap();
        assert_eq!(t.region.as_deref(), Some("ap-south-1"));
        assert_eq!(parse_url("dynamodb://").unwrap(), Target::default());
    }

    #[test]
    fn bad_urls_are_config_errors() {
        for bad in [
            "redis://h",
            "dynamodb",
            "dynamodb+http://",
            "dynamodb://?foo=1",
            "dynamodb+http://keyonly@h:1",
        ] {
            match parse_url(bad) {
                Err(Error::Config { key, .. }) => assert_eq!(key, "url", "{bad}"),
                other => panic!("{bad}: expected a config error, got {other:?}"),
            }
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let cfg = DynamoConfig {
            secret_access_key: Some("topsecret2".to_owned()),
            ..DynamoConfig::from_url("dynamodb+http://key:topsecret@h:1/x")
        };
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("topsecret"), "{dbg}");
        assert!(dbg.contains("key:***@h:1"), "{dbg}");
    }

    #[test]
    fn table_names_are_checked() {
        let cfg = DynamoConfig {
            task_states_table: "a b".to_owned(),
            ..DynamoConfig::default()
        };
        assert!(
            matches!(cfg.target(), Err(Error::Config { key, .. }) if key == "dynamodb.task_states_table")
        );
        let cfg = DynamoConfig {
            group_metas_table: "task_states".to_owned(),
            ..DynamoConfig::default()
        };
        assert!(cfg.target().is_err());
    }

    #[test]
    fn go_environment_names() {
        let go = machinery_core::Config::from_env_with(|k| match k {
            "TASK_STATES_TABLE" => Some("env_states".to_owned()),
            "GROUP_METAS_TABLE" => Some("env_groups".to_owned()),
            "DYNAMODB_CREATE_TABLES" => Some("true".to_owned()),
            _ => None,
        })
        .unwrap();
        let cfg = DynamoConfig::from_machinery("dynamodb://", &go);
        assert_eq!(cfg.task_states_table, "env_states");
        assert_eq!(cfg.group_metas_table, "env_groups");
        assert!(cfg.create_tables);
    }

    #[test]
    fn from_machinery_uses_go_names() {
        let mut go = machinery_core::Config {
            results_expire_in: 60,
            ..machinery_core::Config::default()
        };
        go.dynamodb.task_states_table = "my_states".to_owned();
        go.dynamodb.group_metas_table = "my_groups".to_owned();
        go.dynamodb.create_tables = true;
        let cfg = DynamoConfig::from_machinery("https://dynamodb.us-east-1.amazonaws.com", &go);
        assert_eq!(cfg.task_states_table, "my_states");
        assert_eq!(cfg.group_metas_table, "my_groups");
        assert!(cfg.create_tables);
        assert_eq!(cfg.results_ttl_secs(), 60);
        let zero = DynamoConfig {
            results_expire_in: 0,
            ..DynamoConfig::default()
        };
        assert_eq!(zero.results_ttl_secs(), 3600);
    }
}
