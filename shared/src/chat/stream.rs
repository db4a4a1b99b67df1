//! The streaming half of a chat request: one task reads the model's stream
//! and writes ours into a channel that is the response body.
//!
//! The task owns the upstream stream, so when the client goes away (the
//! body, and with it the channel's receiver, is dropped) it notices at once
//! (`closed()`), drops the upstream request — which cancels it — and still
//! records the usage the stream reported so far. Usage is recorded (and the
//! budget reservation settled to it) before `stream_complete` is sent and
//! before the body ends, so the invocation never finishes with usage
//! unwritten.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::FUNCTION;
use super::accounting::usage_events;
use super::admission::Admitted;
use super::anthropic::{SseParser, UpstreamEvent};
use super::budget::Budget;
use super::history::{Role, Turn};
use super::relay::{ClientEvent, Ending, KEEP_ALIVE, Relay};
use super::settings::{ChatSettings, Usage};
use super::store::{ChatStore, UsageRecord};
use super::upstream::ReplyStream;
use crate::backoff::jittered;
use crate::metering::ingest::{EventSink, pack};
use crate::metering::types::TenantId;
use crate::telemetry::{MetricUnit, Metrics};

/// Sending the usage events to the queue: attempts before giving up (and
/// logging them for replay).
const QUEUE_ATTEMPTS: u32 = 3;

/// What a stream needs besides its request: where usage and history go,
/// prices, and how long upstream may stay silent.
#[derive(Clone)]
pub struct Streamer {
    pub chat: Arc<dyn ChatStore>,
    pub queue: Arc<dyn EventSink>,
    /// Settles each request's reservation to what it used.
    pub budget: Budget,
    pub settings: ChatSettings,
    /// A comment line is sent after this much upstream silence.
    pub keep_alive: Duration,
    /// Upstream silence after which the stream is abandoned.
    pub idle_timeout: Duration,
}

/// One admitted request on its way: who, what, and when it must end.
pub struct Exchange {
    pub admitted: Admitted,
    pub request_id: String,
    /// When the handler started (time to first token is measured from it).
    pub started: Instant,
    /// When the stream must end to leave time for recording its usage
    /// (the invocation's deadline less a margin); `None` outside Lambda.
    pub deadline: Option<Instant>,
}

/// Resolves at `deadline`, or never.
async fn until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// What relaying a stream leaves to record.
struct Relayed {
    relay: Relay,
    /// When the first text reached the client, from the handler's start.
    first_text: Option<Duration>,
    /// The early send of the prompt's usage, if upstream accepted it.
    prompt_queued: Option<tokio::task::JoinHandle<()>>,
}

/// Who and what the metering events of one request are for.
#[derive(Clone)]
struct Meter {
    request_id: String,
    model: String,
    tenant: TenantId,
    at: chrono::DateTime<chrono::Utc>,
}

async fn send(tx: &mpsc::Sender<Bytes>, text: String) -> bool {
    tx.send(Bytes::from(text)).await.is_ok()
}

impl Streamer {
    /// Queues the prompt's usage (input and cache tokens, final once
    /// `message_start` reports them) at once, in the background, so it is
    /// on the queue even if the invocation ends before the stream does.
    fn queue_prompt(&self, meter: &Meter, mut usage: Usage) -> tokio::task::JoinHandle<()> {
        usage.output_tokens = 0; // counted once, at the end
        let (streamer, meter) = (self.clone(), meter.clone());
        tokio::spawn(async move { streamer.queue_usage(&meter, &usage).await })
    }

    /// Relays `upstream` to `tx` as the client's events, then records what
    /// the exchange used, then (if it completed) says so to the client.
    pub async fn run(&self, exchange: Exchange, upstream: ReplyStream, tx: mpsc::Sender<Bytes>) {
        let meter = Meter {
            request_id: exchange.request_id.clone(),
            model: exchange.admitted.request.model.clone(),
            tenant: exchange.admitted.tenant.id.clone(),
            at: exchange.admitted.at,
        };
        let relayed = self.relay(&exchange, &meter, upstream, &tx).await;
        if let Some(complete) = self.finish(&exchange, &meter, relayed).await {
            send(&tx, complete.to_sse()).await;
        }
    }

    /// Client events out of upstream events until the stream ends, the
    /// client leaves, upstream falls silent or the deadline comes.
    async fn relay(
        &self,
        exchange: &Exchange,
        meter: &Meter,
        upstream: ReplyStream,
        tx: &mpsc::Sender<Bytes>,
    ) -> Relayed {
        let mut relay = Relay::default();
        let mut parser = SseParser::default();
        let mut first_text: Option<Duration> = None;

        let start = ClientEvent::StreamStart {
            request_id: exchange.request_id.clone(),
            conversation_id: exchange
                .admitted
                .request
                .conversation_id
                .as_str()
                .to_owned(),
            model: exchange.admitted.request.model.clone(),
        };
        if !send(tx, start.to_sse()).await {
            relay.cut_short(Ending::Disconnected);
        }

        let mut body = upstream;
        let mut silent = Duration::ZERO;
        let mut prompt_queued = None;
        let deadline = exchange.deadline.map(tokio::time::Instant::from_std);
        while relay.ending().is_none() {
            let mut out: Vec<ClientEvent> = Vec::new();
            tokio::select! {
                biased;
                () = tx.closed() => {
                    relay.cut_short(Ending::Disconnected);
                }
                () = until(deadline) => {
                    out.extend(relay.cut_short(Ending::Failed(
                        "deadline".to_owned(),
                        "the reply ran out of time".to_owned(),
                    )));
                }
                next = tokio::time::timeout(self.keep_alive, body.next()) => match next {
                    Err(_) => {
                        silent += self.keep_alive;
                        if silent >= self.idle_timeout {
                            out.extend(relay.cut_short(Ending::Failed(
                                "upstream_timeout".to_owned(),
                                "the model API stopped sending".to_owned(),
                            )));
                        } else if !send(tx, KEEP_ALIVE.to_owned()).await {
                            relay.cut_short(Ending::Disconnected);
                        }
                    }
                    Ok(None) => {
                        out.extend(relay.cut_short(Ending::Failed(
                            "upstream_incomplete".to_owned(),
                            "the model API ended the stream early".to_owned(),
                        )));
                    }
                    Ok(Some(Err(error))) => {
                        tracing::warn!(error, "upstream stream broke");
                        out.extend(relay.cut_short(Ending::Failed(
                            "upstream_interrupted".to_owned(),
                            "the connection to the model API broke".to_owned(),
                        )));
                    }
                    Ok(Some(Ok(bytes))) => {
                        silent = Duration::ZERO;
                        for frame in parser.push(&bytes) {
                            match UpstreamEvent::parse(&frame) {
                                Some(event) => {
                                    let was_started = relay.started();
                                    out.extend(relay.on(event));
                                    if !was_started && relay.started() {
                                        prompt_queued = Some(self.queue_prompt(meter, relay.usage()));
                                    }
                                }
                                None => tracing::debug!(event = ?frame.event, "skipped an unreadable upstream event"),
                            }
                        }
                    }
                }
            }
            for event in out {
                if first_text.is_none() && matches!(event, ClientEvent::ContentDelta { .. }) {
                    first_text = Some(exchange.started.elapsed());
                }
                if !send(tx, event.to_sse()).await {
                    relay.cut_short(Ending::Disconnected);
                    break;
                }
            }
        }
        // Dropping the upstream body closes its connection: a disconnected
        // client's request stops generating (and costing) tokens here.
        drop(body);
        Relayed {
            relay,
            first_text,
            prompt_queued,
        }
    }

    /// Records the exchange's usage (queue and usage record) and history,
    /// reports its metrics, and returns `stream_complete` if it completed.
    async fn finish(
        &self,
        exchange: &Exchange,
        meter: &Meter,
        relayed: Relayed,
    ) -> Option<ClientEvent> {
        let relay = &relayed.relay;
        let admitted = &exchange.admitted;
        let ending = relay.ending().cloned().unwrap_or(Ending::Disconnected);
        let model = &admitted.request.model;
        let usage = relay.usage();
        let cost_usd = self
            .settings
            .models
            .get(model)
            .map_or(0.0, |price| price.cost_usd(&usage));
        let latency_ms = exchange.started.elapsed().as_millis() as u64;
        let outcome = match &ending {
            Ending::Complete => "complete",
            Ending::Failed(..) => "error",
            Ending::Disconnected => "disconnected",
        };

        if let Some(prompt) = relayed.prompt_queued {
            // Finish the early send first: the final one repeats its ids.
            let _ = prompt.await;
        }
        let settled = self.budget.settle(&admitted.reservation, usage.total());
        if let Err(error) = settled.await {
            tracing::error!(%error, "could not settle the budget reservation; it stays held");
        }
        if relay.started() {
            let record = UsageRecord {
                request_id: exchange.request_id.clone(),
                conversation_id: admitted.request.conversation_id.as_str().to_owned(),
                model: model.clone(),
                usage,
                cost_usd,
                latency_ms,
                stop_reason: relay.stop_reason().map(str::to_owned),
                outcome: outcome.to_owned(),
                created_at: admitted.at,
            };
            let remember = async {
                if ending == Ending::Complete && !relay.text().is_empty() {
                    let exchange = [
                        &Turn::new(Role::User, admitted.request.message.as_str()),
                        &Turn::new(Role::Assistant, relay.text()),
                    ];
                    if let Err(error) = self
                        .chat
                        .append(
                            &admitted.subject,
                            admitted.request.conversation_id.as_str(),
                            exchange,
                            admitted.at,
                        )
                        .await
                    {
                        tracing::error!(%error, "could not store the exchange in the history");
                    }
                }
            };
            tokio::join!(
                self.record_usage(&admitted.subject, meter, &record),
                remember
            );
        }

        let mut metrics = Metrics::new()
            .dimension("Function", FUNCTION)
            .value("ChatRequests", MetricUnit::Count, 1.0)
            .value(
                "ChatInputTokens",
                MetricUnit::Count,
                usage.input_tokens as f64,
            )
            .value(
                "ChatOutputTokens",
                MetricUnit::Count,
                usage.output_tokens as f64,
            )
            .value(
                "ChatCacheReadTokens",
                MetricUnit::Count,
                usage.cache_read_input_tokens as f64,
            )
            .value(
                "ChatCacheWriteTokens",
                MetricUnit::Count,
                usage.cache_creation_input_tokens as f64,
            )
            .value("ChatCostUsd", MetricUnit::None, cost_usd)
            .value(
                "ChatStreamErrors",
                MetricUnit::Count,
                f64::from(u8::from(matches!(ending, Ending::Failed(..)))),
            );
        if let Some(ttft) = relayed.first_text {
            metrics = metrics.value(
                "ChatTimeToFirstTokenMs",
                MetricUnit::Milliseconds,
                ttft.as_secs_f64() * 1000.0,
            );
        }
        metrics.emit();
        tracing::info!(
            request_id = exchange.request_id,
            model,
            outcome,
            input_tokens = usage.input_tokens,
            output_tokens = usage.output_tokens,
            cache_read_tokens = usage.cache_read_input_tokens,
            cache_write_tokens = usage.cache_creation_input_tokens,
            cost_usd,
            latency_ms,
            "chat finished"
        );

        (ending == Ending::Complete).then(|| ClientEvent::StreamComplete {
            usage,
            cost_usd,
            latency_ms,
            stop_reason: relay.stop_reason().map(str::to_owned),
        })
    }

    /// The usage record (history) and the metering events (quota, rollups).
    async fn record_usage(&self, subject: &str, meter: &Meter, record: &UsageRecord) {
        let (stored, ()) = tokio::join!(
            self.chat.record_usage(subject, record),
            self.queue_usage(meter, &record.usage),
        );
        if let Err(error) = stored {
            tracing::error!(%error, request_id = record.request_id, "could not store the usage record");
        }
    }

    /// Queues the metering events of `usage`. Event ids come from the request
    /// id, so sending a kind again (the prompt's kinds are sent as soon as
    /// `message_start` says them) counts it once; if the queue stays down, the
    /// messages are logged whole so they can be replayed.
    async fn queue_usage(&self, meter: &Meter, usage: &Usage) {
        let events = usage_events(&meter.request_id, &meter.model, usage, meter.at);
        if events.is_empty() {
            return;
        }
        let bodies = pack(&meter.tenant, &events);
        let mut attempt = 0;
        let error = loop {
            match self.queue.send(&meter.tenant, &bodies).await {
                Ok(_) => return,
                Err(error) if attempt + 1 >= QUEUE_ATTEMPTS => break error,
                Err(_) => {
                    tokio::time::sleep(jittered(Duration::from_millis(100), attempt)).await;
                    attempt += 1;
                }
            }
        };
        tracing::error!(
            %error,
            request_id = meter.request_id,
            messages = ?bodies,
            "could not queue the chat usage events; replay these messages"
        );
        Metrics::new()
            .dimension("Function", FUNCTION)
            .value("ChatUsageUnqueued", MetricUnit::Count, events.len() as f64)
            .emit();
    }
}
