//! Quota alerts: when a tenant's period total reaches 80% and again 100% of
//! its monthly quota, each of its webhooks is told once per threshold per
//! period.
//!
//! Counting raises them: the rollup records each crossing with a
//! conditional write (so of any number of concurrent or redelivered batches
//! exactly one creates it) and puts its key on the alerts queue before it
//! acknowledges the events that crossed. The alerts queue's consumer
//! delivers it out of band, so no alert waits for counting's leftover time
//! or for later traffic: under a lease, so concurrent deliverers do not both
//! send; with the same `webhook-id` on every attempt, so a receiver can drop
//! repeats; retried with a doubling backoff between attempts, then
//! dead-lettered.
//!
//! Payloads are Slack-compatible (`text`) with structured fields, signed per
//! Standard Webhooks.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chrono::{DateTime, TimeDelta, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::period::BillingPeriod;
use super::tenants::Tenant;
use super::usage::quota_percent;
use crate::store::StoreError;

/// Percent of the monthly quota at which alerts fire.
pub const THRESHOLDS: [u8; 2] = [80, 100];

/// How long a deliverer holds an alert before others may retry it.
pub const LEASE: TimeDelta = TimeDelta::seconds(60);

/// One alert: what to send, where, and how to sign it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Alert {
    /// Stable across retries: the `webhook-id`.
    pub id: String,
    pub tenant: String,
    pub period: String,
    pub threshold: u8,
    pub body: String,
    pub signing_secret: String,
    /// A rotated-out secret still in its overlap when the alert was raised:
    /// every delivery carries its signature too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_signing_secret: Option<String>,
    /// Webhooks not yet told.
    pub pending: Vec<String>,
}

/// The thresholds `used` has reached.
pub fn reached(used: u64, quota: u64) -> impl Iterator<Item = u8> {
    THRESHOLDS
        .into_iter()
        .filter(move |t| u128::from(used) * 100 >= u128::from(quota) * u128::from(*t))
}

impl Alert {
    /// An alert of `tenant`'s named by `key`, for its `pending` webhooks,
    /// signed with its secret (and the rotated-out one in its overlap); its
    /// id, the `webhook-id`, comes from the key, so every attempt carries it.
    pub fn for_tenant(
        tenant: &Tenant,
        key: AlertKey,
        body: &serde_json::Value,
        pending: Vec<String>,
    ) -> Self {
        let digest = Sha256::digest(format!("{}|{}|{}", key.tenant, key.period, key.threshold));
        let id = format!("msg_{}", crate::hex(&digest[..12]));
        Self {
            id,
            tenant: key.tenant,
            period: key.period,
            threshold: key.threshold,
            body: body.to_string(),
            signing_secret: tenant.signing_secret.clone(),
            previous_signing_secret: tenant.signing_secrets(Utc::now()).into_iter().nth(1),
            pending,
        }
    }

    pub fn new(tenant: &Tenant, period: &BillingPeriod, threshold: u8, used: u64) -> Self {
        let period_key = period.key();
        let percent = quota_percent(used, tenant.monthly_quota);
        let body = json!({
            "text": format!(
                "Ingot: {} has used {percent}% of its monthly quota ({used} of {} tokens) for the period starting {}.",
                tenant.name, tenant.monthly_quota, period_key
            ),
            "type": "quota.threshold_reached",
            "tenant": tenant.id,
            "tenant_name": tenant.name,
            "threshold": threshold,
            "used": used,
            "quota": tenant.monthly_quota,
            "percent": percent,
            "period": {"start": period.start, "end": period.end},
        });
        let key = AlertKey {
            tenant: tenant.id.to_string(),
            period: period_key,
            threshold,
        };
        let pending = tenant
            .webhooks
            .iter()
            .map(|w| w.as_str().to_owned())
            .collect();
        Self::for_tenant(tenant, key, &body, pending)
    }
}

impl Alert {
    /// The `webhook-signature` of a delivery at `timestamp`: one signature
    /// per secret, space-separated (Standard Webhooks), so a receiver that
    /// knows either secret accepts it.
    pub fn signature(&self, timestamp: DateTime<Utc>) -> String {
        std::iter::once(&self.signing_secret)
            .chain(&self.previous_signing_secret)
            .map(|secret| sign(secret, &self.id, timestamp, &self.body))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// `webhook-signature` per Standard Webhooks: `v1,` + base64 of the
/// HMAC-SHA256 of `"{id}.{timestamp}.{body}"`, keyed with the base64-decoded
/// part of the `whsec_` secret.
pub fn sign(secret: &str, id: &str, timestamp: DateTime<Utc>, body: &str) -> String {
    let key = STANDARD
        .decode(secret.trim_start_matches("whsec_"))
        .unwrap_or_else(|_| secret.as_bytes().to_vec());
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).expect("HMAC takes any key length");
    mac.update(format!("{id}.{}.{body}", timestamp.timestamp()).as_bytes());
    format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
}

/// What names one alert on the alerts queue: its tenant, period and
/// threshold (the store's key). A price alert's crossing is named
/// `price:<alert id>:<crossing>` with threshold 0 ([`crate::prices::alerts`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct AlertKey {
    pub tenant: String,
    pub period: String,
    pub threshold: u8,
}

impl Alert {
    pub fn key(&self) -> AlertKey {
        AlertKey {
            tenant: self.tenant.clone(),
            period: self.period.clone(),
            threshold: self.threshold,
        }
    }
}

/// Where alerts are kept (DynamoDB in production).
#[async_trait::async_trait]
pub trait AlertStore: Send + Sync {
    /// The thresholds of `tenant`'s alerts in `period` that exist, each
    /// with whether it is known to be on the alerts queue.
    async fn recorded(&self, tenant: &str, period: &str) -> Result<BTreeMap<u8, bool>, StoreError>;

    /// Records `alert`, not yet queued, unless it exists; `true` if this
    /// call created it.
    async fn create(&self, alert: &Alert) -> Result<bool, StoreError>;

    /// Notes that the alert is on the alerts queue.
    async fn queued(&self, key: &AlertKey) -> Result<(), StoreError>;

    /// The alert as it stands (its webhooks still pending), if it exists.
    async fn get(&self, key: &AlertKey) -> Result<Option<Alert>, StoreError>;

    /// Takes the alert's lease until `lease_until` unless another deliverer
    /// holds it at `now`; `false` if one does.
    async fn claim(
        &self,
        alert: &Alert,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError>;

    /// Records which webhooks now have it (sent once none remain pending)
    /// and releases the lease.
    async fn settle(&self, alert: &Alert, delivered: &[String]) -> Result<(), StoreError>;
}

/// The alerts queue: its consumer delivers each alert named on it.
#[async_trait::async_trait]
pub trait AlertQueue: Send + Sync {
    async fn send(&self, key: &AlertKey) -> Result<(), StoreError>;

    /// Makes a received message (by its receipt handle) visible again only
    /// after `delay`: the backoff between delivery attempts.
    async fn retry_in(&self, receipt: &str, delay: Duration) -> Result<(), StoreError>;
}

/// Why a webhook did not take an alert.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WebhookError {
    #[error("timed out")]
    TimedOut,
    #[error("could not connect")]
    Unreachable,
    #[error("answered {0}")]
    Refused(u16),
    #[error("{last} (after {attempts} attempts)")]
    GaveUp {
        last: Box<WebhookError>,
        attempts: u32,
    },
}

/// Sends one signed payload to one URL (with its own retries).
#[async_trait::async_trait]
pub trait Notifier: Send + Sync {
    async fn notify(&self, url: &str, alert: &Alert) -> Result<(), WebhookError>;
}

/// One stored alert: the alert, whether it is queued, and its lease.
#[derive(Debug, Clone)]
struct Stored {
    alert: Alert,
    queued: bool,
    lease_until: DateTime<Utc>,
}

/// Alerts in memory: the double for handler tests (leases are kept).
#[derive(Debug, Default)]
pub struct MemoryAlerts {
    alerts: Mutex<BTreeMap<AlertKey, Stored>>,
}

impl MemoryAlerts {
    /// Every alert with the webhooks still pending on it.
    pub fn all(&self) -> Vec<Alert> {
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        alerts.values().map(|s| s.alert.clone()).collect()
    }
}

#[async_trait::async_trait]
impl AlertStore for MemoryAlerts {
    async fn recorded(&self, tenant: &str, period: &str) -> Result<BTreeMap<u8, bool>, StoreError> {
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        Ok(alerts
            .iter()
            .filter(|(key, _)| key.tenant == tenant && key.period == period)
            .map(|(key, stored)| (key.threshold, stored.queued))
            .collect())
    }

    async fn create(&self, alert: &Alert) -> Result<bool, StoreError> {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        let key = alert.key();
        if alerts.contains_key(&key) {
            return Ok(false);
        }
        let stored = Stored {
            alert: alert.clone(),
            queued: false,
            lease_until: DateTime::<Utc>::MIN_UTC,
        };
        alerts.insert(key, stored);
        Ok(true)
    }

    async fn queued(&self, key: &AlertKey) -> Result<(), StoreError> {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stored) = alerts.get_mut(key) {
            stored.queued = true;
        }
        Ok(())
    }

    async fn get(&self, key: &AlertKey) -> Result<Option<Alert>, StoreError> {
        let alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        Ok(alerts.get(key).map(|s| s.alert.clone()))
    }

    async fn claim(
        &self,
        alert: &Alert,
        now: DateTime<Utc>,
        lease_until: DateTime<Utc>,
    ) -> Result<bool, StoreError> {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        match alerts.get_mut(&alert.key()) {
            Some(stored) if stored.lease_until <= now => {
                stored.lease_until = lease_until;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn settle(&self, alert: &Alert, delivered: &[String]) -> Result<(), StoreError> {
        let mut alerts = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(stored) = alerts.get_mut(&alert.key()) {
            stored.alert.pending.retain(|url| !delivered.contains(url));
            stored.lease_until = DateTime::<Utc>::MIN_UTC;
        }
        Ok(())
    }
}

/// The alerts queue in memory: what was sent and each retry's delay, and
/// an outage switch.
#[derive(Debug, Default)]
pub struct MemoryAlertQueue {
    sent: Mutex<Vec<AlertKey>>,
    retries: Mutex<Vec<(String, Duration)>>,
    pub outage: crate::store::Outage,
}

impl MemoryAlertQueue {
    /// Takes every key sent so far.
    pub fn take(&self) -> Vec<AlertKey> {
        std::mem::take(&mut *self.sent.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// (receipt handle, delay) of every retry asked for, in order.
    pub fn retries(&self) -> Vec<(String, Duration)> {
        self.retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[async_trait::async_trait]
impl AlertQueue for MemoryAlertQueue {
    async fn send(&self, key: &AlertKey) -> Result<(), StoreError> {
        self.outage.check("alerts queue")?;
        self.sent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(key.clone());
        Ok(())
    }

    async fn retry_in(&self, receipt: &str, delay: Duration) -> Result<(), StoreError> {
        self.outage.check("alerts queue")?;
        self.retries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((receipt.to_owned(), delay));
        Ok(())
    }
}

/// A notifier that records what it was asked to send: the double for
/// handler tests. URLs in `failing` refuse every alert; each answer takes
/// `delay` (a slow receiver).
#[derive(Debug, Default)]
pub struct RecordingNotifier {
    sent: Mutex<Vec<(String, Alert)>>,
    pub failing: Mutex<Vec<String>>,
    pub delay: Mutex<Duration>,
}

impl RecordingNotifier {
    /// (url, alert) of every delivery that succeeded, in order.
    pub fn sent(&self) -> Vec<(String, Alert)> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

#[async_trait::async_trait]
impl Notifier for RecordingNotifier {
    async fn notify(&self, url: &str, alert: &Alert) -> Result<(), WebhookError> {
        let delay = *self.delay.lock().unwrap_or_else(|e| e.into_inner());
        tokio::time::sleep(delay).await;
        let failing = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing.iter().any(|f| f == url) {
            return Err(WebhookError::Refused(500));
        }
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.push((url.to_owned(), alert.clone()));
        Ok(())
    }
}

/// Records and queues the alerts `used` has reached for `tenant` in
/// `period`. Safe to run again after any failure: an alert recorded but not
/// known to be queued is queued again (its consumer drops repeats), so the
/// caller retries until this succeeds and no crossing goes unsent.
pub async fn raise(
    store: &dyn AlertStore,
    queue: &dyn AlertQueue,
    tenant: &Tenant,
    period: &BillingPeriod,
    used: u64,
) -> Result<(), StoreError> {
    let mut reached = reached(used, tenant.monthly_quota).peekable();
    if reached.peek().is_none() {
        return Ok(());
    }
    let period_key = period.key();
    let recorded = store.recorded(tenant.id.as_str(), &period_key).await?;
    for threshold in reached {
        match recorded.get(&threshold) {
            Some(true) => continue,
            Some(false) => {}
            None => {
                let alert = Alert::new(tenant, period, threshold, used);
                // Another raiser created it: it queues it, and its
                // messages are retried until it has.
                if !store.create(&alert).await? {
                    continue;
                }
                tracing::info!(
                    alert = alert.id,
                    tenant = alert.tenant,
                    threshold,
                    used,
                    "quota alert raised"
                );
            }
        }
        let key = AlertKey {
            tenant: tenant.id.to_string(),
            period: period_key.clone(),
            threshold,
        };
        enqueue(store, queue, &key).await?;
    }
    Ok(())
}

/// Puts the recorded alert `key` on the alerts queue and notes it there.
/// Sending again is harmless: a delivered alert has nothing pending.
pub async fn enqueue(
    store: &dyn AlertStore,
    queue: &dyn AlertQueue,
    key: &AlertKey,
) -> Result<(), StoreError> {
    queue.send(key).await?;
    store.queued(key).await
}

/// What delivering one alert came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every webhook has it (or nothing is left to send).
    Done,
    /// Some webhook still lacks it, or another deliverer holds it: try again.
    Again,
}

/// Delivers the alert `key` names to its pending webhooks (concurrently),
/// holding its lease so concurrent deliverers do not both send, and
/// settles it.
pub async fn deliver(
    store: &dyn AlertStore,
    notifier: &dyn Notifier,
    key: &AlertKey,
) -> Result<Delivery, StoreError> {
    let Some(alert) = store.get(key).await? else {
        tracing::warn!(?key, "no such alert; nothing to deliver");
        return Ok(Delivery::Done);
    };
    if alert.pending.is_empty() {
        return Ok(Delivery::Done);
    }
    let now = Utc::now();
    if !store.claim(&alert, now, now + LEASE).await? {
        return Ok(Delivery::Again);
    }
    let results = futures_util::future::join_all(alert.pending.iter().map(|url| {
        let alert = &alert;
        async move { (url, notifier.notify(url, alert).await) }
    }))
    .await;
    let mut delivered = Vec::new();
    for (url, result) in results {
        match result {
            Ok(()) => delivered.push(url.clone()),
            Err(error) => tracing::warn!(
                alert = alert.id,
                url,
                %error,
                "webhook failed; the alert stays pending"
            ),
        }
    }
    store.settle(&alert, &delivered).await?;
    Ok(if delivered.len() == alert.pending.len() {
        Delivery::Done
    } else {
        Delivery::Again
    })
}

/// The wait before the `attempt`th delivery (2 or more) of an alert:
/// `first`, doubling per attempt, at most SQS's 12-hour visibility limit.
pub fn retry_delay(first: Duration, attempt: u32) -> Duration {
    const MAX: Duration = Duration::from_secs(12 * 3600);
    first
        .saturating_mul(1 << attempt.saturating_sub(2).min(16))
        .min(MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metering::tenants::NewTenant;
    use crate::metering::types::BillingDay;

    fn tenant(quota: u64) -> Tenant {
        serde_json::from_value::<NewTenant>(json!({
            "name": "Acme", "monthly_quota": quota, "billing_day": 1, "tier": "pro",
            "webhooks": ["https://a.example/h", "https://b.example/h"],
        }))
        .unwrap()
        .into_tenant(Utc::now())
        .unwrap()
    }

    #[test]
    fn thresholds_reached_at_exactly_80_and_100_percent() {
        assert_eq!(reached(79, 100).collect::<Vec<_>>(), Vec::<u8>::new());
        assert_eq!(reached(80, 100).collect::<Vec<_>>(), [80]);
        assert_eq!(reached(99, 100).collect::<Vec<_>>(), [80]);
        assert_eq!(reached(100, 100).collect::<Vec<_>>(), [80, 100]);
        assert_eq!(reached(u64::MAX, u64::MAX).collect::<Vec<_>>(), [80, 100]);
        assert_eq!(reached(7, 9).collect::<Vec<_>>(), Vec::<u8>::new(), "77.8%");
    }

    #[test]
    fn alert_ids_are_stable_per_tenant_period_and_threshold() {
        let t = tenant(100);
        let period = BillingPeriod::containing(Utc::now(), BillingDay::try_from(1).unwrap());
        let a = Alert::new(&t, &period, 80, 81);
        assert_eq!(a.id, Alert::new(&t, &period, 80, 95).id);
        assert_ne!(a.id, Alert::new(&t, &period, 100, 100).id);
        assert_eq!(a.pending.len(), 2);
    }

    #[test]
    fn payload_is_slack_compatible_with_structured_fields() {
        let t = tenant(1000);
        let period = BillingPeriod::containing(Utc::now(), BillingDay::try_from(1).unwrap());
        let body: serde_json::Value =
            serde_json::from_str(&Alert::new(&t, &period, 80, 812).body).unwrap();
        assert!(body["text"].as_str().unwrap().contains("81.2%"));
        assert_eq!(
            (
                body["threshold"].as_u64(),
                body["used"].as_u64(),
                body["quota"].as_u64()
            ),
            (Some(80), Some(812), Some(1000))
        );
        assert_eq!(body["percent"], 81.2);
        assert_eq!(body["tenant"], t.id.as_str());
    }

    #[test]
    fn an_alert_raised_in_a_rotation_overlap_carries_both_signatures() {
        let mut t = tenant(100);
        let period = BillingPeriod::containing(Utc::now(), BillingDay::try_from(1).unwrap());
        let at = Utc::now();
        let single = Alert::new(&t, &period, 80, 81);
        assert_eq!(single.signature(at).split(' ').count(), 1);
        let old = t.signing_secret.clone();
        t.signing_secret = crate::metering::tenants::signing_secret();
        t.previous_signing_secret = Some(crate::metering::tenants::RetiringSecret {
            secret: old.clone(),
            until: at + TimeDelta::hours(1),
        });
        let alert = Alert::new(&t, &period, 80, 81);
        let signatures: Vec<String> = alert.signature(at).split(' ').map(str::to_owned).collect();
        assert_eq!(
            signatures,
            [
                sign(&t.signing_secret, &alert.id, at, &alert.body),
                sign(&old, &alert.id, at, &alert.body)
            ]
        );
        t.previous_signing_secret.as_mut().unwrap().until = at - TimeDelta::seconds(1);
        assert_eq!(
            Alert::new(&t, &period, 80, 81).previous_signing_secret,
            None
        );
    }

    #[test]
    fn deliveries_back_off_doubling_up_to_the_visibility_limit() {
        let first = Duration::from_secs(30);
        let delays: Vec<u64> = (2..=8).map(|a| retry_delay(first, a).as_secs()).collect();
        assert_eq!(delays, [30, 60, 120, 240, 480, 960, 1920]);
        assert_eq!(retry_delay(first, 40), Duration::from_secs(12 * 3600));
        assert_eq!(retry_delay(Duration::ZERO, 5), Duration::ZERO);
    }

    /// A run that recorded a crossing but could not queue it (the send
    /// failed, or it crashed) leaves it `recorded`: the next run queues it,
    /// and a queued one is not queued again.
    #[tokio::test]
    async fn raising_again_queues_what_a_failed_run_recorded() {
        let (store, queue) = (MemoryAlerts::default(), MemoryAlertQueue::default());
        let t = tenant(100);
        let period = BillingPeriod::containing(Utc::now(), BillingDay::try_from(1).unwrap());
        queue.outage.begin();
        assert!(raise(&store, &queue, &t, &period, 85).await.is_err());
        assert_eq!(
            store.recorded(t.id.as_str(), &period.key()).await.unwrap(),
            [(80, false)].into()
        );
        queue.outage.end();
        raise(&store, &queue, &t, &period, 86).await.unwrap();
        raise(&store, &queue, &t, &period, 87).await.unwrap();
        let sent = queue.take();
        assert_eq!(sent, [Alert::new(&t, &period, 80, 85).key()]);
        assert_eq!(store.all()[0].body, Alert::new(&t, &period, 80, 85).body);
    }

    #[test]
    fn signature_matches_the_standard_webhooks_example() {
        // The example from the Standard Webhooks specification.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let at = DateTime::from_timestamp(1_614_265_330, 0).unwrap();
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", at, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
