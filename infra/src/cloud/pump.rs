//! The local SQS event source: what Lambda's event source mapping does on AWS.
//!
//! Receives up to `BatchSize` messages (waiting at most
//! `MaximumBatchingWindowInSeconds` to fill a batch), delivers them to the
//! function as a real SQS event, then deletes what the function acknowledged.
//! Items named in `batchItemFailures` are left alone: they reappear after the
//! queue's visibility timeout and, past the redrive policy's
//! `maxReceiveCount`, SQS itself (the emulator here) moves them to the DLQ.
//! A function error, or a failure report naming an id not in the batch, fails
//! the whole batch, as on AWS.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use aws_lambda_events::encodings::Base64Data;
use aws_lambda_events::event::sqs::{SqsEvent, SqsMessage, SqsMessageAttribute};
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, Message, MessageSystemAttributeName};
use serde_json::Value;
use shared::aws::describe;

use crate::cloud::invoke::Invoke;
use crate::cloud::template::SqsSource;

/// SQS returns at most ten messages per receive.
const RECEIVE_MAX: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    #[error("cannot encode the SQS event: {0}")]
    Encode(String),
    #[error("{action} on {queue}: {message}")]
    Sqs {
        action: &'static str,
        queue: String,
        message: String,
    },
}

/// What happened to one batch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchOutcome {
    pub delivered: usize,
    pub acknowledged: usize,
    /// Message ids left on the queue for redelivery.
    pub failed: Vec<String>,
}

/// One SQS → function mapping.
#[derive(Debug, Clone)]
pub struct Pump<I> {
    pub sqs: aws_sdk_sqs::Client,
    pub queue_url: String,
    pub queue_arn: String,
    pub region: String,
    pub source: SqsSource,
    pub function: String,
    pub invoker: I,
}

impl<I: Invoke> Pump<I> {
    /// Polls forever, logging each batch; SQS errors back off and retry.
    pub async fn run(&self) {
        loop {
            match self.poll_once().await {
                Ok(outcome) if outcome.delivered > 0 => tracing::info!(
                    function = self.function,
                    delivered = outcome.delivered,
                    acknowledged = outcome.acknowledged,
                    failed = ?outcome.failed,
                    "batch delivered"
                ),
                Ok(_) => {}
                Err(error) => {
                    tracing::warn!(function = self.function, %error, "poll failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Receives one batch (waiting up to a second for the first message),
    /// delivers it and settles it. An empty queue gives an empty outcome.
    pub async fn poll_once(&self) -> Result<BatchOutcome, PumpError> {
        let messages = self.receive_batch().await?;
        if messages.is_empty() {
            return Ok(BatchOutcome::default());
        }
        let payload = serde_json::to_value(self.event(&messages))
            .map_err(|e| PumpError::Encode(e.to_string()))?;
        let ids: Vec<String> = messages
            .iter()
            .map(|m| m.message_id().unwrap_or_default().to_owned())
            .collect();

        let failed: Vec<String> = match self.invoker.invoke(&self.function, &payload).await {
            Ok(response) => self.failures_in(&response, &ids),
            Err(error) => {
                tracing::warn!(function = self.function, %error, "batch failed; every message will be redelivered");
                ids.clone()
            }
        };

        let acknowledged: Vec<&Message> = messages
            .iter()
            .filter(|m| !failed.iter().any(|f| Some(f.as_str()) == m.message_id()))
            .collect();
        self.delete(&acknowledged).await?;
        Ok(BatchOutcome {
            delivered: messages.len(),
            acknowledged: acknowledged.len(),
            failed,
        })
    }

    /// The ids to retry, per Lambda's partial-batch-response contract: a
    /// null or empty response or list is success; a malformed report, or
    /// one naming an id not in the batch, fails the whole batch.
    fn failures_in(&self, response: &Value, ids: &[String]) -> Vec<String> {
        if !self.source.report_batch_item_failures {
            return Vec::new();
        }
        let items = match response {
            Value::Null => return Vec::new(),
            Value::Object(map) => match map.get("batchItemFailures") {
                None | Some(Value::Null) => return Vec::new(),
                Some(Value::Array(items)) => items,
                Some(_) => return self.whole_batch(response, ids),
            },
            _ => return self.whole_batch(response, ids),
        };
        let mut failed = Vec::with_capacity(items.len());
        for item in items {
            match item.get("itemIdentifier").and_then(Value::as_str) {
                Some(id) if ids.iter().any(|i| i == id) => failed.push(id.to_owned()),
                _ => return self.whole_batch(response, ids),
            }
        }
        failed
    }

    fn whole_batch(&self, response: &Value, ids: &[String]) -> Vec<String> {
        tracing::warn!(function = self.function, %response, "invalid batch response; failing the whole batch");
        ids.to_vec()
    }

    async fn receive_batch(&self) -> Result<Vec<Message>, PumpError> {
        let window = Duration::from_secs(self.source.max_batching_window_secs);
        let mut batch: Vec<Message> = Vec::new();
        let mut deadline: Option<Instant> = None;
        while batch.len() < self.source.batch_size {
            // Long-poll a second at a time, never past the batching window.
            // SQS waits in whole seconds: with less than one left, deliver
            // now (a zero wait would spin on empty receives until the window
            // closed, hammering the queue).
            if deadline.is_some_and(|d| d < Instant::now() + Duration::from_secs(1)) {
                break;
            }
            let wanted = (self.source.batch_size - batch.len()).min(RECEIVE_MAX);
            let received = self
                .sqs
                .receive_message()
                .queue_url(&self.queue_url)
                .max_number_of_messages(wanted as i32)
                .wait_time_seconds(1)
                .message_system_attribute_names(MessageSystemAttributeName::All)
                .message_attribute_names("All")
                .send()
                .await
                .map_err(|e| self.error("ReceiveMessage", describe(&e)))?;
            let messages = received.messages.unwrap_or_default();
            if messages.is_empty() && (batch.is_empty() || window.is_zero()) {
                break;
            }
            batch.extend(messages);
            if window.is_zero() {
                break;
            }
            deadline.get_or_insert_with(|| Instant::now() + window);
        }
        Ok(batch)
    }

    /// The Lambda SQS event for `messages`, field for field as AWS sends it.
    pub fn event(&self, messages: &[Message]) -> SqsEvent {
        let mut event = SqsEvent::default();
        event.records = messages
            .iter()
            .map(|m| {
                let mut record = SqsMessage::default();
                record.message_id = m.message_id().map(str::to_owned);
                record.receipt_handle = m.receipt_handle().map(str::to_owned);
                record.body = m.body().map(str::to_owned);
                record.md5_of_body = m.md5_of_body().map(str::to_owned);
                record.md5_of_message_attributes = m.md5_of_message_attributes().map(str::to_owned);
                record.attributes = m
                    .attributes()
                    .map(|a| {
                        a.iter()
                            .map(|(k, v)| (k.as_str().to_owned(), v.clone()))
                            .collect()
                    })
                    .unwrap_or_default();
                record.message_attributes = m
                    .message_attributes()
                    .map(|attributes| {
                        attributes
                            .iter()
                            .map(|(k, v)| {
                                let mut attribute = SqsMessageAttribute::default();
                                attribute.string_value = v.string_value().map(str::to_owned);
                                attribute.binary_value = v.binary_value().map(|b| {
                                    let mut data = Base64Data::default();
                                    *data = b.as_ref().to_vec();
                                    data
                                });
                                attribute.data_type = Some(v.data_type().to_owned());
                                (k.clone(), attribute)
                            })
                            .collect::<HashMap<_, _>>()
                    })
                    .unwrap_or_default();
                record.event_source = Some("aws:sqs".to_owned());
                record.event_source_arn = Some(self.queue_arn.clone());
                record.aws_region = Some(self.region.clone());
                record
            })
            .collect();
        event
    }

    async fn delete(&self, messages: &[&Message]) -> Result<(), PumpError> {
        for chunk in messages.chunks(RECEIVE_MAX) {
            let entries = chunk
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(m.receipt_handle().unwrap_or_default())
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.error("DeleteMessageBatch", e.to_string()))?;
            let result = self
                .sqs
                .delete_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|e| self.error("DeleteMessageBatch", describe(&e)))?;
            if !result.failed().is_empty() {
                return Err(self.error(
                    "DeleteMessageBatch",
                    format!("{} entries not deleted", result.failed().len()),
                ));
            }
        }
        Ok(())
    }

    fn error(&self, action: &'static str, message: String) -> PumpError {
        PumpError::Sqs {
            action,
            queue: self.queue_url.clone(),
            message,
        }
    }
}
