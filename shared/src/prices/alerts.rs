//! Price alerts, which no provider offers: a tenant registers "gold above
//! 2,500 USD/toz" (or below) with a webhook, and is told once per crossing.
//!
//! After each scheduled fetch, the alerts on every series with a new quote
//! are evaluated ([`evaluate`]): an armed alert the price has reached fires
//! and disarms; a fired one re-arms once the price is back past its
//! threshold by the hysteresis (`PRICE_ALERT_HYSTERESIS_PERCENT`, 0.5), so a
//! price hovering at the threshold does not flap. A new alert is armed: if
//! the price is already past it, the next fetch tells.
//!
//! Firing is delivered as quota alerts are ([`crate::metering::alerts`]):
//! the crossing is recorded in the alert store and put on the alerts queue,
//! whose consumer signs it with the tenant's secret and retries it with
//! backoff, then dead-letters it. The crossing is recorded before the alert
//! disarms, under an id made of the alert and its crossing number, so a run
//! that dies in between records the same crossing again, not a second one.

use std::collections::BTreeMap;
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::PriceError;
use super::settings::PriceSettings;
use super::types::{Currency, Metal, Quote, WeightUnit};
use crate::metering::alerts::{Alert, AlertKey, AlertQueue, AlertStore, enqueue};
use crate::metering::tenants::{TenantStore, WebhookUrl};
use crate::metering::types::TenantId;
use crate::store::{Outage, StoreError};

/// At most this many alerts per tenant.
pub const MAX_ALERTS: usize = 100;

/// A threshold is a price: finer than any currency's smallest unit is no
/// price, and so is one a number store cannot hold.
const PRICES: std::ops::RangeInclusive<f64> = 1e-6..=1e12;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    Above,
    Below,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PriceAlert {
    /// `pa_` and 24 hex digits.
    pub id: String,
    pub tenant: TenantId,
    pub metal: Metal,
    pub currency: Currency,
    pub direction: Direction,
    /// The threshold in `unit`, as given.
    pub price: f64,
    pub unit: WeightUnit,
    pub webhook: WebhookUrl,
    /// Whether the next crossing fires.
    pub armed: bool,
    /// Crossings fired so far.
    pub fired: u32,
    pub created_at: DateTime<Utc>,
}

/// `POST /api/alerts`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewPriceAlert {
    pub metal: String,
    pub currency: Option<String>,
    pub unit: Option<String>,
    pub direction: Direction,
    pub price: f64,
    pub webhook: WebhookUrl,
}

impl NewPriceAlert {
    /// Checks metal, currency and unit as the read API does, and the price.
    pub fn into_alert(
        self,
        tenant: &TenantId,
        settings: &PriceSettings,
        now: DateTime<Utc>,
    ) -> Result<PriceAlert, PriceError> {
        let metal = Metal::parse(&self.metal)?;
        let currency = settings.currency(self.currency.as_deref())?;
        let unit = self
            .unit
            .as_deref()
            .map_or(Ok(WeightUnit::Toz), WeightUnit::parse)?;
        if !PRICES.contains(&self.price) {
            return Err(PriceError::Alert(format!(
                "price {} is not between {} and {}",
                self.price,
                PRICES.start(),
                PRICES.end()
            )));
        }
        Ok(PriceAlert {
            id: format!("pa_{}", &uuid::Uuid::new_v4().simple().to_string()[..24]),
            tenant: tenant.clone(),
            metal,
            currency,
            direction: self.direction,
            price: self.price,
            unit,
            webhook: self.webhook,
            armed: true,
            fired: 0,
            created_at: now,
        })
    }
}

/// Whether `id` has an alert id's shape (anything else names none).
pub fn is_alert_id(id: &str) -> bool {
    id.strip_prefix("pa_")
        .is_some_and(|hex| hex.len() == 24 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Registers `new` for `tenant`, unless it has [`MAX_ALERTS`] already.
pub async fn register(
    alerts: &dyn PriceAlerts,
    tenant: &TenantId,
    new: NewPriceAlert,
    settings: &PriceSettings,
    now: DateTime<Utc>,
) -> Result<PriceAlert, PriceError> {
    let alert = new.into_alert(tenant, settings, now)?;
    if alerts.list(tenant).await?.len() >= MAX_ALERTS {
        return Err(PriceError::Alert(format!(
            "at most {MAX_ALERTS} price alerts per tenant"
        )));
    }
    alerts.create(&alert).await?;
    Ok(alert)
}

/// What a quote does to an alert.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Fire,
    Rearm,
    Nothing,
}

impl PriceAlert {
    /// The threshold per troy ounce.
    fn threshold(&self) -> f64 {
        self.price / self.unit.from_troy_ounce(1.0)
    }

    /// Fires when armed and `price` (per troy ounce) has reached the
    /// threshold; re-arms when fired and `price` is back past it by
    /// `hysteresis` percent.
    pub fn step(&self, price: f64, hysteresis: f64) -> Step {
        let threshold = self.threshold();
        let band = threshold * hysteresis / 100.0;
        match (self.armed, self.direction) {
            (true, Direction::Above) if price >= threshold => Step::Fire,
            (true, Direction::Below) if price <= threshold => Step::Fire,
            (false, Direction::Above) if price < threshold - band => Step::Rearm,
            (false, Direction::Below) if price > threshold + band => Step::Rearm,
            _ => Step::Nothing,
        }
    }

    /// The alert store's name for crossing number `crossing`.
    pub fn crossing_key(&self, crossing: u32) -> AlertKey {
        AlertKey {
            tenant: self.tenant.to_string(),
            period: format!("price:{}:{crossing}", self.id),
            threshold: 0,
        }
    }
}

/// Where price alerts are kept (the prices table in production).
#[async_trait::async_trait]
pub trait PriceAlerts: Send + Sync {
    async fn create(&self, alert: &PriceAlert) -> Result<(), StoreError>;

    /// `tenant`'s alerts, oldest first.
    async fn list(&self, tenant: &TenantId) -> Result<Vec<PriceAlert>, StoreError>;

    /// Deletes `tenant`'s alert `id`; `false` if it has none by that id.
    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError>;

    /// Deletes every alert of `tenant` (a deleted tenant's); how many. A
    /// delete that fails halfway leaves the rest listed, to be retried.
    async fn delete_all(&self, tenant: &TenantId) -> Result<usize, StoreError>;

    /// Every alert on (`metal`, `currency`).
    async fn watching(
        &self,
        metal: Metal,
        currency: &Currency,
    ) -> Result<Vec<PriceAlert>, StoreError>;

    /// Arms or disarms `alert` (disarming counts a crossing) if it is still
    /// as read; `false` if another evaluation changed it first.
    async fn set_armed(&self, alert: &PriceAlert, armed: bool) -> Result<bool, StoreError>;
}

/// Evaluates every alert on `quote`'s series against it. A store failure
/// stops the evaluation (the run reports it); the next run retries whatever
/// is left, and a crossing already recorded is not recorded twice.
pub async fn evaluate(
    edges: &AlertEdges<'_>,
    quote: &Quote,
    hysteresis: f64,
) -> Result<usize, StoreError> {
    let mut fired = 0;
    for alert in edges.alerts.watching(quote.metal, &quote.currency).await? {
        match alert.step(quote.price, hysteresis) {
            Step::Nothing => {}
            Step::Rearm => {
                edges.alerts.set_armed(&alert, true).await?;
            }
            Step::Fire => {
                if fire(edges, &alert, quote).await? {
                    fired += 1;
                }
            }
        }
    }
    Ok(fired)
}

/// What evaluating alerts reaches: the alerts, their tenants (for the
/// signing secret), and the quota alerts' store and queue, which deliver.
pub struct AlertEdges<'a> {
    pub alerts: &'a dyn PriceAlerts,
    pub tenants: &'a dyn TenantStore,
    pub deliveries: &'a dyn AlertStore,
    pub queue: &'a dyn AlertQueue,
}

/// Records and queues `alert`'s next crossing at `quote`, then disarms it.
/// `false` when its tenant is gone or disabled (nothing is sent).
async fn fire(
    edges: &AlertEdges<'_>,
    alert: &PriceAlert,
    quote: &Quote,
) -> Result<bool, StoreError> {
    let Some(tenant) = edges.tenants.get(&alert.tenant).await? else {
        return Ok(false);
    };
    if !tenant.enabled {
        return Ok(false);
    }
    let crossing = alert.fired + 1;
    let price = alert.unit.from_troy_ounce(quote.price);
    let verb = match alert.direction {
        Direction::Above => "risen to",
        Direction::Below => "fallen to",
    };
    let body = json!({
        "text": format!(
            "Ingot: {} has {verb} {price:.2} {}/{} (alert: {:?} {} {}/{}).",
            alert.metal, alert.currency, alert.unit.name(),
            alert.direction, alert.price, alert.currency, alert.unit.name(),
        ),
        "type": "price.alert",
        "alert": {"id": alert.id, "metal": alert.metal, "currency": alert.currency,
                  "unit": alert.unit.name(), "direction": alert.direction, "price": alert.price},
        "crossing": crossing,
        "price": {"value": price, "unit": alert.unit.name(), "provider": quote.provider,
                  "ts": quote.ts},
    });
    let key = alert.crossing_key(crossing);
    let delivery = Alert::for_tenant(
        &tenant,
        key.clone(),
        &body,
        vec![alert.webhook.as_str().to_owned()],
    );
    edges.deliveries.create(&delivery).await?;
    enqueue(edges.deliveries, edges.queue, &key).await?;
    let disarmed = edges.alerts.set_armed(alert, false).await?;
    if disarmed {
        tracing::info!(alert = alert.id, crossing, price, "price alert fired");
    }
    Ok(disarmed)
}

/// Price alerts in memory: the double for handler tests.
#[derive(Debug, Default)]
pub struct MemoryPriceAlerts {
    alerts: Mutex<BTreeMap<String, PriceAlert>>,
    pub outage: Outage,
}

#[async_trait::async_trait]
impl PriceAlerts for MemoryPriceAlerts {
    async fn create(&self, alert: &PriceAlert) -> Result<(), StoreError> {
        self.outage.check("prices table")?;
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        alerts.insert(alert.id.clone(), alert.clone());
        Ok(())
    }

    async fn list(&self, tenant: &TenantId) -> Result<Vec<PriceAlert>, StoreError> {
        self.outage.check("prices table")?;
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let mut mine: Vec<PriceAlert> = alerts
            .values()
            .filter(|a| a.tenant == *tenant)
            .cloned()
            .collect();
        mine.sort_by_key(|a| a.created_at);
        Ok(mine)
    }

    async fn delete(&self, tenant: &TenantId, id: &str) -> Result<bool, StoreError> {
        self.outage.check("prices table")?;
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if alerts.get(id).is_some_and(|a| a.tenant == *tenant) {
            alerts.remove(id);
            return Ok(true);
        }
        Ok(false)
    }

    async fn delete_all(&self, tenant: &TenantId) -> Result<usize, StoreError> {
        self.outage.check("prices table")?;
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let before = alerts.len();
        alerts.retain(|_, a| a.tenant != *tenant);
        Ok(before - alerts.len())
    }

    async fn watching(
        &self,
        metal: Metal,
        currency: &Currency,
    ) -> Result<Vec<PriceAlert>, StoreError> {
        self.outage.check("prices table")?;
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        Ok(alerts
            .values()
            .filter(|a| a.metal == metal && a.currency == *currency)
            .cloned()
            .collect())
    }

    async fn set_armed(&self, alert: &PriceAlert, armed: bool) -> Result<bool, StoreError> {
        self.outage.check("prices table")?;
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        match alerts.get_mut(&alert.id) {
            Some(stored) if stored.armed != armed && stored.fired == alert.fired => {
                stored.armed = armed;
                if !armed {
                    stored.fired += 1;
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::config::Env;
    use crate::metering::alerts::{MemoryAlertQueue, MemoryAlerts};
    use crate::metering::tenants::{ApiKey, MemoryTenants, NewTenant};

    fn settings() -> PriceSettings {
        PriceSettings::from_env(&Env::from_pairs([("CURRENCIES", "USD,EUR")])).unwrap()
    }

    fn new(direction: Direction, price: f64, unit: Option<&str>) -> NewPriceAlert {
        NewPriceAlert {
            metal: "gold".into(),
            currency: None,
            unit: unit.map(str::to_owned),
            direction,
            price,
            webhook: WebhookUrl::try_from("https://hooks.example/p".to_owned()).unwrap(),
        }
    }

    fn quote(price: f64) -> Quote {
        Quote {
            metal: Metal::Gold,
            currency: Currency::usd(),
            price,
            bid: None,
            ask: None,
            provider: "gold-api.com".into(),
            ts: Utc::now(),
            fx: None,
        }
    }

    #[test]
    fn fires_at_the_threshold_and_rearms_only_past_the_hysteresis() {
        let tenant = TenantId::generate();
        let above = new(Direction::Above, 2500.0, None)
            .into_alert(&tenant, &settings(), Utc::now())
            .unwrap();
        assert_eq!(above.step(2499.99, 0.5), Step::Nothing);
        assert_eq!(above.step(2500.0, 0.5), Step::Fire);
        let fired = PriceAlert {
            armed: false,
            fired: 1,
            ..above
        };
        assert_eq!(fired.step(2600.0, 0.5), Step::Nothing);
        assert_eq!(fired.step(2490.0, 0.5), Step::Nothing, "inside the band");
        assert_eq!(fired.step(2487.0, 0.5), Step::Rearm);
        // Per gram: 80 USD/g is 2488.28 USD/toz.
        let below = new(Direction::Below, 80.0, Some("g"))
            .into_alert(&tenant, &settings(), Utc::now())
            .unwrap();
        assert_eq!(below.step(2490.0, 0.5), Step::Nothing);
        assert_eq!(below.step(2488.0, 0.5), Step::Fire);
    }

    #[test]
    fn bad_alerts_name_what_is_wrong() {
        let tenant = TenantId::generate();
        let s = settings();
        let mut tin = new(Direction::Above, 1.0, None);
        tin.metal = "tin".into();
        assert!(matches!(
            tin.into_alert(&tenant, &s, Utc::now()),
            Err(PriceError::Invalid(_))
        ));
        let mut yen = new(Direction::Above, 1.0, None);
        yen.currency = Some("JPY".into());
        assert!(matches!(
            yen.into_alert(&tenant, &s, Utc::now()),
            Err(PriceError::Invalid(_))
        ));
        for price in [0.0, -1.0, f64::NAN, 5e-324, 1e300] {
            let bad = new(Direction::Above, price, None).into_alert(&tenant, &s, Utc::now());
            assert!(matches!(bad, Err(PriceError::Alert(_))), "{price}");
        }
    }

    #[tokio::test]
    async fn each_crossing_is_queued_once_under_its_own_id() {
        let tenants = MemoryTenants::default();
        let tenant = serde_json::from_value::<NewTenant>(json!({
            "name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"}))
        .unwrap()
        .into_tenant(Utc::now())
        .unwrap();
        tenants
            .create(&tenant, &ApiKey::generate().hash())
            .await
            .unwrap();
        let alerts = MemoryPriceAlerts::default();
        let deliveries = MemoryAlerts::default();
        let queue = Arc::new(MemoryAlertQueue::default());
        let edges = AlertEdges {
            alerts: &alerts,
            tenants: &tenants,
            deliveries: &deliveries,
            queue: queue.as_ref(),
        };
        let alert = new(Direction::Above, 2500.0, None)
            .into_alert(&tenant.id, &settings(), Utc::now())
            .unwrap();
        alerts.create(&alert).await.unwrap();
        let mut fired = 0;
        for price in [2400.0, 2550.0, 2600.0, 2495.0, 2480.0, 2510.0] {
            fired += evaluate(&edges, &quote(price), 0.5).await.unwrap();
        }
        assert_eq!(fired, 2);
        let sent = queue.take();
        assert_eq!(sent, [alert.crossing_key(1), alert.crossing_key(2)]);
        let recorded = deliveries.all();
        assert_eq!(recorded.len(), 2);
        assert_ne!(recorded[0].id, recorded[1].id);
        assert_eq!(recorded[0].pending, ["https://hooks.example/p"]);
        assert_eq!(recorded[0].signing_secret, tenant.signing_secret);
        let body: serde_json::Value = serde_json::from_str(&recorded[1].body).unwrap();
        assert_eq!(
            (body["type"].as_str(), body["crossing"].as_u64()),
            (Some("price.alert"), Some(2))
        );
    }
}
