//! `rollup`: the consumer of the events queue.
//!
//! Lambda delivers SQS batches; a record that cannot be handled is reported in
//! `batchItemFailures` (the template enables `ReportBatchItemFailures`), so
//! only it is retried and, after `maxReceiveCount`, moved to the DLQ. The rest
//! of the batch is acknowledged. Counting builds on this loop.

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use lambda_runtime::{Error, LambdaEvent};
use serde_json::{Map, Value};
use shared::config::{ConfigError, Env};
use shared::telemetry::{Metrics, Unit};

pub const FUNCTION: &str = "rollup";

#[derive(Debug, Clone)]
pub struct Config {
    pub usage_table: String,
    pub tenants_table: String,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            usage_table: env.required("USAGE_TABLE")?,
            tenants_table: env.required("TENANTS_TABLE")?,
        })
    }
}

/// Why a record was not processed; logged with its message id.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RecordError {
    #[error("record has no body")]
    MissingBody,
    #[error("body is not a JSON object: {0}")]
    NotJsonObject(String),
}

/// Handles one SQS batch, reporting each record that failed.
pub async fn handle(event: LambdaEvent<SqsEvent>) -> Result<SqsBatchResponse, Error> {
    let records = event.payload.records;
    let mut response = SqsBatchResponse::default();
    for record in &records {
        let message_id = record.message_id.as_deref().unwrap_or_default();
        let receive_count = record
            .attributes
            .get("ApproximateReceiveCount")
            .map(String::as_str)
            .unwrap_or("?");
        match parse(record) {
            Ok(message) => {
                tracing::info!(
                    message_id,
                    receive_count,
                    fields = message.len(),
                    "message received"
                );
            }
            Err(error) => {
                tracing::warn!(message_id, receive_count, %error, "message failed; SQS will redeliver it or move it to the DLQ");
                response.add_failure(message_id);
            }
        }
    }
    Metrics::new()
        .dimension("Function", FUNCTION)
        .value("MessagesReceived", Unit::Count, records.len() as f64)
        .value(
            "MessagesFailed",
            Unit::Count,
            response.batch_item_failures.len() as f64,
        )
        .emit();
    Ok(response)
}

fn parse(record: &SqsMessage) -> Result<Map<String, Value>, RecordError> {
    let body = record.body.as_deref().ok_or(RecordError::MissingBody)?;
    match serde_json::from_str(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(other) => Err(RecordError::NotJsonObject(format!("found {other}"))),
        Err(e) => Err(RecordError::NotJsonObject(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str, body: Option<&str>) -> SqsMessage {
        let mut m = SqsMessage::default();
        m.message_id = Some(id.to_owned());
        m.body = body.map(str::to_owned);
        m
    }

    fn batch(records: Vec<SqsMessage>) -> LambdaEvent<SqsEvent> {
        let mut event = SqsEvent::default();
        event.records = records;
        LambdaEvent::new(event, lambda_runtime::Context::default())
    }

    #[tokio::test]
    async fn reports_only_the_records_that_fail() {
        let response = handle(batch(vec![
            record("ok-1", Some(r#"{"tenant":"t1"}"#)),
            record("bad-json", Some("not json")),
            record("no-body", None),
            record("array", Some("[1,2]")),
            record("ok-2", Some("{}")),
        ]))
        .await
        .unwrap();
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.as_str())
            .collect();
        assert_eq!(failed, ["bad-json", "no-body", "array"]);
    }

    #[test]
    fn parses_a_real_sqs_batch_event() {
        let raw = include_str!("../../../events/rollup-sqs-batch.json");
        let event: SqsEvent = serde_json::from_str(raw).unwrap();
        assert_eq!(event.records.len(), 2);
        assert!(event.records.iter().all(|r| parse(r).is_ok()));
    }
}
