//! Anthropic's Messages API: the request Ingot sends and the Server-Sent
//! Events it streams back.
//!
//! The stream is `message_start` (input and cache usage),
//! `content_block_start`/`_delta`/`_stop`, `message_delta` (stop reason and
//! **cumulative** usage), `message_stop`, with `ping` anywhere and `error`
//! possibly mid-stream. [`SseParser`] cuts bytes into frames whatever the
//! chunking; [`UpstreamEvent::parse`] reads the frames Ingot cares about.
//! [`AnthropicHttp`] is the HTTP client behind [`ModelApi`].

use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};

use super::history::{Role, Turn};
use super::request::ChatRequest;
use super::settings::Usage;
use super::upstream::{Answer, HEADERS_TIMEOUT, ModelApi};

pub const API_VERSION: &str = "2023-06-01";

/// The body of `POST /v1/messages`. The system prompt is one block marked
/// `cache_control: ephemeral`, so repeat requests read it from the prompt
/// cache at a tenth of the input price.
pub fn messages_body(system_prompt: &str, history: &[Turn], request: &ChatRequest) -> Value {
    let mut messages: Vec<Value> = history
        .iter()
        .map(|turn| {
            json!({
                "role": match turn.role { Role::User => "user", Role::Assistant => "assistant" },
                "content": turn.text,
            })
        })
        .collect();
    let mut content: Vec<Value> = request
        .images
        .iter()
        .map(|image| {
            json!({
                "type": "image",
                "source": {"type": "base64", "media_type": image.media_type, "data": image.data},
            })
        })
        .collect();
    content.push(json!({"type": "text", "text": request.message}));
    messages.push(json!({"role": "user", "content": content}));
    json!({
        "model": request.model,
        "max_tokens": request.max_tokens,
        "stream": true,
        "system": [{
            "type": "text",
            "text": system_prompt,
            "cache_control": {"type": "ephemeral"},
        }],
        "messages": messages,
    })
}

/// The API key in the secret's value: `{"api_key": "..."}` (as the
/// template creates it) or the bare key. `None` while it is unset.
pub fn api_key(secret: &str) -> Option<String> {
    let key = match serde_json::from_str::<Value>(secret) {
        Ok(Value::Object(fields)) => fields.get("api_key")?.as_str()?.trim().to_owned(),
        _ => secret.trim().to_owned(),
    };
    (!key.is_empty()).then_some(key)
}

/// One Server-Sent Event: its `event:` name (if any) and its `data:` lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseFrame {
    pub event: Option<String>,
    pub data: String,
}

/// Incremental SSE parser: push bytes as they arrive, get whole frames out.
#[derive(Debug, Default)]
pub struct SseParser {
    buffer: Vec<u8>,
    event: Option<String>,
    data: Vec<String>,
}

impl SseParser {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<SseFrame> {
        self.buffer.extend_from_slice(bytes);
        let mut frames = Vec::new();
        while let Some(end) = self.buffer.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.buffer.drain(..=end).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim_end_matches(['\n', '\r']);
            if line.is_empty() {
                if !self.data.is_empty() || self.event.is_some() {
                    frames.push(SseFrame {
                        event: self.event.take(),
                        data: std::mem::take(&mut self.data).join("\n"),
                    });
                }
            } else if line.starts_with(':') {
                // comment (keep-alive)
            } else {
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "event" => self.event = Some(value.to_owned()),
                    "data" => self.data.push(value.to_owned()),
                    _ => {}
                }
            }
        }
        frames
    }
}

/// The upstream events the relay acts on.
#[derive(Debug, Clone, PartialEq)]
pub enum UpstreamEvent {
    MessageStart {
        id: String,
        model: String,
        usage: Usage,
    },
    TextDelta(String),
    MessageDelta {
        stop_reason: Option<String>,
        usage: PartialUsage,
    },
    MessageStop,
    Error {
        kind: String,
        message: String,
    },
    /// `ping`, block starts and stops, non-text deltas: nothing to forward.
    Other,
}

/// `message_delta` usage: every field present is the cumulative total so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct PartialUsage {
    pub input_tokens: Option<u64>,
    pub output_tokens: Option<u64>,
    pub cache_creation_input_tokens: Option<u64>,
    pub cache_read_input_tokens: Option<u64>,
}

impl PartialUsage {
    /// Replaces (never adds) the fields this delta reports.
    pub fn apply(&self, usage: &mut Usage) {
        let set = |field: &mut u64, value: Option<u64>| {
            if let Some(v) = value {
                *field = v;
            }
        };
        set(&mut usage.input_tokens, self.input_tokens);
        set(&mut usage.output_tokens, self.output_tokens);
        set(
            &mut usage.cache_creation_input_tokens,
            self.cache_creation_input_tokens,
        );
        set(
            &mut usage.cache_read_input_tokens,
            self.cache_read_input_tokens,
        );
    }
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Wire {
    MessageStart {
        message: WireMessage,
    },
    ContentBlockDelta {
        delta: WireDelta,
    },
    MessageDelta {
        #[serde(default)]
        delta: WireStop,
        #[serde(default)]
        usage: PartialUsage,
    },
    MessageStop,
    Error {
        error: WireError,
    },
    #[serde(other)]
    Other,
}

#[derive(Deserialize)]
struct WireMessage {
    #[serde(default)]
    id: String,
    #[serde(default)]
    model: String,
    #[serde(default)]
    usage: PartialUsage,
}

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireDelta {
    TextDelta {
        text: String,
    },
    #[serde(other)]
    Other,
}

#[derive(Default, Deserialize)]
struct WireStop {
    stop_reason: Option<String>,
}

#[derive(Deserialize)]
struct WireError {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    message: String,
}

impl UpstreamEvent {
    /// Reads a frame's JSON `data`; `None` if it is not an event we know
    /// the shape of (it is then logged and skipped by the relay).
    pub fn parse(frame: &SseFrame) -> Option<Self> {
        let wire: Wire = serde_json::from_str(&frame.data).ok()?;
        Some(match wire {
            Wire::MessageStart { message } => {
                let mut usage = Usage::default();
                message.usage.apply(&mut usage);
                UpstreamEvent::MessageStart {
                    id: message.id,
                    model: message.model,
                    usage,
                }
            }
            Wire::ContentBlockDelta {
                delta: WireDelta::TextDelta { text },
            } => UpstreamEvent::TextDelta(text),
            Wire::ContentBlockDelta { .. } => UpstreamEvent::Other,
            Wire::MessageDelta { delta, usage } => UpstreamEvent::MessageDelta {
                stop_reason: delta.stop_reason,
                usage,
            },
            Wire::MessageStop => UpstreamEvent::MessageStop,
            Wire::Error { error } => UpstreamEvent::Error {
                kind: error.kind,
                message: error.message,
            },
            Wire::Other => UpstreamEvent::Other,
        })
    }
}

/// An error body (`{"type":"error","error":{"type","message"}}`) of a
/// non-streaming answer, e.g. a 400 or a 529: its type and message.
pub fn error_body(body: &[u8]) -> Option<(String, String)> {
    #[derive(Deserialize)]
    struct Body {
        error: WireError,
    }
    serde_json::from_slice::<Body>(body)
        .ok()
        .map(|b| (b.error.kind, b.error.message))
}

/// Anthropic's Messages API over HTTPS: the production [`ModelApi`].
#[derive(Debug)]
pub struct AnthropicHttp {
    http: reqwest::Client,
    url: String,
    /// When a connection was last opened or used.
    last_used: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A connection used this recently is still pooled: keep the client's
/// `pool_idle_timeout` longer.
pub const POOLED_FOR: std::time::Duration = std::time::Duration::from_secs(60);

impl AnthropicHttp {
    pub fn new(http: reqwest::Client, base_url: &str) -> Self {
        Self {
            http,
            url: format!("{base_url}/v1/messages"),
            last_used: std::sync::Mutex::new(None),
        }
    }

    /// Notes a use of the connection now.
    fn used(&self) {
        *self.last_used.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now());
    }

    /// Whether to open a connection: none used within [`POOLED_FOR`]. A
    /// `true` counts as a use, so concurrent requests open one between them.
    fn needs_warming(&self) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last_used.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_some_and(|t| now.duration_since(t) < POOLED_FOR) {
            return false;
        }
        *last = Some(now);
        true
    }
}

#[async_trait::async_trait]
impl ModelApi for AnthropicHttp {
    /// A `HEAD` of the Messages endpoint: answered without a key, a body
    /// or a bill, it leaves a connection in the pool.
    async fn warm(&self) {
        if self.needs_warming() {
            let head = self.http.head(&self.url).send();
            let _ = tokio::time::timeout(HEADERS_TIMEOUT, head).await;
        }
    }

    async fn send(&self, api_key: &str, body: &Value) -> Answer {
        self.used();
        let sent = tokio::time::timeout(
            HEADERS_TIMEOUT,
            self.http
                .post(&self.url)
                .header("x-api-key", api_key)
                .header("anthropic-version", API_VERSION)
                .header("accept", "text/event-stream")
                .json(body)
                .send(),
        )
        .await;
        match sent {
            Err(_) => Answer::TimedOut,
            Ok(Err(error)) => Answer::Unreachable(error.without_url().to_string()),
            Ok(Ok(response)) if response.status().is_success() => Answer::Streaming(Box::pin(
                response
                    .bytes_stream()
                    .map(|chunk| chunk.map_err(|e| e.without_url().to_string())),
            )),
            Ok(Ok(response)) => Answer::Refused {
                status: response.status().as_u16(),
                retry_after: response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok()),
                body: response.bytes().await.unwrap_or_default(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::request::ChatRequest;
    use crate::chat::settings::ChatSettings;
    use crate::config::Env;

    const STREAM: &str = "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-5\",\"content\":[],\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":1100,\"output_tokens\":1}}}\n\n\
event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n\
event: ping\ndata: {\"type\": \"ping\"}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n\
event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\" there\"}}\n\n\
event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n\
event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n\
event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n";

    fn events(chunks: &[&[u8]]) -> Vec<UpstreamEvent> {
        let mut parser = SseParser::default();
        chunks
            .iter()
            .flat_map(|c| parser.push(c))
            .filter_map(|f| UpstreamEvent::parse(&f))
            .collect()
    }

    #[test]
    fn reads_the_key_from_the_secret_as_the_template_stores_it() {
        assert_eq!(
            api_key(r#"{"api_key": "sk-ant-1"}"#).as_deref(),
            Some("sk-ant-1")
        );
        assert_eq!(api_key("sk-ant-2").as_deref(), Some("sk-ant-2"));
        assert_eq!(api_key(r#"{"api_key": ""}"#), None);
        assert_eq!(api_key(r#"{"other": "x"}"#), None);
    }

    #[test]
    fn reads_the_real_event_sequence() {
        let events = events(&[STREAM.as_bytes()]);
        assert_eq!(
            events[0],
            UpstreamEvent::MessageStart {
                id: "msg_1".to_owned(),
                model: "claude-sonnet-4-5".to_owned(),
                usage: Usage {
                    input_tokens: 25,
                    output_tokens: 1,
                    cache_creation_input_tokens: 0,
                    cache_read_input_tokens: 1100,
                },
            }
        );
        let texts: Vec<&str> = events
            .iter()
            .filter_map(|e| match e {
                UpstreamEvent::TextDelta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["Hello", " there"]);
        assert_eq!(events.last(), Some(&UpstreamEvent::MessageStop));
    }

    #[test]
    fn frames_survive_any_chunking_and_crlf() {
        let whole = events(&[STREAM.as_bytes()]);
        let bytes = STREAM.as_bytes();
        let one_at_a_time: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(events(&one_at_a_time), whole);
        let crlf = STREAM.replace('\n', "\r\n");
        assert_eq!(
            events(&crlf.as_bytes().chunks(7).collect::<Vec<_>>()),
            whole
        );
    }

    #[test]
    fn skips_comments_and_reads_multi_line_data() {
        let mut parser = SseParser::default();
        let frames = parser.push(b": keep-alive\n\ndata: a\ndata: b\n\n");
        assert_eq!(
            frames,
            [SseFrame {
                event: None,
                data: "a\nb".to_owned()
            }]
        );
    }

    #[test]
    fn message_delta_usage_replaces_rather_than_adds() {
        let mut usage = Usage {
            input_tokens: 25,
            output_tokens: 1,
            ..Usage::default()
        };
        PartialUsage {
            output_tokens: Some(15),
            ..PartialUsage::default()
        }
        .apply(&mut usage);
        PartialUsage {
            output_tokens: Some(40),
            input_tokens: Some(25),
            ..PartialUsage::default()
        }
        .apply(&mut usage);
        assert_eq!((usage.input_tokens, usage.output_tokens), (25, 40));
    }

    #[test]
    fn reads_a_mid_stream_error() {
        let frame = SseFrame {
            event: Some("error".to_owned()),
            data: r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
                .to_owned(),
        };
        assert_eq!(
            UpstreamEvent::parse(&frame),
            Some(UpstreamEvent::Error {
                kind: "overloaded_error".to_owned(),
                message: "Overloaded".to_owned()
            })
        );
        assert_eq!(
            error_body(frame.data.as_bytes()),
            Some(("overloaded_error".to_owned(), "Overloaded".to_owned()))
        );
    }

    #[test]
    fn marks_the_system_prompt_for_caching_and_sends_history_first() {
        let settings = ChatSettings::from_env(&Env::default()).unwrap();
        let request = ChatRequest::parse(
            br#"{"message":"and now?","images":[{"media_type":"image/png","data":"AAAA"}]}"#,
            &settings,
        )
        .unwrap();
        let history = [
            Turn::new(Role::User, "hi"),
            Turn::new(Role::Assistant, "hello"),
        ];
        let body = messages_body("be kind", &history, &request);
        assert_eq!(body["stream"], true);
        assert_eq!(body["system"][0]["cache_control"]["type"], "ephemeral");
        assert_eq!(body["messages"][0]["role"], "user");
        assert_eq!(body["messages"][1]["content"], "hello");
        assert_eq!(body["messages"][2]["content"][0]["type"], "image");
        assert_eq!(body["messages"][2]["content"][1]["text"], "and now?");
    }
}
