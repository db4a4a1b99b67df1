//! The queues: the events queue (FIFO, a message group per tenant), how
//! `ingest` (and chat) hand accepted events to `rollup`, and its dead-letter
//! queue; the alerts queue, how `rollup` hands quota alerts to their
//! delivery.

use std::time::Duration;

use sha2::{Digest, Sha256};

use super::signed::{Bounds, SignedJson};
use super::{SdkConfig, failed};
use crate::metering::alerts::{AlertKey, AlertQueue};
use crate::metering::consumer::{DeadLetters, Message};
use crate::metering::ingest::{EventSink, send_batches};
use crate::metering::types::TenantId;
use crate::store::StoreError;

/// Names this store in errors and 503s.
const STORE: &str = "events queue";

/// The events queue, sent to through [`SignedJson`]: it is the hot path of
/// every ingest request and every chat reply.
#[derive(Debug)]
pub struct EventQueue {
    sqs: SignedJson,
    url: String,
}

impl EventQueue {
    /// The queue at `url`, reached at that URL's origin (or the SDK
    /// config's endpoint, the local emulator), signed as the config says.
    pub fn new(aws: &SdkConfig, url: &str) -> Self {
        let origin = reqwest::Url::parse(url)
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_default();
        Self {
            sqs: SignedJson::new(aws, &origin, "sqs", "AmazonSQS", Bounds::default()),
            url: url.to_owned(),
        }
    }
}

/// `SendMessageBatch`'s input and output, as far as ingest uses them.
#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendBatch<'a> {
    queue_url: &'a str,
    entries: Vec<Entry<'a>>,
}

#[derive(serde::Serialize)]
#[serde(rename_all = "PascalCase")]
struct Entry<'a> {
    id: String,
    message_body: &'a str,
    message_group_id: &'a str,
    message_deduplication_id: String,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SentBatch {
    #[serde(default)]
    failed: Vec<FailedEntry>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FailedEntry {
    id: String,
}

#[async_trait::async_trait]
impl EventSink for EventQueue {
    /// Sends every body, in as few `SendMessageBatch` calls as the limits
    /// allow, into the tenant's message group of the FIFO queue (the order
    /// the rollup counts by: docs/data-model.md). Entries SQS reports as
    /// failed are retried once; any still failing make the whole send an
    /// error (the client retries with the same event ids, which the rollup
    /// counts once). A body's deduplication id is its hash, so a retried
    /// entry SQS had taken after all is not queued twice. Returns the number
    /// of SQS requests made.
    async fn send(&self, tenant: &TenantId, bodies: &[String]) -> Result<usize, StoreError> {
        let unavailable = |message: String| StoreError::Unavailable {
            store: STORE,
            operation: "SendMessageBatch",
            message,
        };
        let mut requests = 0;
        for batch in send_batches(bodies) {
            let mut pending: Vec<(usize, &String)> = batch.iter().enumerate().collect();
            for _attempt in 0..2 {
                let input = SendBatch {
                    queue_url: &self.url,
                    entries: pending
                        .iter()
                        .map(|(i, body)| Entry {
                            id: i.to_string(),
                            message_body: body,
                            message_group_id: tenant.as_str(),
                            message_deduplication_id: crate::hex(&Sha256::digest(body)),
                        })
                        .collect(),
                };
                let input =
                    serde_json::to_vec(&input).map_err(|e| StoreError::corrupt(STORE, e))?;
                let output = self
                    .sqs
                    .call("SendMessageBatch", input)
                    .await
                    .map_err(|e| unavailable(e.to_string()))?;
                requests += 1;
                let out: SentBatch =
                    serde_json::from_slice(&output).map_err(|e| StoreError::corrupt(STORE, e))?;
                pending.retain(|(i, _)| out.failed.iter().any(|f| f.id == i.to_string()));
                if pending.is_empty() {
                    break;
                }
            }
            if !pending.is_empty() {
                return Err(unavailable(format!(
                    "{} entries failed twice",
                    pending.len()
                )));
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

/// The events queue's dead-letter queue (FIFO too), where the rollup sets
/// aside messages it can never count.
#[derive(Debug, Clone)]
pub struct SqsDeadLetters {
    client: aws_sdk_sqs::Client,
    url: String,
}

impl SqsDeadLetters {
    pub fn new(client: aws_sdk_sqs::Client, url: &str) -> Self {
        Self {
            client,
            url: url.to_owned(),
        }
    }
}

#[async_trait::async_trait]
impl DeadLetters for SqsDeadLetters {
    /// Keeps the tenant's message group when the body names one, so a
    /// redrive puts the message after everything its tenant sent before.
    async fn park(&self, message: &Message) -> Result<(), StoreError> {
        const DLQ: &str = "events dead-letter queue";
        let body = message.body.as_deref().unwrap_or_default();
        let group = serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("tenant")?.as_str().map(str::to_owned))
            .unwrap_or_else(|| "unreadable".to_owned());
        self.client
            .send_message()
            .queue_url(&self.url)
            .message_body(if body.is_empty() { "(no body)" } else { body })
            .message_group_id(group)
            .message_deduplication_id(&message.id)
            .send()
            .await
            .map_err(|e| failed(DLQ, "SendMessage", &e))?;
        Ok(())
    }
}
