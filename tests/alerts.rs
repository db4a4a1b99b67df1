//! Quota alerts end to end: events pushed through ingest and the real rollup
//! reach 80% and 100% of the quota, the rollup raises each onto the alerts
//! queue, the real rollup delivers it from there, and a local webhook
//! receiver (verifying the Standard Webhooks signature itself) sees each
//! threshold once — through resends, failures, backoff, the DLQ and
//! concurrent raisers and deliverers.

use std::time::Duration;

use axum::http::StatusCode;
use infra::cloud::pump::Pump;
use infra::cloud::stubs::WebhookReceiver;
use serde_json::json;
use shared::aws::alerts::DynamoAlerts;
use shared::aws::queue::SqsAlertQueue;
use shared::metering::alerts::{self, Alert, AlertStore, Delivery};
use shared::metering::period::BillingPeriod;
use shared::metering::tenants::{NewTenant, Tenant};
use shared::webhook::{RetryPolicy, WebhookSender};
use support::metering::{Fixture, RealRollup, alerts_pump, drain, fixture, post_events, pump_with};

/// Webhook retries fast enough for a test.
fn quick_policy() -> RetryPolicy {
    RetryPolicy {
        timeout: Duration::from_secs(2),
        retries: 3,
        base_delay: Duration::from_millis(10),
    }
}

/// A tenant with `quota` whose one webhook is a fresh receiver: the
/// receiver, the tenant's API key and its id.
async fn watched_tenant(
    f: &Fixture,
    quota: u64,
    fail_first: usize,
) -> (WebhookReceiver, String, String) {
    let (receiver, url) = WebhookReceiver::start(fail_first).await;
    let body = json!({"name": "Acme", "monthly_quota": quota, "billing_day": 1, "tier": "pro", "webhooks": [url]});
    let (status, created) = f.as_admin("POST", "/admin/tenants", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    receiver.set_secret(created["signing_secret"].as_str().unwrap());
    let text = |field: &str| created[field].as_str().unwrap().to_owned();
    (receiver, text("api_key"), text("id"))
}

/// The rollup's configuration with quick webhook retries and `backoff`
/// between deliveries from the alerts queue.
fn config(f: &Fixture, backoff: Duration) -> rollup::Config {
    let mut config = rollup::Config::from_env(f.stack.env("rollup")).unwrap();
    config.webhooks = quick_policy();
    config.alert_backoff = backoff;
    config
}

/// Sends one event and counts it; the rollup behind the alerts queue,
/// backing off `backoff` before an alert's second delivery.
async fn count_tokens(
    f: &Fixture,
    key: &str,
    id: &str,
    tokens: u64,
    backoff: Duration,
) -> Pump<RealRollup> {
    let (status, body) = post_events(
        f,
        key,
        &json!({"id": id, "feature": "chat", "tokens": tokens}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let config = config(f, backoff);
    drain(&pump_with(&f.stack, config.clone()).await).await;
    alerts_pump(config).await
}

/// Sends one event, counts it, and runs one round of alert deliveries.
async fn use_tokens(f: &Fixture, key: &str, id: &str, tokens: u64) {
    let alerts = count_tokens(f, key, id, tokens, Duration::from_secs(30)).await;
    alerts.poll_once().await.unwrap();
}

#[tokio::test]
async fn each_threshold_fires_once_with_a_valid_signature() {
    let f = fixture().await;
    let (receiver, key, _) = watched_tenant(&f, 100, 0).await;

    use_tokens(&f, &key, "a", 79).await;
    assert!(
        receiver.deliveries().is_empty(),
        "79% is below every threshold"
    );

    use_tokens(&f, &key, "b", 1).await;
    let first = receiver.accepted();
    assert_eq!(first.len(), 1, "80% reached");
    assert!(first[0].signature_valid);
    assert_eq!(first[0].body["threshold"], 80);
    assert_eq!(first[0].body["used"], 80);
    assert_eq!(first[0].body["percent"], 80.0);
    assert!(first[0].body["text"].as_str().unwrap().contains("80%"));

    use_tokens(&f, &key, "c", 5).await;
    use_tokens(&f, &key, "b", 1).await; // a resend: counted once, no new alert
    assert_eq!(receiver.accepted().len(), 1);

    use_tokens(&f, &key, "d", 15).await;
    let all = receiver.accepted();
    assert_eq!(all.len(), 2, "100% reached");
    assert_eq!(all[1].body["threshold"], 100);
    assert_eq!(all[1].body["used"], 100);
    assert!(all[1].signature_valid);
    assert_ne!(all[0].id, all[1].id);

    use_tokens(&f, &key, "e", 50).await;
    assert_eq!(receiver.accepted().len(), 2, "nothing more this period");
}

/// A signing-secret rotation without a gap: while the old secret overlaps,
/// every webhook carries both signatures, so a receiver still on the old
/// secret and one already on the new accept it alike.
#[tokio::test]
async fn after_a_signing_secret_rotation_both_secrets_verify() {
    let f = fixture().await;
    let (receiver, key, id) = watched_tenant(&f, 100, 0).await;
    let (status, rotated) = f
        .as_admin("POST", &format!("/admin/tenants/{id}/signing-secret"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rotated}");

    // The receiver still checks with the old secret.
    use_tokens(&f, &key, "a", 80).await;
    let first = receiver.accepted();
    assert_eq!(first.len(), 1);
    assert!(first[0].signature_valid, "the old secret verifies");
    assert_eq!(first[0].signatures, 2);

    // It switches to the new one.
    receiver.set_secret(rotated["signing_secret"].as_str().unwrap());
    use_tokens(&f, &key, "b", 20).await;
    let second = &receiver.accepted()[1];
    assert!(second.signature_valid, "the new secret verifies");
    assert_eq!(second.signatures, 2);
}

#[tokio::test]
async fn a_failing_webhook_is_retried_until_it_answers() {
    let f = fixture().await;
    let (receiver, key, _) = watched_tenant(&f, 100, 2).await;
    use_tokens(&f, &key, "a", 90).await;

    let deliveries = receiver.deliveries();
    assert_eq!(deliveries.len(), 3, "two failures, then success");
    assert!(
        deliveries.iter().all(|d| d.id == deliveries[0].id),
        "one webhook-id for every attempt"
    );
    assert_eq!(receiver.accepted().len(), 1);
}

#[tokio::test]
async fn an_alert_whose_retries_run_out_is_delivered_again_after_a_backoff() {
    let f = fixture().await;
    // 1 attempt + 3 retries all fail.
    let (receiver, key, _) = watched_tenant(&f, 100, 4).await;
    let alerts = count_tokens(&f, &key, "a", 85, Duration::from_secs(2)).await;
    let first = alerts.poll_once().await.unwrap();
    assert_eq!(first.failed.len(), 1, "{first:?}");
    assert_eq!(receiver.deliveries().len(), 4);
    assert!(receiver.accepted().is_empty());

    // Hidden for the backoff (2 s before the second delivery), then back.
    assert_eq!(alerts.poll_once().await.unwrap().delivered, 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let second = alerts.poll_once().await.unwrap();
    assert_eq!(
        (second.delivered, second.failed.len()),
        (1, 0),
        "{second:?}"
    );
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(
        accepted[0].id,
        receiver.deliveries()[0].id,
        "one webhook-id"
    );
    assert_eq!(accepted[0].body["used"], 85, "the alert as raised");

    use_tokens(&f, &key, "b", 1).await;
    assert_eq!(receiver.accepted().len(), 1, "delivered once");
}

/// An alert no webhook takes is retried up to the redrive policy's
/// `maxReceiveCount`, then waits in the alerts DLQ (where the alarm sees it).
#[tokio::test]
async fn an_alert_no_webhook_takes_ends_in_the_dead_letter_queue() {
    let f = fixture().await;
    let (receiver, key, _) = watched_tenant(&f, 100, usize::MAX).await;
    let alerts = count_tokens(&f, &key, "a", 100, Duration::ZERO).await;
    let mut rounds = 0;
    while alerts.poll_once().await.unwrap().delivered > 0 {
        rounds += 1;
        assert!(rounds <= 20, "never dead-lettered");
    }
    // Both alerts come in each batch: 8 attempts (maxReceiveCount), each
    // of 1 try and 3 retries.
    assert_eq!(rounds, 8);
    assert_eq!(receiver.deliveries().len(), 2 * 8 * 4);

    let sqs = aws_sdk_sqs::Client::new(&support::aws().await);
    let dlq = f.stack.resolver.reference("AlertsDeadLetterQueue").unwrap();
    let dead = support::waiting(&sqs, dlq).await;
    let thresholds: std::collections::BTreeSet<u64> = dead
        .iter()
        .map(|m| {
            serde_json::from_str::<serde_json::Value>(m.body().unwrap()).unwrap()["threshold"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(thresholds, [80, 100].into());
}

/// A tenant near its quota with one webhook, made directly.
fn tenant_with_hook(url: &str) -> Tenant {
    serde_json::from_value::<NewTenant>(json!({
        "name": "Acme", "monthly_quota": 10, "billing_day": 1, "tier": "pro", "webhooks": [url]
    }))
    .unwrap()
    .into_tenant(chrono::Utc::now())
    .unwrap()
}

#[tokio::test]
async fn concurrent_raisers_and_deliverers_send_an_alert_once() {
    let f = fixture().await;
    let (receiver, url) = WebhookReceiver::start(0).await;
    let tenant = tenant_with_hook(&url);
    receiver.set_secret(&tenant.signing_secret);
    let aws = support::aws_as("rollup").await;
    let config = config(&f, Duration::from_secs(30));
    let store = DynamoAlerts::new(aws_sdk_dynamodb::Client::new(&aws), &config.usage_table);
    let queue = SqsAlertQueue::new(aws_sdk_sqs::Client::new(&aws), &config.alerts_queue_url);
    let period = BillingPeriod::containing(chrono::Utc::now(), tenant.billing_day);

    let raisers = (0..8).map(|_| alerts::raise(&store, &queue, &tenant, &period, 9));
    for result in futures_util::future::join_all(raisers).await {
        result.unwrap();
    }
    let recorded = store
        .recorded(tenant.id.as_str(), &period.key())
        .await
        .unwrap();
    assert_eq!(recorded, [(80, true)].into(), "one alert, queued");

    let key = Alert::new(&tenant, &period, 80, 9).key();
    let sender = WebhookSender::new(quick_policy());
    let deliverers = (0..8).map(|_| alerts::deliver(&store, &sender, &key));
    let outcomes = futures_util::future::join_all(deliverers).await;
    assert!(
        outcomes
            .iter()
            .any(|o| *o.as_ref().unwrap() == Delivery::Done)
    );
    assert_eq!(receiver.accepted().len(), 1, "one deliverer sent it");
    assert!(store.get(&key).await.unwrap().unwrap().pending.is_empty());

    // Whatever the raisers queued (one message, or repeats) sends nothing more.
    drain(&alerts_pump(config).await).await;
    assert_eq!(receiver.deliveries().len(), 1);
}
