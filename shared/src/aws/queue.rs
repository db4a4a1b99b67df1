//! The queues: the events queue, how `ingest` (and chat) hand accepted
//! events to `rollup`, and the alerts queue, how `rollup` hands quota alerts
//! to their delivery.

use std::time::Duration;

use aws_sdk_sqs::types::SendMessageBatchRequestEntry;

use super::{describe, failed};
use crate::metering::alerts::{AlertKey, AlertQueue};
use crate::metering::ingest::{EventSink, send_batches};
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "events queue";

#[derive(Debug, Clone)]
pub struct EventQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl EventQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Self {
        Self {
            client,
            url: url.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl EventSink for EventQueue {
    /// Sends every body, in as few `SendMessageBatch` calls as the limits
    /// allow. Entries SQS reports as failed are retried once; any still
    /// failing make the whole send an error (the client retries with the same
    /// event ids, which the rollup counts once). Returns the number of
    /// SQS requests made.
    async fn send(&self, bodies: &[String]) -> Result<usize, StoreError> {
        let mut requests = 0;
        for batch in send_batches(bodies) {
            let mut pending: Vec<(usize, &String)> = batch.iter().enumerate().collect();
            for _attempt in 0..2 {
                let entries = pending
                    .iter()
                    .map(|(i, body)| {
                        SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .message_body(*body)
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| StoreError::corrupt(STORE, e))?;
                let out = self
                    .client
                    .send_message_batch()
                    .queue_url(&self.url)
                    .set_entries(Some(entries))
                    .send()
                    .await
                    .inspect(|_| requests += 1)
                    .map_err(|e| StoreError::Unavailable {
                        store: STORE,
                        operation: "SendMessageBatch",
                        message: describe(&e),
                    })?;
                let failed: Vec<&str> = out.failed().iter().map(|f| f.id()).collect();
                pending.retain(|(i, _)| failed.contains(&i.to_string().as_str()));
                if pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                return Err(StoreError::Unavailable {
                    store: STORE,
                    operation: "SendMessageBatch",
                    message: format!("{} entries failed twice", pending.len()),
                });
            }
        }
        Ok(requests)
    }
}

/// The alerts queue: the rollup raises alerts onto it and consumes it.
#[derive(Debug, Clone)]
pub struct SqsAlertQueue {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsAlertQueue {
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Self {
        Self {
            client,
            url: url.to_owned(),
        }
    }
}

/// Names the alerts queue in errors.
const ALERTS: &str = "alerts queue";

#[async_trait::async_trait]
impl AlertQueue for SqsAlertQueue {
    async fn send(&self, key: &AlertKey) -> Result<(), StoreError> {
        let body = serde_json::to_string(key).map_err(|e| StoreError::corrupt(ALERTS, e))?;
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(body)
            .send()
            .await
            .map_err(|e| failed(ALERTS, "SendMessage", &e))?;
        Ok(())
    }

    async fn retry_in(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.client
            .change_message_visibility()
            .queue_url(&self.url)
            .receipt_handle(receipt)
            .visibility_timeout(i32::try_from(delay.as_secs()).unwrap_or(i32::MAX))
            .send()
            .await
            .map_err(|e| failed(ALERTS, "ChangeMessageVisibility", &e))?;
        Ok(())
    }
}
