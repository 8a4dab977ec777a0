//! The suite must be able to fail: each test wraps the (correct) memory drivers in a driver
//! with one deliberate fault and checks that the case meant to catch it fails.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use futures::StreamExt;
use machinery_core::{
    Acknowledger, Backend, BackendCapabilities, Broker, BrokerCapabilities, ConsumeOptions,
    DeadLetter, Delivery, DeliveryStream, MemoryBackend, MemoryBroker, Nack, Payload, Result,
    Signature, TaskState, async_trait,
};
use machinery_testkit::{BackendSetup, BrokerSetup, BrokerUnderTest, Timing, backend, broker, run};
use tokio::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BrokerFault {
    DropsEta,
    IgnoresRequeueDelay,
    AckRequeues,
    DroppedDeliveryIsLost,
    PublishesTwice,
    ListsPendingReversed,
    ListsDelayedReversed,
    SwallowsMalformed,
    PurgeDoesNothing,
    LosesHeaders,
    ShufflesPriorities,
    ReportsWrongDeadLetterReason,
}

#[derive(Debug)]
struct FaultyBroker {
    inner: MemoryBroker,
    fault: BrokerFault,
    counter: AtomicU8,
}

/// Forwards to the real delivery, with the fault applied.
struct FaultyAcker {
    delivery: Mutex<Option<Delivery>>,
    fault: BrokerFault,
}

impl FaultyAcker {
    async fn take(&self) -> Delivery {
        self.delivery.lock().await.take().expect("settled once")
    }
}

#[async_trait]
impl Acknowledger for FaultyAcker {
    async fn ack(&self) -> Result<()> {
        let d = self.take().await;
        if self.fault == BrokerFault::AckRequeues {
            d.requeue(None).await
        } else {
            d.ack().await
        }
    }

    async fn nack(&self, nack: Nack) -> Result<()> {
        let d = self.take().await;
        match nack {
            Nack::Requeue { delay } => {
                let delay = if self.fault == BrokerFault::IgnoresRequeueDelay {
                    None
                } else {
                    delay
                };
                d.requeue(delay).await
            }
            Nack::DeadLetter { reason } => d.dead_letter(reason).await,
        }
    }
}

impl Drop for FaultyAcker {
    fn drop(&mut self) {
        if self.fault == BrokerFault::DroppedDeliveryIsLost
            && let Some(d) = self.delivery.get_mut().take()
        {
            // The memory ack never waits, so settling it here is immediate.
            let _ = futures::executor::block_on(d.ack());
        }
    }
}

#[async_trait]
impl Broker for FaultyBroker {
    fn driver(&self) -> &'static str {
        "faulty"
    }

    fn capabilities(&self) -> BrokerCapabilities {
        self.inner.capabilities()
    }

    fn default_routing_key(&self) -> String {
        self.inner.default_routing_key()
    }

    async fn publish(&self, sig: &Signature) -> Result<()> {
        let mut sig = sig.clone();
        match self.fault {
            BrokerFault::DropsEta => sig.eta = None,
            BrokerFault::LosesHeaders => sig.headers = None,
            BrokerFault::ShufflesPriorities => {
                sig.priority = self.counter.fetch_add(1, Ordering::Relaxed) % 7;
            }
            BrokerFault::PublishesTwice => self.inner.publish(&sig).await?,
            _ => {}
        }
        self.inner.publish(&sig).await
    }

    async fn consume(&self, queue: &str, options: ConsumeOptions) -> Result<DeliveryStream> {
        let fault = self.fault;
        let stream = self.inner.consume(queue, options).await?;
        let stream = stream.filter_map(move |item| async move {
            let d = match item {
                Ok(d) => d,
                Err(e) => return Some(Err(e)),
            };
            if fault == BrokerFault::SwallowsMalformed
                && matches!(d.payload, Payload::Malformed { .. })
            {
                d.ack().await.expect("ack");
                return None;
            }
            let (payload, redelivered) = (d.payload.clone(), d.redelivered);
            let acker = FaultyAcker {
                delivery: Mutex::new(Some(d)),
                fault,
            };
            Some(Ok(Delivery::new(payload, redelivered, Box::new(acker))))
        });
        Ok(Box::pin(stream))
    }

    async fn pending_tasks(&self, queue: &str) -> Result<Vec<Signature>> {
        let mut v = self.inner.pending_tasks(queue).await?;
        if self.fault == BrokerFault::ListsPendingReversed {
            v.reverse();
        }
        Ok(v)
    }

    async fn delayed_tasks(&self) -> Result<Vec<Signature>> {
        let mut v = self.inner.delayed_tasks().await?;
        if self.fault == BrokerFault::ListsDelayedReversed {
            v.reverse();
        }
        Ok(v)
    }

    async fn purge_queue(&self, queue: &str) -> Result<()> {
        if self.fault == BrokerFault::PurgeDoesNothing {
            return Ok(());
        }
        self.inner.purge_queue(queue).await
    }

    async fn close(&self) -> Result<()> {
        self.inner.close().await
    }
}

struct FaultyUnderTest {
    broker: Arc<FaultyBroker>,
}

#[async_trait]
impl BrokerUnderTest for FaultyUnderTest {
    fn broker(&self) -> Arc<dyn Broker> {
        Arc::clone(&self.broker) as Arc<dyn Broker>
    }

    async fn another(&self) -> Result<Arc<dyn Broker>> {
        Ok(Arc::clone(&self.broker) as Arc<dyn Broker>)
    }

    async fn inject_raw(&self, queue: &str, body: &[u8]) -> Result<()> {
        self.broker.inner.inject_raw(queue, body)
    }

    async fn dead_letters(&self, queue: &str) -> Result<Vec<DeadLetter>> {
        let mut letters = self.broker.inner.dead_letters(queue);
        if self.broker.fault == BrokerFault::ReportsWrongDeadLetterReason {
            for l in &mut letters {
                l.reason = "something else".to_owned();
            }
        }
        Ok(letters)
    }

    fn timing(&self) -> Timing {
        Timing {
            receive_timeout: Duration::from_secs(1),
            ..Timing::in_process()
        }
    }

    async fn teardown(&self) -> Result<()> {
        Ok(())
    }
}

fn faulty_broker(fault: BrokerFault) -> Option<Box<dyn BrokerUnderTest>> {
    let broker = FaultyBroker {
        inner: MemoryBroker::new(),
        fault,
        counter: AtomicU8::new(0),
    };
    Some(Box::new(FaultyUnderTest {
        broker: Arc::new(broker),
    }))
}

macro_rules! broker_fault {
    ($test:ident, $fault:ident, $case:ident) => {
        #[test]
        #[should_panic]
        fn $test() {
            run(broker::$case(|_: BrokerSetup| async {
                faulty_broker(BrokerFault::$fault)
            }));
        }
    };
}

broker_fault!(early_eta_is_caught, DropsEta, eta_is_respected);
broker_fault!(
    ignored_requeue_delay_is_caught,
    IgnoresRequeueDelay,
    requeue_with_delay_is_not_early
);
broker_fault!(
    ack_that_requeues_is_caught,
    AckRequeues,
    ack_removes_message
);
broker_fault!(
    ack_that_requeues_breaks_nack_case,
    AckRequeues,
    nack_requeues
);
broker_fault!(
    lost_unacked_delivery_is_caught,
    DroppedDeliveryIsLost,
    unacked_is_redelivered_after_consumer_dropped
);
broker_fault!(
    duplicates_are_caught,
    PublishesTwice,
    competing_consumers_never_share_a_message
);
broker_fault!(
    duplicate_in_roundtrip_is_caught,
    PublishesTwice,
    publish_then_consume_roundtrips
);
broker_fault!(
    reversed_pending_list_is_caught,
    ListsPendingReversed,
    pending_tasks_are_listed_in_order
);
broker_fault!(
    reversed_delayed_list_is_caught,
    ListsDelayedReversed,
    delayed_tasks_are_listed
);
broker_fault!(
    swallowed_malformed_body_is_caught,
    SwallowsMalformed,
    undecodable_body_surfaces_as_malformed_delivery
);
broker_fault!(
    wrong_dead_letter_reason_is_caught,
    ReportsWrongDeadLetterReason,
    undecodable_body_surfaces_as_malformed_delivery
);
broker_fault!(
    noop_purge_is_caught,
    PurgeDoesNothing,
    purge_queue_empties_it
);
broker_fault!(
    lost_headers_are_caught,
    LosesHeaders,
    publish_then_consume_roundtrips
);
broker_fault!(reordering_is_caught, ShufflesPriorities, fifo_order_is_kept);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BackendFault {
    ChordAlwaysFires,
    ForgetsCreatedAt,
    InventsStates,
    EmptyResultsBecomeNone,
    BigIntegersBecomeFloats,
    TruncatesErrors,
    ReversesGroups,
    UnknownGroupIsNotAnError,
    PurgeGroupDoesNothing,
    NeverExpires,
    KeepsFirstState,
    CountsEveryCall,
}

#[derive(Debug)]
struct FaultyBackend {
    inner: MemoryBackend,
    fault: BackendFault,
    calls: std::sync::Mutex<HashMap<String, usize>>,
}

#[async_trait]
impl Backend for FaultyBackend {
    fn driver(&self) -> &'static str {
        "faulty"
    }

    fn capabilities(&self) -> BackendCapabilities {
        self.inner.capabilities()
    }

    async fn set_state(&self, state: &TaskState) -> Result<()> {
        let mut state = state.clone();
        match self.fault {
            BackendFault::ForgetsCreatedAt => self.inner.purge_state(&state.task_uuid).await?,
            BackendFault::KeepsFirstState
                if self.inner.state(&state.task_uuid).await?.is_some() =>
            {
                return Ok(());
            }
            BackendFault::EmptyResultsBecomeNone
                if state.results.as_ref().is_some_and(Vec::is_empty) =>
            {
                state.results = None;
            }
            BackendFault::BigIntegersBecomeFloats => {
                for r in state.results.iter_mut().flatten() {
                    if r.type_name == "uint64" {
                        let f: f64 = r.value.get().parse().expect("number");
                        r.value = serde_json::value::to_raw_value(&f).expect("float");
                    }
                }
            }
            BackendFault::TruncatesErrors => {
                state.error = state.error.lines().next().unwrap_or_default().to_owned();
            }
            _ => {}
        }
        self.inner.set_state(&state).await
    }

    async fn state(&self, task_uuid: &str) -> Result<Option<TaskState>> {
        let got = self.inner.state(task_uuid).await?;
        if self.fault == BackendFault::InventsStates && got.is_none() {
            return Ok(Some(TaskState {
                task_uuid: task_uuid.to_owned(),
                ..TaskState::default()
            }));
        }
        Ok(got)
    }

    async fn init_group(&self, group_uuid: &str, task_uuids: &[String]) -> Result<()> {
        self.inner.init_group(group_uuid, task_uuids).await
    }

    async fn group_states(&self, group_uuid: &str) -> Result<Vec<TaskState>> {
        let mut v = self.inner.group_states(group_uuid).await?;
        if self.fault == BackendFault::ReversesGroups {
            v.reverse();
        }
        Ok(v)
    }

    async fn trigger_chord(&self, group_uuid: &str) -> Result<bool> {
        match (self.fault, self.inner.trigger_chord(group_uuid).await) {
            (BackendFault::ChordAlwaysFires, Ok(_)) => Ok(true),
            (BackendFault::UnknownGroupIsNotAnError, Err(_)) => Ok(false),
            (_, r) => r,
        }
    }

    async fn mark_group_member_done(&self, group_uuid: &str, task_uuid: &str) -> Result<usize> {
        let counted = self
            .inner
            .mark_group_member_done(group_uuid, task_uuid)
            .await?;
        if self.fault != BackendFault::CountsEveryCall {
            return Ok(counted);
        }
        let mut calls = self.calls.lock().expect("calls");
        let n = calls.entry(group_uuid.to_owned()).or_default();
        *n += 1;
        Ok(*n)
    }

    async fn purge_state(&self, task_uuid: &str) -> Result<()> {
        self.inner.purge_state(task_uuid).await
    }

    async fn purge_group(&self, group_uuid: &str) -> Result<()> {
        if self.fault == BackendFault::PurgeGroupDoesNothing {
            return Ok(());
        }
        self.inner.purge_group(group_uuid).await
    }
}

fn faulty_backend(fault: BackendFault, setup: &BackendSetup) -> Option<Arc<dyn Backend>> {
    let inner = match setup.results_expire_in {
        Some(ttl) if fault != BackendFault::NeverExpires => MemoryBackend::with_ttl(ttl),
        _ => MemoryBackend::new(),
    };
    Some(Arc::new(FaultyBackend {
        inner,
        fault,
        calls: std::sync::Mutex::default(),
    }))
}

macro_rules! backend_fault {
    ($test:ident, $fault:ident, $case:ident) => {
        #[test]
        #[should_panic]
        fn $test() {
            run(backend::$case(|setup: BackendSetup| async move {
                faulty_backend(BackendFault::$fault, &setup)
            }));
        }
    };
}

backend_fault!(
    chord_firing_twice_is_caught,
    ChordAlwaysFires,
    trigger_chord_fires_exactly_once_under_contention
);
backend_fault!(
    forgotten_created_at_is_caught,
    ForgetsCreatedAt,
    set_state_keeps_created_at
);
backend_fault!(
    invented_state_is_caught,
    InventsStates,
    unknown_task_has_no_state
);
backend_fault!(
    empty_results_turning_none_is_caught,
    EmptyResultsBecomeNone,
    results_preserve_types
);
backend_fault!(
    uint64_as_float_is_caught,
    BigIntegersBecomeFloats,
    results_preserve_types
);
backend_fault!(
    truncated_error_is_caught,
    TruncatesErrors,
    failure_keeps_error_text
);
backend_fault!(
    reversed_group_is_caught,
    ReversesGroups,
    group_states_are_in_group_order
);
backend_fault!(
    unknown_group_without_error_is_caught,
    UnknownGroupIsNotAnError,
    trigger_chord_unknown_group_errors
);
backend_fault!(
    noop_purge_group_is_caught,
    PurgeGroupDoesNothing,
    purge_removes_state_and_group
);
backend_fault!(missing_expiry_is_caught, NeverExpires, results_expire);
backend_fault!(
    stale_state_is_caught,
    KeepsFirstState,
    state_lifecycle_roundtrips
);
backend_fault!(
    counting_repeats_is_caught,
    CountsEveryCall,
    group_member_done_counts_each_member_once
);
