//! Rate-limit records in DynamoDB: one item per (subject, start of its
//! longest window) holding a counter per window, counted with one
//! conditional `UpdateItem` and expiring with the window (TTL).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::{DateTime, Utc};

use super::{failed, is_condition_failure, n, refused_item, s};
use crate::ratelimit::{RateCounter, Slot};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "rate-limit table";

#[derive(Debug, Clone)]
pub struct DynamoRateCounter {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoRateCounter {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }
}

/// The count of each slot in `item` (0 when absent).
fn counts(item: Option<&HashMap<String, AttributeValue>>, slots: &[Slot]) -> Vec<u32> {
    slots
        .iter()
        .map(|slot| {
            item.and_then(|i| i.get(&slot.counter))
                .and_then(|v| v.as_n().ok())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        })
        .collect()
}

#[async_trait::async_trait]
impl RateCounter for DynamoRateCounter {
    async fn increment(
        &self,
        subject: &str,
        bucket: i64,
        slots: &[Slot],
        expires_at: DateTime<Utc>,
    ) -> Result<Result<Vec<u32>, Vec<u32>>, StoreError> {
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(subject))
            .key("sk", s(bucket.to_string()))
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":expires", n(expires_at.timestamp()))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let mut adds = Vec::new();
        let mut conditions = Vec::new();
        for (i, slot) in slots.iter().enumerate() {
            adds.push(format!("#c{i} :one"));
            conditions.push(format!("(attribute_not_exists(#c{i}) OR #c{i} < :l{i})"));
            request = request
                .expression_attribute_names(format!("#c{i}"), &slot.counter)
                .expression_attribute_values(format!(":l{i}"), n(slot.limit));
        }
        let result = request
            .update_expression(format!("ADD {} SET expires_at = :expires", adds.join(", ")))
            .condition_expression(conditions.join(" AND "))
            .send()
            .await;
        match result {
            Ok(out) => Ok(Ok(counts(out.attributes.as_ref(), slots))),
            Err(e) if is_condition_failure(&e) => {
                let old = refused_item(e);
                Ok(Err(counts(old.as_ref(), slots)))
            }
            Err(e) => Err(failed(STORE, "UpdateItem", &e)),
        }
    }
}
