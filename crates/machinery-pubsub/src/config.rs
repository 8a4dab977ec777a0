//! `PubSubConfig`: project, subscription, default topic, emulator, and the lease / batching
//! knobs.

use std::time::Duration;

use machinery_core::{Error, Result};

/// The environment variable naming the emulator (`host:port`), as every Google client reads it.
pub const EMULATOR_HOST_VAR: &str = "PUBSUB_EMULATOR_HOST";

/// Pub/Sub's own limits.
pub(crate) const MIN_ACK_DEADLINE: u32 = 10;
pub(crate) const MAX_ACK_DEADLINE: u32 = 600;

/// Configuration of the Pub/Sub broker.
///
/// Go Machinery's URL `gcppubsub://<project>/<subscription>` gives the project and the
/// subscription; `DefaultQueue` is the default topic; Go's `GCPPubSub.MaxExtension` is
/// [`PubSubConfig::max_extension`]. The rest are machinery-rs additions. Credentials never
/// appear here: with [`PubSubConfig::emulator_host`] the broker talks to the emulator without
/// any, otherwise it uses Google's default credentials (`GOOGLE_APPLICATION_CREDENTIALS`,
/// gcloud's user credentials, the metadata server).
#[derive(Debug, Clone, PartialEq)]
pub struct PubSubConfig {
    /// The Google Cloud project.
    pub project: String,
    /// The subscription the worker consumes (the URL's), attached to the default topic.
    pub subscription: String,
    /// Topic used when a signature has no routing key (Go's `DefaultQueue`). Default
    /// `machinery_tasks`.
    pub default_queue: String,
    /// The emulator's `host:port`. [`PubSubConfig::from_url`] reads `PUBSUB_EMULATOR_HOST`.
    /// `None`: Google's endpoint with the default credentials.
    pub emulator_host: Option<String>,
    /// Create missing topics and subscriptions (development and tests). Go requires both to
    /// exist; so does this broker by default, and `connect` fails naming what is missing.
    /// The dead-letter topic `<topic>.dead` and its subscription are always created when
    /// missing. Default false.
    pub create_missing: bool,
    /// Enable message ordering on the subscriptions this broker creates (beyond Go). On a
    /// subscription with ordering enabled, `BrokerMessageGroupId` (else the topic's name)
    /// is the ordering key and the broker reports the `fifo` capability. Default false.
    pub create_with_ordering: bool,
    /// The streaming pull's ack deadline, seconds (10..=600): how long a dead worker's
    /// messages stay away; running tasks have theirs extended. Default 60.
    pub ack_deadline_seconds: u32,
    /// Longest time one message's lease is extended while its task runs (Go's
    /// `MaxExtension`); after it the message is delivered again. Default 3600 s.
    pub max_extension: Duration,
    /// Longest ModifyAckDeadline used to hold a message that is not due yet (Pub/Sub allows
    /// 600 s); a later ETA is held again when it comes back. Tests shorten it. Default 600.
    pub max_hold_seconds: u32,
    /// Room in the stream's flow control for messages held until their ETA, on top of the
    /// prefetch (Pub/Sub counts a held message as outstanding). Default 1000.
    pub max_held: usize,
    /// How long a publish waits for others to share its Publish request. Default 2 ms.
    pub publish_linger: Duration,
    /// How long an ack or a deadline change waits for others to share its request.
    /// Default 5 ms.
    pub ack_linger: Duration,
    /// Requests of one kind in flight at once per topic or subscription. Default 16.
    pub batch_concurrency: usize,
    /// Time limit of one unary call (publish, ack, admin). Default 30 s.
    pub request_timeout: Duration,
    /// Largest pause between two attempts to open the stream while Pub/Sub is unreachable
    /// (the pause starts at 100 ms and doubles). Default 5 s.
    pub reconnect_max_delay: Duration,
}

impl Default for PubSubConfig {
    fn default() -> Self {
        PubSubConfig {
            project: String::new(),
            subscription: String::new(),
            default_queue: "machinery_tasks".to_owned(),
            emulator_host: None,
            create_missing: false,
            create_with_ordering: false,
            ack_deadline_seconds: 60,
            max_extension: Duration::from_secs(3600),
            max_hold_seconds: MAX_ACK_DEADLINE,
            max_held: 1000,
            publish_linger: Duration::from_millis(2),
            ack_linger: Duration::from_millis(5),
            batch_concurrency: 16,
            request_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(5),
        }
    }
}

impl PubSubConfig {
    /// The defaults for `gcppubsub://<project>/<subscription>`, with the emulator from
    /// `PUBSUB_EMULATOR_HOST` when it is set. A URL that does not parse is reported by
    /// `connect` (see [`PubSubConfig::validate`]).
    pub fn from_url(url: &str) -> Self {
        let (project, subscription) = split_url(url).unwrap_or_default();
        PubSubConfig {
            project,
            subscription,
            emulator_host: std::env::var(EMULATOR_HOST_VAR)
                .ok()
                .filter(|h| !h.trim().is_empty()),
            ..PubSubConfig::default()
        }
    }

    /// The settings a `machinery_core::Config` gives for `url`: `default_queue` and the
    /// `gcp_pubsub` section (0 keeps this crate's defaults).
    pub fn from_machinery(url: &str, config: &machinery_core::Config) -> Self {
        let d = PubSubConfig::from_url(url);
        let g = &config.gcp_pubsub;
        PubSubConfig {
            default_queue: if config.default_queue.is_empty() {
                d.default_queue.clone()
            } else {
                config.default_queue.clone()
            },
            max_extension: if g.max_extension == 0 {
                d.max_extension
            } else {
                Duration::from_secs(g.max_extension)
            },
            ack_deadline_seconds: if g.ack_deadline == 0 {
                d.ack_deadline_seconds
            } else {
                u32::try_from(g.ack_deadline).unwrap_or(u32::MAX)
            },
            create_missing: g.create_missing,
            ..d
        }
    }

    /// Check the values; called by `connect`.
    ///
    /// # Errors
    /// [`Error::Config`] naming the key.
    pub fn validate(&self) -> Result<()> {
        if self.project.is_empty() || self.subscription.is_empty() {
            return Err(Error::config(
                "broker",
                "a Pub/Sub broker is gcppubsub://<project>/<subscription>",
            ));
        }
        for (key, name) in [
            ("broker", &self.subscription),
            ("default_queue", &self.default_queue),
        ] {
            check_name(key, name)?;
        }
        if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&self.ack_deadline_seconds) {
            return Err(Error::config(
                "gcp_pubsub.ack_deadline",
                format!(
                    "must be 10..=600 seconds, got {}",
                    self.ack_deadline_seconds
                ),
            ));
        }
        if !(1..=MAX_ACK_DEADLINE).contains(&self.max_hold_seconds) {
            return Err(Error::config(
                "gcp_pubsub.max_hold_seconds",
                format!("must be 1..=600 seconds, got {}", self.max_hold_seconds),
            ));
        }
        Ok(())
    }

    /// `projects/<project>/topics/<topic>`.
    pub fn topic_path(&self, topic: &str) -> String {
        format!("projects/{}/topics/{topic}", self.project)
    }

    /// `projects/<project>/subscriptions/<subscription>`.
    pub fn subscription_path(&self, subscription: &str) -> String {
        format!("projects/{}/subscriptions/{subscription}", self.project)
    }
}

/// `gcppubsub://<project>/<subscription>` -> (project, subscription).
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.trim();
    let scheme_end = rest.find("://")?;
    if !rest[..scheme_end].eq_ignore_ascii_case("gcppubsub") {
        return None;
    }
    let rest = &rest[scheme_end + 3..];
    let rest = rest.split(['?', '#']).next().unwrap_or_default();
    let (project, subscription) = rest.split_once('/')?;
    let subscription = subscription.trim_end_matches('/');
    if project.is_empty() || subscription.is_empty() || subscription.contains('/') {
        return None;
    }
    Some((project.to_owned(), subscription.to_owned()))
}

/// Pub/Sub's resource-name rule for topics and subscriptions: 3..=255 characters, a letter
/// first, then letters, digits and `-_.~+%`, not starting with `goog`.
pub(crate) fn check_name(key: &str, name: &str) -> Result<()> {
    let ok = (3..=255).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && !name.to_ascii_lowercase().starts_with("goog");
    if ok {
        Ok(())
    } else {
        Err(Error::config(
            key,
            format!(
                "`{name}` is not a valid Pub/Sub topic or subscription name (3 to 255 \
                 characters: a letter, then letters, digits or -_.~+%; not goog...)"
            ),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_gives_project_and_subscription() {
        let c = PubSubConfig::from_url("gcppubsub://my-project/my_sub");
        assert_eq!(c.project, "my-project");
        assert_eq!(c.subscription, "my_sub");
        assert_eq!(c.default_queue, "machinery_tasks");
        c.validate().expect("valid");
        assert_eq!(
            c.subscription_path("s1"),
            "projects/my-project/subscriptions/s1"
        );
        assert_eq!(c.topic_path("t1"), "projects/my-project/topics/t1");
    }

    #[test]
    fn bad_urls_and_names_are_config_errors() {
        for bad in [
            "gcppubsub://p",
            "gcppubsub:///s",
            "gcppubsub://p/",
            "gcppubsub://p/a/b",
            "redis://p/s",
        ] {
            let e = PubSubConfig::from_url(bad).validate().unwrap_err();
            assert!(e.to_string().contains("gcppubsub://"), "{bad}: {e}");
        }
        let e = PubSubConfig::from_url("gcppubsub://p/9bad")
            .validate()
            .unwrap_err();
        assert!(e.to_string().contains("not a valid"), "{e}");
        let mut c = PubSubConfig::from_url("gcppubsub://p/sub");
        c.ack_deadline_seconds = 5;
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("ack_deadline")
        );
    }

    #[test]
    fn machinery_config_keys() {
        let mut m = machinery_core::Config {
            default_queue: "jobs".into(),
            ..machinery_core::Config::default()
        };
        let c = PubSubConfig::from_machinery("gcppubsub://p/sub", &m);
        assert_eq!(c.default_queue, "jobs");
        assert_eq!(c.max_extension, Duration::from_secs(3600));
        assert_eq!(c.ack_deadline_seconds, 60);
        assert!(!c.create_missing);
        m.gcp_pubsub.max_extension = 120;
        m.gcp_pubsub.ack_deadline = 20;
        m.gcp_pubsub.create_missing = true;
        let c = PubSubConfig::from_machinery("gcppubsub://p/sub", &m);
        assert_eq!(c.max_extension, Duration::from_secs(120));
        assert_eq!(c.ack_deadline_seconds, 20);
        assert!(c.create_missing);
    }
}
