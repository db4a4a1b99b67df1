//! Prices in DynamoDB (layout: docs/data-model.md, "prices"): the latest
//! quote and the history per (metal, currency) as a [`PriceStore`], and
//! provider breakers as a [`BreakerStore`], in one table.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, TimeDelta, Utc};

use super::{failed, from_item, n, put_item, query_all, s, to_item};
use crate::prices::failover::{Breaker, BreakerStore};
use crate::prices::providers::ProviderId;
use crate::prices::store::PriceStore;
use crate::prices::types::{Currency, Metal, Quote};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "prices table";

#[derive(Debug, Clone)]
pub struct DynamoPrices {
    client: aws_sdk_dynamodb::Client,
    table: String,
}

fn series_pk(metal: Metal, currency: &Currency) -> String {
    format!("PRICE#{metal}#{currency}")
}

/// History points sort by time: fixed-width UTC with milliseconds.
fn history_sk(ts: DateTime<Utc>) -> String {
    format!("TS#{}", ts.format("%Y-%m-%dT%H:%M:%S%.3fZ"))
}

fn key(pk: String, sk: impl Into<String>) -> HashMap<String, AttributeValue> {
    HashMap::from([("pk".to_owned(), s(pk)), ("sk".to_owned(), s(sk))])
}

impl DynamoPrices {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl PriceStore for DynamoPrices {
    async fn record(&self, quote: &Quote, retention: TimeDelta) -> Result<(), StoreError> {
        let pk = series_pk(quote.metal, &quote.currency);
        let mut latest = to_item(STORE, quote)?;
        latest.extend(key(pk.clone(), "LATEST"));
        let mut point = to_item(STORE, quote)?;
        point.extend(key(pk, history_sk(quote.ts)));
        point.insert("expires_at".into(), n((quote.ts + retention).timestamp()));
        for item in [point, latest] {
            put_item(STORE, &self.client, &self.table, item).await?;
        }
        Ok(())
    }

    async fn latest(&self, metal: Metal, currency: &Currency) -> Result<Option<Quote>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(series_pk(metal, currency), "LATEST")))
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        item.map(|i| from_item(STORE, i)).transpose()
    }

    async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<Quote>, StoreError> {
        let request = self
            .client
            .query()
            .table_name(&self.table)
            .key_condition_expression("pk = :pk AND sk BETWEEN :from AND :to")
            .expression_attribute_values(":pk", s(series_pk(metal, currency)))
            .expression_attribute_values(":from", s(history_sk(from)))
            .expression_attribute_values(":to", s(history_sk(to)));
        query_all(STORE, request)
            .await?
            .into_iter()
            .map(|item| from_item(STORE, item))
            .collect()
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
            .client
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
            .client
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
        self.client
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
        self.client
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
