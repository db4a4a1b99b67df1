//! Prices in DynamoDB (layout: docs/data-model.md, "prices"): the latest
//! quote and the history per (metal, currency), and provider breakers.

use std::collections::HashMap;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use chrono::{DateTime, TimeDelta, Utc};

use super::{failed, n, put_item, query_all, s};
use crate::prices::failover::{Breaker, BreakerStore};
use crate::prices::providers::ProviderId;
use crate::prices::types::{Currency, Metal, Quote};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "price store";

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

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::corrupt(STORE, e)
}

fn quote_item(quote: &Quote) -> Result<HashMap<String, AttributeValue>, StoreError> {
    serde_dynamo::to_item(quote).map_err(corrupt)
}

impl DynamoPrices {
    pub fn new(client: aws_sdk_dynamodb::Client, table: &str) -> Self {
        Self {
            client,
            table: table.to_owned(),
        }
    }

    /// Writes `quote` as the latest and as a history point keyed by its own
    /// timestamp, so a repeated fetch of the same observation rewrites the
    /// same item (idempotent). History expires after `retention`.
    pub async fn record(&self, quote: &Quote, retention: TimeDelta) -> Result<(), StoreError> {
        let pk = series_pk(quote.metal, &quote.currency);
        let mut latest = quote_item(quote)?;
        latest.extend(key(pk.clone(), "LATEST"));
        let mut point = quote_item(quote)?;
        point.extend(key(pk, history_sk(quote.ts)));
        point.insert("expires_at".into(), n((quote.ts + retention).timestamp()));
        for item in [point, latest] {
            put_item(STORE, &self.client, &self.table, item).await?;
        }
        Ok(())
    }

    pub async fn latest(
        &self,
        metal: Metal,
        currency: &Currency,
    ) -> Result<Option<Quote>, StoreError> {
        let item = self
            .client
            .get_item()
            .table_name(&self.table)
            .set_key(Some(key(series_pk(metal, currency), "LATEST")))
            .send()
            .await
            .map_err(|e| failed(STORE, "GetItem", &e))?
            .item;
        item.map(|i| serde_dynamo::from_item(i).map_err(corrupt))
            .transpose()
    }

    /// History points in `[from, to]`, oldest first.
    pub async fn series(
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
            .map(|item| serde_dynamo::from_item(item).map_err(corrupt))
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

impl BreakerStore for DynamoPrices {
    type Error = StoreError;

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
