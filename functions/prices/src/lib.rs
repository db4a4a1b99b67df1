//! `prices`: the read API for spot prices.
//!
//! - `GET /api/prices?metal=&currency=&unit=toz|g|kg&window=1h|24h|7d|30d`
//! - `GET /api/proxy/{provider}?metal=&currency=`: a live quote, 120 per
//!   minute per client IP
//! - `GET /api/config`: public configuration, breaker states included
//!
//! Each handler parses, asks [`PriceService`] once (the cache chain, the
//! proxy with its rate limit, and the providers' state live there, in
//! `shared::prices::service`), and renders: `Cache-Control`, the `ETag` and
//! 304 for `If-None-Match`, the rate-limit headers. [`app`] wires the AWS adapters; [`router`] takes any
//! [`Edges`], so `tests/routes.rs` drives it with memory doubles.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use shared::auth::require_tenant;
use shared::aws::Dynamo;
use shared::aws::SdkConfig;
use shared::aws::prices::DynamoPrices;
use shared::aws::ratelimit::DynamoRateCounter;
use shared::aws::secrets::SecretsManager;
use shared::aws::tenants::DynamoTenants;
use shared::clock::{Clock, SystemClock};
use shared::config::{ConfigError, Env};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, JsonBody, finish, rate_limit_headers};
use shared::metering::tenants::{CachedKeys, TenantStore};
use shared::prices::alerts::{NewPriceAlert, PriceAlerts, is_alert_id, register};
use shared::prices::cache::Rendered;
use shared::prices::failover::BreakerState;
use shared::prices::query::PriceQuery;
use shared::prices::service::{PriceService, ReadPolicy};
use shared::prices::settings::PriceSettings;
use shared::prices::types::{HistoryWindow, WeightUnit};
use shared::prices::upstream::HttpQuotes;
use shared::prices::view;
use shared::prices::{PriceEdges, PriceError};
use shared::public_limit::{PublicLimit, source_ip};
use shared::ratelimit::{RateCounter, RateLimiter};

pub const FUNCTION: &str = "prices";

#[derive(Debug, Clone)]
pub struct Config {
    pub prices_table: String,
    pub rate_limit_table: String,
    /// Tenant API keys sign in to the price-alert routes.
    pub tenants_table: String,
    /// How long a key lookup is remembered per instance
    /// ([`CachedKeys::ttl_from_env`]).
    pub key_cache: Duration,
    pub provider_keys_secret: String,
    pub settings: PriceSettings,
    /// `MEMORY_CACHE_SECONDS` (60).
    pub memory_ttl: Duration,
    /// `PROXY_RATE_LIMIT` per client IP per minute (120).
    pub proxy_limit: u32,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            prices_table: env.required("PRICES_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            tenants_table: env.required("TENANTS_TABLE")?,
            key_cache: CachedKeys::ttl_from_env(env)?,
            provider_keys_secret: env.required("PROVIDER_KEYS_SECRET")?,
            settings: PriceSettings::from_env(env)?,
            memory_ttl: Duration::from_secs(env.parse_or("MEMORY_CACHE_SECONDS", 60)?),
            proxy_limit: env.parse_or("PROXY_RATE_LIMIT", 120)?,
            cors: CorsOrigins::from_env(env)?,
        })
    }

    fn read_policy(&self) -> ReadPolicy {
        ReadPolicy {
            memory_ttl: self.memory_ttl,
            // A latest price older than two fetch periods is stale.
            stale_after: self.settings.keeping.slot * 2,
            proxy_limit: self.proxy_limit,
        }
    }
}

#[derive(Clone)]
struct App {
    config: Arc<Config>,
    prices: Arc<PriceService>,
    alerts: Arc<dyn PriceAlerts>,
    keys: Arc<CachedKeys>,
    clock: Arc<dyn Clock>,
}

/// Every edge the routes reach, as traits: AWS and the providers in
/// [`app`], memory doubles in tests.
pub struct Edges {
    /// The price store, breakers, providers, provider-keys secret and clock.
    pub prices: PriceEdges,
    pub rate_counter: Arc<dyn RateCounter>,
    pub alerts: Arc<dyn PriceAlerts>,
    pub tenants: Arc<dyn TenantStore>,
}

/// The function as deployed: DynamoDB, Secrets Manager and the providers'
/// HTTP APIs.
pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = Dynamo::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("prices_table", &dynamodb.sdk, &config.prices_table)
        .table("rate_limit_table", &dynamodb.sdk, &config.rate_limit_table)
        .table("tenants_table", &dynamodb.sdk, &config.tenants_table)
        .secret(
            "provider_keys_secret",
            &secrets,
            &config.provider_keys_secret,
        );
    let prices = Arc::new(DynamoPrices::new(dynamodb.clone(), &config.prices_table));
    let edges = Edges {
        prices: PriceEdges {
            store: prices.clone(),
            breakers: prices.clone(),
            quotes: Arc::new(HttpQuotes::new(config.settings.policy.timeout)),
            secrets: Arc::new(SecretsManager::new(secrets)),
            clock: Arc::new(SystemClock),
        },
        rate_counter: Arc::new(DynamoRateCounter::new(
            dynamodb.sdk.clone(),
            &config.rate_limit_table,
        )),
        alerts: prices,
        tenants: Arc::new(DynamoTenants::new(dynamodb, &config.tenants_table)),
    };
    router(config, edges, health)
}

/// The routes over `edges`, `/health`, and the layers every HTTP function
/// has.
pub fn router(config: &Config, edges: Edges, health: HealthChecks) -> Router {
    let clock = Arc::clone(&edges.prices.clock);
    let service = PriceService::new(
        config.settings.clone(),
        config.read_policy(),
        edges.prices,
        RateLimiter::new(Arc::clone(&edges.rate_counter)),
        &config.provider_keys_secret,
    );
    let public = PublicLimit::new(Arc::clone(&edges.rate_counter), Arc::clone(&clock));
    let app = App {
        config: Arc::new(config.clone()),
        prices: Arc::new(service),
        alerts: edges.alerts,
        keys: Arc::new(CachedKeys::new(
            edges.tenants,
            config.key_cache,
            Arc::clone(&clock),
        )),
        clock,
    };
    let limited = Router::new()
        .route("/api/prices", get(prices))
        .route("/api/config", get(public_config))
        .with_state(app.clone())
        .merge(health.route());
    // The proxy counts against its own limit; alerts sign in with a key.
    let proxied = Router::new()
        .route("/api/proxy/{provider}", get(proxy))
        .route("/api/alerts", post(create_alert).get(list_alerts))
        .route("/api/alerts/{id}", delete(delete_alert))
        .with_state(app);
    finish(public.guard(limited).merge(proxied), &config.cors)
}

async fn prices(
    State(app): State<App>,
    headers: HeaderMap,
    Query(params): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let today = app.clock.now().date_naive();
    let query = PriceQuery::parse(&params, &app.config.settings, today)?;
    let answer = app.prices.answer(&query).await?;
    Ok(respond(&answer, &headers, app.config.memory_ttl))
}

/// `POST /api/alerts` (tenant key): registers a price alert.
async fn create_alert(
    State(app): State<App>,
    headers: HeaderMap,
    JsonBody(new): JsonBody<NewPriceAlert>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = require_tenant(&headers, &app.keys).await?;
    let now = app.clock.now();
    let alert = register(
        app.alerts.as_ref(),
        &tenant.id,
        new,
        &app.config.settings,
        now,
    )
    .await?;
    Ok((StatusCode::CREATED, Json(view::alert(&alert))))
}

/// `GET /api/alerts` (tenant key): the caller's alerts, oldest first.
async fn list_alerts(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    let tenant = require_tenant(&headers, &app.keys).await?;
    let alerts = app.alerts.list(&tenant.id).await?;
    let alerts: Vec<Value> = alerts.iter().map(view::alert).collect();
    Ok(Json(json!({ "alerts": alerts })))
}

/// `DELETE /api/alerts/{id}` (tenant key): 204, or 404 when the caller has
/// no alert by that id.
async fn delete_alert(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let tenant = require_tenant(&headers, &app.keys).await?;
    let deleted = is_alert_id(&id) && app.alerts.delete(&tenant.id, &id).await?;
    if deleted {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(PriceError::NoAlert(id).into())
    }
}

/// The answer with its ETag, or 304 when the client already has it.
fn respond(answer: &Rendered, headers: &HeaderMap, max_age: Duration) -> Response {
    let matches = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(',')
                .any(|t| t.trim() == answer.etag || t.trim() == "*")
        });
    let etag = HeaderValue::from_str(&answer.etag).unwrap_or(HeaderValue::from_static("\"0\""));
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
        answer.body.clone(),
    )
        .into_response()
}

async fn proxy(
    State(app): State<App>,
    Path(provider): Path<String>,
    Query(params): Query<HashMap<String, String>>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    // Outside API Gateway (tests, tools) every caller shares one bucket.
    let client = source_ip(&request).unwrap_or_else(|| "unknown".to_owned());
    let (latest, decision) = app.prices.proxy(&client, &provider, &params).await?;
    let body = view::latest(&latest, WeightUnit::Toz, app.clock.now());
    let mut response = Json(body).into_response();
    if let Some(d) = decision {
        response.headers_mut().extend(rate_limit_headers(&d));
    }
    Ok(response)
}

async fn public_config(State(app): State<App>) -> Result<Json<Value>, ApiError> {
    let config = &app.config;
    let providers: Vec<Value> = app
        .prices
        .provider_status()
        .await?
        .iter()
        .enumerate()
        .map(|(priority, p)| {
            json!({
                "name": p.id.name(),
                "priority": priority + 1,
                "configured": p.configured,
                "circuit": p.circuit.map_or("unknown", BreakerState::name),
            })
        })
        .collect();
    Ok(Json(json!({
        "metals": config.settings.metals,
        "currencies": config.settings.currencies,
        "units": WeightUnit::ALL.map(WeightUnit::name),
        "windows": HistoryWindow::ALL.map(HistoryWindow::name),
        "providers": providers,
        "cache": {"memory_seconds": config.memory_ttl.as_secs(), "stale_after_seconds": config.read_policy().stale_after.num_seconds()},
        "schedule": format!("rate({} minutes)", config.settings.keeping.slot.num_minutes()),
        "proxy_rate_limit_per_minute": config.proxy_limit,
    })))
}
