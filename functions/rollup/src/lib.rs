//! `rollup`: counts the events queue into per-minute and per-period totals,
//! exactly once.
//!
//! Lambda delivers batches of the FIFO events queue; each message is one
//! tenant's accepted events, in the tenant's message group. Events are
//! grouped per tenant across the batch (so counters are pre-aggregated over
//! the whole batch) and counted in the group's order, which makes
//! redelivery harmless (shared::metering::rollup). A tenant's messages whose
//! events could not be counted are reported in `batchItemFailures` (the
//! template enables `ReportBatchItemFailures`) and retried until they are:
//! the queue has no redrive policy, because skipping a message would break
//! the order counting relies on. Unreadable messages are set aside on the
//! DLQ. Nothing is acknowledged that was not counted.
//!
//! Counting raises the quota alerts a tenant reached onto the alerts queue,
//! which this function consumes too (its second event source): records from
//! that queue are alerts to deliver to webhooks, with a doubling backoff
//! between attempts and then its DLQ.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
use shared::aws::Dynamo;
use shared::aws::SdkConfig;
use shared::aws::alerts::DynamoAlerts;
use shared::aws::ledger::DynamoLedger;
use shared::aws::queue::{SqsAlertQueue, SqsDeadLetters};
use shared::aws::tenants::DynamoTenants;
use shared::config::{ConfigError, Env};
use shared::metering::consumer::{Consumer, Message};
use shared::metering::tenants::CachedProfiles;
use shared::telemetry::{MetricUnit, Metrics};
use shared::webhook::{RetryPolicy, WebhookSender};

pub const FUNCTION: &str = "rollup";

#[derive(Debug, Clone)]
pub struct Config {
    pub usage_table: String,
    pub tenants_table: String,
    pub alerts_queue_url: String,
    /// Where unreadable events messages are set aside.
    pub events_dlq_url: String,
    /// Records from this queue are alerts to deliver; any other's, events.
    pub alerts_queue_arn: String,
    /// The wait before an alert's second delivery, doubling per attempt
    /// (`ALERT_BACKOFF_SECONDS`, 30).
    pub alert_backoff: Duration,
    /// How long a tenant's profile is remembered per instance
    /// (`TENANT_CACHE_SECONDS`, 30): a change reaches counting within it.
    pub tenant_cache: Duration,
    /// Webhook attempts: timeout each, retries, first backoff
    /// (`WEBHOOK_TIMEOUT_MS`, `WEBHOOK_RETRIES`, `WEBHOOK_BACKOFF_MS`).
    pub webhooks: RetryPolicy,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let default = RetryPolicy::default();
        Ok(Self {
            usage_table: env.required("USAGE_TABLE")?,
            tenants_table: env.required("TENANTS_TABLE")?,
            alerts_queue_url: env.required("ALERTS_QUEUE_URL")?,
            events_dlq_url: env.required("EVENTS_DLQ_URL")?,
            alerts_queue_arn: env.required("ALERTS_QUEUE_ARN")?,
            alert_backoff: Duration::from_secs(env.parse_or("ALERT_BACKOFF_SECONDS", 30)?),
            tenant_cache: Duration::from_secs(env.parse_or("TENANT_CACHE_SECONDS", 30)?),
            webhooks: RetryPolicy {
                timeout: Duration::from_millis(
                    env.parse_or("WEBHOOK_TIMEOUT_MS", default.timeout.as_millis() as u64)?,
                ),
                retries: env.parse_or("WEBHOOK_RETRIES", default.retries)?,
                base_delay: Duration::from_millis(
                    env.parse_or("WEBHOOK_BACKOFF_MS", default.base_delay.as_millis() as u64)?,
                ),
            },
        })
    }
}

/// The consumer and which queue is which.
#[derive(Clone)]
pub struct Rollup {
    pub consumer: Consumer,
    pub alerts_queue_arn: String,
}

/// The rollup over AWS, built once per cold start.
pub fn rollup(config: &Config, aws: &SdkConfig) -> Rollup {
    let dynamodb = Dynamo::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let ledger = Arc::new(DynamoLedger::new(dynamodb.clone(), &config.usage_table));
    let consumer = Consumer {
        tenants: CachedProfiles::new(
            Arc::new(DynamoTenants::new(dynamodb.clone(), &config.tenants_table)),
            config.tenant_cache,
        ),
        ledger: ledger.clone(),
        usage: ledger,
        alerts: Arc::new(DynamoAlerts::new(dynamodb.sdk, &config.usage_table)),
        alert_queue: Arc::new(SqsAlertQueue::new(sqs.clone(), &config.alerts_queue_url)),
        notifier: Arc::new(WebhookSender::new(config.webhooks)),
        dead_letters: Arc::new(SqsDeadLetters::new(sqs, &config.events_dlq_url)),
        alert_backoff: config.alert_backoff,
    };
    Rollup {
        consumer,
        alerts_queue_arn: config.alerts_queue_arn.clone(),
    }
}

/// Time kept back from the invocation's deadline for answering Lambda.
const ANSWER_MARGIN: Duration = Duration::from_secs(3);

/// Handles one SQS batch (one queue's: Lambda never mixes them), reporting
/// each message to redeliver (the template enables
/// `ReportBatchItemFailures`).
pub async fn handle(
    rollup: &Rollup,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let records = event.payload.records;
    let received = records.len();
    let alerts = records
        .first()
        .is_some_and(|r| r.event_source_arn.as_deref() == Some(&rollup.alerts_queue_arn));
    let messages = records
        .into_iter()
        .map(|record| Message {
            id: record.message_id.unwrap_or_default(),
            body: record.body,
            receive_count: record
                .attributes
                .get("ApproximateReceiveCount")
                .and_then(|n| n.parse().ok()),
            receipt_handle: record.receipt_handle,
            sequence: record
                .attributes
                .get("SequenceNumber")
                .and_then(|n| n.parse().ok()),
        })
        .collect();
    let mut response = SqsBatchResponse::default();
    if alerts {
        let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
        let left = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
        let until = Instant::now() + left.saturating_sub(ANSWER_MARGIN);
        let failed = rollup.consumer.deliver_alerts(messages, until).await;
        Metrics::new()
            .dimension("Function", FUNCTION)
            .value("AlertsReceived", MetricUnit::Count, received as f64)
            .value("AlertsRetried", MetricUnit::Count, failed.len() as f64)
            .emit();
        failed.into_iter().for_each(|id| response.add_failure(id));
        return Ok(response);
    }
    let outcome = rollup.consumer.consume(messages).await;

    Metrics::new()
        .dimension("Function", FUNCTION)
        .value("MessagesReceived", MetricUnit::Count, received as f64)
        .value(
            "MessagesFailed",
            MetricUnit::Count,
            outcome.failed.len() as f64,
        )
        .value("EventsCounted", MetricUnit::Count, outcome.counted as f64)
        .value(
            "EventsDuplicate",
            MetricUnit::Count,
            outcome.duplicates as f64,
        )
        .value("WriteUnits", MetricUnit::Count, outcome.write_units)
        .value(
            "EventsOfDeletedTenants",
            MetricUnit::Count,
            outcome.of_deleted_tenants as f64,
        )
        .value("MessagesParked", MetricUnit::Count, outcome.parked as f64)
        .emit();
    outcome
        .failed
        .into_iter()
        .for_each(|id| response.add_failure(id));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use shared::metering::alerts::AlertKey;
    use shared::metering::types::EventBatch;

    use super::*;

    #[test]
    fn the_sample_event_carries_event_batches() {
        let raw = include_str!("../../../events/rollup-sqs-batch.json");
        let event: SqsEvent = serde_json::from_str(raw).unwrap();
        let batches: Vec<EventBatch> = event
            .records
            .iter()
            .map(|r| serde_json::from_str(r.body.as_deref().unwrap()).unwrap())
            .collect();
        assert_eq!(batches.len(), 2);
        assert_eq!(batches[0].events[0].tokens.get(), 120);
        // Counted in their group's order: each carries its sequence number.
        assert!(
            event
                .records
                .iter()
                .all(|r| r.attributes["SequenceNumber"].parse::<u128>().is_ok())
        );
    }

    #[test]
    fn the_alerts_sample_names_an_alert_on_the_local_alerts_queue() {
        let raw = include_str!("../../../events/rollup-alerts-batch.json");
        let event: SqsEvent = serde_json::from_str(raw).unwrap();
        let record = &event.records[0];
        let key: AlertKey = serde_json::from_str(record.body.as_deref().unwrap()).unwrap();
        assert_eq!((key.period.as_str(), key.threshold), ("2026-12-01", 80));
        assert!(
            record
                .event_source_arn
                .as_deref()
                .unwrap()
                .ends_with(":ingot-local-alerts")
        );
    }
}
