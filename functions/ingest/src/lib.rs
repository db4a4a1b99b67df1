//! `ingest`: `POST /events`, tenants' usage events in, to the events queue.
//!
//! The tenant comes from the API key, never the body. A request is accepted
//! whole or not at all; accepted events are on the queue before the 202, and
//! if the queue cannot take them the answer is 503 + Retry-After: the client
//! retries with the same event ids, which the rollup counts once.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::config::timeout::TimeoutConfig;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use chrono::Utc;
use serde_json::{Value, json};
use shared::auth::require_tenant;
use shared::aws::SdkConfig;
use shared::aws::queue::EventQueue;
use shared::aws::tenants::DynamoTenants;
use shared::clock::SystemClock;
use shared::config::{ConfigError, Env};
use shared::error::ApiError;
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, RawBody, finish};
use shared::metering::ingest::{EventSink, IngestError, MAX_BODY_BYTES, pack, parse_events};
use shared::metering::tenants::CachedKeys;
use shared::telemetry::{MetricUnit, Metrics};

pub const FUNCTION: &str = "ingest";

#[derive(Debug, Clone)]
pub struct Config {
    pub tenants_table: String,
    pub events_queue_url: String,
    /// How long a key lookup is remembered per instance (`KEY_CACHE_SECONDS`):
    /// the most a disabled tenant or expired key keeps working.
    pub key_cache: Duration,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            tenants_table: env.required("TENANTS_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            key_cache: Duration::from_secs(env.parse_or("KEY_CACHE_SECONDS", 30)?),
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

#[derive(Clone)]
struct App {
    keys: Arc<CachedKeys>,
    queue: EventQueue,
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    // A stuck queue must become a quick 503, not a request that hangs until
    // API Gateway gives up.
    let sqs = aws_sdk_sqs::Client::from_conf(
        aws_sdk_sqs::config::Builder::from(aws)
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(2))
                    .operation_timeout(Duration::from_secs(5))
                    .build(),
            )
            .build(),
    );
    let app = App {
        keys: Arc::new(CachedKeys::new(
            Arc::new(DynamoTenants::new(dynamodb.clone(), &config.tenants_table)),
            config.key_cache,
            Arc::new(SystemClock),
        )),
        queue: EventQueue::new(sqs.clone(), &config.events_queue_url),
    };
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("tenants_table", &dynamodb, &config.tenants_table)
        .queue("events_queue", &sqs, &config.events_queue_url);
    let routes = Router::new()
        .route("/events", post(post_events))
        // One byte over the limit is enough to know it is too large.
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES + 1))
        .with_state(app)
        .merge(health.route());
    finish(routes, &config.cors)
}

fn rejection(error: IngestError) -> ApiError {
    match error {
        IngestError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            error.to_string(),
        ),
        IngestError::Malformed(_) => ApiError::bad_request("invalid_json", error.to_string()),
        IngestError::Shape(_) => ApiError::bad_request("invalid_body", error.to_string()),
        IngestError::InvalidEvents(ref problems) => {
            let errors = serde_json::to_value(problems).unwrap_or(Value::Null);
            ApiError::bad_request("invalid_events", error.to_string())
                .with_extension("errors", errors)
        }
    }
}

async fn post_events(
    State(app): State<App>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let tenant = require_tenant(&headers, &app.keys).await?;
    let events = parse_events(&body, Utc::now()).map_err(rejection)?;
    let bodies = pack(&tenant.id, &events);
    let requests = app.queue.send(&bodies).await.map_err(|error| {
        tracing::error!(%error, tenant = %tenant.id, "events queue rejected the events");
        ApiError::unavailable("events queue", 5)
    })?;
    tracing::info!(tenant = %tenant.id, events = events.len(), messages = bodies.len(), "events accepted");
    Metrics::new()
        .dimension("Function", FUNCTION)
        .value("EventsAccepted", MetricUnit::Count, events.len() as f64)
        .value("QueueMessages", MetricUnit::Count, bodies.len() as f64)
        .value("SqsRequests", MetricUnit::Count, requests as f64)
        .emit();
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "accepted": events.len(),
            "ids": events.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        })),
    ))
}
