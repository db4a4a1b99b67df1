//! `usage`: the tenant admin API and usage queries.
//!
//! - `POST /admin/tenants`, `GET /admin/tenants`, `GET|PATCH
//!   /admin/tenants/{id}`, `POST /admin/tenants/{id}/keys` (admin token);
//! - `GET /usage/{tenant}` (that tenant's API key, or the admin token);
//! - `GET /admin/usage` (every tenant's period total) and `GET /dashboard`;
//! - chat's JSON routes, for signed-in users: see [`chat`].

mod chat;
mod dashboard;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{TimeDelta, Utc};
use futures_util::{StreamExt, TryStreamExt};
use serde_json::{Value, json};
use shared::auth::{is_admin, require_admin, require_tenant};
use shared::aws::SdkConfig;

use shared::aws::chat::{ChatUsers, DynamoChat};
use shared::aws::ledger::DynamoLedger;
use shared::aws::secrets::SecretsManager;
use shared::aws::tenants::{CachedKeys, DynamoTenants};
use shared::chat::settings::ChatSettings;
use shared::config::{ConfigError, Env};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, JsonBody, finish};
use shared::jwt::{JwtSettings, Verifier};
use shared::metering::period::BillingPeriod;
use shared::metering::tenants::{ApiKey, NewTenant, Tenant, TenantPatch};
use shared::metering::types::TenantId;
use shared::metering::usage::{Resolution, Window, quota_percent, range, series};
use shared::secrets::CachedSecret;

pub const FUNCTION: &str = "usage";

#[derive(Debug, Clone)]
pub struct Config {
    pub tenants_table: String,
    pub usage_table: String,
    pub chat_table: String,
    pub admin_token_secret: String,
    /// How long a rotated-out API key keeps working (`KEY_GRACE_SECONDS`).
    pub key_grace: TimeDelta,
    /// How long a tenant key lookup is remembered (`KEY_CACHE_SECONDS`).
    pub key_cache: Duration,
    /// Chat's dependencies, for `/api/v1/status`.
    pub rate_limit_table: String,
    pub events_queue_url: String,
    pub anthropic_api_key_secret: String,
    /// Sign-in for the chat routes; they answer 503 while it is unset.
    pub jwt: Option<JwtSettings>,
    pub chat: ChatSettings,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            tenants_table: env.required("TENANTS_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            chat_table: env.required("CHAT_TABLE")?,
            admin_token_secret: env.required("ADMIN_TOKEN_SECRET")?,
            key_grace: TimeDelta::seconds(env.parse_or("KEY_GRACE_SECONDS", 86_400)?),
            key_cache: Duration::from_secs(env.parse_or("KEY_CACHE_SECONDS", 30)?),
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            anthropic_api_key_secret: env.required("ANTHROPIC_API_KEY_SECRET")?,
            jwt: JwtSettings::from_env(env)?,
            chat: ChatSettings::from_env(env)?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

#[derive(Clone)]
struct App {
    tenants: DynamoTenants,
    keys: Arc<CachedKeys>,
    ledger: DynamoLedger,
    admin_token: Arc<CachedSecret>,
    key_grace: TimeDelta,
    chat: Arc<Chat>,
}

/// What the chat routes need.
struct Chat {
    verifier: Option<Arc<Verifier>>,
    users: ChatUsers,
    store: DynamoChat,
    settings: ChatSettings,
    status: HealthChecks,
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let tenants = DynamoTenants::new(dynamodb.clone(), &config.tenants_table);
    let app = App {
        keys: Arc::new(CachedKeys::new(tenants.clone(), config.key_cache)),
        tenants,
        ledger: DynamoLedger::new(dynamodb.clone(), &config.usage_table),
        admin_token: Arc::new(CachedSecret::new(
            Arc::new(SecretsManager::new(secrets.clone())),
            &config.admin_token_secret,
            Duration::from_secs(300),
        )),
        key_grace: config.key_grace,
        chat: Arc::new(chat_routes(config, aws)),
    };
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("tenants_table", &dynamodb, &config.tenants_table)
        .table("usage_table", &dynamodb, &config.usage_table)
        .table("chat_table", &dynamodb, &config.chat_table)
        .secret("admin_token_secret", &secrets, &config.admin_token_secret);
    let routes = Router::new()
        .route("/admin/tenants", post(create_tenant).get(list_tenants))
        .route("/admin/tenants/{id}", get(get_tenant).patch(patch_tenant))
        .route("/admin/tenants/{id}/keys", post(rotate_key))
        .route("/usage/{tenant}", get(usage))
        .route("/admin/usage", get(all_usage))
        .route("/dashboard", get(dashboard::page))
        .route("/api/v1/usage/current", get(chat::current))
        .route("/api/v1/usage/history", get(chat::history))
        .route("/api/v1/status", get(chat::status))
        .with_state(app)
        .merge(health.route());
    finish(routes, &config.cors)
}

fn chat_routes(config: &Config, aws: &SdkConfig) -> Chat {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .build()
        .expect("the HTTP client builds with static settings");
    let store = DynamoChat::new(dynamodb.clone(), &config.chat_table);
    let mut status = HealthChecks::new("chat", env!("CARGO_PKG_VERSION"))
        .table("chat_table", &dynamodb, &config.chat_table)
        .table("usage_table", &dynamodb, &config.usage_table)
        .table("tenants_table", &dynamodb, &config.tenants_table)
        .table("rate_limit_table", &dynamodb, &config.rate_limit_table)
        .queue(
            "events_queue",
            &aws_sdk_sqs::Client::new(aws),
            &config.events_queue_url,
        )
        .secret(
            "anthropic_api_key_secret",
            &aws_sdk_secretsmanager::Client::new(aws),
            &config.anthropic_api_key_secret,
        );
    if let Some(jwt) = &config.jwt {
        status = status.url("sign_in_keys", &http, &jwt.jwks_url);
    }
    Chat {
        verifier: config
            .jwt
            .clone()
            .map(|jwt| Arc::new(Verifier::new(jwt, http))),
        users: ChatUsers::new(
            store.clone(),
            DynamoTenants::new(dynamodb, &config.tenants_table),
            config.chat.tiers,
        ),
        store,
        settings: config.chat.clone(),
        status,
    }
}

/// `?limit=` of a paginated list: 1 to 100.
fn page_limit(query: &HashMap<String, String>, default: i32) -> Result<i32, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(raw) => raw
            .parse::<i32>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| ApiError::bad_request("invalid_limit", "limit must be from 1 to 100")),
    }
}

/// `?cursor=`, where an empty value means the first page.
fn cursor(query: &HashMap<String, String>) -> Option<&str> {
    query
        .get("cursor")
        .map(String::as_str)
        .filter(|c| !c.is_empty())
}

fn tenant_id(raw: String) -> Result<TenantId, ApiError> {
    TenantId::try_from(raw).map_err(|e| ApiError::bad_request("invalid_tenant_id", e.0))
}

fn no_such_tenant(id: &TenantId) -> ApiError {
    ApiError::not_found(format!("no tenant {id}"))
}

/// A tenant as the admin API shows it: everything but the signing secret,
/// which is shown once, at creation.
fn view(tenant: &Tenant) -> Value {
    json!({
        "id": tenant.id,
        "name": tenant.name,
        "monthly_quota": tenant.monthly_quota,
        "billing_day": tenant.billing_day,
        "tier": tenant.tier,
        "webhooks": tenant.webhooks,
        "enabled": tenant.enabled,
        "created_at": tenant.created_at,
    })
}

/// The admin token, checked as an extractor so that it runs before the
/// body is read: an unauthenticated caller learns nothing about validation.
struct Admin;

impl axum::extract::FromRequestParts<App> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        app: &App,
    ) -> Result<Self, ApiError> {
        require_admin(&parts.headers, &app.admin_token).await?;
        Ok(Admin)
    }
}

async fn create_tenant(
    State(app): State<App>,
    _: Admin,
    JsonBody(new): JsonBody<NewTenant>,
) -> Result<impl IntoResponse, ApiError> {
    let tenant = new
        .into_tenant(Utc::now())
        .map_err(|e| ApiError::bad_request("invalid_tenant", e.0))?;
    let key = ApiKey::generate();
    app.tenants.create(&tenant, &key.hash()).await?;
    tracing::info!(tenant = %tenant.id, "tenant created");
    let mut body = view(&tenant);
    body["api_key"] = json!(key.expose());
    body["signing_secret"] = json!(tenant.signing_secret);
    Ok((StatusCode::CREATED, Json(body)))
}

async fn list_tenants(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let limit = page_limit(&query, 50)?;
    let page = app.tenants.list(limit, cursor(&query)).await?;
    Ok(Json(json!({
        "tenants": page.tenants.iter().map(view).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

async fn get_tenant(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let id = tenant_id(id)?;
    let tenant = app.tenants.get(&id).await?;
    tenant
        .map(|t| Json(view(&t)))
        .ok_or_else(|| no_such_tenant(&id))
}

async fn patch_tenant(
    State(app): State<App>,
    _: Admin,
    Path(id): Path<String>,
    JsonBody(patch): JsonBody<TenantPatch>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(id)?;
    patch
        .validate()
        .map_err(|e| ApiError::bad_request("invalid_tenant", e.0))?;
    let tenant = app.tenants.update(&id, &patch).await?;
    tenant
        .map(|t| Json(view(&t)))
        .ok_or_else(|| no_such_tenant(&id))
}

async fn rotate_key(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let id = tenant_id(id)?;
    let key = ApiKey::generate();
    let grace_until = Utc::now() + app.key_grace;
    app.tenants
        .rotate_key(&id, &key.hash(), grace_until)
        .await?
        .ok_or_else(|| no_such_tenant(&id))?;
    tracing::info!(tenant = %id, "api key rotated");
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenant": id,
            "api_key": key.expose(),
            "previous_key_valid_until": grace_until,
        })),
    ))
}

/// `GET /usage/{tenant}?window=1h|24h|7d|period&resolution=minute|hour|day`.
async fn usage(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(id)?;
    let tenant = if is_admin(&headers, &app.admin_token).await? {
        app.tenants
            .get(&id)
            .await?
            .ok_or_else(|| no_such_tenant(&id))?
    } else {
        let caller = require_tenant(&headers, &app.keys).await?;
        if caller.id != id {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "an API key can only read its own tenant's usage",
            ));
        }
        caller
    };

    let window = match query.get("window") {
        None => Window::Day,
        Some(w) => Window::parse(w).map_err(|e| ApiError::bad_request("invalid_window", e.0))?,
    };
    let resolution = match query.get("resolution") {
        None => window.default_resolution(),
        Some(r) => {
            Resolution::parse(r).map_err(|e| ApiError::bad_request("invalid_resolution", e.0))?
        }
    };
    let now = Utc::now();
    let period = BillingPeriod::containing(now, tenant.billing_day);
    let (from, to) = range(window, resolution, now, &period)
        .map_err(|e| ApiError::bad_request("invalid_resolution", e.0))?;

    let period_key = period.key();
    let (totals, minutes) = tokio::try_join!(
        app.ledger.period_usage(&tenant.id, &period_key),
        app.ledger.minutes(&tenant.id, from, to),
    )?;

    Ok(Json(json!({
        "tenant": tenant.id,
        "tenantName": tenant.name,
        "totalTokens": totals.tokens,
        "events": totals.events,
        "monthlyQuota": tenant.monthly_quota,
        "quotaPercent": quota_percent(totals.tokens, tenant.monthly_quota),
        "remaining": tenant.monthly_quota.saturating_sub(totals.tokens),
        "periodStart": period.start,
        "periodEnd": period.end,
        "features": totals.features.iter().map(|(feature, tokens, events)| {
            json!({"feature": feature, "tokens": tokens, "events": events})
        }).collect::<Vec<_>>(),
        "series": {
            "window": window,
            "resolution": resolution,
            "points": series(&minutes, from, to, resolution),
        },
    })))
}

/// Tenants listed for the dashboard, at most (pages of 100).
const DASHBOARD_TENANTS: usize = 1000;

/// `GET /admin/usage`: every tenant's usage this period, by name.
async fn all_usage(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let mut tenants = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let page = app.tenants.list(100, cursor.as_deref()).await?;
        tenants.extend(page.tenants);
        cursor = page.next;
        if cursor.is_none() || tenants.len() >= DASHBOARD_TENANTS {
            break;
        }
    }
    let now = Utc::now();
    let reads = futures_util::stream::iter(tenants.into_iter().map(|tenant| {
        let ledger = app.ledger.clone();
        async move {
            let period = BillingPeriod::containing(now, tenant.billing_day);
            let used = ledger.period_total(&tenant.id, &period.key()).await?;
            Ok::<_, shared::store::StoreError>(json!({
                "tenant": tenant.id,
                "tenantName": tenant.name,
                "totalTokens": used,
                "monthlyQuota": tenant.monthly_quota,
                "quotaPercent": quota_percent(used, tenant.monthly_quota),
                "enabled": tenant.enabled,
                "periodStart": period.start,
                "periodEnd": period.end,
            }))
        }
    }));
    // A few reads in flight at a time: fast, without a burst per tenant.
    let mut rows: Vec<Value> = reads.buffered(8).try_collect().await?;
    rows.sort_by(|a, b| a["tenantName"].as_str().cmp(&b["tenantName"].as_str()));
    Ok(Json(json!({ "tenants": rows })))
}
