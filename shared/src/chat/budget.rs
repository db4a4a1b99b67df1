//! Exact monthly budgets: a request holds its worst case against the
//! user's quota before the model is called, and settles to what it really
//! used when it ends.
//!
//! The quota is checked against a per-period `held` total that moves in one
//! conditional write per request (hold) and one at the end (settle), so
//! concurrent requests on any number of instances can never together pass
//! the quota, as checks against the rollup's lagging totals could. The
//! rollup's counters stay the one source of truth for reporting; a period's
//! `held` starts from them. A request that dies before settling keeps its
//! hold: the budget errs towards refusing, never towards overspending.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::metering::period::BillingPeriod;
use crate::metering::tenants::Tenant;
use crate::metering::types::TenantId;
use crate::metering::usage::UsageReader;
use crate::store::{Outage, StoreError};

/// At most this many tokens for one image (Anthropic scales images down to
/// about 1.15 megapixels, ≈ 1,600 tokens).
pub const IMAGE_TOKENS: u64 = 1_600;

/// What a hold did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    Held,
    /// It would pass the quota: `held` is what is held already.
    Refused {
        held: u64,
    },
    /// The period has no budget yet: open it first.
    Unopened,
}

/// Where budgets are kept (the usage table in production).
#[async_trait::async_trait]
pub trait Budgets: Send + Sync {
    /// Adds `tokens` to the period's `held` if it stays within `quota`.
    async fn hold(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        tokens: u64,
        quota: u64,
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

#[derive(Clone)]
pub struct Budget {
    budgets: Arc<dyn Budgets>,
    usage: Arc<dyn UsageReader>,
}

impl Budget {
    pub fn new(budgets: Arc<dyn Budgets>, usage: Arc<dyn UsageReader>) -> Self {
        Self { budgets, usage }
    }

    /// Holds `tokens` of `tenant`'s `quota` for the period containing `now`.
    pub async fn reserve(
        &self,
        tenant: &Tenant,
        quota: u64,
        tokens: u64,
        now: DateTime<Utc>,
    ) -> Result<Result<Reservation, OverQuota>, StoreError> {
        let period = BillingPeriod::containing(now, tenant.billing_day);
        let over = |used: u64| OverQuota {
            quota,
            used,
            resets_at: period.end,
        };
        for _ in 0..2 {
            match self
                .budgets
                .hold(&tenant.id, &period, tokens, quota)
                .await?
            {
                Hold::Held => {
                    return Ok(Ok(Reservation {
                        tenant: tenant.id.clone(),
                        period,
                        tokens,
                    }));
                }
                Hold::Refused { held } => return Ok(Err(over(held))),
                Hold::Unopened => {
                    let used = self.usage.period_total(&tenant.id, &period.key()).await?;
                    self.budgets.open(&tenant.id, &period, used).await?;
                }
            }
        }
        Err(StoreError::Unavailable {
            store: "usage table",
            operation: "hold",
            message: "the budget did not open".into(),
        })
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
    held: Mutex<HashMap<(TenantId, String), u64>>,
    pub outage: Outage,
}

impl MemoryBudgets {
    /// What is held for `tenant` in the period starting on `period`.
    pub fn held(&self, tenant: &TenantId, period: &BillingPeriod) -> Option<u64> {
        let held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.get(&(tenant.clone(), period.key())).copied()
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
    ) -> Result<Hold, StoreError> {
        self.outage.check("usage table")?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        Ok(match held.get_mut(&(tenant.clone(), period.key())) {
            None => Hold::Unopened,
            Some(total) if *total + tokens > quota => Hold::Refused { held: *total },
            Some(total) => {
                *total += tokens;
                Hold::Held
            }
        })
    }

    async fn open(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        used: u64,
    ) -> Result<(), StoreError> {
        self.outage.check("usage table")?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        held.entry((tenant.clone(), period.key())).or_insert(used);
        Ok(())
    }

    async fn settle(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        delta: i64,
    ) -> Result<(), StoreError> {
        self.outage.check("usage table")?;
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        let total = held.entry((tenant.clone(), period.key())).or_default();
        *total = total.saturating_add_signed(delta);
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

    #[tokio::test]
    async fn holds_until_the_quota_then_refuses_and_settling_releases_the_rest() {
        let (budget, budgets) = budget();
        let t = tenant();
        let now = Utc::now();
        let first = budget.reserve(&t, 100, 60, now).await.unwrap().unwrap();
        let refused = budget.reserve(&t, 100, 60, now).await.unwrap().unwrap_err();
        assert_eq!((refused.quota, refused.used), (100, 60));
        budget.settle(&first, 15).await.unwrap();
        assert_eq!(budgets.held(&t.id, &first.period), Some(15));
        assert!(budget.reserve(&t, 100, 60, now).await.unwrap().is_ok());
        assert_eq!(budgets.held(&t.id, &first.period), Some(75));
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
        crate::metering::rollup::count(ledger.as_ref(), &t.id, t.billing_day, &[used])
            .await
            .unwrap();
        let budget = Budget::new(budgets, ledger);
        let refused = budget.reserve(&t, 100, 20, Utc::now()).await.unwrap();
        assert_eq!(refused.unwrap_err().used, 90);
    }
}
