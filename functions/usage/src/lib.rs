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
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Value, json};
use shared::auth::{require_admin, require_admin_or_own};
use shared::aws::Dynamo;
use shared::aws::SdkConfig;
use shared::aws::chat::DynamoChat;
use shared::aws::ledger::DynamoLedger;
use shared::aws::prices::DynamoPrices;
use shared::aws::ratelimit::DynamoRateCounter;
use shared::aws::secrets::SecretsManager;
use shared::aws::tenants::DynamoTenants;
use shared::chat::account::Account;
use shared::chat::settings::{ChatResources, ChatSettings};
use shared::chat::store::ChatStore;
use shared::chat::users::Users;
use shared::clock::{Clock, SystemClock};
use shared::config::{ConfigError, Env, Upstream};
use shared::error::ApiError;
use shared::health::{HealthChecks, StatusPage};
use shared::http::{CorsOrigins, JsonBody, finish};
use shared::jwt::{JwtSettings, TokenVerifier, Verifier};
use shared::metering::tenants::{
    self, CachedKeys, NewTenant, Tenant, TenantPatch, TenantStore, register,
};
use shared::metering::types::TenantId;
use shared::metering::usage::{
    Resolution, UsageQuery, UsageReader, UsageSpan, UsageWindow, period_totals, report,
};
use shared::prices::alerts::PriceAlerts;
use shared::public_limit::PublicLimit;
use shared::ratelimit::RateCounter;
use shared::secrets::{CachedSecret, SecretSource};

pub const FUNCTION: &str = "usage";

#[derive(Debug, Clone)]
pub struct Config {
    /// Its own tables, and chat's resources for `/api/v1/status`.
    pub resources: ChatResources,
    pub admin_token_secret: String,
    /// Where tenants' price alerts are kept: a deleted tenant's go too.
    pub prices_table: String,
    /// How long a rotated-out API key keeps working (`KEY_GRACE_SECONDS`).
    pub key_grace: TimeDelta,
    /// How long a tenant key lookup is remembered, and so how long deleting
    /// or disabling a tenant waits ([`CachedKeys::ttl_from_env`]).
    pub key_cache: Duration,
    /// The model API, whose reachability `/api/v1/status` reports.
    pub anthropic_base_url: String,
    /// Sign-in for the chat routes; they answer 503 while it is unset.
    pub jwt: Option<JwtSettings>,
    pub chat: ChatSettings,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            resources: ChatResources::from_env(env)?,
            admin_token_secret: env.required("ADMIN_TOKEN_SECRET")?,
            prices_table: env.required("PRICES_TABLE")?,
            anthropic_base_url: env.upstream(Upstream::Anthropic)?,
            key_grace: TimeDelta::seconds(env.parse_or("KEY_GRACE_SECONDS", 86_400)?),
            key_cache: CachedKeys::ttl_from_env(env)?,
            jwt: JwtSettings::from_env(env)?,
            chat: ChatSettings::from_env(env)?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

/// Every edge `usage` touches: AWS in [`app`], memory doubles in tests.
pub struct Edges {
    pub tenants: Arc<dyn TenantStore>,
    pub usage: Arc<dyn UsageReader>,
    pub chat: Arc<dyn ChatStore>,
    pub price_alerts: Arc<dyn PriceAlerts>,
    pub secrets: Arc<dyn SecretSource>,
    /// `None` while sign-in is not configured.
    pub verifier: Option<Arc<dyn TokenVerifier>>,
    pub rate_counter: Arc<dyn RateCounter>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Clone)]
struct App {
    tenants: Arc<dyn TenantStore>,
    keys: Arc<CachedKeys>,
    usage: Arc<dyn UsageReader>,
    price_alerts: Arc<dyn PriceAlerts>,
    admin_token: Arc<CachedSecret>,
    key_grace: TimeDelta,
    clock: Arc<dyn Clock>,
    chat: Arc<Chat>,
}

/// What the chat routes need.
struct Chat {
    verifier: Option<Arc<dyn TokenVerifier>>,
    account: Account,
    status: StatusPage,
}

/// `/api/v1/status` is public: it answers from a probe at most this old.
const STATUS_TTL: Duration = Duration::from_secs(30);

/// The function's router on AWS: the edges built from the SDK config.
pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = Dynamo::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(3))
        .timeout(Duration::from_secs(3))
        .build()
        .expect("the HTTP client builds with static settings");
    let r = &config.resources;
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("tenants_table", &dynamodb.sdk, &r.tenants_table)
        .table("usage_table", &dynamodb.sdk, &r.usage_table)
        .table("chat_table", &dynamodb.sdk, &r.chat_table)
        .secret("admin_token_secret", &secrets, &config.admin_token_secret);
    let mut status = HealthChecks::new("chat", env!("CARGO_PKG_VERSION"))
        .chat(aws, r)
        .anthropic_key(&secrets, &r.anthropic_api_key_secret)
        .reachable("anthropic_api", &http, &config.anthropic_base_url);
    if let Some(jwt) = &config.jwt {
        status = status.url("sign_in_keys", &http, &jwt.jwks_url);
    }
    let edges = Edges {
        tenants: Arc::new(DynamoTenants::new(dynamodb.clone(), &r.tenants_table)),
        usage: Arc::new(DynamoLedger::new(dynamodb.clone(), &r.usage_table)),
        chat: Arc::new(DynamoChat::new(dynamodb.sdk.clone(), &r.chat_table)),
        price_alerts: Arc::new(DynamoPrices::new(dynamodb.clone(), &config.prices_table)),
        rate_counter: Arc::new(DynamoRateCounter::new(dynamodb.sdk, &r.rate_limit_table)),
        secrets: Arc::new(SecretsManager::new(secrets)),
        verifier: config
            .jwt
            .clone()
            .map(|jwt| Arc::new(Verifier::new(jwt, http)) as Arc<dyn TokenVerifier>),
        clock: Arc::new(SystemClock),
    };
    router(config, edges, health, status)
}

/// The function's router over any edges: `/health` answers from `health`,
/// `/api/v1/status` from `status`.
pub fn router(config: &Config, edges: Edges, health: HealthChecks, status: HealthChecks) -> Router {
    let public = PublicLimit::new(edges.rate_counter, edges.clock.clone());
    let app = App {
        keys: Arc::new(CachedKeys::new(
            edges.tenants.clone(),
            config.key_cache,
            edges.clock.clone(),
        )),
        tenants: edges.tenants.clone(),
        usage: edges.usage.clone(),
        price_alerts: edges.price_alerts,
        admin_token: Arc::new(CachedSecret::new(
            edges.secrets,
            &config.admin_token_secret,
            Duration::from_secs(300),
        )),
        key_grace: config.key_grace,
        clock: edges.clock,
        chat: Arc::new(Chat {
            verifier: edges.verifier,
            account: Account::new(
                Users::new(edges.chat.clone(), edges.tenants, config.chat.tiers),
                edges.usage,
                edges.chat,
                config.chat.clone(),
            ),
            status: StatusPage::new(status, STATUS_TTL),
        }),
    };
    let routes = Router::new()
        .route("/admin/tenants", post(create_tenant).get(list_tenants))
        .route(
            "/admin/tenants/{id}",
            get(get_tenant).patch(patch_tenant).delete(delete_tenant),
        )
        .route("/admin/tenants/{id}/keys", post(rotate_key))
        .route(
            "/admin/tenants/{id}/signing-secret",
            post(rotate_signing_secret),
        )
        .route("/usage/{tenant}", get(usage))
        .route("/admin/usage", get(all_usage))
        .route("/api/v1/usage/current", get(chat::current))
        .route("/api/v1/usage/history", get(chat::history))
        .route("/api/v1/conversations", get(chat::conversations))
        .route(
            "/api/v1/conversations/{id}",
            get(chat::conversation).delete(chat::delete_conversation),
        )
        .with_state(app.clone());
    let unauthenticated = Router::new()
        .route("/dashboard", get(dashboard::page))
        .route("/api/v1/status", get(chat::status))
        .with_state(app)
        .merge(health.route());
    finish(routes.merge(public.guard(unauthenticated)), &config.cors)
}

/// `?limit=` of a paginated list: 1 to 100.
fn page_limit(query: &HashMap<String, String>, default: usize) -> Result<usize, ApiError> {
    match query.get("limit") {
        None => Ok(default),
        Some(raw) => raw
            .parse::<usize>()
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
        .into_tenant(app.clock.now())
        .map_err(|e| ApiError::bad_request("invalid_tenant", e.0))?;
    let key = register(app.tenants.as_ref(), &tenant).await?;
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
    let tenant = tenant.ok_or_else(|| no_such_tenant(&id))?;
    if patch.enabled == Some(false) {
        // The tenant's keys are refused everywhere once this answers.
        app.keys.wait_out().await;
    }
    Ok(Json(view(&tenant)))
}

/// `DELETE /admin/tenants/{id}`: 204 once the tenant's keys are refused
/// everywhere and its price alerts are gone, or 404 if there is no such
/// tenant. Safe to retry: a repeat (while the tombstone is kept) finishes
/// what a failed one left.
async fn delete_tenant(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let id = tenant_id(id)?;
    if !tenants::delete_tenant(app.tenants.as_ref(), &id, app.clock.now()).await? {
        return Err(no_such_tenant(&id));
    }
    app.keys.wait_out().await;
    // No instance takes its keys now, so no alert can be registered after
    // these go.
    let alerts = app.price_alerts.delete_all(&id).await?;
    tracing::info!(tenant = %id, alerts, "a deleted tenant's price alerts removed");
    Ok(StatusCode::NO_CONTENT)
}

async fn rotate_key(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let id = tenant_id(id)?;
    let rotated = tenants::rotate_key(app.tenants.as_ref(), &id, app.key_grace, app.clock.now())
        .await?
        .ok_or_else(|| no_such_tenant(&id))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenant": id,
            "api_key": rotated.key.expose(),
            "previous_key_valid_until": rotated.previous_valid_until,
        })),
    ))
}

/// A new webhook signing secret (shown once); the old one keeps signing
/// beside it for the same grace period as a rotated key.
async fn rotate_signing_secret(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let id = tenant_id(id)?;
    let tenant =
        tenants::rotate_signing_secret(app.tenants.as_ref(), &id, app.key_grace, app.clock.now())
            .await?
            .ok_or_else(|| no_such_tenant(&id))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "tenant": id,
            "signing_secret": tenant.signing_secret,
            "previous_secret_valid_until": tenant.previous_signing_secret.map(|p| p.until),
        })),
    ))
}

/// `GET /usage/{tenant}?window=1h|24h|7d|period` (or `from` and `to`)
/// `&resolution=minute|hour|day&group_by=feature`.
async fn usage(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = tenant_id(id)?;
    let tenant = require_admin_or_own(
        &headers,
        &app.admin_token,
        &app.keys,
        app.tenants.as_ref(),
        &id,
    )
    .await?;

    let query = usage_query(&query, app.clock.now())?;
    let report = report(app.usage.as_ref(), &tenant, query, app.clock.now()).await?;
    let (period, totals) = (&report.period, &report.totals);

    Ok(Json(json!({
        "tenant": tenant.id,
        "tenantName": tenant.name,
        "totalTokens": totals.tokens,
        "events": totals.events,
        "monthlyQuota": tenant.monthly_quota,
        "quotaPercent": report.percent(),
        "remaining": report.remaining(),
        "periodStart": period.start,
        "periodEnd": period.end,
        "features": totals.features.iter().map(|(feature, tokens, events)| {
            json!({"feature": feature, "tokens": tokens, "events": events})
        }).collect::<Vec<_>>(),
        "series": {
            "window": match report.span {
                UsageSpan::Window(window) => json!(window),
                UsageSpan::Range { .. } => Value::Null,
            },
            "from": report.from,
            "to": report.to,
            "resolution": report.resolution,
            "points": report.series,
            "byFeature": report.by_feature,
        },
    })))
}

/// The query of `GET /usage/{tenant}`: `window` (default 24h) or
/// `from` and `to`, `resolution`, `group_by=feature`.
fn usage_query(
    query: &HashMap<String, String>,
    now: DateTime<Utc>,
) -> Result<UsageQuery, ApiError> {
    let time = |name: &str| {
        query
            .get(name)
            .map(|t| DateTime::parse_from_rfc3339(t).map(|t| t.to_utc()))
            .transpose()
            .map_err(|_| {
                ApiError::bad_request(
                    "invalid_range",
                    format!("{name} must be RFC 3339, e.g. 2026-11-22T10:00:00Z"),
                )
            })
    };
    let span = match (query.get("window"), time("from")?, time("to")?) {
        (None, None, None) => UsageSpan::Window(UsageWindow::Day),
        (Some(w), None, None) => UsageSpan::Window(
            UsageWindow::parse(w).map_err(|e| ApiError::bad_request("invalid_window", e.0))?,
        ),
        (None, Some(from), Some(to)) => UsageSpan::range(from, to, now)
            .map_err(|e| ApiError::bad_request("invalid_range", e.0))?,
        _ => {
            return Err(ApiError::bad_request(
                "invalid_range",
                "give either window, or both from and to",
            ));
        }
    };
    let resolution = query
        .get("resolution")
        .map(|r| Resolution::parse(r))
        .transpose()
        .map_err(|e| ApiError::bad_request("invalid_resolution", e.0))?;
    let by_feature = match query.get("group_by").map(String::as_str) {
        None => false,
        Some("feature") => true,
        Some(_) => {
            return Err(ApiError::bad_request(
                "invalid_group_by",
                "group_by must be feature",
            ));
        }
    };
    Ok(UsageQuery {
        span,
        resolution,
        by_feature,
    })
}

/// `GET /admin/usage`: every tenant's usage this period, by name.
async fn all_usage(State(app): State<App>, headers: HeaderMap) -> Result<Json<Value>, ApiError> {
    require_admin(&headers, &app.admin_token).await?;
    let rows = period_totals(app.tenants.as_ref(), app.usage.as_ref(), app.clock.now()).await?;
    let rows: Vec<Value> = rows
        .iter()
        .map(|row| {
            json!({
                "tenant": row.tenant.id,
                "tenantName": row.tenant.name,
                "totalTokens": row.tokens,
                "monthlyQuota": row.tenant.monthly_quota,
                "quotaPercent": row.percent(),
                "enabled": row.tenant.enabled,
                "periodStart": row.period.start,
                "periodEnd": row.period.end,
            })
        })
        .collect();
    Ok(Json(json!({ "tenants": rows })))
}
