//! `chat-stream`: the metered, streaming chat proxy (Lambda response
//! streaming).
//!
//! `POST /api/v1/chat/stream`: sign in (JWT) → check the body → rate limits
//! (per user, minute and hour windows, exact across instances) → monthly
//! quota → history → Anthropic with `stream: true` → Server-Sent Events to
//! the client as upstream sends them. Everything that can be refused is
//! refused with problem+json before the first byte streams.
//!
//! Runs under `run_with_streaming_response`, so every route here streams —
//! buffered responses under the streaming runtime come back empty
//! (aws-lambda-rust-runtime #967), which is why the JSON chat routes
//! (`/api/v1/usage/*`, `/api/v1/status`) live in `usage`.

mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use chrono::{DateTime, Utc};
use shared::auth::require_user;
use shared::aws::SdkConfig;
use shared::aws::chat::{ChatUsers, DynamoChat};
use shared::aws::ledger::DynamoLedger;
use shared::aws::queue::EventQueue;
use shared::aws::ratelimit::DynamoRateCounter;
use shared::aws::secrets::SecretsManager;
use shared::aws::tenants::DynamoTenants;
use shared::chat::anthropic::{self, API_VERSION};
use shared::chat::history::trim;
use shared::chat::request::ChatRequest;
use shared::chat::settings::ChatSettings;
use shared::config::{ConfigError, Env, Upstream};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, RawBody, finish, rate_limit_headers, rate_limited};
use shared::jwt::{JwtSettings, Verifier};
use shared::metering::period::BillingPeriod;
use shared::metering::tenants::Tenant;
use shared::ratelimit::{RateLimiter, RateWindow, Verdict};
use shared::secrets::CachedSecret;
use shared::telemetry::current_request_id;
use shared::telemetry::{Metrics, Unit};

pub const FUNCTION: &str = "chat-stream";

/// Lambda refuses request payloads over 6 MB; allow up to that here.
const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
/// Upstream 429/529/5xx before the stream starts: retried this many times.
const UPSTREAM_RETRIES: u32 = 2;
/// How long Anthropic may take to answer with headers.
const UPSTREAM_HEADERS_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct Config {
    pub chat_table: String,
    pub usage_table: String,
    pub tenants_table: String,
    pub rate_limit_table: String,
    pub events_queue_url: String,
    pub anthropic_api_key_secret: String,
    pub anthropic_base_url: String,
    /// Sign-in; chat refuses requests (503) until `JWKS_URL` is set.
    pub jwt: Option<JwtSettings>,
    pub chat: ChatSettings,
    /// A comment line is sent after this much upstream silence.
    pub keep_alive: Duration,
    /// Upstream silence after which the stream is abandoned.
    pub idle_timeout: Duration,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            chat_table: env.required("CHAT_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            tenants_table: env.required("TENANTS_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            anthropic_api_key_secret: env.required("ANTHROPIC_API_KEY_SECRET")?,
            anthropic_base_url: env.upstream(Upstream::Anthropic)?,
            jwt: JwtSettings::from_env(env)?,
            chat: ChatSettings::from_env(env)?,
            keep_alive: Duration::from_millis(env.parse_or("CHAT_KEEP_ALIVE_MS", 15_000)?),
            idle_timeout: Duration::from_millis(env.parse_or("CHAT_IDLE_TIMEOUT_MS", 120_000)?),
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

/// Everything a request needs, built once per cold start.
struct App {
    config: Config,
    verifier: Option<Verifier>,
    users: ChatUsers,
    chat: DynamoChat,
    limiter: RateLimiter,
    ledger: DynamoLedger,
    queue: EventQueue,
    api_key: CachedSecret,
    http: reqwest::Client,
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("the HTTP client builds with static settings");
    let chat = DynamoChat::new(dynamodb.clone(), &config.chat_table);
    let state = Arc::new(App {
        verifier: config
            .jwt
            .clone()
            .map(|jwt| Verifier::new(jwt, http.clone())),
        users: ChatUsers::new(
            chat.clone(),
            DynamoTenants::new(dynamodb.clone(), &config.tenants_table),
            config.chat.tiers,
        ),
        chat,
        limiter: RateLimiter::new(Arc::new(DynamoRateCounter::new(
            dynamodb.clone(),
            &config.rate_limit_table,
        ))),
        ledger: DynamoLedger::new(dynamodb.clone(), &config.usage_table),
        queue: EventQueue::new(sqs.clone(), &config.events_queue_url),
        api_key: CachedSecret::new(
            Arc::new(SecretsManager::new(secrets.clone())),
            &config.anthropic_api_key_secret,
            Duration::from_secs(300),
        ),
        http,
        config: config.clone(),
    });
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("chat_table", &dynamodb, &config.chat_table)
        .table("usage_table", &dynamodb, &config.usage_table)
        .table("tenants_table", &dynamodb, &config.tenants_table)
        .table("rate_limit_table", &dynamodb, &config.rate_limit_table)
        .queue("events_queue", &sqs, &config.events_queue_url)
        .secret(
            "anthropic_api_key_secret",
            &secrets,
            &config.anthropic_api_key_secret,
        );
    let routes = Router::new()
        .route("/api/v1/chat/stream", post(chat_stream))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
        .merge(health.route());
    finish(routes, &config.cors)
}

/// Time kept back from the invocation's deadline to record usage and end
/// the stream cleanly.
const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

async fn chat_stream(
    State(app): State<Arc<App>>,
    context: Option<axum::Extension<lambda_http::Context>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let started = Instant::now();
    let deadline = context.and_then(|axum::Extension(context)| {
        let left = context
            .deadline()
            .duration_since(std::time::SystemTime::now())
            .ok()?;
        Some(started + left.saturating_sub(DEADLINE_MARGIN))
    });
    match admit(&app, &headers, &body, Utc::now(), deadline).await {
        Ok(admitted) => match connect(&app, &admitted).await {
            Ok(upstream) => relay::respond(app, admitted, upstream, started),
            Err(error) => error.into_response(),
        },
        Err(refusal) => refusal,
    }
}

/// A request that passed every check and may go upstream.
pub(crate) struct Admitted {
    request_id: String,
    subject: String,
    tenant: Tenant,
    request: ChatRequest,
    body: serde_json::Value,
    limits: Option<Verdict>,
    at: DateTime<Utc>,
    /// When the stream must end to leave time for recording its usage
    /// (the invocation's deadline less a margin); `None` outside Lambda.
    deadline: Option<Instant>,
}

/// Sign-in, body, rate limits, quota, history: every refusal happens here,
/// before anything is sent upstream or streamed.
async fn admit(
    app: &App,
    headers: &HeaderMap,
    body: &[u8],
    now: DateTime<Utc>,
    deadline: Option<Instant>,
) -> Result<Admitted, Response> {
    let request_id = current_request_id().unwrap_or_default();
    let subject = require_user(headers, app.verifier.as_ref())
        .await
        .map_err(IntoResponse::into_response)?
        .0;
    let request = ChatRequest::parse(body, &app.config.chat)
        .map_err(|e| ApiError::bad_request("invalid_request", e.0).into_response())?;
    let tenant = app
        .users
        .sign_in(&subject, now)
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    if !tenant.enabled {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "account_disabled",
            "this account is disabled",
        )
        .into_response());
    }

    let limits = rate_limit(app, &subject, &tenant, &request_id, now).await?;

    let period = BillingPeriod::containing(now, tenant.billing_day);
    let used = app
        .ledger
        .period_total(&tenant.id, &period.key())
        .await
        .map_err(|e| ApiError::from(e).into_response())?;
    if used >= tenant.monthly_quota {
        let retry = (period.end - now).num_seconds().max(1) as u64;
        let mut refusal = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "quota_exceeded",
            format!(
                "the monthly quota of {} tokens is used up; it resets at {}",
                tenant.monthly_quota,
                period.end.to_rfc3339()
            ),
        )
        .with_retry_after(retry)
        .with_extension("quota", tenant.monthly_quota)
        .with_extension("used", used)
        .with_extension("resets_at", period.end.to_rfc3339())
        .into_response();
        if let Some(limits) = &limits {
            refusal
                .headers_mut()
                .extend(rate_limit_headers(&limits.binding));
        }
        return Err(refusal);
    }

    let history = if request.continues {
        let turns = app
            .chat
            .history(&subject, request.conversation_id.as_str())
            .await
            .map_err(|e| ApiError::from(e).into_response())?;
        trim(&turns, app.config.chat.history_budget_tokens)
    } else {
        Vec::new()
    };
    let body = anthropic::messages_body(&app.config.chat.system_prompt, &history, &request);
    Ok(Admitted {
        request_id,
        subject,
        tenant,
        request,
        body,
        limits,
        at: now,
        deadline,
    })
}

/// Counts the request against the tier's windows. A store failure lets the
/// request through (logged, counted in `RateLimitStoreErrors`) unless
/// `RATE_LIMIT_FAIL_CLOSED` is set: then it is a 503.
async fn rate_limit(
    app: &App,
    subject: &str,
    tenant: &Tenant,
    request_id: &str,
    now: DateTime<Utc>,
) -> Result<Option<Verdict>, Response> {
    let limits = app.config.chat.tiers.limits(tenant.tier);
    let mut windows = vec![RateWindow {
        name: "minute",
        length: chrono::TimeDelta::minutes(1),
        limit: limits.per_minute,
    }];
    if let Some(per_hour) = limits.per_hour {
        windows.push(RateWindow {
            name: "hour",
            length: chrono::TimeDelta::hours(1),
            limit: per_hour,
        });
    }
    let verdict = match app
        .limiter
        .hit_windows(&format!("chat#{subject}"), &windows, now)
        .await
    {
        Ok(verdict) => verdict,
        Err(error) if app.config.chat.rate_limit_fail_closed => {
            tracing::error!(%error, "rate-limit store unavailable; refusing (fail closed)");
            return Err(ApiError::unavailable("rate-limit store", 5).into_response());
        }
        Err(error) => {
            tracing::warn!(%error, "rate-limit store unavailable; allowing (fail open)");
            Metrics::new()
                .dimension("Function", FUNCTION)
                .value("RateLimitStoreErrors", Unit::Count, 1.0)
                .emit();
            return Ok(None);
        }
    };
    match verdict {
        Some(v) if !v.binding.allowed => {
            Metrics::new()
                .dimension("Function", FUNCTION)
                .value("RateLimited", Unit::Count, 1.0)
                .emit();
            if let Err(error) = app
                .chat
                .record_refusal(subject, request_id, v.window, v.binding.limit, now)
                .await
            {
                tracing::warn!(%error, "could not record the rate-limit refusal");
            }
            Err(rate_limited(
                &v.binding,
                format!(
                    "at most {} chat requests per {} on the {:?} tier",
                    v.binding.limit, v.window, tenant.tier
                ),
                now,
            )
            .into_response())
        }
        other => Ok(other),
    }
}

/// Opens the upstream stream. 429, 529 and 5xx are retried with jittered
/// backoff (at most [`UPSTREAM_RETRIES`] times), then reported as 503.
async fn connect(app: &App, admitted: &Admitted) -> Result<reqwest::Response, ApiError> {
    let secret = app.api_key.get().await.map_err(|e| {
        tracing::error!(error = %e, "Anthropic API key unavailable");
        ApiError::unavailable("Anthropic API key secret", 5)
    })?;
    let key = anthropic::api_key(secret.expose()).ok_or_else(|| {
        tracing::error!("the Anthropic API key secret holds no api_key: set it");
        ApiError::unavailable("Anthropic API key (not set)", 60)
    })?;
    let url = format!("{}/v1/messages", app.config.anthropic_base_url);
    let mut attempt = 0;
    loop {
        let sent = tokio::time::timeout(
            UPSTREAM_HEADERS_TIMEOUT,
            app.http
                .post(&url)
                .header("x-api-key", &key)
                .header("anthropic-version", API_VERSION)
                .header("accept", "text/event-stream")
                .json(&admitted.body)
                .send(),
        )
        .await;
        let retryable = match sent {
            Ok(Ok(response)) if response.status().is_success() => return Ok(response),
            Ok(Ok(response)) => {
                let status = response.status();
                let retry_after = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<u64>().ok());
                let body = response.bytes().await.unwrap_or_default();
                let (kind, message) = anthropic::error_body(&body)
                    .unwrap_or_else(|| ("unknown".to_owned(), String::new()));
                tracing::warn!(%status, kind, message, attempt, "Anthropic refused the request");
                match status.as_u16() {
                    429 | 529 | 500..=599 => UpstreamBusy {
                        code: if status.as_u16() == 429 {
                            "upstream_rate_limited"
                        } else {
                            "upstream_overloaded"
                        },
                        retry_after,
                    },
                    400 | 413 => {
                        return Err(ApiError::bad_request(
                            "upstream_rejected",
                            format!("the model API rejected the request: {message}"),
                        ));
                    }
                    _ => {
                        // 401/403/404: our key or configuration, not the client.
                        return Err(ApiError::new(
                            StatusCode::BAD_GATEWAY,
                            "upstream_error",
                            "the model API refused this deployment's request",
                        ));
                    }
                }
            }
            Ok(Err(error)) => {
                tracing::warn!(error = %error.without_url(), attempt, "Anthropic unreachable");
                UpstreamBusy {
                    code: "upstream_unavailable",
                    retry_after: None,
                }
            }
            Err(_) => {
                tracing::warn!(attempt, "Anthropic did not answer in time");
                UpstreamBusy {
                    code: "upstream_unavailable",
                    retry_after: None,
                }
            }
        };
        let out_of_time = admitted
            .deadline
            .is_some_and(|d| Instant::now() + UPSTREAM_HEADERS_TIMEOUT > d);
        if attempt >= UPSTREAM_RETRIES || out_of_time {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                retryable.code,
                "the model API is busy or unavailable; retry shortly",
            )
            .with_retry_after(retryable.retry_after.unwrap_or(10).clamp(1, 60)));
        }
        let backoff = shared::backoff::jittered(Duration::from_millis(500), attempt);
        let wait = retryable
            .retry_after
            .map_or(backoff, |s| Duration::from_secs(s.min(5)).max(backoff));
        tokio::time::sleep(wait).await;
        attempt += 1;
    }
}

struct UpstreamBusy {
    code: &'static str,
    retry_after: Option<u64>,
}
