//! From Anthropic's stream to Ingot's: which upstream events become which
//! client events, and what the request used.
//!
//! Client events, in order: `stream_start`, `message_start`, one
//! `content_delta` per text delta (forwarded as it arrives, never
//! buffered), then `stream_complete` or `stream_error`. Usage is what the
//! stream itself reported: `message_start` gives input and cache tokens,
//! each `message_delta` the cumulative totals so far, so the last values
//! win and nothing is added twice.

use serde::Serialize;
use serde_json::json;

use super::anthropic::UpstreamEvent;
use super::settings::Usage;

/// An SSE comment: keeps proxies and clients from timing out a silent stream.
pub const KEEP_ALIVE: &str = ": keep-alive\n\n";

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum ClientEvent {
    StreamStart {
        request_id: String,
        conversation_id: String,
        model: String,
    },
    MessageStart {
        message_id: String,
    },
    ContentDelta {
        text: String,
    },
    StreamComplete {
        usage: Usage,
        cost_usd: f64,
        latency_ms: u64,
        stop_reason: Option<String>,
    },
    StreamError {
        code: String,
        message: String,
    },
}

impl ClientEvent {
    /// `event: <name>\ndata: <json>\n\n`.
    pub fn to_sse(&self) -> String {
        let value = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        let name = value["event"].as_str().unwrap_or("message");
        format!("event: {name}\ndata: {}\n\n", value["data"])
    }

    pub fn error(code: &str, message: impl Into<String>) -> Self {
        ClientEvent::StreamError {
            code: code.to_owned(),
            message: message.into(),
        }
    }
}

/// How a stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    Complete,
    /// Upstream sent an `error` event, or broke off: `(code, message)`.
    Failed(String, String),
    /// The client went away; the upstream request was dropped.
    Disconnected,
}

/// The state of one relayed stream.
#[derive(Debug, Default)]
pub struct Relay {
    usage: Usage,
    /// Whether a `message_delta` has reported output tokens.
    output_reported: bool,
    started: bool,
    stop_reason: Option<String>,
    text: String,
    ending: Option<Ending>,
}

impl Relay {
    /// Takes one upstream event; returns what to send the client, if anything.
    pub fn on(&mut self, event: UpstreamEvent) -> Option<ClientEvent> {
        if self.ending.is_some() {
            return None;
        }
        match event {
            UpstreamEvent::MessageStart { id, usage, .. } => {
                self.started = true;
                self.usage = usage;
                Some(ClientEvent::MessageStart { message_id: id })
            }
            UpstreamEvent::TextDelta(text) => {
                self.text.push_str(&text);
                Some(ClientEvent::ContentDelta { text })
            }
            UpstreamEvent::MessageDelta { stop_reason, usage } => {
                self.output_reported |= usage.output_tokens.is_some();
                usage.apply(&mut self.usage);
                if stop_reason.is_some() {
                    self.stop_reason = stop_reason;
                }
                None
            }
            UpstreamEvent::MessageStop => {
                self.ending = Some(Ending::Complete);
                None
            }
            UpstreamEvent::Error { kind, message } => {
                let code = if kind == "overloaded_error" {
                    "upstream_overloaded"
                } else {
                    "upstream_error"
                };
                let event = ClientEvent::error(code, &message);
                self.ending = Some(Ending::Failed(code.to_owned(), message));
                Some(event)
            }
            UpstreamEvent::Other => None,
        }
    }

    /// The upstream body ended (or the client left) before `message_stop`.
    pub fn cut_short(&mut self, ending: Ending) -> Option<ClientEvent> {
        if self.ending.is_some() {
            return None;
        }
        let event = match &ending {
            Ending::Failed(code, message) => Some(ClientEvent::error(code, message)),
            _ => None,
        };
        self.ending = Some(ending);
        event
    }

    pub fn ending(&self) -> Option<&Ending> {
        self.ending.as_ref()
    }

    /// Whether upstream accepted the request (`message_start` seen): only
    /// then is there usage to record.
    pub fn started(&self) -> bool {
        self.started
    }

    /// What the request used. A stream cut short before any `message_delta`
    /// reported output has its output estimated from the text it streamed
    /// (about four characters per token), so a reply the client received is
    /// never nearly free.
    pub fn usage(&self) -> Usage {
        let mut usage = self.usage;
        if !self.output_reported && self.ending != Some(Ending::Complete) {
            let estimate = self.text.chars().count().div_ceil(4) as u64;
            usage.output_tokens = usage.output_tokens.max(estimate);
        }
        usage
    }

    pub fn stop_reason(&self) -> Option<&str> {
        self.stop_reason.as_deref()
    }

    /// The reply so far (kept for the conversation history).
    pub fn text(&self) -> &str {
        &self.text
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::anthropic::PartialUsage;

    fn start(input: u64) -> UpstreamEvent {
        UpstreamEvent::MessageStart {
            id: "msg_1".to_owned(),
            model: "m".to_owned(),
            usage: Usage {
                input_tokens: input,
                output_tokens: 1,
                ..Usage::default()
            },
        }
    }

    fn delta(output: u64, stop: Option<&str>) -> UpstreamEvent {
        UpstreamEvent::MessageDelta {
            stop_reason: stop.map(str::to_owned),
            usage: PartialUsage {
                output_tokens: Some(output),
                ..PartialUsage::default()
            },
        }
    }

    #[test]
    fn forwards_text_and_takes_final_cumulative_usage() {
        let mut relay = Relay::default();
        assert_eq!(
            relay.on(start(20)),
            Some(ClientEvent::MessageStart {
                message_id: "msg_1".to_owned()
            })
        );
        assert_eq!(
            relay.on(UpstreamEvent::TextDelta("Hi".to_owned())),
            Some(ClientEvent::ContentDelta {
                text: "Hi".to_owned()
            })
        );
        assert_eq!(relay.on(UpstreamEvent::Other), None);
        assert_eq!(relay.on(delta(7, None)), None);
        assert_eq!(relay.on(delta(12, Some("end_turn"))), None);
        assert_eq!(relay.on(UpstreamEvent::MessageStop), None);
        assert_eq!(relay.ending(), Some(&Ending::Complete));
        assert_eq!(relay.usage().output_tokens, 12);
        assert_eq!(relay.usage().input_tokens, 20);
        assert_eq!(relay.stop_reason(), Some("end_turn"));
        assert_eq!(relay.text(), "Hi");
    }

    #[test]
    fn a_mid_stream_error_ends_the_stream_keeping_partial_usage() {
        let mut relay = Relay::default();
        relay.on(start(20));
        relay.on(delta(3, None));
        let event = relay.on(UpstreamEvent::Error {
            kind: "overloaded_error".to_owned(),
            message: "Overloaded".to_owned(),
        });
        assert_eq!(
            event,
            Some(ClientEvent::error("upstream_overloaded", "Overloaded"))
        );
        assert_eq!(relay.on(UpstreamEvent::TextDelta("late".to_owned())), None);
        assert!(relay.started());
        assert_eq!(relay.usage().output_tokens, 3);
    }

    #[test]
    fn an_early_end_is_an_error_but_a_disconnect_is_silent() {
        let mut relay = Relay::default();
        relay.on(start(5));
        let cut = relay.cut_short(Ending::Failed(
            "upstream_incomplete".to_owned(),
            "the reply was cut off".to_owned(),
        ));
        assert!(matches!(cut, Some(ClientEvent::StreamError { .. })));

        let mut relay = Relay::default();
        assert_eq!(relay.cut_short(Ending::Disconnected), None);
        assert!(!relay.started());
    }

    #[test]
    fn a_stream_cut_before_any_output_report_estimates_the_output() {
        let mut relay = Relay::default();
        relay.on(start(5));
        relay.on(UpstreamEvent::TextDelta("x".repeat(400)));
        relay.cut_short(Ending::Disconnected);
        assert_eq!(relay.usage().output_tokens, 100);

        let mut relay = Relay::default();
        relay.on(start(5));
        relay.on(UpstreamEvent::TextDelta("x".repeat(400)));
        relay.on(delta(120, None));
        relay.cut_short(Ending::Disconnected);
        assert_eq!(relay.usage().output_tokens, 120, "a reported count wins");
    }

    #[test]
    fn renders_server_sent_events() {
        let event = ClientEvent::ContentDelta {
            text: "a\nb".to_owned(),
        };
        assert_eq!(
            event.to_sse(),
            "event: content_delta\ndata: {\"text\":\"a\\nb\"}\n\n"
        );
    }
}
