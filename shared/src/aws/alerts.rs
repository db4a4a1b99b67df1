//! Quota alert state in DynamoDB (the usage table; docs/data-model.md).
//!
//! Two items per alert: the permanent state item under the tenant, whose
//! conditional creation makes each (tenant, period, threshold) fire once, and
//! a pending item under `ALERTS#PENDING` that lives until every webhook has
//! it, so later batches can find what is left to deliver in one query.

use std::collections::HashMap;

use aws_sdk_dynamodb::operation::transact_write_items::TransactWriteItemsError;
use aws_sdk_dynamodb::types::{AttributeValue, Delete, Put, TransactWriteItem, Update};
use chrono::{DateTime, Utc};

use super::{failed, failed_condition, n, query_all, s};
use crate::metering::alerts::{Alert, AlertStore};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "usage table";

const PENDING: &str = "ALERTS#PENDING";

#[derive(Debug, Clone)]
pub struct DynamoAlerts {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn state_key(alert: &Alert) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(format!("TENANT#{}", alert.tenant))),
        (
            "sk".to_owned(),
            s(format!("ALERT#{}#{:03}", alert.period, alert.threshold)),
        ),
    ])
}

fn pending_key(alert: &Alert) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), s(PENDING)),
        ("sk".to_owned(), s(&alert.id)),
    ])
}

fn encode(alert: &Alert) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(alert)
        .map(s)
        .map_err(|e| StoreError::corrupt(STORE, e))
}

fn build(e: aws_sdk_dynamodb::error::BuildError) -> StoreError {
    StoreError::corrupt(STORE, e)
}

impl DynamoAlerts {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl AlertStore for DynamoAlerts {
    async fn create(&self, alert: &Alert, lease_until: DateTime<Utc>) -> Result<bool, StoreError> {
        let state = Put::builder()
            .table_name(&self.table)
            .set_item(Some(state_key(alert)))
            .item("alert_id", s(&alert.id))
            .item("status", s("pending"))
            .item("created_at", s(Utc::now().to_rfc3339()))
            .condition_expression("attribute_not_exists(pk)")
            .build()
            .map_err(build)?;
        let pending = Put::builder()
            .table_name(&self.table)
            .set_item(Some(pending_key(alert)))
            .item("alert", encode(alert)?)
            .item("lease_until", n(lease_until.timestamp()))
            .build()
            .map_err(build)?;
        let result = self
            .client
            .transact_write_items()
            .transact_items(TransactWriteItem::builder().put(state).build())
            .transact_items(TransactWriteItem::builder().put(pending).build())
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e) => match e.as_service_error() {
                Some(TransactWriteItemsError::TransactionCanceledException(c))
                    if c.cancellation_reasons()
                        .first()
                        .is_some_and(failed_condition) =>
                {
                    Ok(false)
                }
                _ => Err(failed(STORE, "TransactWriteItems", &e)),
            },
        }
    }

    async fn due(&self, now: DateTime<Utc>) -> Result<Vec<Alert>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .filter_expression("lease_until < :now")
            .expression_attribute_values(":pk", s(PENDING))
            .expression_attribute_values(":now", n(now.timestamp()));
        query_all(STORE, request)
            .await?
            .iter()
            .map(|item| {
                let json = item
                    .get("alert")
                    .and_then(|v| v.as_s().ok())
                    .map_or("", String::as_str);
                serde_json::from_str(json).map_err(|e| StoreError::corrupt(STORE, e))
            })
            .collect()
    }

    async fn claim(
        &self,
        alert: &Alert,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(pending_key(alert)))
            .update_expression("SET lease_until = :until ADD attempts :one")
            .condition_expression("attribute_exists(pk) AND lease_until < :now")
            .expression_attribute_values(":until", n(lease_until.timestamp()))
            .expression_attribute_values(":now", n(now.timestamp()))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        match result {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(failed(STORE, "UpdateItem", &e)),
        }
    }

    async fn settle(&self, alert: &Alert, delivered: &[String]) -> Result<(), StoreError> {
        let remaining: Vec<String> = alert
            .pending
            .iter()
            .filter(|u| !delivered.contains(u))
            .cloned()
            .collect();
        if remaining.is_empty() {
            let done = Update::builder()
                .table_name(&self.table)
                .set_key(Some(state_key(alert)))
                .update_expression("SET #status = :sent")
                .expression_attribute_names("#status", "status")
                .expression_attribute_values(":sent", s("sent"))
                .build()
                .map_err(build)?;
            let remove = Delete::builder()
                .table_name(&self.table)
                .set_key(Some(pending_key(alert)))
                .build()
                .map_err(build)?;
            self.client
                .transact_write_items()
                .transact_items(TransactWriteItem::builder().update(done).build())
                .transact_items(TransactWriteItem::builder().delete(remove).build())
                .send()
                .await
                .map_err(|e| failed(STORE, "TransactWriteItems", &e))?;
        } else {
            let left = Alert {
                pending: remaining,
                ..alert.clone()
            };
            self.client
                .update_item()
                .table_name(&self.table)
                .set_key(Some(pending_key(alert)))
                .update_expression("SET alert = :alert, lease_until = :zero")
                .expression_attribute_values(":alert", encode(&left)?)
                .expression_attribute_values(":zero", n(0))
                .send()
                .await
                .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        }
        Ok(())
    }
}
