//! Fixed-window rate limits, exact across any number of Lambda instances,
//! refusing cleanly.
//!
//! A subject's windows are counters in one record, keyed by the start of its
//! longest window, and a request counts against all of them in one
//! conditional write (DynamoDB in production: one `UpdateItem`): either
//! every window has room and each counts it, or none does. So no instance
//! can let `limit × instances` through (as an in-memory pre-check would).
//! [`WindowsAt`] turns counts into a [`Verdict`] for any store of them (chat
//! keeps its windows beside its budget: [`crate::chat::budget`]). Rendering
//! a [`Decision`] as HTTP headers or a 429 is the HTTP layer's job
//! ([`crate::http`]).

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

    /// Counts one request of `subject` against every one of `windows` (not
    /// empty, the longest `longest`): all of them count it, or, when any is
    /// full, none does.
    async fn count(
        &self,
        subject: &str,
        windows: &[RateWindow],
        longest: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<Verdict, StoreError> {
        let at = WindowsAt::new(windows, now);
        if let Some(refused) = at.closed() {
            return Ok(refused);
        }
        let bucket = window_start(now, longest);
        let slots: Vec<Slot> = windows
            .iter()
            .zip(&at.starts)
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
        Ok(match counted {
            Ok(counts) => at.verdict(&counts, true),
            Err(counts) => at.verdict(&counts, false),
        })
    }
}

/// A request's windows at one instant, and the start of each: how any
/// store of counts turns them into a [`Verdict`].
#[derive(Debug, Clone)]
pub struct WindowsAt<'a> {
    pub windows: &'a [RateWindow],
    /// Each window's start (epoch seconds).
    pub starts: Vec<i64>,
    now: DateTime<Utc>,
}

impl<'a> WindowsAt<'a> {
    pub fn new(windows: &'a [RateWindow], now: DateTime<Utc>) -> Self {
        Self {
            windows,
            starts: windows
                .iter()
                .map(|w| window_start(now, w.length))
                .collect(),
            now,
        }
    }

    /// The refusal of a window with a zero limit, which refuses without a
    /// write (a record created on first use would let one through).
    pub fn closed(&self) -> Option<Verdict> {
        let i = self.windows.iter().position(|w| w.limit == 0)?;
        Some(self.decided(i, &[], false))
    }

    /// The verdict for `counts` (one per window: after counting the
    /// request if `allowed`, as they stood if not). Allowed: the window
    /// with the fewest left binds. Refused: the first full one (the first
    /// window if the counts do not say which). `windows` is not empty.
    pub fn verdict(&self, counts: &[u32], allowed: bool) -> Verdict {
        let remaining = |i: usize| {
            let count = counts.get(i).copied().unwrap_or(0);
            self.windows[i].limit.saturating_sub(count)
        };
        let binding = if allowed {
            (0..self.windows.len()).min_by_key(|&i| remaining(i))
        } else {
            (0..self.windows.len()).find(|&i| remaining(i) == 0)
        };
        self.decided(binding.unwrap_or(0), counts, allowed)
    }

    fn decided(&self, i: usize, counts: &[u32], allowed: bool) -> Verdict {
        let window = &self.windows[i];
        let count = counts.get(i).copied().unwrap_or(0);
        Verdict {
            binding: Decision {
                allowed,
                limit: window.limit,
                remaining: if allowed {
                    window.limit.saturating_sub(count)
                } else {
                    0
                },
                reset: DateTime::from_timestamp(
                    self.starts[i] + window.length.num_seconds().max(1),
                    0,
                )
                .unwrap_or(self.now),
            },
            window: window.name,
        }
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

    #[test]
    fn the_binding_window_is_the_one_with_fewest_left_or_the_full_one() {
        let at0 = WindowsAt::new(&MINUTE_AND_HOUR, at(0));
        let v = at0.verdict(&[1, 1], true);
        assert_eq!(
            (v.window, v.binding.remaining, v.binding.reset),
            ("minute", 1, at(60))
        );
        let v = at0.verdict(&[1, 3], false);
        assert_eq!((v.window, v.binding.remaining), ("hour", 0));
        assert_eq!(v.binding.reset, at(3600));
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
