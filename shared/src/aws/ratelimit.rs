//! Fixed-window rate limits on DynamoDB: one conditional `ADD` per request
//! on the item of (subject, window start), so the limit is exact across any
//! number of Lambda instances (no in-memory pre-check that would let
//! limit × instances through). Items expire with their window (TTL).

use std::collections::HashMap;

use aws_sdk_dynamodb::types::ReturnValue;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, TimeDelta, Utc};
use http::{HeaderMap, HeaderValue, StatusCode};

use super::{failed, n, s};
use crate::error::ApiError;
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "rate-limit store";

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

impl Decision {
    /// `X-RateLimit-Limit`, `-Remaining` and `-Reset` (epoch seconds).
    pub fn apply_headers(&self, headers: &mut HeaderMap) {
        for (name, value) in [
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", self.remaining.to_string()),
            ("x-ratelimit-reset", self.reset.timestamp().to_string()),
        ] {
            headers.insert(name, HeaderValue::from_str(&value).expect("digits"));
        }
    }

    /// The 429 for a refused request: problem+json, `Retry-After` until the
    /// window resets, and the limit headers.
    pub fn refusal(&self, detail: String, now: DateTime<Utc>) -> Response {
        let retry = (self.reset - now).num_seconds().max(1) as u64;
        let mut response = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", detail)
            .with_retry_after(retry)
            .into_response();
        self.apply_headers(response.headers_mut());
        response
    }
}

/// One fixed window of a limit: its name (in keys and messages), size and
/// how many requests it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub name: &'static str,
    pub length: TimeDelta,
    pub limit: u32,
}

/// The result of counting a request against several windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The refusing window, or the one with the fewest requests left.
    pub binding: Decision,
    /// Which window `binding` is.
    pub window: &'static str,
}

impl RateLimiter {
    /// Counts one request of `subject` against each window in turn and
    /// stops at the first that refuses, so a request refused by the minute
    /// window never uses up the hour. `None` if there are no windows.
    pub async fn hit_windows(
        &self,
        subject: &str,
        windows: &[Window],
        now: DateTime<Utc>,
    ) -> Result<Option<Verdict>, StoreError> {
        let mut verdict: Option<Verdict> = None;
        for window in windows {
            let decision = self
                .hit(
                    &format!("{subject}#{}", window.name),
                    window.limit,
                    window.length,
                    now,
                )
                .await?;
            let tighter = verdict.is_none_or(|v| decision.remaining < v.binding.remaining);
            if !decision.allowed || tighter {
                verdict = Some(Verdict {
                    binding: decision,
                    window: window.name,
                });
            }
            if !decision.allowed {
                break;
            }
        }
        Ok(verdict)
    }

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
        if limit == 0 {
            // `attribute_not_exists` would let a first request through.
            return Ok(Decision {
                allowed: false,
                limit,
                remaining: 0,
                reset,
            });
        }
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
            Err(e) => Err(failed(STORE, "UpdateItem", &e)),
        }
    }
}
