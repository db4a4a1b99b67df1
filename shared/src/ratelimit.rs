//! Fixed-window rate limits, exact across any number of Lambda instances,
//! refusing cleanly.
//!
//! All of a subject's windows (say a minute and an hour) are counters in one
//! record, keyed by the start of its longest window, and a request counts
//! against all of them in one conditional write (DynamoDB in production: one
//! `UpdateItem`): either every window has room and each counts it, or none
//! does. So no instance can let `limit × instances` through (as an in-memory
//! pre-check would), and a request refused by one window uses up no slot in
//! another. Rendering a [`Decision`] as HTTP headers or a 429 is the HTTP
//! layer's job ([`crate::http`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, TimeDelta, Utc};

use crate::store::{Outage, StoreError};

/// One window's counter within a subject's record: its name (unique per
/// window start) and how many requests it allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub counter: String,
    pub limit: u32,
}

/// Where window counts are kept.
#[async_trait::async_trait]
pub trait RateCounter: Send + Sync {
    /// Adds one to every slot of `subject`'s record for `bucket` if each is
    /// under its limit, and nothing otherwise. `Ok(Ok(counts))` with the new
    /// counts, or `Ok(Err(counts))` with the current ones when any slot is
    /// full. The record may be forgotten after `expires_at`.
    async fn increment(
        &self,
        subject: &str,
        bucket: i64,
        slots: &[Slot],
        expires_at: DateTime<Utc>,
    ) -> Result<Result<Vec<u32>, Vec<u32>>, StoreError>;
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

/// Start (epoch seconds) of the window of `length` that contains `now`.
fn window_start(now: DateTime<Utc>, length: TimeDelta) -> i64 {
    let secs = length.num_seconds().max(1);
    now.timestamp() - now.timestamp().rem_euclid(secs)
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
        let window = RateWindow {
            name: "window",
            length,
            limit,
        };
        let verdict = self.count(subject, &[window], length, now).await?;
        Ok(verdict.binding)
    }

    /// Counts one request of `subject` against every window at once: all
    /// of them count it, or, when any is full, none does. The verdict names
    /// the refusing window (the first full one), or the one with the fewest
    /// requests left. `None` if there are no windows.
    pub async fn hit_windows(
        &self,
        subject: &str,
        windows: &[RateWindow],
        now: DateTime<Utc>,
    ) -> Result<Option<Verdict>, StoreError> {
        match windows.iter().map(|w| w.length).max() {
            Some(longest) => Ok(Some(self.count(subject, windows, longest, now).await?)),
            None => Ok(None),
        }
    }

    /// [`Self::hit_windows`] for `windows` (not empty), the longest of
    /// which is `longest`.
    async fn count(
        &self,
        subject: &str,
        windows: &[RateWindow],
        longest: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let bucket = window_start(now, longest);
        let starts: Vec<i64> = windows
            .iter()
            .map(|w| window_start(now, w.length))
            .collect();
        let decision = |window: &RateWindow, start: i64, count: u32, allowed: bool| Decision {
            allowed,
            limit: window.limit,
            remaining: if allowed {
                window.limit.saturating_sub(count)
            } else {
                0
            },
            reset: DateTime::from_timestamp(start + window.length.num_seconds().max(1), 0)
                .unwrap_or(now),
        };
        if let Some((window, start)) = windows.iter().zip(&starts).find(|(w, _)| w.limit == 0) {
            // A zero limit refuses without a write (a record created on
            // first use would let one through).
            return Ok(Verdict {
                binding: decision(window, *start, 0, false),
                window: window.name,
            });
        }
        let slots: Vec<Slot> = windows
            .iter()
            .zip(&starts)
            .map(|(w, start)| Slot {
                counter: format!("{}#{start}", w.name),
                limit: w.limit,
            })
            .collect();
        let expires_at =
            DateTime::from_timestamp(bucket + longest.num_seconds().max(1) + 60, 0).unwrap_or(now);
        let counted = self
            .counter
            .increment(subject, bucket, &slots, expires_at)
            .await?;
        let (counts, allowed) = match counted {
            Ok(counts) => (counts, true),
            Err(counts) => (counts, false),
        };
        let decisions: Vec<Decision> = windows
            .iter()
            .zip(&starts)
            .zip(&counts)
            .map(|((w, start), count)| decision(w, *start, *count, allowed))
            .collect();
        // Allowed: the window with the fewest left. Refused: the first full
        // one (the first window if the store's counts do not say which).
        let binding = if allowed {
            (0..decisions.len())
                .min_by_key(|&i| decisions[i].remaining)
                .unwrap_or(0)
        } else {
            (0..decisions.len())
                .find(|&i| counts[i] >= windows[i].limit)
                .unwrap_or(0)
        };
        Ok(Verdict {
            // A counter answers one count per slot, so one decision per window.
            binding: decisions[binding],
            window: windows[binding].name,
        })
    }
}

/// Window counts in memory: the double for handler tests. `outage` makes
/// every call fail, as an unreachable table would.
#[derive(Debug, Default)]
pub struct MemoryCounter {
    records: Mutex<HashMap<(String, i64), HashMap<String, u32>>>,
    pub outage: Outage,
}

#[async_trait::async_trait]
impl RateCounter for MemoryCounter {
    async fn increment(
        &self,
        subject: &str,
        bucket: i64,
        slots: &[Slot],
        _expires_at: DateTime<Utc>,
    ) -> Result<Result<Vec<u32>, Vec<u32>>, StoreError> {
        self.outage.check("rate-limit table")?;
        let mut records = self.records.lock().unwrap_or_else(|e| e.into_inner());
        let record = records.entry((subject.to_owned(), bucket)).or_default();
        let counts: Vec<u32> = slots
            .iter()
            .map(|s| record.get(&s.counter).copied().unwrap_or(0))
            .collect();
        if slots
            .iter()
            .zip(&counts)
            .any(|(s, count)| *count >= s.limit)
        {
            return Ok(Err(counts));
        }
        for slot in slots {
            *record.entry(slot.counter.clone()).or_default() += 1;
        }
        Ok(Ok(counts.into_iter().map(|c| c + 1).collect()))
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

    const MINUTE_AND_HOUR: [RateWindow; 2] = [
        RateWindow {
            name: "minute",
            length: TimeDelta::minutes(1),
            limit: 2,
        },
        RateWindow {
            name: "hour",
            length: TimeDelta::hours(1),
            limit: 3,
        },
    ];

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
    async fn the_binding_window_is_the_one_with_fewest_left() {
        let limiter = limiter();
        let first = limiter.hit_windows("u", &MINUTE_AND_HOUR, at(0)).await;
        let v = first.unwrap().unwrap();
        assert_eq!(
            (v.window, v.binding.remaining, v.binding.reset),
            ("minute", 1, at(60))
        );
    }

    /// One request of `u` against a minute (2) and an hour (3) at `secs`.
    async fn hit(limiter: &RateLimiter, secs: i64) -> (&'static str, bool, u32) {
        let v = limiter.hit_windows("u", &MINUTE_AND_HOUR, at(secs)).await;
        let v = v.unwrap().unwrap();
        (v.window, v.binding.allowed, v.binding.remaining)
    }

    #[tokio::test]
    async fn a_request_refused_by_the_minute_uses_up_no_hour_slot() {
        let limiter = limiter();
        for s in [0, 1] {
            assert!(hit(&limiter, s).await.1);
        }
        assert_eq!(hit(&limiter, 2).await, ("minute", false, 0));
        // The hour counted 2 of 3: the next minute has exactly one left.
        assert_eq!(hit(&limiter, 61).await, ("hour", true, 0));
    }

    #[tokio::test]
    async fn a_request_refused_by_the_hour_uses_up_no_minute_slot() {
        let limiter = limiter();
        for s in [0, 1, 61] {
            assert!(hit(&limiter, s).await.1);
        }
        assert_eq!(hit(&limiter, 62).await, ("hour", false, 0));
        // The minute still has its second slot: the hour alone refuses.
        assert_eq!(hit(&limiter, 63).await.0, "hour");
        assert!(hit(&limiter, 3600).await.1, "a new hour starts afresh");
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
