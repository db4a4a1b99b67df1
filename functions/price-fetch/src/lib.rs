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
//! the error alarm counts it. After the fetch, the price alerts on every
//! series with a new quote are evaluated (`shared::prices::alerts`); their
//! firings go onto the alerts queue, which `rollup` delivers.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use lambda_runtime::LambdaEvent;
use serde::{Deserialize, Serialize};
use shared::aws::Dynamo;
use shared::aws::SdkConfig;
use shared::aws::alerts::DynamoAlerts;
use shared::aws::prices::DynamoPrices;
use shared::aws::queue::SqsAlertQueue;
use shared::aws::secrets::SecretsManager;
use shared::aws::tenants::DynamoTenants;
use shared::clock::SystemClock;
use shared::config::{ConfigError, Env};
use shared::metering::alerts::{AlertQueue, AlertStore};
use shared::metering::tenants::TenantStore;
use shared::prices::alerts::{self, AlertEdges, PriceAlerts};
use shared::prices::fetch::{FetchRun, PriceFetcher};
use shared::prices::settings::PriceSettings;
use shared::prices::types::Quote;
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
    /// Price alerts' tenants (their signing secrets).
    pub tenants_table: String,
    /// Where firings are recorded, as quota alerts are.
    pub usage_table: String,
    pub alerts_queue_url: String,
    /// How far back past its threshold the price must go before a fired
    /// alert re-arms (`PRICE_ALERT_HYSTERESIS_PERCENT`, 0.5).
    pub hysteresis_percent: f64,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            settings: PriceSettings::from_env(env)?,
            tenants_table: env.required("TENANTS_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            alerts_queue_url: env.required("ALERTS_QUEUE_URL")?,
            hysteresis_percent: env.parse_or("PRICE_ALERT_HYSTERESIS_PERCENT", 0.5)?,
        })
    }
}

/// One run's work: the fetch, then the price alerts.
pub struct Fetch {
    pub fetcher: PriceFetcher,
    pub alerts: Arc<dyn PriceAlerts>,
    pub tenants: Arc<dyn TenantStore>,
    pub deliveries: Arc<dyn AlertStore>,
    pub queue: Arc<dyn AlertQueue>,
    pub hysteresis_percent: f64,
}

/// The run as deployed, built once per cold start: DynamoDB, SQS, Secrets
/// Manager and the providers' HTTP APIs.
pub fn fetcher(config: &Config, aws: &SdkConfig) -> Fetch {
    let dynamodb = Dynamo::new(aws);
    let prices = Arc::new(DynamoPrices::new(dynamodb.clone(), &config.prices_table));
    let edges = PriceEdges {
        store: prices.clone(),
        breakers: prices.clone(),
        quotes: Arc::new(HttpQuotes::new(config.settings.policy.timeout)),
        secrets: Arc::new(SecretsManager::new(aws_sdk_secretsmanager::Client::new(
            aws,
        ))),
        clock: Arc::new(SystemClock),
    };
    Fetch {
        fetcher: PriceFetcher::new(config.settings.clone(), edges, &config.provider_keys_secret),
        alerts: prices,
        tenants: Arc::new(DynamoTenants::new(dynamodb.clone(), &config.tenants_table)),
        deliveries: Arc::new(DynamoAlerts::new(dynamodb.sdk, &config.usage_table)),
        queue: Arc::new(SqsAlertQueue::new(
            aws_sdk_sqs::Client::new(aws),
            &config.alerts_queue_url,
        )),
        hysteresis_percent: config.hysteresis_percent,
    }
}

impl Fetch {
    /// Evaluates the alerts of every written quote's series; how many fired.
    async fn evaluate(&self, written: &[Quote]) -> Result<usize, PriceError> {
        let edges = AlertEdges {
            alerts: self.alerts.as_ref(),
            tenants: self.tenants.as_ref(),
            deliveries: self.deliveries.as_ref(),
            queue: self.queue.as_ref(),
        };
        let runs = written
            .iter()
            .map(|quote| alerts::evaluate(&edges, quote, self.hysteresis_percent));
        let mut fired = 0;
        for result in futures_util::future::join_all(runs).await {
            fired += result?;
        }
        Ok(fired)
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
            | PriceError::Alert(_)
            | PriceError::NoAlert(_)
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
    /// Price alerts that fired (each queued for delivery).
    pub alerts_fired: usize,
}

/// One scheduled run. Alerts are evaluated after the prices are written; a
/// failure there fails the run (Scheduler retries it; a crossing already
/// recorded is not recorded twice).
pub async fn handle(
    fetch: &Fetch,
    event: LambdaEvent<ScheduledFetch>,
) -> Result<FetchReport, FetchError> {
    let ScheduledFetch {
        scheduled_time,
        execution_id,
    } = event.payload;
    let run = fetch.fetcher.run().await?;
    emit_metrics(&run);
    let run = run.require_quotes()?;
    let alerts_fired = fetch.evaluate(&run.written).await?;
    let report = FetchReport {
        scheduled_time,
        execution_id,
        written: run
            .written
            .iter()
            .map(|q| (format!("{}/{}", q.metal, q.currency), q.provider.clone()))
            .collect(),
        rejected_outliers: run.rejected_outliers(),
        alerts_fired,
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
