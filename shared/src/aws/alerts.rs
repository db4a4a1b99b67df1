//! Quota alert state in DynamoDB (the usage table; docs/data-model.md).
//!
//! One item per alert under its tenant (`ALERT#<period>#<threshold>`): its
//! conditional creation makes each (tenant, period, threshold) fire once; it
//! holds the alert with the webhooks still pending, its status
//! (`recorded` → `queued` → `sent`) and the deliverer's lease.

use std::collections::{BTreeMap, HashMap};

use aws_sdk_dynamodb::types::AttributeValue;
use chrono::{DateTime, Utc};

use super::{applied, failed, n, query_all, s};
use crate::metering::alerts::{Alert, AlertKey, AlertStore};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "usage table";

#[derive(Debug, Clone)]
pub struct DynamoAlerts {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn pk(tenant: &str) -> AttributeValue {
    s(format!("TENANT#{tenant}"))
}

fn sk_prefix(period: &str) -> String {
    format!("ALERT#{period}#")
}

fn key(alert: &AlertKey) -> HashMap<String, AttributeValue> {
    HashMap::from([
        ("pk".to_owned(), pk(&alert.tenant)),
        (
            "sk".to_owned(),
            s(format!(
                "{}{:03}",
                sk_prefix(&alert.period),
                alert.threshold
            )),
        ),
    ])
}

fn encode(alert: &Alert) -> Result<AttributeValue, StoreError> {
    serde_json::to_string(alert)
        .map(s)
        .map_err(|e| StoreError::corrupt(STORE, e))
}

fn text<'a>(item: &'a HashMap<String, AttributeValue>, name: &str) -> &'a str {
    item.get(name)
        .and_then(|v| v.as_s().ok())
        .map_or("", String::as_str)
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
    async fn recorded(&self, tenant: &str, period: &str) -> Result<BTreeMap<u8, bool>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND begins_with(sk, :prefix)")
            .projection_expression("sk, #status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":pk", pk(tenant))
            .expression_attribute_values(":prefix", s(sk_prefix(period)))
            .consistent_read(true);
        query_all(STORE, request)
            .await?
            .iter()
            .map(|item| {
                let threshold = text(item, "sk")
                    .rsplit('#')
                    .next()
                    .and_then(|t| t.parse().ok())
                    .ok_or_else(|| {
                        StoreError::corrupt(STORE, "an alert key without a threshold")
                    })?;
                Ok((threshold, text(item, "status") != "recorded"))
            })
            .collect()
    }

    async fn create(&self, alert: &Alert) -> Result<bool, StoreError> {
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .set_item(Some(key(&alert.key())))
            .item("alert", encode(alert)?)
            .item("alert_id", s(&alert.id))
            .item("status", s("recorded"))
            .item("lease_until", n(0))
            .item("created_at", s(Utc::now().to_rfc3339()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        applied(STORE, "PutItem", result)
    }

    async fn queued(&self, alert: &AlertKey) -> Result<(), StoreError> {
        // Only from `recorded`: a fast deliverer may have marked it sent.
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(alert)))
            .update_expression("SET #status = :queued")
            .condition_expression("#status = :recorded")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":recorded", s("recorded"))
            .send()
            .await;
        applied(STORE, "UpdateItem", result).map(drop)
    }

    async fn get(&self, alert: &AlertKey) -> Result<Option<Alert>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(alert)))
            .projection_expression("alert")
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        item.map(|item| {
            serde_json::from_str(text(&item, "alert")).map_err(|e| StoreError::corrupt(STORE, e))
        })
        .transpose()
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
            .set_key(Some(key(&alert.key())))
            .update_expression("SET lease_until = :until ADD attempts :one")
            .condition_expression("attribute_exists(pk) AND lease_until < :now")
            .expression_attribute_values(":until", n(lease_until.timestamp()))
            .expression_attribute_values(":now", n(now.timestamp()))
            .expression_attribute_values(":one", n(1))
            .send()
            .await;
        applied(STORE, "UpdateItem", result)
    }

    async fn settle(&self, alert: &Alert, delivered: &[String]) -> Result<(), StoreError> {
        let left = Alert {
            pending: alert
                .pending
                .iter()
                .filter(|u| !delivered.contains(u))
                .cloned()
                .collect(),
            ..alert.clone()
        };
        // Being delivered, it is on the queue whether or not the raiser
        // has marked it so yet.
        let status = if left.pending.is_empty() {
            "sent"
        } else {
            "queued"
        };
        self.client
            .update_item()
            .table_name(&self.table)
            .set_key(Some(key(&alert.key())))
            .update_expression("SET alert = :alert, lease_until = :zero, #status = :status")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":alert", encode(&left)?)
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":status", s(status))
            .send()
            .await
            .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        Ok(())
    }
}
