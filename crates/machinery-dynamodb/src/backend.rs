//! `DynamoBackend`: task states and group metas in Go's two tables.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_dynamodb::Client;
use aws_sdk_dynamodb::config::{Credentials, Region};
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue as Av, BillingMode, KeySchemaElement, KeyType,
    KeysAndAttributes, ReturnValue, ReturnValuesOnConditionCheckFailure, ScalarAttributeType,
    TableStatus, TimeToLiveSpecification,
};
use machinery_core::{
    Backend, BackendCapabilities, Backoff, Error, GroupMeta, Result, State, TaskState, time,
};

use crate::config::DynamoConfig;
use crate::error::{self, DRIVER};
use crate::item::{self, Item};

/// Keys per `BatchGetItem` call (DynamoDB's limit).
const BATCH_GET_MAX: usize = 100;

/// How long `connect` waits for a table it created to become ACTIVE.
const TABLE_ACTIVE_WAIT: Duration = Duration::from_secs(60);

/// The DynamoDB result backend. Cheap to clone; clones share one client.
///
/// Items are Go's: `task_states` keyed by `TaskUUID`, `group_metas` keyed by `GroupUUID`,
/// attribute names = Go's field names (see the crate README for every attribute).
#[derive(Clone)]
pub struct DynamoBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    states: String,
    groups: String,
    ttl_secs: u64,
    batch_get_rounds: u32,
    display: String,
    counts: Counters,
}

impl fmt::Debug for DynamoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DynamoBackend")
            .field("server", &self.inner.display)
            .field("task_states_table", &self.inner.states)
            .field("group_metas_table", &self.inner.groups)
            .field("ttl_secs", &self.inner.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// DynamoDB requests this backend sent, by operation (one per API call; the SDK's own
/// retries of a call are not counted again). See [`DynamoBackend::request_counts`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RequestCounts {
    /// `GetItem` calls.
    pub get_item: u64,
    /// `PutItem` calls.
    pub put_item: u64,
    /// `UpdateItem` calls.
    pub update_item: u64,
    /// `DeleteItem` calls.
    pub delete_item: u64,
    /// `BatchGetItem` calls.
    pub batch_get_item: u64,
    /// Table administration: `DescribeTable`, `CreateTable`, `UpdateTimeToLive`.
    pub admin: u64,
}

impl RequestCounts {
    /// Every request.
    pub fn total(&self) -> u64 {
        self.get_item
            + self.put_item
            + self.update_item
            + self.delete_item
            + self.batch_get_item
            + self.admin
    }

    /// Item reads and writes (everything but table administration).
    pub fn data(&self) -> u64 {
        self.total() - self.admin
    }

    /// The requests sent since `earlier`.
    pub fn since(&self, earlier: &RequestCounts) -> RequestCounts {
        RequestCounts {
            get_item: self.get_item - earlier.get_item,
            put_item: self.put_item - earlier.put_item,
            update_item: self.update_item - earlier.update_item,
            delete_item: self.delete_item - earlier.delete_item,
            batch_get_item: self.batch_get_item - earlier.batch_get_item,
            admin: self.admin - earlier.admin,
        }
    }
}

#[derive(Default)]
struct Counters {
    get_item: AtomicU64,
    put_item: AtomicU64,
    update_item: AtomicU64,
    delete_item: AtomicU64,
    batch_get_item: AtomicU64,
    admin: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

fn key(name: &str, value: &str) -> HashMap<String, Av> {
    HashMap::from([(name.to_owned(), Av::S(value.to_owned()))])
}

fn now_ms() -> i64 {
    time::now().timestamp_millis()
}

impl DynamoBackend {
    /// Connect, and check that both tables exist (`DescribeTable`), creating them when
    /// `config.create_tables` is set.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad URL or table name, and for a missing table (naming it and
    /// how to create it); [`Error::Backend`] when DynamoDB cannot be reached.
    pub async fn connect(config: DynamoConfig) -> Result<Self> {
        let target = config.target()?;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let region = RegionProviderChain::first_try(target.region.clone().map(Region::new))
            .or_default_provider()
            .or_else(Region::new("us-east-1"));
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).region(region);
        if let Some(endpoint) = &target.endpoint {
            loader = loader.endpoint_url(endpoint);
        }
        if let (Some(k), Some(s)) = (&target.access_key_id, &target.secret_access_key) {
            loader = loader.credentials_provider(Credentials::new(
                k.clone(),
                s.clone(),
                None,
                None,
                "machinery-dynamodb",
            ));
        }
        let sdk = loader.load().await;
        let attempts = config.max_attempts.max(1);
        let per_attempt = config.request_timeout();
        let conf = aws_sdk_dynamodb::config::Builder::from(&sdk)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(attempts)
                    .with_initial_backoff(Duration::from_millis(50))
                    .with_max_backoff(Duration::from_secs(5)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(config.connect_timeout())
                    .operation_attempt_timeout(per_attempt)
                    .operation_timeout(per_attempt * attempts + Duration::from_secs(5) * attempts)
                    .build(),
            )
            .build();
        let display = match (&target.endpoint, sdk.region()) {
            (Some(e), Some(r)) => format!("{e} ({r})"),
            (Some(e), None) => e.clone(),
            (None, Some(r)) => format!("DynamoDB in {r}"),
            (None, None) => "DynamoDB".to_owned(),
        };
        let backend = DynamoBackend {
            inner: Arc::new(Inner {
                client: Client::from_conf(conf),
                states: config.task_states_table.clone(),
                groups: config.group_metas_table.clone(),
                ttl_secs: config.results_ttl_secs(),
                batch_get_rounds: config.batch_get_rounds.max(1),
                display,
                counts: Counters::default(),
            }),
        };
        backend
            .ensure_table(
                &config.task_states_table,
                item::TASK_UUID,
                "dynamodb.task_states_table",
                config.create_tables,
            )
            .await?;
        backend
            .ensure_table(
                &config.group_metas_table,
                item::GROUP_UUID,
                "dynamodb.group_metas_table",
                config.create_tables,
            )
            .await?;
        Ok(backend)
    }

    /// Connect with the default settings to `url`.
    ///
    /// # Errors
    /// As [`DynamoBackend::connect`].
    pub async fn from_url(url: &str) -> Result<Self> {
        Self::connect(DynamoConfig::from_url(url)).await
    }

    /// The SDK client (for tools and tests that read the tables directly).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// The DynamoDB requests sent so far by this backend and its clones.
    pub fn request_counts(&self) -> RequestCounts {
        let c = &self.inner.counts;
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RequestCounts {
            get_item: l(&c.get_item),
            put_item: l(&c.put_item),
            update_item: l(&c.update_item),
            delete_item: l(&c.delete_item),
            batch_get_item: l(&c.batch_get_item),
            admin: l(&c.admin),
        }
    }

    fn counts(&self) -> &Counters {
        &self.inner.counts
    }

    fn ttl_at(&self) -> i64 {
        // Whole seconds, rounded up: a state lives at least `results_expire_in`.
        let secs = i64::try_from(self.inner.ttl_secs).unwrap_or(i64::MAX / 2000);
        (now_ms() + secs * 1000 + 999) / 1000
    }

    /// `DescribeTable`; a missing table is created (opt-in) or a configuration error.
    async fn ensure_table(
        &self,
        table: &str,
        hash_key: &str,
        setting: &str,
        create: bool,
    ) -> Result<()> {
        bump(&self.counts().admin);
        let described = self
            .inner
            .client
            .describe_table()
            .table_name(table)
            .send()
            .await;
        match described {
            Ok(out) => {
                let desc = out.table();
                let key = desc
                    .map(|d| d.key_schema())
                    .unwrap_or_default()
                    .iter()
                    .find(|k| *k.key_type() == KeyType::Hash)
                    .map(|k| k.attribute_name().to_owned());
                if key.as_deref() != Some(hash_key) {
                    return Err(Error::config(
                        setting,
                        format!(
                            "DynamoDB table `{table}` has hash key {key:?}; machinery (and Go Machinery) need hash key `{hash_key}` (S)"
                        ),
                    ));
                }
                if desc.and_then(|d| d.table_status()) == Some(&TableStatus::Creating) {
                    self.wait_active(table).await?;
                }
                Ok(())
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_not_found_exception()) =>
            {
                if create {
                    return self.create_table(table, hash_key).await;
                }
                Err(Error::config(
                    setting,
                    format!(
                        "DynamoDB table `{table}` does not exist at {server}. Create it with hash key `{hash_key}` (S) and TTL on the `TTL` attribute, e.g. \
                         `aws dynamodb create-table --table-name {table} --attribute-definitions AttributeName={hash_key},AttributeType=S \
                         --key-schema AttributeName={hash_key},KeyType=HASH --billing-mode PAY_PER_REQUEST` then \
                         `aws dynamodb update-time-to-live --table-name {table} --time-to-live-specification Enabled=true,AttributeName=TTL`; \
                         or set `dynamodb.create_tables: true` (env DYNAMODB_CREATE_TABLES=true) to create it at start",
                        server = self.inner.display
                    ),
                ))
            }
            Err(e) => Err(error::map(
                format!("cannot describe table `{table}` at {}", self.inner.display),
                e,
            )),
        }
    }

    async fn create_table(&self, table: &str, hash_key: &str) -> Result<()> {
        let build = |e: aws_sdk_dynamodb::error::BuildError| {
            Error::backend(
                DRIVER,
                format!("cannot build the request for `{table}`"),
                false,
                e,
            )
        };
        bump(&self.counts().admin);
        let created = self
            .inner
            .client
            .create_table()
            .table_name(table)
            .attribute_definitions(
                AttributeDefinition::builder()
                    .attribute_name(hash_key)
                    .attribute_type(ScalarAttributeType::S)
                    .build()
                    .map_err(build)?,
            )
            .key_schema(
                KeySchemaElement::builder()
                    .attribute_name(hash_key)
                    .key_type(KeyType::Hash)
                    .build()
                    .map_err(build)?,
            )
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await;
        match created {
            Ok(_) => tracing::info!(table, hash_key, "created DynamoDB table"),
            // Another process created it at the same time.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_resource_in_use_exception()) => {}
            Err(e) => return Err(error::map(format!("cannot create table `{table}`"), e)),
        }
        self.wait_active(table).await?;
        bump(&self.counts().admin);
        let ttl = self
            .inner
            .client
            .update_time_to_live()
            .table_name(table)
            .time_to_live_specification(
                TimeToLiveSpecification::builder()
                    .enabled(true)
                    .attribute_name(item::TTL)
                    .build()
                    .map_err(build)?,
            )
            .send()
            .await;
        if let Err(e) = ttl {
            // Already enabled (a concurrent creator) or not supported: expired items are
            // filtered on read anyway.
            tracing::warn!(table, error = %aws_sdk_dynamodb::error::DisplayErrorContext(&e), "cannot enable TTL on `TTL`");
        }
        Ok(())
    }

    async fn wait_active(&self, table: &str) -> Result<()> {
        let deadline = Instant::now() + TABLE_ACTIVE_WAIT;
        loop {
            bump(&self.counts().admin);
            let out = self
                .inner
                .client
                .describe_table()
                .table_name(table)
                .send()
                .await
                .map_err(|e| error::map(format!("cannot describe table `{table}`"), e))?;
            if out.table().and_then(|t| t.table_status()) == Some(&TableStatus::Active) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::backend(
                    DRIVER,
                    format!("table `{table}` is not ACTIVE after {TABLE_ACTIVE_WAIT:?}"),
                    true,
                    "timeout",
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The group meta item, `None` when absent or expired.
    /// An `UpdateItem` of `group_uuid`'s meta (counted) that applies `update` only when the
    /// group exists, has not expired (its `TTL` is absent, 0 or in the future) and
    /// `condition` (if not empty) holds: the part the chord trigger and the member count
    /// share. The caller adds its own attribute names and values (`#g`, `#ttl`, `:zero` and
    /// `:now` are taken) and sends it; a refused condition means "no such live group" or
    /// the caller's own condition failed.
    fn live_group_update(
        &self,
        group_uuid: &str,
        update: &str,
        condition: &str,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let live =
            "attribute_exists(#g) AND (attribute_not_exists(#ttl) OR #ttl = :zero OR #ttl > :now)";
        let condition = if condition.is_empty() {
            live.to_owned()
        } else {
            format!("{live} AND {condition}")
        };
        bump(&self.counts().update_item);
        self.inner
            .client
            .update_item()
            .table_name(&self.inner.groups)
            .set_key(Some(key(item::GROUP_UUID, group_uuid)))
            .update_expression(update)
            .condition_expression(condition)
            .expression_attribute_names("#g", item::GROUP_UUID)
            .expression_attribute_names("#ttl", item::TTL)
            .expression_attribute_values(":zero", Av::N("0".to_owned()))
            .expression_attribute_values(":now", Av::N((now_ms() / 1000).to_string()))
    }

    async fn group_item(&self, group_uuid: &str) -> Result<Option<Item>> {
        bump(&self.counts().get_item);
        let out = self
            .inner
            .client
            .get_item()
            .table_name(&self.inner.groups)
            .set_key(Some(key(item::GROUP_UUID, group_uuid)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::map(format!("cannot read group {group_uuid}"), e))?;
        Ok(out.item.filter(|i| !item::expired(i, now_ms())))
    }

    /// Items of `uuids` (distinct) by `TaskUUID`, 100 per `BatchGetItem`, unprocessed keys
    /// retried with back-off for at most `batch_get_rounds` rounds.
    async fn batch_get(&self, uuids: &[&str]) -> Result<HashMap<String, Item>> {
        let table = &self.inner.states;
        let mut found = HashMap::with_capacity(uuids.len());
        for chunk in uuids.chunks(BATCH_GET_MAX) {
            let mut keys: Vec<HashMap<String, Av>> =
                chunk.iter().map(|u| key(item::TASK_UUID, u)).collect();
            let mut round = 0;
            // Unprocessed keys (throttling): 50 ms doubling to 2 s between rounds.
            let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
            while !keys.is_empty() {
                round += 1;
                let request = KeysAndAttributes::builder()
                    .set_keys(Some(keys))
                    .consistent_read(true)
                    .build()
                    .map_err(|e| {
                        Error::backend(DRIVER, "cannot build a BatchGetItem request", false, e)
                    })?;
                bump(&self.counts().batch_get_item);
                let mut out = self
                    .inner
                    .client
                    .batch_get_item()
                    .request_items(table.clone(), request)
                    .send()
                    .await
                    .map_err(|e| error::map("cannot read the states of a group", e))?;
                for it in out
                    .responses
                    .as_mut()
                    .and_then(|r| r.remove(table))
                    .unwrap_or_default()
                {
                    if let Some(Av::S(uuid)) = it.get(item::TASK_UUID) {
                        found.insert(uuid.clone(), it);
                    }
                }
                keys = out
                    .unprocessed_keys
                    .as_mut()
                    .and_then(|u| u.remove(table))
                    .map(|k| k.keys)
                    .unwrap_or_default();
                if keys.is_empty() {
                    break;
                }
                if round >= self.inner.batch_get_rounds {
                    return Err(Error::Backend {
                        driver: DRIVER,
                        message: format!(
                            "{} keys of a group still unprocessed after {round} BatchGetItem rounds (throttled)",
                            keys.len()
                        ),
                        temporary: true,
                        source: None,
                    });
                }
                let pause = backoff.next_delay();
                tracing::debug!(
                    unprocessed = keys.len(),
                    ?pause,
                    "BatchGetItem left keys unprocessed; retrying"
                );
                tokio::time::sleep(pause).await;
            }
        }
        Ok(found)
    }

    fn too_large(state: &TaskState, size: usize) -> Error {
        Error::Backend {
            driver: DRIVER,
            message: format!(
                "the {} state of task {} ({}) is {size} bytes, over DynamoDB's item limit of {} bytes (400 KB); nothing was written. Keep large results elsewhere and return a reference",
                state.state,
                state.task_uuid,
                state.task_name,
                item::ITEM_LIMIT
            ),
            temporary: false,
            source: None,
        }
    }
}

/// The parts of an `UpdateItem` being built.
#[derive(Default)]
struct Update {
    sets: Vec<String>,
    names: HashMap<String, String>,
    values: HashMap<String, Av>,
}

impl Update {
    fn set(&mut self, attr: &str, value: Av) {
        let n = self.names.len();
        let (name, val) = (format!("#a{n}"), format!(":v{n}"));
        self.sets.push(format!("{name} = {val}"));
        self.names.insert(name, attr.to_owned());
        self.values.insert(val, value);
    }

    fn set_if_absent(&mut self, attr: &str, value: Av) {
        let n = self.names.len();
        let (name, val) = (format!("#a{n}"), format!(":v{n}"));
        self.sets
            .push(format!("{name} = if_not_exists({name}, {val})"));
        self.names.insert(name, attr.to_owned());
        self.values.insert(val, value);
    }

    fn expression(&self) -> String {
        format!("SET {}", self.sets.join(", "))
    }
}

#[async_trait]
impl Backend for DynamoBackend {
    fn driver(&self) -> &'static str {
        DRIVER
    }

    fn capabilities(&self) -> BackendCapabilities {
        BackendCapabilities {
            expiry: true,
            keeps_created_at: true,
            group_completion_counter: true,
            ..Default::default()
        }
    }

    async fn set_state(&self, state: &TaskState) -> Result<()> {
        let uuid = &state.task_uuid;
        let completed = state.state.is_completed();
        let ttl = if completed { self.ttl_at() } else { 0 };
        let whole = item::state_item(state, ttl);
        let size = item::item_size(&whole);
        if size > item::ITEM_LIMIT {
            let err = Self::too_large(state, size);
            tracing::error!(task = %uuid, size, "{err}");
            return Err(err);
        }
        let what = || format!("cannot store the {} state of {uuid}", state.state);
        if state.state == State::Pending {
            // Go's PutItem of the whole state; a retry's PENDING starts afresh.
            bump(&self.counts().put_item);
            self.inner
                .client
                .put_item()
                .table_name(&self.inner.states)
                .set_item(Some(whole))
                .send()
                .await
                .map_err(|e| error::map(what(), e))?;
            return Ok(());
        }
        // Later states: only what changes; the stored CreatedAt (and TaskName when the new
        // state has none) stay.
        let mut u = Update::default();
        u.set(item::STATE, Av::S(state.state.as_str().to_owned()));
        if !state.task_name.is_empty() {
            u.set(item::TASK_NAME, Av::S(state.task_name.clone()));
        }
        if let Some(results) = &state.results {
            u.set(item::RESULTS, item::results_av(Some(results)));
        }
        if !state.error.is_empty() || state.state == State::Failure {
            u.set(item::ERROR, Av::S(state.error.clone()));
        }
        if completed {
            u.set(item::TTL, Av::N(ttl.to_string()));
        }
        u.set_if_absent(item::CREATED_AT, Av::S(time::format(&state.created_at)));
        bump(&self.counts().update_item);
        self.inner
            .client
            .update_item()
            .table_name(&self.inner.states)
            .set_key(Some(key(item::TASK_UUID, uuid)))
            .update_expression(u.expression())
            .set_expression_attribute_names(Some(u.names))
            .set_expression_attribute_values(Some(u.values))
            .send()
            .await
            .map_err(|e| error::map(what(), e))?;
        Ok(())
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        bump(&self.counts().get_item);
        let out = self
            .inner
            .client
            .get_item()
            .table_name(&self.inner.states)
            .set_key(Some(key(item::TASK_UUID, task_uuid)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| error::map(format!("cannot read the state of {task_uuid}"), e))?;
        match out.item {
            Some(it) if !item::expired(&it, now_ms()) => item::item_to_state(&it).map(Some),
            _ => Ok(None),
        }
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        let meta = GroupMeta {
            ttl: self.ttl_at(),
            ..GroupMeta::new(group_uuid, task_uuids.to_vec())
        };
        let it = item::group_item(&meta);
        // Room for the done set too: it grows to the same member UUIDs.
        let done_size =
            task_uuids.iter().map(String::len).sum::<usize>() + item::DONE_TASK_UUIDS.len();
        let size = item::item_size(&it) + done_size;
        if size > item::ITEM_LIMIT {
            return Err(Error::Backend {
                driver: DRIVER,
                message: format!(
                    "group {group_uuid} of {} members needs {size} bytes, over DynamoDB's item limit of {} bytes (400 KB); split it into smaller groups",
                    task_uuids.len(),
                    item::ITEM_LIMIT
                ),
                temporary: false,
                source: None,
            });
        }
        bump(&self.counts().put_item);
        self.inner
            .client
            .put_item()
            .table_name(&self.inner.groups)
            .set_item(Some(it))
            .send()
            .await
            .map_err(|e| error::map(format!("cannot store group {group_uuid}"), e))?;
        Ok(())
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let meta = self
            .group_item(group_uuid)
            .await?
            .map(|i| item::item_to_group(&i))
            .ok_or_else(|| Error::GroupNotFound(group_uuid.to_owned()))?;
        let mut distinct: Vec<&str> = Vec::with_capacity(meta.task_uuids.len());
        let mut seen = std::collections::HashSet::with_capacity(meta.task_uuids.len());
        for u in &meta.task_uuids {
            if seen.insert(u.as_str()) {
                distinct.push(u);
            }
        }
        let found = self.batch_get(&distinct).await?;
        let now = now_ms();
        meta.task_uuids
            .iter()
            .map(|uuid| match found.get(uuid) {
                Some(it) if !item::expired(it, now) => item::item_to_state(it),
                _ => Ok(TaskState {
                    task_uuid: uuid.clone(),
                    state: State::Pending,
                    ..TaskState::default()
                }),
            })
            .collect()
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        let outcome = self
            .live_group_update(group_uuid, "SET #ct = :t", "#ct = :f")
            .expression_attribute_names("#ct", item::CHORD_TRIGGERED)
            .expression_attribute_values(":t", Av::Bool(true))
            .expression_attribute_values(":f", Av::Bool(false))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match outcome {
            Ok(_) => Ok(true),
            Err(e) => {
                // Already triggered (the old item comes back with the refusal), or no such
                // (live) group.
                if let Some(UpdateItemError::ConditionalCheckFailedException(ccf)) =
                    e.as_service_error()
                {
                    return match &ccf.item {
                        Some(old) if !item::expired(old, now_ms()) => Ok(false),
                        _ => Err(Error::GroupNotFound(group_uuid.to_owned())),
                    };
                }
                Err(error::map(
                    format!("cannot trigger the chord of {group_uuid}"),
                    e,
                ))
            }
        }
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let outcome = self
            .live_group_update(group_uuid, "ADD #d :m", "")
            .expression_attribute_names("#d", item::DONE_TASK_UUIDS)
            .expression_attribute_values(":m", Av::Ss(vec![task_uuid.to_owned()]))
            // moto answers UPDATED_NEW with an empty map when the member was already there.
            .return_values(ReturnValue::AllNew)
            .send()
            .await;
        match outcome {
            Ok(out) => match out
                .attributes
                .as_ref()
                .and_then(|a| a.get(item::DONE_TASK_UUIDS))
            {
                Some(Av::Ss(members)) => Ok(members.len()),
                other => Err(Error::decode(
                    "group meta",
                    format!(
                        "{} of group {group_uuid} is not a string set: {other:?}",
                        item::DONE_TASK_UUIDS
                    ),
                )),
            },
            Err(e)
                if e.as_service_error()
                    .is_some_and(|se| se.is_conditional_check_failed_exception()) =>
            {
                Err(Error::GroupNotFound(group_uuid.to_owned()))
            }
            Err(e) => Err(error::map(
                format!("cannot count the members of {group_uuid}"),
                e,
            )),
        }
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        bump(&self.counts().delete_item);
        self.inner
            .client
            .delete_item()
            .table_name(&self.inner.states)
            .set_key(Some(key(item::TASK_UUID, task_uuid)))
            .send()
            .await
            .map_err(|e| error::map(format!("cannot delete the state of {task_uuid}"), e))?;
        Ok(())
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        bump(&self.counts().delete_item);
        self.inner
            .client
            .delete_item()
            .table_name(&self.inner.groups)
            .set_key(Some(key(item::GROUP_UUID, group_uuid)))
            .send()
            .await
            .map_err(|e| error::map(format!("cannot delete group {group_uuid}"), e))?;
        Ok(())
    }
}
