//! Chat usage as metering events, and back.
//!
//! A request becomes up to four events, one per kind of token it used
//! (features `chat:<model>:input|output|cache_write|cache_read`), with ids
//! derived from the request id: sending them twice counts them once. The
//! period's per-feature totals then give the user's current usage, the
//! request count (every request that reached the model has uncached input:
//! the new message itself) and the cost.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::settings::{ModelPrice, Usage, round_usd};
use crate::metering::types::{EventId, Feature, Tokens, UsageEvent};

const KINDS: [&str; 4] = ["input", "output", "cache_write", "cache_read"];

fn by_kind(usage: &Usage) -> [u64; 4] {
    [
        usage.input_tokens,
        usage.output_tokens,
        usage.cache_creation_input_tokens,
        usage.cache_read_input_tokens,
    ]
}

/// The metering events of one request; kinds with no tokens are left out.
pub fn usage_events(
    request_id: &str,
    model: &str,
    usage: &Usage,
    at: DateTime<Utc>,
) -> Vec<UsageEvent> {
    KINDS
        .iter()
        .zip(by_kind(usage))
        .filter_map(|(kind, tokens)| {
            Some(UsageEvent {
                id: EventId::try_from(format!("chat:{request_id}:{kind}")).ok()?,
                feature: Feature::try_from(format!("chat:{model}:{kind}")).ok()?,
                tokens: Tokens::try_from(tokens).ok()?,
                timestamp: at,
                properties: serde_json::Map::new(),
            })
        })
        .collect()
}

/// A user's chat usage in one period, from the period's feature totals.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ChatTotals {
    pub usage: Usage,
    pub requests: u64,
    pub cost_usd: f64,
    /// Share of prompt tokens read from the cache.
    pub cache_hit_rate: f64,
    pub cache_savings_usd: f64,
}

/// Sums `(feature, tokens, events)` rows of chat features; models missing
/// from the price table count as tokens but add no cost.
pub fn totals(
    features: &[(String, u64, u64)],
    prices: &BTreeMap<String, ModelPrice>,
) -> ChatTotals {
    let mut per_model: BTreeMap<&str, Usage> = BTreeMap::new();
    let mut requests = 0;
    for (feature, tokens, events) in features {
        let Some((model, kind)) = feature
            .strip_prefix("chat:")
            .and_then(|rest| rest.rsplit_once(':'))
        else {
            continue;
        };
        let usage = per_model.entry(model).or_default();
        match kind {
            "input" => {
                usage.input_tokens += tokens;
                requests += events;
            }
            "output" => usage.output_tokens += tokens,
            "cache_write" => usage.cache_creation_input_tokens += tokens,
            "cache_read" => usage.cache_read_input_tokens += tokens,
            _ => {}
        }
    }
    let mut totals = ChatTotals {
        requests,
        ..ChatTotals::default()
    };
    for (model, usage) in &per_model {
        if let Some(price) = prices.get(*model) {
            totals.cost_usd += price.cost_usd(usage);
            totals.cache_savings_usd += price.cache_savings_usd(usage.cache_read_input_tokens);
        }
        totals.usage.input_tokens += usage.input_tokens;
        totals.usage.output_tokens += usage.output_tokens;
        totals.usage.cache_creation_input_tokens += usage.cache_creation_input_tokens;
        totals.usage.cache_read_input_tokens += usage.cache_read_input_tokens;
    }
    let prompt = totals.usage.input_tokens
        + totals.usage.cache_creation_input_tokens
        + totals.usage.cache_read_input_tokens;
    if prompt > 0 {
        totals.cache_hit_rate =
            (totals.usage.cache_read_input_tokens as f64 / prompt as f64 * 10_000.0).round()
                / 10_000.0;
    }
    totals.cost_usd = round_usd(totals.cost_usd);
    totals.cache_savings_usd = round_usd(totals.cache_savings_usd);
    totals
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::settings::ChatSettings;
    use crate::config::Env;

    fn usage() -> Usage {
        Usage {
            input_tokens: 30,
            output_tokens: 200,
            cache_creation_input_tokens: 0,
            cache_read_input_tokens: 1_000,
        }
    }

    #[test]
    fn one_event_per_kind_used_with_ids_from_the_request() {
        let at = Utc::now();
        let events = usage_events("req-1", "claude-sonnet-4-5", &usage(), at);
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "chat:req-1:input",
                "chat:req-1:output",
                "chat:req-1:cache_read"
            ]
        );
        assert_eq!(events[1].feature.as_str(), "chat:claude-sonnet-4-5:output");
        assert_eq!(events[1].tokens.get(), 200);
        assert_eq!(
            usage_events("req-1", "claude-sonnet-4-5", &usage(), at),
            events
        );
    }

    #[test]
    fn totals_add_up_per_model_and_price_each() {
        let prices = ChatSettings::from_env(&Env::default()).unwrap().models;
        let rows = vec![
            ("chat:claude-sonnet-4-5:input".to_owned(), 60, 2),
            ("chat:claude-sonnet-4-5:output".to_owned(), 400, 2),
            ("chat:claude-sonnet-4-5:cache_read".to_owned(), 2_000, 2),
            ("chat:claude-haiku-4-5:input".to_owned(), 40, 1),
            ("chat:claude-haiku-4-5:cache_write".to_owned(), 1_000, 1),
            ("api_calls".to_owned(), 5, 5),
        ];
        let t = totals(&rows, &prices);
        assert_eq!(t.requests, 3);
        assert_eq!(t.usage.input_tokens, 100);
        assert_eq!(t.usage.cache_read_input_tokens, 2_000);
        // sonnet: 60×3 + 400×15 + 2000×0.3 = 6,780 µ$; haiku: 40×1 + 1000×1.25 = 1,290 µ$
        assert_eq!(t.cost_usd, 0.00807);
        assert_eq!(t.cache_savings_usd, 0.0054);
        assert_eq!(t.cache_hit_rate, 0.6452); // 2000 of 3100 prompt tokens
    }
}
