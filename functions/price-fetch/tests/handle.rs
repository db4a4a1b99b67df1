//! `price-fetch`'s handler through memory doubles of its store, breakers,
//! providers, keys secret and clock: no emulator. tests/prices.rs drives it
//! against the emulator and stub providers.

use std::sync::Arc;

use chrono::TimeDelta;
use lambda_runtime::LambdaEvent;
use price_fetch::{Config, Fetch, FetchError, FetchReport, ScheduledFetch, handle};
use shared::clock::Clock;
use shared::config::Env;
use shared::metering::alerts::{MemoryAlertQueue, MemoryAlerts};
use shared::metering::tenants::{ApiKey, MemoryTenants, NewTenant, TenantStore};
use shared::prices::MemoryEdges;
use shared::prices::alerts::{MemoryPriceAlerts, NewPriceAlert, PriceAlerts, register};
use shared::prices::fetch::PriceFetcher;
use shared::prices::providers::ProviderError;
use shared::prices::providers::ProviderId::{GoldApiCom, MetalPriceApi, MetalsDev};
use shared::prices::store::PriceStore;
use shared::prices::types::{Currency, Metal};

struct World {
    doubles: MemoryEdges,
    config: Config,
    alerts: Arc<MemoryPriceAlerts>,
    tenants: Arc<MemoryTenants>,
    deliveries: Arc<MemoryAlerts>,
    queue: Arc<MemoryAlertQueue>,
}

/// Default settings with history kept 30 days; metals.dev and
/// metalpriceapi have keys; metals.dev quotes 2650, metalpriceapi 2651.
fn world() -> World {
    let env = Env::from_pairs([
        ("PRICES_TABLE", "prices"),
        ("PROVIDER_KEYS_SECRET", "keys"),
        ("HISTORY_RETENTION_DAYS", "30"),
        ("TENANTS_TABLE", "tenants"),
        ("USAGE_TABLE", "usage"),
        ("ALERTS_QUEUE_URL", "http://alerts"),
    ]);
    let doubles = MemoryEdges::new("keys", r#"{"metals.dev": "k1", "metalpriceapi": "k2"}"#);
    doubles.quotes.quote(MetalsDev, 2650.0);
    doubles.quotes.quote(MetalPriceApi, 2651.0);
    World {
        doubles,
        config: Config::from_env(&env).unwrap(),
        alerts: Arc::default(),
        tenants: Arc::default(),
        deliveries: Arc::default(),
        queue: Arc::default(),
    }
}

impl World {
    async fn run(&self) -> Result<FetchReport, FetchError> {
        let settings = self.config.settings.clone();
        let fetch = Fetch {
            fetcher: PriceFetcher::new(settings, self.doubles.edges(), "keys"),
            alerts: self.alerts.clone(),
            tenants: self.tenants.clone(),
            deliveries: self.deliveries.clone(),
            queue: self.queue.clone(),
            hysteresis_percent: self.config.hysteresis_percent,
        };
        let event = ScheduledFetch {
            scheduled_time: self.doubles.clock.now(),
            execution_id: "run-1".into(),
        };
        handle(&fetch, LambdaEvent::new(event, Default::default())).await
    }
}

fn error_type(error: FetchError) -> String {
    lambda_runtime::Diagnostic::from(error).error_type
}

#[tokio::test]
async fn writes_every_metal_from_the_first_provider_for_the_configured_retention() {
    let w = world();
    let report = w.run().await.unwrap();
    assert_eq!(report.execution_id, "run-1");
    assert_eq!(
        report.written.keys().collect::<Vec<_>>(),
        ["gold/USD", "palladium/USD", "platinum/USD", "silver/USD"]
    );
    assert!(report.written.values().all(|p| p == "metals.dev"));
    assert_eq!(w.doubles.quotes.calls(MetalPriceApi), 0);
    let gold = w
        .doubles
        .store
        .latest(Metal::Gold, &Currency::usd())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(gold.price, 2650.0);
    assert_eq!(
        w.doubles.store.expires_at(&gold),
        Some(gold.ts + TimeDelta::days(30))
    );
}

#[tokio::test]
async fn a_failing_first_provider_fails_over_to_the_next() {
    let w = world();
    w.doubles.quotes.fail(
        MetalsDev,
        ProviderError::Upstream("Invalid API Key.".into()),
    );
    let report = w.run().await.unwrap();
    assert_eq!(report.written.len(), 4);
    assert!(
        report.written.values().all(|p| p == "metalpriceapi"),
        "{report:?}"
    );
    assert_eq!(
        (
            w.doubles.quotes.calls(MetalsDev),
            w.doubles.quotes.calls(MetalPriceApi)
        ),
        (1, 1)
    );
}

#[tokio::test]
async fn an_unconfirmed_outlier_is_counted_and_not_written() {
    let w = world();
    w.run().await.unwrap();
    w.doubles.quotes.quote(MetalsDev, 3000.0);
    w.doubles.quotes.quote(MetalPriceApi, 2652.0);
    let report = w.run().await.unwrap();
    assert_eq!(report.rejected_outliers, 4);
    assert!(report.written.values().all(|p| p == "metalpriceapi"));
}

#[tokio::test]
async fn when_every_provider_fails_nothing_is_written_and_the_run_fails_saying_why() {
    let w = world();
    w.doubles.quotes.fail(MetalsDev, ProviderError::Status(500));
    w.doubles
        .quotes
        .fail(MetalPriceApi, ProviderError::Status(500));
    w.doubles
        .quotes
        .fail(GoldApiCom, ProviderError::Status(500));
    let error = w.run().await.unwrap_err();
    assert_eq!(
        error.to_string(),
        "every provider failed: metals.dev: answered HTTP 500; \
         metalpriceapi: answered HTTP 500; gold-api.com: answered HTTP 500"
    );
    assert!(
        !error.to_string().contains("k1"),
        "keys never appear in errors"
    );
    assert_eq!(error_type(error), "AllProvidersFailed");
    let gold = w
        .doubles
        .store
        .latest(Metal::Gold, &Currency::usd())
        .await
        .unwrap();
    assert!(gold.is_none());
}

#[tokio::test]
async fn unreadable_provider_keys_fail_the_run() {
    let mut w = world();
    w.doubles.secrets = Arc::default();
    let error = w.run().await.unwrap_err();
    assert!(error.to_string().starts_with("provider keys: "), "{error}");
    assert_eq!(error_type(error), "ProviderKeysUnavailable");
}

#[tokio::test]
async fn an_unreachable_prices_table_fails_the_run() {
    let w = world();
    w.doubles.store.outage.begin();
    let error = w.run().await.unwrap_err();
    assert!(error.to_string().starts_with("prices table: "), "{error}");
    assert_eq!(error_type(error), "PricesTableUnavailable");
}

/// A tenant's "gold above 2,600" fires once when a run finds gold at 2,650,
/// queued for delivery with its webhook; the next run, still above, does not
/// fire it again.
#[tokio::test]
async fn a_price_alert_fires_once_per_crossing_after_the_fetch() {
    let w = world();
    let tenant = serde_json::from_value::<NewTenant>(serde_json::json!({
        "name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"}))
    .unwrap()
    .into_tenant(w.doubles.clock.now())
    .unwrap();
    w.tenants
        .create(&tenant, &ApiKey::generate().hash())
        .await
        .unwrap();
    let new: NewPriceAlert = serde_json::from_value(serde_json::json!({
        "metal": "gold", "direction": "above", "price": 2600, "webhook": "https://hooks.example/gold"}))
    .unwrap();
    let alert = register(
        w.alerts.as_ref(),
        &tenant.id,
        new,
        &w.config.settings,
        w.doubles.clock.now(),
    )
    .await
    .unwrap();
    assert_eq!(w.run().await.unwrap().alerts_fired, 1);
    assert_eq!(w.run().await.unwrap().alerts_fired, 0);
    assert_eq!(w.queue.take(), [alert.crossing_key(1)]);
    let delivery = &w.deliveries.all()[0];
    assert_eq!(delivery.pending, ["https://hooks.example/gold"]);
    let stored = w.alerts.list(&tenant.id).await.unwrap();
    assert_eq!((stored[0].armed, stored[0].fired), (false, 1));
}
