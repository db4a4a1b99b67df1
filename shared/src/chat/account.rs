//! A signed-in user's own view of chat: this period's usage against the
//! quota (from the rollup's counters, the one source of truth for
//! reporting), the record of each request, and their conversations (list,
//! read, delete). Everything is keyed under the user, so no one reads or
//! deletes another's.

use std::sync::Arc;

use chrono::{DateTime, Utc};

use super::accounting::{ChatTotals, totals};
use super::history::Turn;
use super::request::ConversationId;
use super::settings::{ChatSettings, TierLimits};
use super::store::{ChatStore, ConversationSummary, UsagePage};
use super::users::Users;
use crate::metering::period::BillingPeriod;
use crate::metering::tenants::Tenant;
use crate::metering::usage::{PeriodUsage, UsageReader, quota_percent};
use crate::store::{StoreError, page_of};

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

/// One conversation with its turns, oldest first.
#[derive(Debug, Clone, PartialEq)]
pub struct Conversation {
    pub summary: ConversationSummary,
    pub turns: Vec<Turn>,
}

/// A page of conversations, the most recently active first.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationPage {
    pub conversations: Vec<ConversationSummary>,
    pub next: Option<String>,
}

/// At most this many turns (the newest) are shown of one conversation.
const SHOWN_TURNS: usize = 1000;

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

    /// `subject`'s conversations, the most recently active first.
    pub async fn conversations(
        &self,
        subject: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<ConversationPage, StoreError> {
        let mut all = self.chat.conversations(subject).await?;
        all.sort_by(|a, b| b.updated_at.cmp(&a.updated_at).then(b.id.cmp(&a.id)));
        let (conversations, next) = page_of(&all, limit, cursor)?;
        Ok(ConversationPage {
            conversations,
            next,
        })
    }

    /// One of `subject`'s conversations with its turns; `None` if they
    /// have none by that id.
    pub async fn conversation(
        &self,
        subject: &str,
        id: &ConversationId,
    ) -> Result<Option<Conversation>, StoreError> {
        let Some(summary) = self.chat.conversation(subject, id.as_str()).await? else {
            return Ok(None);
        };
        let turns = self.chat.history(subject, id.as_str(), SHOWN_TURNS).await?;
        Ok(Some(Conversation { summary, turns }))
    }

    /// Deletes one of `subject`'s conversations and its history; `false`
    /// if they have none by that id.
    pub async fn forget(&self, subject: &str, id: &ConversationId) -> Result<bool, StoreError> {
        self.chat.delete_conversation(subject, id.as_str()).await
    }
}
