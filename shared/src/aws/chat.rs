//! Chat data in DynamoDB (layout: docs/data-model.md, "chat"): the
//! [`ChatStore`] of users, conversations and their turns, per-request usage
//! records and rate-limit refusals.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, PutRequest, WriteRequest};
use chrono::{DateTime, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use super::{
    applied, batch_delete, batch_write, decode_cursor, encode_cursor, failed, n, put_item,
    query_all, s,
};
use crate::chat::history::Turn;
use crate::chat::store::{
    ChatStore, ConversationSummary, UsagePage, UsageRecord, UserProfile, title_of,
};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "chat table";

/// Per-request usage records are kept this long (then expire by TTL).
const RECORD_RETENTION: TimeDelta = TimeDelta::days(400);
/// Rate-limit refusals are kept this long.
const REFUSAL_RETENTION: TimeDelta = TimeDelta::days(30);

#[derive(Serialize, Deserialize)]
struct Item<T> {
    pk: String,
    sk: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    expires_at: Option<i64>,
    #[serde(flatten)]
    value: T,
}

fn user_pk(subject: &str) -> String {
    format!("USER#{subject}")
}

/// Turns are keyed under the user, so a conversation id is only ever
/// visible to the user who started it.
fn conversation_pk(subject: &str, conversation: &str) -> String {
    format!("CONV#{subject}#{conversation}")
}

fn to_item<T: Serialize>(value: &T) -> Result<HashMap<String, AttributeValue>, StoreError> {
    super::to_item(STORE, value)
}

/// The value of an item written by [`to_item`] from an [`Item`].
fn from_item<T: for<'de> Deserialize<'de>>(
    item: HashMap<String, AttributeValue>,
) -> Result<T, StoreError> {
    super::from_item::<Item<T>>(STORE, item).map(|i| i.value)
}

/// A `CONV#<id>` item of a user as its summary.
fn summary(item: HashMap<String, AttributeValue>) -> Result<ConversationSummary, StoreError> {
    #[derive(Deserialize)]
    struct Stored {
        sk: String,
        title: String,
        created_at: DateTime<Utc>,
        updated_at: DateTime<Utc>,
    }
    let stored: Stored = super::from_item(STORE, item)?;
    Ok(ConversationSummary {
        id: stored.sk.trim_start_matches("CONV#").to_owned(),
        title: stored.title,
        created_at: stored.created_at,
        updated_at: stored.updated_at,
    })
}

#[derive(Debug, Clone)]
pub struct DynamoChat {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoChat {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    /// How many rate-limit refusals of a user are on record.
    pub async fn refusals(&self, subject: &str) -> Result<usize, StoreError> {
        let out = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :limited)")
            .expression_attribute_values(":pk", s(user_pk(subject)))
            .expression_attribute_values(":limited", s("LIMITED#"))
            .select(aws_sdk_dynamodb::types::Select::Count)
            .send()
            .await
            .map_err(|e| failed(STORE, "Query", &e))?;
        Ok(out.count as usize)
    }
}

#[async_trait::async_trait]
impl ChatStore for DynamoChat {
    async fn user(&self, subject: &str) -> Result<Option<UserProfile>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(subject)))
            .key("sk", s("PROFILE"))
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item
            .map(from_item)
            .transpose()
    }

    /// Creates the profile unless it exists (a concurrent first sign-in).
    async fn create_user(&self, profile: &UserProfile) -> Result<(), StoreError> {
        let item = to_item(&Item {
            pk: user_pk(&profile.subject),
            sk: "PROFILE".to_owned(),
            expires_at: None,
            value: profile,
        })?;
        let created = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(item))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        applied(STORE, "PutItem", created).map(drop)
    }

    /// Moves `last_active_at` to `now` unless it moved in the last minute
    /// (on any instance). Returns whether it moved.
    async fn touch(
        &self,
        subject: &str,
        now: DateTime<Utc>,
        cutoff: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let touched = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(subject)))
            .key("sk", s("PROFILE"))
            .update_expression("SET last_active_at = :now")
            .condition_expression("attribute_exists(pk) AND last_active_at <= :cutoff")
            .expression_attribute_values(":now", s(now.to_rfc3339()))
            .expression_attribute_values(":cutoff", s(cutoff.to_rfc3339()))
            .send()
            .await;
        applied(STORE, "UpdateItem", touched)
    }

    async fn history(
        &self,
        subject: &str,
        conversation: &str,
        limit: usize,
    ) -> Result<Vec<Turn>, StoreError> {
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :msg)")
            .expression_attribute_values(":pk", s(conversation_pk(subject, conversation)))
            .expression_attribute_values(":msg", s("MSG#"))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| failed(STORE, "Query", &e))?;
        let mut turns = page
            .items
            .unwrap_or_default()
            .into_iter()
            .map(from_item::<Turn>)
            .collect::<Result<Vec<_>, _>>()?;
        turns.reverse();
        Ok(turns)
    }

    /// Appends one exchange, and lists the conversation under its user
    /// (title and creation time from its first exchange).
    async fn append(
        &self,
        subject: &str,
        conversation: &str,
        exchange: [&Turn; 2],
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let stamp = at.format("%Y-%m-%dT%H:%M:%S%.6fZ");
        let mut items = Vec::new();
        for (i, turn) in exchange.iter().enumerate() {
            items.push(to_item(&Item {
                pk: conversation_pk(subject, conversation),
                sk: format!("MSG#{stamp}#{i}"),
                expires_at: None,
                value: turn,
            })?);
        }
        let title = title_of(&exchange[0].text);
        self.client
            .update_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(subject)))
            .key("sk", s(format!("CONV#{conversation}")))
            .update_expression(
                "SET title = if_not_exists(title, :title), \
                 created_at = if_not_exists(created_at, :at), updated_at = :at",
            )
            .expression_attribute_values(":title", s(title))
            .expression_attribute_values(":at", s(at.to_rfc3339()))
            .send()
            .await
            .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        let writes = items
            .into_iter()
            .map(|item| {
                PutRequest::builder()
                    .set_item(Some(item))
                    .build()
                    .map(|p| WriteRequest::builder().put_request(p).build())
                    .map_err(|e| StoreError::corrupt(STORE, e))
            })
            .collect::<Result<Vec<_>, _>>()?;
        batch_write(STORE, &self.client, &self.table, writes).await
    }

    async fn conversations(&self, subject: &str) -> Result<Vec<ConversationSummary>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :conv)")
            .expression_attribute_values(":pk", s(user_pk(subject)))
            .expression_attribute_values(":conv", s("CONV#"));
        query_all(STORE, request)
            .await?
            .into_iter()
            .map(summary)
            .collect()
    }

    async fn conversation(
        &self,
        subject: &str,
        conversation: &str,
    ) -> Result<Option<ConversationSummary>, StoreError> {
        self.client
            .get_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(subject)))
            .key("sk", s(format!("CONV#{conversation}")))
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item
            .map(summary)
            .transpose()
    }

    async fn delete_conversation(
        &self,
        subject: &str,
        conversation: &str,
    ) -> Result<bool, StoreError> {
        let turns = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(conversation_pk(subject, conversation)))
            .projection_expression("pk, sk");
        let keys = query_all(STORE, turns).await?;
        let had_turns = !keys.is_empty();
        batch_delete(STORE, &self.client, &self.table, keys).await?;
        // The summary goes last: a delete that fails halfway is retried
        // while the conversation is still listed.
        let old = self
            .client
            .delete_item()
            .table_name(&self.table)
            .key("pk", s(user_pk(subject)))
            .key("sk", s(format!("CONV#{conversation}")))
            .return_values(aws_sdk_dynamodb::types::ReturnValue::AllOld)
            .send()
            .await
            .map_err(|e| failed(STORE, "DeleteItem", &e))?;
        Ok(had_turns || old.attributes.is_some())
    }

    async fn record_usage(&self, subject: &str, record: &UsageRecord) -> Result<(), StoreError> {
        let item = to_item(&Item {
            pk: user_pk(subject),
            sk: format!(
                "REQ#{}#{}",
                record.created_at.format("%Y-%m-%dT%H:%M:%S%.3fZ"),
                record.request_id
            ),
            expires_at: Some((record.created_at + RECORD_RETENTION).timestamp()),
            value: record,
        })?;
        put_item(STORE, &self.client, &self.table, item).await
    }

    /// Usage records of a user, newest first.
    async fn usage_records(
        &self,
        subject: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<UsagePage, StoreError> {
        // Only a key of this user's records is a cursor; anything else would
        // reach DynamoDB as an invalid start key.
        let start = cursor.map(decode_cursor).transpose()?;
        let own = |key: &HashMap<String, AttributeValue>| {
            key.get("pk").and_then(|v| v.as_s().ok()) == Some(&user_pk(subject))
                && key
                    .get("sk")
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|sk| sk.starts_with("REQ#"))
        };
        if start.as_ref().is_some_and(|key| !own(key)) {
            return Err(StoreError::BadCursor);
        }
        let page = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :req)")
            .expression_attribute_values(":pk", s(user_pk(subject)))
            .expression_attribute_values(":req", s("REQ#"))
            .scan_index_forward(false)
            .limit(i32::try_from(limit).unwrap_or(i32::MAX))
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| failed(STORE, "Query", &e))?;
        Ok(UsagePage {
            records: page
                .items
                .unwrap_or_default()
                .into_iter()
                .map(from_item)
                .collect::<Result<_, _>>()?,
            next: page.last_evaluated_key.as_ref().map(encode_cursor),
        })
    }

    /// A request refused by a rate limit: which window, at which limit.
    async fn record_refusal(
        &self,
        subject: &str,
        request_id: &str,
        window: &str,
        limit: u32,
        at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.client
            .put_item()
            .table_name(&self.table)
            .item("pk", s(user_pk(subject)))
            .item("sk", s(format!("LIMITED#{}#{request_id}", at.to_rfc3339())))
            .item("window", s(window))
            .item("limit", n(limit))
            .item("expires_at", n((at + REFUSAL_RETENTION).timestamp()))
            .send()
            .await
            .map_err(|e| failed(STORE, "PutItem", &e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversation_keys_cannot_collide_across_users() {
        // Conversation ids cannot contain '#', so the split is unambiguous.
        assert_ne!(conversation_pk("a#b", "c"), conversation_pk("a", "b-c"));
        assert_eq!(conversation_pk("u", "c1"), "CONV#u#c1");
    }
}
