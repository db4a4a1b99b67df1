//! Chat budgets in the usage table: `pk = TENANT#<tenant>`,
//! `sk = BUDGET#<period>`, `held` moved by conditional `UpdateItem`s.

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure;
use chrono::TimeDelta;

use super::{failed, is_condition_failure, n, s};
use crate::chat::budget::{Budgets, Hold};
use crate::metering::period::BillingPeriod;
use crate::metering::types::TenantId;
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "usage table";

/// A period's budget is kept this long after the period ends.
const RETENTION: TimeDelta = TimeDelta::days(40);

#[derive(Debug, Clone)]
pub struct DynamoBudgets {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

impl DynamoBudgets {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }
}

fn key(
    tenant: &TenantId,
    period: &BillingPeriod,
) -> [(&'static str, aws_sdk_dynamodb::types::AttributeValue); 2] {
    [
        ("pk", s(format!("TENANT#{tenant}"))),
        ("sk", s(format!("BUDGET#{}", period.key()))),
    ]
}

#[async_trait::async_trait]
impl Budgets for DynamoBudgets {
    async fn hold(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        tokens: u64,
        quota: u64,
    ) -> Result<Hold, StoreError> {
        let Some(room) = quota.checked_sub(tokens) else {
            return Ok(Hold::Refused { held: 0 });
        };
        let [pk, sk] = key(tenant, period);
        let result = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(pk.0, pk.1)
            .key(sk.0, sk.1)
            .update_expression("ADD held :tokens")
            .condition_expression("attribute_exists(held) AND held <= :room")
            .expression_attribute_values(":tokens", n(tokens))
            .expression_attribute_values(":room", n(room))
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        match result {
            Ok(_) => Ok(Hold::Held),
            Err(e) if is_condition_failure(&e) => {
                let old = match e.into_service_error() {
                    UpdateItemError::ConditionalCheckFailedException(e) => e.item,
                    _ => None,
                };
                let held = old
                    .as_ref()
                    .and_then(|item| item.get("held"))
                    .and_then(|v| v.as_n().ok())
                    .and_then(|v| v.parse().ok());
                Ok(held.map_or(Hold::Unopened, |held| Hold::Refused { held }))
            }
            Err(e) => Err(failed(STORE, "UpdateItem", &e)),
        }
    }

    async fn open(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        used: u64,
    ) -> Result<(), StoreError> {
        let [pk, sk] = key(tenant, period);
        let result = self
            .client
            .put_item()
            .table_name(&self.table)
            .item(pk.0, pk.1)
            .item(sk.0, sk.1)
            .item("held", n(used))
            .item("expires_at", n((period.end + RETENTION).timestamp()))
            .condition_expression("attribute_not_exists(pk)")
            .send()
            .await;
        match result {
            Err(e) if !is_condition_failure(&e) => Err(failed(STORE, "PutItem", &e)),
            _ => Ok(()),
        }
    }

    async fn settle(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        delta: i64,
    ) -> Result<(), StoreError> {
        let [pk, sk] = key(tenant, period);
        self.client
            .update_item()
            .table_name(&self.table)
            .key(pk.0, pk.1)
            .key(sk.0, sk.1)
            .update_expression("ADD held :delta")
            .expression_attribute_values(":delta", n(delta))
            .send()
            .await
            .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        Ok(())
    }
}
