//! `usage`: usage queries, the tenant admin API and the dashboard.
//!
//! Serves `GET /health` today; `/usage/{tenant}`, `/admin/tenants`,
//! `/api/v1/usage/*` and `/dashboard` build on the same router.

use axum::Router;
use shared::aws::SdkConfig;
use shared::config::{ConfigError, Env};
use shared::health::HealthChecks;
use shared::http::{CorsOrigins, finish};

pub const FUNCTION: &str = "usage";

#[derive(Debug, Clone)]
pub struct Config {
    pub tenants_table: String,
    pub usage_table: String,
    pub chat_table: String,
    pub admin_token_secret: String,
    pub cors: CorsOrigins,
}

impl Config {
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        Ok(Self {
            tenants_table: env.required("TENANTS_TABLE")?,
            usage_table: env.required("USAGE_TABLE")?,
            chat_table: env.required("CHAT_TABLE")?,
            admin_token_secret: env.required("ADMIN_TOKEN_SECRET")?,
            cors: CorsOrigins::from_env(env)?,
        })
    }
}

pub fn app(config: &Config, aws: &SdkConfig) -> Router {
    let dynamodb = aws_sdk_dynamodb::Client::new(aws);
    let secrets = aws_sdk_secretsmanager::Client::new(aws);
    let health = HealthChecks::new(FUNCTION, env!("CARGO_PKG_VERSION"))
        .table("tenants_table", &dynamodb, &config.tenants_table)
        .table("usage_table", &dynamodb, &config.usage_table)
        .table("chat_table", &dynamodb, &config.chat_table)
        .secret("admin_token_secret", &secrets, &config.admin_token_secret);
    finish(health.route(), &config.cors)
}
