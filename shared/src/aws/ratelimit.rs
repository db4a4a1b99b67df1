//! Fixed-window rate limits on DynamoDB: one conditional `ADD` per request
//! on the item of (subject, window start), so the limit is exact across any
//! number of Lambda instances (no in-memory pre-check that would let
//! limit × instances through). Items expire with their window (TTL).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::ReturnValue;
use chrono::{DateTime, TimeDelta, Utc};

use super::{StoreError, n, s};

#[derive(Debug, Clone)]
pub struct RateLimiter {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

/// The outcome of one request against a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub limit: u32,
    pub remaining: u32,
    /// When the window ends.
    pub reset: DateTime<Utc>,
}

impl RateLimiter {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    /// Counts one request of `subject` (e.g. `proxy#203.0.113.7`) in the
    /// current window of `window`, allowing at most `limit` per window.
    pub async fn hit(
        &self,
        subject: &str,
        limit: u32,
        window: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        let secs = window.num_seconds().max(1);
        let start = now.timestamp() - now.timestamp().rem_euclid(secs);
        let reset = DateTime::from_timestamp(start + secs, 0).unwrap_or(now);
        let key = HashMap::from([
            ("pk".to_owned(), s(subject)),
            ("sk".to_owned(), s(start.to_string())),
        ]);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key))
            .update_expression("ADD #count :one SET expires_at = :expires")
            .condition_expression("attribute_not_exists(#count) OR #count < :limit")
            .expression_attribute_names("#count", "count")
            .expression_attribute_values(":one", n(1))
            .expression_attribute_values(":limit", n(limit))
            .expression_attribute_values(":expires", n(reset.timestamp() + 60))
            .return_values(ReturnValue::UpdatedNew)
            .send()
            .await;
        match result {
            Ok(out) => {
                let count = out
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get("count"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(limit);
                Ok(Decision {
                    allowed: true,
                    limit,
                    remaining: limit.saturating_sub(count),
                    reset,
                })
            }
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(Decision {
                    allowed: false,
                    limit,
                    remaining: 0,
                    reset,
                })
            }
            Err(e) => Err(StoreError::aws("UpdateItem", &e)),
        }
    }
}
