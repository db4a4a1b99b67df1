//! Where chat keeps its users, conversations, per-request usage records and
//! rate-limit refusals (DynamoDB in production, layout: docs/data-model.md,
//! "chat"), and [`MemoryChat`], the double handler tests use.

use std::collections::HashMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::chat::history::Turn;
use crate::chat::settings::Usage;
use crate::store::{Outage, StoreError, page_of};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserProfile {
    pub subject: String,
    pub created_at: DateTime<Utc>,
    pub last_active_at: DateTime<Utc>,
}

/// What one chat request used and cost: `GET /api/v1/usage/history`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRecord {
    pub request_id: String,
    pub conversation_id: String,
    pub model: String,
    pub usage: Usage,
    pub cost_usd: f64,
    pub latency_ms: u64,
    pub stop_reason: Option<String>,
    /// `complete`, `error` or `disconnected`.
    pub outcome: String,
    pub created_at: DateTime<Utc>,
}

/// A conversation as its owner's list shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConversationSummary {
    pub id: String,
    /// The start of its first message.
    pub title: String,
    pub created_at: DateTime<Utc>,
    /// Its last exchange.
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UsagePage {
    pub records: Vec<UsageRecord>,
    pub next: Option<String>,
}

/// A conversation's title: the start of its first message.
pub fn title_of(first_message: &str) -> String {
    first_message.chars().take(80).collect()
}

#[async_trait::async_trait]
pub trait ChatStore: Send + Sync {
    async fn user(&self, subject: &str) -> Result<Option<UserProfile>, StoreError>;

    /// Creates the profile unless it exists (a concurrent first sign-in).
    async fn create_user(&self, profile: &UserProfile) -> Result<(), StoreError>;

    /// Moves `last_active_at` to `now` unless it moved since `cutoff` (on
    /// any instance). Returns whether it moved.
    async fn touch(
        &self,
        subject: &str,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Stored turns of a conversation, oldest first (at most the newest
    /// `limit`).
    async fn history(
        &self,
        subject: &str,
        conversation: &str,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError>;

    /// Appends one exchange, and lists the conversation under its user
    /// (title and creation time from its first exchange).
    async fn append(
        &self,
        subject: &str,
        conversation: &str,
        exchange: [&Turn; 2],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Every conversation of a user, in no particular order.
    async fn conversations(&self, subject: &str) -> Result<Vec<ConversationSummary>, StoreError>;

    /// One conversation of a user; `None` if it is not theirs or gone.
    async fn conversation(
        &self,
        subject: &str,
        conversation: &str,
    ) -> Result<Option<ConversationSummary>, StoreError>;

    /// Deletes a user's conversation and its turns; `false` if there was none.
    async fn delete_conversation(
        &self,
        subject: &str,
        conversation: &str,
    ) -> Result<bool, StoreError>;

    async fn record_usage(&self, subject: &str, record: &UsageRecord) -> Result<(), StoreError>;

    /// Usage records of a user, newest first.
    async fn usage_records(
        &self,
        subject: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UsagePage, StoreError>;

    /// A request refused by a rate limit: which window, at which limit.
    async fn record_refusal(
        &self,
        subject: &str,
        request_id: &str,
        window: &str,
        limit: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError>;
}

/// Chat data in memory. Cursors are record offsets; `outage` makes every
/// call fail as an unreachable table would.
#[derive(Debug, Default)]
pub struct MemoryChat {
    data: Mutex<ChatData>,
    pub outage: Outage,
}

#[derive(Debug, Default, Clone)]
pub struct ChatData {
    pub users: HashMap<String, UserProfile>,
    /// Turns by (subject, conversation), oldest first.
    pub turns: HashMap<(String, String), Vec<Turn>>,
    /// Conversation summaries by (subject, conversation).
    pub conversations: HashMap<(String, String), ConversationSummary>,
    /// Usage records by subject, oldest first.
    pub records: HashMap<String, Vec<UsageRecord>>,
    /// (subject, request id, window, limit) of each refusal.
    pub refusals: Vec<(String, String, String, u32)>,
}

impl MemoryChat {
    /// A copy of everything stored, for assertions.
    pub fn snapshot(&self) -> ChatData {
        self.data.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn data(&self) -> Result<std::sync::MutexGuard<'_, ChatData>, StoreError> {
        self.outage.check("chat table")?;
        Ok(self.data.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

#[async_trait::async_trait]
impl ChatStore for MemoryChat {
    async fn user(&self, subject: &str) -> Result<Option<UserProfile>, StoreError> {
        Ok(self.data()?.users.get(subject).cloned())
    }

    async fn create_user(&self, profile: &UserProfile) -> Result<(), StoreError> {
        let mut data = self.data()?;
        data.users
            .entry(profile.subject.clone())
            .or_insert_with(|| profile.clone());
        Ok(())
    }

    async fn touch(
        &self,
        subject: &str,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut data = self.data()?;
        match data.users.get_mut(subject) {
            Some(user) if user.last_active_at <= cutoff => {
                user.last_active_at = now;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn history(
        &self,
        subject: &str,
        conversation: &str,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let data = self.data()?;
        let turns = data
            .turns
            .get(&(subject.to_owned(), conversation.to_owned()))
            .cloned()
            .unwrap_or_default();
        Ok(turns[turns.len().saturating_sub(limit)..].to_vec())
    }

    async fn append(
        &self,
        subject: &str,
        conversation: &str,
        exchange: [&Turn; 2],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut data = self.data()?;
        let key = (subject.to_owned(), conversation.to_owned());
        data.conversations
            .entry(key)
            .and_modify(|c| c.updated_at = at)
            .or_insert_with(|| ConversationSummary {
                id: conversation.to_owned(),
                title: title_of(&exchange[0].text),
                created_at: at,
                updated_at: at,
            });
        let turns = data
            .turns
            .entry((subject.to_owned(), conversation.to_owned()))
            .or_default();
        turns.extend(exchange.into_iter().cloned());
        Ok(())
    }

    async fn conversations(&self, subject: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        let data = self.data()?;
        Ok(data
            .conversations
            .iter()
            .filter(|((s, _), _)| s == subject)
            .map(|(_, c)| c.clone())
            .collect())
    }

    async fn conversation(
        &self,
        subject: &str,
        conversation: &str,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        let data = self.data()?;
        let key = (subject.to_owned(), conversation.to_owned());
        Ok(data.conversations.get(&key).cloned())
    }

    async fn delete_conversation(
        &self,
        subject: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        let mut data = self.data()?;
        let key = (subject.to_owned(), conversation.to_owned());
        data.turns.remove(&key);
        Ok(data.conversations.remove(&key).is_some())
    }

    async fn record_usage(&self, subject: &str, record: &UsageRecord) -> Result<(), StoreError> {
        let mut data = self.data()?;
        let records = data.records.entry(subject.to_owned()).or_default();
        records.push(record.clone());
        Ok(())
    }

    async fn usage_records(
        &self,
        subject: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UsagePage, StoreError> {
        let data = self.data()?;
        let newest_first: Vec<UsageRecord> = data
            .records
            .get(subject)
            .map(|r| r.iter().rev().cloned().collect())
            .unwrap_or_default();
        let (records, next) = page_of(&newest_first, limit, cursor)?;
        Ok(UsagePage { records, next })
    }

    async fn record_refusal(
        &self,
        subject: &str,
        request_id: &str,
        window: &str,
        limit: u32,
        _at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut data = self.data()?;
        data.refusals.push((
            subject.to_owned(),
            request_id.to_owned(),
            window.to_owned(),
            limit,
        ));
        Ok(())
    }
}
