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

use std::collections::BTreeMap;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent};
use lambda_runtime::{Error, LambdaEvent};
use shared::aws::SdkConfig;
use shared::aws::ledger::DynamoLedger;
use shared::aws::tenants::DynamoTenants;
use shared::config::{ConfigError, Env};
use shared::metering::rollup::{count, unique_by_id};
use shared::metering::types::{EventBatch, TenantId, UsageEvent};
use shared::telemetry::{Metrics, Unit};

pub const FUNCTION: &str = "rollup";

#[derive(Debug, Clone)]
pub struct Config {
    pub usage_table: String,
    pub tenants_table: String,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            usage_table: env.required("USAGE_TABLE")?,
            tenants_table: env.required("TENANTS_TABLE")?,
        })
    }
}

/// Clients, built once per cold start.
#[derive(Debug, Clone)]
pub struct Rollup {
    tenants: DynamoTenants,
    ledger: DynamoLedger,
}

impl Rollup {
    pub fn new(config: &Config, aws: &SdkConfig) -> Self {
        let dynamodb = aws_sdk_dynamodb::Client::new(aws);
        Self {
            tenants: DynamoTenants::new(dynamodb.clone(), &config.tenants_table),
            ledger: DynamoLedger::new(dynamodb, &config.usage_table),
        }
    }
}

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
    for (
        tenant_id,
        TenantWork {
            events,
            message_ids,
        },
    ) in work
    {
        match count_tenant(rollup, &tenant_id, events).await {
            Ok((events, dups)) => {
                counted += events;
                duplicates += dups;
            }
            Err(error) => {
                tracing::error!(tenant = %tenant_id, ?message_ids, error, "events not counted; their messages will be retried");
                for id in message_ids {
                    response.add_failure(id);
                }
            }
        }
    }

    Metrics::new()
        .dimension("Function", FUNCTION)
        .value("MessagesReceived", Unit::Count, records.len() as f64)
        .value(
            "MessagesFailed",
            Unit::Count,
            response.batch_item_failures.len() as f64,
        )
        .value("EventsCounted", Unit::Count, counted as f64)
        .value("EventsDuplicate", Unit::Count, duplicates as f64)
        .emit();
    Ok(response)
}

async fn count_tenant(
    rollup: &Rollup,
    tenant_id: &TenantId,
    events: Vec<UsageEvent>,
) -> Result<(u64, u64), String> {
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
    Ok((counted.events, counted.duplicates + repeats))
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
