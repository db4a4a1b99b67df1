//! `rollup`: counts the events queue into per-minute and per-period totals,
//! exactly once.
//!
//! Lambda delivers SQS batches; each message is one tenant's accepted events.
//! Events are grouped per tenant across the batch (so counters are
//! pre-aggregated over the whole batch) and counted through the ledger, whose
//! dedup records make redelivery harmless. A message whose events could not
//! be counted is reported in `batchItemFailures` (the template enables
//! `ReportBatchItemFailures`): only it is retried, and after `maxReceiveCount`
//! SQS moves it to the DLQ. Nothing is acknowledged that was not counted.
//!
//! Quota alerts run after every tenant of the batch is counted, within the
//! invocation's remaining time, so a slow webhook never delays counting; an
//! alert not delivered in time stays pending for a later batch.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
use shared::aws::SdkConfig;
use shared::aws::alerts::DynamoAlerts;
use shared::aws::ledger::DynamoLedger;
use shared::aws::tenants::DynamoTenants;
use shared::config::{ConfigError, Env};
use shared::metering::consumer::{Consumer, Message};
use shared::telemetry::{MetricUnit, Metrics};
use shared::webhook::{RetryPolicy, WebhookSender};

pub const FUNCTION: &str = "rollup";

#[derive(Debug, Clone)]
pub struct Config {
    pub usage_table: String,
    pub tenants_table: String,
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

/// The consumer over AWS, built once per cold start.
pub fn consumer(config: &Config, aws: &SdkConfig) -> Consumer {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let ledger = Arc::new(DynamoLedger::new(dynamodb.clone(), &config.usage_table));
    Consumer {
        tenants: Arc::new(DynamoTenants::new(dynamodb.clone(), &config.tenants_table)),
        ledger: ledger.clone(),
        usage: ledger,
        alerts: Arc::new(DynamoAlerts::new(dynamodb, &config.usage_table)),
        notifier: Arc::new(WebhookSender::new(config.webhooks)),
    }
}

/// Time kept back from the invocation's deadline for answering Lambda.
const ANSWER_MARGIN: Duration = Duration::from_secs(3);

/// Handles one SQS batch, reporting each message that was not counted
/// (the template enables `ReportBatchItemFailures`).
pub async fn handle(
    consumer: &Consumer,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let left = Duration::from_millis(event.context.deadline.saturating_sub(now_ms));
    let alerts_until = Instant::now() + left.saturating_sub(ANSWER_MARGIN);
    let received = event.payload.records.len();
    let messages = event
        .payload
        .records
        .into_iter()
        .map(|record| Message {
            id: record.message_id.unwrap_or_default(),
            body: record.body,
            receive_count: record.attributes.get("ApproximateReceiveCount").cloned(),
        })
        .collect();
    let outcome = consumer.consume(messages, alerts_until).await;

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
        .value(
            "TransactionItems",
            MetricUnit::Count,
            outcome.items_written as f64,
        )
        .value("EventsDropped", MetricUnit::Count, outcome.dropped as f64)
        .emit();
    let mut response = SqsBatchResponse::default();
    for id in outcome.failed {
        response.add_failure(id);
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
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
    }
}
