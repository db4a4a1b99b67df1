//! `ingest`'s route through memory doubles of the tenants table and the
//! queue: no emulator. tests/metering.rs drives it against the emulator.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use chrono::Utc;
use http_body_util::BodyExt;
use ingest::{Config, Edges, FUNCTION, router};
use serde_json::{Value, json};
use shared::clock::FixedClock;
use shared::config::Env;
use shared::health::HealthChecks;
use shared::metering::ingest::MemoryQueue;
use shared::metering::tenants::{ApiKey, MemoryTenants, NewTenant, TenantPatch, TenantStore};
use shared::metering::types::EventBatch;
use shared::ratelimit::MemoryCounter;
use tower::ServiceExt;

struct Ingest {
    router: Router,
    queue: Arc<MemoryQueue>,
    tenants: Arc<MemoryTenants>,
    key: String,
}

async fn ingest() -> Ingest {
    let env = Env::from_pairs([
        ("TENANTS_TABLE", "tenants"),
        ("RATE_LIMIT_TABLE", "limits"),
        ("EVENTS_QUEUE_URL", "http://queue"),
        ("KEY_CACHE_SECONDS", "0"),
    ]);
    let tenants = Arc::new(MemoryTenants::default());
    let queue = Arc::new(MemoryQueue::default());
    let new: NewTenant = serde_json::from_value(
        json!({"name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "free"}),
    )
    .unwrap();
    let key = ApiKey::generate();
    let tenant = new.into_tenant(Utc::now()).unwrap();
    tenants.create(&tenant, &key.hash()).await.unwrap();
    let edges = Edges {
        tenants: tenants.clone(),
        queue: queue.clone(),
        rate_counter: Arc::new(MemoryCounter::default()),
        clock: Arc::new(FixedClock::at(Utc::now())),
    };
    Ingest {
        router: router(
            &Config::from_env(&env).unwrap(),
            edges,
            HealthChecks::new(FUNCTION, "test"),
        ),
        queue,
        tenants,
        key: key.expose().to_owned(),
    }
}

async fn post(app: &Ingest, key: Option<&str>, body: impl Into<Body>) -> (StatusCode, Value) {
    post_with(app, key, &[], body).await
}

/// [`post`] with extra headers (values as raw bytes).
async fn post_with(
    app: &Ingest,
    key: Option<&str>,
    headers: &[(&'static str, &[u8])],
    body: impl Into<Body>,
) -> (StatusCode, Value) {
    let mut request = Request::post("/events").header("content-type", "application/json");
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    let mut request = request.body(body.into()).unwrap();
    for (name, value) in headers {
        let value = axum::http::HeaderValue::from_bytes(value).unwrap();
        request.headers_mut().insert(*name, value);
    }
    let response = app.router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    if !status.is_success() {
        assert_eq!(
            response.headers()["content-type"],
            "application/problem+json"
        );
    }
    let bytes: Bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&bytes).unwrap())
}

fn event(id: &str, tokens: i64) -> Value {
    json!({"id": id, "feature": "chat", "tokens": tokens})
}

#[tokio::test]
async fn accepted_events_are_on_the_queue_under_the_keys_tenant() {
    let app = ingest().await;
    let body = json!({"events": [event("e1", 10), event("e2", 5)]});
    let (status, answer) = post(&app, Some(&app.key), body.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer, json!({"accepted": 2, "ids": ["e1", "e2"]}));
    let sent = app.queue.sent();
    assert_eq!(sent.len(), 1);
    let batch: EventBatch = serde_json::from_str(&sent[0]).unwrap();
    assert_eq!(batch.events.iter().map(|e| e.tokens.get()).sum::<u64>(), 15);
    let tenants = app.tenants.list(10, None).await.unwrap().tenants;
    assert_eq!(batch.tenant, tenants[0].id);
}

#[tokio::test]
async fn a_single_event_body_gets_an_id_when_it_has_none() {
    let app = ingest().await;
    let (status, answer) = post(
        &app,
        Some(&app.key),
        json!({"feature": "chat", "tokens": 1}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(answer["ids"].as_array().unwrap().len(), 1);
}

/// A retried request with the same `Idempotency-Key` gets the same ids for
/// its id-less events (so the rollup counts them once); explicit ids stay.
#[tokio::test]
async fn an_idempotency_key_gives_id_less_events_the_same_ids_on_every_retry() {
    let app = ingest().await;
    let body = json!({"events": [
        {"feature": "chat", "tokens": 1}, event("mine", 2), {"feature": "chat", "tokens": 3},
    ]})
    .to_string();
    let send = |key: &'static str| {
        let (app, body) = (&app, body.clone());
        async move {
            post_with(
                app,
                Some(&app.key),
                &[("idempotency-key", key.as_bytes())],
                body,
            )
            .await
        }
    };
    let (status, first) = send("order-42").await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (_, retry) = send("order-42").await;
    let (_, other) = send("order-43").await;
    assert_eq!(first["ids"], retry["ids"]);
    assert_eq!(first["ids"][1], "mine");
    assert_ne!(first["ids"][0], first["ids"][2]);
    assert_ne!(first["ids"][0], other["ids"][0]);
    assert!(first["ids"][0].as_str().unwrap().starts_with("idem_"));
    let (_, unkeyed) = post(&app, Some(&app.key), body).await;
    assert_ne!(first["ids"][0], unkeyed["ids"][0]);
}

fn cloudevent(source: &str, id: &str, tokens: i64) -> Value {
    json!({"specversion": "1.0", "id": id, "source": source, "type": "chat",
           "subject": "customer-7", "data": {"tokens": tokens, "model": "small"}})
}

/// CloudEvents 1.0 JSON, one or a batch: `type` → feature, `data.tokens` →
/// tokens, the id derived from (source, id).
#[tokio::test]
async fn cloudevents_are_accepted_one_or_many() {
    let app = ingest().await;
    let single = ("content-type", b"application/cloudevents+json".as_slice());
    let batch = (
        "content-type",
        b"application/cloudevents-batch+json".as_slice(),
    );
    let (status, one) = post_with(
        &app,
        Some(&app.key),
        &[single],
        cloudevent("/app", "e-1", 5).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{one}");
    let many = json!([cloudevent("/app", "e-1", 5), cloudevent("/other", "e-1", 7)]);
    let (status, two) = post_with(&app, Some(&app.key), &[batch], many.to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{two}");
    assert_eq!(
        two["ids"][0], one["ids"][0],
        "same source and id, same event"
    );
    assert_ne!(
        two["ids"][0], two["ids"][1],
        "another source, another event"
    );

    let sent = app.queue.sent();
    let batch: EventBatch = serde_json::from_str(&sent[1]).unwrap();
    let event = &batch.events[1];
    assert_eq!((event.feature.as_str(), event.tokens.get()), ("chat", 7));
    assert_eq!(event.properties["subject"], "customer-7");
    assert_eq!(event.properties["model"], "small");
}

#[tokio::test]
async fn a_bad_cloudevent_is_named_by_index_and_field_and_nothing_is_queued() {
    let app = ingest().await;
    let mut bad = cloudevent("/app", "e-2", 1);
    bad["specversion"] = json!("0.3");
    let body = json!([cloudevent("/app", "e-1", 1), bad]);
    let (status, problem) = post_with(
        &app,
        Some(&app.key),
        &[("content-type", b"application/cloudevents-batch+json")],
        body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "invalid_events");
    assert_eq!(problem["errors"][0]["index"], 1);
    assert_eq!(
        problem["errors"][0]["reason"],
        "specversion must be \"1.0\""
    );
    assert!(app.queue.sent().is_empty());
}

#[tokio::test]
async fn a_bad_idempotency_key_is_refused_and_nothing_is_queued() {
    let app = ingest().await;
    let long = "k".repeat(256);
    for bad in [long.as_bytes(), b"", "clé".as_bytes(), b"a\tb"] {
        let (status, problem) = post_with(
            &app,
            Some(&app.key),
            &[("idempotency-key", bad)],
            event("e1", 1).to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad:?}");
        assert_eq!(problem["code"], "invalid_idempotency_key");
        assert!(
            problem["detail"]
                .as_str()
                .unwrap()
                .contains("Idempotency-Key")
        );
    }
    assert!(app.queue.sent().is_empty());
}

#[tokio::test]
async fn missing_unknown_and_disabled_keys_are_refused() {
    let app = ingest().await;
    let body = event("e1", 1).to_string();
    let (status, problem) = post(&app, None, body.clone()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("missing_credentials"))
    );
    let unknown = ApiKey::generate();
    let (status, problem) = post(&app, Some(unknown.expose()), body.clone()).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let id = app.tenants.list(1, None).await.unwrap().tenants[0]
        .id
        .clone();
    let off = TenantPatch {
        enabled: Some(false),
        ..TenantPatch::default()
    };
    app.tenants.update(&id, &off).await.unwrap();
    let (status, problem) = post(&app, Some(&app.key), body).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("tenant_disabled"))
    );
    assert!(app.queue.sent().is_empty());
}

#[tokio::test]
async fn each_bad_body_class_is_refused_whole_naming_the_problem() {
    let app = ingest().await;
    let cases: Vec<(String, StatusCode, &str)> = vec![
        ("{not json".into(), StatusCode::BAD_REQUEST, "invalid_json"),
        (
            json!({"events": [], "extra": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            json!({"events": [event("ok", 1), event("neg", -1)]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_events",
        ),
        (
            "x".repeat(1024 * 1024 + 1),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (body, status, code) in cases {
        let (got, problem) = post(&app, Some(&app.key), body).await;
        assert_eq!((got, problem["code"].as_str()), (status, Some(code)));
        if code == "invalid_events" {
            assert_eq!(problem["errors"][0]["index"], 1);
        }
    }
    assert!(
        app.queue.sent().is_empty(),
        "a refused request enqueues nothing"
    );
}

#[tokio::test]
async fn a_queue_that_refuses_is_a_503_to_retry_and_nothing_is_half_sent() {
    let app = ingest().await;
    app.queue.outage.begin();
    let (status, problem) = post(&app, Some(&app.key), event("e1", 1).to_string()).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem["dependency"], "events queue");
    app.queue.outage.end();
    let (status, _) = post(&app, Some(&app.key), event("e1", 1).to_string()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(app.queue.sent().len(), 1);
}
