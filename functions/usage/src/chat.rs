//! The JSON side of chat (the stream itself is `chat-stream`), for the
//! signed-in user (JWT):
//! - `GET /api/v1/usage/current`: this period's tokens, quota, requests,
//!   cost and prompt-cache savings, from the metering ledger (the same
//!   numbers the quota is enforced on);
//! - `GET /api/v1/usage/history?limit=30&cursor=`: per-request records;
//! - `GET /api/v1/status`: each chat dependency's state (public).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use shared::auth::require_user;
use shared::chat::metering::totals;
use shared::error::ApiError;
use shared::metering::period::BillingPeriod;
use shared::metering::usage::quota_percent;

use super::{App, cursor, page_limit};

pub(crate) async fn current(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let subject = require_user(&headers, app.chat.verifier.as_deref()).await?;
    let now = app.clock.now();
    let tenant = app.chat.users.sign_in(&subject.0, now).await?;
    let period = BillingPeriod::containing(now, tenant.billing_day);
    let usage = app.usage.period_usage(&tenant.id, &period.key()).await?;
    let chat = totals(&usage.features, &app.chat.settings.models);
    let limits = app.chat.settings.tiers.limits(tenant.tier);
    Ok(Json(json!({
        "tier": tenant.tier,
        "period": {"start": period.start, "end": period.end},
        "tokens": {
            "input": chat.usage.input_tokens,
            "output": chat.usage.output_tokens,
            "cache_write": chat.usage.cache_creation_input_tokens,
            "cache_read": chat.usage.cache_read_input_tokens,
            "total": usage.tokens,
        },
        "quota": {
            "limit": limits.monthly_tokens,
            "used": usage.tokens,
            "remaining": limits.monthly_tokens.saturating_sub(usage.tokens),
            "percent": quota_percent(usage.tokens, limits.monthly_tokens),
            "resets_at": period.end,
        },
        "requests": chat.requests,
        "estimated_cost_usd": chat.cost_usd,
        "cache": {
            "hit_rate": chat.cache_hit_rate,
            "savings_usd": chat.cache_savings_usd,
        },
        "rate_limits": {"per_minute": limits.per_minute, "per_hour": limits.per_hour},
    })))
}

pub(crate) async fn history(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let subject = require_user(&headers, app.chat.verifier.as_deref()).await?;
    let limit = page_limit(&query, 30)?;
    app.chat.users.sign_in(&subject.0, app.clock.now()).await?;
    let page = app
        .chat
        .store
        .usage_records(&subject.0, limit, cursor(&query))
        .await?;
    Ok(Json(json!({
        "requests": page.records,
        "next_cursor": page.next,
    })))
}

pub(crate) async fn status(State(app): State<App>) -> Json<Value> {
    Json(app.chat.status.status().await)
}
