//! Fixed-window rate limits, exact across any number of Lambda instances.
//!
//! A request counts one against the window of (subject, window start) in a
//! shared [`RateCounter`] (DynamoDB in production: one conditional `ADD`), so
//! no instance can let `limit × instances` through the way an in-memory
//! pre-check would. Rendering a [`Decision`] as HTTP headers or a 429 is the
//! HTTP layer's job ([`crate::http`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::{Outage, StoreError};

/// Where window counts are kept.
#[async_trait::async_trait]
pub trait RateCounter: Send + Sync {
    /// Adds one to the count of `subject`'s window starting at
    /// `window_start` (epoch seconds) unless it has reached `limit`: the new
    /// count, or `None` when the limit is reached. The count may be
    /// forgotten after `expires_at`.
    async fn increment(
        &self,
        subject: &str,
        window_start: i64,
        limit: u32,
        expires_at: DateTime<Utc>,
    ) -> Result<Option<u32>, StoreError>;
}

/// One fixed window of a limit: its name (in keys and messages), size and
/// how many requests it allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateWindow {
    pub name: &'static str,
    pub length: TimeDelta,
    pub limit: u32,
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
    /// Seconds until the window resets, at least 1 (for `Retry-After`).
    pub fn retry_after(&self, now: DateTime<Utc>) -> u64 {
        (self.reset - now).num_seconds().max(1) as u64
    }
}

/// The result of counting a request against several windows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The refusing window, or the one with the fewest requests left.
    pub binding: Decision,
    /// Which window `binding` is.
    pub window: &'static str,
}

#[derive(Clone)]
pub struct RateLimiter {
    counter: Arc<dyn RateCounter>,
}

impl RateLimiter {
    pub fn new(counter: Arc<dyn RateCounter>) -> Self {
        Self { counter }
    }

    /// Counts one request of `subject` (e.g. `proxy#203.0.113.7`) in the
    /// current window of size `length`, allowing at most `limit` per window.
    pub async fn hit(
        &self,
        subject: &str,
        limit: u32,
        length: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Decision, StoreError> {
        let secs = length.num_seconds().max(1);
        let start = now.timestamp() - now.timestamp().rem_euclid(secs);
        let reset = DateTime::from_timestamp(start + secs, 0).unwrap_or(now);
        let refused = Decision {
            allowed: false,
            limit,
            remaining: 0,
            reset,
        };
        if limit == 0 {
            // A counter that creates the window on first use would let one through.
            return Ok(refused);
        }
        let expires_at = reset + TimeDelta::seconds(60);
        let count = self
            .counter
            .increment(subject, start, limit, expires_at)
            .await?;
        Ok(count.map_or(refused, |count| Decision {
            allowed: true,
            limit,
            remaining: limit.saturating_sub(count),
            reset,
        }))
    }

    /// Counts one request of `subject` against each window in turn and
    /// stops at the first that refuses, so a request refused by the minute
    /// window never uses up the hour. `None` if there are no windows.
    pub async fn hit_windows(
        &self,
        subject: &str,
        windows: &[RateWindow],
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
}

/// Window counts in memory: the double for handler tests. `outage` makes
/// every call fail, as an unreachable table would.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    counts: Mutex<HashMap<(String, i64), u32>>,
    pub outage: Outage,
}

#[async_trait::async_trait]
impl RateCounter for MemoryCounter {
    async fn increment(
        &self,
        subject: &str,
        window_start: i64,
        limit: u32,
        _expires_at: DateTime<Utc>,
    ) -> Result<Option<u32>, StoreError> {
        self.outage.check("rate-limit store")?;
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts
            .entry((subject.to_owned(), window_start))
            .or_default();
        if *count >= limit {
            return Ok(None);
        }
        *count += 1;
        Ok(Some(*count))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(secs, 0).unwrap()
    }

    fn limiter() -> RateLimiter {
        RateLimiter::new(Arc::new(MemoryCounter::default()))
    }

    #[tokio::test]
    async fn allows_up_to_the_limit_then_refuses_until_the_window_resets() {
        let limiter = limiter();
        let minute = TimeDelta::minutes(1);
        for remaining in [1, 0] {
            let d = limiter.hit("u", 2, minute, at(120)).await.unwrap();
            assert!(d.allowed);
            assert_eq!((d.remaining, d.reset), (remaining, at(180)));
        }
        let refused = limiter.hit("u", 2, minute, at(179)).await.unwrap();
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after(at(179)), 1);
        assert!(limiter.hit("u", 2, minute, at(180)).await.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_zero_limit_refuses_the_first_request() {
        let d = limiter().hit("u", 0, TimeDelta::minutes(1), at(0)).await;
        assert!(!d.unwrap().allowed);
    }

    #[tokio::test]
    async fn a_request_refused_by_the_minute_never_counts_against_the_hour() {
        let limiter = limiter();
        let windows = [
            RateWindow {
                name: "minute",
                length: TimeDelta::minutes(1),
                limit: 1,
            },
            RateWindow {
                name: "hour",
                length: TimeDelta::hours(1),
                limit: 5,
            },
        ];
        let first = limiter.hit_windows("u", &windows, at(0)).await.unwrap();
        assert_eq!(first.map(|v| v.window), Some("minute"));
        let second = limiter.hit_windows("u", &windows, at(1)).await.unwrap();
        assert_eq!(
            second.map(|v| (v.window, v.binding.allowed)),
            Some(("minute", false))
        );
        // The hour saw only the first request: 4 of 5 left.
        let hour = limiter.hit("u#hour", 5, TimeDelta::hours(1), at(2)).await;
        assert_eq!(hour.unwrap().remaining, 3);
    }

    #[tokio::test]
    async fn a_failing_counter_is_an_error_not_a_decision() {
        let counter = Arc::new(MemoryCounter::default());
        counter.outage.begin();
        let limiter = RateLimiter::new(counter);
        assert!(
            limiter
                .hit("u", 1, TimeDelta::minutes(1), at(0))
                .await
                .is_err()
        );
    }
}
