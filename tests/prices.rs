//! The scheduled price fetch against emulated AWS and local stubs of the five
//! providers speaking their real formats: failover order, keys, the circuit
//! breaker's open, half-open and closed states, the outlier guard, and a run
//! where every provider fails.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, Uri, header};
use chrono::{TimeDelta, Utc};
use price_fetch::{Config, ScheduledFetch};
use shared::aws::prices::DynamoPrices;
use shared::prices::failover::{BreakerState, BreakerStore};
use shared::prices::providers::ProviderId;
use shared::prices::store::{Keeping, PriceStore};
use shared::prices::types::{Currency, Metal, Quote};

type Respond = Box<dyn Fn(&str) -> (u16, String) + Send + Sync>;

/// A provider stand-in: answers every request with `respond(path)`.
#[derive(Clone)]
struct Stub {
    url: String,
    calls: Arc<AtomicUsize>,
    respond: Arc<Mutex<Respond>>,
}

impl Stub {
    async fn start(respond: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) -> Self {
        let stub = Self {
            url: String::new(),
            calls: Arc::default(),
            respond: Arc::new(Mutex::new(Box::new(respond))),
        };
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(stub.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { url, ..stub }
    }

    fn set(&self, respond: impl Fn(&str) -> (u16, String) + Send + Sync + 'static) {
        *self.respond.lock().unwrap() = Box::new(respond);
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

async fn answer(State(stub): State<Stub>, uri: Uri) -> (StatusCode, String) {
    stub.calls.fetch_add(1, Ordering::SeqCst);
    let (status, body) = (stub.respond.lock().unwrap())(&uri.to_string());
    (StatusCode::from_u16(status).unwrap(), body)
}

fn metals_dev_ok(gold: f64) -> (u16, String) {
    metals_dev_in("USD", gold)
}

fn metals_dev_in(currency: &str, gold: f64) -> (u16, String) {
    (
        200,
        format!(
            r#"{{"status":"success","currency":"{currency}","unit":"toz","metals":{{"gold":{gold},"silver":31.05,"platinum":960.4,"palladium":1010.2}},"currencies":{{}},"timestamps":{{"metal":"{}","currency":"{}"}}}}"#,
            Utc::now().to_rfc3339(),
            Utc::now().to_rfc3339()
        ),
    )
}

fn metalpriceapi_ok(gold: f64) -> (u16, String) {
    (
        200,
        format!(
            r#"{{"success":true,"base":"USD","timestamp":{},"rates":{{"EUR":0.9213,"JPY":151.62,"XAU":{},"USDXAU":{gold},"XAG":0.0322,"XPT":0.00104,"XPD":0.00099}}}}"#,
            Utc::now().timestamp(),
            1.0 / gold
        ),
    )
}

/// gold-api.com: one metal per request, named in the path.
fn gold_api_com_ok(path: &str) -> (u16, String) {
    let symbol = path.split('/').nth(2).unwrap_or("XAU");
    let price = match symbol {
        "XAU" => 2650.0,
        "XAG" => 31.0,
        "XPT" => 960.0,
        _ => 1010.0,
    };
    (
        200,
        format!(
            r#"{{"currency":"USD","currencySymbol":"$","exchangeRate":1,"name":"x","price":{price},"symbol":"{symbol}","updatedAt":"{}","updatedAtReadable":"now"}}"#,
            Utc::now().to_rfc3339()
        ),
    )
}

fn server_error(_: &str) -> (u16, String) {
    (500, "<html>internal error</html>".to_owned())
}

struct World {
    stack: support::Stack,
    stubs: Vec<(ProviderId, Stub)>,
    /// What both price functions fetch and serve (USD unless a test says).
    currencies: Vec<Currency>,
}

impl World {
    fn stub(&self, id: ProviderId) -> &Stub {
        &self.stubs.iter().find(|(p, _)| *p == id).unwrap().1
    }

    async fn prices(&self) -> DynamoPrices {
        DynamoPrices::new(
            shared::aws::Dynamo::new(&support::aws().await),
            &self
                .stack
                .env("price-fetch")
                .required("PRICES_TABLE")
                .unwrap(),
        )
    }

    async fn latest_gold(&self) -> Option<Quote> {
        self.prices()
            .await
            .latest(Metal::Gold, &usd())
            .await
            .unwrap()
    }

    async fn set_keys(&self, keys: serde_json::Value) {
        aws_sdk_secretsmanager::Client::new(&support::aws().await)
            .put_secret_value()
            .secret_id(
                self.stack
                    .env("price-fetch")
                    .required("PROVIDER_KEYS_SECRET")
                    .unwrap(),
            )
            .secret_string(keys.to_string())
            .send()
            .await
            .unwrap();
    }

    /// A fetcher whose providers are the stubs, with a quick breaker.
    async fn fetcher(&self) -> price_fetch::Fetch {
        let mut config = Config::from_env(self.stack.env("price-fetch")).unwrap();
        config.settings.providers = self
            .stubs
            .iter()
            .map(|(id, s)| (*id, s.url.clone()))
            .collect();
        config.settings.currencies = self.currencies.clone();
        config.settings.policy.timeout = Duration::from_secs(2);
        config.settings.policy.breaker_failures = 2;
        config.settings.policy.breaker_cooldown = TimeDelta::seconds(2);
        price_fetch::fetcher(&config, &support::aws_as("price-fetch").await)
    }
}

/// Every provider stubbed (all answering well) and every key set.
async fn world() -> World {
    let mut stubs = Vec::new();
    stubs.push((
        ProviderId::MetalsDev,
        Stub::start(|_| metals_dev_ok(2650.0)).await,
    ));
    stubs.push((
        ProviderId::MetalPriceApi,
        Stub::start(|_| metalpriceapi_ok(2651.0)).await,
    ));
    stubs.push((
        ProviderId::MetalsApi,
        Stub::start(|_| metalpriceapi_ok(2652.0)).await,
    ));
    stubs.push((ProviderId::GoldApiIo, Stub::start(server_error).await));
    stubs.push((ProviderId::GoldApiCom, Stub::start(gold_api_com_ok).await));
    let world = World {
        stack: support::stack().await,
        stubs,
        currencies: vec![usd()],
    };
    world
        .set_keys(serde_json::json!({"metals.dev": "k1", "metalpriceapi": "k2", "metals-api": "k3", "goldapi.io": "k4"}))
        .await;
    world
}

async fn run(fetcher: &price_fetch::Fetch) -> Result<price_fetch::FetchReport, String> {
    let event = ScheduledFetch {
        scheduled_time: Utc::now(),
        execution_id: "test".into(),
    };
    price_fetch::handle(
        fetcher,
        lambda_runtime::LambdaEvent::new(event, Default::default()),
    )
    .await
    .map_err(|e| e.to_string())
}

fn usd() -> Currency {
    Currency::usd()
}

#[tokio::test]
async fn fails_over_in_priority_order_and_writes_latest_and_history() {
    let w = world().await;
    w.stub(ProviderId::MetalsDev).set(|_| {
        (
            200,
            r#"{"status":"failure","error_code":1101,"error_message":"Invalid API Key."}"#
                .to_owned(),
        )
    });
    let report = run(&w.fetcher().await).await.unwrap();

    assert_eq!(report.written.len(), 4);
    assert!(
        report.written.values().all(|p| p == "metalpriceapi"),
        "{report:?}"
    );
    assert_eq!(w.stub(ProviderId::MetalsDev).calls(), 1);
    assert_eq!(w.stub(ProviderId::MetalPriceApi).calls(), 1);
    assert_eq!(
        w.stub(ProviderId::MetalsApi).calls(),
        0,
        "no further provider once all metals are in"
    );

    let gold = w.latest_gold().await.unwrap();
    assert_eq!(
        (gold.price, gold.provider.as_str()),
        (2651.0, "metalpriceapi")
    );
    let history = w
        .prices()
        .await
        .series(
            Metal::Gold,
            &usd(),
            Utc::now() - TimeDelta::hours(1),
            Utc::now() + TimeDelta::minutes(1),
        )
        .await
        .unwrap();
    assert_eq!(history.len(), 1);
}

#[tokio::test]
async fn without_keys_only_the_keyless_provider_is_asked() {
    let w = world().await;
    w.set_keys(serde_json::json!({})).await;
    let report = run(&w.fetcher().await).await.unwrap();
    assert!(report.written.values().all(|p| p == "gold-api.com"));
    assert_eq!(
        w.stub(ProviderId::GoldApiCom).calls(),
        4,
        "one request per metal"
    );
    assert_eq!(w.stub(ProviderId::MetalsDev).calls(), 0);
}

#[tokio::test]
async fn the_breaker_opens_half_opens_and_closes() {
    let w = world().await;
    w.set_keys(serde_json::json!({"metals.dev": "k1"})).await;
    let dev = w.stub(ProviderId::MetalsDev);
    dev.set(server_error);
    let fetcher = w.fetcher().await;
    let prices = w.prices().await;
    let state = || async {
        prices
            .get(ProviderId::MetalsDev)
            .await
            .unwrap()
            .state(Utc::now())
    };

    run(&fetcher).await.unwrap(); // failure 1: gold-api.com answers instead
    assert_eq!(state().await, BreakerState::Closed);
    run(&fetcher).await.unwrap(); // failure 2: opens
    assert_eq!(state().await, BreakerState::Open);
    run(&fetcher).await.unwrap();
    assert_eq!(dev.calls(), 2, "an open breaker skips the provider");

    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert_eq!(state().await, BreakerState::HalfOpen);
    run(&fetcher).await.unwrap(); // the trial fails: open again
    assert_eq!((dev.calls(), state().await), (3, BreakerState::Open));

    dev.set(|_| metals_dev_ok(2650.0));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    let report = run(&fetcher).await.unwrap(); // the trial succeeds: closed
    assert_eq!((dev.calls(), state().await), (4, BreakerState::Closed));
    assert!(report.written.values().all(|p| p == "metals.dev"));
}

/// Stores a gold price observed `age` ago, as `price-fetch` would.
async fn seed_gold(w: &World, price: f64, age: TimeDelta) {
    let quote = Quote {
        metal: Metal::Gold,
        currency: usd(),
        price,
        bid: None,
        ask: None,
        provider: "seed".into(),
        ts: Utc::now() - age,
        fx: None,
    };
    w.prices()
        .await
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

#[tokio::test]
async fn an_outlier_is_rejected_unless_a_second_provider_confirms_it() {
    let w = world().await;
    seed_gold(&w, 2000.0, TimeDelta::minutes(5)).await;
    // metals.dev jumps 32%; metalpriceapi still sees the old level.
    w.stub(ProviderId::MetalsDev).set(|_| metals_dev_ok(2640.0));
    w.stub(ProviderId::MetalPriceApi)
        .set(|_| metalpriceapi_ok(2010.0));
    let report = run(&w.fetcher().await).await.unwrap();
    assert_eq!(report.rejected_outliers, 1);
    assert_eq!(report.written["gold/USD"], "metalpriceapi");
    let gold = w.latest_gold().await.unwrap();
    assert_eq!(gold.price, 2010.0);
    assert_eq!(
        report.written["silver/USD"], "metals.dev",
        "in-range metals are taken from the first provider"
    );
}

#[tokio::test]
async fn an_outlier_confirmed_by_a_second_provider_is_accepted() {
    let w = world().await;
    seed_gold(&w, 2000.0, TimeDelta::minutes(5)).await;
    w.stub(ProviderId::MetalsDev).set(|_| metals_dev_ok(2640.0));
    w.stub(ProviderId::MetalPriceApi)
        .set(|_| metalpriceapi_ok(2645.0));
    let report = run(&w.fetcher().await).await.unwrap();
    assert_eq!(report.rejected_outliers, 0);
    assert_eq!(report.written["gold/USD"], "metals.dev");
    let gold = w.latest_gold().await.unwrap();
    assert_eq!(gold.price, 2640.0);
}

#[tokio::test]
async fn when_every_provider_fails_nothing_is_written_and_the_run_fails() {
    let w = world().await;
    for (_, stub) in &w.stubs {
        stub.set(server_error);
    }
    let error = run(&w.fetcher().await).await.unwrap_err();
    assert!(
        error.starts_with("every provider failed: metals.dev: answered HTTP 500"),
        "{error}"
    );
    assert!(!error.contains("k1"), "keys never appear in errors");
    assert!(w.latest_gold().await.is_none());
}

// ------------------------------------------------------------------ the API

impl World {
    /// The prices app, its providers pointed at the stubs.
    async fn api(&self) -> axum::Router {
        let mut config = prices::Config::from_env(self.stack.env("prices")).unwrap();
        config.settings.currencies = self.currencies.clone();
        config.settings.providers = self
            .stubs
            .iter()
            .map(|(id, s)| (*id, s.url.clone()))
            .collect();
        prices::app(&config, &support::aws_as("prices").await)
    }
}

async fn get(
    app: &axum::Router,
    path: &str,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    support::send(app, support::request("GET", path, None, None)).await
}

#[tokio::test]
async fn a_memory_hit_touches_neither_dynamodb_nor_the_provider() {
    let w = world().await;
    let api = w.api().await;
    let (status, headers, first) = get(&api, "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::OK, "{first}");
    assert_eq!(first["latest"]["provider"], "metals.dev");
    assert_eq!(
        w.stub(ProviderId::MetalsDev).calls(),
        1,
        "missing from DynamoDB: fetched live"
    );

    // Take both lower layers away: the next answer can only come from memory.
    w.stub(ProviderId::MetalsDev).set(server_error);
    aws_sdk_dynamodb::Client::new(&support::aws().await)
        .delete_table()
        .table_name(w.stack.env("prices").required("PRICES_TABLE").unwrap())
        .send()
        .await
        .unwrap();
    let (status, again_headers, again) = get(&api, "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(again, first);
    assert_eq!(again_headers[header::ETAG], headers[header::ETAG]);
    assert_eq!(w.stub(ProviderId::MetalsDev).calls(), 1);
    assert_eq!(headers[header::CACHE_CONTROL], "public, max-age=60");
}

/// Sixteen concurrent misses of one price, through the real app against
/// the emulator, while the provider takes its time: one provider call
/// (single flight), one answer for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_misses_fill_once_with_one_provider_call() {
    let w = world().await;
    w.stub(ProviderId::MetalsDev).set(|_| {
        std::thread::sleep(Duration::from_millis(300));
        metals_dev_ok(2650.0)
    });
    let api = w.api().await;
    let answers =
        futures_util::future::join_all((0..16).map(|_| get(&api, "/api/prices?metal=gold"))).await;
    for (status, _, body) in &answers {
        assert_eq!(*status, StatusCode::OK, "{body}");
        assert_eq!(body["latest"], answers[0].2["latest"]);
    }
    assert_eq!(w.stub(ProviderId::MetalsDev).calls(), 1);
    assert_eq!(w.stub(ProviderId::MetalPriceApi).calls(), 0);
}

#[tokio::test]
async fn a_fresh_latest_in_dynamodb_is_served_without_asking_a_provider() {
    let w = world().await;
    seed_gold(&w, 2000.0, TimeDelta::minutes(5)).await;
    let (status, _, body) = get(&w.api().await, "/api/prices?metal=gold&window=1h").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["latest"]["provider"], "seed");
    assert_eq!(body["stale"], false);
    assert_eq!(body["count"], 1);
    assert_eq!(body["series"][0]["price"], 2000.0);
    assert!(w.stubs.iter().all(|(_, s)| s.calls() == 0));
}

#[tokio::test]
async fn a_stale_latest_is_refreshed_live_and_written_back() {
    let w = world().await;
    seed_gold(&w, 2640.0, TimeDelta::hours(1)).await;
    let (_, _, body) = get(&w.api().await, "/api/prices?metal=gold").await;
    assert_eq!(
        (body["latest"]["provider"].as_str(), body["stale"].as_bool()),
        (Some("metals.dev"), Some(false))
    );
    let stored = w.latest_gold().await.unwrap();
    assert_eq!(stored.provider, "metals.dev");
}

#[tokio::test]
async fn with_providers_down_a_stale_price_is_served_and_marked() {
    let w = world().await;
    seed_gold(&w, 2640.0, TimeDelta::hours(1)).await;
    for (_, stub) in &w.stubs {
        stub.set(server_error);
    }
    let (status, _, body) = get(&w.api().await, "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["stale"], true);
    assert!(body["age_seconds"].as_i64().unwrap() >= 3600);
}

#[tokio::test]
async fn with_no_price_and_no_provider_the_answer_is_503() {
    let w = world().await;
    for (_, stub) in &w.stubs {
        stub.set(server_error);
    }
    let (status, headers, body) = get(&w.api().await, "/api/prices?metal=gold").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(headers[header::RETRY_AFTER], "30");
    assert_eq!(body["code"], "dependency_unavailable");
    assert!(body["providers"].as_array().unwrap().iter().any(|p| {
        p.as_str()
            .unwrap()
            .starts_with("metals.dev: answered HTTP 500")
    }));
}

#[tokio::test]
async fn if_none_match_gets_a_304() {
    let w = world().await;
    seed_gold(&w, 2000.0, TimeDelta::minutes(5)).await;
    let api = w.api().await;
    let (_, headers, _) = get(&api, "/api/prices?metal=gold").await;
    let etag = headers[header::ETAG].to_str().unwrap().to_owned();
    let request = axum::http::Request::get("/api/prices?metal=gold")
        .header(header::IF_NONE_MATCH, &etag)
        .body(axum::body::Body::empty())
        .unwrap();
    let (status, headers, _) = support::send(&api, request).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert_eq!(headers[header::ETAG], etag.as_str());
}

#[tokio::test]
async fn prices_convert_exactly_between_units() {
    let w = world().await;
    seed_gold(&w, 3110.34768, TimeDelta::minutes(5)).await;
    let api = w.api().await;
    let (_, _, grams) = get(&api, "/api/prices?metal=gold&unit=g").await;
    assert_eq!(grams["latest"]["price"], 100.0);
    assert_eq!(grams["unit"], "g");
    let (_, _, kilos) = get(&api, "/api/prices?metal=gold&unit=kg").await;
    assert_eq!(kilos["latest"]["price"], 100_000.0);
}

#[tokio::test]
async fn without_a_metal_every_metal_is_listed() {
    let w = world().await;
    let (status, _, body) = get(&w.api().await, "/api/prices").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let metals: Vec<&str> = body["prices"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["metal"].as_str().unwrap())
        .collect();
    assert_eq!(metals, ["gold", "silver", "platinum", "palladium"]);
}

#[tokio::test]
async fn unknown_parameters_are_400_with_the_allowed_values() {
    let w = world().await;
    let api = w.api().await;
    for (path, code, allowed) in [
        ("/api/prices?metal=tin", "invalid_metal", "gold"),
        ("/api/prices?currency=EUR", "invalid_currency", "USD"),
        ("/api/prices?unit=lb", "invalid_unit", "kg"),
        ("/api/prices?window=2y", "invalid_window", "5y"),
        ("/api/proxy/kitco", "invalid_provider", "gold-api.com"),
    ] {
        let (status, headers, body) = get(&api, path).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{path}"
        );
        assert_eq!(headers[header::CONTENT_TYPE], "application/problem+json");
        assert!(
            body["allowed"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a == allowed),
            "{path}: {body}"
        );
    }
}

#[tokio::test]
async fn the_proxy_allows_exactly_120_requests_a_minute() {
    let w = world().await;
    let api = w.api().await;
    // Stay within one fixed window.
    let into_minute = Utc::now().timestamp() % 60;
    if into_minute > 40 {
        tokio::time::sleep(Duration::from_secs((61 - into_minute) as u64)).await;
    }
    for i in 1..=120 {
        let (status, headers, body) = get(&api, "/api/proxy/gold-api.com?metal=silver").await;
        assert_eq!(status, StatusCode::OK, "request {i}: {body}");
        assert_eq!(
            headers["x-ratelimit-remaining"],
            (120 - i).to_string().as_str()
        );
        if i == 1 {
            assert_eq!(body["latest"]["provider"], "gold-api.com");
            assert_eq!(body["latest"]["price"], 31.0);
        }
    }
    let (status, headers, body) = get(&api, "/api/proxy/gold-api.com?metal=silver").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body["code"], "rate_limited");
    assert_eq!(headers["x-ratelimit-limit"], "120");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert!(
        headers[header::RETRY_AFTER]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            <= 60
    );
    assert_eq!(
        w.stub(ProviderId::GoldApiCom).calls(),
        120,
        "a refused request never reaches the provider"
    );
}

#[tokio::test]
async fn config_lists_providers_with_keys_and_circuits() {
    let w = world().await;
    w.set_keys(serde_json::json!({"metals.dev": "k1"})).await;
    let (status, _, body) = get(&w.api().await, "/api/config").await;
    assert_eq!(status, StatusCode::OK);
    let providers = body["providers"].as_array().unwrap();
    assert_eq!(
        providers[0],
        serde_json::json!({"name": "metals.dev", "priority": 1, "configured": true, "circuit": "closed"})
    );
    assert_eq!(providers[1]["configured"], false);
    assert_eq!(providers[4]["name"], "gold-api.com");
    assert_eq!(providers[4]["configured"], true);
    assert_eq!(body["units"], serde_json::json!(["toz", "g", "kg"]));
    assert_eq!(body["schedule"], "rate(5 minutes)");
    assert!(!body.to_string().contains("k1"), "keys are never returned");
}

/// USD and EUR quoted directly by metals.dev; JPY, which it refuses,
/// converted by MetalPriceAPI from its dollar price with its own rate, in
/// decimal; each served with the rate it was converted with, if any.
#[tokio::test]
async fn every_configured_currency_is_quoted_directly_or_converted_with_its_rate() {
    let mut w = world().await;
    let code = |c: &str| Currency::try_from(c.to_owned()).unwrap();
    w.currencies = vec![usd(), code("EUR"), code("JPY")];
    w.stub(ProviderId::MetalsDev).set(|path| {
        if path.contains("currency=JPY") {
            let refused =
                r#"{"status":"failure","error_code":1203,"error_message":"Unsupported currency."}"#;
            (200, refused.to_owned())
        } else if path.contains("currency=EUR") {
            metals_dev_in("EUR", 2441.56)
        } else {
            metals_dev_ok(2650.0)
        }
    });
    let report = run(&w.fetcher().await).await.unwrap();
    assert_eq!(report.written.len(), 12, "{report:?}");

    let api = w.api().await;
    let (status, _, jpy) = get(&api, "/api/prices?metal=gold&currency=JPY").await;
    assert_eq!(status, StatusCode::OK, "{jpy}");
    assert_eq!(jpy["latest"]["provider"], "metalpriceapi");
    // 2651 × 151.62, to the cent: floating point would say 401944.62000000005.
    assert_eq!(jpy["latest"]["price"], 401_944.62);
    assert_eq!(jpy["latest"]["fx"]["rate"], 151.62);
    assert_eq!(jpy["latest"]["fx"]["source"], "metalpriceapi");
    assert!(jpy["latest"]["fx"]["ts"].is_string());

    let (_, _, eur) = get(&api, "/api/prices?metal=gold&currency=EUR&unit=g").await;
    assert_eq!(eur["latest"]["provider"], "metals.dev");
    assert_eq!(eur["latest"]["fx"], serde_json::Value::Null);
    assert_eq!(eur["unit"], "g");

    let (status, _, unknown) = get(&api, "/api/prices?metal=gold&currency=CHF").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(unknown["allowed"], serde_json::json!(["USD", "EUR", "JPY"]));
}

/// The DynamoDB store: quotes recorded out of order, repeated, and two in
/// one fetch slot leave one history point per slot and one candle per day
/// with the day's open, high, low and close.
#[tokio::test]
async fn history_keeps_a_point_per_slot_and_a_candle_per_day_in_any_order() {
    let w = world().await;
    let prices = w.prices().await;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 11, 3).unwrap();
    let at = |h: u32, m: u32| day.and_hms_opt(h, m, 0).unwrap().and_utc();
    let quote = |price: f64, ts, provider: &str| Quote {
        metal: Metal::Silver,
        currency: usd(),
        price,
        bid: None,
        ask: None,
        provider: provider.into(),
        ts,
        fx: None,
    };
    let keeping = Keeping {
        slot: TimeDelta::minutes(5),
        retention: TimeDelta::days(400),
    };
    for q in [
        quote(27.0, at(12, 0), "metals.dev"),
        quote(26.5, at(23, 55), "metals.dev"),
        quote(26.0, at(9, 0), "metals.dev"),
        quote(25.5, at(15, 0), "metals.dev"),
        quote(27.0, at(12, 0), "metals.dev"),
        // Another provider in the 12:00 slot: it rewrites that point.
        quote(27.1, at(12, 2), "gold-api.com"),
    ] {
        prices.record(&q, &keeping).await.unwrap();
    }
    let points = prices
        .series(Metal::Silver, &usd(), at(0, 0), at(23, 59))
        .await
        .unwrap();
    let seen: Vec<(f64, &str)> = points
        .iter()
        .map(|q| (q.price, q.provider.as_str()))
        .collect();
    assert_eq!(
        seen,
        [
            (26.0, "metals.dev"),
            (27.1, "gold-api.com"),
            (25.5, "metals.dev"),
            (26.5, "metals.dev")
        ]
    );
    let candles = prices
        .candles(Metal::Silver, &usd(), day, day)
        .await
        .unwrap();
    assert_eq!(candles.len(), 1);
    let c = &candles[0];
    assert_eq!(
        (c.day, c.open, c.high, c.low, c.close),
        (day, 26.0, 27.1, 25.5, 26.5)
    );
    assert_eq!((c.open_ts, c.close_ts), (at(9, 0), at(23, 55)));
}

/// Price alerts through the real apps against the emulator: a tenant's key
/// registers, lists and deletes them on `prices`; a fetch finding gold past
/// one records its crossing and puts it on the alerts queue once; the next
/// fetch, still past it, does not.
#[tokio::test]
async fn a_price_alert_registered_with_a_tenant_key_fires_once_per_crossing() {
    use shared::aws::tenants::DynamoTenants;
    use shared::metering::tenants::{NewTenant, register};
    let w = world().await;
    let aws = support::aws().await;
    let tenants = DynamoTenants::new(
        shared::aws::Dynamo::new(&aws),
        &w.stack.env("prices").required("TENANTS_TABLE").unwrap(),
    );
    let tenant = serde_json::from_value::<NewTenant>(serde_json::json!({
        "name": "Acme", "monthly_quota": 1000, "billing_day": 1, "tier": "pro"}))
    .unwrap()
    .into_tenant(Utc::now())
    .unwrap();
    let key = register(&tenants, &tenant).await.unwrap();
    let key = key.expose();
    let api = w.api().await;
    let post = |body: serde_json::Value| {
        support::send(
            &api,
            support::request("POST", "/api/alerts", Some(key), Some(&body)),
        )
    };
    let (status, _, above) = post(serde_json::json!({"metal": "gold", "direction": "above",
        "price": 2600, "webhook": "https://hooks.example/gold"}))
    .await;
    assert_eq!(status, StatusCode::CREATED, "{above}");
    let (_, _, below) = post(serde_json::json!({"metal": "gold", "direction": "below",
        "price": 2000, "webhook": "https://hooks.example/gold"}))
    .await;
    let (status, _, listed) = support::send(
        &api,
        support::request("GET", "/api/alerts", Some(key), None),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed["alerts"], serde_json::json!([above, below]));
    let path = format!("/api/alerts/{}", below["id"].as_str().unwrap());
    let (status, _, _) =
        support::send(&api, support::request("DELETE", &path, Some(key), None)).await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let fetcher = w.fetcher().await;
    assert_eq!(run(&fetcher).await.unwrap().alerts_fired, 1);
    assert_eq!(run(&fetcher).await.unwrap().alerts_fired, 0);
    let sqs = aws_sdk_sqs::Client::new(&aws);
    let queue = w
        .stack
        .env("price-fetch")
        .required("ALERTS_QUEUE_URL")
        .unwrap();
    let received = sqs
        .receive_message()
        .queue_url(&queue)
        .max_number_of_messages(10)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    let bodies: Vec<serde_json::Value> = received
        .messages()
        .iter()
        .map(|m| serde_json::from_str(m.body().unwrap()).unwrap())
        .collect();
    let crossing = format!("price:{}:1", above["id"].as_str().unwrap());
    assert_eq!(
        bodies,
        [serde_json::json!({"tenant": tenant.id, "period": crossing, "threshold": 0})]
    );
    // Past the key cache time the key is checked again (the key and its
    // profile in one read), and still works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, _, listed) = support::send(
        &api,
        support::request("GET", "/api/alerts", Some(key), None),
    )
    .await;
    assert_eq!(
        (&listed["alerts"][0]["armed"], &listed["alerts"][0]["fired"]),
        (&serde_json::json!(false), &serde_json::json!(1))
    );
}
