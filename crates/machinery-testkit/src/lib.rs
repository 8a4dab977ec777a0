#![doc = include_str!("../README.md")]

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use machinery_core::{Backend, Broker, Result};

pub mod backend;
pub mod broker;
pub mod fixtures;
pub mod servers;
mod util;
pub mod wait;

pub use machinery_core::DeadLetter;
pub use wait::{wait_for, wait_until, wait_until_sync};

/// How long one case may run before it is failed as hung.
const CASE_TIMEOUT: Duration = Duration::from_secs(120);

/// What a broker factory is given for one case.
///
/// Every case gets a fresh random namespace. The driver puts everything the case can touch
/// under it: its default queue, its delayed-task set, its dead-letter store, exchange names.
/// The suite itself only uses queues named by [`BrokerSetup::queue`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerSetup {
    /// A fresh name such as `mt3f9a0c1b2d4e`: a letter first, then ASCII letters and digits
    /// only, so it is valid in Redis keys, AMQP and SQS queue names and Pub/Sub topic names.
    pub namespace: String,
}

impl BrokerSetup {
    /// A setup with a new random namespace.
    pub fn random() -> Self {
        BrokerSetup {
            namespace: random_namespace(),
        }
    }

    /// The queue name the suite uses for `name`: `{namespace}_{name}`.
    pub fn queue(&self, name: &str) -> String {
        format!("{}_{}", self.namespace, name)
    }

    /// The default queue a driver should configure: `{namespace}_tasks`.
    pub fn default_queue(&self) -> String {
        self.queue("tasks")
    }
}

/// What a backend factory is given for one case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendSetup {
    /// A fresh random namespace (same shape as [`BrokerSetup::namespace`]). Task and group
    /// UUIDs are random anyway; use it for a key prefix, table or collection if the backend
    /// has one.
    pub namespace: String,
    /// How long stored states and groups must live. `None`: the driver's normal default
    /// (Go's 3600 s is fine). `Some(d)`: the `results_expire` case wants results gone after
    /// `d` (the suite uses 1 s); drivers that store whole seconds round up.
    pub results_expire_in: Option<Duration>,
}

impl BackendSetup {
    /// A setup with a new random namespace and the default expiry.
    pub fn random() -> Self {
        BackendSetup {
            namespace: random_namespace(),
            results_expire_in: None,
        }
    }

    /// The same setup with results expiring after `d`.
    pub fn expiring_in(mut self, d: Duration) -> Self {
        self.results_expire_in = Some(d);
        self
    }
}

fn random_namespace() -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("mt{}", &id[..12])
}

/// Driver-specific durations the broker cases wait for.
///
/// Build it from [`Timing::default`] (generous values for networked brokers) and override
/// what differs: `Timing { redelivery_after_drop: Duration::from_secs(2), ..Timing::default() }`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// How long a message that should arrive may take (default 10 s).
    pub receive_timeout: Duration,
    /// How long to watch a consumer to conclude that nothing more arrives (default 500 ms).
    pub quiet_period: Duration,
    /// How late a delayed message (future ETA, `requeue` with a delay) may arrive after its
    /// due time: the driver's polling interval plus some margin (default 2 s). It is never
    /// allowed to arrive early.
    pub delay_slack: Duration,
    /// How long after its consumer stream is dropped an unacknowledged delivery may take to
    /// become deliverable again: Redis's lease timeout as the test configures it, AMQP's
    /// channel-close time (default 10 s).
    pub redelivery_after_drop: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            receive_timeout: Duration::from_secs(10),
            quiet_period: Duration::from_millis(500),
            delay_slack: Duration::from_secs(2),
            redelivery_after_drop: Duration::from_secs(10),
        }
    }
}

impl Timing {
    /// Tight values for an in-process broker (what the memory broker uses).
    pub fn in_process() -> Self {
        Timing {
            receive_timeout: Duration::from_secs(2),
            quiet_period: Duration::from_millis(100),
            delay_slack: Duration::from_millis(300),
            redelivery_after_drop: Duration::from_millis(100),
        }
    }
}

/// A broker prepared for one case, plus the test-only hooks the suite needs.
#[async_trait]
pub trait BrokerUnderTest: Send + Sync {
    /// The broker the cases publish to and consume from.
    fn broker(&self) -> Arc<dyn Broker>;

    /// A second broker instance on the same server and namespace, with its own connections,
    /// as another process would have. (The memory broker returns a clone of its handle.)
    async fn another(&self) -> Result<Arc<dyn Broker>>;

    /// Put `body` into `queue` byte for byte, as a foreign producer (Go, or a bug) would.
    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()>;

    /// What was dead-lettered from `queue`, oldest first, with the reasons. Only called when
    /// `capabilities().dead_letter` is true.
    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>>;

    /// The durations the cases wait for with this driver.
    fn timing(&self) -> Timing;

    /// Whether the broker carries only text (SQS: a body is XML-safe Unicode), so that a
    /// foreign producer cannot write invalid UTF-8 there: the malformed-body case then
    /// injects text that is not a signature instead of arbitrary bytes. Default false.
    fn text_bodies_only(&self) -> bool {
        false
    }

    /// Remove everything the case created under its namespace (queues, delayed set, dead
    /// letters). Called at the end of a case that passed; may be a no-op.
    async fn teardown(&self) -> Result<()>;
}

/// Something that prepares a broker for one case: any
/// `async fn(BrokerSetup) -> Option<Box<dyn BrokerUnderTest>>`.
///
/// `None` means "skipped" (its environment variable is unset, see [`env_url`]). A factory
/// that was given a URL but cannot connect must panic: that is a failure, never a skip.
pub trait BrokerFactory: Send + Sync {
    /// Prepare a broker for one case.
    fn create(
        &self,
        setup: BrokerSetup,
    ) -> impl Future<Output = Option<Box<dyn BrokerUnderTest>>> + Send;
}

impl<F, Fut> BrokerFactory for F
where
    F: Fn(BrokerSetup) -> Fut + Send + Sync,
    Fut: Future<Output = Option<Box<dyn BrokerUnderTest>>> + Send,
{
    fn create(&self, setup: BrokerSetup) -> impl Future<Output = Option<Box<dyn BrokerUnderTest>>> {
        self(setup)
    }
}

/// Something that prepares a result backend for one case: any
/// `async fn(BackendSetup) -> Option<Arc<dyn Backend>>`.
///
/// `None` means "skipped"; a factory given a URL that cannot connect must panic.
pub trait BackendFactory: Send + Sync {
    /// Prepare a backend for one case.
    fn create(&self, setup: BackendSetup) -> impl Future<Output = Option<Arc<dyn Backend>>> + Send;
}

impl<F, Fut> BackendFactory for F
where
    F: Fn(BackendSetup) -> Fut + Send + Sync,
    Fut: Future<Output = Option<Arc<dyn Backend>>> + Send,
{
    fn create(&self, setup: BackendSetup) -> impl Future<Output = Option<Arc<dyn Backend>>> {
        self(setup)
    }
}

/// The value of the environment variable `name`, or `None` after printing exactly one line
/// `skipped: NAME not set` when it is unset or empty.
///
/// # Examples
///
/// ```no_run
/// // In a factory: `let url = machinery_testkit::env_url("MACHINERY_TEST_REDIS_URL")?;`
/// let url = machinery_testkit::env_url("MACHINERY_TEST_SURELY_UNSET_URL");
/// assert!(url.is_none());
/// ```
///
/// # Panics
/// When the variable is unset and `MACHINERY_REQUIRE_SERVICES=1` (CI sets it: a driver test
/// must never be skipped there).
pub fn env_url(name: &str) -> Option<String> {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => Some(v),
        _ => {
            assert!(
                std::env::var("MACHINERY_REQUIRE_SERVICES").as_deref() != Ok("1"),
                "{name} is not set but MACHINERY_REQUIRE_SERVICES=1: driver tests must not be skipped"
            );
            println!("skipped: {name} not set");
            None
        }
    }
}

/// Run one case on a fresh two-worker multi-thread runtime, failing it after two minutes.
/// Used by the stamped tests; call it yourself to run a case from a plain `#[test]`.
///
/// # Panics
/// When the case panics (fails) or runs longer than two minutes.
pub fn run<Fut: Future<Output = ()>>(case: Fut) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the test runtime");
    rt.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
            panic!("case did not finish within {CASE_TIMEOUT:?}");
        }
    });
}

/// Stamp one `#[test]` per broker case into the calling file.
///
/// The argument is the path of an `async fn(BrokerSetup) -> Option<Box<dyn BrokerUnderTest>>`.
/// Each test runs on its own two-worker multi-thread tokio runtime (see [`run`]); the driver
/// crate needs no tokio dev-dependency for it.
#[macro_export]
macro_rules! broker_conformance {
    ($factory:path) => {
        $crate::__stamp_cases! { broker, $factory,
            publish_then_consume_roundtrips,
            ack_removes_message,
            nack_requeues,
            requeue_with_delay_is_not_early,
            unacked_is_redelivered_after_consumer_dropped,
            eta_is_respected,
            pending_tasks_are_listed_in_order,
            delayed_tasks_are_listed,
            competing_consumers_never_share_a_message,
            fifo_order_is_kept,
            undecodable_body_surfaces_as_malformed_delivery,
            purge_queue_empties_it,
        }
    };
}

/// Stamp one `#[test]` per backend case into the calling file.
///
/// The argument is the path of an `async fn(BackendSetup) -> Option<Arc<dyn Backend>>`.
#[macro_export]
macro_rules! backend_conformance {
    ($factory:path) => {
        $crate::__stamp_cases! { backend, $factory,
            state_lifecycle_roundtrips,
            set_state_keeps_created_at,
            unknown_task_has_no_state,
            results_preserve_types,
            failure_keeps_error_text,
            group_states_are_in_group_order,
            trigger_chord_fires_exactly_once_under_contention,
            trigger_chord_unknown_group_errors,
            group_member_done_counts_each_member_once,
            purge_removes_state_and_group,
            results_expire,
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __stamp_cases {
    ($module:ident, $factory:path, $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::run($crate::$module::$case($factory));
            }
        )*
    };
}
