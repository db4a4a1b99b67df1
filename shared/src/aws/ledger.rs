//! Usage counters in DynamoDB (layout: docs/data-model.md, "usage"): the
//! exactly-once [`Ledger`] the rollup writes through, and the reads the usage
//! API serves from.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Put, TransactWriteItem, Update};
use chrono::{DateTime, TimeDelta, Utc};

use super::{failed, failed_condition, n, query_all, s};
use crate::backoff::jittered;
use crate::metering::rollup::{Chunk, Commit, Counter, Ledger};
use crate::metering::types::TenantId;
use crate::metering::usage::{MINUTE_RETENTION, MinuteUsage, PeriodUsage, UsageReader};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "usage table";

/// Dedup records outlive the 35 days an event may be back-dated, with margin.
const DEDUP_RETENTION: TimeDelta = TimeDelta::days(40);
/// Transactions cancelled by a concurrent writer (another rollup instance on
/// the same counter) are retried this often before the batch fails.
const CONFLICT_RETRIES: u32 = 5;

#[derive(Debug, Clone)]
pub struct DynamoLedger {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn minute_key(minute: DateTime<Utc>) -> String {
    minute.format("%Y-%m-%dT%H:%MZ").to_string()
}

fn counter_key(tenant: &TenantId, counter: &Counter) -> (String, String) {
    match counter {
        Counter::Minute { minute, feature } => (
            format!("ROLLUP#{tenant}"),
            format!("{}#{feature}", minute_key(*minute)),
        ),
        Counter::Period { period } => (format!("TENANT#{tenant}"), format!("PERIOD#{period}")),
        Counter::PeriodFeature { period, feature } => (
            format!("TENANT#{tenant}"),
            format!("PERIOD#{period}#FEATURE#{feature}"),
        ),
    }
}

fn key(pk: String, sk: String) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

fn number(item: &HashMap<String, AttributeValue>, name: &str) -> u64 {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map_or("", String::as_str)
}

impl DynamoLedger {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    fn transaction(
        &self,
        tenant: &TenantId,
        chunk: &Chunk<'_>,
    ) -> Result<Vec<TransactWriteItem>, StoreError> {
        let now = Utc::now();
        let build = |e: aws_sdk_dynamodb::error::BuildError| StoreError::corrupt(STORE, e);
        let mut items = Vec::with_capacity(chunk.items());
        for event in &chunk.events {
            let put = Put::builder()
                .table_name(&self.table)
                .item("pk", s(format!("EVENT#{tenant}#{}", event.id)))
                .item("sk", s("EVENT"))
                .item("feature", s(event.feature.as_str()))
                .item("tokens", n(event.tokens.get()))
                .item("timestamp", s(event.timestamp.to_rfc3339()))
                .item("expires_at", n((now + DEDUP_RETENTION).timestamp()))
                .condition_expression("attribute_not_exists(pk)")
                .build()
                .map_err(build)?;
            items.push(TransactWriteItem::builder().put(put).build());
        }
        for (counter, delta) in &chunk.counters {
            let (pk, sk) = counter_key(tenant, counter);
            let mut update = Update::builder()
                .table_name(&self.table)
                .set_key(Some(key(pk, sk)))
                .expression_attribute_values(":tokens", n(delta.tokens))
                .expression_attribute_values(":events", n(delta.events));
            update = if matches!(counter, Counter::Minute { .. }) {
                update
                    .update_expression(
                        "ADD tokens :tokens, events :events SET expires_at = :expires",
                    )
                    .expression_attribute_values(
                        ":expires",
                        n((now + MINUTE_RETENTION).timestamp()),
                    )
            } else {
                update.update_expression("ADD tokens :tokens, events :events")
            };
            items.push(
                TransactWriteItem::builder()
                    .update(update.build().map_err(build)?)
                    .build(),
            );
        }
        Ok(items)
    }

    async fn query(
        &self,
        pk: String,
        sk_condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let mut request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression(format!("pk = :pk AND {sk_condition}"))
            .expression_attribute_values(":pk", s(&pk));
        for (name, value) in values {
            request = request.expression_attribute_values(name, value);
        }
        query_all(STORE, request).await
    }
}

#[async_trait::async_trait]
impl Ledger for DynamoLedger {
    async fn commit(&self, tenant: &TenantId, chunk: &Chunk<'_>) -> Result<Commit, StoreError> {
        let items = self.transaction(tenant, chunk)?;
        let mut attempt = 0;
        loop {
            let result = self
                .client
                .transact_write_items()
                .set_transact_items(Some(items.clone()))
                .send()
                .await;
            let error = match result {
                Ok(_) => return Ok(Commit::Committed),
                Err(error) => error,
            };
            let Some(TransactWriteItemsError::TransactionCanceledException(cancelled)) =
                error.as_service_error()
            else {
                return Err(failed(STORE, "TransactWriteItems", &error));
            };
            // Reasons line up with the items: the first `events.len()` are
            // the dedup records, whose condition fails for a counted event.
            let duplicates: Vec<usize> = cancelled
                .cancellation_reasons()
                .iter()
                .take(chunk.events.len())
                .enumerate()
                .filter(|(_, r)| failed_condition(r))
                .map(|(i, _)| i)
                .collect();
            if !duplicates.is_empty() {
                return Ok(Commit::Duplicates(duplicates));
            }
            attempt += 1;
            if attempt > CONFLICT_RETRIES {
                return Err(failed(STORE, "TransactWriteItems", &error));
            }
            tokio::time::sleep(jittered(Duration::from_millis(50), attempt)).await;
        }
    }
}

#[async_trait::async_trait]
impl UsageReader for DynamoLedger {
    /// The tokens counted for `tenant` in `period`, read consistently (the
    /// rollup checks quota thresholds right after its own writes).
    async fn period_total(&self, tenant: &TenantId, period: &str) -> Result<u64, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(
                format!("TENANT#{tenant}"),
                format!("PERIOD#{period}"),
            )))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        Ok(item.as_ref().map_or(0, |i| number(i, "tokens")))
    }

    /// Usage of `tenant` in the period starting on `period` (its key).
    async fn period_usage(
        &self,
        tenant: &TenantId,
        period: &str,
    ) -> Result<PeriodUsage, StoreError> {
        let prefix = format!("PERIOD#{period}");
        let items = self
            .query(
                format!("TENANT#{tenant}"),
                "begins_with(sk, :from)",
                vec![(":from", s(&prefix))],
            )
            .await?;
        let mut usage = PeriodUsage::default();
        let feature_prefix = format!("{prefix}#FEATURE#");
        for item in &items {
            let sk = text(item, "sk");
            if sk == prefix {
                usage.tokens = number(item, "tokens");
                usage.events = number(item, "events");
            } else if let Some(feature) = sk.strip_prefix(&feature_prefix) {
                usage.features.push((
                    feature.to_owned(),
                    number(item, "tokens"),
                    number(item, "events"),
                ));
            }
        }
        Ok(usage)
    }

    /// Per-minute usage of `tenant` in `[from, to)`.
    async fn minutes(
        &self,
        tenant: &TenantId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<MinuteUsage>, StoreError> {
        let items = self
            .query(
                format!("ROLLUP#{tenant}"),
                "sk BETWEEN :from AND :to",
                // '#' sorts before every feature character, '$' right after '#'.
                vec![
                    (":from", s(format!("{}#", minute_key(from)))),
                    (
                        ":to",
                        s(format!("{}$", minute_key(to - TimeDelta::minutes(1)))),
                    ),
                ],
            )
            .await?;
        Ok(items
            .iter()
            .filter_map(|item| {
                let (minute, feature) = text(item, "sk").split_once('#')?;
                let minute =
                    DateTime::parse_from_str(&format!("{minute}:00+0000"), "%Y-%m-%dT%H:%MZ:%S%z")
                        .ok()?;
                Some(MinuteUsage {
                    minute: minute.to_utc(),
                    feature: feature.to_owned(),
                    tokens: number(item, "tokens"),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minute_keys_sort_by_time() {
        let a = DateTime::parse_from_rfc3339("2026-11-22T09:59:00Z")
            .unwrap()
            .to_utc();
        let b = DateTime::parse_from_rfc3339("2026-11-22T10:00:00Z")
            .unwrap()
            .to_utc();
        assert!(minute_key(a) < minute_key(b));
        assert_eq!(minute_key(b), "2026-11-22T10:00Z");
    }
}
