//! `price-fetch`: the scheduled price fetcher.
//!
//! EventBridge Scheduler invokes it every five minutes with the input the
//! template sets: the schedule's own `scheduled_time` and `execution_id`
//! (context attributes Scheduler fills in). Each run is one
//! [`PriceFetcher::run`] (`shared::prices::fetch`: providers in priority
//! order with breakers and the outlier guard, every configured metal and
//! currency, latest and history written); this crate wires its edges,
//! reports each provider attempt as metrics, and returns what was written.
//! A run where every provider fails writes nothing and returns an error, so
//! the error alarm counts it.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use shared::aws::SdkConfig;
use shared::aws::prices::DynamoPrices;
use shared::aws::secrets::SecretsManager;
use shared::clock::SystemClock;
use shared::config::{ConfigError, Env};
use shared::prices::fetch::{FetchRun, PriceFetcher};
use shared::prices::settings::PriceSettings;
use shared::prices::upstream::HttpQuotes;
use shared::prices::{PriceEdges, PriceError};
use shared::telemetry::{MetricUnit, Metrics};

pub const FUNCTION: &str = "price-fetch";

#[derive(Debug, Clone)]
pub struct Config {
    pub prices_table: String,
    pub provider_keys_secret: String,
    /// Providers, metals, currencies, policy and `HISTORY_RETENTION_DAYS`.
    pub settings: PriceSettings,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            settings: PriceSettings::from_env(env)?,
        })
    }
}

/// The fetcher as deployed, built once per cold start: DynamoDB, Secrets
/// Manager and the providers' HTTP APIs.
pub fn fetcher(config: &Config, aws: &SdkConfig) -> PriceFetcher {
    let prices = Arc::new(DynamoPrices::new(
        aws_sdk_dynamodb::Client::new(aws),
        &config.prices_table,
    ));
    let edges = PriceEdges {
        store: prices.clone(),
        breakers: prices,
        quotes: Arc::new(HttpQuotes::new(config.settings.policy.timeout)),
        secrets: Arc::new(SecretsManager::new(aws_sdk_secretsmanager::Client::new(
            aws,
        ))),
        clock: Arc::new(SystemClock),
    };
    PriceFetcher::new(config.settings.clone(), edges, &config.provider_keys_secret)
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

/// Why a run failed; its `errorType` is what Lambda reports.
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct FetchError(#[from] pub PriceError);

impl From<FetchError> for lambda_runtime::Diagnostic {
    fn from(FetchError(error): FetchError) -> Self {
        let error_type = match &error {
            PriceError::Keys(_) | PriceError::BadKeys => "ProviderKeysUnavailable",
            PriceError::Store(_) => "PricesTableUnavailable",
            PriceError::AllProvidersFailed(_) => "AllProvidersFailed",
            // The read API's refusals; a run never meets them.
            PriceError::Invalid(_)
            | PriceError::Range(_)
            | PriceError::NotConfigured(_)
            | PriceError::Provider { .. }
            | PriceError::RateLimited { .. } => "PriceFetchFailed",
        };
        Self {
            error_type: error_type.to_owned(),
            error_message: error.to_string(),
        }
    }
}

/// What one run did; returned to the invoker.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FetchReport {
    pub scheduled_time: DateTime<Utc>,
    pub execution_id: String,
    /// `metal/currency → provider` of every quote written.
    pub written: BTreeMap<String, String>,
    pub rejected_outliers: usize,
}

pub async fn handle(
    fetcher: &PriceFetcher,
    event: LambdaEvent<ScheduledFetch>,
) -> Result<FetchReport, FetchError> {
    let ScheduledFetch {
        scheduled_time,
        execution_id,
    } = event.payload;
    let run = fetcher.run().await?;
    emit_metrics(&run);
    let run = run.require_quotes()?;
    let report = FetchReport {
        scheduled_time,
        execution_id,
        written: run
            .written
            .iter()
            .map(|q| (format!("{}/{}", q.metal, q.currency), q.provider.clone()))
            .collect(),
        rejected_outliers: run.rejected_outliers(),
    };
    tracing::info!(written = ?report.written, "prices fetched");
    Ok(report)
}

/// Per provider attempt: `ProviderAttempts`, `ProviderFailures`,
/// `ProviderLatency`; per run: `QuotesWritten`.
fn emit_metrics(run: &FetchRun) {
    for attempt in run.attempts() {
        let failed = attempt.outcome.is_err();
        Metrics::new()
            .dimension("Provider", attempt.provider.name())
            .value("ProviderAttempts", MetricUnit::Count, 1.0)
            .value(
                "ProviderFailures",
                MetricUnit::Count,
                f64::from(u8::from(failed)),
            )
            .value(
                "ProviderLatency",
                MetricUnit::Milliseconds,
                attempt.latency.as_secs_f64() * 1000.0,
            )
            .emit();
    }
    Metrics::new()
        .dimension("Function", FUNCTION)
        .value("QuotesWritten", MetricUnit::Count, run.written.len() as f64)
        .emit();
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
