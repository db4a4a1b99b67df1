//! Chat budgets in the usage table: `pk = TENANT#<tenant>`,
//! `sk = BUDGET#<period>`, `held` and the rate windows' `<name>_start` and
//! `<name>_count` moved by conditional `UpdateItem`s.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use chrono::TimeDelta;

use super::{failed, is_condition_failure, n, refused_item, s};
use crate::chat::budget::{Budgets, Hold, Stored, StoredWindow, WindowSlot};
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

fn key(tenant: &TenantId, period: &BillingPeriod) -> [(&'static str, AttributeValue); 2] {
    [
        ("pk", s(format!("TENANT#{tenant}"))),
        ("sk", s(format!("BUDGET#{}", period.key()))),
    ]
}

/// The number attribute `name` of `item` (0 when absent).
fn number<T: std::str::FromStr + Default>(item: &HashMap<String, AttributeValue>, name: &str) -> T {
    item.get(name)
        .and_then(|v| v.as_n().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_default()
}

#[async_trait::async_trait]
impl Budgets for DynamoBudgets {
    /// One `UpdateItem`: `ADD held` under `held <= quota - tokens`, and per
    /// window `<name>_start`/`<name>_count` either counted on (the start
    /// as expected, the count under its limit) or restarted (the stored
    /// start older, or none).
    async fn hold(
        &self,
        tenant: &TenantId,
        period: &BillingPeriod,
        tokens: u64,
        quota: u64,
        windows: &[WindowSlot],
    ) -> Result<Hold, StoreError> {
        let [pk, sk] = key(tenant, period);
        let room = i128::from(quota) - i128::from(tokens);
        let mut request = self
            .client
            .update_item()
            .table_name(&self.table)
            .key(pk.0, pk.1)
            .key(sk.0, sk.1)
            .expression_attribute_values(":tokens", n(tokens))
            .expression_attribute_values(":room", n(room))
            .return_values(ReturnValue::UpdatedNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
        let (mut adds, mut sets) = (vec!["held :tokens".to_owned()], Vec::new());
        let mut conditions = vec!["attribute_exists(held) AND held <= :room".to_owned()];
        for (i, slot) in windows.iter().enumerate() {
            request = request
                .expression_attribute_names(format!("#s{i}"), format!("{}_start", slot.name))
                .expression_attribute_names(format!("#c{i}"), format!("{}_count", slot.name))
                .expression_attribute_values(format!(":s{i}"), n(slot.start));
            if slot.fresh {
                sets.push(format!("#s{i} = :s{i}, #c{i} = :one"));
                conditions.push(format!("(attribute_not_exists(#s{i}) OR #s{i} < :s{i})"));
            } else {
                adds.push(format!("#c{i} :one"));
                conditions.push(format!("#s{i} = :s{i} AND #c{i} < :l{i}"));
                request = request.expression_attribute_values(format!(":l{i}"), n(slot.limit));
            }
        }
        if !windows.is_empty() {
            request = request.expression_attribute_values(":one", n(1));
        }
        let mut update = format!("ADD {}", adds.join(", "));
        if !sets.is_empty() {
            update = format!("SET {} {update}", sets.join(", "));
        }
        let result = request
            .update_expression(update)
            .condition_expression(conditions.join(" AND "))
            .send()
            .await;
        let counts = |item: &HashMap<String, AttributeValue>| {
            windows
                .iter()
                .map(|slot| number(item, &format!("{}_count", slot.name)))
                .collect()
        };
        match result {
            Ok(out) => Ok(Hold::Held(counts(&out.attributes.unwrap_or_default()))),
            Err(e) if is_condition_failure(&e) => {
                let old = refused_item(e);
                Ok(Hold::Failed(
                    old.filter(|item| item.contains_key("held"))
                        .map(|item| Stored {
                            held: number(&item, "held"),
                            windows: windows
                                .iter()
                                .map(|slot| StoredWindow {
                                    start: number(&item, &format!("{}_start", slot.name)),
                                    count: number(&item, &format!("{}_count", slot.name)),
                                })
                                .collect(),
                        }),
                ))
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
