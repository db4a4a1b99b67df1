//! `ingest`: `POST /events`, tenants' usage events in, to the events queue.
//!
//! The tenant comes from the API key, never the body. A request is accepted
//! whole or not at all ([`shared::metering::ingest::accept`]); accepted
//! events are on the queue before the 202, and if the queue cannot take them
//! the answer is 503 + Retry-After: the client retries with the same event
//! ids, which the rollup counts once.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde_json::{Value, json};
use shared::auth::require_tenant;
use shared::aws::Dynamo;
use shared::aws::SdkConfig;
use shared::aws::queue::EventQueue;
use shared::aws::ratelimit::DynamoRateCounter;
use shared::aws::tenants::DynamoTenants;
use shared::clock::{Clock, SystemClock};
use shared::config::{ConfigError, Env};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, RawBody, finish};
use shared::metering::ingest::{AcceptError, EventSink, MAX_BODY_BYTES, Submission, accept};
use shared::metering::tenants::{CachedKeys, TenantStore};
use shared::public_limit::PublicLimit;
use shared::ratelimit::RateCounter;
use shared::telemetry::{MetricUnit, Metrics};

pub const FUNCTION: &str = "ingest";

#[derive(Debug, Clone)]
pub struct Config {
    pub tenants_table: String,
    /// Counts the public routes' per-client limit.
    pub rate_limit_table: String,
    pub events_queue_url: String,
    /// How long a key lookup is remembered per instance
    /// ([`CachedKeys::ttl_from_env`]).
    pub key_cache: Duration,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            tenants_table: env.required("TENANTS_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            key_cache: CachedKeys::ttl_from_env(env)?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

/// Every edge `ingest` touches: AWS in [`app`], memory doubles in tests.
pub struct Edges {
    pub tenants: Arc<dyn TenantStore>,
    pub queue: Arc<dyn EventSink>,
    pub rate_counter: Arc<dyn RateCounter>,
    pub clock: Arc<dyn Clock>,
}

#[derive(Clone)]
struct App {
    keys: Arc<CachedKeys>,
    queue: Arc<dyn EventSink>,
    clock: Arc<dyn Clock>,
}

/// The function's router on AWS: the edges built from the SDK config.
pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = Dynamo::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("tenants_table", &dynamodb.sdk, &config.tenants_table)
        .queue("events_queue", &sqs, &config.events_queue_url);
    let edges = Edges {
        tenants: Arc::new(DynamoTenants::new(dynamodb.clone(), &config.tenants_table)),
        queue: Arc::new(EventQueue::new(aws, &config.events_queue_url)),
        rate_counter: Arc::new(DynamoRateCounter::new(
            dynamodb.sdk,
            &config.rate_limit_table,
        )),
        clock: Arc::new(SystemClock),
    };
    router(config, edges, health)
}

/// The function's router over any edges (`/health` answers from `health`).
pub fn router(config: &Config, edges: Edges, health: HealthChecks) -> Router {
    let public = PublicLimit::new(edges.rate_counter, edges.clock.clone());
    let app = App {
        keys: Arc::new(CachedKeys::new(
            edges.tenants,
            config.key_cache,
            edges.clock.clone(),
        )),
        queue: edges.queue,
        clock: edges.clock,
    };
    let routes = Router::new()
        .route("/events", post(post_events))
        // One byte over the limit is enough to know it is too large.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES + 1))
        .with_state(app)
        .merge(public.guard(health.route()));
    finish(routes, &config.cors)
}

async fn post_events(
    State(app): State<App>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Extension<Metrics>, Json<Value>), ApiError> {
    let tenant = require_tenant(&headers, &app.keys).await?;
    let submission = Submission {
        body: &body,
        content_type: headers
            .get(axum::http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        idempotency_key: headers.get("idempotency-key").map(|v| v.as_bytes()),
    };
    let accepted = accept(app.queue.as_ref(), &tenant.id, &submission, app.clock.now())
        .await
        .inspect_err(|error| {
            if let AcceptError::Queue(error) = error {
                tracing::error!(%error, tenant = %tenant.id, "events queue rejected the events");
            }
        })?;
    // The metrics record is the acceptance's log line: it names the tenant,
    // and `observe` adds the request's fields and writes it.
    let metrics = Metrics::new()
        .dimension("Function", FUNCTION)
        .property("tenant", tenant.id.as_str())
        .value(
            "EventsAccepted",
            MetricUnit::Count,
            accepted.ids.len() as f64,
        )
        .value("QueueMessages", MetricUnit::Count, accepted.messages as f64)
        .value(
            "SqsRequests",
            MetricUnit::Count,
            accepted.queue_requests as f64,
        );
    Ok((
        StatusCode::ACCEPTED,
        Extension(metrics),
        Json(json!({"accepted": accepted.ids.len(), "ids": accepted.ids})),
    ))
}
