//! The AWS adapters: SDK configuration, the cheap calls `/health` uses, and
//! the stores the domain modules work against.
//!
//! Nothing here knows whether it talks to AWS or the local emulator: the SDK
//! reads `AWS_ENDPOINT_URL` (and region and credentials) from the environment,
//! which is the only thing `make dev` changes.

pub mod alerts;
pub mod budget;
pub mod chat;
pub mod dynamo;
pub mod ledger;
pub mod prices;
pub mod queue;
pub mod ratelimit;
pub mod secrets;
pub mod signed;
pub mod tenants;

use std::collections::HashMap;

use aws_config::BehaviorVersion;
pub use aws_config::SdkConfig;
use aws_sdk_dynamodb::config::http::HttpResponse;
use aws_sdk_dynamodb::error::SdkError;
use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{AttributeValue, DeleteRequest, WriteRequest};
use base64::Engine;

use crate::store::StoreError;
pub use dynamo::Dynamo;

/// A store call that failed, as the domain sees it.
pub(crate) fn failed<E, R>(
    store: &'static str,
    operation: &'static str,
    error: &aws_sdk_dynamodb::error::SdkError<E, R>,
) -> StoreError
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    StoreError::Unavailable {
        store,
        operation,
        message: describe(error),
    }
}

/// Whether a conditional write was refused because its condition failed
/// (an expected outcome, not a failure).
pub(crate) fn is_condition_failure<E, R>(error: &aws_sdk_dynamodb::error::SdkError<E, R>) -> bool
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata,
{
    error
        .as_service_error()
        .is_some_and(|e| e.code() == Some("ConditionalCheckFailedException"))
}

/// The item a refused `UpdateItem` found, if it asked for it
/// (`ReturnValuesOnConditionCheckFailure::AllOld`).
pub(crate) fn refused_item(
    error: SdkError<UpdateItemError, HttpResponse>,
) -> Option<HashMap<String, AttributeValue>> {
    match error.into_service_error() {
        UpdateItemError::ConditionalCheckFailedException(e) => e.item,
        _ => None,
    }
}

/// A conditional write's outcome: `true` if it was applied, `false` if its
/// condition refused it (another writer got there first, or there was
/// nothing to do); any other error is the store's.
pub(crate) fn applied<T, E, R>(
    store: &'static str,
    operation: &'static str,
    result: Result<T, aws_sdk_dynamodb::error::SdkError<E, R>>,
) -> Result<bool, StoreError>
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    match result {
        Ok(_) => Ok(true),
        Err(e) if is_condition_failure(&e) => Ok(false),
        Err(e) => Err(failed(store, operation, &e)),
    }
}

/// A transaction's put of `item` into `table`, on condition it is new.
pub(crate) fn put_new(
    store: &'static str,
    table: &str,
    item: HashMap<String, AttributeValue>,
) -> Result<aws_sdk_dynamodb::types::TransactWriteItem, StoreError> {
    aws_sdk_dynamodb::types::Put::builder()
        .table_name(table)
        .set_item(Some(item))
        .condition_expression("attribute_not_exists(pk)")
        .build()
        .map(|put| {
            aws_sdk_dynamodb::types::TransactWriteItem::builder()
                .put(put)
                .build()
        })
        .map_err(|e| StoreError::corrupt(store, e))
}

/// A value as a DynamoDB item.
pub(crate) fn to_item<T: serde::Serialize>(
    store: &'static str,
    value: &T,
) -> Result<HashMap<String, AttributeValue>, StoreError> {
    serde_dynamo::to_item(value).map_err(|e| StoreError::corrupt(store, e))
}

/// A DynamoDB item as a value.
pub(crate) fn from_item<T: serde::de::DeserializeOwned>(
    store: &'static str,
    item: HashMap<String, AttributeValue>,
) -> Result<T, StoreError> {
    serde_dynamo::from_item(item).map_err(|e| StoreError::corrupt(store, e))
}

/// Every item a query matches, following pagination.
pub(crate) async fn query_all(
    store: &'static str,
    request: aws_sdk_dynamodb::operation::query::builders::QueryFluentBuilder,
) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    let mut items = Vec::new();
    let mut start = None;
    loop {
        let page = request
            .clone()
            .set_exclusive_start_key(start)
            .send()
            .await
            .map_err(|e| failed(store, "Query", &e))?;
        items.extend(page.items.unwrap_or_default());
        start = page.last_evaluated_key;
        if start.is_none() {
            return Ok(items);
        }
    }
}

/// `BatchGetItem` of `keys` in `table` (read consistently if asked, only
/// `projection` if given), 100 keys a call, through the signed client:
/// unprocessed keys are asked for again up to five times, then the read
/// fails as unavailable (503) rather than answer without them.
pub(crate) async fn batch_get(
    store: &'static str,
    dynamo: &Dynamo,
    table: &str,
    keys: Vec<HashMap<String, AttributeValue>>,
    consistent: bool,
    projection: Option<&str>,
) -> Result<Vec<HashMap<String, AttributeValue>>, StoreError> {
    const ASKS_AGAIN: usize = 5;
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Output {
        #[serde(default)]
        responses: HashMap<String, Vec<dynamo::JsonItem>>,
        #[serde(default)]
        unprocessed_keys: HashMap<String, Unprocessed>,
    }
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Unprocessed {
        #[serde(default)]
        keys: Vec<serde_json::Value>,
    }
    let mut found = Vec::with_capacity(keys.len());
    for chunk in keys.chunks(100) {
        let mut asked: Vec<serde_json::Value> = chunk.iter().map(dynamo::json).collect();
        for attempt in 0.. {
            let mut wanted = serde_json::json!({"Keys": asked, "ConsistentRead": consistent});
            if let Some(projection) = projection {
                wanted["ProjectionExpression"] = projection.into();
            }
            let input = serde_json::json!({"RequestItems": {table: wanted}});
            let mut out: Output = dynamo.expect(store, "BatchGetItem", &input).await?;
            found.extend(out.responses.into_values().flatten().map(HashMap::from));
            match out.unprocessed_keys.remove(table) {
                Some(rest) if !rest.keys.is_empty() && attempt < ASKS_AGAIN => asked = rest.keys,
                Some(rest) if !rest.keys.is_empty() => {
                    return Err(StoreError::Unavailable {
                        store,
                        operation: "BatchGetItem",
                        message: "keys left unprocessed".into(),
                    });
                }
                _ => break,
            }
        }
    }
    Ok(found)
}

/// `BatchWriteItem` of `requests` in `table`, 25 a call: unprocessed ones
/// are sent again, with backoff, up to three times, then the write fails as
/// unavailable (503) rather than leave them undone.
pub(crate) async fn batch_write(
    store: &'static str,
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    requests: Vec<WriteRequest>,
) -> Result<(), StoreError> {
    for batch in requests.chunks(25) {
        let mut pending = HashMap::from([(table.to_owned(), batch.to_vec())]);
        let mut attempt = 0;
        while pending.values().any(|r| !r.is_empty()) {
            if attempt == 4 {
                return Err(StoreError::Unavailable {
                    store,
                    operation: "BatchWriteItem",
                    message: "items left unprocessed after retries".to_owned(),
                });
            }
            if attempt > 0 {
                let backoff =
                    crate::backoff::jittered(std::time::Duration::from_millis(50), attempt);
                tokio::time::sleep(backoff).await;
            }
            let out = client
                .batch_write_item()
                .set_request_items(Some(pending))
                .send()
                .await
                .map_err(|e| failed(store, "BatchWriteItem", &e))?;
            pending = out.unprocessed_items.unwrap_or_default();
            attempt += 1;
        }
    }
    Ok(())
}

/// Deletes the items at `keys` in `table` ([`batch_write`]'s batches and
/// retries), in their order.
pub(crate) async fn batch_delete(
    store: &'static str,
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    keys: Vec<HashMap<String, AttributeValue>>,
) -> Result<(), StoreError> {
    let deletes = keys
        .into_iter()
        .map(|key| {
            DeleteRequest::builder()
                .set_key(Some(key))
                .build()
                .map(|d| WriteRequest::builder().delete_request(d).build())
                .map_err(|e| StoreError::corrupt(store, e))
        })
        .collect::<Result<Vec<_>, _>>()?;
    batch_write(store, client, table, deletes).await
}

/// Pages can end on any item, so the cursor carries both keys.
pub(crate) fn encode_cursor(key: &HashMap<String, AttributeValue>) -> String {
    let part = |name: &str| {
        key.get(name)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default()
    };
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(
        "{}\n{}",
        part("pk"),
        part("sk")
    ))
}

pub(crate) fn decode_cursor(cursor: &str) -> Result<HashMap<String, AttributeValue>, StoreError> {
    let text = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or(StoreError::BadCursor)?;
    let (pk, sk) = text
        .split_once('\n')
        .filter(|(pk, sk)| !pk.is_empty() && !sk.is_empty())
        .ok_or(StoreError::BadCursor)?;
    Ok(HashMap::from([
        ("pk".to_owned(), s(pk)),
        ("sk".to_owned(), s(sk)),
    ]))
}

/// Writes `item` as is (no condition).
pub(crate) async fn put_item(
    store: &'static str,
    client: &aws_sdk_dynamodb::Client,
    table: &str,
    item: HashMap<String, AttributeValue>,
) -> Result<(), StoreError> {
    client
        .put_item()
        .table_name(table)
        .set_item(Some(item))
        .send()
        .await
        .map_err(|e| failed(store, "PutItem", &e))?;
    Ok(())
}

/// A string attribute.
pub(crate) fn s(value: impl Into<String>) -> AttributeValue {
    AttributeValue::S(value.into())
}

/// A number attribute.
pub(crate) fn n(value: impl ToString) -> AttributeValue {
    AttributeValue::N(value.to_string())
}

/// Loads region, credentials and endpoint from the environment. Call once per
/// cold start and build every client from the result.
pub async fn sdk_config() -> SdkConfig {
    aws_config::defaults(BehaviorVersion::latest()).load().await
}

/// `DescribeTable`: proves the table exists and we may use it, reads no items.
pub async fn probe_table(client: &aws_sdk_dynamodb::Client, table: &str) -> Result<(), StoreError> {
    client
        .describe_table()
        .table_name(table)
        .send()
        .await
        .map(drop)
        .map_err(|e| failed("table", "DescribeTable", &e))
}

/// `GetQueueAttributes`: proves the queue exists, receives nothing.
pub async fn probe_queue(client: &aws_sdk_sqs::Client, queue_url: &str) -> Result<(), StoreError> {
    client
        .get_queue_attributes()
        .queue_url(queue_url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .map(drop)
        .map_err(|e| failed("queue", "GetQueueAttributes", &e))
}

/// `DescribeSecret`: proves the secret exists without reading its value.
pub async fn probe_secret(
    client: &aws_sdk_secretsmanager::Client,
    secret_id: &str,
) -> Result<(), StoreError> {
    client
        .describe_secret()
        .secret_id(secret_id)
        .send()
        .await
        .map(drop)
        .map_err(|e| failed("secret", "DescribeSecret", &e))
}

/// A one-line description of an SDK error: the service's error code when
/// there is one, else the transport failure.
pub fn describe<E, R>(err: &aws_sdk_dynamodb::error::SdkError<E, R>) -> String
where
    E: aws_sdk_dynamodb::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_dynamodb::error::SdkError;
    match err {
        SdkError::ServiceError(service) => {
            let e = service.err();
            match (e.code(), e.message()) {
                (Some(code), Some(msg)) => format!("{code}: {msg}"),
                (Some(code), None) => code.to_owned(),
                _ => e.to_string(),
            }
        }
        SdkError::TimeoutError(_) => "timed out".to_owned(),
        SdkError::DispatchFailure(_) => "could not connect".to_owned(),
        other => other.to_string(),
    }
}
