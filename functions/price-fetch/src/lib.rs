//! `price-fetch`: the scheduled price fetcher.
//!
//! EventBridge Scheduler invokes it every five minutes with the input the
//! template sets: the schedule's own `scheduled_time` and `execution_id`
//! (context attributes Scheduler fills in). Each run asks the providers in
//! priority order (with breakers and the outlier guard, see
//! `shared::prices::failover`) for every configured metal and currency, and
//! writes the latest quote and a history point. A run where every provider
//! fails writes nothing and returns an error, so the error alarm counts it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use shared::aws::SdkConfig;
use shared::aws::prices::DynamoPrices;
use shared::aws::secrets::SecretsManager;
use shared::config::{ConfigError, Env};
use shared::prices::failover::fetch_round;
use shared::prices::providers::Provider;
use shared::prices::settings::PriceSettings;
use shared::secrets::CachedSecret;
use shared::telemetry::{MetricUnit, Metrics};

pub const FUNCTION: &str = "price-fetch";

#[derive(Debug, Clone)]
pub struct Config {
    pub prices_table: String,
    pub provider_keys_secret: String,
    pub settings: PriceSettings,
    /// `HISTORY_RETENTION_DAYS` (default 400).
    pub retention: TimeDelta,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            settings: PriceSettings::from_env(env)?,
            retention: TimeDelta::days(env.parse_or("HISTORY_RETENTION_DAYS", 400)?),
        })
    }
}

/// Clients, built once per cold start.
pub struct Fetcher {
    config: Config,
    http: reqwest::Client,
    prices: DynamoPrices,
    keys: Arc<CachedSecret>,
}

impl Fetcher {
    pub fn new(config: Config, aws: &SdkConfig) -> Self {
        Self {
            http: reqwest::Client::builder()
                .user_agent(concat!("ingot/", env!("CARGO_PKG_VERSION")))
                .build()
                .unwrap_or_default(),
            prices: DynamoPrices::new(aws_sdk_dynamodb::Client::new(aws), &config.prices_table),
            // Keys change rarely: read once per cold start, refreshed hourly.
            keys: Arc::new(CachedSecret::new(
                Arc::new(SecretsManager::new(aws_sdk_secretsmanager::Client::new(
                    aws,
                ))),
                &config.provider_keys_secret,
                Duration::from_secs(3600),
            )),
            config,
        }
    }

    async fn providers(&self) -> Result<Vec<Provider>, String> {
        let secret = self.keys.get().await.map_err(|e| e.to_string())?;
        self.config.settings.with_keys(secret.expose())
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

/// Why a run failed; its name is the `errorType` Lambda reports.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("provider keys: {0}")]
    Keys(String),
    #[error("prices table: {0}")]
    Store(#[from] shared::store::StoreError),
    #[error("every provider failed: {0}")]
    AllProvidersFailed(String),
}

impl From<FetchError> for lambda_runtime::Diagnostic {
    fn from(error: FetchError) -> Self {
        let error_type = match &error {
            FetchError::Keys(_) => "ProviderKeysUnavailable",
            FetchError::Store(_) => "PricesTableUnavailable",
            FetchError::AllProvidersFailed(_) => "AllProvidersFailed",
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
    fetcher: &Fetcher,
    event: LambdaEvent<ScheduledFetch>,
) -> Result<FetchReport, FetchError> {
    let ScheduledFetch {
        scheduled_time,
        execution_id,
    } = event.payload;
    let providers = fetcher.providers().await.map_err(FetchError::Keys)?;
    let config = &fetcher.config;
    let settings = &config.settings;
    let mut report = FetchReport {
        scheduled_time,
        execution_id,
        written: BTreeMap::new(),
        rejected_outliers: 0,
    };
    let mut failures = Vec::new();
    for currency in &settings.currencies {
        let mut last = BTreeMap::new();
        for metal in &settings.metals {
            if let Some(q) = fetcher.prices.latest(*metal, currency).await? {
                last.insert(*metal, q.price);
            }
        }
        let round = fetch_round(
            &fetcher.http,
            &providers,
            &fetcher.prices,
            &settings.policy,
            &settings.metals,
            currency,
            &last,
        )
        .await?;
        for attempt in &round.attempts {
            let failed = attempt.outcome.is_err();
            if let Err(error) = &attempt.outcome {
                failures.push(format!("{}: {error}", attempt.provider.name()));
            }
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
        for (provider, reason) in &round.skipped {
            tracing::info!(provider = provider.name(), reason, "provider skipped");
        }
        for quote in &round.rejected {
            tracing::warn!(metal = %quote.metal, currency = %quote.currency, provider = quote.provider, price = quote.price, "outlier rejected: no second provider confirmed it");
        }
        report.rejected_outliers += round.rejected.len();
        for quote in round.accepted.values() {
            fetcher.prices.record(quote, config.retention).await?;
            report.written.insert(
                format!("{}/{}", quote.metal, quote.currency),
                quote.provider.clone(),
            );
        }
    }
    Metrics::new()
        .dimension("Function", FUNCTION)
        .value(
            "QuotesWritten",
            MetricUnit::Count,
            report.written.len() as f64,
        )
        .emit();
    if report.written.is_empty() {
        let reason = if failures.is_empty() {
            "no provider is configured or every circuit is open".to_owned()
        } else {
            failures.join("; ")
        };
        tracing::error!(reason, "every provider failed; nothing written");
        return Err(FetchError::AllProvidersFailed(reason));
    }
    tracing::info!(written = ?report.written, "prices fetched");
    Ok(report)
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
