//! Opening the model's stream: the upstream policy.
//!
//! The model API is an edge ([`ModelApi`]: one attempt, Anthropic over HTTP
//! in production, [`ScriptedModel`] in tests); the policy of what to do with
//! its answer is here: 429, 529 and 5xx (and no answer at all) are retried
//! with jittered backoff at most [`RETRIES`] times while the deadline
//! allows, then reported as busy; 400/413 is the client's request; any other
//! refusal (401/403/404) is this deployment's key or configuration.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use serde_json::Value;

use super::anthropic;
use crate::secrets::CachedSecret;

/// Upstream 429/529/5xx before the stream starts: retried this many times.
pub const RETRIES: u32 = 2;
/// How long the model API may take to answer with headers.
pub const HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

/// The body of a streaming answer, as it arrives.
pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// What one attempt got back.
pub enum Answer {
    /// 2xx: the event stream.
    Streaming(ReplyStream),
    /// Any other status, with `Retry-After` (seconds) and the error body.
    Refused {
        status: u16,
        retry_after: Option<u64>,
        body: Bytes,
    },
    /// No connection, or it broke before the headers.
    Unreachable(String),
    /// No headers within [`HEADERS_TIMEOUT`].
    TimedOut,
}

/// The model API: one streaming `POST /v1/messages` per call.
#[async_trait::async_trait]
pub trait ModelApi: Send + Sync {
    async fn send(&self, api_key: &str, body: &Value) -> Answer;

    /// Opens a connection to the model API unless one is likely pooled, so
    /// the request admission lets through need not wait for TCP and TLS.
    /// Sends nothing that could be billed; the answer is dropped.
    async fn warm(&self) {}
}

/// Why no stream was opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpstreamError {
    #[error("the Anthropic API key secret could not be read")]
    KeyUnavailable,
    #[error("the Anthropic API key secret holds no api_key")]
    KeyNotSet,
    /// The model API refused the request itself (400/413).
    #[error("the model API rejected the request: {0}")]
    Rejected(String),
    /// The model API refused this deployment (401/403/404).
    #[error("the model API refused this deployment's request")]
    Refused,
    /// Still busy or unreachable after the retries.
    #[error("the model API is busy or unavailable ({code})")]
    Busy {
        code: &'static str,
        retry_after: u64,
    },
}

/// Opens the stream for `body`, retrying what is worth retrying while the
/// deadline leaves time for another full attempt.
pub async fn open(
    api: &dyn ModelApi,
    key: &CachedSecret,
    body: &Value,
    deadline: Option<Instant>,
) -> Result<ReplyStream, UpstreamError> {
    let secret = key.get().await.map_err(|error| {
        tracing::error!(%error, "Anthropic API key unavailable");
        UpstreamError::KeyUnavailable
    })?;
    let key = anthropic::api_key(secret.expose()).ok_or_else(|| {
        tracing::error!("the Anthropic API key secret holds no api_key: set it");
        UpstreamError::KeyNotSet
    })?;
    let mut attempt = 0;
    loop {
        let (code, retry_after) = match api.send(&key, body).await {
            Answer::Streaming(stream) => return Ok(stream),
            Answer::Refused {
                status,
                retry_after,
                body,
            } => {
                let (kind, message) = anthropic::error_body(&body)
                    .unwrap_or_else(|| ("unknown".to_owned(), String::new()));
                tracing::warn!(
                    status,
                    kind,
                    message,
                    attempt,
                    "Anthropic refused the request"
                );
                match status {
                    429 => ("upstream_rate_limited", retry_after),
                    // 529 is Anthropic's "overloaded".
                    500..=599 => ("upstream_overloaded", retry_after),
                    400 | 413 => return Err(UpstreamError::Rejected(message)),
                    _ => return Err(UpstreamError::Refused),
                }
            }
            Answer::Unreachable(error) => {
                tracing::warn!(error, attempt, "Anthropic unreachable");
                ("upstream_unavailable", None)
            }
            Answer::TimedOut => {
                tracing::warn!(attempt, "Anthropic did not answer in time");
                ("upstream_unavailable", None)
            }
        };
        let out_of_time = deadline.is_some_and(|d| Instant::now() + HEADERS_TIMEOUT > d);
        if attempt >= RETRIES || out_of_time {
            return Err(UpstreamError::Busy {
                code,
                retry_after: retry_after.unwrap_or(10).clamp(1, 60),
            });
        }
        let backoff = crate::backoff::jittered(Duration::from_millis(500), attempt);
        let wait = retry_after.map_or(backoff, |s| Duration::from_secs(s.min(5)).max(backoff));
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

/// A model API that answers from a script: the double for handler tests.
/// Each call takes the next scripted answer; past the script it streams
/// `reply`'s frames. It records every body it was sent.
#[derive(Default)]
pub struct ScriptedModel {
    script: Mutex<VecDeque<Answer>>,
    reply: Vec<String>,
    sent: Mutex<Vec<Value>>,
    warmed: std::sync::atomic::AtomicUsize,
}

impl ScriptedModel {
    /// Streams these SSE frames (each a complete `event: ...\ndata: ...\n\n`).
    pub fn streaming(frames: Vec<String>) -> Self {
        Self {
            reply: frames,
            ..Self::default()
        }
    }

    /// Streams a complete reply of `text`, as Anthropic frames it: the
    /// prompt's `input_tokens` in `message_start`, `output_tokens` in the
    /// final `message_delta`.
    pub fn replying(text: &str, input_tokens: u64, output_tokens: u64) -> Self {
        let frame = |event: Value| {
            format!(
                "event: {}\ndata: {event}\n\n",
                event["type"].as_str().unwrap_or_default()
            )
        };
        Self::streaming(vec![
            frame(serde_json::json!({"type": "message_start", "message": {
                "id": "msg_1", "type": "message", "role": "assistant", "content": [],
                "usage": {"input_tokens": input_tokens, "output_tokens": 1}}})),
            frame(
                serde_json::json!({"type": "content_block_start", "index": 0,
                "content_block": {"type": "text", "text": ""}}),
            ),
            frame(
                serde_json::json!({"type": "content_block_delta", "index": 0,
                "delta": {"type": "text_delta", "text": text}}),
            ),
            frame(serde_json::json!({"type": "content_block_stop", "index": 0})),
            frame(serde_json::json!({"type": "message_delta",
                "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": output_tokens}})),
            frame(serde_json::json!({"type": "message_stop"})),
        ])
    }

    /// Answers the next calls with `answers` first.
    pub fn then(self, answers: impl IntoIterator<Item = Answer>) -> Self {
        self.script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(answers);
        self
    }

    /// The bodies sent so far.
    pub fn sent(&self) -> Vec<Value> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// How often a connection was warmed.
    pub fn warmed(&self) -> usize {
        self.warmed.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl ModelApi for ScriptedModel {
    async fn send(&self, _api_key: &str, body: &Value) -> Answer {
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(body.clone());
        let scripted = self
            .script
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop_front();
        scripted.unwrap_or_else(|| {
            let frames: Vec<Result<Bytes, String>> = self
                .reply
                .iter()
                .map(|f| Ok(Bytes::from(f.clone())))
                .collect();
            Answer::Streaming(Box::pin(futures_util::stream::iter(frames)))
        })
    }

    async fn warm(&self) {
        self.warmed
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::secrets::MemorySecrets;

    fn key(value: &str) -> CachedSecret {
        let source = MemorySecrets::default().with("anthropic", value);
        CachedSecret::new(Arc::new(source), "anthropic", Duration::from_secs(60))
    }

    fn refused(status: u16) -> Answer {
        Answer::Refused {
            status,
            retry_after: Some(1),
            body: Bytes::from_static(br#"{"type":"error","error":{"type":"x","message":"m"}}"#),
        }
    }

    #[tokio::test]
    async fn overloaded_answers_are_retried_twice_then_busy() {
        let api = ScriptedModel::default().then([refused(529), refused(529), refused(529)]);
        let opened = open(&api, &key(r#"{"api_key":"k"}"#), &Value::Null, None).await;
        assert_eq!(
            opened.err(),
            Some(UpstreamError::Busy {
                code: "upstream_overloaded",
                retry_after: 1
            })
        );
        assert_eq!(api.sent().len(), 3);
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_opens_the_stream() {
        let api = ScriptedModel::streaming(vec![]).then([Answer::TimedOut]);
        assert!(open(&api, &key("k"), &Value::Null, None).await.is_ok());
        assert_eq!(api.sent().len(), 2);
    }

    #[tokio::test]
    async fn client_and_deployment_refusals_are_not_retried() {
        let api = ScriptedModel::default().then([refused(400)]);
        let opened = open(&api, &key("k"), &Value::Null, None).await;
        assert_eq!(opened.err(), Some(UpstreamError::Rejected("m".into())));
        let api = ScriptedModel::default().then([refused(401)]);
        let opened = open(&api, &key("k"), &Value::Null, None).await;
        assert_eq!(opened.err(), Some(UpstreamError::Refused));
        assert_eq!(api.sent().len(), 1);
    }

    #[tokio::test]
    async fn an_empty_key_is_refused_before_any_call() {
        let api = ScriptedModel::default();
        let opened = open(&api, &key(r#"{"api_key":""}"#), &Value::Null, None).await;
        assert_eq!(opened.err(), Some(UpstreamError::KeyNotSet));
        assert!(api.sent().is_empty());
    }

    #[tokio::test]
    async fn no_retry_when_the_deadline_leaves_no_time_for_one() {
        let api = ScriptedModel::default().then([refused(529)]);
        let soon = Some(Instant::now() + Duration::from_secs(5));
        let opened = open(&api, &key("k"), &Value::Null, soon).await;
        assert!(matches!(opened, Err(UpstreamError::Busy { .. })));
        assert_eq!(api.sent().len(), 1);
    }
}
