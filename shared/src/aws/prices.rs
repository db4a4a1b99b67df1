//! Prices in DynamoDB (layout: docs/data-model.md, "prices"): the latest
//! quote, the history points and the daily candles per (metal, currency) as
//! a [`PriceStore`], and provider breakers as a [`BreakerStore`], in one
//! table.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, Delete, ReturnValue, TransactWriteItem};
use chrono::{DateTime, NaiveDate, Utc};

use super::{
    Dynamo, applied, batch_delete, batch_get, failed, from_item, is_condition_failure, n, put_item,
    put_new, query_all, refused_item, s, to_item,
};
use crate::metering::types::TenantId;
use crate::prices::alerts::{PriceAlert, PriceAlerts};
use crate::prices::candles::Candle;
use crate::prices::failover::{Breaker, BreakerStore};
use crate::prices::providers::ProviderId;
use crate::prices::store::{Keeping, PriceStore};
use crate::prices::types::{Currency, Metal, Quote};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "prices table";

#[derive(Debug, Clone)]
pub struct DynamoPrices {
    dynamo: Dynamo,
    table: String,
}

fn series_pk(metal: Metal, currency: &Currency) -> String {
    format!("PRICE#{metal}#{currency}")
}

/// Fixed-width UTC with milliseconds: sorts (and compares) as time.
fn sortable(ts: DateTime<Utc>) -> String {
    ts.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()
}

/// History points sort by time.
fn history_sk(ts: DateTime<Utc>) -> String {
    format!("TS#{}", sortable(ts))
}

fn candles_pk(metal: Metal, currency: &Currency) -> String {
    format!("CANDLE#{metal}#{currency}")
}

fn candle_sk(day: NaiveDate) -> String {
    format!("D#{day}")
}

fn key(pk: String, sk: impl Into<String>) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

impl DynamoPrices {
    pub fn new(dynamo: Dynamo, table: &str) -> Self {
        Self {
            dynamo,
            table: table.to_owned(),
        }
    }

    /// Every item of partition `pk`.
    async fn partition(
        &self,
        pk: String,
    ) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
        let request = self
            .dynamo
            .sdk
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk));
        query_all(STORE, request).await
    }

    /// Every item of partition `pk` with a sort key in `[from, to]`.
    async fn between<T: serde::de::DeserializeOwned>(
        &self,
        pk: String,
        from: String,
        to: String,
    ) -> Result<Vec<T>, StoreError> {
        let request = self
            .dynamo
            .sdk
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(pk))
            .expression_attribute_values(":from", s(from))
            .expression_attribute_values(":to", s(to));
        query_all(STORE, request)
            .await?
            .into_iter()
            .map(|item| from_item(STORE, item))
            .collect()
    }

    /// Folds `quote` into its day's candle ([`Candle::fold`]) with
    /// conditional updates, each order-free: the close (and, on a new day,
    /// everything) moves when the quote is the latest; otherwise the open
    /// when it is the earliest; then the high or low when it passes them.
    /// Usually one write, two on a new extreme.
    async fn fold(&self, quote: &Quote) -> Result<(), StoreError> {
        let candle = key(
            candles_pk(quote.metal, &quote.currency),
            candle_sk(quote.ts.date_naive()),
        );
        let (price, ts) = (n(quote.price), s(sortable(quote.ts)));
        let update = |expression: &str, condition: &str| {
            self.dynamo
                .sdk
                .update_item()
                .table_name(&self.table)
                .set_key(Some(candle.clone()))
                .update_expression(expression)
                .condition_expression(condition)
                .expression_attribute_values(":p", price.clone())
        };
        let latest = update(
            "SET #close = :p, close_ts = :ts, #day = :day, #open = if_not_exists(#open, :p), \
             open_ts = if_not_exists(open_ts, :ts), high = if_not_exists(high, :p), \
             low = if_not_exists(low, :p)",
            "attribute_not_exists(close_ts) OR close_ts < :ts",
        )
        .expression_attribute_names("#open", "open")
        .expression_attribute_names("#close", "close")
        .expression_attribute_names("#day", "day")
        .expression_attribute_values(":day", s(quote.ts.date_naive().to_string()))
        .expression_attribute_values(":ts", ts.clone())
        .return_values(ReturnValue::AllNew)
        .return_values_on_condition_check_failure(
            aws_sdk_dynamodb::types::ReturnValuesOnConditionCheckFailure::AllOld,
        )
        .send()
        .await;
        let item = match latest {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) if is_condition_failure(&e) => {
                let old = refused_item(e);
                let earlier = old
                    .as_ref()
                    .and_then(|i| i.get("open_ts"))
                    .and_then(|v| v.as_s().ok())
                    .is_some_and(|open| sortable(quote.ts) < *open);
                if earlier {
                    let open = update("SET #open = :p, open_ts = :ts", "open_ts > :ts")
                        .expression_attribute_names("#open", "open")
                        .expression_attribute_values(":ts", ts.clone());
                    applied(STORE, "UpdateItem", open.send().await)?;
                }
                old.unwrap_or_default()
            }
            Err(e) => return Err(failed(STORE, "UpdateItem", &e)),
        };
        let number = |name: &str| {
            item.get(name)
                .and_then(|v| v.as_n().ok()?.parse::<f64>().ok())
        };
        if number("high").is_some_and(|high| quote.price > high) {
            let high = update("SET high = :p", "high < :p").send().await;
            applied(STORE, "UpdateItem", high)?;
        }
        if number("low").is_some_and(|low| quote.price < low) {
            let low = update("SET low = :p", "low > :p").send().await;
            applied(STORE, "UpdateItem", low)?;
        }
        Ok(())
    }
}

#[async_trait::async_trait]
impl PriceStore for DynamoPrices {
    async fn record(&self, quote: &Quote, keeping: &Keeping) -> Result<(), StoreError> {
        let pk = series_pk(quote.metal, &quote.currency);
        let mut latest = to_item(STORE, quote)?;
        latest.extend(key(pk.clone(), "LATEST"));
        let mut point = to_item(STORE, quote)?;
        point.extend(key(pk, history_sk(keeping.slot_of(quote.ts))));
        let expires = quote.ts + keeping.retention;
        point.insert("expires_at".into(), n(expires.timestamp()));
        for item in [point, latest] {
            put_item(STORE, &self.dynamo.sdk, &self.table, item).await?;
        }
        self.fold(quote).await
    }

    async fn latest(&self, metal: Metal, currency: &Currency) -> Result<Option<Quote>, StoreError> {
        let item = self
            .dynamo
            .sdk
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(series_pk(metal, currency), "LATEST")))
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        item.map(|i| from_item(STORE, i)).transpose()
    }

    async fn candles(
        &self,
        metal: Metal,
        currency: &Currency,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<Vec<Candle>, StoreError> {
        let pk = candles_pk(metal, currency);
        self.between(pk, candle_sk(from), candle_sk(to)).await
    }

    async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Quote>, StoreError> {
        let pk = series_pk(metal, currency);
        self.between(pk, history_sk(from), history_sk(to)).await
    }
}

fn breaker_key(provider: ProviderId) -> HashMap<String, AttributeValue> {
    key(format!("BREAKER#{}", provider.name()), "STATE")
}

fn breaker_of(item: Option<&HashMap<String, AttributeValue>>) -> Breaker {
    let Some(item) = item else {
        return Breaker::default();
    };
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|v| v.parse::<i64>().ok())
    };
    Breaker {
        consecutive_failures: number("failures").unwrap_or(0).max(0) as u32,
        open_until: number("open_until_ms")
            .filter(|t| *t > 0)
            .and_then(DateTime::from_timestamp_millis),
    }
}

#[async_trait::async_trait]
impl BreakerStore for DynamoPrices {
    async fn get(&self, provider: ProviderId) -> Result<Breaker, StoreError> {
        let out = self
            .dynamo
            .sdk
            .get_item()
            .table_name(&self.table)
            .set_key(Some(breaker_key(provider)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?;
        Ok(breaker_of(out.item.as_ref()))
    }

    async fn failed(
        &self,
        provider: ProviderId,
        threshold: u32,
        open_until: DateTime<Utc>,
    ) -> Result<Breaker, StoreError> {
        // Count atomically, then open if this failure reached the threshold.
        let out = self
            .dynamo
            .sdk
            .update_item()
            .table_name(&self.table)
            .set_key(Some(breaker_key(provider)))
            .update_expression("ADD failures :one")
            .expression_attribute_values(":one", n(1))
            .return_values(ReturnValue::AllNew)
            .send()
            .await
            .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        let breaker = breaker_of(out.attributes.as_ref());
        if breaker.consecutive_failures < threshold {
            return Ok(breaker);
        }
        self.dynamo
            .sdk
            .update_item()
            .table_name(&self.table)
            .set_key(Some(breaker_key(provider)))
            .update_expression("SET open_until_ms = :until")
            .expression_attribute_values(":until", n(open_until.timestamp_millis()))
            .send()
            .await
            .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        Ok(Breaker {
            open_until: Some(open_until),
            ..breaker
        })
    }

    async fn succeeded(&self, provider: ProviderId) -> Result<(), StoreError> {
        self.dynamo
            .sdk
            .update_item()
            .table_name(&self.table)
            .set_key(Some(breaker_key(provider)))
            .update_expression("SET failures = :zero, open_until_ms = :zero")
            .expression_attribute_values(":zero", n(0))
            .send()
            .await
            .map_err(|e| failed(STORE, "UpdateItem", &e))?;
        Ok(())
    }
}

/// Price alerts: each in its series' partition (`ALERTS#<metal>#<currency>`,
/// `sk = <id>`), which an evaluation queries, with a pointer in its
/// tenant's (`OWNER#<tenant>`, `sk = <id>`, the series), which a listing
/// queries. Created and deleted together in one transaction.
fn alerts_pk(metal: Metal, currency: &Currency) -> String {
    format!("ALERTS#{metal}#{currency}")
}

fn owner_pk(tenant: &TenantId) -> String {
    format!("OWNER#{tenant}")
}

fn alert_key(metal: Metal, currency: &Currency, id: &str) -> HashMap<String, AttributeValue> {
    key(alerts_pk(metal, currency), id)
}

fn owner_key(tenant: &TenantId, id: &str) -> HashMap<String, AttributeValue> {
    key(owner_pk(tenant), id)
}

/// An owner pointer: which series partition holds the alert.
#[derive(serde::Serialize, serde::Deserialize)]
struct Pointer {
    metal: Metal,
    currency: Currency,
}

impl DynamoPrices {
    /// `tenant`'s alerts as its owner pointers list them: (id, series).
    async fn owned(&self, tenant: &TenantId) -> Result<Vec<(String, Pointer)>, StoreError> {
        let mut owned = Vec::new();
        for item in self.partition(owner_pk(tenant)).await? {
            let id = item.get("sk").and_then(|v| v.as_s().ok()).cloned();
            let pointer: Pointer = from_item(STORE, item)?;
            if let Some(id) = id {
                owned.push((id, pointer));
            }
        }
        Ok(owned)
    }
}

#[async_trait::async_trait]
impl PriceAlerts for DynamoPrices {
    async fn create(&self, alert: &PriceAlert) -> Result<(), StoreError> {
        let mut item = to_item(STORE, alert)?;
        item.extend(alert_key(alert.metal, &alert.currency, &alert.id));
        let pointer = Pointer {
            metal: alert.metal,
            currency: alert.currency.clone(),
        };
        let mut owner = to_item(STORE, &pointer)?;
        owner.extend(owner_key(&alert.tenant, &alert.id));
        self.dynamo
            .sdk
            .transact_write_items()
            .transact_items(put_new(STORE, &self.table, item)?)
            .transact_items(put_new(STORE, &self.table, owner)?)
            .send()
            .await
            .map_err(|e| failed(STORE, "TransactWriteItems", &e))?;
        Ok(())
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<PriceAlert>, StoreError> {
        let keys = self
            .owned(tenant)
            .await?
            .iter()
            .map(|(id, pointer)| alert_key(pointer.metal, &pointer.currency, id))
            .collect();
        let items = batch_get(STORE, &self.dynamo, &self.table, keys, false, None).await?;
        let mut alerts = items
            .into_iter()
            .map(|item| from_item::<PriceAlert>(STORE, item))
            .collect::<Result<Vec<_>, _>>()?;
        alerts.sort_by_key(|a| a.created_at);
        Ok(alerts)
    }

    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        let owner = self
            .dynamo
            .sdk
            .get_item()
            .table_name(&self.table)
            .set_key(Some(owner_key(tenant, id)))
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        let Some(owner) = owner else {
            return Ok(false);
        };
        let pointer: Pointer = from_item(STORE, owner)?;
        let delete = |key| {
            Delete::builder()
                .table_name(&self.table)
                .set_key(Some(key))
                .build()
                .map(|delete| TransactWriteItem::builder().delete(delete).build())
                .map_err(|e| StoreError::corrupt(STORE, e))
        };
        self.dynamo
            .sdk
            .transact_write_items()
            .transact_items(delete(owner_key(tenant, id))?)
            .transact_items(delete(alert_key(pointer.metal, &pointer.currency, id))?)
            .send()
            .await
            .map_err(|e| failed(STORE, "TransactWriteItems", &e))?;
        Ok(true)
    }

    /// The alerts go first, their owner pointers after: a delete that fails
    /// halfway is retried while the tenant's pointers still list the rest.
    async fn delete_all(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        let owned = self.owned(tenant).await?;
        let alerts = owned
            .iter()
            .map(|(id, pointer)| alert_key(pointer.metal, &pointer.currency, id));
        let owners = owned.iter().map(|(id, _)| owner_key(tenant, id));
        let keys = alerts.chain(owners).collect();
        batch_delete(STORE, &self.dynamo.sdk, &self.table, keys).await?;
        Ok(owned.len())
    }

    async fn watching(
        &self,
        metal: Metal,
        currency: &Currency,
    ) -> Result<Vec<PriceAlert>, StoreError> {
        self.partition(alerts_pk(metal, currency))
            .await?
            .into_iter()
            .map(|item| from_item(STORE, item))
            .collect()
    }

    async fn set_armed(&self, alert: &PriceAlert, armed: bool) -> Result<bool, StoreError> {
        let fired = if armed { alert.fired } else { alert.fired + 1 };
        let result = self
            .dynamo
            .sdk
            .update_item()
            .table_name(&self.table)
            .set_key(Some(alert_key(alert.metal, &alert.currency, &alert.id)))
            .update_expression("SET armed = :armed, fired = :next")
            .condition_expression("armed = :was AND fired = :fired")
            .expression_attribute_values(":armed", AttributeValue::Bool(armed))
            .expression_attribute_values(":was", AttributeValue::Bool(!armed))
            .expression_attribute_values(":fired", n(alert.fired))
            .expression_attribute_values(":next", n(fired))
            .send()
            .await;
        applied(STORE, "UpdateItem", result)
    }
}
