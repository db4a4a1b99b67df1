//! Rate-limit windows in DynamoDB: one item per (subject, window start),
//! counted with a conditional `ADD`, expiring with its window (TTL).

use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, Utc};

use super::{failed, is_condition_failure, n, s};
use crate::ratelimit::RateCounter;
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "rate-limit store";

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

#[async_trait::async_trait]
impl RateCounter for DynamoRateCounter {
    async fn increment(
        &self,
        subject: &str,
        window_start: i64,
        limit: u32,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<u32>, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(subject))
            .key("sk", s(window_start.to_string()))
            .update_expression("ADD #count :one SET expires_at = :expires")
            .condition_expression("attribute_not_exists(#count) OR #count < :limit")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .expression_attribute_values(":expires", n(expires_at.timestamp()))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => Ok(Some(
                out.attributes
                    .as_ref()
                    .and_then(|a| a.get("count"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(limit),
            )),
            Err(e) if is_condition_failure(&e) => Ok(None),
            Err(e) => Err(failed(STORE, "UpdateItem", &e)),
        }
    }
}
