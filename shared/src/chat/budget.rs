//! Exact monthly budgets and the tier's rate windows: a request is counted
//! in its windows and holds its worst case against the user's quota before
//! the model is called, and settles to what it really used when it ends.
//!
//! The quota is checked against a per-period `held` total that moves in one
//! conditional write per request (hold) and one at the end (settle), so
//! concurrent requests on any number of instances can never together pass
//! the quota, as checks against the rollup's lagging totals could. The rate
//! windows are counters in the same record, moved by the same write: a
//! request refused by a window holds nothing, and one refused by the quota
//! uses up no window slot, even for a moment. The rollup's counters stay the
//! one source of truth for reporting; a period's `held` starts from them. A
//! request that dies before settling keeps its hold: the budget errs towards
//! refusing, never towards overspending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::metering::period::BillingPeriod;
use crate::metering::tenants::Tenant;
use crate::metering::types::TenantId;
use crate::metering::usage::UsageReader;
use crate::ratelimit::{RateWindow, Verdict, WindowsAt};
use crate::store::{Outage, StoreError};

/// At most this many tokens for one image (Anthropic scales images down to
/// about 1.15 megapixels, ≈ 1,600 tokens).
pub const IMAGE_TOKENS: u64 = 1_600;

/// One rate window as a hold expects to find it stored: counting in the
/// window starting at `start`, or (`fresh`) still holding an older window,
/// which the hold restarts at `start` with a count of one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowSlot {
    pub name: &'static str,
    pub start: i64,
    pub limit: u32,
    pub fresh: bool,
}

/// A window as stored: its start and count.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoredWindow {
    pub start: i64,
    pub count: u32,
}

/// A budget as it stood when a hold's condition failed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stored {
    pub held: u64,
    /// One per slot of the hold (default when absent).
    pub windows: Vec<StoredWindow>,
}

/// What a hold did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// Held, each window counting the request: their new counts.
    Held(Vec<u32>),
    /// A condition failed; nothing was written. The budget as it stood, or
    /// `None` when the period has none yet (open it first).
    Failed(Option<Stored>),
}

/// Where budgets are kept (the usage table in production).
#[async_trait::async_trait]
pub trait Budgets: Send + Sync {
    /// In one conditional write: adds `tokens` to the period's `held` and
    /// counts one in each of `windows`, if `held` stays within `quota` and
    /// each window is as its slot expects (a current one under its limit).
    async fn hold(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        tokens: u64,
        quota: u64,
        windows: &[WindowSlot],
    ) -> Result<Hold, StoreError>;

    /// Opens the period's budget at `used` (what was counted so far)
    /// unless it is open already.
    async fn open(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        used: u64,
    ) -> Result<(), StoreError>;

    /// Moves `held` by `delta` (negative: tokens reserved but not used).
    async fn settle(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        delta: i64,
    ) -> Result<(), StoreError>;
}

/// A worst case held for one request, until [`Budget::settle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    pub tenant: TenantId,
    pub period: BillingPeriod,
    pub tokens: u64,
}

/// A request the quota cannot take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverQuota {
    pub quota: u64,
    pub used: u64,
    pub resets_at: DateTime<Utc>,
}

/// The tokens a request can use at most: every prompt byte (a token is at
/// least a byte of text), a fixed allowance per image, and `max_tokens`.
pub fn worst_case(body: &Value) -> u64 {
    fn prompt(value: &Value) -> u64 {
        match value {
            Value::String(text) => text.len() as u64,
            Value::Array(items) => items.iter().map(prompt).sum(),
            Value::Object(map) if map.get("type").and_then(Value::as_str) == Some("image") => {
                IMAGE_TOKENS
            }
            Value::Object(map) => map
                .iter()
                .filter(|(key, _)| matches!(key.as_str(), "text" | "content"))
                .map(|(_, v)| prompt(v))
                .sum(),
            _ => 0,
        }
    }
    let max_tokens = body["max_tokens"].as_u64().unwrap_or(0);
    prompt(&body["system"]) + prompt(&body["messages"]) + max_tokens
}

/// Why a reservation was refused. Nothing was counted or held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// A rate window is full.
    Limited(Verdict),
    /// The quota cannot take the request; `limits` are the windows as they
    /// stand, for the response's headers.
    OverQuota {
        over: OverQuota,
        limits: Option<Verdict>,
    },
}

/// Holds tried while other instances move the windows under them.
const HOLD_ATTEMPTS: usize = 4;
/// At most this many tenants' window starts are remembered per instance.
const MAX_REMEMBERED: usize = 10_000;

#[derive(Clone)]
pub struct Budget {
    budgets: Arc<dyn Budgets>,
    usage: Arc<dyn UsageReader>,
    /// The window starts each tenant's budget had when this instance last
    /// wrote or read it: which windows a hold expects to find current.
    starts: Arc<Mutex<HashMap<TenantId, Vec<i64>>>>,
}

impl Budget {
    pub fn new(budgets: Arc<dyn Budgets>, usage: Arc<dyn UsageReader>) -> Self {
        Self {
            budgets,
            usage,
            starts: Arc::default(),
        }
    }

    /// Counts a request in `tenant`'s rate `windows` and holds its worst
    /// case, `tokens`, of `quota` for the period containing `now`: both in
    /// one conditional write, so a request refused by either uses up
    /// nothing of the other, and concurrent requests on any number of
    /// instances never pass a limit or the quota together.
    ///
    /// The write names, per window, whether it continues the stored window
    /// or starts the next one, guessed from what this instance last saw;
    /// a wrong guess fails the condition and is retried as the store says.
    pub async fn reserve(
        &self,
        tenant: &Tenant,
        quota: u64,
        tokens: u64,
        windows: &[RateWindow],
        now: DateTime<Utc>,
    ) -> Result<Result<(Reservation, Option<Verdict>), Refused>, StoreError> {
        let period = BillingPeriod::containing(now, tenant.billing_day);
        let mut at = WindowsAt::new(windows, now);
        if let Some(closed) = at.closed() {
            return Ok(Err(Refused::Limited(closed)));
        }
        let verdict = |at: &WindowsAt, counts: &[u32], allowed| {
            (!windows.is_empty()).then(|| at.verdict(counts, allowed))
        };
        let mut known = self.known(&tenant.id);
        for _ in 0..HOLD_ATTEMPTS {
            let slots: Vec<WindowSlot> = windows
                .iter()
                .zip(&at.starts)
                .enumerate()
                .map(|(i, (w, &start))| WindowSlot {
                    name: w.name,
                    start,
                    limit: w.limit,
                    fresh: known.get(i) != Some(&start),
                })
                .collect();
            let stored = match self
                .budgets
                .hold(&tenant.id, &period, tokens, quota, &slots)
                .await?
            {
                Hold::Held(counts) => {
                    self.remember(&tenant.id, at.starts.clone());
                    let reservation = Reservation {
                        tenant: tenant.id.clone(),
                        period,
                        tokens,
                    };
                    return Ok(Ok((reservation, verdict(&at, &counts, true))));
                }
                Hold::Failed(Some(stored)) => stored,
                Hold::Failed(None) => {
                    let used = self.usage.period_total(&tenant.id, &period.key()).await?;
                    self.budgets.open(&tenant.id, &period, used).await?;
                    continue;
                }
            };
            known = stored.windows.iter().map(|w| w.start).collect();
            self.remember(&tenant.id, known.clone());
            // Another instance's clock started a window this one has not
            // reached yet: the request counts in it.
            if let Some(later) = stored
                .windows
                .iter()
                .zip(&at.starts)
                .filter(|(w, start)| w.start > **start)
                .map(|(w, _)| w.start)
                .max()
            {
                at = WindowsAt::new(windows, DateTime::from_timestamp(later, 0).unwrap_or(now));
                continue;
            }
            let counts: Vec<u32> = stored
                .windows
                .iter()
                .zip(&at.starts)
                .map(|(w, &start)| if w.start == start { w.count } else { 0 })
                .collect();
            if windows.iter().zip(&counts).any(|(w, &c)| c >= w.limit) {
                return Ok(Err(Refused::Limited(at.verdict(&counts, false))));
            }
            if stored.held.saturating_add(tokens) > quota {
                let over = OverQuota {
                    quota,
                    used: stored.held,
                    resets_at: period.end,
                };
                let limits = verdict(&at, &counts, true);
                return Ok(Err(Refused::OverQuota { over, limits }));
            }
            // Only a guess of which windows are current was wrong: retry.
        }
        Err(StoreError::Unavailable {
            store: "usage table",
            operation: "hold",
            message: "the budget kept changing under the hold".into(),
        })
    }

    /// The window starts last seen for `tenant` (none if never).
    fn known(&self, tenant: &TenantId) -> Vec<i64> {
        let starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        starts.get(tenant).cloned().unwrap_or_default()
    }

    fn remember(&self, tenant: &TenantId, seen: Vec<i64>) {
        let mut starts = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        if starts.len() >= MAX_REMEMBERED && !starts.contains_key(tenant) {
            starts.clear();
        }
        starts.insert(tenant.clone(), seen);
    }

    /// Settles `reservation` to the `used` tokens, releasing the rest.
    pub async fn settle(&self, reservation: &Reservation, used: u64) -> Result<(), StoreError> {
        let delta = used as i64 - reservation.tokens as i64;
        if delta == 0 {
            return Ok(());
        }
        self.budgets
            .settle(&reservation.tenant, &reservation.period, delta)
            .await
    }
}

/// Budgets in memory: the double for handler tests.
#[derive(Debug, Default)]
pub struct MemoryBudgets {
    budgets: Mutex<HashMap<(TenantId, String), MemoryBudget>>,
    pub outage: Outage,
}

#[derive(Debug, Default)]
struct MemoryBudget {
    held: u64,
    windows: HashMap<&'static str, StoredWindow>,
}

impl MemoryBudgets {
    /// What is held for `tenant` in the period starting on `period`.
    pub fn held(&self, tenant: &TenantId, period: &BillingPeriod) -> Option<u64> {
        let budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets.get(&(tenant.clone(), period.key())).map(|b| b.held)
    }
}

#[async_trait::async_trait]
impl Budgets for MemoryBudgets {
    async fn hold(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        tokens: u64,
        quota: u64,
        windows: &[WindowSlot],
    ) -> Result<Hold, StoreError> {
        self.outage.check("usage table")?;
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let Some(budget) = budgets.get_mut(&(tenant.clone(), period.key())) else {
            return Ok(Hold::Failed(None));
        };
        let stored: Vec<StoredWindow> = windows
            .iter()
            .map(|slot| budget.windows.get(slot.name).copied().unwrap_or_default())
            .collect();
        let fits = windows.iter().zip(&stored).all(|(slot, w)| {
            if slot.fresh {
                w.start < slot.start
            } else {
                w.start == slot.start && w.count < slot.limit
            }
        });
        if !fits || budget.held + tokens > quota {
            return Ok(Hold::Failed(Some(Stored {
                held: budget.held,
                windows: stored,
            })));
        }
        budget.held += tokens;
        let counts = windows
            .iter()
            .zip(&stored)
            .map(|(slot, w)| {
                let count = if slot.fresh { 1 } else { w.count + 1 };
                let window = StoredWindow {
                    start: slot.start,
                    count,
                };
                budget.windows.insert(slot.name, window);
                count
            })
            .collect();
        Ok(Hold::Held(counts))
    }

    async fn open(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        used: u64,
    ) -> Result<(), StoreError> {
        self.outage.check("usage table")?;
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        budgets
            .entry((tenant.clone(), period.key()))
            .or_insert(MemoryBudget {
                held: used,
                windows: HashMap::new(),
            });
        Ok(())
    }

    async fn settle(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        delta: i64,
    ) -> Result<(), StoreError> {
        self.outage.check("usage table")?;
        let mut budgets = self.budgets.lock().unwrap_or_else(|e| e.into_inner());
        let budget = budgets.entry((tenant.clone(), period.key())).or_default();
        budget.held = budget.held.saturating_add_signed(delta);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::metering::rollup::MemoryLedger;
    use crate::metering::tenants::NewTenant;

    fn tenant() -> Tenant {
        serde_json::from_value::<NewTenant>(json!({
            "name": "u", "monthly_quota": 1, "billing_day": 1, "tier": "free"}))
        .unwrap()
        .into_tenant(Utc::now())
        .unwrap()
    }

    fn budget() -> (Budget, Arc<MemoryBudgets>) {
        let budgets = Arc::new(MemoryBudgets::default());
        (
            Budget::new(budgets.clone(), Arc::new(MemoryLedger::default())),
            budgets,
        )
    }

    #[test]
    fn the_worst_case_counts_every_prompt_byte_images_and_max_tokens() {
        let body = json!({
            "max_tokens": 100,
            "system": [{"type": "text", "text": "abcd", "cache_control": {"type": "ephemeral"}}],
            "messages": [
                {"role": "user", "content": "hello"},
                {"role": "user", "content": [
                    {"type": "image", "source": {"type": "base64", "data": "xxxxxxxx"}},
                    {"type": "text", "text": "héllo"},
                ]},
            ],
        });
        assert_eq!(worst_case(&body), 4 + 5 + IMAGE_TOKENS + 6 + 100);
    }

    const MINUTE_AND_HOUR: [RateWindow; 2] = [
        RateWindow {
            name: "minute",
            length: chrono::TimeDelta::minutes(1),
            limit: 2,
        },
        RateWindow {
            name: "hour",
            length: chrono::TimeDelta::hours(1),
            limit: 3,
        },
    ];

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_798_761_600 + secs, 0).unwrap()
    }

    /// Reserves `tokens` of 100 against the minute (2) and hour (3) at `secs`.
    async fn reserve(
        budget: &Budget,
        t: &Tenant,
        tokens: u64,
        secs: i64,
    ) -> Result<(Reservation, Option<Verdict>), Refused> {
        budget
            .reserve(t, 100, tokens, &MINUTE_AND_HOUR, at(secs))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn holds_until_the_quota_then_refuses_and_settling_releases_the_rest() {
        let (budget, budgets) = budget();
        let t = tenant();
        let now = Utc::now();
        let (first, limits) = budget
            .reserve(&t, 100, 60, &[], now)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(limits, None);
        let refused = budget.reserve(&t, 100, 60, &[], now).await.unwrap();
        let Err(Refused::OverQuota { over, .. }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!((over.quota, over.used), (100, 60));
        budget.settle(&first, 15).await.unwrap();
        assert_eq!(budgets.held(&t.id, &first.period), Some(15));
        assert!(budget.reserve(&t, 100, 60, &[], now).await.unwrap().is_ok());
        assert_eq!(budgets.held(&t.id, &first.period), Some(75));
    }

    #[tokio::test]
    async fn a_request_refused_by_a_window_holds_nothing_and_uses_no_other_slot() {
        let (budget, budgets) = budget();
        let t = tenant();
        for s in [0, 1] {
            assert!(reserve(&budget, &t, 10, s).await.is_ok());
        }
        let Err(Refused::Limited(v)) = reserve(&budget, &t, 10, 2).await else {
            panic!("the minute is full");
        };
        assert_eq!((v.window, v.binding.reset), ("minute", at(60)));
        assert_eq!(
            budgets.held(&t.id, &BillingPeriod::containing(at(0), t.billing_day)),
            Some(20)
        );
        // The hour counted 2 of 3: the next minute has exactly one left.
        let (_, v) = reserve(&budget, &t, 10, 61).await.unwrap();
        let v = v.unwrap();
        assert_eq!((v.window, v.binding.remaining), ("hour", 0));
        let Err(Refused::Limited(v)) = reserve(&budget, &t, 10, 62).await else {
            panic!("the hour is full");
        };
        assert_eq!(v.window, "hour");
    }

    #[tokio::test]
    async fn a_request_refused_by_the_quota_uses_no_window_slot() {
        let (budget, _) = budget();
        let t = tenant();
        assert!(reserve(&budget, &t, 90, 0).await.is_ok());
        let Err(Refused::OverQuota { over, limits }) = reserve(&budget, &t, 20, 1).await else {
            panic!("over quota");
        };
        assert_eq!(over.used, 90);
        assert_eq!(limits.unwrap().binding.remaining, 1);
        // The minute still has its second slot.
        assert!(reserve(&budget, &t, 10, 2).await.is_ok());
    }

    #[tokio::test]
    async fn instances_that_guess_a_window_wrong_retry_and_count_exactly() {
        let budgets = Arc::new(MemoryBudgets::default());
        let ledger = Arc::new(MemoryLedger::default());
        let one = Budget::new(budgets.clone(), ledger.clone());
        let two = Budget::new(budgets, ledger);
        let t = tenant();
        // `two` has never seen the minute `one` started, then `one` has not
        // seen the next minute `two` started: each retries once.
        assert!(reserve(&one, &t, 1, 0).await.is_ok());
        let (_, v) = reserve(&two, &t, 1, 1).await.unwrap();
        assert_eq!(v.unwrap().binding.remaining, 0);
        assert!(reserve(&two, &t, 1, 60).await.is_ok());
        let Err(Refused::Limited(v)) = reserve(&one, &t, 1, 61).await else {
            panic!("the hour is full");
        };
        assert_eq!(v.window, "hour");
    }

    #[tokio::test]
    async fn a_window_another_clock_started_counts_the_request() {
        let budgets = Arc::new(MemoryBudgets::default());
        let ledger = Arc::new(MemoryLedger::default());
        let ahead = Budget::new(budgets.clone(), ledger.clone());
        let behind = Budget::new(budgets, ledger);
        let t = tenant();
        assert!(reserve(&ahead, &t, 1, 60).await.is_ok());
        let (_, v) = reserve(&behind, &t, 1, 59).await.unwrap();
        let v = v.unwrap();
        assert_eq!((v.window, v.binding.reset), ("minute", at(120)));
    }

    #[tokio::test]
    async fn a_period_opens_at_what_the_rollup_counted() {
        let budgets = Arc::new(MemoryBudgets::default());
        let ledger = Arc::new(MemoryLedger::default());
        let t = tenant();
        let used = crate::metering::types::UsageEvent {
            id: "e1".to_owned().try_into().unwrap(),
            feature: "chat".to_owned().try_into().unwrap(),
            tokens: 90.try_into().unwrap(),
            timestamp: Utc::now(),
            properties: Default::default(),
        };
        let delivery = [(crate::metering::rollup::Seq(1), vec![used])];
        crate::metering::rollup::count(ledger.as_ref(), &t.id, t.billing_day, &delivery)
            .await
            .unwrap();
        let budget = Budget::new(budgets, ledger);
        let refused = budget.reserve(&t, 100, 20, &[], Utc::now()).await.unwrap();
        let Err(Refused::OverQuota { over, .. }) = refused else {
            panic!("{refused:?}");
        };
        assert_eq!(over.used, 90);
    }
}
