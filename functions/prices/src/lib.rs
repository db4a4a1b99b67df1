//! `prices`: the read API for spot prices.
//!
//! - `GET /api/prices?metal=&currency=&unit=toz|g|kg&window=1h|24h|7d|30d`
//! - `GET /api/proxy/{provider}?metal=&currency=`: a live quote, 120 per
//!   minute per client IP
//! - `GET /api/config`: public configuration, breaker states included
//!
//! Latest prices come through a cache chain: this warm instance's memory
//! (60 s), then DynamoDB's latest (written by `price-fetch`), then a live
//! fetch when that is missing or stale, once per key at a time (single
//! flight). Responses carry `Cache-Control` and an `ETag`; `If-None-Match`
//! gets a 304.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::{TimeDelta, Utc};
use lambda_http::RequestExt;
use lambda_http::request::RequestContext;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use shared::aws::SdkConfig;
use shared::aws::prices::DynamoPrices;
use shared::aws::ratelimit::DynamoRateCounter;
use shared::aws::secrets::SecretsManager;
use shared::config::{ConfigError, Env};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, finish, rate_limit_headers, rate_limited};
use shared::prices::failover::{BreakerStore, fetch_round};
use shared::prices::providers::{Provider, ProviderId};
use shared::prices::settings::PriceSettings;
use shared::prices::types::{Currency, HistoryWindow, Metal, Quote, Unknown, WeightUnit};
use shared::ratelimit::RateLimiter;
use shared::secrets::CachedSecret;

pub const FUNCTION: &str = "prices";

/// Series longer than this are averaged down to it.
const MAX_POINTS: usize = 500;

#[derive(Debug, Clone)]
pub struct Config {
    pub prices_table: String,
    pub rate_limit_table: String,
    pub provider_keys_secret: String,
    pub settings: PriceSettings,
    /// `MEMORY_CACHE_SECONDS` (60).
    pub memory_ttl: Duration,
    /// The fetch schedule (`FETCH_EVERY_MINUTES`, 5): a latest price older
    /// than two periods is stale.
    pub schedule: TimeDelta,
    /// `PROXY_RATE_LIMIT` per client IP per minute (120).
    pub proxy_limit: u32,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            settings: PriceSettings::from_env(env)?,
            memory_ttl: Duration::from_secs(env.parse_or("MEMORY_CACHE_SECONDS", 60)?),
            schedule: TimeDelta::minutes(env.parse_or("FETCH_EVERY_MINUTES", 5)?),
            proxy_limit: env.parse_or("PROXY_RATE_LIMIT", 120)?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

/// A rendered response body and its ETag.
struct Cached {
    body: String,
    etag: String,
}

/// Rendered responses by query, with when they were rendered.
type Memory = Mutex<HashMap<String, (Arc<Cached>, Instant)>>;

#[derive(Clone)]
struct App {
    config: Arc<Config>,
    http: reqwest::Client,
    prices: DynamoPrices,
    limiter: RateLimiter,
    keys: Arc<CachedSecret>,
    memory: Arc<Memory>,
    flights: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("prices_table", &dynamodb, &config.prices_table)
        .table("rate_limit_table", &dynamodb, &config.rate_limit_table)
        .secret(
            "provider_keys_secret",
            &secrets,
            &config.provider_keys_secret,
        );
    let app = App {
        http: reqwest::Client::builder()
            .user_agent(concat!("ingot/", env!("CARGO_PKG_VERSION")))
            .build()
            .unwrap_or_default(),
        prices: DynamoPrices::new(dynamodb.clone(), &config.prices_table),
        limiter: RateLimiter::new(Arc::new(DynamoRateCounter::new(
            dynamodb,
            &config.rate_limit_table,
        ))),
        keys: Arc::new(CachedSecret::new(
            Arc::new(SecretsManager::new(secrets)),
            &config.provider_keys_secret,
            Duration::from_secs(3600),
        )),
        memory: Arc::default(),
        flights: Arc::default(),
        config: Arc::new(config.clone()),
    };
    let routes = Router::new()
        .route("/api/prices", get(prices))
        .route("/api/proxy/{provider}", get(proxy))
        .route("/api/config", get(public_config))
        .with_state(app)
        .merge(health.route());
    finish(routes, &config.cors)
}

fn invalid(code: &'static str, error: Unknown) -> ApiError {
    ApiError::bad_request(code, error.to_string()).with_extension(
        "allowed",
        error
            .allowed
            .split(", ")
            .map(str::to_owned)
            .collect::<Vec<_>>(),
    )
}

fn round(price: f64) -> f64 {
    (price * 1e6).round() / 1e6
}

impl App {
    async fn providers(&self) -> Result<Vec<Provider>, ApiError> {
        let secret = self.keys.get().await.map_err(|e| {
            tracing::error!(error = %e, "provider keys unavailable");
            ApiError::unavailable("provider keys secret", 5)
        })?;
        self.config
            .settings
            .with_keys(secret.expose())
            .map_err(ApiError::internal)
    }

    fn cached(&self, key: &str) -> Option<Arc<Cached>> {
        let memory = self.memory.lock().expect("cache lock");
        memory
            .get(key)
            .filter(|(_, at)| at.elapsed() < self.config.memory_ttl)
            .map(|(c, _)| Arc::clone(c))
    }

    fn flight(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut flights = self.flights.lock().expect("flight lock");
        Arc::clone(flights.entry(key.to_owned()).or_default())
    }

    /// The latest quote and whether it is stale: DynamoDB, else (missing or
    /// stale) a live fetch, which is also written back.
    async fn latest(&self, metal: Metal, currency: &Currency) -> Result<(Quote, bool), ApiError> {
        let stored = self
            .prices
            .latest(metal, currency)
            .await
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "prices table unavailable; trying the providers");
                None
            });
        let max_age = self.config.schedule * 2;
        if let Some(q) = &stored
            && Utc::now() - q.ts <= max_age
        {
            return Ok((q.clone(), false));
        }
        let last: BTreeMap<Metal, f64> = stored.iter().map(|q| (metal, q.price)).collect();
        let providers = self.providers().await?;
        let round = fetch_round(
            &self.http,
            &providers,
            &self.prices,
            &self.config.settings.policy,
            &[metal],
            currency,
            &last,
        )
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "breaker state unavailable");
            ApiError::unavailable("prices table", 5)
        })?;
        if let Some(quote) = round.accepted.get(&metal) {
            if let Err(e) = self.prices.record(quote, TimeDelta::days(400)).await {
                tracing::warn!(error = %e, "could not store a live quote");
            }
            return Ok((quote.clone(), false));
        }
        let why: Vec<String> = round
            .attempts
            .iter()
            .filter_map(|a| {
                a.outcome
                    .as_ref()
                    .err()
                    .map(|e| format!("{}: {e}", a.provider.name()))
            })
            .chain(
                round
                    .skipped
                    .iter()
                    .map(|(p, r)| format!("{}: {r}", p.name())),
            )
            .collect();
        match stored {
            Some(q) => Ok((q, true)),
            None => {
                Err(ApiError::unavailable("price providers", 30).with_extension("providers", why))
            }
        }
    }

    /// The series of `window` up to now, averaged down to [`MAX_POINTS`].
    async fn series(
        &self,
        metal: Metal,
        currency: &Currency,
        window: HistoryWindow,
        unit: WeightUnit,
    ) -> Result<Vec<Value>, ApiError> {
        let now = Utc::now();
        let quotes = self
            .prices
            .series(metal, currency, now - window.span(), now)
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "price history unavailable");
                ApiError::unavailable("prices table", 5)
            })?;
        let per_bucket = quotes.len().div_ceil(MAX_POINTS).max(1);
        Ok(quotes
            .chunks(per_bucket)
            .map(|bucket| {
                let mean = bucket.iter().map(|q| q.price).sum::<f64>() / bucket.len() as f64;
                json!({"ts": bucket[bucket.len() - 1].ts, "price": round(unit.from_troy_ounce(mean))})
            })
            .collect())
    }

    async fn render_one(
        &self,
        metal: Metal,
        currency: &Currency,
        unit: WeightUnit,
        window: HistoryWindow,
    ) -> Result<Value, ApiError> {
        let (quote, stale) = self.latest(metal, currency).await?;
        let series = self.series(metal, currency, window, unit).await?;
        let mut body = latest_json(&quote, stale, unit);
        body["window"] = json!(window.name());
        body["count"] = json!(series.len());
        body["series"] = json!(series);
        Ok(body)
    }
}

fn latest_json(quote: &Quote, stale: bool, unit: WeightUnit) -> Value {
    let convert = |p: Option<f64>| p.map(|p| round(unit.from_troy_ounce(p)));
    json!({
        "metal": quote.metal,
        "currency": quote.currency,
        "unit": unit.name(),
        "latest": {
            "ts": quote.ts,
            "price": round(unit.from_troy_ounce(quote.price)),
            "bid": convert(quote.bid),
            "ask": convert(quote.ask),
            "provider": quote.provider,
        },
        "age_seconds": (Utc::now() - quote.ts).num_seconds().max(0),
        "stale": stale,
    })
}

fn respond(cached: &Cached, headers: &HeaderMap, max_age: Duration) -> Response {
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == cached.etag || t.trim() == "*")
        });
    let etag = HeaderValue::from_str(&cached.etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let control = HeaderValue::from_str(&format!("public, max-age={}", max_age.as_secs()))
        .unwrap_or(HeaderValue::from_static("no-cache"));
    if matches {
        return (
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, etag), (header::CACHE_CONTROL, control)],
        )
            .into_response();
    }
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
            (header::ETAG, etag),
            (header::CACHE_CONTROL, control),
        ],
        cached.body.clone(),
    )
        .into_response()
}

async fn prices(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let settings = &app.config.settings;
    let metal = query
        .get("metal")
        .map(|m| Metal::parse(m))
        .transpose()
        .map_err(|e| invalid("invalid_metal", e))?;
    let currency = match query.get("currency") {
        Some(c) => settings
            .currency(c)
            .map_err(|e| invalid("invalid_currency", e))?,
        None => settings.currencies[0].clone(),
    };
    let unit = query
        .get("unit")
        .map_or(Ok(WeightUnit::Toz), |u| WeightUnit::parse(u))
        .map_err(|e| invalid("invalid_unit", e))?;
    let window = query
        .get("window")
        .map_or(Ok(HistoryWindow::Day), |w| HistoryWindow::parse(w))
        .map_err(|e| invalid("invalid_window", e))?;

    let key = format!("{metal:?}|{currency}|{}|{}", unit.name(), window.name());
    let ttl = app.config.memory_ttl;
    if let Some(hit) = app.cached(&key) {
        return Ok(respond(&hit, &headers, ttl));
    }
    // One fill per key per instance; the others wait and read the cache.
    let flight = app.flight(&key);
    let _guard = flight.lock().await;
    if let Some(hit) = app.cached(&key) {
        return Ok(respond(&hit, &headers, ttl));
    }
    let body = match metal {
        Some(metal) => app.render_one(metal, &currency, unit, window).await?,
        None => {
            let mut all = Vec::new();
            for metal in &settings.metals {
                let (quote, stale) = app.latest(*metal, &currency).await?;
                all.push(latest_json(&quote, stale, unit));
            }
            json!({"currency": currency, "unit": unit.name(), "prices": all})
        }
    }
    .to_string();
    let digest = Sha256::digest(body.as_bytes());
    let etag = format!(
        "\"{}\"",
        digest[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let cached = Arc::new(Cached { body, etag });
    app.memory
        .lock()
        .expect("cache lock")
        .insert(key, (Arc::clone(&cached), Instant::now()));
    Ok(respond(&cached, &headers, ttl))
}

/// The caller's IP as API Gateway saw it (never a client-set header).
/// Outside API Gateway (tests, tools) every caller shares one bucket.
fn client_ip(context: Option<&RequestContext>) -> String {
    if let Some(RequestContext::ApiGatewayV2(ctx)) = context
        && let Some(ip) = &ctx.http.source_ip
    {
        return ip.clone();
    }
    "unknown".to_owned()
}

async fn proxy(
    State(app): State<App>,
    Path(provider): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let ip = client_ip(request.request_context_ref());
    let config = &app.config;
    let decision = match app
        .limiter
        .hit(
            &format!("proxy#{ip}"),
            config.proxy_limit,
            TimeDelta::minutes(1),
            Utc::now(),
        )
        .await
    {
        Ok(d) => Some(d),
        Err(error) => {
            // Fail open: a limiter outage must not take the API down.
            tracing::warn!(%error, "rate-limit store unavailable; allowing the request");
            None
        }
    };
    if let Some(d) = decision.filter(|d| !d.allowed) {
        return Err(rate_limited(
            &d,
            format!("at most {} proxy requests per minute", d.limit),
            Utc::now(),
        ));
    }

    let id = ProviderId::parse(&provider).ok_or_else(|| {
        invalid(
            "invalid_provider",
            Unknown {
                what: "provider",
                value: provider.clone(),
                allowed: ProviderId::ALL.map(ProviderId::name).join(", "),
            },
        )
    })?;
    let metal = Metal::parse(query.get("metal").map_or("gold", String::as_str))
        .map_err(|e| invalid("invalid_metal", e))?;
    let currency = match query.get("currency") {
        Some(c) => config
            .settings
            .currency(c)
            .map_err(|e| invalid("invalid_currency", e))?,
        None => config.settings.currencies[0].clone(),
    };
    let provider = app
        .providers()
        .await?
        .into_iter()
        .find(|p| p.id == id)
        .filter(Provider::is_configured)
        .ok_or_else(|| {
            ApiError::bad_request(
                "provider_not_configured",
                format!("{} has no API key configured", id.name()),
            )
        })?;
    let quotes = provider
        .fetch(
            &app.http,
            &[metal],
            &currency,
            config.settings.policy.timeout,
        )
        .await
        .map_err(|e| {
            tracing::warn!(provider = id.name(), error = %e, "proxy fetch failed");
            ApiError::unavailable(id.name(), 30).with_extension("reason", e.to_string())
        })?;
    let quote = quotes
        .into_iter()
        .next()
        .ok_or_else(|| ApiError::unavailable(id.name(), 30))?;
    let mut response = Json(latest_json(&quote, false, WeightUnit::Toz)).into_response();
    if let Some(d) = decision {
        response.headers_mut().extend(rate_limit_headers(&d));
    }
    Ok(response)
}

async fn public_config(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let config = &app.config;
    let providers = app.providers().await?;
    let now = Utc::now();
    let mut listed = Vec::new();
    for (priority, provider) in providers.iter().enumerate() {
        let circuit = match app.prices.get(provider.id).await {
            Ok(breaker) => breaker.name(now),
            Err(_) => "unknown",
        };
        listed.push(json!({
            "name": provider.id.name(),
            "priority": priority + 1,
            "configured": provider.is_configured(),
            "circuit": circuit,
        }));
    }
    Ok(Json(json!({
        "metals": config.settings.metals,
        "currencies": config.settings.currencies,
        "units": WeightUnit::ALL.map(WeightUnit::name),
        "windows": HistoryWindow::ALL.map(HistoryWindow::name),
        "providers": listed,
        "cache": {"memory_seconds": config.memory_ttl.as_secs(), "stale_after_seconds": (config.schedule * 2).num_seconds()},
        "schedule": format!("rate({} minutes)", config.schedule.num_minutes()),
        "proxy_rate_limit_per_minute": config.proxy_limit,
    })))
}
