//! The JSON side of chat (the stream itself is `chat-stream`), for the
//! signed-in user (JWT), over [`shared::chat::account`]:
//! - `GET /api/v1/usage/current`: this period's tokens, quota, requests,
//!   cost and prompt-cache savings, from the metering ledger;
//! - `GET /api/v1/usage/history?limit=30&cursor=`: per-request records;
//! - `GET /api/v1/conversations?limit=20&cursor=`, `GET|DELETE
//!   /api/v1/conversations/{id}`: the user's own conversations;
//! - `GET /api/v1/status`: each chat dependency's state (public).

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use serde_json::{Value, json};
use shared::auth::require_user;
use shared::chat::request::ConversationId;
use shared::chat::store::ConversationSummary;
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

pub(crate) async fn conversations(
    State(app): State<App>,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let subject = require_user(&headers, app.chat.verifier.as_deref()).await?;
    let limit = page_limit(&query, 20)?;
    let page = app
        .chat
        .account
        .conversations(&subject.0, limit, cursor(&query))
        .await?;
    Ok(Json(json!({
        "conversations": page.conversations.iter().map(summary).collect::<Vec<_>>(),
        "next_cursor": page.next,
    })))
}

pub(crate) async fn conversation(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let subject = require_user(&headers, app.chat.verifier.as_deref()).await?;
    let id = conversation_id(&id)?;
    let conversation = app
        .chat
        .account
        .conversation(&subject.0, &id)
        .await?
        .ok_or_else(|| no_such_conversation(&id))?;
    let mut body = summary(&conversation.summary);
    body["messages"] = json!(conversation.turns);
    Ok(Json(body))
}

pub(crate) async fn delete_conversation(
    State(app): State<App>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let subject = require_user(&headers, app.chat.verifier.as_deref()).await?;
    let id = conversation_id(&id)?;
    if app.chat.account.forget(&subject.0, &id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(no_such_conversation(&id))
    }
}

fn conversation_id(raw: &str) -> Result<ConversationId, ApiError> {
    ConversationId::parse(raw).map_err(|e| ApiError::bad_request("invalid_conversation_id", e.0))
}

fn no_such_conversation(id: &ConversationId) -> ApiError {
    ApiError::not_found(format!("no conversation {}", id.as_str()))
}

/// A conversation as its owner's list shows it.
fn summary(conversation: &ConversationSummary) -> Value {
    json!({
        "id": conversation.id,
        "title": conversation.title,
        "created_at": conversation.created_at,
        "last_activity_at": conversation.updated_at,
    })
}

pub(crate) async fn status(State(app): State<App>) -> Json<Value> {
    Json(app.chat.status.get().await)
}
