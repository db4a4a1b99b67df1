//! `chat-stream`: the metered, streaming chat proxy (Lambda response
//! streaming).
//!
//! `POST /api/v1/chat/stream`: sign in (JWT) → check the body → admission
//! ([`shared::chat::admission`]: account, rate windows, the worst case held
//! against the quota, history) →
//! open the model's stream ([`shared::chat::upstream`]) → Server-Sent Events
//! to the client as upstream sends them ([`shared::chat::stream`]).
//! Everything that can be refused is refused with problem+json before the
//! first byte streams.
//!
//! Runs under `run_with_streaming_response`, so every route here streams —
//! buffered responses under the streaming runtime come back empty
//! (aws-lambda-rust-runtime #967), which is why the JSON chat routes
//! (`/api/v1/usage/*`, `/api/v1/status`) live in `usage`.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use shared::auth::require_user;
use shared::aws::Dynamo;
use shared::aws::SdkConfig;
use shared::aws::budget::DynamoBudgets;
use shared::aws::chat::DynamoChat;
use shared::aws::ledger::DynamoLedger;
use shared::aws::queue::EventQueue;
use shared::aws::ratelimit::DynamoRateCounter;
use shared::aws::secrets::SecretsManager;
use shared::aws::tenants::DynamoTenants;
use shared::chat::admission::Admission;
use shared::chat::anthropic::{self, AnthropicHttp};
use shared::chat::budget::{Budget, Budgets};
use shared::chat::gateway::{Ask, Gateway};
use shared::chat::request::ChatRequest;
use shared::chat::settings::{ChatResources, ChatSettings};
use shared::chat::store::ChatStore;
use shared::chat::stream::Streamer;
use shared::chat::upstream::ModelApi;
use shared::chat::users::Users;
use shared::clock::{Clock, SystemClock};
use shared::config::{ConfigError, Env, Upstream};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, RawBody, finish, rate_limit_headers};
use shared::jwt::{JwtSettings, TokenVerifier, Verifier};
use shared::metering::ingest::EventSink;
use shared::metering::tenants::TenantStore;
use shared::metering::usage::UsageReader;
use shared::public_limit::PublicLimit;
use shared::ratelimit::{Decision, RateCounter};
use shared::secrets::{CachedSecret, SecretSource};
use shared::telemetry::current_request_id;
use tokio::sync::mpsc;

pub use shared::chat::FUNCTION;

/// Lambda refuses request payloads over 6 MB; allow up to that here.
const MAX_BODY_BYTES: usize = 6 * 1024 * 1024;
/// Client events buffered between the relay task and the response body.
const CHANNEL_DEPTH: usize = 64;

#[derive(Debug, Clone)]
pub struct Config {
    pub resources: ChatResources,
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
            resources: ChatResources::from_env(env)?,
            anthropic_base_url: env.upstream(Upstream::Anthropic)?,
            jwt: JwtSettings::from_env(env)?,
            chat: ChatSettings::from_env(env)?,
            keep_alive: Duration::from_millis(env.parse_or("CHAT_KEEP_ALIVE_MS", 15_000)?),
            idle_timeout: Duration::from_millis(env.parse_or("CHAT_IDLE_TIMEOUT_MS", 120_000)?),
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

/// Every edge chat-stream touches: AWS and Anthropic in [`app`], memory
/// doubles in tests.
pub struct Edges {
    /// `None` while sign-in is not configured.
    pub verifier: Option<Arc<dyn TokenVerifier>>,
    pub chat: Arc<dyn ChatStore>,
    pub tenants: Arc<dyn TenantStore>,
    pub rate_counter: Arc<dyn RateCounter>,
    pub usage: Arc<dyn UsageReader>,
    pub budgets: Arc<dyn Budgets>,
    pub queue: Arc<dyn EventSink>,
    pub secrets: Arc<dyn SecretSource>,
    pub model: Arc<dyn ModelApi>,
    pub clock: Arc<dyn Clock>,
}

/// Everything a request needs, built once per cold start.
struct App {
    verifier: Option<Arc<dyn TokenVerifier>>,
    gateway: Gateway,
    clock: Arc<dyn Clock>,
}

/// The function's router on AWS: the edges built from the SDK config.
pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = Dynamo::new(aws);
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .pool_idle_timeout(anthropic::POOLED_FOR + Duration::from_secs(30))
        .build()
        .expect("the HTTP client builds with static settings");
    let r = &config.resources;
    let edges = Edges {
        verifier: config
            .jwt
            .clone()
            .map(|jwt| Arc::new(Verifier::new(jwt, http.clone())) as Arc<dyn TokenVerifier>),
        chat: Arc::new(DynamoChat::new(dynamodb.sdk.clone(), &r.chat_table)),
        tenants: Arc::new(DynamoTenants::new(dynamodb.clone(), &r.tenants_table)),
        rate_counter: Arc::new(DynamoRateCounter::new(
            dynamodb.sdk.clone(),
            &r.rate_limit_table,
        )),
        usage: Arc::new(DynamoLedger::new(dynamodb.clone(), &r.usage_table)),
        budgets: Arc::new(DynamoBudgets::new(dynamodb.sdk, &r.usage_table)),
        queue: Arc::new(EventQueue::new(aws, &r.events_queue_url)),
        secrets: Arc::new(SecretsManager::new(aws_sdk_secretsmanager::Client::new(
            aws,
        ))),
        model: Arc::new(AnthropicHttp::new(http, &config.anthropic_base_url)),
        clock: Arc::new(SystemClock),
    };
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION")).chat(aws, r);
    router(config, edges, health)
}

/// The function's router over any edges (`/health` answers from `health`).
pub fn router(config: &Config, edges: Edges, health: HealthChecks) -> Router {
    let users = Users::new(edges.chat.clone(), edges.tenants, config.chat.tiers);
    let public = PublicLimit::new(edges.rate_counter, edges.clock.clone());
    let budget = Budget::new(edges.budgets, edges.usage);
    let state = Arc::new(App {
        verifier: edges.verifier,
        gateway: Gateway {
            admission: Admission::new(
                users,
                budget.clone(),
                edges.chat.clone(),
                config.chat.clone(),
            ),
            streamer: Streamer {
                chat: edges.chat,
                queue: edges.queue,
                budget,
                settings: config.chat.clone(),
                keep_alive: config.keep_alive,
                idle_timeout: config.idle_timeout,
            },
            api_key: CachedSecret::new(
                edges.secrets,
                &config.resources.anthropic_api_key_secret,
                Duration::from_secs(300),
            ),
            model: edges.model,
        },
        clock: edges.clock,
    });
    let routes = Router::new()
        .route("/api/v1/chat/stream", post(chat_stream))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
        .merge(public.guard(health.route()));
    finish(routes, &config.cors)
}

async fn chat_stream(
    State(app): State<Arc<App>>,
    context: Option<axum::Extension<lambda_http::Context>>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let deadline = context.and_then(|axum::Extension(context)| {
        let left = context
            .deadline()
            .duration_since(std::time::SystemTime::now())
            .ok()?;
        Some(started + left)
    });
    let subject = require_user(&headers, app.verifier.as_deref()).await?;
    let request = ChatRequest::parse(&body, app.gateway.admission.settings())
        .map_err(|e| ApiError::bad_request("invalid_request", e.0))?;
    let ask = Ask {
        subject: subject.0,
        request,
        request_id: current_request_id().unwrap_or_default(),
        now: app.clock.now(),
        started,
        deadline,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(CHANNEL_DEPTH);
    let limits = app.gateway.start(ask, tx).await?;
    Ok(sse_response(rx, limits))
}

/// The streaming response: whatever the relay task writes into `rx`.
fn sse_response(rx: mpsc::Receiver<Bytes>, limits: Option<Decision>) -> Response {
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|bytes| (Ok::<_, Infallible>(bytes), rx))
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream; charset=utf-8"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    if let Some(limits) = limits {
        headers.extend(rate_limit_headers(&limits));
    }
    response
}
