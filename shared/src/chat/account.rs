//! A signed-in user's own view of chat: this period's usage against the
//! quota (from the rollup's counters, the one source of truth for
//! reporting) and the record of each request.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::accounting::{ChatTotals, totals};
use super::settings::{ChatSettings, TierLimits};
use super::store::{ChatStore, UsagePage};
use super::users::Users;
use crate::metering::period::BillingPeriod;
use crate::metering::tenants::Tenant;
use crate::metering::usage::{PeriodUsage, UsageReader, quota_percent};
use crate::store::StoreError;

/// `GET /api/v1/usage/current`.
#[derive(Debug, Clone, PartialEq)]
pub struct CurrentUsage {
    pub tenant: Tenant,
    pub period: BillingPeriod,
    pub usage: PeriodUsage,
    pub chat: ChatTotals,
    /// The tier's limits: rate windows and the monthly quota.
    pub limits: TierLimits,
}

impl CurrentUsage {
    pub fn remaining(&self) -> u64 {
        self.limits.monthly_tokens.saturating_sub(self.usage.tokens)
    }

    pub fn percent(&self) -> f64 {
        quota_percent(self.usage.tokens, self.limits.monthly_tokens)
    }
}

pub struct Account {
    users: Users,
    usage: Arc<dyn UsageReader>,
    chat: Arc<dyn ChatStore>,
    settings: ChatSettings,
}

impl Account {
    pub fn new(
        users: Users,
        usage: Arc<dyn UsageReader>,
        chat: Arc<dyn ChatStore>,
        settings: ChatSettings,
    ) -> Self {
        Self {
            users,
            usage,
            chat,
            settings,
        }
    }

    /// `subject`'s usage this period.
    pub async fn current(
        &self,
        subject: &str,
        now: DateTime<Utc>,
    ) -> Result<CurrentUsage, StoreError> {
        let tenant = self.users.sign_in(subject, now).await?;
        let period = BillingPeriod::containing(now, tenant.billing_day);
        let usage = self.usage.period_usage(&tenant.id, &period.key()).await?;
        Ok(CurrentUsage {
            chat: totals(&usage.features, &self.settings.models),
            limits: self.settings.tiers.limits(tenant.tier),
            tenant,
            period,
            usage,
        })
    }

    /// `subject`'s request records, newest first.
    pub async fn requests(
        &self,
        subject: &str,
        limit: usize,
        cursor: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<UsagePage, StoreError> {
        self.users.sign_in(subject, now).await?;
        self.chat.usage_records(subject, limit, cursor).await
    }
}
