//! Metering end to end against the emulated AWS: the admin API (usage), event
//! ingest, the rollup through the real SQS event-source pump, and usage
//! queries; every bad-input class; exactly-once under resends, redelivery
//! and a consumer failure mid-batch.

use chrono::{DateTime, TimeDelta, Utc};
use http::StatusCode;
use serde_json::json;
use shared::aws::ledger::DynamoLedger;
use shared::aws::prices::DynamoPrices;
use shared::config::Env;
use shared::metering::rollup::{Crashing, Seq, count};
use shared::metering::types::{
    BillingDay, EventBatch, EventId, Feature, TenantId, Tokens, UsageEvent,
};
use shared::metering::usage::UsageReader;
use shared::prices::alerts::{PriceAlerts, register};
use shared::prices::settings::PriceSettings;
use shared::prices::types::{Currency, Metal};
use support::metering::{drain, fixture, post_events, pump, tenant, usage_of};
use support::{call, request, send};

fn now_minus(minutes: i64) -> String {
    (Utc::now() - TimeDelta::minutes(minutes)).to_rfc3339()
}

// ---------------------------------------------------------------- admin API

#[tokio::test]
async fn creates_a_tenant_and_shows_its_key_once() {
    let f = fixture().await;
    let body = json!({"name": "Acme", "monthly_quota": 1000, "billing_day": 15, "tier": "pro",
                      "webhooks": ["https://hooks.example/ingot"]});
    let (status, created) = f.as_admin("POST", "/admin/tenants", Some(&body)).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = created["id"].as_str().unwrap();
    assert!(id.starts_with("ten_"));
    assert!(created["api_key"].as_str().unwrap().starts_with("igk_"));
    assert!(
        created["signing_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    assert_eq!(created["billing_day"], 15);
    assert_eq!(created["enabled"], true);

    let (status, shown) = f
        .as_admin("GET", &format!("/admin/tenants/{id}"), None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["name"], "Acme");
    assert_eq!(shown["webhooks"], json!(["https://hooks.example/ingot"]));
    assert!(shown.get("api_key").is_none() && shown.get("signing_secret").is_none());
}

#[tokio::test]
async fn admin_routes_require_the_admin_token() {
    let f = fixture().await;
    let (_, key) = tenant(&f, 10, 1).await;
    for (token, code) in [
        (None, "missing_credentials"),
        (Some("wrong"), "invalid_credentials"),
        (Some(key.as_str()), "invalid_credentials"),
    ] {
        let (status, headers, body) =
            send(&f.usage, request("GET", "/admin/tenants", token, None)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{token:?}");
        assert_eq!(headers["content-type"], "application/problem+json");
        assert_eq!(body["code"], code);
    }
    // The token is checked before the body is read.
    let bad_body = json!({"name": 7});
    for (method, path) in [
        ("POST", "/admin/tenants".to_owned()),
        (
            "PATCH",
            "/admin/tenants/ten_00000000000000000000000000000000".to_owned(),
        ),
    ] {
        let (status, _, body) = send(&f.usage, request(method, &path, None, Some(&bad_body))).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::UNAUTHORIZED, Some("missing_credentials")),
            "{method}"
        );
    }
}

#[tokio::test]
async fn rejects_each_class_of_invalid_tenant() {
    let f = fixture().await;
    let base = json!({"name": "A", "monthly_quota": 10, "billing_day": 1, "tier": "free"});
    let cases = [
        ("billing_day", json!(29), "invalid_body"),
        ("billing_day", json!(0), "invalid_body"),
        ("tier", json!("platinum"), "invalid_body"),
        ("monthly_quota", json!(-5), "invalid_body"),
        ("monthly_quota", json!(0), "invalid_tenant"),
        ("webhooks", json!(["not a url"]), "invalid_body"),
        (
            "webhooks",
            json!(
                (0..6)
                    .map(|i| format!("https://h.example/{i}"))
                    .collect::<Vec<_>>()
            ),
            "invalid_tenant",
        ),
        ("name", json!(" "), "invalid_tenant"),
        ("surprise", json!(true), "invalid_body"),
    ];
    for (field, value, code) in cases {
        let mut body = base.clone();
        body[field] = value;
        let (status, problem) = f.as_admin("POST", "/admin/tenants", Some(&body)).await;
        assert_eq!(
            (status, problem["code"].as_str().unwrap()),
            (StatusCode::BAD_REQUEST, code),
            "{field}: {problem}"
        );
    }
    let raw = http::Request::post("/admin/tenants")
        .header("authorization", format!("Bearer {}", f.admin))
        .body(axum::body::Body::from("{not json"))
        .unwrap();
    let (status, _, problem) = send(&f.usage, raw).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_body"))
    );
}

#[tokio::test]
async fn lists_tenants_page_by_page() {
    let f = fixture().await;
    let mut created = Vec::new();
    for _ in 0..3 {
        created.push(tenant(&f, 10, 1).await.0);
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    for _ in 0..20 {
        let path = match &cursor {
            Some(c) => format!("/admin/tenants?limit=2&cursor={c}"),
            None => "/admin/tenants?limit=2".to_owned(),
        };
        let (status, page) = f.as_admin("GET", &path, None).await;
        assert_eq!(status, StatusCode::OK);
        seen.extend(
            page["tenants"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    seen.sort();
    created.sort();
    assert_eq!(seen, created);

    for bad in [
        "/admin/tenants?limit=0",
        "/admin/tenants?limit=x",
        "/admin/tenants?cursor=%%%",
    ] {
        let (status, problem) = f.as_admin("GET", bad, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {problem}");
    }
}

#[tokio::test]
async fn patches_only_the_given_fields() {
    let f = fixture().await;
    let (id, _) = tenant(&f, 10, 1).await;
    let patch = json!({"monthly_quota": 500, "webhooks": ["https://h.example/a"]});
    let (status, patched) = f
        .as_admin("PATCH", &format!("/admin/tenants/{id}"), Some(&patch))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (patched["monthly_quota"].as_u64(), patched["name"].as_str()),
        (Some(500), Some("Acme"))
    );
    assert_eq!(patched["webhooks"], json!(["https://h.example/a"]));

    let missing = format!("/admin/tenants/ten_{}", "0".repeat(32));
    let (status, problem) = f.as_admin("PATCH", &missing, Some(&patch)).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (status, problem) = f.as_admin("GET", "/admin/tenants/nope", None).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("invalid_tenant_id"))
    );
    let bad = json!({"billing_day": 31});
    let (status, _) = f
        .as_admin("PATCH", &format!("/admin/tenants/{id}"), Some(&bad))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_rotated_key_works_for_the_grace_period_then_stops() {
    let f = fixture().await;
    let (id, old_key) = tenant(&f, 10, 1).await;
    let (status, rotated) = f
        .as_admin("POST", &format!("/admin/tenants/{id}/keys"), None)
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let new_key = rotated["api_key"].as_str().unwrap();
    assert_ne!(new_key, old_key);
    assert_eq!(usage_of(&f, &id, new_key, "").await.0, StatusCode::OK);
    assert_eq!(
        usage_of(&f, &id, &old_key, "").await.0,
        StatusCode::OK,
        "grace period"
    );

    // With no grace period, the old key stops at once.
    let mut config = usage::Config::from_env(f.stack.env("usage")).unwrap();
    config.key_grace = TimeDelta::zero();
    let strict = usage::app(&config, &support::aws_as("usage").await);
    let (_, _, rotated) = send(
        &strict,
        request(
            "POST",
            &format!("/admin/tenants/{id}/keys"),
            Some(&f.admin),
            None,
        ),
    )
    .await;
    let newest = rotated["api_key"].as_str().unwrap();
    let (status, problem) =
        call(&strict, "GET", &format!("/usage/{id}"), Some(new_key), None).await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("invalid_api_key"))
    );
    let (status, _) = call(&strict, "GET", &format!("/usage/{id}"), Some(newest), None).await;
    assert_eq!(status, StatusCode::OK);
}

// ------------------------------------------------------------------- ingest

#[tokio::test]
async fn accepted_events_are_on_the_queue_in_one_message() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let body = json!({"events": [
        {"id": "e1", "feature": "chat", "tokens": 10},
        {"id": "e2", "feature": "chat", "tokens": 20, "timestamp": now_minus(1)},
        {"feature": "search", "tokens": 5, "properties": {"model": "m"}},
    ]});
    let (status, accepted) = post_events(&f, &key, &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{accepted}");
    assert_eq!(accepted["accepted"], 3);
    assert_eq!(accepted["ids"][0], "e1");

    let sqs = aws_sdk_sqs::Client::new(&support::aws().await);
    let queue = f.stack.env("ingest").required("EVENTS_QUEUE_URL").unwrap();
    let received = support::waiting(&sqs, &queue).await;
    assert_eq!(received.len(), 1);
    let batch: EventBatch = serde_json::from_str(received[0].body().unwrap()).unwrap();
    assert_eq!(batch.tenant.as_str(), id);
    assert_eq!(batch.events.len(), 3);
}

#[tokio::test]
async fn invalid_events_are_listed_and_nothing_is_enqueued() {
    let f = fixture().await;
    let (_, key) = tenant(&f, 1000, 1).await;
    let body = json!({"events": [
        {"feature": "chat", "tokens": 10},
        {"feature": "chat", "tokens": -1},
        {"feature": "bad feature", "tokens": 1},
    ]});
    let (status, problem) = post_events(&f, &key, &body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(problem["code"], "invalid_events");
    let indices: Vec<u64> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["index"].as_u64().unwrap())
        .collect();
    assert_eq!(indices, [1, 2]);
    assert!(problem["request_id"].is_string());

    let mut p = pump(&f.stack).await;
    p.source.batch_size = 10;
    assert_eq!(
        drain(&p).await,
        0,
        "nothing from a rejected request reaches the queue"
    );
}

#[tokio::test]
async fn each_bad_request_class_has_its_code() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let raw = |body: Vec<u8>, token: Option<&str>| {
        let mut b = http::Request::post("/events");
        if let Some(t) = token {
            b = b.header("authorization", format!("Bearer {t}"));
        }
        b.body(axum::body::Body::from(body)).unwrap()
    };
    let unknown_key = format!("igk_{}", "0".repeat(64));
    let cases: Vec<(http::Request<axum::body::Body>, StatusCode, &str)> = vec![
        (
            raw(b"{}".to_vec(), None),
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        ),
        (
            raw(b"{}".to_vec(), Some("igk_short")),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            raw(b"{}".to_vec(), Some(&unknown_key)),
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            raw(b"{nope".to_vec(), Some(&key)),
            StatusCode::BAD_REQUEST,
            "invalid_json",
        ),
        (
            raw(b"[1]".to_vec(), Some(&key)),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            raw(br#"{"events": []}"#.to_vec(), Some(&key)),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            raw(vec![b' '; 2 * 1024 * 1024], Some(&key)),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
    ];
    for (req, status, code) in cases {
        let (got, headers, problem) = send(&f.ingest, req).await;
        assert_eq!(
            (got, problem["code"].as_str().unwrap_or("")),
            (status, code),
            "{problem}"
        );
        assert_eq!(headers["content-type"], "application/problem+json");
    }

    // Once disabling answers, the tenant is refused, even by this warm
    // instance that has just looked its key up.
    let patch = json!({"enabled": false});
    send(
        &f.usage,
        request(
            "PATCH",
            &format!("/admin/tenants/{id}"),
            Some(&f.admin),
            Some(&patch),
        ),
    )
    .await;
    let (status, problem) = call(
        &f.ingest,
        "POST",
        "/events",
        Some(&key),
        Some(&json!({"feature": "f", "tokens": 1})),
    )
    .await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("tenant_disabled"))
    );
}

#[tokio::test]
async fn a_queue_that_fails_is_a_503_with_retry_after() {
    let f = fixture().await;
    let (_, key) = tenant(&f, 1000, 1).await;
    let mut config = ingest::Config::from_env(f.stack.env("ingest")).unwrap();
    config.events_queue_url = format!(
        "{}/123456789012/{}",
        support::emulator(),
        support::unique("gone")
    );
    let app = ingest::app(&config, &support::aws_as("ingest").await);
    let (status, headers, problem) = send(
        &app,
        request(
            "POST",
            "/events",
            Some(&key),
            Some(&json!({"feature": "f", "tokens": 1})),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers["retry-after"], "5");
    assert_eq!(problem["code"], "dependency_unavailable");
    assert_eq!(problem["dependency"], "events queue");
}

// ------------------------------------------------------ counting and usage

#[tokio::test]
async fn events_flow_from_ingest_through_rollup_to_usage() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let body = json!({"events": [
        {"id": "a", "feature": "chat", "tokens": 100, "timestamp": now_minus(2)},
        {"id": "b", "feature": "chat", "tokens": 50, "timestamp": now_minus(2)},
        {"id": "c", "feature": "search", "tokens": 25},
    ]});
    assert_eq!(post_events(&f, &key, &body).await.0, StatusCode::ACCEPTED);
    assert_eq!(drain(&pump(&f.stack).await).await, 1);

    let (status, usage) = usage_of(&f, &id, &key, "?window=1h").await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(usage["tenant"], id.as_str());
    assert_eq!(usage["tenantName"], "Acme");
    assert_eq!(usage["totalTokens"], 175);
    assert_eq!(usage["events"], 3);
    assert_eq!(usage["monthlyQuota"], 1000);
    assert_eq!(usage["quotaPercent"], 17.5);
    assert_eq!(usage["remaining"], 825);
    assert_eq!(
        usage["features"],
        json!([{"feature": "chat", "tokens": 150, "events": 2}, {"feature": "search", "tokens": 25, "events": 1}])
    );
    let points = usage["series"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 60);
    assert_eq!(
        points
            .iter()
            .map(|p| p["tokens"].as_u64().unwrap())
            .sum::<u64>(),
        175
    );
    assert_eq!(usage["series"]["resolution"], "minute");

    // Any range, in hours, per feature.
    let range = format!(
        "?from={}&to={}&resolution=hour&group_by=feature",
        (Utc::now() - TimeDelta::hours(2)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        (Utc::now() + TimeDelta::minutes(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let (status, grouped) = usage_of(&f, &id, &key, &range).await;
    assert_eq!(status, StatusCode::OK, "{grouped}");
    let by_feature: Vec<(String, u64)> = grouped["series"]["byFeature"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["feature"].as_str().unwrap().to_owned(),
                g["tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        by_feature,
        [("chat".to_owned(), 150), ("search".to_owned(), 25)]
    );

    // The admin token reads it too; the period follows billing day 1.
    let (status, by_admin) = usage_of(&f, &id, &f.admin, "?window=period").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(by_admin["totalTokens"], 175);
    let start: DateTime<Utc> = serde_json::from_value(by_admin["periodStart"].clone()).unwrap();
    assert_eq!(start.format("%d %H:%M").to_string(), "01 00:00");
}

/// Usage counted before counters held their features (an item per
/// feature and minute, per feature and period) adds up with what is
/// counted now.
#[tokio::test]
async fn usage_counted_in_the_old_layout_adds_up_with_the_new() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let minute = (Utc::now() - TimeDelta::minutes(2)).format("%Y-%m-%dT%H:%MZ");
    let period = shared::metering::period::BillingPeriod::containing(
        Utc::now(),
        BillingDay::try_from(1).unwrap(),
    )
    .key();
    let dynamodb = aws_sdk_dynamodb::Client::new(&support::aws().await);
    let table = f.stack.env("rollup").required("USAGE_TABLE").unwrap();
    let (s, n) = (aws_sdk_dynamodb::types::AttributeValue::S, |v: u64| {
        aws_sdk_dynamodb::types::AttributeValue::N(v.to_string())
    });
    for (pk, sk, tokens, events) in [
        (format!("TENANT#{id}"), format!("PERIOD#{period}"), 40, 2),
        (
            format!("TENANT#{id}"),
            format!("PERIOD#{period}#FEATURE#chat"),
            40,
            2,
        ),
        (format!("ROLLUP#{id}"), format!("{minute}#chat"), 40, 2),
    ] {
        dynamodb
            .put_item()
            .table_name(&table)
            .item("pk", s(pk))
            .item("sk", s(sk))
            .item("tokens", n(tokens))
            .item("events", n(events))
            .send()
            .await
            .unwrap();
    }
    let body = json!({"events": [
        {"id": "a", "feature": "chat", "tokens": 5, "timestamp": now_minus(2)},
        {"id": "b", "feature": "search", "tokens": 3, "timestamp": now_minus(2)},
    ]});
    assert_eq!(post_events(&f, &key, &body).await.0, StatusCode::ACCEPTED);
    drain(&pump(&f.stack).await).await;

    let (status, usage) = usage_of(&f, &id, &key, "?window=1h").await;
    assert_eq!(status, StatusCode::OK, "{usage}");
    assert_eq!(
        (usage["totalTokens"].as_u64(), usage["events"].as_u64()),
        (Some(48), Some(4))
    );
    assert_eq!(
        usage["features"],
        json!([{"feature": "chat", "tokens": 45, "events": 3}, {"feature": "search", "tokens": 3, "events": 1}])
    );
    let points = usage["series"]["points"].as_array().unwrap();
    let series: u64 = points.iter().map(|p| p["tokens"].as_u64().unwrap()).sum();
    assert_eq!(series, 48);
}

#[tokio::test]
async fn a_resent_and_redelivered_event_counts_once() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let first = json!({"events": [{"id": "dup", "feature": "chat", "tokens": 40}, {"id": "x", "feature": "chat", "tokens": 2}]});
    let retry = json!({"events": [{"id": "dup", "feature": "chat", "tokens": 40}, {"id": "y", "feature": "chat", "tokens": 3}]});
    assert_eq!(post_events(&f, &key, &first).await.0, StatusCode::ACCEPTED);
    assert_eq!(post_events(&f, &key, &retry).await.0, StatusCode::ACCEPTED);
    // The same message body twice more, as SQS redelivery would hand it over.
    assert_eq!(post_events(&f, &key, &first).await.0, StatusCode::ACCEPTED);
    drain(&pump(&f.stack).await).await;
    assert_eq!(post_events(&f, &key, &retry).await.0, StatusCode::ACCEPTED);
    drain(&pump(&f.stack).await).await;

    let (_, usage) = usage_of(&f, &id, &key, "").await;
    assert_eq!(
        (usage["totalTokens"].as_u64(), usage["events"].as_u64()),
        (Some(45), Some(3))
    );
}

/// A client that sends no event ids but an `Idempotency-Key` can retry a
/// request (after a 503, a timeout) and have it counted once.
#[tokio::test]
async fn a_retried_request_with_an_idempotency_key_counts_once() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let body =
        json!({"events": [{"feature": "chat", "tokens": 40}, {"feature": "chat", "tokens": 2}]});
    let post = |idempotency: &'static str| {
        let mut request = request("POST", "/events", Some(&key), Some(&body));
        request.headers_mut().insert(
            "idempotency-key",
            http::HeaderValue::from_static(idempotency),
        );
        send(&f.ingest, request)
    };
    for idempotency in ["retry-me", "retry-me", "another-request"] {
        assert_eq!(post(idempotency).await.0, StatusCode::ACCEPTED);
    }
    drain(&pump(&f.stack).await).await;

    let (_, usage) = usage_of(&f, &id, &key, "").await;
    assert_eq!(
        (usage["totalTokens"].as_u64(), usage["events"].as_u64()),
        (Some(84), Some(4))
    );
}

/// CloudEvents from OpenMeter-style clients: a resend from the same source
/// counts once, the same id from another source is another event.
#[tokio::test]
async fn cloudevents_count_once_per_source_and_id() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let event = |source: &str, tokens: u64| {
        json!({"specversion": "1.0", "id": "run-1", "source": source, "type": "chat",
               "data": {"tokens": tokens}})
    };
    let post = |content_type: &'static str, body: serde_json::Value| {
        let mut request = request("POST", "/events", Some(&key), Some(&body));
        request
            .headers_mut()
            .insert("content-type", http::HeaderValue::from_static(content_type));
        send(&f.ingest, request)
    };
    let single = "application/cloudevents+json";
    assert_eq!(post(single, event("/a", 30)).await.0, StatusCode::ACCEPTED);
    assert_eq!(post(single, event("/a", 30)).await.0, StatusCode::ACCEPTED);
    let batch = json!([event("/a", 30), event("/b", 12)]);
    let status = post("application/cloudevents-batch+json", batch).await.0;
    assert_eq!(status, StatusCode::ACCEPTED);
    drain(&pump(&f.stack).await).await;

    let (_, usage) = usage_of(&f, &id, &key, "").await;
    assert_eq!(
        (usage["totalTokens"].as_u64(), usage["events"].as_u64()),
        (Some(42), Some(2))
    );
}

/// Deleting a tenant: its key stops, events it queued before are still
/// counted by the rollup (they were accepted; not retried into the DLQ),
/// its price alerts are deleted, and it is gone from the admin API; its
/// usage stays in the usage table.
#[tokio::test]
async fn a_deleted_tenants_key_stops_and_its_queued_events_are_counted() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 15).await;
    let tenant = TenantId::try_from(id.clone()).unwrap();
    let prices = DynamoPrices::new(
        shared::aws::Dynamo::new(&support::aws().await),
        &f.stack.env("usage").required("PRICES_TABLE").unwrap(),
    );
    let settings = PriceSettings::from_env(&Env::from_pairs([("CURRENCIES", "USD,EUR")])).unwrap();
    for currency in ["USD", "EUR"] {
        let new = serde_json::from_value(json!({"metal": "gold", "currency": currency,
            "direction": "above", "price": 5000, "webhook": "https://hooks.example/gold"}))
        .unwrap();
        register(&prices, &tenant, new, &settings, Utc::now())
            .await
            .unwrap();
    }
    assert_eq!(prices.list(&tenant).await.unwrap().len(), 2);
    let first = json!({"id": "before", "feature": "chat", "tokens": 10});
    assert_eq!(post_events(&f, &key, &first).await.0, StatusCode::ACCEPTED);
    drain(&pump(&f.stack).await).await;
    let queued = json!({"id": "queued", "feature": "chat", "tokens": 5});
    assert_eq!(post_events(&f, &key, &queued).await.0, StatusCode::ACCEPTED);
    assert_eq!(usage_of(&f, &id, &key, "").await.0, StatusCode::OK);

    let path = format!("/admin/tenants/{id}");
    assert_eq!(
        f.as_admin("DELETE", &path, None).await.0,
        StatusCode::NO_CONTENT
    );
    // Once the delete answers, the key is refused, even by this warm
    // instance that has just looked it up.
    let later = request("POST", "/events", Some(&key), Some(&queued));
    assert_eq!(send(&f.ingest, later).await.0, StatusCode::UNAUTHORIZED);
    // Its price alerts are gone, both items of each: none is evaluated.
    assert!(prices.list(&tenant).await.unwrap().is_empty());
    for currency in ["USD", "EUR"] {
        let watching = prices
            .watching(
                Metal::Gold,
                &Currency::try_from(currency.to_owned()).unwrap(),
            )
            .await
            .unwrap();
        assert!(watching.iter().all(|a| a.tenant != tenant));
    }
    assert_eq!(
        usage_of(&f, &id, &key, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    // `drain` fails on any redelivery: the queued event is acknowledged.
    drain(&pump(&f.stack).await).await;
    assert_eq!(
        f.as_admin("GET", &path, None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        usage_of(&f, &id, &f.admin, "").await.0,
        StatusCode::NOT_FOUND
    );

    let ledger = DynamoLedger::new(
        shared::aws::Dynamo::new(&support::aws().await),
        &f.stack.env("rollup").required("USAGE_TABLE").unwrap(),
    );
    let period =
        shared::metering::period::BillingPeriod::containing(Utc::now(), 15.try_into().unwrap());
    assert_eq!(
        ledger.period_total(&tenant, &period.key()).await.unwrap(),
        15
    );
}

#[tokio::test]
async fn a_consumer_failure_mid_batch_loses_and_doubles_nothing() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1_000_000, 1).await;
    let tenant_id = TenantId::try_from(id.clone()).unwrap();
    // Five messages of 50 events, in two features (4+ counters).
    let messages: Vec<(Seq, Vec<UsageEvent>)> = (0..5u64)
        .map(|m| {
            let events = (0..50)
                .map(|i| UsageEvent {
                    id: EventId::try_from(format!("e{m}-{i}")).unwrap(),
                    feature: Feature::try_from(format!("f{}", m % 2)).unwrap(),
                    tokens: Tokens::try_from(m * 50 + i + 1).unwrap(),
                    timestamp: Utc::now(),
                    properties: Default::default(),
                })
                .collect();
            (Seq(1_000 + u128::from(m)), events)
        })
        .collect();
    let expected: u64 = (1..=250).sum();
    let ledger = DynamoLedger::new(
        shared::aws::Dynamo::new(&support::aws().await),
        &f.stack.env("rollup").required("USAGE_TABLE").unwrap(),
    );
    let day = BillingDay::try_from(1).unwrap();

    // The first delivery crashes after one counter was written...
    let crashing = Crashing::after(&ledger, 1);
    assert!(count(&crashing, &tenant_id, day, &messages).await.is_err());
    // ...the redelivery comes regrouped, and a client resends message 0.
    let counted = count(&ledger, &tenant_id, day, &messages[..2])
        .await
        .unwrap();
    assert_eq!((counted.events, counted.duplicates), (100, 0));
    let mut rest = messages[2..].to_vec();
    rest.push((Seq(2_000), messages[0].1.clone()));
    let counted = count(&ledger, &tenant_id, day, &rest).await.unwrap();
    assert_eq!((counted.events, counted.duplicates), (150, 50));

    let (_, usage) = usage_of(&f, &id, &key, "").await;
    assert_eq!(
        (usage["totalTokens"].as_u64(), usage["events"].as_u64()),
        (Some(expected), Some(250))
    );
}

#[tokio::test]
async fn usage_queries_are_checked() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let (other, other_key) = tenant(&f, 1000, 1).await;
    let (status, problem) = usage_of(&f, &other, &key, "").await;
    assert_eq!(
        (status, problem["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    assert_eq!(usage_of(&f, &other, &other_key, "").await.0, StatusCode::OK);

    for (query, code) in [
        ("?window=2w", "invalid_window"),
        ("?resolution=second", "invalid_resolution"),
        ("?window=7d&resolution=minute", "invalid_resolution"),
    ] {
        let (status, problem) = usage_of(&f, &id, &key, query).await;
        assert_eq!(
            (status, problem["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{query}"
        );
    }
    let (status, series) = usage_of(&f, &id, &key, "?window=7d&resolution=day").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(series["series"]["points"].as_array().unwrap().len(), 7);
    let (status, _) = usage_of(&f, &format!("ten_{}", "f".repeat(32)), &f.admin, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// A message that can never be counted is set aside on the DLQ (it claimed
/// nothing, so a redrive is safe); a tenant that cannot be counted yet is
/// retried; the rest is counted.
#[tokio::test]
async fn only_the_messages_that_cannot_be_counted_are_retried() {
    let f = fixture().await;
    let (id, key) = tenant(&f, 1000, 1).await;
    let p = pump(&f.stack).await;
    let send_raw = |body: String| {
        let p = &p;
        async move { support::send_message(&p.sqs, &p.queue_url, &body).await }
    };
    let good = send_raw(format!(
        r#"{{"tenant":"{id}","events":[{{"id":"g","feature":"f","tokens":7,"timestamp":"{}"}}]}}"#,
        Utc::now().to_rfc3339()
    ))
    .await;
    let garbage = send_raw("not json".to_owned()).await;
    let stranger = send_raw(format!(
        r#"{{"tenant":"ten_{}","events":[]}}"#,
        "a".repeat(32)
    ))
    .await;

    let outcome = p.poll_once().await.unwrap();
    assert_eq!(outcome.delivered, 3);
    assert_eq!(outcome.failed, [stranger]);
    assert!(!outcome.failed.contains(&good) && !outcome.failed.contains(&garbage));
    let (_, usage) = usage_of(&f, &id, &key, "").await;
    assert_eq!(usage["totalTokens"], 7);

    let dlq = f.stack.env("rollup").required("EVENTS_DLQ_URL").unwrap();
    let parked = support::waiting(&p.sqs, &dlq).await;
    let bodies: Vec<&str> = parked.iter().filter_map(|m| m.body()).collect();
    assert_eq!(bodies, ["not json"]);
}
