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

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
use shared::aws::SdkConfig;
use shared::aws::alerts::DynamoAlerts;
use shared::aws::ledger::DynamoLedger;
use shared::aws::tenants::DynamoTenants;
use shared::config::{ConfigError, Env};
use shared::metering::alerts;
use shared::metering::period::BillingPeriod;
use shared::metering::rollup::{count, unique_by_id};
use shared::metering::tenants::{Tenant, TenantStore};
use shared::metering::types::{EventBatch, TenantId, UsageEvent};
use shared::metering::usage::UsageReader;
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

/// Clients, built once per cold start.
#[derive(Debug, Clone)]
pub struct Rollup {
    tenants: DynamoTenants,
    ledger: DynamoLedger,
    alerts: DynamoAlerts,
    webhooks: WebhookSender,
}

impl Rollup {
    pub fn new(config: &Config, aws: &SdkConfig) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        Self {
            tenants: DynamoTenants::new(dynamodb.clone(), &config.tenants_table),
            ledger: DynamoLedger::new(dynamodb.clone(), &config.usage_table),
            alerts: DynamoAlerts::new(dynamodb, &config.usage_table),
            webhooks: WebhookSender::new(config.webhooks),
        }
    }
}

/// Time kept back from the invocation's deadline for answering Lambda.
const ANSWER_MARGIN: Duration = Duration::from_secs(3);

/// One tenant's share of a batch: its events and the messages they came in.
#[derive(Default)]
struct TenantWork {
    events: Vec<UsageEvent>,
    message_ids: Vec<String>,
}

/// Handles one SQS batch, reporting each message that was not counted.
pub async fn handle(
    rollup: &Rollup,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, Error> {
    let deadline_ms = event.context.deadline;
    let records = event.payload.records;
    let mut response = SqsBatchResponse::default();
    let mut work: BTreeMap<TenantId, TenantWork> = BTreeMap::new();

    for record in &records {
        let message_id = record.message_id.clone().unwrap_or_default();
        let parsed = record
            .body
            .as_deref()
            .ok_or_else(|| "record has no body".to_owned())
            .and_then(|body| serde_json::from_str::<EventBatch>(body).map_err(|e| e.to_string()));
        match parsed {
            Ok(batch) => {
                let entry = work.entry(batch.tenant).or_default();
                entry.events.extend(batch.events);
                entry.message_ids.push(message_id);
            }
            Err(error) => {
                let receive_count = record.attributes.get("ApproximateReceiveCount");
                tracing::error!(
                    message_id,
                    ?receive_count,
                    error,
                    "unreadable message; it will reach the DLQ"
                );
                response.add_failure(message_id);
            }
        }
    }

    let mut counted = 0;
    let mut duplicates = 0;
    let mut items_written = 0;
    let mut touched = Vec::new();
    for (
        tenant_id,
        TenantWork {
            events,
            message_ids,
        },
    ) in work
    {
        match count_tenant(rollup, &tenant_id, events).await {
            Ok(outcome) => {
                counted += outcome.events;
                duplicates += outcome.duplicates;
                items_written += outcome.items_written;
                touched.push((outcome.tenant, outcome.periods, message_ids));
            }
            Err(error) => {
                tracing::error!(tenant = %tenant_id, ?message_ids, error, "events not counted; their messages will be retried");
                for id in message_ids {
                    response.add_failure(id);
                }
            }
        }
    }

    let now_ms = chrono::Utc::now().timestamp_millis().max(0) as u64;
    let budget =
        Duration::from_millis(deadline_ms.saturating_sub(now_ms)).saturating_sub(ANSWER_MARGIN);
    match tokio::time::timeout(budget, run_alerts(rollup, &touched)).await {
        Ok(failed) => {
            // A threshold check that could not be recorded is redone by
            // redelivering the messages: their events are duplicates by then.
            for id in failed {
                response.add_failure(id);
            }
        }
        Err(_) => tracing::warn!(
            "out of time for quota alerts; pending ones are retried on a later batch"
        ),
    }

    Metrics::new()
        .dimension("Function", FUNCTION)
        .value("MessagesReceived", MetricUnit::Count, records.len() as f64)
        .value(
            "MessagesFailed",
            MetricUnit::Count,
            response.batch_item_failures.len() as f64,
        )
        .value("EventsCounted", MetricUnit::Count, counted as f64)
        .value("EventsDuplicate", MetricUnit::Count, duplicates as f64)
        .value("TransactionItems", MetricUnit::Count, items_written as f64)
        .emit();
    Ok(response)
}

/// What counting one tenant's events did.
struct TenantOutcome {
    tenant: Tenant,
    periods: BTreeSet<BillingPeriod>,
    events: u64,
    duplicates: u64,
    items_written: u64,
}

async fn count_tenant(
    rollup: &Rollup,
    tenant_id: &TenantId,
    events: Vec<UsageEvent>,
) -> Result<TenantOutcome, String> {
    let tenant = rollup
        .tenants
        .get(tenant_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("tenant {tenant_id} does not exist"))?;
    let received = events.len();
    let events = unique_by_id(events);
    let repeats = (received - events.len()) as u64;
    let counted = count(&rollup.ledger, tenant_id, tenant.billing_day, &events)
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        tenant = %tenant_id,
        events = counted.events,
        tokens = counted.tokens,
        duplicates = counted.duplicates,
        "counted"
    );
    let periods = events
        .iter()
        .map(|e| BillingPeriod::containing(e.timestamp, tenant.billing_day))
        .collect();
    Ok(TenantOutcome {
        tenant,
        periods,
        events: counted.events,
        duplicates: counted.duplicates + repeats,
        items_written: counted.items_written,
    })
}

/// Retries alerts earlier batches left pending, then raises the ones each
/// touched tenant has reached (an alert failing now waits for the next
/// batch). Returns the messages to redeliver because a check failed.
async fn run_alerts(
    rollup: &Rollup,
    touched: &[(Tenant, BTreeSet<BillingPeriod>, Vec<String>)],
) -> Vec<String> {
    if let Err(error) = alerts::retry_due(&rollup.alerts, &rollup.webhooks).await {
        tracing::error!(%error, "retrying pending alerts failed; a later batch will");
    }
    let mut failed = Vec::new();
    for (tenant, periods, message_ids) in touched {
        for period in periods {
            let result = async {
                let used = rollup
                    .ledger
                    .period_total(&tenant.id, &period.key())
                    .await?;
                alerts::raise(&rollup.alerts, &rollup.webhooks, tenant, period, used).await
            }
            .await;
            if let Err(error) = result {
                tracing::error!(tenant = %tenant.id, %error, "quota check failed; its messages will be retried");
                failed.extend(message_ids.iter().cloned());
                break;
            }
        }
    }
    failed
}

#[cfg(test)]
mod tests {
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
