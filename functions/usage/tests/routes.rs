//! `usage`'s routes through memory doubles of every edge: no emulator.
//! tests/metering.rs and tests/chat.rs drive the same routes against it.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{Request, StatusCode};
use chrono::{TimeDelta, Utc};
use http_body_util::BodyExt;
use serde_json::{Value, json};
use shared::chat::store::{ChatStore, MemoryChat, UsageRecord};
use shared::clock::FixedClock;
use shared::config::Env;
use shared::health::HealthChecks;
use shared::jwt::MemoryTokens;
use shared::metering::rollup::{MemoryLedger, Seq, count};
use shared::metering::tenants::MemoryTenants;
use shared::metering::types::{EventId, Feature, TenantId, Tokens, UsageEvent};
use shared::prices::alerts::{MemoryPriceAlerts, PriceAlerts, register};
use shared::prices::settings::PriceSettings;
use shared::ratelimit::MemoryCounter;
use shared::secrets::MemorySecrets;
use tower::ServiceExt;
use usage::{Config, Edges, FUNCTION, router};

const ADMIN: &str = "admin-token";
const USER_TOKEN: &str = "token-of-user-1";
const SUBJECT: &str = "user_1";

struct Usage {
    router: Router,
    tenants: Arc<MemoryTenants>,
    usage: Arc<MemoryLedger>,
    chat: Arc<MemoryChat>,
    price_alerts: Arc<MemoryPriceAlerts>,
    clock: Arc<FixedClock>,
}

fn usage() -> Usage {
    let env = Env::from_pairs([
        ("CHAT_TABLE", "chat"),
        ("USAGE_TABLE", "usage"),
        ("TENANTS_TABLE", "tenants"),
        ("RATE_LIMIT_TABLE", "limits"),
        ("EVENTS_QUEUE_URL", "http://queue"),
        ("ANTHROPIC_API_KEY_SECRET", "anthropic"),
        ("ADMIN_TOKEN_SECRET", "admin"),
        ("PRICES_TABLE", "prices"),
    ]);
    let tenants = Arc::new(MemoryTenants::default());
    let usage = Arc::new(MemoryLedger::default());
    let chat = Arc::new(MemoryChat::default());
    let price_alerts = Arc::new(MemoryPriceAlerts::default());
    let clock = Arc::new(FixedClock::at(Utc::now()));
    let edges = Edges {
        tenants: tenants.clone(),
        usage: usage.clone(),
        chat: chat.clone(),
        price_alerts: price_alerts.clone(),
        secrets: Arc::new(MemorySecrets::default().with("admin", ADMIN)),
        verifier: Some(Arc::new(MemoryTokens::default().with(USER_TOKEN, SUBJECT))),
        rate_counter: Arc::new(MemoryCounter::default()),
        clock: clock.clone(),
    };
    let router = router(
        &Config::from_env(&env).unwrap(),
        edges,
        HealthChecks::new(FUNCTION, "test"),
        HealthChecks::new("chat", "test"),
    );
    Usage {
        router,
        tenants,
        usage,
        chat,
        price_alerts,
        clock,
    }
}

struct Answered {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Bytes,
}

impl Answered {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }

    /// The problem's `code`, checking it is problem+json.
    fn code(&self) -> String {
        assert_eq!(self.headers["content-type"], "application/problem+json");
        self.json()["code"].as_str().unwrap().to_owned()
    }
}

fn request(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    match body {
        Some(body) => request
            .header("content-type", "application/json")
            .body(Body::from(body.to_string())),
        None => request.body(Body::empty()),
    }
    .unwrap()
}

fn as_admin(method: &str, path: &str) -> Request<Body> {
    request(method, path, Some(ADMIN), None)
}

async fn send(app: &Usage, request: Request<Body>) -> Answered {
    let response = app.router.clone().oneshot(request).await.unwrap();
    let (parts, body) = response.into_parts();
    Answered {
        status: parts.status,
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

fn acme() -> Value {
    json!({"name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"})
}

fn other() -> Value {
    json!({"name": "Other", "monthly_quota": 10, "billing_day": 1, "tier": "free"})
}

/// Creates a tenant as the admin: its id and API key.
async fn create(app: &Usage, body: Value) -> (String, String) {
    let created = send(
        app,
        request("POST", "/admin/tenants", Some(ADMIN), Some(body)),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let body = created.json();
    (
        body["id"].as_str().unwrap().to_owned(),
        body["api_key"].as_str().unwrap().to_owned(),
    )
}

/// `events` as the next message of `tenant`'s group, counted as the rollup
/// would.
async fn count_message(app: &Usage, tenant: &TenantId, events: Vec<UsageEvent>) {
    static SEQUENCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    let seq = Seq(SEQUENCE
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        .into());
    count(
        app.usage.as_ref(),
        tenant,
        1.try_into().unwrap(),
        &[(seq, events)],
    )
    .await
    .unwrap();
}

/// Counts `(id, tokens, at)` events of tenant `id` as the rollup would.
async fn counted(app: &Usage, id: &str, events: &[(&str, u64, chrono::DateTime<Utc>)]) {
    let events: Vec<UsageEvent> = events
        .iter()
        .map(|(event, tokens, at)| UsageEvent {
            id: EventId::try_from((*event).to_owned()).unwrap(),
            feature: Feature::try_from("chat".to_owned()).unwrap(),
            tokens: Tokens::try_from(*tokens).unwrap(),
            timestamp: *at,
            properties: Default::default(),
        })
        .collect();
    let tenant = TenantId::try_from(id.to_owned()).unwrap();
    count_message(app, &tenant, events).await;
}

/// Disabling answers once the tenant's key is refused, even by an instance
/// that has just looked it up.
#[tokio::test(start_paused = true)]
async fn an_admin_creates_reads_lists_and_patches_a_tenant() {
    let app = usage();
    let created = send(
        &app,
        request("POST", "/admin/tenants", Some(ADMIN), Some(acme())),
    )
    .await;
    assert_eq!(created.status, StatusCode::CREATED);
    let body = created.json();
    assert!(
        body["api_key"].as_str().unwrap().starts_with("igk_"),
        "{body}"
    );
    assert!(
        body["signing_secret"]
            .as_str()
            .unwrap()
            .starts_with("whsec_")
    );
    let id = body["id"].as_str().unwrap();

    let key = body["api_key"].as_str().unwrap();
    let own = || request("GET", &format!("/usage/{id}"), Some(key), None);
    assert_eq!(send(&app, own()).await.status, StatusCode::OK);

    let read = send(&app, as_admin("GET", &format!("/admin/tenants/{id}"))).await;
    assert_eq!(read.json()["name"], "Acme");
    assert!(read.json().get("signing_secret").is_none());

    let patch = json!({"monthly_quota": 5, "enabled": false});
    let patched = send(
        &app,
        request(
            "PATCH",
            &format!("/admin/tenants/{id}"),
            Some(ADMIN),
            Some(patch),
        ),
    )
    .await;
    assert_eq!(patched.status, StatusCode::OK);
    assert_eq!(
        (
            patched.json()["monthly_quota"].as_u64(),
            patched.json()["enabled"].as_bool()
        ),
        (Some(5), Some(false))
    );
    let refused = send(&app, own()).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.json()["code"], "tenant_disabled");

    let listed = send(&app, as_admin("GET", "/admin/tenants")).await;
    assert_eq!(listed.json()["tenants"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn admin_routes_refuse_missing_and_wrong_tokens_before_reading_the_body() {
    let app = usage();
    let missing = send(
        &app,
        request("POST", "/admin/tenants", None, Some(json!({"bad": 1}))),
    )
    .await;
    assert_eq!(
        (missing.status, missing.code()),
        (StatusCode::UNAUTHORIZED, "missing_credentials".into())
    );
    let wrong = send(&app, request("GET", "/admin/tenants", Some("guess"), None)).await;
    assert_eq!(
        (wrong.status, wrong.code()),
        (StatusCode::UNAUTHORIZED, "invalid_credentials".into())
    );
}

#[tokio::test]
async fn bad_tenant_input_is_a_400_naming_the_problem() {
    let app = usage();
    let cases = [
        (
            request(
                "POST",
                "/admin/tenants",
                Some(ADMIN),
                Some(json!({"name": "x"})),
            ),
            "invalid_body",
        ),
        (
            request(
                "POST",
                "/admin/tenants",
                Some(ADMIN),
                Some(json!({"name": " ", "monthly_quota": 1, "billing_day": 1, "tier": "free"})),
            ),
            "invalid_tenant",
        ),
        (
            as_admin("GET", "/admin/tenants/not-an-id"),
            "invalid_tenant_id",
        ),
        (as_admin("GET", "/admin/tenants?limit=0"), "invalid_limit"),
        (
            as_admin("GET", "/admin/tenants?cursor=zzz"),
            "invalid_cursor",
        ),
    ];
    for (request, code) in cases {
        let answer = send(&app, request).await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code.to_owned())
        );
    }
}

#[tokio::test]
async fn an_unknown_tenant_is_a_404() {
    let app = usage();
    let id = "ten_00000000000000000000000000000000";
    let answer = send(&app, as_admin("GET", &format!("/admin/tenants/{id}"))).await;
    assert_eq!(
        (answer.status, answer.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let rotate = send(&app, as_admin("POST", &format!("/admin/tenants/{id}/keys"))).await;
    assert_eq!(rotate.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn an_admin_rotates_the_signing_secret_and_the_old_one_overlaps() {
    let app = usage();
    let created = send(
        &app,
        request("POST", "/admin/tenants", Some(ADMIN), Some(acme())),
    )
    .await
    .json();
    let id = created["id"].as_str().unwrap();
    let path = format!("/admin/tenants/{id}/signing-secret");
    let rotated = send(&app, as_admin("POST", &path)).await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let body = rotated.json();
    let secret = body["signing_secret"].as_str().unwrap();
    assert!(secret.starts_with("whsec_"));
    assert_ne!(secret, created["signing_secret"].as_str().unwrap());
    let until: chrono::DateTime<Utc> =
        serde_json::from_value(body["previous_secret_valid_until"].clone()).unwrap();
    let now = shared::clock::Clock::now(app.clock.as_ref());
    assert_eq!(until - now, TimeDelta::hours(24));

    let unknown = format!("/admin/tenants/{}/signing-secret", TenantId::generate());
    assert_eq!(
        send(&app, as_admin("POST", &unknown)).await.status,
        StatusCode::NOT_FOUND
    );
    let no_admin = send(&app, request("POST", &path, None, None)).await;
    assert_eq!(no_admin.status, StatusCode::UNAUTHORIZED);
}

/// The key reads its own usage first, so this instance remembers it; once
/// the delete answers it is refused all the same.
#[tokio::test(start_paused = true)]
async fn a_deleted_tenant_is_gone_and_its_key_stops() {
    let app = usage();
    let (id, key) = create(&app, acme()).await;
    let own = || request("GET", &format!("/usage/{id}"), Some(&key), None);
    assert_eq!(send(&app, own()).await.status, StatusCode::OK);
    let path = format!("/admin/tenants/{id}");
    assert_eq!(
        send(&app, request("DELETE", &path, None, None))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        send(&app, as_admin("DELETE", &path)).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        send(&app, as_admin("GET", &path)).await.status,
        StatusCode::NOT_FOUND
    );
    // A repeat finishes what a failed delete left (the next test).
    assert_eq!(
        send(&app, as_admin("DELETE", &path)).await.status,
        StatusCode::NO_CONTENT
    );
    let unknown = format!("/admin/tenants/{}", TenantId::generate());
    assert_eq!(
        send(&app, as_admin("DELETE", &unknown)).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(send(&app, own()).await.status, StatusCode::UNAUTHORIZED);
}

/// A tenant's price alerts go with it, and no one else's; a delete that
/// failed on them (the prices table down) is finished by a repeat.
#[tokio::test(start_paused = true)]
async fn a_deleted_tenants_price_alerts_go_with_it() {
    let app = usage();
    let (id, _) = create(&app, acme()).await;
    let (other, _) = create(&app, other()).await;
    let (id, other) = (
        TenantId::try_from(id).unwrap(),
        TenantId::try_from(other).unwrap(),
    );
    let settings = PriceSettings::from_env(&Env::from_pairs([("CURRENCIES", "USD")])).unwrap();
    for tenant in [&id, &id, &other] {
        let new = serde_json::from_value(json!({
            "metal": "gold", "direction": "above", "price": 5000.0,
            "webhook": "https://hooks.example.com/ingot",
        }))
        .unwrap();
        register(
            app.price_alerts.as_ref(),
            tenant,
            new,
            &settings,
            Utc::now(),
        )
        .await
        .unwrap();
    }
    let path = format!("/admin/tenants/{id}");
    app.price_alerts.outage.begin();
    let failed = send(&app, as_admin("DELETE", &path)).await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(failed.headers.contains_key("retry-after"));
    assert_eq!(
        send(&app, as_admin("GET", &path)).await.status,
        StatusCode::NOT_FOUND
    );
    app.price_alerts.outage.end();
    assert_eq!(app.price_alerts.list(&id).await.unwrap().len(), 2);
    assert_eq!(
        send(&app, as_admin("DELETE", &path)).await.status,
        StatusCode::NO_CONTENT
    );
    assert!(app.price_alerts.list(&id).await.unwrap().is_empty());
    assert_eq!(app.price_alerts.list(&other).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_rotated_key_works_through_its_grace_period_and_not_after() {
    let app = usage();
    let (id, old) = create(&app, acme()).await;
    let rotated = send(&app, as_admin("POST", &format!("/admin/tenants/{id}/keys"))).await;
    assert_eq!(rotated.status, StatusCode::CREATED);
    let new = rotated.json()["api_key"].as_str().unwrap().to_owned();
    let path = format!("/usage/{id}");
    assert_eq!(
        send(&app, request("GET", &path, Some(&new), None))
            .await
            .status,
        StatusCode::OK
    );
    app.clock.advance(TimeDelta::hours(23));
    assert_eq!(
        send(&app, request("GET", &path, Some(&old), None))
            .await
            .status,
        StatusCode::OK
    );

    // A key never looked up before (so not in the key cache) past its grace.
    let (id, old) = create(
        &app,
        json!({"name": "Next", "monthly_quota": 10, "billing_day": 1, "tier": "free"}),
    )
    .await;
    send(&app, as_admin("POST", &format!("/admin/tenants/{id}/keys"))).await;
    app.clock
        .advance(TimeDelta::days(1) + TimeDelta::seconds(1));
    let expired = send(
        &app,
        request("GET", &format!("/usage/{id}"), Some(&old), None),
    )
    .await;
    assert_eq!(
        (expired.status, expired.code()),
        (StatusCode::UNAUTHORIZED, "invalid_api_key".into())
    );
}

#[tokio::test]
async fn a_tenant_reads_its_own_usage_and_no_one_elses() {
    let app = usage();
    let (id, key) = create(&app, acme()).await;
    let (other, _) = create(&app, other()).await;
    let five_minutes_ago = shared::clock::Clock::now(app.clock.as_ref()) - TimeDelta::minutes(5);
    counted(
        &app,
        &id,
        &[("a", 200, five_minutes_ago), ("b", 50, five_minutes_ago)],
    )
    .await;
    let own = send(
        &app,
        request("GET", &format!("/usage/{id}?window=1h"), Some(&key), None),
    )
    .await;
    assert_eq!(own.status, StatusCode::OK);
    let body = own.json();
    assert_eq!(
        (body["totalTokens"].as_u64(), body["remaining"].as_u64()),
        (Some(250), Some(750))
    );
    assert_eq!(body["quotaPercent"], 25.0);
    let points = body["series"]["points"].as_array().unwrap();
    assert_eq!(points.len(), 60);
    assert_eq!(
        points
            .iter()
            .map(|p| p["tokens"].as_u64().unwrap())
            .sum::<u64>(),
        250
    );

    let theirs = send(
        &app,
        request("GET", &format!("/usage/{other}"), Some(&key), None),
    )
    .await;
    assert_eq!(
        (theirs.status, theirs.code()),
        (StatusCode::FORBIDDEN, "forbidden".into())
    );
    let admin = send(&app, as_admin("GET", &format!("/usage/{other}"))).await;
    assert_eq!(admin.status, StatusCode::OK);
}

/// Any range (`from`, `to`) at a chosen resolution, in all and per feature.
#[tokio::test]
async fn usage_over_a_range_grouped_by_feature() {
    let app = usage();
    let (id, key) = create(&app, acme()).await;
    let now = shared::clock::Clock::now(app.clock.as_ref());
    let earlier = now - TimeDelta::hours(3);
    counted(
        &app,
        &id,
        &[("a", 200, earlier), ("b", 50, now - TimeDelta::minutes(5))],
    )
    .await;
    let (from, to) = (
        (now - TimeDelta::hours(4)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    );
    let path = format!("/usage/{id}?from={from}&to={to}&resolution=hour&group_by=feature");
    let answer = send(&app, request("GET", &path, Some(&key), None)).await;
    assert_eq!(answer.status, StatusCode::OK);
    let series = &answer.json()["series"];
    assert_eq!(series["window"], Value::Null);
    assert_eq!(series["resolution"], "hour");
    let points = series["points"].as_array().unwrap();
    assert!((4..=5).contains(&points.len()), "{points:?}");
    let groups = series["byFeature"].as_array().unwrap();
    assert_eq!(
        groups.len(),
        1,
        "both events are of one feature: {groups:?}"
    );
    assert_eq!(groups[0]["tokens"], 250);
    let sum = |points: &Value| -> u64 {
        points
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["tokens"].as_u64().unwrap())
            .sum()
    };
    assert_eq!(sum(&groups[0]["points"]), 250);
    assert_eq!(sum(&series["points"]), 250);

    let plain = send(
        &app,
        request("GET", &format!("/usage/{id}"), Some(&key), None),
    )
    .await;
    assert_eq!(plain.json()["series"]["byFeature"], Value::Null);
}

#[tokio::test]
async fn bad_usage_queries_are_400s() {
    let app = usage();
    let (id, key) = create(&app, acme()).await;
    for (query, code) in [
        ("window=2h", "invalid_window"),
        ("resolution=second", "invalid_resolution"),
        ("window=7d&resolution=minute", "invalid_resolution"),
        ("from=2026-11-22T10:00:00Z", "invalid_range"),
        (
            "window=1h&from=2026-11-22T10:00:00Z&to=2026-11-22T11:00:00Z",
            "invalid_range",
        ),
        ("from=yesterday&to=2026-11-22T11:00:00Z", "invalid_range"),
        (
            "from=2026-11-22T11:00:00Z&to=2026-11-22T10:00:00Z",
            "invalid_range",
        ),
        (
            "from=2020-01-01T00:00:00Z&to=2020-01-02T00:00:00Z",
            "invalid_range",
        ),
        ("group_by=tenant", "invalid_group_by"),
    ] {
        let answer = send(
            &app,
            request("GET", &format!("/usage/{id}?{query}"), Some(&key), None),
        )
        .await;
        assert_eq!(
            (answer.status, answer.code()),
            (StatusCode::BAD_REQUEST, code.to_owned()),
            "{query}"
        );
    }
    let unknown_key = send(
        &app,
        request("GET", &format!("/usage/{id}"), Some("ingot_nope"), None),
    )
    .await;
    assert_eq!(unknown_key.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_failing_store_is_a_503_with_retry_after() {
    let app = usage();
    let (id, key) = create(&app, acme()).await;
    app.usage.outage.begin();
    let answer = send(
        &app,
        request("GET", &format!("/usage/{id}"), Some(&key), None),
    )
    .await;
    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["dependency"], "usage table");
    assert!(answer.headers.contains_key("retry-after"));
    app.tenants.outage.begin();
    let listed = send(&app, as_admin("GET", "/admin/tenants")).await;
    assert_eq!(listed.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(listed.json()["dependency"], "tenants table");
    assert!(listed.headers.contains_key("retry-after"));
}

#[tokio::test]
async fn the_admin_overview_lists_every_tenant_by_name_with_its_period_total() {
    let app = usage();
    let (b, _) = create(
        &app,
        json!({"name": "Beta", "monthly_quota": 100, "billing_day": 1, "tier": "free"}),
    )
    .await;
    create(&app, acme()).await;
    let now = shared::clock::Clock::now(app.clock.as_ref());
    counted(&app, &b, &[("b", 40, now)]).await;
    let overview = send(&app, as_admin("GET", "/admin/usage")).await;
    let rows = overview.json()["tenants"].as_array().unwrap().clone();
    let names: Vec<&str> = rows
        .iter()
        .map(|r| r["tenantName"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Acme", "Beta"]);
    assert_eq!(
        (
            rows[1]["totalTokens"].as_u64(),
            rows[1]["quotaPercent"].as_f64()
        ),
        (Some(40), Some(40.0))
    );
}

#[tokio::test]
async fn a_signed_in_user_reads_this_periods_usage_and_request_history() {
    let app = usage();
    // Two requests' worth of chat usage, counted as the rollup would.
    let now = shared::clock::Clock::now(app.clock.as_ref());
    let user = shared::chat::user_tenant(SUBJECT);
    let events: Vec<UsageEvent> = [("input", 1200), ("output", 300)]
        .iter()
        .map(|(kind, tokens)| UsageEvent {
            id: EventId::try_from(format!("r1:{kind}")).unwrap(),
            feature: Feature::try_from(format!("chat:claude-sonnet-4-5:{kind}")).unwrap(),
            tokens: Tokens::try_from(*tokens).unwrap(),
            timestamp: now,
            properties: Default::default(),
        })
        .collect();
    count_message(&app, &user, events).await;
    let current = send(
        &app,
        request("GET", "/api/v1/usage/current", Some(USER_TOKEN), None),
    )
    .await;
    assert_eq!(current.status, StatusCode::OK);
    let body = current.json();
    assert_eq!(
        (body["tier"].as_str(), body["quota"]["limit"].as_u64()),
        (Some("free"), Some(100_000))
    );
    assert_eq!(
        (
            body["tokens"]["input"].as_u64(),
            body["tokens"]["output"].as_u64(),
            body["quota"]["used"].as_u64(),
            body["quota"]["remaining"].as_u64(),
        ),
        (Some(1200), Some(300), Some(1500), Some(98_500))
    );
    assert_eq!(body["quota"]["percent"], 1.5);

    for i in 0..3 {
        let record = UsageRecord {
            request_id: format!("req-{i}"),
            conversation_id: "c1".into(),
            model: "claude-sonnet-4-5".into(),
            usage: Default::default(),
            cost_usd: 0.0,
            latency_ms: 1,
            stop_reason: None,
            outcome: "complete".into(),
            created_at: shared::clock::Clock::now(app.clock.as_ref()),
        };
        app.chat.record_usage(SUBJECT, &record).await.unwrap();
    }
    let page = send(
        &app,
        request(
            "GET",
            "/api/v1/usage/history?limit=2",
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    let body = page.json();
    assert_eq!(body["requests"][0]["request_id"], "req-2");
    let cursor = body["next_cursor"].as_str().unwrap();
    let rest = send(
        &app,
        request(
            "GET",
            &format!("/api/v1/usage/history?cursor={cursor}"),
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    assert_eq!(rest.json()["requests"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn chat_routes_refuse_anonymous_callers_and_status_is_public() {
    let app = usage();
    let anonymous = send(&app, request("GET", "/api/v1/usage/current", None, None)).await;
    assert_eq!(
        (anonymous.status, anonymous.code()),
        (StatusCode::UNAUTHORIZED, "missing_credentials".into())
    );
    let status = send(&app, request("GET", "/api/v1/status", None, None)).await;
    assert_eq!(status.status, StatusCode::OK);
    let dashboard = send(&app, request("GET", "/dashboard", None, None)).await;
    assert_eq!(dashboard.status, StatusCode::OK);
}

/// Two conversations of the test user and one of someone else, as
/// chat-stream stores them.
async fn converse(app: &Usage) {
    use shared::chat::history::{Role, Turn};
    let at = shared::clock::Clock::now(app.clock.as_ref());
    for (subject, id, message, minutes) in [
        (SUBJECT, "older", "first question", 0),
        (SUBJECT, "newer", "second question", 5),
        ("someone_else", "theirs", "not yours", 1),
    ] {
        let (question, answer) = (
            Turn::new(Role::User, message),
            Turn::new(Role::Assistant, "ok"),
        );
        let when = at + TimeDelta::minutes(minutes);
        app.chat
            .append(subject, id, [&question, &answer], when)
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_user_lists_reads_and_deletes_their_own_conversations_only() {
    let app = usage();
    converse(&app).await;
    let listed = send(
        &app,
        request(
            "GET",
            "/api/v1/conversations?limit=1",
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    let body = listed.json();
    assert_eq!(
        body["conversations"][0]["id"], "newer",
        "most recently active first"
    );
    assert_eq!(body["conversations"][0]["title"], "second question");
    let cursor = body["next_cursor"].as_str().unwrap();
    let rest = send(
        &app,
        request(
            "GET",
            &format!("/api/v1/conversations?cursor={cursor}"),
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    let ids: Vec<Value> = rest.json()["conversations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].clone())
        .collect();
    assert_eq!(ids, [json!("older")], "someone else's is never listed");

    let read = send(
        &app,
        request("GET", "/api/v1/conversations/older", Some(USER_TOKEN), None),
    )
    .await;
    assert_eq!(
        read.json()["messages"],
        json!([{"role": "user", "text": "first question"}, {"role": "assistant", "text": "ok"}])
    );
    let theirs = send(
        &app,
        request(
            "GET",
            "/api/v1/conversations/theirs",
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    assert_eq!(
        (theirs.status, theirs.code()),
        (StatusCode::NOT_FOUND, "not_found".into())
    );
    let steal = send(
        &app,
        request(
            "DELETE",
            "/api/v1/conversations/theirs",
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    assert_eq!(steal.status, StatusCode::NOT_FOUND);
    assert!(
        app.chat
            .snapshot()
            .turns
            .contains_key(&("someone_else".into(), "theirs".into()))
    );

    let deleted = send(
        &app,
        request(
            "DELETE",
            "/api/v1/conversations/older",
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    let gone = send(
        &app,
        request("GET", "/api/v1/conversations/older", Some(USER_TOKEN), None),
    )
    .await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND);
    assert!(
        !app.chat
            .snapshot()
            .turns
            .contains_key(&(SUBJECT.into(), "older".into()))
    );
    let again = send(
        &app,
        request(
            "DELETE",
            "/api/v1/conversations/older",
            Some(USER_TOKEN),
            None,
        ),
    )
    .await;
    assert_eq!(again.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn conversation_routes_refuse_bad_ids_cursors_and_anonymous_callers() {
    let app = usage();
    let cases = [
        (
            request(
                "GET",
                "/api/v1/conversations/bad%20id",
                Some(USER_TOKEN),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_conversation_id",
        ),
        (
            request(
                "DELETE",
                "/api/v1/conversations/bad%20id",
                Some(USER_TOKEN),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_conversation_id",
        ),
        (
            request(
                "GET",
                "/api/v1/conversations?cursor=zzz",
                Some(USER_TOKEN),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_cursor",
        ),
        (
            request(
                "GET",
                "/api/v1/conversations?limit=0",
                Some(USER_TOKEN),
                None,
            ),
            StatusCode::BAD_REQUEST,
            "invalid_limit",
        ),
        (
            request("GET", "/api/v1/conversations", None, None),
            StatusCode::UNAUTHORIZED,
            "missing_credentials",
        ),
        (
            request("DELETE", "/api/v1/conversations/c1", Some("forged"), None),
            StatusCode::UNAUTHORIZED,
            "invalid_token",
        ),
    ];
    for (request, status, code) in cases {
        let answer = send(&app, request).await;
        assert_eq!((answer.status, answer.code()), (status, code.to_owned()));
    }
}
