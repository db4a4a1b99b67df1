//! `price-fetch`: the scheduled price fetcher.
//!
//! EventBridge Scheduler invokes it every five minutes with the input the
//! template sets: the schedule's own `scheduled_time` and `execution_id`
//! (context attributes Scheduler fills in), so every run knows which slot it
//! serves even when retried late. Fetching builds on this entry point.

use chrono::{DateTime, Utc};
use lambda_runtime::{Error, LambdaEvent};
use serde::{Deserialize, Serialize};
use shared::config::{ConfigError, Env, Upstream};

pub const FUNCTION: &str = "price-fetch";

#[derive(Debug, Clone)]
pub struct Config {
    pub prices_table: String,
    pub provider_keys_secret: String,
    /// Base URL of each price provider, in priority order.
    pub providers: Vec<(Upstream, String)>,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            providers: Upstream::PRICE_PROVIDERS
                .into_iter()
                .map(|p| Ok((p, env.upstream(p)?)))
                .collect::<Result<_, ConfigError>>()?,
        })
    }
}

/// The scheduled event. `time` is accepted too, so a classic EventBridge rule
/// (`{"time": ..., "id": ...}`) works as a trigger as well.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ScheduledFetch {
    #[serde(alias = "time")]
    pub scheduled_time: DateTime<Utc>,
    #[serde(alias = "id")]
    pub execution_id: String,
}

/// What one run did; returned to the invoker (and visible in `cargo lambda invoke`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FetchReport {
    pub scheduled_time: DateTime<Utc>,
    pub execution_id: String,
}

pub async fn handle(event: LambdaEvent<ScheduledFetch>) -> Result<FetchReport, Error> {
    let ScheduledFetch {
        scheduled_time,
        execution_id,
    } = event.payload;
    tracing::info!(%scheduled_time, execution_id, "scheduled fetch");
    Ok(FetchReport {
        scheduled_time,
        execution_id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_scheduler_input_from_the_template() {
        let raw = include_str!("../../../events/price-fetch-schedule.json");
        let event: ScheduledFetch = serde_json::from_str(raw).unwrap();
        assert_eq!(
            event.scheduled_time.to_rfc3339(),
            "2026-11-22T10:05:00+00:00"
        );
        assert_eq!(event.execution_id, "5d0b3e3c-6a4b-4a7e-9d35-3f3c1b1f7e10");
    }

    #[test]
    fn parses_a_classic_eventbridge_rule_event() {
        let raw = r#"{"version":"0","id":"abc","detail-type":"Scheduled Event","source":"aws.events",
            "time":"2026-11-22T10:05:00Z","region":"us-east-1","resources":[],"detail":{}}"#;
        let event: ScheduledFetch = serde_json::from_str(raw).unwrap();
        assert_eq!(event.execution_id, "abc");
    }

    #[test]
    fn rejects_an_event_without_a_time() {
        assert!(serde_json::from_str::<ScheduledFetch>(r#"{"execution_id":"x"}"#).is_err());
    }
}
