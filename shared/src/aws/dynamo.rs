//! DynamoDB as the stores reach it: the SDK for most calls, and the signed
//! client ([`SignedJson`]) for the calls the rollup makes on every delivery
//! (tenants, claims, counters), where the SDK's orchestration costs more CPU
//! than the rest of the delivery (docs/perf.md). Items cross in DynamoDB
//! JSON through `serde_dynamo`, as the SDK's `AttributeValue`s the stores
//! already use.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_dynamodb::types::AttributeValue;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use super::SdkConfig;
use super::signed::{Bounds, CallError, SignedJson, retryable};
use crate::store::StoreError;

/// An item as the stores hold it.
pub type Item = HashMap<String, AttributeValue>;

/// Both ways to one DynamoDB, built once per function from its SDK config.
#[derive(Debug, Clone)]
pub struct Dynamo {
    pub sdk: aws_sdk_dynamodb::Client,
    signed: Arc<SignedJson>,
}

/// A call's failure: the service refused the request with `code` (a 4xx
/// not worth retrying; its error document given, e.g. a refused
/// condition's item), or the store failed.
pub(crate) enum Failure {
    Refused {
        code: String,
        message: String,
        body: Bytes,
    },
    Store(StoreError),
}

impl Dynamo {
    /// The SDK config's region, credentials and endpoint (the emulator
    /// under `make dev`; else `dynamodb.<region>.amazonaws.com`).
    pub fn new(aws: &SdkConfig) -> Self {
        let region = aws.region().map_or("us-east-1", |r| r.as_ref());
        let endpoint = format!("https://dynamodb.{region}.amazonaws.com");
        Self {
            sdk: aws_sdk_dynamodb::Client::new(aws),
            signed: Arc::new(SignedJson::new(
                aws,
                &endpoint,
                "dynamodb",
                "DynamoDB_20120810",
                Bounds::default(),
            )),
        }
    }

    /// `operation` with `input`, signed: its output, or why not.
    pub(crate) async fn call<O: DeserializeOwned>(
        &self,
        store: &'static str,
        operation: &'static str,
        input: &serde_json::Value,
    ) -> Result<O, Failure> {
        let unavailable = |message: String| {
            Failure::Store(StoreError::Unavailable {
                store,
                operation,
                message,
            })
        };
        let body = serde_json::to_vec(input).map_err(|e| unavailable(e.to_string()))?;
        match self.signed.call(operation, body).await {
            Ok(output) => serde_json::from_slice(&output)
                .map_err(|e| Failure::Store(StoreError::corrupt(store, e))),
            Err(CallError::Service {
                status,
                code,
                message,
                body,
            }) if !retryable(status, &code) => Err(Failure::Refused {
                code,
                message,
                body,
            }),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// [`call`](Self::call) where any refusal is the store's failure.
    pub(crate) async fn expect<O: DeserializeOwned>(
        &self,
        store: &'static str,
        operation: &'static str,
        input: &serde_json::Value,
    ) -> Result<O, StoreError> {
        self.call(store, operation, input)
            .await
            .map_err(|failure| failure.into_store(store, operation))
    }
}

impl Failure {
    /// The failure as the store's: a refusal nobody expected is unavailable
    /// (503), naming its code and message (not its document, which may
    /// hold an item).
    pub(crate) fn into_store(self, store: &'static str, operation: &'static str) -> StoreError {
        match self {
            Failure::Store(e) => e,
            Failure::Refused { code, message, .. } => StoreError::Unavailable {
                store,
                operation,
                message: format!("{code}: {message}"),
            },
        }
    }
}

/// An item in DynamoDB JSON.
pub(crate) fn json(item: &Item) -> serde_json::Value {
    let item: serde_dynamo::Item = item.clone().into();
    serde_json::to_value(item).unwrap_or_default()
}

/// A string value in DynamoDB JSON, written directly (the hot path's
/// values; an `AttributeValue` would be built and converted).
pub(crate) fn s_json(value: impl Into<String>) -> serde_json::Value {
    serde_json::json!({ "S": value.into() })
}

/// A number value in DynamoDB JSON, written directly.
pub(crate) fn n_json(value: impl ToString) -> serde_json::Value {
    serde_json::json!({ "N": value.to_string() })
}

/// An attribute read from DynamoDB JSON as the one type expected (`S` or
/// `N`: its text); another type reads as absent.
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct Text {
    #[serde(rename = "S", alias = "N", default)]
    pub text: String,
}

/// An item read from DynamoDB JSON.
#[derive(Debug, serde::Deserialize)]
#[serde(transparent)]
pub(crate) struct JsonItem(serde_dynamo::Item);

impl From<JsonItem> for Item {
    fn from(item: JsonItem) -> Self {
        item.0.into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_cross_in_dynamodb_json_both_ways() {
        let item: Item = HashMap::from([
            ("pk".to_owned(), AttributeValue::S("TENANT#t".to_owned())),
            ("tokens".to_owned(), AttributeValue::N("42".to_owned())),
        ]);
        let sent = json(&item);
        assert_eq!(
            sent,
            serde_json::json!({"pk": {"S": "TENANT#t"}, "tokens": {"N": "42"}})
        );
        assert_eq!(n_json(42), serde_json::json!({"N": "42"}));
        assert_eq!(s_json("TENANT#t"), sent["pk"]);
        let tokens: Text = serde_json::from_value(sent["tokens"].clone()).unwrap();
        assert_eq!(tokens.text, "42");
        let back: JsonItem = serde_json::from_value(sent).unwrap();
        assert_eq!(Item::from(back), item);
    }
}
