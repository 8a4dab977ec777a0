//! `SqsConfig`: the queue URL prefix, the endpoint, and the receive / batching knobs.

use std::time::Duration;

use machinery_core::{Error, Result};

/// Configuration of the SQS broker.
///
/// Field names follow Go Machinery's where Go has the setting (`Broker`, `DefaultQueue`,
/// `sqs.receive_wait_time_seconds`, `sqs.receive_visibility_timeout`); the others are
/// machinery-rs additions. Credentials never appear here: they come from the AWS SDK's
/// default chain (environment, profile, IMDS, ...), or from the `SdkConfig` given to
/// [`crate::SqsBroker::connect_with`].
#[derive(Debug, Clone, PartialEq)]
pub struct SqsConfig {
    /// The queue URL prefix, Go's `Broker`: `https://sqs.<region>.amazonaws.com/<account>`.
    /// A queue's URL is this + `/` + its name. For a local server (moto, LocalStack) the
    /// prefix names that server, e.g. `http://127.0.0.1:4566/123456789012`.
    pub url: String,
    /// Queue used when a signature has no routing key. Default `machinery_tasks`.
    pub default_queue: String,
    /// Where requests go. `None`: the SDK's choice (`AWS_ENDPOINT_URL_SQS`,
    /// `AWS_ENDPOINT_URL`, or the region's endpoint), except that a prefix whose host is not
    /// an `amazonaws.com` host is its own endpoint (Go's local set-ups). Default `None`.
    pub endpoint_url: Option<String>,
    /// Region. `None`: the `sqs.<region>.amazonaws.com` part of the prefix, else the SDK's
    /// default chain (`AWS_REGION`, profile), else `us-east-1`. Default `None`.
    pub region: Option<String>,
    /// Long-poll wait of one receive, seconds, 1..=20 (Go's `WaitTimeSeconds`; Go's default
    /// 0 short-polls and burns requests, so 0 means the default here). Default 20.
    pub wait_time_seconds: i32,
    /// Visibility timeout asked for on receive, seconds (Go's `VisibilityTimeout`). `None`:
    /// the queue's own. Default `None`.
    pub visibility_timeout: Option<i32>,
    /// Extend the visibility of every message this process holds every half visibility
    /// timeout, so a long task is not delivered twice (Go's `VisibilityHeartBeat`, off by
    /// default there). Default true.
    pub visibility_heartbeat: bool,
    /// Create a queue that does not exist on first use (standard, or FIFO for a `.fifo`
    /// name). Go never creates queues. The dead-letter queue `<queue>-dead` is always
    /// created when missing. Default false.
    pub create_queues: bool,
    /// How long an ack (delete) or visibility change waits for others to share its batch
    /// request. Default 5 ms.
    pub batch_linger: Duration,
    /// How long a publish waits for others to share its `SendMessageBatch`. Default 2 ms.
    pub send_linger: Duration,
    /// Batch requests of one kind in flight at once per queue. Default 16.
    pub batch_concurrency: usize,
    /// Largest `DelaySeconds` sent (SQS allows 900); a later ETA is held invisible on
    /// receipt instead. Tests shorten it. Default 900.
    pub max_delay_seconds: u32,
    /// Longest visibility timeout set to hold a message that is not due yet (SQS allows 12
    /// hours from its receipt); a message due later is held again when it shows up. Tests
    /// shorten it. Default 43 200.
    pub max_hold_seconds: u32,
    /// Largest pause between two attempts while SQS is unreachable (the pause starts at
    /// 100 ms and doubles). Default 5 s.
    pub reconnect_max_delay: Duration,
}

impl Default for SqsConfig {
    fn default() -> Self {
        SqsConfig {
            url: String::new(),
            default_queue: "machinery_tasks".to_owned(),
            endpoint_url: None,
            region: None,
            wait_time_seconds: 20,
            visibility_timeout: None,
            visibility_heartbeat: true,
            create_queues: false,
            batch_linger: Duration::from_millis(5),
            send_linger: Duration::from_millis(2),
            batch_concurrency: 16,
            max_delay_seconds: 900,
            max_hold_seconds: 43_200,
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

/// SQS's limits.
pub(crate) const SQS_MAX_DELAY: u32 = 900;
pub(crate) const SQS_MAX_VISIBILITY: u32 = 43_200;

impl SqsConfig {
    /// The defaults with this queue URL prefix.
    pub fn from_url(url: impl Into<String>) -> Self {
        SqsConfig {
            url: url.into(),
            ..SqsConfig::default()
        }
    }

    /// The settings a `machinery_core::Config` (Go's names) gives for `url`:
    /// `default_queue` and the `sqs.*` section. 0 / empty values keep this crate's defaults.
    /// `url` may carry the `sqs+` marker of the URL factory (`sqs+http://host:port/account`).
    pub fn from_machinery(url: &str, config: &machinery_core::Config) -> Self {
        let d = SqsConfig::default();
        let s = &config.sqs;
        SqsConfig {
            url: strip_marker(url).to_owned(),
            default_queue: if config.default_queue.is_empty() {
                d.default_queue.clone()
            } else {
                config.default_queue.clone()
            },
            wait_time_seconds: i32::try_from(s.wait_time_seconds)
                .ok()
                .filter(|w| *w > 0)
                .map_or(d.wait_time_seconds, |w| w.min(20)),
            visibility_timeout: s
                .visibility_timeout
                .and_then(|v| i32::try_from(v).ok())
                .filter(|v| *v >= 0),
            endpoint_url: (!s.endpoint_url.is_empty()).then(|| s.endpoint_url.clone()),
            create_queues: s.create_queues,
            ..d
        }
    }

    /// Check the values and split the prefix; called by `connect`.
    pub(crate) fn validate(&self) -> Result<()> {
        let prefix = strip_marker(&self.url);
        if !(prefix.starts_with("https://") || prefix.starts_with("http://")) {
            return Err(Error::config(
                "broker",
                format!(
                    "an SQS broker is a queue URL prefix such as \
                     https://sqs.<region>.amazonaws.com/<account>, got `{}`",
                    self.url
                ),
            ));
        }
        if !(1..=20).contains(&self.wait_time_seconds) {
            return Err(Error::config(
                "sqs.receive_wait_time_seconds",
                format!("must be 1..=20, got {}", self.wait_time_seconds),
            ));
        }
        if let Some(v) = self.visibility_timeout
            && !(0..=SQS_MAX_VISIBILITY as i32).contains(&v)
        {
            return Err(Error::config(
                "sqs.receive_visibility_timeout",
                format!("must be 0..=43200 seconds, got {v}"),
            ));
        }
        if self.default_queue.is_empty() {
            return Err(Error::config("default_queue", "must not be empty"));
        }
        Ok(())
    }

    /// The queue URL prefix without a trailing `/` or the `sqs+` marker.
    pub(crate) fn prefix(&self) -> &str {
        strip_marker(&self.url).trim_end_matches('/')
    }

    /// The region named by an AWS prefix (`https://sqs.<region>.amazonaws.com/...`).
    pub(crate) fn region_from_url(&self) -> Option<String> {
        let host = host_of(self.prefix())?;
        let rest = host.strip_prefix("sqs.")?;
        let (region, domain) = rest.split_once('.')?;
        domain
            .starts_with("amazonaws.com")
            .then(|| region.to_owned())
    }

    /// The endpoint to use: the configured one, else the prefix's own origin when it is not
    /// an AWS host, else `None` (the SDK decides).
    pub(crate) fn effective_endpoint(&self) -> Option<String> {
        if let Some(e) = &self.endpoint_url {
            return Some(e.clone());
        }
        let prefix = self.prefix();
        let host = host_of(prefix)?;
        let aws = host.ends_with(".amazonaws.com") || host.ends_with(".amazonaws.com.cn");
        if aws {
            return None;
        }
        let scheme_end = prefix.find("://")? + 3;
        Some(format!("{}{}", &prefix[..scheme_end], host))
    }
}

/// `sqs+http://...` -> `http://...`.
pub(crate) fn strip_marker(url: &str) -> &str {
    url.strip_prefix("sqs+").unwrap_or(url)
}

/// `host[:port]` of an http(s) URL.
fn host_of(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let host = rest.split('/').next()?;
    // Never keep userinfo (nothing secret belongs in the prefix, but do not echo it).
    Some(machinery_core::url::split_userinfo(host).1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aws_prefix_gives_region_and_no_endpoint() {
        let c = SqsConfig::from_url("https://sqs.eu-west-1.amazonaws.com/123456789012");
        assert_eq!(c.region_from_url().as_deref(), Some("eu-west-1"));
        assert_eq!(c.effective_endpoint(), None);
        assert_eq!(
            c.prefix(),
            "https://sqs.eu-west-1.amazonaws.com/123456789012"
        );
        c.validate().expect("valid");
    }

    #[test]
    fn local_prefix_is_its_own_endpoint() {
        let c = SqsConfig::from_url("sqs+http://127.0.0.1:4566/123456789012/");
        assert_eq!(c.region_from_url(), None);
        assert_eq!(
            c.effective_endpoint().as_deref(),
            Some("http://127.0.0.1:4566")
        );
        assert_eq!(c.prefix(), "http://127.0.0.1:4566/123456789012");
        let mut c = c;
        c.endpoint_url = Some("http://localhost:9324".into());
        assert_eq!(
            c.effective_endpoint().as_deref(),
            Some("http://localhost:9324")
        );
    }

    #[test]
    fn machinery_config_keys() {
        let mut m = machinery_core::Config {
            default_queue: "q1".into(),
            ..machinery_core::Config::default()
        };
        m.sqs.wait_time_seconds = 0;
        m.sqs.visibility_timeout = Some(30);
        let c = SqsConfig::from_machinery("https://sqs.us-east-1.amazonaws.com/1", &m);
        assert_eq!(c.default_queue, "q1");
        assert_eq!(c.wait_time_seconds, 20, "Go's 0 becomes a long poll");
        assert_eq!(c.visibility_timeout, Some(30));
        m.sqs.wait_time_seconds = 5;
        m.sqs.visibility_hearth_beat = true;
        let c = SqsConfig::from_machinery("https://sqs.us-east-1.amazonaws.com/1", &m);
        assert_eq!(c.wait_time_seconds, 5);
        assert!(c.visibility_heartbeat);
    }

    #[test]
    fn bad_values_are_config_errors() {
        let c = SqsConfig::from_url("amqp://x");
        assert!(c.validate().unwrap_err().to_string().contains("broker"));
        let mut c = SqsConfig::from_url("https://sqs.us-east-1.amazonaws.com/1");
        c.wait_time_seconds = 21;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("receive_wait_time_seconds")
        );
    }
}
