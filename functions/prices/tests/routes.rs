//! `prices`' routes through memory doubles of every edge: no emulator, no
//! network, a clock that stands still. tests/prices.rs drives the same
//! routes against the emulator and stub providers.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use chrono::TimeDelta;
use http_body_util::BodyExt;
use prices::{Config, Edges, FUNCTION, router};
use serde_json::{Value, json};
use shared::clock::Clock;
use shared::config::Env;
use shared::health::HealthChecks;
use shared::metering::tenants::MemoryTenants;
use shared::prices::MemoryEdges;
use shared::prices::alerts::MemoryPriceAlerts;
use shared::prices::failover::Breaker;
use shared::prices::providers::ProviderError;
use shared::prices::providers::ProviderId::{self, GoldApiCom, MetalPriceApi, MetalsDev};
use shared::prices::store::{Keeping, PriceStore};
use shared::prices::types::{Currency, Metal, Quote};
use shared::ratelimit::MemoryCounter;
use shared::secrets::MemorySecrets;
use tower::ServiceExt;

struct World {
    config: Config,
    doubles: MemoryEdges,
    counter: Arc<MemoryCounter>,
    alerts: Arc<MemoryPriceAlerts>,
    tenants: Arc<MemoryTenants>,
}

/// Default settings but a proxy limit of 3; only metals.dev has a key
/// (gold-api.com needs none). metals.dev quotes 2650, gold-api.com 2640,
/// the others are unreachable.
fn world() -> World {
    let env = Env::from_pairs([
        ("PRICES_TABLE", "prices"),
        ("RATE_LIMIT_TABLE", "limits"),
        ("TENANTS_TABLE", "tenants"),
        ("KEY_CACHE_SECONDS", "0"),
        ("PROVIDER_KEYS_SECRET", "keys"),
        ("PROXY_RATE_LIMIT", "3"),
    ]);
    let doubles = MemoryEdges::new("keys", r#"{"metals.dev": "k1"}"#);
    doubles.quotes.quote(MetalsDev, 2650.0);
    doubles.quotes.quote(GoldApiCom, 2640.0);
    World {
        config: Config::from_env(&env).unwrap(),
        doubles,
        counter: Arc::default(),
        alerts: Arc::default(),
        tenants: Arc::default(),
    }
}

impl World {
    fn app(&self) -> Router {
        let edges = Edges {
            prices: self.doubles.edges(),
            rate_counter: self.counter.clone(),
            alerts: self.alerts.clone(),
            tenants: self.tenants.clone(),
        };
        router(&self.config, edges, HealthChecks::new(FUNCTION, "test"))
    }

    /// Stores a gold price observed `age` ago, as `price-fetch` would.
    async fn seed_gold(&self, price: f64, age: TimeDelta) {
        let quote = Quote {
            metal: Metal::Gold,
            currency: Currency::usd(),
            price,
            bid: None,
            ask: None,
            provider: "seed".into(),
            ts: self.doubles.clock.now() - age,
            fx: None,
        };
        self.doubles
            .store
            .record(
                &quote,
                &Keeping {
                    slot: TimeDelta::minutes(5),
                    retention: TimeDelta::days(1),
                },
            )
            .await
            .unwrap();
    }

    fn every_provider_fails(&self) {
        for id in ProviderId::ALL {
            self.doubles.quotes.fail(id, ProviderError::Status(500));
        }
    }

    fn provider_calls(&self) -> usize {
        ProviderId::ALL
            .map(|id| self.doubles.quotes.calls(id))
            .iter()
            .sum()
    }
}

async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    (status, headers, body)
}

async fn get(app: &Router, path: &str) -> (StatusCode, HeaderMap, Value) {
    send(app, Request::get(path).body(Body::empty()).unwrap()).await
}

// ------------------------------------------------------------ /api/prices

#[tokio::test]
async fn a_fresh_stored_price_is_200_with_an_etag_without_asking_a_provider() {
    let w = world();
    w.seed_gold(2000.0, TimeDelta::minutes(5)).await;
    let (status, headers, body) = get(&w.app(), "/api/prices?metal=gold&window=1h").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(headers[header::CONTENT_TYPE], "application/json");
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=60");
    assert!(headers[header::ETAG].to_str().unwrap().starts_with('"'));
    assert_eq!(body["latest"]["provider"], "seed");
    assert_eq!(
        (body["stale"].as_bool(), body["age_seconds"].as_i64()),
        (Some(false), Some(300))
    );
    assert_eq!(
        (body["window"].as_str(), body["count"].as_u64()),
        (Some("1h"), Some(1))
    );
    assert_eq!(body["series"][0]["price"], 2000.0);
    assert_eq!(w.provider_calls(), 0);
}

#[tokio::test]
async fn a_matching_if_none_match_is_304_with_the_same_etag() {
    let w = world();
    w.seed_gold(2000.0, TimeDelta::minutes(5)).await;
    let app = w.app();
    let (_, headers, _) = get(&app, "/api/prices?metal=gold").await;
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let request = Request::get("/api/prices?metal=gold")
        .header(header::IF_NONE_MATCH, format!("\"other\", {etag}"))
        .body(Body::empty())
        .unwrap();
    let (status, headers, body) = send(&app, request).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[header::ETAG], etag.as_str());
    assert_eq!(body, Value::Null);
}

#[tokio::test]
async fn each_unknown_parameter_is_400_naming_it_and_every_allowed_value() {
    let app = world().app();
    let metals = json!(["gold", "silver", "platinum", "palladium"]);
    for (path, code, allowed) in [
        ("/api/prices?metal=tin", "invalid_metal", metals.clone()),
        (
            "/api/prices?currency=EUR",
            "invalid_currency",
            json!(["USD"]),
        ),
        (
            "/api/prices?unit=lb",
            "invalid_unit",
            json!(["toz", "g", "kg"]),
        ),
        (
            "/api/prices?window=2y",
            "invalid_window",
            json!(["1h", "24h", "7d", "30d", "1y", "5y"]),
        ),
        ("/api/proxy/gold-api.com?metal=tin", "invalid_metal", metals),
        (
            "/api/proxy/kitco",
            "invalid_provider",
            json!([
                "metals.dev",
                "metalpriceapi",
                "metals-api",
                "goldapi.io",
                "gold-api.com"
            ]),
        ),
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(
            (status, &body["code"], &body["allowed"]),
            (StatusCode::BAD_REQUEST, &json!(code), &allowed),
            "{path}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    }
}

#[tokio::test]
async fn a_failing_store_with_nothing_cached_is_503_with_retry_after() {
    let w = world();
    w.doubles.store.outage.begin();
    let (status, headers, body) = get(&w.app(), "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(headers[header::RETRY_AFTER], "5");
    assert_eq!(body["code"], "dependency_unavailable");
    assert_eq!(body["dependency"], "prices table");
}

#[tokio::test]
async fn a_cached_answer_is_served_while_the_store_and_providers_are_down() {
    let w = world();
    let app = w.app();
    let (_, headers, first) = get(&app, "/api/prices?metal=gold").await;
    assert_eq!(
        first["latest"]["provider"], "metals.dev",
        "missing: fetched live"
    );
    w.doubles.store.outage.begin();
    w.every_provider_fails();
    w.doubles.clock.advance(TimeDelta::seconds(59));
    let (status, again_headers, again) = get(&app, "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
    assert_eq!(again_headers[header::ETAG], headers[header::ETAG]);
    assert_eq!(w.doubles.quotes.calls(MetalsDev), 1);
}

#[tokio::test]
async fn a_missing_price_is_fetched_live_and_written_back() {
    let w = world();
    let (status, _, body) = get(&w.app(), "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["latest"]["price"].as_f64(), body["stale"].as_bool()),
        (Some(2650.0), Some(false))
    );
    let stored = w
        .doubles
        .store
        .latest(Metal::Gold, &Currency::usd())
        .await
        .unwrap();
    assert_eq!(stored.unwrap().provider, "metals.dev");
}

#[tokio::test]
async fn a_stale_price_is_refreshed_live() {
    let w = world();
    w.seed_gold(2640.0, TimeDelta::minutes(11)).await;
    let (_, _, body) = get(&w.app(), "/api/prices?metal=gold").await;
    assert_eq!(body["latest"]["provider"], "metals.dev");
    assert_eq!(body["stale"], false);
}

#[tokio::test]
async fn a_stale_price_is_served_marked_when_every_provider_fails() {
    let w = world();
    w.seed_gold(2640.0, TimeDelta::hours(1)).await;
    w.every_provider_fails();
    let (status, _, body) = get(&w.app(), "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (body["latest"]["provider"].as_str(), body["stale"].as_bool()),
        (Some("seed"), Some(true))
    );
    assert_eq!(body["age_seconds"], 3600);
}

#[tokio::test]
async fn with_no_price_and_every_provider_failing_the_answer_is_503_naming_why() {
    let w = world();
    w.every_provider_fails();
    let (status, headers, body) = get(&w.app(), "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "30");
    assert_eq!(body["dependency"], "price providers");
    assert_eq!(
        body["providers"],
        json!([
            "metals.dev: answered HTTP 500",
            "gold-api.com: answered HTTP 500",
            "metalpriceapi: no key",
            "metals-api: no key",
            "goldapi.io: no key",
        ])
    );
}

#[tokio::test]
async fn without_a_metal_every_metal_is_listed_in_the_asked_unit() {
    let w = world();
    let (status, _, body) = get(&w.app(), "/api/prices?unit=g").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["currency"].as_str(), body["unit"].as_str()),
        (Some("USD"), Some("g"))
    );
    let listed = body["prices"].as_array().unwrap();
    assert_eq!(listed.len(), 4);
    for (listed, metal) in listed
        .iter()
        .zip(["gold", "silver", "platinum", "palladium"])
    {
        assert_eq!(listed["metal"], metal);
    }
    assert_eq!(body["prices"][0]["latest"]["price"], 85.199478);
}

#[tokio::test]
async fn unreadable_provider_keys_are_503_on_every_route_that_needs_them() {
    let mut w = world();
    w.doubles.secrets = Arc::default();
    let app = w.app();
    for path in [
        "/api/prices?metal=gold",
        "/api/proxy/gold-api.com",
        "/api/config",
    ] {
        let (status, headers, body) = get(&app, path).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{path}");
        assert_eq!(headers[header::RETRY_AFTER], "5");
        assert_eq!(body["dependency"], "provider keys secret");
    }
}

// ---------------------------------------------------- /api/proxy/{provider}

#[tokio::test]
async fn the_proxy_answers_a_live_quote_with_rate_limit_headers() {
    let w = world();
    let (status, headers, body) = get(&w.app(), "/api/proxy/gold-api.com?metal=silver").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        (body["metal"].as_str(), body["unit"].as_str()),
        (Some("silver"), Some("toz"))
    );
    assert_eq!(body["latest"]["provider"], "gold-api.com");
    assert_eq!(body["latest"]["price"], 2640.0);
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "2");
    assert!(headers.contains_key("x-ratelimit-reset"));
}

#[tokio::test]
async fn the_proxy_refuses_a_provider_without_a_key_with_400() {
    let w = world();
    let (status, _, body) = get(&w.app(), "/api/proxy/metalpriceapi").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "provider_not_configured");
    assert_eq!(body["detail"], "metalpriceapi has no API key configured");
    assert_eq!(w.doubles.quotes.calls(MetalPriceApi), 0);
}

#[tokio::test]
async fn the_proxy_is_429_at_the_limit_with_retry_after_and_limit_headers() {
    let w = world();
    let app = w.app();
    for remaining in ["2", "1", "0"] {
        let (status, headers, _) = get(&app, "/api/proxy/gold-api.com").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(headers["x-ratelimit-remaining"], remaining);
    }
    let (status, headers, body) = get(&app, "/api/proxy/gold-api.com").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(body["detail"], "at most 3 proxy requests per minute");
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    let retry: u64 = headers[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        w.doubles.quotes.calls(GoldApiCom),
        3,
        "a refused request never reaches the provider"
    );
}

#[tokio::test]
async fn the_proxy_is_503_naming_the_provider_when_it_fails() {
    let w = world();
    w.doubles
        .quotes
        .fail(GoldApiCom, ProviderError::Status(502));
    let (status, headers, body) = get(&w.app(), "/api/proxy/gold-api.com").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "30");
    assert_eq!(body["dependency"], "gold-api.com");
    assert_eq!(body["reason"], "answered HTTP 502");
}

#[tokio::test]
async fn the_proxy_lets_requests_through_when_the_limiter_is_down() {
    let w = world();
    w.counter.outage.begin();
    let (status, headers, _) = get(&w.app(), "/api/proxy/gold-api.com").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!headers.contains_key("x-ratelimit-limit"));
}

// ------------------------------------------------------------ /api/config

#[tokio::test]
async fn config_lists_providers_with_keys_and_circuits() {
    let w = world();
    let open = Breaker {
        consecutive_failures: 3,
        open_until: Some(w.doubles.clock.now() + TimeDelta::minutes(5)),
    };
    w.doubles.breakers.set(MetalPriceApi, open);
    let (status, _, body) = get(&w.app(), "/api/config").await;
    assert_eq!(status, StatusCode::OK);
    let providers = body["providers"].as_array().unwrap();
    assert_eq!(
        providers[0],
        json!({"name": "metals.dev", "priority": 1, "configured": true, "circuit": "closed"})
    );
    assert_eq!(
        (
            providers[1]["configured"].as_bool(),
            providers[1]["circuit"].as_str()
        ),
        (Some(false), Some("open"))
    );
    assert_eq!(
        providers[4]["configured"], true,
        "gold-api.com needs no key"
    );
    assert_eq!(body["units"], json!(["toz", "g", "kg"]));
    assert_eq!(body["windows"], json!(["1h", "24h", "7d", "30d"]));
    assert_eq!(
        body["cache"],
        json!({"memory_seconds": 60, "stale_after_seconds": 600})
    );
    assert_eq!(body["schedule"], "rate(5 minutes)");
    assert_eq!(body["proxy_rate_limit_per_minute"], 3);
    assert!(!body.to_string().contains("k1"), "keys are never returned");
}

#[tokio::test]
async fn config_shows_unknown_circuits_when_the_breaker_store_is_down() {
    let w = world();
    w.doubles.breakers.outage.begin();
    let (status, _, body) = get(&w.app(), "/api/config").await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        body["providers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["circuit"] == "unknown")
    );
}

#[tokio::test]
async fn config_is_500_when_the_provider_keys_secret_is_not_json() {
    let mut w = world();
    w.doubles.secrets = Arc::new(MemorySecrets::default().with("keys", "sekret"));
    let (status, _, body) = get(&w.app(), "/api/config").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(body["code"], "internal");
    assert!(!body.to_string().contains("sekret"));
}

/// A day's quotes fold into one candle; `window=1y` answers the year's
/// candles, `from`/`to` any range of days, and bad ranges are 400s.
#[tokio::test]
async fn long_windows_and_ranges_answer_daily_candles() {
    let w = world();
    let now = w.doubles.clock.now();
    let midnight = now.date_naive().and_hms_opt(0, 0, 0).unwrap().and_utc();
    let day = midnight - TimeDelta::days(3);
    w.seed_gold(2500.0, now - (midnight - TimeDelta::days(400)))
        .await;
    for (hours, price) in [(1, 2600.0), (5, 2700.0), (10, 2550.0), (20, 2650.0)] {
        w.seed_gold(price, now - (day + TimeDelta::hours(hours)))
            .await;
    }
    w.seed_gold(2660.0, TimeDelta::minutes(1)).await;
    let app = w.app();

    let (status, _, year) = get(&app, "/api/prices?metal=gold&window=1y").await;
    assert_eq!(status, StatusCode::OK, "{year}");
    assert_eq!(
        (year["window"].as_str(), year["count"].as_u64()),
        (Some("1y"), Some(2))
    );
    assert_eq!(
        year["candles"][0],
        json!({"day": day.date_naive(), "open": 2600.0, "high": 2700.0, "low": 2550.0, "close": 2650.0})
    );
    assert_eq!(year["candles"][1]["close"], 2660.0);

    let old = (midnight - TimeDelta::days(400)).date_naive();
    let path = format!("/api/prices?metal=gold&unit=g&from={old}&to={old}");
    let (status, _, range) = get(&app, &path).await;
    assert_eq!(status, StatusCode::OK, "{range}");
    assert_eq!(
        (range["window"].clone(), range["count"].as_u64()),
        (Value::Null, Some(1))
    );
    assert_eq!(range["candles"][0]["open"], 80.376866);

    for bad in [
        "/api/prices?metal=gold&window=1y&from=2026-01-01",
        "/api/prices?metal=gold&to=2026-01-01",
        "/api/prices?metal=gold&from=2026-02-01&to=2026-01-01",
        "/api/prices?metal=gold&from=01%2F02%2F2026",
        "/api/prices?metal=gold&from=1990-01-01",
    ] {
        let (status, headers, body) = get(&app, bad).await;
        assert_eq!(
            (status, &body["code"]),
            (StatusCode::BAD_REQUEST, &json!("invalid_range")),
            "{bad}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(body["detail"].is_string());
    }
}

impl World {
    /// A tenant and its API key, in the tenants double.
    async fn tenant(&self) -> String {
        use shared::metering::tenants::{ApiKey, NewTenant, TenantStore};
        let tenant = serde_json::from_value::<NewTenant>(json!({
            "name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"}))
        .unwrap()
        .into_tenant(self.doubles.clock.now())
        .unwrap();
        let key = ApiKey::generate();
        self.tenants.create(&tenant, &key.hash()).await.unwrap();
        key.expose().to_owned()
    }
}

/// `method path` with a bearer key and a JSON body.
fn alert_request(
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Request<Body> {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(key) = key {
        request = request.header(header::AUTHORIZATION, format!("Bearer {key}"));
    }
    let body = body.map_or_else(Body::empty, |b| Body::from(b.to_string()));
    request
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap()
}

#[tokio::test]
async fn price_alerts_are_created_listed_and_deleted_by_their_tenant_only() {
    let w = world();
    let app = w.app();
    let (mine, theirs) = (w.tenant().await, w.tenant().await);
    let new = json!({"metal": "gold", "direction": "above", "price": 85, "unit": "g",
                     "webhook": "https://hooks.example/gold"});
    let (status, _, created) = send(
        &app,
        alert_request("POST", "/api/alerts", Some(&mine), Some(new.clone())),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(
        (
            &created["currency"],
            &created["unit"],
            &created["armed"],
            &created["fired"]
        ),
        (&json!("USD"), &json!("g"), &json!(true), &json!(0))
    );
    let id = created["id"].as_str().unwrap().to_owned();

    let (_, _, listed) = send(&app, alert_request("GET", "/api/alerts", Some(&mine), None)).await;
    assert_eq!(listed["alerts"], json!([created]));
    let (_, _, none) = send(
        &app,
        alert_request("GET", "/api/alerts", Some(&theirs), None),
    )
    .await;
    assert_eq!(none["alerts"], json!([]));

    let path = format!("/api/alerts/{id}");
    let (status, _, body) = send(&app, alert_request("DELETE", &path, Some(&theirs), None)).await;
    assert_eq!(
        (status, &body["code"]),
        (StatusCode::NOT_FOUND, &json!("alert_not_found"))
    );
    let (status, _, _) = send(&app, alert_request("DELETE", &path, Some(&mine), None)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = send(&app, alert_request("DELETE", &path, Some(&mine), None)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Each bad request says why, and stores nothing.
    let (status, _, body) = send(&app, alert_request("GET", "/api/alerts", None, None)).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    for (body, code) in [
        (
            json!({"metal": "tin", "direction": "above", "price": 1, "webhook": "https://h.example"}),
            "invalid_metal",
        ),
        (
            json!({"metal": "gold", "currency": "JPY", "direction": "above", "price": 1, "webhook": "https://h.example"}),
            "invalid_currency",
        ),
        (
            json!({"metal": "gold", "direction": "above", "price": -5, "webhook": "https://h.example"}),
            "invalid_alert",
        ),
        (
            json!({"metal": "gold", "direction": "sideways", "price": 1, "webhook": "https://h.example"}),
            "invalid_body",
        ),
        (
            json!({"metal": "gold", "direction": "above", "price": 1, "webhook": "ftp://h.example"}),
            "invalid_body",
        ),
        (
            json!({"metal": "gold", "direction": "above", "price": 1}),
            "invalid_body",
        ),
    ] {
        let (status, headers, problem) = send(
            &app,
            alert_request("POST", "/api/alerts", Some(&mine), Some(body.clone())),
        )
        .await;
        assert_eq!(
            (status, &problem["code"]),
            (StatusCode::BAD_REQUEST, &json!(code)),
            "{body}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
    }
    let (status, _, _) = send(
        &app,
        alert_request("DELETE", "/api/alerts/..%2Fx", Some(&mine), None),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, _, listed) = send(&app, alert_request("GET", "/api/alerts", Some(&mine), None)).await;
    assert_eq!(listed["alerts"], json!([]));
}
