//! `rollup`'s handler through memory doubles of its stores and webhooks:
//! no emulator. tests/metering.rs and tests/alerts.rs drive it against it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use chrono::{TimeDelta, Utc};
use lambda_runtime::{Context, LambdaEvent};
use rollup::handle;
use shared::metering::alerts::{AlertKey, MemoryAlertQueue, MemoryAlerts, RecordingNotifier};
use shared::metering::consumer::{Consumer, MemoryDeadLetters};
use shared::metering::ingest::pack;
use shared::metering::period::BillingPeriod;
use shared::metering::rollup::MemoryLedger;
use shared::metering::tenants::{
    ApiKey, CachedProfiles, MemoryTenants, NewTenant, Tenant, TenantStore,
};
use shared::metering::types::{EventId, Feature, TenantId, Tokens, UsageEvent};
use shared::metering::usage::UsageReader;

const ALERTS_QUEUE: &str = "arn:aws:sqs:us-east-1:000000000000:alerts";

struct Rollup {
    service: rollup::Rollup,
    tenants: Arc<MemoryTenants>,
    ledger: Arc<MemoryLedger>,
    alerts: Arc<MemoryAlerts>,
    queue: Arc<MemoryAlertQueue>,
    notifier: Arc<RecordingNotifier>,
    dead_letters: Arc<MemoryDeadLetters>,
}

fn rollup() -> Rollup {
    let tenants = Arc::new(MemoryTenants::default());
    let ledger = Arc::new(MemoryLedger::default());
    let alerts = Arc::new(MemoryAlerts::default());
    let queue = Arc::new(MemoryAlertQueue::default());
    let notifier = Arc::new(RecordingNotifier::default());
    let dead_letters = Arc::new(MemoryDeadLetters::default());
    let consumer = Consumer {
        // As deployed: a profile read is remembered for 30 s.
        tenants: CachedProfiles::new(tenants.clone(), Duration::from_secs(30)),
        ledger: ledger.clone(),
        usage: ledger.clone(),
        alerts: alerts.clone(),
        alert_queue: queue.clone(),
        notifier: notifier.clone(),
        dead_letters: dead_letters.clone(),
        alert_backoff: Duration::from_secs(30),
    };
    Rollup {
        service: rollup::Rollup {
            consumer,
            alerts_queue_arn: ALERTS_QUEUE.into(),
        },
        tenants,
        ledger,
        alerts,
        queue,
        notifier,
        dead_letters,
    }
}

async fn tenant(rollup: &Rollup, quota: u64) -> Tenant {
    tenant_billed_on(rollup, quota, 1).await
}

async fn tenant_billed_on(rollup: &Rollup, quota: u64, billing_day: u8) -> Tenant {
    let new: NewTenant = serde_json::from_value(serde_json::json!({
        "name": "Acme", "monthly_quota": quota, "billing_day": billing_day, "tier": "pro",
        "webhooks": ["https://hooks.example/ingot"],
    }))
    .unwrap();
    let tenant = new.into_tenant(Utc::now()).unwrap();
    let key = ApiKey::generate().hash();
    rollup.tenants.create(&tenant, &key).await.unwrap();
    tenant
}

fn events(prefix: &str, count: u64, tokens: u64) -> Vec<UsageEvent> {
    (0..count)
        .map(|i| UsageEvent {
            id: EventId::try_from(format!("{prefix}{i}")).unwrap(),
            feature: Feature::try_from("chat".to_owned()).unwrap(),
            tokens: Tokens::try_from(tokens).unwrap(),
            timestamp: Utc::now(),
            properties: Default::default(),
        })
        .collect()
}

thread_local! {
    /// Sequence numbers by message id, in order of first use (each test
    /// runs on its own thread).
    static SEQUENCE: std::cell::RefCell<Vec<String>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A message of a FIFO queue: the same id always has the same sequence
/// number, a new id a larger one.
fn message(id: &str, body: &str) -> SqsMessage {
    let seq = SEQUENCE.with_borrow_mut(|ids| {
        let position = ids.iter().position(|known| known == id).unwrap_or_else(|| {
            ids.push(id.to_owned());
            ids.len() - 1
        });
        18_849_496_460_467_696_128u128 + position as u128
    });
    let mut message = SqsMessage::default();
    message.message_id = Some(id.to_owned());
    message.body = Some(body.to_owned());
    message
        .attributes
        .insert("SequenceNumber".to_owned(), seq.to_string());
    message
}

/// A delivery as Lambda makes it, with a minute left to run.
fn delivery(messages: Vec<SqsMessage>) -> LambdaEvent<SqsEvent> {
    delivery_with(messages, TimeDelta::minutes(1))
}

fn delivery_with(messages: Vec<SqsMessage>, left: TimeDelta) -> LambdaEvent<SqsEvent> {
    let mut context = Context::default();
    context.deadline = (Utc::now() + left).timestamp_millis() as u64;
    let mut event = SqsEvent::default();
    event.records = messages;
    LambdaEvent::new(event, context)
}

fn failed(response: &SqsBatchResponse) -> Vec<String> {
    response
        .batch_item_failures
        .iter()
        .map(|f| f.item_identifier.clone())
        .collect()
}

async fn period_total(rollup: &Rollup, tenant: &TenantId) -> u64 {
    let period = BillingPeriod::containing(Utc::now(), 1.try_into().unwrap());
    rollup
        .ledger
        .period_total(tenant, &period.key())
        .await
        .unwrap()
}

#[tokio::test]
async fn counts_every_tenants_events_and_a_redelivery_adds_nothing() {
    let rollup = rollup();
    let (a, b) = (
        tenant(&rollup, 1_000_000).await,
        tenant(&rollup, 1_000_000).await,
    );
    let messages = || {
        vec![
            message("m1", &pack(&a.id, &events("a", 3, 10))[0]),
            message("m2", &pack(&b.id, &events("b", 2, 7))[0]),
        ]
    };
    let response = handle(&rollup.service, delivery(messages())).await.unwrap();
    assert!(failed(&response).is_empty());
    assert_eq!(
        (
            period_total(&rollup, &a.id).await,
            period_total(&rollup, &b.id).await
        ),
        (30, 14)
    );

    let again = handle(&rollup.service, delivery(messages())).await.unwrap();
    assert!(failed(&again).is_empty());
    assert_eq!(period_total(&rollup, &a.id).await, 30);
}

#[tokio::test]
async fn an_unreadable_message_is_set_aside_and_the_rest_counted() {
    let rollup = rollup();
    let a = tenant(&rollup, 1_000_000).await;
    let good = pack(&a.id, &events("a", 1, 5))[0].clone();
    let response = handle(
        &rollup.service,
        delivery(vec![message("bad", "{not json"), message("good", &good)]),
    )
    .await
    .unwrap();
    assert!(failed(&response).is_empty());
    assert_eq!(rollup.dead_letters.parked(), ["bad"]);
    assert_eq!(period_total(&rollup, &a.id).await, 5);
}

#[tokio::test]
async fn an_unknown_tenants_messages_are_retried_not_dropped() {
    let rollup = rollup();
    let ghost = TenantId::generate();
    let response = handle(
        &rollup.service,
        delivery(vec![message("m1", &pack(&ghost, &events("g", 1, 5))[0])]),
    )
    .await
    .unwrap();
    assert_eq!(failed(&response), ["m1"]);
}

/// A delivery's tenants are read at once: an unknown one among them is
/// retried alone, and a tenants table that cannot be read retries them all.
#[tokio::test]
async fn tenants_are_read_together_and_fail_together() {
    let rollup = rollup();
    let acme = tenant(&rollup, 1_000_000).await;
    let ghost = TenantId::generate();
    let mixed = || {
        delivery(vec![
            message("m1", &pack(&acme.id, &events("a", 1, 5))[0]),
            message("m2", &pack(&ghost, &events("g", 1, 5))[0]),
        ])
    };
    rollup.tenants.outage.begin();
    let response = handle(&rollup.service, mixed()).await.unwrap();
    let mut all = failed(&response);
    all.sort();
    assert_eq!(all, ["m1", "m2"]);
    rollup.tenants.outage.end();
    assert_eq!(period_total(&rollup, &acme.id).await, 0);

    let response = handle(&rollup.service, mixed()).await.unwrap();
    assert_eq!(failed(&response), ["m2"]);
    assert_eq!(period_total(&rollup, &acme.id).await, 5);
}

/// Events a deleted tenant sent before its keys stopped were accepted, so
/// they are counted (in the period of the billing day its tombstone keeps)
/// and acknowledged; it gets no alerts, though they cross its quota.
#[tokio::test]
async fn a_deleted_tenants_queued_events_are_counted_without_alerts() {
    let rollup = rollup();
    let acme = tenant_billed_on(&rollup, 100, 15).await;
    let now = Utc::now();
    assert!(
        shared::metering::tenants::delete_tenant(rollup.tenants.as_ref(), &acme.id, now)
            .await
            .unwrap()
    );
    let response = handle(
        &rollup.service,
        delivery(vec![message("m1", &pack(&acme.id, &events("d", 3, 30))[0])]),
    )
    .await
    .unwrap();
    assert!(failed(&response).is_empty());
    let period = BillingPeriod::containing(now, 15.try_into().unwrap());
    let counted = rollup.ledger.period_total(&acme.id, &period.key()).await;
    assert_eq!(counted.unwrap(), 90);
    assert!(rollup.alerts.all().is_empty());
    assert!(rollup.queue.take().is_empty());
}

#[tokio::test]
async fn a_failing_ledger_fails_the_messages_it_could_not_count() {
    let rollup = rollup();
    let a = tenant(&rollup, 1_000_000).await;
    rollup.ledger.outage.begin();
    let response = handle(
        &rollup.service,
        delivery(vec![message("m1", &pack(&a.id, &events("a", 1, 5))[0])]),
    )
    .await
    .unwrap();
    assert_eq!(failed(&response), ["m1"]);
    rollup.ledger.outage.end();
    assert_eq!(period_total(&rollup, &a.id).await, 0);
}

/// The alerts queue's messages for `keys`, as Lambda delivers them (this
/// many times before).
fn alert_messages(keys: &[AlertKey], received_before: u32) -> Vec<SqsMessage> {
    keys.iter()
        .enumerate()
        .map(|(i, key)| {
            let mut m = message(&format!("alert{i}"), &serde_json::to_string(key).unwrap());
            m.event_source_arn = Some(ALERTS_QUEUE.into());
            m.receipt_handle = Some(format!("receipt{i}"));
            m.attributes.insert(
                "ApproximateReceiveCount".into(),
                (received_before + 1).to_string(),
            );
            m
        })
        .collect()
}

/// Delivers whatever counting queued; the messages to redeliver.
async fn deliver_queued(rollup: &Rollup) -> Vec<String> {
    let queued = rollup.queue.take();
    let response = handle(&rollup.service, delivery(alert_messages(&queued, 0)))
        .await
        .unwrap();
    failed(&response)
}

#[tokio::test]
async fn crossing_80_and_100_percent_sends_each_alert_once() {
    let rollup = rollup();
    let a = tenant(&rollup, 100).await;
    let first = vec![message("m1", &pack(&a.id, &events("a", 1, 85))[0])];
    handle(&rollup.service, delivery(first.clone()))
        .await
        .unwrap();
    assert!(
        rollup.notifier.sent().is_empty(),
        "counting calls no webhook"
    );
    assert!(deliver_queued(&rollup).await.is_empty());
    handle(&rollup.service, delivery(first)).await.unwrap();
    let second = vec![message("m2", &pack(&a.id, &events("b", 1, 20))[0])];
    handle(&rollup.service, delivery(second)).await.unwrap();
    assert!(deliver_queued(&rollup).await.is_empty());

    let sent = rollup.notifier.sent();
    let thresholds: Vec<u8> = sent.iter().map(|(_, alert)| alert.threshold).collect();
    assert_eq!(thresholds, [80, 100]);
    assert!(
        sent.iter()
            .all(|(url, _)| url == "https://hooks.example/ingot")
    );
    assert!(
        rollup
            .alerts
            .all()
            .iter()
            .all(|alert| alert.pending.is_empty())
    );
    assert!(rollup.queue.take().is_empty(), "nothing queued twice");
}

/// An alert raised before its tenant was deleted is acknowledged, not
/// sent: nothing more goes to a deleted tenant's webhooks.
#[tokio::test]
async fn an_alert_of_a_tenant_deleted_since_is_not_sent() {
    let rollup = rollup();
    let a = tenant(&rollup, 100).await;
    let crossing = vec![message("m1", &pack(&a.id, &events("a", 1, 90))[0])];
    handle(&rollup.service, delivery(crossing)).await.unwrap();
    let deleted =
        shared::metering::tenants::delete_tenant(rollup.tenants.as_ref(), &a.id, Utc::now());
    assert!(deleted.await.unwrap());
    let queued = rollup.queue.take();
    assert_eq!(queued.len(), 1, "the 80% alert was raised");
    let response = handle(&rollup.service, delivery(alert_messages(&queued, 0)))
        .await
        .unwrap();
    assert!(failed(&response).is_empty(), "acknowledged");
    assert!(rollup.notifier.sent().is_empty());
}

/// The events that crossed a threshold are not acknowledged until its alert
/// is on the alerts queue: their redelivery queues it.
#[tokio::test]
async fn a_crossing_the_alerts_queue_missed_is_queued_by_the_redelivery() {
    let rollup = rollup();
    let a = tenant(&rollup, 100).await;
    let crossing = vec![message("m1", &pack(&a.id, &events("a", 1, 90))[0])];
    rollup.queue.outage.begin();
    let response = handle(&rollup.service, delivery(crossing.clone()))
        .await
        .unwrap();
    assert_eq!(failed(&response), ["m1"], "counted, not yet alerted");
    assert_eq!(period_total(&rollup, &a.id).await, 90);
    rollup.queue.outage.end();

    let again = handle(&rollup.service, delivery(crossing)).await.unwrap();
    assert!(failed(&again).is_empty());
    assert_eq!(period_total(&rollup, &a.id).await, 90, "counted once");
    assert!(deliver_queued(&rollup).await.is_empty());
    assert_eq!(rollup.notifier.sent().len(), 1);
}

#[tokio::test]
async fn an_alert_a_webhook_refused_is_retried_after_a_doubling_backoff() {
    let rollup = rollup();
    let a = tenant(&rollup, 100).await;
    rollup
        .notifier
        .failing
        .lock()
        .unwrap()
        .push("https://hooks.example/ingot".into());
    let crossing = vec![message("m1", &pack(&a.id, &events("a", 1, 90))[0])];
    let response = handle(&rollup.service, delivery(crossing)).await.unwrap();
    assert!(failed(&response).is_empty(), "counted and raised");
    let queued = rollup.queue.take();
    for received_before in [0, 1, 2] {
        let response = handle(
            &rollup.service,
            delivery(alert_messages(&queued, received_before)),
        )
        .await
        .unwrap();
        assert_eq!(failed(&response), ["alert0"]);
    }
    let delays: Vec<u64> = rollup
        .queue
        .retries()
        .iter()
        .map(|(receipt, delay)| {
            assert_eq!(receipt, "receipt0");
            delay.as_secs()
        })
        .collect();
    assert_eq!(delays, [30, 60, 120]);
    assert_eq!(rollup.alerts.all()[0].pending.len(), 1);

    rollup.notifier.failing.lock().unwrap().clear();
    let response = handle(&rollup.service, delivery(alert_messages(&queued, 3)))
        .await
        .unwrap();
    assert!(failed(&response).is_empty());
    assert!(rollup.alerts.all()[0].pending.is_empty());
}

#[tokio::test]
async fn a_slow_webhook_never_delays_counting_and_is_cut_off_before_the_deadline() {
    let rollup = rollup();
    let a = tenant(&rollup, 100).await;
    *rollup.notifier.delay.lock().unwrap() = Duration::from_secs(30);
    let crossing = vec![message("m1", &pack(&a.id, &events("a", 1, 90))[0])];
    let started = Instant::now();
    let response = handle(&rollup.service, delivery(crossing)).await.unwrap();
    assert!(failed(&response).is_empty());
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(period_total(&rollup, &a.id).await, 90);

    // Four seconds left, three kept to answer Lambda: one for webhooks.
    let queued = rollup.queue.take();
    let started = Instant::now();
    let response = handle(
        &rollup.service,
        delivery_with(alert_messages(&queued, 0), TimeDelta::seconds(4)),
    )
    .await
    .unwrap();
    assert!(started.elapsed() < Duration::from_secs(3));
    assert_eq!(failed(&response), ["alert0"], "retried");
    assert!(rollup.notifier.sent().is_empty());
    assert_eq!(rollup.alerts.all()[0].pending.len(), 1);
}

#[tokio::test]
async fn an_unreadable_alert_message_is_retried_into_the_dead_letter_queue() {
    let rollup = rollup();
    let mut bad = message("alert0", "{not json");
    bad.event_source_arn = Some(ALERTS_QUEUE.into());
    let response = handle(&rollup.service, delivery(vec![bad])).await.unwrap();
    assert_eq!(failed(&response), ["alert0"]);
}
