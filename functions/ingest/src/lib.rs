//! `ingest`: tenants' usage events in over HTTP, out to the events queue.
//!
//! Serves `GET /health` today; `POST /events` builds on the same router.

use axum::Router;
use shared::aws::SdkConfig;
use shared::config::{ConfigError, Env};
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, finish};

pub const FUNCTION: &str = "ingest";

#[derive(Debug, Clone)]
pub struct Config {
    pub tenants_table: String,
    pub events_queue_url: String,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            tenants_table: env.required("TENANTS_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("tenants_table", &dynamodb, &config.tenants_table)
        .queue("events_queue", &sqs, &config.events_queue_url);
    finish(health.route(), &config.cors)
}
