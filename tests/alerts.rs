//! Quota alerts end to end: events pushed through ingest and the real rollup
//! reach 80% and 100% of the quota, and a local webhook receiver (verifying
//! the Standard Webhooks signature itself) sees each threshold once — through
//! resends, failures, retries and concurrent raisers.

use std::time::Duration;

use axum::http::StatusCode;
use infra::cloud::stubs::WebhookReceiver;
use serde_json::json;
use shared::aws::alerts::DynamoAlerts;
use shared::metering::alerts::{self, AlertStore};
use shared::metering::period::BillingPeriod;
use shared::metering::tenants::NewTenant;
use shared::webhook::{RetryPolicy, WebhookSender};
use support::metering::{Fixture, drain, fixture, post_events, pump_with};

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

async fn use_tokens(f: &Fixture, key: &str, id: &str, tokens: u64) {
    let (status, body) = post_events(
        f,
        key,
        &json!({"id": id, "feature": "chat", "tokens": tokens}),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let mut config = rollup::Config::from_env(f.stack.env("rollup")).unwrap();
    config.webhooks = quick_policy();
    drain(&pump_with(&f.stack, config).await).await;
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
async fn an_alert_whose_retries_run_out_is_delivered_by_a_later_batch() {
    let f = fixture().await;
    // 1 attempt + 3 retries all fail.
    let (receiver, key, _) = watched_tenant(&f, 100, 4).await;
    use_tokens(&f, &key, "a", 85).await;
    assert_eq!(receiver.deliveries().len(), 4);
    assert!(receiver.accepted().is_empty());

    // Any later batch retries what is pending.
    use_tokens(&f, &key, "b", 1).await;
    let accepted = receiver.accepted();
    assert_eq!(accepted.len(), 1);
    assert_eq!(accepted[0].id, receiver.deliveries()[0].id);
    assert_eq!(accepted[0].body["used"], 85, "the alert as raised");

    use_tokens(&f, &key, "c", 1).await;
    assert_eq!(receiver.accepted().len(), 1, "delivered once");
}

#[tokio::test]
async fn concurrent_raisers_deliver_an_alert_once() {
    let f = fixture().await;
    let (receiver, url) = WebhookReceiver::start(0).await;
    let tenant = serde_json::from_value::<NewTenant>(json!({
        "name": "Acme", "monthly_quota": 10, "billing_day": 1, "tier": "pro", "webhooks": [url]
    }))
    .unwrap()
    .into_tenant(chrono::Utc::now())
    .unwrap();
    receiver.set_secret(&tenant.signing_secret);
    let store = DynamoAlerts::new(
        aws_sdk_dynamodb::Client::new(&support::aws().await),
        &f.stack.env("rollup").required("USAGE_TABLE").unwrap(),
    );
    let sender = WebhookSender::new(quick_policy());
    let period = BillingPeriod::containing(chrono::Utc::now(), tenant.billing_day);

    let raisers = (0..8).map(|_| alerts::raise(&store, &sender, &tenant, &period, 9));
    for result in futures_util::future::join_all(raisers).await {
        result.unwrap();
    }
    assert_eq!(receiver.accepted().len(), 1);
    assert!(
        store
            .due(chrono::Utc::now() + chrono::TimeDelta::minutes(5))
            .await
            .unwrap()
            .is_empty(),
        "nothing left pending"
    );
}
