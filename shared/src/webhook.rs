//! Sending signed webhooks over HTTP, with retries.
//!
//! Each attempt has its own timeout; failures (transport errors and non-2xx
//! answers) are retried with exponential backoff and full jitter. The
//! headers follow Standard Webhooks: `webhook-id`, `webhook-timestamp`,
//! `webhook-signature`.

use std::time::Duration;

use chrono::Utc;

use crate::backoff::jittered;
use crate::metering::alerts::{Alert, Notifier, WebhookError};

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub timeout: Duration,
    /// Retries after the first attempt.
    pub retries: u32,
    /// The first backoff's cap; each retry doubles it.
    pub base_delay: Duration,
}

impl Default for RetryPolicy {
    /// 3 retries, 5 s per attempt, backoff from 250 ms.
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(5),
            retries: 3,
            base_delay: Duration::from_millis(250),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookSender {
    http: reqwest::Client,
    policy: RetryPolicy,
}

impl WebhookSender {
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            http: reqwest::Client::builder()
                .timeout(policy.timeout)
                .user_agent(concat!("ingot-webhooks/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            policy,
        }
    }

    async fn attempt(&self, url: &str, alert: &Alert) -> Result<(), WebhookError> {
        let now = Utc::now();
        let response = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .header("webhook-id", &alert.id)
            .header("webhook-timestamp", now.timestamp().to_string())
            .header("webhook-signature", alert.signature(now))
            .body(alert.body.clone())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    WebhookError::TimedOut
                } else {
                    WebhookError::Unreachable
                }
            })?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(WebhookError::Refused(response.status().as_u16()))
        }
    }
}

#[async_trait::async_trait]
impl Notifier for WebhookSender {
    async fn notify(&self, url: &str, alert: &Alert) -> Result<(), WebhookError> {
        let mut attempt = 0;
        loop {
            match self.attempt(url, alert).await {
                Ok(()) => return Ok(()),
                Err(error) if attempt >= self.policy.retries => {
                    return Err(WebhookError::GaveUp {
                        last: Box::new(error),
                        attempts: attempt + 1,
                    });
                }
                Err(error) => {
                    tracing::info!(
                        alert = alert.id,
                        url,
                        %error,
                        attempt,
                        "webhook attempt failed; retrying"
                    );
                    tokio::time::sleep(jittered(self.policy.base_delay, attempt)).await;
                    attempt += 1;
                }
            }
        }
    }
}
