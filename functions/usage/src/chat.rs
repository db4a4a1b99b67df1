//! The JSON side of chat (the stream itself is `chat-stream`), for the
//! signed-in user (JWT), over [`shared::chat::account`]:
//! - `GET /api/v1/usage/current`: this period's tokens, quota, requests,
//!   cost and prompt-cache savings, from the metering ledger;
//! - `GET /api/v1/usage/history?limit=30&cursor=`: per-request records;
//! - `GET /api/v1/status`: each chat dependency's state (public).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use serde_json::{Value, json};
use shared::auth::require_user;
use shared::error::ApiError;

use super::{App, cursor, page_limit};

pub(crate) async fn current(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let subject = require_user(&headers, app.chat.verifier.as_deref()).await?;
    let current = app
        .chat
        .account
        .current(&subject.0, app.clock.now())
        .await?;
    let (chat, limits) = (&current.chat, &current.limits);
    Ok(Json(json!({
        "tier": current.tenant.tier,
        "period": {"start": current.period.start, "end": current.period.end},
        "tokens": {
            "input": chat.usage.input_tokens,
            "output": chat.usage.output_tokens,
            "cache_write": chat.usage.cache_creation_input_tokens,
            "cache_read": chat.usage.cache_read_input_tokens,
            "total": current.usage.tokens,
        },
        "quota": {
            "limit": limits.monthly_tokens,
            "used": current.usage.tokens,
            "remaining": current.remaining(),
            "percent": current.percent(),
            "resets_at": current.period.end,
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
    let page = app
        .chat
        .account
        .requests(&subject.0, limit, cursor(&query), app.clock.now())
        .await?;
    Ok(Json(json!({
        "requests": page.records,
        "next_cursor": page.next,
    })))
}

pub(crate) async fn status(State(app): State<App>) -> Json<Value> {
    Json(app.chat.status.get().await)
}
