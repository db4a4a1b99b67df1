//! `chat-stream`: the streaming chat proxy (Lambda response streaming).
//!
//! Runs under `run_with_streaming_response`, so every route here streams —
//! buffered responses under the streaming runtime come back empty
//! (aws-lambda-rust-runtime #967), which is why the JSON chat routes live in
//! `usage`. Serves `GET /health` today; `POST /api/v1/chat/stream` builds on
//! the same router.

use axum::Router;
use shared::aws::SdkConfig;
use shared::config::{ConfigError, Env, Upstream};
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, finish};

pub const FUNCTION: &str = "chat-stream";

#[derive(Debug, Clone)]
pub struct Config {
    pub chat_table: String,
    pub usage_table: String,
    pub rate_limit_table: String,
    pub events_queue_url: String,
    pub anthropic_api_key_secret: String,
    pub anthropic_base_url: String,
    /// The sign-in provider's JWKS; chat refuses sign-ins until it is set.
    pub jwks_url: Option<String>,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            chat_table: env.required("CHAT_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            rate_limit_table: env.required("RATE_LIMIT_TABLE")?,
            events_queue_url: env.required("EVENTS_QUEUE_URL")?,
            anthropic_api_key_secret: env.required("ANTHROPIC_API_KEY_SECRET")?,
            anthropic_base_url: env.upstream(Upstream::Anthropic)?,
            jwks_url: env.url("JWKS_URL")?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let sqs = aws_sdk_sqs::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("chat_table", &dynamodb, &config.chat_table)
        .table("usage_table", &dynamodb, &config.usage_table)
        .table("rate_limit_table", &dynamodb, &config.rate_limit_table)
        .queue("events_queue", &sqs, &config.events_queue_url)
        .secret(
            "anthropic_api_key_secret",
            &secrets,
            &config.anthropic_api_key_secret,
        );
    finish(health.route(), &config.cors)
}
